//! The tunnel's size budget, derived from the frame constants in one place.
//!
//! A FORWARD datagram is `IV ‖ tag ‖ type ‖ [pseudo-header] ‖ packet`.
//! Traffic for a subnet route carries the 20-byte sdwan pseudo-header on
//! top of the packet, and the TUN device cannot tell which packets will get
//! one (the kernel picks the route, then the packet reaches us). So the
//! largest accepted `mtu` is the one at which a *wrapped* full-size packet
//! still fits, and then every packet the device hands over, and every TCP
//! segment the MSS clamp lets through, leaves as one datagram. A larger mtu
//! with a smaller clamp and route MTU for subnet traffic only would still
//! send UDP and ICMP of up to `mtu` bytes into the wrapper and lose them.
//!
//! The datagram has two limits: a stock Candy peer takes at most
//! [`MAX_DATAGRAM`] bytes (PROTOCOL §3.4), and it must cross an Ethernet
//! path in one IPv4 packet. The second is the tighter: a 1500-byte datagram
//! is a 1528-byte IP packet, which the kernel fragments when sent alone and
//! refuses as a GSO segment. Measured with two gateways and subnet routes
//! (`netns-tests/test_sites_mtu.sh`): at mtu 1451, the Candy-only limit,
//! a LAN-to-LAN TCP transfer arrived intact at 1 Mbit/s; at the old 1471 it
//! moved nothing.

use super::crypto::ENVELOPE_LEN;
use super::ipv4;
use super::sdwan::PSEUDO_HEADER_LEN;

/// The largest UDP payload a stock Candy peer receives intact (its receive
/// buffer is 1500 bytes; anything longer is truncated and fails the AEAD).
pub const MAX_DATAGRAM: usize = 1500;

/// The path MTU a datagram must cross unfragmented: Ethernet's.
pub const UNDERLAY_MTU: usize = 1500;

/// Outer IPv4 and UDP headers around a datagram.
pub const UDP_IPV4_HEADERS: usize = 28;

/// The largest datagram we send: within both limits of the module doc.
pub const MAX_SENT_DATAGRAM: usize = min(MAX_DATAGRAM, UNDERLAY_MTU - UDP_IPV4_HEADERS);

/// Bytes a FORWARD adds in front of the packet: envelope and type byte.
pub const FORWARD_OVERHEAD: usize = ENVELOPE_LEN + 1;

/// Bytes a FORWARD may add in front of the packet: with a pseudo-header.
pub const FORWARD_HEADROOM: usize = FORWARD_OVERHEAD + PSEUDO_HEADER_LEN;

/// Largest accepted tunnel MTU: a wrapped packet of this size makes a
/// datagram of exactly [`MAX_SENT_DATAGRAM`] bytes.
pub const MAX_MTU: u16 = (MAX_SENT_DATAGRAM - FORWARD_HEADROOM) as u16;

/// Smallest accepted tunnel MTU: the IPv4 minimum every host must accept
/// in one piece (RFC 791).
pub const MIN_MTU: u16 = 576;

/// Candy's default (`mtu=`), kept so mixed networks agree.
pub const DEFAULT_MTU: u16 = 1400;

const TCP_HEADER_LEN: u16 = 20;

const _: () = assert!(MAX_MTU == 1423 && MIN_MTU <= DEFAULT_MTU && DEFAULT_MTU <= MAX_MTU);

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// Largest MSS for a tunnel MTU: IPv4 and TCP headers without options.
pub fn mss_for_mtu(mtu: u16) -> u16 {
    mtu.saturating_sub(ipv4::HEADER_LEN as u16 + TCP_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_mtu_fills_one_ethernet_packet_with_the_pseudo_header() {
        let wrapped_datagram = FORWARD_OVERHEAD + PSEUDO_HEADER_LEN + usize::from(MAX_MTU);
        assert_eq!(wrapped_datagram, MAX_SENT_DATAGRAM);
        assert_eq!(UDP_IPV4_HEADERS + wrapped_datagram, UNDERLAY_MTU);
        assert!(wrapped_datagram <= MAX_DATAGRAM);
        assert_eq!(FORWARD_HEADROOM, 49);
    }

    #[test]
    fn clamped_segments_fit_every_accepted_mtu() {
        for mtu in [MIN_MTU, DEFAULT_MTU, MAX_MTU] {
            let mss = mss_for_mtu(mtu);
            let packet = usize::from(mss) + 40;
            assert_eq!(packet, usize::from(mtu));
            assert!(FORWARD_HEADROOM + packet <= MAX_SENT_DATAGRAM);
        }
        assert_eq!(mss_for_mtu(1400), 1360);
        assert_eq!(mss_for_mtu(20), 0);
    }
}
