//! WebSocket messages between client and server (PROTOCOL.md §2).
//!
//! Each message is one binary frame whose first byte is the type. Decoders
//! check only the minimum length and ignore trailing bytes, as every Candy
//! receiver does; the server forwards frames byte-for-byte, so they borrow
//! from the frame instead of copying.

use std::net::{Ipv4Addr, SocketAddrV4};

use sha2::{Digest, Sha256};

use super::cidr::{mask_prefix, Ipv4Cidr};
use super::error::need;
use super::ext::{Tail, TAIL_LEN};
use super::ProtoError;

/// Largest frame payload a Candy peer can read, in either direction.
pub const MAX_FRAME: usize = 1500;
/// Candy splits ROUTE lists after this many entries.
pub const ROUTES_PER_FRAME: usize = 101;
/// Destination meaning "every other client" in DISCOVERY and GENERAL.
pub const BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

pub mod ty {
    pub const AUTH: u8 = 0;
    pub const FORWARD: u8 = 1;
    pub const EXPTTUN: u8 = 2;
    pub const PEER_CONN: u8 = 3;
    pub const VMAC: u8 = 4;
    pub const DISCOVERY: u8 = 5;
    pub const SYS_ROUTE: u8 = 6;
    pub const GENERAL: u8 = 255;
    /// ringlink only, server → ringlink client: TURN server and
    /// credentials (docs/protocol.md §4.10).
    pub const TURN_OFFER: u8 = 0xF0;
    /// ringlink only, both ways: clock samples and the address the server
    /// sees (docs/protocol.md §4.11).
    pub const TIME: u8 = 0xF1;
}

pub const AUTH_LEN: usize = 45;
pub const EXPTTUN_LEN: usize = 73;
pub const PEER_CONN_LEN: usize = 15;
pub const VMAC_LEN: usize = 57;
pub const DISCOVERY_LEN: usize = 9;
pub const GENERAL_HEADER_LEN: usize = 12;
/// Smallest FORWARD: type byte plus a bare IPv4 header.
pub const FORWARD_MIN_LEN: usize = 21;
const CIDR_FIELD: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage<'a> {
    Auth(Auth),
    /// The relayed IPv4 packet, without the type byte.
    Forward(&'a [u8]),
    ExptTun(ExptTun),
    PeerConn(PeerConn),
    Vmac(Vmac),
    Discovery(Discovery),
    SysRoutes(Vec<SysRoute>),
    General(General<'a>),
    TurnOffer(TurnOffer),
    Time(Time),
    /// A type this implementation does not know; receivers ignore it.
    Unknown(u8),
}

impl<'a> WsMessage<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<Self, ProtoError> {
        let &ty = frame.first().ok_or(ProtoError::Empty)?;
        Ok(match ty {
            ty::AUTH => WsMessage::Auth(Auth::decode(frame)?),
            ty::FORWARD => {
                need("FORWARD", frame, FORWARD_MIN_LEN)?;
                WsMessage::Forward(&frame[1..])
            }
            ty::EXPTTUN => WsMessage::ExptTun(ExptTun::decode(frame)?),
            ty::PEER_CONN => WsMessage::PeerConn(PeerConn::decode(frame)?),
            ty::VMAC => WsMessage::Vmac(Vmac::decode(frame)?),
            ty::DISCOVERY => WsMessage::Discovery(Discovery::decode(frame)?),
            ty::SYS_ROUTE => WsMessage::SysRoutes(SysRoute::decode_list(frame)?),
            ty::GENERAL => WsMessage::General(General::decode(frame)?),
            ty::TURN_OFFER => WsMessage::TurnOffer(TurnOffer::decode(frame)?),
            ty::TIME => WsMessage::Time(Time::decode(frame)?),
            other => WsMessage::Unknown(other),
        })
    }
}

fn ip_at(buf: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[off], buf[off + 1], buf[off + 2], buf[off + 3])
}

fn i64_at(buf: &[u8], off: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    i64::from_be_bytes(b)
}

fn hash_at(buf: &[u8], off: usize) -> [u8; 32] {
    let mut h = [0u8; 32];
    h.copy_from_slice(&buf[off..off + 32]);
    h
}

/// SHA-256 over the password and then the given wire fields, the only
/// authentication Candy has (§1.2).
fn auth_hash(password: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(password);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Compares in constant time so a network observer learns nothing from
/// how fast a wrong password is refused.
fn hash_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// AUTH (0): claims a virtual IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    pub ip: Ipv4Addr,
    pub timestamp: i64,
    pub hash: [u8; 32],
    /// ringlink's marker after the 45 bytes: the sender is a ringlink
    /// client, so a ringlink server may send it ringlink-only messages.
    /// Stock servers ignore the bytes; the hash does not cover them.
    pub ringlink: bool,
}

impl Auth {
    pub fn new(password: &[u8], ip: Ipv4Addr, timestamp: i64) -> Self {
        let hash = auth_hash(password, &[&ip.octets(), &timestamp.to_be_bytes()]);
        Self {
            ip,
            timestamp,
            hash,
            ringlink: false,
        }
    }

    /// The same AUTH with ringlink's marker appended.
    pub fn ringlink(self) -> Self {
        Self {
            ringlink: true,
            ..self
        }
    }

    pub fn verify(&self, password: &[u8]) -> bool {
        hash_eq(
            &Self::new(password, self.ip, self.timestamp).hash,
            &self.hash,
        )
    }

    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("AUTH", frame, AUTH_LEN)?;
        Ok(Self {
            ip: ip_at(frame, 1),
            timestamp: i64_at(frame, 5),
            hash: hash_at(frame, 13),
            ringlink: Tail::read(&frame[AUTH_LEN..]).is_some(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AUTH_LEN + TAIL_LEN);
        out.push(ty::AUTH);
        out.extend_from_slice(&self.ip.octets());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.hash);
        if self.ringlink {
            out.extend_from_slice(&Tail::OURS.encode());
        }
        out
    }
}

/// TURN_OFFER (0xF0, ringlink only): where the TURN server is and the
/// credentials to use on it, minted for this client by the server
/// (docs/protocol.md §4.10). Sent only to clients whose AUTH carried the
/// marker, so no Candy client ever sees the type.
///
/// | off | size | field |
/// | --- | --- | --- |
/// | 0 | 1 | `0xF0` |
/// | 1 | 1 | version, 1 |
/// | 2 | 2 | TURN port |
/// | 4 | 1 | host length h |
/// | 5 | h | host (name or IPv4, ASCII) |
/// | 5+h | 1 | username length u |
/// | 6+h | u | username |
/// | 6+h+u | 1 | password length p |
/// | 7+h+u | p | password |
/// | 7+h+u+p | 0 or 1 | transport: absent or 0 UDP, 1 TLS, 2 TCP |
#[derive(Clone, PartialEq, Eq)]
pub struct TurnOffer {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// On the wire, one byte after the password, left off for UDP so that
    /// an offer reads the same to a client that predates it (which refuses
    /// a stream transport it could not use).
    pub transport: TurnTransport,
}

/// How a client reaches its TURN server. The relayed side, from the
/// server to peers, is UDP in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TurnTransport {
    /// `turn://host` (or `?transport=udp`).
    #[default]
    Udp,
    /// `turn://host?transport=tcp`: RFC 8656 framing on a TCP stream.
    Tcp,
    /// `turns://host`: the same stream inside TLS.
    Tls,
}

impl TurnTransport {
    /// Over a stream (TCP or TLS) rather than datagrams.
    pub fn is_stream(self) -> bool {
        self != TurnTransport::Udp
    }

    /// The offer's trailing byte; `None` for UDP, which sends none.
    fn wire(self) -> Option<u8> {
        match self {
            TurnTransport::Udp => None,
            TurnTransport::Tls => Some(1),
            TurnTransport::Tcp => Some(2),
        }
    }

    fn from_wire(b: Option<u8>) -> Option<Self> {
        match b {
            None | Some(0) => Some(TurnTransport::Udp),
            Some(1) => Some(TurnTransport::Tls),
            Some(2) => Some(TurnTransport::Tcp),
            Some(_) => None,
        }
    }

    /// How logs and status name it.
    pub fn label(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }
}

impl std::fmt::Debug for TurnOffer {
    // Logged at debug level with every server message; never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TurnOffer({} {}:{} user {})",
            self.transport.label(),
            self.host,
            self.port,
            self.username
        )
    }
}

impl TurnOffer {
    const VERSION: u8 = 1;

    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("TURN_OFFER", frame, 5)?;
        if frame[1] < Self::VERSION {
            return Err(ProtoError::TurnOffer("version 0"));
        }
        let port = u16::from_be_bytes([frame[2], frame[3]]);
        let mut rest = &frame[4..];
        let mut field = |what: &'static str| -> Result<String, ProtoError> {
            let (&len, more) = rest.split_first().ok_or(ProtoError::TurnOffer(what))?;
            let bytes = more
                .get(..usize::from(len))
                .ok_or(ProtoError::TurnOffer(what))?;
            rest = &more[usize::from(len)..];
            String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::TurnOffer(what))
        };
        let host = field("host")?;
        let username = field("username")?;
        let password = field("password")?;
        if host.is_empty() || port == 0 {
            return Err(ProtoError::TurnOffer("no host or port"));
        }
        let transport = TurnTransport::from_wire(rest.first().copied())
            .ok_or(ProtoError::TurnOffer("transport"))?;
        Ok(Self {
            host,
            port,
            username,
            password,
            transport,
        })
    }

    /// `None` if a field is over 255 bytes.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = vec![ty::TURN_OFFER, Self::VERSION];
        out.extend_from_slice(&self.port.to_be_bytes());
        for f in [&self.host, &self.username, &self.password] {
            out.push(u8::try_from(f.len()).ok()?);
            out.extend_from_slice(f.as_bytes());
        }
        out.extend(self.transport.wire());
        Some(out)
    }
}

/// TIME (0xF1, ringlink only): a clock sample, so a client can tell the
/// server's time (TCP hole punching meets at an instant of it), and the
/// address the server sees the client's connection come from (its public
/// IPv4 address for TCP). The server sends one unasked to a client whose
/// AUTH carried the marker, with `echo` 0, which also tells the client the
/// server speaks TIME; the client then asks with its own timestamp in
/// `echo` (10 bytes), and the server answers with it echoed.
///
/// | off | size | field |
/// | --- | --- | --- |
/// | 0 | 1 | `0xF1` |
/// | 1 | 1 | version, 1 |
/// | 2 | 8 | echo: the client's timestamp, opaque to the server; 0 unasked |
/// | 10 | 8 | server: the server's Unix time in ns (answers only) |
/// | 18 | 4 | observed IPv4 address (answers only) |
/// | 22 | 2 | observed port (answers only) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub echo: u64,
    /// The server's clock and what it sees of the client; `None` in a
    /// client's request.
    pub answer: Option<(u64, SocketAddrV4)>,
}

impl Time {
    const VERSION: u8 = 1;
    pub const REQUEST_LEN: usize = 10;
    pub const ANSWER_LEN: usize = 24;

    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("TIME", frame, Self::REQUEST_LEN)?;
        if frame[1] < Self::VERSION {
            return Err(ProtoError::Time("version 0"));
        }
        let echo = u64::from_be_bytes(frame[2..10].try_into().unwrap_or_default());
        let answer = frame.get(10..Self::ANSWER_LEN).map(|a| {
            let server = u64::from_be_bytes(a[..8].try_into().unwrap_or_default());
            let ip = Ipv4Addr::new(a[8], a[9], a[10], a[11]);
            (
                server,
                SocketAddrV4::new(ip, u16::from_be_bytes([a[12], a[13]])),
            )
        });
        Ok(Time { echo, answer })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ty::TIME, Self::VERSION];
        out.extend_from_slice(&self.echo.to_be_bytes());
        if let Some((server, seen)) = self.answer {
            out.extend_from_slice(&server.to_be_bytes());
            out.extend_from_slice(&seen.ip().octets());
            out.extend_from_slice(&seen.port().to_be_bytes());
        }
        out
    }
}

/// Writes a FORWARD frame carrying `packet` into `out` (cleared first).
pub fn encode_forward(packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(1 + packet.len());
    out.push(ty::FORWARD);
    out.extend_from_slice(packet);
}

/// EXPTTUN (2): the client's address request and the server's grant. The
/// hash covers only the timestamp, so a grant proves nothing about the CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExptTun {
    pub timestamp: i64,
    pub cidr: Ipv4Cidr,
    pub hash: [u8; 32],
}

impl ExptTun {
    pub fn new(password: &[u8], cidr: Ipv4Cidr, timestamp: i64) -> Self {
        let hash = auth_hash(password, &[&timestamp.to_be_bytes()]);
        Self {
            timestamp,
            cidr,
            hash,
        }
    }

    /// The request a client without an address sends.
    pub fn unspecified_cidr() -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        }
    }

    pub fn verify(&self, password: &[u8]) -> bool {
        hash_eq(
            &Self::new(password, self.cidr, self.timestamp).hash,
            &self.hash,
        )
    }

    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("EXPTTUN", frame, EXPTTUN_LEN)?;
        let field = &frame[9..9 + CIDR_FIELD];
        let end = field.iter().position(|&b| b == 0).unwrap_or(CIDR_FIELD);
        let text = std::str::from_utf8(&field[..end]).map_err(|_| {
            ProtoError::BadCidr(String::from_utf8_lossy(&field[..end]).into_owned())
        })?;
        Ok(Self {
            timestamp: i64_at(frame, 1),
            cidr: text.parse()?,
            hash: hash_at(frame, 41),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(EXPTTUN_LEN);
        out.push(ty::EXPTTUN);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        let text = self.cidr.to_string();
        // "255.255.255.255/32" is 18 bytes, so it always fits with its NUL.
        let mut field = [0u8; CIDR_FIELD];
        field[..text.len()].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&field);
        out.extend_from_slice(&self.hash);
        out
    }
}

/// UDP4CONN (3): a node's public endpoint, sent to one peer via the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConn {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub endpoint: SocketAddrV4,
    /// ringlink's marker after the 15 bytes; servers forward it untouched.
    pub tail: Option<Tail>,
}

impl PeerConn {
    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("UDP4CONN", frame, PEER_CONN_LEN)?;
        Ok(Self {
            src: ip_at(frame, 1),
            dst: ip_at(frame, 5),
            endpoint: SocketAddrV4::new(
                ip_at(frame, 9),
                u16::from_be_bytes([frame[13], frame[14]]),
            ),
            tail: Tail::read(&frame[PEER_CONN_LEN..]),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PEER_CONN_LEN + TAIL_LEN);
        out.push(ty::PEER_CONN);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&self.endpoint.ip().octets());
        out.extend_from_slice(&self.endpoint.port().to_be_bytes());
        if let Some(tail) = self.tail {
            out.extend_from_slice(&tail.encode());
        }
        out
    }
}

/// VMAC (4): a random per-installation identifier, used only to let a
/// reconnecting client keep its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmac {
    pub vmac: [u8; 16],
    pub timestamp: i64,
    pub hash: [u8; 32],
}

impl Vmac {
    pub fn new(password: &[u8], vmac: [u8; 16], timestamp: i64) -> Self {
        let hash = auth_hash(password, &[&vmac, &timestamp.to_be_bytes()]);
        Self {
            vmac,
            timestamp,
            hash,
        }
    }

    pub fn verify(&self, password: &[u8]) -> bool {
        hash_eq(
            &Self::new(password, self.vmac, self.timestamp).hash,
            &self.hash,
        )
    }

    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("VMAC", frame, VMAC_LEN)?;
        let mut vmac = [0u8; 16];
        vmac.copy_from_slice(&frame[1..17]);
        Ok(Self {
            vmac,
            timestamp: i64_at(frame, 17),
            hash: hash_at(frame, 25),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VMAC_LEN);
        out.push(ty::VMAC);
        out.extend_from_slice(&self.vmac);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out
    }
}

/// DISCOVERY (5): "I exist", broadcast or answered by unicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Discovery {
    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        need("DISCOVERY", frame, DISCOVERY_LEN)?;
        Ok(Self {
            src: ip_at(frame, 1),
            dst: ip_at(frame, 5),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DISCOVERY_LEN);
        out.push(ty::DISCOVERY);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out
    }
}

/// One sdwan route pushed by the server in a ROUTE (6) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRoute {
    pub dst: Ipv4Cidr,
    pub next: Ipv4Addr,
}

impl SysRoute {
    /// Unlike Candy, the entry count is checked against the frame, and a
    /// netmask with holes is refused rather than installed.
    fn decode_list(frame: &[u8]) -> Result<Vec<Self>, ProtoError> {
        need("ROUTE", frame, 4)?;
        let claimed = usize::from(frame[1]);
        let present = (frame.len() - 4) / 12;
        if present < claimed {
            return Err(ProtoError::RouteCount { claimed, present });
        }
        (0..claimed)
            .map(|i| {
                let off = 4 + 12 * i;
                let net = ip_at(frame, off);
                let mask = ip_at(frame, off + 4);
                let prefix =
                    mask_prefix(mask).ok_or(ProtoError::BadCidr(format!("{net} mask {mask}")))?;
                Ok(SysRoute {
                    dst: Ipv4Cidr { addr: net, prefix },
                    next: ip_at(frame, off + 8),
                })
            })
            .collect()
    }

    /// Encodes `routes` as ROUTE frames of at most `ROUTES_PER_FRAME`
    /// entries each, so no frame exceeds what a Candy client can read.
    pub fn encode_list(routes: &[SysRoute]) -> Vec<Vec<u8>> {
        routes
            .chunks(ROUTES_PER_FRAME)
            .map(|chunk| {
                let mut out = Vec::with_capacity(4 + 12 * chunk.len());
                // chunk.len() ≤ 101, so it fits the u8 count.
                out.extend_from_slice(&[ty::SYS_ROUTE, chunk.len() as u8, 0, 0]);
                for r in chunk {
                    out.extend_from_slice(&r.dst.network().octets());
                    out.extend_from_slice(&r.dst.netmask().octets());
                    out.extend_from_slice(&r.next.octets());
                }
                out
            })
            .collect()
    }
}

/// GENERAL (255) subtypes.
pub mod general {
    pub const LOCAL_CONN: u8 = 0;
    pub const LOCAL_CONN_LEN: usize = 18;
    /// ringlink only, unicast to ringlink peers: a peer message sealed
    /// with the receiver's Candy key, exactly the bytes the UDP datagram
    /// would carry (today only handshake and session messages ride here).
    pub const SEALED: u8 = 0xF2;
    /// ringlink only: the sender's node key (32 bytes), broadcast on joining
    /// (stock v6 clients drop broadcast GENERALs, v5 ones unknown subtypes)
    /// and answered unicast by every ringlink member, so keys travel, and
    /// sessions form, even where no direct path is ever tried.
    pub const KEY: u8 = 0xF3;
    pub const KEY_LEN: usize = 32;
}

/// GENERAL (255): a routed envelope with a subtype; the server never
/// looks past the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct General<'a> {
    pub subtype: u8,
    pub extra: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub body: &'a [u8],
}

impl<'a> General<'a> {
    fn decode(frame: &'a [u8]) -> Result<Self, ProtoError> {
        need("GENERAL", frame, GENERAL_HEADER_LEN)?;
        Ok(Self {
            subtype: frame[1],
            extra: u16::from_be_bytes([frame[2], frame[3]]),
            src: ip_at(frame, 4),
            dst: ip_at(frame, 8),
            body: &frame[GENERAL_HEADER_LEN..],
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(GENERAL_HEADER_LEN + self.body.len());
        out.extend_from_slice(&[ty::GENERAL, self.subtype]);
        out.extend_from_slice(&self.extra.to_be_bytes());
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(self.body);
        out
    }

    /// The LAN candidate carried by subtype 0, if this is one.
    pub fn local_conn(&self) -> Option<SocketAddrV4> {
        (self.subtype == general::LOCAL_CONN && self.body.len() >= 6).then(|| {
            SocketAddrV4::new(
                ip_at(self.body, 0),
                u16::from_be_bytes([self.body[4], self.body[5]]),
            )
        })
    }
}

/// Builds a GENERAL/0 frame announcing our LAN candidate to `dst`.
pub fn encode_local_conn(src: Ipv4Addr, dst: Ipv4Addr, lan: SocketAddrV4) -> Vec<u8> {
    let mut body = [0u8; 6];
    body[..4].copy_from_slice(&lan.ip().octets());
    body[4..].copy_from_slice(&lan.port().to_be_bytes());
    General {
        subtype: general::LOCAL_CONN,
        extra: 0,
        src,
        dst,
        body: &body,
    }
    .encode()
}

/// A GENERAL frame addressed to ourselves: every server echoes it back and
/// it reaches no other client, so it keeps idle connections alive without
/// WebSocket pings (which v6 servers answer with an oversize pong, §2.1).
pub fn encode_keepalive(own: Ipv4Addr) -> Vec<u8> {
    General {
        subtype: 0,
        extra: 0,
        src: own,
        dst: own,
        body: &[],
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_util::hex;

    const P: &[u8] = b"this is the password";
    const TS: i64 = 1_700_000_000;

    #[test]
    fn auth_vector() {
        let a = Auth::new(P, Ipv4Addr::new(192, 168, 202, 1), TS);
        assert_eq!(
            a.encode(),
            hex("00c0a8ca01000000006553f10082994a7d0fbd23f02c593b4f8e70c23c9b394ee6afe26367d2ae22ae440c7587")
        );
        let frame = a.encode();
        match WsMessage::decode(&frame).unwrap() {
            WsMessage::Auth(d) => {
                assert_eq!(d, a);
                assert!(d.verify(P));
                assert!(!d.verify(b"wrong"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_marker_rides_after_the_hash() {
        let a = Auth::new(P, Ipv4Addr::new(192, 168, 202, 1), TS).ringlink();
        let frame = a.encode();
        // The 45 Candy bytes are unchanged; the marker follows them.
        assert_eq!(
            frame[..AUTH_LEN],
            Auth {
                ringlink: false,
                ..a
            }
            .encode()[..]
        );
        assert_eq!(&frame[AUTH_LEN..], b"RL\x01\x00");
        match WsMessage::decode(&frame).unwrap() {
            WsMessage::Auth(d) => assert!(d.ringlink && d.verify(P)),
            other => panic!("{other:?}"),
        }
        // Other trailing bytes are no marker.
        let mut odd = frame[..AUTH_LEN].to_vec();
        odd.extend_from_slice(b"xx");
        assert!(matches!(WsMessage::decode(&odd), Ok(WsMessage::Auth(d)) if !d.ringlink));
    }

    #[test]
    fn turn_offer_vector_and_bad_frames() {
        let o = TurnOffer {
            host: "10.9.0.1".into(),
            port: 3478,
            username: "1700000000:10.77.0.2".into(),
            password: "pw".into(),
            transport: TurnTransport::Udp,
        };
        let frame = o.encode().unwrap();
        let mut want = vec![0xF0, 0x01, 0x0d, 0x96, 8];
        want.extend_from_slice(b"10.9.0.1");
        want.push(20);
        want.extend_from_slice(b"1700000000:10.77.0.2");
        want.extend_from_slice(&[2, b'p', b'w']);
        assert_eq!(frame, want);
        assert_eq!(
            WsMessage::decode(&frame),
            Ok(WsMessage::TurnOffer(o.clone()))
        );
        assert!(!format!("{o:?}").contains("pw"));
        for cut in 0..frame.len() {
            assert!(WsMessage::decode(&frame[..cut]).is_err(), "cut {cut}");
        }
        let mut v0 = frame.clone();
        v0[1] = 0;
        assert!(WsMessage::decode(&v0).is_err());
        let mut no_port = frame.clone();
        no_port[2..4].fill(0);
        assert!(WsMessage::decode(&no_port).is_err());
        // A stream transport: one byte more.
        for (transport, byte) in [(TurnTransport::Tls, 1), (TurnTransport::Tcp, 2)] {
            let streamed = TurnOffer {
                transport,
                ..o.clone()
            };
            let streamed_frame = streamed.encode().unwrap();
            assert_eq!(streamed_frame[..frame.len()], frame[..]);
            assert_eq!(streamed_frame[frame.len()..], [byte]);
            assert_eq!(
                WsMessage::decode(&streamed_frame),
                Ok(WsMessage::TurnOffer(streamed))
            );
        }
        let mut zero = frame.clone();
        zero.push(0);
        assert_eq!(
            WsMessage::decode(&zero),
            Ok(WsMessage::TurnOffer(o.clone()))
        );
        let mut unknown = frame.clone();
        unknown.push(3);
        assert!(WsMessage::decode(&unknown).is_err());
        let long = TurnOffer {
            password: "x".repeat(256),
            ..o
        };
        assert_eq!(long.encode(), None);
    }

    #[test]
    fn vmac_vector() {
        let v = Vmac::new(P, *b"0123456789abcdef", TS);
        assert_eq!(
            v.hash.to_vec(),
            hex("5f78ef7bc9c735ea864bad1ad108cf54dfbf6d004a3881fd2d3f3d2d27837ff6")
        );
        let frame = v.encode();
        assert_eq!(frame.len(), VMAC_LEN);
        assert_eq!(frame[..17], hex("0430313233343536373839616263646566")[..]);
        assert_eq!(WsMessage::decode(&frame).unwrap(), WsMessage::Vmac(v));
    }

    #[test]
    fn expttun_vector() {
        let e = ExptTun::new(P, ExptTun::unspecified_cidr(), TS);
        assert_eq!(
            e.hash.to_vec(),
            hex("bd8547b65b3690de67b914f3bf6d0aa7f3ea11e106eb0f0b6a837ba547f649f4")
        );
        let frame = e.encode();
        assert_eq!(frame.len(), EXPTTUN_LEN);
        let mut expect = hex("02000000006553f100302e302e302e302f30");
        expect.extend_from_slice(&[0u8; 23]);
        expect.extend_from_slice(&e.hash);
        assert_eq!(frame, expect);
        match WsMessage::decode(&frame).unwrap() {
            WsMessage::ExptTun(d) => assert!(d.verify(P) && d == e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips_with_trailing_bytes() {
        let a = Ipv4Addr::new(10, 77, 0, 2);
        let b = Ipv4Addr::new(10, 77, 0, 3);
        let pc = PeerConn {
            src: a,
            dst: b,
            endpoint: "1.2.3.4:5678".parse().unwrap(),
            tail: None,
        };
        let marked = PeerConn {
            tail: Some(Tail::OURS),
            ..pc
        };
        assert_eq!(marked.encode()[PEER_CONN_LEN..], *b"RL\x01\x00");
        assert_eq!(
            WsMessage::decode(&marked.encode()).unwrap(),
            WsMessage::PeerConn(marked)
        );
        let d = Discovery {
            src: a,
            dst: BROADCAST,
        };
        let lan: SocketAddrV4 = "192.168.1.5:40000".parse().unwrap();
        for (frame, check) in [
            (pc.encode(), WsMessage::PeerConn(pc)),
            (d.encode(), WsMessage::Discovery(d)),
        ] {
            assert_eq!(WsMessage::decode(&frame).unwrap(), check);
            let mut longer = frame.clone();
            longer.extend_from_slice(b"junk");
            assert_eq!(WsMessage::decode(&longer).unwrap(), check);
        }
        let lc = encode_local_conn(a, b, lan);
        assert_eq!(lc.len(), general::LOCAL_CONN_LEN);
        match WsMessage::decode(&lc).unwrap() {
            WsMessage::General(g) => {
                assert_eq!((g.src, g.dst, g.local_conn()), (a, b, Some(lan)));
            }
            other => panic!("{other:?}"),
        }
        let ka = encode_keepalive(a);
        assert_eq!(ka.len(), GENERAL_HEADER_LEN);
        match WsMessage::decode(&ka).unwrap() {
            WsMessage::General(g) => assert_eq!((g.src, g.dst, g.local_conn()), (a, a, None)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forward_and_unknown() {
        let pkt = [0x45u8; 20];
        let mut frame = Vec::new();
        encode_forward(&pkt, &mut frame);
        assert_eq!(
            WsMessage::decode(&frame).unwrap(),
            WsMessage::Forward(&pkt[..])
        );
        assert_eq!(
            WsMessage::decode(&[7, 1, 2]).unwrap(),
            WsMessage::Unknown(7)
        );
        assert_eq!(WsMessage::decode(&[]), Err(ProtoError::Empty));
    }

    #[test]
    fn every_type_rejects_every_short_length() {
        let full: [(u8, usize); 8] = [
            (ty::AUTH, AUTH_LEN),
            (ty::FORWARD, FORWARD_MIN_LEN),
            (ty::EXPTTUN, EXPTTUN_LEN),
            (ty::PEER_CONN, PEER_CONN_LEN),
            (ty::VMAC, VMAC_LEN),
            (ty::DISCOVERY, DISCOVERY_LEN),
            (ty::SYS_ROUTE, 4),
            (ty::GENERAL, GENERAL_HEADER_LEN),
        ];
        for (t, len) in full {
            for short in 1..len {
                let mut f = vec![0u8; short];
                f[0] = t;
                assert!(
                    matches!(WsMessage::decode(&f), Err(ProtoError::TooShort { .. })),
                    "type {t} len {short}"
                );
            }
        }
    }

    #[test]
    fn sys_routes_split_and_bounds() {
        let routes: Vec<SysRoute> = (0..250u32)
            .map(|i| SysRoute {
                dst: Ipv4Cidr::new(Ipv4Addr::from(0xC0A8_0000 + (i << 8)), 24).unwrap(),
                next: Ipv4Addr::new(10, 77, 0, 20),
            })
            .collect();
        let frames = SysRoute::encode_list(&routes);
        assert_eq!(
            frames.iter().map(|f| f[1] as usize).collect::<Vec<_>>(),
            [101, 101, 48]
        );
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
        let mut back = Vec::new();
        for f in &frames {
            match WsMessage::decode(f).unwrap() {
                WsMessage::SysRoutes(r) => back.extend(r),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, routes);
        // Count larger than the frame: refused instead of read past the end.
        let mut lying = frames[2].clone();
        lying[1] = 60;
        assert_eq!(
            WsMessage::decode(&lying),
            Err(ProtoError::RouteCount {
                claimed: 60,
                present: 48
            })
        );
        // A netmask with holes is refused.
        let mut holes = SysRoute::encode_list(&routes[..1]).remove(0);
        holes[8..12].copy_from_slice(&[255, 0, 255, 0]);
        assert!(matches!(
            WsMessage::decode(&holes),
            Err(ProtoError::BadCidr(_))
        ));
    }

    #[test]
    fn expttun_with_garbage_cidr_is_an_error() {
        let mut frame = ExptTun::new(P, ExptTun::unspecified_cidr(), TS).encode();
        frame[9..13].copy_from_slice(b"zzzz");
        assert!(matches!(
            WsMessage::decode(&frame),
            Err(ProtoError::BadCidr(_))
        ));
        frame[9] = 0xff;
        assert!(matches!(
            WsMessage::decode(&frame),
            Err(ProtoError::BadCidr(_))
        ));
    }

    #[test]
    fn time_request_and_answer_round_trip() {
        let ask = Time {
            echo: 0x0102_0304_0506_0708,
            answer: None,
        };
        let wire = ask.encode();
        assert_eq!(wire, [0xF1, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(WsMessage::decode(&wire).unwrap(), WsMessage::Time(ask));
        let answer = Time {
            echo: 7,
            answer: Some((
                1_700_000_000_123_456_789,
                "198.51.100.9:40123".parse().unwrap(),
            )),
        };
        let wire = answer.encode();
        assert_eq!(wire.len(), Time::ANSWER_LEN);
        assert_eq!(WsMessage::decode(&wire).unwrap(), WsMessage::Time(answer));
        assert!(WsMessage::decode(&wire[..9]).is_err());
        assert!(WsMessage::decode(&[0xF1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
