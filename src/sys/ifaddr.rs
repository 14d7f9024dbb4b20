//! The node's own LAN address, announced to peers as its LAN candidate.

use std::net::Ipv4Addr;

/// The first IPv4 address of an interface that is up, not loopback, not
/// point-to-point (a TUN device, ours or another VPN's) — Candy's rule for
/// its `localhost` default. `skip` names our own device, to be sure.
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
        let flags = ifa.ifa_flags as libc::c_int;
        if ifa.ifa_addr.is_null()
            || flags & libc::IFF_UP == 0
            || flags & (libc::IFF_LOOPBACK | libc::IFF_POINTOPOINT) != 0
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == skip.as_bytes() {
            continue;
        }
        // SAFETY: non-null; the family field is valid for every sockaddr.
        if unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET means the address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        break;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_loopback() {
        if let Some(ip) = first_lan_ipv4("") {
            assert!(!ip.is_loopback());
        }
    }
}
