//! Per-worker statistics.
//!
//! Each worker (and the TUN writer) owns one `Counters`; the control thread
//! only reads. The whole struct is cache-padded rather than each field: all
//! fields of one struct are written by the same thread, so padding between
//! them would buy nothing, while padding around the struct keeps two workers
//! from bouncing a shared line.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the TUN queue (before classification).
    pub tun_rx_packets: AtomicU64,
    pub tun_rx_bytes: AtomicU64,
    /// Packets handed to the control thread.
    pub upcalls: AtomicU64,
    /// Dropped because the control channel was full (or gone).
    pub dropped_full: AtomicU64,
    /// Dropped because they were not IPv4 or shorter than a header.
    pub dropped_malformed: AtomicU64,
    /// Packets written into the TUN device.
    pub tun_written: AtomicU64,
    pub tun_written_bytes: AtomicU64,
    /// Writes into the TUN device that failed or were refused.
    pub tun_write_errors: AtomicU64,
    /// Times the multishot read ended (e.g. out of buffers) and was re-armed.
    pub read_rearms: AtomicU64,
}

/// Shared handle to one counters block.
pub type SharedCounters = Arc<CachePadded<Counters>>;

pub(crate) fn new_shared() -> SharedCounters {
    Arc::new(CachePadded::new(Counters::default()))
}

/// A plain copy of the counters, summable across workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub upcalls: u64,
    pub dropped_full: u64,
    pub dropped_malformed: u64,
    pub tun_written: u64,
    pub tun_written_bytes: u64,
    pub tun_write_errors: u64,
    pub read_rearms: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            tun_rx_packets: r(&self.tun_rx_packets),
            tun_rx_bytes: r(&self.tun_rx_bytes),
            upcalls: r(&self.upcalls),
            dropped_full: r(&self.dropped_full),
            dropped_malformed: r(&self.dropped_malformed),
            tun_written: r(&self.tun_written),
            tun_written_bytes: r(&self.tun_written_bytes),
            tun_write_errors: r(&self.tun_write_errors),
            read_rearms: r(&self.read_rearms),
        }
    }

    /// Fold a batch's local tallies in: one atomic add per non-zero field per
    /// batch instead of one per packet.
    pub(crate) fn add(&self, batch: &CounterSnapshot) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.tun_rx_packets, batch.tun_rx_packets);
        add(&self.tun_rx_bytes, batch.tun_rx_bytes);
        add(&self.upcalls, batch.upcalls);
        add(&self.dropped_full, batch.dropped_full);
        add(&self.dropped_malformed, batch.dropped_malformed);
        add(&self.tun_written, batch.tun_written);
        add(&self.tun_written_bytes, batch.tun_written_bytes);
        add(&self.tun_write_errors, batch.tun_write_errors);
        add(&self.read_rearms, batch.read_rearms);
    }
}

impl AddAssign for CounterSnapshot {
    fn add_assign(&mut self, o: Self) {
        self.tun_rx_packets += o.tun_rx_packets;
        self.tun_rx_bytes += o.tun_rx_bytes;
        self.upcalls += o.upcalls;
        self.dropped_full += o.dropped_full;
        self.dropped_malformed += o.dropped_malformed;
        self.tun_written += o.tun_written;
        self.tun_written_bytes += o.tun_written_bytes;
        self.tun_write_errors += o.tun_write_errors;
        self.read_rearms += o.read_rearms;
    }
}

impl std::iter::Sum for CounterSnapshot {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        let mut total = CounterSnapshot::default();
        for s in iter {
            total += s;
        }
        total
    }
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
