//! Event counters: everything the server refuses, drops or relays.
//!
//! Plain relaxed atomics: a few tens of thousands of increments per second
//! per session is far below where contention on them would show.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::counters;

counters! {
    /// Live counters shared by every task of one server.
    atomic Counters => ServerCounterSnapshot {
    /// Gauge: authenticated sessions right now.
    clients,
    /// TCP connections accepted (before any handshake).
    connections,
    /// Connections turned away because `max_clients` were already open.
    refused_capacity,
    /// TLS or WebSocket handshakes that failed or timed out.
    handshake_failed,
    /// Successful AUTHs.
    auth_ok,
    /// Older sessions closed because the same vmac re-authenticated.
    evicted_reconnect,
    refused_bad_hash,
    refused_stale_timestamp,
    refused_outside_pool,
    refused_address_in_use,
    refused_pool_exhausted,
    refused_second_auth,
    /// Relay messages sent before AUTH.
    refused_unauthenticated,
    /// Frames shorter than their type's minimum (or empty).
    refused_malformed,
    /// Frames over `MAX_FRAME`, whether tungstenite or we caught them.
    refused_oversize,
    timeout_auth,
    timeout_idle,
    write_stalls,
    /// Binary frames received.
    frames_in,
    text_ignored,
    /// Frames of a type the server does not handle (7–254, or ROUTE from a client).
    unknown_ignored,
    forward_unicast,
    /// FORWARD broadcasts (counted once per frame, not per recipient).
    forward_broadcast,
    forward_no_route,
    /// FORWARDs whose source is neither the sender's VIP nor a subnet it routes.
    forward_spoofed,
    /// UDP4CONN, DISCOVERY and GENERAL frames relayed (unicast or broadcast).
    control_relayed,
    control_spoofed,
    control_no_route,
    /// Frames dropped because the receiving session's send queue was full.
    queue_full,
    expttun_granted,
    /// ROUTE frames pushed after AUTH.
    routes_pushed,
    stun_answered,
    /// Datagrams on the STUN port that are not binding requests we can answer.
    stun_ignored,
    }
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
