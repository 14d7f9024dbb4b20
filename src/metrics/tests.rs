use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;
use crate::control::status::{PeerLine, RouteLine};

type Labels = Vec<(String, String)>;

/// One sample line, parsed.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: String,
}

/// Label values as the format writes them: `\\`, `\"` and `\n` are the
/// only escapes.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].to_string();
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("unknown escape \\{c}")),
                },
                (i, '"') => break i,
                (_, '\n') => return Err("raw newline in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks `text` against the 0.0.4 text format and this crate's naming
/// rules, and returns its samples and each family's type.
fn parse_exposition(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut series = HashSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "{name}: empty HELP");
            assert!(helps.insert(name.to_string()), "{name}: two HELP lines");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(
                ["counter", "gauge", "histogram"].contains(&ty),
                "{name}: type {ty}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "{name}: two TYPE lines"
            );
            assert!(helps.contains(name), "{name}: HELP before TYPE");
            current = Some(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => panic!("sample without value: {line}"),
        };
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(r) => parse_labels(r).unwrap_or_else(|e| panic!("{e}: {line}")),
            None => (Vec::new(), rest),
        };
        let value = rest.strip_prefix(' ').expect("space before the value");
        assert!(
            value == "+Inf" || value.parse::<f64>().is_ok(),
            "value {value:?}: {line}"
        );
        assert!(valid_name(name), "{name}");
        for (l, _) in &labels {
            assert!(valid_name(l) && !l.starts_with("__"), "label {l}");
        }
        let family = current.as_deref().expect("sample before any TYPE");
        let ty = &types[family];
        let ok = match ty.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == family,
        };
        assert!(ok, "{name} is not a sample of {ty} {family}");
        let key = format!("{name}{labels:?}");
        assert!(series.insert(key), "series twice: {line}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: value.to_string(),
        });
    }
    for (name, ty) in &types {
        assert!(name.starts_with("ringlink_"), "{name}");
        assert_eq!(
            name.ends_with("_total"),
            ty == "counter",
            "{name} ({ty}): counters and only counters end in _total"
        );
    }
    (samples, types)
}

/// A status with a distinct value in every counter, so a counter exported
/// under the wrong name, twice or not at all is caught.
fn numbered_status() -> Status {
    let mut s = Status::default();
    let mut json = serde_json::to_value(&s).unwrap();
    let mut next = 1000u64;
    let mut fill = |obj: &mut serde_json::Value, names: Vec<&'static str>| {
        for n in names {
            next += 7;
            obj[n] = next.into();
        }
    };
    fill(&mut json, s.dataplane.fields().map(|f| f.0).collect());
    fill(&mut json, s.control.fields().map(|f| f.0).collect());
    fill(&mut json["node"], s.node.fields().map(|f| f.0).collect());
    fill(
        &mut json["router"],
        s.router.fields().map(|f| f.0).collect(),
    );
    fill(
        &mut json["handshake"],
        s.handshake.fields().map(|f| f.0).collect(),
    );
    s = serde_json::from_value(json).unwrap();
    s.connected = true;
    s.reconnects = 3;
    s.workers = 2;
    s
}

fn value_of<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a str> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value.as_str())
}

#[test]
fn every_client_counter_is_exported_once() {
    let s = numbered_status();
    let text = client_text(&s).unwrap();
    let (samples, types) = parse_exposition(&text);
    let groups: [(&str, Vec<Described>); 5] = [
        ("ringlink_dataplane_", s.dataplane.described().collect()),
        ("ringlink_control_", s.control.described().collect()),
        ("ringlink_node_", s.node.described().collect()),
        ("ringlink_router_", s.router.described().collect()),
        ("ringlink_handshake_", s.handshake.described().collect()),
    ];
    for (prefix, counters) in groups {
        for d in counters {
            let value = d.value.to_string();
            let holders: Vec<_> = samples.iter().filter(|x| x.value == value).collect();
            assert_eq!(holders.len(), 1, "{} = {value} in:\n{text}", d.name);
            match CLIENT_FOLDS.iter().find(|f| f.counter == d.name) {
                Some(f) => assert_eq!(holders[0].name, f.family.name, "{}", d.name),
                None => {
                    let name = format!("{prefix}{}_total", d.name);
                    assert_eq!(holders[0].name, name);
                    assert_eq!(types[&name], "counter");
                    assert!(
                        text.contains(&format!("# HELP {name} {}\n", d.help())),
                        "{name}'s HELP is its doc comment"
                    );
                }
            }
        }
    }
    let dp = &s.dataplane;
    let bytes = |path, dir| {
        value_of(
            &samples,
            "ringlink_traffic_bytes_total",
            &[("path", path), ("direction", dir)],
        )
    };
    let direct_tx = dp.direct_tx_bytes.to_string();
    let relay_rx = s.control.relay_rx_bytes.to_string();
    assert_eq!(bytes("direct", "tx"), Some(direct_tx.as_str()));
    assert_eq!(bytes("relay", "rx"), Some(relay_rx.as_str()));
    assert_eq!(value_of(&samples, "ringlink_link_up", &[]), Some("1"));
    assert_eq!(
        value_of(&samples, "ringlink_link_reconnects_total", &[]),
        Some("3")
    );
    assert_eq!(types["ringlink_traffic_packets_total"], "counter");
}

#[test]
fn every_fold_names_a_real_counter() {
    let s = Status::default();
    let client: HashSet<_> = s
        .dataplane
        .fields()
        .chain(s.control.fields())
        .chain(s.node.fields())
        .chain(s.router.fields())
        .map(|f| f.0)
        .collect();
    for f in CLIENT_FOLDS {
        assert!(client.contains(f.counter), "{}", f.counter);
        assert_eq!(f.labels.len(), f.family.labels.len(), "{}", f.counter);
    }
    let server: HashSet<_> = ServerCounterSnapshot::default()
        .fields()
        .map(|f| f.0)
        .collect();
    for f in SERVER_FOLDS {
        assert!(server.contains(f.counter), "{}", f.counter);
        assert_eq!(f.labels.len(), f.family.labels.len(), "{}", f.counter);
    }
    // Two counters in one series would add up unnoticed.
    for folds in [CLIENT_FOLDS, SERVER_FOLDS] {
        let mut seen = HashSet::new();
        for f in folds {
            assert!(seen.insert((f.family.name, f.labels)), "{}", f.counter);
        }
    }
}

#[test]
fn peers_by_bounded_labels_without_addresses() {
    let peer = |vip: &str, state: &str, speaks: &str, attempts, ttd| PeerLine {
        vip: vip.into(),
        state: state.into(),
        path: match state {
            "CONNECTED" => "direct",
            // A ringlink peer whose attempt missed, on a TURN path.
            "WAITING" if speaks == "ringlink" => "turn",
            _ => "relay",
        }
        .into(),
        speaks: speaks.into(),
        attempts,
        time_to_direct_secs: ttd,
        tx_bytes: 5000,
        rx_bytes: 7000,
        ..Default::default()
    };
    let s = Status {
        peers: vec![
            peer("10.77.0.2", "CONNECTED", "ringlink", 1, Some(0.04)),
            peer("10.77.0.3", "CONNECTED", "candy", 2, Some(3.2)),
            peer("10.77.0.4", "WAITING", "candy", 4, None),
            peer("10.77.0.6", "WAITING", "ringlink", 1, None),
            // From a status of another version: counted nowhere.
            peer("10.77.0.5", "DREAMING", "klingon", 0, None),
        ],
        routes: vec![
            RouteLine {
                dst: "10.77.0.9".into(),
                path: "via 10.77.0.2".into(),
                ..Default::default()
            },
            RouteLine {
                dst: "192.168.5.0/24".into(),
                path: "local".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let text = client_text(&s).unwrap();
    let (samples, types) = parse_exposition(&text);
    let v = |name, labels: &[(&str, &str)]| value_of(&samples, name, labels).map(str::to_string);
    let one = |n: &str| Some(n.to_string());
    assert_eq!(
        v("ringlink_peers_by_state", &[("state", "CONNECTED")]),
        one("2")
    );
    assert_eq!(
        v("ringlink_peers_by_state", &[("state", "WAITING")]),
        one("2")
    );
    // Every state is there, zeros included, and nothing else.
    let states: Vec<_> = samples
        .iter()
        .filter(|x| x.name == "ringlink_peers_by_state")
        .collect();
    assert_eq!(states.len(), PeerState::ALL.len());
    assert_eq!(
        v("ringlink_peers_by_state", &[("state", "FAILED")]),
        one("0")
    );
    assert_eq!(
        v("ringlink_peers_by_speaks", &[("speaks", "candy")]),
        one("2")
    );
    assert_eq!(
        v("ringlink_peers_by_speaks", &[("speaks", "ringlink")]),
        one("2")
    );
    assert_eq!(v("ringlink_peers_by_path", &[("path", "direct")]), one("2"));
    assert_eq!(v("ringlink_peers_by_path", &[("path", "turn")]), one("1"));
    assert_eq!(v("ringlink_peers_by_path", &[("path", "relay")]), one("2"));
    assert_eq!(v("ringlink_direct_attempts_total", &[]), one("8"));
    assert_eq!(v("ringlink_routes_by_path", &[("path", "via")]), one("1"));
    assert_eq!(v("ringlink_routes_by_path", &[("path", "local")]), one("1"));
    assert_eq!(types["ringlink_time_to_direct_seconds"], "histogram");
    let bucket = |le| v("ringlink_time_to_direct_seconds_bucket", &[("le", le)]);
    assert_eq!(bucket("0.05"), one("1"));
    assert_eq!(bucket("2.5"), one("1"));
    assert_eq!(bucket("5"), one("2"));
    assert_eq!(bucket("+Inf"), one("2"));
    assert_eq!(v("ringlink_time_to_direct_seconds_count", &[]), one("2"));
    // No peer's address anywhere by default.
    assert!(!text.contains("10.77.0."), "{text}");
    assert!(!types.contains_key("ringlink_peer_traffic_bytes_total"));
}

#[test]
fn per_peer_traffic_only_when_asked_and_escaped() {
    let s = Status {
        metrics_per_peer: true,
        peers: vec![
            PeerLine {
                vip: "10.77.0.2".into(),
                tx_bytes: 11,
                rx_bytes: 12,
                ..Default::default()
            },
            // A status document is read from a socket: whatever it holds
            // must come out as a well-formed label value.
            PeerLine {
                vip: "a\"b\\c\nd".into(),
                tx_bytes: 21,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let text = client_text(&s).unwrap();
    let (samples, types) = parse_exposition(&text);
    assert_eq!(types["ringlink_peer_traffic_bytes_total"], "counter");
    let name = "ringlink_peer_traffic_bytes_total";
    assert_eq!(
        value_of(
            &samples,
            name,
            &[("peer", "10.77.0.2"), ("direction", "rx")]
        ),
        Some("12")
    );
    assert_eq!(
        value_of(
            &samples,
            name,
            &[("peer", "a\"b\\c\nd"), ("direction", "tx")]
        ),
        Some("21")
    );
    assert!(
        text.contains(r#"peer="a\"b\\c\nd""#),
        "escaped on the wire:\n{text}"
    );
}

#[test]
fn server_text_has_members_and_frames_by_reason() {
    let mut json = serde_json::to_value(ServerCounterSnapshot::default()).unwrap();
    let names: Vec<_> = ServerCounterSnapshot::default()
        .fields()
        .map(|f| f.0)
        .collect();
    for (i, n) in names.iter().enumerate() {
        json[n] = (2000 + 11 * i as u64).into();
    }
    json["clients"] = 2.into();
    let c: ServerCounterSnapshot = serde_json::from_value(json).unwrap();
    let text = server_text(&c).unwrap();
    let (samples, types) = parse_exposition(&text);
    assert_eq!(types["ringlink_server_members"], "gauge");
    assert_eq!(
        value_of(&samples, "ringlink_server_members", &[]),
        Some("2")
    );
    for d in c.described() {
        let value = d.value.to_string();
        let holders: Vec<_> = samples.iter().filter(|x| x.value == value).collect();
        assert_eq!(holders.len(), 1, "{} = {value} in:\n{text}", d.name);
    }
    let forwarded = c.forward_unicast.to_string();
    assert_eq!(
        value_of(
            &samples,
            "ringlink_server_frames_forwarded_total",
            &[("kind", "unicast")]
        ),
        Some(forwarded.as_str())
    );
    let dropped = c.queue_full.to_string();
    assert_eq!(
        value_of(
            &samples,
            "ringlink_server_frames_dropped_total",
            &[("reason", "queue_full")]
        ),
        Some(dropped.as_str())
    );
    let stun = c.stun_answered.to_string();
    assert_eq!(
        value_of(&samples, "ringlink_server_stun_answered_total", &[]),
        Some(stun.as_str())
    );
    assert_eq!(
        value_of(
            &samples,
            "ringlink_info",
            &[("role", "server"), ("version", VERSION)]
        ),
        Some("1")
    );
}

#[test]
fn the_validator_rejects_what_the_format_forbids() {
    let good = "# HELP ringlink_a_total A.\n# TYPE ringlink_a_total counter\nringlink_a_total{x=\"1\"} 3\n";
    parse_exposition(good);
    let bad = [
        // Two TYPE lines for one family.
        "# HELP ringlink_a_total A.\n# TYPE ringlink_a_total counter\n# TYPE ringlink_a_total counter\nringlink_a_total 1\n",
        // A counter without _total.
        "# HELP ringlink_a A.\n# TYPE ringlink_a counter\nringlink_a 1\n",
        // A raw quote inside a label value.
        "# HELP ringlink_a_total A.\n# TYPE ringlink_a_total counter\nringlink_a_total{x=\"a\"b\"} 1\n",
        // A sample of another family under this TYPE.
        "# HELP ringlink_a_total A.\n# TYPE ringlink_a_total counter\nringlink_b_total 1\n",
    ];
    for text in bad {
        let r = std::panic::catch_unwind(|| parse_exposition(text));
        assert!(r.is_err(), "accepted:\n{text}");
    }
}

/// The families a dashboard relies on are present even for a node that
/// has no peers yet, so panels show zeros rather than "no data".
#[test]
fn an_idle_node_still_has_its_families() {
    let text = client_text(&Status::default()).unwrap();
    let (_, types) = parse_exposition(&text);
    let want = BTreeMap::from([
        ("ringlink_traffic_bytes_total", "counter"),
        ("ringlink_traffic_packets_total", "counter"),
        ("ringlink_peers_by_state", "gauge"),
        ("ringlink_peers_by_speaks", "gauge"),
        ("ringlink_direct_attempts_total", "counter"),
        ("ringlink_time_to_direct_seconds", "histogram"),
        ("ringlink_link_up", "gauge"),
    ]);
    for (name, ty) in want {
        assert_eq!(types.get(name).map(String::as_str), Some(ty), "{name}");
    }
}

/// Every metric name the shipped Grafana dashboard queries is one this
/// code exports (a histogram's by its `_bucket`, `_sum` or `_count`).
#[test]
fn the_dashboard_queries_only_exported_names() {
    let client = Status {
        metrics_per_peer: true,
        peers: vec![PeerLine::default()],
        ..Default::default()
    };
    let mut types = parse_exposition(&client_text(&client).unwrap()).1;
    types.extend(parse_exposition(&server_text(&ServerCounterSnapshot::default()).unwrap()).1);
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../dist/grafana/ringlink.json")).unwrap();
    let mut queries = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(q)) => {
                            queries.push(q.clone())
                        }
                        _ => stack.push(v),
                    }
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut used = HashSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("ringlink_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let known = types.contains_key(&name)
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|f| types.get(f).is_some_and(|t| t == "histogram"))
                });
            assert!(
                known,
                "the dashboard queries {name}, which is not exported: {q}"
            );
            used.insert(name);
        }
    }
    for family in [
        "ringlink_traffic_bytes_total",
        "ringlink_peers_by_state",
        "ringlink_time_to_direct_seconds_bucket",
        "ringlink_server_members",
        "ringlink_server_frames_dropped_total",
    ] {
        assert!(used.contains(family), "the dashboard shows {family}");
    }
}

#[test]
fn every_method_has_its_own_label_and_direct_ones_are_counted() {
    use crate::nat::{Method, Predicted, Side};
    let methods = [
        Method::SimultaneousOpen,
        Method::PortPrediction {
            predicted: Predicted::Peer,
        },
        Method::Birthday {
            symmetric: Side::Mine,
        },
        Method::PredictionAndBirthday {
            sequential: Side::Peer,
        },
        Method::ReverseConnect {
            reachable: Side::Mine,
        },
        Method::Relay,
    ];
    let peers: Vec<PeerLine> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| PeerLine {
            vip: format!("10.77.0.{}", i + 2),
            method: Some(m.to_string()),
            path: if i == 1 { "direct" } else { "relay" }.to_string(),
            ..Default::default()
        })
        .collect();
    let status = Status {
        peers,
        nat: Some("cone/port-restricted".into()),
        ..Default::default()
    };
    let (samples, _) = parse_exposition(&client_text(&status).unwrap());
    for label in [
        "simultaneous_open",
        "port_prediction",
        "birthday",
        "prediction_and_birthday",
        "reverse_connect",
        "relay",
    ] {
        assert_eq!(
            value_of(&samples, "ringlink_peers_by_method", &[("method", label)]),
            Some("1"),
            "{label}"
        );
    }
    assert_eq!(
        value_of(&samples, "ringlink_peers_by_method", &[("method", "none")]),
        Some("0")
    );
    assert_eq!(
        value_of(
            &samples,
            "ringlink_direct_peers_by_method",
            &[("method", "port_prediction")]
        ),
        Some("1")
    );
    assert_eq!(
        value_of(
            &samples,
            "ringlink_nat_info",
            &[("nat", "cone/port-restricted")]
        ),
        Some("1")
    );
}

#[test]
fn cluster_members_per_instance_are_a_labelled_gauge() {
    let c = ServerCounterSnapshot::default();
    let members = [
        ("default".to_string(), "s1".to_string(), 2),
        ("default".to_string(), "s2".to_string(), 1),
        ("lab".to_string(), "s1".to_string(), 0),
    ];
    let gauges = ClusterGauges {
        members: members.to_vec(),
        config_mismatch: 2,
    };
    let text = server_text_cluster(&c, &gauges).unwrap();
    let (samples, types) = parse_exposition(&text);
    let mismatch = "ringlink_server_cluster_config_mismatch";
    assert_eq!(types[mismatch], "gauge");
    assert_eq!(value_of(&samples, mismatch, &[]), Some("2"));
    assert!(!server_text(&c).unwrap().contains(mismatch));
    let name = "ringlink_server_cluster_members";
    assert_eq!(types[name], "gauge");
    for (net, inst, v) in &members {
        assert_eq!(
            value_of(&samples, name, &[("network", net), ("instance", inst)]),
            Some(v.to_string().as_str())
        );
    }
    // Without a cluster the family is absent.
    assert!(!server_text(&c).unwrap().contains(name));
}
