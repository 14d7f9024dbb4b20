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
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::status::{update, SharedStatus};
use super::ws_client::{self, Wanted, Ws};
use super::{ClientError, LinkLost};
use crate::config::ClientConfig;
use crate::dataplane::TunWriter;
use crate::proto::sdwan::decapsulate;
use crate::proto::ws::{self, encode_keepalive, WsMessage};
use crate::proto::{ipv4, Ipv4Cidr};

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
    pub tun: watch::Receiver<Option<TunWriter>>,
    pub status: SharedStatus,
    pub counters: Arc<LinkCounters>,
}

/// Relay traffic through the server (FORWARD frames and the bytes of the
/// packets in them), for `ringlink status`.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub relay_tx: AtomicU64,
    pub relay_tx_bytes: AtomicU64,
    pub relay_rx: AtomicU64,
    pub relay_rx_bytes: AtomicU64,
}

impl Link {
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut previous = None;
        loop {
            let wanted = match self.cfg.address {
                Some(a) => Wanted::Static(a),
                None => Wanted::Pool(previous),
            };
            let attempt = async {
                let mut ws = ws_client::connect(&self.cfg.server, self.tls.as_ref()).await?;
                let cidr =
                    ws_client::login(&mut ws, self.cfg.password.as_bytes(), self.vmac, wanted)
                        .await?;
                Ok::<_, ClientError>((ws, cidr))
            };
            match attempt.await {
                Ok((ws, cidr)) => {
                    previous = Some(cidr);
                    info!(address = %cidr, server = %self.cfg.server.to_url(), "logged in");
                    update(&self.status, |s| {
                        s.address = Some(cidr.to_string());
                        s.connected = true;
                        s.last_error = None;
                    });
                    if self.events.send(LinkEvent::Up(cidr)).await.is_err() {
                        return;
                    }
                    let why = self.session(ws, cidr.addr).await;
                    backoff.reset();
                    warn!(reason = %why, "server connection lost; reconnecting");
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
                }
                Err(e @ ClientError::Tls(_)) => {
                    let _ = self.events.send(LinkEvent::Fatal(e)).await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot join the network");
                    update(&self.status, |s| s.last_error = Some(e.to_string()));
                }
            }
            let delay = backoff.next_delay(rand::random());
            info!(delay_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection, until it fails; returns why. Reading and writing are
    /// separate futures so a congested send never delays what we receive.
    async fn session(&mut self, ws: Ws, own: Ipv4Addr) -> LinkLost {
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
                        deliver(&tun, packet);
                        if let Ok((src, _)) = ipv4::addrs(packet) {
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

        tokio::select! {
            why = reader => why,
            why = writer => why,
        }
    }
}

/// Writes a relayed packet to the interface, without the sdwan
/// pseudo-header if it carries one.
fn deliver(tun: &watch::Receiver<Option<TunWriter>>, packet: &[u8]) {
    let tun = tun.borrow();
    let Some(writer) = tun.as_ref() else {
        debug!("relayed packet before the interface exists; dropped");
        return;
    };
    match decapsulate(packet) {
        Ok(inner) => {
            if let Err(e) = writer.write(inner) {
                debug!(error = %e, "relayed packet not written to the interface");
            }
        }
        Err(e) => debug!(error = %e, "relayed packet dropped"),
    }
}
