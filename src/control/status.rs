//! `ringlink status`: the running client answers on a unix socket with one
//! JSON document; the CLI prints it as a table or passes it through.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerLine {
    pub vip: String,
    pub state: String,
    /// "direct" or "relay".
    pub path: String,
    pub endpoint: Option<String>,
    pub last_heartbeat_secs: Option<f64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Current WAITING back-off interval.
    pub retry_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteLine {
    pub dst: String,
    pub next_hop: String,
    pub path: String,
    pub rtt_ms: Option<f64>,
    /// Route metric (sum of link RTTs and relay costs); none for subnets.
    pub metric_ms: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub tun: String,
    pub address: Option<String>,
    pub server: String,
    pub connected: bool,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub workers: usize,
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub tun_tx_packets: u64,
    /// TUN reads that were TSO/USO super-packets (each is several packets).
    pub tun_gso_packets: u64,
    /// TUN writes that carried several coalesced TCP segments.
    pub tun_coalesced_writes: u64,
    /// Datagrams sent and received on the direct path (all workers), and
    /// receives that were GRO runs of several datagrams.
    pub udp_tx_packets: u64,
    pub udp_rx_packets: u64,
    pub udp_gro_receives: u64,
    pub relay_tx_frames: u64,
    pub relay_rx_frames: u64,
    pub dropped: u64,
    pub peers: Vec<PeerLine>,
    pub routes: Vec<RouteLine>,
}

/// Filled in by the control loop; read when someone asks.
pub type SharedStatus = Arc<Mutex<Status>>;

pub fn update(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// Serves status requests until the task is dropped. Each connection gets
/// one JSON document and is closed, so a stuck reader cannot pile up.
pub async fn serve(path: PathBuf, status: impl Fn() -> Status + 'static) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a crashed run would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let body = serde_json::to_vec(&status()).unwrap_or_default();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.write_all(&body)).await;
    }
}

/// The CLI side: fetch the document from a running client.
pub fn query(path: &Path) -> Result<Status, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach a running client at {}: {e} (is `ringlink client` running?)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    conn.flush().ok();
    let mut body = Vec::new();
    conn.read_to_end(&mut body)
        .map_err(|e| format!("reading status from {}: {e}", path.display()))?;
    serde_json::from_slice(&body)
        .map_err(|e| format!("malformed status from {}: {e}", path.display()))
}

/// Human-readable form for the terminal.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let state = if s.connected {
        "connected"
    } else {
        "disconnected"
    };
    out.push_str(&format!(
        "interface {}  address {}  server {} ({state}, {} reconnects)\n",
        s.tun,
        s.address.as_deref().unwrap_or("-"),
        s.server,
        s.reconnects
    ));
    if let Some(e) = &s.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    out.push_str(&format!(
        "workers {}  tun rx {} reads ({} super-packets) / {} B  tun tx {} pkts ({} coalesced writes)  udp tx {} rx {} ({} gro runs)  relay tx {} rx {} frames  dropped {}\n",
        s.workers,
        s.tun_rx_packets,
        s.tun_gso_packets,
        s.tun_rx_bytes,
        s.tun_tx_packets,
        s.tun_coalesced_writes,
        s.udp_tx_packets,
        s.udp_rx_packets,
        s.udp_gro_receives,
        s.relay_tx_frames,
        s.relay_rx_frames,
        s.dropped
    ));
    if !s.peers.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:<14} {:<7} {:<22} {:>8} {:>12} {:>12}\n",
            "PEER", "STATE", "PATH", "ENDPOINT", "HB AGE", "TX BYTES", "RX BYTES"
        ));
        for p in &s.peers {
            out.push_str(&format!(
                "{:<16} {:<14} {:<7} {:<22} {:>8} {:>12} {:>12}\n",
                p.vip,
                p.state,
                p.path,
                p.endpoint.as_deref().unwrap_or("-"),
                p.last_heartbeat_secs
                    .map(|a| format!("{a:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                p.tx_bytes,
                p.rx_bytes
            ));
        }
    }
    if !s.routes.is_empty() {
        out.push_str(&format!(
            "\n{:<20} {:<16} {:<7} {:>8}\n",
            "ROUTE", "NEXT HOP", "PATH", "RTT"
        ));
        for r in &s.routes {
            out.push_str(&format!(
                "{:<20} {:<16} {:<7} {:>8}\n",
                r.dst,
                r.next_hop,
                r.path,
                r.rtt_ms
                    .map(|m| format!("{m:.1}ms"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("ringlink-status-{}", std::process::id()));
        let path = dir.join("t.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let want = Status {
            tun: "rl0".into(),
            address: Some("10.77.0.2/24".into()),
            connected: true,
            peers: vec![PeerLine {
                vip: "10.77.0.3".into(),
                state: "CONNECTED".into(),
                path: "direct".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let served = want.clone();
        let p2 = path.clone();
        let got = rt.block_on(async move {
            let server = tokio::spawn(serve(p2.clone(), move || served.clone()));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let got = loop {
                let p = p2.clone();
                match tokio::task::spawn_blocking(move || query(&p))
                    .await
                    .unwrap()
                {
                    Ok(s) => break Ok(s),
                    Err(e) if tokio::time::Instant::now() > deadline => break Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            server.abort();
            got
        });
        assert_eq!(got.unwrap(), want);
        assert!(render(&want).contains("CONNECTED"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn query_without_a_client_says_so() {
        let e = query(Path::new("/nonexistent/ringlink.sock")).unwrap_err();
        assert!(e.contains("is `ringlink client` running?"), "{e}");
    }
}
