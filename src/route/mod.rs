//! Latency measurement and route synchronisation (PROTOCOL.md §6, §7).
//!
//! Everything here is sans-IO: the control thread feeds peer connectivity
//! events, decoded DELAY (UDP type 2) and ROUTE (UDP type 4) messages and the
//! current `Instant`; it drains [`Transmit`]s with [`Router::poll_transmit`],
//! sleeps until [`Router::poll_timeout`] and then calls
//! [`Router::handle_timeout`]. Whenever [`Router::generation`] changes it
//! republishes [`Router::next_hops`] to the dataplane.
//!
//! The message structs below deliberately mirror the wire fields instead of
//! reusing `crate::proto`, so routing logic and byte layouts can evolve (and
//! be tested) independently; the control thread translates.

mod advertise;
mod config;
mod latency;
mod nexthop;
mod router;
pub mod subnet;
mod table;

use std::net::Ipv4Addr;

pub use config::{ConfigError, Hysteresis, RouteConfig};
pub use latency::Srtt;
pub use nexthop::{is_broadcast_or_multicast, NextHop, NextHopTable, RouteStatus};
pub use router::{DelayOutcome, RouteOutcome, RouteStats, Router};
pub use subnet::{SubnetError, SubnetRoute, SubnetRoutes};

/// Wire value of a ROUTE `delay` that withdraws the destination.
pub const WITHDRAWN: i32 = 0x7FFF_FFFF;

/// Largest usable metric. Candy reads anything above it as a withdrawal, so
/// a longer path cannot be expressed on the wire at all.
pub const MAX_METRIC: u32 = 1000;

/// Largest accepted `route_cost`, as clamped by Candy's `route=` option.
pub const MAX_ROUTE_COST: u32 = 1000;

/// DELAY (UDP type 2) plaintext fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DelayMsg {
    /// The prober's VIP.
    pub src: Ipv4Addr,
    /// The probed peer's VIP.
    pub dst: Ipv4Addr,
    /// The prober's monotonic clock in ms; only the prober interprets it.
    pub ts_ms: i64,
}

/// ROUTE (UDP type 4) plaintext fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteMsg {
    /// Destination VIP.
    pub dst: Ipv4Addr,
    /// The advertiser's own VIP (Candy's rules make it the next hop).
    pub next: Ipv4Addr,
    /// Advertiser's metric plus its route cost, or [`WITHDRAWN`].
    pub delay: i32,
}

/// A peer message the routing logic wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    Delay(DelayMsg),
    Route(RouteMsg),
}

/// One message to encrypt with `to`'s key and send over UDP to `to`'s
/// current path. `to` is always a peer the caller reported as CONNECTED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transmit {
    pub to: Ipv4Addr,
    pub msg: Message,
}
