//! `ringlink netcheck`: what this node sees of the network before (or
//! instead of) running it. The checks do I/O; the verdict is a pure
//! function of what they found, so every outcome is tested.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::config::ClientConfig;
use crate::control::nat_run::classify_over_udp;
use crate::nat::Outcome;
use crate::proto::mtu;
use crate::sys::ifaddr::first_lan_ipv4;
use crate::sys::uring_support;

/// How long one TCP connect to the server may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
const CONNECT_TRIES: usize = 3;
/// Sockets for the classification, as the client uses.
const NAT_SOCKETS: usize = 4;

/// What the checks found.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    pub server: String,
    /// TCP connect times to the server, or why it could not be reached.
    pub server_rtt: Result<Vec<Duration>, String>,
    /// `None`: no `stun` key (direct paths are off by configuration).
    pub stun: Option<StunFinding>,
    pub io_uring: Result<(), String>,
    pub mtu: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StunFinding {
    pub server: String,
    /// The run's outcome, or why it could not run (resolution, sockets).
    pub outcome: Result<Outcome, String>,
}

/// Exit codes: the node works (0), cannot work (1), works only through the
/// server's relay because UDP gets no answer (3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Works,
    CannotWork,
    RelayOnly,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Works => 0,
            Verdict::CannotWork => 1,
            Verdict::RelayOnly => 3,
        }
    }
}

/// The verdict and the report, one line per finding.
pub fn judge(f: &Findings) -> (Verdict, String) {
    let mut out = String::new();
    let mut verdict = Verdict::Works;
    match &f.server_rtt {
        Ok(rtts) => {
            let ms: Vec<String> = rtts
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                .collect();
            let _ = writeln!(
                out,
                "server     {} reachable over TCP, connect {} ms",
                f.server,
                ms.join(" / ")
            );
        }
        Err(e) => {
            let _ = writeln!(out, "server     {} NOT reachable: {e}", f.server);
            verdict = Verdict::CannotWork;
        }
    }
    match &f.stun {
        None => {
            let _ = writeln!(
                out,
                "stun       not configured: direct paths are off, all traffic uses the relay"
            );
        }
        Some(StunFinding {
            server,
            outcome: Ok(Outcome::Classified(c)),
        }) => {
            let _ = writeln!(
                out,
                "stun       {server} answers: public mapping {}",
                c.mapped
            );
            let _ = writeln!(
                out,
                "nat        {} ({:?}, {:?}, delta {:?})",
                c.kind, c.kind.mapping, c.kind.filtering, c.kind.delta
            );
        }
        Some(StunFinding {
            server,
            outcome: Ok(Outcome::NoAnswer),
        }) => {
            let _ = writeln!(
                out,
                "stun       {server} gives NO answer over UDP: UDP looks blocked (or the STUN server is down); \
                 no direct paths, this node works only through the relay"
            );
            if verdict == Verdict::Works {
                verdict = Verdict::RelayOnly;
            }
        }
        Some(StunFinding {
            server,
            outcome: Err(e),
        }) => {
            let _ = writeln!(
                out,
                "stun       {server} could not be asked: {e}; no direct paths"
            );
            if verdict == Verdict::Works {
                verdict = Verdict::RelayOnly;
            }
        }
    }
    match &f.io_uring {
        Ok(()) => {
            let _ = writeln!(
                out,
                "io_uring   available (rings, provided buffers, multishot read)"
            );
        }
        Err(e) => {
            let _ = writeln!(out, "io_uring   REFUSED: {e}");
            verdict = Verdict::CannotWork;
        }
    }
    let _ = writeln!(
        out,
        "mtu        {} (a full subnet packet is {} bytes on the wire; {} is the most that fits 1500-byte Ethernet)",
        f.mtu,
        usize::from(f.mtu) + mtu::FORWARD_HEADROOM + mtu::UDP_IPV4_HEADERS,
        mtu::MAX_MTU
    );
    let _ = writeln!(
        out,
        "verdict    {}",
        match verdict {
            Verdict::Works => "this node can work, with direct paths where the NATs allow",
            Verdict::CannotWork => "this node CANNOT work (see above)",
            Verdict::RelayOnly => "this node can work, but only through the server's relay",
        }
    );
    (verdict, out)
}

/// Runs every check for the client configured by `cfg`.
pub async fn run(cfg: &ClientConfig) -> Findings {
    let server = format!("{}:{}", cfg.server.host, cfg.server.port);
    let server_rtt = connect_times(&cfg.server.host, cfg.server.port).await;
    let stun = match &cfg.stun {
        None => None,
        Some(s) => {
            let name = format!("{}:{}", s.host, s.port);
            let outcome = match resolve_v4(&s.host, s.port).await {
                Ok(addr) => {
                    let local = cfg
                        .lan_address
                        .or_else(|| first_lan_ipv4(&cfg.tun))
                        .unwrap_or(Ipv4Addr::UNSPECIFIED);
                    classify_over_udp(addr, local, NAT_SOCKETS, rand::random())
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            Some(StunFinding {
                server: name,
                outcome,
            })
        }
    };
    Findings {
        server,
        server_rtt,
        stun,
        io_uring: uring_support::check(),
        mtu: cfg.mtu,
    }
}

async fn resolve_v4(host: &str, port: u16) -> Result<SocketAddrV4, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| format!("{host} has no IPv4 address"))
}

async fn connect_times(host: &str, port: u16) -> Result<Vec<Duration>, String> {
    let addr = resolve_v4(host, port).await?;
    let mut rtts = Vec::with_capacity(CONNECT_TRIES);
    for _ in 0..CONNECT_TRIES {
        let start = Instant::now();
        match tokio::time::timeout(CONNECT_WITHIN, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => rtts.push(start.elapsed()),
            Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "connect to {addr}: no answer within {CONNECT_WITHIN:?}"
                ))
            }
        }
    }
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Delta, Filtering, Mapping, NatClass, NatKind};

    fn findings() -> Findings {
        let mapped: SocketAddrV4 = "198.51.100.7:40000".parse().unwrap();
        Findings {
            server: "relay.example:7443".into(),
            server_rtt: Ok(vec![Duration::from_millis(3); 3]),
            stun: Some(StunFinding {
                server: "relay.example:3478".into(),
                outcome: Ok(Outcome::Classified(NatClass {
                    mapped,
                    last_mapped: mapped,
                    kind: NatKind {
                        behind_nat: true,
                        mapping: Mapping::EndpointIndependent,
                        filtering: Filtering::AddressAndPortDependent,
                        delta: Delta::Equal,
                    },
                })),
            }),
            io_uring: Ok(()),
            mtu: 1400,
        }
    }

    #[test]
    fn a_healthy_node_works_and_says_its_nat() {
        let (v, text) = judge(&findings());
        assert_eq!(v, Verdict::Works);
        assert!(text.contains("cone/port-restricted"), "{text}");
        assert!(text.contains("198.51.100.7:40000"), "{text}");
    }

    #[test]
    fn udp_without_answer_is_relay_only() {
        let mut f = findings();
        f.stun.as_mut().unwrap().outcome = Ok(Outcome::NoAnswer);
        let (v, text) = judge(&f);
        assert_eq!((v, v.exit_code()), (Verdict::RelayOnly, 3));
        assert!(text.contains("UDP looks blocked"), "{text}");
    }

    #[test]
    fn no_server_or_no_io_uring_cannot_work() {
        let mut f = findings();
        f.server_rtt = Err("connect to 10.0.0.1:7443: connection refused".into());
        f.stun.as_mut().unwrap().outcome = Ok(Outcome::NoAnswer);
        assert_eq!(judge(&f).0, Verdict::CannotWork);
        let mut f = findings();
        f.io_uring = Err("io_uring is disabled by kernel.io_uring_disabled".into());
        let (v, text) = judge(&f);
        assert_eq!((v, v.exit_code()), (Verdict::CannotWork, 1));
        assert!(text.contains("REFUSED"), "{text}");
    }

    #[test]
    fn no_stun_key_still_works() {
        let mut f = findings();
        f.stun = None;
        let (v, text) = judge(&f);
        assert_eq!(v, Verdict::Works);
        assert!(text.contains("not configured"), "{text}");
    }
}
