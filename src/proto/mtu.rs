//! The tunnel's size budget, derived from the frame constants in one place.
//!
//! A FORWARD datagram is `IV ‖ tag ‖ type ‖ [pseudo-header] ‖ packet`, and a
//! stock Candy peer takes at most [`MAX_DATAGRAM`] bytes of it (PROTOCOL
//! §3.4). Traffic for a subnet route carries the 20-byte sdwan pseudo-header
//! on top of the packet, and the TUN device cannot tell which packets will
//! get one (the kernel picks the route, then the packet reaches us). So the
//! largest accepted `mtu` is the one at which a *wrapped* full-size packet
//! still fits: then every packet the device hands over, and every TCP
//! segment the MSS clamp lets through, leaves as one datagram a Candy peer
//! accepts. The alternative, a larger mtu with a smaller clamp and route MTU
//! for subnet traffic only, would still send UDP and ICMP of up to `mtu`
//! bytes into the wrapper and lose them, so it is not offered.

use super::crypto::ENVELOPE_LEN;
use super::ipv4;
use super::sdwan::PSEUDO_HEADER_LEN;

/// The largest UDP payload a stock Candy peer receives intact (its receive
/// buffer is 1500 bytes; anything longer is truncated and fails the AEAD).
pub const MAX_DATAGRAM: usize = 1500;

/// Bytes a FORWARD adds in front of the packet: envelope and type byte.
pub const FORWARD_OVERHEAD: usize = ENVELOPE_LEN + 1;

/// Bytes a FORWARD may add in front of the packet: with a pseudo-header.
pub const FORWARD_HEADROOM: usize = FORWARD_OVERHEAD + PSEUDO_HEADER_LEN;

/// Largest accepted tunnel MTU: a wrapped packet of this size makes a
/// datagram of exactly [`MAX_DATAGRAM`] bytes.
pub const MAX_MTU: u16 = (MAX_DATAGRAM - FORWARD_HEADROOM) as u16;

/// Smallest accepted tunnel MTU: the IPv4 minimum every host must accept
/// in one piece (RFC 791).
pub const MIN_MTU: u16 = 576;

/// Candy's default (`mtu=`), kept so mixed networks agree.
pub const DEFAULT_MTU: u16 = 1400;

const TCP_HEADER_LEN: u16 = 20;

const _: () = assert!(MAX_MTU == 1451 && MIN_MTU <= DEFAULT_MTU && DEFAULT_MTU <= MAX_MTU);

/// Largest MSS for a tunnel MTU: IPv4 and TCP headers without options.
pub fn mss_for_mtu(mtu: u16) -> u16 {
    mtu.saturating_sub(ipv4::HEADER_LEN as u16 + TCP_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_mtu_fills_a_candy_datagram_with_the_pseudo_header() {
        let wrapped_datagram = FORWARD_OVERHEAD + PSEUDO_HEADER_LEN + usize::from(MAX_MTU);
        assert_eq!(wrapped_datagram, MAX_DATAGRAM);
        // The old limit, 1471, only fitted unwrapped packets.
        assert_eq!(usize::from(MAX_MTU) + FORWARD_OVERHEAD, 1480);
        assert_eq!(FORWARD_HEADROOM, 49);
    }

    #[test]
    fn clamped_segments_fit_every_accepted_mtu() {
        for mtu in [MIN_MTU, DEFAULT_MTU, MAX_MTU] {
            let mss = mss_for_mtu(mtu);
            let packet = usize::from(mss) + 40;
            assert_eq!(packet, usize::from(mtu));
            assert!(FORWARD_HEADROOM + packet <= MAX_DATAGRAM);
        }
        assert_eq!(mss_for_mtu(1400), 1360);
        assert_eq!(mss_for_mtu(20), 0);
    }
}
