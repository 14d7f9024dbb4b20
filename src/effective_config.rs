//! `--check`: a parsed configuration printed back as TOML with every
//! default filled in, so an operator sees what the process would run with.
//!
//! The output parses back to the same configuration (except the password,
//! which is hidden). Both functions take the structs apart field by field,
//! so a new config field does not compile until it is printed here too.

use std::path::Path;

use toml::{Table, Value};

use crate::config::{
    ClientConfig, ClusterConfig, NetworkConfig, PinnedPeer, PushedRoute, ServerConfig, ServerTrust,
    TurnSecret,
};
use crate::proto::crypto::CipherKind;

/// Stands in for the password, which `--check` output must not leak into
/// terminals and logs.
pub const HIDDEN_PASSWORD: &str = "(hidden)";

fn string(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn path(p: &Path) -> Value {
    string(p.display())
}

fn int(v: impl Into<i64>) -> Value {
    Value::Integer(v.into())
}

/// "" is how the file turns `/metrics` off.
fn metrics_value(addr: &Option<std::net::SocketAddr>) -> Value {
    addr.map_or(string(""), string)
}

/// A comment naming the optional keys left unset and
/// what that means (TOML has no null to print them with), then the TOML.
fn render(file: &str, table: Table, unset: &[(&str, &str)]) -> String {
    let mut out = format!("# {file}: valid; effective configuration with defaults\n");
    // Before the table: after it they would read as part of a [[route]].
    for (key, meaning) in unset {
        out.push_str(&format!("# {key}: not set ({meaning})\n"));
    }
    out.push_str(&table.to_string());
    out
}

pub fn server_toml(file: &str, cfg: &ServerConfig) -> String {
    let ServerConfig {
        listen,
        password: _,
        pool,
        tls,
        stun,
        stun_alt_port,
        stun_alt_address,
        routes,
        max_clients,
        max_unauthenticated,
        max_unauthenticated_per_ip,
        broadcast_rate,
        broadcast_burst,
        general_rate,
        general_burst,
        metrics,
        control_socket,
        log,
        cluster,
        networks,
        turn,
    } = cfg;
    let mut t = Table::new();
    let mut unset = Vec::new();
    t.insert("listen".into(), string(listen));
    match pool {
        Some(pool) => {
            t.insert("password".into(), string(HIDDEN_PASSWORD));
            t.insert("pool".into(), string(pool));
        }
        None => unset.push((
            "password, pool",
            "no default network: a path no [[network]] claims is refused",
        )),
    }
    match tls {
        Some(files) => {
            t.insert("tls_cert".into(), path(&files.cert));
            t.insert("tls_key".into(), path(&files.key));
        }
        None => unset.push(("tls_cert, tls_key", "plain ws://")),
    }
    // "" is how the file turns the responder off.
    t.insert("stun".into(), stun.map_or(string(""), string));
    // The alternates exist only with the responder on; the file refuses them otherwise.
    if stun.is_some() {
        t.insert("stun_alt_port".into(), int(*stun_alt_port));
        match stun_alt_address {
            Some(a) => {
                t.insert("stun_alt_address".into(), string(a));
            }
            None => unset.push(("stun_alt_address", "answers from one address only")),
        }
    }
    t.insert(
        "max_clients".into(),
        int(i64::try_from(*max_clients).unwrap_or(i64::MAX)),
    );
    for (key, v) in [
        ("max_unauthenticated", *max_unauthenticated),
        ("max_unauthenticated_per_ip", *max_unauthenticated_per_ip),
    ] {
        t.insert(key.into(), int(i64::try_from(v).unwrap_or(i64::MAX)));
    }
    for (key, v) in [
        ("broadcast_rate", broadcast_rate),
        ("broadcast_burst", broadcast_burst),
        ("general_rate", general_rate),
        ("general_burst", general_burst),
    ] {
        t.insert(key.into(), int(*v));
    }
    t.insert("metrics".into(), metrics_value(metrics));
    t.insert("control_socket".into(), path(control_socket));
    t.insert("log".into(), string(log));
    match turn {
        Some(TurnSecret {
            url,
            secret: _,
            ttl,
        }) => {
            let mut tt = Table::new();
            tt.insert("url".into(), string(url.to_url(None)));
            tt.insert("secret".into(), string(HIDDEN_PASSWORD));
            tt.insert("ttl".into(), int(*ttl));
            t.insert("turn".into(), Value::Table(tt));
        }
        None => unset.push(("turn", "no TURN credentials handed out")),
    }
    let route_table = |r: &PushedRoute| {
        let PushedRoute {
            dst,
            via,
            for_clients,
        } = r;
        let mut rt = Table::new();
        rt.insert("dst".into(), string(dst));
        rt.insert("via".into(), string(via));
        rt.insert("for".into(), string(for_clients));
        Value::Table(rt)
    };
    if !routes.is_empty() {
        t.insert(
            "route".into(),
            Value::Array(routes.iter().map(route_table).collect()),
        );
    }
    if !networks.is_empty() {
        let network_table = |n: &NetworkConfig| {
            let NetworkConfig {
                name,
                path,
                password: _,
                pool,
                routes,
            } = n;
            let mut nt = Table::new();
            nt.insert("name".into(), string(name));
            nt.insert("path".into(), string(path));
            nt.insert("password".into(), string(HIDDEN_PASSWORD));
            nt.insert("pool".into(), string(pool));
            if !routes.is_empty() {
                nt.insert(
                    "route".into(),
                    Value::Array(routes.iter().map(route_table).collect()),
                );
            }
            Value::Table(nt)
        };
        t.insert(
            "network".into(),
            Value::Array(networks.iter().map(network_table).collect()),
        );
    }
    match cluster {
        Some(ClusterConfig {
            nats,
            name,
            replicas,
            lease_seconds,
        }) => {
            let mut ct = Table::new();
            ct.insert(
                "nats".into(),
                Value::Array(nats.iter().map(string).collect()),
            );
            ct.insert("name".into(), string(name));
            ct.insert(
                "replicas".into(),
                int(i64::try_from(*replicas).unwrap_or(i64::MAX)),
            );
            ct.insert("lease_seconds".into(), int(*lease_seconds));
            t.insert("cluster".into(), Value::Table(ct));
        }
        None => unset.push(("[cluster]", "one instance, state in memory")),
    }
    render(file, t, &unset)
}

pub fn client_toml(file: &str, cfg: &ClientConfig) -> String {
    let ClientConfig {
        server,
        more_servers,
        password: _,
        tun,
        address,
        mtu,
        workers,
        stun,
        port,
        discovery,
        route_cost,
        server_tls,
        turn_tls,
        control_socket,
        lan_address,
        public_endpoint,
        mss_clamp,
        cipher,
        pin_workers,
        offload,
        test_time_divisor,
        metrics,
        metrics_per_peer,
        log,
        key_file,
        pins_file,
        peers,
        turn,
    } = cfg;
    let mut t = Table::new();
    let mut unset = Vec::new();
    let server_value = if more_servers.is_empty() {
        string(server.to_url())
    } else {
        Value::Array(
            std::iter::once(server)
                .chain(more_servers)
                .map(|u| string(u.to_url()))
                .collect(),
        )
    };
    t.insert("server".into(), server_value);
    t.insert("password".into(), string(HIDDEN_PASSWORD));
    t.insert("tun".into(), string(tun));
    match address {
        Some(a) => {
            t.insert("address".into(), string(a));
        }
        None => unset.push(("address", "assigned by the server from its pool")),
    }
    t.insert("mtu".into(), int(*mtu));
    t.insert(
        "workers".into(),
        int(i64::try_from(*workers).unwrap_or(i64::MAX)),
    );
    t.insert(
        "stun".into(),
        match stun {
            Some(s) => string(format!("stun://{}:{}", s.host, s.port)),
            None => string(""),
        },
    );
    t.insert("port".into(), int(*port));
    t.insert("discovery".into(), int(*discovery));
    t.insert("route_cost".into(), int(*route_cost));
    match server_tls {
        Some(ServerTrust::Roots { extra_ca: Some(ca) }) => {
            t.insert("tls_ca".into(), path(ca));
            t.insert("tls_insecure".into(), Value::Boolean(false));
        }
        Some(ServerTrust::Roots { extra_ca: None }) => {
            unset.push(("tls_ca", "web PKI roots only"));
            t.insert("tls_insecure".into(), Value::Boolean(false));
        }
        Some(ServerTrust::AnyCertificate) => {
            t.insert("tls_insecure".into(), Value::Boolean(true));
        }
        // With ws://, the keys matter only to a turns:// TURN server.
        None => match turn_tls {
            ServerTrust::Roots { extra_ca: Some(ca) } => {
                t.insert("tls_ca".into(), path(ca));
            }
            ServerTrust::AnyCertificate => {
                t.insert("tls_insecure".into(), Value::Boolean(true));
            }
            ServerTrust::Roots { extra_ca: None } => {}
        },
    }
    t.insert("control_socket".into(), path(control_socket));
    match lan_address {
        Some(a) => {
            t.insert("lan_address".into(), string(a));
        }
        None => unset.push(("lan_address", "the first LAN address found at start")),
    }
    match public_endpoint {
        Some(e) => {
            t.insert("public_endpoint".into(), string(e));
        }
        None => unset.push(("public_endpoint", "none: peers are told the STUN mapping")),
    }
    t.insert("mss_clamp".into(), Value::Boolean(*mss_clamp));
    let cipher_name = match cipher {
        CipherKind::Aes256Gcm => "aes-256-gcm",
        CipherKind::ChaCha20Poly1305 => "chacha20-poly1305",
    };
    t.insert("cipher".into(), string(cipher_name));
    t.insert("pin_workers".into(), Value::Boolean(*pin_workers));
    t.insert("offload".into(), Value::Boolean(*offload));
    t.insert("test_time_divisor".into(), int(*test_time_divisor));
    t.insert("metrics".into(), metrics_value(metrics));
    t.insert("metrics_per_peer".into(), Value::Boolean(*metrics_per_peer));
    t.insert("log".into(), string(log));
    t.insert("key_file".into(), path(key_file));
    t.insert("pins_file".into(), path(pins_file));
    match turn
        .as_ref()
        .and_then(|u| Some((u, u.credentials.as_ref()?)))
    {
        Some((u, c)) => {
            t.insert(
                "turn".into(),
                string(u.to_url(Some(&format!("{}:{HIDDEN_PASSWORD}", c.username)))),
            );
        }
        None => unset.push(("turn", "the TURN server the ringlink server offers, if any")),
    }
    if peers.is_empty() {
        unset.push(("peers", "no key pinned up front; first use pins"));
    } else {
        let peer = |p: &PinnedPeer| {
            let mut pt = Table::new();
            pt.insert("vip".into(), string(p.vip));
            pt.insert("key".into(), string(p.key.to_base64()));
            Value::Table(pt)
        };
        t.insert(
            "peers".into(),
            Value::Array(peers.iter().map(peer).collect()),
        );
    }
    render(file, t, &unset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "listen = \"10.91.0.1:7443\"\npassword = \"s3cret\"\npool = \"10.77.0.0/24\"\n[[route]]\ndst = \"192.168.20.0/24\"\nvia = \"10.77.0.20\"\n";
    const CLIENT: &str = "server = \"ws://10.91.0.1:7443\"\npassword = \"s3cret\"\n";

    /// The printed text parses back to the same config, password aside.
    fn reparsed(text: &str) -> String {
        text.replace(HIDDEN_PASSWORD, "s3cret")
    }

    #[test]
    fn server_defaults_are_printed_and_round_trip() {
        let cfg = ServerConfig::parse("server.toml", SERVER).unwrap();
        let out = server_toml("server.toml", &cfg);
        assert!(out.contains("stun = \"10.91.0.1:3478\""), "{out}");
        assert!(out.contains("max_clients = 4096"), "{out}");
        assert!(out.contains("metrics = \"127.0.0.1:9587\""), "{out}");
        assert!(out.contains("for = \"10.77.0.0/24\""), "{out}");
        assert!(out.contains("log = \"info\""), "{out}");
        assert!(
            out.contains("control_socket = \"/run/ringlink-server/server.sock\""),
            "{out}"
        );
        assert!(out.contains("# tls_cert, tls_key: not set"), "{out}");
        assert!(!out.contains("s3cret"), "password leaked: {out}");
        assert_eq!(
            ServerConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn server_networks_are_printed_and_round_trip() {
        let text = format!("{SERVER}[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"s3cret2\"\npool = \"10.78.0.0/24\"\n[[network.route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.78.0.9\"\n");
        let cfg = ServerConfig::parse("server.toml", &text).unwrap();
        let out = server_toml("server.toml", &cfg);
        assert!(!out.contains("s3cret2"), "password leaked: {out}");
        let back =
            out.replacen(HIDDEN_PASSWORD, "s3cret", 1)
                .replacen(HIDDEN_PASSWORD, "s3cret2", 1);
        assert_eq!(ServerConfig::parse("printed", &back).unwrap(), cfg);
    }

    #[test]
    fn server_without_a_default_network_round_trips() {
        let text = "listen = \"10.91.0.1:7443\"\n[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"s3cret\"\npool = \"10.78.0.0/24\"\n";
        let cfg = ServerConfig::parse("server.toml", text).unwrap();
        let out = server_toml("server.toml", &cfg);
        assert!(
            out.contains("# password, pool: not set (no default network"),
            "{out}"
        );
        assert_eq!(
            ServerConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn server_turn_is_printed_hidden_and_round_trips() {
        let text = format!(
            "turn = {{ url = \"turn://10.9.0.1\", secret = \"s3cret\", ttl = 600 }}\n{SERVER}"
        );
        let cfg = ServerConfig::parse("server.toml", &text).unwrap();
        let out = server_toml("server.toml", &cfg);
        assert!(!out.contains("s3cret"), "secret leaked: {out}");
        assert!(out.contains("url = \"turn://10.9.0.1:3478\""), "{out}");
        assert_eq!(
            ServerConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn server_cluster_is_printed_and_round_trips() {
        let text = format!("{SERVER}[cluster]\nnats = \"nats://10.0.0.1:4222\"\nname = \"a\"\n");
        let cfg = ServerConfig::parse("server.toml", &text).unwrap();
        let out = server_toml("server.toml", &cfg);
        assert!(out.contains("lease_seconds = 15"), "{out}");
        assert_eq!(
            ServerConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn client_server_list_round_trips() {
        let text =
            "server = [\"ws://10.91.0.1:7443\", \"ws://10.91.0.2:7443\"]\npassword = \"s3cret\"\n";
        let cfg = ClientConfig::parse("client.toml", text).unwrap();
        let out = client_toml("client.toml", &cfg);
        assert!(
            out.contains("server = [\"ws://10.91.0.1:7443/\", \"ws://10.91.0.2:7443/\"]"),
            "{out}"
        );
        assert_eq!(
            ClientConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn client_defaults_are_printed_and_round_trip() {
        let cfg = ClientConfig::parse("client.toml", CLIENT).unwrap();
        let out = client_toml("client.toml", &cfg);
        for line in [
            "server = \"ws://10.91.0.1:7443/\"",
            "tun = \"rl0\"",
            "mtu = 1400",
            "workers = 0",
            "stun = \"\"",
            "discovery = 60",
            "route_cost = 5",
            "control_socket = \"/run/ringlink/rl0.sock\"",
            "cipher = \"aes-256-gcm\"",
            "offload = true",
            "metrics = \"127.0.0.1:9586\"",
            "metrics_per_peer = false",
            "log = \"info\"",
            "# address: not set",
        ] {
            assert!(
                out.lines().any(|l| l == line || l.starts_with(line)),
                "{line} in {out}"
            );
        }
        assert!(!out.contains("s3cret"), "password leaked: {out}");
        assert_eq!(
            ClientConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }

    #[test]
    fn client_settings_round_trip() {
        let text = "server = \"wss://10.91.0.1:7443\"\npassword = \"s3cret\"\ntun = \"site-a\"\naddress = \"10.77.0.20/24\"\nstun = \"stun://h.example\"\ntls_ca = \"ca.pem\"\nlan_address = \"192.168.1.10\"\npeers = [{ vip = \"10.77.0.3\", key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\" }]\npublic_endpoint = \"203.0.113.7:41000\"\ncipher = \"chacha20-poly1305\"\nmss_clamp = false\nmetrics = \"\"\nmetrics_per_peer = true\nlog = \"debug\"\nturn = \"turn://alice:s3cret@10.9.0.1:3479\"\n";
        let cfg = ClientConfig::parse("client.toml", text).unwrap();
        let out = client_toml("client.toml", &cfg);
        assert!(out.contains("stun = \"stun://h.example:3478\""), "{out}");
        assert!(!out.contains("not set"), "{out}");
        assert_eq!(
            ClientConfig::parse("printed", &reparsed(&out)).unwrap(),
            cfg
        );
    }
}
