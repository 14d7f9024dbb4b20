//! The coordination server, `ringlink server`: WebSocket sessions with
//! Candy's authentication, an address pool that never hands out an address
//! in use, the relay, subnet-route push and an embedded STUN responder.
//!
//! `run` serves until the future is dropped; tests and embedders use
//! [`Server::bind_with`] to learn the bound addresses and stop it with a
//! [`ShutdownHandle`].

mod auth;
mod cluster;
mod counters;
mod error;
mod guard;
mod listener;
mod network;
mod pool;
mod relay;
mod request;
mod routes;
mod session;
mod status;
mod stun;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{NetworkConfig, PushedRoute, ServerConfig, DEFAULT_NETWORK};
use crate::metrics::http::{Endpoint, Render};
use crate::reload::{apply_log, apply_metrics, Apply, Hangups, LogControl, Reload, Report};
use crate::status_socket;
use crate::sys::service_manager;

use network::Network;

pub use counters::{ServerCounterSnapshot, ServerCounters};
pub use error::{CloseReason, ServerError};
pub use status::{render as render_status, MemberLine, NetworkLine, ServerStatus, TrafficSnapshot};

/// Timeouts and queue sizes; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// From TCP accept to a successful AUTH (handshakes included).
    pub auth_timeout: Duration,
    /// After AUTH: close when no frame at all arrives for this long. Stock
    /// clients ping after 15 s of silence, Cacao closes after 60 s.
    pub idle_timeout: Duration,
    /// Frames queued towards one client before further ones are dropped.
    pub send_queue: usize,
    /// Close a client whose socket accepts nothing for this long.
    pub write_stall: Duration,
    /// Allowed |server clock − message timestamp|, in seconds.
    pub timestamp_window: i64,
    /// How many vmac → last address pairs the pool remembers.
    pub remembered_vmacs: usize,
    /// How many used AUTH hashes are remembered (each for the timestamp
    /// window), to refuse a replayed login.
    pub seen_auths: usize,
    /// How often a ringlink client gets fresh TURN credentials; `None` is
    /// half of `turn.ttl`, so a client always holds ones valid for at
    /// least that long.
    pub turn_renew: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            send_queue: 512,
            write_stall: Duration::from_secs(30),
            timestamp_window: auth::TIMESTAMP_WINDOW,
            remembered_vmacs: 16384,
            seen_auths: 65536,
            turn_renew: None,
        }
    }
}

/// State shared by every task of one server.
pub(crate) struct Shared {
    /// The networks served; a connection picks one by its URL path.
    networks: Vec<Arc<Network>>,
    /// With `[cluster]`: the NATS connection the networks share.
    cluster: Option<Arc<cluster::Engine>>,
    /// This process, as `ringlink status --server` names it: the cluster
    /// name with `[cluster]`, else the host name.
    instance: String,
    /// `ws://` or `wss://` and the bound address.
    listen_url: String,
    max_clients: usize,
    /// One permit per member (authenticated session).
    members: Arc<Semaphore>,
    /// Connections that have not logged in, counted apart from members.
    admission: Arc<guard::Admission>,
    seen_auths: Mutex<guard::SeenAuths>,
    rates: Rates,
    counters: Arc<ServerCounters>,
    tuning: Tuning,
    next_id: AtomicU64,
    /// `turn`: where ringlink clients are sent, and the secret their
    /// credentials are minted with.
    turn: Option<crate::config::TurnSecret>,
}

impl Shared {
    fn new_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The network a WebSocket request for `path` joins: the `[[network]]`
    /// with that path, else the default one, which answers any path as
    /// Candy's server does; None when there is no default network.
    fn network_for(&self, path: &str) -> Option<Arc<Network>> {
        let path = crate::config::normalize_path(path);
        let nets = &self.networks;
        nets.iter()
            .find(|n| n.name != DEFAULT_NETWORK && n.path == path)
            .or_else(|| nets.iter().find(|n| n.name == DEFAULT_NETWORK))
            .cloned()
    }

    // One insert or a few removals at a time: consistent after a panic.
    fn lock_seen_auths(&self) -> MutexGuard<'_, guard::SeenAuths> {
        self.seen_auths.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-member frame rates (frames per second, burst).
#[derive(Debug, Clone, Copy)]
struct Rates {
    broadcast: (u32, u32),
    general: (u32, u32),
}

/// Stops a running [`Server`]: the listener and STUN responder stop and
/// every session is closed with "server shutting down".
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// A bound, not yet running server.
pub struct Server {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    stun: Option<stun::Responder>,
    live: Arc<tokio::sync::Mutex<Live>>,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: ShutdownHandle,
    permits: u32,
}

impl Server {
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_with(cfg, Tuning::default()).await
    }

    /// Binds the WebSocket listener and (if configured) the STUN socket,
    /// and loads TLS files. Port 0 binds an ephemeral port; see
    /// [`Server::local_addr`] and [`Server::stun_addr`].
    pub async fn bind_with(cfg: ServerConfig, tuning: Tuning) -> Result<Self, ServerError> {
        let tls = cfg.tls.as_ref().map(listener::load_tls).transpose()?;
        let tcp = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let stun = match cfg.stun {
            None => None,
            Some(addr) => {
                Some(stun::Responder::bind(addr, cfg.stun_alt_port, cfg.stun_alt_address).await?)
            }
        };
        // acquire_many takes a u32; more connections than that is not a
        // limit anyone means.
        let permits = u32::try_from(cfg.max_clients).unwrap_or(u32::MAX).max(1);
        let counters = Arc::new(ServerCounters::default());
        let (tx, _) = watch::channel(false);
        let engine = cluster::Engine::connect(&cfg, counters.clone(), tx.subscribe()).await?;
        let default = match (&cfg.password, cfg.pool) {
            (Some(password), Some(pool)) => Some(NetworkConfig {
                name: DEFAULT_NETWORK.into(),
                path: "/".into(),
                password: password.clone(),
                pool,
                routes: cfg.routes.clone(),
            }),
            _ => None,
        };
        let networks = default
            .iter()
            .chain(&cfg.networks)
            .map(|n| {
                Arc::new(Network::new(
                    n,
                    tuning.remembered_vmacs,
                    counters.clone(),
                    engine.as_ref().map(|e| e.network(&n.name)),
                ))
            })
            .collect::<Vec<_>>();
        let mut metrics = Endpoint::new(
            "server",
            metrics_render(&counters, &networks, engine.as_ref()),
        );
        metrics.rebind(cfg.metrics).await;
        let shared = Arc::new(Shared {
            networks,
            instance: engine
                .as_ref()
                .map_or_else(status::instance_name, |e| e.name().to_string()),
            cluster: engine,
            listen_url: format!(
                "{}://{local_addr}",
                if tls.is_some() { "wss" } else { "ws" }
            ),
            max_clients: permits as usize,
            members: Arc::new(Semaphore::new(permits as usize)),
            admission: guard::Admission::new(guard::AdmissionLimits {
                max: cfg.max_unauthenticated,
                per_ip: cfg.max_unauthenticated_per_ip,
            }),
            seen_auths: Mutex::new(guard::SeenAuths::new(tuning.seen_auths)),
            rates: Rates {
                broadcast: (cfg.broadcast_rate, cfg.broadcast_burst),
                general: (cfg.general_rate, cfg.general_burst),
            },
            counters,
            tuning,
            next_id: AtomicU64::new(1),
            turn: cfg.turn.clone(),
        });
        Ok(Self {
            tcp,
            tls,
            stun,
            live: Arc::new(tokio::sync::Mutex::new(Live {
                running: cfg,
                metrics,
            })),
            local_addr,
            shared,
            shutdown: ShutdownHandle { tx: Arc::new(tx) },
            permits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The STUN responder's primary endpoint (the one Candy clients use).
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun
            .as_ref()
            .map(|s| s.layout().addr(stun::Role::default()))
    }

    /// Every endpoint the STUN responder answers on: primary first, then
    /// the alternate port, then (with a second address) both ports there.
    pub fn stun_addrs(&self) -> Vec<SocketAddr> {
        self.stun.as_ref().map_or_else(Vec::new, |s| {
            let l = s.layout();
            l.roles().into_iter().map(|r| l.addr(r)).collect()
        })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.live.try_lock().ok().and_then(|l| l.metrics.addr())
    }

    /// Status and reloads, from other tasks while it runs.
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
            live: self.live.clone(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Live counters; they stay readable after the server stops.
    pub fn counters(&self) -> Arc<ServerCounters> {
        self.shared.counters.clone()
    }

    /// Serves until [`ShutdownHandle::shutdown`], then waits (briefly) for
    /// sessions to close.
    pub async fn run(self) -> Result<(), ServerError> {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        info!(
            "server listening on {scheme}://{} max_clients={} {}",
            self.local_addr,
            self.shared.max_clients,
            self.shared.admission.describe(),
        );
        for n in &self.shared.networks {
            info!(
                "network {} path={} pool={} routes={}",
                n.name,
                if n.name == DEFAULT_NETWORK {
                    "(any other)"
                } else {
                    &n.path
                },
                n.pool_net,
                n.routes.load().len()
            );
        }
        let cluster_tasks = self.shared.cluster.as_ref().map_or_else(Vec::new, |e| {
            e.spawn(self.shared.networks.clone(), self.shutdown.tx.subscribe())
        });
        let stun_addrs = self.stun_addrs();
        let stun_task = self.stun.map(|responder| {
            info!("STUN responder listening on udp {stun_addrs:?}");
            tokio::spawn(
                responder.serve(self.shared.counters.clone(), self.shutdown.tx.subscribe()),
            )
        });
        if stun_task.is_none() {
            info!("STUN responder disabled");
        }
        listener::accept_loop(
            self.tcp,
            self.tls,
            self.shared.clone(),
            self.shutdown.tx.subscribe(),
        )
        .await;
        // Every member holds a permit until it has said goodbye.
        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            self.shared.members.acquire_many(self.permits),
        )
        .await;
        if drained.is_err() {
            warn!("some sessions were still closing at shutdown");
        }
        if let Some(t) = stun_task {
            let _ = t.await;
        }
        self.live.lock().await.metrics.rebind(None).await;
        cluster::stop(&self.shared.networks, cluster_tasks).await;
        info!("server stopped");
        Ok(())
    }
}

/// What a reload may change while the server runs: the configuration it
/// runs with (live keys follow reloads) and the `/metrics` endpoint.
struct Live {
    running: ServerConfig,
    metrics: Endpoint,
}

/// A running server's status and reloads.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    live: Arc<tokio::sync::Mutex<Live>>,
}

impl Control {
    /// The members of every network now, for `ringlink status --server`.
    /// With `[cluster]` these are the members this instance holds; each
    /// instance answers for its own.
    pub fn status(&self) -> ServerStatus {
        let sh = &self.shared;
        let mut networks = Vec::new();
        let mut members = Vec::new();
        for n in &sh.networks {
            let held = n.relay.members();
            networks.push(NetworkLine {
                name: n.name.clone(),
                path: n.path.clone(),
                pool: n.pool_net.to_string(),
                members: held.len(),
            });
            members.extend(held.into_iter().map(|(vip, e)| MemberLine {
                vip: vip.to_string(),
                network: n.name.clone(),
                vmac: e.vmac.map(|v| auth::vmac_display(Some(v))),
                instance: sh.instance.clone(),
                remote: e.remote.to_string(),
                connected_since: status::unix_secs(e.since),
                traffic: e.traffic.snapshot(),
            }));
        }
        ServerStatus {
            instance: sh.instance.clone(),
            listen: sh.listen_url.clone(),
            networks,
            members,
            counters: sh.counters.snapshot(),
        }
    }

    /// Applies what `new` changes that can change without a restart (see
    /// [`crate::reload::server_plan`]) and says what it did.
    pub async fn reload(&self, mut new: ServerConfig, log: &LogControl) -> Report {
        let mut live = self.live.lock().await;
        let Live { running, metrics } = &mut *live;
        new.log = log.effective(&new.log);
        let plan = crate::reload::server_plan(running, &new);
        let mut report = Report {
            restart: plan.restart,
            ..Report::default()
        };
        for change in plan.apply {
            report.applied.push(match change {
                Apply::Log(filter) => apply_log(log, &filter, &mut running.log),
                Apply::Metrics(addr) => apply_metrics(metrics, addr, &mut running.metrics).await,
                Apply::Routes {
                    ref network,
                    ref added,
                    ..
                } => self.apply_routes(running, &new, network, added, &change),
                // Server files have no such keys; server_plan never plans them.
                Apply::MetricsPerPeer(_) | Apply::Peers(_) => continue,
            });
        }
        if let Some(e) = &self.shared.cluster {
            e.set_config(running);
        }
        report
    }

    /// Carries out [`Apply::Routes`] for `network`: its routes become
    /// `new`'s, and the added ones go to the members they cover.
    fn apply_routes(
        &self,
        running: &mut ServerConfig,
        new: &ServerConfig,
        network: &str,
        added: &[PushedRoute],
        change: &Apply,
    ) -> String {
        // server_plan plans routes only for a network in both files, and
        // the running file's networks are the ones served.
        let served = self.shared.networks.iter().find(|n| n.name == network);
        let (Some(net), Some(routes), Some(now)) = (
            served,
            new.routes_of(network),
            running.routes_of_mut(network),
        ) else {
            return format!("{change} not applied (network {network} is not served)");
        };
        net.routes.store(Arc::new(routes.clone()));
        now.clone_from(routes);
        let reached = push_routes(net, &self.shared.counters, added);
        if added.is_empty() {
            change.to_string()
        } else {
            format!("{change} (sent to {reached} members)")
        }
    }
}

/// Sends `added` to every member of `net` it covers, as the login push
/// does; returns how many members got at least one route.
fn push_routes(net: &Network, counters: &ServerCounters, added: &[PushedRoute]) -> usize {
    let mut reached = 0;
    for (vip, entry) in net.relay.members() {
        let frames = routes::route_frames(added, vip);
        if frames.is_empty() {
            continue;
        }
        reached += 1;
        for f in frames {
            if entry.tx.try_send(f).is_ok() {
                ServerCounters::inc(&counters.routes_pushed);
            } else {
                ServerCounters::inc(&counters.queue_full);
            }
        }
    }
    reached
}

/// What `/metrics` serves: every counter, and with `[cluster]` the members
/// each instance holds, per network, and the configuration mismatches.
fn metrics_render(
    counters: &Arc<ServerCounters>,
    networks: &[Arc<Network>],
    engine: Option<&Arc<cluster::Engine>>,
) -> Render {
    let counters = counters.clone();
    let Some(engine) = engine.cloned() else {
        return Arc::new(move || crate::metrics::server_text(&counters.snapshot()));
    };
    let networks = networks.to_vec();
    Arc::new(move || {
        let members: Vec<(String, String, u64)> = networks
            .iter()
            .filter_map(|n| n.cluster.as_ref().map(|c| (n, c)))
            .flat_map(|(n, c)| {
                c.members_by_instance(n.relay.len())
                    .into_iter()
                    .map(|(instance, count)| (n.name.clone(), instance, count))
            })
            .collect();
        let gauges = crate::metrics::ClusterGauges {
            members,
            config_mismatch: engine.config_mismatches(),
        };
        crate::metrics::server_text_cluster(&counters.snapshot(), &gauges)
    })
}

/// Removes the control socket when the server stops, however it stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the server described by `cfg` until `stop` resolves (the CLI's
/// SIGINT or SIGTERM) or a fatal error: its control socket for `ringlink
/// status --server`, and a reload of `reload.path` on SIGHUP. On `stop` it
/// shuts down as [`ShutdownHandle::shutdown`] does: sessions are told, and
/// a cluster instance hands its address leases back (waiting 2 s at most).
pub async fn run(
    cfg: ServerConfig,
    reload: Reload,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // First, so a SIGHUP from here on reloads instead of ending the process.
    let mut hangups = Hangups::new();
    let server = Server::bind(cfg.clone()).await?;
    let control = server.control();
    let _socket_file = SocketFile(cfg.control_socket.clone());
    let socket = match status_socket::bind(&cfg.control_socket) {
        Ok(listener) => Some(tokio::spawn({
            let control = control.clone();
            status_socket::serve(listener, move || control.status())
        })),
        Err(e) => {
            warn!(
                "cannot serve `ringlink status --server` on {}: {e}",
                cfg.control_socket.display()
            );
            None
        }
    };
    let listening = format!("listening on {}", server.local_addr());
    service_manager::ready(&listening);
    let reloads = tokio::spawn(async move {
        loop {
            hangups.recv().await;
            service_manager::reloading();
            if let Some(new) = reload.reread(ServerConfig::load) {
                control.reload(new, &reload.log).await.log();
            }
            service_manager::reloaded(&format!("{listening}; configuration reloaded"));
        }
    });
    let shutdown = server.shutdown_handle();
    let stopper = tokio::spawn(async move {
        stop.await;
        info!("server: shutting down (signal)");
        shutdown.shutdown();
    });
    let result = server.run().await;
    stopper.abort();
    reloads.abort();
    if let Some(t) = socket {
        t.abort();
    }
    result
}
