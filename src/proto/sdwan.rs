//! The 20-byte sdwan pseudo-header that carries a LAN packet to its subnet
//! gateway (PROTOCOL §7), and the one parse of a FORWARD's packet that both
//! routing and delivery read from.
//!
//! Pure functions over byte slices; every malformed input is a typed error.

use std::net::Ipv4Addr;
use std::ops::Range;

use super::checksum;
use super::ipv4::{self, PacketError};

/// Length of the pseudo-header; stock receivers strip exactly this much.
/// It is an IPv4 header without options, which is what Candy sizes it by.
pub const PSEUDO_HEADER_LEN: usize = ipv4::HEADER_LEN;
/// Protocol number that marks a pseudo-header (IP-in-IP).
pub const IPIP_PROTOCOL: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdwanError {
    #[error("packet is {len} bytes, shorter than an IPv4 header")]
    Truncated { len: usize },
    #[error("packet: {0}")]
    Packet(PacketError),
    #[error("packet after the pseudo-header: {0}")]
    Inner(PacketError),
    #[error("a {0}-byte packet does not fit an IPv4 total length once wrapped")]
    TooLong(usize),
    #[error(
        "pseudo-header starts with {0:#04x}; only 0x45 (IHL 5) or 0x00 (Candy's) are accepted"
    )]
    BadPseudoHeader(u8),
}

/// A valid IPv4 header (version 4, IHL 5, protocol 4, correct total length
/// and checksum) for wrapping `inner_len` bytes from `src` (own VIP) to
/// `gateway`. Stock receivers only look at byte 9 and strip 20 bytes; a
/// well-formed header also survives anything that does parse it.
pub fn build_pseudo_header(
    src: Ipv4Addr,
    gateway: Ipv4Addr,
    inner_len: usize,
) -> Result<[u8; PSEUDO_HEADER_LEN], SdwanError> {
    let total = inner_len
        .checked_add(PSEUDO_HEADER_LEN)
        .and_then(|t| u16::try_from(t).ok())
        .ok_or(SdwanError::TooLong(inner_len))?;
    let mut h = ipv4::header(src, gateway, IPIP_PROTOCOL, total);
    let sum = checksum::ipv4_header(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    Ok(h)
}

/// A FORWARD's packet, read once: the outer addresses routing decides on
/// and the range of the IPv4 packet to write to TUN if it is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// Outer source: the sender's VIP for a wrapped packet.
    pub src: Ipv4Addr,
    /// Outer destination: the gateway's VIP for a wrapped packet.
    pub dst: Ipv4Addr,
    /// The packet behind the pseudo-header, or the whole packet.
    pub inner: Range<usize>,
}

/// Parse a packet carried by a FORWARD (from UDP or the relay).
///
/// Byte 9 == 4 is the only test stock Candy applies for a pseudo-header.
/// Only addresses are read from it: Candy's is all zero apart from
/// protocol and addresses, so it is no valid IPv4 header. Accepts Candy's
/// all-zero header and a real IHL-5 header; anything else with protocol 4
/// (an IHL>5 IP-in-IP packet) is refused rather than cut at byte 20 as
/// Candy would, which would hand the kernel option bytes as a header.
pub fn parse_forwarded(packet: &[u8]) -> Result<Forwarded, SdwanError> {
    let header = packet
        .get(..ipv4::HEADER_LEN)
        .ok_or(SdwanError::Truncated { len: packet.len() })?;
    let inner = if header[9] == IPIP_PROTOCOL {
        match header[0] {
            0x00 | 0x45 => {}
            b => return Err(SdwanError::BadPseudoHeader(b)),
        }
        ipv4::classify(&packet[PSEUDO_HEADER_LEN..]).map_err(SdwanError::Inner)?;
        PSEUDO_HEADER_LEN..packet.len()
    } else {
        ipv4::classify(packet).map_err(SdwanError::Packet)?;
        0..packet.len()
    };
    Ok(Forwarded {
        src: ipv4::read_addr(header, 12),
        dst: ipv4::read_addr(header, 16),
        inner,
    })
}

/// What to write to TUN for a packet delivered to this node: the packet
/// itself, or what follows its pseudo-header.
pub fn decapsulate(packet: &[u8]) -> Result<&[u8], SdwanError> {
    parse_forwarded(packet).map(|f| &packet[f.inner])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn inner_packet(daddr: Ipv4Addr, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[172, 16, 1, 10]);
        p[16..20].copy_from_slice(&daddr.octets());
        p
    }

    #[test]
    fn pseudo_header_is_valid_ipv4_and_strips() {
        let own = ip(192, 168, 202, 1);
        let gw = ip(192, 168, 202, 2);
        let inner = inner_packet(ip(172, 16, 2, 5), 60);
        let h = build_pseudo_header(own, gw, inner.len()).unwrap();
        assert_eq!(h[0], 0x45);
        assert_eq!(h[9], 4);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 80);
        // A correct checksum makes the folded sum over the header 0xFFFF.
        assert_eq!(checksum::ipv4_header(&h), 0);
        let mut wrapped = h.to_vec();
        wrapped.extend_from_slice(&inner);
        assert_eq!(
            parse_forwarded(&wrapped).unwrap(),
            Forwarded {
                src: own,
                dst: gw,
                inner: 20..80
            }
        );
        assert_eq!(decapsulate(&wrapped).unwrap(), &inner[..]);
        // Not wrapped: delivered as is, addressed by its own header.
        assert_eq!(decapsulate(&inner).unwrap(), &inner[..]);
        assert_eq!(parse_forwarded(&inner).unwrap().dst, ip(172, 16, 2, 5));
    }

    #[test]
    fn candy_all_zero_pseudo_header_accepted() {
        let inner = inner_packet(ip(172, 16, 2, 5), 40);
        let mut wrapped = vec![0u8; 20];
        wrapped[9] = 4;
        wrapped[12..16].copy_from_slice(&[192, 168, 202, 3]);
        wrapped[16..20].copy_from_slice(&[192, 168, 202, 1]);
        wrapped.extend_from_slice(&inner);
        let f = parse_forwarded(&wrapped).unwrap();
        assert_eq!((f.src, f.dst), (ip(192, 168, 202, 3), ip(192, 168, 202, 1)));
        assert_eq!(&wrapped[f.inner], &inner[..]);
    }

    #[test]
    fn malformed_input_is_typed_error() {
        assert_eq!(
            decapsulate(&[0x45; 19]),
            Err(SdwanError::Truncated { len: 19 })
        );
        let mut only_header = vec![0u8; 30];
        only_header[9] = 4;
        assert_eq!(
            decapsulate(&only_header),
            Err(SdwanError::Inner(PacketError::TooShort { len: 10 }))
        );
        let mut options = inner_packet(ip(1, 2, 3, 4), 64);
        options[0] = 0x46;
        options[9] = 4;
        assert_eq!(
            decapsulate(&options),
            Err(SdwanError::BadPseudoHeader(0x46))
        );
        let mut v6 = inner_packet(ip(1, 2, 3, 4), 64);
        v6[0] = 0x60;
        assert_eq!(
            parse_forwarded(&v6),
            Err(SdwanError::Packet(PacketError::NotIpv4 { version: 6 }))
        );
        assert_eq!(
            build_pseudo_header(ip(1, 1, 1, 1), ip(2, 2, 2, 2), 65516),
            Err(SdwanError::TooLong(65516))
        );
        assert!(build_pseudo_header(ip(1, 1, 1, 1), ip(2, 2, 2, 2), 65515).is_ok());
        for n in 0..60 {
            let junk = vec![4u8; n];
            let _ = parse_forwarded(&junk);
        }
    }
}
