//! End-to-end over a real multiqueue TUN device. Needs root and
//! /dev/net/tun: ignored by default, fails without them when run with
//! `--include-ignored`. Everything runs on a thread that has unshared into
//! a fresh network namespace, so the host's interfaces,
//! addresses and routes are never touched; the namespace, and the device in
//! it, disappear when that thread and its fds are gone.

mod common;
use common::{relayed_packet, run_in_own_netns};

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ringlink::dataplane::{Dataplane, DataplaneConfig, UpcallReceiver};
use ringlink::sys::netlink::{Netlink, NetlinkError, RouteV4};
use ringlink::sys::tun::{open_tun, TunOptions};

const IFNAME: &str = "rltest0";
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // Checksum 0: "none" is legal for UDP over IPv4.
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(*src.ip(), *dst.ip(), 17, &u)
}

/// (dst, dst port, payload) of a UDP/IPv4 packet.
fn parse_udp(p: &[u8]) -> Option<(Ipv4Addr, u16, &[u8])> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let u = p.get(ihl..)?;
    let dport = u16::from_be_bytes([*u.get(2)?, *u.get(3)?]);
    Some((dst, dport, u.get(8..)?))
}

/// Receive upcalls until `done` says so, with a deadline.
fn collect_until(rx: &UpcallReceiver, what: &str, mut done: impl FnMut(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(up) => match relayed_packet(&up) {
                Some(p) if done(p) => return,
                Some(_) => {}
                None => panic!("unexpected upcall {up:?}"),
            },
            Err(e) => panic!("timed out waiting for {what}: {e}"),
        }
    }
}

fn route_table() -> String {
    // thread-self, not self: /proc/self/net shows the main thread's namespace.
    std::fs::read_to_string("/proc/thread-self/net/route").unwrap()
}

/// Destination (hex as in /proc/net/route, little-endian) present?
fn has_route(table: &str, dst: Ipv4Addr) -> bool {
    let hex = format!("{:08X}", u32::from_le_bytes(dst.octets()));
    table
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&hex))
}

async fn configure(nl: &Netlink) {
    // Twice: re-applying the same config must succeed.
    for _ in 0..2 {
        nl.add_ipv4_address(IFNAME, LOCAL, 24).await.unwrap();
        nl.set_mtu(IFNAME, 1400).await.unwrap();
        nl.set_up(IFNAME).await.unwrap();
    }
    let dev_route = RouteV4::dev(Ipv4Addr::new(10, 201, 0, 7), 16, IFNAME);
    let via_route = RouteV4::via(Ipv4Addr::new(10, 202, 0, 0), 16, REMOTE);
    for _ in 0..2 {
        nl.add_route_v4(&dev_route).await.unwrap();
        nl.add_route_v4(&via_route).await.unwrap();
    }
    let t = route_table();
    assert!(has_route(&t, Ipv4Addr::new(10, 201, 0, 0)), "{t}");
    assert!(has_route(&t, Ipv4Addr::new(10, 202, 0, 0)), "{t}");
    for _ in 0..2 {
        nl.del_route_v4(&dev_route).await.unwrap();
        nl.del_route_v4(&via_route).await.unwrap();
    }
    let t = route_table();
    assert!(!has_route(&t, Ipv4Addr::new(10, 201, 0, 0)), "{t}");
    assert!(!has_route(&t, Ipv4Addr::new(10, 202, 0, 0)), "{t}");

    match nl.set_up("rlmissing0").await {
        Err(e @ NetlinkError::LinkNotFound { .. }) => {
            assert!(e.to_string().contains("rlmissing0"))
        }
        other => panic!("expected LinkNotFound, got {other:?}"),
    }
}

fn scenario() {
    let queues = open_tun(
        IFNAME,
        &TunOptions {
            queues: 2,
            nonblocking: true,
            vnet_hdr: false,
        },
    )
    .unwrap();
    assert_eq!(queues.len(), 2);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nl = Netlink::new().unwrap();
        configure(&nl).await;
    });

    let config = DataplaneConfig {
        workers: 2,
        channel_capacity: 1024,
        mtu: 1400,
        ..DataplaneConfig::default()
    };
    let (dp, rx) = Dataplane::start(queues, &config).unwrap();

    // TUN → control thread. Several sockets so flows may hash to both queues.
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let sockets: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind(SocketAddrV4::new(LOCAL, 0)).unwrap())
        .collect();
    for (i, s) in sockets.iter().enumerate() {
        for j in 0..4 {
            let payload = format!("ringlink-dp-test {i}/{j}").into_bytes();
            s.send_to(&payload, SocketAddrV4::new(REMOTE, 9)).unwrap();
            expected.push(payload);
        }
    }
    let mut seen = Vec::new();
    collect_until(&rx, "udp datagrams on the channel", |p| {
        if let Some((dst, 9, payload)) = parse_udp(p) {
            assert_eq!(dst, REMOTE);
            seen.push(payload.to_vec());
        }
        seen.len() == expected.len()
    });
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);

    // Control thread → TUN: a UDP packet for a socket in the namespace.
    let writer = dp.writer();
    let sink = UdpSocket::bind(SocketAddrV4::new(LOCAL, 0)).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let SocketAddr::V4(sink_addr) = sink.local_addr().unwrap() else {
        unreachable!("bound to an IPv4 address")
    };
    let from = SocketAddrV4::new(REMOTE, 4242);
    writer
        .write(&udp(from, sink_addr, b"from the relay"))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, src) = sink
        .recv_from(&mut buf)
        .expect("written packet never arrived");
    assert_eq!(&buf[..n], b"from the relay");
    assert_eq!(src, SocketAddr::V4(from));

    // Round trip: an echo request written in comes back out as a reply.
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"ping payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    writer.write(&ipv4(REMOTE, LOCAL, 1, &icmp)).unwrap();
    collect_until(&rx, "icmp echo reply", |p| {
        p[9] == 1 && p[16..20] == REMOTE.octets() && p[20] == 0 && p[24..26] == [0x12, 0x34]
    });

    // Malformed writes are refused, not sent.
    assert!(writer.write(&[0x60; 40]).is_err());

    let total = dp.counters();
    assert!(total.upcalls >= 33, "{total:?}");
    assert_eq!(total.tun_written, 2);
    assert_eq!(total.tun_write_errors, 1);
    assert_eq!(total.dropped_full, 0);
    let per_worker = dp.worker_counters();
    eprintln!("per-worker counters: {per_worker:?}");
    assert_eq!(per_worker.len(), 2);
    assert!(dp.stopped_workers().is_empty());
    dp.shutdown().unwrap();
}

#[test]
#[ignore = "needs root"]
fn multiqueue_tun_relay_path_in_own_netns() {
    run_in_own_netns(scenario);
}
