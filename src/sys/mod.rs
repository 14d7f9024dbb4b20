//! Thin, policy-free wrappers over the Linux interfaces ringlink needs:
//! TUN queues, UDP sockets, rtnetlink configuration, CPU pinning and sysctls.

pub mod affinity;
pub mod ifaddr;
pub mod netlink;
pub mod steering;
pub mod sysctl;
pub mod tcp;
pub mod tun;
pub mod udp;
