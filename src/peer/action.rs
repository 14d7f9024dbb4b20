//! What the state machine asks its caller to do, and how it judged an input.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::proto::udp::Nonce;

use super::state::PeerState;

/// One thing for the control thread to do. Wire encoding is the caller's job
/// (`src/proto`); this module only decides *what* and *to whom*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send one STUN binding request from the data socket, so the mapping
    /// learned is the one peers will reach.
    StunRequest,
    /// UDP HEARTBEAT to `to`: tunip = own VIP, ip/port = 0, ack as given.
    Heartbeat {
        peer: Ipv4Addr,
        to: SocketAddrV4,
        ack: bool,
    },
    /// ringlink peers only: UDP PING to the candidate `to`. The path moves
    /// there only when the PONG carrying this nonce comes back from `to`.
    Ping {
        peer: Ipv4Addr,
        to: SocketAddrV4,
        nonce: Nonce,
    },
    /// ringlink peers only: UDP PONG to `to`, where a PING with this nonce
    /// came from.
    Pong {
        peer: Ipv4Addr,
        to: SocketAddrV4,
        nonce: Nonce,
    },
    /// ringlink peers only: marked heartbeats to `count` ports of `base`'s
    /// address, `base.port + step·1 … + step·count` (port prediction: the
    /// peer's NAT gives each new destination the next port, so one of
    /// these is where its probes to us will come from, and sending there
    /// opens our NAT to it).
    Spray {
        peer: Ipv4Addr,
        base: SocketAddrV4,
        step: i32,
        count: u16,
    },
    /// ringlink peers only: one birthday attempt (a random symmetric NAT on
    /// one side, `nat::schedule` has the numbers). Marked heartbeats, paced
    /// by the caller, either from `count` fresh sockets to the peer's
    /// mapping or from the data socket to `count` random ports of the
    /// symmetric peer's address.
    Birthday { peer: Ipv4Addr, role: BirthdayRole },
    /// ringlink peers only: open one fresh socket for this attempt, probe
    /// `target` from it, then announce its mapping to the peer in a second
    /// UDP4CONN. Behind a router where an unsolicited datagram claims a
    /// port (a bare Linux masquerade), the peer's early probes have taken
    /// our main mapping towards it; this port is shown to nobody before it
    /// has sent to the peer.
    /// `window`: the prediction window to spray from it before the
    /// announcement, when the method sprays.
    FreshPort {
        peer: Ipv4Addr,
        target: SocketAddrV4,
        window: Option<SprayWindow>,
    },
    /// WS UDP4CONN {src = own VIP, dst = `peer`} carrying `public`.
    SendPublicInfo {
        peer: Ipv4Addr,
        public: SocketAddrV4,
    },
    /// WS GENERAL subtype 0 {src = own VIP, dst = `peer`} carrying `lan`.
    SendLanInfo { peer: Ipv4Addr, lan: SocketAddrV4 },
    /// WS DISCOVERY {src = own VIP, dst = 255.255.255.255}.
    DiscoveryBroadcast,
    /// WS DISCOVERY {src = own VIP, dst = `peer`}, answering its broadcast.
    DiscoveryReply { peer: Ipv4Addr },
    /// The peer entered CONNECTED: switch its data path to UDP via `path`.
    Connected { peer: Ipv4Addr, path: SocketAddrV4 },
    /// While CONNECTED, the path in use moved (typically public → LAN).
    PathChanged { peer: Ipv4Addr, path: SocketAddrV4 },
    /// The peer left CONNECTED: send via relay again and tell the router,
    /// which withdraws every route through it.
    Disconnected { peer: Ipv4Addr },
}

/// Port prediction's window: `count` ports of `base`'s address, `base.port
/// + step·1 … + step·count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SprayWindow {
    pub base: SocketAddrV4,
    pub step: i32,
    pub count: u16,
}

/// Which half of a birthday attempt this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthdayRole {
    /// Behind the random symmetric NAT: each fresh socket gets a mapping
    /// of its own, one of which the peer's random ports may hit.
    Sockets { target: SocketAddrV4, count: u16 },
    /// The other side: opens its NAT to random ports of `ip`.
    Spray { ip: Ipv4Addr, count: u16 },
}

/// The verdict on one input event, so the caller can count what it drops.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event was applied (possibly with no visible effect, as the seed
    /// prescribes for e.g. try-P2P outside INIT).
    Accepted,
    /// The event was dropped; nothing changed.
    Ignored(Ignored),
}

/// Why an input event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("no peer with that VIP")]
    UnknownPeer,
    #[error("message names this node itself")]
    OwnVip,
    #[error("VIP is unspecified, broadcast or multicast")]
    InvalidVip,
    #[error("endpoint has a zero address or port")]
    InvalidEndpoint,
    #[error("peer is in state {0}")]
    State(PeerState),
    #[error("source is inside the virtual network or a tunnelled subnet")]
    TunnelledSource,
    #[error("PONG answers no challenge of ours (replayed, late or forged)")]
    UnknownNonce,
    #[error("PONG from an address its challenge was not sent to")]
    WrongSource,
    #[error("answer budget for this peer spent")]
    RateLimited,
    #[error("peer table is full ({limit} peers)")]
    TooManyPeers { limit: usize },
}

impl Outcome {
    #[cfg(test)]
    pub fn is_accepted(self) -> bool {
        matches!(self, Outcome::Accepted)
    }
}
