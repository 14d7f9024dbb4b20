//! Several server instances as one (`[cluster]` in server.toml): address
//! leases in a JetStream key-value bucket, and frames for members held by
//! another instance carried over NATS, one subject per network and address.
//!
//! Nothing here runs without `[cluster]`: every network's `cluster` is
//! `None` and the server keeps its state in memory as one process. With it,
//! the local pool and relay table still decide among this instance's own
//! sessions; this module adds what crosses instances:
//! - a lease per address held here, created only if absent (or expired, or
//!   the same client's), written with the revision read (compare-and-set),
//!   renewed by a task, released when no session here holds the address;
//! - a watch on the bucket: who holds what elsewhere (for routing and for
//!   the pool to skip), and the moment another instance takes a lease from
//!   this one (its session here is closed);
//! - one subscription per address held here and one per network for
//!   broadcasts; frames towards NATS go through one bounded queue, so a
//!   slow or absent NATS costs frames (counted), never memory.

mod digest;
mod lease;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream;
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use super::counters::ServerCounters;
use super::error::ServerError;
use super::network::Network;
use super::pool::Vmac;
use super::relay::Delivery;
use crate::config::ServerConfig;

pub use lease::Me;
use lease::{Lease, Verdict};

/// The key-value bucket of address leases, shared by every network.
const BUCKET: &str = "ringlink_leases";
const SUBJECT_ROOT: &str = "ringlink";
/// Frames waiting for the NATS connection; past this they are dropped.
const OUT_QUEUE: usize = 8192;
/// Frames NATS delivered to one subscription and not yet read here; past
/// this the client library drops them (and says so: `cluster_in_slow`).
const SUB_QUEUE: usize = 1024;
/// One key-value operation; a join waits at most a few of these.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Compare-and-set rounds lost to other writers before a join gives up.
const TAKE_TRIES: usize = 4;
const RENEW_CONCURRENCY: usize = 64;
/// Attempts to open the lease bucket at start, half a second apart.
const BUCKET_TRIES: usize = 10;
/// Where instances announce their configuration digests. Network subjects
/// have at least three tokens, so no network name can collide with it.
const CONFIG_SUBJECT: &str = "ringlink.config";
/// How often an instance announces its digest (and at once when it starts,
/// reconnects, reloads or hears an instance it did not know).
const CONFIG_PERIOD: Duration = Duration::from_secs(10);
/// An instance not heard for this long is forgotten (it stopped).
const CONFIG_FORGET: Duration = Duration::from_secs(35);

/// Why a lease could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Another instance holds it for another client.
    Busy { holder: String },
    /// The same client holds it elsewhere with a login at least as new:
    /// a replayed AUTH must not move it.
    NotNewer { live: i64 },
    /// NATS did not answer (or kept losing races): no decision possible.
    Unavailable(String),
}

/// What a lease request is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// An address offered in reply to EXPTTUN, held until AUTH.
    Reserve,
    /// AUTH with this timestamp.
    Auth(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is this instance's now.
    Held,
    /// The same client holds it live on another instance; its AUTH here
    /// will take it (an address request alone never moves a lease).
    Deferred,
}

/// A lease of another instance, as last seen.
#[derive(Debug, Clone)]
struct Remote {
    lease: Lease,
    revision: u64,
}

/// What this instance knows of one lease it holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    vmac: Option<Vmac>,
    auth_ts: i64,
}

/// The NATS connection, the lease bucket and this instance's identity;
/// shared by every network.
pub struct Engine {
    client: Client,
    kv: kv::Store,
    me: Me,
    ttl: Duration,
    out: mpsc::Sender<(Subject, Bytes)>,
    out_rx: Mutex<Option<mpsc::Receiver<(Subject, Bytes)>>>,
    counters: Arc<ServerCounters>,
    /// Bumped on every (re)connection to NATS: the bucket watch starts
    /// afresh then.
    connections: watch::Sender<u64>,
    /// Lease deletes under way, which a stopping instance waits for.
    deleting: watch::Sender<usize>,
    /// The server's shutdown: from then on leases stay held until [`stop`]
    /// deletes them all at once.
    stopping: watch::Receiver<bool>,
    /// The digest of what must match across instances, as served now;
    /// replaced by a reload.
    config: watch::Sender<digest::Sections>,
    /// Other instances whose digest differs from ours (the metric).
    config_mismatch: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// Connects to NATS and opens (or creates) the lease bucket. Fails when
    /// no NATS server answers: an instance that cannot coordinate must not
    /// hand out addresses.
    pub async fn connect(
        server: &ServerConfig,
        counters: Arc<ServerCounters>,
        stopping: watch::Receiver<bool>,
    ) -> Result<Option<Arc<Self>>, ServerError> {
        let Some(cfg) = &server.cluster else {
            return Ok(None);
        };
        let err = |what: String| ServerError::Cluster(what);
        let addrs = cfg
            .nats
            .iter()
            .map(|u| u.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("NATS URL: {e}")))?;
        let events = counters.clone();
        let (connections, _) = watch::channel(0u64);
        let connected = connections.clone();
        let client = ConnectOptions::new()
            .name(format!("ringlink-server {}", cfg.name))
            // Our own broadcasts must not come back to us.
            .no_echo()
            // The configured order is a preference (an instance lists the
            // NATS node next to it first), not a set to pick from at random.
            .retain_servers_order()
            .subscription_capacity(SUB_QUEUE)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(OP_TIMEOUT))
            .event_callback(move |event| {
                let c = events.clone();
                let connected = connected.clone();
                async move {
                    match event {
                        Event::SlowConsumer(_) => ServerCounters::inc(&c.cluster_in_slow),
                        Event::Disconnected => warn!("cluster: NATS connection lost; reconnecting"),
                        Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            info!("cluster: connected to NATS");
                        }
                        other => info!("cluster: NATS {other}"),
                    }
                }
            })
            .connect(addrs)
            .await
            .map_err(|e| err(format!("cannot connect to NATS {:?}: {e}", cfg.nats)))?;
        let js = async_nats::jetstream::new(client.clone());
        // JetStream may still be starting (or electing a leader) when the
        // server already accepts connections: a few tries.
        let mut tries = 0;
        let kv = loop {
            tries += 1;
            match open_bucket(&js, cfg.replicas).await {
                Ok(kv) => break kv,
                Err(e) if tries >= BUCKET_TRIES => return Err(err(e)),
                Err(e) => {
                    debug!("cluster: lease bucket not ready ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        info!(
            "cluster: instance {} on NATS {:?}, leases in {BUCKET} (expire {} s after the last renewal)",
            cfg.name, cfg.nats, cfg.lease_seconds
        );
        Ok(Some(Arc::new(Self {
            client,
            kv,
            me: Me {
                name: cfg.name.clone(),
                incarnation: rand::random(),
            },
            ttl: Duration::from_secs(cfg.lease_seconds.into()),
            out,
            out_rx: Mutex::new(Some(out_rx)),
            connections,
            deleting: watch::Sender::new(0),
            stopping,
            config: watch::Sender::new(digest::sections(server)),
            config_mismatch: Default::default(),
            counters,
        })))
    }

    /// The configuration served changed (a reload applied something): the
    /// digest follows, and is announced at once if it differs.
    pub fn set_config(&self, server: &ServerConfig) {
        let new = digest::sections(server);
        self.config.send_if_modified(|cur| {
            let changed = *cur != new;
            *cur = new;
            changed
        });
    }

    /// How many other instances serve a configuration that differs from
    /// this one's.
    pub fn config_mismatches(&self) -> u64 {
        self.config_mismatch
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// The cluster side of one network.
    pub fn network(self: &Arc<Self>, name: &str) -> Net {
        Net {
            engine: self.clone(),
            name: name.to_string(),
            held: Mutex::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
        }
    }

    /// The background tasks: the publisher, lease renewal, the bucket watch
    /// and each network's broadcast subscription. They end with `shutdown`
    /// (or when aborted).
    pub fn spawn(
        self: &Arc<Self>,
        networks: Vec<Arc<Network>>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let rx = self.out_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            tasks.push(tokio::spawn(publisher(self.clone(), rx)));
        }
        tasks.push(tokio::spawn(renewer(
            self.clone(),
            networks.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(watcher(
            self.clone(),
            networks.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(config_check(self.clone(), shutdown)));
        for n in networks {
            tasks.push(tokio::spawn(broadcasts(n)));
        }
        tasks
    }

    fn queue(&self, subject: Subject, payload: Bytes) -> bool {
        if self.out.try_send((subject, payload)).is_ok() {
            ServerCounters::inc(&self.counters.cluster_frames_out);
            true
        } else {
            ServerCounters::inc(&self.counters.cluster_out_dropped);
            false
        }
    }
}

/// One network's share of the cluster.
pub struct Net {
    engine: Arc<Engine>,
    name: String,
    /// Leases this instance holds.
    held: Mutex<HashMap<Ipv4Addr, Held>>,
    /// Live leases of other instances, from the watch.
    remote: RwLock<HashMap<Ipv4Addr, Remote>>,
    /// A subscription per address with a member here.
    subs: Mutex<HashMap<Ipv4Addr, JoinHandle<()>>>,
}

impl Net {
    // Maps of plain values, changed one entry at a time: a panic elsewhere
    // leaves them consistent, so a poisoned lock is still usable.
    fn held(&self) -> MutexGuard<'_, HashMap<Ipv4Addr, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<Ipv4Addr, JoinHandle<()>>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remote(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Ipv4Addr, Remote>> {
        self.remote.read().unwrap_or_else(|e| e.into_inner())
    }

    fn remote_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ipv4Addr, Remote>> {
        self.remote.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn instance(&self) -> &str {
        self.engine.name()
    }

    /// This instance holds the lease of `ip`.
    pub fn leased(&self, ip: Ipv4Addr) -> bool {
        self.held().contains_key(&ip)
    }

    /// For the pool: `ip` is held live on another instance by a client
    /// other than `vmac`'s, so offering it would only fail.
    pub fn taken_elsewhere(&self, ip: Ipv4Addr, vmac: Option<Vmac>) -> bool {
        let now = lease::now_ms();
        self.remote().get(&ip).is_some_and(|r| {
            !r.lease.is_expired(&self.engine.me, now) && !r.lease.same_client(vmac)
        })
    }

    /// Takes (or renews) the lease of `ip` for a client with `vmac`.
    pub async fn acquire(
        &self,
        ip: Ipv4Addr,
        vmac: Option<Vmac>,
        purpose: Purpose,
    ) -> Result<Acquired, LeaseError> {
        let e = &self.engine;
        let key = lease::key(&self.name, ip);
        let auth_ts = match purpose {
            Purpose::Reserve => 0,
            Purpose::Auth(ts) => ts,
        };
        for attempt in 0..TAKE_TRIES {
            let entry = match timeout(OP_TIMEOUT, e.kv.entry(key.clone())).await {
                Ok(Ok(entry)) => entry,
                Ok(Err(err)) => return Err(unavailable(&e.counters, err)),
                Err(_) => return Err(unavailable(&e.counters, "lease read timed out")),
            };
            let (current, revision) = match entry {
                None => (None, 0),
                Some(en) if matches!(en.operation, Operation::Delete | Operation::Purge) => {
                    (None, en.revision)
                }
                Some(en) => {
                    let l = Lease::decode(&en.value);
                    if l.is_none() {
                        warn!("cluster: unreadable lease under {key}; replacing it");
                    }
                    (l, en.revision)
                }
            };
            let now = lease::now_ms();
            let verdict = lease::judge(current.as_ref(), &e.me, vmac, now);
            match (verdict, purpose, &current) {
                (Verdict::Busy, _, Some(l)) => {
                    let holder = l.holder.clone();
                    self.remote_mut().insert(
                        ip,
                        Remote {
                            lease: l.clone(),
                            revision,
                        },
                    );
                    return Err(LeaseError::Busy { holder });
                }
                (Verdict::SameClient, Purpose::Reserve, _) => return Ok(Acquired::Deferred),
                (Verdict::SameClient, Purpose::Auth(ts), Some(l)) if ts <= l.auth_ts => {
                    return Err(LeaseError::NotNewer { live: l.auth_ts });
                }
                _ => {}
            }
            let value = Lease::new(&e.me, vmac, auth_ts, now + e.ttl.as_millis() as u64);
            let write = e.kv.update(key.as_str(), value.encode().into(), revision);
            match timeout(OP_TIMEOUT, write).await {
                Ok(Ok(rev)) => {
                    self.record(ip, rev, vmac, auth_ts);
                    if let (Verdict::Expired | Verdict::SameClient, Some(l)) = (verdict, &current) {
                        ServerCounters::inc(&e.counters.cluster_takeovers);
                        info!(
                            "cluster: vip={ip} taken over from instance {} ({})",
                            l.holder,
                            if verdict == Verdict::Expired {
                                "its lease expired"
                            } else {
                                "the client reconnected here"
                            }
                        );
                    }
                    return Ok(Acquired::Held);
                }
                // Someone wrote in between (or the read came from a lagging
                // replica): read again, a moment later, and decide again.
                Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                    continue;
                }
                Ok(Err(err)) => return Err(unavailable(&e.counters, err)),
                Err(_) => return Err(unavailable(&e.counters, "lease write timed out")),
            }
        }
        Err(unavailable(
            &e.counters,
            format!("lease of {ip} kept changing under {TAKE_TRIES} attempts"),
        ))
    }

    fn record(&self, ip: Ipv4Addr, revision: u64, vmac: Option<Vmac>, auth_ts: i64) {
        self.remote_mut().remove(&ip);
        let mut held = self.held();
        let h = held.entry(ip).or_insert(Held {
            revision,
            vmac,
            auth_ts,
        });
        if revision >= h.revision {
            *h = Held {
                revision,
                vmac,
                auth_ts,
            };
        }
    }

    /// A login here bound an address whose lease this instance already
    /// held (the same client again): the lease takes its timestamp, which
    /// other instances check replays against.
    pub fn note_auth(network: &Arc<Network>, ip: Ipv4Addr, vmac: Option<Vmac>, auth_ts: i64) {
        let Some(c) = &network.cluster else { return };
        if let Some(h) = c.held().get_mut(&ip) {
            h.vmac = vmac;
            h.auth_ts = auth_ts;
        }
        let n = network.clone();
        tokio::spawn(async move { renew_one(&n, ip).await });
    }

    /// No session here holds `ip` any more (the caller checked, under the
    /// pool lock): the lease goes, so other instances may use the address.
    pub fn release(&self, ip: Ipv4Addr) {
        // Sessions closing for a shutdown leave their leases to `stop`,
        // which deletes them together once every session is gone.
        if *self.engine.stopping.borrow() {
            return;
        }
        if let Some(h) = self.held().remove(&ip) {
            self.delete(ip, h.revision);
        }
    }

    fn delete(&self, ip: Ipv4Addr, revision: u64) {
        let engine = self.engine.clone();
        let key = lease::key(&self.name, ip);
        engine.deleting.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            delete_lease(&engine.kv, &key, revision).await;
            engine.deleting.send_modify(|n| *n -= 1);
        });
    }

    /// A member here bound `ip`: frames for it from other instances arrive
    /// on its subject.
    pub fn bound(network: &Arc<Network>, ip: Ipv4Addr) {
        let Some(c) = &network.cluster else { return };
        let mut subs = c.subs();
        if subs.contains_key(&ip) {
            return;
        }
        let subject = c.vip_subject(ip);
        let client = c.engine.client.clone();
        let n = network.clone();
        subs.insert(
            ip,
            tokio::spawn(async move {
                let mut sub = match client.subscribe(subject.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("cluster: cannot subscribe to {subject}: {e}");
                        return;
                    }
                };
                while let Some(msg) = sub.next().await {
                    deliver_in(&n, n.relay.send_to(ip, msg.payload.to_vec()));
                }
            }),
        );
    }

    /// No member here holds `ip` any more.
    pub fn unbound(&self, ip: Ipv4Addr) {
        if let Some(task) = self.subs().remove(&ip) {
            task.abort();
        }
    }

    fn vip_subject(&self, ip: Ipv4Addr) -> Subject {
        Subject::from(format!("{SUBJECT_ROOT}.{}.vip.{ip}", self.name))
    }

    fn broadcast_subject(&self) -> Subject {
        Subject::from(format!("{SUBJECT_ROOT}.{}.broadcast", self.name))
    }

    /// A frame for `dst`, which no session here holds: to the instance that
    /// does, or back to the caller when none does.
    pub fn send_remote(&self, dst: Ipv4Addr, frame: Vec<u8>) -> Result<Delivery, Vec<u8>> {
        if !self.remote().contains_key(&dst) {
            return Err(frame);
        }
        Ok(if self.engine.queue(self.vip_subject(dst), frame.into()) {
            Delivery::Sent
        } else {
            Delivery::Dropped
        })
    }

    /// A broadcast from `from`, for the members of every other instance
    /// (each instance delivers it once to each of its members).
    pub fn broadcast(&self, from: Ipv4Addr, frame: &[u8]) {
        let mut payload = Vec::with_capacity(4 + frame.len());
        payload.extend_from_slice(&from.octets());
        payload.extend_from_slice(frame);
        self.engine.queue(self.broadcast_subject(), payload.into());
    }

    /// Members per instance: `local` here, the others' from the leases
    /// seen on the bucket (reservations included: a lease is a lease).
    pub fn members_by_instance(&self, local: usize) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        counts.insert(self.engine.me.name.clone(), local as u64);
        let now = lease::now_ms();
        for r in self.remote().values() {
            if !r.lease.is_expired(&self.engine.me, now) {
                *counts.entry(r.lease.holder.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort();
        v
    }

    /// Another instance took a lease this one held: its session here ends.
    fn lost(&self, network: &Network, ip: Ipv4Addr, holder: &str) {
        if self.held().remove(&ip).is_none() {
            return;
        }
        ServerCounters::inc(&self.engine.counters.cluster_lease_lost);
        let kicked = network.relay.kick(ip);
        info!(
            "cluster: vip={ip} is now held by instance {holder}{}",
            if kicked {
                ": closing the session here"
            } else {
                ""
            }
        );
    }

    /// A change seen on the bucket for one of this network's addresses.
    fn on_change(&self, network: &Network, ip: Ipv4Addr, revision: u64, lease: Option<Lease>) {
        match lease {
            Some(l) if l.is_mine(&self.engine.me) => {
                self.remote_mut().remove(&ip);
            }
            Some(l) => {
                let newer = self.held().get(&ip).is_some_and(|h| h.revision < revision);
                if newer {
                    self.lost(network, ip, &l.holder);
                }
                debug!("cluster: vip={ip} held by instance {}", l.holder);
                self.remote_mut().insert(ip, Remote { lease: l, revision });
            }
            None => {
                self.remote_mut().remove(&ip);
            }
        }
    }

    fn stop(&self) {
        for (_, task) in self.subs().drain() {
            task.abort();
        }
    }
}

fn unavailable(counters: &ServerCounters, why: impl std::fmt::Display) -> LeaseError {
    ServerCounters::inc(&counters.cluster_unavailable);
    LeaseError::Unavailable(why.to_string())
}

/// Counts what became of a frame that came in over NATS.
fn deliver_in(network: &Network, d: Delivery) {
    let c = &network.counters;
    match d {
        Delivery::Sent => ServerCounters::inc(&c.cluster_frames_in),
        Delivery::QueueFull | Delivery::Dropped => ServerCounters::inc(&c.cluster_in_queue_full),
        Delivery::NoRoute => ServerCounters::inc(&c.cluster_in_no_member),
        Delivery::Broadcast { sent, full } => {
            c.cluster_frames_in
                .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
            c.cluster_in_queue_full
                .fetch_add(full as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Opens the lease bucket, creating it if no instance has yet.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(Ok(kv)) = timeout(OP_TIMEOUT, js.get_key_value(BUCKET)).await {
        return Ok(kv);
    }
    // The stream a key-value bucket is, made directly: the crate's own
    // bucket creation first reads account details that NATS 2.9 (Debian
    // 12's) answers without fields the crate requires.
    let config = stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("ringlink address leases".into()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1024,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let created = match timeout(OP_TIMEOUT * 2, js.create_stream(config)).await {
        Ok(Ok(_)) => None,
        // Another instance may have created it at the same moment.
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".to_string()),
    };
    match timeout(OP_TIMEOUT, js.get_key_value(BUCKET)).await {
        Ok(Ok(kv)) => Ok(kv),
        Ok(Err(e)) => Err(format!(
            "cannot open lease bucket {BUCKET}: {e} (creating it: {})",
            created.as_deref().unwrap_or("done")
        )),
        Err(_) => Err(format!("opening lease bucket {BUCKET}: timed out")),
    }
}

/// Frames towards NATS, in order. While NATS is away the client's own
/// queue fills, this task waits, and `Engine::queue` drops and counts.
async fn publisher(engine: Arc<Engine>, mut rx: mpsc::Receiver<(Subject, Bytes)>) {
    while let Some((subject, payload)) = rx.recv().await {
        if let Err(e) = engine.client.publish(subject, payload).await {
            ServerCounters::inc(&engine.counters.cluster_out_dropped);
            debug!("cluster: publish failed: {e}");
        }
    }
}

/// Renews every lease held here, a third of the lease time apart, and lets
/// go of those no session here holds any more.
async fn renewer(
    engine: Arc<Engine>,
    networks: Vec<Arc<Network>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(engine.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let connected = engine.client.connection_state() == State::Connected;
        connected_since = match (connected, connected_since) {
            (false, _) => None,
            (true, since) => since.or_else(|| Some(tokio::time::Instant::now())),
        };
        // After an outage every lease in the bucket looks long expired,
        // those of live instances too: their holders get one lease time of
        // NATS to renew before anyone calls them dead.
        let may_judge = connected_since.is_some_and(|t| t.elapsed() >= engine.ttl);
        for n in &networks {
            let Some(c) = &n.cluster else { continue };
            if !connected {
                // Each would only wait out its timeout; the leases stay
                // ours until they expire, and the next round renews them.
                let held = c.held().len() as u64;
                engine
                    .counters
                    .cluster_renew_failed
                    .fetch_add(held, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let stale: Vec<(Ipv4Addr, u64)> = {
                let pool = n.lock_pool();
                let mut held = c.held();
                let gone: Vec<Ipv4Addr> = held
                    .keys()
                    .copied()
                    .filter(|ip| !pool.is_held(*ip))
                    .collect();
                gone.into_iter()
                    .filter_map(|ip| held.remove(&ip).map(|h| (ip, h.revision)))
                    .collect()
            };
            for (ip, revision) in stale {
                c.delete(ip, revision);
            }
            let ips: Vec<Ipv4Addr> = c.held().keys().copied().collect();
            futures_util::stream::iter(ips)
                .for_each_concurrent(RENEW_CONCURRENCY, |ip| renew_one(n, ip))
                .await;
            // Leases of instances that died and whose clients never came
            // back: long expired, they go (whichever instance's delete
            // lands first; the others expect a revision that is gone).
            if !may_judge {
                continue;
            }
            let now = lease::now_ms();
            let ttl_ms = engine.ttl.as_millis() as u64;
            let dead: Vec<(Ipv4Addr, u64)> = c
                .remote()
                .iter()
                .filter(|(_, r)| r.lease.is_expired(&engine.me, now.saturating_sub(ttl_ms)))
                .map(|(ip, r)| (*ip, r.revision))
                .collect();
            for (ip, revision) in dead {
                c.delete(ip, revision);
            }
        }
    }
}

/// Pushes one lease's expiry forward, with what this instance knows of it.
async fn renew_one(network: &Network, ip: Ipv4Addr) {
    let Some(c) = &network.cluster else { return };
    let e = &c.engine;
    let Some(h) = c.held().get(&ip).copied() else {
        return;
    };
    let key = lease::key(&c.name, ip);
    let value = Lease::new(
        &e.me,
        h.vmac,
        h.auth_ts,
        lease::now_ms() + e.ttl.as_millis() as u64,
    );
    match timeout(
        OP_TIMEOUT,
        e.kv.update(key.as_str(), value.encode().into(), h.revision),
    )
    .await
    {
        Ok(Ok(rev)) => {
            if let Some(cur) = c.held().get_mut(&ip) {
                cur.revision = cur.revision.max(rev);
            }
        }
        Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => {
            // Either a write of ours overtook this one, or someone took it.
            // A read may come from a replica that lags: only a revision
            // newer than ours says who has it now.
            match timeout(OP_TIMEOUT, e.kv.entry(key.clone())).await {
                Ok(Ok(Some(en))) if en.revision > h.revision => {
                    match (en.operation, Lease::decode(&en.value)) {
                        (Operation::Put, Some(l)) if l.is_mine(&e.me) => {
                            if let Some(cur) = c.held().get_mut(&ip) {
                                cur.revision = cur.revision.max(en.revision);
                            }
                        }
                        (Operation::Put, Some(l)) => c.lost(network, ip, &l.holder),
                        // Deleted, not taken: another instance judged this
                        // one dead. The session is here, so the address is
                        // written back, unless someone takes it meanwhile.
                        _ => rewrite(c, ip, &key, value, en.revision).await,
                    }
                }
                // The bucket forgot it (its storage was wiped): written
                // again, if nobody has meanwhile.
                Ok(Ok(None)) => rewrite(c, ip, &key, value, 0).await,
                _ => ServerCounters::inc(&e.counters.cluster_renew_failed),
            }
        }
        Ok(Err(err)) => {
            ServerCounters::inc(&e.counters.cluster_renew_failed);
            debug!("cluster: renewing {key}: {err}");
        }
        Err(_) => ServerCounters::inc(&e.counters.cluster_renew_failed),
    }
}

/// Writes a lease held here back over a deleted or forgotten key, expecting
/// `revision` (0: no key at all).
async fn rewrite(c: &Net, ip: Ipv4Addr, key: &str, value: Lease, revision: u64) {
    let e = &c.engine;
    match timeout(
        OP_TIMEOUT,
        e.kv.update(key, value.encode().into(), revision),
    )
    .await
    {
        Ok(Ok(rev)) => {
            info!("cluster: vip={ip}: its lease was gone from the bucket; written back");
            if let Some(cur) = c.held().get_mut(&ip) {
                cur.revision = rev;
            }
        }
        _ => ServerCounters::inc(&e.counters.cluster_renew_failed),
    }
}

/// Follows the bucket: every lease as it is now, then every change. A
/// watch that fails (NATS away) is started again, from the current state,
/// and so is one that outlived a reconnection: the client library would
/// recreate its consumer itself, but after a lost JetStream leader its
/// retries back off to 10 s apart, and meanwhile no lease taken elsewhere
/// is seen here (so frames towards those members are dropped).
///
/// What was seen before stays while a new watch starts: the bucket keeps
/// each key's last operation, deletions included, so the new watch's
/// replay corrects every entry that changed meanwhile. Forgetting them
/// instead would drop every frame towards other instances until the
/// replay arrives, which after a restart of the whole NATS cluster is as
/// long as JetStream takes to elect its leaders.
async fn watcher(
    engine: Arc<Engine>,
    networks: Vec<Arc<Network>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let by_name: HashMap<String, Arc<Network>> =
        networks.into_iter().map(|n| (n.name.clone(), n)).collect();
    let mut connections = engine.connections.subscribe();
    let mut failed_since: Option<tokio::time::Instant> = None;
    loop {
        match engine.kv.watch_with_history(">").await {
            Ok(mut w) => {
                // This watch is newer than any connection so far.
                connections.borrow_and_update();
                if let Some(t) = failed_since.take() {
                    info!(
                        "cluster: watching the lease bucket again ({} s after the first failed try)",
                        t.elapsed().as_secs()
                    );
                }
                loop {
                    let next = tokio::select! {
                        _ = shutdown.changed() => return,
                        Ok(()) = connections.changed() => {
                            info!("cluster: reconnected to NATS; watching the lease bucket afresh");
                            break;
                        }
                        n = w.next() => n,
                    };
                    let entry = match next {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            warn!("cluster: lease watch failed: {e}; restarting it");
                            break;
                        }
                        None => break,
                    };
                    let Some((net, ip)) = lease::parse_key(&entry.key) else {
                        continue;
                    };
                    let Some(n) = by_name.get(net) else { continue };
                    let Some(c) = &n.cluster else { continue };
                    let lease = match entry.operation {
                        Operation::Put => Lease::decode(&entry.value),
                        Operation::Delete | Operation::Purge => None,
                    };
                    c.on_change(n, ip, entry.revision, lease);
                }
            }
            Err(e) => {
                failed_since.get_or_insert_with(tokio::time::Instant::now);
                warn!("cluster: cannot watch the lease bucket: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What this instance last heard from another one.
struct Heard {
    /// Sections that differ from ours (empty: all match).
    differing: Vec<String>,
    at: tokio::time::Instant,
}

/// Announces this instance's configuration digest and compares the others'
/// with it: a difference is logged as an error naming both instances and
/// the sections, once per change, and counted in the mismatch gauge until
/// it is gone (or the other instance is).
async fn config_check(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let subject = Subject::from(CONFIG_SUBJECT);
    let mut sub = match engine.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            warn!("cluster: cannot subscribe to {subject}: {e}; configurations are not compared");
            return;
        }
    };
    let mut tick = tokio::time::interval(CONFIG_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connections = engine.connections.subscribe();
    let mut ours = engine.config.subscribe();
    let mut heard: HashMap<String, Heard> = HashMap::new();
    loop {
        let announce = tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => true,
            Ok(()) = ours.changed() => {
                // Compared again against the new digest as each instance
                // is next heard.
                heard.clear();
                true
            }
            Ok(()) = connections.changed() => true,
            msg = sub.next() => match msg {
                Some(m) => engine.heard(&m.payload, &ours.borrow(), &mut heard),
                None => return,
            },
        };
        let now = tokio::time::Instant::now();
        heard.retain(|name, h| {
            let live = now.duration_since(h.at) < CONFIG_FORGET;
            if !live && !h.differing.is_empty() {
                info!(
                    "cluster: instance {name} not heard for {} s; no longer compared",
                    CONFIG_FORGET.as_secs()
                );
            }
            live
        });
        engine.config_mismatch.store(
            heard.values().filter(|h| !h.differing.is_empty()).count() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if announce {
            let a = digest::Announcement {
                instance: engine.me.name.clone(),
                incarnation: engine.me.incarnation,
                sections: ours.borrow_and_update().clone(),
            };
            if let Err(e) = engine
                .client
                .publish(subject.clone(), a.encode().into())
                .await
            {
                debug!("cluster: announcing the configuration digest: {e}");
            }
        }
    }
}

impl Engine {
    /// Another instance's announcement; true when it is new to us (it
    /// started, or came back): it hears ours at once rather than in up to
    /// a period.
    fn heard(
        &self,
        payload: &[u8],
        ours: &digest::Sections,
        heard: &mut HashMap<String, Heard>,
    ) -> bool {
        let Some(a) = digest::Announcement::decode(payload) else {
            debug!("cluster: unreadable configuration announcement");
            return false;
        };
        if a.instance == self.me.name {
            if a.incarnation != self.me.incarnation {
                error!(
                    "cluster: another live instance is also named {}: every instance needs its own [cluster] name",
                    a.instance
                );
            }
            return false;
        }
        let differing = digest::differing(ours, &a.sections);
        let before = heard.insert(
            a.instance.clone(),
            Heard {
                differing: differing.clone(),
                at: tokio::time::Instant::now(),
            },
        );
        let was = before.as_ref().map(|h| h.differing.as_slice());
        if was != Some(differing.as_slice()) {
            if !differing.is_empty() {
                let detail: Vec<String> = differing
                    .iter()
                    .map(|k| match (k.as_str(), ours.get(k), a.sections.get(k)) {
                        ("networks", Some(here), Some(there)) => {
                            format!("networks (here: {here}; there: {there})")
                        }
                        _ => k.clone(),
                    })
                    .collect();
                error!(
                    "cluster: configuration of instance {} differs from this instance {} in: {}; every instance must serve the same networks, passwords, pools and routes",
                    a.instance,
                    self.me.name,
                    detail.join(", ")
                );
            } else if was.is_some_and(|w| !w.is_empty()) {
                info!(
                    "cluster: configuration of instance {} matches this instance {} again",
                    a.instance, self.me.name
                );
            }
        }
        before.is_none()
    }
}

/// Broadcasts from other instances, to every member of this network here.
async fn broadcasts(network: Arc<Network>) {
    let Some(c) = &network.cluster else { return };
    let subject = c.broadcast_subject();
    let mut sub = match c.engine.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            warn!("cluster: cannot subscribe to {subject}: {e}");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some((from, frame)) = msg.payload.split_first_chunk::<4>() else {
            continue;
        };
        let from = Ipv4Addr::from(*from);
        deliver_in(&network, network.relay.broadcast(from, frame));
    }
}

/// Deletes one lease, expecting `revision`: a lease someone took since is
/// theirs. True when it is gone.
async fn delete_lease(kv: &kv::Store, key: &str, revision: u64) -> bool {
    match timeout(OP_TIMEOUT, kv.delete_expect_revision(key, Some(revision))).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!("cluster: lease {key} not deleted: {e}");
            false
        }
        Err(_) => {
            debug!("cluster: lease {key} not deleted: timed out");
            false
        }
    }
}

/// How long a stopping instance spends handing its leases back.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(2);

/// Stops what `Engine::spawn` and `Net::bound` started, then lets go of
/// every lease this instance still holds (and waits for deletes already
/// under way), within [`RELEASE_DEADLINE`]: other instances may hand the
/// addresses out at once instead of after `lease_seconds`. Whatever is not
/// deleted by then (NATS away) expires as if the instance had died.
pub async fn stop(networks: &[Arc<Network>], tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        t.abort();
    }
    let mut engine = None;
    let mut leases = Vec::new();
    for n in networks {
        if let Some(c) = &n.cluster {
            c.stop();
            engine.get_or_insert_with(|| c.engine.clone());
            leases.extend(
                c.held()
                    .drain()
                    .map(|(ip, h)| (lease::key(&c.name, ip), h.revision)),
            );
        }
    }
    let Some(engine) = engine else { return };
    let held = leases.len();
    let release = async {
        let deleted = futures_util::stream::iter(leases)
            .map(|(key, revision)| {
                let kv = engine.kv.clone();
                async move { delete_lease(&kv, &key, revision).await }
            })
            .buffer_unordered(RENEW_CONCURRENCY)
            .fold(0, |n, gone| async move { n + usize::from(gone) })
            .await;
        let mut under_way = engine.deleting.subscribe();
        let _ = under_way.wait_for(|n| *n == 0).await;
        deleted
    };
    match timeout(RELEASE_DEADLINE, release).await {
        Ok(deleted) => info!(
            "cluster: released {deleted} of {held} leases held at shutdown{}",
            if deleted < held {
                " (the others had moved on or could not be deleted; they expire)"
            } else {
                ""
            }
        ),
        Err(_) => warn!(
            "cluster: not every lease released within {} s; the rest expire {} s after their last renewal",
            RELEASE_DEADLINE.as_secs(),
            engine.ttl.as_secs()
        ),
    }
}
