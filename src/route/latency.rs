//! DELAY probe bookkeeping and RTT smoothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Millisecond timestamps for DELAY probes, counted from the router's
/// creation. Only we read our own timestamps back (PROTOCOL §1.1), so any
/// monotonic origin works and it keeps the sans-IO core free of a clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BootClock {
    epoch: Instant,
}

impl BootClock {
    pub(crate) fn new(epoch: Instant) -> Self {
        BootClock { epoch }
    }

    pub(crate) fn ms(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }
}

/// Smoothed RTT: an EWMA with gain 1/4, kept in 1/16 ms fixed point so
/// results are deterministic and integer-exact in simulations.
///
/// Why 1/4 rather than TCP's 1/8 (RFC 6298): we get one sample per probe
/// interval (a minute by default), not one per ACK. 1/8 would take ~10
/// minutes to follow a real path change; 1/4 follows a step within ~4
/// samples and still shrinks the noise variance to 1/7 of a single sample's
/// (variance factor g/(2-g)), which is what the hysteresis margin relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Srtt {
    x16: u64,
}

const SRTT_FRAC: u64 = 16;
const SRTT_GAIN_SHIFT: u32 = 2;

impl Srtt {
    pub fn first(sample_ms: u32) -> Self {
        Srtt {
            x16: u64::from(sample_ms) * SRTT_FRAC,
        }
    }

    pub fn update(&mut self, sample_ms: u32) {
        let sample = (u64::from(sample_ms) * SRTT_FRAC) as i64;
        let cur = self.x16 as i64;
        self.x16 = (cur + ((sample - cur) >> SRTT_GAIN_SHIFT)) as u64;
    }

    /// Rounded to whole ms, the unit of the wire metric.
    pub fn ms(&self) -> u32 {
        u32::try_from((self.x16 + SRTT_FRAC / 2) / SRTT_FRAC).unwrap_or(u32::MAX)
    }
}

/// Probes we sent and have not seen echoed. Keeping them lets us reject
/// replayed or forged echoes (PROTOCOL §10.3): stock Candy accepts any DELAY
/// with `src` = self, which lets anyone on the network key poison RTTs.
const MAX_OUTSTANDING: usize = 4;

/// An echo older than this is not a latency sample worth trusting (the
/// metric ceiling is 1 s; anything this slow was queued, not routed).
const MAX_RTT_MS: i64 = 10_000;

/// A link without an RTT sample cannot carry routes, so a lost first probe
/// (or one the peer dropped because it did not yet count us as CONNECTED)
/// is retried this soon, doubling up to the probe interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ProbeState {
    pub(crate) next_probe: Instant,
    outstanding: VecDeque<i64>,
    pub(crate) srtt: Option<Srtt>,
    /// Probes sent since the link came up that have had no echo yet, while
    /// `srtt` is still `None`.
    unmeasured_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoError {
    /// No matching outstanding probe: replayed, forged or very late.
    Unsolicited,
    /// Timestamp in our future or absurdly far in the past.
    BadTimestamp,
}

impl ProbeState {
    pub(crate) fn new(next_probe: Instant) -> Self {
        ProbeState {
            next_probe,
            outstanding: VecDeque::with_capacity(MAX_OUTSTANDING),
            srtt: None,
            unmeasured_retries: 0,
        }
    }

    /// When to probe again after a probe sent at `now` while the link has
    /// no sample yet: 1 s, 2 s, 4 s, … never later than `interval`.
    pub(crate) fn unmeasured_retry_at(&mut self, now: Instant, interval: Duration) -> Instant {
        let wait = FIRST_RETRY
            .saturating_mul(1 << self.unmeasured_retries.min(16))
            .min(interval);
        self.unmeasured_retries = self.unmeasured_retries.saturating_add(1);
        now + wait
    }

    /// Records a probe; returns false if one with the same timestamp is
    /// already in flight (two probes in one ms are the same probe: either
    /// echo answers it, once).
    pub(crate) fn sent(&mut self, ts_ms: i64) -> bool {
        if self.outstanding.contains(&ts_ms) {
            return false;
        }
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(ts_ms);
        true
    }

    /// Consumes the probe `ts_ms` and folds the RTT into the smoothed value.
    pub(crate) fn echoed(&mut self, ts_ms: i64, now_ms: i64) -> Result<u32, EchoError> {
        let rtt = now_ms.checked_sub(ts_ms).ok_or(EchoError::BadTimestamp)?;
        if !(0..=MAX_RTT_MS).contains(&rtt) {
            return Err(EchoError::BadTimestamp);
        }
        let pos = self
            .outstanding
            .iter()
            .position(|&t| t == ts_ms)
            .ok_or(EchoError::Unsolicited)?;
        self.outstanding.remove(pos);
        let rtt = rtt as u32;
        match &mut self.srtt {
            Some(s) => s.update(rtt),
            None => self.srtt = Some(Srtt::first(rtt)),
        }
        Ok(rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtt_converges_and_smooths() {
        let mut s = Srtt::first(100);
        assert_eq!(s.ms(), 100);
        s.update(20);
        assert_eq!(s.ms(), 80);
        for _ in 0..30 {
            s.update(20);
        }
        assert_eq!(s.ms(), 20);
    }

    #[test]
    fn echo_must_match_an_outstanding_probe_once() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(t0);
        assert!(p.sent(1000));
        assert!(!p.sent(1000));
        assert_eq!(p.echoed(1000, 1042), Ok(42));
        assert_eq!(p.echoed(1000, 1050), Err(EchoError::Unsolicited));
        assert_eq!(p.echoed(5000, 1050), Err(EchoError::BadTimestamp));
        assert_eq!(p.srtt.map(|s| s.ms()), Some(42));
    }

    #[test]
    fn outstanding_is_bounded() {
        let mut p = ProbeState::new(Instant::now());
        for ts in 0..10 {
            p.sent(ts);
        }
        assert_eq!(p.echoed(0, 20), Err(EchoError::Unsolicited));
        assert_eq!(p.echoed(9, 20), Ok(11));
    }
}
