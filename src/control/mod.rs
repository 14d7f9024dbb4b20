//! The client's control thread: the link to the server (its own task), the
//! TUN interface created on the first login and kept across reconnects, and
//! the loop that moves relay traffic and drives the peer logic.

mod backoff;
mod iface;
mod server_link;
pub mod status;
mod stream;
mod tls;
mod ws_client;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::ClientConfig;
use crate::dataplane::Upcall;
use crate::proto::ws::encode_forward;
use iface::Interface;
use server_link::{Link, LinkCounters, LinkEvent};
use status::{update, SharedStatus, Status};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("refused by the server: {0}")]
    Refused(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("interface: {0}")]
    Interface(String),
}

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

/// Runs the client until `shutdown` resolves. Only local failures (TLS
/// setup, the interface) end it; everything about the server is retried.
pub async fn run(cfg: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    let tls = if cfg.server.tls {
        if cfg.tls_insecure {
            warn!("tls_insecure = true: the server certificate is NOT verified");
        }
        Some(tls::client_config(cfg.tls_ca.as_deref(), cfg.tls_insecure)?)
    } else {
        None
    };
    let status: SharedStatus = Arc::new(Mutex::new(Status {
        tun: cfg.tun.clone(),
        server: cfg.server.to_url(),
        ..Default::default()
    }));
    let status_task = tokio::task::spawn_local(status::serve(cfg.control_socket.clone(), {
        let status = status.clone();
        move || status.lock().map(|s| s.clone()).unwrap_or_default()
    }));
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
    let main = async {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let mut frame = Vec::new();
        let mut relay_dropped = 0u64;
        loop {
            let upcall = async {
                match iface.as_ref() {
                    Some(i) => i.upcalls().recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                up = upcall => match up {
                    Some(Upcall::TunPacket(p)) => {
                        encode_forward(&p, &mut frame);
                        if to_server.try_send(std::mem::take(&mut frame)).is_err() {
                            relay_dropped += 1;
                        }
                    }
                    Some(_) => {}
                    None => return Err(ClientError::Interface("dataplane workers stopped".into())),
                },
                ev = events.recv() => match ev {
                    Some(LinkEvent::Up(cidr)) => match iface.as_mut() {
                        Some(i) => i.ensure_address(cidr).await?,
                        None => {
                            let i = iface.insert(Interface::create(&cfg, cidr).await?);
                            tun_tx.send_replace(Some(i.writer()));
                            update(&status, |s| s.workers = i.workers());
                        }
                    },
                    Some(LinkEvent::Fatal(e)) => return Err(e),
                    Some(LinkEvent::Down(_) | LinkEvent::Frame(_) | LinkEvent::Relayed(_)) => {}
                    None => return Err(ClientError::Lost("server link task ended".into())),
                },
                _ = status_tick.tick() => {
                    let counters = iface.as_ref().map(|i| i.counters()).unwrap_or_default();
                    update(&status, |s| {
                        s.tun_rx_packets = counters.tun_rx_packets;
                        s.tun_rx_bytes = counters.tun_rx_bytes;
                        s.tun_tx_packets = counters.tun_written;
                        s.relay_tx_frames = link_counters.relay_tx.load(Ordering::Relaxed);
                        s.relay_rx_frames = link_counters.relay_rx.load(Ordering::Relaxed);
                        s.dropped = relay_dropped + counters.dropped_full + counters.dropped_malformed;
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
    status_task.abort();
    tun_tx.send_replace(None);
    if let Some(i) = iface {
        i.shutdown();
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    result
}
