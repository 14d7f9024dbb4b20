//! Site-to-site (sdwan) routes pushed by the server (PROTOCOL §7): which
//! gateway a LAN destination is wrapped for. The pseudo-header's bytes are
//! `proto::sdwan`'s.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
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
        self.longest_first().find(|r| r.contains(daddr))
    }

    /// Routes in the order [`SubnetRoutes::lookup`] tries them.
    pub fn longest_first(&self) -> impl Iterator<Item = &SubnetRoute> {
        self.by_prefix.iter().map(|&i| &self.routes[i])
    }
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
}
