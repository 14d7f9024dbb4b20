//! The table the control thread publishes and workers follow.
//!
//! Immutable once published: the control thread builds a new `Snapshot` and
//! swaps it in; a worker loads it once per batch, so it never takes a lock or
//! sees a half-updated table.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Bumped by the publisher; lets workers and tests tell tables apart.
    pub generation: u64,
    /// This node's virtual IP, once the server has assigned one.
    pub own_vip: Option<Ipv4Addr>,
    /// Peers reachable over a direct UDP path: VIP → public endpoint.
    /// A VIP absent here goes to the control thread (relay).
    pub peers: HashMap<Ipv4Addr, SocketAddrV4>,
}

impl Snapshot {
    pub fn endpoint(&self, vip: Ipv4Addr) -> Option<SocketAddrV4> {
        self.peers.get(&vip).copied()
    }
}

/// Shared, atomically swappable snapshot.
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<ArcSwap<Snapshot>>);

impl SharedSnapshot {
    pub fn new(initial: Snapshot) -> Self {
        SharedSnapshot(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// Replace the table seen by every worker from its next batch on.
    pub fn publish(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }

    /// Current table; cheap enough to call once per batch.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_for_all_holders() {
        let a = SharedSnapshot::default();
        let b = a.clone();
        assert_eq!(b.load().generation, 0);
        let vip = Ipv4Addr::new(192, 168, 202, 2);
        let ep = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 40000);
        let mut s = Snapshot {
            generation: 1,
            own_vip: Some(Ipv4Addr::new(192, 168, 202, 1)),
            ..Default::default()
        };
        s.peers.insert(vip, ep);
        let old = b.load();
        a.publish(s);
        assert_eq!(b.load().generation, 1);
        assert_eq!(b.load().endpoint(vip), Some(ep));
        assert_eq!(old.endpoint(vip), None);
    }
}
