//! The VIP → session table and the routing decisions for relayed frames.
//!
//! Lookups take a std read lock for the length of a `try_send`, never
//! across an await, so relaying scales with cores and a full queue costs
//! the sender nothing but a counter.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use crate::proto::ipv4;
use crate::proto::Ipv4Cidr;

use super::pool::{SessionId, Vmac};
use super::status::SessionTraffic;

/// How to reach one authenticated session.
#[derive(Debug, Clone)]
pub struct Entry {
    pub session: SessionId,
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Woken to close the session when a reconnect replaces it.
    pub kick: Arc<Notify>,
    /// The timestamp of the AUTH that bound it: a reconnect must be newer.
    pub auth_ts: i64,
    pub vmac: Option<Vmac>,
    /// Where the connection comes from, since when it is a member, and
    /// its traffic: for `ringlink status --server`.
    pub remote: SocketAddr,
    pub since: SystemTime,
    pub traffic: Arc<SessionTraffic>,
}

/// Where a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// No session holds the destination (and it is not a broadcast).
    NoRoute,
    /// The destination's send queue was full; the frame is dropped.
    QueueFull,
    /// Bound for another instance, and the queue towards it was full: the
    /// frame is dropped (counted as `cluster_out_dropped`).
    Dropped,
    /// Broadcast: how many recipients took it and how many were full.
    Broadcast {
        sent: usize,
        full: usize,
    },
}

/// A FORWARD destination is a broadcast if it is multicast, the limited
/// broadcast, or the pool's directed broadcast (§2.4.2).
pub fn forward_is_broadcast(pool: Ipv4Cidr, dst: Ipv4Addr) -> bool {
    ipv4::is_broadcast(dst) || dst == pool.broadcast()
}

#[derive(Debug)]
pub struct Relay {
    pool: Ipv4Cidr,
    table: RwLock<HashMap<Ipv4Addr, Entry>>,
}

impl Relay {
    pub fn new(pool: Ipv4Cidr) -> Self {
        Self {
            pool,
            table: RwLock::new(HashMap::new()),
        }
    }

    // A panic elsewhere while holding the lock leaves the map itself
    // intact (every update is a single insert or remove), so poisoning is
    // ignored rather than spread to every session.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Ipv4Addr, Entry>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ipv4Addr, Entry>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `vip` to a session and returns the entry it replaced.
    pub fn insert(&self, vip: Ipv4Addr, entry: Entry) -> Option<Entry> {
        self.write().insert(vip, entry)
    }

    /// Who holds `vip`: session, login timestamp and vmac.
    pub fn holder(&self, vip: Ipv4Addr) -> Option<(SessionId, i64, Option<Vmac>)> {
        self.read()
            .get(&vip)
            .map(|e| (e.session, e.auth_ts, e.vmac))
    }

    /// Unbinds `vip` only if `session` still owns it: a session replaced by
    /// a reconnect must not remove its successor.
    pub fn remove_if(&self, vip: Ipv4Addr, session: SessionId) -> bool {
        let mut t = self.write();
        if t.get(&vip).map(|e| e.session) == Some(session) {
            t.remove(&vip);
            true
        } else {
            false
        }
    }

    /// Every member now, by VIP.
    pub fn members(&self) -> Vec<(Ipv4Addr, Entry)> {
        let mut all: Vec<_> = self.read().iter().map(|(v, e)| (*v, e.clone())).collect();
        all.sort_by_key(|(v, _)| *v);
        all
    }

    /// Closes the session bound to `vip`, if there is one here.
    pub fn kick(&self, vip: Ipv4Addr) -> bool {
        match self.read().get(&vip) {
            Some(e) => {
                e.kick.notify_one();
                true
            }
            None => false,
        }
    }

    /// Sessions bound here.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unicast: the whole frame, unchanged, to the session holding `dst`.
    pub fn send_to(&self, dst: Ipv4Addr, frame: Vec<u8>) -> Delivery {
        self.send_local(dst, frame).unwrap_or(Delivery::NoRoute)
    }

    /// The same, but a frame no session here takes comes back, for the
    /// cluster to carry to another instance.
    pub fn send_local(&self, dst: Ipv4Addr, frame: Vec<u8>) -> Result<Delivery, Vec<u8>> {
        let t = self.read();
        match t.get(&dst) {
            Some(e) => Ok(push(&e.tx, frame)),
            None => Err(frame),
        }
    }

    /// Every authenticated session except the one at `from`.
    pub fn broadcast(&self, from: Ipv4Addr, frame: &[u8]) -> Delivery {
        let t = self.read();
        let (mut sent, mut full) = (0, 0);
        for (vip, e) in t.iter() {
            if *vip == from {
                continue;
            }
            match push(&e.tx, frame.to_vec()) {
                Delivery::Sent => sent += 1,
                _ => full += 1,
            }
        }
        Delivery::Broadcast { sent, full }
    }

    /// FORWARD routing in Candy's order: a session holding `dst`, else a
    /// broadcast, else nowhere.
    pub fn forward(&self, from: Ipv4Addr, dst: Ipv4Addr, frame: Vec<u8>) -> Delivery {
        {
            let t = self.read();
            if let Some(e) = t.get(&dst) {
                return push(&e.tx, frame);
            }
        }
        if forward_is_broadcast(self.pool, dst) {
            self.broadcast(from, &frame)
        } else {
            Delivery::NoRoute
        }
    }
}

fn push(tx: &mpsc::Sender<Vec<u8>>, frame: Vec<u8>) -> Delivery {
    match tx.try_send(frame) {
        Ok(()) => Delivery::Sent,
        Err(TrySendError::Full(_)) => Delivery::QueueFull,
        // The session is ending and has not yet left the table.
        Err(TrySendError::Closed(_)) => Delivery::NoRoute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn entry(session: SessionId, cap: usize) -> (Entry, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Entry {
                session,
                tx,
                kick: Arc::new(Notify::new()),
                auth_ts: 0,
                vmac: None,
                remote: "127.0.0.1:1".parse().unwrap(),
                since: SystemTime::UNIX_EPOCH,
                traffic: Arc::default(),
            },
            rx,
        )
    }

    #[test]
    fn unicast_broadcast_and_drop() {
        let r = Relay::new("10.77.0.0/24".parse().unwrap());
        let (e1, mut rx1) = entry(1, 4);
        let (e2, mut rx2) = entry(2, 1);
        let (e3, mut rx3) = entry(3, 4);
        r.insert(ip("10.77.0.1"), e1);
        r.insert(ip("10.77.0.2"), e2);
        r.insert(ip("10.77.0.3"), e3);
        assert_eq!(
            r.forward(ip("10.77.0.1"), ip("10.77.0.2"), vec![1]),
            Delivery::Sent
        );
        assert_eq!(rx2.try_recv().unwrap(), vec![1]);
        assert_eq!(
            r.forward(ip("10.77.0.1"), ip("10.77.0.9"), vec![1]),
            Delivery::NoRoute
        );
        for b in ["224.0.0.251", "255.255.255.255", "10.77.0.255"] {
            assert_eq!(
                r.forward(ip("10.77.0.1"), ip(b), vec![7]),
                Delivery::Broadcast { sent: 2, full: 0 },
                "{b}"
            );
            assert!(rx1.try_recv().is_err(), "not back to the sender");
            assert_eq!(rx2.try_recv().unwrap(), vec![7]);
            assert_eq!(rx3.try_recv().unwrap(), vec![7]);
        }
        // Session 2's queue holds one frame: the second is dropped.
        assert_eq!(r.send_to(ip("10.77.0.2"), vec![1]), Delivery::Sent);
        assert_eq!(r.send_to(ip("10.77.0.2"), vec![2]), Delivery::QueueFull);
        assert_eq!(
            r.broadcast(ip("10.77.0.1"), &[3]),
            Delivery::Broadcast { sent: 1, full: 1 }
        );
    }

    #[test]
    fn remove_only_own_entry() {
        let r = Relay::new("10.77.0.0/24".parse().unwrap());
        let (old, _rx_old) = entry(1, 1);
        let (new, _rx_new) = entry(2, 1);
        r.insert(ip("10.77.0.1"), old);
        let replaced = r.insert(ip("10.77.0.1"), new).unwrap();
        assert_eq!(replaced.session, 1);
        assert!(!r.remove_if(ip("10.77.0.1"), 1));
        assert_eq!(r.len(), 1);
        assert!(r.remove_if(ip("10.77.0.1"), 2));
        assert!(r.is_empty());
    }

    #[test]
    fn members_by_vip() {
        let r = Relay::new("10.77.0.0/24".parse().unwrap());
        for (session, vip) in [(1, "10.77.0.30"), (2, "10.77.0.4"), (3, "10.77.0.12")] {
            r.insert(ip(vip), entry(session, 1).0);
        }
        let got: Vec<_> = r.members().iter().map(|(v, e)| (*v, e.session)).collect();
        assert_eq!(
            got,
            [
                (ip("10.77.0.4"), 2),
                (ip("10.77.0.12"), 3),
                (ip("10.77.0.30"), 1)
            ]
        );
    }
}
