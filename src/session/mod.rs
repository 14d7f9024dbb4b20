//! Sessions between ringlink nodes (issue 14): node keys and their pins,
//! the Noise handshake that turns two pinned keys into transport keys, and
//! what protects traffic once two nodes share keys (counters, the replay
//! window). Sans-IO like `proto`: callers pass counters, bytes and `now`,
//! and get verdicts back; only `keys` and `pins` touch files, and only when
//! the caller asks.

pub mod handshake;
pub mod keys;
pub mod pins;
pub mod ratelimit;
pub mod relay;
pub mod replay;
pub mod timers;
pub mod transport;
