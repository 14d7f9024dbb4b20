//! Writes the seed corpus of the fuzz targets in `fuzz/` from the crate's
//! own encoders, so every seed is a message the codecs really produce.
//!
//! Usage: cargo run --release --example fuzz_seeds -- fuzz/corpus

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use ringlink::dataplane::offload::{gso, VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use ringlink::proto::crypto::{CipherKind, PeerKey};
use ringlink::proto::ext::Tail;
use ringlink::proto::udp::{Delay, Heartbeat, Ping, Pong, RouteAdvert, NONCE_LEN, WITHDRAWN};
use ringlink::proto::ws::{
    self, encode_forward, Auth, Discovery, ExptTun, PeerConn, SysRoute, Vmac,
};
use ringlink::proto::{checksum, sdwan, stun, Ipv4Cidr};
use ringlink::session::handshake::{psk_from_password, HandshakeConfig, Handshakes};
use ringlink::session::keys::NodeKey;
use ringlink::session::timers::HandshakeTimers;
use ringlink::turn;
use ringlink::turn::message::{attr, method, Builder, Class};

const PW: &[u8] = b"secret";
const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const TS: i64 = 1_765_000_000;

struct Seeds {
    dir: PathBuf,
}

impl Seeds {
    fn target(&self, name: &str, seeds: &[(&str, Vec<u8>)]) -> io::Result<()> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir)?;
        for (file, bytes) in seeds {
            fs::write(dir.join(file), bytes)?;
        }
        Ok(())
    }
}

/// A TCP/IPv4 packet with right checksums: `options` after the 20-byte TCP
/// header, then `payload` bytes of a counting pattern.
fn tcp(seq: u32, flags: u8, options: &[u8], payload: usize) -> Vec<u8> {
    let thl = 20 + options.len();
    let total = 20 + thl + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&A.octets());
    p[16..20].copy_from_slice(&B.octets());
    checksum::refresh_ipv4_header(&mut p, 20);
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&7u32.to_be_bytes());
    t[12] = ((thl / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[20..thl].copy_from_slice(options);
    for (i, b) in t[thl..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = checksum::pseudo_header(A, B, 6, thl + payload);
    let c = checksum::finish(checksum::add(sum, t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// MSS 1460, NOP NOP, timestamps: what Linux puts in a SYN, shortened.
const SYN_OPTIONS: [u8; 16] = [2, 4, 0x05, 0xb4, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

fn with_vnet(hdr: VnetHdr, prefix: u8, spare: u16, packet: &[u8]) -> Vec<u8> {
    let mut out = [0u8; VNET_HDR_LEN].to_vec();
    hdr.write((&mut out[..]).try_into().expect("10 bytes"));
    out.push(prefix);
    out.extend_from_slice(&spare.to_le_bytes());
    out.extend_from_slice(packet);
    out
}

/// Packets for the coalesce target: a flag byte (0: checksums as they
/// are), then each packet led by its length in 16-bit words.
fn length_led(packets: &[Vec<u8>]) -> Vec<u8> {
    let packets = packets.iter().flat_map(|p| {
        assert!(
            p.len() % 2 == 0 && p.len() / 2 <= 255,
            "seed packet too long"
        );
        std::iter::once((p.len() / 2) as u8).chain(p.iter().copied())
    });
    std::iter::once(0).chain(packets).collect()
}

fn write_all(dir: &Path) -> io::Result<()> {
    let s = Seeds { dir: dir.into() };
    let small_ping = {
        let mut p = tcp(1, ACK, &[], 8);
        p[9] = 1; // an ICMP-numbered packet is still an IPv4 packet to route
        p
    };
    let mut fwd = Vec::new();
    encode_forward(&small_ping, &mut fwd);
    let cidr: Ipv4Cidr = "10.77.0.20/24".parse().expect("valid cidr");
    let routes = [SysRoute {
        dst: "192.168.20.0/24".parse().expect("valid cidr"),
        next: Ipv4Addr::new(10, 77, 0, 20),
    }];
    s.target(
        "ws_message",
        &[
            ("auth", Auth::new(PW, A, TS).encode()),
            ("auth_marked", Auth::new(PW, A, TS).ringlink().encode()),
            (
                "turn_offer",
                ws::TurnOffer {
                    host: "10.9.0.1".into(),
                    port: 3478,
                    username: format!("{TS}:{A}"),
                    password: "bWhdp9SIn7BkmZ3amCr1/Z1yo6I=".into(),
                    transport: ws::TurnTransport::Udp,
                }
                .encode()
                .expect("short fields"),
            ),
            (
                "turn_offer_tls",
                ws::TurnOffer {
                    host: "turn.example".into(),
                    port: 5349,
                    username: format!("{TS}:{A}"),
                    password: "bWhdp9SIn7BkmZ3amCr1/Z1yo6I=".into(),
                    transport: ws::TurnTransport::Tls,
                }
                .encode()
                .expect("short fields"),
            ),
            (
                "turn_offer_tcp",
                ws::TurnOffer {
                    host: "10.9.0.1".into(),
                    port: 3478,
                    username: format!("{TS}:{A}"),
                    password: "bWhdp9SIn7BkmZ3amCr1/Z1yo6I=".into(),
                    transport: ws::TurnTransport::Tcp,
                }
                .encode()
                .expect("short fields"),
            ),
            ("forward", fwd),
            ("expttun", ExptTun::new(PW, cidr, TS).encode()),
            (
                "peer_conn",
                PeerConn {
                    src: A,
                    dst: B,
                    endpoint: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000),
                    tail: Some(Tail::OURS),
                }
                .encode(),
            ),
            ("vmac", Vmac::new(PW, [7; 16], TS).encode()),
            (
                "discovery",
                Discovery {
                    src: A,
                    dst: ws::BROADCAST,
                }
                .encode(),
            ),
            ("routes", SysRoute::encode_list(&routes).concat()),
            (
                "local_conn",
                ws::encode_local_conn(
                    A,
                    B,
                    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 10), 40000),
                ),
            ),
            ("keepalive", ws::encode_keepalive(A)),
        ],
    )?;

    let mut udp_forward = vec![ringlink::proto::udp::ty::FORWARD];
    udp_forward.extend_from_slice(&small_ping);
    s.target(
        "udp_message",
        &[
            ("heartbeat", Heartbeat::new(A, false).encode()),
            ("heartbeat_ack", Heartbeat::ringlink(A, true).encode()),
            (
                "ping",
                Ping {
                    tunip: A,
                    nonce: [3; NONCE_LEN],
                }
                .encode()
                .to_vec(),
            ),
            (
                "pong",
                Pong {
                    tunip: A,
                    nonce: [3; NONCE_LEN],
                    seen: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000),
                }
                .encode()
                .to_vec(),
            ),
            (
                "delay",
                Delay {
                    src: A,
                    dst: B,
                    timestamp_ms: 123_456,
                }
                .encode()
                .to_vec(),
            ),
            (
                "route",
                RouteAdvert {
                    dst: B,
                    next: A,
                    delay_ms: 12,
                }
                .encode()
                .to_vec(),
            ),
            (
                "withdrawal",
                RouteAdvert {
                    dst: B,
                    next: A,
                    delay_ms: WITHDRAWN,
                }
                .encode()
                .to_vec(),
            ),
            ("forward", udp_forward),
        ],
    )?;

    let txid = *b"ringlinkfuzz";
    s.target(
        "stun",
        &[
            ("request", stun::encode_binding_request(&txid).to_vec()),
            (
                "response",
                stun::encode_binding_response(
                    &txid,
                    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 51820),
                )
                .to_vec(),
            ),
        ],
    )?;

    // The turn target's client draws transaction IDs from seed 7: the
    // first goes on the unauthenticated Allocate, the second on the retry.
    let mut rng = ringlink::rng::SplitMix64::new(7);
    let (mut tx1, mut tx2) = ([0u8; 12], [0u8; 12]);
    rng.fill(&mut tx1);
    rng.fill(&mut tx2);
    let turn_key = turn::Credentials {
        username: "1700000000:10.77.0.2".into(),
        password: "pw".into(),
    }
    .key("fuzz");
    let challenge = Builder::new(method::ALLOCATE, Class::Error, tx1)
        .error_code(401, "Unauthorized")
        .attr(attr::REALM, b"fuzz")
        .attr(attr::NONCE, b"n0")
        .finish();
    let allocated = Builder::new(method::ALLOCATE, Class::Success, tx2)
        .xor_addr(
            attr::XOR_RELAYED_ADDRESS,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 50000),
        )
        .xor_addr(
            attr::XOR_MAPPED_ADDRESS,
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 4), 40000),
        )
        .u32_attr(attr::LIFETIME, 600)
        .finish_with_integrity(&turn_key);
    let mut exchange = challenge.clone();
    exchange.extend_from_slice(&[0xFF, 0xFE, 0xFD, 0xFC]);
    exchange.extend_from_slice(&allocated);
    let mut channel_data = turn::channel::header(0x4000, 5).unwrap().to_vec();
    channel_data.extend_from_slice(b"hello");
    s.target(
        "turn",
        &[
            ("challenge", challenge),
            ("exchange", exchange),
            ("channel_data", channel_data),
        ],
    )?;

    let key = PeerKey::for_vip(CipherKind::Aes256Gcm, b"fuzz", Ipv4Addr::new(10, 77, 0, 2));
    // Fixed IVs keep the seeds the same from one run to the next.
    s.target(
        "crypto_open",
        &[
            (
                "sealed_heartbeat",
                key.seal_to_vec([1; 12], &Heartbeat::new(A, false).encode()),
            ),
            ("sealed_ping", key.seal_to_vec([2; 12], &small_ping)),
            ("envelope_only", key.seal_to_vec([3; 12], &[])),
        ],
    )?;

    let inner = tcp(9, ACK, &[], 16);
    let mut sdwan_packet = sdwan::build_pseudo_header(A, Ipv4Addr::new(10, 77, 0, 20), inner.len())
        .expect("fits")
        .to_vec();
    sdwan_packet.extend_from_slice(&inner);
    s.target(
        "ipv4_sdwan",
        &[("plain", inner.clone()), ("sdwan", sdwan_packet)],
    )?;

    // A TSO super-packet of three 100-byte segments and a USO one; the
    // checksum field holds only the pseudo-header sum, as the kernel leaves it.
    let tso = |mut p: Vec<u8>, proto: u8, csum_offset: u16| {
        let ihl = 20;
        let l4_len = p.len() - ihl;
        let field = ihl + usize::from(csum_offset);
        let pseudo = checksum::fold(checksum::pseudo_header(A, B, proto, l4_len));
        p[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        p
    };
    let super_tcp = tso(tcp(1000, ACK | PSH, &TS_OPTIONS, 250), 6, 16);
    let mut super_udp = tcp(0, 0, &[], 300);
    super_udp[9] = 17;
    let super_udp = tso(super_udp, 17, 6);
    let hdr = |gso_type: u8, gso_size: u16, csum_offset: u16| VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: 52,
        gso_size,
        csum_start: 20,
        csum_offset,
    };
    s.target(
        "offload_split",
        &[
            (
                "tso",
                with_vnet(hdr(gso::TCPV4, 100, 16), 29, 2048, &super_tcp),
            ),
            (
                "tso_ecn",
                with_vnet(hdr(gso::TCPV4 | gso::ECN, 64, 16), 0, 4096, &super_tcp),
            ),
            (
                "uso",
                with_vnet(hdr(gso::UDP_L4, 120, 6), 29, 2048, &super_udp),
            ),
            (
                "needs_csum",
                with_vnet(hdr(gso::NONE, 0, 16), 0, 0, &super_tcp),
            ),
        ],
    )?;

    let train: Vec<Vec<u8>> = (0..4u32)
        .map(|i| {
            tcp(
                1000 + i * 100,
                if i == 3 { ACK | PSH } else { ACK },
                &TS_OPTIONS,
                100,
            )
        })
        .collect();
    s.target(
        "coalesce",
        &[
            ("train", length_led(&train)),
            (
                "train_then_syn",
                length_led(&[
                    train[0].clone(),
                    train[1].clone(),
                    tcp(5, SYN, &SYN_OPTIONS, 0),
                ]),
            ),
        ],
    )?;

    let syn = tcp(1, SYN, &SYN_OPTIONS, 0);
    let clamp_seed = |limit: u16, p: &[u8]| [&limit.to_be_bytes()[..], p].concat();
    s.target(
        "mss_clamp",
        &[
            ("syn_clamped", clamp_seed(1360, &syn)),
            ("syn_below_limit", clamp_seed(1460, &syn)),
            (
                "syn_ack",
                clamp_seed(1200, &tcp(1, SYN | ACK, &SYN_OPTIONS, 0)),
            ),
            ("data", clamp_seed(1360, &train[0])),
        ],
    )?;

    s.target(
        "checksum",
        &[("tcp", train[0].clone()), ("odd", vec![0xff; 21])],
    )?;

    s.target(
        "config",
        &[
            ("server", b"listen = \"10.91.0.1:7443\"\npassword = \"secret\"\npool = \"10.77.0.0/24\"\nstun = \"10.91.0.1:3478\"\n\n[[route]]\ndst = \"192.168.20.0/24\"\nvia = \"10.77.0.20\"\n".to_vec()),
            ("client", b"server = \"ws://10.91.0.1:7443/ring\"\npassword = \"secret\"\ntun = \"rl0\"\naddress = \"10.77.0.20/24\"\nmtu = 1400\nstun = \"stun://10.91.0.1:3478\"\ndiscovery = 60\nroute_cost = 5\ncipher = \"chacha20-poly1305\"\n".to_vec()),
        ],
    )?;

    // Handshake target: a receiver byte (0: B, the responder; 1: A, the
    // initiator), then a message. A's genuine initiation to B, and a
    // response and a transport message of the right shapes.
    let t0 = std::time::Instant::now();
    let hs = |own, key: u8, peer, peer_key: u8| {
        let mut h = Handshakes::new(
            HandshakeConfig {
                own,
                key: NodeKey::from_private([key; 32]),
                psk: psk_from_password(PW),
                cipher: ringlink::proto::crypto::CipherKind::default(),
                timers: HandshakeTimers::default(),
                seed: 1,
                wall_clock: std::time::Duration::from_secs(TS as u64),
            },
            t0,
        );
        h.peer_key(peer, NodeKey::from_private([peer_key; 32]).public(), t0);
        h
    };
    let (mut a, mut b) = (hs(A, 1, B, 2), hs(B, 2, A, 1));
    a.handle_timeout(t0);
    let (_, init) = a.poll_transmit().expect("A initiates at once");
    let response = b
        .handle(&init, t0)
        .ok()
        .and_then(|h| h.reply)
        .expect("B answers A");
    let keepalive = a
        .handle(&response, t0)
        .ok()
        .and_then(|h| h.reply)
        .expect("A confirms");
    let to = |who: u8, m: &[u8]| [&[who][..], m].concat();
    s.target(
        "handshake",
        &[
            ("initiation", to(0, &init)),
            ("response", to(1, &response)),
            ("transport", to(0, &keepalive)),
        ],
    )?;

    // Records of the replay target: [op, value lo, value hi].
    s.target(
        "replay",
        &[
            (
                "in_order",
                (0..64u16).flat_map(|v| [0, (v & 1) as u8, 0]).collect(),
            ),
            (
                "reordered",
                [
                    [0u8, 200, 0],
                    [1, 3, 0],
                    [1, 3, 0],
                    [1, 0xc0, 0x1f],
                    [2, 130, 0],
                    [1, 0xbf, 0x1f],
                ]
                .concat(),
            ),
            (
                "limit",
                [[3u8, 0x90, 0], [3, 0x80, 0], [3, 0x70, 0], [0, 1, 0]].concat(),
            ),
        ],
    )
}

fn main() -> io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    write_all(&dir)?;
    println!("seeds written under {}", dir.display());
    Ok(())
}
