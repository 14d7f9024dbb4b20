//! `ringlink status`: the running client answers on its control socket
//! (`status_socket`) with one JSON document; the CLI prints it as a table
//! or passes it through.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::node::NodeStats;
use super::secure::KeyLine;
use crate::counters::{counters, render_block};
use crate::dataplane::CounterSnapshot;
use crate::route::RouteStats;
use crate::session::handshake::HandshakeStats;
use crate::status_socket::{self, QueryError};

counters! {
    /// The control loop's own counters.
    plain ControlCounters {
        /// FORWARD frames (packets) sent to the server for the relay.
        relay_tx_frames,
        /// Bytes of those packets (with any subnet pseudo-header).
        relay_tx_bytes,
        /// FORWARD frames (packets) the server relayed to this node.
        relay_rx_frames,
        /// Bytes of those packets (with any subnet pseudo-header).
        relay_rx_bytes,
        /// Packets for the relay dropped because the server queue was full.
        relay_dropped,
        /// Relayed packets that came sealed with a ringlink session.
        relay_rx_sealed,
        /// Relayed packets refused: unsealed from a peer that seals with
        /// us, replayed, or under no session of ours.
        relay_refused,
        /// Sealed relayed packets that did not authenticate: changed on
        /// the way by the relay or someone between it and us.
        relay_tampered,
        /// Control datagrams (heartbeats, STUN, probes) the kernel refused.
        udp_send_errors,
        /// Control messages (PINGs, handshakes, probes) not sent on a TCP
        /// stream: its queue was full or it had failed.
        stream_send_errors,
        /// Control frames for the server dropped because its queue was full.
        server_queue_full,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerLine {
    pub vip: String,
    pub state: String,
    /// "direct", "turn", "tcp" or "relay".
    pub path: String,
    /// Why: what the direct attempt is doing, and how TURN and TCP fared.
    #[serde(default)]
    pub why: String,
    pub endpoint: Option<String>,
    pub last_heartbeat_secs: Option<f64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Current WAITING back-off interval.
    pub retry_secs: u64,
    /// "ringlink" (paths proven by challenge) or "candy" (Candy's rules).
    pub speaks: String,
    /// Attempts at a direct path so far.
    pub attempts: u32,
    /// How long the attempt that went direct took.
    pub time_to_direct_secs: Option<f64>,
    /// The peer's NAT as it described it ("cone/port-restricted", …).
    pub nat: Option<String>,
    /// The traversal method of the current or last attempt.
    pub method: Option<String>,
    /// The key pinned for this VIP (none until a ringlink peer announces
    /// one, or the client's `peers` pins one).
    #[serde(default)]
    pub key: Option<KeyLine>,
    /// Age of the session made by the last handshake, if one is live.
    #[serde(default)]
    pub handshake_secs: Option<f64>,
    /// "session": traffic both ways is sealed with session keys (counters,
    /// replay window), and nothing unsealed from this peer is taken;
    /// "envelope": Candy's format (a stock peer, or no session yet).
    #[serde(default)]
    pub sealing: String,
    /// Handshakes completed with this peer.
    #[serde(default)]
    pub handshakes: u32,
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
    /// This node's NAT as its last published classification saw it, and
    /// its public mapping then.
    pub nat: Option<String>,
    pub nat_mapped: Option<String>,
    /// The TURN server for relayed pairs: where, as whom, from where.
    #[serde(default)]
    pub turn: Option<String>,
    /// This node's X25519 public key (base64) and its fingerprint.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    /// Every dataplane counter, summed over the workers and the TUN
    /// writer; top-level keys in the JSON.
    #[serde(flatten)]
    pub dataplane: CounterSnapshot,
    #[serde(flatten)]
    pub control: ControlCounters,
    pub node: NodeStats,
    pub router: RouteStats,
    #[serde(default)]
    pub handshake: HandshakeStats,
    pub peers: Vec<PeerLine>,
    pub routes: Vec<RouteLine>,
    /// The client's `metrics_per_peer`: its metrics text (`/metrics` and
    /// `ringlink metrics`, both made from this document) has per-peer series.
    #[serde(default)]
    pub metrics_per_peer: bool,
}

/// Filled in by the control loop; read when someone asks.
pub type SharedStatus = Arc<Mutex<Status>>;

pub fn update(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// The CLI side: fetch the document from a running client.
pub fn query(path: &Path) -> Result<Status, QueryError> {
    status_socket::query(path, "client")
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
        "workers {}  nat {}{}\n",
        s.workers,
        s.nat.as_deref().unwrap_or("not classified"),
        s.nat_mapped
            .as_deref()
            .map(|m| format!(" (mapped {m})"))
            .unwrap_or_default()
    ));
    if let Some(t) = &s.turn {
        out.push_str(&format!("turn {t}\n"));
    }
    if let Some(fp) = &s.key_fingerprint {
        out.push_str(&format!(
            "key {fp}  {}\n",
            s.public_key.as_deref().unwrap_or("-")
        ));
    }
    render_block(&mut out, "dataplane", s.dataplane.fields());
    render_block(&mut out, "control", s.control.fields());
    render_block(&mut out, "node", s.node.fields());
    render_block(&mut out, "router", s.router.fields());
    render_block(&mut out, "handshake", s.handshake.fields());
    if !s.peers.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:<8} {:<14} {:<7} {:<22} {:>8} {:<21} {:<18} {:>9} {:<22} {:>9} {:<8} {:>12} {:>12}\n",
            "PEER",
            "SPEAKS",
            "STATE",
            "PATH",
            "ENDPOINT",
            "HB AGE",
            "NAT",
            "METHOD",
            "TO DIRECT",
            "KEY",
            "HANDSHAKE",
            "SEALED",
            "TX BYTES",
            "RX BYTES"
        ));
        let secs = |v: Option<f64>| v.map(|a| format!("{a:.1}s")).unwrap_or_else(|| "-".into());
        for p in &s.peers {
            out.push_str(&format!(
                "{:<16} {:<8} {:<14} {:<7} {:<22} {:>8} {:<21} {:<18} {:>9} {:<22} {:>9} {:<8} {:>12} {:>12}\n",
                p.vip,
                p.speaks,
                p.state,
                p.path,
                p.endpoint.as_deref().unwrap_or("-"),
                secs(p.last_heartbeat_secs),
                p.nat.as_deref().unwrap_or("-"),
                p.method.as_deref().unwrap_or("-"),
                secs(p.time_to_direct_secs),
                p.key
                    .as_ref()
                    .map(|k| format!("{} ({})", k.fingerprint, k.source))
                    .unwrap_or_else(|| "-".into()),
                p.handshake_secs
                    .map(|a| format!("{a:.0}s ago"))
                    .unwrap_or_else(|| "none".into()),
                if p.sealing.is_empty() { "-" } else { &p.sealing },
                p.tx_bytes,
                p.rx_bytes
            ));
        }
    }
    if s.peers.iter().any(|p| !p.why.is_empty()) {
        out.push_str(&format!("\n{:<16} {:<7} WHY\n", "PEER", "PATH"));
        for p in s.peers.iter().filter(|p| !p.why.is_empty()) {
            out.push_str(&format!("{:<16} {:<7} {}\n", p.vip, p.path, p.why));
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
            let listener = status_socket::bind(&p2).unwrap();
            let server = tokio::spawn(status_socket::serve(listener, move || served.clone()));
            let got = tokio::task::spawn_blocking(move || query(&p2))
                .await
                .unwrap();
            server.abort();
            got
        });
        assert_eq!(got.unwrap(), want);
        assert!(render(&want).contains("CONNECTED"));
        let mut peer = want.peers[0].clone();
        peer.nat = Some("symmetric/+1".into());
        peer.method = Some("port prediction".into());
        peer.time_to_direct_secs = Some(0.42);
        peer.key = Some(KeyLine {
            fingerprint: "0123456789abcdef".into(),
            source: "tofu".into(),
        });
        peer.handshake_secs = Some(12.3);
        peer.sealing = "session".into();
        let mut fresh = want.peers[0].clone();
        fresh.vip = "10.77.0.4".into();
        let shown = render(&Status {
            peers: vec![peer, fresh],
            key_fingerprint: Some("fedcba9876543210".into()),
            public_key: Some("PUBKEY=".into()),
            nat: Some("cone/port-restricted".into()),
            ..want.clone()
        });
        for word in [
            "symmetric/+1",
            "port prediction",
            "0.4s",
            "nat cone/port-restricted",
            "0123456789abcdef (tofu)",
            "12s ago",
            "none",
            "key fedcba9876543210  PUBKEY=",
            "session",
        ] {
            assert!(shown.contains(word), "{word} in {shown}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_counter_reaches_the_operator() {
        let mut s = Status::default();
        // Distinct values, so a field shown under the wrong name is caught.
        let mut next = 1000u64;
        let mut bump = || {
            next += 1;
            next
        };
        s.dataplane.decrypt_failed = bump();
        s.dataplane.no_route = bump();
        s.dataplane.oversize = bump();
        s.dataplane.send_errors = bump();
        s.dataplane.tun_write_errors = bump();
        s.dataplane.tun_coalesced_packets = bump();
        s.control.relay_dropped = bump();
        s.node.stun_ignored = bump();
        s.router.routes_ignored = bump();
        s.handshake.keys_refused = bump();
        s.handshake.transport_refused = bump();
        let json = serde_json::to_value(&s).unwrap();
        let text = render(&s);
        let groups = [
            (None, s.dataplane.fields().collect::<Vec<_>>()),
            (None, s.control.fields().collect()),
            (Some("node"), s.node.fields().collect()),
            (Some("router"), s.router.fields().collect()),
            (Some("handshake"), s.handshake.fields().collect()),
        ];
        // Flattened groups share one JSON object: a name used twice would
        // silently hide one of the counters.
        let mut names = std::collections::HashSet::new();
        for (nested, fields) in groups {
            for (name, value) in fields {
                let got = match nested {
                    Some(group) => &json[group][name],
                    None => &json[name],
                };
                assert_eq!(got.as_u64(), Some(value), "{name} in --json");
                let line = text
                    .lines()
                    .find(|l| l.split_whitespace().any(|w| w == name))
                    .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
                if value > 1000 {
                    assert!(
                        line.contains(&format!("{name} ")) && line.contains(&value.to_string())
                    );
                }
                assert!(names.insert((nested, name)), "{name} declared twice");
            }
        }
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn query_without_a_client_says_so() {
        let e = query(Path::new("/nonexistent/ringlink.sock")).unwrap_err();
        assert!(matches!(e, QueryError::Connect { .. }), "{e}");
        assert!(
            e.to_string().contains("is `ringlink client` running?"),
            "{e}"
        );
    }
}
