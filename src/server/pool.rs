//! The virtual address pool: who holds which address.
//!
//! Pure bookkeeping, no I/O. A session holds at most one address, either
//! reserved by an EXPTTUN grant or claimed by AUTH. The invariant everything
//! else relies on: an address held by a live session is never handed to a
//! different session unless both carry the same non-empty vmac (Candy's
//! "reconnect"), which fixes the v6 pool bugs of PROTOCOL.md §2.5 / §10.9.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::proto::Ipv4Cidr;

pub type SessionId = u64;
/// A vmac as sent in VMAC (4); `None` stands for absent or all zeros.
pub type Vmac = [u8; 16];
/// Says whether an address (asked for by a client with this vmac) is held
/// outside the pool, by another server instance.
pub type Elsewhere<'a> = &'a dyn Fn(Ipv4Addr, Option<Vmac>) -> bool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub session: SessionId,
    pub vmac: Option<Vmac>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    #[error("address pool {0} exhausted")]
    Exhausted(Ipv4Cidr),
    #[error("{ip} is not a usable host in pool {pool}")]
    OutsidePool { ip: Ipv4Addr, pool: Ipv4Cidr },
    #[error("{0} is in use by another client")]
    InUse(Ipv4Addr),
}

/// What a successful claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The address was free.
    Fresh,
    /// This session already held it (an EXPTTUN grant followed by AUTH).
    Kept,
    /// Another session with the same vmac held it and has lost it.
    Took { from: SessionId },
}

/// Two vmacs match only if both are present: two clients without a vmac
/// must never be taken for one reconnecting client.
fn same_vmac(a: Option<Vmac>, b: Option<Vmac>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x == y)
}

#[derive(Debug)]
pub struct Pool {
    net: Ipv4Cidr,
    held: HashMap<Ipv4Addr, Holder>,
    by_session: HashMap<SessionId, Ipv4Addr>,
    /// The last address each vmac held, so a client that reconnects after
    /// its old session ended (and asks for 0.0.0.0/0) gets it back if free.
    remembered: HashMap<Vmac, (Ipv4Addr, u64)>,
    remembered_by_addr: HashMap<Ipv4Addr, Vmac>,
    generation: u64,
    remember_cap: usize,
    /// Offset inside the network where the next walk starts; advancing it
    /// spreads allocations so freed addresses are not reused at once.
    cursor: u64,
}

impl Pool {
    /// `start` seeds the allocation cursor (any value; taken modulo the size).
    pub fn new(net: Ipv4Cidr, start: u64, remember_cap: usize) -> Self {
        let net = Ipv4Cidr {
            addr: net.network(),
            prefix: net.prefix,
        };
        Self {
            net,
            held: HashMap::new(),
            by_session: HashMap::new(),
            remembered: HashMap::new(),
            remembered_by_addr: HashMap::new(),
            generation: 0,
            remember_cap: remember_cap.max(1),
            cursor: start % net.size(),
        }
    }

    #[cfg(test)]
    pub fn network(&self) -> Ipv4Cidr {
        self.net
    }

    #[cfg(test)]
    pub fn holder(&self, ip: Ipv4Addr) -> Option<Holder> {
        self.held.get(&ip).copied()
    }

    pub fn held_by(&self, session: SessionId) -> Option<Ipv4Addr> {
        self.by_session.get(&session).copied()
    }

    /// Some session here holds `ip` (bound or reserved).
    pub fn is_held(&self, ip: Ipv4Addr) -> bool {
        self.held.contains_key(&ip)
    }

    #[cfg(test)]
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// May `session` (with `vmac`) be given `ip`? `elsewhere` says an
    /// address is held outside this pool (by another server instance).
    fn available(
        &self,
        ip: Ipv4Addr,
        session: SessionId,
        vmac: Option<Vmac>,
        elsewhere: Elsewhere,
    ) -> bool {
        if !self.net.is_usable_host(ip) || elsewhere(ip, vmac) {
            return false;
        }
        match self.held.get(&ip) {
            None => true,
            Some(h) => h.session == session || same_vmac(h.vmac, vmac),
        }
    }

    /// Chooses an address for an EXPTTUN request and reserves it for
    /// `session`: the requested one if available, else the one this vmac
    /// last held if available, else a free one. A reservation replaces
    /// whatever the session held before. An address held by another session
    /// with the same vmac is granted but stays with that session until AUTH.
    pub fn grant(
        &mut self,
        session: SessionId,
        vmac: Option<Vmac>,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, PoolError> {
        self.grant_except(session, vmac, requested, &|_, _| false)
    }

    /// `grant`, skipping the addresses `elsewhere` says are held outside
    /// this pool.
    pub fn grant_except(
        &mut self,
        session: SessionId,
        vmac: Option<Vmac>,
        requested: Option<Ipv4Addr>,
        elsewhere: Elsewhere,
    ) -> Result<Ipv4Addr, PoolError> {
        let remembered = vmac.and_then(|v| self.remembered.get(&v)).map(|r| r.0);
        let ip = [requested, remembered]
            .into_iter()
            .flatten()
            .find(|&ip| self.available(ip, session, vmac, elsewhere))
            .or_else(|| self.walk(vmac, true, elsewhere))
            .or_else(|| self.walk(vmac, false, elsewhere))
            .ok_or(PoolError::Exhausted(self.net))?;
        match self.held.get(&ip) {
            Some(h) if h.session != session => {
                // Same vmac, other session: only drop our own older hold.
                self.release(session);
            }
            _ => self.hold(session, vmac, ip),
        }
        Ok(ip)
    }

    /// Walks the pool from the cursor for an address nobody holds. The
    /// first pass also avoids addresses remembered for another vmac, so a
    /// client coming back after a short outage usually finds its old one.
    fn walk(&mut self, vmac: Option<Vmac>, polite: bool, elsewhere: Elsewhere) -> Option<Ipv4Addr> {
        let size = self.net.size();
        let base = u64::from(u32::from(self.net.network()));
        for i in 0..size {
            let off = (self.cursor + i) % size;
            // base + off stays inside the /N network, so it fits in a u32.
            let ip = Ipv4Addr::from((base + off) as u32);
            if !self.net.is_usable_host(ip) || self.held.contains_key(&ip) || elsewhere(ip, vmac) {
                continue;
            }
            if polite {
                if let Some(owner) = self.remembered_by_addr.get(&ip) {
                    if Some(*owner) != vmac {
                        continue;
                    }
                }
            }
            self.cursor = (off + 1) % size;
            return Some(ip);
        }
        None
    }

    /// Binds `ip` to `session` for AUTH. Fails if the address is not a
    /// usable host of the pool, or another session holds it without
    /// sharing a non-empty vmac. On success the session's previous hold (if
    /// different) is released.
    pub fn claim(
        &mut self,
        session: SessionId,
        vmac: Option<Vmac>,
        ip: Ipv4Addr,
    ) -> Result<Claim, PoolError> {
        if !self.net.is_usable_host(ip) {
            return Err(PoolError::OutsidePool { ip, pool: self.net });
        }
        let outcome = match self.held.get(&ip) {
            None => Claim::Fresh,
            Some(h) if h.session == session => Claim::Kept,
            Some(h) if same_vmac(h.vmac, vmac) => Claim::Took { from: h.session },
            Some(_) => return Err(PoolError::InUse(ip)),
        };
        if let Claim::Took { from } = outcome {
            self.by_session.remove(&from);
        }
        self.hold(session, vmac, ip);
        Ok(outcome)
    }

    fn hold(&mut self, session: SessionId, vmac: Option<Vmac>, ip: Ipv4Addr) {
        if self.by_session.get(&session) != Some(&ip) {
            self.release(session);
        }
        self.held.insert(ip, Holder { session, vmac });
        self.by_session.insert(session, ip);
        if let Some(v) = vmac {
            self.remember(v, ip);
        }
    }

    /// Frees whatever `session` holds. Safe to call more than once and for
    /// a session that lost its address to a reconnect.
    pub fn release(&mut self, session: SessionId) -> Option<Ipv4Addr> {
        let ip = self.by_session.remove(&session)?;
        if self.held.get(&ip).map(|h| h.session) == Some(session) {
            self.held.remove(&ip);
        }
        Some(ip)
    }

    fn remember(&mut self, vmac: Vmac, ip: Ipv4Addr) {
        self.generation += 1;
        if let Some((old, _)) = self.remembered.insert(vmac, (ip, self.generation)) {
            if old != ip && self.remembered_by_addr.get(&old) == Some(&vmac) {
                self.remembered_by_addr.remove(&old);
            }
        }
        if let Some(prev) = self.remembered_by_addr.insert(ip, vmac) {
            if prev != vmac && self.remembered.get(&prev).map(|r| r.0) == Some(ip) {
                self.remembered.remove(&prev);
            }
        }
        if self.remembered.len() > self.remember_cap {
            self.forget_oldest();
        }
    }

    /// Drops the oldest quarter of the memory at once, so the sort is paid
    /// once per many allocations rather than on each.
    fn forget_oldest(&mut self) {
        let mut gens: Vec<u64> = self.remembered.values().map(|r| r.1).collect();
        gens.sort_unstable();
        let cut = gens[gens.len() / 4];
        let old: Vec<(Vmac, Ipv4Addr)> = self
            .remembered
            .iter()
            .filter(|(_, r)| r.1 <= cut)
            .map(|(v, r)| (*v, r.0))
            .collect();
        for (v, ip) in old {
            self.remembered.remove(&v);
            if self.remembered_by_addr.get(&ip) == Some(&v) {
                self.remembered_by_addr.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn check_consistent(&self) {
        for (ip, h) in &self.held {
            assert_eq!(self.by_session.get(&h.session), Some(ip), "{ip} {h:?}");
            assert!(self.net.is_usable_host(*ip));
        }
        assert!(self.remembered.len() <= self.remember_cap);
        for (ip, v) in &self.remembered_by_addr {
            assert_eq!(self.remembered.get(v).map(|r| r.0), Some(*ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pool(net: &str) -> Pool {
        Pool::new(net.parse().unwrap(), 0, 1024)
    }

    const A: Option<Vmac> = Some(*b"aaaaaaaaaaaaaaaa");
    const B: Option<Vmac> = Some(*b"bbbbbbbbbbbbbbbb");

    #[test]
    fn skips_network_and_broadcast_and_exhausts() {
        let mut p = pool("10.0.0.0/30");
        let a = p.grant(1, None, None).unwrap();
        let b = p.grant(2, None, None).unwrap();
        let mut got = [a, b];
        got.sort();
        assert_eq!(got, [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(
            p.grant(3, None, None),
            Err(PoolError::Exhausted("10.0.0.0/30".parse().unwrap()))
        );
        // Requests for the network or broadcast address are not honoured.
        assert_eq!(
            p.grant(3, None, Some(ip("10.0.0.3"))),
            Err(PoolError::Exhausted("10.0.0.0/30".parse().unwrap()))
        );
        p.release(1);
        assert_eq!(p.grant(3, None, Some(ip("10.0.0.0"))).unwrap(), a);
        p.check_consistent();
    }

    #[test]
    fn requested_address_granted_when_free_only() {
        let mut p = pool("10.77.0.0/24");
        assert_eq!(
            p.grant(1, A, Some(ip("10.77.0.50"))).unwrap(),
            ip("10.77.0.50")
        );
        // Held by another vmac: something else.
        let other = p.grant(2, B, Some(ip("10.77.0.50"))).unwrap();
        assert_ne!(other, ip("10.77.0.50"));
        // Outside the pool: something inside.
        let inside = p.grant(3, None, Some(ip("192.168.1.1"))).unwrap();
        assert!(p.network().is_usable_host(inside));
        p.check_consistent();
    }

    #[test]
    fn empty_vmacs_never_match() {
        let mut p = pool("10.77.0.0/24");
        let a = p.grant(1, None, Some(ip("10.77.0.9"))).unwrap();
        assert_ne!(p.grant(2, None, Some(a)).unwrap(), a);
        assert_eq!(p.claim(3, None, a), Err(PoolError::InUse(a)));
    }

    #[test]
    fn same_vmac_reconnect_takes_over() {
        let mut p = pool("10.77.0.0/24");
        let a = p.grant(1, A, None).unwrap();
        assert_eq!(p.claim(1, A, a), Ok(Claim::Kept));
        // New connection, same vmac, old one still alive.
        assert_eq!(p.grant(2, A, Some(a)).unwrap(), a);
        assert_eq!(p.holder(a).unwrap().session, 1, "stays until AUTH");
        assert_eq!(p.claim(2, A, a), Ok(Claim::Took { from: 1 }));
        assert_eq!(p.held_by(1), None);
        // The old session ending must not free the new one's address.
        assert_eq!(p.release(1), None);
        assert_eq!(p.holder(a).unwrap().session, 2);
        assert_eq!(p.claim(3, B, a), Err(PoolError::InUse(a)));
        p.check_consistent();
    }

    #[test]
    fn sticky_after_release() {
        let mut p = pool("10.77.0.0/24");
        let a = p.grant(1, A, None).unwrap();
        p.claim(1, A, a).unwrap();
        p.release(1);
        // Others allocate in the meantime and avoid the remembered address.
        for s in 10..50 {
            assert_ne!(p.grant(s, None, None).unwrap(), a);
        }
        assert_eq!(p.grant(2, A, None).unwrap(), a);
        p.check_consistent();
    }

    #[test]
    fn claim_checks_pool_and_moves_reservation() {
        let mut p = pool("10.77.0.0/24");
        for bad in ["10.77.0.0", "10.77.0.255", "10.78.0.1"] {
            assert!(matches!(
                p.claim(1, None, ip(bad)),
                Err(PoolError::OutsidePool { .. })
            ));
        }
        let r = p.grant(1, None, None).unwrap();
        assert_eq!(p.claim(1, None, ip("10.77.0.7")), Ok(Claim::Fresh));
        assert_ne!(r, ip("10.77.0.7"));
        assert_eq!(p.holder(r), None, "the reservation was released");
        assert_eq!(p.held_count(), 1);
        p.check_consistent();
    }

    #[test]
    fn grant_skips_addresses_held_elsewhere() {
        let mut p = pool("10.0.0.0/29");
        let taken = |ip: Ipv4Addr, v: Option<Vmac>| ip.octets()[3] % 2 == 1 && v != A;
        for s in 1..=3 {
            let a = p
                .grant_except(s, None, Some(ip("10.0.0.1")), &taken)
                .unwrap();
            assert_eq!(a.octets()[3] % 2, 0, "{a}");
        }
        assert!(matches!(
            p.grant_except(4, None, None, &taken),
            Err(PoolError::Exhausted(_))
        ));
        // The client holding it elsewhere may have it here.
        assert_eq!(
            p.grant_except(4, A, Some(ip("10.0.0.5")), &taken).unwrap(),
            ip("10.0.0.5")
        );
        p.check_consistent();
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Pool::new("10.0.0.0/16".parse().unwrap(), 0, 64);
        for s in 0..1000u64 {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&s.to_be_bytes());
            let a = p.grant(s, Some(v), None).unwrap();
            p.claim(s, Some(v), a).unwrap();
            p.release(s);
            p.check_consistent();
        }
        assert_eq!(p.held_count(), 0);
    }

    /// Many clients and churn: random grants, claims and releases, with a
    /// model of live sessions checked after every step.
    #[test]
    fn churn_never_duplicates() {
        for seed in 0..10u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let net: Ipv4Cidr = "10.9.0.0/26".parse().unwrap();
            let mut p = Pool::new(net, rng.gen(), 16);
            let vmacs: Vec<Option<Vmac>> = (0..12u8)
                .map(|i| if i < 3 { None } else { Some([i; 16]) })
                .collect();
            let mut live: HashMap<SessionId, Option<Vmac>> = HashMap::new();
            let mut next = 0u64;
            for _ in 0..4000 {
                let roll = rng.gen_range(0..10);
                if roll < 4 || live.is_empty() {
                    next += 1;
                    let v = vmacs[rng.gen_range(0..vmacs.len())];
                    live.insert(next, v);
                    let req = match rng.gen_range(0..3) {
                        0 => None,
                        1 => Some(Ipv4Addr::from(u32::from(net.addr) + rng.gen_range(0..70))),
                        _ => live.keys().filter_map(|s| p.held_by(*s)).next(),
                    };
                    match p.grant(next, v, req) {
                        Ok(a) => {
                            assert!(net.is_usable_host(a));
                            if let Some(h) = p.holder(a) {
                                assert!(
                                    h.session == next || same_vmac(h.vmac, v),
                                    "granted {a} held by {h:?} to {v:?}"
                                );
                            }
                        }
                        Err(PoolError::Exhausted(_)) => {
                            let free = (1..63)
                                .map(|o| Ipv4Addr::from(u32::from(net.addr) + o))
                                .filter(|a| p.holder(*a).is_none())
                                .count();
                            assert_eq!(free, 0, "exhausted with free addresses");
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else if roll < 6 {
                    let s = *live.keys().nth(rng.gen_range(0..live.len())).unwrap();
                    let v = live[&s];
                    let target = if rng.gen_bool(0.7) {
                        p.held_by(s)
                    } else {
                        Some(Ipv4Addr::from(u32::from(net.addr) + rng.gen_range(0..64)))
                    };
                    if let Some(a) = target {
                        let before = p.holder(a);
                        match p.claim(s, v, a) {
                            Ok(_) => assert_eq!(p.holder(a).unwrap().session, s),
                            Err(PoolError::InUse(_)) => {
                                let h = before.unwrap();
                                assert!(h.session != s && !same_vmac(h.vmac, v));
                            }
                            Err(PoolError::OutsidePool { .. }) => {
                                assert!(!net.is_usable_host(a))
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                } else {
                    let s = *live.keys().nth(rng.gen_range(0..live.len())).unwrap();
                    live.remove(&s);
                    p.release(s);
                }
                p.check_consistent();
                // No address is held by a session that is gone, and no
                // session holds two addresses.
                let mut seen = HashSet::new();
                for s in live.keys() {
                    if let Some(a) = p.held_by(*s) {
                        assert!(seen.insert(a), "{a} held twice");
                        assert_eq!(p.holder(a).unwrap().session, *s);
                    }
                }
                assert_eq!(seen.len(), p.held_count());
            }
        }
    }
}
