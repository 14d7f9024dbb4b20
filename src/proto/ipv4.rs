//! The few IPv4 header fields the relay and the dataplane route on.

use std::net::Ipv4Addr;

use super::error::need;
use super::ProtoError;

pub const HEADER_LEN: usize = 20;

/// Source and destination of an IPv4 packet, after checking that it is one.
pub fn addrs(packet: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr), ProtoError> {
    need("IPv4 packet", packet, HEADER_LEN)?;
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(ProtoError::NotIpv4(version));
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok((src, dst))
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
        assert!(!is_broadcast(Ipv4Addr::new(10, 0, 0, 255)));
    }
}
