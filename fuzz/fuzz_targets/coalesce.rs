//! Coalescing received TCP segments into one TSO write, as a worker does
//! it: each packet joins the open run or starts a new one, and every run
//! is finished in place. Input: a flag byte, then packets, each led by its
//! length in 16-bit words. With the flag's low bit set, every packet gets
//! right checksums first, so mutations reach the merge rules behind them.
#![no_main]

use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use ringlink::dataplane::coalesce::Run;
use ringlink::dataplane::offload::{gso, VnetHdr};
use ringlink_fuzz::fix_checksums;

fn packets(data: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 1;
    while let Some(&len) = data.get(i) {
        let start = i + 1;
        let end = (start + usize::from(len) * 2).min(data.len());
        out.push(start..end);
        i = end;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(&flag) = data.first() else {
        return;
    };
    let mut buf = data.to_vec();
    let ranges = packets(data);
    if flag & 1 != 0 {
        for p in &ranges {
            fix_checksums(&mut buf[p.clone()]);
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    for p in ranges {
        let joined = runs.last_mut().and_then(|run| run.append(&buf, p.clone()));
        match joined {
            Some(payload) => assert!(payload.start >= p.start && payload.end == p.end),
            None => runs.push(Run::start(&buf, p)),
        }
    }
    for run in &runs {
        let first = run.first();
        let hdr: VnetHdr = run.finish(&mut buf);
        if run.segments() == 1 {
            assert_eq!(hdr, VnetHdr::default());
            assert_eq!(run.bytes(), first.len());
            continue;
        }
        assert_eq!(hdr.gso_type & !gso::ECN, gso::TCPV4);
        assert!(hdr.gso_size > 0);
        let total = u16::from_be_bytes([buf[first.start + 2], buf[first.start + 3]]);
        assert_eq!(usize::from(total), run.bytes(), "super-packet total length");
    }
});
