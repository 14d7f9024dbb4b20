//! The route table (PROTOCOL §6.3), kept as a small distance-vector RIB.
//!
//! Candy stores only the winning entry per destination. We also keep every
//! CONNECTED neighbour's latest advertisement, so that losing a next hop can
//! fall back to a known alternative, and so hysteresis can compare the
//! current path's *fresh* metric against alternatives. The metric rules are
//! Candy's: a path via neighbour `n` costs `rtt(n) + advertised(n, dst)`
//! where the advertised value already includes `n`'s route cost, and
//! anything above [`MAX_METRIC`] does not exist.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::Hysteresis;
use super::MAX_METRIC;

/// A selected route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) next: Ipv4Addr,
    pub(crate) metric: u32,
}

/// A change of the selected route for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) dst: Ipv4Addr,
    pub(crate) new: Option<Route>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdvertReject {
    AboutSelf,
    /// `next` is not a CONNECTED neighbour: we cannot send via it, and
    /// anything the network key holder says about it is unverifiable.
    NextNotConnected,
    /// A neighbour advertising itself; our own probes are the better source.
    AboutAdvertiser,
    /// Table or per-neighbour bound reached.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Heard {
    /// Advertised delay, already validated to 0..=MAX_METRIC.
    adv: u32,
    at: Instant,
}

#[derive(Debug, Default)]
struct Link {
    rtt: Option<u32>,
    heard: HashMap<Ipv4Addr, Heard>,
}

#[derive(Debug)]
pub(crate) struct Table {
    own: Ipv4Addr,
    hysteresis: Hysteresis,
    holddown: Duration,
    expiry: Duration,
    max_routes: usize,
    links: BTreeMap<Ipv4Addr, Link>,
    routes: BTreeMap<Ipv4Addr, Route>,
    holddowns: BTreeMap<Ipv4Addr, Instant>,
    pub(crate) overflows: u64,
}

impl Table {
    pub(crate) fn new(
        own: Ipv4Addr,
        hysteresis: Hysteresis,
        holddown: Duration,
        expiry: Duration,
        max_routes: usize,
    ) -> Self {
        Table {
            own,
            hysteresis,
            holddown,
            expiry,
            max_routes,
            links: BTreeMap::new(),
            routes: BTreeMap::new(),
            holddowns: BTreeMap::new(),
            overflows: 0,
        }
    }

    pub(crate) fn routes(&self) -> impl Iterator<Item = (Ipv4Addr, Route)> + '_ {
        self.routes.iter().map(|(d, r)| (*d, *r))
    }

    pub(crate) fn route(&self, dst: Ipv4Addr) -> Option<Route> {
        self.routes.get(&dst).copied()
    }

    pub(crate) fn link_rtt(&self, n: Ipv4Addr) -> Option<u32> {
        self.links.get(&n).and_then(|l| l.rtt)
    }

    pub(crate) fn in_holddown(&self, dst: Ipv4Addr, now: Instant) -> bool {
        self.holddowns.get(&dst).is_some_and(|&t| t > now)
    }

    pub(crate) fn next_holddown_expiry(&self) -> Option<Instant> {
        self.holddowns.values().min().copied()
    }

    pub(crate) fn neighbor_up(&mut self, n: Ipv4Addr) {
        self.links.entry(n).or_default();
    }

    /// Forgets the neighbour and everything it told us; every route through
    /// it is reselected (Candy's "direct withdrawal").
    pub(crate) fn neighbor_down(&mut self, n: Ipv4Addr, now: Instant, out: &mut Vec<Change>) {
        let Some(link) = self.links.remove(&n) else {
            return;
        };
        let mut affected: Vec<Ipv4Addr> = link.heard.into_keys().collect();
        affected.push(n);
        affected.extend(
            self.routes
                .iter()
                .filter(|(_, r)| r.next == n)
                .map(|(d, _)| *d),
        );
        self.reselect_all(affected, now, out);
    }

    pub(crate) fn set_link_rtt(
        &mut self,
        n: Ipv4Addr,
        rtt: u32,
        now: Instant,
        out: &mut Vec<Change>,
    ) {
        let Some(link) = self.links.get_mut(&n) else {
            return;
        };
        link.rtt = Some(rtt);
        let mut affected: Vec<Ipv4Addr> = link.heard.keys().copied().collect();
        affected.push(n);
        self.reselect_all(affected, now, out);
    }

    /// Applies a ROUTE received from neighbour `next` (the advertiser).
    pub(crate) fn advert(
        &mut self,
        dst: Ipv4Addr,
        next: Ipv4Addr,
        delay: i32,
        now: Instant,
        out: &mut Vec<Change>,
    ) -> Result<(), AdvertReject> {
        if dst == self.own {
            return Err(AdvertReject::AboutSelf);
        }
        if dst == next {
            return Err(AdvertReject::AboutAdvertiser);
        }
        let max = self.max_routes;
        let link = self
            .links
            .get_mut(&next)
            .ok_or(AdvertReject::NextNotConnected)?;
        // Candy's withdrawal test: negative or above the ceiling.
        match u32::try_from(delay) {
            Ok(adv) if adv <= MAX_METRIC => {
                if link.heard.len() >= max && !link.heard.contains_key(&dst) {
                    self.overflows += 1;
                    return Err(AdvertReject::Full);
                }
                link.heard.insert(dst, Heard { adv, at: now });
            }
            _ => {
                link.heard.remove(&dst);
            }
        }
        self.reselect(dst, now, out);
        Ok(())
    }

    /// Expires stale advertisements and finished hold-downs.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Change>) {
        let mut affected = Vec::new();
        for link in self.links.values_mut() {
            let expiry = self.expiry;
            link.heard.retain(|dst, h| {
                let keep = now.saturating_duration_since(h.at) < expiry;
                if !keep {
                    affected.push(*dst);
                }
                keep
            });
        }
        let expired: Vec<Ipv4Addr> = self
            .holddowns
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(d, _)| *d)
            .collect();
        for d in &expired {
            self.holddowns.remove(d);
        }
        affected.extend(expired);
        self.reselect_all(affected, now, out);
    }

    fn reselect_all(&mut self, mut dsts: Vec<Ipv4Addr>, now: Instant, out: &mut Vec<Change>) {
        dsts.sort_unstable();
        dsts.dedup();
        for d in dsts {
            self.reselect(d, now, out);
        }
    }

    /// The metric of reaching `dst` via neighbour `n`, if that path exists.
    fn via(&self, n: Ipv4Addr, dst: Ipv4Addr) -> Option<u32> {
        let link = self.links.get(&n)?;
        let rtt = link.rtt?;
        let m = if n == dst {
            rtt
        } else {
            rtt.saturating_add(link.heard.get(&dst)?.adv)
        };
        (m <= MAX_METRIC).then_some(m)
    }

    fn best(&self, dst: Ipv4Addr, direct_only: bool) -> Option<Route> {
        if direct_only {
            return self.via(dst, dst).map(|metric| Route { next: dst, metric });
        }
        // BTreeMap order makes ties go to the lowest VIP, so every run and
        // every node resolves equal metrics the same way.
        self.links
            .keys()
            .filter_map(|&n| self.via(n, dst).map(|metric| Route { next: n, metric }))
            .min_by_key(|r| r.metric)
    }

    fn reselect(&mut self, dst: Ipv4Addr, now: Instant, out: &mut Vec<Change>) {
        if dst == self.own {
            return;
        }
        let old = self.routes.get(&dst).copied();
        let mut holding = self.in_holddown(dst, now);
        let new = match old {
            Some(cur) => match self.via(cur.next, dst) {
                // Hold-down does not veto the current next hop: it is the
                // source we were already following, not a stale echo.
                Some(cur_metric) => {
                    let cur = Route {
                        next: cur.next,
                        metric: cur_metric,
                    };
                    // A first-hand path to the destination only needs to be
                    // better, not better by the margin: it loads no third
                    // node, and switching away from it again does need the
                    // margin, so noise cannot make the route flap. Without
                    // this, a via-peer route learned while the direct path
                    // was down would stick for good on a LAN, where the two
                    // differ by less than the margin's absolute part.
                    let direct = self.via(dst, dst).filter(|_| cur.next != dst);
                    match (self.best(dst, holding), direct) {
                        (_, Some(m)) if m < cur.metric => Some(Route {
                            next: dst,
                            metric: m,
                        }),
                        (Some(b), _)
                            if b.next != cur.next
                                && self.hysteresis.beats(b.metric, cur.metric) =>
                        {
                            Some(b)
                        }
                        _ => Some(cur),
                    }
                }
                None => {
                    // The path we used is gone. Neighbours that routed
                    // through it may still be advertising it back to us, so
                    // only first-hand paths count until the news has spread.
                    if !self.holddown.is_zero() {
                        self.holddowns.insert(dst, now + self.holddown);
                        holding = true;
                    }
                    self.best(dst, holding)
                }
            },
            None => self.best(dst, holding),
        };
        if new == old {
            return;
        }
        match new {
            Some(r) => {
                if old.is_none() && self.routes.len() >= self.max_routes {
                    self.overflows += 1;
                    return;
                }
                self.routes.insert(dst, r);
            }
            None => {
                self.routes.remove(&dst);
            }
        }
        out.push(Change { dst, new });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn table(h: Hysteresis, holddown: u64) -> Table {
        Table::new(
            ip(1),
            h,
            Duration::from_secs(holddown),
            Duration::from_secs(300),
            8,
        )
    }

    #[test]
    fn candy_metric_rule_and_withdrawal_values() {
        let now = Instant::now();
        let mut t = table(Hysteresis::NONE, 0);
        let mut ch = Vec::new();
        t.neighbor_up(ip(2));
        t.set_link_rtt(ip(2), 20, now, &mut ch);
        t.advert(ip(3), ip(2), 25, now, &mut ch).unwrap();
        assert_eq!(
            t.route(ip(3)),
            Some(Route {
                next: ip(2),
                metric: 45
            })
        );
        // > 1000 is a withdrawal on the wire, as is any negative value.
        t.advert(ip(3), ip(2), 1001, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(3)), None);
        t.advert(ip(3), ip(2), 25, now, &mut ch).unwrap();
        t.advert(ip(3), ip(2), -1, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(3)), None);
        // A sum above the ceiling is unreachable even if each part is fine.
        t.advert(ip(3), ip(2), 990, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(3)), None);
    }

    #[test]
    fn rejects_self_unconnected_and_overflow() {
        let now = Instant::now();
        let mut t = table(Hysteresis::NONE, 0);
        let mut ch = Vec::new();
        assert_eq!(
            t.advert(ip(1), ip(2), 5, now, &mut ch),
            Err(AdvertReject::AboutSelf)
        );
        assert_eq!(
            t.advert(ip(3), ip(2), 5, now, &mut ch),
            Err(AdvertReject::NextNotConnected)
        );
        t.neighbor_up(ip(2));
        assert_eq!(
            t.advert(ip(2), ip(2), 5, now, &mut ch),
            Err(AdvertReject::AboutAdvertiser)
        );
        t.set_link_rtt(ip(2), 1, now, &mut ch);
        for d in 10..18 {
            t.advert(ip(d), ip(2), 5, now, &mut ch).unwrap();
        }
        assert_eq!(
            t.advert(ip(18), ip(2), 5, now, &mut ch),
            Err(AdvertReject::Full)
        );
        assert!(t.routes.len() <= 8);
        assert!(t.overflows > 0);
    }

    #[test]
    fn hysteresis_and_holddown() {
        let now = Instant::now();
        let h = Hysteresis {
            abs_ms: 10,
            pct: 10,
        };
        let mut t = table(h, 5);
        let mut ch = Vec::new();
        t.neighbor_up(ip(2));
        t.neighbor_up(ip(3));
        t.set_link_rtt(ip(2), 10, now, &mut ch);
        t.set_link_rtt(ip(3), 10, now, &mut ch);
        t.advert(ip(9), ip(2), 50, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(9)).unwrap().next, ip(2));
        // 55 vs 60: not better by the 10 ms margin.
        t.advert(ip(9), ip(3), 45, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(9)).unwrap().next, ip(2));
        t.advert(ip(9), ip(3), 39, now, &mut ch).unwrap();
        assert_eq!(
            t.route(ip(9)),
            Some(Route {
                next: ip(3),
                metric: 49
            })
        );
        // Losing the current next hop: the alternative is not used during
        // hold-down, but is after it.
        ch.clear();
        t.neighbor_down(ip(3), now, &mut ch);
        assert_eq!(t.route(ip(9)), None);
        assert_eq!(
            ch,
            vec![
                Change {
                    dst: ip(3),
                    new: None
                },
                Change {
                    dst: ip(9),
                    new: None
                }
            ]
        );
        t.tick(now + Duration::from_secs(4), &mut ch);
        assert_eq!(t.route(ip(9)), None);
        t.tick(now + Duration::from_secs(5), &mut ch);
        assert_eq!(
            t.route(ip(9)),
            Some(Route {
                next: ip(2),
                metric: 60
            })
        );
    }

    #[test]
    fn a_better_direct_path_wins_without_the_margin() {
        let now = Instant::now();
        let mut t = table(Hysteresis::default(), 0);
        let mut ch = Vec::new();
        t.neighbor_up(ip(2));
        t.set_link_rtt(ip(2), 1, now, &mut ch);
        // C reachable only through B at first: 1 + 5 = 6 ms.
        t.advert(ip(3), ip(2), 5, now, &mut ch).unwrap();
        assert_eq!(t.route(ip(3)).map(|r| r.next), Some(ip(2)));
        // The direct path appears, 2 ms: better, though by less than 10 ms.
        t.neighbor_up(ip(3));
        t.set_link_rtt(ip(3), 2, now, &mut ch);
        assert_eq!(
            t.route(ip(3)),
            Some(Route {
                next: ip(3),
                metric: 2
            })
        );
        // Back to the peer only with the margin: noise on the direct link
        // (2 -> 5 ms) does not move it.
        t.set_link_rtt(ip(3), 5, now, &mut ch);
        assert_eq!(t.route(ip(3)).map(|r| r.next), Some(ip(3)));
        // A direct path that is worse does not win.
        let mut t = table(Hysteresis::default(), 0);
        t.neighbor_up(ip(2));
        t.set_link_rtt(ip(2), 1, now, &mut ch);
        t.advert(ip(3), ip(2), 5, now, &mut ch).unwrap();
        t.neighbor_up(ip(3));
        t.set_link_rtt(ip(3), 9, now, &mut ch);
        assert_eq!(t.route(ip(3)).map(|r| r.next), Some(ip(2)));
    }

    #[test]
    fn advertisements_expire() {
        let now = Instant::now();
        let mut t = table(Hysteresis::NONE, 0);
        let mut ch = Vec::new();
        t.neighbor_up(ip(2));
        t.set_link_rtt(ip(2), 10, now, &mut ch);
        t.advert(ip(9), ip(2), 50, now, &mut ch).unwrap();
        t.tick(now + Duration::from_secs(299), &mut ch);
        assert!(t.route(ip(9)).is_some());
        t.tick(now + Duration::from_secs(300), &mut ch);
        assert!(t.route(ip(9)).is_none());
        assert!(t.route(ip(2)).is_some());
    }
}
