//! The TUN interface and its dataplane, created once on the first login and
//! kept across reconnects so routes, sockets and addresses on the gateway
//! survive a server outage.

use std::sync::Arc;

use tracing::{info, warn};

use super::{ClientError, InterfaceError};
use crate::config::ClientConfig;
use crate::dataplane::{
    CounterSnapshot, Dataplane, DataplaneConfig, SharedSnapshot, TunWriter, UdpConfig, UdpSender,
    UpcallReceiver, OFFLOAD_BUFFERS,
};
use crate::proto::crypto::PeerKey;
use crate::proto::mtu::mss_for_mtu;
use crate::proto::ws::SysRoute;
use crate::proto::Ipv4Cidr;
use crate::sys::netlink::{Netlink, NetlinkError, RouteV4};
use crate::sys::udp::GSO_MAX_SEGMENTS;
use crate::sys::{affinity, signals, sysctl};

/// Packets between the workers and the control loop; short for the same
/// reason as the relay queue behind it.
const UPCALL_QUEUE: usize = 512;

pub struct Interface {
    name: String,
    address: Ipv4Cidr,
    dataplane: Dataplane,
    upcalls: UpcallReceiver,
    writer: TunWriter,
    workers: usize,
}

fn netlink_err(what: &'static str) -> impl FnOnce(NetlinkError) -> ClientError {
    move |source| InterfaceError::Netlink { what, source }.into()
}

impl Interface {
    pub async fn create(cfg: &ClientConfig, address: Ipv4Cidr) -> Result<Self, ClientError> {
        let workers = if cfg.workers == 0 {
            affinity::online_cpus().max(1)
        } else {
            cfg.workers
        };
        // Everyone seals for us with our key; it is derived once, here.
        let own_key = Arc::new(PeerKey::for_vip(
            cfg.cipher,
            cfg.password.as_bytes(),
            address.addr,
        ));
        let dp_cfg = DataplaneConfig {
            workers,
            channel_capacity: UPCALL_QUEUE,
            mtu: usize::from(cfg.mtu),
            udp: Some(UdpConfig {
                port: cfg.port,
                own_key,
            }),
            mss_clamp: cfg.mss_clamp.then(|| mss_for_mtu(cfg.mtu)),
            offload: cfg.offload,
            pin_cpus: cfg.pin_workers,
            buffers_per_worker: if cfg.offload {
                OFFLOAD_BUFFERS
            } else {
                DataplaneConfig::default().buffers_per_worker
            },
            ..DataplaneConfig::default()
        };
        // The workers start here; they must never take SIGHUP (a reload),
        // SIGINT or SIGTERM meant for this thread.
        let (dataplane, upcalls) =
            signals::with_process_signals_blocked(|| Dataplane::open(&cfg.tun, &dp_cfg)).map_err(
                |source| InterfaceError::Open {
                    tun: cfg.tun.clone(),
                    source,
                },
            )?;
        let nl = Netlink::new().map_err(netlink_err("netlink"))?;
        nl.set_mtu(&cfg.tun, u32::from(cfg.mtu))
            .await
            .map_err(netlink_err("setting MTU"))?;
        if cfg.offload {
            // Bounds how many pieces one super-packet splits into, which is
            // what the dataplane's buffers are sized for. A kernel that
            // refuses is one whose TCP stack already sends fewer.
            if let Err(e) = nl.set_gso_max_segs(&cfg.tun, GSO_MAX_SEGMENTS as u32).await {
                warn!(%e, "could not bound gso_max_segs; oversized super-packets will be dropped");
            }
        }
        nl.add_ipv4_address(&cfg.tun, address.addr, address.prefix)
            .await
            .map_err(netlink_err("adding address"))?;
        nl.set_up(&cfg.tun)
            .await
            .map_err(netlink_err("bringing up"))?;
        info!(tun = %cfg.tun, address = %address, mtu = cfg.mtu, workers, "interface up");
        let writer = dataplane.writer();
        Ok(Self {
            name: cfg.tun.clone(),
            address,
            dataplane,
            upcalls,
            writer,
            workers,
        })
    }

    /// After a reconnect the server may grant a different address (it lost
    /// its state and ours was taken); the interface follows.
    pub async fn ensure_address(&mut self, address: Ipv4Cidr) -> Result<(), ClientError> {
        if address == self.address {
            return Ok(());
        }
        warn!(old = %self.address, new = %address, "server granted a different address");
        let nl = Netlink::new().map_err(netlink_err("netlink"))?;
        nl.del_ipv4_address(&self.name, self.address.addr, self.address.prefix)
            .await
            .map_err(netlink_err("removing old address"))?;
        nl.add_ipv4_address(&self.name, address.addr, address.prefix)
            .await
            .map_err(netlink_err("adding address"))?;
        self.address = address;
        Ok(())
    }

    pub fn upcalls(&self) -> &UpcallReceiver {
        &self.upcalls
    }

    pub fn writer(&self) -> TunWriter {
        self.writer.clone()
    }

    pub fn udp_port(&self) -> Option<u16> {
        self.dataplane.udp_port()
    }

    pub fn udp_sender(&self) -> Option<UdpSender> {
        self.dataplane.udp_sender()
    }

    pub fn snapshot(&self) -> SharedSnapshot {
        self.dataplane.snapshot().clone()
    }

    /// Kernel routes for the server's subnet routes, through the TUN device
    /// (Candy installs `dst via nexthop`; the gateway address resolves on
    /// the TUN subnet). Routes whose gateway is this node are skipped: that
    /// subnet is ours.
    pub async fn install_routes(&self, routes: &[SysRoute]) {
        let Ok(nl) = Netlink::new() else { return };
        for r in routes {
            if r.next == self.address.addr {
                // We are the gateway to this subnet: the kernel must forward
                // between the TUN device and the LAN.
                match sysctl::set_ip_forward(true) {
                    Ok(()) => {
                        info!(dst = %r.dst, "gateway for this subnet; net.ipv4.ip_forward = 1")
                    }
                    Err(e) => {
                        warn!(dst = %r.dst, error = %e, "gateway for this subnet, but cannot enable ip_forward")
                    }
                }
                continue;
            }
            let route = RouteV4::via(r.dst.network(), r.dst.prefix, r.next);
            match nl.add_route_v4(&route).await {
                Ok(()) => info!(dst = %r.dst, via = %r.next, "subnet route installed"),
                Err(e) => {
                    warn!(dst = %r.dst, via = %r.next, error = %e, "subnet route not installed")
                }
            }
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.dataplane.counters()
    }

    pub fn shutdown(self) {
        if let Err(e) = self.dataplane.shutdown() {
            warn!(error = %e, "dataplane stopped with an error");
        }
    }
}
