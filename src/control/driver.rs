//! Carries out what the sans-IO [`Node`] asks for: the only place where its
//! datagrams meet the UDP socket, its frames meet the server queue, its
//! tables meet the dataplane and its routes meet the kernel.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::iface::Interface;
use super::node::{Node, Output};
use super::status::ControlCounters;
use crate::dataplane::{SharedSnapshot, UdpSender};
use crate::session::pins;

/// A node and the handles its outputs go to.
pub struct NodeDriver {
    pub node: Node,
    udp: UdpSender,
    snapshot: SharedSnapshot,
    pins_file: PathBuf,
}

impl NodeDriver {
    pub fn new(node: Node, udp: UdpSender, snapshot: SharedSnapshot, pins_file: PathBuf) -> Self {
        Self {
            node,
            udp,
            snapshot,
            pins_file,
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
