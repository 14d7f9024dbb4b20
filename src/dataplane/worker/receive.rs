//! A worker's receive side: what arrives on the UDP socket, opened in place
//! and either written to TUN or resealed and passed on to the next hop.
//! On a TURN allocation's socket, ChannelData from the server is unwrapped
//! first (by narrowing the range, without a copy).
//!
//! With UDP GRO one receive buffer holds a run of datagrams from one peer,
//! `segment` bytes apart. They are handled in order, and what they turn
//! into is collected rather than queued one by one: consecutive segments of
//! one TCP flow become one TUN write (`coalesce::Run`), consecutive
//! datagrams for the same next hop one GSO send. Every datagram adds at most
//! one iovec or one send, so the buffer's slots can never run out.

use std::net::SocketAddrV4;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use crossbeam_channel::Sender;
use io_uring::{opcode, types};

use super::{send_user_data, upcall, Batch, Core, Op, PeerTally, Sq};
use crate::dataplane::coalesce::Run;
use crate::dataplane::counters::CounterSnapshot;
use crate::dataplane::frame::{self, Inbound, OpenError, RecvError, Seal};
use crate::dataplane::offload::VNET_HDR_LEN;
use crate::dataplane::sendmsg::SendSlot;
use crate::dataplane::snapshot::{PeerEntry, Snapshot, TurnSocket, MAIN_SOCKET};
use crate::dataplane::stream::StreamTx;
use crate::dataplane::Upcall;
use crate::proto::crypto::{IvSequence, PeerKey, ENVELOPE_LEN};
use crate::proto::mtu::MAX_DATAGRAM;
use crate::proto::stun::looks_like_stun;
use crate::sys::udp::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::turn::channel as turn_channel;

/// Most datagrams one receive buffer can hold: GRO stops at 64, a GSO send
/// from this host at the kernel's UDP_MAX_SEGMENTS (128 on recent kernels).
pub(super) const MAX_RECEIVE_SEGMENTS: usize = 128;

/// One receive buffer being worked through.
struct Receive<'a, 's, 'r> {
    bid: u16,
    buf: &'a mut [u8],
    /// Distance between the datagrams of a GRO run.
    segment: usize,
    snap: &'s Snapshot,
    own_key: &'a PeerKey,
    ivs: &'a mut IvSequence,
    upcalls: &'a Sender<Upcall>,
    sq: &'a mut Sq<'r>,
    b: &'a mut CounterSnapshot,
    tally: &'a mut PeerTally<'s>,
    /// The shared-port socket, which passed-on FORWARDs leave from unless
    /// their next hop was punched from a socket of its own.
    sock: RawFd,
    /// The socket this buffer was received on.
    local: u16,
    tun_fd: RawFd,
    /// TUN writes carry a virtio header, and may be super-packets.
    offload: bool,
    udp_gso: bool,
    /// This buffer's iovec and send slots.
    iovs: &'a mut [libc::iovec],
    sends: &'a mut [SendSlot],
    /// The TUN write being collected and the index of its first iovec.
    run: Option<(Run, usize)>,
    iovs_used: usize,
    /// Resealed datagrams being collected for one send: from which socket
    /// to where, which bytes, how many.
    relay: Option<(RawFd, SocketAddrV4, Range<usize>, usize)>,
    sends_used: usize,
    queued: usize,
}

impl Core {
    /// A receive on the socket: one datagram, or with GRO a run of them.
    /// Returns true if the buffer is now owned by queued TUN writes or
    /// sends (and goes back to its ring when the last completes).
    pub(super) fn datagrams(
        &mut self,
        bid: u16,
        res: usize,
        local: u16,
        batch: &mut Batch<'_, '_>,
    ) -> bool {
        let Batch {
            snap,
            sq,
            counts: b,
            tally,
        } = batch;
        let Some(u) = self.udp.as_mut() else {
            return false;
        };
        let Some(buf) = u.bufs.buffer_mut(bid) else {
            b.dropped_malformed += 1;
            return false;
        };
        let rx = match buf
            .get(..res)
            .map(|out| frame::parse_recvmsg(out, &u.msghdr))
        {
            Some(Ok(rx)) => rx,
            Some(Err(RecvError::Truncated)) => {
                b.udp_rx_packets += 1;
                b.oversize += 1;
                return false;
            }
            _ => {
                b.udp_rx_packets += 1;
                b.dropped_malformed += 1;
                return false;
            }
        };
        let segment = rx.segment.unwrap_or(rx.payload.len()).max(1);
        let count = rx.payload.len().div_ceil(segment);
        b.udp_rx_packets += count as u64;
        b.udp_rx_bytes += rx.payload.len() as u64;
        if count > 1 {
            b.udp_gro_receives += 1;
        }
        if self.closing {
            return false;
        }
        let slots = u.slots_per_buffer;
        if count > slots {
            b.oversize += count as u64;
            tracing::debug!(from = %rx.from, count, "dropping a receive of more datagrams than slots");
            return false;
        }
        let first = usize::from(bid) * slots;
        let mut r = Receive {
            bid,
            buf,
            segment,
            snap,
            own_key: &u.own_key,
            ivs: &mut self.ivs,
            upcalls: &self.upcalls,
            sq,
            b,
            tally,
            sock: u.sock.as_raw_fd(),
            local,
            tun_fd: self.tun_fd,
            offload: self.offload,
            udp_gso: self.udp_gso,
            iovs: &mut u.iovs[first..first + slots],
            sends: &mut u.sends[first..first + slots],
            run: None,
            iovs_used: 0,
            relay: None,
            sends_used: 0,
            queued: 0,
        };
        let end = rx.payload.end;
        for start in rx.payload.step_by(segment) {
            r.datagram(start..end.min(start + segment), rx.from);
        }
        r.flush_run();
        r.flush_relay();
        let queued = r.queued;
        // At most one operation per datagram, so it fits.
        u.refs[usize::from(bid)] = queued as u8;
        self.inflight += queued;
        queued > 0
    }
}

fn iovec(buf: &[u8], r: Range<usize>) -> libc::iovec {
    let bytes = &buf[r];
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

impl Receive<'_, '_, '_> {
    fn datagram(&mut self, d: Range<usize>, from: SocketAddrV4) {
        let b = &mut *self.b;
        if looks_like_stun(&self.buf[d.clone()]) {
            let datagram = &self.buf[d];
            let local = self.local;
            if upcall(self.upcalls, b, || Upcall::Stun {
                from,
                local,
                datagram: datagram.to_vec(),
            }) {
                b.stun_upcalls += 1;
            }
            return;
        }
        // ChannelData from a TURN server carries a peer's datagram: from
        // here on it is that datagram, from the address its channel was
        // bound to.
        let snap = self.snap;
        let (d, from, turn) = match snap.turn.get(&self.local) {
            Some(t) if t.server == from => match unwrap_channel(t, self.buf, d) {
                Some((inner, peer)) => (inner, peer, true),
                None => {
                    b.turn_malformed += 1;
                    tracing::debug!(%from, "dropping a datagram from the TURN server");
                    return;
                }
            },
            _ => (d, from, false),
        };
        let local = self.local;
        match open_datagram(
            snap,
            self.own_key,
            self.buf,
            d.clone(),
            from,
            local,
            self.upcalls,
            b,
        ) {
            Verdict::Done => {}
            Verdict::Deliver {
                packet,
                peer,
                bytes,
            } => {
                if let Some(peer) = peer {
                    self.tally.rx(&peer.counters, bytes);
                }
                // Through TURN, straight from its sender's own path, or
                // passed on.
                if turn {
                    b.turn_rx_packets += 1;
                    b.turn_rx_bytes += bytes as u64;
                } else if peer.is_some_and(|p| p.endpoint == from && socket_id(p) == self.local) {
                    b.direct_rx_packets += 1;
                    b.direct_rx_bytes += bytes as u64;
                } else {
                    b.via_rx_packets += 1;
                    b.via_rx_bytes += bytes as u64;
                }
                self.deliver(packet);
            }
            Verdict::Relay { peer, bytes } => {
                if !reseal(peer, self.buf, d.clone(), self.ivs, b) {
                    return;
                }
                self.tally.tx(&peer.counters, 1, bytes);
                match &peer.stream {
                    Some(s) => send_on_stream(&s.tx, &self.buf[d], b),
                    None => {
                        let sock = peer.socket.as_ref().map_or(self.sock, |s| s.fd.as_raw_fd());
                        self.relay(d, sock, peer.endpoint, peer.channel);
                    }
                }
            }
        }
    }

    /// The packet at `buf[packet]` goes to TUN: with the write being
    /// collected if it continues that flow, else in a write of its own.
    fn deliver(&mut self, packet: Range<usize>) {
        if let Some((run, _)) = self.run.as_mut() {
            if let Some(payload) = run.append(self.buf, packet.clone()) {
                self.iovs[self.iovs_used] = iovec(self.buf, payload);
                self.iovs_used += 1;
                return;
            }
            self.flush_run();
        }
        let run = if self.offload {
            Run::start(self.buf, packet)
        } else {
            // Without a virtio header there is no way to say "super-packet".
            Run::alone(packet)
        };
        self.run = Some((run, self.iovs_used));
        // The first iovec is filled in at the flush, when the header is.
        self.iovs_used += 1;
    }

    fn flush_run(&mut self) {
        let Some((run, first_iov)) = self.run.take() else {
            return;
        };
        let hdr = run.finish(self.buf);
        let first = run.first();
        // The datagram's envelope in front of the packet has room for it.
        let vnet = if self.offload { VNET_HDR_LEN } else { 0 };
        let at = first.start - vnet;
        if let Ok(h) = <&mut [u8; VNET_HDR_LEN]>::try_from(&mut self.buf[at..first.start]) {
            hdr.write(h);
        }
        self.iovs[first_iov] = iovec(self.buf, at..first.end);
        let iovs = &self.iovs[first_iov..self.iovs_used];
        let segments = run.segments();
        let sqe = opcode::Writev::new(types::Fd(self.tun_fd), iovs.as_ptr(), iovs.len() as u32)
            // "Current position": TUN is a stream, the offset means
            // nothing, and -1 is valid for any file.
            .offset(u64::MAX)
            .build()
            .user_data(send_user_data(Op::TunWrite, self.bid, segments as u16));
        // SAFETY: the iovecs and the bytes they point at are this buffer's,
        // which stays out of the ring until its last operation completes.
        if unsafe { self.sq.push(&sqe) } {
            self.queued += 1;
            if segments > 1 {
                self.b.tun_coalesced_writes += 1;
                self.b.tun_coalesced_packets += segments as u64;
            }
        } else {
            self.b.tun_write_errors += segments as u64;
        }
    }

    /// The resealed datagram at `buf[d]` goes to `to`, through `channel`
    /// if it is a TURN server: in the same send as the ones before it if
    /// they lie just in front and go there too, and need no header.
    fn relay(&mut self, d: Range<usize>, sock: RawFd, to: SocketAddrV4, channel: Option<u16>) {
        if let Some((from, dest, bytes, n)) = self.relay.as_mut() {
            let joins = self.udp_gso
                && channel.is_none()
                && *from == sock
                && *dest == to
                && bytes.end == d.start
                && *n < GSO_MAX_SEGMENTS
                && d.end - bytes.start <= GSO_MAX_BYTES;
            if joins {
                bytes.end = d.end;
                *n += 1;
                return;
            }
            self.flush_relay();
        }
        match channel {
            None => self.relay = Some((sock, to, d, 1)),
            Some(n) => self.send_channel(d, sock, to, n),
        }
    }

    /// One datagram through a TURN channel, in a send of its own.
    fn send_channel(&mut self, d: Range<usize>, sock: RawFd, to: SocketAddrV4, channel: u16) {
        let Ok(header) = turn_channel::header(channel, d.len()) else {
            self.b.turn_malformed += 1;
            return;
        };
        let index = self.sends_used;
        let slot = &mut self.sends[index];
        let msg = slot.prepare_channel(header, &self.buf[d], to);
        self.push_send(msg, sock, index, 1);
    }

    fn flush_relay(&mut self) {
        let Some((sock, to, bytes, n)) = self.relay.take() else {
            return;
        };
        let index = self.sends_used;
        let slot = &mut self.sends[index];
        let msg = slot.prepare(&self.buf[bytes], to, (n > 1).then_some(self.segment as u16));
        self.push_send(msg, sock, index, n);
    }

    fn push_send(&mut self, msg: *const libc::msghdr, sock: RawFd, index: usize, n: usize) {
        let sqe = opcode::SendMsg::new(types::Fd(sock), msg)
            .build()
            .user_data(send_user_data(Op::SendUdp, self.bid, index as u16));
        // SAFETY: the slot and the bytes stay untouched until this send's
        // completion releases the buffer.
        if unsafe { self.sq.push(&sqe) } {
            self.queued += 1;
            self.sends_used += 1;
            self.b.forwarded += n as u64;
        } else {
            self.b.send_errors += n as u64;
        }
    }
}

/// What an opened datagram asks of the worker that received it.
pub(super) enum Verdict<'s> {
    /// Counted (and handed up, if it was the control thread's); nothing
    /// more to do.
    Done,
    /// Write `buf[packet]` to TUN; it came from `peer`'s VIP, if that is a
    /// direct peer, and carries `bytes` of payload.
    Deliver {
        packet: Range<usize>,
        peer: Option<&'s PeerEntry>,
        bytes: usize,
    },
    /// A FORWARD for another node: reseal it for `peer` and pass it on.
    Relay { peer: &'s PeerEntry, bytes: usize },
}

/// Opens the datagram at `buf[d]`, received from `from` on `local`, and
/// decides what becomes of it: the step every path's receive shares
/// (UDP, TURN channel, TCP stream). Messages for the control thread go up
/// here.
#[allow(clippy::too_many_arguments)]
pub(super) fn open_datagram<'s>(
    snap: &'s Snapshot,
    own_key: &PeerKey,
    buf: &mut [u8],
    d: Range<usize>,
    from: SocketAddrV4,
    local: u16,
    upcalls: &Sender<Upcall>,
    b: &mut CounterSnapshot,
) -> Verdict<'s> {
    let opened = match frame::open(snap, own_key, &mut buf[d.clone()]) {
        Ok(o) => o,
        Err(OpenError::Replayed) => {
            b.replayed += 1;
            return Verdict::Done;
        }
        Err(e) => {
            b.decrypt_failed += 1;
            tracing::debug!(%from, %e, "dropping datagram");
            return Verdict::Done;
        }
    };
    let session = opened.session.map(|s| s.peer);
    if let Some(s) = opened.session {
        b.session_rx += 1;
        if opened.first_use {
            let index = s.local_index;
            upcall(upcalls, b, || Upcall::SessionUsed { index });
        }
    }
    let plain_at = d.start + ENVELOPE_LEN;
    let plain = &buf[plain_at..d.end];
    // A session's empty message only shows it is alive (the handshake's
    // confirmation); it has been counted.
    if plain.is_empty() && session.is_some() {
        return Verdict::Done;
    }
    let bytes = plain.len().saturating_sub(1);
    match frame::inbound(snap, plain) {
        Inbound::Deliver { src, .. } | Inbound::Relay { src, .. }
            if session.is_none() && snap.protected.contains(&src) =>
        {
            b.unsealed_refused += 1;
            tracing::debug!(%from, %src, "refusing unsealed traffic from a peer that seals");
        }
        Inbound::Deliver { packet, src } => {
            return Verdict::Deliver {
                packet: plain_at + packet.start..plain_at + packet.end,
                peer: snap.direct.get(&src),
                bytes,
            };
        }
        Inbound::Relay { peer, .. } => {
            if d.len() > MAX_DATAGRAM {
                b.oversize += 1;
            } else {
                return Verdict::Relay { peer, bytes };
            }
        }
        Inbound::NoRoute => b.no_route += 1,
        Inbound::Upcall => {
            if upcall(upcalls, b, || Upcall::Peer {
                from,
                local,
                plaintext: plain.to_vec(),
                session,
            }) {
                b.peer_upcalls += 1;
            }
        }
        Inbound::Malformed => b.dropped_malformed += 1,
    }
    Verdict::Done
}

/// Seals the opened FORWARD at `buf[d]` again, for `peer`; false (and
/// counted) if it cannot be.
pub(super) fn reseal(
    peer: &PeerEntry,
    buf: &mut [u8],
    d: Range<usize>,
    ivs: &mut IvSequence,
    b: &mut CounterSnapshot,
) -> bool {
    let seal = match &peer.session {
        Some(s) => Seal::Session(&s.0),
        None => Seal::Envelope(&peer.key, ivs.next_iv()),
    };
    if seal.seal(buf, d).is_err() {
        b.dropped_malformed += 1;
        return false;
    }
    if peer.session.is_some() {
        b.session_tx += 1;
    }
    true
}

/// One sealed datagram onto a peer's TCP stream, counted.
pub(super) fn send_on_stream(tx: &StreamTx, datagram: &[u8], b: &mut CounterSnapshot) {
    match tx.send(datagram) {
        Ok(()) => b.forwarded += 1,
        Err(e) => {
            b.tcp_tx_dropped += 1;
            tracing::debug!(%e, "dropping a datagram for a TCP stream");
        }
    }
}

/// The datagram inside the ChannelData at `buf[d]` and the peer address
/// its channel is bound to; `None` for anything else the TURN server sends
/// (STUN has gone up before), or a channel not bound.
fn unwrap_channel(
    t: &TurnSocket,
    buf: &[u8],
    d: Range<usize>,
) -> Option<(Range<usize>, SocketAddrV4)> {
    let (channel, data) = turn_channel::parse(buf.get(d.clone())?).ok()?;
    let peer = *t.channels.get(&channel)?;
    let start = d.start + turn_channel::HEADER_LEN;
    Some((start..start + data.len(), peer))
}

/// The socket a peer's path uses, as upcalls name it.
fn socket_id(p: &PeerEntry) -> u16 {
    p.socket.as_ref().map_or(MAIN_SOCKET, |s| s.id)
}
