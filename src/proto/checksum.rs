//! The Internet checksum (RFC 1071) over byte slices.
//!
//! Sums are kept unfolded in a `u64` while they are built up, so a whole
//! 64 KiB segment costs one pass of 32-bit big-endian adds that the compiler
//! vectorises; folding to 16 bits happens once at the end. Ones'-complement
//! addition is associative at any width that is a multiple of 16 bits, which
//! is what makes the wide accumulator give the same answer.

use std::net::Ipv4Addr;

/// Add the big-endian 16-bit words of `data` to `acc` (an odd trailing byte
/// is padded with zero, as RFC 1071 says). Only valid for `data` starting
/// at an even offset of the checksummed range.
pub fn add(acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut sum = acc;
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Fold a wide sum to 16 bits with end-around carries.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value for a range whose words sum to `sum`.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// Sum of the TCP/UDP pseudo-header for IPv4.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: usize) -> u64 {
    let sum = add(add(0, &src.octets()), &dst.octets());
    sum + u64::from(protocol) + l4_len as u64
}

/// RFC 791 header checksum; the checksum field must be zero on input.
pub fn ipv4_header(header: &[u8]) -> u16 {
    finish(add(0, header))
}

/// Recompute the checksum of the IPv4 header at the start of `packet`
/// (`ihl` bytes long) in place.
pub fn refresh_ipv4_header(packet: &mut [u8], ihl: usize) {
    packet[10..12].fill(0);
    let c = ipv4_header(&packet[..ihl]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious 16-bit implementation, to check the wide one against.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn matches_the_16_bit_definition_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..4099u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in (0..64).chain([1399, 1400, 4097, 4098, 4099]) {
            for start in [0usize, 2] {
                let d = &data[start..start + len.min(data.len() - start)];
                assert_eq!(finish(add(0, d)), reference(d), "len {len} start {start}");
            }
        }
        // All ones: the carries must wrap all the way round.
        let ones = vec![0xffu8; 65_535];
        assert_eq!(finish(add(0, &ones)), reference(&ones));
    }

    #[test]
    fn split_sums_equal_one_sum_when_split_on_even_offsets() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
        let whole = finish(add(0, &data));
        let parts = finish(add(
            add(add(0, &data[..20]), &data[20..1022]),
            &data[1022..],
        ));
        assert_eq!(whole, parts);
    }

    #[test]
    fn rfc1071_example_and_header_check() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &d)), 0xddf2);
        let mut h = [
            0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 64, 1, 0xff, 0xff, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        refresh_ipv4_header(&mut h, 20);
        assert_eq!(finish(add(0, &h)), 0, "a valid header sums to zero");
    }

    #[test]
    fn pseudo_header_counts_addresses_protocol_and_length() {
        let s = pseudo_header(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 6, 100);
        assert_eq!(fold(s), 0x0102 + 0x0304 + 0x0506 + 0x0708 + 6 + 100);
    }
}
