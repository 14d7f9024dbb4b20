//! Prometheus text (exposition format 0.0.4) for the client and the server:
//! what `/metrics` serves (`http.rs`) and `ringlink metrics` prints.
//!
//! The text is built from the same values `ringlink status` shows: the
//! client's from one [`Status`], the server's from its counter snapshot.
//! Every `counters!` counter is exported, with its doc comment as HELP:
//! as `ringlink_<group>_<name>_total`, or, for the counters listed in the
//! fold tables below, as one series of a family with bounded labels
//! (traffic by path and direction, server frames by kind and reason).
//! Labels never carry a peer's address unless the client asks for it
//! (`metrics_per_peer`).
//!
//! Why the `prometheus` crate: it writes format 0.0.4, which node-exporter's
//! textfile collector parses with types intact; `prometheus-client` writes
//! only OpenMetrics, whose counter TYPE lines name the family without
//! `_total`, so a 0.0.4 parser takes those samples for untyped ones. Its
//! registry also checks names, label names and duplicate families, so a
//! mistake here is an error in the tests rather than a silently bad scrape.

pub mod http;

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::control::status::Status;
use crate::counters::Described;
use crate::peer::PeerState;
use crate::server::ServerCounterSnapshot;

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bounds of the time-to-direct buckets, in seconds: a ringlink pair
/// is direct in tens of milliseconds, a stock Candy peer in about three
/// seconds (it waits for its 1 s tick at each step), a lossy path later.
const TIME_TO_DIRECT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, thiserror::Error)]
#[error("building the metrics text: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A family whose series are counters of a `counters!` group, told apart
/// by labels.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

/// Counter `counter` of a group is the series `labels` of `family`.
struct Fold {
    counter: &'static str,
    family: &'static Family,
    labels: &'static [&'static str],
}

const TRAFFIC_PACKETS: Family = Family {
    name: "ringlink_traffic_packets_total",
    help: "Packets through the tunnel by path (direct: UDP to or from the node they are for; \
           via: UDP through another node; relay: through the server) and direction \
           (tx: read from TUN and sent; rx: received and written to TUN).",
    kind: Kind::Counter,
    labels: &["path", "direction"],
};

const TRAFFIC_BYTES: Family = Family {
    name: "ringlink_traffic_bytes_total",
    help: "Bytes of those packets (with any subnet pseudo-header, without the UDP envelope \
           or WebSocket framing), by path and direction as ringlink_traffic_packets_total.",
    kind: Kind::Counter,
    labels: &["path", "direction"],
};

const CLIENT_FOLDS: &[Fold] = &[
    Fold {
        counter: "direct_tx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["direct", "tx"],
    },
    Fold {
        counter: "direct_tx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["direct", "tx"],
    },
    Fold {
        counter: "via_tx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["via", "tx"],
    },
    Fold {
        counter: "via_tx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["via", "tx"],
    },
    Fold {
        counter: "direct_rx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["direct", "rx"],
    },
    Fold {
        counter: "direct_rx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["direct", "rx"],
    },
    Fold {
        counter: "via_rx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["via", "rx"],
    },
    Fold {
        counter: "via_rx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["via", "rx"],
    },
    Fold {
        counter: "turn_tx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["turn", "tx"],
    },
    Fold {
        counter: "turn_tx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["turn", "tx"],
    },
    Fold {
        counter: "turn_rx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["turn", "rx"],
    },
    Fold {
        counter: "turn_rx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["turn", "rx"],
    },
    Fold {
        counter: "tcp_tx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["tcp", "tx"],
    },
    Fold {
        counter: "tcp_tx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["tcp", "tx"],
    },
    Fold {
        counter: "tcp_rx_packets",
        family: &TRAFFIC_PACKETS,
        labels: &["tcp", "rx"],
    },
    Fold {
        counter: "tcp_rx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["tcp", "rx"],
    },
    Fold {
        counter: "relay_tx_frames",
        family: &TRAFFIC_PACKETS,
        labels: &["relay", "tx"],
    },
    Fold {
        counter: "relay_tx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["relay", "tx"],
    },
    Fold {
        counter: "relay_rx_frames",
        family: &TRAFFIC_PACKETS,
        labels: &["relay", "rx"],
    },
    Fold {
        counter: "relay_rx_bytes",
        family: &TRAFFIC_BYTES,
        labels: &["relay", "rx"],
    },
];

const SERVER_MEMBERS: Family = Family {
    name: "ringlink_server_members",
    help: "Authenticated clients (sessions) right now.",
    kind: Kind::Gauge,
    labels: &[],
};

const SERVER_FORWARDED: Family = Family {
    name: "ringlink_server_frames_forwarded_total",
    help: "Frames the server relayed, by kind (unicast: a FORWARD to one client; broadcast: \
           a FORWARD to everyone, counted once; control: UDP4CONN, DISCOVERY and GENERAL).",
    kind: Kind::Counter,
    labels: &["kind"],
};

const SERVER_DROPPED: Family = Family {
    name: "ringlink_server_frames_dropped_total",
    help: "Frames the server did not relay, by reason (no_route and spoofed: FORWARDs to no \
           client, or with a source the sender may not use; control_no_route and \
           control_spoofed: the same for control frames; queue_full: the receiving \
           client's queue was full).",
    kind: Kind::Counter,
    labels: &["reason"],
};

const SERVER_REFUSED: Family = Family {
    name: "ringlink_server_refused_total",
    help: "Connections, logins and frames the server refused, by reason (capacity: \
           max_clients reached; bad_hash: wrong password; stale_timestamp: clocks too far \
           apart; outside_pool, address_in_use, pool_exhausted: the address asked for; \
           second_auth; unauthenticated: relay before AUTH; malformed; oversize).",
    kind: Kind::Counter,
    labels: &["reason"],
};

const SERVER_FOLDS: &[Fold] = &[
    Fold {
        counter: "clients",
        family: &SERVER_MEMBERS,
        labels: &[],
    },
    Fold {
        counter: "forward_unicast",
        family: &SERVER_FORWARDED,
        labels: &["unicast"],
    },
    Fold {
        counter: "forward_broadcast",
        family: &SERVER_FORWARDED,
        labels: &["broadcast"],
    },
    Fold {
        counter: "control_relayed",
        family: &SERVER_FORWARDED,
        labels: &["control"],
    },
    Fold {
        counter: "forward_no_route",
        family: &SERVER_DROPPED,
        labels: &["no_route"],
    },
    Fold {
        counter: "forward_spoofed",
        family: &SERVER_DROPPED,
        labels: &["spoofed"],
    },
    Fold {
        counter: "control_no_route",
        family: &SERVER_DROPPED,
        labels: &["control_no_route"],
    },
    Fold {
        counter: "control_spoofed",
        family: &SERVER_DROPPED,
        labels: &["control_spoofed"],
    },
    Fold {
        counter: "queue_full",
        family: &SERVER_DROPPED,
        labels: &["queue_full"],
    },
    Fold {
        counter: "refused_capacity",
        family: &SERVER_REFUSED,
        labels: &["capacity"],
    },
    Fold {
        counter: "refused_bad_hash",
        family: &SERVER_REFUSED,
        labels: &["bad_hash"],
    },
    Fold {
        counter: "refused_stale_timestamp",
        family: &SERVER_REFUSED,
        labels: &["stale_timestamp"],
    },
    Fold {
        counter: "refused_outside_pool",
        family: &SERVER_REFUSED,
        labels: &["outside_pool"],
    },
    Fold {
        counter: "refused_address_in_use",
        family: &SERVER_REFUSED,
        labels: &["address_in_use"],
    },
    Fold {
        counter: "refused_pool_exhausted",
        family: &SERVER_REFUSED,
        labels: &["pool_exhausted"],
    },
    Fold {
        counter: "refused_second_auth",
        family: &SERVER_REFUSED,
        labels: &["second_auth"],
    },
    Fold {
        counter: "refused_unauthenticated",
        family: &SERVER_REFUSED,
        labels: &["unauthenticated"],
    },
    Fold {
        counter: "refused_malformed",
        family: &SERVER_REFUSED,
        labels: &["malformed"],
    },
    Fold {
        counter: "refused_oversize",
        family: &SERVER_REFUSED,
        labels: &["oversize"],
    },
];

/// One scrape's worth of families, registered in a fresh registry (which
/// checks every name and refuses a family registered twice).
struct Exposition {
    registry: Registry,
    /// Folded series waiting for their family, by family name.
    folded: BTreeMap<&'static str, (&'static Family, Samples)>,
}

/// Series of one family: label values and value.
type Samples = Vec<(Vec<String>, u64)>;

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Exposition {
    fn new() -> Self {
        Self {
            registry: Registry::new(),
            folded: BTreeMap::new(),
        }
    }

    fn register(&self, c: impl Collector + 'static) -> Result<(), MetricsError> {
        Ok(self.registry.register(Box::new(c))?)
    }

    fn counter(&self, name: &str, help: &str, value: u64) -> Result<(), MetricsError> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        self.register(c)
    }

    fn gauge(&self, name: &str, help: &str, value: u64) -> Result<(), MetricsError> {
        let g = IntGauge::new(name, help)?;
        g.set(gauge_value(value));
        self.register(g)
    }

    /// A labelled family; each sample is its label values and its value.
    fn family<L: AsRef<str>>(
        &self,
        f: &Family,
        samples: impl IntoIterator<Item = (Vec<L>, u64)>,
    ) -> Result<(), MetricsError> {
        let opts = Opts::new(f.name, f.help);
        match f.kind {
            Kind::Counter => {
                let vec = IntCounterVec::new(opts, f.labels)?;
                for (labels, v) in samples {
                    let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
                    vec.get_metric_with_label_values(&labels)?.inc_by(v);
                }
                self.register(vec)
            }
            Kind::Gauge => {
                let vec = IntGaugeVec::new(opts, f.labels)?;
                for (labels, v) in samples {
                    let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
                    vec.get_metric_with_label_values(&labels)?
                        .set(gauge_value(v));
                }
                self.register(vec)
            }
        }
    }

    /// A `counters!` group: each counter either into its fold's family or
    /// as `<prefix><name>_total` with its doc comment as HELP.
    fn group(
        &mut self,
        prefix: &str,
        counters: impl Iterator<Item = Described>,
        folds: &'static [Fold],
    ) -> Result<(), MetricsError> {
        for d in counters {
            match folds.iter().find(|f| f.counter == d.name) {
                Some(fold) => {
                    let labels = fold.labels.iter().map(|l| l.to_string()).collect();
                    self.folded
                        .entry(fold.family.name)
                        .or_insert_with(|| (fold.family, Vec::new()))
                        .1
                        .push((labels, d.value));
                }
                None => self.counter(&format!("{prefix}{}_total", d.name), &d.help(), d.value)?,
            }
        }
        Ok(())
    }

    fn text(mut self) -> Result<String, MetricsError> {
        for (family, samples) in std::mem::take(&mut self.folded).into_values() {
            // An unlabelled family is one plain series.
            match (family.labels.is_empty(), family.kind, samples.as_slice()) {
                (true, Kind::Gauge, [(_, v)]) => self.gauge(family.name, family.help, *v)?,
                (true, Kind::Counter, [(_, v)]) => self.counter(family.name, family.help, *v)?,
                _ => self.family(family, samples)?,
            }
        }
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

/// `ringlink_info`: which program and version answer.
fn info(e: &Exposition, role: &str) -> Result<(), MetricsError> {
    e.family(
        &Family {
            name: "ringlink_info",
            help: "Always 1; the labels say which program (role) and version this is.",
            kind: Kind::Gauge,
            labels: &["role", "version"],
        },
        [(vec![role, VERSION], 1)],
    )
}

/// Counts of `values` for every label in `known`, zeros included, so a
/// series does not vanish when its count drops to zero. Values outside
/// `known` (a status from another version) are left out: the label set
/// stays bounded.
fn tally<'a>(known: &[&'a str], values: impl Iterator<Item = &'a str>) -> Vec<(Vec<&'a str>, u64)> {
    let mut counts: Vec<(Vec<&str>, u64)> = known.iter().map(|k| (vec![*k], 0)).collect();
    for v in values {
        if let Some((_, n)) = counts.iter_mut().find(|(k, _)| k[0] == v) {
            *n += 1;
        }
    }
    counts
}

/// The client's text: everything in `s`, which is what `ringlink status`
/// shows.
pub fn client_text(s: &Status) -> Result<String, MetricsError> {
    let mut e = Exposition::new();
    info(&e, "client")?;
    e.gauge(
        "ringlink_link_up",
        "1 while this node is logged in to the coordination server.",
        u64::from(s.connected),
    )?;
    e.counter(
        "ringlink_link_reconnects_total",
        "Times the link to the server was lost after a login.",
        s.reconnects,
    )?;
    e.gauge(
        "ringlink_workers",
        "Dataplane worker threads.",
        s.workers as u64,
    )?;
    e.group("ringlink_dataplane_", s.dataplane.described(), CLIENT_FOLDS)?;
    e.group("ringlink_control_", s.control.described(), CLIENT_FOLDS)?;
    e.group("ringlink_node_", s.node.described(), CLIENT_FOLDS)?;
    e.group("ringlink_router_", s.router.described(), CLIENT_FOLDS)?;
    e.group("ringlink_handshake_", s.handshake.described(), CLIENT_FOLDS)?;

    let states: Vec<&str> = PeerState::ALL.iter().map(|s| s.as_str()).collect();
    e.family(
        &Family {
            name: "ringlink_peers_by_state",
            help: "Peers this node knows, by the state of their direct path (Candy's states).",
            kind: Kind::Gauge,
            labels: &["state"],
        },
        tally(&states, s.peers.iter().map(|p| p.state.as_str())),
    )?;
    e.family(
        &Family {
            name: "ringlink_peers_by_path",
            help: "Peers by the path their traffic takes now (direct: UDP; turn: a TURN \
                   server's UDP relay; tcp: a direct TCP stream; relay: the ringlink server).",
            kind: Kind::Gauge,
            labels: &["path"],
        },
        tally(
            &["direct", "turn", "tcp", "relay"],
            s.peers.iter().map(|p| p.path.as_str()),
        ),
    )?;
    e.family(
        &Family {
            name: "ringlink_peers_by_speaks",
            help: "Peers by protocol: ringlink (paths proven by challenge) or candy (stock \
                   Candy's rules).",
            kind: Kind::Gauge,
            labels: &["speaks"],
        },
        tally(
            &["ringlink", "candy"],
            s.peers.iter().map(|p| p.speaks.as_str()),
        ),
    )?;
    // The method labels are the method table's outcomes (`nat::Method`'s
    // names), plus "none" for Candy peers and attempts not yet chosen.
    let method = |p: &crate::control::status::PeerLine| match p.method.as_deref() {
        Some("simultaneous open") => "simultaneous_open",
        Some("port prediction") => "port_prediction",
        Some("birthday") => "birthday",
        Some("prediction + birthday") => "prediction_and_birthday",
        Some("reverse connect") => "reverse_connect",
        Some("relay") => "relay",
        _ => "none",
    };
    const METHODS: [&str; 7] = [
        "simultaneous_open",
        "port_prediction",
        "birthday",
        "prediction_and_birthday",
        "reverse_connect",
        "relay",
        "none",
    ];
    e.family(
        &Family {
            name: "ringlink_peers_by_method",
            help: "Peers by the traversal method of their current or last attempt.",
            kind: Kind::Gauge,
            labels: &["method"],
        },
        tally(&METHODS, s.peers.iter().map(method)),
    )?;
    e.family(
        &Family {
            name: "ringlink_direct_peers_by_method",
            help: "Peers on a direct path, by the method that made it.",
            kind: Kind::Gauge,
            labels: &["method"],
        },
        tally(
            &METHODS,
            s.peers.iter().filter(|p| p.path == "direct").map(method),
        ),
    )?;
    if let Some(nat) = s.nat.as_deref() {
        e.family(
            &Family {
                name: "ringlink_nat_info",
                help: "This node's NAT as its published classification names it (always 1).",
                kind: Kind::Gauge,
                labels: &["nat"],
            },
            vec![(vec![nat], 1)],
        )?;
    }
    // Peers are never forgotten while the node runs, so the sum only grows.
    e.counter(
        "ringlink_direct_attempts_total",
        "Attempts at a direct path, summed over peers.",
        s.peers.iter().map(|p| u64::from(p.attempts)).sum(),
    )?;
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "ringlink_time_to_direct_seconds",
            "How long the attempt that made each peer direct took: one observation per peer \
             that has been direct, its latest attempt (a picture of the peers now, so use the \
             buckets without rate()).",
        )
        .buckets(TIME_TO_DIRECT_BUCKETS.to_vec()),
    )?;
    for t in s.peers.iter().filter_map(|p| p.time_to_direct_secs) {
        h.observe(t);
    }
    e.register(h)?;
    e.family(
        &Family {
            name: "ringlink_routes_by_path",
            help: "Routes in ringlink status by path (direct, turn, tcp, via another node, \
                   relay, or local for this gateway's own subnets).",
            kind: Kind::Gauge,
            labels: &["path"],
        },
        tally(
            &["direct", "turn", "tcp", "via", "relay", "local"],
            s.routes
                .iter()
                .map(|r| r.path.split_whitespace().next().unwrap_or("")),
        ),
    )?;
    if s.metrics_per_peer {
        let per_peer = s.peers.iter().flat_map(|p| {
            [
                (vec![p.vip.as_str(), "tx"], p.tx_bytes),
                (vec![p.vip.as_str(), "rx"], p.rx_bytes),
            ]
        });
        e.family(
            &Family {
                name: "ringlink_peer_traffic_bytes_total",
                help: "Bytes over the direct path by peer (tx: to it as next hop; rx: from it \
                       as source); only with metrics_per_peer = true.",
                kind: Kind::Counter,
                labels: &["peer", "direction"],
            },
            per_peer,
        )?;
    }
    e.text()
}

/// The server's text: every server counter.
pub fn server_text(c: &ServerCounterSnapshot) -> Result<String, MetricsError> {
    server_exposition(c, None)
}

/// What only a cluster instance reports.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    /// (network, instance, members): how many members each instance
    /// holds, per network, as this instance sees them.
    pub members: Vec<(String, String, u64)>,
    /// Other instances whose networks, passwords, pools or routes differ
    /// from this one's.
    pub config_mismatch: u64,
}

/// A cluster instance's text: every server counter and its [`ClusterGauges`].
pub fn server_text_cluster(
    c: &ServerCounterSnapshot,
    cluster: &ClusterGauges,
) -> Result<String, MetricsError> {
    server_exposition(c, Some(cluster))
}

fn server_exposition(
    c: &ServerCounterSnapshot,
    cluster: Option<&ClusterGauges>,
) -> Result<String, MetricsError> {
    let mut e = Exposition::new();
    info(&e, "server")?;
    e.group("ringlink_server_", c.described(), SERVER_FOLDS)?;
    let Some(cluster) = cluster else {
        return e.text();
    };
    e.gauge(
        "ringlink_server_cluster_config_mismatch",
        "Other instances of the cluster whose networks, passwords, pools or routes differ from this instance's (each is logged as an error naming the instance and the sections); 0 when all match.",
        cluster.config_mismatch,
    )?;
    let members = &cluster.members;
    if !members.is_empty() {
        e.family(
            &Family {
                name: "ringlink_server_cluster_members",
                help: "Members held by each server instance of the cluster, per network, as this instance sees them (its own from its sessions, the others' from the lease bucket).",
                kind: Kind::Gauge,
                labels: &["network", "instance"],
            },
            members
                .iter()
                .map(|(n, i, v)| (vec![n.as_str(), i.as_str()], *v)),
        )?;
    }
    e.text()
}

#[cfg(test)]
mod tests;
