//! A worker's send side: what the TUN queue hands over (an ordinary
//! packet, or with offloads a TSO/USO super-packet split in place), sealed
//! where it lies and sent to the next hop's endpoint, equal datagrams
//! together in one GSO send; without a direct next hop it goes up to the
//! control thread for the relay, already the FORWARD frame the server link
//! sends (its type byte written in front, so one copy per packet). A next
//! hop reached through a TURN channel gets each datagram led by the
//! ChannelData header, sent from the send slot beside it.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::{send_user_data, upcall, Batch, Core, Op};
use crate::dataplane::frame::{self, FrameError, Seal};
use crate::dataplane::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::dataplane::Upcall;
use crate::proto::ipv4::classify;
use crate::proto::mss;
use crate::proto::mtu::FORWARD_OVERHEAD;
use crate::proto::sdwan::{self, PSEUDO_HEADER_LEN};
use crate::proto::udp::ty;
use crate::proto::ws;
use crate::session::relay;
use crate::session::transport::Session;
use crate::sys::udp::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::turn::channel;

impl Core {
    /// A packet read from TUN. Returns true if the buffer is now owned by
    /// queued sends (and goes back to the ring when the last completes).
    pub(super) fn tun_packet(&mut self, bid: u16, len: usize, batch: &mut Batch<'_, '_>) -> bool {
        let Batch {
            snap,
            sq,
            counts: b,
            tally,
        } = batch;
        let snap = *snap;
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
        // Room in front of each packet for what goes there: the envelope
        // and type byte of a sealed FORWARD, or the relay frame's type byte.
        let prefix = wrap_len
            + if direct.is_some() {
                FORWARD_OVERHEAD
            } else {
                RELAY_TYPE_LEN
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
                let frame = match &hop.relay_seal {
                    Some(s) => {
                        let to = hop.wrap_for.unwrap_or(meta.dst);
                        sealed_relay_frame(&s.0, snap.own_vip, to, buf, at + r.start, r.len(), wrap)
                    }
                    None => relay_frame(buf, at + r.start, r.len(), wrap).map(|f| buf[f].to_vec()),
                };
                match frame {
                    Ok(f) => {
                        if hop.relay_seal.is_some() {
                            b.session_tx += 1;
                        }
                        upcall(&self.upcalls, b, || Upcall::RelayFrame(f));
                    }
                    Err(_) => b.dropped_malformed += 1,
                }
            }
            return false;
        };
        let mut datagrams = None::<Range<usize>>;
        for k in 0..segs.count {
            let r = segs.packet(k);
            let seal = match &peer.session {
                Some(s) => Seal::Session(&s.0),
                None => Seal::Envelope(&peer.key, self.ivs.next_iv()),
            };
            match frame::seal_forward(seal, buf, at + r.start, r.len(), wrap) {
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
        if peer.session.is_some() {
            b.session_tx += segs.count as u64;
        }
        let payload = all.len() - segs.count * FORWARD_OVERHEAD;
        // A TCP stream takes each datagram as a frame, at once or into its
        // queue: the buffer is free again when this returns.
        if let Some(stream) = &peer.stream {
            let mut sent = 0;
            for k in 0..segs.count {
                let from = all.start + k * stride;
                let to = if k + 1 == segs.count {
                    all.end
                } else {
                    from + stride
                };
                match stream.tx.send(&buf[from..to]) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        b.tcp_tx_dropped += 1;
                        tracing::debug!(%e, "dropping a packet for a TCP stream");
                    }
                }
            }
            tally.tx(&peer.counters, sent, payload);
            b.tcp_tx_packets += sent as u64;
            b.tcp_tx_bytes += payload as u64;
            return false;
        }
        // Through a TURN channel each datagram needs a header of its own.
        let per_send = if self.udp_gso && segs.count > 1 && peer.channel.is_none() {
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
            let msg = match peer.channel {
                None => slot.prepare(data, peer.endpoint, gso),
                Some(n) => match channel::header(n, data.len()) {
                    Ok(h) => slot.prepare_channel(h, data, peer.endpoint),
                    Err(_) => {
                        // Only a channel number the control thread should
                        // never publish gets here.
                        b.turn_malformed += 1;
                        continue;
                    }
                },
            };
            let sock = peer
                .socket
                .as_ref()
                .map_or(u.sock.as_raw_fd(), |s| s.fd.as_raw_fd());
            let sqe = opcode::SendMsg::new(types::Fd(sock), msg)
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
        tally.tx(&peer.counters, segs.count, payload);
        let (packets, bytes) = if peer.channel.is_some() {
            (&mut b.turn_tx_packets, &mut b.turn_tx_bytes)
        } else if hop.via {
            (&mut b.via_tx_packets, &mut b.via_tx_bytes)
        } else {
            (&mut b.direct_tx_packets, &mut b.direct_tx_bytes)
        };
        *packets += segs.count as u64;
        *bytes += payload as u64;
        queued > 0
    }
}

/// The relay frame's type byte: what the relay leg puts in front of a
/// packet (and of its pseudo-header) instead of the envelope.
const RELAY_TYPE_LEN: usize = 1;

/// The FORWARD frame that carries the packet at `buf[start..start + len]`
/// to `to` sealed with its session (docs/protocol.md §5.8): the server
/// sees two VIPs and ciphertext. Built in a new buffer, which the relay leg
/// needs anyway, so the TUN buffer keeps the smaller relay headroom.
fn sealed_relay_frame(
    session: &Session,
    own: Ipv4Addr,
    to: Ipv4Addr,
    buf: &[u8],
    start: usize,
    len: usize,
    wrap: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<Vec<u8>, FrameError> {
    let packet = buf
        .get(start..start + len)
        .ok_or(FrameError::PacketOutOfRange { len })?;
    let wrap_len = if wrap.is_some() { PSEUDO_HEADER_LEN } else { 0 };
    let plain_at = relay::FRAME_OVERHEAD;
    let mut frame = vec![0u8; plain_at + 1 + wrap_len + len];
    frame[plain_at] = ty::FORWARD;
    if let Some((own, gateway)) = wrap {
        let h = sdwan::build_pseudo_header(own, gateway, len)?;
        frame[plain_at + 1..plain_at + 1 + PSEUDO_HEADER_LEN].copy_from_slice(&h);
    }
    frame[plain_at + 1 + wrap_len..].copy_from_slice(packet);
    let end = frame.len();
    let d = session.seal_datagram(&mut frame, plain_at..end)?;
    relay::write_header(&mut frame, own, to, d.len());
    Ok(frame)
}

/// Turns the packet at `buf[start..start + len]` into the FORWARD frame the
/// server relays, where it lies: led by the sdwan pseudo-header when a
/// subnet route matched (the server routes on the outer destination), and
/// by the frame's type byte, in room the split left in front.
fn relay_frame(
    buf: &mut [u8],
    start: usize,
    len: usize,
    wrap: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<Range<usize>, FrameError> {
    let packet = match wrap {
        Some((own, gateway)) => frame::wrap_in_place(buf, start, len, own, gateway)?,
        None if start + len <= buf.len() => start..start + len,
        None => return Err(FrameError::PacketOutOfRange { len }),
    };
    let at = packet
        .start
        .checked_sub(RELAY_TYPE_LEN)
        .ok_or(FrameError::NoHeadroom {
            need: RELAY_TYPE_LEN,
            have: packet.start,
        })?;
    buf[at] = ws::ty::FORWARD;
    Ok(at..packet.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::WsMessage;

    const OWN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    /// A 28-byte IPv4 packet at `buf[room..]`.
    fn buffer_with_packet(room: usize) -> (Vec<u8>, Vec<u8>) {
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[12..16].copy_from_slice(&OWN.octets());
        packet[16..20].copy_from_slice(&[192, 168, 20, 5]);
        let mut buf = vec![0xEE; room];
        buf.extend_from_slice(&packet);
        (buf, packet)
    }

    #[test]
    fn relay_frame_is_the_forward_frame_the_server_decodes() {
        let (mut buf, packet) = buffer_with_packet(8);
        let f = relay_frame(&mut buf, 8, packet.len(), None).unwrap();
        assert_eq!(f, 7..buf.len());
        assert_eq!(
            WsMessage::decode(&buf[f]).unwrap(),
            WsMessage::Forward(&packet)
        );
    }

    #[test]
    fn wrapped_relay_frame_leads_with_the_pseudo_header() {
        let room = PSEUDO_HEADER_LEN + RELAY_TYPE_LEN;
        let (mut buf, packet) = buffer_with_packet(room);
        let f = relay_frame(&mut buf, room, packet.len(), Some((OWN, GATEWAY))).unwrap();
        assert_eq!(f, 0..buf.len());
        let WsMessage::Forward(inner) = WsMessage::decode(&buf[f]).unwrap() else {
            panic!("not a FORWARD");
        };
        assert_eq!(&inner[PSEUDO_HEADER_LEN..], &packet[..]);
        assert_eq!(&inner[16..20], &GATEWAY.octets());
    }

    #[test]
    fn no_room_for_the_type_byte_or_packet_past_the_end_is_an_error() {
        let (mut buf, packet) = buffer_with_packet(0);
        assert!(matches!(
            relay_frame(&mut buf, 0, packet.len(), None),
            Err(FrameError::NoHeadroom { .. })
        ));
        assert!(matches!(
            relay_frame(&mut buf, 1, packet.len(), None),
            Err(FrameError::PacketOutOfRange { .. })
        ));
    }
}
