//! One session's transport keys: what a finished handshake leaves behind
//! for sealing and opening messages between two ringlink nodes.
//!
//! The cipher is the network's (`cipher`, AES-256-GCM unless configured)
//! keyed with the handshake's split, and the nonce is Noise's for that
//! cipher: 4 zero bytes, then the 64-bit counter (little-endian for
//! ChaCha20-Poly1305, big-endian for AES-GCM). The counter is the nonce:
//! each one is used once per direction, never drawn at random. Receiving
//! checks the replay window first (cheap), opens, and only then records the
//! counter, so forged datagrams cannot move the window.
//!
//! A session is shared: the control thread owns it in the handshake state,
//! the dataplane workers and the server link hold it through the published
//! snapshot. Sending draws counters from an atomic, receiving records them
//! in a window behind a lock held for a few word operations.
//!
//! Two layouts carry a session's messages:
//! - the **session datagram** (`seal_datagram`, `open_datagram`), which is
//!   what goes on the wire between ringlink nodes, directly or inside a relay
//!   frame: `receiver index (4) ‖ counter (8, BE) ‖ tag (16) ‖ ciphertext`,
//!   28 bytes in front of the plaintext like Candy's envelope, so a packet is
//!   sealed where it lies with either;
//! - the handshake's confirmation (`seal`, `open`: ciphertext then tag),
//!   which travels inside a 0xF4 control message.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use thiserror::Error;

use super::replay::{ReplayError, ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::proto::crypto::CipherKind;

/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a session datagram in front of its plaintext.
pub const DATAGRAM_HEADER_LEN: usize = 4 + 8 + TAG_LEN;

// The dataplane seals a packet where it lies with either format.
const _: () = assert!(DATAGRAM_HEADER_LEN == crate::proto::crypto::ENVELOPE_LEN);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("the session has sent its last message; a new handshake is needed")]
    Exhausted,
    #[error("buffer of {have} bytes, {need} needed")]
    Buffer { have: usize, need: usize },
    #[error("replay window: {0}")]
    Replay(#[from] ReplayError),
    #[error("authentication failed")]
    Forged,
    #[error("no session")]
    NoSession,
    #[error("session expired")]
    Expired,
}

/// Which end of the handshake a session came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

pub struct Session {
    /// The peer at the other end.
    pub peer: Ipv4Addr,
    /// The index peers put in messages for us (we chose it).
    pub local_index: u32,
    /// The index we put in messages for the peer (it chose it).
    pub remote_index: u32,
    pub role: Role,
    pub established: Instant,
    cipher: CipherKind,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_send: AtomicU64,
    replay: Mutex<ReplayWindow>,
    /// Something opened under this session: the peer uses it.
    used: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("role", &self.role)
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

/// The two ends' keys from a handshake's split, as this end uses them.
pub struct SessionKeys<'a> {
    pub send: &'a [u8; 32],
    pub recv: &'a [u8; 32],
}

fn key(cipher: CipherKind, bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(cipher.algorithm(), bytes).expect("32-byte key"))
}

/// The receiver index of a session datagram: where a receiver looks it up.
pub fn datagram_index(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))
}

impl Session {
    pub fn new(
        peer: Ipv4Addr,
        indices: (u32, u32),
        role: Role,
        cipher: CipherKind,
        keys: SessionKeys<'_>,
        established: Instant,
    ) -> Self {
        Session {
            peer,
            local_index: indices.0,
            remote_index: indices.1,
            role,
            established,
            cipher,
            send: key(cipher, keys.send),
            recv: key(cipher, keys.recv),
            next_send: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new()),
            used: AtomicBool::new(false),
        }
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&match self.cipher {
            CipherKind::ChaCha20Poly1305 => counter.to_le_bytes(),
            CipherKind::Aes256Gcm => counter.to_be_bytes(),
        });
        Nonce::assume_unique_for_key(n)
    }

    /// Messages sealed so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.next_send.load(Ordering::Relaxed)
    }

    /// Whether anything has opened under this session yet.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes the next sending counter; workers draw from one session at
    /// once.
    pub fn next_counter(&self) -> Result<u64, SessionError> {
        let n = self.next_send.fetch_add(1, Ordering::Relaxed);
        if n >= REJECT_AFTER_MESSAGES {
            // Stay exhausted: the counter never wraps back to used nonces.
            self.next_send
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return Err(SessionError::Exhausted);
        }
        Ok(n)
    }

    /// Seals `buf[..len]` in place under `counter` and appends the tag;
    /// returns the sealed length. `buf` needs `len + TAG_LEN` bytes.
    pub fn seal(&self, counter: u64, buf: &mut [u8], len: usize) -> Result<usize, SessionError> {
        let need = len + TAG_LEN;
        if buf.len() < need {
            return Err(SessionError::Buffer {
                have: buf.len(),
                need,
            });
        }
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Exhausted);
        }
        let (plain, rest) = buf.split_at_mut(len);
        let tag = self
            .send
            .seal_in_place_separate_tag(self.nonce(counter), Aad::empty(), plain)
            .map_err(|_| SessionError::Forged)?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(need)
    }

    /// Opens `buf` (payload and tag) sealed under `counter` in place;
    /// returns the payload's length. A counter already received, or too
    /// old for the window, is refused before any decryption.
    pub fn open(&self, counter: u64, buf: &mut [u8]) -> Result<usize, SessionError> {
        self.check(counter)?;
        let Some(split) = buf.len().checked_sub(TAG_LEN) else {
            return Err(SessionError::Forged);
        };
        let (body, tag) = buf.split_at_mut(split);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| SessionError::Forged)?;
        self.open_body(counter, tag, body)?;
        Ok(split)
    }

    /// Turns the plaintext at `buf[plain]` into a session datagram in
    /// place, its header written into the `DATAGRAM_HEADER_LEN` bytes in
    /// front; returns where the datagram lies.
    pub fn seal_datagram(
        &self,
        buf: &mut [u8],
        plain: Range<usize>,
    ) -> Result<Range<usize>, SessionError> {
        let start = plain
            .start
            .checked_sub(DATAGRAM_HEADER_LEN)
            .ok_or(SessionError::Buffer {
                have: plain.start,
                need: DATAGRAM_HEADER_LEN,
            })?;
        if plain.end > buf.len() || plain.start > plain.end {
            return Err(SessionError::Buffer {
                have: buf.len(),
                need: plain.end,
            });
        }
        let counter = self.next_counter()?;
        let tag = self
            .send
            .seal_in_place_separate_tag(self.nonce(counter), Aad::empty(), &mut buf[plain.clone()])
            .map_err(|_| SessionError::Forged)?;
        let h = &mut buf[start..plain.start];
        h[..4].copy_from_slice(&self.remote_index.to_be_bytes());
        h[4..12].copy_from_slice(&counter.to_be_bytes());
        h[12..].copy_from_slice(tag.as_ref());
        Ok(start..plain.end)
    }

    /// Opens a whole session datagram for this session in place; returns
    /// where its plaintext lies (from `DATAGRAM_HEADER_LEN` to the end),
    /// and whether this was the first message the session opened, which
    /// shows the peer has it (a responder starts sealing with it then).
    pub fn open_datagram(&self, d: &mut [u8]) -> Result<(Range<usize>, bool), SessionError> {
        if d.len() < DATAGRAM_HEADER_LEN {
            return Err(SessionError::Forged);
        }
        let (head, body) = d.split_at_mut(DATAGRAM_HEADER_LEN);
        let counter = u64::from_be_bytes(head[4..12].try_into().expect("8 bytes"));
        let tag: [u8; TAG_LEN] = head[12..].try_into().expect("16 bytes");
        self.check(counter)?;
        let first = self.open_body(counter, tag, body)?;
        Ok((DATAGRAM_HEADER_LEN..d.len(), first))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // A panic elsewhere cannot leave the window half-updated: its
        // methods only write after they cannot fail.
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, counter: u64) -> Result<(), SessionError> {
        Ok(self.window().check(counter)?)
    }

    /// Opens in place and records the counter; the window is checked again
    /// under the same lock that records it, since another worker may have
    /// taken the counter since the cheap check. True on the session's first
    /// message, for exactly one opener.
    fn open_body(
        &self,
        counter: u64,
        tag: [u8; TAG_LEN],
        body: &mut [u8],
    ) -> Result<bool, SessionError> {
        self.recv
            .open_in_place_separate_tag(
                self.nonce(counter),
                Aad::empty(),
                Tag::from(tag),
                body,
                0..,
            )
            .map_err(|_| SessionError::Forged)?;
        let mut w = self.window();
        w.check(counter)?;
        w.accept(counter)?;
        drop(w);
        Ok(!self.used.swap(true, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn pair_with(cipher: CipherKind) -> (Session, Session) {
        let now = Instant::now();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        (
            Session::new(
                B,
                (1, 2),
                Role::Initiator,
                cipher,
                SessionKeys {
                    send: &k1,
                    recv: &k2,
                },
                now,
            ),
            Session::new(
                A,
                (2, 1),
                Role::Responder,
                cipher,
                SessionKeys {
                    send: &k2,
                    recv: &k1,
                },
                now,
            ),
        )
    }

    fn pair() -> (Session, Session) {
        pair_with(CipherKind::Aes256Gcm)
    }

    #[test]
    fn seal_open_both_ways_and_replays_refused() {
        for cipher in [CipherKind::Aes256Gcm, CipherKind::ChaCha20Poly1305] {
            let (a, b) = pair_with(cipher);
            let mut buf = [0u8; 64];
            buf[..5].copy_from_slice(b"hello");
            let c = a.next_counter().unwrap();
            let n = a.seal(c, &mut buf, 5).unwrap();
            assert_eq!(n, 5 + TAG_LEN);
            let copy = buf;
            assert_eq!(b.open(c, &mut buf[..n]), Ok(5));
            assert_eq!(&buf[..5], b"hello");
            let mut again = copy;
            assert_eq!(
                b.open(c, &mut again[..n]),
                Err(SessionError::Replay(ReplayError::Duplicate(0)))
            );
            // A wrong counter or a flipped bit fails and leaves the window alone.
            let mut forged = copy;
            assert_eq!(b.open(1, &mut forged[..n]), Err(SessionError::Forged));
            forged[0] ^= 1;
            assert_eq!(b.open(2, &mut forged[..n]), Err(SessionError::Forged));
            assert_eq!(b.window().highest(), Some(0));
            // The other direction uses the other key.
            let mut back = [0u8; TAG_LEN];
            let n = b.seal(b.next_counter().unwrap(), &mut back, 0).unwrap();
            let mut wrong_way = back;
            assert_eq!(b.open(1, &mut wrong_way[..n]), Err(SessionError::Forged));
            assert_eq!(a.open(0, &mut back[..n]), Ok(0));
        }
    }

    #[test]
    fn datagrams_seal_where_the_plaintext_lies_and_open_once() {
        let (a, b) = pair();
        let mut buf = vec![0xEE; 40 + 100];
        buf[40..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u8);
        let plain = buf[40..].to_vec();
        let d = a.seal_datagram(&mut buf, 40..140).unwrap();
        assert_eq!(d, 12..140);
        assert_eq!(
            datagram_index(&buf[d.clone()]),
            Some(2),
            "the receiver's index"
        );
        assert_eq!(&buf[16..24], &0u64.to_be_bytes());
        assert!(
            buf[..12].iter().all(|&x| x == 0xEE),
            "nothing in front touched"
        );
        let wire = buf[d.clone()].to_vec();
        let mut rx = wire.clone();
        assert!(!b.used());
        assert_eq!(b.open_datagram(&mut rx), Ok((28..128, true)));
        assert_eq!(&rx[28..], &plain[..]);
        assert!(b.used());
        // The same bytes again: refused by the window, before any opening.
        let mut replay = wire.clone();
        assert_eq!(
            b.open_datagram(&mut replay),
            Err(SessionError::Replay(ReplayError::Duplicate(0)))
        );
        // Tampered header, tag or body: refused, window unmoved.
        for at in [5, 13, 30] {
            let mut t = wire.clone();
            t[at] ^= 0x40;
            assert!(b.open_datagram(&mut t).is_err(), "byte {at}");
        }
        // The next one opens, and is not the first any more.
        let mut buf2 = vec![0u8; 28 + 3];
        let d2 = a.seal_datagram(&mut buf2, 28..31).unwrap();
        assert_eq!(b.open_datagram(&mut buf2[d2]), Ok((28..31, false)));
        // Too short, or no room in front.
        assert_eq!(b.open_datagram(&mut [0u8; 27]), Err(SessionError::Forged));
        assert!(matches!(
            a.seal_datagram(&mut [0u8; 40], 27..40),
            Err(SessionError::Buffer { .. })
        ));
        assert!(matches!(
            a.seal_datagram(&mut [0u8; 40], 28..41),
            Err(SessionError::Buffer { .. })
        ));
    }

    #[test]
    fn out_of_order_within_the_window_opens_once_each() {
        let (a, b) = pair();
        let sealed: Vec<Vec<u8>> = (0..50)
            .map(|_| {
                let mut buf = vec![0u8; 28 + 1];
                let d = a.seal_datagram(&mut buf, 28..29).unwrap();
                buf[d].to_vec()
            })
            .collect();
        for d in sealed.iter().rev() {
            assert!(b.open_datagram(&mut d.clone()).is_ok());
        }
        // Each counter opened exactly once.
        let mut opened = 0;
        for d in &sealed {
            if b.open_datagram(&mut d.clone()).is_ok() {
                opened += 1;
            }
        }
        assert_eq!(opened, 0);
    }

    #[test]
    fn buffers_and_exhaustion() {
        let (a, _) = pair();
        let mut small = [0u8; 10];
        assert_eq!(
            a.seal(0, &mut small, 0),
            Err(SessionError::Buffer { have: 10, need: 16 })
        );
        assert_eq!(
            a.seal(REJECT_AFTER_MESSAGES, &mut [0u8; 32], 0),
            Err(SessionError::Exhausted)
        );
        a.next_send
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(a.next_counter(), Ok(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(a.next_counter(), Err(SessionError::Exhausted));
        assert_eq!(a.next_counter(), Err(SessionError::Exhausted));
        assert_eq!(a.sent(), REJECT_AFTER_MESSAGES);
        assert_eq!(
            a.seal_datagram(&mut [0u8; 40], 28..40),
            Err(SessionError::Exhausted)
        );
    }

    #[test]
    fn short_input_is_an_error() {
        let (_, b) = pair();
        for len in 0..TAG_LEN {
            assert_eq!(b.open(0, &mut [0u8; 16][..len]), Err(SessionError::Forged));
        }
    }
}
