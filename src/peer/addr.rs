//! Which heartbeat sources count as LAN paths (PROTOCOL.md §5.3, v6 rule).

use std::net::Ipv4Addr;

/// v6's private-address test. A heartbeat from such a source is a LAN
/// candidate, and a LAN `real` path is never displaced by a public one.
///
/// Deliberately not `Ipv4Addr::is_private`: Candy also counts link-local and
/// the 239.255/16 organisation-local multicast block, and both ends must
/// agree on which path "wins" or they could pick different paths.
pub fn is_private(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 169 && b == 254)
        || (a == 239 && b == 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn v6_private_blocks() {
        for s in [
            "10.0.0.0",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.3.4",
            "239.255.255.250",
        ] {
            assert!(is_private(ip(s)), "{s} should be private");
        }
    }

    #[test]
    fn v6_public_edges() {
        // 172.0/12 is v5's bug; v6 (and we) treat it as public.
        for s in [
            "172.0.0.1",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "11.0.0.1",
            "9.255.255.255",
            "169.253.0.1",
            "239.254.0.1",
            "203.0.113.5",
            "100.64.0.1",
        ] {
            assert!(!is_private(ip(s)), "{s} should be public");
        }
    }
}
