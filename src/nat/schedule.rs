//! Probe schedules for the hard-NAT methods, as pure generators of
//! (local socket, target, send time). The caller sends each [`Send`] at
//! `start + at` from its socket `socket` (0 is the main one; others are
//! extra sockets it opened for the attempt) and stops at the first
//! authenticated answer.
//!
//! # Budgets
//!
//! Every probe to a new endpoint creates a session on our router (and, for a
//! symmetric NAT, a mapping), held ~30 s unreplied (Linux
//! `nf_conntrack_udp_timeout`) and ~120–180 s once answered. Small routers
//! hold 4k–16k sessions for the whole household, so:
//!
//! - [`MAX_PACKETS_PER_ATTEMPT`] = 1024 per side: at most a quarter of a 4k
//!   table, even if every probe opened a session;
//! - [`PACKETS_PER_SECOND`] = 200 (one probe per 5 ms): a 1024-probe
//!   attempt takes 5.1 s, which keeps the bursts small for the router and
//!   its uplink (≈ 20 kB/s of 100-byte probes), yet ends inside the 10 s
//!   target for random symmetric pairs;
//! - [`backoff`] between attempts of one pair: 2 s, 4 s, … capped at 64 s;
//! - one hard-NAT attempt per node at a time (the caller's job: these
//!   budgets are per node, not per peer).
//!
//! # Prediction (sequential symmetric NATs)
//!
//! A sequential NAT gives session k+1 the port of session k plus Δ. The
//! predicted side opens [`PREDICTION_SOCKETS`] = 8 fresh sessions towards
//! the other side's mapping ([`open_sockets`]), which take ports
//! last + Δ … last + 8Δ if nobody else behind that NAT opened sessions
//! since the classification measured `last`. The other side sprays the
//! [`PREDICTION_WINDOW`] = 64 ports last + Δ … last + 64Δ
//! ([`prediction_spray`]): one of the eight ports stays inside the window
//! with up to 63 foreign sessions in between. 72 packets in all. Two sequential NATs both spray: the k-th
//! probe of each leaves from its own k-th new port towards the other's k-th,
//! so the pairs meet when neither NAT saw foreign sessions meanwhile.
//!
//! # Birthday (random symmetric ↔ cone)
//!
//! The symmetric side opens n sockets towards the cone's mapping (n random
//! mapped ports); the cone sprays m distinct random ports of the symmetric
//! side's address from its single mapping. A probe landing on one of the n
//! ports meets a session expecting exactly that source; either order works,
//! since the earlier packet's session admits the later one. Over a space of
//! N = 64512 ports (1024–65535, the Linux range):
//!
//! P(hit) = 1 − C(N−n, m)/C(N, m) ≈ 1 − exp(−n·m/N)
//!
//! With n = [`BIRTHDAY_SOCKETS`] = 256 and m = [`BIRTHDAY_PROBES`] = 768
//! (1024 packets in all): n·m/N = 3.05, P ≈ 0.953 per attempt, sent in
//! 1.3 s (symmetric side) and 3.8 s (cone side); two attempts: ≈ 0.998.
//!
//! # Prediction and birthday (sequential ↔ random)
//!
//! Both sides map per destination, so a hit needs a random-side session
//! (port p → sequential-side port s) and a sequential-side session (s → p)
//! at once. The sequential side's ports are predictable, so the random side
//! aims `per_slot` sockets at each of the next `slots` predicted ports
//! ([`prediction_and_birthday_random_side`]), and the sequential side
//! sprays `slots` random ports ([`birthday_spray`]) (its k-th probe leaves from its k-th
//! predicted port). Each spray probe meets its slot's `per_slot` random
//! ports with probability per_slot/N, so with R = slots·per_slot random-side
//! packets, P ≈ 1 − exp(−R/N): the random side's packets alone decide it.
//! Within the per-attempt budget (slots = 32, per_slot = 31, R = 992):
//! P ≈ 0.015 per attempt. That is the honest price of this pair: the method
//! exists, but it is a slow background attempt with backoff, not a path
//! that comes up in seconds.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;

use super::class::Delta;

pub const PACKETS_PER_SECOND: u32 = 200;
pub const MAX_PACKETS_PER_ATTEMPT: usize = 1024;
pub const PREDICTION_SOCKETS: usize = 8;
pub const PREDICTION_WINDOW: usize = 64;
pub const BIRTHDAY_SOCKETS: usize = 256;
pub const BIRTHDAY_PROBES: usize = 768;
pub const PB_SLOTS: usize = 32;
pub const PB_PER_SLOT: usize = 31;
/// Ports NATs allocate from (Linux: 1024–65535).
pub const PORT_LOW: u16 = 1024;
pub const PORT_SPACE: usize = 65536 - PORT_LOW as usize;

// The chosen numbers fit one attempt's budget, checked when compiling.
const _: () = assert!(BIRTHDAY_SOCKETS + BIRTHDAY_PROBES <= MAX_PACKETS_PER_ATTEMPT);
const _: () = assert!(PB_SLOTS * PB_PER_SLOT <= MAX_PACKETS_PER_ATTEMPT);
const _: () = assert!(PREDICTION_SOCKETS + PREDICTION_WINDOW <= MAX_PACKETS_PER_ATTEMPT);

const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(64);

/// One probe: from the caller's socket `socket` to `target`, `at` after
/// the attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    pub socket: usize,
    pub target: SocketAddrV4,
    pub at: Duration,
}

/// The wait before attempt number `attempt` (0 = the first retry) of one
/// pair.
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// The port step to predict with: the delta's value, or 1 when the delta
/// has none (preserving and equal NATs step with the local port, and the
/// caller opens consecutive local ports).
pub fn step_of(delta: Delta) -> i32 {
    match delta {
        Delta::Independent(d) | Delta::Dependent(d) => d,
        _ => 1,
    }
}

/// P(hit) ≈ 1 − exp(−n·m/N) for n sessions and m probes on the port space.
pub fn birthday_probability(sessions: usize, probes: usize) -> f64 {
    1.0 - (-(sessions as f64) * probes as f64 / PORT_SPACE as f64).exp()
}

/// Paces probes at [`PACKETS_PER_SECOND`] and cuts them at the budget.
fn paced(probes: impl Iterator<Item = (usize, SocketAddrV4)>) -> Vec<Send> {
    let gap = Duration::from_secs(1) / PACKETS_PER_SECOND;
    probes
        .take(MAX_PACKETS_PER_ATTEMPT)
        .enumerate()
        .map(|(i, (socket, target))| Send {
            socket,
            target,
            at: gap * i as u32,
        })
        .collect()
}

/// The symmetric side of prediction and birthday: `sockets` fresh sockets
/// (1, 2, …; the main socket's session already exists) each send once to
/// the other side's mapping.
pub fn open_sockets(target: SocketAddrV4, sockets: usize) -> Vec<Send> {
    paced((1..=sockets).map(|s| (s, target)))
}

/// The ports after `last` on a NAT stepping by `step`, skipping port 0.
fn predicted_ports(last: u16, step: i32, count: usize) -> impl Iterator<Item = u16> {
    (1..=count as i32).map(move |k| {
        let p = (i32::from(last) + step.wrapping_mul(k)).rem_euclid(65536) as u16;
        if p == 0 {
            1
        } else {
            p
        }
    })
}

/// The window `last + step·1 … last + step·window` of the peer's address,
/// from the main socket.
pub fn prediction_spray(peer_last: SocketAddrV4, step: i32, window: usize) -> Vec<Send> {
    let ip = *peer_last.ip();
    paced(predicted_ports(peer_last.port(), step, window).map(|p| (0, SocketAddrV4::new(ip, p))))
}

/// `probes` distinct random ports of `peer_ip` in the NAT range, from the
/// main socket; `seed` comes from the caller's RNG.
pub fn birthday_spray(peer_ip: Ipv4Addr, probes: usize, seed: u64) -> Vec<Send> {
    let mut rng = StdRng::seed_from_u64(seed);
    let m = probes.min(PORT_SPACE).min(MAX_PACKETS_PER_ATTEMPT);
    let ports = sample(&mut rng, PORT_SPACE, m);
    paced(
        ports
            .into_iter()
            .map(|i| (0, SocketAddrV4::new(peer_ip, PORT_LOW + i as u16))),
    )
}

/// The random side of sequential ↔ random: `per_slot` sockets aimed at each
/// of the sequential peer's next `slots` ports, slot by slot (its spray
/// uses them in that order). Every probe is from a different socket or to a
/// different port, so each opens its own random mapping.
pub fn prediction_and_birthday_random_side(
    peer_last: SocketAddrV4,
    step: i32,
    slots: usize,
    per_slot: usize,
) -> Vec<Send> {
    let ip = *peer_last.ip();
    paced(
        predicted_ports(peer_last.port(), step, slots)
            .flat_map(move |p| (1..=per_slot).map(move |s| (s, SocketAddrV4::new(ip, p)))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::sim::SimNat;

    fn assert_within_budget(sends: &[Send]) {
        assert!(!sends.is_empty());
        assert!(
            sends.len() <= MAX_PACKETS_PER_ATTEMPT,
            "{} packets",
            sends.len()
        );
        assert!(
            sends.windows(2).all(|w| w[0].at <= w[1].at),
            "send times go forward"
        );
        for (i, s) in sends.iter().enumerate() {
            let in_one_second = sends[i..]
                .iter()
                .take_while(|x| x.at < s.at + Duration::from_secs(1))
                .count();
            assert!(
                in_one_second <= PACKETS_PER_SECOND as usize,
                "{in_one_second} in 1 s from {:?}",
                s.at
            );
        }
    }

    fn host(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, last), port)
    }

    const STUN: &str = "192.0.2.1:3478";
    const CONE: &str = "203.0.113.50:4000";

    #[test]
    fn every_schedule_stays_within_its_budget() {
        let peer: SocketAddrV4 = "198.51.100.7:20000".parse().unwrap();
        assert_within_budget(&open_sockets(peer, PREDICTION_SOCKETS));
        assert_within_budget(&open_sockets(peer, BIRTHDAY_SOCKETS));
        assert_within_budget(&prediction_spray(peer, 1, PREDICTION_WINDOW));
        assert_within_budget(&birthday_spray(*peer.ip(), BIRTHDAY_PROBES, 1));
        assert_within_budget(&prediction_and_birthday_random_side(
            peer,
            1,
            PB_SLOTS,
            PB_PER_SLOT,
        ));
        // Asking for more than the budget gets the budget.
        assert_eq!(
            birthday_spray(*peer.ip(), 60000, 1).len(),
            MAX_PACKETS_PER_ATTEMPT
        );
        assert_eq!(
            prediction_spray(peer, 1, 5000).len(),
            MAX_PACKETS_PER_ATTEMPT
        );
        assert_within_budget(&prediction_spray(peer, 1, 5000));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..10).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 64, 64, 64, 64]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn predicted_ports_wrap_and_skip_zero() {
        let peer: SocketAddrV4 = "198.51.100.7:65534".parse().unwrap();
        let ports: Vec<u16> = prediction_spray(peer, 1, 3)
            .iter()
            .map(|s| s.target.port())
            .collect();
        assert_eq!(ports, [65535, 1, 1]);
        let down: Vec<u16> = prediction_spray(peer, -2, 2)
            .iter()
            .map(|s| s.target.port())
            .collect();
        assert_eq!(down, [65532, 65530]);
    }

    #[test]
    fn birthday_spray_is_distinct_ports_in_the_nat_range() {
        let sends = birthday_spray(Ipv4Addr::new(198, 51, 100, 7), BIRTHDAY_PROBES, 9);
        let mut ports: Vec<u16> = sends.iter().map(|s| s.target.port()).collect();
        assert!(ports.iter().all(|&p| p >= PORT_LOW));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), BIRTHDAY_PROBES);
        assert_ne!(
            sends,
            birthday_spray(Ipv4Addr::new(198, 51, 100, 7), BIRTHDAY_PROBES, 10)
        );
    }

    /// A sequential NAT whose classification saw `last`, then `foreign`
    /// sessions of another host, then the attempt: does the cone's spray
    /// meet one of the opened sockets?
    fn prediction_hits(foreign: u16) -> bool {
        let cone: SocketAddrV4 = CONE.parse().unwrap();
        let mut nat = SimNat::symmetric_sequential(1);
        let last = nat.outbound(host(2, 40000), STUN.parse().unwrap());
        for f in 0..foreign {
            nat.outbound(
                host(9, 5000),
                SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 1000 + f),
            );
        }
        for s in open_sockets(cone, PREDICTION_SOCKETS) {
            nat.outbound(host(2, 40000 + s.socket as u16), s.target);
        }
        prediction_spray(last, 1, PREDICTION_WINDOW)
            .iter()
            .any(|s| nat.inbound(cone, s.target.port()))
    }

    #[test]
    fn prediction_window_tolerates_foreign_sessions_up_to_its_width() {
        for foreign in 0..=63 {
            assert!(prediction_hits(foreign), "{foreign} foreign sessions");
        }
        assert!(!prediction_hits(64));
        assert!(!prediction_hits(300));
    }

    /// Two sequential NATs spraying each other's windows; `foreign` sessions
    /// on the second one after its classification.
    fn two_sequential_meet(foreign: u16) -> bool {
        let mut a = SimNat::symmetric_sequential(1);
        let mut b = SimNat::symmetric_sequential(2).at(Ipv4Addr::new(198, 51, 100, 8));
        let stun: SocketAddrV4 = STUN.parse().unwrap();
        let (la, lb) = (host(2, 40000), host(3, 41000));
        let a_last = a.outbound(la, stun);
        let b_last = b.outbound(lb, stun);
        for f in 0..foreign {
            b.outbound(
                host(9, 5000),
                SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 1000 + f),
            );
        }
        let from_a = prediction_spray(b_last, 1, PREDICTION_WINDOW);
        let from_b = prediction_spray(a_last, 1, PREDICTION_WINDOW);
        let mut sent_by_a = Vec::new();
        for (x, y) in from_a.iter().zip(&from_b) {
            sent_by_a.push((a.outbound(la, x.target), x.target.port()));
            b.outbound(lb, y.target);
        }
        // A's probe k arrives at B after B's probe k has left.
        sent_by_a.iter().any(|&(src, port)| b.inbound(src, port))
    }

    #[test]
    fn two_sequential_nats_meet_unless_foreign_sessions_shift_one() {
        assert!(two_sequential_meet(0));
        // The documented limit: the pairs only meet in lockstep.
        assert!(!two_sequential_meet(3));
    }

    /// Share of `runs` seeded birthday attempts between a random symmetric
    /// NAT (`sockets` opened towards the cone) and a cone spraying `probes`.
    fn birthday_hit_rate(sockets: usize, probes: usize, runs: u64) -> f64 {
        let cone: SocketAddrV4 = CONE.parse().unwrap();
        let hits = (0..runs)
            .filter(|&seed| {
                let mut nat = SimNat::symmetric_random(seed);
                for s in open_sockets(cone, sockets) {
                    nat.outbound(host(2, 40000 + s.socket as u16), s.target);
                }
                let public = nat.outbound(host(2, 40000), STUN.parse().unwrap());
                birthday_spray(*public.ip(), probes, seed ^ 0x5eed)
                    .iter()
                    .any(|s| nat.inbound(cone, s.target.port()))
            })
            .count();
        hits as f64 / runs as f64
    }

    #[test]
    fn birthday_hits_with_the_stated_probability() {
        // Chosen numbers: P ≈ 0.953; 400 runs put the share within ±0.03
        // with > 3σ to spare (σ ≈ 0.011).
        let p = birthday_probability(BIRTHDAY_SOCKETS, BIRTHDAY_PROBES);
        assert!((p - 0.953).abs() < 0.001, "{p}");
        let rate = birthday_hit_rate(BIRTHDAY_SOCKETS, BIRTHDAY_PROBES, 400);
        assert!((rate - p).abs() < 0.035, "rate {rate} vs P {p}");
        // A mid-range point checks the formula where it bends: P ≈ 0.224.
        let p = birthday_probability(64, 256);
        let rate = birthday_hit_rate(64, 256, 400);
        assert!((rate - p).abs() < 0.07, "rate {rate} vs P {p}");
    }

    #[test]
    fn prediction_and_birthday_hits_with_the_stated_probability() {
        // P ≈ 1 − exp(−992/64512) ≈ 0.0153 per attempt; 1000 runs expect
        // ~15 hits (σ ≈ 3.9): accept 4..=30.
        let stun: SocketAddrV4 = STUN.parse().unwrap();
        let hits = (0..1000u64)
            .filter(|&seed| {
                let mut seq = SimNat::symmetric_sequential(seed);
                let rnd_ip = Ipv4Addr::new(198, 51, 100, 9);
                let mut rnd = SimNat::symmetric_random(seed).at(rnd_ip);
                let ls = host(2, 40000);
                let seq_last = seq.outbound(ls, stun);
                for s in prediction_and_birthday_random_side(seq_last, 1, PB_SLOTS, PB_PER_SLOT) {
                    rnd.outbound(host(3, 41000 + s.socket as u16), s.target);
                }
                birthday_spray(rnd_ip, PB_SLOTS, seed ^ 0x5eed)
                    .iter()
                    .any(|s| {
                        let from = seq.outbound(ls, s.target);
                        rnd.inbound(from, s.target.port())
                    })
            })
            .count();
        assert!((4..=30).contains(&hits), "{hits} hits in 1000");
        let p = birthday_probability(1, PB_SLOTS * PB_PER_SLOT);
        assert!((p - 0.0153).abs() < 0.001, "{p}");
    }
}
