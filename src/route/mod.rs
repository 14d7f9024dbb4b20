//! Latency measurement and route synchronisation (PROTOCOL.md §6, §7).
//!
//! Everything here is sans-IO: the control thread feeds peer connectivity
//! events, decoded DELAY (UDP type 2) and ROUTE (UDP type 4) messages and the
//! current `Instant`; it drains [`Transmit`]s with [`Router::poll_transmit`],
//! sleeps until [`Router::poll_timeout`] and then calls
//! [`Router::handle_timeout`]. Whenever [`Router::generation`] changes it
//! compiles [`Router::next_hops`] (the one [`NextHopTable`] rule) into the
//! dataplane's snapshot again.
//!
//! Driving it: call `peer_connected`/`peer_disconnected` on every change of
//! the peer state machine into/out of CONNECTED, `handle_delay`/
//! `handle_route` for every decrypted type 2/4 plaintext (it applies the
//! cost-0 rule itself), then drain `poll_transmit`. Sender identity cannot
//! be checked on the wire (every member holds the network key and all
//! senders use our key), so a ROUTE is trusted only as far as its `next` is
//! a CONNECTED peer, and a DELAY echo only if it matches a probe we sent.
//! When echoing, sending the received plaintext bytes verbatim keeps any
//! trailing bytes intact (PROTOCOL §11); the queued `Delay` is identical
//! otherwise.
//!
//! Deviations from Candy that stay inside its wire semantics: metrics use a
//! smoothed RTT, route changes need a hysteresis margin, lost routes go into
//! hold-down, split horizon with poison reverse, echoes must match an
//! outstanding probe, and the full table is re-sent periodically and to new
//! peers.
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

use crate::proto::udp::PeerMessage;

pub use config::{Hysteresis, RouteConfig, RouteConfigError};
pub use latency::Srtt;
pub use nexthop::{NextHop, NextHopTable, RouteStatus, TunRoute};
pub use router::{DelayOutcome, RouteOutcome, RouteStats, Router};
pub use subnet::{SubnetError, SubnetRoute, SubnetRoutes};

pub use crate::proto::udp::WITHDRAWN;

/// Largest usable metric. Candy reads anything above it as a withdrawal, so
/// a longer path cannot be expressed on the wire at all.
pub const MAX_METRIC: u32 = 1000;

/// Largest accepted `route_cost`, as clamped by Candy's `route=` option.
pub const MAX_ROUTE_COST: u32 = 1000;

/// One message to encrypt with `to`'s key and send over UDP to `to`'s
/// current path. `to` is always a peer the caller reported as CONNECTED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: Ipv4Addr,
    /// Always a DELAY or a ROUTE.
    pub msg: PeerMessage<'static>,
}
