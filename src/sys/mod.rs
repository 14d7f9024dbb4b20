//! Thin, policy-free wrappers over the Linux interfaces ringlink needs:
//! TUN queues, rtnetlink configuration, CPU pinning and sysctls.

pub mod affinity;
pub mod netlink;
pub mod sysctl;
pub mod tun;
