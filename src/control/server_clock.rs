//! The server's clock as this node sees it, from TIME samples over the
//! WebSocket (docs/protocol.md §4.11), and the public address the server
//! sees our connection come from. Both sides of a TCP hole punch talk to
//! the same server, so meeting at an instant of its clock needs no NTP.
//!
//! Sans-IO: the caller passes `now` and the TIME messages that arrive, and
//! sends the requests [`ServerClock::poll_request`] hands out. Our own
//! timestamps are nanoseconds since the clock was made (a monotonic
//! `Instant`), opaque to the server, which echoes them.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::proto::ws::Time;

/// Samples taken in a burst when the server first says it speaks TIME,
/// and their spacing; then one a minute keeps the estimate fresh.
const BURST: u8 = 5;
const BURST_EVERY: Duration = Duration::from_millis(200);
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Samples kept; the one with the shortest round trip wins, as in NTP's
/// clock filter: queueing delays only ever lengthen a round trip, and the
/// shortest one bounds the error best.
const KEEP: usize = 8;
/// Answers slower than this are not used: the error bound (half the round
/// trip) would be too loose to meet within.
const MAX_RTT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Sample {
    rtt: Duration,
    /// The server's time minus ours, in ns.
    offset: i128,
}

pub struct ServerClock {
    epoch: Instant,
    /// The server speaks TIME: it sent one unasked.
    speaks: bool,
    observed: Option<SocketAddrV4>,
    samples: Vec<Sample>,
    next: Option<Instant>,
    burst_left: u8,
}

impl ServerClock {
    pub fn new(now: Instant) -> Self {
        ServerClock {
            epoch: now,
            speaks: false,
            observed: None,
            samples: Vec::new(),
            next: None,
            burst_left: 0,
        }
    }

    fn local_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A TIME from the server.
    pub fn on_time(&mut self, t: Time, now: Instant) {
        let Some((server, seen)) = t.answer else {
            return;
        };
        self.observed = Some(seen);
        if t.echo == 0 {
            // Unasked: the server speaks TIME (again, after a reconnect).
            self.speaks = true;
            self.burst_left = BURST;
            self.next = Some(now);
            return;
        }
        let sent = t.echo - 1;
        let here = self.local_ns(now);
        if sent > here {
            return;
        }
        let rtt = Duration::from_nanos(here - sent);
        if rtt > MAX_RTT {
            return;
        }
        let midpoint = i128::from(sent) + i128::from(rtt.as_nanos() as u64 / 2);
        if self.samples.len() == KEEP {
            self.samples.remove(0);
        }
        self.samples.push(Sample {
            rtt,
            offset: i128::from(server) - midpoint,
        });
    }

    /// The request to send now, if one is due (only while the server link
    /// is up: the caller asks then).
    pub fn poll_request(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.next.filter(|&t| t <= now)?;
        if self.burst_left > 0 {
            self.burst_left -= 1;
        }
        self.next = Some(
            now + if self.burst_left > 0 {
                BURST_EVERY
            } else {
                REFRESH_EVERY
            },
        );
        // +1: 0 means "unasked".
        let echo = self.local_ns(now) + 1;
        Some(Time { echo, answer: None }.encode())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The server link went down: stop asking until the server speaks
    /// again (a new server may not).
    pub fn link_down(&mut self) {
        self.speaks = false;
        self.next = None;
    }

    /// The best sample: shortest round trip.
    fn best(&self) -> Option<Sample> {
        self.samples.iter().min_by_key(|s| s.rtt).copied()
    }

    /// Our public IPv4 address as the server sees it.
    pub fn observed(&self) -> Option<SocketAddrV4> {
        self.observed
    }

    /// How far off our reading of the server's clock may be: half the
    /// best round trip.
    pub fn uncertainty(&self) -> Option<Duration> {
        self.best().map(|s| s.rtt / 2)
    }

    /// The server's time (Unix ns) at our instant `at`.
    pub fn server_time(&self, at: Instant) -> Option<u64> {
        let s = self.best()?;
        u64::try_from(i128::from(self.local_ns(at)) + s.offset).ok()
    }

    /// Our instant at the server's time `t` (Unix ns); `None` before the
    /// first sample or before this clock began.
    pub fn local_instant(&self, t: u64) -> Option<Instant> {
        let s = self.best()?;
        let local = u64::try_from(i128::from(t) - s.offset).ok()?;
        Some(self.epoch + Duration::from_nanos(local))
    }

    pub fn speaks(&self) -> bool {
        self.speaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEN: &str = "198.51.100.7:40001";

    /// A server whose clock reads `offset` ns ahead of ours, answering
    /// after `there` and whose answer takes `back`.
    fn answer(c: &ServerClock, req: &[u8], sent: Instant, there: Duration, offset: u64) -> Time {
        let echo = u64::from_be_bytes(req[2..10].try_into().unwrap());
        let server = offset + c.local_ns(sent + there);
        Time {
            echo,
            answer: Some((server, SEEN.parse().unwrap())),
        }
    }

    #[test]
    fn samples_give_the_servers_clock_within_half_the_best_round_trip() {
        let t0 = Instant::now();
        let mut c = ServerClock::new(t0);
        assert!(
            c.poll_request(t0).is_none(),
            "asks nothing before the server speaks"
        );
        let offset = 1_700_000_000_000_000_000u64;
        c.on_time(
            Time {
                echo: 0,
                answer: Some((offset, SEEN.parse().unwrap())),
            },
            t0,
        );
        assert_eq!(c.observed(), Some(SEEN.parse().unwrap()));
        assert!(c.server_time(t0).is_none(), "no sample yet");
        // Asymmetric paths: 30 ms out and 10 back, then a quick 2 + 2.
        let mut now = t0;
        for (out, back) in [(30, 10), (2, 2), (40, 40)] {
            let req = c.poll_request(now).expect("a request in the burst");
            let a = answer(&c, &req, now, Duration::from_millis(out), offset);
            now += Duration::from_millis(out + back);
            c.on_time(a, now);
            now = c.poll_timeout().unwrap();
        }
        assert_eq!(c.uncertainty(), Some(Duration::from_millis(2)));
        let read = c.server_time(now).unwrap();
        let truth = offset + c.local_ns(now);
        assert!(
            read.abs_diff(truth) <= 2_000_000,
            "off by {} ns",
            read.abs_diff(truth)
        );
        let back = c.local_instant(read).unwrap();
        assert!(back.max(now) - back.min(now) < Duration::from_micros(1));
        // After the burst, one request a minute.
        for _ in 0..2 {
            assert!(c.poll_request(now).is_some());
            now = c.poll_timeout().unwrap();
        }
        assert!(c.poll_timeout().unwrap() - now <= REFRESH_EVERY);
    }

    #[test]
    fn slow_or_impossible_answers_are_not_used() {
        let t0 = Instant::now();
        let mut c = ServerClock::new(t0);
        c.on_time(
            Time {
                echo: 0,
                answer: Some((5, SEEN.parse().unwrap())),
            },
            t0,
        );
        let req = c.poll_request(t0).unwrap();
        let a = answer(&c, &req, t0, Duration::ZERO, 5);
        c.on_time(a, t0 + Duration::from_secs(1));
        // An echo from the future.
        c.on_time(
            Time {
                echo: u64::MAX,
                answer: Some((5, SEEN.parse().unwrap())),
            },
            t0 + Duration::from_secs(2),
        );
        assert!(c.server_time(t0).is_none());
        c.link_down();
        assert!(!c.speaks() && c.poll_timeout().is_none());
    }
}
