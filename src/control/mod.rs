//! The client's control thread: the WebSocket session with its reconnect
//! loop, the TUN interface it configures once and keeps, and the relay of
//! packets between the dataplane and the server.

mod backoff;
mod iface;
mod session;
pub mod status;
mod stream;
mod tls;
mod ws_client;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::config::ClientConfig;
use backoff::Backoff;
pub use iface::Interface;
use status::{SharedStatus, Status};
use ws_client::Wanted;

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

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(15);

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

/// Runs the client until `shutdown` resolves. Only interface errors are
/// fatal; everything about the server is retried with backoff.
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
    let vmac = new_vmac();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut iface: Option<Interface> = None;
    let mut previous = None;

    let status_task = tokio::spawn(status::serve(cfg.control_socket.clone(), {
        let status = status.clone();
        move || status.lock().map(|s| s.clone()).unwrap_or_default()
    }));
    let main = async {
        loop {
            let wanted = match cfg.address {
                Some(a) => Wanted::Static(a),
                None => Wanted::Pool(previous),
            };
            let attempt = async {
                let mut ws = ws_client::connect(&cfg.server, tls.as_ref()).await?;
                let cidr = ws_client::login(&mut ws, cfg.password.as_bytes(), vmac, wanted).await?;
                Ok::<_, ClientError>((ws, cidr))
            };
            match attempt.await {
                Ok((ws, cidr)) => {
                    previous = Some(cidr);
                    let interface = match iface.as_mut() {
                        Some(i) => {
                            i.ensure_address(cidr).await?;
                            i
                        }
                        None => iface.insert(Interface::create(&cfg, cidr).await?),
                    };
                    info!(address = %cidr, server = %cfg.server.to_url(), "logged in");
                    set_status(&status, |s| {
                        s.address = Some(cidr.to_string());
                        s.connected = true;
                        s.workers = interface.workers();
                    });
                    let outcome = session::run(ws, cidr.addr, interface, &status).await;
                    backoff.reset();
                    warn!(reason = %outcome, "server connection lost; reconnecting");
                    set_status(&status, |s| {
                        s.connected = false;
                        s.reconnects += 1;
                        s.last_error = Some(outcome.to_string());
                    });
                }
                Err(ClientError::Interface(e)) => return Err(ClientError::Interface(e)),
                Err(e) => {
                    warn!(error = %e, "cannot join the network");
                    set_status(&status, |s| s.last_error = Some(e.to_string()));
                }
            }
            let delay = backoff.next_delay(rand::random());
            info!(delay_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
        }
    };
    let result = tokio::select! {
        r = main => r,
        _ = shutdown => { info!("shutting down"); Ok(()) }
    };
    status_task.abort();
    if let Some(i) = iface {
        i.shutdown();
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    result
}

fn set_status(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}
