//! Subnet routes (PROTOCOL.md §7): which ones a client is told about, and
//! which source addresses they entitle a client to send from.

use std::net::Ipv4Addr;

use crate::config::PushedRoute;
use crate::proto::ws::SysRoute;

/// Every configured route whose `for` covers `vip`, in configuration order
/// (clients match first-fit, so order is meaningful).
pub fn routes_for(routes: &[PushedRoute], vip: Ipv4Addr) -> Vec<SysRoute> {
    routes
        .iter()
        .filter(|r| r.for_clients.contains(vip))
        .map(|r| SysRoute {
            dst: r.dst,
            next: r.via,
        })
        .collect()
}

/// The ROUTE frames to push right after AUTH; empty when nothing applies.
pub fn route_frames(routes: &[PushedRoute], vip: Ipv4Addr) -> Vec<Vec<u8>> {
    let list = routes_for(routes, vip);
    if list.is_empty() {
        return Vec::new();
    }
    SysRoute::encode_list(&list)
}

/// Source check for FORWARD (fixes §10.8) beyond the sender's own VIP:
/// `vip` is the gateway of a subnet holding `saddr`, so packets it relays
/// from there legitimately carry that source. Read against the live route
/// list, so a reload that removes a route also ends the permission.
pub fn gateway_covers(routes: &[PushedRoute], vip: Ipv4Addr, saddr: Ipv4Addr) -> bool {
    routes.iter().any(|r| r.via == vip && r.dst.contains(saddr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::{WsMessage, ROUTES_PER_FRAME};
    use crate::proto::Ipv4Cidr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(dst: &str, via: &str, for_clients: &str) -> PushedRoute {
        PushedRoute {
            dst: dst.parse().unwrap(),
            via: ip(via),
            for_clients: for_clients.parse().unwrap(),
        }
    }

    #[test]
    fn filter_by_for_and_keep_order() {
        let rs = [
            route("192.168.20.0/24", "10.77.0.20", "10.77.0.0/24"),
            route("192.168.30.0/24", "10.77.0.30", "10.77.0.0/25"),
            route("192.168.40.0/24", "10.77.0.40", "10.77.0.128/25"),
        ];
        let low = routes_for(&rs, ip("10.77.0.5"));
        assert_eq!(
            low.iter().map(|r| r.next).collect::<Vec<_>>(),
            [ip("10.77.0.20"), ip("10.77.0.30")]
        );
        let high = routes_for(&rs, ip("10.77.0.200"));
        assert_eq!(
            high.iter().map(|r| r.next).collect::<Vec<_>>(),
            [ip("10.77.0.20"), ip("10.77.0.40")]
        );
        assert!(route_frames(&rs, ip("10.99.0.1")).is_empty());
        let frames = route_frames(&rs, ip("10.77.0.5"));
        assert_eq!(frames.len(), 1);
        assert_eq!(
            WsMessage::decode(&frames[0]).unwrap(),
            WsMessage::SysRoutes(low)
        );
    }

    #[test]
    fn many_routes_split() {
        let rs: Vec<PushedRoute> = (0..250u32)
            .map(|i| PushedRoute {
                dst: Ipv4Cidr::new(Ipv4Addr::from(0xAC10_0000 + (i << 8)), 24).unwrap(),
                via: ip("10.77.0.20"),
                for_clients: "10.77.0.0/24".parse().unwrap(),
            })
            .collect();
        let frames = route_frames(&rs, ip("10.77.0.1"));
        assert_eq!(frames.len(), 3);
        assert_eq!(usize::from(frames[0][1]), ROUTES_PER_FRAME);
    }

    #[test]
    fn gateway_sources() {
        let rs = [
            route("192.168.20.0/24", "10.77.0.20", "10.77.0.0/24"),
            route("172.16.0.0/16", "10.77.0.20", "10.77.0.0/24"),
            route("192.168.30.0/24", "10.77.0.30", "10.77.0.0/24"),
        ];
        let gw = ip("10.77.0.20");
        assert!(gateway_covers(&rs, gw, ip("192.168.20.7")));
        assert!(gateway_covers(&rs, gw, ip("172.16.9.9")));
        assert!(!gateway_covers(&rs, gw, ip("192.168.30.7")));
        assert!(!gateway_covers(&rs, gw, ip("10.77.0.30")));
        assert!(gateway_covers(&rs, ip("10.77.0.30"), ip("192.168.30.7")));
        assert!(!gateway_covers(&[], ip("10.77.0.5"), ip("10.77.0.6")));
    }
}
