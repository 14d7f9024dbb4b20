//! NAT traversal, sans-IO (DESIGN.md "NAT traversal", issue 13): what kind
//! of NAT a node sits behind, which method a pair of nodes should try, and
//! when to send which probe. Nothing here opens a socket or reads a clock:
//! callers pass STUN results and `now`, and get back requests to send,
//! deadlines and plans.
//!
//! Wired: `control` runs the classifier on a timer and publishes the class
//! through [`StableClass`]; peers exchange classes in the UDP4CONN marker;
//! `peer` chooses the method with [`choose`]; `control::punch` carries out
//! prediction sprays and birthday attempts. Prediction + birthday is not
//! run (see `peer::machine::runnable`).

pub mod class;
pub mod classify;
pub mod delta;
pub mod method;
pub mod schedule;
pub mod stable;

#[cfg(test)]
mod sim;

pub use class::{reachable_advert, Advertised, Delta, Filtering, Mapping, NatClass, NatKind};
pub use classify::{Classifier, ClassifierConfig, Outcome, Reply, Request};
pub use method::{choose, Method, PeerNat, Predicted, Side};
pub use stable::StableClass;
