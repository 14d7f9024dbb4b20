//! A token bucket, so no peer (or anyone replaying its datagrams) can make
//! this node send more than a fixed number of challenges or answers.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: u32,
    burst: u32,
    /// Time to earn one token back.
    per: Duration,
    /// Tokens are credited up to this instant.
    credited: Instant,
}

impl TokenBucket {
    /// Full at `now`: `burst` at once, then one per `per`.
    pub fn new(burst: u32, per: Duration, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            per: per.max(Duration::from_micros(1)),
            credited: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.credited);
        let earned = (elapsed.as_nanos() / self.per.as_nanos()).min(u128::from(self.burst)) as u32;
        if self.tokens + earned >= self.burst {
            self.tokens = self.burst;
            self.credited = now;
        } else {
            self.tokens += earned;
            self.credited += self.per * earned;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let per = Duration::from_millis(250);
        let mut b = TokenBucket::new(3, per, t0);
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 3);
        // 1 s later: four tokens earned, capped at the burst of three.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| b.take(t1)).count(), 3);
        // Partial periods carry over: 100 ms + 150 ms make one token.
        assert!(!b.take(t1 + Duration::from_millis(100)));
        assert!(b.take(t1 + Duration::from_millis(250)));
        assert!(!b.take(t1 + Duration::from_millis(300)));
    }

    #[test]
    fn a_flood_over_ten_seconds_gets_the_rate_and_no_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(8, Duration::from_millis(250), t0);
        let granted = (0..10_000u64)
            .filter(|&i| b.take(t0 + Duration::from_millis(i)))
            .count();
        // 8 at once, then 4 per second for 10 s.
        assert_eq!(granted, 8 + 39);
    }
}
