//! Reconnect delays: exponential, capped, with jitter so that a server
//! restart is not answered by every client at the same instant (the
//! thundering herd Candy v6 produces, PROTOCOL.md §10.20).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `unit` in [0, 1) picks where in
    /// the jitter window it falls; callers pass a random number, tests a
    /// fixed one.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // "Equal jitter": at least half the ceiling, so delays still grow.
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Called once a connection has worked, so the next loss starts small.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let lows: Vec<_> = (0..8).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(lows[0], Duration::from_millis(250));
        assert_eq!(lows[1], Duration::from_millis(500));
        assert_eq!(lows[2], Duration::from_secs(1));
        assert_eq!(lows[7], Duration::from_secs(5), "capped at half of 10 s");
        assert_eq!(b.next_delay(0.999_999).as_millis(), 9_999);
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(500));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay(0.5) <= Duration::from_secs(30));
        }
    }
}
