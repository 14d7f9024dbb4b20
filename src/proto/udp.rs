//! Peer messages carried inside the UDP encryption envelope (PROTOCOL.md §3.3).
//!
//! These are the plaintexts; `crypto` wraps them. The first byte is the type.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::error::need;
use super::ProtoError;

pub mod ty {
    pub const HEARTBEAT: u8 = 0;
    pub const FORWARD: u8 = 1;
    pub const DELAY: u8 = 2;
    pub const ROUTE: u8 = 4;
}

pub const HEARTBEAT_LEN: usize = 12;
pub const DELAY_LEN: usize = 17;
pub const ROUTE_LEN: usize = 13;
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
            other => PeerMessage::Unknown(other),
        })
    }

    /// The plaintext, type byte first. `Unknown` has no body to send.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PeerMessage::Heartbeat(h) => h.encode().to_vec(),
            PeerMessage::Forward(packet) => [&[ty::FORWARD], *packet].concat(),
            PeerMessage::Delay(d) => d.encode().to_vec(),
            PeerMessage::Route(r) => r.encode().to_vec(),
            PeerMessage::Unknown(t) => vec![*t],
        }
    }
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// HEARTBEAT (0). `endpoint` is advisory and ignored by every receiver;
/// ringlink sends zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub tunip: Ipv4Addr,
    pub endpoint: SocketAddrV4,
    pub ack: bool,
}

impl Heartbeat {
    pub fn new(tunip: Ipv4Addr, ack: bool) -> Self {
        Self {
            tunip,
            endpoint: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            ack,
        }
    }

    fn decode(p: &[u8]) -> Result<Self, ProtoError> {
        need("HEARTBEAT", p, HEARTBEAT_LEN)?;
        Ok(Self {
            tunip: ip_at(p, 1),
            endpoint: SocketAddrV4::new(ip_at(p, 5), u16::from_be_bytes([p[9], p[10]])),
            ack: p[11] != 0,
        })
    }

    pub fn encode(&self) -> [u8; HEARTBEAT_LEN] {
        let mut out = [0u8; HEARTBEAT_LEN];
        out[0] = ty::HEARTBEAT;
        out[1..5].copy_from_slice(&self.tunip.octets());
        out[5..9].copy_from_slice(&self.endpoint.ip().octets());
        out[9..11].copy_from_slice(&self.endpoint.port().to_be_bytes());
        out[11] = u8::from(self.ack);
        out
    }
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
        assert_eq!(hb.encode().to_vec(), hex("00c0a8ca0200000000000001"));
        assert_eq!(
            PeerMessage::decode(&hb.encode()).unwrap(),
            PeerMessage::Heartbeat(hb)
        );
        let mut any_ack = hb.encode();
        any_ack[11] = 7;
        assert!(matches!(PeerMessage::decode(&any_ack), Ok(PeerMessage::Heartbeat(h)) if h.ack));
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
            PeerMessage::Forward(&packet),
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
