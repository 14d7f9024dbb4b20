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
//! - between attempts of one pair, Candy's WAITING interval (30 s, doubling
//!   to an hour), or a sixth of it after a missed birthday draw (5 s,
//!   doubling to 10 minutes; `peer::machine`);
//! - one hard-NAT attempt per node at a time (the caller's job: these
//!   budgets are per node, not per peer).
//!
//! # Primers (a fresh port's first datagram)
//!
//! A router with no input firewall (a bare Linux masquerade) accepts a
//! datagram for its own address that matches no session, and conntrack
//! keeps an entry for it. Its own host's later flow back to that sender
//! would have the entry's tuple, so masquerade maps the flow to another
//! port, which the sender's filter drops. So a fresh port does not open
//! with a heartbeat that reaches the peer's router before the peer has
//! sent to it: its first datagram to the peer's mapping is a *primer*, the
//! same sealed heartbeat with IP TTL [`PRIMER_TTL`] = 2. That passes our
//! own router (which forwards it with TTL 1, creating our session towards
//! the peer) and expires at the next router. The peer hears of the port
//! only afterwards (STUN, then a UDP4CONN through the server), so its
//! challenge comes later than the primer by causality, not by a timer, and
//! finds our session waiting; our answers go out on that session. Nothing
//! needs to reach the peer: a full or restricted cone learns the port from
//! the same announcement.
//!
//! Why 2: a host behind one router needs 2 (a router drops a datagram that
//! arrives with TTL 1 before its source NAT applies). It must not reach
//! the peer's router, which is at least 2 routers further on the internet
//! (our ISP's first router, then the peer's gateway), and at least 1 in
//! the NAT lab. The trade-off: behind two NATs (a home router behind a
//! carrier NAT) it takes 3 to reach the outer one, so the primer opens
//! only the inner one and the outer one drops the peer's challenge to
//! this port; the pair then goes direct through the peer's fresh port,
//! which primed its own side. ringlink on the gateway itself passes its
//! NAT with 1, so its primer dies one router later than it needs to,
//! still short of a peer gateway that is not its neighbour. A larger TTL,
//! or a set of them, would reach the peer's router wherever the two
//! gateways are fewer routers apart, which is exactly what must not
//! happen.
//!
//! # Prediction (a sequential symmetric NAT and a port-filtering cone)
//!
//! A sequential NAT gives session k+1 the port of session k plus Δ, and
//! every host behind it draws from that one counter, so a port learned
//! minutes ago (the classification's, or the data socket's long-lived
//! session to STUN) says little about the next one. The sequential side
//! therefore observes right before the peer sprays: each round it opens a
//! fresh socket whose first datagram is a STUN request, so the answer is
//! the newest port the NAT gave out (`c`), and announces it. The cone side
//! waits for that announcement, then sprays `c − 4Δ … c − Δ` and
//! `c + Δ … c + 60Δ` ([`window_spray`], [`WINDOW_BEHIND`],
//! [`WINDOW_AHEAD`]) from a fresh port of its own, and only then
//! announces that port. The sequential side's challenge to it opens the
//! next session on its NAT, `c + (1 + d)Δ` after d foreign sessions, which
//! the spray has opened the cone's filter for when d < 60.
//!
//! The window is widened by the drift it measures: the ports between two
//! announcements of the peer over the time between them, times the 2 s an
//! announcement, a spray and the peer's answer take ([`widened_ahead`]),
//! up to [`WINDOW_AHEAD_MAX`] = 180. After its announcement the cone
//! sprays the unwidened window from its main port as well: the sequential
//! side's first challenges to the cone's main mapping left just before
//! the observation, from ports the window reaches back to, and behind a
//! cone with an input firewall that is the quickest path. An attempt runs
//! up to [`PREDICTION_ROUNDS`] = 3 rounds, each on a fresh observation,
//! and the cone one more on the mapping it knows if no observation comes
//! within 2 ticks: at most 4 × (2 + 4 + 180 + 4 + 60) = 1000 packets on
//! the cone side, 3 on the sequential side.
//!
//! # Two sequential NATs
//!
//! Both sides observe their base as above (a₀, b₀) and announce it; the
//! follower sprays from its fresh socket once it has the leader's base,
//! the leader once it has the follower's. The leader's k-th probe goes to
//! b₀ + (2k − 1)Δ_B, the follower's j-th to a₀ + jΔ_A ([`stride_spray`]).
//! Each probe to a new port opens the next session of its fresh socket, so
//! after d_A and d_B foreign sessions the leader's k-th probe leaves from
//! a₀ + (k + d_A)Δ_A and the follower's j-th from b₀ + (j + d_B)Δ_B. The
//! pair meets where a₀ + jΔ_A = a₀ + (k + d_A)Δ_A and
//! b₀ + (2k − 1)Δ_B = b₀ + (j + d_B)Δ_B, that is at k = d_A + d_B + 1,
//! j = 2d_A + d_B + 1: for any drift below the leader's count. Drift that
//! grows during the spray still meets: k − d_A − d_B rises by at most 1
//! per probe, so it cannot step over 1. Whichever of the two probes comes
//! second finds the other's session and gets through. With
//! [`STRIDE_PROBES`] = 64 for the leader and 128 for the follower, drift up
//! to 63 sessions is crossed; per round 65 and 129 packets (0.3 s and
//! 0.6 s at 200/s), per attempt of 3 rounds 195 and 387 (516 if the
//! follower, not hearing from the leader, once acts alone). If both NATs
//! are quiet P = 1; a round misses only when d_A + d_B > 63, and the next
//! round observes afresh.
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
//! With n = [`BIRTHDAY_SOCKETS`] = 256 and m = [`BIRTHDAY_PROBES`] = 510:
//! n·m/N = 2.02, P ≈ 0.868 per round, sent in 2.6 s (cone side) and then
//! 1.3 s (symmetric side). An attempt runs [`BIRTHDAY_ROUNDS`] = 2 rounds,
//! each a fresh draw (a new cone port, so new random mappings on the other
//! side): P ≈ 1 − 0.132² ≈ 0.983 per attempt, for 1024 packets from the
//! cone and 512 from the symmetric side. Two rounds of 510 beat one of
//! 768 with the same sockets on both counts: the first round's hit comes
//! 1.3 s sooner, and the pair of rounds misses 1.7 % of the time instead
//! of 4.7 %.
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
//! that comes up in seconds. No schedule does better within a budget: a
//! sequential port carries one session, to one guessed random port, so
//! every hit needs one random-side session whose random port equals that
//! guess, each with chance 1/N. The sequential side observes its base as
//! in prediction, so the slots are the ports its NAT gives out next.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;

use super::class::Delta;
use super::method::Step;

pub const PACKETS_PER_SECOND: u32 = 200;
pub const MAX_PACKETS_PER_ATTEMPT: usize = 1024;
/// IP TTL of a fresh port's first datagram to the peer (see "Primers").
pub const PRIMER_TTL: u8 = 2;
/// Ports sprayed before the peer's observed base: sessions its NAT opened
/// just before the observation (its first challenge to us).
pub const WINDOW_BEHIND: u16 = 4;
/// Ports sprayed after it, before widening.
pub const WINDOW_AHEAD: u16 = 60;
pub const WINDOW_AHEAD_MAX: u16 = 180;
/// Rounds of a prediction attempt, each on a fresh observation.
pub const PREDICTION_ROUNDS: u32 = 3;
/// The leader's probes between two sequential NATs (the follower sends
/// twice as many): the drift the pair crosses.
pub const STRIDE_PROBES: u16 = 64;
/// What a window's drift widening assumes between the peer's observation
/// and its probe through the window.
const WINDOW_LEAD_TIME: Duration = Duration::from_secs(2);
pub const BIRTHDAY_SOCKETS: usize = 256;
/// The cone's probes per round of a birthday attempt.
pub const BIRTHDAY_PROBES: usize = 510;
/// Rounds of a birthday attempt, each an independent draw: the cone sprays
/// from a fresh port and the symmetric side's sockets aim at that port.
pub const BIRTHDAY_ROUNDS: u32 = 2;
pub const PB_SLOTS: usize = 32;
pub const PB_PER_SLOT: usize = 31;
/// Ports NATs allocate from (Linux: 1024–65535).
pub const PORT_LOW: u16 = 1024;
pub const PORT_SPACE: usize = 65536 - PORT_LOW as usize;

// The chosen numbers fit one attempt's budget, checked when compiling.
// Birthday: the cone's fresh port sends two datagrams besides its spray;
// the symmetric side may add a round on what it knows when the cone is
// silent.
const _: () = assert!(BIRTHDAY_ROUNDS as usize * (2 + BIRTHDAY_PROBES) <= MAX_PACKETS_PER_ATTEMPT);
const _: () = assert!((BIRTHDAY_ROUNDS as usize + 1) * BIRTHDAY_SOCKETS <= MAX_PACKETS_PER_ATTEMPT);
const _: () = assert!(PB_SLOTS * PB_PER_SLOT <= MAX_PACKETS_PER_ATTEMPT);
// Prediction's followers may add one round on what they know when the
// leader stays silent.
const _: () = assert!(
    (PREDICTION_ROUNDS as usize + 1)
        * (2 + 2 * WINDOW_BEHIND as usize + WINDOW_AHEAD_MAX as usize + WINDOW_AHEAD as usize)
        <= MAX_PACKETS_PER_ATTEMPT
);
const _: () = assert!(
    (PREDICTION_ROUNDS as usize + 1) * (1 + 2 * STRIDE_PROBES as usize) <= MAX_PACKETS_PER_ATTEMPT
);

/// One probe: from the caller's socket `socket` to `target`, `at` after
/// the attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    pub socket: usize,
    pub target: SocketAddrV4,
    pub at: Duration,
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

/// `last` + `step`·`k` on the 16-bit port ring, port 0 read as 1.
fn port_at(last: u16, step: i32, k: i32) -> u16 {
    let p = (i32::from(last) + step.wrapping_mul(k)).rem_euclid(65536) as u16;
    p.max(1)
}

/// The ports after `last` on a NAT stepping by `step`, skipping port 0.
fn predicted_ports(last: u16, step: i32, count: usize) -> impl Iterator<Item = u16> {
    (1..=count as i32).map(move |k| port_at(last, step, k))
}

/// The window `last + step·1 … last + step·window` of the peer's address,
/// from the main socket.
pub fn prediction_spray(peer_last: SocketAddrV4, step: i32, window: usize) -> Vec<Send> {
    let ip = *peer_last.ip();
    paced(predicted_ports(peer_last.port(), step, window).map(|p| (0, SocketAddrV4::new(ip, p))))
}

/// The window around the peer's observed base: `behind` ports before it
/// and `ahead` after it, stepping by `step`, the base itself left out (its
/// session is the peer's STUN request).
pub fn window_spray(base: SocketAddrV4, step: i32, behind: u16, ahead: u16) -> Vec<Send> {
    let ip = *base.ip();
    let before = (1..=i32::from(behind))
        .rev()
        .map(move |k| port_at(base.port(), -step, k));
    let after = (1..=i32::from(ahead)).map(move |k| port_at(base.port(), step, k));
    paced(before.chain(after).map(|p| (0, SocketAddrV4::new(ip, p))))
}

/// Between two sequential NATs: `count` probes to the peer's observed
/// base + (`stride`·(k − 1) + 1)·`step`, k = 1…count: its next port, then
/// every `stride`-th one.
pub fn stride_spray(base: SocketAddrV4, step: i32, stride: i32, count: u16) -> Vec<Send> {
    let ip = *base.ip();
    paced((1..=i32::from(count)).map(|k| {
        let offset = stride.saturating_mul(k - 1).saturating_add(1);
        (0, SocketAddrV4::new(ip, port_at(base.port(), step, offset)))
    }))
}

/// The ports after the window's `ahead` the peer's NAT may give out before
/// its probe arrives, from two of its announcements (`earlier`, `later`:
/// port and arrival): its measured sessions per second over
/// [`WINDOW_LEAD_TIME`], added to `ahead`, at most [`WINDOW_AHEAD_MAX`]. A
/// counter that did not move forward (or one announcement) widens nothing.
pub fn widened_ahead(
    ahead: u16,
    step: i32,
    earlier: Option<(u16, std::time::Instant)>,
    later: (u16, std::time::Instant),
) -> u16 {
    let Some((p0, t0)) = earlier else {
        return ahead;
    };
    let secs = later.1.saturating_duration_since(t0).as_secs_f64();
    let moved = i32::from(later.0.wrapping_sub(p0) as i16);
    let sessions = if step == 0 { 0 } else { moved / step };
    if secs <= 0.0 || sessions <= 0 {
        return ahead;
    }
    let extra = (f64::from(sessions) / secs * WINDOW_LEAD_TIME.as_secs_f64()).ceil();
    let extra = extra.min(f64::from(WINDOW_AHEAD_MAX)) as u16;
    ahead.saturating_add(extra).min(WINDOW_AHEAD_MAX)
}

/// The most packets one round of `step` sends (a window at its widest).
pub fn packets_per_round(step: Step) -> usize {
    match step {
        Step::FreshPort => 2,
        Step::Observe => 1,
        Step::ObserveAndStride { count, .. } | Step::ObserveAndBirthday { count } => {
            1 + usize::from(count)
        }
        // The fresh port's window, widened at most, and the main port's.
        Step::FreshPortWindow { behind, .. } => {
            2 + 2 * usize::from(behind) + usize::from(WINDOW_AHEAD_MAX) + usize::from(WINDOW_AHEAD)
        }
        Step::FreshPortBirthday { count } => 2 + usize::from(count),
        Step::Sockets { count } => usize::from(count),
        Step::SlotSockets { slots, per_slot } => usize::from(slots) * usize::from(per_slot),
    }
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
        assert_within_budget(&window_spray(peer, 1, WINDOW_BEHIND, WINDOW_AHEAD_MAX));
        assert_within_budget(&stride_spray(peer, 1, 2, STRIDE_PROBES));
        assert_within_budget(&stride_spray(peer, 1, 1, 2 * STRIDE_PROBES));
        assert_within_budget(&open_sockets(peer, BIRTHDAY_SOCKETS));
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

    /// A sequential NAT observed at `c` by a fresh socket's STUN request,
    /// then `foreign` sessions of another host, then its challenge to the
    /// cone's fresh port, which sprayed the window around `c` first: does
    /// the challenge get in?
    fn window_hits(foreign: u16) -> bool {
        let cone: SocketAddrV4 = CONE.parse().unwrap();
        let mut nat = SimNat::symmetric_sequential(1);
        let c = nat.outbound(host(2, 40001), STUN.parse().unwrap());
        for f in 0..foreign {
            nat.outbound(
                host(9, 5000),
                SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 1000 + f),
            );
        }
        let challenge = nat.outbound(host(2, 40000), cone);
        window_spray(c, 1, WINDOW_BEHIND, WINDOW_AHEAD)
            .iter()
            .any(|s| s.target == challenge)
    }

    #[test]
    fn the_window_tolerates_foreign_sessions_up_to_its_width() {
        for foreign in 0..WINDOW_AHEAD {
            assert!(window_hits(foreign), "{foreign} foreign sessions");
        }
        assert!(!window_hits(WINDOW_AHEAD));
        assert!(!window_hits(300));
        let base: SocketAddrV4 = "198.51.100.7:20010".parse().unwrap();
        let ports: Vec<u16> = window_spray(base, 1, 2, 3)
            .iter()
            .map(|s| s.target.port())
            .collect();
        assert_eq!(ports, [20008, 20009, 20011, 20012, 20013]);
    }

    #[test]
    fn measured_drift_widens_the_window() {
        let t0 = std::time::Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        // One announcement: nothing to measure.
        assert_eq!(widened_ahead(60, 1, None, (20100, t1)), 60);
        // 90 sessions in 3 s: 30/s, over the 2 s lead: 60 more.
        assert_eq!(widened_ahead(60, 1, Some((20010, t0)), (20100, t1)), 120);
        // Across the end of the port ring, and with a step of 2.
        assert_eq!(widened_ahead(60, 2, Some((65530, t0)), (50, t1)), 79);
        // A counter that went back, or a flood, stays within bounds.
        assert_eq!(widened_ahead(60, 1, Some((20100, t0)), (20010, t1)), 60);
        assert_eq!(
            widened_ahead(60, 1, Some((1000, t0)), (31000, t1)),
            WINDOW_AHEAD_MAX
        );
    }

    /// Two sequential NATs, each observed by its fresh socket, the leader
    /// (stride 2) with `da` foreign sessions and the follower (stride 1)
    /// with `db`, half of each before its spray and half during it.
    fn two_sequential_meet(da: u16, db: u16) -> bool {
        let mut a = SimNat::symmetric_sequential(1);
        let mut b = SimNat::symmetric_sequential(2).at(Ipv4Addr::new(198, 51, 100, 8));
        let stun: SocketAddrV4 = STUN.parse().unwrap();
        let (la, lb) = (host(2, 40000), host(3, 41000));
        let a0 = a.outbound(la, stun);
        let b0 = b.outbound(lb, stun);
        let foreign = |nat: &mut SimNat, n: u16, tag: u16| {
            for f in 0..n {
                nat.outbound(
                    host(9, 5000 + tag),
                    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 1000 + f),
                );
            }
        };
        foreign(&mut a, da / 2, 0);
        foreign(&mut b, db / 2, 0);
        let from_a = stride_spray(b0, 1, 2, STRIDE_PROBES);
        let from_b = stride_spray(a0, 1, 1, 2 * STRIDE_PROBES);
        // The follower sprays first (it has the leader's base first); the
        // leader's probes then interleave with the rest of it. Foreign
        // sessions land in the middle of each spray.
        let mut sent_by_a = Vec::new();
        let mut sent_by_b = Vec::new();
        for (i, y) in from_b.iter().enumerate() {
            if i == from_b.len() / 2 {
                foreign(&mut b, db - db / 2, 1);
            }
            sent_by_b.push((b.outbound(lb, y.target), y.target.port()));
            if let Some(x) = i.checked_sub(8).and_then(|k| from_a.get(k)) {
                if i - 8 == from_a.len() / 2 {
                    foreign(&mut a, da - da / 2, 1);
                }
                sent_by_a.push((a.outbound(la, x.target), x.target.port()));
            }
        }
        // Every probe is delivered after both sprays: the later of a
        // matching pair always finds the other's session.
        let a_in = sent_by_b.iter().any(|&(src, port)| a.inbound(src, port));
        let b_in = sent_by_a.iter().any(|&(src, port)| b.inbound(src, port));
        a_in && b_in
    }

    #[test]
    fn two_sequential_nats_meet_with_drift_up_to_the_leaders_count() {
        for (da, db) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (3, 7),
            (20, 20),
            (40, 23),
            (0, 63),
            (63, 0),
        ] {
            assert!(two_sequential_meet(da, db), "drift {da} + {db}");
        }
        assert!(!two_sequential_meet(40, 40), "drift 80 is past the window");
        let base: SocketAddrV4 = "198.51.100.7:20000".parse().unwrap();
        let ports = |stride| -> Vec<u16> {
            stride_spray(base, 1, stride, 3)
                .iter()
                .map(|s| s.target.port())
                .collect()
        };
        assert_eq!(ports(2), [20001, 20003, 20005]);
        assert_eq!(ports(1), [20001, 20002, 20003]);
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
        // Chosen numbers: P ≈ 0.868 a round; 400 runs put the share within
        // ±0.05 with > 2.9σ to spare (σ ≈ 0.017).
        let p = birthday_probability(BIRTHDAY_SOCKETS, BIRTHDAY_PROBES);
        assert!((p - 0.868).abs() < 0.001, "{p}");
        let attempt = 1.0 - (1.0 - p).powi(BIRTHDAY_ROUNDS as i32);
        assert!((attempt - 0.983).abs() < 0.001, "{attempt}");
        let rate = birthday_hit_rate(BIRTHDAY_SOCKETS, BIRTHDAY_PROBES, 400);
        assert!((rate - p).abs() < 0.05, "rate {rate} vs P {p}");
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
