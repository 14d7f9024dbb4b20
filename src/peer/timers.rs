//! Timer values of the state machine (PROTOCOL.md §5.3, v6 wall-clock timings).

use std::time::Duration;

/// All durations the state machine waits on. Defaults are Candy v6's; tests
/// and integration harnesses shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Period of the manager tick: heartbeats, STUN, timeouts are only
    /// evaluated on ticks, never in between.
    pub tick: Duration,
    /// Longest stay in PREPARING before FAILED.
    pub preparing: Duration,
    /// Longest stay in SYNCHRONIZING before FAILED.
    pub synchronizing: Duration,
    /// Longest stay in CONNECTING before WAITING.
    pub connecting: Duration,
    /// CONNECTED falls back to INIT when no ack-heartbeat came for this long.
    pub connected_idle: Duration,
    /// First WAITING interval, and the value FAILED / a fresh INIT restore.
    pub retry_initial: Duration,
    /// Cap of the doubling WAITING interval.
    pub retry_max: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            tick: Duration::from_secs(1),
            preparing: Duration::from_secs(10),
            synchronizing: Duration::from_secs(10),
            connecting: Duration::from_secs(10),
            connected_idle: Duration::from_secs(3),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
        }
    }
}

impl Timers {
    /// The WAITING interval after one more failed attempt.
    pub fn next_retry(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.retry_max)
    }

    /// A zero tick would make the manager spin.
    pub fn validate(&self) -> Result<(), TimersError> {
        if self.tick.is_zero() {
            return Err(TimersError::ZeroTick);
        }
        if self.retry_initial > self.retry_max {
            return Err(TimersError::RetryAboveCap);
        }
        Ok(())
    }
}

/// Why a [`Timers`] value cannot drive a manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimersError {
    #[error("timers.tick must be greater than zero")]
    ZeroTick,
    #[error("timers.retry_initial must not exceed timers.retry_max")]
    RetryAboveCap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_sequence_matches_spec() {
        let t = Timers::default();
        let mut r = t.retry_initial;
        let mut seq = vec![r.as_secs()];
        for _ in 0..9 {
            r = t.next_retry(r);
            seq.push(r.as_secs());
        }
        assert_eq!(seq, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }

    #[test]
    fn validation() {
        assert_eq!(Timers::default().validate(), Ok(()));
        let t = Timers {
            tick: Duration::ZERO,
            ..Timers::default()
        };
        assert_eq!(t.validate(), Err(TimersError::ZeroTick));
        let t = Timers {
            retry_initial: Duration::from_secs(7200),
            ..Timers::default()
        };
        assert_eq!(t.validate(), Err(TimersError::RetryAboveCap));
    }
}
