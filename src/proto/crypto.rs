//! Peer keys (PROTOCOL.md §1.3) and the UDP encryption envelope (§1.4).
//!
//! A datagram is `IV (12) ‖ tag (16) ‖ ciphertext`, AEAD without AAD, sealed
//! with the *receiver's* key. Sealing and opening work in place on caller
//! buffers so the dataplane can encrypt a packet where it was read, with the
//! envelope written into headroom in front of it.

use std::net::Ipv4Addr;

use ring::aead::{self, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes in front of the plaintext: IV and tag.
pub const ENVELOPE_LEN: usize = IV_LEN + TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CryptoError {
    #[error("datagram of {0} bytes is shorter than the 28-byte envelope")]
    TooShort(usize),
    #[error("authentication failed")]
    BadTag,
}

/// The network-wide cipher. Candy speaks only AES-256-GCM; ChaCha20-Poly1305
/// exists for all-ringlink networks on gateways without AES instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherKind {
    #[default]
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl CipherKind {
    pub(crate) fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            CipherKind::Aes256Gcm => &aead::AES_256_GCM,
            CipherKind::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// `K(v) = SHA-256(P ‖ v[3] ‖ v[2] ‖ v[1] ‖ v[0])`: the VIP goes in with its
/// octets reversed, unlike in AUTH.
pub fn derive_key(password: &[u8], vip: Ipv4Addr) -> [u8; 32] {
    let mut octets = vip.octets();
    octets.reverse();
    let mut h = Sha256::new();
    h.update(password);
    h.update(octets);
    h.finalize().into()
}

/// One node's key, ready to seal datagrams for that node or, for our own
/// key, to open every datagram we receive.
pub struct PeerKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

impl PeerKey {
    pub fn new(kind: CipherKind, key: &[u8; 32]) -> Self {
        // Both algorithms take 32-byte keys, so construction cannot fail.
        let unbound = UnboundKey::new(kind.algorithm(), key).expect("32-byte key");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    pub fn for_vip(kind: CipherKind, password: &[u8], vip: Ipv4Addr) -> Self {
        Self::new(kind, &derive_key(password, vip))
    }

    /// Seals `buf[ENVELOPE_LEN..]` in place and writes IV and tag into
    /// `buf[..ENVELOPE_LEN]`. The whole of `buf` is then the datagram.
    pub fn seal_in_place(&self, iv: [u8; IV_LEN], buf: &mut [u8]) -> Result<(), CryptoError> {
        if buf.len() < ENVELOPE_LEN {
            return Err(CryptoError::TooShort(buf.len()));
        }
        let (head, plain) = buf.split_at_mut(ENVELOPE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), aead::Aad::empty(), plain)
            .map_err(|_| CryptoError::BadTag)?;
        head[..IV_LEN].copy_from_slice(&iv);
        head[IV_LEN..].copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens a whole datagram in place; returns the plaintext, which lives
    /// at `buf[ENVELOPE_LEN..]`.
    pub fn open_in_place<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < ENVELOPE_LEN {
            return Err(CryptoError::TooShort(buf.len()));
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&buf[..IV_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[IV_LEN..ENVELOPE_LEN]);
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                aead::Aad::empty(),
                Tag::from(tag),
                &mut buf[ENVELOPE_LEN..],
                0..,
            )
            .map_err(|_| CryptoError::BadTag)
    }

    /// Convenience for the control path: seal `plain` into a new datagram.
    pub fn seal_to_vec(&self, iv: [u8; IV_LEN], plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; ENVELOPE_LEN + plain.len()];
        out[ENVELOPE_LEN..].copy_from_slice(plain);
        // Cannot fail: the buffer is at least ENVELOPE_LEN long.
        let _ = self.seal_in_place(iv, &mut out);
        out
    }
}

/// Unique IVs without a syscall per packet: 64 random bits drawn once, then
/// a 32-bit counter. Every sender to a node shares that node's key, so the
/// random part must be wide enough that two senders practically never pick
/// the same one; when the counter wraps a new random part is drawn.
pub struct IvSequence {
    prefix: [u8; 8],
    counter: u32,
}

impl IvSequence {
    pub fn new() -> Self {
        Self::with_prefix(rand::random())
    }

    /// For callers that draw their randomness from a seeded source; the
    /// prefix must differ between senders that share a key.
    pub fn with_prefix(prefix: [u8; 8]) -> Self {
        Self { prefix, counter: 0 }
    }

    pub fn next_iv(&mut self) -> [u8; IV_LEN] {
        if self.counter == u32::MAX {
            self.prefix = rand::random();
            self.counter = 0;
        }
        self.counter += 1;
        let mut iv = [0u8; IV_LEN];
        iv[..8].copy_from_slice(&self.prefix);
        iv[8..].copy_from_slice(&self.counter.to_be_bytes());
        iv
    }
}

impl Default for IvSequence {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_util::hex;

    const P: &[u8] = b"this is the password";

    #[test]
    fn key_vectors() {
        assert_eq!(
            derive_key(P, Ipv4Addr::new(192, 168, 202, 1)).to_vec(),
            hex("47eba73e06ef3668d592db0afdd662d7ab39f81eb4c539dcacf154900991185f")
        );
        assert_eq!(
            derive_key(P, Ipv4Addr::new(192, 168, 202, 2)).to_vec(),
            hex("d0f7e17e1de5b5bc80ce5e55c98940996d262c5f15bac57f41f37801ae22c8f1")
        );
        assert_eq!(
            derive_key(b"", Ipv4Addr::new(10, 0, 0, 1)).to_vec(),
            hex("f5f360698e44cfa4fe91b6d2eb149c97880caa174e95f01cfadc3cb6757eacdb")
        );
    }

    #[test]
    fn heartbeat_datagram_vector() {
        let key = PeerKey::for_vip(CipherKind::Aes256Gcm, P, Ipv4Addr::new(192, 168, 202, 1));
        let iv: [u8; 12] = hex("000102030405060708090a0b").try_into().unwrap();
        let plain = hex("00c0a8ca0200000000000001");
        let dgram = key.seal_to_vec(iv, &plain);
        assert_eq!(
            dgram,
            hex("000102030405060708090a0bc60359c1e6c769cb6f6fd34513b91c4b0e8b48f6b0c1641a0486e238")
        );
        let mut buf = dgram.clone();
        assert_eq!(key.open_in_place(&mut buf).unwrap(), &plain[..]);
    }

    #[test]
    fn open_rejects_tampering_wrong_key_and_short() {
        for kind in [CipherKind::Aes256Gcm, CipherKind::ChaCha20Poly1305] {
            let a = PeerKey::for_vip(kind, P, Ipv4Addr::new(10, 0, 0, 1));
            let b = PeerKey::for_vip(kind, P, Ipv4Addr::new(10, 0, 0, 2));
            let mut seq = IvSequence::new();
            let dgram = a.seal_to_vec(seq.next_iv(), b"hello");
            let mut ok = dgram.clone();
            assert_eq!(a.open_in_place(&mut ok).unwrap(), b"hello");
            let mut wrong = dgram.clone();
            assert_eq!(b.open_in_place(&mut wrong), Err(CryptoError::BadTag));
            for i in 0..dgram.len() {
                let mut t = dgram.clone();
                t[i] ^= 0x40;
                assert_eq!(
                    a.open_in_place(&mut t),
                    Err(CryptoError::BadTag),
                    "byte {i}"
                );
            }
            assert_eq!(
                a.open_in_place(&mut [0u8; 27]),
                Err(CryptoError::TooShort(27))
            );
        }
    }

    #[test]
    fn ivs_are_unique_and_carry_the_prefix() {
        let mut seq = IvSequence::new();
        let a = seq.next_iv();
        let b = seq.next_iv();
        assert_ne!(a, b);
        assert_eq!(a[..8], b[..8]);
        seq.counter = u32::MAX;
        let c = seq.next_iv();
        assert_eq!(c[8..], 1u32.to_be_bytes());
    }
}
