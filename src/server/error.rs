//! Errors that stop the server, and the reasons it ends one session.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::proto::ws::MAX_FRAME;
use crate::proto::{Ipv4Cidr, ProtoError};

/// Fatal: the server cannot start (or keep) serving.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on tcp {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the STUN responder to udp {addr}: {source}")]
    StunBind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A certificate or key file that cannot be used; names the file.
    #[error("TLS file {}: {reason}", file.display())]
    TlsFile { file: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// `[cluster]`: NATS or the lease bucket cannot be used.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Why the server ended one session. `Display` is both the logged reason and
/// the text of the Close frame, so an operator and a client see the same words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseReason {
    #[error("wrong password (bad {0} hash)")]
    BadHash(&'static str),
    #[error("{what} timestamp is {skew} s off the server clock, beyond ±{window} s")]
    StaleTimestamp {
        what: &'static str,
        skew: i64,
        window: i64,
    },
    #[error("address {ip} is not a usable host in pool {pool}")]
    OutsidePool { ip: Ipv4Addr, pool: Ipv4Cidr },
    #[error("address {0} in use by another client")]
    AddressInUse(Ipv4Addr),
    #[error("address {ip} in use by another client (on server instance {instance})")]
    HeldElsewhere { ip: Ipv4Addr, instance: String },
    #[error("cluster unavailable, try again later: {0}")]
    ClusterUnavailable(String),
    #[error("address pool {0} exhausted")]
    PoolExhausted(Ipv4Cidr),
    #[error("replayed AUTH for {0}: this exact login was already used")]
    ReplayedAuth(Ipv4Addr),
    #[error("AUTH for {ip} (timestamp {timestamp}) is not newer than the live session's login ({live}); it is kept")]
    NotNewer {
        ip: Ipv4Addr,
        timestamp: i64,
        live: i64,
    },
    #[error("server full: {0} members connected (max_clients)")]
    ServerFull(usize),
    #[error("second AUTH for {new} on a session already bound to {old}")]
    SecondAuth { old: Ipv4Addr, new: Ipv4Addr },
    #[error("{0} before AUTH")]
    NotAuthenticated(&'static str),
    #[error("malformed frame: {0}")]
    Malformed(ProtoError),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversize(usize),
    #[error("no AUTH within {0:?}")]
    AuthTimeout(Duration),
    #[error("no frame for {0:?}")]
    Idle(Duration),
    #[error("send to client stalled")]
    WriteStall,
    #[error("dropped for a newer connection before logging in")]
    Evicted,
    #[error("replaced by a newer session with the same vmac (reconnect)")]
    Replaced,
    #[error("server shutting down")]
    Shutdown,
    #[error("client closed the connection")]
    ClientClosed,
    #[error("connection lost: {0}")]
    Lost(String),
}

impl CloseReason {
    /// True when the client broke a rule, as opposed to leaving or losing
    /// its connection; those are logged as refusals.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientClosed
                | CloseReason::Lost(_)
                | CloseReason::Shutdown
                | CloseReason::Replaced
                | CloseReason::Evicted
                | CloseReason::Idle(_)
                | CloseReason::WriteStall
        )
    }

    /// The Close frame code, or None when the peer is gone and a Close frame
    /// would only wait on a dead socket.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        match self {
            CloseReason::ClientClosed | CloseReason::Lost(_) | CloseReason::WriteStall => None,
            CloseReason::Oversize(_) => Some(CloseCode::Size),
            CloseReason::Shutdown => Some(CloseCode::Away),
            CloseReason::Replaced | CloseReason::Idle(_) => Some(CloseCode::Normal),
            CloseReason::ServerFull(_)
            | CloseReason::Evicted
            | CloseReason::ClusterUnavailable(_) => Some(CloseCode::Again),
            _ => Some(CloseCode::Policy),
        }
    }
}
