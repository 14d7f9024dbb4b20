//! Per-worker statistics.
//!
//! Each worker (and the TUN writer) owns one `Counters`; the control thread
//! only reads. The whole struct is cache-padded rather than each field: all
//! fields of one struct are written by the same thread, so padding between
//! them would buy nothing, while padding around the struct keeps two workers
//! from bouncing a shared line.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::counters::counters;

counters! {
    /// One worker's (or the TUN writer's) counters.
    atomic Counters => CounterSnapshot {
    /// Packets read from the TUN queue (before classification).
    tun_rx_packets,
    /// Bytes read from the TUN queue.
    tun_rx_bytes,
    /// Packets handed to the control thread (relay, peer and STUN upcalls).
    upcalls,
    /// Dropped because the control channel was full (or gone).
    dropped_full,
    /// Dropped because they were not IPv4 or shorter than a header (read
    /// from TUN, or found inside a FORWARD).
    dropped_malformed,
    /// Packets written into the TUN device (a coalesced write counts each
    /// packet it carried).
    tun_written,
    /// Bytes written into the TUN device (a coalesced write counts its
    /// headers once).
    tun_written_bytes,
    /// Writes into the TUN device that failed or were refused.
    tun_write_errors,
    /// Times the multishot read ended (e.g. out of buffers) and was re-armed.
    read_rearms,
    /// Datagrams received on the UDP socket.
    udp_rx_packets,
    /// Bytes of the datagrams received on the UDP socket.
    udp_rx_bytes,
    /// Datagrams the kernel accepted for sending (direct and forwarded).
    udp_tx_packets,
    /// Bytes of the datagrams the kernel accepted for sending.
    udp_tx_bytes,
    /// Packets from TUN sent over UDP to the node they are for (the
    /// destination itself, or the gateway of its subnet).
    direct_tx_packets,
    /// Bytes of those packets (with any subnet pseudo-header, without the
    /// UDP envelope).
    direct_tx_bytes,
    /// Packets from TUN sent over UDP to a peer that passes them on to the
    /// node they are for (a latency route through another node).
    via_tx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    via_tx_bytes,
    /// Packets from UDP delivered to TUN that came straight from the node
    /// that sent them (its direct path's endpoint).
    direct_rx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    direct_rx_bytes,
    /// Packets from UDP delivered to TUN that came from any other endpoint:
    /// passed on by another node, or from a node whose direct path this
    /// node does not know (yet).
    via_rx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    via_rx_bytes,
    /// Packets from TUN sent to a peer through a TURN channel.
    turn_tx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    turn_tx_bytes,
    /// Packets from a TURN channel delivered to TUN.
    turn_rx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    turn_rx_bytes,
    /// Packets from TUN sent to a peer over a direct TCP stream.
    tcp_tx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    tcp_tx_bytes,
    /// Packets from a direct TCP stream delivered to TUN.
    tcp_rx_packets,
    /// Bytes of those packets (as `direct_tx_bytes`).
    tcp_rx_bytes,
    /// Frames not queued on a TCP stream: its send queue was full (a peer
    /// that stopped reading) or the stream had failed.
    tcp_tx_dropped,
    /// Datagrams from a TURN server that were neither STUN nor well-formed
    /// ChannelData on a bound channel (dropped).
    turn_malformed,
    /// Datagrams that failed authentication or were shorter than the
    /// envelope.
    decrypt_failed,
    /// Datagrams opened with a session key (from ringlink peers).
    session_rx,
    /// Packets sealed with a session key (direct, passed on, or relayed).
    session_tx,
    /// Session datagrams refused by the replay window: already received,
    /// or older than the window.
    replayed,
    /// Traffic claiming to come from a peer that seals with us, but not
    /// sealed with a session: a replay from before the session, or a
    /// forgery by someone who knows the network password.
    unsealed_refused,
    /// FORWARDs for another node with no direct next hop (dropped).
    no_route,
    /// FORWARDs for another node passed on to a direct next hop.
    forwarded,
    /// Packets whose datagram would exceed what a stock Candy peer accepts,
    /// and received datagrams truncated by the buffer.
    oversize,
    /// STUN-looking datagrams handed to the control thread.
    stun_upcalls,
    /// Decrypted non-data peer messages handed to the control thread.
    peer_upcalls,
    /// UDP sends that failed (or could not be queued).
    send_errors,
    /// Times the multishot recvmsg ended and was re-armed.
    recv_rearms,
    /// TSO/USO super-packets read from TUN.
    tun_gso_packets,
    /// The packets those super-packets were split into.
    tun_gso_segments,
    /// Receives that were a GRO run of several datagrams.
    udp_gro_receives,
    /// TUN writes that were coalesced TCP super-packets.
    tun_coalesced_writes,
    /// The packets those coalesced writes carried.
    tun_coalesced_packets,
    }
}

/// Shared handle to one counters block.
pub type SharedCounters = Arc<CachePadded<Counters>>;

pub(crate) fn new_shared() -> SharedCounters {
    Arc::new(CachePadded::new(Counters::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_accumulate_and_sum() {
        let a = new_shared();
        let b = new_shared();
        let batch = CounterSnapshot {
            tun_rx_packets: 2,
            tun_rx_bytes: 100,
            dropped_malformed: 1,
            ..Default::default()
        };
        a.add(&batch);
        a.add(&batch);
        b.add(&CounterSnapshot {
            tun_written: 3,
            ..Default::default()
        });
        let total: CounterSnapshot = [a.snapshot(), b.snapshot()].into_iter().sum();
        assert_eq!(total.tun_rx_packets, 4);
        assert_eq!(total.tun_rx_bytes, 200);
        assert_eq!(total.dropped_malformed, 2);
        assert_eq!(total.tun_written, 3);
        assert_eq!(total.upcalls, 0);
    }

    #[test]
    fn workers_do_not_share_a_cache_line() {
        assert!(std::mem::align_of::<CachePadded<Counters>>() >= 64);
    }
}
