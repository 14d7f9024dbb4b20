//! What the anti-replay window costs per received datagram.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringlink::session::replay::{ReplayWindow, WINDOW};

/// Counters as a multi-path receiver sees them: blocks of 64 in which each
/// pair arrives swapped and every eighth counter arrives a block late.
fn reordered(blocks: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity((blocks * 64) as usize);
    let mut late = Vec::new();
    for block in 0..blocks {
        out.append(&mut late);
        for n in (block * 64..block * 64 + 64).step_by(2) {
            for c in [n + 1, n] {
                if c % 8 == 0 {
                    late.push(c);
                } else {
                    out.push(c);
                }
            }
        }
    }
    out.append(&mut late);
    out
}

fn accept(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(1));

    let mut window = ReplayWindow::new();
    let mut counter = 0u64;
    group.bench_function("accept/in_order", |b| {
        b.iter(|| {
            counter += 1;
            window.accept(black_box(counter))
        })
    });

    let order = reordered(WINDOW / 64);
    let span = order.len() as u64;
    let mut window = ReplayWindow::new();
    let (mut i, mut base) = (0usize, 0u64);
    group.bench_function("accept/out_of_order", |b| {
        b.iter(|| {
            let r = window.accept(black_box(base + order[i]));
            i += 1;
            if i == order.len() {
                i = 0;
                base += span;
            }
            r
        })
    });
    group.finish();
}

criterion_group!(benches, accept);
criterion_main!(benches);
