//! Defences against members and strangers who misbehave: the set of AUTH
//! hashes already used, per-session token buckets, admission of
//! connections that have not logged in, and log lines that summarise a
//! flood instead of repeating it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// AUTH hashes that have logged in and whose timestamp is still inside the
/// window: the same frame seen again is a replay. A Candy client builds a
/// fresh AUTH (new timestamp) on every connect, so a legitimate login never
/// repeats one unless it reconnects within the same second.
///
/// Only hashes that verified are stored, so filling the set takes the
/// password; when full, the entries nearest to expiry go first (the
/// timestamp check refuses them soon anyway).
#[derive(Debug)]
pub struct SeenAuths {
    cap: usize,
    seen: HashSet<[u8; 32]>,
    /// (unix second after which the hash is stale anyway, hash)
    expiry: BinaryHeap<Reverse<(i64, [u8; 32])>>,
}

impl SeenAuths {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seen: HashSet::new(),
            expiry: BinaryHeap::new(),
        }
    }

    /// Records `hash` as used until `expires` (unix seconds). False when
    /// it was already recorded: a replay.
    pub fn first_use(&mut self, hash: [u8; 32], expires: i64, now: i64) -> bool {
        while let Some(Reverse((t, h))) = self.expiry.peek().copied() {
            if t >= now && self.seen.len() < self.cap {
                break;
            }
            self.expiry.pop();
            self.seen.remove(&h);
        }
        if !self.seen.insert(hash) {
            return false;
        }
        self.expiry.push(Reverse((expires, hash)));
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How often a repeated event is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts occurrences of one event and says when a line is due: the first
/// occurrence, then at most once per [`LOG_INTERVAL`] with the number seen
/// since the last line.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Option<Instant>,
    pending: u64,
}

impl LogEvery {
    /// Some(n) when a line is due, n being the occurrences it covers.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_INTERVAL => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

/// Limits on connections that have not logged in yet.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// All of them together; at the cap the oldest is dropped for the
    /// newcomer, so a flood cannot keep a member out for longer than it
    /// takes to accept one connection.
    pub max: usize,
    /// From one source address; beyond it new ones are refused at accept.
    pub per_ip: usize,
}

/// What admission decided for a new connection.
#[derive(Debug)]
pub enum Admit {
    /// Admitted; the slot must be held until the connection logs in or ends.
    Yes(Pending),
    /// Too many unauthenticated connections from this address.
    PerIp,
}

#[derive(Debug, Default)]
struct Table {
    /// Insertion order is id order, so the first entry is the oldest.
    by_id: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    per_ip: HashMap<IpAddr, usize>,
    next: u64,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (ip, evict) = self.by_id.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(evict)
    }
}

/// The unauthenticated connections: counted apart from members, so
/// members never compete with strangers for `max_clients`.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    table: Mutex<Table>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: AdmissionLimits {
                max: limits.max.max(1),
                per_ip: limits.per_ip.max(1),
            },
            table: Mutex::new(Table::default()),
        })
    }

    // Every update is a few map operations that leave the table
    // consistent, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, dropping the oldest pending one when
    /// the cap is reached. Returns the decision and whether one was dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> (Admit, bool) {
        let mut t = self.lock();
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip {
            return (Admit::PerIp, false);
        }
        let mut evicted = false;
        while t.by_id.len() >= self.limits.max {
            let Some(oldest) = t.by_id.keys().next().copied() else {
                break;
            };
            if let Some(n) = t.remove(oldest) {
                n.notify_one();
                evicted = true;
            }
        }
        let id = t.next;
        t.next += 1;
        let evict = Arc::new(Notify::new());
        t.by_id.insert(id, (ip, evict.clone()));
        *t.per_ip.entry(ip).or_insert(0) += 1;
        let slot = Pending {
            admission: self.clone(),
            id,
            evict,
        };
        (Admit::Yes(slot), evicted)
    }

    /// The limits, for the startup line.
    pub fn describe(&self) -> String {
        format!(
            "max_unauthenticated={} per_ip={}",
            self.limits.max, self.limits.per_ip
        )
    }

    /// Connections not logged in right now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// One admitted, not yet authenticated connection. Dropping it (on login
/// or on close) frees its place.
#[derive(Debug)]
pub struct Pending {
    admission: Arc<Admission>,
    id: u64,
    evict: Arc<Notify>,
}

impl Pending {
    /// Completes when admission dropped this connection for a newer one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// What [`Pending::evicted`] waits on, for a holder that cannot borrow.
    pub fn notifier(&self) -> Arc<Notify> {
        self.evict.clone()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_auths_refuse_repeats_expire_and_stay_bounded() {
        let mut s = SeenAuths::new(4);
        assert!(s.first_use([1; 32], 100, 0));
        assert!(!s.first_use([1; 32], 100, 50), "a replay");
        assert!(s.first_use([2; 32], 10, 0));
        // After its expiry the hash is forgotten (the timestamp check
        // refuses such a frame on its own).
        assert!(s.first_use([3; 32], 200, 11));
        assert_eq!(s.len(), 2);
        for i in 4..20u8 {
            assert!(s.first_use([i; 32], 1000 + i64::from(i), 12));
            assert!(s.len() <= 4);
        }
        // The newest ones are still remembered.
        assert!(!s.first_use([19; 32], 1019, 12));
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5);
        // One second later: ten more, not fifteen (burst caps at five).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| b.take(t2)).count(), 3);
        let mut zero = Bucket::new(0, 1, t0);
        assert!(zero.take(t0));
        assert!(!zero.take(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn log_every_interval() {
        let t0 = Instant::now();
        let mut l = LogEvery::default();
        assert_eq!(l.hit(t0), Some(1));
        for _ in 0..9 {
            assert_eq!(l.hit(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.hit(t0 + LOG_INTERVAL), Some(10));
    }

    #[test]
    fn admission_per_ip_and_oldest_dropped() {
        let a = Admission::new(AdmissionLimits { max: 3, per_ip: 2 });
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let z: IpAddr = "192.0.2.3".parse().unwrap();
        let (Admit::Yes(x1), false) = a.admit(x) else {
            panic!()
        };
        let (Admit::Yes(_x2), false) = a.admit(x) else {
            panic!()
        };
        assert!(matches!(a.admit(x), (Admit::PerIp, false)));
        let (Admit::Yes(_y1), false) = a.admit(y) else {
            panic!()
        };
        // At the cap: the oldest (x1) is told to go, z gets its place.
        let (Admit::Yes(_z1), true) = a.admit(z) else {
            panic!()
        };
        assert_eq!(a.pending(), 3);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), x1.evicted())
                .await
                .expect("the oldest was evicted")
        });
        // x now has one pending connection, so another is allowed; x1's
        // drop after eviction must not free someone else's place.
        drop(x1);
        assert_eq!(a.pending(), 3);
        let (Admit::Yes(_), true) = a.admit(x) else {
            panic!()
        };
    }
}
