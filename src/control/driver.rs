//! Carries out what the sans-IO [`Node`] asks for: the only place where its
//! datagrams meet the UDP socket, its frames meet the server queue, its
//! tables meet the dataplane and its routes meet the kernel.

use tokio::sync::mpsc;
use tracing::debug;

use super::iface::Interface;
use super::node::{Node, Output};
use crate::dataplane::{SharedSnapshot, UdpSender};

/// What went wrong while carrying outputs out, for status.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    /// Datagrams the kernel refused.
    pub udp_send_errors: u64,
    /// Frames for the server dropped because its queue was full.
    pub server_queue_full: u64,
}

/// A node and the handles its outputs go to.
pub struct NodeDriver {
    pub node: Node,
    udp: UdpSender,
    snapshot: SharedSnapshot,
    pub stats: DriverStats,
}

impl NodeDriver {
    pub fn new(node: Node, udp: UdpSender, snapshot: SharedSnapshot) -> Self {
        Self {
            node,
            udp,
            snapshot,
            stats: DriverStats::default(),
        }
    }

    /// Drains the node's outputs; call after every call into the node.
    pub async fn carry_out(&mut self, iface: &Interface, to_server: &mpsc::Sender<Vec<u8>>) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Datagram { to, datagram } => {
                    if let Err(e) = self.udp.send_to(&datagram, to) {
                        self.stats.udp_send_errors += 1;
                        debug!(error = %e, %to, "UDP send failed");
                    }
                }
                Output::ServerFrame(frame) => {
                    if to_server.try_send(frame).is_err() {
                        self.stats.server_queue_full += 1;
                    }
                }
                Output::Publish(snapshot) => self.snapshot.publish(snapshot),
                Output::InstallRoutes(routes) => iface.install_routes(&routes).await,
            }
        }
    }
}
