//! The client's control thread: the link to the server (its own task), the
//! TUN interface created on the first login and kept across reconnects, and
//! the loop that moves relay traffic and drives the peer logic.

mod backoff;
mod driver;
mod error;
mod iface;
pub mod nat_run;
pub mod node;
pub mod publish;
mod punch;
pub mod relay_rx;
pub mod secure;
pub mod server_clock;
mod server_link;
pub mod status;
mod stream;
pub mod tcp_path;
mod tls;
#[cfg(test)]
mod traversal_tests;
pub mod turn;
pub mod turn_link;
pub mod turn_path;
pub mod turn_stream;
mod ws_client;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::ClientConfig;
use crate::dataplane::Upcall;
use crate::metrics::{self, http::Endpoint};
use crate::peer::{PeerConfig, Timers};
use crate::proto::Ipv4Cidr;
use crate::reload::{apply_log, apply_metrics, Apply, Hangups, Reload, Report};
use crate::route::RouteConfig;
use crate::session::{keys, pins, timers::HandshakeTimers};
use crate::status_socket;
use crate::sys::ifaddr::first_lan_ipv4;
use crate::sys::service_manager;
use driver::NodeDriver;
pub use error::{
    ClientError, ConnectError, IdentityError, InterfaceError, LinkLost, Refusal, TlsError,
};
use iface::Interface;
use node::{Node, NodeConfig};
use server_link::{Link, LinkCounters, LinkEvent, RelaySink};
use status::{update, SharedStatus, Status};

/// Packets waiting for the WebSocket. Kept short on purpose: anything
/// queued here is latency for every flow through the relay (512 full-size
/// packets are about 6 ms at 1 Gbit/s).
const RELAY_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// A random VMAC in Candy's form (16 lowercase hex characters), fixed for
/// the life of the process so reconnects keep their address.
fn new_vmac() -> [u8; 16] {
    let raw: [u8; 8] = rand::random();
    let mut out = [0u8; 16];
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        out[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
    }
    out
}

/// The peer logic for a node that has just got its address and interface.
async fn new_node(
    cfg: &ClientConfig,
    own: Ipv4Cidr,
    iface: &Interface,
    identity: secure::Identity,
    helpers: driver::Helpers,
    now: Instant,
) -> Result<(NodeDriver, Option<NatProbe>, Option<JoinHandle<()>>), ClientError> {
    let udp = iface.udp_sender().ok_or(InterfaceError::NoUdpSocket)?;
    let port = iface.udp_port().unwrap_or(0);
    // Reachable by anyone: direct TCP too, on the data port's number, for
    // peers whose networks drop UDP (docs/tcp.md).
    let mut listener = None;
    if let Some(public) = cfg.public_endpoint {
        match tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await {
            Ok(l) => {
                info!(port, %public, "accepting direct TCP streams");
                listener = Some((public, l));
            }
            Err(e) => {
                warn!(port, error = %e, "cannot listen for direct TCP streams; not offering them")
            }
        }
    }
    let tcp_offer = listener.as_ref().map(|(public, _)| *public);
    let accept = listener
        .map(|(_, l)| tokio::task::spawn_local(driver::accept_streams(l, helpers.streams.clone())));
    let stun = match &cfg.stun {
        None => None,
        Some(s) => {
            let resolved = tokio::net::lookup_host((s.host.as_str(), s.port))
                .await
                .ok()
                .and_then(|mut addrs| {
                    addrs.find_map(|a| match a {
                        SocketAddr::V4(v4) => Some(v4),
                        SocketAddr::V6(_) => None,
                    })
                });
            if resolved.is_none() {
                warn!(host = %s.host, "cannot resolve the STUN server; direct paths are off");
            }
            resolved
        }
    };
    let lan = cfg
        .lan_address
        .or_else(|| first_lan_ipv4(&cfg.tun))
        .map(|ip| SocketAddrV4::new(ip, port));
    let mut peer = PeerConfig::new(own.addr);
    peer.p2p = stun.is_some();
    peer.stun = stun.is_some();
    peer.discovery_ticks = cfg.discovery;
    peer.lan_candidate = lan;
    peer.timers = scaled_timers(cfg.test_time_divisor);
    peer.eager = true;
    peer.seed = rand::random();
    peer.reachable = cfg.public_endpoint.is_some();
    let mut route = RouteConfig::new(own.addr);
    route.route_cost = cfg.route_cost;
    route.seed = rand::random();
    if cfg.test_time_divisor > 1 {
        let d = cfg.test_time_divisor;
        route.probe_interval /= d;
        route.holddown /= d;
        route.route_expiry /= d;
        route.refresh_interval = route.refresh_interval.map(|r| r / d);
    }
    info!(
        udp_port = port,
        stun = ?stun,
        lan = ?lan,
        route_cost = cfg.route_cost,
        "peer-to-peer {}",
        if stun.is_some() { "on" } else { "off (no stun key)" }
    );
    let node = Node::new(
        NodeConfig {
            own,
            password: cfg.password.as_bytes().to_vec(),
            cipher: cfg.cipher,
            stun,
            public_endpoint: cfg.public_endpoint,
            peer,
            route,
            seed: rand::random(),
            identity,
            turn: cfg.turn.clone(),
            tcp_offer,
        },
        now,
    )
    .map_err(InterfaceError::from)?;
    let probe = stun.map(|server| NatProbe {
        server,
        fixed_local: cfg.lan_address,
        tun: cfg.tun.clone(),
        every: NAT_EVERY / cfg.test_time_divisor.max(1),
    });
    Ok((
        NodeDriver::new(node, udp, iface.snapshot(), cfg.pins_file.clone(), helpers),
        probe,
        accept,
    ))
}

/// The node key (created on first start) and the pins (the client's
/// `peers`, then the pins file). Read before anything starts, so a key
/// file others can read, or a malformed one, stops the client at once.
fn load_identity(cfg: &ClientConfig) -> Result<secure::Identity, IdentityError> {
    let (key, origin) = keys::load_or_create(&cfg.key_file)?;
    let remembered = pins::load(&cfg.pins_file)?;
    let configured: Vec<_> = cfg.peers.iter().map(|p| (p.vip, p.key)).collect();
    info!(
        key = %key.public().to_base64(),
        fingerprint = %key.public(),
        file = %cfg.key_file.display(),
        pinned = configured.len() + remembered.len(),
        "node key {}",
        match origin {
            keys::KeyOrigin::Created => "created",
            keys::KeyOrigin::Loaded => "loaded",
        }
    );
    Ok(secure::Identity {
        key,
        pins: pins::PinStore::new(&configured, remembered),
        timers: HandshakeTimers::scaled(cfg.test_time_divisor),
        wall_clock: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    })
}

/// Where and how often this node classifies its NAT.
struct NatProbe {
    server: SocketAddrV4,
    /// `lan_address`, when configured; else the first LAN address, looked
    /// up again before every run.
    fixed_local: Option<Ipv4Addr>,
    tun: String,
    every: Duration,
}

impl NatProbe {
    fn local(&self) -> Ipv4Addr {
        self.fixed_local
            .or_else(|| first_lan_ipv4(&self.tun))
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// Re-classification period: a NAT's behaviour rarely changes, and each run
/// costs a handful of STUN transactions and router sessions.
const NAT_EVERY: Duration = Duration::from_secs(300);
/// Sockets per run: enough successive mappings to tell the port delta.
const NAT_SOCKETS: usize = 4;
/// How often the local address is looked at between runs: a new address
/// (DHCP, a moved uplink) usually means a new NAT, so it runs at once.
const NAT_ADDRESS_CHECK: Duration = Duration::from_secs(10);

/// Classifies the NAT now, then every `probe.every` and whenever the local
/// address changes, on sockets of its own (the NAT's behaviour is the
/// router's, not the socket's; the data socket's own mapping comes from the
/// peers' STUN exchange).
async fn classify_forever(probe: NatProbe, tx: mpsc::Sender<crate::nat::Outcome>) {
    loop {
        let local = probe.local();
        match nat_run::classify_over_udp(probe.server, local, NAT_SOCKETS, rand::random()).await {
            Ok(outcome) => {
                if tx.send(outcome).await.is_err() {
                    return;
                }
            }
            Err(e) => warn!(error = %e, "NAT classification could not run"),
        }
        let next_run = tokio::time::Instant::now() + probe.every;
        while tokio::time::Instant::now() < next_run {
            tokio::time::sleep_until(next_run.min(tokio::time::Instant::now() + NAT_ADDRESS_CHECK))
                .await;
            let now_local = probe.local();
            if now_local != local {
                info!(from = %local, to = %now_local, "local address changed; classifying the NAT again");
                break;
            }
        }
    }
}

/// Peer timers divided for tests (`test_time_divisor`); the tick never goes
/// below 50 ms so a test machine can keep up.
fn scaled_timers(divisor: u32) -> Timers {
    let t = Timers::default();
    if divisor <= 1 {
        return t;
    }
    let d = |x: Duration| x / divisor;
    Timers {
        tick: d(t.tick).max(Duration::from_millis(50)),
        preparing: d(t.preparing),
        synchronizing: d(t.synchronizing),
        connecting: d(t.connecting),
        connected_idle: d(t.connected_idle),
        retry_initial: d(t.retry_initial),
        retry_max: d(t.retry_max),
    }
}

/// SIGHUP: the file again, and what of it applies without touching the
/// interface, the workers or the server link (log filter, `/metrics`).
/// What a reload may change in the running client besides `running`.
struct Live<'a> {
    metrics: &'a mut Endpoint,
    status: &'a SharedStatus,
    /// Handed to the node when the interface comes up.
    identity: &'a mut secure::Identity,
    node: Option<&'a mut NodeDriver>,
}

async fn reload_client(reload: &Reload, running: &mut ClientConfig, live: Live<'_>) {
    let Live {
        metrics,
        status,
        identity,
        mut node,
    } = live;
    service_manager::reloading();
    if let Some(mut new) = reload.reread(ClientConfig::load) {
        new.log = reload.log.effective(&new.log);
        let plan = crate::reload::client_plan(running, &new);
        let mut report = Report {
            restart: plan.restart,
            ..Report::default()
        };
        for change in plan.apply {
            report.applied.push(match change {
                Apply::Log(filter) => apply_log(&reload.log, &filter, &mut running.log),
                Apply::Metrics(addr) => apply_metrics(metrics, addr, &mut running.metrics).await,
                Apply::MetricsPerPeer(on) => {
                    update(status, |s| s.metrics_per_peer = on);
                    running.metrics_per_peer = on;
                    change.to_string()
                }
                Apply::Peers(ref peers) => {
                    let pins: Vec<_> = peers.iter().map(|p| (p.vip, p.key)).collect();
                    identity.pins.set_configured(&pins);
                    let changed = match node.as_deref_mut() {
                        Some(n) => n.node.set_configured_pins(&pins, Instant::now()),
                        None => 0,
                    };
                    running.peers = peers.clone();
                    format!("{change} ({changed} changed)")
                }
                // A client's file has no routes; client_plan never plans this.
                Apply::Routes { .. } => continue,
            });
        }
        report.log();
    }
    service_manager::reloaded(&format!("{} up; configuration reloaded", running.tun));
}

/// Runs the client until `shutdown` resolves. Only local failures (TLS
/// setup, the interface) end it; everything about the server is retried.
/// SIGHUP re-reads `reload.path` (see [`crate::reload`]).
pub async fn run(
    cfg: ClientConfig,
    shutdown: impl Future<Output = ()>,
    reload: Reload,
) -> Result<(), ClientError> {
    // First, so a SIGHUP from here on reloads instead of ending the process.
    let mut hangups = Hangups::new();
    let mut identity = load_identity(&cfg)?;
    let tls = cfg.server_tls.as_ref().map(tls::connector).transpose()?;
    // Built now, so a bad tls_ca stops the client at start, not at its
    // first turns:// allocation.
    let turn_tls = tls::connector(&cfg.turn_tls)?;
    let status: SharedStatus = Arc::new(Mutex::new(Status {
        tun: cfg.tun.clone(),
        server: cfg.server.to_url(),
        metrics_per_peer: cfg.metrics_per_peer,
        ..Default::default()
    }));
    let status_task = match status_socket::bind(&cfg.control_socket) {
        Ok(listener) => Some(tokio::task::spawn_local(status_socket::serve(listener, {
            let status = status.clone();
            move || status.lock().map(|s| s.clone()).unwrap_or_default()
        }))),
        Err(e) => {
            warn!(
                "cannot serve `ringlink status` on {}: {e}",
                cfg.control_socket.display()
            );
            None
        }
    };
    let mut metrics = Endpoint::new("client", {
        let status = status.clone();
        Arc::new(move || {
            let s = status.lock().map(|s| s.clone()).unwrap_or_default();
            metrics::client_text(&s)
        })
    });
    metrics.rebind(cfg.metrics).await;
    let mut running = cfg.clone();
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (to_server, outgoing) = mpsc::channel(RELAY_QUEUE);
    let (tun_tx, tun_rx) = watch::channel(None);
    let link_counters = Arc::new(LinkCounters::default());
    let link = tokio::task::spawn_local(
        Link {
            cfg: cfg.clone(),
            tls,
            vmac: new_vmac(),
            events: events_tx,
            outgoing,
            tun: tun_rx,
            status: status.clone(),
            counters: link_counters.clone(),
        }
        .run(),
    );

    let mut iface: Option<Interface> = None;
    let mut node: Option<NodeDriver> = None;
    let (nat_tx, mut nat_rx) = mpsc::channel(4);
    let (turn_tx, mut resolved_rx) = mpsc::channel(4);
    let (streams_tx, mut streams_rx) = mpsc::channel(16);
    let helpers = driver::Helpers {
        turn: turn_tx,
        streams: streams_tx,
        turn_tls,
    };
    let mut nat_task = None;
    let mut accept_task = None;
    let main = async {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let mut control = status::ControlCounters::default();
        loop {
            let upcall = async {
                match iface.as_ref() {
                    Some(i) => i.upcalls().recv().await,
                    None => std::future::pending().await,
                }
            };
            let deadline = node.as_ref().and_then(|n| n.node.next_deadline());
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                up = upcall => {
                    let now = Instant::now();
                    match up {
                        Some(Upcall::RelayFrame(frame)) => {
                            if to_server.try_send(frame).is_err() {
                                control.relay_dropped += 1;
                            }
                        }
                        Some(Upcall::Peer { from, local, plaintext, session }) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_peer_message(from, local, &plaintext, session, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(Upcall::SessionUsed { index }) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_session_used(index, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(Upcall::Stun { from, local, datagram }) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_stun(from, local, &datagram, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(Upcall::StreamEnded { id, reason }) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_stream_ended(id, reason, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        None => return Err(InterfaceError::WorkersStopped.into()),
                    }
                }
                _ = timer => {
                    if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                        n.node.on_timeout(Instant::now());
                        n.carry_out(i, &to_server, &mut control).await;
                    }
                }
                ev = events.recv() => {
                    let now = Instant::now();
                    match ev {
                        Some(LinkEvent::Up(cidr)) => {
                            match iface.as_mut() {
                                Some(i) => i.ensure_address(cidr).await?,
                                None => {
                                    let i = iface.insert(Interface::create(&cfg, cidr).await?);
                                    tun_tx.send_replace(Some(RelaySink {
                                        writer: i.writer(),
                                        snapshot: i.snapshot(),
                                    }));
                                    update(&status, |s| s.workers = i.workers());
                                    let (n, probe, accept) = new_node(&cfg, cidr, i, identity.clone(), helpers.clone(), now).await?;
                                    node = Some(n);
                                    accept_task = accept;
                                    nat_task = probe.map(|p| tokio::task::spawn_local(classify_forever(p, nat_tx.clone())));
                                    service_manager::ready(&format!("{} up as {cidr}", cfg.tun));
                                }
                            }
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.set_server_up(true);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(LinkEvent::Down) => {
                            if let Some(n) = node.as_mut() {
                                n.node.set_server_up(false);
                            }
                        }
                        Some(LinkEvent::Frame(f)) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_server_frame(&f, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(LinkEvent::Relayed(src)) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_relayed(src, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(LinkEvent::SessionUsed(index)) => {
                            if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                                n.node.on_session_used(index, now);
                                n.carry_out(i, &to_server, &mut control).await;
                            }
                        }
                        Some(LinkEvent::Fatal(e)) => return Err(e),
                        None => return Err(LinkLost::TaskEnded.into()),
                    }
                }
                Some(event) = streams_rx.recv() => {
                    if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                        event.deliver(&mut n.node);
                        n.carry_out(i, &to_server, &mut control).await;
                    }
                }
                Some(news) = resolved_rx.recv() => {
                    if let (Some(n), Some(i)) = (node.as_mut(), iface.as_ref()) {
                        news.deliver(&mut n.node);
                        n.carry_out(i, &to_server, &mut control).await;
                    }
                }
                Some(outcome) = nat_rx.recv() => {
                    if let Some(n) = node.as_mut() {
                        n.node.on_nat_outcome(outcome);
                    }
                }
                _ = hangups.recv() => {
                    let live = Live { metrics: &mut metrics, status: &status, identity: &mut identity, node: node.as_mut() };
                    reload_client(&reload, &mut running, live).await;
                }
                _ = status_tick.tick() => {
                    control.relay_tx_frames = link_counters.relay_tx.load(Ordering::Relaxed);
                    control.relay_tx_bytes = link_counters.relay_tx_bytes.load(Ordering::Relaxed);
                    control.relay_rx_frames = link_counters.relay_rx.load(Ordering::Relaxed);
                    control.relay_rx_bytes = link_counters.relay_rx_bytes.load(Ordering::Relaxed);
                    control.relay_rx_sealed = link_counters.relay_rx_sealed.load(Ordering::Relaxed);
                    control.relay_refused = link_counters.relay_refused.load(Ordering::Relaxed);
                    control.relay_tampered = link_counters.relay_tampered.load(Ordering::Relaxed);
                    let dataplane = iface.as_ref().map(|i| i.counters()).unwrap_or_default();
                    let (peers, routes) = node.as_ref().map(|n| n.node.status(Instant::now())).unwrap_or_default();
                    update(&status, |s| {
                        s.dataplane = dataplane;
                        s.control = control;
                        if let Some(n) = node.as_ref() {
                            s.node = n.node.stats;
                            s.router = n.node.route_stats();
                            s.handshake = n.node.handshake_stats();
                            let key = n.node.public_key();
                            s.public_key = Some(key.to_base64());
                            s.key_fingerprint = Some(key.fingerprint());
                            let nat = n.node.nat_class();
                            s.nat = nat.map(|c| c.kind.to_string());
                            s.nat_mapped = nat.map(|c| c.mapped.to_string());
                            s.turn = n.node.turn_status(u64::try_from(ws_client::unix_now()).unwrap_or(0));
                        }
                        s.peers = peers;
                        s.routes = routes;
                    });
                }
            }
        }
    };
    let result = tokio::select! {
        r = main => r,
        _ = shutdown => { info!("shutting down"); Ok(()) }
    };
    link.abort();
    if let Some(t) = status_task {
        t.abort();
    }
    if let Some(t) = nat_task {
        t.abort();
    }
    if let Some(t) = accept_task {
        t.abort();
    }
    drop(metrics);
    tun_tx.send_replace(None);
    if let Some(i) = iface {
        i.shutdown();
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    result
}
