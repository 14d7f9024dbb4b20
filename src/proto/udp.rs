//! Peer messages carried inside the UDP encryption envelope (PROTOCOL.md §3.3).
//!
//! These are the plaintexts; `crypto` wraps them. The first byte is the type.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::error::need;
use super::ext::{Tail, TAIL_LEN};
use super::ProtoError;

pub mod ty {
    pub const HEARTBEAT: u8 = 0;
    pub const FORWARD: u8 = 1;
    pub const DELAY: u8 = 2;
    pub const ROUTE: u8 = 4;
    /// ringlink only: a challenge to a candidate address (docs/protocol.md §5.6).
    pub const PING: u8 = 0xF0;
    /// ringlink only: the answer to a PING, from the address it reached.
    pub const PONG: u8 = 0xF1;
    /// ringlink only: Noise handshake and session messages (0xF2 initiation,
    /// 0xF3 response, 0xF4 transport), parsed by `session::handshake`.
    pub const SESSION_FIRST: u8 = 0xF2;
    pub const SESSION_LAST: u8 = 0xF4;
}

pub const HEARTBEAT_LEN: usize = 12;
pub const DELAY_LEN: usize = 17;
pub const ROUTE_LEN: usize = 13;
pub const PING_LEN: usize = 17;
pub const PONG_LEN: usize = 23;
/// Bytes of a challenge's nonce.
pub const NONCE_LEN: usize = 12;
pub type Nonce = [u8; NONCE_LEN];
/// Type byte plus a bare IPv4 header.
pub const FORWARD_MIN_LEN: usize = 21;
/// Route metric meaning "withdrawn".
pub const WITHDRAWN: i32 = i32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMessage<'a> {
    Heartbeat(Heartbeat),
    /// The IPv4 packet (possibly led by the sdwan pseudo-header).
    Forward(&'a [u8]),
    Delay(Delay),
    Route(RouteAdvert),
    Ping(Ping),
    Pong(Pong),
    /// A handshake or session message, whole (type byte included).
    Session(&'a [u8]),
    Unknown(u8),
}

impl<'a> PeerMessage<'a> {
    pub fn decode(plain: &'a [u8]) -> Result<Self, ProtoError> {
        let &ty = plain.first().ok_or(ProtoError::Empty)?;
        Ok(match ty {
            ty::HEARTBEAT => PeerMessage::Heartbeat(Heartbeat::decode(plain)?),
            ty::FORWARD => {
                need("UDP FORWARD", plain, FORWARD_MIN_LEN)?;
                PeerMessage::Forward(&plain[1..])
            }
            ty::DELAY => PeerMessage::Delay(Delay::decode(plain)?),
            ty::ROUTE => PeerMessage::Route(RouteAdvert::decode(plain)?),
            ty::PING => PeerMessage::Ping(Ping::decode(plain)?),
            ty::PONG => PeerMessage::Pong(Pong::decode(plain)?),
            ty::SESSION_FIRST..=ty::SESSION_LAST => PeerMessage::Session(plain),
            other => PeerMessage::Unknown(other),
        })
    }

    /// The plaintext, type byte first. `Unknown` has no body to send.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PeerMessage::Heartbeat(h) => h.encode(),
            PeerMessage::Forward(packet) => [&[ty::FORWARD], *packet].concat(),
            PeerMessage::Delay(d) => d.encode().to_vec(),
            PeerMessage::Route(r) => r.encode().to_vec(),
            PeerMessage::Ping(p) => p.encode().to_vec(),
            PeerMessage::Pong(p) => p.encode().to_vec(),
            PeerMessage::Session(m) => m.to_vec(),
            PeerMessage::Unknown(t) => vec![*t],
        }
    }
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// HEARTBEAT (0). `endpoint` is advisory and ignored by every receiver;
/// ringlink sends zeros. `tail` is ringlink's marker after the 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub tunip: Ipv4Addr,
    pub endpoint: SocketAddrV4,
    pub ack: bool,
    pub tail: Option<Tail>,
}

impl Heartbeat {
    /// Candy's bytes exactly, no marker.
    pub fn new(tunip: Ipv4Addr, ack: bool) -> Self {
        Self {
            tunip,
            endpoint: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            ack,
            tail: None,
        }
    }

    /// The heartbeat ringlink sends: Candy's bytes and our marker.
    pub fn ringlink(tunip: Ipv4Addr, ack: bool) -> Self {
        Self {
            tail: Some(Tail::OURS),
            ..Self::new(tunip, ack)
        }
    }

    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("HEARTBEAT", p, HEARTBEAT_LEN)?;
        Ok(Self {
            tunip: ip_at(p, 1),
            endpoint: SocketAddrV4::new(ip_at(p, 5), u16::from_be_bytes([p[9], p[10]])),
            ack: p[11] != 0,
            tail: Tail::read(&p[HEARTBEAT_LEN..]),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEARTBEAT_LEN + TAIL_LEN);
        out.push(ty::HEARTBEAT);
        out.extend_from_slice(&self.tunip.octets());
        out.extend_from_slice(&self.endpoint.ip().octets());
        out.extend_from_slice(&self.endpoint.port().to_be_bytes());
        out.push(u8::from(self.ack));
        if let Some(tail) = self.tail {
            out.extend_from_slice(&tail.encode());
        }
        out
    }
}

/// PING (0xF0, ringlink only): "answer me from where this reached you".
/// The nonce is fresh per challenge, so only a live holder of the key at
/// that address can produce the matching PONG; a replay answers nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// The challenger's VIP.
    pub tunip: Ipv4Addr,
    pub nonce: Nonce,
}

impl Ping {
    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("PING", p, PING_LEN)?;
        Ok(Self {
            tunip: ip_at(p, 1),
            nonce: nonce_at(p, 5),
        })
    }

    pub fn encode(&self) -> [u8; PING_LEN] {
        let mut out = [0u8; PING_LEN];
        out[0] = ty::PING;
        out[1..5].copy_from_slice(&self.tunip.octets());
        out[5..17].copy_from_slice(&self.nonce);
        out
    }
}

/// PONG (0xF1, ringlink only): the answer to a PING, echoing its nonce.
/// `seen` is the source the PING arrived from, the answerer's view of the
/// challenger's address (informational, like a STUN reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The answerer's VIP.
    pub tunip: Ipv4Addr,
    pub nonce: Nonce,
    pub seen: SocketAddrV4,
}

impl Pong {
    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("PONG", p, PONG_LEN)?;
        Ok(Self {
            tunip: ip_at(p, 1),
            nonce: nonce_at(p, 5),
            seen: SocketAddrV4::new(ip_at(p, 17), u16::from_be_bytes([p[21], p[22]])),
        })
    }

    pub fn encode(&self) -> [u8; PONG_LEN] {
        let mut out = [0u8; PONG_LEN];
        out[0] = ty::PONG;
        out[1..5].copy_from_slice(&self.tunip.octets());
        out[5..17].copy_from_slice(&self.nonce);
        out[17..21].copy_from_slice(&self.seen.ip().octets());
        out[21..23].copy_from_slice(&self.seen.port().to_be_bytes());
        out
    }
}

fn nonce_at(p: &[u8], off: usize) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&p[off..off + NONCE_LEN]);
    n
}

/// DELAY (2): a latency probe, echoed unchanged by the probed peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The prober's monotonic clock in milliseconds.
    pub timestamp_ms: i64,
}

impl Delay {
    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("DELAY", p, DELAY_LEN)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&p[9..17]);
        Ok(Self {
            src: ip_at(p, 1),
            dst: ip_at(p, 5),
            timestamp_ms: i64::from_be_bytes(ts),
        })
    }

    pub fn encode(&self) -> [u8; DELAY_LEN] {
        let mut out = [0u8; DELAY_LEN];
        out[0] = ty::DELAY;
        out[1..5].copy_from_slice(&self.src.octets());
        out[5..9].copy_from_slice(&self.dst.octets());
        out[9..17].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }
}

/// ROUTE (4): "I reach `dst` with this metric". The delay is an `i32`
/// (4 bytes, not the 8 the seed claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAdvert {
    pub dst: Ipv4Addr,
    pub next: Ipv4Addr,
    pub delay_ms: i32,
}

impl RouteAdvert {
    /// Candy reads negative metrics and metrics over 1000 ms as withdrawals.
    pub fn is_withdrawal(&self) -> bool {
        self.delay_ms < 0 || self.delay_ms > 1000
    }

    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("ROUTE", p, ROUTE_LEN)?;
        Ok(Self {
            dst: ip_at(p, 1),
            next: ip_at(p, 5),
            delay_ms: i32::from_be_bytes([p[9], p[10], p[11], p[12]]),
        })
    }

    pub fn encode(&self) -> [u8; ROUTE_LEN] {
        let mut out = [0u8; ROUTE_LEN];
        out[0] = ty::ROUTE;
        out[1..5].copy_from_slice(&self.dst.octets());
        out[5..9].copy_from_slice(&self.next.octets());
        out[9..13].copy_from_slice(&self.delay_ms.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_util::hex;

    #[test]
    fn heartbeat_plaintext_vector() {
        let hb = Heartbeat::new(Ipv4Addr::new(192, 168, 202, 2), true);
        assert_eq!(hb.encode(), hex("00c0a8ca0200000000000001"));
        assert_eq!(
            PeerMessage::decode(&hb.encode()).unwrap(),
            PeerMessage::Heartbeat(hb)
        );
        let mut any_ack = hb.encode();
        let marked = Heartbeat::ringlink(hb.tunip, true);
        assert_eq!(marked.encode(), hex("00c0a8ca0200000000000001524c0100"));
        assert_eq!(
            PeerMessage::decode(&marked.encode()).unwrap(),
            PeerMessage::Heartbeat(marked)
        );
        any_ack[11] = 7;
        assert!(matches!(PeerMessage::decode(&any_ack), Ok(PeerMessage::Heartbeat(h)) if h.ack));
    }

    #[test]
    fn ping_pong_vectors() {
        let a = Ipv4Addr::new(192, 168, 202, 2);
        let nonce: Nonce = core::array::from_fn(|i| i as u8);
        let ping = Ping { tunip: a, nonce };
        assert_eq!(
            ping.encode().to_vec(),
            hex("f0c0a8ca02000102030405060708090a0b")
        );
        let pong = Pong {
            tunip: a,
            nonce,
            seen: "198.51.100.7:40000".parse().unwrap(),
        };
        assert_eq!(
            pong.encode().to_vec(),
            hex("f1c0a8ca02000102030405060708090a0bc63364079c40")
        );
    }

    #[test]
    fn route_vectors() {
        let dst = Ipv4Addr::new(192, 168, 202, 3);
        let next = Ipv4Addr::new(192, 168, 202, 2);
        let r = RouteAdvert {
            dst,
            next,
            delay_ms: 25,
        };
        assert_eq!(r.encode().to_vec(), hex("04c0a8ca03c0a8ca0200000019"));
        let w = RouteAdvert {
            dst,
            next,
            delay_ms: WITHDRAWN,
        };
        assert_eq!(w.encode().to_vec(), hex("04c0a8ca03c0a8ca027fffffff"));
        assert!(w.is_withdrawal() && !r.is_withdrawal());
        assert!(RouteAdvert {
            delay_ms: 1001,
            ..r
        }
        .is_withdrawal());
        assert!(RouteAdvert { delay_ms: -1, ..r }.is_withdrawal());
        assert_eq!(
            PeerMessage::decode(&w.encode()).unwrap(),
            PeerMessage::Route(w)
        );
    }

    #[test]
    fn delay_round_trip_keeps_trailing_bytes_out() {
        let d = Delay {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            timestamp_ms: 123_456_789_012,
        };
        let mut wire = d.encode().to_vec();
        wire.extend_from_slice(b"tail");
        assert_eq!(PeerMessage::decode(&wire).unwrap(), PeerMessage::Delay(d));
    }

    #[test]
    fn short_and_unknown() {
        for (t, len) in [
            (ty::HEARTBEAT, HEARTBEAT_LEN),
            (ty::FORWARD, FORWARD_MIN_LEN),
            (ty::DELAY, DELAY_LEN),
            (ty::ROUTE, ROUTE_LEN),
            (ty::PING, PING_LEN),
            (ty::PONG, PONG_LEN),
        ] {
            for short in 1..len {
                let mut p = vec![0u8; short];
                p[0] = t;
                assert!(matches!(
                    PeerMessage::decode(&p),
                    Err(ProtoError::TooShort { .. })
                ));
            }
        }
        assert_eq!(PeerMessage::decode(&[3]).unwrap(), PeerMessage::Unknown(3));
        assert_eq!(PeerMessage::decode(&[]), Err(ProtoError::Empty));
    }

    #[test]
    fn every_message_encodes_to_what_decodes_back() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let packet = [0x45u8; 20];
        for m in [
            PeerMessage::Heartbeat(Heartbeat::new(a, true)),
            PeerMessage::Heartbeat(Heartbeat::ringlink(a, false)),
            PeerMessage::Ping(Ping {
                tunip: a,
                nonce: [7; NONCE_LEN],
            }),
            PeerMessage::Pong(Pong {
                tunip: b,
                nonce: [9; NONCE_LEN],
                seen: "198.51.100.7:40000".parse().unwrap(),
            }),
            PeerMessage::Forward(&packet),
            PeerMessage::Session(&[0xF4, 1, 2, 3]),
            PeerMessage::Delay(Delay {
                src: a,
                dst: b,
                timestamp_ms: -7,
            }),
            PeerMessage::Route(RouteAdvert {
                dst: b,
                next: a,
                delay_ms: WITHDRAWN,
            }),
            PeerMessage::Unknown(9),
        ] {
            assert_eq!(PeerMessage::decode(&m.encode()), Ok(m));
        }
    }
}
