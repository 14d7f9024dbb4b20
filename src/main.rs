use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;
use tracing::warn;
use tracing_subscriber::EnvFilter;

use ringlink::config::{
    default_control_socket, log_filter, ClientConfig, ServerConfig, DEFAULT_LOG,
    DEFAULT_SERVER_SOCKET,
};
use ringlink::effective_config;
use ringlink::reload::{LogControl, Reload, SetFilter};
use ringlink::status_socket::QueryError;

/// ringlink: a peer-to-peer mesh VPN and site-to-site tunnel for Linux
/// gateways, wire-compatible with Candy.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. "info", "debug", "ringlink=debug" (RUST_LOG also
    /// works, and wins). Given, it overrides the config file's `log`, on
    /// reloads too. [default: the file's `log`, else info]
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordination server: authentication, address pool, relay,
    /// peer introductions, subnet routes, STUN responder. SIGHUP re-reads
    /// the config: log, metrics and [[route]] apply at once (added routes
    /// are pushed to connected members), other changed keys are logged as
    /// needing a restart; a file that does not load is refused.
    Server {
        /// Path to server.toml (keys: listen, password, pool, tls_cert,
        /// tls_key, stun, stun_alt_port, stun_alt_address, max_clients,
        /// max_unauthenticated, max_unauthenticated_per_ip, broadcast_rate,
        /// broadcast_burst, general_rate, general_burst, metrics,
        /// control_socket, log, turn, [[route]]).
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the file and print the effective configuration
        /// (defaults filled in, password hidden); start nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run a node: joins the network, creates the TUN device and carries
    /// traffic (needs root or CAP_NET_ADMIN). SIGHUP re-reads the config:
    /// log, metrics and metrics_per_peer apply at once, without touching
    /// tunnels; other changed keys are logged as needing a restart; a file
    /// that does not load is refused.
    Client {
        /// Path to client.toml (keys: server, password, tun, address, mtu,
        /// workers, stun, port, discovery, route_cost, tls_ca, tls_insecure,
        /// control_socket, lan_address, public_endpoint, cipher, mss_clamp,
        /// offload, pin_workers, metrics, metrics_per_peer, log, key_file,
        /// pins_file, peers, turn).
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the file (and the key and pins files) and print
        /// the effective configuration (defaults filled in, password
        /// hidden) and the node's public key; start nothing.
        #[arg(long)]
        check: bool,
    },
    /// Show a running client's peers, paths and counters, or with
    /// --server a running server's members and their traffic.
    Status {
        /// The control socket (default /run/ringlink/<tun>.sock, with
        /// --server /run/ringlink-server/server.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Interface name used to find a client's default socket.
        #[arg(long, default_value = "rl0")]
        tun: String,
        /// Ask a server: members (VIP, VMAC, instance, remote address,
        /// connected since, frames and bytes in and out) and its counters.
        #[arg(long)]
        server: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a running client's metrics as Prometheus text: the same text
    /// its /metrics serves, e.g. for node-exporter's textfile collector.
    Metrics {
        /// The client's control socket (default /run/ringlink/<tun>.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Interface name used to find the default socket.
        #[arg(long, default_value = "rl0")]
        tun: String,
    },
    /// Ping a VIP through the tunnel and say which path each reply took
    /// (direct with the endpoint, via another node, or the relay); stops
    /// at the first reply over a direct path, or after --count echoes.
    /// Needs root (raw ICMP socket) and a running client.
    Ping {
        /// The VIP to ping.
        vip: std::net::Ipv4Addr,
        /// Echoes to send at most.
        #[arg(long, short, default_value_t = 10)]
        count: u16,
        /// The client's control socket (default /run/ringlink/<tun>.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Interface name used to find the default socket.
        #[arg(long, default_value = "rl0")]
        tun: String,
    },
    /// Check what this node sees of the network, without starting it: the
    /// server over TCP, the STUN server over UDP and the NAT class it
    /// shows, io_uring, the tunnel MTU. Exit 0: works; 1: cannot work;
    /// 3: works only through the relay (UDP gets no answer).
    Netcheck {
        /// Path to the client.toml the node would run with.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build a demo network in namespaces (a server and two sites), run the
    /// real binaries, show ping and throughput through the tunnel, clean up.
    Demo,
    /// Write man pages or shell completions (for packagers).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

#[derive(Subcommand)]
enum Generated {
    /// One man page per command (ringlink.1, ringlink-server.1, ...) into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL, on stdout.
    Completions { shell: clap_complete::Shell },
}

/// The filter from RUST_LOG or `--log`: it wins over a config file's `log`.
fn pinned_log(cli: &Option<String>) -> Option<String> {
    std::env::var("RUST_LOG").ok().or_else(|| cli.clone())
}

/// Starts logging with `log` as the filter; returns how to change it later.
fn init_logs(log: &str) -> SetFilter {
    use std::io::IsTerminal;
    let (filter, refused) = match log_filter(log) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new(DEFAULT_LOG), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    if let Some(e) = refused {
        warn!("log filter {log:?} refused ({e}); logging at {DEFAULT_LOG}");
    }
    Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
}

/// Logging for a long-running process: its file's `log` unless pinned.
fn process_logs(file_log: &mut String, cli: &Option<String>, path: PathBuf) -> Reload {
    let pinned = pinned_log(cli);
    let set = init_logs(pinned.as_deref().unwrap_or(file_log));
    let log = LogControl::new(set, pinned);
    *file_log = log.effective(file_log);
    Reload { path, log }
}

/// `ringlink status`: the document as JSON or as the table `human` makes.
fn show<T: Serialize>(
    got: Result<T, QueryError>,
    json: bool,
    human: impl Fn(&T) -> String,
) -> ExitCode {
    match got {
        Ok(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(s) => {
            print!("{}", human(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringlink status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running processes start logging once their file is read.
    if !matches!(cli.command, Command::Server { .. } | Command::Client { .. }) {
        // A short command's filter never changes: no handle to keep.
        let _ = init_logs(pinned_log(&cli.log).as_deref().unwrap_or(DEFAULT_LOG));
    }
    match cli.command {
        Command::Server { config, check } => {
            let mut cfg = match ServerConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if check {
                print!(
                    "{}",
                    effective_config::server_toml(&config.display().to_string(), &cfg)
                );
                return ExitCode::SUCCESS;
            }
            let reload = process_logs(&mut cfg.log, &cli.log, config);
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            // The server stops itself on a signal: sessions are told and a
            // cluster instance hands back its leases (both bounded).
            report(rt.block_on(async {
                ringlink::server::run(cfg, reload, terminated())
                    .await
                    .map_err(|e| e.to_string())
            }))
        }
        Command::Client { config, check } => {
            let mut cfg = match ClientConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if check {
                // Checked before printing: a key or pins file the client
                // would refuse fails the check the same way.
                let key = match check_key_files(&cfg) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("ringlink: {e}");
                        return ExitCode::from(2);
                    }
                };
                print!(
                    "{}",
                    effective_config::client_toml(&config.display().to_string(), &cfg)
                );
                println!("{key}");
                return ExitCode::SUCCESS;
            }
            let reload = process_logs(&mut cfg.log, &cli.log, config);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            // The control thread is single-threaded by design: its tasks
            // share state without locks, so they run on one LocalSet.
            let local = tokio::task::LocalSet::new();
            match local.block_on(&rt, ringlink::control::run(cfg, terminated(), reload)) {
                // Like a config error, a key file that cannot be used does
                // not fix itself: exit 2, which the unit does not restart.
                Err(e @ ringlink::control::ClientError::Identity(_)) => {
                    eprintln!("ringlink: {e}");
                    ExitCode::from(2)
                }
                r => report(r.map_err(|e| e.to_string())),
            }
        }
        Command::Status {
            socket,
            tun: _,
            server: true,
            json,
        } => {
            let path = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_SOCKET));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            show(ringlink::status_socket::query(&path, "server"), json, |s| {
                ringlink::server::render_status(s, now)
            })
        }
        Command::Status {
            socket,
            tun,
            server: false,
            json,
        } => {
            let path = socket.unwrap_or_else(|| default_control_socket(&tun));
            show(
                ringlink::control::status::query(&path),
                json,
                ringlink::control::status::render,
            )
        }
        Command::Metrics { socket, tun } => {
            let path = socket.unwrap_or_else(|| default_control_socket(&tun));
            let text = ringlink::control::status::query(&path)
                .map_err(|e| e.to_string())
                .and_then(|s| ringlink::metrics::client_text(&s).map_err(|e| e.to_string()));
            match text {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringlink metrics: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ping {
            vip,
            count,
            socket,
            tun,
        } => {
            let path = socket.unwrap_or_else(|| default_control_socket(&tun));
            match ringlink::ping::run(&path, vip, count.max(1), std::time::Duration::from_secs(1)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ringlink ping: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Netcheck { config } => {
            let cfg = match ClientConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let findings = rt.block_on(ringlink::netcheck::run(&cfg));
            let (verdict, text) = ringlink::netcheck::judge(&findings);
            print!("{text}");
            ExitCode::from(verdict.exit_code())
        }
        Command::Demo => report(ringlink::demo::run()),
        Command::Generate {
            what: Generated::Man { dir },
        } => report(
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| format!("writing man pages to {}: {e}", dir.display())),
        ),
        Command::Generate {
            what: Generated::Completions { shell },
        } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ringlink",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

/// `client --check`: the node's public key as a comment line, if the key
/// file exists (it is created on the first start, not by a check), after
/// reading the key and pins files as the client would.
fn check_key_files(cfg: &ClientConfig) -> Result<String, String> {
    use ringlink::session::{keys, pins};
    pins::load(&cfg.pins_file).map_err(|e| e.to_string())?;
    Ok(match keys::load(&cfg.key_file).map_err(|e| e.to_string())? {
        Some(k) => format!(
            "# public key: {} (fingerprint {}); pin it on other sites with\n# peers = [{{ vip = \"<this node's address>\", key = \"{}\" }}]",
            k.public().to_base64(),
            k.public().fingerprint(),
            k.public().to_base64()
        ),
        None => format!(
            "# public key: none yet; `ringlink client` creates {} on its first start",
            cfg.key_file.display()
        ),
    })
}

fn config_error(e: ringlink::config::ConfigError) -> ExitCode {
    eprintln!("ringlink: config error: {e}");
    ExitCode::from(2)
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlink: {e}");
            ExitCode::FAILURE
        }
    }
}
