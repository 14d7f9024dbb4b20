//! Per-peer P2P logic (PROTOCOL.md §5), sans-IO.
//!
//! No sockets and no clock: the control thread passes events with the
//! current `Instant`, runs [`PeerManager::handle_timeout`] at
//! [`PeerManager::poll_timeout`], and executes the [`Action`]s it drains from
//! [`PeerManager::poll_action`]. Addresses are plain std types; turning them
//! into wire messages is `proto`'s job.

mod action;
mod addr;
mod machine;
mod manager;
mod state;
mod timers;

pub use action::{Action, Ignored, Outcome};
pub use addr::is_private;
pub use machine::Peer;
pub use manager::{PeerConfig, PeerManager, PeerStatus};
pub use state::PeerState;
pub use timers::{Timers, TimersError};

#[cfg(test)]
mod tests;
