//! Sessions between ringlink nodes: what sealing one packet with a session
//! costs next to Candy's envelope under the same cipher (counter nonce and
//! replay window against a random IV), and how many handshakes one core
//! completes per second.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlink::proto::crypto::{CipherKind, IvSequence, PeerKey, ENVELOPE_LEN};
use ringlink::session::handshake::{psk_from_password, Handled, HandshakeConfig, Handshakes};
use ringlink::session::keys::NodeKey;
use ringlink::session::timers::HandshakeTimers;
use ringlink::session::transport::{Role, Session, SessionKeys};

const SIZES: [usize; 2] = [576, 1400];
const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

fn pair() -> (Session, Session) {
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let now = Instant::now();
    let aes = CipherKind::Aes256Gcm;
    (
        Session::new(
            B,
            (1, 2),
            Role::Initiator,
            aes,
            SessionKeys {
                send: &k1,
                recv: &k2,
            },
            now,
        ),
        Session::new(
            A,
            (2, 1),
            Role::Responder,
            aes,
            SessionKeys {
                send: &k2,
                recv: &k1,
            },
            now,
        ),
    )
}

fn seal_and_open(c: &mut Criterion) {
    let key = PeerKey::for_vip(CipherKind::Aes256Gcm, b"bench", B);
    let (ours, theirs) = pair();
    let mut group = c.benchmark_group("aes256gcm");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; ENVELOPE_LEN + size];
        let end = buf.len();
        let mut ivs = IvSequence::new();
        group.bench_with_input(BenchmarkId::new("envelope seal", size), &size, |b, _| {
            b.iter(|| {
                key.seal_in_place(ivs.next_iv(), black_box(&mut buf))
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("session seal", size), &size, |b, _| {
            b.iter(|| {
                ours.seal_datagram(black_box(&mut buf), ENVELOPE_LEN..end)
                    .unwrap()
            })
        });
        let sealed = key.seal_to_vec(ivs.next_iv(), &vec![7u8; size]);
        let mut work = sealed.clone();
        group.bench_with_input(BenchmarkId::new("envelope open", size), &size, |b, _| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                key.open_in_place(black_box(&mut work)).unwrap().len()
            })
        });
        // Each iteration opens a fresh counter, in order, as a flow does.
        group.bench_with_input(
            BenchmarkId::new("session seal+open", size),
            &size,
            |b, _| {
                b.iter(|| {
                    let d = ours.seal_datagram(&mut buf, ENVELOPE_LEN..end).unwrap();
                    theirs.open_datagram(black_box(&mut buf[d])).unwrap()
                })
            },
        );
    }
    group.finish();
}

fn node(own: Ipv4Addr, key: &NodeKey, now: Instant) -> Handshakes {
    Handshakes::new(
        HandshakeConfig {
            own,
            key: key.clone(),
            psk: psk_from_password(b"bench"),
            cipher: CipherKind::Aes256Gcm,
            timers: HandshakeTimers::default(),
            seed: u64::from(own.octets()[3]),
            wall_clock: Duration::from_secs(1_765_000_000),
        },
        now,
    )
}

/// One complete handshake: A's initiation, B's response, A's confirmation
/// opened by B. Both ends' work, so one core's rate is 1 / time. Each
/// iteration starts from two fresh nodes (not timed), as a first handshake.
fn handshakes(c: &mut Criterion) {
    let (ka, kb) = (
        NodeKey::from_private([1; 32]),
        NodeKey::from_private([2; 32]),
    );
    c.bench_function("handshake/complete", |bench| {
        bench.iter_batched(
            || {
                let now = Instant::now();
                let mut a = node(A, &ka, now);
                let mut b = node(B, &kb, now);
                a.peer_key(B, kb.public(), now);
                b.peer_key(A, ka.public(), now);
                (a, b, now)
            },
            |(mut a, mut b, now)| {
                a.handle_timeout(now);
                let (_, init) = a.poll_transmit().expect("initiation");
                let Handled { reply, .. } = b.handle(&init, now).expect("answered");
                let response = reply.expect("response");
                let Handled { reply, .. } = a.handle(&response, now).expect("session");
                b.handle(&reply.expect("confirmation"), now)
                    .expect("confirmed")
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, seal_and_open, handshakes);
criterion_main!(benches);
