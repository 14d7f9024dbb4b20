//! In-process servers and the WebSocket client side of the server tests
//! (tests/server.rs, tests/cluster.rs): starting a server, connecting,
//! sending and receiving Candy frames, reading counters and `/metrics`.
//! Every wait is bounded by [`WAIT`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringlink::config::ServerConfig;
use ringlink::proto::ws;
use ringlink::server::{Control, Server, ServerCounters, ShutdownHandle, Tuning};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The longest any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(8);

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A server running in this process; stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: ShutdownHandle,
    pub counters: Arc<ServerCounters>,
    pub control: Control,
    pub cfg: ServerConfig,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.shutdown();
    }
}

/// The handles of a bound server, before it is spawned.
pub fn handles(server: &Server, cfg: ServerConfig) -> Running {
    Running {
        addr: server.local_addr(),
        stop: server.shutdown_handle(),
        counters: server.counters(),
        control: server.control(),
        cfg,
    }
}

pub async fn start_with(cfg: ServerConfig, tuning: Tuning) -> Running {
    // Server logs show up with `--nocapture` (RUST_LOG to filter).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = Server::bind_with(cfg.clone(), tuning).await.unwrap();
    let r = handles(&server, cfg);
    tokio::spawn(server.run());
    r
}

pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket to `addr` with the URL path `path` (which picks the network).
pub async fn connect_path(addr: SocketAddr, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .unwrap();
    ws
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, frame: Vec<u8>) {
    ws.send(Message::Binary(frame)).await.unwrap();
}

/// The next binary frame within `wait`, skipping control frames; None on
/// a timeout or when the session ends.
pub async fn recv_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    wait: Duration,
) -> Option<Vec<u8>> {
    timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return Some(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// The next binary frame; panics when none comes within [`WAIT`].
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Vec<u8> {
    recv_within(ws, WAIT)
        .await
        .expect("no frame in time (or the session closed)")
}

/// Waits for the server to end the session; returns the Close reason
/// ("" when it closed without one).
pub async fn closed<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return f.reason.into_owned(),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return String::new(),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("session was not closed")
}

/// A UDP datagram from `src` to `dst` carrying `payload`.
pub fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// That datagram as a FORWARD frame.
pub fn forward(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    ws::encode_forward(&packet(ip(src), ip(dst), payload), &mut f);
    f
}

pub fn load(c: &ServerCounters, f: impl Fn(&ServerCounters) -> &AtomicU64) -> u64 {
    f(c).load(Ordering::Relaxed)
}

/// One scrape of `/metrics` at `addr`: the status line and the body.
pub async fn scrape(addr: SocketAddr) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    timeout(WAIT, c.read_to_string(&mut out))
        .await
        .expect("scrape answered in time")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
