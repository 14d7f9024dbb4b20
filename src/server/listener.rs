//! Accepting connections: admission of connections that have not logged
//! in (per source, and a cap that drops the oldest), TLS and the WebSocket
//! handshake, then handing the stream to a session.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use crate::config::TlsFiles;
use crate::proto::ws::MAX_FRAME;

use super::counters::ServerCounters;
use super::error::ServerError;
use super::guard::{Admit, LogEvery, Pending};
use super::network::Network;
use super::session;
use super::Shared;

/// tungstenite refuses anything above this before buffering it; frames
/// between MAX_FRAME and this are read and then refused by the session with
/// a precise reason.
pub const WS_READ_LIMIT: usize = 4 * MAX_FRAME;

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(WS_READ_LIMIT),
        max_frame_size: Some(WS_READ_LIMIT),
        // Batches are flushed explicitly; these only cap what a stuck
        // socket can pile up inside tungstenite.
        write_buffer_size: 64 * 1024,
        max_write_buffer_size: 1024 * 1024,
        ..WebSocketConfig::default()
    }
}

fn tls_err(file: &Path, reason: impl Into<String>) -> ServerError {
    ServerError::TlsFile {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads the PEM certificate chain and key; every error names its file.
pub(crate) fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let open = |p: &Path| {
        File::open(p)
            .map(BufReader::new)
            .map_err(|e| tls_err(p, format!("cannot read: {e}")))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&files.cert, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(&files.cert, "no CERTIFICATE block found"));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key)?)
        .map_err(|e| tls_err(&files.key, format!("bad PEM: {e}")))?
        .ok_or_else(|| tls_err(&files.key, "no private key block found"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        // Usually a key that does not belong to the certificate.
        .map_err(|e| {
            tls_err(
                &files.key,
                format!("unusable with {}: {e}", files.cert.display()),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub(crate) async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A flood is summarised, not logged connection by connection.
    let mut per_ip_log = LogEvery::default();
    let mut evicted_log = LogEvery::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        ServerCounters::inc(&shared.counters.connections);
        let (admit, evicted) = shared.admission.admit(peer.ip());
        if evicted {
            ServerCounters::inc(&shared.counters.evicted_unauthenticated);
            if let Some(n) = evicted_log.hit(Instant::now()) {
                info!(
                    "dropped {n} oldest connection(s) that had not logged in, to admit new ones ({})",
                    shared.admission.describe()
                );
            }
        }
        let pending = match admit {
            Admit::Yes(p) => p,
            Admit::PerIp => {
                ServerCounters::inc(&shared.counters.refused_per_source);
                if let Some(n) = per_ip_log.hit(Instant::now()) {
                    warn!(
                        "refused from={peer} reason=too many connections not logged in from {} ({n} refused since the last line)",
                        peer.ip()
                    );
                }
                drop(stream);
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            tls.clone(),
            shared.clone(),
            pending,
            shutdown.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    pending: Pending,
    shutdown: watch::Receiver<bool>,
) {
    // Relayed packets are latency-sensitive and writes are already batched.
    let _ = stream.set_nodelay(true);
    crate::sys::tcp::limit_unsent(&stream);
    let deadline = shared.tuning.auth_timeout;
    // The handshake's request path picks the network; the callback leaves
    // its choice here.
    let chosen: std::sync::Mutex<Option<Arc<Network>>> = std::sync::Mutex::new(None);
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        match shared.network_for(path) {
            Some(n) => {
                debug!("ws upgrade from={peer} path={path} network={}", n.name);
                *chosen.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
                Ok(resp)
            }
            None => {
                let mut refusal = ErrorResponse::new(Some(format!("no network at {path}\n")));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                Err(refusal)
            }
        }
    };
    let config = Some(ws_config());
    let ws = match tls {
        None => {
            let hs = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, config);
            let hs = async { hs.await.map_err(|e| e.to_string()) };
            handshake(&pending, deadline, hs).await.map(Either::Plain)
        }
        Some(acceptor) => {
            let hs = async {
                let tls = acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                tokio_tungstenite::accept_hdr_async_with_config(tls, callback, config)
                    .await
                    .map_err(|e| e.to_string())
            };
            handshake(&pending, deadline, hs).await.map(Either::Tls)
        }
    };
    let net = chosen.into_inner().unwrap_or_else(|e| e.into_inner());
    match (ws, net) {
        (Ok(Either::Plain(ws)), Some(net)) => {
            session::serve(ws, peer, shared, net, shutdown, pending).await
        }
        (Ok(Either::Tls(ws)), Some(net)) => {
            session::serve(ws, peer, shared, net, shutdown, pending).await
        }
        // A handshake completes only through the callback, which chose.
        (Ok(_), None) => handshake_failed(&shared, peer, "no network chosen"),
        (Err(e), _) => handshake_failed(&shared, peer, &e),
    }
}

/// The stream a finished handshake gives, with or without TLS.
enum Either<P, T> {
    Plain(P),
    Tls(T),
}

/// The handshake, bounded by the login deadline and ended early when
/// admission drops this connection for a newer one.
async fn handshake<T>(
    pending: &Pending,
    deadline: Duration,
    hs: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = tokio::time::timeout(deadline, hs) => r.unwrap_or_else(|_| Err("handshake timed out".into())),
        _ = pending.evicted() => Err("dropped for a newer connection (not logged in)".into()),
    }
}

fn handshake_failed(shared: &Shared, peer: SocketAddr, why: &str) {
    ServerCounters::inc(&shared.counters.handshake_failed);
    debug!("handshake failed from={peer}: {why}");
}
