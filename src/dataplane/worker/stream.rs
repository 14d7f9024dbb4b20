//! The TCP streams a worker owns (docs/tcp.md): one receive in flight per
//! stream into a buffer of its own, frames taken off the front as they
//! complete, each opened where it lies like a datagram and then written
//! to TUN, passed on, or handed up. What a stream carries is small next to
//! the UDP path's traffic, so its TUN writes and sends are plain syscalls
//! rather than ring operations holding buffers.
//!
//! A stream that ends (closed, failed, or sending something that is not a
//! frame) is reported once and read no more; the control thread drops it
//! from the snapshot, which cancels nothing here because nothing is armed.

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types};

use super::receive::{open_datagram, reseal, send_on_stream, Verdict};
use super::{send_user_data, upcall, Batch, Core, Op, Sq};
use crate::dataplane::counters::CounterSnapshot;
use crate::dataplane::offload::VNET_HDR_LEN;
use crate::dataplane::sendmsg::SendSlot;
use crate::dataplane::snapshot::{PeerEntry, Snapshot};
use crate::dataplane::stream::LocalStream;
use crate::dataplane::Upcall;
use crate::proto::crypto::IvSequence;
use crate::proto::stream::next_frame;
use crate::turn::channel;

/// Bytes of a stream's receive buffer: many frames a read, and always room
/// for the largest one behind a partial frame kept from the last read.
const RECV_BUFFER: usize = 64 * 1024;

pub(super) struct StreamRecv {
    stream: LocalStream,
    buf: Box<[u8]>,
    /// Bytes in `buf` not yet taken as frames.
    filled: usize,
    armed: bool,
    /// A POLLOUT is armed for the send queue.
    polling: bool,
    /// Still in the snapshot; once not, the entry goes at its last
    /// completion (the kernel must be done with the fd and the buffer).
    wanted: bool,
    /// Reported over: nothing is armed again.
    ended: bool,
}

/// The streams of one worker.
#[derive(Default)]
pub(super) struct Streams {
    list: Vec<StreamRecv>,
    generation: Option<u64>,
}

impl Streams {
    /// Brings the list in line with the snapshot's streams this worker
    /// owns; returns the receives and polls to cancel.
    pub(super) fn sync(&mut self, snap: &Snapshot, queue: usize, workers: usize) -> Vec<u64> {
        if self.generation == Some(snap.generation) {
            return Vec::new();
        }
        self.generation = Some(snap.generation);
        let mut cancel = Vec::new();
        for s in &mut self.list {
            let wanted = snap.streams.contains(&s.stream);
            if s.wanted && !wanted {
                if s.armed {
                    cancel.push(send_user_data(Op::StreamRecv, 0, s.stream.id));
                }
                if s.polling {
                    cancel.push(send_user_data(Op::StreamPoll, 0, s.stream.id));
                }
            }
            s.wanted = wanted;
        }
        self.list.retain(|s| s.wanted || s.armed || s.polling);
        for st in snap.streams.iter().filter(|s| s.owner(workers) == queue) {
            if !self.list.iter().any(|s| s.stream == *st) {
                self.list.push(StreamRecv {
                    stream: st.clone(),
                    buf: vec![0; RECV_BUFFER].into_boxed_slice(),
                    filled: 0,
                    armed: false,
                    polling: false,
                    wanted: true,
                    ended: false,
                });
            }
        }
        cancel
    }

    /// Arms a receive on every live stream without one, and a POLLOUT on
    /// every one whose send queue waits for room. False if the submission
    /// queue is full.
    pub(super) fn arm(&mut self, sq: &mut Sq<'_>) -> bool {
        for s in self.list.iter_mut().filter(|s| s.wanted && !s.ended) {
            if !s.armed {
                let room = &mut s.buf[s.filled..];
                let sqe = opcode::Recv::new(
                    types::Fd(s.stream.fd.as_raw_fd()),
                    room.as_mut_ptr(),
                    room.len() as u32,
                )
                .build()
                .user_data(send_user_data(Op::StreamRecv, 0, s.stream.id));
                // SAFETY: the buffer is boxed and stays in the entry, which
                // stays in the list (holding the fd) until this completes.
                if !unsafe { sq.push(&sqe) } {
                    return false;
                }
                s.armed = true;
            }
            if !s.polling && s.stream.tx.queued() > 0 {
                let sqe =
                    opcode::PollAdd::new(types::Fd(s.stream.fd.as_raw_fd()), libc::POLLOUT as u32)
                        .build()
                        .user_data(send_user_data(Op::StreamPoll, 0, s.stream.id));
                // SAFETY: a poll references only the fd, held as above.
                if !unsafe { sq.push(&sqe) } {
                    return false;
                }
                s.polling = true;
            }
        }
        true
    }

    pub(super) fn busy(&self) -> bool {
        self.list.iter().any(|s| s.armed || s.polling)
    }

    /// User data of every armed operation, for cancelling at shutdown.
    pub(super) fn armed(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for s in &self.list {
            if s.armed {
                out.push(send_user_data(Op::StreamRecv, 0, s.stream.id));
            }
            if s.polling {
                out.push(send_user_data(Op::StreamPoll, 0, s.stream.id));
            }
        }
        out
    }

    fn index(&self, id: u16) -> Option<usize> {
        self.list.iter().position(|s| s.stream.id == id)
    }

    /// The POLLOUT on stream `id` fired (or was cancelled): push its queue.
    pub(super) fn writable(
        &mut self,
        id: u16,
        upcalls: &crossbeam_channel::Sender<Upcall>,
        b: &mut CounterSnapshot,
    ) {
        let Some(i) = self.index(id) else { return };
        let s = &mut self.list[i];
        s.polling = false;
        if s.wanted && !s.ended {
            if let Err(e) = s.stream.tx.flush() {
                end(s, format!("send failed: {e}"), upcalls, b);
            }
        }
        self.forget_if_done(i);
    }

    fn forget_if_done(&mut self, i: usize) {
        let s = &self.list[i];
        if !s.wanted && !s.armed && !s.polling {
            self.list.swap_remove(i);
        }
    }
}

/// Marks `s` over and tells the control thread why.
fn end(
    s: &mut StreamRecv,
    reason: String,
    upcalls: &crossbeam_channel::Sender<Upcall>,
    b: &mut CounterSnapshot,
) {
    if s.ended {
        return;
    }
    s.ended = true;
    let id = s.stream.id;
    tracing::debug!(stream = id, remote = %s.stream.remote, %reason, "TCP stream over");
    upcall(upcalls, b, || Upcall::StreamEnded { id, reason });
}

impl Core {
    /// A receive on stream `id` completed with `res`.
    pub(super) fn stream_received(&mut self, id: u16, res: i32, batch: &mut Batch<'_, '_>) {
        let Some(i) = self.streams.index(id) else {
            return;
        };
        let Batch {
            snap,
            counts: b,
            tally,
            ..
        } = batch;
        let snap = *snap;
        let s = &mut self.streams.list[i];
        s.armed = false;
        if !s.wanted || s.ended || self.closing {
            self.streams.forget_if_done(i);
            return;
        }
        let got = match res {
            0 => {
                end(s, "closed by the peer".into(), &self.upcalls, b);
                return;
            }
            r if r == -libc::ECANCELED || r == -libc::EINTR || r == -libc::EAGAIN => return,
            r if r < 0 => {
                let e = std::io::Error::from_raw_os_error(-r);
                end(s, format!("receive failed: {e}"), &self.upcalls, b);
                return;
            }
            r => r as usize,
        };
        let Some(u) = self.udp.as_ref() else { return };
        s.filled += got;
        let mut at = 0;
        let remote = s.stream.remote;
        let mut out = Out {
            tun_fd: self.tun_fd,
            offload: self.offload,
            sock: u.sock.as_raw_fd(),
            ivs: &mut self.ivs,
            b,
        };
        loop {
            match next_frame(&s.buf[at..s.filled]) {
                Ok(Some((payload, next))) => {
                    let d = at + payload.start..at + payload.end;
                    match open_datagram(
                        snap,
                        &u.own_key,
                        &mut s.buf,
                        d.clone(),
                        remote,
                        id,
                        &self.upcalls,
                        out.b,
                    ) {
                        Verdict::Done => {}
                        Verdict::Deliver {
                            packet,
                            peer,
                            bytes,
                        } => {
                            if let Some(peer) = peer {
                                tally.rx(&peer.counters, bytes);
                            }
                            out.b.tcp_rx_packets += 1;
                            out.b.tcp_rx_bytes += bytes as u64;
                            out.write_tun(&s.buf[packet]);
                        }
                        Verdict::Relay { peer, bytes } => {
                            if reseal(peer, &mut s.buf, d.clone(), out.ivs, out.b) {
                                tally.tx(&peer.counters, 1, bytes);
                                out.pass_on(peer, &s.buf[d]);
                            }
                        }
                    }
                    at += next;
                }
                Ok(None) => break,
                Err(e) => {
                    end(s, format!("not a frame: {e}"), &self.upcalls, out.b);
                    return;
                }
            }
        }
        s.buf.copy_within(at..s.filled, 0);
        s.filled -= at;
    }
}

/// Where a stream's frames go, synchronously.
struct Out<'a> {
    tun_fd: RawFd,
    offload: bool,
    /// The shared-port socket, for FORWARDs passed on over UDP.
    sock: RawFd,
    ivs: &'a mut IvSequence,
    b: &'a mut CounterSnapshot,
}

impl Out<'_> {
    /// One packet to TUN, behind an empty virtio header if the queue
    /// takes one.
    fn write_tun(&mut self, packet: &[u8]) {
        let vnet = [0u8; VNET_HDR_LEN];
        let parts = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: if self.offload { VNET_HDR_LEN } else { 0 },
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: the iovecs point at live memory for the call.
        let n = unsafe { libc::writev(self.tun_fd, parts.as_ptr(), 2) };
        if n < 0 {
            self.b.tun_write_errors += 1;
        } else {
            self.b.tun_written += 1;
            self.b.tun_written_bytes += packet.len() as u64;
        }
    }

    /// A resealed FORWARD to its next hop, whichever path that is.
    fn pass_on(&mut self, peer: &PeerEntry, datagram: &[u8]) {
        if let Some(s) = &peer.stream {
            send_on_stream(&s.tx, datagram, self.b);
            return;
        }
        let mut slot = SendSlot::new();
        let msg = match peer.channel {
            None => slot.prepare(datagram, peer.endpoint, None),
            Some(n) => match channel::header(n, datagram.len()) {
                Ok(h) => slot.prepare_channel(h, datagram, peer.endpoint),
                Err(_) => {
                    self.b.turn_malformed += 1;
                    return;
                }
            },
        };
        let sock = peer.socket.as_ref().map_or(self.sock, |s| s.fd.as_raw_fd());
        // SAFETY: the slot and the datagram live for the call.
        let n = unsafe { libc::sendmsg(sock, msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            self.b.send_errors += 1;
        } else {
            self.b.forwarded += 1;
            self.b.udp_tx_packets += 1;
            self.b.udp_tx_bytes += n as u64;
        }
    }
}
