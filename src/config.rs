//! `server.toml` and `client.toml`: parsing and validation.
//!
//! Every problem is reported as a `ConfigError` naming the key and the form
//! it expects; `main` turns it into exit code 2.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::proto::crypto::CipherKind;
use crate::proto::mtu;
use crate::proto::Ipv4Cidr;
use crate::session::keys::PublicKey;
use crate::turn::TurnUrl;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key `{}`: {}", self.file, k, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn cidr(&self, key: &str, value: &str) -> Result<Ipv4Cidr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!("expected an IPv4 CIDR like 10.77.0.0/24, got {value:?}"),
            )
        })
    }

    fn ipv4(&self, key: &str, value: &str) -> Result<Ipv4Addr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!("expected an IPv4 address like 10.77.0.20, got {value:?}"),
            )
        })
    }

    /// `metrics`: where `/metrics` is served; `""` turns it off.
    fn metrics(
        &self,
        value: Option<&str>,
        default: u16,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        match value {
            None => Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, default)))),
            Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                self.err(
                    "metrics",
                    format!("expected ip:port like 127.0.0.1:{default}, or \"\" for no /metrics, got {v:?}"),
                )
            }),
        }
    }

    fn socket(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!("expected ip:port like 10.91.0.1:7443, got {value:?}"),
            )
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        key: None,
        message: format!("cannot read: {e}"),
    })
}

fn parse_toml<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        key: None,
        // toml's message names the unknown or missing key and the line.
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// The `log` key's default, and `--log`'s.
pub const DEFAULT_LOG: &str = "info";

/// The tracing filter for a `log` value (or `--log`, or `RUST_LOG`).
/// netlink-packet-route warns about every kernel attribute newer than
/// itself, which says nothing about ringlink, so it is quieted unless the
/// filter names it.
pub fn log_filter(log: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let directives = if log.contains("netlink_packet_route") {
        log.to_string()
    } else {
        format!("{log},netlink_packet_route=error")
    };
    tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())
}

impl Ctx<'_> {
    /// `log`: a tracing filter such as "info" or "info,ringlink=debug".
    fn log(&self, value: Option<String>) -> Result<String, ConfigError> {
        let log = value.unwrap_or_else(|| DEFAULT_LOG.to_string());
        if log.trim().is_empty() {
            return Err(self.err(
                "log",
                "expected a filter like \"info\" or \"info,ringlink=debug\", got \"\"",
            ));
        }
        log_filter(&log).map_err(|e| {
            self.err(
                "log",
                format!(
                    "expected a filter like \"info\" or \"info,ringlink=debug\", got {log:?}: {e}"
                ),
            )
        })?;
        Ok(log)
    }
}

// ---------------------------------------------------------------- server

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A `[[route]]` of server.toml: a subnet behind a gateway, pushed to
/// clients (PROTOCOL.md §7). `route::SubnetRoute` is what a client makes
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushedRoute {
    pub dst: Ipv4Cidr,
    pub via: Ipv4Addr,
    /// Which clients get the route (Candy's DEV).
    pub for_clients: Ipv4Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The default network's password and pool: both, or (only with
    /// `[[network]]` sections) neither, when every path that names no
    /// network is refused.
    pub password: Option<String>,
    pub pool: Option<Ipv4Cidr>,
    pub tls: Option<TlsFiles>,
    /// Where the embedded STUN responder listens; None = off.
    pub stun: Option<SocketAddr>,
    /// The responder's second port (RFC 5780 CHANGE-REQUEST / OTHER-ADDRESS);
    /// 0 binds an ephemeral one.
    pub stun_alt_port: u16,
    /// A second IP of this host for the responder, so clients can tell
    /// address-dependent filtering from endpoint-independent.
    pub stun_alt_address: Option<IpAddr>,
    pub routes: Vec<PushedRoute>,
    pub max_clients: usize,
    /// Connections that have not logged in yet, counted apart from
    /// members; at the cap the oldest is dropped for the newcomer.
    pub max_unauthenticated: usize,
    /// Of those, how many one source address may hold.
    pub max_unauthenticated_per_ip: usize,
    /// Per member: broadcasts (FORWARD to a broadcast or multicast
    /// address, DISCOVERY or GENERAL to 255.255.255.255) per second, and
    /// the burst allowed above that rate.
    pub broadcast_rate: u32,
    pub broadcast_burst: u32,
    /// Per member: unicast GENERAL frames per second, and the burst.
    pub general_rate: u32,
    pub general_burst: u32,
    /// Where Prometheus text is served on `/metrics`; None = off.
    pub metrics: Option<SocketAddr>,
    /// Unix socket where `ringlink status --server` finds this server.
    pub control_socket: PathBuf,
    /// Log filter (`--log` and `RUST_LOG` take precedence).
    pub log: String,
    /// `[cluster]`: share leases and relay with other instances over NATS;
    /// None = this process alone, all in memory.
    pub cluster: Option<ClusterConfig>,
    /// `[[network]]`: more networks on this server, each chosen by its URL
    /// path. The top-level `password`, `pool` and `[[route]]`s are the
    /// default network, which answers every other path.
    pub networks: Vec<NetworkConfig>,
    /// `turn = { url, secret, ttl }`: mint TURN REST API credentials for
    /// each ringlink client; None = hand out none.
    pub turn: Option<TurnSecret>,
}

/// `turn` of server.toml: a TURN server (coturn with `use-auth-secret`)
/// that shares `secret` with this server.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret {
    pub url: TurnUrl,
    pub secret: String,
    /// Seconds a minted credential stays valid; a new one is handed out
    /// when half of that has passed.
    pub ttl: u32,
}

impl fmt::Debug for TurnSecret {
    // A config dump must not hand out what mints every node's credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSecret")
            .field("url", &self.url)
            .field("secret", &"…")
            .field("ttl", &self.ttl)
            .finish()
    }
}

pub const DEFAULT_TURN_TTL: u32 = 86_400;
const MIN_TURN_TTL: i64 = 60;
const MAX_TURN_TTL: i64 = 7 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    url: String,
    secret: String,
    ttl: Option<i64>,
}

fn turn_secret(c: &Ctx, raw: RawTurn) -> Result<TurnSecret, ConfigError> {
    let url = TurnUrl::parse(&raw.url).map_err(|e| c.err("turn.url", e.to_string()))?;
    if url.credentials.is_some() {
        return Err(c.err(
            "turn.url",
            "credentials are minted from turn.secret; write turn://host[:port] without user:pass@",
        ));
    }
    if url.host.len() > 200 {
        return Err(c.err("turn.url", "host name over 200 bytes"));
    }
    if raw.secret.is_empty() {
        return Err(c.err(
            "turn.secret",
            "must not be empty: coturn's static-auth-secret",
        ));
    }
    let ttl = in_range(
        c,
        "turn.ttl",
        raw.ttl.unwrap_or(DEFAULT_TURN_TTL.into()),
        MIN_TURN_TTL,
        MAX_TURN_TTL,
    )? as u32;
    Ok(TurnSecret {
        url,
        secret: raw.secret,
        ttl,
    })
}

/// A `[[network]]` of server.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// In logs, lease keys and NATS subjects.
    pub name: String,
    /// The URL path clients name it by, like "/lab" (no trailing '/').
    pub path: String,
    pub password: String,
    pub pool: Ipv4Cidr,
    pub routes: Vec<PushedRoute>,
}

/// `[cluster]` of server.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS servers to connect to (any of them will do; the client follows
    /// the cluster's own list once connected).
    pub nats: Vec<String>,
    /// This instance's name, unique among the instances: it marks the
    /// leases it holds.
    pub name: String,
    /// Replicas of the lease bucket (JetStream); 3 in a three-node NATS
    /// cluster lets the bucket outlive one node.
    pub replicas: usize,
    /// How long a lease outlives its holder's last renewal.
    pub lease_seconds: u32,
}

pub const DEFAULT_LEASE_SECONDS: u32 = 15;

/// Where `ringlink status --server` looks by default: the unit's
/// RuntimeDirectory, the one place under /run it may write.
pub const DEFAULT_SERVER_SOCKET: &str = "/run/ringlink-server/server.sock";

/// Defaults of the server's admission and rate limits.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 64;
pub const DEFAULT_BROADCAST_RATE: u32 = 20;
pub const DEFAULT_BROADCAST_BURST: u32 = 40;
pub const DEFAULT_GENERAL_RATE: u32 = 100;
pub const DEFAULT_GENERAL_BURST: u32 = 400;

/// Default `/metrics` ports: the client's and the server's differ so both
/// fit on one host.
pub const CLIENT_METRICS_PORT: u16 = 9586;
pub const SERVER_METRICS_PORT: u16 = 9587;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    password: Option<String>,
    pool: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    stun: Option<String>,
    stun_alt_port: Option<i64>,
    stun_alt_address: Option<String>,
    #[serde(default)]
    route: Vec<RawRoute>,
    max_clients: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_ip: Option<usize>,
    broadcast_rate: Option<u32>,
    broadcast_burst: Option<u32>,
    general_rate: Option<u32>,
    general_burst: Option<u32>,
    metrics: Option<String>,
    control_socket: Option<PathBuf>,
    log: Option<String>,
    cluster: Option<RawCluster>,
    #[serde(default)]
    network: Vec<RawNetwork>,
    turn: Option<RawTurn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    path: String,
    password: String,
    pool: String,
    #[serde(default)]
    route: Vec<RawRoute>,
}

/// A key that takes one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nats: OneOrMany,
    name: String,
    replicas: Option<i64>,
    lease_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dst: String,
    via: String,
    #[serde(rename = "for")]
    for_clients: Option<String>,
}

pub const STUN_PORT: u16 = 3478;

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&path.display().to_string(), &read(path)?)
    }

    /// The routes of the network named `network`: the top-level
    /// `[[route]]`s for [`DEFAULT_NETWORK`], else its `[[network.route]]`s.
    pub fn routes_of(&self, network: &str) -> Option<&Vec<PushedRoute>> {
        if network == DEFAULT_NETWORK {
            return self.pool.is_some().then_some(&self.routes);
        }
        self.networks
            .iter()
            .find(|n| n.name == network)
            .map(|n| &n.routes)
    }

    /// Like [`ServerConfig::routes_of`], to change them.
    pub fn routes_of_mut(&mut self, network: &str) -> Option<&mut Vec<PushedRoute>> {
        if network == DEFAULT_NETWORK {
            return self.pool.is_some().then_some(&mut self.routes);
        }
        self.networks
            .iter_mut()
            .find(|n| n.name == network)
            .map(|n| &mut n.routes)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let c = Ctx { file };
        let raw: RawServer = parse_toml(file, text)?;
        let listen = c.socket("listen", &raw.listen)?;
        let (password, pool) =
            default_network(&c, raw.password, raw.pool.as_deref(), &raw.network)?;
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(c.err(
                    "tls_key",
                    "tls_cert is set, so tls_key (a PEM private key file) is required",
                ))
            }
            (None, Some(_)) => {
                return Err(c.err(
                    "tls_cert",
                    "tls_key is set, so tls_cert (a PEM certificate file) is required",
                ))
            }
        };
        let stun = match raw.stun.as_deref() {
            None => Some(SocketAddr::new(listen.ip(), STUN_PORT)),
            Some("") => None,
            Some(s) => Some(c.socket("stun", s)?),
        };
        let (stun_alt_port, stun_alt_address) =
            stun_alternates(&c, stun, raw.stun_alt_port, raw.stun_alt_address.as_deref())?;
        let routes = match pool {
            Some(pool) => routes(&c, "route", raw.route, pool)?,
            None if raw.route.is_empty() => Vec::new(),
            None => {
                return Err(c.err(
                    "route",
                    "a top-level [[route]] belongs to the default network, which needs password and pool; put it in its [[network]] as [[network.route]]",
                ))
            }
        };
        let networks = networks(&c, raw.network, password.as_deref())?;
        let max_clients = raw.max_clients.unwrap_or(4096);
        if max_clients == 0 {
            return Err(c.err("max_clients", "must be at least 1"));
        }
        let at_least_one = |key: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(c.err(key, "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let as_u64 = |v: Option<usize>| v.map(|v| v as u64);
        let max_unauthenticated = at_least_one(
            "max_unauthenticated",
            as_u64(raw.max_unauthenticated),
            DEFAULT_MAX_UNAUTHENTICATED as u64,
        )? as usize;
        let max_unauthenticated_per_ip = at_least_one(
            "max_unauthenticated_per_ip",
            as_u64(raw.max_unauthenticated_per_ip),
            DEFAULT_MAX_UNAUTHENTICATED_PER_IP as u64,
        )? as usize;
        let rate = |key: &str, v: Option<u32>, default: u32| {
            at_least_one(key, v.map(u64::from), u64::from(default)).map(|v| v as u32)
        };
        let broadcast_rate = rate("broadcast_rate", raw.broadcast_rate, DEFAULT_BROADCAST_RATE)?;
        let broadcast_burst = rate(
            "broadcast_burst",
            raw.broadcast_burst,
            DEFAULT_BROADCAST_BURST,
        )?;
        let general_rate = rate("general_rate", raw.general_rate, DEFAULT_GENERAL_RATE)?;
        let general_burst = rate("general_burst", raw.general_burst, DEFAULT_GENERAL_BURST)?;
        let metrics = c.metrics(raw.metrics.as_deref(), SERVER_METRICS_PORT)?;
        let log = c.log(raw.log)?;
        let cluster = raw.cluster.map(|r| cluster(&c, r)).transpose()?;
        let turn = raw.turn.map(|r| turn_secret(&c, r)).transpose()?;
        Ok(Self {
            turn,
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
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_SOCKET)),
            log,
            cluster,
            networks,
        })
    }
}

/// The top-level `password` and `pool`: the default network, which every
/// path no `[[network]]` claims joins. Both are required without
/// `[[network]]` sections; with them, both or neither.
fn default_network(
    c: &Ctx,
    password: Option<String>,
    pool_text: Option<&str>,
    named: &[RawNetwork],
) -> Result<(Option<String>, Option<Ipv4Cidr>), ConfigError> {
    match (password, pool_text) {
        (Some(p), _) if p.is_empty() => Err(c.err("password", "must not be empty")),
        (Some(p), Some(text)) => Ok((Some(p), Some(pool(c, "pool", text)?))),
        (None, None) if !named.is_empty() => Ok((None, None)),
        (None, None) => Err(c.err(
            "password",
            "missing: give password and pool (the default network), or [[network]] sections with their own",
        )),
        (Some(_), None) => Err(c.err(
            "pool",
            "missing: password is set, so the default network needs a pool too, like pool = \"10.77.0.0/24\"",
        )),
        (None, Some(_)) => Err(c.err(
            "password",
            "missing: pool is set, so the default network needs a password too",
        )),
    }
}

fn pool(c: &Ctx, key: &str, value: &str) -> Result<Ipv4Cidr, ConfigError> {
    let pool = c.cidr(key, value)?;
    if !pool.is_network() || pool.prefix > 30 || pool.prefix < 8 {
        return Err(c.err(
            key,
            format!("expected a network address with a prefix from /8 to /30, like 10.77.0.0/24, got {pool}"),
        ));
    }
    Ok(pool)
}

/// `[[route]]` (or a network's `[[network.route]]`, `key` says which).
fn routes(
    c: &Ctx,
    key: &str,
    raw: Vec<RawRoute>,
    pool: Ipv4Cidr,
) -> Result<Vec<PushedRoute>, ConfigError> {
    let mut routes = Vec::new();
    for r in raw {
        let dst = c.cidr(&format!("{key}.dst"), &r.dst)?;
        if !dst.is_network() {
            return Err(c.err(
                &format!("{key}.dst"),
                format!("expected a network address (host bits zero), got {dst}"),
            ));
        }
        let via = c.ipv4(&format!("{key}.via"), &r.via)?;
        if !pool.is_usable_host(via) {
            return Err(c.err(
                &format!("{key}.via"),
                format!("{via} is not a host address inside pool {pool}"),
            ));
        }
        let for_clients = match r.for_clients {
            Some(f) => c.cidr(&format!("{key}.for"), &f)?,
            None => pool,
        };
        routes.push(PushedRoute {
            dst,
            via,
            for_clients,
        });
    }
    Ok(routes)
}

/// The name of the network of the top-level keys; no `[[network]]` may
/// take it.
pub const DEFAULT_NETWORK: &str = "default";

fn networks(
    c: &Ctx,
    raw: Vec<RawNetwork>,
    default_password: Option<&str>,
) -> Result<Vec<NetworkConfig>, ConfigError> {
    let mut out: Vec<NetworkConfig> = Vec::new();
    for n in raw {
        if !is_token(&n.name, 64) || n.name == DEFAULT_NETWORK {
            return Err(c.err(
                "network.name",
                format!(
                    "expected 1-64 letters, digits, '-' or '_', other than {DEFAULT_NETWORK:?}, got {:?}",
                    n.name
                ),
            ));
        }
        let path = normalize_path(&n.path);
        let path_ok = path.len() > 1
            && path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !path_ok {
            return Err(c.err(
                "network.path",
                format!("expected a URL path like \"/lab\" (not \"/\", which is the default network's), got {:?}", n.path),
            ));
        }
        if out.iter().any(|o| o.name == n.name) {
            return Err(c.err("network.name", format!("{:?} is used twice", n.name)));
        }
        if out.iter().any(|o| o.path == path) {
            return Err(c.err("network.path", format!("{path:?} is used twice")));
        }
        if n.password.is_empty() {
            return Err(c.err("network.password", "must not be empty"));
        }
        // A member could then log in to either network; the path is
        // meant to choose, the password to keep out.
        if Some(n.password.as_str()) == default_password {
            return Err(c.err(
                "network.password",
                format!("network {:?} must not share the top-level password", n.name),
            ));
        }
        if let Some(o) = out.iter().find(|o| o.password == n.password) {
            return Err(c.err(
                "network.password",
                format!(
                    "networks {:?} and {:?} must not share a password",
                    o.name, n.name
                ),
            ));
        }
        let pool = pool(c, "network.pool", &n.pool)?;
        let routes = routes(c, "network.route", n.route, pool)?;
        out.push(NetworkConfig {
            name: n.name,
            path,
            password: n.password,
            pool,
            routes,
        });
    }
    Ok(out)
}

/// A request path as networks are matched: no trailing '/' (but "/" stays).
pub fn normalize_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A name that may stand in a NATS subject or key-value key: letters,
/// digits, '-' and '_'.
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn cluster(c: &Ctx, raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
    let nats = raw.nats.into_vec();
    if nats.is_empty() {
        return Err(c.err(
            "cluster.nats",
            "expected at least one NATS server, like \"nats://10.0.0.1:4222\"",
        ));
    }
    for url in &nats {
        // ws:// and wss:// parse too, but this build speaks plain and TLS only.
        let scheme_ok = url.starts_with("nats://") || url.starts_with("tls://");
        let parsed = url.parse::<async_nats::ServerAddr>();
        if !scheme_ok || parsed.is_err() {
            let why = parsed.err().map(|e| format!(": {e}")).unwrap_or_default();
            return Err(c.err(
                "cluster.nats",
                format!(
                    "expected a URL like nats://host:4222 or tls://host:4222, got {url:?}{why}"
                ),
            ));
        }
    }
    if !is_token(&raw.name, 64) {
        return Err(c.err(
            "cluster.name",
            format!(
                "expected 1-64 letters, digits, '-' or '_' (unique per instance), got {:?}",
                raw.name
            ),
        ));
    }
    let replicas = in_range(c, "cluster.replicas", raw.replicas.unwrap_or(1), 1, 5)? as usize;
    let lease_seconds = in_range(
        c,
        "cluster.lease_seconds",
        raw.lease_seconds
            .unwrap_or(i64::from(DEFAULT_LEASE_SECONDS)),
        3,
        3600,
    )? as u32;
    Ok(ClusterConfig {
        nats,
        name: raw.name,
        replicas,
        lease_seconds,
    })
}

/// `stun_alt_port` (default: the STUN port + 1) and `stun_alt_address`
/// (default: none), checked against the primary STUN endpoint.
fn stun_alternates(
    c: &Ctx,
    stun: Option<SocketAddr>,
    port: Option<i64>,
    address: Option<&str>,
) -> Result<(u16, Option<IpAddr>), ConfigError> {
    let Some(stun) = stun else {
        if port.is_some() {
            return Err(c.err("stun_alt_port", "the STUN responder is off (stun = \"\")"));
        }
        if address.is_some() {
            return Err(c.err(
                "stun_alt_address",
                "the STUN responder is off (stun = \"\")",
            ));
        }
        return Ok((0, None));
    };
    let alt_port = match port {
        Some(p) => in_range(c, "stun_alt_port", p, 0, 65535)? as u16,
        // Ephemeral stays ephemeral (tests).
        None if stun.port() == 0 => 0,
        None => stun.port().checked_add(1).ok_or_else(|| {
            c.err(
                "stun_alt_port",
                "stun uses port 65535, so there is no default next port; set one",
            )
        })?,
    };
    if alt_port != 0 && alt_port == stun.port() {
        return Err(c.err(
            "stun_alt_port",
            format!("must differ from the STUN port {alt_port}"),
        ));
    }
    let alt_address = match address {
        None => None,
        Some(a) => {
            let ip: IpAddr = a.parse().map_err(|_| {
                c.err(
                    "stun_alt_address",
                    format!("expected an IP address, got {a:?}"),
                )
            })?;
            let problem = if stun.ip().is_unspecified() {
                Some(
                    "needs stun bound to a specific address, so replies come from known IPs"
                        .to_string(),
                )
            } else if ip.is_unspecified() || ip == stun.ip() {
                Some(format!("must be a second address of this host, not {ip}"))
            } else if ip.is_ipv4() != stun.is_ipv4() {
                Some(format!("{ip} is not of the same family as stun {stun}"))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(c.err("stun_alt_address", p));
            }
            Some(ip)
        }
    };
    Ok((alt_port, alt_address))
}

// ---------------------------------------------------------------- client

/// `ws://host[:port][/path]` or `wss://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ServerUrl {
    pub fn parse(s: &str) -> Option<Self> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else {
            (false, s.strip_prefix("ws://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // The query string is dropped, as Candy does.
        let path = path.split('?').next().unwrap_or("/").to_string();
        let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })?;
        Some(Self {
            tls,
            host,
            port,
            path,
        })
    }

    pub fn to_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok().filter(|&p| p != 0)?),
        None => (authority, default_port),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    valid.then(|| (host.to_string(), port))
}

/// Which server certificates a TLS link accepts: the `wss://` server
/// link and a `turns://` TURN server alike. The one place that decides
/// it, from `tls_ca` and `tls_insecure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Certificates that chain to the bundled web PKI roots or to one of
    /// the PEM certificates in `extra_ca`.
    Roots { extra_ca: Option<PathBuf> },
    /// Any certificate at all (`tls_insecure = true`, what stock Candy
    /// does): for lab setups only.
    AnyCertificate,
}

impl ServerTrust {
    /// `tls_ca` with `tls_insecure` is refused, where it would silently be
    /// ignored. Both are taken with a `ws://` server: a `turns://` TURN
    /// server, configured or offered by the server later, uses them.
    fn decide(
        c: &Ctx<'_>,
        tls_ca: Option<PathBuf>,
        tls_insecure: bool,
    ) -> Result<Self, ConfigError> {
        match (tls_ca, tls_insecure) {
            (Some(_), true) => Err(c.err(
                "tls_ca",
                "tls_insecure = true checks no certificate, so tls_ca would be ignored",
            )),
            (extra_ca, false) => Ok(Self::Roots { extra_ca }),
            (None, true) => Ok(Self::AnyCertificate),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The first server listed in `server`.
    pub server: ServerUrl,
    /// The others, when `server` lists several instances of one cluster:
    /// the client keeps to one of them (chosen by its vmac) and fails over
    /// to the next.
    pub more_servers: Vec<ServerUrl>,
    pub password: String,
    pub tun: String,
    pub address: Option<Ipv4Cidr>,
    pub mtu: u16,
    /// Dataplane threads; 0 = one per core.
    pub workers: usize,
    /// STUN server for P2P; None turns P2P off.
    pub stun: Option<StunServer>,
    /// Local UDP port for peer traffic; 0 = any.
    pub port: u16,
    /// Seconds between DISCOVERY broadcasts; 0 = off.
    pub discovery: u32,
    /// Route cost in ms (0..=1000); 0 turns latency routing off.
    pub route_cost: u32,
    /// TLS on the server link and what it trusts: `Some` exactly when
    /// `server` is `wss://`.
    pub server_tls: Option<ServerTrust>,
    /// What a `turns://` TURN server's certificate must chain to: the same
    /// `tls_ca` and `tls_insecure` as the server link.
    pub turn_tls: ServerTrust,
    /// Unix socket where `ringlink status` finds this client.
    pub control_socket: PathBuf,
    /// LAN candidate address announced to peers (Candy's `localhost`).
    pub lan_address: Option<Ipv4Addr>,
    /// A public `ip:port` that reaches this node's UDP port whoever sends
    /// (a port forward on the gateway in front of it): announced to peers
    /// instead of the STUN mapping, and marks this node reachable, so
    /// peers behind any NAT, symmetric ones included, open the path to it.
    /// The node also listens for TCP on its data port and offers that to
    /// peers whose networks drop UDP (docs/tcp.md).
    pub public_endpoint: Option<SocketAddrV4>,
    /// Clamp the MSS of TCP SYNs entering the tunnel to fit its MTU.
    pub mss_clamp: bool,
    /// Network-wide peer cipher; AES-256-GCM is the only one Candy speaks.
    pub cipher: CipherKind,
    /// Pin each dataplane worker to its own CPU. Right for one node per
    /// machine; several nodes sharing a few cores (a lab, a benchmark) do
    /// better letting the scheduler spread their busy workers.
    pub pin_workers: bool,
    /// TUN and UDP offloads (TSO/USO reads split by the dataplane, UDP GSO
    /// sends, UDP GRO receives coalesced into TSO writes). Off only to
    /// compare, or on a kernel without them.
    pub offload: bool,
    /// Test-only: every peer timer is divided by this (1 = real timings).
    pub test_time_divisor: u32,
    /// Where Prometheus text is served on `/metrics`; None = off.
    pub metrics: Option<SocketAddr>,
    /// Export per-peer traffic with a `peer` label: one series per peer,
    /// so for small networks only.
    pub metrics_per_peer: bool,
    /// Log filter (`--log` and `RUST_LOG` take precedence).
    pub log: String,
    /// This node's X25519 private key; created (0600) on first start.
    pub key_file: PathBuf,
    /// Peer keys pinned on first use, one `VIP key` a line.
    pub pins_file: PathBuf,
    /// `peers = [{ vip, key }]`: keys pinned up front, never learnt.
    pub peers: Vec<PinnedPeer>,
    /// `turn = "turn://user:pass@host:port"`: a TURN server for pairs
    /// whose direct path fails. Without it the client uses the server the
    /// ringlink server hands out, if any; with it, this one.
    pub turn: Option<TurnUrl>,
}

/// One entry of the client's `peers = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedPeer {
    pub vip: Ipv4Addr,
    pub key: PublicKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    vip: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    server: OneOrMany,
    password: String,
    tun: Option<String>,
    address: Option<String>,
    mtu: Option<i64>,
    workers: Option<i64>,
    stun: Option<String>,
    port: Option<i64>,
    discovery: Option<i64>,
    route_cost: Option<i64>,
    tls_ca: Option<PathBuf>,
    tls_insecure: Option<bool>,
    control_socket: Option<PathBuf>,
    lan_address: Option<String>,
    public_endpoint: Option<String>,
    test_time_divisor: Option<i64>,
    mss_clamp: Option<bool>,
    cipher: Option<String>,
    offload: Option<bool>,
    pin_workers: Option<bool>,
    metrics: Option<String>,
    metrics_per_peer: Option<bool>,
    log: Option<String>,
    key_file: Option<PathBuf>,
    pins_file: Option<PathBuf>,
    peers: Option<Vec<RawPeer>>,
    turn: Option<String>,
}

/// `peers`: each VIP once, never our own, each key 32 bytes of base64.
fn pinned_peers(
    c: &Ctx,
    raw: Vec<RawPeer>,
    own: Option<Ipv4Cidr>,
) -> Result<Vec<PinnedPeer>, ConfigError> {
    let mut out: Vec<PinnedPeer> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let vip = c.ipv4(&format!("peers[{i}].vip"), &p.vip)?;
        if own.is_some_and(|o| o.addr == vip) {
            return Err(c.err(
                &format!("peers[{i}].vip"),
                format!("{vip} is this node's own address"),
            ));
        }
        if out.iter().any(|q| q.vip == vip) {
            return Err(c.err(&format!("peers[{i}].vip"), format!("{vip} is pinned twice")));
        }
        let key = PublicKey::from_base64(&p.key).map_err(|e| {
            c.err(
                &format!("peers[{i}].key"),
                format!("expected a base64 X25519 public key (as `ringlink client --check` prints it): {e}"),
            )
        })?;
        out.push(PinnedPeer { vip, key });
    }
    Ok(out)
}

fn in_range(c: &Ctx, key: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(c.err(
            key,
            format!("expected an integer from {lo} to {hi}, got {v}"),
        ))
    }
}

pub fn default_control_socket(tun: &str) -> PathBuf {
    PathBuf::from(format!("/run/ringlink/{tun}.sock"))
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&path.display().to_string(), &read(path)?)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let c = Ctx { file };
        let raw: RawClient = parse_toml(file, text)?;
        let mut servers = Vec::new();
        for url in raw.server.into_vec() {
            servers.push(ServerUrl::parse(&url).ok_or_else(|| {
                c.err(
                    "server",
                    format!(
                        "expected ws://host[:port][/path] or wss://host[:port][/path], got {url:?}"
                    ),
                )
            })?);
        }
        if servers.is_empty() {
            return Err(c.err("server", "expected a server URL, or a list of them"));
        }
        let server = servers.remove(0);
        // One trust setting covers them all, so they all speak alike.
        if let Some(odd) = servers.iter().find(|u| u.tls != server.tls) {
            return Err(c.err(
                "server",
                format!(
                    "{} and {} mix ws:// and wss://; list servers of one kind",
                    server.to_url(),
                    odd.to_url()
                ),
            ));
        }
        let turn_tls = ServerTrust::decide(&c, raw.tls_ca, raw.tls_insecure.unwrap_or(false))?;
        let server_tls = server.tls.then(|| turn_tls.clone());
        if raw.password.is_empty() {
            return Err(c.err("password", "must not be empty"));
        }
        let tun = raw.tun.unwrap_or_else(|| "rl0".to_string());
        // IFNAMSIZ is 16 including the terminator.
        let valid_name = !tun.is_empty()
            && tun.len() <= 15
            && tun
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_name {
            return Err(c.err("tun", format!("expected an interface name of 1-15 letters, digits, '-', '_' or '.', got {tun:?}")));
        }
        let address = match raw.address {
            None => None,
            Some(a) => {
                let cidr = c.cidr("address", &a)?;
                if cidr.prefix > 30 || !cidr.is_usable_host(cidr.addr) {
                    return Err(c.err("address", format!("expected a host address with its prefix, like 10.77.0.20/24, got {cidr}")));
                }
                Some(cidr)
            }
        };
        // The one check of `mtu`; `proto::mtu` says why the limits are these.
        let mtu = in_range(
            &c,
            "mtu",
            raw.mtu.unwrap_or(mtu::DEFAULT_MTU.into()),
            mtu::MIN_MTU.into(),
            mtu::MAX_MTU.into(),
        )? as u16;
        let workers = in_range(&c, "workers", raw.workers.unwrap_or(0), 0, 256)? as usize;
        let stun = match raw.stun.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let rest = s
                    .strip_prefix("stun://")
                    .and_then(|r| split_host_port(r, crate::config::STUN_PORT));
                let (host, port) = rest.ok_or_else(|| {
                    c.err("stun", format!("expected stun://host[:port], got {s:?}"))
                })?;
                Some(StunServer { host, port })
            }
        };
        let port = in_range(&c, "port", raw.port.unwrap_or(0), 0, 65535)? as u16;
        let discovery = in_range(&c, "discovery", raw.discovery.unwrap_or(60), 0, 86400)? as u32;
        let route_cost = in_range(&c, "route_cost", raw.route_cost.unwrap_or(5), 0, 1000)? as u32;
        let lan_address = raw
            .lan_address
            .map(|a| c.ipv4("lan_address", &a))
            .transpose()?;
        let public_endpoint = raw
            .public_endpoint
            .map(|e| match c.socket("public_endpoint", &e)? {
                SocketAddr::V4(v4) if !v4.ip().is_unspecified() && v4.port() != 0 => Ok(v4),
                _ => Err(c.err(
                    "public_endpoint",
                    format!("expected a public IPv4 ip:port like 203.0.113.7:41000, got {e:?}"),
                )),
            })
            .transpose()?;
        let cipher = match raw.cipher.as_deref() {
            None | Some("aes-256-gcm") => CipherKind::Aes256Gcm,
            Some("chacha20-poly1305") => CipherKind::ChaCha20Poly1305,
            Some(other) => {
                return Err(c.err(
                    "cipher",
                    format!("expected \"aes-256-gcm\" (Candy's, the default) or \"chacha20-poly1305\", got {other:?}"),
                ))
            }
        };
        let test_time_divisor = in_range(
            &c,
            "test_time_divisor",
            raw.test_time_divisor.unwrap_or(1),
            1,
            100,
        )? as u32;
        let metrics = c.metrics(raw.metrics.as_deref(), CLIENT_METRICS_PORT)?;
        let log = c.log(raw.log)?;
        let peers = pinned_peers(&c, raw.peers.unwrap_or_default(), address)?;
        // Beside the config by default: one key per node, one node per file.
        let key_file = raw
            .key_file
            .unwrap_or_else(|| Path::new(file).with_extension("key"));
        let pins_file = raw
            .pins_file
            .unwrap_or_else(|| key_file.with_extension("pins"));
        if pins_file == key_file {
            return Err(c.err("pins_file", "must not be the key file"));
        }
        let turn = match raw.turn.as_deref() {
            None | Some("") => None,
            Some(u) => {
                let url = TurnUrl::parse(u).map_err(|e| c.err("turn", e.to_string()))?;
                if url.credentials.is_none() {
                    return Err(c.err(
                        "turn",
                        "expected turn://user:pass@host[:port] or turns://…; leave turn out to use the server's TURN offer",
                    ));
                }
                Some(url)
            }
        };
        Ok(Self {
            turn,
            key_file,
            pins_file,
            peers,
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| default_control_socket(&tun)),
            server,
            more_servers: servers,
            password: raw.password,
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
            lan_address,
            public_endpoint,
            test_time_divisor,
            mss_clamp: raw.mss_clamp.unwrap_or(true),
            cipher,
            offload: raw.offload.unwrap_or(true),
            pin_workers: raw.pin_workers.unwrap_or(true),
            metrics,
            metrics_per_peer: raw.metrics_per_peer.unwrap_or(false),
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::TurnTransport;

    fn server(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse("server.toml", text)
    }

    fn client(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse("client.toml", text)
    }

    const SERVER: &str =
        "listen = \"10.91.0.1:7443\"\npassword = \"secret\"\npool = \"10.77.0.0/24\"\n";
    const CLIENT: &str = "server = \"ws://10.91.0.1:7443\"\npassword = \"secret\"\n";

    #[test]
    fn turn_keys() {
        let s = server(&format!(
            "{SERVER}turn = {{ url = \"turn://10.9.0.1\", secret = \"k\" }}\n"
        ))
        .unwrap();
        let t = s.turn.unwrap();
        assert_eq!(
            (t.url.host.as_str(), t.url.port, t.ttl),
            ("10.9.0.1", 3478, 86_400)
        );
        assert_eq!(server(SERVER).unwrap().turn, None);
        let s = server(&format!(
            "{SERVER}turn = {{ url = \"turns://turn.example\", secret = \"k\" }}\n"
        ))
        .unwrap();
        let u = s.turn.unwrap().url;
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (TurnTransport::Tls, "turn.example", 5349)
        );
        let s = server(&format!(
            "{SERVER}turn = {{ url = \"turn://10.9.0.1?transport=tcp\", secret = \"k\" }}\n"
        ))
        .unwrap();
        assert_eq!(s.turn.unwrap().url.transport, TurnTransport::Tcp);
        for (bad, key) in [
            (
                "turn = { url = \"turn://u:p@h\", secret = \"k\" }",
                "turn.url",
            ),
            (
                "turn = { url = \"turns://u:p@h\", secret = \"k\" }",
                "turn.url",
            ),
            (
                "turn = { url = \"turn://h\", secret = \"\" }",
                "turn.secret",
            ),
            (
                "turn = { url = \"turn://h\", secret = \"k\", ttl = 5 }",
                "turn.ttl",
            ),
        ] {
            let e = server(&format!("{SERVER}{bad}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
        let c = client(&format!(
            "{CLIENT}turn = \"turn://alice:pw@10.9.0.1:3479\"\n"
        ))
        .unwrap();
        let u = c.turn.unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.9.0.1", 3479));
        assert_eq!(u.credentials.unwrap().username, "alice");
        assert_eq!(client(CLIENT).unwrap().turn, None);
        let c = client(&format!(
            "{CLIENT}turn = \"turns://alice:pw@turn.example:443\"\n"
        ))
        .unwrap();
        let u = c.turn.unwrap();
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (TurnTransport::Tls, "turn.example", 443)
        );
        for bad in [
            "turn://10.9.0.1",
            "turns://h",
            "turns://a:b@",
            "10.9.0.1:3478",
        ] {
            let e = client(&format!("{CLIENT}turn = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("turn"), "{bad}: {e}");
            assert!(!e.to_string().contains(":b@"), "{e}");
        }
    }

    #[test]
    fn server_contract_example() {
        let s = server(SERVER).unwrap();
        assert_eq!(s.listen, "10.91.0.1:7443".parse().unwrap());
        assert_eq!(s.pool.unwrap().to_string(), "10.77.0.0/24");
        assert_eq!(s.stun, Some("10.91.0.1:3478".parse().unwrap()));
        assert!(s.tls.is_none() && s.routes.is_empty());
        let off = server(&format!("{SERVER}stun = \"\"\n")).unwrap();
        assert_eq!(off.stun, None);
    }

    #[test]
    fn server_networks() {
        assert!(server(SERVER).unwrap().networks.is_empty());
        let lab = "[[network]]\nname = \"lab\"\npath = \"/lab/\"\npassword = \"other\"\npool = \"10.78.0.0/24\"\n[[network.route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.78.0.9\"\n";
        let s = server(&format!("{SERVER}{lab}")).unwrap();
        assert_eq!(s.networks.len(), 1);
        let n = &s.networks[0];
        assert_eq!((n.name.as_str(), n.path.as_str()), ("lab", "/lab"));
        assert_eq!(n.routes[0].for_clients.to_string(), "10.78.0.0/24");
        let net = |body: &str| server(&format!("{SERVER}[[network]]\n{body}\n"));
        for (bad, key) in [
            ("name = \"default\"\npath = \"/x\"\npassword = \"o\"\npool = \"10.78.0.0/24\"", "network.name"),
            ("name = \"a.b\"\npath = \"/x\"\npassword = \"o\"\npool = \"10.78.0.0/24\"", "network.name"),
            ("name = \"x\"\npath = \"/\"\npassword = \"o\"\npool = \"10.78.0.0/24\"", "network.path"),
            ("name = \"x\"\npath = \"lab\"\npassword = \"o\"\npool = \"10.78.0.0/24\"", "network.path"),
            ("name = \"x\"\npath = \"/x\"\npassword = \"secret\"\npool = \"10.78.0.0/24\"", "network.password"),
            ("name = \"x\"\npath = \"/x\"\npassword = \"\"\npool = \"10.78.0.0/24\"", "network.password"),
            ("name = \"x\"\npath = \"/x\"\npassword = \"o\"\npool = \"10.78.0.1/24\"", "network.pool"),
            ("name = \"x\"\npath = \"/x\"\npassword = \"o\"\npool = \"10.78.0.0/24\"\n[[network.route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.77.0.9\"", "network.route.via"),
        ] {
            let e = net(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
        let twice = format!("{SERVER}{lab}{}", lab.replace("\"lab\"", "\"lab2\""));
        assert_eq!(
            server(&twice).unwrap_err().key.as_deref(),
            Some("network.path")
        );
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/a//"), "/a");
    }

    /// With `[[network]]` sections the top-level password and pool (the
    /// default network) may go; without them, or half given, the error
    /// names what is missing.
    #[test]
    fn server_networks_without_a_default_network() {
        const LISTEN: &str = "listen = \"10.91.0.1:7443\"\n";
        let lab = "[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"l\"\npool = \"10.78.0.0/24\"\n";
        let s = server(&format!("{LISTEN}{lab}")).unwrap();
        assert_eq!((s.password.as_deref(), s.pool), (None, None));
        assert_eq!(s.networks.len(), 1);
        assert_eq!(s.routes_of(DEFAULT_NETWORK), None);
        assert!(s.routes_of("lab").is_some());

        let e = server(LISTEN).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("password"), "{e}");
        assert!(
            e.to_string().contains("[[network]]"),
            "names both ways out: {e}"
        );
        let e = server(&format!("{LISTEN}password = \"p\"\n{lab}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool"), "{e}");
        assert!(e.to_string().contains("password is set"), "{e}");
        let e = server(&format!("{LISTEN}pool = \"10.77.0.0/24\"\n{lab}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("password"), "{e}");
        assert!(e.to_string().contains("pool is set"), "{e}");
        let e = server(&format!(
            "{LISTEN}[[route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.78.0.9\"\n{lab}"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route"), "{e}");
        assert!(e.to_string().contains("[[network.route]]"), "{e}");

        // Two networks, no default: their passwords must still differ.
        let two = format!("{LISTEN}{lab}{}", lab.replace("lab", "lab2"));
        let e = server(&two).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("network.password"), "{e}");
        let two = two.replacen("password = \"l\"", "password = \"m\"", 1);
        assert_eq!(server(&two).unwrap().networks.len(), 2);
    }

    #[test]
    fn server_cluster_section() {
        assert_eq!(server(SERVER).unwrap().cluster, None);
        let one = server(&format!(
            "{SERVER}[cluster]\nnats = \"nats://10.0.0.1:4222\"\nname = \"srv-a\"\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(one.nats, ["nats://10.0.0.1:4222"]);
        assert_eq!(
            (one.replicas, one.lease_seconds),
            (1, DEFAULT_LEASE_SECONDS)
        );
        let many = server(&format!(
            "{SERVER}[cluster]\nnats = [\"nats://a:4222\", \"nats://b:4222\"]\nname = \"b_2\"\nreplicas = 3\nlease_seconds = 9\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (many.nats.len(), many.replicas, many.lease_seconds),
            (2, 3, 9)
        );
        for (bad, key) in [
            ("nats = []\nname = \"a\"", "cluster.nats"),
            ("nats = \"http://a:4222\"\nname = \"a\"", "cluster.nats"),
            (
                "nats = [\"nats://a\", \"a b\"]\nname = \"a\"",
                "cluster.nats",
            ),
            ("nats = \"nats://a:4222\"\nname = \"a.b\"", "cluster.name"),
            ("nats = \"nats://a:4222\"\nname = \"\"", "cluster.name"),
            (
                "nats = \"nats://a:4222\"\nname = \"a\"\nreplicas = 0",
                "cluster.replicas",
            ),
            (
                "nats = \"nats://a:4222\"\nname = \"a\"\nlease_seconds = 1",
                "cluster.lease_seconds",
            ),
        ] {
            let e = server(&format!("{SERVER}[cluster]\n{bad}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
        assert!(server(&format!("{SERVER}[cluster]\nname = \"a\"\n")).is_err());
    }

    #[test]
    fn server_admission_and_rate_limits() {
        let s = server(SERVER).unwrap();
        assert_eq!(
            (s.max_unauthenticated, s.max_unauthenticated_per_ip),
            (
                DEFAULT_MAX_UNAUTHENTICATED,
                DEFAULT_MAX_UNAUTHENTICATED_PER_IP
            )
        );
        assert_eq!(
            (
                s.broadcast_rate,
                s.broadcast_burst,
                s.general_rate,
                s.general_burst
            ),
            (20, 40, 100, 400)
        );
        let s = server(&format!(
            "{SERVER}max_unauthenticated = 10\nmax_unauthenticated_per_ip = 2\nbroadcast_rate = 5\nbroadcast_burst = 6\ngeneral_rate = 7\ngeneral_burst = 8\n"
        ))
        .unwrap();
        assert_eq!(
            (s.max_unauthenticated, s.max_unauthenticated_per_ip),
            (10, 2)
        );
        assert_eq!(
            (
                s.broadcast_rate,
                s.broadcast_burst,
                s.general_rate,
                s.general_burst
            ),
            (5, 6, 7, 8)
        );
        for key in [
            "max_unauthenticated",
            "max_unauthenticated_per_ip",
            "broadcast_rate",
            "broadcast_burst",
            "general_rate",
            "general_burst",
        ] {
            let e = server(&format!("{SERVER}{key} = 0\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        assert!(server(&format!("{SERVER}broadcast_rate = -1\n")).is_err());
    }

    #[test]
    fn metrics_address_loopback_by_default_off_with_empty() {
        assert_eq!(
            server(SERVER).unwrap().metrics,
            Some("127.0.0.1:9587".parse().unwrap())
        );
        let c = client(CLIENT).unwrap();
        assert_eq!(
            (c.metrics, c.metrics_per_peer),
            (Some("127.0.0.1:9586".parse().unwrap()), false)
        );
        let c = client(&format!(
            "{CLIENT}metrics = \"[::]:9100\"\nmetrics_per_peer = true\n"
        ))
        .unwrap();
        assert_eq!(c.metrics, Some("[::]:9100".parse().unwrap()));
        assert!(c.metrics_per_peer);
        assert_eq!(
            client(&format!("{CLIENT}metrics = \"\"\n"))
                .unwrap()
                .metrics,
            None
        );
        assert_eq!(
            server(&format!("{SERVER}metrics = \"\"\n"))
                .unwrap()
                .metrics,
            None
        );
        for bad in ["9586", "localhost:9586", "127.0.0.1"] {
            let e = client(&format!("{CLIENT}metrics = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("metrics"), "{bad}: {e}");
            assert!(e.to_string().contains("127.0.0.1:9586"), "{e}");
            let e = server(&format!("{SERVER}metrics = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("metrics"), "{bad}: {e}");
        }
        let e = client(&format!("{CLIENT}metrics_per_peer = \"yes\"\n")).unwrap_err();
        assert!(e.to_string().contains("metrics_per_peer"), "{e}");
    }

    #[test]
    fn log_filter_key() {
        assert_eq!(client(CLIENT).unwrap().log, "info");
        assert_eq!(server(SERVER).unwrap().log, "info");
        let c = client(&format!("{CLIENT}log = \"warn,ringlink=debug\"\n")).unwrap();
        assert_eq!(c.log, "warn,ringlink=debug");
        for bad in ["", "info,ringlink=loud", "ringlink=[{"] {
            let e = client(&format!("{CLIENT}log = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("log"), "{bad:?}: {e}");
            let e = server(&format!("{SERVER}log = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("log"), "{bad:?}: {e}");
        }
        // The netlink noise is quieted unless the filter asks for it.
        assert!(log_filter("debug")
            .unwrap()
            .to_string()
            .contains("netlink_packet_route=error"));
        assert!(!log_filter("netlink_packet_route=debug")
            .unwrap()
            .to_string()
            .contains("=error"));
    }

    #[test]
    fn server_control_socket() {
        assert_eq!(
            server(SERVER).unwrap().control_socket,
            PathBuf::from("/run/ringlink-server/server.sock")
        );
        let s = server(&format!("{SERVER}control_socket = \"/tmp/x.sock\"\n")).unwrap();
        assert_eq!(s.control_socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn server_stun_alternates() {
        let s = server(SERVER).unwrap();
        assert_eq!((s.stun_alt_port, s.stun_alt_address), (3479, None));
        let s = server(&format!(
            "{SERVER}stun = \"10.91.0.1:3478\"\nstun_alt_port = 5000\nstun_alt_address = \"10.91.0.2\"\n"
        ))
        .unwrap();
        assert_eq!(s.stun_alt_port, 5000);
        assert_eq!(s.stun_alt_address, Some("10.91.0.2".parse().unwrap()));
        let bad = [
            ("stun = \"10.91.0.1:65535\"\n", "stun_alt_port"),
            ("stun_alt_port = 3478\n", "stun_alt_port"),
            ("stun_alt_port = 70000\n", "stun_alt_port"),
            ("stun = \"\"\nstun_alt_port = 3479\n", "stun_alt_port"),
            ("stun_alt_address = \"nowhere\"\n", "stun_alt_address"),
            ("stun_alt_address = \"10.91.0.1\"\n", "stun_alt_address"),
            ("stun_alt_address = \"2001:db8::1\"\n", "stun_alt_address"),
            (
                "stun = \"0.0.0.0:3478\"\nstun_alt_address = \"10.91.0.2\"\n",
                "stun_alt_address",
            ),
            (
                "stun = \"\"\nstun_alt_address = \"10.91.0.2\"\n",
                "stun_alt_address",
            ),
        ];
        for (extra, key) in bad {
            let e = server(&format!("{SERVER}{extra}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        }
    }

    #[test]
    fn server_routes() {
        let s = server(&format!(
            "{SERVER}[[route]]\ndst = \"192.168.20.0/24\"\nvia = \"10.77.0.20\"\n[[route]]\ndst = \"192.168.30.0/24\"\nvia = \"10.77.0.30\"\nfor = \"10.77.0.0/25\"\n"
        ))
        .unwrap();
        assert_eq!(s.routes.len(), 2);
        assert_eq!(Some(s.routes[0].for_clients), s.pool);
        assert_eq!(s.routes[1].for_clients.to_string(), "10.77.0.0/25");
        let e = server(&format!(
            "{SERVER}[[route]]\ndst = \"192.168.20.1/24\"\nvia = \"10.77.0.20\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route.dst"));
    }

    #[test]
    fn server_errors_name_the_key() {
        let e = server("listen = \"10.91.0.1:7443\"\npool = \"10.77.0.0/24\"\n").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        let e = server(&format!("{SERVER}colour = \"blue\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = server(&SERVER.replace("10.77.0.0/24", "10.77.0/24")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool"));
        assert!(
            e.to_string().contains("10.77.0.0/24"),
            "names the expected form: {e}"
        );
        let e = server(&SERVER.replace("10.77.0.0/24", "10.77.0.5/24")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool"));
        let e = server(&SERVER.replace("10.91.0.1:7443", "10.91.0.1")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen"));
        let e = server(&format!("{SERVER}tls_cert = \"c.pem\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tls_key"));
    }

    #[test]
    fn client_defaults() {
        let c = client(CLIENT).unwrap();
        assert_eq!(c.server.to_url(), "ws://10.91.0.1:7443/");
        assert_eq!(
            (c.tun.as_str(), c.mtu, c.workers, c.address),
            ("rl0", 1400, 0, None)
        );
        assert_eq!(
            (c.stun.clone(), c.port, c.discovery, c.route_cost),
            (None, 0, 60, 5)
        );
        assert_eq!(c.control_socket, PathBuf::from("/run/ringlink/rl0.sock"));
        assert!(c.more_servers.is_empty());
    }

    #[test]
    fn client_server_list() {
        let c = client(
            "server = [\"ws://10.91.0.1:7443\", \"ws://10.91.0.2:7443/net\"]\npassword = \"s\"\n",
        )
        .unwrap();
        assert_eq!(c.server.to_url(), "ws://10.91.0.1:7443/");
        assert_eq!(
            c.more_servers
                .iter()
                .map(|u| u.to_url())
                .collect::<Vec<_>>(),
            ["ws://10.91.0.2:7443/net"]
        );
        for bad in [
            "server = []",
            "server = [\"ws://a\", \"wss://b\"]",
            "server = [\"ws://a\", \"http://b\"]",
        ] {
            let e = client(&format!("{bad}\npassword = \"s\"\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("server"), "{bad}: {e}");
        }
    }

    #[test]
    fn client_full() {
        let c = client(&format!(
            "{CLIENT}tun = \"site-a\"\naddress = \"10.77.0.20/24\"\nmtu = 1420\nworkers = 2\nstun = \"stun://10.91.0.1\"\nport = 51820\n"
        ))
        .unwrap();
        assert_eq!(c.address.unwrap().to_string(), "10.77.0.20/24");
        assert_eq!(
            c.stun.unwrap(),
            StunServer {
                host: "10.91.0.1".into(),
                port: 3478
            }
        );
        assert_eq!((c.mtu, c.workers, c.port), (1420, 2, 51820));
    }

    #[test]
    fn mtu_accepts_exactly_the_budget() {
        for ok in [mtu::MIN_MTU, mtu::DEFAULT_MTU, mtu::MAX_MTU] {
            let c = client(&format!("{CLIENT}mtu = {ok}\n")).unwrap();
            assert_eq!(c.mtu, ok);
        }
        assert_eq!(client(CLIENT).unwrap().mtu, mtu::DEFAULT_MTU);
        for bad in [mtu::MIN_MTU - 1, mtu::MAX_MTU + 1, 1471] {
            let e = client(&format!("{CLIENT}mtu = {bad}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("mtu"));
            assert!(e.to_string().contains("from 576 to 1423"), "{e}");
        }
    }

    #[test]
    fn client_errors_name_the_key() {
        let cases = [
            ("server = \"http://x\"\npassword = \"p\"\n", "server"),
            ("server = \"ws://\"\npassword = \"p\"\n", "server"),
            ("server = \"ws://h:0\"\npassword = \"p\"\n", "server"),
            (&format!("{CLIENT}address = \"10.77.0.0/24\"\n"), "address"),
            (
                &format!("{CLIENT}address = \"10.77.0.300/24\"\n"),
                "address",
            ),
            (&format!("{CLIENT}mtu = 9000\n"), "mtu"),
            (
                &format!("{CLIENT}tun = \"a-very-long-interface-name\"\n"),
                "tun",
            ),
            (&format!("{CLIENT}stun = \"10.0.0.1:3478\"\n"), "stun"),
            (&format!("{CLIENT}route_cost = 1001\n"), "route_cost"),
            (&format!("{CLIENT}cipher = \"des\"\n"), "cipher"),
            (
                &format!("{CLIENT}public_endpoint = \"203.0.113.7\"\n"),
                "public_endpoint",
            ),
            (
                &format!("{CLIENT}public_endpoint = \"0.0.0.0:41000\"\n"),
                "public_endpoint",
            ),
            (
                &format!("{CLIENT}public_endpoint = \"[2001:db8::1]:41000\"\n"),
                "public_endpoint",
            ),
            ("server = \"ws://h\"\npassword = \"\"\n", "password"),
        ];
        for (text, key) in cases {
            let e = client(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
        let e = client("server = \"ws://h\"\n").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        let e = client(&format!("{CLIENT}bogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn client_key_files_default_beside_the_config() {
        let c = ClientConfig::parse("/etc/ringlink/site-a.toml", CLIENT).unwrap();
        assert_eq!(c.key_file, PathBuf::from("/etc/ringlink/site-a.key"));
        assert_eq!(c.pins_file, PathBuf::from("/etc/ringlink/site-a.pins"));
        assert!(c.peers.is_empty());
        let c = client(&format!("{CLIENT}key_file = \"/var/lib/rl/node.key\"\n")).unwrap();
        assert_eq!(c.pins_file, PathBuf::from("/var/lib/rl/node.pins"));
        let e = client(&format!("{CLIENT}key_file = \"k\"\npins_file = \"k\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pins_file"));
    }

    #[test]
    fn client_pinned_peers() {
        let k1 = PublicKey([1; 32]).to_base64();
        let k2 = PublicKey([2; 32]).to_base64();
        let c = client(&format!(
            "{CLIENT}peers = [{{ vip = \"10.77.0.3\", key = \"{k1}\" }}, {{ vip = \"10.77.0.4\", key = \"{k2}\" }}]\n"
        ))
        .unwrap();
        assert_eq!(
            c.peers,
            vec![
                PinnedPeer {
                    vip: Ipv4Addr::new(10, 77, 0, 3),
                    key: PublicKey([1; 32])
                },
                PinnedPeer {
                    vip: Ipv4Addr::new(10, 77, 0, 4),
                    key: PublicKey([2; 32])
                },
            ]
        );
        let cases = [
            (format!("peers = [{{ vip = \"10.77.0.300\", key = \"{k1}\" }}]"), "peers[0].vip", "IPv4"),
            (format!("peers = [{{ vip = \"10.77.0.3\", key = \"{k1}\" }}, {{ vip = \"10.77.0.3\", key = \"{k2}\" }}]"), "peers[1].vip", "twice"),
            ("peers = [{ vip = \"10.77.0.3\", key = \"AAAA\" }]".to_string(), "peers[0].key", "3 bytes"),
            ("peers = [{ vip = \"10.77.0.3\", key = \"not base64!\" }]".to_string(), "peers[0].key", "base64"),
            (format!("address = \"10.77.0.3/24\"\npeers = [{{ vip = \"10.77.0.3\", key = \"{k1}\" }}]"), "peers[0].vip", "own address"),
        ];
        for (extra, key, why) in cases {
            let e = client(&format!("{CLIENT}{extra}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
            assert!(e.to_string().contains(why), "{extra}: {e}");
        }
        let e = client(&format!(
            "{CLIENT}peers = [{{ vip = \"10.77.0.3\", key = \"{k1}\", name = \"x\" }}]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn server_trust_is_decided_from_scheme_ca_and_insecure() {
        let wss = "server = \"wss://relay.example\"\npassword = \"p\"\n";
        let trust = |extra: &str| client(&format!("{wss}{extra}")).map(|c| c.server_tls);
        assert_eq!(client(CLIENT).unwrap().server_tls, None);
        assert_eq!(trust(""), Ok(Some(ServerTrust::Roots { extra_ca: None })));
        assert_eq!(
            trust("tls_ca = \"ca.pem\"\n"),
            Ok(Some(ServerTrust::Roots {
                extra_ca: Some(PathBuf::from("ca.pem"))
            }))
        );
        assert_eq!(
            trust("tls_insecure = true\n"),
            Ok(Some(ServerTrust::AnyCertificate))
        );
        // With ws://, the keys are for a turns:// TURN server only.
        let ws = client(&format!("{CLIENT}tls_ca = \"ca.pem\"\n")).unwrap();
        assert_eq!(ws.server_tls, None);
        assert_eq!(
            ws.turn_tls,
            ServerTrust::Roots {
                extra_ca: Some(PathBuf::from("ca.pem"))
            }
        );
        let ws = client(&format!("{CLIENT}tls_insecure = true\n")).unwrap();
        assert_eq!(ws.turn_tls, ServerTrust::AnyCertificate);
        assert_eq!(
            client(&format!("{wss}tls_ca = \"a.pem\"\n"))
                .unwrap()
                .turn_tls,
            ServerTrust::Roots {
                extra_ca: Some(PathBuf::from("a.pem"))
            }
        );
        for text in [
            format!("{wss}tls_ca = \"ca.pem\"\ntls_insecure = true\n"),
            format!("{CLIENT}tls_ca = \"ca.pem\"\ntls_insecure = true\n"),
        ] {
            let e = client(&text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("tls_ca"), "{text}: {e}");
        }
        assert!(client(&format!("{CLIENT}tls_insecure = false\n")).is_ok());
    }

    #[test]
    fn urls() {
        let u = ServerUrl::parse("wss://relay.example:8443/net/a?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "relay.example", 8443, "/net/a")
        );
        assert_eq!(ServerUrl::parse("ws://h").unwrap().port, 80);
        assert_eq!(ServerUrl::parse("wss://h").unwrap().port, 443);
        assert!(ServerUrl::parse("ws://user@h").is_none());
    }
}
