//! ringlink: a Candy-compatible mesh VPN whose dataplane is thread-per-core io_uring.
//!
//! Module roles follow `shared/DESIGN.md`: `proto`, `peer` and `route` are
//! sans-IO; `dataplane`, `control`, `server` and `sys` touch the OS.

pub mod config;
pub mod control;
mod counters;
pub mod dataplane;
pub mod demo;
pub mod effective_config;
pub mod metrics;
pub mod nat;
pub mod netcheck;
pub mod peer;
pub mod ping;
pub mod proto;
pub mod reload;
pub mod rng;
pub mod route;
pub mod server;
pub mod session;
pub mod status_socket;
pub mod sys;
pub mod turn;
