//! TUN offloads on the way into the kernel: the mirror of `offload::split`.
//!
//! A UDP GRO receive hands a worker up to 64 datagrams of one peer in one
//! buffer; opened, they are mostly consecutive segments of one TCP flow.
//! Written to TUN one by one, each costs a write and a trip through the
//! kernel's receive path. A `Run` collects such segments and turns the
//! first one's headers into those of a TSO super-packet (`gso_type` TCPV4,
//! checksum left partial), so the whole run goes in with one `writev`: the
//! first packet whole, then each further segment's payload where it lies.
//!
//! The rules are the kernel's own for GRO: same addresses, ports, TOS, TTL,
//! DF, acknowledgement and TCP options; sequence numbers back to back;
//! flags ACK, with PSH only on the last; every segment as long as the first
//! except the last. Each segment's checksum is verified before it joins,
//! because the super-packet's checksum is the kernel's to trust, not to
//! check: a damaged segment is written alone and dropped by the kernel.

use std::net::Ipv4Addr;
use std::ops::Range;

use super::offload::{gso, VnetHdr, F_NEEDS_CSUM, IPPROTO_TCP, TCP_PSH};
use crate::proto::checksum;

const TCP_ACK: u8 = 0x10;
/// Flag, fragment offset and more-fragments bits; only DF may be set.
const IP_DF: u16 = 0x4000;
/// Where the TCP checksum lies in its header.
const TCP_CSUM_OFFSET: usize = 16;

/// Segments opened from one receive buffer that go to TUN as one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The first packet, whose headers speak for the run.
    first: Range<usize>,
    ihl: usize,
    thl: usize,
    /// Payload bytes of the first segment: the `gso_size`.
    mss: usize,
    /// Payload bytes of all segments.
    payload: usize,
    next_seq: u32,
    segments: usize,
    psh: bool,
    /// Whether another segment may still join.
    open: bool,
}

/// What a TCP segment that may join a run looks like.
struct Segment {
    ihl: usize,
    thl: usize,
    seq: u32,
    payload: usize,
    psh: bool,
}

impl Run {
    /// A run that starts with the packet at `buf[packet]`. Every packet
    /// starts one; one that cannot be coalesced (not TCP, a SYN, a bad
    /// checksum, ...) starts a run that takes nothing more.
    pub fn start(buf: &[u8], packet: Range<usize>) -> Run {
        let seg = segment(&buf[packet.clone()]);
        let (ihl, thl, seq, payload, psh) = seg.as_ref().map_or((0, 0, 0, 0, false), |s| {
            (s.ihl, s.thl, s.seq, s.payload, s.psh)
        });
        Run {
            first: packet,
            ihl,
            thl,
            mss: payload,
            payload,
            next_seq: seq.wrapping_add(payload as u32),
            segments: 1,
            psh,
            open: seg.is_some() && !psh,
        }
    }

    /// A run of just the packet at `buf[packet]`, written as it came.
    pub fn alone(packet: Range<usize>) -> Run {
        Run {
            first: packet,
            ihl: 0,
            thl: 0,
            mss: 0,
            payload: 0,
            next_seq: 0,
            segments: 1,
            psh: false,
            open: false,
        }
    }

    /// Add the packet at `buf[packet]` if it continues the run. Returns the
    /// range of its payload: what the write carries for it after the run's
    /// bytes so far.
    pub fn append(&mut self, buf: &[u8], packet: Range<usize>) -> Option<Range<usize>> {
        if !self.open {
            return None;
        }
        let (head, next) = (&buf[self.first.clone()], &buf[packet.clone()]);
        let s = segment(next)?;
        let same_flow = s.ihl == self.ihl
            && s.thl == self.thl
            && same_ip_fields(head, next)
            && same_tcp_fields(&head[self.ihl..], &next[s.ihl..], s.thl);
        if !same_flow
            || s.seq != self.next_seq
            || s.payload > self.mss
            || self.ihl + self.thl + self.payload + s.payload > usize::from(u16::MAX)
        {
            return None;
        }
        self.payload += s.payload;
        self.next_seq = self.next_seq.wrapping_add(s.payload as u32);
        self.segments += 1;
        self.psh = s.psh;
        // A short segment or a push ends the run, as it ends a GRO flow.
        self.open = !s.psh && s.payload == self.mss;
        Some(packet.start + s.ihl + s.thl..packet.end)
    }

    pub fn segments(&self) -> usize {
        self.segments
    }

    pub fn first(&self) -> Range<usize> {
        self.first.clone()
    }

    /// Bytes the run's write carries, without the virtio header.
    pub fn bytes(&self) -> usize {
        if self.segments == 1 {
            self.first.len()
        } else {
            self.ihl + self.thl + self.payload
        }
    }

    /// Rewrite the first packet's headers to describe the whole run and
    /// return the virtio header for its write. A run of one is left as it
    /// came and needs no offload.
    pub fn finish(&self, buf: &mut [u8]) -> VnetHdr {
        if self.segments == 1 {
            return VnetHdr::default();
        }
        let p = &mut buf[self.first.clone()];
        let total = self.bytes();
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        checksum::refresh_ipv4_header(p, self.ihl);
        let tcp = self.ihl;
        if self.psh {
            p[tcp + 13] |= TCP_PSH;
        }
        let addr = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
        // NEEDS_CSUM wants the pseudo-header sum in the field, folded but
        // not complemented; segmentation completes it per packet.
        let pseudo = checksum::pseudo_header(addr(12), addr(16), IPPROTO_TCP, total - tcp);
        let field = tcp + TCP_CSUM_OFFSET;
        p[field..field + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: (self.ihl + self.thl) as u16,
            gso_size: self.mss as u16,
            csum_start: self.ihl as u16,
            csum_offset: TCP_CSUM_OFFSET as u16,
        }
    }
}

/// The packet as a candidate for a run: an unfragmented TCP/IPv4 segment
/// without IP options, carrying data, flags ACK or ACK|PSH, whose length
/// field matches and whose checksums are right.
fn segment(p: &[u8]) -> Option<Segment> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != IPPROTO_TCP {
        return None;
    }
    let ihl = 20;
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if frag & !IP_DF != 0
        || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len()
        || checksum::ipv4_header(&p[..ihl]) != 0
    {
        return None;
    }
    let t = &p[ihl..];
    let thl = usize::from(t[12] >> 4) * 4;
    let flags = t[13];
    if thl < 20 || ihl + thl >= p.len() || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let addr = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
    let pseudo = checksum::pseudo_header(addr(12), addr(16), IPPROTO_TCP, t.len());
    if checksum::finish(checksum::add(pseudo, t)) != 0 {
        return None;
    }
    Some(Segment {
        ihl,
        thl,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        payload: p.len() - ihl - thl,
        psh: flags & TCP_PSH != 0,
    })
}

/// TOS, DF, TTL and addresses agree (protocol and IHL are known equal).
fn same_ip_fields(a: &[u8], b: &[u8]) -> bool {
    a[1] == b[1] && a[6] == b[6] && a[8] == b[8] && a[12..20] == b[12..20]
}

/// Ports, acknowledgement, header length and options agree.
fn same_tcp_fields(a: &[u8], b: &[u8], thl: usize) -> bool {
    a[..4] == b[..4] && a[8..13] == b[8..13] && a[20..thl] == b[20..thl]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::offload::test_support::{assert_valid, resegment, tcp_segments};

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const MSS: u16 = 1348;

    fn segments(payload: usize, flags: u8) -> Vec<Vec<u8>> {
        tcp_segments(SRC, DST, payload, flags, MSS)
    }

    /// The packets laid out in one buffer `gap` bytes apart, as opened
    /// datagrams lie in a GRO receive buffer, and their ranges.
    fn lay_out(packets: &[Vec<u8>], gap: usize) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in packets {
            buf.resize(buf.len() + gap, 0xee);
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        (buf, ranges)
    }

    /// Coalesce greedily, as the worker does, and return each write's bytes
    /// (virtio header excluded) with its header.
    fn coalesce(buf: &mut [u8], ranges: &[Range<usize>]) -> Vec<(VnetHdr, Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut run: Option<(Run, Vec<Range<usize>>)> = None;
        for r in ranges {
            if let Some((run, tail)) = run.as_mut() {
                if let Some(payload) = run.append(buf, r.clone()) {
                    tail.push(payload);
                    continue;
                }
            }
            if let Some((done, tail)) = run.take() {
                out.push(write_of(buf, &done, &tail));
            }
            run = Some((Run::start(buf, r.clone()), Vec::new()));
        }
        if let Some((done, tail)) = run.take() {
            out.push(write_of(buf, &done, &tail));
        }
        out
    }

    fn write_of(buf: &mut [u8], run: &Run, tail: &[Range<usize>]) -> (VnetHdr, Vec<u8>, usize) {
        let hdr = run.finish(buf);
        let mut bytes = buf[run.first()].to_vec();
        for t in tail {
            bytes.extend_from_slice(&buf[t.clone()]);
        }
        assert_eq!(bytes.len(), run.bytes());
        (hdr, bytes, run.segments())
    }

    #[test]
    fn a_whole_burst_becomes_one_write_that_splits_back_into_it() {
        let packets = segments(40 * usize::from(MSS) + 500, TCP_ACK | TCP_PSH);
        assert_eq!(packets.len(), 41);
        let (mut buf, ranges) = lay_out(&packets, 29);
        let writes = coalesce(&mut buf, &ranges);
        assert_eq!(writes.len(), 1);
        let (hdr, bytes, n) = &writes[0];
        assert_eq!(*n, 41);
        assert_eq!(hdr.gso_type, gso::TCPV4);
        assert_eq!(hdr.gso_size, MSS);
        assert_eq!(usize::from(hdr.hdr_len), 52);
        assert_eq!(resegment(hdr, bytes), packets);
        for p in &packets {
            assert_valid(p);
        }
    }

    #[test]
    fn a_single_packet_is_written_as_it_came() {
        let packets = segments(700, TCP_ACK);
        let (mut buf, ranges) = lay_out(&packets, 0);
        let before = buf.clone();
        let writes = coalesce(&mut buf, &ranges);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].0, VnetHdr::default());
        assert_eq!(buf, before);
    }

    #[test]
    fn push_and_short_segments_end_a_run() {
        // Two bursts back to back: the first ends with PSH, so the second
        // starts a new write although its sequence numbers continue.
        let all = segments(6 * usize::from(MSS), TCP_ACK | TCP_PSH);
        let mut first = all[..3].to_vec();
        first[2][33] |= TCP_PSH;
        fix_checksum(&mut first[2]);
        let packets: Vec<_> = first.iter().chain(&all[3..]).cloned().collect();
        let (mut buf, ranges) = lay_out(&packets, 16);
        let writes = coalesce(&mut buf, &ranges);
        assert_eq!(writes.iter().map(|w| w.2).collect::<Vec<_>>(), vec![3, 3]);
        let again: Vec<_> = writes
            .iter()
            .flat_map(|(h, b, _)| resegment(h, b))
            .collect();
        assert_eq!(again, packets);
    }

    fn fix_checksum(p: &mut [u8]) {
        p[36..38].fill(0);
        let sum = checksum::pseudo_header(SRC, DST, IPPROTO_TCP, p.len() - 20);
        let c = checksum::finish(checksum::add(sum, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn what_the_kernel_would_not_merge_stays_apart() {
        let base = segments(4 * usize::from(MSS), TCP_ACK);
        type Change = fn(&mut Vec<u8>);
        let variants: Vec<(&str, Change)> = vec![
            ("other port", |p| p[21] ^= 1),
            ("other ack", |p| p[31] ^= 1),
            ("other ttl", |p| p[8] -= 1),
            ("other tos", |p| p[1] = 2),
            ("other option", |p| p[51] ^= 1),
            ("seq gap", |p| p[27] ^= 0x10),
            ("fin", |p| p[33] |= 0x01),
            ("fragment", |p| p[6] |= 0x20),
        ];
        for (what, change) in variants {
            let mut packets = base.clone();
            change(&mut packets[2]);
            fix_checksum(&mut packets[2]);
            checksum::refresh_ipv4_header(&mut packets[2], 20);
            let (mut buf, ranges) = lay_out(&packets, 8);
            let writes = coalesce(&mut buf, &ranges);
            let counts: Vec<_> = writes.iter().map(|w| w.2).collect();
            assert_eq!(counts[0], 2, "{what}: {counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), 4, "{what}");
        }
    }

    #[test]
    fn a_damaged_segment_is_not_merged() {
        let mut packets = segments(4 * usize::from(MSS), TCP_ACK);
        packets[1][200] ^= 0x40;
        let (mut buf, ranges) = lay_out(&packets, 8);
        let writes = coalesce(&mut buf, &ranges);
        let counts: Vec<_> = writes.iter().map(|w| w.2).collect();
        assert_eq!(counts, vec![1, 1, 2]);
        // Written alone, it reaches the kernel as it came, for the kernel
        // to reject.
        assert_eq!(writes[1].1, packets[1]);
    }

    #[test]
    fn non_tcp_and_handshakes_start_runs_of_one() {
        let data = segments(100, TCP_ACK)[0].clone();
        let mut syn = data.clone();
        syn[33] = 0x02;
        fix_checksum(&mut syn);
        let mut udp = data.clone();
        udp[9] = 17;
        let mut bad_ip_header = data.clone();
        bad_ip_header[8] -= 1;
        for p in [syn, udp, bad_ip_header, vec![0x45; 10]] {
            let r = Run::start(&p, 0..p.len());
            assert_eq!(r.segments(), 1);
            assert!(!r.open);
        }
    }
}
