//! One network the server serves: its password, address pool, relay table
//! and subnet routes, and (with `[cluster]`) its share of the cluster.
//! Nothing a session does reaches past its own network.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::{NetworkConfig, PushedRoute};
use crate::proto::Ipv4Cidr;

use super::cluster;
use super::counters::ServerCounters;
use super::pool::Pool;
use super::relay::Relay;

pub(crate) struct Network {
    /// Names the network in logs, lease keys and NATS subjects.
    pub name: String,
    /// The URL path that selects it.
    pub path: String,
    pub password: Vec<u8>,
    pub pool_net: Ipv4Cidr,
    /// Swapped whole by a reload; sessions read it at login and for the
    /// source check of gateway traffic.
    pub routes: ArcSwap<Vec<PushedRoute>>,
    pool: Mutex<Pool>,
    pub relay: Relay,
    pub counters: Arc<ServerCounters>,
    /// `None` without `[cluster]`: everything stays in this process.
    pub cluster: Option<cluster::Net>,
}

impl Network {
    pub fn new(
        cfg: &NetworkConfig,
        remembered_vmacs: usize,
        counters: Arc<ServerCounters>,
        cluster: Option<cluster::Net>,
    ) -> Self {
        Self {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            password: cfg.password.as_bytes().to_vec(),
            pool_net: cfg.pool,
            routes: ArcSwap::from_pointee(cfg.routes.clone()),
            pool: Mutex::new(Pool::new(cfg.pool, rand::random(), remembered_vmacs)),
            relay: Relay::new(cfg.pool),
            counters,
            cluster,
        }
    }

    // Pool updates are single-step and leave it consistent even if a
    // holder panicked, so a poisoned lock is still usable.
    pub fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}
