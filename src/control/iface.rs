//! The TUN interface and its dataplane, created once on the first login and
//! kept across reconnects so routes, sockets and addresses on the gateway
//! survive a server outage.

use tracing::{info, warn};

use super::ClientError;
use crate::config::ClientConfig;
use crate::dataplane::{CounterSnapshot, Dataplane, DataplaneConfig, TunWriter, UpcallReceiver};
use crate::proto::Ipv4Cidr;
use crate::sys::{affinity, netlink::Netlink};

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

fn iface_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Interface(format!("{what}: {e}"))
}

impl Interface {
    pub async fn create(cfg: &ClientConfig, address: Ipv4Cidr) -> Result<Self, ClientError> {
        let workers = if cfg.workers == 0 { affinity::online_cpus().max(1) } else { cfg.workers };
        let dp_cfg = DataplaneConfig {
            workers,
            channel_capacity: UPCALL_QUEUE,
            mtu: usize::from(cfg.mtu),
            ..DataplaneConfig::default()
        };
        let (dataplane, upcalls) =
            Dataplane::open(&cfg.tun, &dp_cfg).map_err(|e| iface_err(&format!("opening {}", cfg.tun), e))?;
        let nl = Netlink::new().map_err(|e| iface_err("netlink", e))?;
        nl.set_mtu(&cfg.tun, u32::from(cfg.mtu))
            .await
            .map_err(|e| iface_err("setting MTU", e))?;
        nl.add_ipv4_address(&cfg.tun, address.addr, address.prefix)
            .await
            .map_err(|e| iface_err("adding address", e))?;
        nl.set_up(&cfg.tun).await.map_err(|e| iface_err("bringing up", e))?;
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
        let nl = Netlink::new().map_err(|e| iface_err("netlink", e))?;
        nl.del_ipv4_address(&self.name, self.address.addr, self.address.prefix)
            .await
            .map_err(|e| iface_err("removing old address", e))?;
        nl.add_ipv4_address(&self.name, address.addr, address.prefix)
            .await
            .map_err(|e| iface_err("adding address", e))?;
        self.address = address;
        Ok(())
    }

    pub fn upcalls(&self) -> &UpcallReceiver {
        &self.upcalls
    }

    pub fn writer(&self) -> TunWriter {
        self.writer.clone()
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
