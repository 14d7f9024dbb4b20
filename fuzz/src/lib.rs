//! Helpers the fuzz targets share: independent reference computations to
//! check the crate's packet code against.

/// Whether `words` sum to 0xffff in ones' complement arithmetic, i.e. the
/// checksum they contain is right. Written 16 bits at a time, the way
/// RFC 1071 states it, so it shares nothing with `proto::checksum`.
pub fn sums_to_all_ones(parts: &[&[u8]]) -> bool {
    reference_sum(parts) == 0xffff
}

/// Ones' complement sum of the 16-bit big-endian words of the
/// concatenation of `parts` (an odd final byte padded with zero).
pub fn reference_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 pseudo-header a TCP or UDP checksum covers.
pub fn pseudo_header(ip_header: &[u8], l4_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&ip_header[12..20]);
    p[9] = ip_header[9];
    p[10..].copy_from_slice(&(l4_len as u16).to_be_bytes());
    p
}

/// Whether the IPv4 header and the TCP/UDP checksum of `packet` (headers
/// `ihl` long) are both right.
pub fn checksums_valid(packet: &[u8], ihl: usize) -> bool {
    let (ip, l4) = packet.split_at(ihl);
    sums_to_all_ones(&[ip]) && sums_to_all_ones(&[&pseudo_header(ip, l4.len()), l4])
}

/// Writes right IPv4 header and TCP/UDP checksums into `packet` if it is
/// long enough to hold them, so a target can get past checksum checks
/// that a fuzzer would almost never satisfy by mutation.
pub fn fix_checksums(packet: &mut [u8]) {
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    let field = match packet.get(9) {
        Some(6) => 16,
        Some(17) => 6,
        _ => return,
    };
    if ihl < 20 || packet.len() < ihl + field + 2 {
        return;
    }
    packet[10..12].fill(0);
    let ip = !reference_sum(&[&packet[..ihl]]);
    packet[10..12].copy_from_slice(&ip.to_be_bytes());
    let (head, l4) = packet.split_at_mut(ihl);
    l4[field..field + 2].fill(0);
    let sum = !reference_sum(&[&pseudo_header(head, l4.len()), l4]);
    l4[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}
