//! How many initiations this node answers: each costs Diffie-Hellman
//! operations before the sender is known to be genuine, so a flood of
//! them (replayed or forged) must not become a flood of work or replies.

use std::time::{Duration, Instant};

use crate::peer::TokenBucket;

/// All peers together: a burst, then one every 10 ms.
const GLOBAL_BURST: u32 = 64;
const GLOBAL_EVERY: Duration = Duration::from_millis(10);
/// One peer: a burst of 4, then one every 250 ms; genuine retries are
/// seconds apart.
const PEER_BURST: u32 = 4;
const PEER_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct InitiationLimiter {
    global: TokenBucket,
}

impl InitiationLimiter {
    pub fn new(now: Instant) -> Self {
        InitiationLimiter {
            global: TokenBucket::new(GLOBAL_BURST, GLOBAL_EVERY, now),
        }
    }

    /// A fresh budget for one peer.
    pub(crate) fn peer_budget(now: Instant) -> TokenBucket {
        TokenBucket::new(PEER_BURST, PEER_EVERY, now)
    }

    /// Whether an initiation from the peer owning `peer` may be processed
    /// now. The peer's own budget is spent first, so one noisy peer does
    /// not use up everyone's.
    pub(crate) fn allow(&mut self, peer: &mut TokenBucket, now: Instant) -> bool {
        peer.take(now) && self.global.take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_drain_the_global_budget() {
        let t0 = Instant::now();
        let mut limiter = InitiationLimiter::new(t0);
        let mut noisy = InitiationLimiter::peer_budget(t0);
        let granted = (0..1000).filter(|_| limiter.allow(&mut noisy, t0)).count();
        assert_eq!(granted, PEER_BURST as usize);
        let mut others: Vec<_> = (0..20)
            .map(|_| InitiationLimiter::peer_budget(t0))
            .collect();
        let granted: usize = others
            .iter_mut()
            .map(|b| (0..4).filter(|_| limiter.allow(b, t0)).count())
            .sum();
        // 64 global tokens, 4 of them spent by the noisy peer.
        assert_eq!(granted, 60);
    }
}
