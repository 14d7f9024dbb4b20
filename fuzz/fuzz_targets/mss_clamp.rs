//! The MSS clamp rewrites SYNs in place. Input: the limit (2 bytes), then
//! an IPv4 packet. A rewrite must keep a right TCP checksum right, lower
//! the MSS to the limit, and leave nothing for a second pass to do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::mss::clamp;
use ringlink_fuzz::{checksums_valid, fix_checksums};

/// The TCP segment of `packet` as the clamp sees it, if it is whole.
fn tcp_ok(packet: &[u8]) -> Option<bool> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    (ihl >= 20 && total == packet.len() && total >= ihl + 20).then(|| checksums_valid(packet, ihl))
}

fuzz_target!(|data: &[u8]| {
    let Some((limit, packet)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_mss = u16::from_be_bytes(*limit);
    // The clamp never reads checksums, only updates one: starting from
    // right ones lets the check below see every rewrite.
    let mut before = packet.to_vec();
    fix_checksums(&mut before);
    let mut p = before.clone();
    let was_ok = tcp_ok(&p);
    if !clamp(&mut p, max_mss) {
        assert_eq!(p, before, "unchanged packets stay byte for byte");
        return;
    }
    assert_eq!(p.len(), before.len());
    let changed: Vec<usize> = (0..p.len()).filter(|&i| p[i] != before[i]).collect();
    assert!(
        changed.len() <= 4,
        "only the MSS and checksum change: {changed:?}"
    );
    if was_ok == Some(true) {
        assert_eq!(tcp_ok(&p), Some(true), "checksum broken by the rewrite");
    }
    assert!(
        !clamp(&mut p.clone(), max_mss),
        "a second clamp changed the packet again"
    );
});
