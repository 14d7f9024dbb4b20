//! One worker: one thread, one io_uring, one TUN queue, one buffer ring.
//!
//! The queue is read with a single multishot read into the provided-buffer
//! ring, so the steady state costs one io_uring_enter per batch of packets
//! and no allocation on the kernel side. The ring is created on the worker
//! thread itself because SINGLE_ISSUER binds it to its creator.

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use io_uring::{cqueue, opcode, types, IoUring};
use tokio::sync::Notify;

use super::bufring::{BufRing, Layout};
use super::counters::{CounterSnapshot, SharedCounters};
use super::packet::classify;
use super::{DataplaneError, Upcall};
use crate::sys::affinity;

const READ_UD: u64 = 1;
const CANCEL_UD: u64 = 2;
/// Each worker has its own ring, so one group id is enough.
const BGID: u16 = 0;
/// How long one io_uring_enter may sleep: the bound on how late a worker
/// notices a shutdown request.
const WAIT: Duration = Duration::from_millis(50);
/// How long to wait for the kernel to confirm the read is cancelled before
/// giving up on reusing the buffer memory.
const CANCEL_DEADLINE: Duration = Duration::from_secs(2);
const SQ_ENTRIES: u32 = 64;

pub(crate) struct WorkerSpec {
    pub index: usize,
    pub fd: OwnedFd,
    pub cpu: Option<usize>,
    pub layout: Layout,
    pub upcalls: Sender<Upcall>,
    pub notify: Arc<Notify>,
    pub counters: SharedCounters,
    pub stop: Arc<AtomicBool>,
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
            // Dropping `w` cancels the read and closes the queue.
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

struct Worker {
    queue: usize,
    // Dropped by hand, in order: ring, then buffer memory, then the fd.
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    fd: ManuallyDrop<OwnedFd>,
    upcalls: Sender<Upcall>,
    notify: Arc<Notify>,
    counters: SharedCounters,
    stop: Arc<AtomicBool>,
    /// A multishot read is in flight.
    armed: bool,
    /// The read was armed before, so arming again is a re-arm.
    armed_once: bool,
}

impl Worker {
    fn new(spec: WorkerSpec) -> Result<Self, DataplaneError> {
        let queue = spec.index;
        let entries = u32::from(spec.layout.entries());
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Room for one completion per buffer plus control ops, so a full
            // batch never spills into the kernel's overflow list (and never
            // smaller than the SQ, which the kernel rejects).
            .setup_cqsize((entries * 2).max(SQ_ENTRIES * 2))
            .build(SQ_ENTRIES)
            .map_err(|source| DataplaneError::Ring {
                queue,
                op: "io_uring_setup",
                source,
            })?;
        let bufs = BufRing::new(spec.layout)
            .map_err(|source| DataplaneError::BufRing { queue, source })?;
        // SAFETY: the ring memory is owned by `bufs`, which is dropped only
        // after the io_uring (see Drop), i.e. after the registration ends.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                spec.layout.entries(),
                BGID,
                0,
            )
        }
        .map_err(|source| DataplaneError::Ring {
            queue,
            op: "register_buf_ring",
            source,
        })?;
        Ok(Worker {
            queue,
            ring: ManuallyDrop::new(ring),
            bufs: ManuallyDrop::new(bufs),
            fd: ManuallyDrop::new(spec.fd),
            upcalls: spec.upcalls,
            notify: spec.notify,
            counters: spec.counters,
            stop: spec.stop,
            armed: false,
            armed_once: false,
        })
    }

    fn run(&mut self) -> Result<(), DataplaneError> {
        while !self.stop.load(Ordering::Acquire) {
            if !self.armed {
                self.arm()?;
            }
            self.wait()?;
            if let Some(errno) = self.drain() {
                if !self.armed {
                    return Err(DataplaneError::Read {
                        queue: self.queue,
                        source: std::io::Error::from_raw_os_error(errno),
                    });
                }
            }
        }
        Ok(())
    }

    fn arm(&mut self) -> Result<(), DataplaneError> {
        // The raw fd, not a registered one: TUN refuses multishot read on a
        // fixed file (-EBADFD). Length 0 means "the provided buffer's size".
        let sqe = opcode::ReadMulti::new(types::Fd(self.fd.as_raw_fd()), 0, BGID)
            .build()
            .user_data(READ_UD);
        self.push(&sqe)?;
        if self.armed_once {
            self.counters.read_rearms.fetch_add(1, Ordering::Relaxed);
        }
        self.armed = true;
        self.armed_once = true;
        Ok(())
    }

    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> Result<(), DataplaneError> {
        // SAFETY: the read's fd and buffer group stay valid until its final
        // completion is reaped or the ring is gone (see Drop); the cancel op
        // references nothing.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| DataplaneError::Ring {
            queue: self.queue,
            op: "submission queue push",
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })
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

    /// Handle every completion that is ready, recycle the buffers, publish
    /// the counters. Returns the errno of a read failure that should end the
    /// worker, if any.
    fn drain(&mut self) -> Option<i32> {
        let mut batch = CounterSnapshot::default();
        let mut fatal = None;
        let Worker {
            ring,
            bufs,
            upcalls,
            armed,
            ..
        } = self;
        for cqe in ring.completion() {
            if cqe.user_data() != READ_UD {
                continue;
            }
            let res = cqe.result();
            let flags = cqe.flags();
            if !cqueue::more(flags) {
                *armed = false;
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res > 0 {
                    let len = res as usize;
                    batch.tun_rx_packets += 1;
                    batch.tun_rx_bytes += len as u64;
                    deliver(bufs.data(bid, len), upcalls, &mut batch);
                }
                bufs.push(bid);
            }
            match res {
                r if r > 0 => {}
                // A TUN read never returns 0; treat it as end of file rather
                // than re-arming in a tight loop.
                0 if !cqueue::more(flags) => fatal = Some(0),
                0 => {}
                // Out of buffers, or interrupted: re-arming is the cure.
                r if matches!(
                    -r,
                    libc::ENOBUFS | libc::ECANCELED | libc::EAGAIN | libc::EINTR
                ) => {}
                r => fatal = Some(-r),
            }
        }
        bufs.publish();
        self.counters.add(&batch);
        if batch.upcalls > 0 {
            self.notify.notify_one();
        }
        fatal
    }
}

/// Hand one packet read from the TUN queue to the control thread.
///
/// This is where the direct path will branch off: look up the destination
/// in the snapshot and, for a connected peer, seal in place in the headroom
/// and queue a UDP send instead of copying the packet up.
fn deliver(packet: Option<&[u8]>, upcalls: &Sender<Upcall>, batch: &mut CounterSnapshot) {
    let Some(packet) = packet.filter(|p| classify(p).is_ok()) else {
        batch.dropped_malformed += 1;
        return;
    };
    // Checked first so a full channel costs no allocation.
    if upcalls.is_full() {
        batch.dropped_full += 1;
        return;
    }
    match upcalls.try_send(Upcall::TunPacket(packet.to_vec())) {
        Ok(()) => batch.upcalls += 1,
        Err(_) => batch.dropped_full += 1,
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.armed {
            let cancel = opcode::AsyncCancel::new(READ_UD)
                .build()
                .user_data(CANCEL_UD);
            if self.push(&cancel).is_ok() {
                let deadline = Instant::now() + CANCEL_DEADLINE;
                while self.armed && Instant::now() < deadline {
                    if self.wait().is_err() {
                        break;
                    }
                    let _ = self.drain();
                }
            }
        }
        let quiesced = !self.armed;
        // SAFETY: each field is taken exactly once, here, and never used
        // again. The ring goes first so no new operation can start.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            if quiesced {
                ManuallyDrop::drop(&mut self.bufs);
            } else {
                tracing::warn!(
                    queue = self.queue,
                    "tun read not confirmed cancelled; leaking its buffers"
                );
                ManuallyDrop::take(&mut self.bufs).leak();
            }
            ManuallyDrop::drop(&mut self.fd);
        }
    }
}
