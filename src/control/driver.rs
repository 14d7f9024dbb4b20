//! Carries out what the sans-IO [`Node`] asks for: the only place where its
//! datagrams meet the UDP socket, its frames meet the server queue, its
//! tables meet the dataplane and its routes meet the kernel.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::iface::Interface;
use super::node::{Node, Output};
use super::status::ControlCounters;
use crate::dataplane::{SharedSnapshot, UdpSender};
use crate::session::pins;

/// How long a TURN server's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to [`Output::ResolveTurn`], for the control loop to hand to
/// [`Node::on_turn_resolved`].
pub struct Resolved {
    pub host: String,
    pub port: u16,
    pub addr: Option<SocketAddrV4>,
}

/// A node and the handles its outputs go to.
pub struct NodeDriver {
    pub node: Node,
    udp: UdpSender,
    snapshot: SharedSnapshot,
    pins_file: PathBuf,
    resolved: mpsc::Sender<Resolved>,
}

impl NodeDriver {
    pub fn new(
        node: Node,
        udp: UdpSender,
        snapshot: SharedSnapshot,
        pins_file: PathBuf,
        resolved: mpsc::Sender<Resolved>,
    ) -> Self {
        Self {
            node,
            udp,
            snapshot,
            pins_file,
            resolved,
        }
    }

    /// Drains the node's outputs; call after every call into the node.
    pub async fn carry_out(
        &mut self,
        iface: &Interface,
        to_server: &mpsc::Sender<Vec<u8>>,
        counters: &mut ControlCounters,
    ) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Datagram { to, via, datagram } => {
                    if let Err(e) = self.udp.send_to(&datagram, to, via.as_ref()) {
                        counters.udp_send_errors += 1;
                        debug!(error = %e, %to, "UDP send failed");
                    }
                }
                Output::OpenSockets { count } => {
                    let mut fds = Vec::with_capacity(count);
                    for _ in 0..count {
                        match self.udp.open_socket() {
                            Ok(fd) => fds.push(fd),
                            Err(e) => {
                                warn!(error = %e, opened = fds.len(), wanted = count, "opening hard-NAT attempt sockets");
                                break;
                            }
                        }
                    }
                    self.node.on_sockets_opened(fds, std::time::Instant::now());
                }
                Output::OpenTurnSocket => match self.udp.open_socket() {
                    Ok(fd) => self.node.on_turn_socket(fd, std::time::Instant::now()),
                    Err(e) => warn!(error = %e, "opening the TURN allocation's socket"),
                },
                // In a task of its own: a slow resolver must not hold up
                // the heartbeats of every direct path.
                Output::ResolveTurn { host, port } => {
                    let tx = self.resolved.clone();
                    tokio::spawn(async move {
                        let addr = resolve_v4(&host, port).await;
                        let _ = tx.send(Resolved { host, port, addr }).await;
                    });
                }
                Output::ServerFrame(frame) => {
                    if to_server.try_send(frame).is_err() {
                        counters.server_queue_full += 1;
                    }
                }
                Output::Publish(snapshot) => self.snapshot.publish(*snapshot),
                Output::InstallRoutes(routes) => iface.install_routes(&routes).await,
                // The pin holds in memory either way; a failed write only
                // means it is learnt again, first use, after a restart.
                Output::SavePins(text) => {
                    if let Err(e) = pins::save(&self.pins_file, &text) {
                        warn!(error = %e, "cannot save the pinned keys");
                    }
                }
            }
        }
    }
}

/// The first IPv4 address `host` resolves to, or None (after a warning).
async fn resolve_v4(host: &str, port: u16) -> Option<SocketAddrV4> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.into_iter().find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        }),
        Ok(Err(e)) => {
            warn!(host, error = %e, "resolving the TURN server");
            None
        }
        Err(_) => {
            warn!(
                host,
                secs = RESOLVE_TIMEOUT.as_secs(),
                "resolving the TURN server timed out"
            );
            None
        }
    }
}
