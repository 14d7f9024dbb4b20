//! One client connection: authentication state machine, relay of its
//! frames, and a writer task that drains its bounded send queue.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
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

use crate::proto::ws::{self, ExptTun, EXPTTUN_LEN, MAX_FRAME};
use crate::proto::Ipv4Cidr;

use super::auth::{self, AuthStep};
use super::counters::ServerCounters;
use super::error::CloseReason;
use super::guard::{Bucket, LogEvery, Pending};
use super::pool::{Claim, PoolError, SessionId, Vmac};
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

pub(crate) async fn serve<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
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
        tx,
        kick: Arc::new(Notify::new()),
        vmac: None,
        vip: None,
        traffic,
        warned_forward_spoof: false,
        warned_control_spoof: false,
        last_rx: Instant::now(),
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
    tx: mpsc::Sender<Vec<u8>>,
    kick: Arc<Notify>,
    vmac: Option<Vmac>,
    vip: Option<Ipv4Addr>,
    /// What `ringlink status --server` shows of this session's traffic.
    traffic: Arc<SessionTraffic>,
    warned_forward_spoof: bool,
    warned_control_spoof: bool,
    last_rx: Instant,
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
                m = stream.next() => {
                    self.last_rx = Instant::now();
                    let was_authed = self.vip.is_some();
                    let r = match m {
                        None => Err(CloseReason::ClientClosed),
                        Some(Err(e)) => Err(self.read_error(e)),
                        Some(Ok(msg)) => self.on_message(msg),
                    };
                    if let Err(reason) = r {
                        return (reason, Some(writer));
                    }
                    if !was_authed && self.vip.is_some() {
                        // From now on the idle timeout applies.
                        timer.as_mut().reset(self.last_rx + idle);
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
        if saddr != vip && !routes::gateway_covers(&self.shared.routes.load(), vip, saddr) {
            ServerCounters::inc(&c.forward_spoofed);
            if !self.warned_forward_spoof {
                self.warned_forward_spoof = true;
                warn!("dropping FORWARD with spoofed source {saddr} from vip={vip} (further drops not logged)");
            }
            return;
        }
        if relay::forward_is_broadcast(self.shared.pool_net, daddr) && !self.allow_broadcast(vip) {
            return;
        }
        let c = &self.shared.counters;
        match self.shared.relay.forward(vip, daddr, frame) {
            Delivery::Sent => ServerCounters::inc(&c.forward_unicast),
            Delivery::NoRoute => {
                ServerCounters::inc(&c.forward_no_route);
                debug!("no route for FORWARD {saddr} -> {daddr} from vip={vip}");
            }
            Delivery::QueueFull => ServerCounters::inc(&c.queue_full),
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
        let delivery = if broadcast {
            self.shared.relay.broadcast(vip, &frame)
        } else {
            self.shared.relay.send_to(dst, frame)
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
            &sh.password,
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

    fn on_expttun(&mut self, m: ExptTun, mut frame: Vec<u8>) -> Result<(), CloseReason> {
        let sh = &self.shared;
        let now = auth::now_unix();
        auth::verify_expttun(&m, &sh.password, now, sh.tuning.timestamp_window)
            .inspect_err(|r| count_refusal(&sh.counters, r))?;
        let granted = match self.vip {
            // Already bound: the only honest answer is the bound address.
            Some(vip) => vip,
            None => {
                let requested = auth::requested_address(m.cidr);
                let mut pool = sh.lock_pool();
                pool.grant(self.id, self.vmac, requested).map_err(|e| {
                    let r = match e {
                        PoolError::Exhausted(net) => CloseReason::PoolExhausted(net),
                        PoolError::OutsidePool { ip, pool } => {
                            CloseReason::OutsidePool { ip, pool }
                        }
                        PoolError::InUse(ip) => CloseReason::AddressInUse(ip),
                    };
                    count_refusal(&sh.counters, &r);
                    r
                })?
            }
        };
        let cidr = Ipv4Cidr {
            addr: granted,
            prefix: sh.pool_net.prefix,
        };
        // Rewrite the request in place, as Candy does: trailing bytes the
        // client appended come back unchanged (§11).
        let reply = ExptTun::new(&sh.password, cidr, now).encode();
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
        Ok(())
    }

    fn on_auth(&mut self, m: ws::Auth) -> Result<(), CloseReason> {
        let sh = self.shared.clone();
        let checks = auth::verify_auth(
            &m,
            &sh.password,
            auth::now_unix(),
            sh.tuning.timestamp_window,
        )
        .and_then(|()| auth::check_vip(sh.pool_net, m.ip))
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
        {
            // Pool and table change together under the pool lock, so the
            // holder of an address and the session it routes to never differ.
            let mut pool = sh.lock_pool();
            if let Some((live, live_ts, live_vmac)) = sh.relay.holder(m.ip) {
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
            let claim = pool.claim(self.id, self.vmac, m.ip).map_err(|e| {
                let r = match e {
                    PoolError::InUse(ip) => CloseReason::AddressInUse(ip),
                    PoolError::OutsidePool { ip, pool } => CloseReason::OutsidePool { ip, pool },
                    PoolError::Exhausted(net) => CloseReason::PoolExhausted(net),
                };
                count_refusal(&sh.counters, &r);
                r
            })?;
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
            if let Some(old) = sh.relay.insert(m.ip, entry) {
                if old.session != self.id {
                    old.kick.notify_one();
                    ServerCounters::inc(&sh.counters.evicted_reconnect);
                    info!(
                        "vip={} reconnected from={}: closing the older session",
                        m.ip, self.peer
                    );
                }
            } else if let Claim::Took { .. } = claim {
                // The older session had only reserved the address; it keeps
                // running unbound and will be refused if it tries to AUTH.
                ServerCounters::inc(&sh.counters.evicted_reconnect);
            }
        }
        // A member now: its place among strangers is free.
        self.pending = None;
        self.member = Some(member);
        self.vip = Some(m.ip);
        ServerCounters::inc(&sh.counters.auth_ok);
        ServerCounters::inc(&sh.counters.clients);
        info!(
            "client joined vip={} from={} vmac={}",
            m.ip,
            self.peer,
            auth::vmac_display(self.vmac)
        );
        // Read after the relay entry went in: a reload that adds a route
        // either is seen here or sees this member (and pushes it itself).
        for f in routes::route_frames(&sh.routes.load(), m.ip) {
            if self.tx.try_send(f).is_ok() {
                ServerCounters::inc(&sh.counters.routes_pushed);
            } else {
                ServerCounters::inc(&sh.counters.queue_full);
            }
        }
        Ok(())
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
            let mut pool = self.shared.lock_pool();
            pool.release(self.id);
            if let Some(vip) = self.vip {
                self.shared.relay.remove_if(vip, self.id);
                self.shared
                    .counters
                    .clients
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
        CloseReason::AddressInUse(_) => &c.refused_address_in_use,
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
