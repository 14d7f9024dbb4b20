//! One network the server serves: its password, address pool, relay table
//! and subnet routes, and (with `[cluster]`) its share of the cluster.
//! Nothing a session does reaches past its own network.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::PushedRoute;
use crate::proto::Ipv4Cidr;

use super::cluster;
use super::counters::ServerCounters;
use super::pool::Pool;
use super::relay::Relay;

pub(crate) struct Network {
    /// Names the network in logs, lease keys and NATS subjects.
    pub name: String,
    pub password: Vec<u8>,
    pub pool_net: Ipv4Cidr,
    pub routes: Vec<PushedRoute>,
    pool: Mutex<Pool>,
    pub relay: Relay,
    pub counters: Arc<ServerCounters>,
    /// `None` without `[cluster]`: everything stays in this process.
    pub cluster: Option<cluster::Net>,
}

impl Network {
    pub fn new(
        name: &str,
        password: &str,
        pool_net: Ipv4Cidr,
        routes: Vec<PushedRoute>,
        remembered_vmacs: usize,
        counters: Arc<ServerCounters>,
        cluster: Option<cluster::Net>,
    ) -> Self {
        Self {
            name: name.to_string(),
            password: password.as_bytes().to_vec(),
            pool_net,
            routes,
            pool: Mutex::new(Pool::new(pool_net, rand::random(), remembered_vmacs)),
            relay: Relay::new(pool_net),
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
