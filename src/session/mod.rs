//! Sessions between ringlink nodes (issue 14): what protects traffic once
//! two nodes share keys. Sans-IO like `proto`: callers pass counters and
//! bytes, and get verdicts back.

pub mod replay;
