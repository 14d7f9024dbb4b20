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
    /// address, its next port and then every `stride`-th (stepping by
    /// `step`), from the attempt's fresh socket. A sequential NAT gives each
    /// new destination its next port, so probes that land on the peer's
    /// next ports, from ports of ours the peer aims at, meet
    /// (`nat::schedule::stride_spray` has the arithmetic).
    Spray {
        peer: Ipv4Addr,
        base: SocketAddrV4,
        step: i32,
        stride: i32,
        count: u16,
    },
    /// ringlink peers only: one half of a birthday attempt (`nat::schedule`
    /// has the numbers). Marked heartbeats, paced by the caller.
    Birthday { peer: Ipv4Addr, role: BirthdayRole },
    /// ringlink peers only: open one fresh socket for this round of the
    /// attempt. It probes `target` (when given), sprays `spray`, and only
    /// then asks the STUN server for its mapping, which is announced to the
    /// peer in a second UDP4CONN and reported back with
    /// `PeerManager::handle_own_fresh`. Behind a router where an
    /// unsolicited datagram claims a port (a bare Linux masquerade), the
    /// peer's early probes have taken our main mapping towards it; this
    /// port is shown to nobody before it has sent to the peer. Behind a
    /// sequential NAT, its mapping is the newest port the NAT gave out: the
    /// base the peer predicts from.
    FreshPort {
        peer: Ipv4Addr,
        target: Option<SocketAddrV4>,
        spray: FreshSpray,
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
    /// An attempt with a ringlink peer ended without a direct path (the
    /// peer went from CONNECTING to WAITING) or started with no method that
    /// could make one (two random symmetric NATs); or an attempt with any
    /// peer never started (no STUN answer or no public info in time: UDP
    /// may be blocked), where the caller checks that the peer speaks
    /// ringlink. The caller may offer the other paths meanwhile (TURN,
    /// direct TCP); attempts go on with back-off.
    NoDirectPath { peer: Ipv4Addr },
}

/// What a fresh socket sprays before it announces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshSpray {
    /// Nothing: it probes its target, or only asks STUN (an observation).
    Nothing,
    /// Port prediction's window around the peer's observed `base`:
    /// `behind` ports before it and `ahead` after it, stepping by `step`.
    Window {
        base: SocketAddrV4,
        step: i32,
        behind: u16,
        ahead: u16,
    },
    /// `count` distinct random ports of `ip` (a random symmetric peer).
    Birthday { ip: Ipv4Addr, count: u16 },
}

/// Which half of a birthday attempt this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthdayRole {
    /// Behind the random symmetric NAT: `count` sockets each send one
    /// probe to `target`, so each gets a random mapping of its own, one of
    /// which the peer's random ports may hit. Sockets this attempt opened
    /// already are sent from again rather than new ones opened.
    Sockets { target: SocketAddrV4, count: u16 },
    /// The other side: opens its NAT to `count` random ports of `ip`, from
    /// the attempt's fresh socket.
    Spray { ip: Ipv4Addr, count: u16 },
    /// Behind the random NAT, against a sequential one: `per_slot` sockets
    /// each send to the `slots` ports `base + step·1 … + step·slots`, where
    /// the peer's probes will leave from.
    Slots {
        base: SocketAddrV4,
        step: i32,
        slots: u16,
        per_slot: u16,
    },
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
