//! What the dataplane does per batch apart from I/O: the next-hop lookup in
//! the published snapshot, and sealing a batch of packets in place.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlink::control::publish;
use ringlink::dataplane::{PeerEntry, Snapshot};
use ringlink::proto::crypto::{CipherKind, IvSequence, PeerKey, ENVELOPE_LEN};
use ringlink::route::{NextHopTable, SubnetRoute, SubnetRoutes};

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a4d_0000 + i)
}

/// A gateway's view of a large network: `peers` direct peers, a tenth of
/// the destinations routed through another peer, and 100 subnet routes,
/// compiled as the control thread publishes it.
fn snapshot(peers: u32) -> Snapshot {
    let own = vip(1);
    let key = Arc::new(PeerKey::for_vip(CipherKind::Aes256Gcm, b"bench", own));
    let direct: HashMap<_, _> = (2..peers + 2)
        .map(|i| {
            let entry = PeerEntry {
                endpoint: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, (i % 250) as u8), 40000),
                socket: None,
                channel: None,
                stream: None,
                key: key.clone(),
                session: None,
                counters: Default::default(),
            };
            (vip(i), entry)
        })
        .collect();
    let routes = (peers + 2..peers + 2 + peers / 10).map(|i| (vip(i), vip(2)));
    let mut subnets = SubnetRoutes::new(own);
    for i in 0..100u32 {
        let dst = Ipv4Addr::from(0xc0a8_0000 + (i << 8));
        subnets.push(
            SubnetRoute::new(dst, Ipv4Addr::new(255, 255, 255, 0), vip(2 + i % peers)).unwrap(),
        );
    }
    let rule = NextHopTable::new(routes, direct.keys().copied())
        .with_own_vip(own)
        .with_subnets(subnets);
    publish::compile(1, own, &rule, direct, &HashMap::new())
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot/route_tun");
    for peers in [16u32, 1024] {
        let snap = snapshot(peers);
        let dsts: Vec<Ipv4Addr> = (0..64).map(|i| vip(2 + (i * 7) % peers)).collect();
        group.throughput(Throughput::Elements(dsts.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("direct_peer_x64", peers),
            &dsts,
            |b, dsts| {
                b.iter(|| {
                    dsts.iter()
                        .filter(|d| snap.route_tun(**d).peer.is_some())
                        .count()
                })
            },
        );
        let lan = Ipv4Addr::new(192, 168, 42, 7);
        group.bench_with_input(BenchmarkId::new("subnet_x1", peers), &lan, |b, lan| {
            b.iter(|| snap.route_tun(black_box(*lan)))
        });
    }
    group.finish();
}

fn seal_batch(c: &mut Criterion) {
    let key = PeerKey::for_vip(CipherKind::Aes256Gcm, b"bench", vip(2));
    let mut ivs = IvSequence::new();
    let mut group = c.benchmark_group("seal_batch_64");
    for size in [576usize, 1400] {
        let mut bufs: Vec<Vec<u8>> = (0..64)
            .map(|_| vec![0x45u8; ENVELOPE_LEN + 1 + size])
            .collect();
        group.throughput(Throughput::Bytes((64 * size) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                for buf in bufs.iter_mut() {
                    key.seal_in_place(ivs.next_iv(), black_box(buf)).unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, seal_batch);
criterion_main!(benches);
