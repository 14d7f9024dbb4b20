//! Site-to-site (sdwan) routes pushed by the server, and the 20-byte
//! pseudo-header that carries a LAN packet to its gateway (PROTOCOL §7).
//!
//! Pure functions over byte slices; every malformed input is a typed error.

use std::net::Ipv4Addr;

use crate::proto::checksum;

/// Length of the pseudo-header; stock receivers strip exactly this much.
pub const PSEUDO_HEADER_LEN: usize = 20;
/// Protocol number that marks a pseudo-header (IP-in-IP).
pub const IPIP_PROTOCOL: u8 = 4;
const IPV4_MIN_HEADER: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("packet is {len} bytes, shorter than {need}")]
    Truncated { len: usize, need: usize },
    #[error("packet after the pseudo-header is {0} bytes, shorter than an IPv4 header")]
    InnerTruncated(usize),
    #[error("a {0}-byte packet does not fit an IPv4 total length once wrapped")]
    TooLong(usize),
    #[error(
        "pseudo-header starts with {0:#04x}; only 0x45 (IHL 5) or 0x00 (Candy's) are accepted"
    )]
    BadPseudoHeader(u8),
    #[error("netmask {0} is not contiguous")]
    NonContiguousMask(Ipv4Addr),
    #[error("route destination {dst} has host bits outside {mask}")]
    HostBits { dst: Ipv4Addr, mask: Ipv4Addr },
}

/// One server-pushed route: packets for `dst/mask` go to VIP `next_hop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubnetRoute {
    pub dst: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub next_hop: Ipv4Addr,
}

impl SubnetRoute {
    /// The Candy server only accepts network addresses and CIDR masks, but
    /// the ROUTE frame can carry anything; a mask with holes has no prefix
    /// length to rank by, and a destination with host bits could never
    /// match Candy's `(daddr & mask) == dst` test, so both are refused.
    pub fn new(dst: Ipv4Addr, mask: Ipv4Addr, next_hop: Ipv4Addr) -> Result<Self, SubnetError> {
        let m = u32::from(mask);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return Err(SubnetError::NonContiguousMask(mask));
        }
        if u32::from(dst) & !m != 0 {
            return Err(SubnetError::HostBits { dst, mask });
        }
        Ok(SubnetRoute {
            dst,
            mask,
            next_hop,
        })
    }

    pub fn prefix_len(&self) -> u32 {
        u32::from(self.mask).leading_ones()
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask) == u32::from(self.dst)
    }
}

/// The routes for this node, in server order, with longest-prefix lookup.
///
/// Candy takes the first match in server order. We take the longest prefix
/// because a packet only reaches the TUN device because the kernel chose one
/// of these same routes by longest prefix; first-match could then wrap it
/// towards a different gateway than the one the kernel picked (a /24
/// carve-out listed after its /16 would never be used). Among equal
/// prefixes the server's order still decides, as in Candy and as in the
/// kernel, which refuses the later duplicate.
#[derive(Clone, Debug, Default)]
pub struct SubnetRoutes {
    own_vip: Option<Ipv4Addr>,
    routes: Vec<SubnetRoute>,
    /// Indices into `routes`, longest prefix first, stable in server order.
    by_prefix: Vec<usize>,
}

impl SubnetRoutes {
    pub fn new(own_vip: Ipv4Addr) -> Self {
        SubnetRoutes {
            own_vip: Some(own_vip),
            ..Default::default()
        }
    }

    /// Appends a route in the order received. Returns `false` when the
    /// route names this node as gateway: Candy skips those, the LAN is
    /// ours and the kernel already knows how to reach it.
    pub fn push(&mut self, route: SubnetRoute) -> bool {
        if Some(route.next_hop) == self.own_vip {
            return false;
        }
        self.routes.push(route);
        let routes = &self.routes;
        self.by_prefix = (0..routes.len()).collect();
        self.by_prefix
            .sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix_len()));
        true
    }

    /// Routes in server order, e.g. to install kernel routes.
    pub fn iter(&self) -> impl Iterator<Item = &SubnetRoute> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn lookup(&self, daddr: Ipv4Addr) -> Option<&SubnetRoute> {
        self.by_prefix
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| r.contains(daddr))
    }
}

/// The destination address of an IPv4 packet.
pub fn packet_daddr(packet: &[u8]) -> Result<Ipv4Addr, SubnetError> {
    let b = packet.get(16..20).ok_or(SubnetError::Truncated {
        len: packet.len(),
        need: IPV4_MIN_HEADER,
    })?;
    Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// A valid IPv4 header (version 4, IHL 5, protocol 4, correct total length
/// and checksum) for wrapping `inner_len` bytes from `src` (own VIP) to
/// `next_hop`. Stock receivers only look at byte 9 and strip 20 bytes; a
/// well-formed header also survives anything that does parse it.
pub fn build_pseudo_header(
    src: Ipv4Addr,
    next_hop: Ipv4Addr,
    inner_len: usize,
) -> Result<[u8; PSEUDO_HEADER_LEN], SubnetError> {
    let total = inner_len
        .checked_add(PSEUDO_HEADER_LEN)
        .and_then(|t| u16::try_from(t).ok())
        .ok_or(SubnetError::TooLong(inner_len))?;
    let mut h = [0u8; PSEUDO_HEADER_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64;
    h[9] = IPIP_PROTOCOL;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&next_hop.octets());
    let sum = checksum::ipv4_header(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    Ok(h)
}

/// Whether a delivered packet carries a pseudo-header (byte 9 == 4), which
/// is the only test stock Candy applies.
pub fn is_encapsulated(packet: &[u8]) -> Result<bool, SubnetError> {
    if packet.len() < IPV4_MIN_HEADER {
        return Err(SubnetError::Truncated {
            len: packet.len(),
            need: IPV4_MIN_HEADER,
        });
    }
    Ok(packet[9] == IPIP_PROTOCOL)
}

/// What to write to TUN for a packet delivered to this node: the packet
/// itself, or what follows its pseudo-header.
///
/// Accepts Candy's all-zero header and a real IHL-5 header. Anything else
/// with protocol 4 (an IHL>5 IP-in-IP packet) is refused rather than cut at
/// byte 20 as Candy would, which would hand the kernel option bytes as a
/// header.
pub fn decapsulate(packet: &[u8]) -> Result<&[u8], SubnetError> {
    if !is_encapsulated(packet)? {
        return Ok(packet);
    }
    match packet[0] {
        0x00 | 0x45 => {}
        b => return Err(SubnetError::BadPseudoHeader(b)),
    }
    let inner = &packet[PSEUDO_HEADER_LEN..];
    if inner.len() < IPV4_MIN_HEADER {
        return Err(SubnetError::InnerTruncated(inner.len()));
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn route(dst: Ipv4Addr, prefix: u32, next: Ipv4Addr) -> SubnetRoute {
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
        SubnetRoute::new(dst, mask, next).unwrap()
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
    fn longest_prefix_wins_regardless_of_server_order() {
        let own = ip(192, 168, 202, 1);
        let gw_a = ip(192, 168, 202, 2);
        let gw_b = ip(192, 168, 202, 3);
        let mut t = SubnetRoutes::new(own);
        assert!(t.push(route(ip(172, 16, 0, 0), 16, gw_a)));
        assert!(t.push(route(ip(172, 16, 2, 0), 24, gw_b)));
        assert_eq!(t.lookup(ip(172, 16, 2, 9)).unwrap().next_hop, gw_b);
        assert_eq!(t.lookup(ip(172, 16, 3, 9)).unwrap().next_hop, gw_a);
        assert!(t.lookup(ip(10, 1, 1, 1)).is_none());
        // Server order is kept for installation.
        let order: Vec<_> = t.iter().map(|r| r.next_hop).collect();
        assert_eq!(order, vec![gw_a, gw_b]);
    }

    #[test]
    fn equal_prefix_keeps_server_order_and_own_gateway_skipped() {
        let own = ip(192, 168, 202, 1);
        let mut t = SubnetRoutes::new(own);
        assert!(!t.push(route(ip(172, 16, 2, 0), 24, own)));
        assert!(t.push(route(ip(172, 16, 2, 0), 24, ip(192, 168, 202, 7))));
        assert!(t.push(route(ip(172, 16, 2, 0), 24, ip(192, 168, 202, 8))));
        assert!(t.push(route(ip(0, 0, 0, 0), 0, ip(192, 168, 202, 9))));
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.lookup(ip(172, 16, 2, 1)).unwrap().next_hop,
            ip(192, 168, 202, 7)
        );
        assert_eq!(
            t.lookup(ip(8, 8, 8, 8)).unwrap().next_hop,
            ip(192, 168, 202, 9)
        );
    }

    #[test]
    fn route_validation() {
        assert_eq!(
            SubnetRoute::new(ip(10, 0, 0, 0), ip(255, 0, 255, 0), ip(1, 1, 1, 1)),
            Err(SubnetError::NonContiguousMask(ip(255, 0, 255, 0)))
        );
        assert!(matches!(
            SubnetRoute::new(ip(10, 0, 0, 1), ip(255, 255, 255, 0), ip(1, 1, 1, 1)),
            Err(SubnetError::HostBits { .. })
        ));
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
        assert_eq!(&h[12..16], &own.octets());
        assert_eq!(&h[16..20], &gw.octets());
        // A correct checksum makes the folded sum over the header 0xFFFF.
        assert_eq!(checksum::ipv4_header(&h), 0);
        let mut wrapped = h.to_vec();
        wrapped.extend_from_slice(&inner);
        assert_eq!(packet_daddr(&wrapped).unwrap(), gw);
        assert_eq!(decapsulate(&wrapped).unwrap(), &inner[..]);
        // Not wrapped: delivered as is.
        assert_eq!(decapsulate(&inner).unwrap(), &inner[..]);
    }

    #[test]
    fn candy_all_zero_pseudo_header_accepted() {
        let inner = inner_packet(ip(172, 16, 2, 5), 40);
        let mut wrapped = vec![0u8; 20];
        wrapped[9] = 4;
        wrapped[12..16].copy_from_slice(&[192, 168, 202, 3]);
        wrapped[16..20].copy_from_slice(&[192, 168, 202, 1]);
        wrapped.extend_from_slice(&inner);
        assert_eq!(decapsulate(&wrapped).unwrap(), &inner[..]);
    }

    #[test]
    fn malformed_input_is_typed_error() {
        assert_eq!(
            decapsulate(&[0x45; 19]),
            Err(SubnetError::Truncated { len: 19, need: 20 })
        );
        assert_eq!(
            packet_daddr(&[]),
            Err(SubnetError::Truncated { len: 0, need: 20 })
        );
        let mut only_header = vec![0u8; 30];
        only_header[9] = 4;
        assert_eq!(
            decapsulate(&only_header),
            Err(SubnetError::InnerTruncated(10))
        );
        let mut options = inner_packet(ip(1, 2, 3, 4), 64);
        options[0] = 0x46;
        options[9] = 4;
        assert_eq!(
            decapsulate(&options),
            Err(SubnetError::BadPseudoHeader(0x46))
        );
        assert_eq!(
            build_pseudo_header(ip(1, 1, 1, 1), ip(2, 2, 2, 2), 65516),
            Err(SubnetError::TooLong(65516))
        );
        assert!(build_pseudo_header(ip(1, 1, 1, 1), ip(2, 2, 2, 2), 65515).is_ok());
        for n in 0..40 {
            let junk = vec![4u8; n];
            let _ = decapsulate(&junk);
            let _ = is_encapsulated(&junk);
            let _ = packet_daddr(&junk);
        }
    }
}
