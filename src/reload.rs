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

use crate::config::{
    log_filter, ClientConfig, ClusterConfig, ConfigError, NetworkConfig, PinnedPeer, PushedRoute,
    ServerConfig, DEFAULT_NETWORK,
};
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
    /// The client's `peers`: pinned keys replaced; a peer whose key changed
    /// gets a new handshake, one no longer listed is pinned on first use.
    Peers(Vec<PinnedPeer>),
    /// The route list of one of the server's networks: the top-level
    /// `[[route]]`s of the default network, or a `[[network.route]]` list.
    /// Added routes are pushed to the network's members they cover at
    /// once; removed ones stop being pushed at login and stop entitling
    /// their gateway to the subnet's source addresses, but a connected
    /// client keeps them until it reconnects: the protocol has no message
    /// that withdraws a pushed route.
    Routes {
        network: String,
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
            Apply::Peers(p) => write!(f, "peers ({} pinned)", p.len()),
            Apply::Routes {
                network,
                added,
                removed,
            } => {
                // The default network's routes are the file's top-level ones.
                if network != DEFAULT_NETWORK {
                    write!(f, "network {network} ")?;
                }
                if added.is_empty() && removed.is_empty() {
                    return write!(
                        f,
                        "routes reordered (for new logins; connected clients keep the order they got)"
                    );
                }
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
    /// Keys as the file spells them, in the file's documented order; a key
    /// of a `[[network]]` names the network too ("network lab pool").
    pub restart: Vec<String>,
}

fn changed(keys: &[(&str, bool)]) -> Vec<String> {
    keys.iter()
        .filter(|(_, c)| *c)
        .map(|(k, _)| k.to_string())
        .collect()
}

/// A network's route list from `old` to `new`, live unless its pool
/// changed too: a new pool makes every route's validity moot until the
/// restart that applies it, so the routes are held back with it.
fn routes_change(
    network: &str,
    old: &[PushedRoute],
    new: &[PushedRoute],
    same_pool: bool,
) -> Option<Apply> {
    (old != new && same_pool).then(|| Apply::Routes {
        network: network.to_string(),
        added: new.iter().filter(|r| !old.contains(r)).copied().collect(),
        removed: old.iter().filter(|r| !new.contains(r)).copied().collect(),
    })
}

/// The `[[network]]` sections, matched by name. Only their routes change
/// live; a network added or removed, or its path, password or pool
/// changed, waits for a restart (sessions hold their network, and the
/// cluster's leases and subjects are named after it).
fn networks_plan(old: &[NetworkConfig], new: &[NetworkConfig], plan: &mut Plan) {
    for n in new {
        let NetworkConfig {
            name,
            path,
            password,
            pool,
            routes,
        } = n;
        let Some(o) = old.iter().find(|o| o.name == *name) else {
            plan.restart.push(format!("network {name} (added)"));
            continue;
        };
        plan.apply
            .extend(routes_change(name, &o.routes, routes, *pool == o.pool));
        plan.restart.extend(
            changed(&[
                ("path", *path != o.path),
                ("password", *password != o.password),
                ("pool", *pool != o.pool),
                ("route", *routes != o.routes && *pool != o.pool),
            ])
            .into_iter()
            .map(|key| format!("network {name} {key}")),
        );
    }
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            plan.restart.push(format!("network {} (removed)", o.name));
        }
    }
}

/// `[cluster]`: nothing of it changes without a restart (the NATS
/// connection, the instance's name on its leases and the bucket are set
/// up once).
fn cluster_restart(old: Option<&ClusterConfig>, new: Option<&ClusterConfig>) -> Vec<String> {
    match (old, new) {
        (None, None) => Vec::new(),
        (None, Some(_)) => vec!["[cluster] (added)".to_string()],
        (Some(_), None) => vec!["[cluster] (removed)".to_string()],
        (Some(o), Some(n)) => {
            let ClusterConfig {
                nats,
                name,
                replicas,
                lease_seconds,
            } = n;
            changed(&[
                ("cluster.nats", *nats != o.nats),
                ("cluster.name", *name != o.name),
                ("cluster.replicas", *replicas != o.replicas),
                ("cluster.lease_seconds", *lease_seconds != o.lease_seconds),
            ])
        }
    }
}

/// What of `log` and `metrics`, each given as (old, new), changes: the
/// keys both the client and the server take live.
fn log_and_metrics(
    (old_log, log): (&str, &str),
    (old_metrics, metrics): (Option<SocketAddr>, Option<SocketAddr>),
) -> Vec<Apply> {
    let mut apply = Vec::new();
    if log != old_log {
        apply.push(Apply::Log(log.to_string()));
    }
    if metrics != old_metrics {
        apply.push(Apply::Metrics(metrics));
    }
    apply
}

/// The client's plan. Every field is named here (the destructuring does
/// not compile otherwise), so a new key is classified when it is added.
pub fn client_plan(old: &ClientConfig, new: &ClientConfig) -> Plan {
    let ClientConfig {
        server,
        more_servers,
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
    } = new;
    let mut apply = log_and_metrics((&old.log, log), (old.metrics, *metrics));
    if *metrics_per_peer != old.metrics_per_peer {
        apply.push(Apply::MetricsPerPeer(*metrics_per_peer));
    }
    if *peers != old.peers {
        apply.push(Apply::Peers(peers.clone()));
    }
    let restart = changed(&[
        (
            "server",
            *server != old.server || *more_servers != old.more_servers,
        ),
        ("password", *password != old.password),
        ("tun", *tun != old.tun),
        ("address", *address != old.address),
        ("mtu", *mtu != old.mtu),
        ("workers", *workers != old.workers),
        ("stun", *stun != old.stun),
        ("port", *port != old.port),
        ("discovery", *discovery != old.discovery),
        ("route_cost", *route_cost != old.route_cost),
        (
            "tls_ca/tls_insecure",
            *server_tls != old.server_tls || *turn_tls != old.turn_tls,
        ),
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
        ("turn", *turn != old.turn),
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
        cluster,
        networks,
        turn,
    } = new;
    let mut apply = log_and_metrics((&old.log, log), (old.metrics, *metrics));
    apply.extend(routes_change(
        DEFAULT_NETWORK,
        &old.routes,
        routes,
        *pool == old.pool,
    ));
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
        ("turn", *turn != old.turn),
    ]);
    let mut plan = Plan { apply, restart };
    networks_plan(&old.networks, networks, &mut plan);
    plan.restart
        .extend(cluster_restart(old.cluster.as_ref(), cluster.as_ref()));
    plan
}

/// What a reload did, in the two lines an operator reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each applied change as it turned out (a metrics address that could
    /// not be bound says so).
    pub applied: Vec<String>,
    pub restart: Vec<String>,
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
        let key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let pinned = client_plan(
            &client(""),
            &client(&format!(
                "peers = [{{ vip = \"10.77.0.30\", key = \"{key}\" }}]\n"
            )),
        );
        let [Apply::Peers(p)] = &pinned.apply[..] else {
            panic!("peers not applied live: {pinned:?}");
        };
        assert_eq!((p.len(), p[0].vip), (1, "10.77.0.30".parse().unwrap()));
        assert_eq!(pinned.apply[0].to_string(), "peers (1 pinned)");
        assert!(pinned.restart.is_empty(), "{pinned:?}");
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
                network: DEFAULT_NETWORK.into(),
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
                network: DEFAULT_NETWORK.into(),
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
                network: DEFAULT_NETWORK.into(),
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

    const LAB: &str = "[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"other\"\npool = \"10.78.0.0/24\"\n";

    /// `server("")` with [[network]] sections appended (after its route).
    fn server_with(tables: &str) -> ServerConfig {
        let base = server("");
        let text = format!(
            "listen = \"10.91.0.1:7443\"\npassword = \"secret\"\npool = \"10.77.0.0/24\"\n{ROUTE}{tables}"
        );
        let cfg = ServerConfig::parse("server.toml", &text).unwrap();
        assert_eq!(cfg.routes, base.routes);
        cfg
    }

    fn lab_route(dst: &str, via: &str) -> PushedRoute {
        PushedRoute {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            for_clients: "10.78.0.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn network_routes_apply_to_their_network() {
        let old = server_with(LAB);
        let mut new = old.clone();
        new.networks[0]
            .routes
            .push(lab_route("192.168.9.0/24", "10.78.0.9"));
        let plan = server_plan(&old, &new);
        assert_eq!(
            plan.apply,
            [Apply::Routes {
                network: "lab".into(),
                added: vec![lab_route("192.168.9.0/24", "10.78.0.9")],
                removed: vec![],
            }]
        );
        assert!(plan.restart.is_empty(), "{plan:?}");
        assert_eq!(
            plan.apply[0].to_string(),
            "network lab routes +192.168.9.0/24 via 10.78.0.9 for 10.78.0.0/24"
        );
        // Both the default network's and lab's change: one change each.
        new.routes.clear();
        let plan = server_plan(&old, &new);
        let networks: Vec<&str> = plan
            .apply
            .iter()
            .map(|a| match a {
                Apply::Routes { network, .. } => network.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(networks, [DEFAULT_NETWORK, "lab"]);
        // Reordered within lab only.
        let mut two = old.clone();
        two.networks[0].routes = vec![
            lab_route("192.168.9.0/24", "10.78.0.9"),
            lab_route("192.168.10.0/24", "10.78.0.9"),
        ];
        let mut swapped = two.clone();
        swapped.networks[0].routes.reverse();
        let plan = server_plan(&two, &swapped);
        assert_eq!(plan.apply.len(), 1);
        assert!(
            plan.apply[0]
                .to_string()
                .starts_with("network lab routes reordered"),
            "{plan:?}"
        );
    }

    #[test]
    fn network_keys_need_a_restart() {
        let old = server_with(LAB);
        let mut new = old.clone();
        let n = &mut new.networks[0];
        n.path = "/lab2".into();
        n.password = "third".into();
        n.pool = "10.79.0.0/24".parse().unwrap();
        n.routes.push(PushedRoute {
            dst: "192.168.9.0/24".parse().unwrap(),
            via: "10.79.0.9".parse().unwrap(),
            for_clients: "10.79.0.0/24".parse().unwrap(),
        });
        let plan = server_plan(&old, &new);
        // A new pool holds the network's routes back, as at the top level.
        assert!(plan.apply.is_empty(), "{plan:?}");
        assert_eq!(
            plan.restart,
            [
                "network lab path",
                "network lab password",
                "network lab pool",
                "network lab route"
            ]
        );
        // Added, removed, renamed (one removed, one added).
        let plan = server_plan(&server(""), &old);
        assert_eq!(plan.restart, ["network lab (added)"]);
        assert!(plan.apply.is_empty());
        let plan = server_plan(&old, &server(""));
        assert_eq!(plan.restart, ["network lab (removed)"]);
        let renamed = server_with(&LAB.replace("\"lab\"", "\"lab2\""));
        let plan = server_plan(&old, &renamed);
        assert_eq!(
            plan.restart,
            ["network lab2 (added)", "network lab (removed)"]
        );
        // Order alone changes nothing: networks are matched by name.
        let both = server_with(&format!(
            "{LAB}{}",
            LAB.replace("\"lab\"", "\"lab2\"")
                .replace("/lab", "/lab2")
                .replace("other", "fourth")
                .replace("10.78.", "10.79.")
        ));
        let mut reversed = both.clone();
        reversed.networks.reverse();
        assert_eq!(server_plan(&both, &reversed), Plan::default());
    }

    #[test]
    fn cluster_keys_need_a_restart() {
        const CLUSTER: &str = "[cluster]\nnats = \"nats://10.0.0.1:4222\"\nname = \"a\"\n";
        let alone = server("");
        let one = server_with(CLUSTER);
        assert_eq!(server_plan(&one, &one.clone()), Plan::default());
        assert_eq!(server_plan(&alone, &one).restart, ["[cluster] (added)"]);
        assert_eq!(server_plan(&one, &alone).restart, ["[cluster] (removed)"]);
        let other = server_with(
            "[cluster]\nnats = [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]\nname = \"b\"\nreplicas = 3\nlease_seconds = 9\n",
        );
        let plan = server_plan(&one, &other);
        assert!(plan.apply.is_empty());
        assert_eq!(
            plan.restart,
            [
                "cluster.nats",
                "cluster.name",
                "cluster.replicas",
                "cluster.lease_seconds"
            ]
        );
        // Alongside a live change, in the file's order: networks, then cluster.
        let mut both = server_with(&format!("{LAB}{CLUSTER}"));
        let plan = server_plan(&one, &both);
        assert_eq!(plan.restart, ["network lab (added)"]);
        both.log = "debug".into();
        both.cluster.as_mut().unwrap().lease_seconds = 30;
        let plan = server_plan(&server_with(&format!("{LAB}{CLUSTER}")), &both);
        assert_eq!(plan.apply, [Apply::Log("debug".into())]);
        assert_eq!(plan.restart, ["cluster.lease_seconds"]);
    }

    #[test]
    fn client_server_list_needs_a_restart() {
        let one = client("");
        let two = ClientConfig::parse(
            "client.toml",
            "server = [\"ws://10.91.0.1:7443\", \"ws://10.91.0.2:7443\"]\npassword = \"secret\"\n",
        )
        .unwrap();
        assert_eq!(one.server, two.server);
        assert_eq!(client_plan(&one, &two).restart, ["server"]);
    }

    #[test]
    fn report_lines() {
        let r = Report::default();
        assert_eq!(r.applied_line(), "reload: nothing to apply");
        assert_eq!(r.restart_line(), None);
        let r = Report {
            applied: vec!["log=\"debug\"".into(), "metrics=off".into()],
            restart: vec!["tun".into(), "port".into()],
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
