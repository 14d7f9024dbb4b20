//! The wide-accumulator Internet checksum against a 16-bit reference, and
//! the IPv4 header refresh.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::checksum;
use ringlink_fuzz::{reference_sum, sums_to_all_ones};

fuzz_target!(|data: &[u8]| {
    let whole = checksum::add(0, data);
    let want = reference_sum(&[data]);
    // 0 and 0xffff are both zero in ones' complement: either spelling
    // of it is right.
    let got = checksum::fold(whole);
    assert!(
        got == want || (got, want) == (0xffff, 0) || (got, want) == (0, 0xffff),
        "{got:#x} vs {want:#x}"
    );

    // Summing in two parts split at an even offset gives the same sum.
    let cut = usize::from(*data.first().unwrap_or(&0)).min(data.len()) & !1;
    let parts = checksum::add(checksum::add(0, &data[..cut]), &data[cut..]);
    assert_eq!(checksum::fold(parts), got);

    // A refreshed header of any legal length verifies.
    if data.len() >= 20 {
        let ihl = (usize::from(data[0] & 0x0f) * 4).clamp(20, data.len().min(60));
        let mut header = data[..ihl].to_vec();
        checksum::refresh_ipv4_header(&mut header, ihl);
        assert!(sums_to_all_ones(&[&header]));
    }
});
