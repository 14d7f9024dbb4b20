//! Address leases as stored in the key-value bucket, and the one decision
//! about them: may this instance take an address now?
//!
//! NATS 2.9 has no per-key TTL, so a lease carries its own expiry, pushed
//! forward by its holder's renewals. Whoever takes a lease writes it with
//! the revision it read (compare-and-set), so of two instances deciding at
//! once only one write lands.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::server::pool::Vmac;

/// Instances' clocks differ a little: a lease counts as expired only this
/// long after the expiry its holder wrote.
pub const CLOCK_SLACK_MS: u64 = 2_000;

/// This instance: its configured name and a random incarnation, so that a
/// restarted instance does not take its previous life's leases for live ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub name: String,
    pub incarnation: u64,
}

/// The value stored under a lease's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holding instance's name.
    pub holder: String,
    pub incarnation: u64,
    /// The client's vmac in hex; empty when it sent none.
    #[serde(default)]
    pub vmac: String,
    /// The AUTH that bound the address (its timestamp); 0 while the address
    /// is only reserved for a client between its address request and AUTH.
    #[serde(default)]
    pub auth_ts: i64,
    /// Unix milliseconds after which another instance may take it.
    pub expires_ms: u64,
}

impl Lease {
    pub fn new(me: &Me, vmac: Option<Vmac>, auth_ts: i64, expires_ms: u64) -> Self {
        Self {
            holder: me.name.clone(),
            incarnation: me.incarnation,
            vmac: vmac.map(|v| hex(&v)).unwrap_or_default(),
            auth_ts,
            expires_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn is_mine(&self, me: &Me) -> bool {
        self.holder == me.name && self.incarnation == me.incarnation
    }

    /// The holder stopped renewing, or it is an earlier incarnation of this
    /// very instance (names are unique, so that one is dead).
    pub fn is_expired(&self, me: &Me, now_ms: u64) -> bool {
        (self.holder == me.name && self.incarnation != me.incarnation)
            || self.expires_ms.saturating_add(CLOCK_SLACK_MS) < now_ms
    }

    /// The same client: both vmacs present and equal. Two clients without
    /// a vmac are never taken for one.
    pub fn same_client(&self, vmac: Option<Vmac>) -> bool {
        match vmac {
            Some(v) => !self.vmac.is_empty() && self.vmac == hex(&v),
            None => false,
        }
    }
}

/// What a lease read from the bucket means for a client asking for it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody holds it (never written, deleted, or unreadable junk).
    Free,
    /// This instance holds it already.
    Ours,
    /// Its holder is gone: take it.
    Expired,
    /// Live, held elsewhere for this same client (it reconnected here).
    SameClient,
    /// Live, held elsewhere for another client.
    Busy,
}

pub fn judge(lease: Option<&Lease>, me: &Me, vmac: Option<Vmac>, now_ms: u64) -> Verdict {
    match lease {
        None => Verdict::Free,
        Some(l) if l.is_mine(me) => Verdict::Ours,
        Some(l) if l.is_expired(me, now_ms) => Verdict::Expired,
        Some(l) if l.same_client(vmac) => Verdict::SameClient,
        Some(_) => Verdict::Busy,
    }
}

/// The bucket key of an address: `<network>.<a>.<b>.<c>.<d>`.
pub fn key(network: &str, ip: Ipv4Addr) -> String {
    format!("{network}.{ip}")
}

/// The network and address a key names, if it is one of ours.
pub fn parse_key(key: &str) -> Option<(&str, Ipv4Addr)> {
    let (net, ip) = key.split_once('.')?;
    Some((net, ip.parse().ok()?))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<Vmac> = Some(*b"aaaaaaaaaaaaaaaa");
    const B: Option<Vmac> = Some(*b"bbbbbbbbbbbbbbbb");

    fn me(name: &str, incarnation: u64) -> Me {
        Me {
            name: name.into(),
            incarnation,
        }
    }

    #[test]
    fn verdicts() {
        let here = me("a", 1);
        let there = me("b", 7);
        let now = 1_000_000;
        let live = Lease::new(&there, A, 5, now + 10_000);
        assert_eq!(judge(None, &here, A, now), Verdict::Free);
        assert_eq!(judge(Some(&live), &here, A, now), Verdict::SameClient);
        assert_eq!(judge(Some(&live), &here, B, now), Verdict::Busy);
        assert_eq!(judge(Some(&live), &here, None, now), Verdict::Busy);
        assert_eq!(judge(Some(&live), &there, B, now), Verdict::Ours);
        // Past the expiry, but within the clock slack: still live.
        let later = now + 10_000 + CLOCK_SLACK_MS;
        assert_eq!(judge(Some(&live), &here, B, later), Verdict::Busy);
        assert_eq!(judge(Some(&live), &here, B, later + 1), Verdict::Expired);
        // An earlier incarnation of this instance is dead.
        assert_eq!(judge(Some(&live), &me("b", 8), B, now), Verdict::Expired);
        // No vmac on either side never matches.
        let anon = Lease::new(&there, None, 5, now + 10_000);
        assert_eq!(judge(Some(&anon), &here, None, now), Verdict::Busy);
    }

    #[test]
    fn encoding_and_keys() {
        let l = Lease::new(&me("srv-1", u64::MAX), A, 1_700_000_000, 42);
        assert_eq!(Lease::decode(&l.encode()), Some(l.clone()));
        assert_eq!(l.vmac, "61".repeat(16));
        assert_eq!(Lease::decode(b"{not json"), None);
        let k = key("default", "10.77.0.5".parse().unwrap());
        assert_eq!(k, "default.10.77.0.5");
        assert_eq!(
            parse_key(&k),
            Some(("default", "10.77.0.5".parse().unwrap()))
        );
        assert_eq!(parse_key("default.10.77.0"), None);
        assert_eq!(parse_key("nodot"), None);
    }
}
