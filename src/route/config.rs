//! Routing configuration and its validation.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::MAX_ROUTE_COST;

/// How much better an alternative next hop must be before we move to it.
///
/// The alternative must beat the current path by more than
/// `max(abs_ms, current_metric * pct / 100)`. The absolute part keeps
/// millisecond-scale LAN jitter from mattering; the relative part scales
/// with path length, because RTT noise grows roughly with the RTT itself.
/// Both zero gives Candy's "strictly lower wins" rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    pub abs_ms: u32,
    pub pct: u32,
}

impl Hysteresis {
    /// Candy's behaviour: any strictly lower metric wins.
    pub const NONE: Hysteresis = Hysteresis { abs_ms: 0, pct: 0 };

    /// Whether `candidate` is enough of an improvement over `current`.
    pub fn beats(&self, candidate: u32, current: u32) -> bool {
        let margin = self
            .abs_ms
            .max((u64::from(current) * u64::from(self.pct) / 100) as u32);
        candidate < current && current - candidate > margin
    }
}

impl Default for Hysteresis {
    /// 10 ms / 10 %: with one probe a minute and the EWMA in `latency.rs`,
    /// ±20 % sample noise leaves a smoothed-RTT spread of a few percent, so a
    /// 10 % margin is several standard deviations wide while a genuinely
    /// better path (a relay saving tens of ms) still wins within a few
    /// probes.
    fn default() -> Self {
        Hysteresis {
            abs_ms: 10,
            pct: 10,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Own virtual IP.
    pub own_vip: Ipv4Addr,
    /// Candy's `route=`: ms added when advertising, 0..=1000; 0 disables
    /// latency routing entirely (no probes, DELAY/ROUTE ignored, no table).
    pub route_cost: u32,
    /// Time between DELAY probes to one peer (Candy: 60 ticks of 1 s).
    pub probe_interval: Duration,
    pub hysteresis: Hysteresis,
    /// After a route is lost, only first-hand (direct) paths to that
    /// destination are accepted for this long: alternatives heard from
    /// neighbours may be stale echoes of the route that just died.
    pub holddown: Duration,
    /// Full-table re-advertisement period to every CONNECTED peer; `None`
    /// sends changes only, as Candy does.
    pub refresh_interval: Option<Duration>,
    /// A neighbour's advertisement not repeated for this long is forgotten.
    pub route_expiry: Duration,
    /// Upper bound on destinations in the table and per neighbour.
    pub max_routes: usize,
    /// Seeds probe spreading; fixed seeds make simulations reproducible.
    pub seed: u64,
}

impl RouteConfig {
    pub fn new(own_vip: Ipv4Addr) -> Self {
        RouteConfig {
            own_vip,
            route_cost: 5,
            probe_interval: Duration::from_secs(60),
            hysteresis: Hysteresis::default(),
            holddown: Duration::from_secs(5),
            // Candy only sends on change, so a single lost UDP ROUTE leaves
            // a neighbour wrong until the next change. Two minutes repairs
            // that cheaply (one small datagram per route per peer); stock
            // peers re-advertise what they accept, so the period is kept
            // slower than Candy's own 60 s probe cycle.
            refresh_interval: Some(Duration::from_secs(120)),
            // Candy re-advertises every route at least once per probe cycle
            // (each RTT sample triggers an advertisement that cascades), and
            // we refresh every 120 s; 330 s survives two lost refreshes.
            route_expiry: Duration::from_secs(330),
            max_routes: 4096,
            seed: 0x5eed_0f12_1e1c_4b00,
        }
    }

    pub fn enabled(&self) -> bool {
        self.route_cost > 0
    }

    pub fn validate(&self) -> Result<(), RouteConfigError> {
        if self.route_cost > MAX_ROUTE_COST {
            return Err(RouteConfigError::Cost(self.route_cost));
        }
        if self.probe_interval.is_zero() {
            return Err(RouteConfigError::ZeroDuration("probe_interval"));
        }
        if self.refresh_interval.is_some_and(|d| d.is_zero()) {
            return Err(RouteConfigError::ZeroDuration("refresh_interval"));
        }
        if self.route_expiry.is_zero() {
            return Err(RouteConfigError::ZeroDuration("route_expiry"));
        }
        if self.max_routes == 0 {
            return Err(RouteConfigError::ZeroMaxRoutes);
        }
        if self.own_vip.is_unspecified() || self.own_vip.is_broadcast() {
            return Err(RouteConfigError::OwnVip(self.own_vip));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteConfigError {
    #[error("route: cost {0} ms out of range, expected 0..=1000")]
    Cost(u32),
    #[error("route: {0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("route: max_routes must be greater than zero")]
    ZeroMaxRoutes,
    #[error("route: own VIP {0} is not a usable unicast address")]
    OwnVip(Ipv4Addr),
}
