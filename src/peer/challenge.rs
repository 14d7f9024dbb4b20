//! Endpoint proof between ringlink peers: the challenges this node has
//! sent to one peer's candidate addresses and not yet seen answered.
//!
//! A datagram that authenticates from an address only makes that address
//! a candidate. The path moves there when a PONG comes back *from* it
//! carrying the nonce of a PING we sent *to* it within the last few
//! seconds. Nonces are used once, so a captured PONG or heartbeat replayed
//! later, or from elsewhere, proves nothing.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::proto::udp::Nonce;
use crate::rng::SplitMix64;

use super::action::Ignored;
use super::ratelimit::TokenBucket;

/// Outstanding challenges per peer: a peer has at most a LAN, a public and
/// a few rebinding candidates in flight; the oldest is dropped beyond this.
const MAX_PENDING: usize = 8;
/// A PONG later than this answers nothing (a round trip is far shorter).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Challenges per peer: 8 at once, then 4 per tick (4 per second on
/// Candy's timers), whatever arrives. A tick needs at most two (path and
/// LAN candidate); the rest is for new sources heard between ticks.
pub(crate) const BURST: u32 = 8;
pub(crate) const PER_TICK: u32 = 4;

#[derive(Debug, Clone)]
struct Pending {
    to: SocketAddrV4,
    nonce: Nonce,
    sent: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct Challenges {
    pending: Vec<Pending>,
    /// Nonces only travel sealed under the peers' keys, so they need to be
    /// unique and unknowable to outsiders, which an OS-seeded generator
    /// private to this node is.
    rng: SplitMix64,
    budget: TokenBucket,
}

impl Challenges {
    pub fn new(seed: u64, tick: Duration, now: Instant) -> Self {
        Challenges {
            pending: Vec::new(),
            rng: SplitMix64::new(seed),
            budget: TokenBucket::new(BURST, tick / PER_TICK, now),
        }
    }

    /// A fresh nonce for a PING to `to`, or `None` when this peer's budget
    /// is spent.
    pub fn issue(&mut self, to: SocketAddrV4, now: Instant) -> Option<Nonce> {
        self.expire(now);
        if !self.budget.take(now) {
            return None;
        }
        if self.pending.len() == MAX_PENDING {
            self.pending.remove(0);
        }
        let mut nonce = Nonce::default();
        self.rng.fill(&mut nonce);
        self.pending.push(Pending {
            to,
            nonce,
            sent: now,
        });
        Some(nonce)
    }

    /// Accepts a PONG from `from`. A nonce we sent elsewhere stays pending:
    /// a copy relayed from another address must not cancel the genuine
    /// answer still on its way.
    pub fn answer(
        &mut self,
        from: SocketAddrV4,
        nonce: &Nonce,
        now: Instant,
    ) -> Result<(), Ignored> {
        self.expire(now);
        let i = self
            .pending
            .iter()
            .position(|p| p.nonce == *nonce)
            .ok_or(Ignored::UnknownNonce)?;
        if self.pending[i].to != from {
            return Err(Ignored::WrongSource);
        }
        self.pending.remove(i);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|p| now.saturating_duration_since(p.sent) < ANSWER_WITHIN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn answer_must_match_nonce_and_address_once() {
        let t0 = Instant::now();
        let mut c = Challenges::new(1, Duration::from_secs(1), t0);
        let (a, b) = (ep("198.51.100.1:4000"), ep("203.0.113.9:5000"));
        let na = c.issue(a, t0).unwrap();
        let nb = c.issue(b, t0).unwrap();
        assert_ne!(na, nb);
        assert_eq!(c.answer(b, &na, t0), Err(Ignored::WrongSource));
        assert_eq!(c.answer(a, &[0; 12], t0), Err(Ignored::UnknownNonce));
        assert_eq!(c.answer(a, &na, t0), Ok(()));
        // A replay of the same answer is stale.
        assert_eq!(c.answer(a, &na, t0), Err(Ignored::UnknownNonce));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn answers_expire_and_the_budget_holds() {
        let t0 = Instant::now();
        let mut c = Challenges::new(2, Duration::from_secs(1), t0);
        let a = ep("198.51.100.1:4000");
        let n = c.issue(a, t0).unwrap();
        assert_eq!(
            c.answer(a, &n, t0 + ANSWER_WITHIN),
            Err(Ignored::UnknownNonce)
        );
        let t1 = t0 + Duration::from_secs(60);
        let issued = (0..100).filter(|_| c.issue(a, t1).is_some()).count();
        assert_eq!(issued, BURST as usize);
        assert_eq!(c.len(), MAX_PENDING);
    }
}
