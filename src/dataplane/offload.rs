//! TUN offloads on the way out of the kernel: the `virtio_net_hdr` in front
//! of every packet, checksums the kernel left for us to finish, and
//! splitting TSO/USO super-packets into packets that fit the tunnel.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD`, the kernel hands one read of up
//! to 64 KiB for what would otherwise be ~45 reads: one TCP (or UDP) header
//! and a run of payload to be cut into `gso_size` pieces. The pieces are
//! laid out where the caller will seal and send them, every `stride` bytes
//! with `prefix` bytes free in front of each, so a run of equal datagrams
//! sits back to back in one buffer and leaves in one UDP GSO send.
//!
//! Splitting happens in place, last piece first: piece k moves to a higher
//! address than it was read at, and everything below the piece being
//! written still holds input that has not been used yet.

use std::net::Ipv4Addr;
use std::ops::Range;

use crate::proto::checksum;

/// Size of `struct virtio_net_hdr` (no mergeable-buffer field), the TUN
/// default for `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` holds only the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;

/// `gso_type` values (ECN is a flag bit on top).
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP_L4: u8 = 5;
    pub const ECN: u8 = 0x80;
}

/// Longest IPv4 + TCP header (both with the most options).
pub const MAX_HEADERS: usize = 60 + 60;

pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`, little-endian on the wire (TUN uses the host's
/// order unless told otherwise, and every host we run on is little-endian).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8; VNET_HDR_LEN]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("offload packet of {len} bytes is shorter than its headers")]
    Truncated { len: usize },
    #[error("gso type {0:#x} is not one the device was asked for")]
    UnsupportedGso(u8),
    #[error("offload packet is not a plain IPv4 {expected} packet")]
    WrongPacket { expected: &'static str },
    #[error("gso_size of 0")]
    ZeroGsoSize,
    #[error("checksum at {start}+{offset} lies outside a {len}-byte packet")]
    BadChecksumRange { start: u16, offset: u16, len: usize },
    #[error("splitting needs {need} bytes of buffer, {have} available")]
    NoRoom { need: usize, have: usize },
}

/// Where the packets of a split lie, relative to the first one's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    /// Distance between the starts of consecutive packets.
    pub stride: usize,
    /// Length of every packet but the last.
    pub len: usize,
    pub last_len: usize,
}

impl Segments {
    pub fn single(len: usize) -> Segments {
        Segments {
            count: 1,
            stride: len,
            len,
            last_len: len,
        }
    }

    /// Packet `k`, as a range relative to where packet 0 starts.
    pub fn packet(&self, k: usize) -> Range<usize> {
        let start = k * self.stride;
        let len = if k + 1 == self.count {
            self.last_len
        } else {
            self.len
        };
        start..start + len
    }
}

/// Turn the packet at `buf[at..at + len]`, which arrived with `hdr`, into
/// ordinary IPv4 packets with complete checksums. A packet without GSO
/// stays where it is; a super-packet is split into packets `prefix + its
/// headers + gso_size` bytes apart, the first where the input started.
pub fn split(
    buf: &mut [u8],
    at: usize,
    len: usize,
    hdr: &VnetHdr,
    prefix: usize,
) -> Result<Segments, OffloadError> {
    let end = at
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or(OffloadError::NoRoom {
            need: at.saturating_add(len),
            have: buf.len(),
        })?;
    match hdr.gso_type & !gso::ECN {
        gso::NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(&mut buf[at..end], hdr.csum_start, hdr.csum_offset)?;
            }
            Ok(Segments::single(len))
        }
        gso::TCPV4 => segment(buf, at, len, hdr.gso_size, prefix, IPPROTO_TCP),
        gso::UDP_L4 => segment(buf, at, len, hdr.gso_size, prefix, IPPROTO_UDP),
        other => Err(OffloadError::UnsupportedGso(other)),
    }
}

/// Finish a partial checksum: the field holds the pseudo-header sum and the
/// rest of the range from `start` has not been summed yet.
fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    let (s, o) = (usize::from(start), usize::from(offset));
    let field = s + o;
    if s % 2 != 0 || field + 2 > packet.len() {
        return Err(OffloadError::BadChecksumRange {
            start,
            offset,
            len: packet.len(),
        });
    }
    let c = checksum::finish(checksum::add(0, &packet[s..]));
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The IPv4 and transport header lengths of a super-packet.
fn header_lengths(packet: &[u8], protocol: u8) -> Result<(usize, usize), OffloadError> {
    let expected = if protocol == IPPROTO_TCP {
        "TCP"
    } else {
        "UDP"
    };
    let wrong = OffloadError::WrongPacket { expected };
    let truncated = OffloadError::Truncated { len: packet.len() };
    let first = *packet.first().ok_or(truncated)?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return Err(wrong);
    }
    if packet.len() < ihl + 20 {
        return Err(truncated);
    }
    // A fragment cannot be segmented: its transport header is elsewhere.
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if packet[9] != protocol || frag & 0x3fff != 0 {
        return Err(wrong);
    }
    let (l4, min) = if protocol == IPPROTO_TCP {
        (usize::from(packet[ihl + 12] >> 4) * 4, 20)
    } else {
        (8, 8)
    };
    if l4 < min {
        return Err(wrong);
    }
    if ihl + l4 > packet.len() {
        return Err(truncated);
    }
    Ok((ihl, l4))
}

fn segment(
    buf: &mut [u8],
    at: usize,
    len: usize,
    gso_size: u16,
    prefix: usize,
    protocol: u8,
) -> Result<Segments, OffloadError> {
    let (ihl, l4) = header_lengths(&buf[at..at + len], protocol)?;
    let headers = ihl + l4;
    let g = usize::from(gso_size);
    if g == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let payload = len - headers;
    let count = payload.div_ceil(g).max(1);
    let last_payload = payload - (count - 1) * g;
    let segs = Segments {
        count,
        stride: prefix + headers + g,
        len: headers + g,
        last_len: headers + last_payload,
    };
    let need = at + segs.packet(count - 1).end;
    if need > buf.len() {
        return Err(OffloadError::NoRoom {
            need,
            have: buf.len(),
        });
    }
    let mut template = [0u8; MAX_HEADERS];
    template[..headers].copy_from_slice(&buf[at..at + headers]);
    let fields = Template::read(&template[..headers], ihl, protocol);
    for k in (0..count).rev() {
        let dst = at + segs.packet(k).start;
        let this_payload = if k + 1 == count { last_payload } else { g };
        if k > 0 {
            let src = at + headers + k * g;
            buf.copy_within(src..src + this_payload, dst + headers);
            buf[dst..dst + headers].copy_from_slice(&template[..headers]);
        }
        let pkt = &mut buf[dst..dst + headers + this_payload];
        fields.apply(pkt, k, count, g);
    }
    Ok(segs)
}

/// The per-segment fields of a super-packet's header.
struct Template {
    ihl: usize,
    protocol: u8,
    id: u16,
    seq: u32,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

impl Template {
    fn read(h: &[u8], ihl: usize, protocol: u8) -> Template {
        let addr = |i: usize| Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]);
        Template {
            ihl,
            protocol,
            id: u16::from_be_bytes([h[4], h[5]]),
            seq: u32::from_be_bytes([h[ihl + 4], h[ihl + 5], h[ihl + 6], h[ihl + 7]]),
            src: addr(12),
            dst: addr(16),
        }
    }

    /// Make `pkt` (headers copied from the template, payload in place) the
    /// `k`-th of `count` segments.
    fn apply(&self, pkt: &mut [u8], k: usize, count: usize, gso_size: usize) {
        let ihl = self.ihl;
        let total = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt[4..6].copy_from_slice(&self.id.wrapping_add(k as u16).to_be_bytes());
        checksum::refresh_ipv4_header(pkt, ihl);
        let l4_len = pkt.len() - ihl;
        let l4 = &mut pkt[ihl..];
        let field = if self.protocol == IPPROTO_TCP {
            let seq = self.seq.wrapping_add((k * gso_size) as u32);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            if k + 1 != count {
                l4[13] &= !(TCP_FIN | TCP_PSH);
            }
            if k != 0 {
                l4[13] &= !TCP_CWR;
            }
            16
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            6
        };
        l4[field..field + 2].fill(0);
        let sum = checksum::pseudo_header(self.src, self.dst, self.protocol, l4_len);
        let mut c = checksum::finish(checksum::add(sum, l4));
        if self.protocol == IPPROTO_UDP && c == 0 {
            // Zero means "no checksum" for UDP.
            c = 0xffff;
        }
        l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Packets as the kernel's TCP stack hands them to an offloading device,
/// and a validity check, for this module's tests and the worker's.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A TCP/IPv4 packet from `src` to `dst` with 12 option bytes
    /// (timestamps), `payload` bytes of a counting pattern and `flags`.
    pub fn tcp_super(src: Ipv4Addr, dst: Ipv4Addr, payload: usize, flags: u8) -> Vec<u8> {
        let headers = 20 + 32;
        let mut p = vec![0u8; headers + payload];
        p[0] = 0x45;
        let total = p.len().min(65535) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        for (i, b) in p[headers..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        p
    }

    /// What a TSO super-packet of `payload` bytes with `flags` is cut into
    /// at `mss`: whole, valid packets, as a peer's kernel would send them.
    pub fn tcp_segments(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: usize,
        flags: u8,
        mss: u16,
    ) -> Vec<Vec<u8>> {
        let sup = tcp_super(src, dst, payload, flags);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: 52,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        };
        resegment(&hdr, &sup)
    }

    /// Split `bytes`, read with `hdr`, into the packets TSO would make.
    pub fn resegment(hdr: &VnetHdr, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 2 * bytes.len() + 64 * MAX_HEADERS];
        buf[..bytes.len()].copy_from_slice(bytes);
        let segs = split(&mut buf, 0, bytes.len(), hdr, 0).unwrap();
        (0..segs.count)
            .map(|k| buf[segs.packet(k)].to_vec())
            .collect()
    }

    /// Panics unless `pkt` is a whole IPv4 packet whose header checksum
    /// and transport checksum (over the pseudo-header) are both right.
    pub fn assert_valid(pkt: &[u8]) {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        assert_eq!(
            checksum::finish(checksum::add(0, &pkt[..ihl])),
            0,
            "ip csum"
        );
        let addr = |i: usize| Ipv4Addr::new(pkt[i], pkt[i + 1], pkt[i + 2], pkt[i + 3]);
        let sum = checksum::pseudo_header(addr(12), addr(16), pkt[9], pkt.len() - ihl);
        assert_eq!(
            checksum::finish(checksum::add(sum, &pkt[ihl..])),
            0,
            "l4 csum"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::assert_valid;
    use super::*;

    const SRC: [u8; 4] = [10, 77, 0, 1];
    const DST: [u8; 4] = [10, 77, 0, 2];

    /// A TCP/IPv4 packet with 12 option bytes (timestamps), `payload`
    /// bytes of a counting pattern, flags `flags`; checksums left as the
    /// kernel leaves them for offload (pseudo-header only).
    fn tcp_super(payload: usize, flags: u8) -> Vec<u8> {
        test_support::tcp_super(SRC.into(), DST.into(), payload, flags)
    }

    fn udp_super(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload];
        p[0] = 0x45;
        p[8] = 64;
        p[9] = IPPROTO_UDP;
        p[12..16].copy_from_slice(&SRC);
        p[16..20].copy_from_slice(&DST);
        p[20..22].copy_from_slice(&9000u16.to_be_bytes());
        p[22..24].copy_from_slice(&9001u16.to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        p
    }

    fn gso_hdr(gso_type: u8, gso_size: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 52,
            gso_size,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn vnet_header_round_trips_little_endian() {
        let h = VnetHdr {
            flags: 1,
            gso_type: gso::TCPV4 | gso::ECN,
            hdr_len: 0x0134,
            gso_size: 1348,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(&b[..4], &[1, 0x81, 0x34, 0x01]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn tcp_super_packet_splits_into_valid_consecutive_segments() {
        let (prefix, at, g) = (29, 64, 1348usize);
        let payload = 10 * g + 100;
        let input = tcp_super(payload, 0x18 | TCP_CWR | TCP_FIN);
        let mut buf = vec![0u8; 80 << 10];
        buf[at..at + input.len()].copy_from_slice(&input);
        let segs = split(
            &mut buf,
            at,
            input.len(),
            &gso_hdr(gso::TCPV4, g as u16),
            prefix,
        )
        .unwrap();
        assert_eq!(segs.count, 11);
        assert_eq!(segs.stride, prefix + 52 + g);
        let mut data = Vec::new();
        for k in 0..segs.count {
            let r = segs.packet(k);
            let pkt = &buf[at + r.start..at + r.end];
            assert_valid(pkt);
            let t = &pkt[20..];
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            assert_eq!(
                seq,
                0xffff_ff00u32.wrapping_add((k * g) as u32),
                "seq wraps"
            );
            assert_eq!(
                u16::from_be_bytes([pkt[4], pkt[5]]),
                0xfffeu16.wrapping_add(k as u16)
            );
            let last = k + 1 == segs.count;
            assert_eq!(
                t[13] & (TCP_FIN | TCP_PSH) != 0,
                last,
                "FIN/PSH only on the last"
            );
            assert_eq!(t[13] & TCP_CWR != 0, k == 0, "CWR only on the first");
            assert_eq!(&t[20..32], &input[40..52], "options copied");
            data.extend_from_slice(&pkt[52..]);
        }
        assert_eq!(segs.packet(10).len(), 52 + 100);
        assert_eq!(data, input[52..], "payload intact and in order");
    }

    #[test]
    fn udp_super_packet_splits_with_lengths_and_checksums() {
        let input = udp_super(3 * 1000 + 1);
        let mut buf = vec![0u8; 8192];
        buf[..input.len()].copy_from_slice(&input);
        let hdr = gso_hdr(gso::UDP_L4, 1000);
        let segs = split(&mut buf, 0, input.len(), &hdr, 0).unwrap();
        assert_eq!((segs.count, segs.stride, segs.last_len), (4, 1028, 29));
        let mut data = Vec::new();
        for k in 0..4 {
            let r = segs.packet(k);
            let pkt = &buf[r];
            assert_valid(pkt);
            assert_eq!(
                usize::from(u16::from_be_bytes([pkt[24], pkt[25]])),
                pkt.len() - 20
            );
            data.extend_from_slice(&pkt[28..]);
        }
        assert_eq!(data, input[28..]);
    }

    #[test]
    fn exact_multiple_and_single_segment_super_packets() {
        for payload in [1348, 2 * 1348, 1] {
            let input = tcp_super(payload, 0x10);
            let mut buf = vec![0u8; 8192];
            buf[..input.len()].copy_from_slice(&input);
            let segs = split(&mut buf, 0, input.len(), &gso_hdr(gso::TCPV4, 1348), 49).unwrap();
            assert_eq!(segs.count, payload.div_ceil(1348));
            for k in 0..segs.count {
                assert_valid(&buf[segs.packet(k)]);
            }
        }
    }

    #[test]
    fn partial_checksum_is_completed_without_gso() {
        let mut pkt = tcp_super(333, 0x18);
        let l4_len = pkt.len() - 20;
        let partial = checksum::fold(checksum::pseudo_header(
            SRC.into(),
            DST.into(),
            IPPROTO_TCP,
            l4_len,
        ));
        pkt[36..38].copy_from_slice(&partial.to_be_bytes());
        checksum::refresh_ipv4_header(&mut pkt, 20);
        let hdr = VnetHdr {
            gso_type: gso::NONE,
            ..gso_hdr(gso::NONE, 0)
        };
        let len = pkt.len();
        assert_eq!(split(&mut pkt, 0, len, &hdr, 0), Ok(Segments::single(len)));
        assert_valid(&pkt);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let input = tcp_super(5000, 0x10);
        let mut buf = vec![0u8; 5100];
        buf[..input.len()].copy_from_slice(&input);
        let len = input.len();
        // Not enough room behind the packet for the spread-out segments.
        assert!(matches!(
            split(&mut buf, 0, len, &gso_hdr(gso::TCPV4, 1000), 49),
            Err(OffloadError::NoRoom { .. })
        ));
        assert_eq!(
            split(&mut buf, 0, len, &gso_hdr(gso::TCPV4, 0), 0),
            Err(OffloadError::ZeroGsoSize)
        );
        assert_eq!(
            split(&mut buf, 0, len, &gso_hdr(4, 1000), 0),
            Err(OffloadError::UnsupportedGso(4))
        );
        assert!(matches!(
            split(&mut buf, 0, len, &gso_hdr(gso::UDP_L4, 1000), 0),
            Err(OffloadError::WrongPacket { .. })
        ));
        assert!(matches!(
            split(&mut buf, 0, 30, &gso_hdr(gso::TCPV4, 1000), 0),
            Err(OffloadError::Truncated { .. })
        ));
        let bad_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 5050,
            csum_offset: 2,
            ..VnetHdr::default()
        };
        assert!(matches!(
            split(&mut buf, 0, len, &bad_csum, 0),
            Err(OffloadError::BadChecksumRange { .. })
        ));
        assert!(matches!(
            split(&mut buf, 100, len, &VnetHdr::default(), 0),
            Err(OffloadError::NoRoom { .. })
        ));
        // A TCP data offset below 5 words: refused, not indexed past.
        let mut short_tcp = input.clone();
        short_tcp[32] = 2 << 4;
        let slen = short_tcp.len();
        short_tcp.resize(20_000, 0);
        assert!(matches!(
            split(&mut short_tcp, 0, slen, &gso_hdr(gso::TCPV4, 1), 0),
            Err(OffloadError::WrongPacket { .. })
        ));
        let mut frag = input.clone();
        frag[6] = 0x20; // more fragments
        let flen = frag.len();
        frag.resize(20_000, 0);
        assert!(matches!(
            split(&mut frag, 0, flen, &gso_hdr(gso::TCPV4, 1000), 0),
            Err(OffloadError::WrongPacket { .. })
        ));
    }
}
