//! NAT traversal, sans-IO (DESIGN.md "NAT traversal", issue 13): what kind
//! of NAT a node sits behind, which method a pair of nodes should try, and
//! when to send which probe. Nothing here opens a socket or reads a clock:
//! callers pass STUN results and `now`, and get back requests to send,
//! deadlines and plans.
//!
//! Wired: `control` runs the classifier on a timer and publishes the class
//! through [`StableClass`]; peers exchange classes in the UDP4CONN marker;
//! `peer` plans each attempt with [`plan`] (the method from [`choose`], who
//! leads, what each round does); `control::punch` carries out the
//! observations, sprays and birthday sockets.

pub mod class;
pub mod classify;
pub mod delta;
pub mod method;
pub mod schedule;
pub mod stable;

#[cfg(test)]
pub(crate) mod sim;

pub use class::{reachable_advert, Advertised, Delta, Filtering, Mapping, NatClass, NatKind};
pub use classify::{Classifier, ClassifierConfig, Outcome, Reply, Request};
pub use method::{choose, is_symmetric, plan, Method, PeerNat, Plan, Predicted, Role, Side, Step};
pub use stable::StableClass;
