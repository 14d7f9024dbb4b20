//! The IPv4 header fields ringlink routes on: one reader for the relay,
//! the dataplane and the sdwan unwrapping. Only the fixed header is looked
//! at; everything else is the peer's or the kernel's business.

use std::net::Ipv4Addr;

use super::error::need;
use super::ProtoError;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// A header without options, as ringlink writes them: `total_len` bytes
/// from `src` to `dst` carrying `protocol`, TTL 64. Flags and checksum are
/// left zero, for the caller to set once it has them all.
pub fn header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h
}

/// Largest IPv4 packet (the total-length field is 16 bits).
pub const MAX_PACKET: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{len}-byte packet is shorter than an IPv4 header")]
    TooShort { len: usize },
    #[error("{len}-byte packet is longer than any IPv4 packet")]
    TooLong { len: usize },
    #[error("IP version {version}, expected 4")]
    NotIpv4 { version: u8 },
    #[error("IPv4 header length of {ihl} words does not fit a {len}-byte packet")]
    BadHeaderLength { ihl: u8, len: usize },
}

/// The header fields the dataplane routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Meta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
}

/// Accept `packet` if it starts with a plausible IPv4 header.
///
/// The version nibble excludes IPv6 (router solicitations and the like that
/// the kernel emits on any up interface); the IHL check keeps later code that
/// skips the header from indexing past the end.
pub fn classify(packet: &[u8]) -> Result<Ipv4Meta, PacketError> {
    let len = packet.len();
    if len > MAX_PACKET {
        return Err(PacketError::TooLong { len });
    }
    let (Some(&first), true) = (packet.first(), len >= HEADER_LEN) else {
        return Err(PacketError::TooShort { len });
    };
    let version = first >> 4;
    if version != 4 {
        return Err(PacketError::NotIpv4 { version });
    }
    let ihl = first & 0x0f;
    if ihl < 5 || usize::from(ihl) * 4 > len {
        return Err(PacketError::BadHeaderLength { ihl, len });
    }
    Ok(Ipv4Meta {
        src: read_addr(packet, 12),
        dst: read_addr(packet, 16),
        protocol: packet[9],
    })
}

/// Source and destination of an IPv4 packet, for the server's relay, which
/// reports a short or non-IPv4 frame as a [`ProtoError`].
pub fn addrs(packet: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr), ProtoError> {
    need("IPv4 packet", packet, HEADER_LEN)?;
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(ProtoError::NotIpv4(version));
    }
    Ok((read_addr(packet, 12), read_addr(packet, 16)))
}

/// The address at `at..at + 4`; the caller has checked the length.
pub fn read_addr(packet: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3])
}

/// Multicast and limited broadcast go to every client; Candy also treats
/// the pool's directed broadcast that way, which the caller checks.
pub fn is_broadcast(dst: Ipv4Addr) -> bool {
    dst.is_multicast() || dst.is_broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_refuses_others() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            addrs(&p).unwrap(),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))
        );
        p[0] = 0x60;
        assert_eq!(addrs(&p), Err(ProtoError::NotIpv4(6)));
        assert!(addrs(&p[..19]).is_err());
        assert!(is_broadcast(Ipv4Addr::new(224, 0, 0, 251)));
        assert!(is_broadcast(Ipv4Addr::BROADCAST));
        assert!(!is_broadcast(Ipv4Addr::new(10, 0, 0, 255)));
    }

    fn header() -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        h
    }

    #[test]
    fn accepts_minimal_ipv4() {
        let m = classify(&header()).unwrap();
        assert_eq!(m.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(m.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(m.protocol, 17);
    }

    #[test]
    fn rejects_short_and_empty() {
        assert_eq!(classify(&[]), Err(PacketError::TooShort { len: 0 }));
        assert_eq!(
            classify(&header()[..19]),
            Err(PacketError::TooShort { len: 19 })
        );
    }

    #[test]
    fn rejects_ipv6_and_garbage_versions() {
        let mut p = [0u8; 40];
        p[0] = 0x60;
        assert_eq!(classify(&p), Err(PacketError::NotIpv4 { version: 6 }));
        p[0] = 0x05;
        assert_eq!(classify(&p), Err(PacketError::NotIpv4 { version: 0 }));
    }

    #[test]
    fn checks_header_length() {
        let mut h = header();
        h[0] = 0x44;
        assert_eq!(
            classify(&h),
            Err(PacketError::BadHeaderLength { ihl: 4, len: 20 })
        );
        h[0] = 0x46;
        assert_eq!(
            classify(&h),
            Err(PacketError::BadHeaderLength { ihl: 6, len: 20 })
        );
        let mut long = [0u8; 24];
        long[..20].copy_from_slice(&header());
        long[0] = 0x46;
        assert!(classify(&long).is_ok());
    }

    #[test]
    fn rejects_oversize() {
        let big = vec![0x45u8; MAX_PACKET + 1];
        assert!(matches!(classify(&big), Err(PacketError::TooLong { .. })));
    }
}
