//! The direct UDP path over a real multiqueue TUN device, with a
//! hand-driven peer: plain UDP sockets on loopback that seal and open with
//! `proto::crypto`. Needs root and /dev/net/tun: ignored by default, fails
//! without them when run with `--include-ignored`.
//!
//! Everything runs on a thread that has unshared into a fresh network
//! namespace (loopback and the TUN device only), so nothing on the host is
//! touched and the namespace disappears with the thread and its fds.

mod common;
use common::{relayed_packet, run_in_own_netns};

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlink::control::publish;
use ringlink::dataplane::{
    Dataplane, DataplaneConfig, PeerCounters, PeerEntry, SharedSnapshot, UdpConfig, Upcall,
    UpcallReceiver,
};
use ringlink::proto::crypto::{CipherKind, IvSequence, PeerKey};
use ringlink::proto::stun;
use ringlink::proto::udp::{ty, Heartbeat};
use ringlink::route::NextHopTable;
use ringlink::sys::netlink::Netlink;
use ringlink::sys::tun::{open_tun, TunOptions};

const IFNAME: &str = "rludp0";
const PASSWORD: &[u8] = b"dataplane udp test";
const OWN: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 3);
const RELAYED: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 9);
const WORKERS: usize = 2;
const DEADLINE: Duration = Duration::from_secs(5);

fn key(vip: Ipv4Addr) -> PeerKey {
    PeerKey::for_vip(CipherKind::Aes256Gcm, PASSWORD, vip)
}

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = u32::from(pair.get(1).copied().unwrap_or(0));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet with a valid header checksum and no UDP checksum.
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = ones_complement(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// (source, destination, payload) of an IPv4/UDP packet without options.
fn parse_udp(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    if p.len() < 28 || p[0] != 0x45 || p[9] != 17 {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    Some((
        SocketAddrV4::new(ip(12), port(20)),
        SocketAddrV4::new(ip(16), port(22)),
        &p[28..],
    ))
}

fn v4(s: &UdpSocket) -> SocketAddrV4 {
    match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound to IPv4"),
    }
}

fn bind(ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A peer endpoint on loopback: a socket, the dataplane's address, and IVs.
struct Peer {
    sock: UdpSocket,
    to: SocketAddrV4,
    ivs: IvSequence,
}

impl Peer {
    fn new(dp_port: u16) -> Self {
        Peer {
            sock: bind(Ipv4Addr::LOCALHOST),
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, dp_port),
            ivs: IvSequence::new(),
        }
    }

    fn addr(&self) -> SocketAddrV4 {
        v4(&self.sock)
    }

    /// Seal for the dataplane's node and send.
    fn send_plain(&mut self, plain: &[u8]) {
        let d = key(OWN).seal_to_vec(self.ivs.next_iv(), plain);
        self.sock.send_to(&d, self.to).unwrap();
    }

    fn send_forward(&mut self, packet: &[u8]) {
        let mut plain = vec![ty::FORWARD];
        plain.extend_from_slice(packet);
        self.send_plain(&plain);
    }

    /// Next datagram from the dataplane, opened with `vip`'s key.
    fn recv_opened(&self, vip: Ipv4Addr) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let (n, from) = self.sock.recv_from(&mut buf).expect("no datagram");
        assert_eq!(
            from,
            SocketAddr::V4(self.to),
            "datagram from the wrong port"
        );
        assert!(n <= 1500, "{n}-byte datagram is too big for Candy");
        key(vip)
            .open_in_place(&mut buf[..n])
            .expect("datagram does not open with the peer's key")
            .to_vec()
    }

    /// Next FORWARD carrying a UDP packet to `dst`, skipping anything else
    /// the kernel routed to this peer's VIP.
    fn recv_udp_to(&self, vip: Ipv4Addr, dst: SocketAddrV4) -> (SocketAddrV4, Vec<u8>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no packet for {dst}");
            let plain = self.recv_opened(vip);
            assert_eq!(plain[0], ty::FORWARD);
            if let Some((src, d, payload)) = parse_udp(&plain[1..]) {
                if d == dst {
                    return (src, payload.to_vec());
                }
            }
        }
    }
}

fn next_upcall(rx: &UpcallReceiver, what: &str, mut want: impl FnMut(&Upcall) -> bool) -> Upcall {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(u) if want(&u) => return u,
            // The kernel's own traffic on a fresh interface (IGMP and the
            // like) goes up for the relay too; not what we wait for.
            Ok(_) => {}
            Err(e) => panic!("timed out waiting for {what}: {e}"),
        }
    }
}

fn entry(endpoint: SocketAddrV4, vip: Ipv4Addr) -> (PeerEntry, Arc<PeerCounters>) {
    let counters = Arc::new(PeerCounters::default());
    (
        PeerEntry {
            endpoint,
            socket: None,
            channel: None,
            stream: None,
            key: Arc::new(key(vip)),
            session: None,
            counters: counters.clone(),
        },
        counters,
    )
}

fn scenario() {
    let queues = open_tun(
        IFNAME,
        &TunOptions {
            queues: WORKERS,
            nonblocking: true,
            vnet_hdr: false,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nl = Netlink::new().unwrap();
        nl.set_up("lo").await.unwrap();
        nl.add_ipv4_address(IFNAME, OWN, 24).await.unwrap();
        nl.set_mtu(IFNAME, 1400).await.unwrap();
        nl.set_up(IFNAME).await.unwrap();
    });

    let config = DataplaneConfig {
        workers: WORKERS,
        channel_capacity: 4096,
        mtu: 1400,
        pin_cpus: false,
        udp: Some(UdpConfig {
            port: 0,
            own_key: Arc::new(key(OWN)),
        }),
        ..DataplaneConfig::default()
    };
    let (dp, rx) = Dataplane::start(queues, &config).unwrap();
    let port = dp.udp_port().expect("udp port");

    let mut peer = Peer::new(port);
    let (pe, peer_counters) = entry(peer.addr(), PEER);
    publish_direct(dp.snapshot(), 1, HashMap::from([(PEER, pe)]));

    // TUN → UDP: an application's datagram to a direct peer arrives there
    // as a sealed FORWARD carrying the exact IPv4 packet.
    let app = bind(OWN);
    let dst = SocketAddrV4::new(PEER, 9);
    app.send_to(b"to the peer", dst).unwrap();
    let (src, payload) = peer.recv_udp_to(PEER, dst);
    assert_eq!(src, v4(&app));
    assert_eq!(payload, b"to the peer");

    // UDP → TUN: a sealed FORWARD for us reaches a socket in the namespace.
    let sink = bind(OWN);
    let from = SocketAddrV4::new(PEER, 4242);
    peer.send_forward(&udp_packet(from, v4(&sink), b"from the peer"));
    let mut buf = [0u8; 2048];
    let (n, src) = sink.recv_from(&mut buf).expect("forward never arrived");
    assert_eq!(&buf[..n], b"from the peer");
    assert_eq!(src, SocketAddr::V4(from));
    wait_for("per-peer rx", || peer_counters.snapshot().rx_packets == 1);

    // A heartbeat becomes a peer upcall with the exact plaintext.
    let hb = Heartbeat::new(PEER, true).encode();
    peer.send_plain(&hb);
    let want = Upcall::Peer {
        from: peer.addr(),
        local: 0,
        plaintext: hb.to_vec(),
        session: None,
    };
    next_upcall(&rx, "heartbeat upcall", |u| *u == want);

    // STUN-looking datagrams go up as they are.
    let req = stun::encode_binding_request(&[5; 12]);
    peer.sock.send_to(&req, peer.to).unwrap();
    let want = Upcall::Stun {
        from: peer.addr(),
        local: 0,
        datagram: req.to_vec(),
    };
    next_upcall(&rx, "stun upcall", |u| *u == want);

    // Garbage is counted and has no other effect.
    let before = dp.counters();
    peer.sock.send_to(&[0x5a; 200], peer.to).unwrap();
    wait_for("decrypt failure", || {
        dp.counters().decrypt_failed == before.decrypt_failed + 1
    });
    let after = dp.counters();
    assert_eq!(after.tun_written, before.tun_written);
    assert_eq!(after.peer_upcalls, before.peer_upcalls);
    assert_eq!(after.stun_upcalls, before.stun_upcalls);

    // No direct path: up for the relay.
    let relayed = SocketAddrV4::new(RELAYED, 7);
    app.send_to(b"via the server", relayed).unwrap();
    next_upcall(&rx, "relay upcall", |u| {
        relayed_packet(u)
            .and_then(parse_udp)
            .is_some_and(|(_, d, pl)| d == relayed && pl == b"via the server")
    });

    // The control thread's sends leave from the dataplane's port.
    let sender = dp.udp_sender().expect("sender");
    let probe = key(PEER).seal_to_vec([9; 12], &Heartbeat::new(OWN, false).encode());
    sender.send_to(&probe, peer.addr(), None, None).unwrap();
    assert_eq!(peer.recv_opened(PEER), Heartbeat::new(OWN, false).encode());

    multi_flow(&dp, port);

    let total = dp.counters();
    eprintln!("totals: {total:?}");
    eprintln!("per worker: {:?}", dp.worker_counters());
    assert_eq!(total.send_errors, 0);
    assert_eq!(total.tun_write_errors, 0);
    assert!(dp.stopped_workers().is_empty());
    dp.shutdown().unwrap();
}

const FLOWS: usize = 16;
const PER_FLOW: u32 = 50;
const WINDOW: usize = 4 * FLOWS;

/// Several flows each way, spread over both workers by the TUN queue hash
/// and the SO_REUSEPORT hash; every flow must arrive complete and in order.
/// Publishes what the control thread would with these direct peers and no
/// other routes.
fn publish_direct(shared: &SharedSnapshot, generation: u64, direct: HashMap<Ipv4Addr, PeerEntry>) {
    let rule = NextHopTable::new([], direct.keys().copied()).with_own_vip(OWN);
    shared.publish(publish::compile(
        generation,
        OWN,
        &rule,
        direct,
        &Default::default(),
    ));
}

fn multi_flow(dp: &Dataplane, port: u16) {
    // TUN → UDP: 16 application sockets to PEER_B's VIP, one receiving
    // thread at the peer so nothing waits in a socket buffer.
    let peer_b = bind(Ipv4Addr::LOCALHOST);
    let s = dp.snapshot().load();
    let (e, counters_b) = entry(v4(&peer_b), PEER_B);
    let mut direct = s.direct.clone();
    direct.insert(PEER_B, e);
    publish_direct(dp.snapshot(), s.generation + 1, direct);
    let expected = FLOWS * PER_FLOW as usize;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let collector = std::thread::spawn(move || {
        let mut flows: HashMap<u16, Vec<u32>> = HashMap::new();
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < expected {
            let Ok((n, _)) = peer_b.recv_from(&mut buf) else {
                break;
            };
            let Ok(plain) = key(PEER_B).open_in_place(&mut buf[..n]) else {
                continue;
            };
            let Some((src, _, payload)) = parse_udp(&plain[1..]) else {
                continue;
            };
            if payload.len() != 100 {
                continue;
            }
            let seq = u32::from_be_bytes(payload[..4].try_into().unwrap());
            assert!(payload[4..].iter().all(|&b| b == seq as u8), "bytes");
            flows.entry(src.port()).or_default().push(seq);
            got += 1;
            seen.store(got, Ordering::Release);
        }
        flows
    });
    let apps: Vec<UdpSocket> = (0..FLOWS).map(|_| bind(OWN)).collect();
    for seq in 0..PER_FLOW {
        // A window of a few rounds in flight: enough for the workers to
        // batch, too little to overflow the peer's default socket buffer,
        // which would lose packets outside the dataplane.
        let sent = seq as usize * FLOWS;
        wait_for("the peer to keep up", || {
            sent.saturating_sub(received.load(Ordering::Acquire)) < WINDOW
        });
        let mut payload = vec![seq as u8; 100];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        for (i, a) in apps.iter().enumerate() {
            a.send_to(&payload, SocketAddrV4::new(PEER_B, 5000 + i as u16))
                .unwrap();
        }
    }
    let flows = collector.join().unwrap();
    assert_eq!(flows.len(), FLOWS, "flows seen at the peer");
    for (port, seqs) in &flows {
        assert_eq!(
            seqs,
            &(0..PER_FLOW).collect::<Vec<_>>(),
            "flow from port {port}"
        );
    }
    assert_eq!(counters_b.snapshot().tx_packets, expected as u64);

    // UDP → TUN: 16 peer sockets (16 source ports, so the REUSEPORT hash
    // spreads them) each send to their own sink in the namespace.
    let mut peers: Vec<Peer> = (0..FLOWS).map(|_| Peer::new(port)).collect();
    let sinks: Vec<UdpSocket> = (0..FLOWS).map(|_| bind(OWN)).collect();
    let rx_before: Vec<u64> = dp
        .worker_counters()
        .iter()
        .map(|c| c.udp_rx_packets)
        .collect();
    for seq in 0..PER_FLOW {
        for (p, sink) in peers.iter_mut().zip(&sinks) {
            let mut payload = vec![seq as u8; 300];
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            let from = SocketAddrV4::new(PEER, p.addr().port());
            p.send_forward(&udp_packet(from, v4(sink), &payload));
        }
    }
    let mut buf = [0u8; 2048];
    for (i, sink) in sinks.iter().enumerate() {
        for seq in 0..PER_FLOW {
            let (n, _) = sink
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("flow {i} seq {seq}: {e}"));
            assert_eq!(n, 300);
            assert_eq!(
                u32::from_be_bytes(buf[..4].try_into().unwrap()),
                seq,
                "flow {i}"
            );
            assert!(buf[4..n].iter().all(|&b| b == seq as u8));
        }
    }
    let per_worker_rx: Vec<u64> = dp
        .worker_counters()
        .iter()
        .zip(&rx_before)
        .map(|(c, b)| c.udp_rx_packets - b)
        .collect();
    eprintln!("udp rx per worker in the multi-flow phase: {per_worker_rx:?}");
    assert_eq!(per_worker_rx.iter().sum::<u64>(), expected as u64);
    // 16 random source ports all hashing to one of two sockets: 2^-15.
    assert!(per_worker_rx.iter().all(|&n| n > 0), "{per_worker_rx:?}");
}

#[test]
#[ignore = "needs root"]
fn direct_udp_path_over_a_real_tun_in_own_netns() {
    run_in_own_netns(scenario);
}
