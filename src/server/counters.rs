//! Event counters: everything the server refuses, drops or relays.
//!
//! Plain relaxed atomics: a few tens of thousands of increments per second
//! per session is far below where contention on them would show.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::counters;

counters! {
    /// Live counters shared by every task of one server.
    atomic ServerCounters => ServerCounterSnapshot {
    /// Gauge: authenticated sessions right now.
    clients,
    /// TCP connections accepted (before any handshake).
    connections,
    /// Logins turned away because `max_clients` members were already connected.
    refused_capacity,
    /// Connections refused at accept because their source address already
    /// held `max_unauthenticated_per_ip` connections that had not logged in.
    refused_per_source,
    /// Connections that had not logged in, dropped (oldest first) to admit
    /// a newer one once `max_unauthenticated` were open.
    evicted_unauthenticated,
    /// TLS or WebSocket handshakes that failed or timed out.
    handshake_failed,
    /// Successful AUTHs.
    auth_ok,
    /// Older sessions closed because the same vmac re-authenticated.
    evicted_reconnect,
    /// Logins (AUTH or an address request) refused for a wrong password.
    refused_bad_hash,
    /// Logins refused because their timestamp was too far from the
    /// server's clock.
    refused_stale_timestamp,
    /// Logins refused for asking an address outside the pool.
    refused_outside_pool,
    /// Logins refused for asking an address another live session holds.
    refused_address_in_use,
    /// Logins refused because the pool had no free address left.
    refused_pool_exhausted,
    /// A second AUTH on a session that has already authenticated.
    refused_second_auth,
    /// AUTHs refused because the same frame (same hash) already logged in:
    /// a replay.
    refused_replayed_auth,
    /// AUTHs with a live session's vmac and address whose timestamp is not
    /// newer than that session's login: a replay, which must not evict it.
    refused_not_newer,
    /// Relay messages sent before AUTH.
    refused_unauthenticated,
    /// Frames shorter than their type's minimum (or empty).
    refused_malformed,
    /// Frames over `MAX_FRAME`, whether tungstenite or we caught them.
    refused_oversize,
    /// Connections closed for not authenticating in time.
    timeout_auth,
    /// Sessions closed after a silence longer than the idle timeout.
    timeout_idle,
    /// Sessions closed because their socket accepted nothing for too long.
    write_stalls,
    /// Binary frames received.
    frames_in,
    /// Text frames received and ignored.
    text_ignored,
    /// Frames of a type the server does not handle (7–254, or ROUTE from a client).
    unknown_ignored,
    /// FORWARDs relayed to one client.
    forward_unicast,
    /// FORWARD broadcasts (counted once per frame, not per recipient).
    forward_broadcast,
    /// FORWARDs dropped because no client holds their destination.
    forward_no_route,
    /// FORWARDs whose source is neither the sender's VIP nor a subnet it routes.
    forward_spoofed,
    /// UDP4CONN, DISCOVERY and GENERAL frames relayed (unicast or broadcast).
    control_relayed,
    /// Control frames dropped because their source is not the sender's VIP.
    control_spoofed,
    /// Control frames dropped because no client holds their destination.
    control_no_route,
    /// Frames dropped because the receiving session's send queue was full.
    queue_full,
    /// Broadcasts (FORWARD to a broadcast or multicast address, DISCOVERY
    /// or GENERAL to 255.255.255.255) dropped over the sender's rate limit.
    rate_limited_broadcast,
    /// Unicast GENERAL frames dropped over the sender's rate limit.
    rate_limited_general,
    /// EXPTTUN requests answered.
    expttun_granted,
    /// ROUTE frames pushed after AUTH.
    routes_pushed,
    /// TURN credentials handed to ringlink clients (after AUTH and on
    /// each renewal).
    turn_offers,
    /// STUN binding requests answered.
    stun_answered,
    /// Datagrams on the STUN port that are not binding requests we can answer.
    stun_ignored,
    /// `[cluster]`: frames handed to NATS for a member on another instance
    /// (a broadcast counts once).
    cluster_frames_out,
    /// `[cluster]`: frames from another instance delivered to a member here
    /// (a broadcast counts once per member).
    cluster_frames_in,
    /// `[cluster]`: frames for another instance dropped because the queue
    /// towards NATS was full (NATS slow or away) or the publish failed.
    cluster_out_dropped,
    /// `[cluster]`: frames from another instance dropped because the
    /// member's send queue here was full.
    cluster_in_queue_full,
    /// `[cluster]`: frames from another instance for an address no member
    /// here holds any more.
    cluster_in_no_member,
    /// `[cluster]`: frames NATS had for this instance that the client
    /// library dropped because they were not read fast enough.
    cluster_in_slow,
    /// `[cluster]`: leases taken from another instance: its lease had
    /// expired, or the same client reconnected here.
    cluster_takeovers,
    /// `[cluster]`: leases another instance took from this one (the
    /// member's session here is closed).
    cluster_lease_lost,
    /// `[cluster]`: lease operations that failed because NATS did not
    /// answer; a login that needed one was refused.
    cluster_unavailable,
    /// `[cluster]`: lease renewals that failed (NATS away); the lease stays
    /// ours until it expires, and the next renewal tries again.
    cluster_renew_failed,
    }
}

impl ServerCounters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
