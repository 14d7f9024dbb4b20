//! Interface configuration over rtnetlink (no `ip` subprocess).
//!
//! All calls act on the network namespace the netlink socket was opened in,
//! i.e. the namespace of the thread that called [`Netlink::new`].

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkSetRequest};

/// What went wrong, with the interface and the operation it was for.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening the rtnetlink socket failed: {0}")]
    Connect(#[source] io::Error),
    #[error("netlink helpers need a tokio runtime on the calling thread")]
    NoRuntime,
    #[error("interface {ifname:?} does not exist")]
    LinkNotFound { ifname: String },
    #[error("invalid prefix length /{prefix} for an IPv4 address (max 32)")]
    InvalidPrefix { prefix: u8 },
    #[error("route {dst}/{prefix} names neither a gateway nor a device")]
    RouteWithoutTarget { dst: Ipv4Addr, prefix: u8 },
    #[error("{op} on {ifname:?} failed: {source}")]
    Op {
        op: &'static str,
        ifname: String,
        source: io::Error,
    },
    #[error("{op} for {target} failed: {source}")]
    Route {
        op: &'static str,
        target: String,
        source: io::Error,
    },
}

/// An IPv4 route in the main table. At least one of `gateway` and `dev` must
/// be set: `via` routes may leave the device to the kernel, device routes
/// (`dev` only) are installed with link scope like `ip route add ... dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteV4 {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

impl RouteV4 {
    /// `dst/prefix via gateway`.
    pub fn via(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Self {
        RouteV4 {
            dst,
            prefix,
            gateway: Some(gateway),
            dev: None,
        }
    }

    /// `dst/prefix dev name`.
    pub fn dev(dst: Ipv4Addr, prefix: u8, dev: &str) -> Self {
        RouteV4 {
            dst,
            prefix,
            gateway: None,
            dev: Some(dev.to_owned()),
        }
    }

    /// The network address: host bits cleared, because the kernel rejects a
    /// destination with host bits set and config files often carry them.
    pub fn network(&self) -> Result<Ipv4Addr, NetlinkError> {
        network_of(self.dst, self.prefix)
    }

    fn describe(&self) -> String {
        let mut s = format!("{}/{}", self.dst, self.prefix);
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = &self.dev {
            s.push_str(&format!(" dev {dev}"));
        }
        s
    }
}

/// Network address of `addr/prefix`.
pub fn network_of(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Addr, NetlinkError> {
    if prefix > 32 {
        return Err(NetlinkError::InvalidPrefix { prefix });
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ok(Ipv4Addr::from(u32::from(addr) & mask))
}

/// A connection to rtnetlink whose I/O task runs on the current tokio
/// runtime; dropping it stops that task.
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

impl Netlink {
    /// Open a netlink socket in the calling thread's network namespace and
    /// spawn its I/O task on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        let task = rt.spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// Interface index of `ifname`.
    pub async fn link_index(&self, ifname: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(ifname.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(NetlinkError::LinkNotFound {
                ifname: ifname.to_owned(),
            }),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Err(NetlinkError::LinkNotFound {
                ifname: ifname.to_owned(),
            }),
            Err(e) => Err(NetlinkError::Op {
                op: "get link",
                ifname: ifname.to_owned(),
                source: to_io(e),
            }),
        }
    }

    /// Add `addr/prefix` to `ifname`. Already present is success, so the
    /// control thread can re-apply its config after a reconnect.
    pub async fn add_ipv4_address(
        &self,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        if prefix > 32 {
            return Err(NetlinkError::InvalidPrefix { prefix });
        }
        let index = self.link_index(ifname).await?;
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError::Op {
                op: "add address",
                ifname: ifname.to_owned(),
                source: to_io(e),
            }),
        }
    }

    /// Remove `addr/prefix` from `ifname`. Already absent is success.
    pub async fn del_ipv4_address(
        &self,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let index = self.link_index(ifname).await?;
        let op_err = |op, e| NetlinkError::Op {
            op,
            ifname: ifname.to_owned(),
            source: to_io(e),
        };
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr))
            .set_prefix_length_filter(prefix)
            .execute();
        while let Some(msg) = found
            .try_next()
            .await
            .map_err(|e| op_err("list addresses", e))?
        {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(op_err("delete address", e)),
            }
        }
        Ok(())
    }

    /// Set the MTU of `ifname`.
    pub async fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(ifname, "set mtu", |r| r.mtu(mtu)).await
    }

    /// Bring `ifname` up (no-op if it already is).
    pub async fn set_up(&self, ifname: &str) -> Result<(), NetlinkError> {
        self.set_link(ifname, "set link up", |r| r.up()).await
    }

    /// Most segments the kernel puts in one GSO packet for `ifname`.
    pub async fn set_gso_max_segs(&self, ifname: &str, segs: u32) -> Result<(), NetlinkError> {
        self.set_link(ifname, "set gso_max_segs", |mut r| {
            r.message_mut()
                .attributes
                .push(LinkAttribute::GsoMaxSegs(segs));
            r
        })
        .await
    }

    async fn set_link(
        &self,
        ifname: &str,
        op: &'static str,
        change: impl FnOnce(LinkSetRequest) -> LinkSetRequest,
    ) -> Result<(), NetlinkError> {
        let index = self.link_index(ifname).await?;
        change(self.handle.link().set(index))
            .execute()
            .await
            .map_err(|e| NetlinkError::Op {
                op,
                ifname: ifname.to_owned(),
                source: to_io(e),
            })
    }

    async fn route_message(&self, route: &RouteV4) -> Result<RouteMessage, NetlinkError> {
        if route.gateway.is_none() && route.dev.is_none() {
            return Err(NetlinkError::RouteWithoutTarget {
                dst: route.dst,
                prefix: route.prefix,
            });
        }
        let mut req = self
            .handle
            .route()
            .add()
            .v4()
            .destination_prefix(route.network()?, route.prefix);
        if let Some(gw) = route.gateway {
            req = req.gateway(gw);
        } else {
            req = req.scope(RouteScope::Link);
        }
        if let Some(dev) = &route.dev {
            req = req.output_interface(self.link_index(dev).await?);
        }
        Ok(req.message_mut().clone())
    }

    /// Install `route`, replacing any existing route to the same prefix, so
    /// a changed next hop takes effect without a delete first.
    pub async fn add_route_v4(&self, route: &RouteV4) -> Result<(), NetlinkError> {
        let msg = self.route_message(route).await?;
        let mut req = self.handle.route().add().v4().replace();
        *req.message_mut() = msg;
        req.execute().await.map_err(|e| NetlinkError::Route {
            op: "replace route",
            target: route.describe(),
            source: to_io(e),
        })
    }

    /// Remove `route`. A route that is not there is success.
    pub async fn del_route_v4(&self, route: &RouteV4) -> Result<(), NetlinkError> {
        let mut msg = self.route_message(route).await?;
        // Match like `ip route del`: any scope, any protocol.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(NetlinkError::Route {
                op: "delete route",
                target: route.describe(),
                source: to_io(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_masks_host_bits() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(network_of(a, 24).unwrap(), Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(network_of(a, 32).unwrap(), a);
        assert_eq!(network_of(a, 0).unwrap(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network_of(a, 9).unwrap(), Ipv4Addr::new(10, 0, 0, 0));
        assert!(matches!(
            network_of(a, 33),
            Err(NetlinkError::InvalidPrefix { prefix: 33 })
        ));
    }

    #[test]
    fn route_description_names_everything() {
        let r = RouteV4 {
            dst: Ipv4Addr::new(10, 2, 0, 0),
            prefix: 16,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dev: Some("rl0".into()),
        };
        assert_eq!(r.describe(), "10.2.0.0/16 via 10.0.0.1 dev rl0");
    }
}
