//! Thin, policy-free wrappers over the Linux interfaces ringlink needs:
//! TUN queues, UDP sockets, rtnetlink configuration, CPU pinning, sysctls,
//! systemd readiness, signal masks, and telling why io_uring was refused.

pub mod affinity;
pub mod ifaddr;
pub mod netlink;
pub mod service_manager;
pub mod signals;
pub mod steering;
pub mod sysctl;
pub mod tcp;
pub mod tun;
pub mod udp;
pub mod uring_support;
