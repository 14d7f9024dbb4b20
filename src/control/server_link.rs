//! The link to the coordination server: connect, log in, keep the session
//! alive, reconnect with backoff — for the life of the client. It runs as its
//! own task so that the node keeps serving its direct peers while the server
//! is away.
//!
//! Relayed packets from the server go straight to the TUN device from here;
//! everything else the server says is handed to the control loop as events.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::relay_rx::{self, Refusal, Relayed};
use super::status::{update, SharedStatus};
use super::ws_client::{self, Wanted, Ws};
use super::{ClientError, LinkLost};
use crate::config::{ClientConfig, ServerUrl};
use crate::dataplane::{SharedSnapshot, TunWriter};
use crate::proto::ws::{self, encode_keepalive, WsMessage};
use crate::proto::Ipv4Cidr;

/// Self-addressed GENERAL every so often: Cacao drops connections idle for
/// 60 s, and the echo proves the server is still there.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Nothing at all from the server for this long: the connection is dead
/// even if TCP has not noticed (a server host that vanished).
const SILENCE: Duration = Duration::from_secs(35);
/// Frames written before one flush; bounds how long one burst holds the
/// socket.
const BATCH: usize = 64;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(15);
/// Away from its own server, the first look back after 15-30 s, then ever
/// further apart, up to 5-10 min.
const HOME_BASE: Duration = Duration::from_secs(30);
const HOME_CAP: Duration = Duration::from_secs(600);
/// A relayed packet from a VIP is reported to the peer logic at most this
/// often: the report only matters when the peer is idle (INIT), and one per
/// packet would flood the control loop.
const RELAYED_REPORT_EVERY: Duration = Duration::from_secs(1);
const RELAYED_TRACKED_MAX: usize = 4096;

#[derive(Debug)]
pub enum LinkEvent {
    /// Logged in with this address.
    Up(Ipv4Cidr),
    Down,
    /// A frame for the control loop (anything but FORWARD).
    Frame(Vec<u8>),
    /// A packet from `saddr` arrived through the relay.
    Relayed(Ipv4Addr),
    /// A sealed relayed message was the first under our session `index`.
    SessionUsed(u32),
    /// The server cannot be joined at all (interface-independent, fatal).
    Fatal(ClientError),
}

pub struct Link {
    pub cfg: ClientConfig,
    /// `Some` exactly for a `wss://` server.
    pub tls: Option<TlsConnector>,
    pub vmac: [u8; 16],
    pub events: mpsc::Sender<LinkEvent>,
    pub outgoing: mpsc::Receiver<Vec<u8>>,
    pub tun: watch::Receiver<Option<RelaySink>>,
    pub status: SharedStatus,
    pub counters: Arc<LinkCounters>,
}

/// Where relayed packets go once the interface exists: the device, and the
/// dataplane's table, whose sessions open sealed ones.
#[derive(Clone)]
pub struct RelaySink {
    pub writer: TunWriter,
    pub snapshot: SharedSnapshot,
}

/// Relay traffic through the server (FORWARD frames and the bytes of the
/// packets in them), for `ringlink status`.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub relay_tx: AtomicU64,
    pub relay_tx_bytes: AtomicU64,
    pub relay_rx: AtomicU64,
    pub relay_rx_bytes: AtomicU64,
    /// Relayed packets that came sealed with a session.
    pub relay_rx_sealed: AtomicU64,
    /// Relayed packets refused: unsealed from a peer that seals, replayed,
    /// under no session.
    pub relay_refused: AtomicU64,
    /// Sealed relayed packets that did not authenticate: changed between
    /// the peer and us.
    pub relay_tampered: AtomicU64,
}

impl Link {
    pub async fn run(mut self) {
        let order = server_order(&self.cfg, self.vmac);
        let mut at = 0;
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut home_backoff = Backoff::new(HOME_BASE, HOME_CAP);
        let mut previous = None;
        loop {
            let url = order[at % order.len()].clone();
            let wanted = match self.cfg.address {
                Some(a) => Wanted::Static(a),
                None => Wanted::Pool(previous),
            };
            let attempt = async {
                let mut ws = ws_client::connect(&url, self.tls.as_ref()).await?;
                let cidr =
                    ws_client::login(&mut ws, self.cfg.password.as_bytes(), self.vmac, wanted)
                        .await?;
                Ok::<_, ClientError>((ws, cidr))
            };
            match attempt.await {
                Ok((ws, cidr)) => {
                    previous = Some(cidr);
                    info!(address = %cidr, server = %url.to_url(), "logged in");
                    update(&self.status, |s| {
                        s.address = Some(cidr.to_string());
                        s.server = url.to_url();
                        s.connected = true;
                        s.last_error = None;
                    });
                    if self.events.send(LinkEvent::Up(cidr)).await.is_err() {
                        return;
                    }
                    // Away from its own server, a client looks in on it now
                    // and then, and goes back once it answers.
                    let home = match at % order.len() {
                        0 => {
                            home_backoff.reset();
                            None
                        }
                        _ => Some((&order[0], &mut home_backoff)),
                    };
                    let why = self.session(ws, cidr.addr, home).await;
                    backoff.reset();
                    update(&self.status, |s| {
                        s.connected = false;
                        s.reconnects += 1;
                        s.last_error = Some(why.to_string());
                    });
                    // Packets queued for the dead connection are stale by now.
                    while self.outgoing.try_recv().is_ok() {}
                    if self.events.send(LinkEvent::Down).await.is_err() {
                        return;
                    }
                    if let LinkLost::GoingHome = why {
                        info!(server = %order[0].to_url(), "own server answers again; moving back to it");
                        at = 0;
                        continue;
                    }
                    warn!(reason = %why, "server connection lost; reconnecting");
                }
                Err(e @ ClientError::Tls(_)) => {
                    let _ = self.events.send(LinkEvent::Fatal(e)).await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, server = %url.to_url(), "cannot join the network");
                    update(&self.status, |s| s.last_error = Some(e.to_string()));
                }
            }
            // With several servers, the next attempt goes to the next one.
            at = (at + 1) % order.len();
            let delay = backoff.next_delay(rand::random());
            info!(delay_ms = delay.as_millis() as u64, server = %order[at].to_url(), "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection, until it fails (or, with `home`, until the client's
    /// own server answers again); returns why. Reading and writing are
    /// separate futures so a congested send never delays what we receive.
    async fn session(
        &mut self,
        ws: Ws,
        own: Ipv4Addr,
        home: Option<(&ServerUrl, &mut Backoff)>,
    ) -> LinkLost {
        let (mut sink, mut stream) = ws.split();
        let events = self.events.clone();
        let tun = self.tun.clone();
        let counters = &*self.counters;
        let outgoing = &mut self.outgoing;

        let reader = async move {
            let mut reported: HashMap<Ipv4Addr, Instant> = HashMap::new();
            loop {
                let msg = match timeout(SILENCE, stream.next()).await {
                    Err(_) => return LinkLost::Silence(SILENCE),
                    Ok(None) => return LinkLost::Closed,
                    Ok(Some(Err(e))) => return e.into(),
                    Ok(Some(Ok(m))) => m,
                };
                let frame = match msg {
                    Message::Binary(f) => f,
                    Message::Close(Some(c)) if !c.reason.is_empty() => {
                        return LinkLost::ClosedWith(c.reason.to_string())
                    }
                    Message::Close(_) => return LinkLost::Closed,
                    _ => continue,
                };
                match WsMessage::decode(&frame) {
                    Ok(WsMessage::Forward(packet)) => {
                        counters.relay_rx.fetch_add(1, Ordering::Relaxed);
                        counters
                            .relay_rx_bytes
                            .fetch_add(packet.len() as u64, Ordering::Relaxed);
                        let Some(src) = deliver(&tun, packet, counters, &events) else {
                            continue;
                        };
                        let now = Instant::now();
                        let due = reported
                            .get(&src)
                            .is_none_or(|t| now - *t >= RELAYED_REPORT_EVERY);
                        if due {
                            if reported.len() >= RELAYED_TRACKED_MAX {
                                reported.retain(|_, t| now - *t < RELAYED_REPORT_EVERY);
                            }
                            reported.insert(src, now);
                            let _ = events.try_send(LinkEvent::Relayed(src));
                        }
                    }
                    Ok(WsMessage::General(g)) if g.src == own && g.dst == own => {}
                    Ok(WsMessage::Unknown(t)) => debug!(ty = t, "ignored unknown server message"),
                    Ok(_) => {
                        if events.try_send(LinkEvent::Frame(frame)).is_err() {
                            debug!("control loop busy; server message dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, "malformed frame from the server"),
                }
            }
        };

        let writer = async move {
            let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
            loop {
                tokio::select! {
                    first = outgoing.recv() => {
                        let Some(first) = first else { return LinkLost::Stopping };
                        let mut next = Some(first);
                        let mut n = 0;
                        // The queue carries the node's control frames too;
                        // only FORWARDs are relay traffic.
                        let (mut forwards, mut forward_bytes) = (0u64, 0u64);
                        while let Some(frame) = next.take() {
                            if frame.first() == Some(&ws::ty::FORWARD) {
                                forwards += 1;
                                forward_bytes += frame.len() as u64 - 1;
                            }
                            if let Err(e) = sink.feed(Message::Binary(frame)).await {
                                return e.into();
                            }
                            n += 1;
                            if n < BATCH {
                                next = outgoing.try_recv().ok();
                            }
                        }
                        if let Err(e) = sink.flush().await {
                            return e.into();
                        }
                        counters.relay_tx.fetch_add(forwards, Ordering::Relaxed);
                        counters.relay_tx_bytes.fetch_add(forward_bytes, Ordering::Relaxed);
                    }
                    _ = keepalive.tick() => {
                        if let Err(e) = sink.send(Message::Binary(encode_keepalive(own))).await {
                            return e.into();
                        }
                    }
                }
            }
        };

        // Probes are spread by jitter and spaced by backoff, so the members
        // of a server that comes back return over a while, not at once.
        let tls = self.tls.as_ref();
        let divisor = self.cfg.test_time_divisor.max(1);
        let homecoming = async move {
            let Some((url, backoff)) = home else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(backoff.next_delay(rand::random()) / divisor).await;
                match ws_client::connect(url, tls).await {
                    // The probe only shows the server is there; the login
                    // follows on a fresh connection.
                    Ok(_) => return LinkLost::GoingHome,
                    Err(e) => debug!(error = %e, server = %url.to_url(), "own server still away"),
                }
            }
        };

        tokio::select! {
            why = reader => why,
            why = writer => why,
            why = homecoming => why,
        }
    }
}

/// The servers in the order this client tries them: its own first, then
/// the rest as listed, wrapping around. Its own is picked by a hash of its
/// static address or, without one, of its vmac, so the members of a network
/// spread over a cluster's instances and each keeps to one.
fn server_order(cfg: &ClientConfig, vmac: [u8; 16]) -> Vec<ServerUrl> {
    let all: Vec<ServerUrl> = std::iter::once(&cfg.server)
        .chain(&cfg.more_servers)
        .cloned()
        .collect();
    let digest = match cfg.address {
        Some(a) => Sha256::digest(a.addr.octets()),
        None => Sha256::digest(vmac),
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let own = (u64::from_be_bytes(first) % all.len() as u64) as usize;
    all[own..].iter().chain(&all[..own]).cloned().collect()
}

/// Writes a relayed packet to the interface (opened if sealed, without the
/// sdwan pseudo-header if it carries one); returns its sender, which may be
/// worth a direct path.
fn deliver(
    sink: &watch::Receiver<Option<RelaySink>>,
    packet: &[u8],
    counters: &LinkCounters,
    events: &mpsc::Sender<LinkEvent>,
) -> Option<Ipv4Addr> {
    let sink = sink.borrow();
    let Some(sink) = sink.as_ref() else {
        debug!("relayed packet before the interface exists; dropped");
        return None;
    };
    let snap = sink.snapshot.load();
    let (first_use, delivered) = match relay_rx::receive(&snap, packet) {
        Relayed::Deliver {
            packet,
            src,
            sealed,
            first_use,
        } => {
            if sealed {
                counters.relay_rx_sealed.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = sink.writer.write(&packet) {
                debug!(error = %e, "relayed packet not written to the interface");
            }
            (first_use, Some(src))
        }
        Relayed::Keepalive { first_use } => {
            counters.relay_rx_sealed.fetch_add(1, Ordering::Relaxed);
            (first_use, None)
        }
        Relayed::Refused(why) => {
            let counter = match why {
                Refusal::Tampered(_) => &counters.relay_tampered,
                _ => &counters.relay_refused,
            };
            // Logged once per this many, so a flood costs no log storm.
            if counter.fetch_add(1, Ordering::Relaxed) % REFUSAL_LOG_EVERY == 0 {
                warn!(reason = %why, "relayed packet refused");
            }
            return None;
        }
    };
    if let Some(index) = first_use {
        let _ = events.try_send(LinkEvent::SessionUsed(index));
    }
    delivered
}

/// One log line per this many refused relayed packets of one kind.
const REFUSAL_LOG_EVERY: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ClientConfig {
        let text = format!(
            "server = [\"ws://10.0.0.1:1\", \"ws://10.0.0.2:1\", \"ws://10.0.0.3:1\"]\npassword = \"p\"\n{extra}"
        );
        ClientConfig::parse("test", &text).unwrap()
    }

    fn hosts(order: &[ServerUrl]) -> Vec<&str> {
        order.iter().map(|u| u.host.as_str()).collect()
    }

    #[test]
    fn own_server_first_then_the_rest_in_turn() {
        let c = cfg("");
        let mut own = [0usize; 3];
        for i in 0..600u32 {
            let mut vmac = [b'0'; 16];
            vmac[..4].copy_from_slice(&i.to_be_bytes());
            let order = server_order(&c, vmac);
            assert_eq!(order, server_order(&c, vmac), "stable");
            let h = hosts(&order);
            let first = usize::from(h[0].as_bytes()[7] - b'1');
            // A rotation of the list: every server once, in listed order.
            assert_eq!(h[1].as_bytes()[7] - b'1', ((first + 1) % 3) as u8);
            assert_eq!(h[2].as_bytes()[7] - b'1', ((first + 2) % 3) as u8);
            own[first] += 1;
        }
        // Members spread: each server is someone's own (600 / 3 = 200 each
        // on average).
        assert!(own.iter().all(|&n| (140..=260).contains(&n)), "{own:?}");
        // A static address decides, whatever the vmac.
        let s = cfg("address = \"10.77.0.9/24\"\n");
        assert_eq!(server_order(&s, [1; 16]), server_order(&s, [2; 16]));
        // One server: itself.
        let one = ClientConfig::parse("t", "server = \"ws://h:1\"\npassword = \"p\"\n").unwrap();
        assert_eq!(hosts(&server_order(&one, [0; 16])), ["h"]);
    }
}
