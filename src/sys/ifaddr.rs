//! The node's own LAN address, announced to peers as its LAN candidate.

use std::net::Ipv4Addr;

/// What the choice needs to know of one entry of the kernel's interface
/// address list.
#[derive(Debug, Clone, Copy)]
struct InterfaceAddress<'a> {
    name: &'a [u8],
    flags: libc::c_int,
    ipv4: Option<Ipv4Addr>,
}

/// Candy's rule for its `localhost` default: an IPv4 address of an
/// interface that is up, not loopback, not point-to-point (a TUN device,
/// ours or another VPN's), and not the device named `skip`.
fn is_lan_candidate(a: &InterfaceAddress<'_>, skip: &str) -> bool {
    a.ipv4.is_some()
        && a.flags & libc::IFF_UP != 0
        && a.flags & (libc::IFF_LOOPBACK | libc::IFF_POINTOPOINT) == 0
        && a.name != skip.as_bytes()
}

/// The first address of the interface list that `is_lan_candidate`
/// accepts. `skip` names our own device, to be sure.
pub fn first_lan_ipv4(skip: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let entry = InterfaceAddress {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            name: unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes(),
            flags: ifa.ifa_flags as libc::c_int,
            // SAFETY: ifa_addr is null or points to a sockaddr of the list.
            ipv4: unsafe { sockaddr_ipv4(ifa.ifa_addr) },
        };
        if is_lan_candidate(&entry, skip) {
            found = entry.ipv4;
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// The IPv4 address in `addr`, if it is one.
///
/// # Safety
/// `addr` is null or points to a valid sockaddr.
unsafe fn sockaddr_ipv4(addr: *const libc::sockaddr) -> Option<Ipv4Addr> {
    // SAFETY: non-null per the check; the family field is valid for every
    // sockaddr.
    if addr.is_null() || unsafe { (*addr).sa_family } as libc::c_int != libc::AF_INET {
        return None;
    }
    // SAFETY: AF_INET means the address is a sockaddr_in.
    let sin = unsafe { &*(addr as *const libc::sockaddr_in) };
    Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    fn entry(name: &str, flags: libc::c_int, ipv4: Option<Ipv4Addr>) -> InterfaceAddress<'_> {
        InterfaceAddress {
            name: name.as_bytes(),
            flags,
            ipv4,
        }
    }

    #[test]
    fn an_up_ethernet_address_is_a_candidate() {
        assert!(is_lan_candidate(
            &entry("eth0", libc::IFF_UP, Some(LAN)),
            "rl0"
        ));
    }

    #[test]
    fn loopback_tun_down_own_device_and_non_ipv4_are_not() {
        let up = libc::IFF_UP;
        let loopback = entry("lo", up | libc::IFF_LOOPBACK, Some(Ipv4Addr::LOCALHOST));
        let other_vpn = entry("wg0", up | libc::IFF_POINTOPOINT, Some(LAN));
        let down = entry("eth1", 0, Some(LAN));
        let own = entry("rl0", up, Some(LAN));
        let ipv6_only = entry("eth2", up, None);
        for e in [loopback, other_vpn, down, own, ipv6_only] {
            assert!(!is_lan_candidate(&e, "rl0"), "{e:?}");
        }
    }

    fn sockaddr_in(family: libc::c_int, ip: Ipv4Addr) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain old data; all zeroes is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = family as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        sin
    }

    #[test]
    fn only_inet_sockaddrs_have_an_ipv4() {
        // SAFETY: null is allowed.
        assert_eq!(unsafe { sockaddr_ipv4(std::ptr::null()) }, None);
        let inet6 = sockaddr_in(libc::AF_INET6, LAN);
        let inet = sockaddr_in(libc::AF_INET, LAN);
        let ptr =
            |sin: &libc::sockaddr_in| sin as *const libc::sockaddr_in as *const libc::sockaddr;
        // SAFETY: both point to live sockaddr_in values.
        unsafe {
            assert_eq!(sockaddr_ipv4(ptr(&inet6)), None);
            assert_eq!(sockaddr_ipv4(ptr(&inet)), Some(LAN));
        }
    }
}
