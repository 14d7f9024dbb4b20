//! The event-driven front of the routing logic: connectivity, DELAY, ROUTE
//! and timer events in; messages, deadlines and table snapshots out.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::advertise::message_for;
use super::config::{RouteConfig, RouteConfigError};
use super::latency::{BootClock, EchoError, ProbeState};
use super::nexthop::{NextHopTable, RouteStatus};
use super::table::{AdvertReject, Change, Table};
use super::Transmit;
use crate::counters::counters;
use crate::proto::udp::{Delay, PeerMessage, RouteAdvert};
use crate::rng::SplitMix64;

/// What happened to a received DELAY; for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayOutcome {
    /// A probe from a CONNECTED peer; the identical message was queued back.
    Echoed { to: Ipv4Addr },
    /// The echo of one of our probes.
    Measured { peer: Ipv4Addr, rtt_ms: u32 },
    /// Route cost is 0: DELAY is dropped, as in Candy.
    Disabled,
    /// The peer named in it is not CONNECTED.
    NotConnected,
    /// An "echo" we have no probe for: replayed, forged or very late.
    Unsolicited,
    /// An echo whose timestamp cannot be ours.
    BadTimestamp,
    /// Neither end is us.
    NotForUs,
}

/// What happened to a received ROUTE; for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOutcome {
    Applied,
    Disabled,
    AboutSelf,
    /// `next` is not CONNECTED. On the wire anyone with the network key can
    /// claim any `next` (PROTOCOL §10.1, §10.16); requiring a CONNECTED one
    /// at least confines the damage to paths we could actually use.
    NextNotConnected,
    AboutAdvertiser,
    TableFull,
}

counters! {
    /// What the router did and what it refused, for `ringlink status`.
    plain RouteStats {
        /// DELAY probes sent to CONNECTED peers.
        probes_sent,
        /// Peers' probes echoed back.
        echoes_sent,
        /// Echoes of our probes that gave an RTT.
        rtt_samples,
        /// DELAYs that matched no outstanding probe or had a bad timestamp.
        delays_ignored,
        /// ROUTE advertisements and withdrawals sent.
        routes_sent,
        /// ROUTE advertisements and withdrawals taken into the table.
        routes_applied,
        /// ROUTEs whose next hop is not CONNECTED, that name us, or that did
        /// not fit the table.
        routes_ignored,
        /// Destinations refused because the table was full.
        table_overflows,
    }
}

pub struct Router {
    cfg: RouteConfig,
    clock: BootClock,
    rng: SplitMix64,
    table: Table,
    connected: BTreeSet<Ipv4Addr>,
    probes: BTreeMap<Ipv4Addr, ProbeState>,
    /// Peers that already got the full table after probing us (see
    /// `handle_delay`).
    dumped: HashSet<Ipv4Addr>,
    next_refresh: Option<Instant>,
    next_sweep: Instant,
    out: VecDeque<Transmit>,
    stats: RouteStats,
    generation: u64,
}

impl Router {
    pub fn new(cfg: RouteConfig, now: Instant) -> Result<Self, RouteConfigError> {
        cfg.validate()?;
        let table = Table::new(
            cfg.own_vip,
            cfg.hysteresis,
            cfg.holddown,
            cfg.route_expiry,
            cfg.max_routes,
        );
        Ok(Router {
            clock: BootClock::new(now),
            rng: SplitMix64::new(cfg.seed),
            table,
            connected: BTreeSet::new(),
            probes: BTreeMap::new(),
            dumped: HashSet::new(),
            next_refresh: cfg.refresh_interval.map(|d| now + d),
            next_sweep: now + sweep_period(&cfg),
            out: VecDeque::new(),
            stats: RouteStats::default(),
            generation: 0,
            cfg,
        })
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    /// Bumped whenever [`Router::next_hops`] may have changed; republish
    /// the snapshot when it differs from the last one published.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn stats(&self) -> RouteStats {
        RouteStats {
            table_overflows: self.table.overflows,
            ..self.stats
        }
    }

    /// Smoothed RTT to a CONNECTED peer, once one probe came back.
    pub fn peer_rtt(&self, peer: Ipv4Addr) -> Option<u32> {
        self.probes.get(&peer).and_then(|p| p.srtt).map(|s| s.ms())
    }

    /// The peer entered CONNECTED.
    pub fn peer_connected(&mut self, peer: Ipv4Addr, now: Instant) {
        if peer == self.cfg.own_vip || !self.connected.insert(peer) {
            return;
        }
        self.generation += 1;
        if !self.enabled() {
            return;
        }
        self.table.neighbor_up(peer);
        // Candy probes once on the transition, then every interval from a
        // random phase; we do the same so periodic probes from many peers
        // do not bunch up, but the phase is drawn only once the link has
        // its first sample: until then it is retried within seconds.
        let mut st = ProbeState::new(now);
        probe(
            &self.cfg,
            &self.clock,
            &mut st,
            peer,
            now,
            &mut self.out,
            &mut self.stats,
        );
        st.next_probe = st.unmeasured_retry_at(now, self.cfg.probe_interval);
        self.probes.insert(peer, st);
        // A ringlink peer stores what we say at once. A stock Candy peer
        // drops it until it has measured us, hence the second dump in
        // `handle_delay`.
        self.dumped.remove(&peer);
        self.dump(peer);
    }

    /// The peer left CONNECTED: every route through it is withdrawn.
    pub fn peer_disconnected(&mut self, peer: Ipv4Addr, now: Instant) {
        if !self.connected.remove(&peer) {
            return;
        }
        self.generation += 1;
        self.probes.remove(&peer);
        self.dumped.remove(&peer);
        if !self.enabled() {
            return;
        }
        let mut changes = Vec::new();
        self.table.neighbor_down(peer, now, &mut changes);
        self.advertise(&changes);
    }

    pub fn handle_delay(&mut self, msg: Delay, now: Instant) -> DelayOutcome {
        let outcome = self.delay(msg, now);
        if !matches!(
            outcome,
            DelayOutcome::Echoed { .. } | DelayOutcome::Measured { .. }
        ) {
            self.stats.delays_ignored += 1;
        }
        outcome
    }

    fn delay(&mut self, msg: Delay, now: Instant) -> DelayOutcome {
        if !self.enabled() {
            return DelayOutcome::Disabled;
        }
        let own = self.cfg.own_vip;
        if msg.src == own {
            let peer = msg.dst;
            let Some(st) = self.probes.get_mut(&peer) else {
                return DelayOutcome::NotConnected;
            };
            let first = st.srtt.is_none();
            let rtt = match st.echoed(msg.timestamp_ms, self.clock.ms(now)) {
                Ok(rtt) => rtt,
                Err(EchoError::Unsolicited) => return DelayOutcome::Unsolicited,
                Err(EchoError::BadTimestamp) => return DelayOutcome::BadTimestamp,
            };
            if first {
                st.next_probe = now + self.rng.spread(self.cfg.probe_interval);
            }
            let srtt = st.srtt.map_or(rtt, |s| s.ms());
            self.stats.rtt_samples += 1;
            let mut changes = Vec::new();
            self.table.set_link_rtt(peer, srtt, now, &mut changes);
            self.advertise(&changes);
            DelayOutcome::Measured { peer, rtt_ms: rtt }
        } else if msg.dst == own {
            if !self.connected.contains(&msg.src) {
                return DelayOutcome::NotConnected;
            }
            self.out.push_back(Transmit {
                to: msg.src,
                msg: PeerMessage::Delay(msg),
            });
            self.stats.echoes_sent += 1;
            // A probing Candy peer installs its entry for us when our echo
            // arrives; a table sent right behind the echo is then accepted,
            // where the one sent on connect may have been dropped.
            if self.dumped.insert(msg.src) {
                self.dump(msg.src);
            }
            // Our probe on connect is dropped when it reaches the peer before
            // the peer counts us as CONNECTED (the side that connects first
            // always loses it), which would leave the link unmeasured, and
            // unusable for routes through it, until the next periodic probe
            // (up to a whole interval). A probe from the peer proves it now
            // counts us as CONNECTED: measure it at once.
            if let Some(st) = self.probes.get_mut(&msg.src) {
                if st.srtt.is_none() {
                    probe(
                        &self.cfg,
                        &self.clock,
                        st,
                        msg.src,
                        now,
                        &mut self.out,
                        &mut self.stats,
                    );
                }
            }
            DelayOutcome::Echoed { to: msg.src }
        } else {
            DelayOutcome::NotForUs
        }
    }

    pub fn handle_route(&mut self, msg: RouteAdvert, now: Instant) -> RouteOutcome {
        if !self.enabled() {
            self.stats.routes_ignored += 1;
            return RouteOutcome::Disabled;
        }
        let mut changes = Vec::new();
        let res = self
            .table
            .advert(msg.dst, msg.next, msg.delay_ms, now, &mut changes);
        self.advertise(&changes);
        match res {
            Ok(()) => {
                self.stats.routes_applied += 1;
                RouteOutcome::Applied
            }
            Err(e) => {
                self.stats.routes_ignored += 1;
                match e {
                    AdvertReject::AboutSelf => RouteOutcome::AboutSelf,
                    AdvertReject::NextNotConnected => RouteOutcome::NextNotConnected,
                    AdvertReject::AboutAdvertiser => RouteOutcome::AboutAdvertiser,
                    AdvertReject::Full => RouteOutcome::TableFull,
                }
            }
        }
    }

    /// When to call [`Router::handle_timeout`] next; `None` when disabled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.enabled() {
            return None;
        }
        self.probes
            .values()
            .map(|p| p.next_probe)
            .chain(self.next_refresh)
            .chain(self.table.next_holddown_expiry())
            .chain(Some(self.next_sweep))
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.enabled() {
            return;
        }
        let interval = self.cfg.probe_interval;
        for (&peer, st) in self.probes.iter_mut() {
            if st.next_probe <= now {
                probe(
                    &self.cfg,
                    &self.clock,
                    st,
                    peer,
                    now,
                    &mut self.out,
                    &mut self.stats,
                );
                if st.srtt.is_none() {
                    st.next_probe = st.unmeasured_retry_at(now, interval);
                    continue;
                }
                // Keep the phase unless we fell behind (a stalled caller),
                // in which case do not fire a burst of catch-up probes.
                st.next_probe += interval;
                if st.next_probe <= now {
                    st.next_probe = now + interval;
                }
            }
        }
        if let (Some(t), Some(period)) = (self.next_refresh, self.cfg.refresh_interval) {
            if t <= now {
                let peers: Vec<Ipv4Addr> = self.connected.iter().copied().collect();
                for p in peers {
                    self.dump(p);
                }
                self.next_refresh = Some(now + period);
            }
        }
        let holddown_due = self.table.next_holddown_expiry().is_some_and(|t| t <= now);
        if holddown_due || self.next_sweep <= now {
            let mut changes = Vec::new();
            self.table.tick(now, &mut changes);
            self.advertise(&changes);
            if self.next_sweep <= now {
                self.next_sweep = now + sweep_period(&self.cfg);
            }
        }
    }

    /// Next queued message; drain after every call into the router.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next-hop rule over this router's routes and CONNECTED peers (the
    /// node adds subnet routes and the directed broadcast). Empty table
    /// when disabled, so lookups degrade to "direct if CONNECTED, else
    /// relay" as in Candy.
    pub fn next_hops(&self) -> NextHopTable {
        NextHopTable::new(
            self.table.routes().map(|(d, r)| (d, r.next)),
            self.connected.iter().copied(),
        )
    }

    /// Table rows for `ringlink status`, ordered by destination.
    pub fn status(&self) -> impl Iterator<Item = RouteStatus> + '_ {
        self.table.routes().filter_map(|(dst, _)| self.route(dst))
    }

    /// The selected route to `dst`, if any.
    pub fn route(&self, dst: Ipv4Addr) -> Option<RouteStatus> {
        self.table.route(dst).map(|r| RouteStatus {
            dst,
            next_hop: r.next,
            metric: r.metric,
            next_hop_rtt_ms: self.table.link_rtt(r.next),
        })
    }

    /// Whether `dst` is in hold-down after losing its route.
    pub fn in_holddown(&self, dst: Ipv4Addr, now: Instant) -> bool {
        self.table.in_holddown(dst, now)
    }

    fn advertise(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.generation += 1;
        for c in changes {
            for &p in &self.connected {
                if let Some(m) = message_for(self.cfg.own_vip, self.cfg.route_cost, c.dst, c.new, p)
                {
                    self.out.push_back(Transmit {
                        to: p,
                        msg: PeerMessage::Route(m),
                    });
                    self.stats.routes_sent += 1;
                }
            }
        }
    }

    /// The whole table to one peer, split horizon applied.
    fn dump(&mut self, to: Ipv4Addr) {
        for (dst, r) in self.table.routes() {
            if let Some(m) = message_for(self.cfg.own_vip, self.cfg.route_cost, dst, Some(r), to) {
                self.out.push_back(Transmit {
                    to,
                    msg: PeerMessage::Route(m),
                });
                self.stats.routes_sent += 1;
            }
        }
    }
}

/// Expiry is coarse by nature; sweeping eight times per expiry period keeps
/// the overshoot to 12.5 % without walking the table on every timer.
fn sweep_period(cfg: &RouteConfig) -> Duration {
    (cfg.route_expiry / 8).max(Duration::from_millis(1))
}

fn probe(
    cfg: &RouteConfig,
    clock: &BootClock,
    st: &mut ProbeState,
    peer: Ipv4Addr,
    now: Instant,
    out: &mut VecDeque<Transmit>,
    stats: &mut super::RouteStats,
) {
    let ts_ms = clock.ms(now);
    // A probe in the same ms as one in flight is sent again as that probe:
    // the first copy may be the one the peer dropped (two nodes coming up
    // within a ms of each other on a LAN do exactly that).
    st.sent(ts_ms);
    out.push_back(Transmit {
        to: peer,
        msg: PeerMessage::Delay(Delay {
            src: cfg.own_vip,
            dst: peer,
            timestamp_ms: ts_ms,
        }),
    });
    stats.probes_sent += 1;
}
