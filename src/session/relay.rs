//! Session datagrams through the server's relay (docs/protocol.md §5.8).
//!
//! Every Candy server forwards a FORWARD frame by the IPv4 addresses at
//! fixed offsets and nothing else, so a session datagram rides in one as
//! the payload of an IPv4 header from our VIP to the peer's, protocol 253
//! (RFC 3692, for experiments). The server sees the two VIPs and
//! ciphertext; the peer finds the session by the index, as on UDP.
//!
//! ```text
//!   | 0x01 | IPv4 header 20, proto 253 | index 4 | counter 8 | tag 16 | type | … |
//! ```
//!
//! Only a ringlink peer with a session ever receives one, so no stock
//! client writes it to its interface.

use std::net::Ipv4Addr;

use crate::proto::ws;
use crate::proto::{checksum, ipv4};

use super::transport::DATAGRAM_HEADER_LEN;

/// The IPv4 protocol number that marks a session datagram.
pub const PROTOCOL: u8 = 253;
/// The IPv4 header in front of the session datagram.
pub const IPV4_HEADER_LEN: usize = ipv4::HEADER_LEN;
/// Bytes of a relay frame in front of a session datagram's plaintext:
/// the frame's type byte, the IPv4 header and the datagram's header.
pub const FRAME_OVERHEAD: usize = 1 + IPV4_HEADER_LEN + DATAGRAM_HEADER_LEN;

/// Writes the frame's type byte and IPv4 header into `frame[..21]` for a
/// session datagram of `datagram_len` bytes from `src` to `dst`.
pub fn write_header(frame: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, datagram_len: usize) {
    let total = (IPV4_HEADER_LEN + datagram_len).min(usize::from(u16::MAX)) as u16;
    frame[0] = ws::ty::FORWARD;
    let h = &mut frame[1..1 + IPV4_HEADER_LEN];
    h.copy_from_slice(&ipv4::header(src, dst, PROTOCOL, total));
    // Don't fragment: nothing here is ever fragmented.
    h[6] = 0x40;
    checksum::refresh_ipv4_header(h, IPV4_HEADER_LEN);
}

/// The session datagram inside a relayed packet (a FORWARD frame's body),
/// and the VIP it claims to come from; `None` for any other packet.
pub fn session_datagram(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let h = packet.get(..IPV4_HEADER_LEN)?;
    if h[0] != 0x45 || h[9] != PROTOCOL {
        return None;
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let d = &packet[IPV4_HEADER_LEN..];
    (d.len() >= DATAGRAM_HEADER_LEN).then_some((src, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ipv4;
    use crate::proto::ws::WsMessage;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn frame_is_a_forward_the_server_routes_and_parses_back() {
        let mut frame = vec![0u8; 1 + IPV4_HEADER_LEN + 40];
        frame[21..].iter_mut().for_each(|b| *b = 7);
        write_header(&mut frame, A, B, 40);
        let WsMessage::Forward(packet) = WsMessage::decode(&frame).unwrap() else {
            panic!("not a FORWARD");
        };
        // What every server reads: source and destination at fixed offsets.
        assert_eq!(&frame[13..17], &A.octets());
        assert_eq!(&frame[17..21], &B.octets());
        assert_eq!(ipv4::addrs(packet).unwrap(), (A, B));
        assert_eq!(checksum::ipv4_header(&packet[..20]), 0);
        assert_eq!(
            u16::from_be_bytes([packet[2], packet[3]]) as usize,
            packet.len()
        );
        let (src, d) = session_datagram(packet).unwrap();
        assert_eq!(src, A);
        assert_eq!(d, &[7u8; 40][..]);
    }

    #[test]
    fn other_packets_are_not_session_datagrams() {
        let mut udp = vec![0u8; 60];
        udp[0] = 0x45;
        udp[9] = 17;
        assert_eq!(session_datagram(&udp), None);
        let mut short = vec![0u8; 20 + DATAGRAM_HEADER_LEN - 1];
        short[0] = 0x45;
        short[9] = PROTOCOL;
        assert_eq!(session_datagram(&short), None);
        assert_eq!(session_datagram(&[0x45]), None);
        // Candy's pseudo-header (version 0) is never one either.
        let mut pseudo = vec![0u8; 80];
        pseudo[9] = PROTOCOL;
        assert_eq!(session_datagram(&pseudo), None);
    }
}
