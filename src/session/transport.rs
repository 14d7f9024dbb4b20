//! One session's transport keys: what a finished handshake leaves behind
//! for sealing and opening messages between two ringlink nodes.
//!
//! ChaCha20-Poly1305 with Noise's nonce (4 zero bytes, then the 64-bit
//! counter little-endian), so the keys are exactly the handshake's split.
//! The counter is the nonce: each one is used once per direction, never
//! drawn at random. Receiving checks the replay window first (cheap),
//! opens, and only then records the counter, so forged datagrams cannot
//! move the window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use thiserror::Error;

use super::replay::{ReplayError, ReplayWindow, REJECT_AFTER_MESSAGES};

/// Bytes of the authentication tag after every sealed payload.
pub const TAG_LEN: usize = 16;

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
    /// The index peers put in messages for us (we chose it).
    pub local_index: u32,
    /// The index we put in messages for the peer (it chose it).
    pub remote_index: u32,
    pub role: Role,
    pub established: Instant,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_send: AtomicU64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("role", &self.role)
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // ChaCha20-Poly1305 takes any 32 bytes.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key"))
}

impl Session {
    /// `send` and `recv` are this end's halves of the handshake's split.
    pub fn new(
        local_index: u32,
        remote_index: u32,
        role: Role,
        send: &[u8; 32],
        recv: &[u8; 32],
        established: Instant,
    ) -> Self {
        Session {
            local_index,
            remote_index,
            role,
            established,
            send: key(send),
            recv: key(recv),
            next_send: AtomicU64::new(0),
            replay: ReplayWindow::new(),
        }
    }

    /// Messages sealed so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.next_send.load(Ordering::Relaxed)
    }

    /// Takes the next sending counter. Shared by reference so the workers
    /// of a later dataplane can draw from one session at once.
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
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), plain)
            .map_err(|_| SessionError::Forged)?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(need)
    }

    /// Opens `buf` (payload and tag) sealed under `counter` in place;
    /// returns the payload's length. A counter already received, or too
    /// old for the window, is refused before any decryption.
    pub fn open(&mut self, counter: u64, buf: &mut [u8]) -> Result<usize, SessionError> {
        self.replay.check(counter)?;
        if buf.len() < TAG_LEN {
            return Err(SessionError::Forged);
        }
        let len = self
            .recv
            .open_in_place(nonce(counter), Aad::empty(), buf)
            .map_err(|_| SessionError::Forged)?
            .len();
        self.replay.accept(counter)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, Session) {
        let now = Instant::now();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        (
            Session::new(1, 2, Role::Initiator, &k1, &k2, now),
            Session::new(2, 1, Role::Responder, &k2, &k1, now),
        )
    }

    #[test]
    fn seal_open_both_ways_and_replays_refused() {
        let (a, mut b) = pair();
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
        assert_eq!(b.replay.highest(), Some(0));
        // The other direction uses the other key.
        let mut back = [0u8; TAG_LEN];
        let n = b.seal(b.next_counter().unwrap(), &mut back, 0).unwrap();
        let mut wrong_way = back;
        assert_eq!(b.open(1, &mut wrong_way[..n]), Err(SessionError::Forged));
        let (mut a, _) = (a, ());
        assert_eq!(a.open(0, &mut back[..n]), Ok(0));
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
    }

    #[test]
    fn short_input_is_an_error() {
        let (_, mut b) = pair();
        for len in 0..TAG_LEN {
            assert_eq!(b.open(0, &mut [0u8; 16][..len]), Err(SessionError::Forged));
        }
    }
}
