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

/// Outstanding challenges to sources heard between ticks: a peer has at
/// most a few rebinding candidates in flight; the oldest is dropped beyond
/// this.
const MAX_HEARD: usize = 8;
/// A PONG later than this many ticks answers nothing (a round trip is far
/// shorter).
const ANSWER_WITHIN_TICKS: u32 = 5;
/// Challenges to sources heard between ticks, per peer: 8 at once, then 4
/// per tick (4 per second on Candy's timers), whatever arrives. The tick's
/// own challenges (the path, the candidates the server introduced) are
/// bounded by the tick and never wait for this budget, so a flood of
/// replays cannot starve the path's liveness.
pub(crate) const BURST: u32 = 8;
pub(crate) const PER_TICK: u32 = 4;

/// Why a challenge is sent, which decides what bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The tick's challenge of the path or an introduced candidate.
    Tick,
    /// A datagram arrived from this address.
    Heard,
}

#[derive(Debug, Clone)]
struct Pending {
    to: SocketAddrV4,
    nonce: Nonce,
    sent: Instant,
    reason: Reason,
}

#[derive(Debug, Clone)]
pub(crate) struct Challenges {
    pending: Vec<Pending>,
    /// Nonces only travel sealed under the peers' keys, so they need to be
    /// unique and unknowable to outsiders, which an OS-seeded generator
    /// private to this node is.
    rng: SplitMix64,
    budget: TokenBucket,
    answer_within: Duration,
}

impl Challenges {
    pub fn new(seed: u64, tick: Duration, now: Instant) -> Self {
        Challenges {
            pending: Vec::new(),
            rng: SplitMix64::new(seed),
            budget: TokenBucket::new(BURST, tick / PER_TICK, now),
            answer_within: tick * ANSWER_WITHIN_TICKS,
        }
    }

    /// A fresh nonce for a PING to `to`, or `None` when a challenge to a
    /// heard source finds this peer's budget spent.
    pub fn issue(&mut self, to: SocketAddrV4, reason: Reason, now: Instant) -> Option<Nonce> {
        self.expire(now);
        if reason == Reason::Heard {
            if !self.budget.take(now) {
                return None;
            }
            let heard = self.pending.iter().filter(|p| p.reason == Reason::Heard);
            if heard.count() == MAX_HEARD {
                let oldest = self.pending.iter().position(|p| p.reason == Reason::Heard);
                self.pending.remove(oldest.unwrap_or(0));
            }
        }
        let mut nonce = Nonce::default();
        self.rng.fill(&mut nonce);
        self.pending.push(Pending {
            to,
            nonce,
            sent: now,
            reason,
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    fn expire(&mut self, now: Instant) {
        let within = self.answer_within;
        self.pending
            .retain(|p| now.saturating_duration_since(p.sent) < within);
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
        let na = c.issue(a, Reason::Tick, t0).unwrap();
        let nb = c.issue(b, Reason::Heard, t0).unwrap();
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
        let n = c.issue(a, Reason::Tick, t0).unwrap();
        assert_eq!(
            c.answer(a, &n, t0 + Duration::from_secs(5)),
            Err(Ignored::UnknownNonce)
        );
        let t1 = t0 + Duration::from_secs(60);
        let path = c.issue(a, Reason::Tick, t1).unwrap();
        let eve = ep("192.0.2.66:7000");
        let heard = (0..100)
            .filter(|_| c.issue(eve, Reason::Heard, t1).is_some())
            .count();
        assert_eq!(heard, BURST as usize);
        assert_eq!(c.len(), MAX_HEARD + 1);
        // The flood neither starved nor evicted the tick's challenge.
        assert!(c.issue(a, Reason::Tick, t1).is_some());
        assert_eq!(c.answer(a, &path, t1), Ok(()));
    }
}
