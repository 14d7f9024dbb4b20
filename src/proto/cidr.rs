//! IPv4 networks written `a.b.c.d/len`, as in configs and the EXPTTUN message.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::ProtoError;

/// An address with a prefix length. The address may have host bits set
/// (`10.77.0.20/24` names a host and its network at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, ProtoError> {
        if prefix > 32 {
            return Err(ProtoError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Self { addr, prefix })
    }

    pub fn mask(&self) -> u32 {
        prefix_mask(self.prefix)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// True when the address has no host bits set.
    pub fn is_network(&self) -> bool {
        self.addr == self.network()
    }

    /// Number of addresses in the network, including network and broadcast.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// A usable host address: not the network or broadcast address, unless
    /// the prefix is /31 or /32 where those do not exist.
    pub fn is_usable_host(&self, ip: Ipv4Addr) -> bool {
        if !self.contains(ip) {
            return false;
        }
        self.prefix >= 31 || (ip != self.network() && ip != self.broadcast())
    }
}

pub fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Prefix length of a contiguous netmask, or None when the mask has holes.
pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtoError::BadCidr(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        // Only plain decimal: "+24" or " 24" are typos, not prefixes.
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_math() {
        let c: Ipv4Cidr = "10.77.0.20/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 77, 0, 255));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.contains(Ipv4Addr::new(10, 77, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 77, 1, 1)));
        assert!(!c.is_network());
        assert!(!c.is_usable_host(Ipv4Addr::new(10, 77, 0, 255)));
        assert!(c.is_usable_host(Ipv4Addr::new(10, 77, 0, 254)));
        assert_eq!(c.to_string(), "10.77.0.20/24");
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(all.size(), 1 << 32);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0/24",
            "10.0.0.1/",
            "10.0.0.1/+4",
            "a/8",
            "10.0.0.1/024",
        ] {
            assert!(s.parse::<Ipv4Cidr>().is_err(), "{s}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_mask(32), u32::MAX);
    }
}
