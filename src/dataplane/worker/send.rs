//! A worker's send side: what the TUN queue hands over (an ordinary
//! packet, or with offloads a TSO/USO super-packet split in place), sealed
//! where it lies and sent to the next hop's endpoint, equal datagrams
//! together in one GSO send; without a direct next hop it goes up to the
//! control thread for the relay.

use std::ops::Range;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::{send_user_data, upcall, Core, Op, PeerTally, Sq};
use crate::dataplane::counters::CounterSnapshot;
use crate::dataplane::frame::{self, FrameError};
use crate::dataplane::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::dataplane::snapshot::Snapshot;
use crate::dataplane::Upcall;
use crate::proto::ipv4::classify;
use crate::proto::mss;
use crate::proto::mtu::FORWARD_OVERHEAD;
use crate::proto::sdwan::PSEUDO_HEADER_LEN;
use crate::sys::udp::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

impl Core {
    /// A packet read from TUN. Returns true if the buffer is now owned by
    /// queued sends (and goes back to the ring when the last completes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tun_packet<'s>(
        &mut self,
        bid: u16,
        len: usize,
        snap: &'s Snapshot,
        sq: &mut Sq<'_>,
        b: &mut CounterSnapshot,
        tally: &mut PeerTally<'s>,
    ) -> bool {
        b.tun_rx_packets += 1;
        b.tun_rx_bytes += len as u64;
        if self.closing {
            return false;
        }
        let headroom = self.tun_bufs.layout().headroom();
        let Some(buf) = self.tun_bufs.buffer_mut(bid) else {
            b.dropped_malformed += 1;
            return false;
        };
        let (at, len, vnet) = if self.offload {
            match buf.get(headroom..headroom + len).and_then(VnetHdr::parse) {
                Some(h) => (headroom + VNET_HDR_LEN, len - VNET_HDR_LEN, h),
                None => {
                    b.dropped_malformed += 1;
                    return false;
                }
            }
        } else {
            (headroom, len, VnetHdr::default())
        };
        let Some(meta) = buf.get(at..at + len).and_then(|p| classify(p).ok()) else {
            b.dropped_malformed += 1;
            return false;
        };
        let hop = snap.route_tun(meta.dst);
        let wrap = hop.wrap_for.map(|gw| (snap.own_vip, gw));
        let wrap_len = if wrap.is_some() { PSEUDO_HEADER_LEN } else { 0 };
        let direct = hop.peer.as_ref().zip(self.udp.as_ref());
        let prefix = wrap_len
            + if direct.is_some() {
                FORWARD_OVERHEAD
            } else {
                0
            };
        let segs = match offload::split(buf, at, len, &vnet, prefix) {
            Ok(s) => s,
            Err(e) => {
                b.dropped_malformed += 1;
                tracing::debug!(%e, "dropping an offload packet read from tun");
                return false;
            }
        };
        // After the split: a SYN may come with a partial checksum, which an
        // incremental update would corrupt.
        if let (Some(mss), 1) = (self.mss_clamp, segs.count) {
            mss::clamp(&mut buf[at..at + segs.len], mss);
        }
        if segs.count > 1 {
            b.tun_gso_packets += 1;
            b.tun_gso_segments += segs.count as u64;
        }
        let Some((peer, u)) = direct else {
            for k in 0..segs.count {
                let r = segs.packet(k);
                let (start, len) = (at + r.start, r.len());
                let packet = match wrap {
                    Some((own, gw)) => match frame::wrap_in_place(buf, start, len, own, gw) {
                        Ok(r) => &buf[r],
                        Err(_) => {
                            b.dropped_malformed += 1;
                            continue;
                        }
                    },
                    None => &buf[start..start + len],
                };
                upcall(&self.upcalls, b, || Upcall::TunPacket(packet.to_vec()));
            }
            return false;
        };
        let mut datagrams = None::<Range<usize>>;
        for k in 0..segs.count {
            let r = segs.packet(k);
            let iv = self.ivs.next_iv();
            match frame::seal_forward(&peer.key, iv, buf, at + r.start, r.len(), wrap) {
                Ok(d) => datagrams = Some(datagrams.map_or(d.clone(), |all| all.start..d.end)),
                Err(FrameError::Oversize(_)) => {
                    b.oversize += 1;
                    return false;
                }
                Err(_) => {
                    b.dropped_malformed += 1;
                    return false;
                }
            }
        }
        let Some(all) = datagrams else { return false };
        // Datagrams lie back to back, `stride` bytes each but the last; a
        // GSO send takes as many as fit one IPv4 datagram.
        let stride = segs.stride;
        let per_send = if self.udp_gso && segs.count > 1 {
            GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / stride).max(1)
        } else {
            1
        };
        let sends = segs.count.div_ceil(per_send);
        if sends > self.sends_per_buffer {
            b.send_errors += segs.count as u64;
            return false;
        }
        let first_slot = usize::from(bid) * self.sends_per_buffer;
        let mut queued = 0u8;
        for i in 0..sends {
            let from = all.start + i * per_send * stride;
            let to = if i + 1 == sends {
                all.end
            } else {
                from + per_send * stride
            };
            let data = &buf[from..to];
            let gso = (per_send > 1).then_some(stride as u16);
            let slot = &mut self.sends[first_slot + i];
            let msg = slot.prepare(data, peer.endpoint, gso);
            let sqe = opcode::SendMsg::new(types::Fd(u.sock.as_raw_fd()), msg)
                .build()
                .user_data(send_user_data(Op::SendTun, bid, i as u16));
            // SAFETY: the buffer stays out of the ring and the slot is not
            // refilled until this send's completion releases them.
            if unsafe { sq.push(&sqe) } {
                self.inflight += 1;
                queued += 1;
            } else {
                b.send_errors += u64::from(slot.datagrams);
            }
        }
        self.tun_refs[usize::from(bid)] = queued;
        let payload = all.len() - segs.count * FORWARD_OVERHEAD;
        tally.tx(&peer.counters, segs.count, payload);
        queued > 0
    }
}
