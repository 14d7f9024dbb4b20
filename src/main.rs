use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ringlink::config::{default_control_socket, ClientConfig, ServerConfig};
use ringlink::effective_config;

/// ringlink: a peer-to-peer mesh VPN and site-to-site tunnel for Linux
/// gateways, wire-compatible with Candy.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. "info", "debug", "ringlink=debug" (RUST_LOG also works).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordination server: authentication, address pool, relay,
    /// peer introductions, subnet routes, STUN responder.
    Server {
        /// Path to server.toml (keys: listen, password, pool, tls_cert,
        /// tls_key, stun, stun_alt_port, stun_alt_address, max_clients,
        /// max_unauthenticated, max_unauthenticated_per_ip, broadcast_rate,
        /// broadcast_burst, general_rate, general_burst, metrics, [[route]]).
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the file and print the effective configuration
        /// (defaults filled in, password hidden); start nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run a node: joins the network, creates the TUN device and carries
    /// traffic (needs root or CAP_NET_ADMIN).
    Client {
        /// Path to client.toml (keys: server, password, tun, address, mtu,
        /// workers, stun, port, discovery, route_cost, tls_ca, tls_insecure,
        /// control_socket, lan_address, public_endpoint, cipher, mss_clamp,
        /// offload, pin_workers, metrics, metrics_per_peer).
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the file and print the effective configuration
        /// (defaults filled in, password hidden); start nothing.
        #[arg(long)]
        check: bool,
    },
    /// Show a running client's peers, paths and counters.
    Status {
        /// The client's control socket (default /run/ringlink/<tun>.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Interface name used to find the default socket.
        #[arg(long, default_value = "rl0")]
        tun: String,
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

fn init_logs(filter: &str) {
    use std::io::IsTerminal;
    // netlink-packet-route warns about every kernel attribute newer than
    // itself, which says nothing about ringlink.
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{filter},netlink_packet_route=error"));
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
    init_logs(&cli.log);
    match cli.command {
        Command::Server { config, check } => {
            let cfg = match ServerConfig::load(&config) {
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
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            report(rt.block_on(async {
                tokio::select! {
                    r = ringlink::server::run(cfg) => r.map_err(|e| e.to_string()),
                    _ = terminated() => Ok(()),
                }
            }))
        }
        Command::Client { config, check } => {
            let cfg = match ClientConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if check {
                print!(
                    "{}",
                    effective_config::client_toml(&config.display().to_string(), &cfg)
                );
                return ExitCode::SUCCESS;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            // The control thread is single-threaded by design: its tasks
            // share state without locks, so they run on one LocalSet.
            let local = tokio::task::LocalSet::new();
            report(
                local
                    .block_on(&rt, ringlink::control::run(cfg, terminated()))
                    .map_err(|e| e.to_string()),
            )
        }
        Command::Status { socket, tun, json } => {
            let path = socket.unwrap_or_else(|| default_control_socket(&tun));
            match ringlink::control::status::query(&path) {
                Ok(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", ringlink::control::status::render(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringlink status: {e}");
                    ExitCode::FAILURE
                }
            }
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
