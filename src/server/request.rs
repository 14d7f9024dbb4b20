//! What a client's frame asks of the server: the frame decoded once, with
//! everything the session needs copied out, so the frame itself can move
//! on to its destination unchanged.

use std::net::Ipv4Addr;

use crate::proto::ws::{self, ty, ExptTun, WsMessage};
use crate::proto::{ipv4, ProtoError};

/// The name a GENERAL frame goes by in `Request::Control`; GENERAL frames
/// have a rate limit of their own.
pub const GENERAL: &str = "GENERAL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// FORWARD: relay the packet to `daddr` (or broadcast it).
    Forward {
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
    },
    /// UDP4CONN, DISCOVERY, GENERAL: relay byte-for-byte from `src` to
    /// `dst`; `broadcast_ok` where the type allows `dst` to be broadcast.
    Control {
        what: &'static str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        broadcast_ok: bool,
    },
    Auth(ws::Auth),
    ExptTun(ExptTun),
    Vmac(ws::Vmac),
    /// TIME from a ringlink client: answer with `echo`.
    Time {
        echo: u64,
    },
    /// A type clients do not send (ROUTE, which only servers send) or that
    /// this implementation does not know.
    Ignored(u8),
}

impl Request {
    pub fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        // Only servers send TURN_OFFER: from a client it is an unknown
        // type like any other, ignored whatever its bytes.
        if frame.first() == Some(&ty::TURN_OFFER) {
            return Ok(Request::Ignored(ty::TURN_OFFER));
        }
        Ok(match WsMessage::decode(frame)? {
            WsMessage::Forward(packet) => Request::Forward {
                // Fixed offsets rather than an IPv4 header parse: sdwan
                // pseudo-headers have version 0 (PROTOCOL.md §7), and
                // FORWARD_MIN_LEN guarantees both addresses are there.
                saddr: ipv4::read_addr(packet, 12),
                daddr: ipv4::read_addr(packet, 16),
            },
            WsMessage::PeerConn(m) => Request::control("UDP4CONN", m.src, m.dst, false),
            WsMessage::Discovery(m) => Request::control("DISCOVERY", m.src, m.dst, true),
            WsMessage::General(m) => Request::control(GENERAL, m.src, m.dst, true),
            WsMessage::Auth(m) => Request::Auth(m),
            WsMessage::ExptTun(m) => Request::ExptTun(m),
            WsMessage::Vmac(m) => Request::Vmac(m),
            WsMessage::SysRoutes(_) => Request::Ignored(ty::SYS_ROUTE),
            WsMessage::TurnOffer(_) => Request::Ignored(ty::TURN_OFFER),
            WsMessage::Time(t) => Request::Time { echo: t.echo },
            WsMessage::Unknown(other) => Request::Ignored(other),
        })
    }

    fn control(what: &'static str, src: Ipv4Addr, dst: Ipv4Addr, broadcast_ok: bool) -> Self {
        Request::Control {
            what,
            src,
            dst,
            broadcast_ok,
        }
    }

    /// For the requests that only a client with an address may make, what
    /// to call them in the refusal; `None` for the login steps and ignored
    /// types.
    pub fn needs_auth(&self) -> Option<&'static str> {
        match self {
            Request::Forward { .. } => Some("FORWARD"),
            Request::Control { what, .. } => Some(what),
            Request::Time { .. } => Some("TIME"),
            Request::Auth(_) | Request::ExptTun(_) | Request::Vmac(_) | Request::Ignored(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::{Discovery, PeerConn, BROADCAST};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn forward_carries_the_packet_addresses_even_for_an_sdwan_header() {
        let mut frame = vec![ty::FORWARD; 1 + 20];
        frame[1] = 0; // version 0: the sdwan pseudo-header
        frame[13..17].copy_from_slice(&[10, 77, 0, 1]);
        frame[17..21].copy_from_slice(&[192, 168, 20, 5]);
        let r = Request::decode(&frame).unwrap();
        assert_eq!(
            r,
            Request::Forward {
                saddr: ip("10.77.0.1"),
                daddr: ip("192.168.20.5")
            }
        );
        assert_eq!(r.needs_auth(), Some("FORWARD"));
    }

    #[test]
    fn control_types_say_which_may_broadcast() {
        let (a, b) = (ip("10.77.0.1"), ip("10.77.0.2"));
        let conn = PeerConn {
            src: a,
            dst: b,
            endpoint: "203.0.113.7:40001".parse().unwrap(),
            tail: None,
        };
        let discovery = Discovery {
            src: a,
            dst: BROADCAST,
        };
        assert_eq!(
            Request::decode(&conn.encode()).unwrap(),
            Request::control("UDP4CONN", a, b, false)
        );
        let r = Request::decode(&discovery.encode()).unwrap();
        assert_eq!(r, Request::control("DISCOVERY", a, BROADCAST, true));
        assert_eq!(r.needs_auth(), Some("DISCOVERY"));
    }

    #[test]
    fn unknown_and_server_only_types_are_ignored_without_auth() {
        for t in [200u8, ty::SYS_ROUTE] {
            let frame = [t, 0, 0, 0]; // an empty ROUTE list, or a bare unknown type
            let r = Request::decode(&frame).unwrap();
            assert_eq!(r, Request::Ignored(t));
            assert_eq!(r.needs_auth(), None);
        }
    }

    #[test]
    fn short_and_empty_frames_are_typed_errors() {
        for frame in [&[][..], &[ty::FORWARD; 20][..], &[ty::DISCOVERY, 10][..]] {
            assert!(Request::decode(frame).is_err(), "{frame:?}");
        }
    }
}
