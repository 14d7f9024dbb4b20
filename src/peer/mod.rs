//! Per-peer P2P logic (PROTOCOL.md §5), sans-IO.
//!
//! No sockets and no clock: the control thread passes events with the
//! current `Instant`, runs [`PeerManager::handle_timeout`] at
//! [`PeerManager::poll_timeout`], and executes the [`Action`]s it drains from
//! [`PeerManager::poll_action`]. Addresses are plain std types; turning them
//! into wire messages is `proto`'s job.
//!
//! Driving it from the control thread:
//! * relayed WS FORWARD → [`PeerManager::handle_relayed_packet`] (its `saddr`);
//!   WS DISCOVERY → [`PeerManager::handle_discovery`]; UDP4CONN →
//!   [`PeerManager::handle_public_info`]; GENERAL/0 →
//!   [`PeerManager::handle_lan_info`] (after the src/dst checks of §2.4.4);
//!   the virtual network and every pushed subnet route →
//!   [`PeerManager::set_tunnelled`]; STUN reply →
//!   [`PeerManager::handle_stun_response`]; decrypted UDP HEARTBEAT, PING,
//!   PONG → [`PeerManager::handle_heartbeat`], [`PeerManager::handle_ping`],
//!   [`PeerManager::handle_pong`]. Peers are kept across WS
//!   reconnects: their direct paths do not depend on the server.
//! * Count every [`Outcome::Ignored`]; none of them is an error for the node.
//! * Sleep until `poll_timeout`, then `handle_timeout(now)`.
//! * After each call, drain `poll_action` and execute: encode and send the
//!   messages; on `Connected`/`PathChanged`/`Disconnected` republish the
//!   dataplane snapshot (direct vs relay) and tell `route` (withdrawals).
//!   Latency probes are the router's job, not this module's.

mod action;
mod addr;
mod attempt;
mod challenge;
mod machine;
mod manager;
mod ratelimit;
mod state;
mod timers;

pub use action::{Action, BirthdayRole, FreshSpray, Ignored, Outcome};
pub use addr::is_private;
pub use machine::Peer;
pub use manager::{PeerConfig, PeerManager, PeerStatus};
pub(crate) use ratelimit::TokenBucket;
pub use state::PeerState;
pub use timers::{Timers, TimersError};

#[cfg(test)]
mod tests;
