//! When sessions between ringlink nodes are made, renewed and dropped:
//! WireGuard's schedule (its whitepaper, §6.1), as one value tests can
//! shrink.

use std::time::Duration;

pub use super::replay::REJECT_AFTER_MESSAGES;

/// A session that has sent this many messages is renewed (WireGuard's
/// `REKEY_AFTER_MESSAGES`, 2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeTimers {
    /// The initiator of a session starts a new handshake at this age.
    pub rekey_after_time: Duration,
    /// No message is sealed or opened under a session this old.
    pub reject_after_time: Duration,
    /// A session that sent this many messages is renewed.
    pub rekey_after_messages: u64,
    /// An initiation unanswered this long is sent again (then twice as
    /// long, up to `retry_max`).
    pub rekey_timeout: Duration,
    pub retry_max: Duration,
    /// The responder of a session renews it at
    /// `reject_after_time - keepalive_timeout - rekey_timeout` if the
    /// initiator has not (WireGuard's margin before expiry).
    pub keepalive_timeout: Duration,
    /// Random delay added to every retry, so two nodes that failed together
    /// do not retry together.
    pub jitter: Duration,
}

impl Default for HandshakeTimers {
    fn default() -> Self {
        HandshakeTimers {
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            rekey_timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(10),
            jitter: Duration::from_millis(333),
        }
    }
}

impl HandshakeTimers {
    /// Every duration divided by `d` (the client's `test_time_divisor`).
    pub fn scaled(d: u32) -> Self {
        let t = Self::default();
        let d = d.max(1);
        HandshakeTimers {
            rekey_after_time: t.rekey_after_time / d,
            reject_after_time: t.reject_after_time / d,
            rekey_after_messages: t.rekey_after_messages,
            rekey_timeout: t.rekey_timeout / d,
            retry_max: t.retry_max / d,
            keepalive_timeout: t.keepalive_timeout / d,
            jitter: t.jitter / d,
        }
    }

    /// The age at which the responder of a session renews it.
    pub fn responder_rekey(&self) -> Duration {
        self.reject_after_time
            .saturating_sub(self.keepalive_timeout + self.rekey_timeout)
            .max(self.rekey_after_time)
    }

    /// The wait after one more unanswered initiation.
    pub fn next_retry(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguards_numbers() {
        let t = HandshakeTimers::default();
        assert_eq!(t.rekey_after_time.as_secs(), 120);
        assert_eq!(t.reject_after_time.as_secs(), 180);
        assert_eq!(t.responder_rekey().as_secs(), 165);
        assert_eq!(t.rekey_after_messages, 1u64 << 60);
        let mut r = t.rekey_timeout;
        let seq: Vec<u64> = (0..6)
            .map(|_| {
                let s = r.as_secs();
                r = t.next_retry(r);
                s
            })
            .collect();
        assert_eq!(seq, [5, 10, 20, 40, 60, 60]);
        assert_eq!(HandshakeTimers::scaled(10).rekey_after_time.as_secs(), 12);
    }
}
