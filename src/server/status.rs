//! `ringlink status --server`: the members of a running server, served on
//! its control socket (`status_socket`) as one JSON document and printed
//! by the CLI as a table.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::counters::ServerCounterSnapshot;
use crate::config::DEFAULT_NETWORK;
use crate::counters::{counters, render_block};

counters! {
    /// One session's traffic, counted by the session and its writer.
    atomic SessionTraffic => TrafficSnapshot {
        /// Frames received from the member (every type, its login included).
        frames_in,
        /// Bytes of those frames (WebSocket payload).
        bytes_in,
        /// Frames sent to the member: relayed packets, peer messages, routes.
        frames_out,
        /// Bytes of those frames (WebSocket payload).
        bytes_out,
    }
}

impl TrafficSnapshot {
    /// One frame of `len` bytes from the member.
    pub(crate) fn inbound(len: usize) -> Self {
        Self {
            frames_in: 1,
            bytes_in: len as u64,
            ..Self::default()
        }
    }

    /// One frame of `len` bytes to the member.
    pub(crate) fn outbound(len: usize) -> Self {
        Self {
            frames_out: 1,
            bytes_out: len as u64,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberLine {
    pub vip: String,
    /// The network it joined (`default` for the top-level one).
    pub network: String,
    /// The VMAC the member sent (Candy's device identity), if it sent one.
    pub vmac: Option<String>,
    /// The server instance holding the session.
    pub instance: String,
    /// Where its WebSocket connection comes from.
    pub remote: String,
    /// Login time, seconds since the Unix epoch.
    pub connected_since: u64,
    #[serde(flatten)]
    pub traffic: TrafficSnapshot,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    /// This server process: its `[cluster]` name, else the host it runs
    /// on. The members listed are the ones it holds; other instances of a
    /// cluster list their own.
    pub instance: String,
    /// `ws://` or `wss://` and the bound address.
    pub listen: String,
    /// Every network served, the default one first.
    pub networks: Vec<NetworkLine>,
    /// By network (in the order of `networks`), then by VIP.
    pub members: Vec<MemberLine>,
    pub counters: ServerCounterSnapshot,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkLine {
    pub name: String,
    /// The URL path that selects it; the default network also answers
    /// every path no other network has.
    pub path: String,
    pub pool: String,
    /// How many members it has here.
    pub members: usize,
}

/// The host name, which names this server instance.
pub(crate) fn instance_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "server".to_string(),
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `secs` since the Unix epoch as UTC `YYYY-MM-DD hh:mm:ssZ`. Days become
/// a civil date by the usual era arithmetic (400-year cycles of 146097
/// days, years starting in March so the leap day comes last).
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// How long ago, for the table: "3d04h", "2h05m", "4m07s", "12s".
fn age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s / 3_600 % 24),
        s if s >= 3_600 => format!("{}h{:02}m", s / 3_600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The human form; `now` (seconds since the epoch) dates the ages.
pub fn render(s: &ServerStatus, now: u64) -> String {
    let mut out = format!(
        "server {}  listening {}  members {}\n",
        s.instance,
        s.listen,
        s.members.len()
    );
    for n in &s.networks {
        let path = if n.name == DEFAULT_NETWORK {
            format!("{} (and any other)", n.path)
        } else {
            n.path.clone()
        };
        out.push_str(&format!(
            "network {}  path {path}  pool {}  members {}\n",
            n.name, n.pool, n.members
        ));
    }
    render_block(&mut out, "counters", s.counters.fields());
    if s.members.is_empty() {
        out.push_str("\nno members\n");
        return out;
    }
    // Network names run to 64 characters; the column fits the longest.
    let nw = s
        .members
        .iter()
        .map(|m| m.network.len())
        .max()
        .unwrap_or(0)
        .max("NETWORK".len());
    out.push_str(&format!(
        "\n{:<16} {:<nw$} {:<16} {:<16} {:<22} {:<29} {:>10} {:>14} {:>10} {:>14}\n",
        "VIP",
        "NETWORK",
        "VMAC",
        "INSTANCE",
        "REMOTE",
        "CONNECTED SINCE",
        "FRAMES IN",
        "BYTES IN",
        "FRAMES OUT",
        "BYTES OUT"
    ));
    for m in &s.members {
        let since = format!(
            "{} ({})",
            utc(m.connected_since),
            age(now.saturating_sub(m.connected_since))
        );
        out.push_str(&format!(
            "{:<16} {:<nw$} {:<16} {:<16} {:<22} {:<29} {:>10} {:>14} {:>10} {:>14}\n",
            m.vip,
            m.network,
            m.vmac.as_deref().unwrap_or("-"),
            m.instance,
            m.remote,
            since,
            m.traffic.frames_in,
            m.traffic.bytes_in,
            m.traffic.frames_out,
            m.traffic.bytes_out
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        // A leap day, and the day after a century leap year's.
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(951_868_799), "2000-02-29 23:59:59Z");
        assert_eq!(utc(1_709_251_199), "2024-02-29 23:59:59Z");
        assert_eq!(utc(1_735_689_600), "2025-01-01 00:00:00Z");
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00Z");
        assert_eq!(utc(4_107_542_400), "2100-03-01 00:00:00Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(12), "12s");
        assert_eq!(age(247), "4m07s");
        assert_eq!(age(7_500), "2h05m");
        assert_eq!(age(3 * 86_400 + 4 * 3_600 + 59), "3d04h");
    }

    #[test]
    fn table_and_json_carry_every_member_field() {
        let s = ServerStatus {
            instance: "relay-1".into(),
            listen: "ws://10.91.0.1:7443".into(),
            networks: vec![
                NetworkLine {
                    name: "default".into(),
                    path: "/".into(),
                    pool: "10.77.0.0/24".into(),
                    members: 1,
                },
                NetworkLine {
                    name: "lab".into(),
                    path: "/lab".into(),
                    pool: "10.78.0.0/24".into(),
                    members: 0,
                },
            ],
            members: vec![MemberLine {
                vip: "10.77.0.11".into(),
                network: "default".into(),
                vmac: Some("0123456789abcdef".into()),
                instance: "relay-1".into(),
                remote: "10.91.0.11:40000".into(),
                connected_since: 1_735_689_600,
                traffic: TrafficSnapshot {
                    frames_in: 1_001,
                    bytes_in: 1_002,
                    frames_out: 1_003,
                    bytes_out: 1_004,
                },
            }],
            counters: ServerCounterSnapshot {
                clients: 1,
                forward_unicast: 77,
                ..Default::default()
            },
        };
        let text = render(&s, 1_735_689_600 + 65);
        let row = text
            .lines()
            .find(|l| l.starts_with("10.77.0.11"))
            .unwrap_or_else(|| panic!("no member row in\n{text}"));
        for word in [
            "default",
            "0123456789abcdef",
            "relay-1",
            "10.91.0.11:40000",
            "2025-01-01 00:00:00Z (1m05s)",
            "1001",
            "1002",
            "1003",
            "1004",
        ] {
            assert!(row.contains(word), "{word} in {row}");
        }
        assert!(text.contains("forward_unicast"), "{text}");
        assert!(
            text.contains("network lab  path /lab  pool 10.78.0.0/24  members 0"),
            "{text}"
        );
        assert!(text.contains("path / (and any other)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["members"][0]["bytes_out"], 1_004);
        assert_eq!(json["members"][0]["vip"], "10.77.0.11");
        assert_eq!(json["members"][0]["network"], "default");
        assert_eq!(json["networks"][1]["pool"], "10.78.0.0/24");
        assert_eq!(json["counters"]["forward_unicast"], 77);
        let back: ServerStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let empty = render(&ServerStatus::default(), 0);
        assert!(empty.contains("no members"), "{empty}");
    }
}
