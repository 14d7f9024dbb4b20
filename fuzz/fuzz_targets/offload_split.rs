//! Splitting TSO/USO super-packets in place. Input: a virtio header, one
//! byte of per-packet prefix, two bytes of spare buffer, then the packet.
//! Every packet a split returns must lie inside the buffer and, when it was
//! cut from a super-packet, carry its own length and right checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::dataplane::offload::{gso, split, VnetHdr, VNET_HDR_LEN};
use ringlink_fuzz::checksums_valid;

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let Some(&[prefix, spare_lo, spare_hi]) = data.get(VNET_HDR_LEN..VNET_HDR_LEN + 3) else {
        return;
    };
    let packet = &data[VNET_HDR_LEN + 3..];
    let mut written = [0u8; VNET_HDR_LEN];
    hdr.write(&mut written);
    assert_eq!(written[..], data[..VNET_HDR_LEN]);

    // Room for a few thousand segments at most, as a 64 KiB read would need.
    let spare = usize::from(u16::from_le_bytes([spare_lo, spare_hi]));
    let at = usize::from(prefix);
    let mut buf = vec![0u8; at + packet.len() + spare];
    buf[at..at + packet.len()].copy_from_slice(packet);
    let Ok(segs) = split(&mut buf, at, packet.len(), &hdr, usize::from(prefix)) else {
        return;
    };
    assert!(segs.count >= 1);
    let segmented = hdr.gso_type & !gso::ECN != gso::NONE;
    for k in 0..segs.count {
        let range = segs.packet(k);
        let pkt = &buf[at + range.start..at + range.end];
        if segmented && pkt.len() <= usize::from(u16::MAX) {
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            assert_eq!(total, pkt.len(), "segment {k}: IPv4 total length");
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            assert!(checksums_valid(pkt, ihl), "segment {k}: checksums");
        }
    }
});
