//! Reloading the configuration on SIGHUP (`systemctl reload`): the file is
//! read again, and what can change without dropping a tunnel or a session
//! is applied; every other changed key is named as needing a restart.
//!
//! The decision is [`client_plan`] and [`server_plan`]: pure functions of
//! the running (effective) configuration and the new one. Carrying a plan
//! out is the client's control loop's and the server's business; both log
//! the outcome through [`Report`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{log_filter, ClientConfig, ConfigError, PushedRoute, ServerConfig};
use crate::metrics::http::Endpoint;

/// One change a running process takes without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// A new log filter.
    Log(String),
    /// Serve `/metrics` on another address, or (None) not at all.
    Metrics(Option<SocketAddr>),
    /// The client's per-peer metric series on or off.
    MetricsPerPeer(bool),
    /// The server's `[[route]]` list. Added routes are pushed to the
    /// members they cover at once; removed ones stop being pushed at login
    /// and stop entitling their gateway to the subnet's source addresses,
    /// but a connected client keeps them until it reconnects: the protocol
    /// has no message that withdraws a pushed route.
    Routes {
        added: Vec<PushedRoute>,
        removed: Vec<PushedRoute>,
    },
}

fn route_text(r: &PushedRoute) -> String {
    format!("{} via {} for {}", r.dst, r.via, r.for_clients)
}

impl fmt::Display for Apply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Apply::Log(filter) => write!(f, "log={filter:?}"),
            Apply::Metrics(Some(addr)) => write!(f, "metrics={addr}"),
            Apply::Metrics(None) => write!(f, "metrics=off"),
            Apply::MetricsPerPeer(on) => write!(f, "metrics_per_peer={on}"),
            Apply::Routes { added, removed } if added.is_empty() && removed.is_empty() => write!(
                f,
                "routes reordered (for new logins; connected clients keep the order they got)"
            ),
            Apply::Routes { added, removed } => {
                let mut parts: Vec<String> = added
                    .iter()
                    .map(|r| format!("+{}", route_text(r)))
                    .collect();
                parts.extend(removed.iter().map(|r| format!("-{}", route_text(r))));
                write!(f, "routes {}", parts.join("; "))?;
                if !removed.is_empty() {
                    write!(
                        f,
                        " (connected clients keep removed routes until they reconnect)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// What a new configuration changes: the live part and the keys that take
/// effect only after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub apply: Vec<Apply>,
    /// Keys as the file spells them, in the file's documented order.
    pub restart: Vec<&'static str>,
}

fn changed(keys: &[(&'static str, bool)]) -> Vec<&'static str> {
    keys.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect()
}

/// The client's plan. Every field is named here (the destructuring does
/// not compile otherwise), so a new key is classified when it is added.
pub fn client_plan(old: &ClientConfig, new: &ClientConfig) -> Plan {
    let ClientConfig {
        server,
        password,
        tun,
        address,
        mtu,
        workers,
        stun,
        port,
        discovery,
        route_cost,
        server_tls,
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
    } = new;
    let mut apply = Vec::new();
    if *log != old.log {
        apply.push(Apply::Log(log.clone()));
    }
    if *metrics != old.metrics {
        apply.push(Apply::Metrics(*metrics));
    }
    if *metrics_per_peer != old.metrics_per_peer {
        apply.push(Apply::MetricsPerPeer(*metrics_per_peer));
    }
    let restart = changed(&[
        ("server", *server != old.server),
        ("password", *password != old.password),
        ("tun", *tun != old.tun),
        ("address", *address != old.address),
        ("mtu", *mtu != old.mtu),
        ("workers", *workers != old.workers),
        ("stun", *stun != old.stun),
        ("port", *port != old.port),
        ("discovery", *discovery != old.discovery),
        ("route_cost", *route_cost != old.route_cost),
        ("tls_ca/tls_insecure", *server_tls != old.server_tls),
        ("control_socket", *control_socket != old.control_socket),
        ("lan_address", *lan_address != old.lan_address),
        ("public_endpoint", *public_endpoint != old.public_endpoint),
        ("mss_clamp", *mss_clamp != old.mss_clamp),
        ("cipher", *cipher != old.cipher),
        ("pin_workers", *pin_workers != old.pin_workers),
        ("offload", *offload != old.offload),
        (
            "test_time_divisor",
            *test_time_divisor != old.test_time_divisor,
        ),
        ("key_file", *key_file != old.key_file),
        ("pins_file", *pins_file != old.pins_file),
        ("peers", *peers != old.peers),
    ]);
    Plan { apply, restart }
}

/// The server's plan; like [`client_plan`], every field is named.
pub fn server_plan(old: &ServerConfig, new: &ServerConfig) -> Plan {
    let ServerConfig {
        listen,
        password,
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
    } = new;
    let mut apply = Vec::new();
    if *log != old.log {
        apply.push(Apply::Log(log.clone()));
    }
    if *metrics != old.metrics {
        apply.push(Apply::Metrics(*metrics));
    }
    // A pool change makes every route's validity moot until the restart
    // that applies it, so routes are held back with it.
    if *routes != old.routes && *pool == old.pool {
        apply.push(Apply::Routes {
            added: routes
                .iter()
                .filter(|r| !old.routes.contains(r))
                .copied()
                .collect(),
            removed: old
                .routes
                .iter()
                .filter(|r| !routes.contains(r))
                .copied()
                .collect(),
        });
    }
    let restart = changed(&[
        ("listen", *listen != old.listen),
        ("password", *password != old.password),
        ("pool", *pool != old.pool),
        ("tls_cert/tls_key", *tls != old.tls),
        ("stun", *stun != old.stun),
        ("stun_alt_port", *stun_alt_port != old.stun_alt_port),
        (
            "stun_alt_address",
            *stun_alt_address != old.stun_alt_address,
        ),
        ("route", *routes != old.routes && *pool != old.pool),
        ("max_clients", *max_clients != old.max_clients),
        (
            "max_unauthenticated",
            *max_unauthenticated != old.max_unauthenticated,
        ),
        (
            "max_unauthenticated_per_ip",
            *max_unauthenticated_per_ip != old.max_unauthenticated_per_ip,
        ),
        ("broadcast_rate", *broadcast_rate != old.broadcast_rate),
        ("broadcast_burst", *broadcast_burst != old.broadcast_burst),
        ("general_rate", *general_rate != old.general_rate),
        ("general_burst", *general_burst != old.general_burst),
        ("control_socket", *control_socket != old.control_socket),
    ]);
    Plan { apply, restart }
}

/// What a reload did, in the two lines an operator reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each applied change as it turned out (a metrics address that could
    /// not be bound says so).
    pub applied: Vec<String>,
    pub restart: Vec<&'static str>,
}

impl Report {
    pub fn applied_line(&self) -> String {
        if self.applied.is_empty() {
            "reload: nothing to apply".to_string()
        } else {
            format!("reload: applied {}", self.applied.join(", "))
        }
    }

    pub fn restart_line(&self) -> Option<String> {
        (!self.restart.is_empty()).then(|| {
            format!(
                "reload: changed but needs a restart to take effect: {}",
                self.restart.join(", ")
            )
        })
    }

    pub fn log(&self) {
        info!("{}", self.applied_line());
        if let Some(line) = self.restart_line() {
            warn!("{line}");
        }
    }
}

/// Installs a new tracing filter in the running subscriber.
pub type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The process's log filter as a reload sees it.
pub struct LogControl {
    set: SetFilter,
    /// A filter given by `--log` or `RUST_LOG`: it wins over the file's
    /// `log`, at start and on every reload.
    pinned: Option<String>,
}

impl LogControl {
    pub fn new(set: SetFilter, pinned: Option<String>) -> Self {
        Self { set, pinned }
    }

    /// For embedders whose subscriber is not reloadable: a new filter is
    /// accepted and changes nothing.
    pub fn detached() -> Self {
        Self::new(Box::new(|_| Ok(())), None)
    }

    /// The filter in force for a file whose `log` is `file_log`.
    pub fn effective(&self, file_log: &str) -> String {
        self.pinned.clone().unwrap_or_else(|| file_log.to_string())
    }

    pub fn apply(&self, log: &str) -> Result<(), String> {
        (self.set)(log_filter(log)?)
    }
}

/// Carries out [`Apply::Log`]; `running` follows only if the filter took.
pub fn apply_log(log: &LogControl, filter: &str, running: &mut String) -> String {
    match log.apply(filter) {
        Ok(()) => {
            *running = filter.to_string();
            Apply::Log(filter.to_string()).to_string()
        }
        Err(e) => format!("log unchanged ({e})"),
    }
}

/// Carries out [`Apply::Metrics`]. An address that cannot be bound leaves
/// `/metrics` off and `running` off too, so reloading the same file again
/// (once the port is free) tries it again.
pub async fn apply_metrics(
    endpoint: &mut Endpoint,
    addr: Option<SocketAddr>,
    running: &mut Option<SocketAddr>,
) -> String {
    let served = endpoint.rebind(addr).await;
    *running = served.and(addr);
    match (addr, served) {
        (Some(want), None) => format!("metrics=off (cannot bind {want})"),
        _ => Apply::Metrics(addr).to_string(),
    }
}

/// Where a reload reads from, and the log filter it may change.
pub struct Reload {
    pub path: PathBuf,
    pub log: LogControl,
}

impl Reload {
    /// Reads the file again; one that does not load is logged and refused,
    /// and the running configuration stays.
    pub fn reread<C>(&self, load: impl Fn(&Path) -> Result<C, ConfigError>) -> Option<C> {
        match load(&self.path) {
            Ok(c) => Some(c),
            Err(e) => {
                error!("reload rejected, keeping the running configuration: {e}");
                None
            }
        }
    }
}

/// SIGHUP, from `systemctl reload` or `kill -HUP`.
pub struct Hangups(Option<Signal>);

impl Hangups {
    /// Installs the handler (from then on SIGHUP no longer ends the
    /// process). If it cannot be, reloads are off and the process runs on.
    pub fn new() -> Self {
        match signal(SignalKind::hangup()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                warn!(%e, "cannot handle SIGHUP; reloading the configuration is off");
                Self(None)
            }
        }
    }

    pub async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "server = \"ws://10.91.0.1:7443\"\npassword = \"secret\"\n";
    const ROUTE: &str = "[[route]]\ndst = \"192.168.11.0/24\"\nvia = \"10.77.0.11\"\n";

    fn client(extra: &str) -> ClientConfig {
        ClientConfig::parse("client.toml", &format!("{CLIENT}{extra}")).unwrap()
    }

    /// A server file with `extra` top-level lines, which replace the
    /// defaults of the keys they set.
    fn server(extra: &str) -> ServerConfig {
        let mut text = String::new();
        for (key, value) in [
            ("listen", "\"10.91.0.1:7443\""),
            ("password", "\"secret\""),
            ("pool", "\"10.77.0.0/24\""),
        ] {
            if !extra.lines().any(|l| l.starts_with(&format!("{key} ="))) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        // Top-level keys go before the [[route]] table.
        ServerConfig::parse("server.toml", &format!("{text}{extra}{ROUTE}")).unwrap()
    }

    fn route(dst: &str, via: &str) -> PushedRoute {
        PushedRoute {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            for_clients: "10.77.0.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn same_file_changes_nothing() {
        assert_eq!(client_plan(&client(""), &client("")), Plan::default());
        assert_eq!(server_plan(&server(""), &server("")), Plan::default());
        // Spelled differently, same effective value.
        assert_eq!(
            client_plan(&client(""), &client("metrics = \"127.0.0.1:9586\"\n")),
            Plan::default()
        );
    }

    #[test]
    fn client_live_keys_apply() {
        let plan = client_plan(
            &client(""),
            &client("log = \"debug\"\nmetrics = \"127.0.0.1:9600\"\nmetrics_per_peer = true\n"),
        );
        assert_eq!(
            plan.apply,
            [
                Apply::Log("debug".into()),
                Apply::Metrics(Some("127.0.0.1:9600".parse().unwrap())),
                Apply::MetricsPerPeer(true),
            ]
        );
        assert!(plan.restart.is_empty(), "{plan:?}");
        let off = client_plan(&client(""), &client("metrics = \"\"\n"));
        assert_eq!(off.apply, [Apply::Metrics(None)]);
        assert_eq!(off.apply[0].to_string(), "metrics=off");
    }

    #[test]
    fn client_restart_keys_are_named_not_applied() {
        let plan = client_plan(
            &client(""),
            &client("tun = \"rl9\"\nport = 5000\nmtu = 1300\nlog = \"warn\"\n"),
        );
        assert_eq!(plan.apply, [Apply::Log("warn".into())]);
        // The default control socket is named after the interface.
        assert_eq!(plan.restart, ["tun", "mtu", "port", "control_socket"]);
        let plan = client_plan(
            &client(""),
            &ClientConfig::parse(
                "client.toml",
                "server = \"wss://10.91.0.2:443\"\npassword = \"other\"\n",
            )
            .unwrap(),
        );
        assert_eq!(plan.restart, ["server", "password", "tls_ca/tls_insecure"]);
        assert!(plan.apply.is_empty());
    }

    #[test]
    fn server_routes_added_and_removed() {
        let old = server("");
        let mut new = old.clone();
        new.routes.push(route("192.168.21.0/24", "10.77.0.11"));
        let plan = server_plan(&old, &new);
        assert_eq!(
            plan.apply,
            [Apply::Routes {
                added: vec![route("192.168.21.0/24", "10.77.0.11")],
                removed: vec![],
            }]
        );
        assert!(plan.restart.is_empty());
        assert_eq!(
            plan.apply[0].to_string(),
            "routes +192.168.21.0/24 via 10.77.0.11 for 10.77.0.0/24"
        );
        // Back again: the one route is removed, and the text says what
        // connected clients do about it.
        let back = server_plan(&new, &old);
        assert_eq!(
            back.apply,
            [Apply::Routes {
                added: vec![],
                removed: vec![route("192.168.21.0/24", "10.77.0.11")],
            }]
        );
        assert!(back.apply[0].to_string().contains("until they reconnect"));
        // A gateway moved: the old route out, the new one in.
        let mut moved = old.clone();
        moved.routes[0].via = "10.77.0.12".parse().unwrap();
        let plan = server_plan(&old, &moved);
        assert_eq!(
            plan.apply,
            [Apply::Routes {
                added: moved.routes.clone(),
                removed: old.routes.clone(),
            }]
        );
        // Same routes, other order.
        let mut two = old.clone();
        two.routes.push(route("192.168.21.0/24", "10.77.0.11"));
        let mut swapped = two.clone();
        swapped.routes.reverse();
        let plan = server_plan(&two, &swapped);
        assert!(plan.apply[0].to_string().contains("reordered"), "{plan:?}");
    }

    #[test]
    fn server_live_and_restart_keys() {
        let plan = server_plan(
            &server(""),
            &server("metrics = \"\"\nlog = \"debug\"\nlisten = \"10.91.0.1:8443\"\nbroadcast_rate = 5\ncontrol_socket = \"/tmp/s.sock\"\n"),
        );
        assert_eq!(
            plan.apply,
            [Apply::Log("debug".into()), Apply::Metrics(None)]
        );
        assert_eq!(plan.restart, ["listen", "broadcast_rate", "control_socket"]);
        let plan = server_plan(&server(""), &server("password = \"x\"\nstun = \"\"\n"));
        assert_eq!(plan.restart, ["password", "stun", "stun_alt_port"]);
    }

    #[test]
    fn a_new_pool_holds_the_routes_back() {
        let old = server("");
        let new = ServerConfig::parse(
            "server.toml",
            "listen = \"10.91.0.1:7443\"\npassword = \"secret\"\npool = \"10.78.0.0/24\"\n[[route]]\ndst = \"192.168.11.0/24\"\nvia = \"10.78.0.11\"\n",
        )
        .unwrap();
        let plan = server_plan(&old, &new);
        assert!(plan.apply.is_empty(), "{plan:?}");
        assert_eq!(plan.restart, ["pool", "route"]);
    }

    #[test]
    fn report_lines() {
        let r = Report::default();
        assert_eq!(r.applied_line(), "reload: nothing to apply");
        assert_eq!(r.restart_line(), None);
        let r = Report {
            applied: vec!["log=\"debug\"".into(), "metrics=off".into()],
            restart: vec!["tun", "port"],
        };
        assert_eq!(
            r.applied_line(),
            "reload: applied log=\"debug\", metrics=off"
        );
        assert_eq!(
            r.restart_line().unwrap(),
            "reload: changed but needs a restart to take effect: tun, port"
        );
    }

    #[test]
    fn pinned_filter_wins_over_the_file() {
        let free = LogControl::detached();
        assert_eq!(free.effective("debug"), "debug");
        let pinned = LogControl::new(Box::new(|_| Ok(())), Some("warn".into()));
        assert_eq!(pinned.effective("debug"), "warn");
        // So a file edit of `log` alone plans nothing under --log.
        let mut a = client("");
        let mut b = client("log = \"debug\"\n");
        a.log = pinned.effective(&a.log);
        b.log = pinned.effective(&b.log);
        assert_eq!(client_plan(&a, &b), Plan::default());
        assert!(free.apply("info,ringlink=loud").is_err());
    }

    #[test]
    fn a_broken_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ringlink-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.toml");
        let reload = Reload {
            path: path.clone(),
            log: LogControl::detached(),
        };
        std::fs::write(&path, CLIENT).unwrap();
        assert!(reload.reread(ClientConfig::load).is_some());
        std::fs::write(&path, format!("{CLIENT}metrics = \"nowhere\"\n")).unwrap();
        assert!(reload.reread(ClientConfig::load).is_none());
        std::fs::write(&path, "server = \"ws://x\n").unwrap();
        assert!(reload.reread(ClientConfig::load).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
