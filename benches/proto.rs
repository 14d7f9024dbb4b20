//! Codec and AEAD micro-benchmarks: what one packet costs on the direct path.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlink::proto::crypto::{CipherKind, IvSequence, PeerKey, ENVELOPE_LEN};
use ringlink::proto::udp::{Heartbeat, PeerMessage};
use ringlink::proto::ws::{encode_forward, WsMessage};

const SIZES: [usize; 3] = [64, 576, 1400];

fn seal_open(c: &mut Criterion) {
    for (name, kind) in [
        ("aes256gcm", CipherKind::Aes256Gcm),
        ("chacha20poly1305", CipherKind::ChaCha20Poly1305),
    ] {
        let key = PeerKey::for_vip(kind, b"bench", Ipv4Addr::new(10, 77, 0, 2));
        let mut group = c.benchmark_group(format!("ring/{name}"));
        for size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let mut ivs = IvSequence::new();
            let mut buf = vec![0u8; ENVELOPE_LEN + size];
            group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
                b.iter(|| {
                    key.seal_in_place(ivs.next_iv(), black_box(&mut buf))
                        .unwrap()
                })
            });
            let sealed = key.seal_to_vec(ivs.next_iv(), &vec![7u8; size]);
            let mut work = sealed.clone();
            group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    key.open_in_place(black_box(&mut work)).unwrap().len()
                })
            });
        }
        group.finish();
    }
}

fn rustcrypto(c: &mut Criterion) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let aes = aes_gcm::Aes256Gcm::new_from_slice(&[1u8; 32]).unwrap();
    let chacha = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&[1u8; 32]).unwrap();
    let mut group = c.benchmark_group("rustcrypto");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];
        let nonce = [3u8; 12];
        group.bench_with_input(BenchmarkId::new("aes256gcm/seal", size), &size, |b, _| {
            b.iter(|| {
                aes.encrypt_in_place_detached((&nonce).into(), b"", black_box(&mut buf))
                    .unwrap()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("chacha20poly1305/seal", size),
            &size,
            |b, _| {
                b.iter(|| {
                    chacha
                        .encrypt_in_place_detached((&nonce).into(), b"", black_box(&mut buf))
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let packet = vec![0x45u8; 1400];
    let mut frame = Vec::with_capacity(1501);
    c.bench_function("ws/encode_forward_1400", |b| {
        b.iter(|| encode_forward(black_box(&packet), &mut frame))
    });
    encode_forward(&packet, &mut frame);
    c.bench_function("ws/decode_forward_1400", |b| {
        b.iter(|| WsMessage::decode(black_box(&frame)).unwrap())
    });
    let hb = Heartbeat::new(Ipv4Addr::new(10, 77, 0, 2), true).encode();
    c.bench_function("udp/decode_heartbeat", |b| {
        b.iter(|| PeerMessage::decode(black_box(&hb)).unwrap())
    });
}

criterion_group!(benches, seal_open, rustcrypto, codecs);
criterion_main!(benches);
