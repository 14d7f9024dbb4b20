//! One worker: one thread, one io_uring, one TUN queue, one UDP socket, and
//! a provided-buffer ring for each of the two.
//!
//! Both are read with a single multishot operation (read on the TUN queue,
//! recvmsg on the socket), so the steady state costs one io_uring_enter per
//! batch: it submits the sends and TUN writes the previous batch queued and
//! waits for the next completions. A packet never leaves the buffer the
//! kernel read it into: it is sealed or opened there, sent or written from
//! there, and the buffer goes back to its ring when that operation
//! completes. The ring is created on the worker thread itself because
//! SINGLE_ISSUER binds it to its creator.

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use io_uring::squeue::Entry;
use io_uring::{cqueue, opcode, types, IoUring, SubmissionQueue, Submitter};
use tokio::sync::Notify;

mod receive;
mod send;
mod stream;

use super::bufring::{BufRing, Layout};
use super::counters::{CounterSnapshot, SharedCounters};
use super::frame::RECVMSG_PREFIX;
use super::offload::VNET_HDR_LEN;
use super::sendmsg::SendSlot;
use super::snapshot::{
    LocalSocket, PeerCounterSnapshot, PeerCounters, SharedSnapshot, Snapshot, MAIN_SOCKET,
};
use super::{DataplaneError, Upcall};
use crate::proto::crypto::{IvSequence, PeerKey};
use crate::proto::mtu::MAX_DATAGRAM;
use crate::sys::affinity;
use crate::sys::udp::{GRO_CONTROL_LEN, GSO_MAX_SEGMENTS};
use crate::sys::uring_support::{self, Step};

/// Buffer group of the TUN ring and of the UDP ring.
const TUN_BGID: u16 = 0;
const UDP_BGID: u16 = 1;
/// How long one io_uring_enter may sleep: the bound on how late a worker
/// notices a shutdown request.
const WAIT: Duration = Duration::from_millis(50);
/// How long to wait for the kernel to confirm every operation is done
/// before giving up on reusing the buffer memory.
const CANCEL_DEADLINE: Duration = Duration::from_secs(2);
/// Half-way through the deadline, in-flight sends (stuck behind a full
/// socket buffer, say) are cancelled too.
const CANCEL_ALL_AFTER: Duration = Duration::from_secs(1);
/// Bytes of each UDP buffer: recvmsg header and source address, then the
/// largest datagram a Candy peer sends, plus slack so a slightly longer
/// one is seen (and counted) rather than silently truncated.
const UDP_BUFFER_PAYLOAD: usize = RECVMSG_PREFIX + MAX_DATAGRAM;
/// With UDP GRO: the control message, then a run of datagrams as long as
/// one UDP payload can be.
const UDP_GRO_BUFFER_PAYLOAD: usize = RECVMSG_PREFIX + GRO_CONTROL_LEN + u16::MAX as usize;
/// How many of those per worker. Each holds up to 64 datagrams, so 64 of
/// them hold more than the socket's 1 MiB receive buffer can queue, at 4 MiB
/// per worker instead of 16 for one per TUN buffer. A peer without GSO
/// fills one buffer per datagram; when they run out the multishot receive
/// ends, the datagrams wait in the socket, and the next batch re-arms.
const UDP_GRO_BUFFERS: u32 = 64;

/// Operation kinds, in the top half of the user data; the bottom half is
/// the buffer id for operations that own a buffer, and above it the index
/// of the send among those from the same buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Op {
    TunRead = 1,
    UdpRecv = 2,
    /// A send from a TUN-ring buffer (direct path).
    SendTun = 3,
    /// A send from a UDP-ring buffer (a FORWARD passed on).
    SendUdp = 4,
    /// A TUN write from a UDP-ring buffer.
    TunWrite = 5,
    Cancel = 6,
    /// A receive on a TCP stream; the send index is the stream's id.
    StreamRecv = 7,
    /// A TCP stream's socket has room for its send queue.
    StreamPoll = 8,
}

fn user_data(op: Op, bid: u16) -> u64 {
    send_user_data(op, bid, 0)
}

fn send_user_data(op: Op, bid: u16, send: u16) -> u64 {
    (u64::from(op as u32) << 32) | (u64::from(send) << 16) | u64::from(bid)
}

/// Operation, buffer id and send index.
fn decode_user_data(ud: u64) -> Option<(Op, u16, u16)> {
    let bid = (ud & 0xffff) as u16;
    let send = ((ud >> 16) & 0xffff) as u16;
    let op = match ud >> 32 {
        1 => Op::TunRead,
        2 => Op::UdpRecv,
        3 => Op::SendTun,
        4 => Op::SendUdp,
        5 => Op::TunWrite,
        6 => Op::Cancel,
        7 => Op::StreamRecv,
        8 => Op::StreamPoll,
        _ => return None,
    };
    Some((op, bid, send))
}

pub(crate) struct UdpSpec {
    pub sock: OwnedFd,
    pub own_key: Arc<PeerKey>,
    /// UDP_GRO is on: receives may be runs of datagrams.
    pub gro: bool,
}

pub(crate) struct WorkerSpec {
    pub index: usize,
    /// How many workers there are: which TCP streams this one reads.
    pub workers: usize,
    pub fd: OwnedFd,
    pub cpu: Option<usize>,
    pub layout: Layout,
    pub upcalls: Sender<Upcall>,
    pub notify: Arc<Notify>,
    pub counters: SharedCounters,
    pub stop: Arc<AtomicBool>,
    pub snapshot: SharedSnapshot,
    pub mss_clamp: Option<u16>,
    pub udp: Option<UdpSpec>,
    /// The queue carries `virtio_net_hdr`s (see `offload`).
    pub offload: bool,
}

/// Start a worker thread and wait until its ring is set up, so that setup
/// failures come back to `Dataplane::start` as errors.
pub(crate) fn spawn(
    spec: WorkerSpec,
) -> Result<JoinHandle<Result<(), DataplaneError>>, DataplaneError> {
    let queue = spec.index;
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new()
        .name(format!("rl-dp{queue}"))
        .spawn(move || run(spec, ready_tx))
        .map_err(|source| DataplaneError::Spawn { queue, source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(DataplaneError::WorkerPanicked { queue })
        }
    }
}

fn run(spec: WorkerSpec, ready: Sender<Result<(), DataplaneError>>) -> Result<(), DataplaneError> {
    if let Some(cpu) = spec.cpu {
        // Running unpinned is slower, not wrong.
        if let Err(e) = affinity::pin_current_thread(cpu) {
            tracing::warn!(queue = spec.index, %e, "could not pin dataplane worker");
        }
    }
    let notify = spec.notify.clone();
    let result = match Worker::new(spec) {
        Ok(mut w) => {
            let _ = ready.send(Ok(()));
            w.run()
            // Dropping `w` cancels its operations and closes the fds.
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            Ok(())
        }
    };
    // The channel sender is gone now; wake an async receiver so it sees the
    // disconnect instead of waiting forever.
    notify.notify_one();
    if let Err(e) = &result {
        tracing::error!(%e, "dataplane worker stopped");
    }
    result
}

/// The UDP half of a worker.
struct UdpPath {
    sock: OwnedFd,
    bufs: ManuallyDrop<BufRing>,
    own_key: Arc<PeerKey>,
    /// Template for the multishot recvmsg: only the name and control
    /// lengths matter, and parsing the output needs the same values.
    msghdr: Box<libc::msghdr>,
    /// Per buffer, `slots_per_buffer` iovecs for TUN writes and sends for
    /// FORWARDs passed on (one per datagram the buffer can hold), so
    /// queuing either allocates nothing; and how many operations still
    /// hold the buffer.
    slots_per_buffer: usize,
    iovs: Box<[libc::iovec]>,
    sends: Box<[SendSlot]>,
    refs: Box<[u8]>,
    armed: bool,
    armed_once: bool,
    /// The snapshot's extra sockets, each with its own multishot receive
    /// into the same buffer group, and the generation they were read from.
    extras: Vec<ExtraRecv>,
    extras_generation: Option<u64>,
}

/// A multishot receive on one of the snapshot's [`LocalSocket`]s.
struct ExtraRecv {
    socket: LocalSocket,
    armed: bool,
    /// Still in the snapshot. Once it is not, the receive is cancelled and
    /// the entry, with this worker's hold on the fd, goes at its last
    /// completion: the kernel must be done with the fd before it closes.
    wanted: bool,
    /// Ended with an error re-arming cannot cure: left alone until the
    /// socket leaves the snapshot.
    failed: bool,
}

impl UdpPath {
    /// A completion of the receive on extra socket `id`.
    fn extra_done(&mut self, id: u16, ended: bool, res: i32) {
        let Some(i) = self.extras.iter().position(|e| e.socket.id == id) else {
            return;
        };
        let e = &mut self.extras[i];
        if !ended {
            return;
        }
        e.armed = false;
        if res < 0 && !rearmable(res) && e.wanted {
            e.failed = true;
            tracing::warn!(
                socket = id,
                errno = -res,
                "receive on an extra UDP socket failed; not re-armed"
            );
        }
        if !e.wanted {
            self.extras.swap_remove(i);
        }
    }

    /// Brings `extras` in line with the snapshot's sockets: new ones are
    /// added unarmed, gone ones are marked unwanted and returned if their
    /// receive must be cancelled.
    fn sync_extras(&mut self, snap: &Snapshot) -> Vec<u16> {
        if self.extras_generation == Some(snap.generation) {
            return Vec::new();
        }
        self.extras_generation = Some(snap.generation);
        let mut cancel = Vec::new();
        for e in &mut self.extras {
            let wanted = snap.sockets.contains(&e.socket);
            if e.wanted && !wanted && e.armed {
                cancel.push(e.socket.id);
            }
            e.wanted = wanted;
        }
        self.extras.retain(|e| e.wanted || e.armed);
        for s in &snap.sockets {
            if !self.extras.iter().any(|e| e.socket == *s) {
                self.extras.push(ExtraRecv {
                    socket: s.clone(),
                    armed: false,
                    wanted: true,
                    failed: false,
                });
            }
        }
        cancel
    }
}

/// Why a multishot operation ended the worker.
enum Fatal {
    TunRead(i32),
    UdpRecv(i32),
}

/// Per-peer counts for one batch, so that a burst to one peer costs one
/// atomic add on the shared counters rather than one per packet. A handful
/// of slots covers the peers one batch touches; more just flush early.
struct PeerTally<'s> {
    slots: [(Option<&'s PeerCounters>, PeerCounterSnapshot); 8],
}

impl<'s> PeerTally<'s> {
    fn new() -> Self {
        PeerTally {
            slots: [(None, PeerCounterSnapshot::default()); 8],
        }
    }

    fn slot(&mut self, c: &'s PeerCounters) -> &mut PeerCounterSnapshot {
        let i = self
            .slots
            .iter()
            .position(|(p, _)| p.is_none_or(|p| std::ptr::eq(p, c)))
            .unwrap_or_else(|| {
                self.flush();
                0
            });
        let s = &mut self.slots[i];
        s.0 = Some(c);
        &mut s.1
    }

    fn tx(&mut self, c: &'s PeerCounters, packets: usize, bytes: usize) {
        let s = self.slot(c);
        s.tx_packets += packets as u64;
        s.tx_bytes += bytes as u64;
    }

    fn rx(&mut self, c: &'s PeerCounters, bytes: usize) {
        let s = self.slot(c);
        s.rx_packets += 1;
        s.rx_bytes += bytes as u64;
    }

    fn flush(&mut self) {
        for (p, d) in &mut self.slots {
            if let Some(p) = p.take() {
                p.add(d);
            }
            *d = PeerCounterSnapshot::default();
        }
    }
}

/// The submission side of the ring during a batch. Operations queue up and
/// go to the kernel together with the next wait; only a full queue forces
/// an early submit.
struct Sq<'r> {
    sq: SubmissionQueue<'r>,
    submitter: Submitter<'r>,
}

impl Sq<'_> {
    /// # Safety
    /// Every buffer and address `sqe` points at must stay valid and
    /// untouched until its completion is reaped (or the ring is gone).
    unsafe fn push(&mut self, sqe: &Entry) -> bool {
        if unsafe { self.sq.push(sqe) }.is_ok() {
            return true;
        }
        self.sq.sync();
        let _ = self.submitter.submit();
        self.sq.sync();
        unsafe { self.sq.push(sqe) }.is_ok()
    }
}

/// What every completion of one drain works with: the snapshot loaded once
/// for the batch, the submission queue the resulting operations go to, and
/// the counts published together at the batch's end. The send side
/// (`tun_packet`) and the receive side (`datagrams`, which spreads it over
/// its `Receive`) take it whole.
struct Batch<'s, 'r> {
    snap: &'s Snapshot,
    sq: Sq<'r>,
    counts: CounterSnapshot,
    tally: PeerTally<'s>,
}

/// Everything a completion handler touches except the ring itself.
struct Core {
    tun_fd: RawFd,
    tun_bufs: ManuallyDrop<BufRing>,
    /// Sends in flight from each TUN buffer: `sends_per_buffer` slots per
    /// buffer id, and how many of them are in use.
    sends: Box<[SendSlot]>,
    sends_per_buffer: usize,
    tun_refs: Box<[u8]>,
    /// TUN reads and writes carry a `virtio_net_hdr`; reads may be
    /// super-packets.
    offload: bool,
    /// UDP GSO sends work; cleared by the first one the kernel refuses.
    udp_gso: bool,
    udp: Option<UdpPath>,
    upcalls: Sender<Upcall>,
    ivs: IvSequence,
    mss_clamp: Option<u16>,
    tun_armed: bool,
    tun_armed_once: bool,
    /// The TCP streams this worker reads.
    streams: stream::Streams,
    queue: usize,
    workers: usize,
    /// Sends and TUN writes submitted and not yet completed; each holds a
    /// buffer.
    inflight: usize,
    /// Shutting down: buffers that arrive are recycled, nothing new is
    /// started.
    closing: bool,
}

struct Worker {
    queue: usize,
    // Dropped by hand, in order: ring, then buffer memory, then the fds.
    ring: ManuallyDrop<IoUring>,
    core: Core,
    tun: ManuallyDrop<OwnedFd>,
    notify: Arc<Notify>,
    counters: SharedCounters,
    stop: Arc<AtomicBool>,
    snapshot: SharedSnapshot,
    /// The snapshot the last batch worked with, kept until the next one:
    /// the sends it queued name fds of its sockets, and the kernel takes
    /// its own reference to those only when they are submitted.
    held: Option<Arc<Snapshot>>,
}

fn ring_err(queue: usize, op: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::Ring { queue, op, source }
}

/// A ring setup step failed: say why the kernel refused when that is the
/// reason (disabled, filtered, too old), else report the error as it is.
fn setup_err(queue: usize, step: Step) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |source| match uring_support::explain(step, &source) {
        Some(refusal) => DataplaneError::Refused { queue, refusal },
        None => ring_err(queue, step.name())(source),
    }
}

impl Worker {
    fn new(spec: WorkerSpec) -> Result<Self, DataplaneError> {
        let queue = spec.index;
        let tun_entries = u32::from(spec.layout.entries());
        let gro = spec.udp.as_ref().is_some_and(|u| u.gro);
        let udp_payload = if gro {
            UDP_GRO_BUFFER_PAYLOAD
        } else {
            UDP_BUFFER_PAYLOAD
        };
        let udp_buffers = if gro {
            tun_entries.min(UDP_GRO_BUFFERS)
        } else {
            tun_entries
        };
        let udp_layout = Layout::new(udp_buffers, udp_payload, 0)
            .map_err(|source| DataplaneError::BufRing { queue, source })?;
        let udp_entries = if spec.udp.is_some() { udp_buffers } else { 0 };
        // One submission per buffer in a batch fits without an early
        // submit. Twice the buffers covers a read and a send or write per
        // buffer; a batch with more completions than that (a super-packet
        // split into many sends) spills into the kernel's overflow list,
        // which is slower but loses nothing.
        let sq_entries = (tun_entries + udp_entries).clamp(64, 4096);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize((2 * (tun_entries + udp_entries) + 16).max(2 * sq_entries))
            .build(sq_entries)
            .map_err(setup_err(queue, Step::Setup))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(ring_err(queue, "register_probe"))?;
        if !probe.is_supported(opcode::ReadMulti::CODE) {
            let refusal = uring_support::missing(Step::MultishotRead);
            return Err(DataplaneError::Refused { queue, refusal });
        }
        let tun_bufs = BufRing::new(spec.layout)
            .map_err(|source| DataplaneError::BufRing { queue, source })?;
        // SAFETY: the ring memory is owned by `tun_bufs`, which is dropped
        // only after the io_uring (see Drop), i.e. after the registration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                tun_bufs.ring_addr(),
                spec.layout.entries(),
                TUN_BGID,
                0,
            )
        }
        .map_err(setup_err(queue, Step::RegisterBufRing))?;
        let udp = match spec.udp {
            Some(u) => {
                let bufs = BufRing::new(udp_layout)
                    .map_err(|source| DataplaneError::BufRing { queue, source })?;
                // SAFETY: as for the TUN ring.
                unsafe {
                    ring.submitter().register_buf_ring_with_flags(
                        bufs.ring_addr(),
                        udp_layout.entries(),
                        UDP_BGID,
                        0,
                    )
                }
                .map_err(setup_err(queue, Step::RegisterBufRing))?;
                // SAFETY: an all-zero msghdr is valid.
                let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                msghdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if gro {
                    msghdr.msg_controllen = GRO_CONTROL_LEN;
                }
                let slots_per_buffer = if gro {
                    receive::MAX_RECEIVE_SEGMENTS
                } else {
                    1
                };
                let entries = usize::from(udp_layout.entries());
                let no_iov = libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                Some(UdpPath {
                    sock: u.sock,
                    bufs: ManuallyDrop::new(bufs),
                    own_key: u.own_key,
                    msghdr,
                    slots_per_buffer,
                    iovs: vec![no_iov; entries * slots_per_buffer].into_boxed_slice(),
                    sends: (0..entries * slots_per_buffer)
                        .map(|_| SendSlot::new())
                        .collect(),
                    refs: vec![0; entries].into_boxed_slice(),
                    armed: false,
                    armed_once: false,
                    extras: Vec::new(),
                    extras_generation: None,
                })
            }
            None => None,
        };
        // A super-packet splits into at most GSO_MAX_SEGMENTS datagrams (the
        // device's gso_max_segs), which even without UDP GSO means at most
        // that many sends.
        let sends_per_buffer = if spec.offload { GSO_MAX_SEGMENTS } else { 1 };
        let tun_entries = usize::from(spec.layout.entries());
        let sends = (0..tun_entries * sends_per_buffer)
            .map(|_| SendSlot::new())
            .collect();
        Ok(Worker {
            queue,
            ring: ManuallyDrop::new(ring),
            core: Core {
                tun_fd: spec.fd.as_raw_fd(),
                tun_bufs: ManuallyDrop::new(tun_bufs),
                sends,
                sends_per_buffer,
                tun_refs: vec![0; tun_entries].into_boxed_slice(),
                offload: spec.offload,
                udp_gso: true,
                udp,
                upcalls: spec.upcalls,
                ivs: IvSequence::new(),
                mss_clamp: spec.mss_clamp,
                tun_armed: false,
                tun_armed_once: false,
                streams: stream::Streams::default(),
                queue,
                workers: spec.workers,
                inflight: 0,
                closing: false,
            },
            tun: ManuallyDrop::new(spec.fd),
            notify: spec.notify,
            counters: spec.counters,
            stop: spec.stop,
            snapshot: spec.snapshot,
            held: None,
        })
    }

    fn run(&mut self) -> Result<(), DataplaneError> {
        while !self.stop.load(Ordering::Acquire) {
            self.arm()?;
            self.wait()?;
            match self.drain() {
                Some(Fatal::TunRead(errno)) if !self.core.tun_armed => {
                    return Err(DataplaneError::Read {
                        queue: self.queue,
                        source: std::io::Error::from_raw_os_error(errno),
                    })
                }
                Some(Fatal::UdpRecv(errno)) if self.core.udp.as_ref().is_some_and(|u| !u.armed) => {
                    return Err(DataplaneError::UdpRecv {
                        queue: self.queue,
                        source: std::io::Error::from_raw_os_error(errno),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// (Re-)arm whichever multishot has ended.
    fn arm(&mut self) -> Result<(), DataplaneError> {
        let mut batch = CounterSnapshot::default();
        if !self.core.tun_armed {
            // The raw fd, not a registered one: TUN refuses multishot read
            // on a fixed file (-EBADFD). Length 0 means "the provided
            // buffer's size".
            let sqe = opcode::ReadMulti::new(types::Fd(self.core.tun_fd), 0, TUN_BGID)
                .build()
                .user_data(user_data(Op::TunRead, 0));
            self.push(&sqe)?;
            if self.core.tun_armed_once {
                batch.read_rearms += 1;
            }
            self.core.tun_armed = true;
            self.core.tun_armed_once = true;
        }
        if let Some(u) = self.core.udp.as_mut().filter(|u| !u.armed) {
            let sqe = opcode::RecvMsgMulti::new(
                types::Fd(u.sock.as_raw_fd()),
                &*u.msghdr as *const libc::msghdr,
                UDP_BGID,
            )
            .build()
            .user_data(user_data(Op::UdpRecv, 0));
            if u.armed_once {
                batch.recv_rearms += 1;
            }
            u.armed = true;
            u.armed_once = true;
            // SAFETY: the socket, the msghdr (boxed, never moved) and the
            // buffer group live until the final completion is reaped or the
            // ring is gone (see Drop).
            if !unsafe { self.sq().push(&sqe) } {
                return Err(sq_full(self.queue));
            }
        }
        self.arm_extras()?;
        self.counters.add(&batch);
        Ok(())
    }

    /// Receives on the snapshot's extra sockets: armed when they appear,
    /// re-armed when they end, cancelled when the socket is gone.
    fn arm_extras(&mut self) -> Result<(), DataplaneError> {
        if self.core.closing {
            return Ok(());
        }
        let snap = self.snapshot.load();
        let (submitter, sq, _) = self.ring.split();
        let mut sq = Sq { sq, submitter };
        let cancels = self
            .core
            .streams
            .sync(&snap, self.core.queue, self.core.workers);
        for ud in cancels {
            let cancel = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(user_data(Op::Cancel, 0));
            // SAFETY: a cancellation references no memory.
            if !unsafe { sq.push(&cancel) } {
                return Err(sq_full(self.queue));
            }
        }
        if !self.core.streams.arm(&mut sq) {
            return Err(sq_full(self.queue));
        }
        let Some(u) = self.core.udp.as_mut() else {
            return Ok(());
        };
        for id in u.sync_extras(&snap) {
            let cancel = opcode::AsyncCancel::new(send_user_data(Op::UdpRecv, 0, id))
                .build()
                .user_data(user_data(Op::Cancel, 0));
            // SAFETY: a cancellation references no memory.
            if !unsafe { sq.push(&cancel) } {
                return Err(sq_full(self.queue));
            }
        }
        for e in u
            .extras
            .iter_mut()
            .filter(|e| e.wanted && !e.armed && !e.failed)
        {
            let sqe = opcode::RecvMsgMulti::new(
                types::Fd(e.socket.fd.as_raw_fd()),
                &*u.msghdr as *const libc::msghdr,
                UDP_BGID,
            )
            .build()
            .user_data(send_user_data(Op::UdpRecv, 0, e.socket.id));
            // SAFETY: as for the main socket; the fd stays open while the
            // entry holds it, which is until the last completion.
            if !unsafe { sq.push(&sqe) } {
                return Err(sq_full(self.queue));
            }
            e.armed = true;
        }
        Ok(())
    }

    fn sq(&mut self) -> Sq<'_> {
        let (submitter, sq, _) = self.ring.split();
        Sq { sq, submitter }
    }

    fn push(&mut self, sqe: &Entry) -> Result<(), DataplaneError> {
        // SAFETY: only used for the TUN read and for cancellations, which
        // reference the TUN fd and buffer group (valid until the ring is
        // gone) or nothing.
        if unsafe { self.sq().push(sqe) } {
            Ok(())
        } else {
            Err(sq_full(self.queue))
        }
    }

    /// Submit what is queued and sleep until a completion or the timeout.
    fn wait(&mut self) -> Result<(), DataplaneError> {
        let ts = types::Timespec::from(WAIT);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(DataplaneError::Ring {
                queue: self.queue,
                op: "io_uring_enter",
                source,
            }),
        }
    }

    /// Handle every completion that is ready against one snapshot, queue the
    /// resulting sends and writes, recycle finished buffers, publish the
    /// counters.
    fn drain(&mut self) -> Option<Fatal> {
        let snap = self.snapshot.load();
        let mut fatal = None;
        let (submitter, sq, cq) = self.ring.split();
        let mut batch = Batch {
            snap: &snap,
            sq: Sq { sq, submitter },
            counts: CounterSnapshot::default(),
            tally: PeerTally::new(),
        };
        for cqe in cq {
            let Some((op, bid, send)) = decode_user_data(cqe.user_data()) else {
                continue;
            };
            fatal = fatal.or(self.core.complete(op, bid, send, &cqe, &mut batch));
        }
        batch.sq.sq.sync();
        self.core.tun_bufs.publish();
        if let Some(u) = &self.core.udp {
            u.bufs.publish();
        }
        batch.tally.flush();
        self.counters.add(&batch.counts);
        if batch.counts.upcalls > 0 {
            self.notify.notify_one();
        }
        drop(batch);
        self.held = Some(snap);
        fatal
    }
}

fn sq_full(queue: usize) -> DataplaneError {
    DataplaneError::Ring {
        queue,
        op: "submission queue push",
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    }
}

/// One operation holding buffer `bid` is done; the last one returns the
/// buffer to its ring.
fn release(refs: &mut [u8], bufs: &mut BufRing, bid: u16) {
    if let Some(r) = refs.get_mut(usize::from(bid)) {
        *r = r.saturating_sub(1);
        if *r == 0 {
            bufs.push(bid);
        }
    }
}

/// Whether a multishot that failed with `-res` can simply be re-armed.
fn rearmable(res: i32) -> bool {
    matches!(
        -res,
        libc::ENOBUFS | libc::ECANCELED | libc::EAGAIN | libc::EINTR
    )
}

impl Core {
    fn complete(
        &mut self,
        op: Op,
        bid: u16,
        send: u16,
        cqe: &cqueue::Entry,
        batch: &mut Batch<'_, '_>,
    ) -> Option<Fatal> {
        let res = cqe.result();
        let flags = cqe.flags();
        match op {
            Op::TunRead => {
                if !cqueue::more(flags) {
                    self.tun_armed = false;
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    let keep = res > 0 && self.tun_packet(bid, res as usize, batch);
                    if !keep {
                        self.tun_bufs.push(bid);
                    }
                }
                match res {
                    r if r > 0 => None,
                    // A TUN read never returns 0; treat it as end of file
                    // rather than re-arming in a tight loop.
                    0 if !cqueue::more(flags) => Some(Fatal::TunRead(0)),
                    0 => None,
                    // Out of buffers, or interrupted: re-arming is the cure.
                    r if rearmable(r) => None,
                    r => Some(Fatal::TunRead(-r)),
                }
            }
            Op::UdpRecv => {
                // The send index of a receive is the socket it is on.
                let local = send;
                let u = self.udp.as_mut()?;
                let ended = !cqueue::more(flags);
                if local == MAIN_SOCKET {
                    if ended {
                        u.armed = false;
                    }
                } else {
                    u.extra_done(local, ended, res);
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    let keep = res > 0 && self.datagrams(bid, res as usize, local, batch);
                    if !keep {
                        if let Some(u) = self.udp.as_mut() {
                            u.bufs.push(bid);
                        }
                    }
                }
                match res {
                    r if r >= 0 || rearmable(r) || local != MAIN_SOCKET => None,
                    r => Some(Fatal::UdpRecv(-r)),
                }
            }
            Op::SendTun => {
                self.inflight = self.inflight.saturating_sub(1);
                let slot = usize::from(bid) * self.sends_per_buffer + usize::from(send);
                let datagrams = self.sends.get(slot).map_or(1, |s| s.datagrams);
                self.count_send(res, datagrams, &mut batch.counts);
                release(&mut self.tun_refs, &mut self.tun_bufs, bid);
                None
            }
            Op::SendUdp => {
                self.inflight = self.inflight.saturating_sub(1);
                let datagrams = self.udp.as_ref().map_or(1, |u| {
                    let slot = usize::from(bid) * u.slots_per_buffer + usize::from(send);
                    u.sends.get(slot).map_or(1, |s| s.datagrams)
                });
                self.count_send(res, datagrams, &mut batch.counts);
                self.release_udp_buffer(bid);
                None
            }
            Op::TunWrite => {
                self.inflight = self.inflight.saturating_sub(1);
                // The send index of a TUN write is how many packets it holds.
                let packets = u64::from(send);
                let b = &mut batch.counts;
                if res < 0 {
                    b.tun_write_errors += packets;
                    tracing::debug!(errno = -res, "tun write failed");
                } else {
                    b.tun_written += packets;
                    let vnet = if self.offload { VNET_HDR_LEN } else { 0 };
                    b.tun_written_bytes += (res as usize).saturating_sub(vnet) as u64;
                }
                self.release_udp_buffer(bid);
                None
            }
            Op::StreamRecv => {
                self.stream_received(send, res, batch);
                None
            }
            Op::StreamPoll => {
                self.streams
                    .writable(send, &self.upcalls, &mut batch.counts);
                None
            }
            Op::Cancel => None,
        }
    }

    fn release_udp_buffer(&mut self, bid: u16) {
        if let Some(u) = self.udp.as_mut() {
            release(&mut u.refs, &mut u.bufs, bid);
        }
    }

    /// Count a finished UDP send of `datagrams` datagrams. A GSO send the
    /// kernel refuses outright (no checksum offload on the egress device,
    /// say) turns GSO off for this worker rather than failing every time.
    fn count_send(&mut self, res: i32, datagrams: u16, b: &mut CounterSnapshot) {
        if res >= 0 {
            b.udp_tx_packets += u64::from(datagrams);
            b.udp_tx_bytes += res as u64;
            return;
        }
        b.send_errors += u64::from(datagrams);
        if datagrams > 1 && matches!(-res, libc::EIO | libc::EINVAL) && self.udp_gso {
            self.udp_gso = false;
            tracing::warn!(
                errno = -res,
                "UDP GSO send refused; sending datagrams one by one from now on"
            );
        } else {
            tracing::debug!(errno = -res, "udp send failed");
        }
    }
}

/// Hand something to the control thread; a full channel drops it (and the
/// check comes first, so a drop costs no allocation). True if sent.
fn upcall(tx: &Sender<Upcall>, b: &mut CounterSnapshot, make: impl FnOnce() -> Upcall) -> bool {
    if tx.is_full() {
        b.dropped_full += 1;
        return false;
    }
    match tx.try_send(make()) {
        Ok(()) => {
            b.upcalls += 1;
            true
        }
        Err(_) => {
            b.dropped_full += 1;
            false
        }
    }
}

impl Worker {
    fn busy(&self) -> bool {
        self.core.tun_armed
            || self.core.inflight > 0
            || self.core.streams.busy()
            || self
                .core
                .udp
                .as_ref()
                .is_some_and(|u| u.armed || u.extras.iter().any(|e| e.armed))
    }

    /// Cancel the multishots, let in-flight sends and writes finish (or
    /// cancel them too if they take too long), reaping every completion.
    /// True if the kernel has confirmed that nothing references the buffers.
    fn quiesce(&mut self) -> bool {
        self.core.closing = true;
        let extras: Vec<u64> = self.core.udp.as_ref().map_or(Vec::new(), |u| {
            u.extras
                .iter()
                .filter(|e| e.armed)
                .map(|e| send_user_data(Op::UdpRecv, 0, e.socket.id))
                .collect()
        });
        let main = [
            (self.core.tun_armed, user_data(Op::TunRead, 0)),
            (
                self.core.udp.as_ref().is_some_and(|u| u.armed),
                user_data(Op::UdpRecv, 0),
            ),
        ];
        let armed = main
            .into_iter()
            .filter_map(|(armed, ud)| armed.then_some(ud))
            .chain(extras)
            .chain(self.core.streams.armed());
        for ud in armed {
            let cancel = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(user_data(Op::Cancel, 0));
            if self.push(&cancel).is_err() {
                return false;
            }
        }
        let start = Instant::now();
        let mut cancelled_all = false;
        while self.busy() && start.elapsed() < CANCEL_DEADLINE {
            if !cancelled_all && start.elapsed() >= CANCEL_ALL_AFTER {
                let all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(user_data(Op::Cancel, 0));
                cancelled_all = self.push(&all).is_ok();
            }
            if self.wait().is_err() {
                break;
            }
            let _ = self.drain();
        }
        !self.busy()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let quiesced = self.quiesce();
        if !quiesced {
            tracing::warn!(
                queue = self.queue,
                "io_uring operations not confirmed finished; leaking their buffers"
            );
        }
        // SAFETY: each field is taken exactly once, here, and never used
        // again. The ring goes first so no new operation can start.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            if quiesced {
                ManuallyDrop::drop(&mut self.core.tun_bufs);
                if let Some(u) = self.core.udp.as_mut() {
                    ManuallyDrop::drop(&mut u.bufs);
                }
            } else {
                ManuallyDrop::take(&mut self.core.tun_bufs).leak();
                if let Some(u) = self.core.udp.as_mut() {
                    ManuallyDrop::take(&mut u.bufs).leak();
                }
            }
            ManuallyDrop::drop(&mut self.tun);
        }
        // The socket closes when `core.udp` drops, after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::TunRead,
            Op::UdpRecv,
            Op::SendTun,
            Op::SendUdp,
            Op::TunWrite,
            Op::Cancel,
            Op::StreamRecv,
            Op::StreamPoll,
        ] {
            for bid in [0, 1, 1023, u16::MAX] {
                assert_eq!(decode_user_data(user_data(op, bid)), Some((op, bid, 0)));
                for send in [1, 63, u16::MAX] {
                    assert_eq!(
                        decode_user_data(send_user_data(op, bid, send)),
                        Some((op, bid, send))
                    );
                }
            }
        }
        assert_eq!(decode_user_data(0), None);
        assert_eq!(decode_user_data(99 << 32), None);
    }

    #[test]
    fn tally_aggregates_per_peer_and_flushes_when_full() {
        let peers: Vec<PeerCounters> = (0..10).map(|_| PeerCounters::default()).collect();
        let mut t = PeerTally::new();
        for _ in 0..3 {
            t.tx(&peers[0], 1, 100);
        }
        t.rx(&peers[1], 50);
        // Ten distinct peers overflow eight slots: an early flush, no loss.
        for p in &peers {
            t.tx(p, 1, 1);
        }
        t.flush();
        let s0 = peers[0].snapshot();
        assert_eq!((s0.tx_packets, s0.tx_bytes), (4, 301));
        let s1 = peers[1].snapshot();
        assert_eq!((s1.rx_packets, s1.rx_bytes, s1.tx_packets), (1, 50, 1));
        assert!(peers.iter().all(|p| p.snapshot().tx_packets >= 1));
        // Nothing is counted twice by a second flush.
        t.flush();
        assert_eq!(peers[0].snapshot().tx_packets, 4);
    }
}
