//! The replay window against the plainest model of what it promises: a
//! set of every counter accepted and the highest one. The model accepts a
//! counter below the message limit that it has not seen and that is either
//! above the highest or less than WINDOW below it.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use ringlink::session::replay::{ReplayWindow, REJECT_AFTER_MESSAGES, WINDOW};

struct Model {
    seen: HashSet<u64>,
    highest: Option<u64>,
}

impl Model {
    fn accepts(&self, n: u64) -> bool {
        n < REJECT_AFTER_MESSAGES
            && !self.seen.contains(&n)
            && self.highest.is_none_or(|h| n > h || h - n < WINDOW)
    }
}

/// Each 3-byte record names a counter relative to where the window is, so
/// the fuzzer reaches word edges, ring wraps and the limit, not just
/// random 64-bit values that are all far ahead.
fn counter(op: u8, v: u16, highest: u64) -> u64 {
    let v = u64::from(v);
    match op % 4 {
        0 => highest.saturating_add(v),
        1 => highest.saturating_sub(v),
        2 => highest.saturating_add(v * 64),
        _ => REJECT_AFTER_MESSAGES.wrapping_sub(v >> 4).wrapping_add(8),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut window = ReplayWindow::new();
    let mut model = Model {
        seen: HashSet::new(),
        highest: None,
    };
    for rec in data.chunks_exact(3) {
        let n = counter(
            rec[0],
            u16::from_le_bytes([rec[1], rec[2]]),
            model.highest.unwrap_or(0),
        );
        let expected = model.accepts(n);
        assert_eq!(window.check(n).is_ok(), expected, "check({n})");
        if rec[0] & 0x80 != 0 {
            // Only checked, as for a datagram that then fails to open.
            continue;
        }
        assert_eq!(window.accept(n).is_ok(), expected, "accept({n})");
        if expected {
            model.seen.insert(n);
            model.highest = model.highest.max(Some(n));
        }
        assert_eq!(window.highest(), model.highest);
    }
});
