//! One client connection: authentication state machine, relay of its
//! frames, and a writer task that drains its bounded send queue.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::config::DEFAULT_NETWORK;
use crate::proto::ws::{self, ExptTun, EXPTTUN_LEN, MAX_FRAME};
use crate::proto::Ipv4Cidr;
use crate::turn::Credentials;

use super::auth::{self, AuthStep};
use super::cluster::{self, LeaseError};
use super::counters::ServerCounters;
use super::error::CloseReason;
use super::guard::{Bucket, LogEvery, Pending};
use super::network::Network;
use super::pool::{Claim, Pool, PoolError, SessionId, Vmac};
use super::relay::{self, Delivery, Entry};
use super::request::{self, Request};
use super::routes;
use super::status::{SessionTraffic, TrafficSnapshot};
use super::Shared;

/// Frames fed to tungstenite before one flush: enough to amortise the
/// syscall (and TLS record) cost, small enough to keep latency low.
const WRITE_BATCH: usize = 64;
/// How long a closing session waits for its Close frame to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// With `[cluster]`: addresses offered for one EXPTTUN before giving up,
/// each one found taken by another instance in the meantime.
const GRANT_TRIES: usize = 4;
/// With `[cluster]`: the longest a login waits for the lease bucket.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// A login step that waits for the cluster's lease bucket.
enum LeaseJob {
    Grant {
        m: ExptTun,
        frame: Vec<u8>,
    },
    Auth {
        m: ws::Auth,
        member: OwnedSemaphorePermit,
        claim: Claim,
    },
}

pub(crate) async fn serve<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    net: Arc<Network>,
    shutdown: watch::Receiver<bool>,
    pending: Pending,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(shared.tuning.send_queue.max(1));
    let (close_tx, close_rx) = oneshot::channel();
    let traffic = Arc::new(SessionTraffic::default());
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        close_rx,
        shared.tuning.write_stall,
        shared.counters.clone(),
        traffic.clone(),
    ));
    let now = Instant::now();
    let rates = shared.rates;
    let mut s = Session {
        id: shared.new_session_id(),
        peer,
        evict: pending.notifier(),
        pending: Some(pending),
        member: None,
        broadcast: Limited::new(rates.broadcast, now),
        general: Limited::new(rates.general, now),
        shared,
        net,
        lease_job: None,
        tx,
        kick: Arc::new(Notify::new()),
        vmac: None,
        vip: None,
        traffic,
        warned_forward_spoof: false,
        warned_control_spoof: false,
        last_rx: Instant::now(),
        ringlink: false,
        turn_renew_at: None,
    };
    let (reason, writer) = s.run(stream, shutdown, writer).await;
    s.finish(reason, close_tx, writer).await;
}

/// A per-session rate limit and the summary of what it dropped.
struct Limited {
    bucket: Bucket,
    log: LogEvery,
}

impl Limited {
    fn new((rate, burst): (u32, u32), now: Instant) -> Self {
        Self {
            bucket: Bucket::new(rate, burst, now),
            log: LogEvery::default(),
        }
    }
}

struct Session {
    id: SessionId,
    peer: SocketAddr,
    /// Until AUTH: this connection's place among those not logged in.
    pending: Option<Pending>,
    /// Woken when admission drops this connection for a newer one.
    evict: Arc<Notify>,
    /// After AUTH: this member's place under `max_clients`.
    member: Option<OwnedSemaphorePermit>,
    broadcast: Limited,
    general: Limited,
    shared: Arc<Shared>,
    /// The network this connection chose by its URL path.
    net: Arc<Network>,
    /// Set by a login frame that must wait for the cluster; taken by `run`.
    lease_job: Option<LeaseJob>,
    tx: mpsc::Sender<Vec<u8>>,
    kick: Arc<Notify>,
    vmac: Option<Vmac>,
    vip: Option<Ipv4Addr>,
    /// What `ringlink status --server` shows of this session's traffic.
    traffic: Arc<SessionTraffic>,
    warned_forward_spoof: bool,
    warned_control_spoof: bool,
    last_rx: Instant,
    /// Its AUTH carried ringlink's marker: it may get ringlink-only
    /// messages (TURN_OFFER); a stock Candy client never does.
    ringlink: bool,
    /// When this member's TURN credentials are renewed.
    turn_renew_at: Option<Instant>,
}

impl Session {
    async fn run<S>(
        &mut self,
        mut stream: SplitStream<WebSocketStream<S>>,
        mut shutdown: watch::Receiver<bool>,
        mut writer: JoinHandle<CloseReason>,
    ) -> (CloseReason, Option<JoinHandle<CloseReason>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let auth_timeout = self.shared.tuning.auth_timeout;
        let idle = self.shared.tuning.idle_timeout;
        // One timer, re-armed only when it fires: resetting it on every
        // frame would cost a timer-wheel update per relayed packet.
        let timer = sleep_until(self.last_rx + auth_timeout);
        tokio::pin!(timer);
        let turn_timer = sleep_until(self.last_rx + auth_timeout);
        tokio::pin!(turn_timer);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return (CloseReason::Shutdown, Some(writer)),
                _ = self.kick.notified() => return (CloseReason::Replaced, Some(writer)),
                // A login racing the eviction wins: a member is never dropped
                // as a stranger.
                _ = self.evict.notified(), if self.vip.is_none() => {
                    return (CloseReason::Evicted, Some(writer));
                }
                end = &mut writer => {
                    let reason = end.unwrap_or_else(|e| CloseReason::Lost(format!("writer task: {e}")));
                    return (reason, None);
                }
                _ = &mut timer => {
                    if self.vip.is_none() {
                        ServerCounters::inc(&self.shared.counters.timeout_auth);
                        return (CloseReason::AuthTimeout(auth_timeout), Some(writer));
                    }
                    let due = self.last_rx + idle;
                    if due <= Instant::now() {
                        ServerCounters::inc(&self.shared.counters.timeout_idle);
                        return (CloseReason::Idle(idle), Some(writer));
                    }
                    timer.as_mut().reset(due);
                }
                _ = &mut turn_timer, if self.turn_renew_at.is_some() => {
                    self.offer_turn();
                    if let Some(at) = self.turn_renew_at {
                        turn_timer.as_mut().reset(at);
                    }
                }
                m = stream.next() => {
                    self.last_rx = Instant::now();
                    let was_authed = self.vip.is_some();
                    let mut r = match m {
                        None => Err(CloseReason::ClientClosed),
                        Some(Err(e)) => Err(self.read_error(e)),
                        Some(Ok(msg)) => self.on_message(msg),
                    };
                    if let Some(job) = self.lease_job.take() {
                        // Only logins get here, and only with [cluster]:
                        // the relay path never waits. Boxed so the wait's
                        // state does not sit in every session's future.
                        let net = self.net.clone();
                        if let (Ok(()), Some(c)) = (&r, &net.cluster) {
                            r = tokio::time::timeout(LEASE_WAIT, Box::pin(self.lease_step(c, job)))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(CloseReason::ClusterUnavailable(format!(
                                        "no lease decision within {LEASE_WAIT:?}"
                                    )))
                                });
                        }
                    }
                    if let Err(reason) = r {
                        return (reason, Some(writer));
                    }
                    if !was_authed && self.vip.is_some() {
                        // From now on the idle timeout applies.
                        timer.as_mut().reset(self.last_rx + idle);
                        if let Some(at) = self.turn_renew_at {
                            turn_timer.as_mut().reset(at);
                        }
                    }
                }
            }
        }
    }

    fn read_error(&self, e: WsError) -> CloseReason {
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => {
                ServerCounters::inc(&self.shared.counters.refused_oversize);
                CloseReason::Oversize(size)
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::ClientClosed,
            e => CloseReason::Lost(e.to_string()),
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), CloseReason> {
        match msg {
            Message::Binary(frame) => self.on_frame(frame),
            Message::Text(_) => {
                ServerCounters::inc(&self.shared.counters.text_ignored);
                Ok(())
            }
            // tungstenite queues the Pong itself; the next poll of the
            // stream (which follows at once) writes and flushes it.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(_) => Err(CloseReason::ClientClosed),
        }
    }

    fn on_frame(&mut self, frame: Vec<u8>) -> Result<(), CloseReason> {
        let c = &self.shared.counters;
        ServerCounters::inc(&c.frames_in);
        self.traffic.add(&TrafficSnapshot::inbound(frame.len()));
        if frame.len() > MAX_FRAME {
            ServerCounters::inc(&c.refused_oversize);
            return Err(CloseReason::Oversize(frame.len()));
        }
        let request = match Request::decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                ServerCounters::inc(&c.refused_malformed);
                return Err(CloseReason::Malformed(e));
            }
        };
        if let (Some(what), None) = (request.needs_auth(), self.vip) {
            ServerCounters::inc(&c.refused_unauthenticated);
            return Err(CloseReason::NotAuthenticated(what));
        }
        match request {
            Request::Forward { saddr, daddr } => {
                self.on_forward(saddr, daddr, frame);
                Ok(())
            }
            Request::Control {
                what,
                src,
                dst,
                broadcast_ok,
            } => {
                self.on_control(what, src, dst, broadcast_ok, frame);
                Ok(())
            }
            Request::Auth(m) => self.on_auth(m),
            Request::ExptTun(m) => self.on_expttun(m, frame),
            Request::Vmac(m) => self.on_vmac(m),
            Request::Time { echo } => {
                self.send_time(echo);
                Ok(())
            }
            Request::Ignored(kind) => {
                ServerCounters::inc(&c.unknown_ignored);
                debug!("ignoring frame type {kind} from={}", self.peer);
                Ok(())
            }
        }
    }

    fn on_forward(&mut self, saddr: Ipv4Addr, daddr: Ipv4Addr, frame: Vec<u8>) {
        let c = &self.shared.counters;
        let Some(vip) = self.vip else { return };
        // The live route list is read only for a source other than the
        // sender's own VIP: a gateway's LAN traffic.
        if saddr != vip && !routes::gateway_covers(&self.net.routes.load(), vip, saddr) {
            ServerCounters::inc(&c.forward_spoofed);
            if !self.warned_forward_spoof {
                self.warned_forward_spoof = true;
                warn!("dropping FORWARD with spoofed source {saddr} from vip={vip} (further drops not logged)");
            }
            return;
        }
        if relay::forward_is_broadcast(self.net.pool_net, daddr) && !self.allow_broadcast(vip) {
            return;
        }
        let c = &self.shared.counters;
        let delivery = match &self.net.cluster {
            None => self.net.relay.forward(vip, daddr, frame),
            Some(cl) => forward_clustered(&self.net, cl, vip, daddr, frame),
        };
        match delivery {
            Delivery::Sent => ServerCounters::inc(&c.forward_unicast),
            Delivery::NoRoute => {
                ServerCounters::inc(&c.forward_no_route);
                debug!("no route for FORWARD {saddr} -> {daddr} from vip={vip}");
            }
            Delivery::QueueFull => ServerCounters::inc(&c.queue_full),
            // Counted where it was dropped.
            Delivery::Dropped => {}
            Delivery::Broadcast { full, .. } => {
                ServerCounters::inc(&c.forward_broadcast);
                add(&c.queue_full, full);
            }
        }
    }

    /// UDP4CONN, DISCOVERY and GENERAL: sender must be who it says it is,
    /// then byte-for-byte to `dst`, or to everyone else for a broadcast
    /// where the type allows one (§2.4.4, §2.4.6, §2.4.8).
    fn on_control(
        &mut self,
        what: &'static str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        broadcast_ok: bool,
        frame: Vec<u8>,
    ) {
        let c = &self.shared.counters;
        let Some(vip) = self.vip else { return };
        if src != vip {
            ServerCounters::inc(&c.control_spoofed);
            if self.warned_control_spoof {
                debug!("dropping {what} with src {src} from vip={vip}");
            } else {
                self.warned_control_spoof = true;
                warn!(
                    "dropping {what} with src {src} from vip={vip} (further drops logged at debug)"
                );
            }
            return;
        }
        let broadcast = broadcast_ok && dst == ws::BROADCAST;
        let allowed = if broadcast {
            self.allow_broadcast(vip)
        } else if what == request::GENERAL {
            self.allow_general(vip)
        } else {
            true
        };
        if !allowed {
            return;
        }
        let c = &self.shared.counters;
        let relay = &self.net.relay;
        let delivery = match (&self.net.cluster, broadcast) {
            (None, true) => relay.broadcast(vip, &frame),
            (None, false) => relay.send_to(dst, frame),
            (Some(cl), true) => {
                cl.broadcast(vip, &frame);
                relay.broadcast(vip, &frame)
            }
            (Some(cl), false) => match relay.send_local(dst, frame) {
                Ok(d) => d,
                Err(frame) => cl.send_remote(dst, frame).unwrap_or(Delivery::NoRoute),
            },
        };
        match delivery {
            Delivery::Sent => ServerCounters::inc(&c.control_relayed),
            Delivery::Broadcast { full, .. } => {
                ServerCounters::inc(&c.control_relayed);
                add(&c.queue_full, full);
            }
            Delivery::NoRoute => {
                ServerCounters::inc(&c.control_no_route);
                debug!("no session for {what} {src} -> {dst}");
            }
            Delivery::QueueFull => ServerCounters::inc(&c.queue_full),
            Delivery::Dropped => {}
        }
    }

    /// Takes a token from the broadcast limit; a drop is counted, and
    /// logged once per interval.
    fn allow_broadcast(&mut self, vip: Ipv4Addr) -> bool {
        let now = Instant::now();
        if self.broadcast.bucket.take(now) {
            return true;
        }
        ServerCounters::inc(&self.shared.counters.rate_limited_broadcast);
        if let Some(n) = self.broadcast.log.hit(now) {
            warn!(
                "vip={vip} from={} over its broadcast limit ({}/s, burst {}): {n} dropped since the last line",
                self.peer, self.shared.rates.broadcast.0, self.shared.rates.broadcast.1
            );
        }
        false
    }

    /// The same for unicast GENERAL frames.
    fn allow_general(&mut self, vip: Ipv4Addr) -> bool {
        let now = Instant::now();
        if self.general.bucket.take(now) {
            return true;
        }
        ServerCounters::inc(&self.shared.counters.rate_limited_general);
        if let Some(n) = self.general.log.hit(now) {
            warn!(
                "vip={vip} from={} over its GENERAL limit ({}/s, burst {}): {n} dropped since the last line",
                self.peer, self.shared.rates.general.0, self.shared.rates.general.1
            );
        }
        false
    }

    fn on_vmac(&mut self, m: ws::Vmac) -> Result<(), CloseReason> {
        let sh = &self.shared;
        auth::verify_vmac(
            &m,
            &self.net.password,
            auth::now_unix(),
            sh.tuning.timestamp_window,
        )
        .inspect_err(|r| count_refusal(&sh.counters, r))?;
        if self.vip.is_some() {
            // The vmac only matters for address decisions, which are over.
            debug!("ignoring VMAC after AUTH from={}", self.peer);
            return Ok(());
        }
        self.vmac = auth::effective_vmac(m.vmac);
        Ok(())
    }

    fn on_expttun(&mut self, m: ExptTun, frame: Vec<u8>) -> Result<(), CloseReason> {
        let sh = &self.shared;
        let now = auth::now_unix();
        auth::verify_expttun(&m, &self.net.password, now, sh.tuning.timestamp_window)
            .inspect_err(|r| count_refusal(&sh.counters, r))?;
        let granted = match self.vip {
            // Already bound: the only honest answer is the bound address.
            Some(vip) => vip,
            None if self.net.cluster.is_some() => {
                // The lease is asked of NATS; the session loop awaits it.
                self.lease_job = Some(LeaseJob::Grant { m, frame });
                return Ok(());
            }
            None => {
                let requested = auth::requested_address(m.cidr);
                let mut pool = self.net.lock_pool();
                pool.grant(self.id, self.vmac, requested)
                    .map_err(|e| refusal(&sh.counters, pool_refusal(e)))?
            }
        };
        self.reply_grant(granted, &m, frame);
        Ok(())
    }

    /// Answers EXPTTUN with `granted`, rewriting the request in place, as
    /// Candy does: trailing bytes the client appended come back unchanged
    /// (§11).
    fn reply_grant(&mut self, granted: Ipv4Addr, m: &ExptTun, mut frame: Vec<u8>) {
        let sh = &self.shared;
        let cidr = Ipv4Cidr {
            addr: granted,
            prefix: self.net.pool_net.prefix,
        };
        let reply = ExptTun::new(&self.net.password, cidr, auth::now_unix()).encode();
        frame[..EXPTTUN_LEN].copy_from_slice(&reply);
        ServerCounters::inc(&sh.counters.expttun_granted);
        debug!(
            "granted {cidr} to from={} vmac={} (requested {})",
            self.peer,
            auth::vmac_display(self.vmac),
            m.cidr
        );
        if self.tx.try_send(frame).is_err() {
            ServerCounters::inc(&sh.counters.queue_full);
        }
    }

    fn on_auth(&mut self, m: ws::Auth) -> Result<(), CloseReason> {
        let sh = self.shared.clone();
        let net = self.net.clone();
        let checks = auth::verify_auth(
            &m,
            &net.password,
            auth::now_unix(),
            sh.tuning.timestamp_window,
        )
        .and_then(|()| auth::check_vip(net.pool_net, m.ip))
        .and_then(|()| auth::auth_step(self.vip, m.ip));
        match checks {
            Err(r) => {
                count_refusal(&sh.counters, &r);
                return Err(r);
            }
            Ok(AuthStep::Repeat) => {
                debug!("repeated AUTH for vip={} ignored", m.ip);
                return Ok(());
            }
            Ok(AuthStep::First) => {}
        }
        self.ringlink = m.ringlink;
        // The frame verified, so it carries the password: remember it until
        // its timestamp leaves the window, and refuse it if it was used.
        let expires = m.timestamp.saturating_add(sh.tuning.timestamp_window);
        if !sh
            .lock_seen_auths()
            .first_use(m.hash, expires, auth::now_unix())
        {
            ServerCounters::inc(&sh.counters.refused_replayed_auth);
            return Err(CloseReason::ReplayedAuth(m.ip));
        }
        let Ok(member) = sh.members.clone().try_acquire_owned() else {
            ServerCounters::inc(&sh.counters.refused_capacity);
            return Err(CloseReason::ServerFull(sh.max_clients));
        };
        // Pool and table change together under the pool lock, so the
        // holder of an address and the session it routes to never differ.
        let mut pool = net.lock_pool();
        let claim = self.claim(&mut pool, &m)?;
        if let Some(c) = &net.cluster {
            // The same client again on an address this instance leases:
            // nothing for other instances to decide.
            let known = c.leased(m.ip) && matches!(claim, Claim::Kept | Claim::Took { .. });
            if !known {
                drop(pool);
                self.lease_job = Some(LeaseJob::Auth { m, member, claim });
                return Ok(());
            }
            cluster::Net::note_auth(&net, m.ip, self.vmac, m.timestamp);
        }
        self.bind(&m, member, claim, pool);
        Ok(())
    }

    /// The local half of AUTH: this instance's pool and relay table.
    fn claim(&self, pool: &mut Pool, m: &ws::Auth) -> Result<Claim, CloseReason> {
        let sh = &self.shared;
        if let Some((live, live_ts, live_vmac)) = self.net.relay.holder(m.ip) {
            // Only a takeover (same vmac) is decided here; another vmac
            // is refused by the pool below.
            let takeover = live != self.id && self.vmac.is_some() && live_vmac == self.vmac;
            if takeover && m.timestamp <= live_ts {
                ServerCounters::inc(&sh.counters.refused_not_newer);
                return Err(CloseReason::NotNewer {
                    ip: m.ip,
                    timestamp: m.timestamp,
                    live: live_ts,
                });
            }
        }
        pool.claim(self.id, self.vmac, m.ip)
            .map_err(|e| refusal(&sh.counters, pool_refusal(e)))
    }

    /// AUTH succeeded: the session becomes the member at `m.ip`.
    fn bind(
        &mut self,
        m: &ws::Auth,
        member: OwnedSemaphorePermit,
        claim: Claim,
        pool: MutexGuard<'_, Pool>,
    ) {
        let sh = self.shared.clone();
        let net = self.net.clone();
        let entry = Entry {
            session: self.id,
            tx: self.tx.clone(),
            kick: self.kick.clone(),
            auth_ts: m.timestamp,
            vmac: self.vmac,
            remote: self.peer,
            since: SystemTime::now(),
            traffic: self.traffic.clone(),
        };
        match net.relay.insert(m.ip, entry) {
            Some(old) => {
                if old.session != self.id {
                    old.kick.notify_one();
                    ServerCounters::inc(&sh.counters.evicted_reconnect);
                    info!(
                        "vip={} reconnected from={}: closing the older session",
                        m.ip, self.peer
                    );
                }
            }
            None => {
                if let Claim::Took { .. } = claim {
                    // The older session had only reserved the address; it
                    // keeps running unbound and will be refused if it
                    // tries to AUTH.
                    ServerCounters::inc(&sh.counters.evicted_reconnect);
                }
                cluster::Net::bound(&net, m.ip);
            }
        }
        drop(pool);
        // A member now: its place among strangers is free.
        self.pending = None;
        self.member = Some(member);
        self.vip = Some(m.ip);
        ServerCounters::inc(&sh.counters.auth_ok);
        ServerCounters::inc(&sh.counters.clients);
        // Which network and instance hold a member, where that is a question.
        let network = match (&net.cluster, net.name.as_str()) {
            (None, DEFAULT_NETWORK) => String::new(),
            _ => format!(" network={}", net.name),
        };
        let instance = net
            .cluster
            .as_ref()
            .map(|c| format!(" instance={}", c.instance()))
            .unwrap_or_default();
        info!(
            "client joined vip={} from={} vmac={}{network}{instance}",
            m.ip,
            self.peer,
            auth::vmac_display(self.vmac)
        );
        // Read after the relay entry went in: a reload that adds a route
        // either is seen here or sees this member (and pushes it itself).
        for f in routes::route_frames(&net.routes.load(), m.ip) {
            if self.tx.try_send(f).is_ok() {
                ServerCounters::inc(&sh.counters.routes_pushed);
            } else {
                ServerCounters::inc(&sh.counters.queue_full);
            }
        }
        self.offer_turn();
        self.send_time(0);
    }

    /// A TIME sample for a ringlink member (docs/protocol.md §4.11): our
    /// clock and the address its connection comes from. Unasked (`echo`
    /// 0) once it has an address, then as an answer to each of its own.
    fn send_time(&mut self, echo: u64) {
        let (std::net::SocketAddr::V4(seen), true) = (self.peer, self.ringlink) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let frame = ws::Time {
            echo,
            answer: Some((now, seen)),
        }
        .encode();
        if self.tx.try_send(frame).is_err() {
            ServerCounters::inc(&self.shared.counters.queue_full);
        }
    }

    /// Hands a ringlink member fresh TURN credentials (PROTOCOL.md §11:
    /// a type stock clients never see, so only to members whose AUTH
    /// carried the marker) and sets when to hand the next ones.
    fn offer_turn(&mut self) {
        let sh = &self.shared;
        let (Some(turn), Some(vip), true) = (&sh.turn, self.vip, self.ringlink) else {
            return;
        };
        let expires = u64::try_from(auth::now_unix()).unwrap_or(0) + u64::from(turn.ttl);
        let creds = Credentials::mint(turn.secret.as_bytes(), vip, expires);
        let offer = ws::TurnOffer {
            host: turn.url.host.clone(),
            port: turn.url.port,
            username: creds.username,
            password: creds.password,
            transport: turn.url.transport,
        };
        match offer.encode().map(|frame| self.tx.try_send(frame)) {
            Some(Ok(())) => ServerCounters::inc(&sh.counters.turn_offers),
            Some(Err(_)) => ServerCounters::inc(&sh.counters.queue_full),
            // The config refuses a host this long; nothing to send.
            None => warn!(host = %turn.url.host, "TURN host too long to offer"),
        }
        let renew = sh
            .tuning
            .turn_renew
            .unwrap_or(Duration::from_secs(u64::from(turn.ttl) / 2));
        self.turn_renew_at = Some(Instant::now() + renew);
    }

    /// What a login waits for from the cluster (only with `[cluster]`).
    async fn lease_step(&mut self, c: &cluster::Net, job: LeaseJob) -> Result<(), CloseReason> {
        match job {
            LeaseJob::Grant { m, frame } => {
                let ip = self.grant_clustered(c, &m).await?;
                self.reply_grant(ip, &m, frame);
                Ok(())
            }
            LeaseJob::Auth { m, member, claim } => {
                let sh = self.shared.clone();
                let acquired = c
                    .acquire(m.ip, self.vmac, cluster::Purpose::Auth(m.timestamp))
                    .await;
                let net = self.net.clone();
                let pool = net.lock_pool();
                if let Err(e) = acquired {
                    let mut pool = pool;
                    if pool.held_by(self.id) == Some(m.ip) {
                        pool.release(self.id);
                    }
                    return Err(match e {
                        LeaseError::Busy { holder } => refusal(
                            &sh.counters,
                            CloseReason::HeldElsewhere {
                                ip: m.ip,
                                instance: holder,
                            },
                        ),
                        LeaseError::NotNewer { live } => {
                            ServerCounters::inc(&sh.counters.refused_not_newer);
                            CloseReason::NotNewer {
                                ip: m.ip,
                                timestamp: m.timestamp,
                                live,
                            }
                        }
                        LeaseError::Unavailable(why) => CloseReason::ClusterUnavailable(why),
                    });
                }
                // A newer session of the same client may have taken the
                // address here while this one waited.
                if pool.held_by(self.id) != Some(m.ip) {
                    return Err(CloseReason::Replaced);
                }
                self.bind(&m, member, claim, pool);
                Ok(())
            }
        }
    }

    /// EXPTTUN with `[cluster]`: an address free here and leased to this
    /// client across the cluster. An address another instance turns out
    /// to hold is skipped and the next one tried.
    async fn grant_clustered(
        &mut self,
        c: &cluster::Net,
        m: &ExptTun,
    ) -> Result<Ipv4Addr, CloseReason> {
        let sh = self.shared.clone();
        let requested = auth::requested_address(m.cidr);
        for _ in 0..GRANT_TRIES {
            let ip = self
                .net
                .lock_pool()
                .grant_except(self.id, self.vmac, requested, &|ip, v| {
                    c.taken_elsewhere(ip, v)
                })
                .map_err(|e| refusal(&sh.counters, pool_refusal(e)))?;
            if c.leased(ip) {
                return Ok(ip);
            }
            match c.acquire(ip, self.vmac, cluster::Purpose::Reserve).await {
                Ok(_) => return Ok(ip),
                // Now known to be taken: the next grant skips it.
                Err(LeaseError::Busy { .. } | LeaseError::NotNewer { .. }) => {
                    self.net.lock_pool().release(self.id);
                }
                Err(LeaseError::Unavailable(why)) => {
                    self.net.lock_pool().release(self.id);
                    return Err(CloseReason::ClusterUnavailable(why));
                }
            }
        }
        Err(CloseReason::ClusterUnavailable(format!(
            "{GRANT_TRIES} addresses offered here were all taken on other instances meanwhile"
        )))
    }

    async fn finish(
        self,
        reason: CloseReason,
        close_tx: oneshot::Sender<CloseReason>,
        writer: Option<JoinHandle<CloseReason>>,
    ) {
        // Free the address before the goodbye, so a client that reconnects
        // at once is not refused for its own previous session.
        {
            let mut pool = self.net.lock_pool();
            let released = pool.release(self.id);
            if let Some(vip) = self.vip {
                if self.net.relay.remove_if(vip, self.id) {
                    if let Some(c) = &self.net.cluster {
                        c.unbound(vip);
                    }
                }
                self.shared
                    .counters
                    .clients
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let (Some(c), Some(ip)) = (&self.net.cluster, released) {
                if !pool.is_held(ip) {
                    c.release(ip);
                }
            }
        }
        match (self.vip, reason.is_refusal()) {
            (Some(vip), true) => warn!("client left vip={vip} reason={reason}"),
            (Some(vip), false) => info!("client left vip={vip} reason={reason}"),
            (None, true) => warn!("refused from={} reason={reason}", self.peer),
            (None, false) => debug!("connection from={} ended before AUTH: {reason}", self.peer),
        }
        if let Some(mut writer) = writer {
            let _ = close_tx.send(reason);
            if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
    }
}

/// FORWARD with `[cluster]`, in Candy's order: a session here holding
/// `dst`, else the instance holding it, else a broadcast (here and to every
/// other instance), else nowhere.
fn forward_clustered(
    net: &Network,
    c: &cluster::Net,
    from: Ipv4Addr,
    dst: Ipv4Addr,
    frame: Vec<u8>,
) -> Delivery {
    let frame = match net.relay.send_local(dst, frame) {
        Ok(d) => return d,
        Err(f) => f,
    };
    let frame = match c.send_remote(dst, frame) {
        Ok(d) => return d,
        Err(f) => f,
    };
    if relay::forward_is_broadcast(net.pool_net, dst) {
        c.broadcast(from, &frame);
        net.relay.broadcast(from, &frame)
    } else {
        Delivery::NoRoute
    }
}

fn pool_refusal(e: PoolError) -> CloseReason {
    match e {
        PoolError::Exhausted(net) => CloseReason::PoolExhausted(net),
        PoolError::OutsidePool { ip, pool } => CloseReason::OutsidePool { ip, pool },
        PoolError::InUse(ip) => CloseReason::AddressInUse(ip),
    }
}

fn refusal(c: &ServerCounters, r: CloseReason) -> CloseReason {
    count_refusal(c, &r);
    r
}

fn add(counter: &std::sync::atomic::AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

fn count_refusal(c: &ServerCounters, r: &CloseReason) {
    let counter = match r {
        CloseReason::BadHash(_) => &c.refused_bad_hash,
        CloseReason::StaleTimestamp { .. } => &c.refused_stale_timestamp,
        CloseReason::OutsidePool { .. } => &c.refused_outside_pool,
        CloseReason::AddressInUse(_) | CloseReason::HeldElsewhere { .. } => {
            &c.refused_address_in_use
        }
        CloseReason::PoolExhausted(_) => &c.refused_pool_exhausted,
        CloseReason::SecondAuth { .. } => &c.refused_second_auth,
        _ => return,
    };
    ServerCounters::inc(counter);
}

async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut close_rx: oneshot::Receiver<CloseReason>,
    stall: Duration,
    counters: Arc<ServerCounters>,
    traffic: Arc<SessionTraffic>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let first = tokio::select! {
            biased;
            r = &mut close_rx => {
                if let Ok(reason) = &r {
                    send_close(&mut sink, reason).await;
                }
                return r.unwrap_or(CloseReason::Shutdown);
            }
            f = rx.recv() => match f {
                Some(f) => f,
                // Unreachable while the session holds its sender.
                None => return CloseReason::Shutdown,
            },
        };
        let out = |f: &Vec<u8>| traffic.add(&TrafficSnapshot::outbound(f.len()));
        let batch = async {
            out(&first);
            sink.feed(Message::Binary(first)).await?;
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => {
                        out(&f);
                        sink.feed(Message::Binary(f)).await?
                    }
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(stall, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return CloseReason::Lost(format!("write failed: {e}")),
            Err(_) => {
                ServerCounters::inc(&counters.write_stalls);
                return CloseReason::WriteStall;
            }
        }
    }
}

/// A Close frame with the reason, as Cacao does, so a client (or a test)
/// can tell why; skipped when the peer is gone anyway.
async fn send_close<S>(sink: &mut SplitSink<WebSocketStream<S>, Message>, reason: &CloseReason)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(code) = reason.close_code() else {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        return;
    };
    let mut text = reason.to_string();
    // Control frames carry at most 125 bytes, two of them the code.
    if text.len() > 123 {
        let mut cut = 123;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let frame = CloseFrame {
        code,
        reason: text.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
}
