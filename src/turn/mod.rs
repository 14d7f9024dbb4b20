//! A TURN client (RFC 8656) over UDP, sans-IO in the manner of quinn-proto:
//! the caller hands it received datagrams and the current time, and takes
//! from it the datagrams to send to the TURN server and the instant it
//! next wants to be woken. It never touches a socket or a clock, so every
//! path (challenge, stale nonce, refreshes, expiries, garbage) is tested
//! with a simulated clock and a simulated server.
//!
//! One file a role: `message` is the STUN/TURN codec, `credentials` the
//! long-term credential key, the TURN REST API minting and the `turn://`
//! URL, `channel` the ChannelData framing the dataplane prepends and
//! strips, `client` the allocation state machine. docs/turn.md explains
//! the design.

pub mod channel;
pub mod client;
pub mod credentials;
pub mod message;
pub mod stream;

use std::net::SocketAddr;

use thiserror::Error;

pub use client::{Client, Event, Received};
pub use credentials::{Credentials, TurnUrl};

/// Why a TURN datagram, URL or exchange failed. Every decoder and the
/// client return one of these instead of panicking; the `Failed` event of
/// the client carries one too, so a log line can say exactly why a relay
/// path ended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TurnError {
    #[error("TURN message malformed: {0}")]
    Malformed(&'static str),
    #[error("TURN message truncated: {0}")]
    Truncated(&'static str),
    #[error("datagram from {0}, not from the TURN server")]
    NotFromServer(SocketAddr),
    #[error("response to no request in flight")]
    UnknownTransaction,
    #[error("ChannelData on channel {0:#06x}, which is bound to no peer")]
    UnknownChannel(u16),
    #[error("MESSAGE-INTEGRITY missing or wrong in a response")]
    Integrity,
    #[error("TURN server refused the credentials (401 to an authenticated {0}): wrong username, password or shared secret, or the credentials expired")]
    Unauthorized(&'static str),
    #[error("TURN server refused {request}: {code} {reason}")]
    Refused {
        request: &'static str,
        code: u16,
        reason: String,
    },
    #[error("TURN {0} got no answer")]
    Timeout(&'static str),
    #[error("the allocation is closed or failed")]
    NotAllocated,
    #[error("no free channel number")]
    NoChannel,
    #[error("the stream to the TURN server ended: {0}")]
    Stream(String),
    #[error("bad TURN URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
}

#[cfg(test)]
pub(crate) mod tests;
