//! What can go wrong on the client's control side, as types: the server
//! link retries on some and gives up on others by matching on them, and
//! `ringlink status` shows their messages as `last_error`.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio_tungstenite::tungstenite;

use super::node::NodeError;
use crate::dataplane::DataplaneError;
use crate::sys::netlink::NetlinkError;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("refused by the server: {0}")]
    Refused(#[from] Refusal),
    #[error("connection lost: {0}")]
    Lost(#[from] LinkLost),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("interface: {0}")]
    Interface(#[from] InterfaceError),
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

/// The node key or the pins file cannot be used: the client does not start.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{0}")]
    Key(#[from] crate::session::keys::KeyFileError),
    #[error("{0}")]
    Pins(#[from] crate::session::pins::PinFileError),
}

/// Reaching the server and upgrading to a WebSocket.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot resolve {target}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("{target} has no IPv4 address")]
    NoIpv4 { target: String },
    #[error("{addr}: {stage} timed out")]
    Timeout {
        addr: SocketAddr,
        stage: &'static str,
    },
    #[error("{addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("{0} is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS with {addr}: {source}")]
    TlsHandshake { addr: SocketAddr, source: io::Error },
    #[error("{url}: {source}")]
    Request {
        url: String,
        source: tungstenite::Error,
    },
    #[error("{addr}: WebSocket handshake: {source}")]
    WsHandshake {
        addr: SocketAddr,
        source: tungstenite::Error,
    },
}

/// The server would not give us an address.
#[derive(Debug, Error)]
pub enum Refusal {
    #[error("no address from the server within {} s", .0.as_secs())]
    NoGrant(Duration),
    #[error("address grant carries a wrong hash: the server does not know our password")]
    BadGrant,
    #[error("server closed the connection: {0}")]
    Closed(String),
    #[error("server closed the connection before granting an address (wrong password, or pool exhausted?)")]
    ClosedBeforeGrant,
}

/// Why a connection that was up ended.
#[derive(Debug, Error)]
pub enum LinkLost {
    #[error("nothing from the server for {} s", .0.as_secs())]
    Silence(Duration),
    #[error("server closed the connection")]
    Closed,
    #[error("server closed the connection: {0}")]
    ClosedWith(String),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("client stopping")]
    Stopping,
    #[error("server link task ended")]
    TaskEnded,
    /// Connected to another server of the list, and the client's own one
    /// answers again: the link moves back.
    #[error("moving back to the client's own server")]
    GoingHome,
}

/// Building the TLS client configuration.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls_ca {}: {source}", path.display())]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("tls_ca {}: {source}", path.display())]
    AddCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("tls_ca {}: no PEM certificate in file", path.display())]
    NoCertificate { path: PathBuf },
}

/// The TUN device, its dataplane and the node on top.
#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error("opening {tun}: {source}")]
    Open { tun: String, source: DataplaneError },
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        source: NetlinkError,
    },
    #[error("dataplane has no UDP socket")]
    NoUdpSocket,
    #[error("dataplane workers stopped")]
    WorkersStopped,
    #[error("{0}")]
    Node(#[from] NodeError),
}
