//! TCP MSS clamping for traffic that crosses the tunnel.
//!
//! A LAN host behind a gateway announces an MSS for its own 1500-byte link;
//! segments that size do not fit the tunnel, and path MTU discovery through
//! site firewalls is often broken. Rewriting the MSS option of SYNs as they
//! enter the tunnel keeps TCP segments small enough from the start; the
//! limit comes from `proto::mtu::mss_for_mtu`.

use super::ipv4::HEADER_LEN;

const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Lowers the MSS option of a TCP SYN in `packet` (an IPv4 packet) to at
/// most `max_mss`, fixing the TCP checksum incrementally. Returns true if
/// the packet was changed. Anything that is not a well-formed unfragmented
/// TCP SYN is left alone.
pub fn clamp(packet: &mut [u8], max_mss: u16) -> bool {
    if packet.len() < HEADER_LEN || packet[0] >> 4 != 4 || packet[9] != IPPROTO_TCP {
        return false;
    }
    // Only the first fragment carries the TCP header.
    let frag_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if frag_offset != 0 {
        return false;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    if ihl < HEADER_LEN || total < ihl + 20 {
        return false;
    }
    let tcp = &mut packet[ihl..total];
    if tcp[13] & TCP_SYN == 0 {
        return false;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < 20 || data_off > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < data_off {
        match tcp[i] {
            OPT_END => break,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > data_off {
                    break;
                }
                if kind == OPT_MSS && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    // After an odd-length option (window scale is 3 bytes)
                    // the field straddles two 16-bit checksum words, where
                    // its bytes count swapped.
                    let (old, new) = if i % 2 == 0 {
                        (old, max_mss)
                    } else {
                        (old.swap_bytes(), max_mss.swap_bytes())
                    };
                    let sum = u16::from_be_bytes([tcp[16], tcp[17]]);
                    tcp[16..18].copy_from_slice(&adjust_checksum(sum, old, new).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// RFC 1624 incremental update: HC' = ~(~HC + ~m + m').
fn adjust_checksum(sum: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::checksum;
    use std::net::Ipv4Addr;

    /// Full TCP checksum over the pseudo-header, for checking the
    /// incremental update against.
    fn tcp_checksum(packet: &[u8]) -> u16 {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let mut tcp = packet[ihl..].to_vec();
        tcp[16..18].fill(0);
        let addr = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
        let sum = checksum::pseudo_header(addr(12), addr(16), IPPROTO_TCP, tcp.len());
        checksum::finish(checksum::add(sum, &tcp))
    }

    fn syn(mss: u16, flags: u8) -> Vec<u8> {
        syn_with_options(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8], flags)
    }

    /// A TCP segment with `options` (a multiple of 4 bytes) and a right
    /// checksum.
    fn syn_with_options(options: &[u8], flags: u8) -> Vec<u8> {
        let len = 20 + 20 + options.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[192, 168, 20, 5]);
        p[16..20].copy_from_slice(&[192, 168, 30, 7]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = ((20 + options.len()) as u8 / 4) << 4;
        t[13] = flags;
        t[20..].copy_from_slice(options);
        let c = tcp_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn clamps_syn_and_keeps_checksum_valid() {
        for flags in [TCP_SYN, TCP_SYN | 0x10] {
            let mut p = syn(1460, flags);
            assert!(clamp(&mut p, 1360));
            assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1360);
            assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
        }
    }

    /// Found by fuzz/mss_clamp: window scale (3 bytes) without NOP padding
    /// puts the MSS value at an odd offset, and the incremental update
    /// used to break the checksum there.
    #[test]
    fn clamps_mss_at_an_odd_offset_and_keeps_checksum_valid() {
        let wscale_then_mss = [3, 3, 7, OPT_MSS, 4, 0x05, 0xb4, OPT_END];
        let mut p = syn_with_options(&wscale_then_mss, TCP_SYN);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
        assert!(clamp(&mut p, 1360));
        assert_eq!(u16::from_be_bytes([p[45], p[46]]), 1360);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
    }

    #[test]
    fn leaves_small_mss_non_syn_and_garbage_alone() {
        let mut small = syn(1200, TCP_SYN);
        let before = small.clone();
        assert!(!clamp(&mut small, 1360));
        assert_eq!(small, before);
        let mut ack = syn(1460, 0x10);
        assert!(!clamp(&mut ack, 1360));
        let mut truncated = syn(1460, TCP_SYN);
        truncated.truncate(41);
        truncated[2..4].copy_from_slice(&41u16.to_be_bytes());
        assert!(!clamp(&mut truncated, 1360));
        let mut bad_len = syn(1460, TCP_SYN);
        bad_len[21 + 20] = 0; // MSS option length 0
        assert!(!clamp(&mut bad_len, 1360));
        for n in 0..44 {
            let mut cut = syn(1460, TCP_SYN)[..n].to_vec();
            let _ = clamp(&mut cut, 1360);
        }
        let mut udp = syn(1460, TCP_SYN);
        udp[9] = 17;
        assert!(!clamp(&mut udp, 1360));
    }
}
