//! Worker tests without root: a pipe stands in for the TUN queue. A pipe
//! supports the same poll-driven multishot read, and writing one packet at a
//! time (or packets of exactly one buffer's size) keeps read boundaries on
//! packet boundaries.

use super::*;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Instant;

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
    // Big enough that tests can queue a burst without the writer blocking.
    // SAFETY: plain fcntl on a fd we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: both fds were just created and are owned here.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn ipv4_packet(len: usize, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    p
}

fn config(buffers: u32, capacity: usize) -> DataplaneConfig {
    DataplaneConfig {
        workers: 1,
        channel_capacity: capacity,
        mtu: 1400,
        buffers_per_worker: buffers,
        headroom: MIN_HEADROOM,
        pin_cpus: false,
        udp: None,
        mss_clamp: None,
        offload: false,
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The packet a relay upcall carries, checked to be the FORWARD frame the
/// server decodes.
pub(super) fn relayed_packet(up: &Upcall) -> &[u8] {
    let Upcall::RelayFrame(frame) = up else {
        panic!("expected a relay frame, got {up:?}");
    };
    match crate::proto::ws::WsMessage::decode(frame) {
        Ok(crate::proto::ws::WsMessage::Forward(packet)) => packet,
        other => panic!("relay frame is not a FORWARD: {other:?}"),
    }
}

fn expect_packet(rx: &UpcallReceiver, want: &[u8]) {
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(up) => assert_eq!(relayed_packet(&up), want),
        Err(e) => panic!("no upcall: {e}"),
    }
}

#[test]
fn packets_flow_up_and_buffers_recycle_past_the_ring_size() {
    let (rd, mut wr) = pipe();
    let (dp, rx) = Dataplane::start(vec![rd], &config(16, 64)).unwrap();
    // 16 buffers and 200 packets: every buffer is reused many times.
    for seq in 0..200u32 {
        let p = ipv4_packet(20 + (seq as usize * 7) % 1380, seq);
        wr.write_all(&p).unwrap();
        expect_packet(&rx, &p);
    }
    let c = dp.counters();
    assert_eq!(c.tun_rx_packets, 200);
    assert_eq!(c.upcalls, 200);
    assert_eq!(c.dropped_full + c.dropped_malformed, 0);
    dp.shutdown().unwrap();
}

#[test]
fn malformed_reads_are_dropped_and_counted() {
    let (rd, mut wr) = pipe();
    let (dp, rx) = Dataplane::start(vec![rd], &config(16, 64)).unwrap();
    wr.write_all(&[0x60; 40]).unwrap();
    wait_for("ipv6 drop", || dp.counters().dropped_malformed == 1);
    wr.write_all(&[0x45; 19]).unwrap();
    wait_for("short drop", || dp.counters().dropped_malformed == 2);
    let good = ipv4_packet(60, 1);
    wr.write_all(&good).unwrap();
    expect_packet(&rx, &good);
    assert!(rx.is_empty());
    dp.shutdown().unwrap();
}

#[test]
fn out_of_buffers_rearms_the_read() {
    let (rd, mut wr) = pipe();
    let cfg = config(4, 256);
    let data_len = cfg.validate().unwrap().data_len();
    let (dp, rx) = Dataplane::start(vec![rd], &cfg).unwrap();
    // Packets exactly one buffer long, so each read takes one packet; a burst
    // of 64 against 4 buffers must exhaust the ring and end the multishot.
    let burst: Vec<Vec<u8>> = (0..64).map(|s| ipv4_packet(data_len, s)).collect();
    wr.write_all(&burst.concat()).unwrap();
    for p in &burst {
        expect_packet(&rx, p);
    }
    assert!(dp.counters().read_rearms > 0);
    dp.shutdown().unwrap();
}

#[test]
fn full_channel_drops_and_counts() {
    let (rd, mut wr) = pipe();
    let cfg = config(16, 2);
    let data_len = cfg.validate().unwrap().data_len();
    let (dp, rx) = Dataplane::start(vec![rd], &cfg).unwrap();
    let burst: Vec<Vec<u8>> = (0..10).map(|s| ipv4_packet(data_len, s)).collect();
    wr.write_all(&burst.concat()).unwrap();
    wait_for("10 reads", || dp.counters().tun_rx_packets == 10);
    let c = dp.counters();
    assert_eq!((c.upcalls, c.dropped_full), (2, 8));
    expect_packet(&rx, &burst[0]);
    expect_packet(&rx, &burst[1]);
    dp.shutdown().unwrap();
}

#[test]
fn async_recv_wakes_and_ends_after_shutdown() {
    let (rd, mut wr) = pipe();
    let (dp, rx) = Dataplane::start(vec![rd], &config(16, 64)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let p = ipv4_packet(100, 7);
    let sent = p.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        wr.write_all(&sent).unwrap();
        wr
    });
    let got = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await })
        .expect("async recv timed out");
    assert_eq!(relayed_packet(&got.expect("an upcall")), p);
    let _wr = writer.join().unwrap();
    dp.shutdown().unwrap();
    let end = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await })
        .expect("recv did not see the disconnect");
    assert_eq!(end, None);
}

#[test]
fn read_error_stops_the_worker_with_a_typed_error() {
    // A write-only end cannot be read: the multishot read fails at once.
    let (_rd, wr) = pipe();
    let wr: OwnedFd = wr.into();
    let (dp, _rx) = Dataplane::start(vec![wr], &config(16, 64)).unwrap();
    wait_for("worker exit", || dp.stopped_workers() == vec![0]);
    assert!(matches!(
        dp.shutdown(),
        Err(DataplaneError::Read { queue: 0, .. })
    ));
}

#[test]
fn config_and_queue_count_are_checked() {
    let (rd, _wr) = pipe();
    let bad = |c: DataplaneConfig| match Dataplane::start(Vec::new(), &c) {
        Err(DataplaneError::InvalidConfig { field, .. }) => field,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(
        bad(DataplaneConfig {
            workers: 0,
            ..config(16, 1)
        }),
        "workers"
    );
    assert_eq!(bad(config(16, 0)), "channel_capacity");
    assert_eq!(
        bad(DataplaneConfig {
            mtu: 0,
            ..config(16, 1)
        }),
        "mtu"
    );
    assert_eq!(
        bad(DataplaneConfig {
            headroom: 28,
            ..config(16, 1)
        }),
        "headroom"
    );
    assert_eq!(bad(config(1000, 1)), "buffers_per_worker");
    let two = DataplaneConfig {
        workers: 2,
        ..config(16, 1)
    };
    assert!(matches!(
        Dataplane::start(vec![rd], &two),
        Err(DataplaneError::QueueCountMismatch {
            queues: 1,
            workers: 2
        })
    ));
    assert!(DataplaneConfig::default().validate().is_ok());
}

#[test]
fn more_workers_than_cpus_wrap_and_stop_promptly() {
    let n = crate::sys::affinity::online_cpus() + 1;
    let (reads, mut writes): (Vec<OwnedFd>, Vec<std::fs::File>) = (0..n).map(|_| pipe()).unzip();
    let cfg = DataplaneConfig {
        workers: n,
        pin_cpus: true,
        ..config(16, 64)
    };
    let (dp, rx) = Dataplane::start(reads, &cfg).unwrap();
    for (i, w) in writes.iter_mut().enumerate() {
        let p = ipv4_packet(40, i as u32);
        w.write_all(&p).unwrap();
        expect_packet(&rx, &p);
    }
    // A worker publishes its counters after the batch that sent the
    // upcall, so the last one may lag the packet by a moment.
    wait_for("one upcall counted per worker", || {
        dp.worker_counters().iter().all(|c| c.upcalls == 1)
    });
    let t = Instant::now();
    drop(dp);
    // One wait interval to notice, one to reap the cancellation.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    ));
}
