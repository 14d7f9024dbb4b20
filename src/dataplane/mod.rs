//! The packet path: one pinned io_uring worker per TUN queue, each with its
//! own UDP socket on the shared port.
//!
//! Direct path (when [`DataplaneConfig::udp`] is set): a packet read from
//! TUN whose entry in the published [`Snapshot`] is a peer is sealed in
//! place and sent from the same buffer; a datagram that opens with our
//! key and carries a FORWARD for us is written to TUN from the buffer it was
//! received into. Workers load the snapshot once per batch of completions.
//!
//! Everything else goes to the control thread over one bounded channel as an
//! [`Upcall`]: packets for peers without a direct path (for the relay),
//! decrypted heartbeats, latency and route messages, and STUN replies. The
//! control thread writes relayed packets back with [`TunWriter`] and sends
//! its own datagrams with [`UdpSender`].

pub mod bufring;
pub mod coalesce;
pub mod counters;
pub mod frame;
pub mod offload;
mod sendmsg;
pub mod snapshot;
pub mod stream;
mod worker;
pub mod writer;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use tokio::sync::Notify;

pub use bufring::BufRingError;
pub use counters::{CounterSnapshot, Counters, SharedCounters};
pub use snapshot::{
    LocalSocket, PeerCounterSnapshot, PeerCounters, PeerEntry, Sealer, SharedSnapshot, Snapshot,
    SubnetHop, TunHop, TurnSocket, MAIN_SOCKET, TURN_SOCKET,
};
pub use stream::{LocalStream, StreamTx, FIRST_STREAM_ID};
pub use writer::{TunWriter, WriteError};

use crate::proto::crypto::PeerKey;
use crate::proto::ipv4;
use crate::proto::mtu::{DEFAULT_MTU, FORWARD_HEADROOM};
use crate::sys::tun::{self, TunError, TunOptions};
use crate::sys::udp::{self, UdpError};
use crate::sys::uring_support::Refusal;
use crate::sys::{affinity, steering};

/// Bytes reserved in front of every packet read from TUN, for the envelope,
/// type byte and sdwan pseudo-header (28 + 1 + 20) the direct path
/// prepends in place, rounded up to a cache line.
pub const MIN_HEADROOM: usize = 64;

const _: () = assert!(FORWARD_HEADROOM <= MIN_HEADROOM);

/// What one TUN read may need with offloads on: the virtio header, the
/// largest super-packet, and room behind it to spread its pieces out
/// (each gains a datagram prefix and a copy of the headers; the device's
/// gso_max_segs bounds how many there are).
pub const OFFLOAD_READ_BYTES: usize = offload::VNET_HDR_LEN
    + ipv4::MAX_PACKET
    + udp::GSO_MAX_SEGMENTS * (FORWARD_HEADROOM + offload::MAX_HEADERS);

/// Provided buffers per worker with offloads on: each is ~75 KiB.
pub const OFFLOAD_BUFFERS: u32 = 256;

/// The direct UDP path.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// Port every worker's socket binds (SO_REUSEPORT); 0 = ephemeral,
    /// chosen by the first bind and shared by the rest.
    pub port: u16,
    /// `K(own VIP)`: every datagram we receive is sealed with it.
    pub own_key: Arc<PeerKey>,
}

impl PartialEq for UdpConfig {
    /// Keys have no observable value; the same key object is the same key.
    fn eq(&self, o: &Self) -> bool {
        self.port == o.port && Arc::ptr_eq(&self.own_key, &o.own_key)
    }
}

impl Eq for UdpConfig {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Worker threads, one per TUN queue.
    pub workers: usize,
    /// Capacity of the channel to the control thread, in packets.
    pub channel_capacity: usize,
    /// The device MTU, validated with the client config (`proto::mtu`);
    /// here it only sizes buffers (see [`DataplaneConfig::tun_read_bytes`]).
    pub mtu: usize,
    /// Provided buffers per worker; a power of two.
    pub buffers_per_worker: u32,
    /// Bytes in front of each packet; at least [`MIN_HEADROOM`].
    pub headroom: usize,
    /// Pin worker i to the i-th allowed CPU (wrapping around).
    pub pin_cpus: bool,
    /// `None`: no UDP path, every packet goes up for the relay.
    pub udp: Option<UdpConfig>,
    /// Lower the MSS of TCP SYNs read from TUN to this (see `proto::mss`).
    pub mss_clamp: Option<u16>,
    /// TUN offloads: queues carry a `virtio_net_hdr` and reads may be
    /// TSO/USO super-packets of up to 64 KiB (see [`offload`]). Buffers
    /// are sized for that instead of the MTU.
    pub offload: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 1,
            channel_capacity: 4096,
            mtu: usize::from(DEFAULT_MTU),
            buffers_per_worker: 1024,
            headroom: MIN_HEADROOM,
            pin_cpus: true,
            udp: None,
            mss_clamp: None,
            offload: false,
        }
    }
}

impl DataplaneConfig {
    pub fn validate(&self) -> Result<bufring::Layout, DataplaneError> {
        let bad =
            |field: &'static str, reason: String| DataplaneError::InvalidConfig { field, reason };
        if self.workers == 0 || self.workers > tun::MAX_QUEUES {
            return Err(bad(
                "workers",
                format!("{} (must be 1..={})", self.workers, tun::MAX_QUEUES),
            ));
        }
        if self.channel_capacity == 0 {
            return Err(bad("channel_capacity", "0 (must be at least 1)".into()));
        }
        if self.headroom < MIN_HEADROOM {
            return Err(bad(
                "headroom",
                format!("{} (must be at least {MIN_HEADROOM})", self.headroom),
            ));
        }
        bufring::Layout::new(
            self.buffers_per_worker,
            self.tun_read_bytes(),
            self.headroom,
        )
        .map_err(|e| match e {
            BufRingError::BadBufferSize { .. } => bad("mtu", e.to_string()),
            _ => bad("buffers_per_worker", e.to_string()),
        })
    }

    /// Bytes one TUN read may return, which TUN buffers are sized for.
    ///
    /// Without offloads that is the device MTU. With offloads the kernel
    /// hands over TSO/USO super-packets of up to 64 KiB whatever the MTU,
    /// so the MTU plays no part in sizing: the kernel cut the segment size
    /// (MSS, gso_size) to the MTU already, and the split keeps each piece
    /// within it.
    pub fn tun_read_bytes(&self) -> usize {
        if self.offload {
            OFFLOAD_READ_BYTES
        } else {
            self.mtu
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("dataplane config: {field} = {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("dataplane got {queues} tun queues for {workers} workers; they must match")]
    QueueCountMismatch { queues: usize, workers: usize },
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("duplicating tun queue fd for the writer: {0}")]
    WriterDup(#[source] io::Error),
    #[error("worker {queue}: spawning thread: {source}")]
    Spawn { queue: usize, source: io::Error },
    #[error("worker {queue}: {op}: {source}")]
    Ring {
        queue: usize,
        op: &'static str,
        source: io::Error,
    },
    #[error("worker {queue}: {refusal}")]
    Refused { queue: usize, refusal: Refusal },
    #[error("worker {queue}: buffer ring: {source}")]
    BufRing { queue: usize, source: BufRingError },
    #[error("worker {queue}: reading the tun queue failed: {source}")]
    Read { queue: usize, source: io::Error },
    #[error("worker {queue} panicked")]
    WorkerPanicked { queue: usize },
    #[error(transparent)]
    Udp(#[from] UdpError),
    #[error("duplicating the UDP socket for the control thread: {0}")]
    SenderDup(#[source] io::Error),
    #[error("worker {queue}: receiving on the UDP socket failed: {source}")]
    UdpRecv { queue: usize, source: io::Error },
}

/// What workers hand to the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upcall {
    /// An IPv4 packet read from the TUN device with no direct next hop, as
    /// the FORWARD frame the server relays (type byte, then the packet, led
    /// by the sdwan pseudo-header when a subnet route matched, since the
    /// server routes on the outer destination): ready to send as it is.
    RelayFrame(Vec<u8>),
    /// A decrypted peer message other than a FORWARD (heartbeat, delay,
    /// route, unknown types), type byte first.
    /// `local` is the socket it arrived on ([`MAIN_SOCKET`] or the id of a
    /// [`LocalSocket`]).
    /// `session`: the ringlink peer whose session opened it; `None` when
    /// it came in Candy's envelope.
    Peer {
        from: SocketAddrV4,
        local: u16,
        plaintext: Vec<u8>,
        session: Option<Ipv4Addr>,
    },
    /// Our session `index` opened its first message: the peer holds it.
    SessionUsed { index: u32 },
    /// A datagram that looks like STUN, as received.
    Stun {
        from: SocketAddrV4,
        local: u16,
        datagram: Vec<u8>,
    },
    /// The stream `id` is over: closed by the peer, failed, or carrying
    /// something that is not a frame. Its owner reads it no more.
    StreamEnded { id: u16, reason: String },
}

/// Sends the control thread's own datagrams (heartbeats, STUN requests,
/// latency probes, route adverts) from the dataplane's port, so the NAT
/// mapping a peer or STUN server sees is the one data uses.
///
/// A duplicate of worker 0's socket: same port, same socket. Sends never
/// block; a full socket buffer is `WouldBlock`.
#[derive(Debug, Clone)]
pub struct UdpSender {
    fd: Arc<OwnedFd>,
    /// Workers receive runs of datagrams (UDP GRO); sockets opened for
    /// them must hand over the same.
    runs: bool,
}

impl UdpSender {
    /// Send one datagram, already sealed (or STUN) by the caller, from the
    /// shared port or from `via`, with IP TTL `ttl` when given.
    pub fn send_to(
        &self,
        datagram: &[u8],
        to: SocketAddrV4,
        via: Option<&LocalSocket>,
        ttl: Option<u8>,
    ) -> io::Result<()> {
        let fd = via.map_or(self.fd.as_fd(), |s| s.fd.as_fd());
        udp::send_to(fd, datagram, to, ttl)
    }

    /// A fresh socket on an ephemeral port (its own NAT mapping), for a
    /// hard-NAT attempt: workers receive on it once a snapshot lists it.
    pub fn open_socket(&self) -> Result<OwnedFd, UdpError> {
        let fd = udp::bind_reuseport(0, udp::SOCKET_BUFFER_BYTES)?;
        if self.runs {
            udp::enable_gro(&fd).map_err(|source| UdpError::SetOption {
                option: "UDP_GRO",
                source,
            })?;
        }
        Ok(fd)
    }
}

/// Receiving end of the upcall channel.
///
/// Workers notify once per batch, not per packet, so an async consumer costs
/// one wake-up per batch; the blocking methods are for plain threads.
pub struct UpcallReceiver {
    rx: Receiver<Upcall>,
    notify: Arc<Notify>,
}

impl UpcallReceiver {
    /// Next upcall, or `None` once every worker has stopped and the channel
    /// is empty. Cancel-safe.
    pub async fn recv(&self) -> Option<Upcall> {
        loop {
            match self.rx.try_recv() {
                Ok(u) => return Some(u),
                Err(TryRecvError::Disconnected) => return None,
                // A notify_one between try_recv and here leaves a permit, so
                // no wake-up is lost.
                Err(TryRecvError::Empty) => self.notify.notified().await,
            }
        }
    }

    pub fn try_recv(&self) -> Result<Upcall, TryRecvError> {
        self.rx.try_recv()
    }

    /// Blocking receive with a deadline (not for use on the tokio thread).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Upcall, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Upcalls currently queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

struct WorkerHandle {
    thread: Option<JoinHandle<Result<(), DataplaneError>>>,
    counters: SharedCounters,
}

/// Running workers. Dropping it stops and joins them; prefer
/// [`Dataplane::shutdown`] to see their errors.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    writer: TunWriter,
    snapshot: SharedSnapshot,
    udp_port: Option<u16>,
    udp_sender: Option<UdpSender>,
}

impl Dataplane {
    /// Open `config.workers` queues of the TUN device `ifname` and start.
    pub fn open(
        ifname: &str,
        config: &DataplaneConfig,
    ) -> Result<(Dataplane, UpcallReceiver), DataplaneError> {
        config.validate()?;
        let queues = tun::open_tun(
            ifname,
            &TunOptions {
                queues: config.workers,
                nonblocking: true,
                vnet_hdr: config.offload,
            },
        )?;
        if config.workers > 1 {
            if let Err(e) = steering::steer_flows_by_hash(queues[0].as_fd()) {
                tracing::warn!(
                    tun = ifname,
                    %e,
                    "could not attach the flow steering program; a flow that \
                     changes queues may see reordering"
                );
            }
        }
        if config.offload {
            let o = tun::enable_offloads(queues[0].as_fd(), ifname)?;
            tracing::info!(
                tun = ifname,
                uso = o.uso,
                "tun offloads on: checksum, TCP segmentation"
            );
        }
        Self::start(queues, config)
    }

    /// Start one worker per queue fd (`queues.len()` must equal
    /// `config.workers`). Returns once every worker's ring is set up.
    pub fn start(
        queues: Vec<OwnedFd>,
        config: &DataplaneConfig,
    ) -> Result<(Dataplane, UpcallReceiver), DataplaneError> {
        let layout = config.validate()?;
        if queues.len() != config.workers {
            return Err(DataplaneError::QueueCountMismatch {
                queues: queues.len(),
                workers: config.workers,
            });
        }
        let writer =
            TunWriter::new(queues[0].as_fd(), config.offload).map_err(DataplaneError::WriterDup)?;
        let sockets = match &config.udp {
            Some(u) => bind_sockets(u.port, config.workers)?,
            None => Vec::new(),
        };
        let udp_port = match sockets.first() {
            Some(s) => Some(udp::local_addr(s.as_fd())?.port()),
            None => None,
        };
        let udp_sender = match sockets.first() {
            Some(s) => Some(UdpSender {
                fd: Arc::new(s.try_clone().map_err(DataplaneError::SenderDup)?),
                runs: config.offload,
            }),
            None => None,
        };
        let mut sockets = sockets.into_iter();
        let (tx, rx) = crossbeam_channel::bounded(config.channel_capacity);
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = if config.pin_cpus {
            affinity::allowed_cpus().unwrap_or_else(|_| (0..affinity::online_cpus()).collect())
        } else {
            Vec::new()
        };
        let mut dp = Dataplane {
            workers: Vec::with_capacity(queues.len()),
            stop: stop.clone(),
            writer,
            snapshot: SharedSnapshot::default(),
            udp_port,
            udp_sender,
        };
        let workers = queues.len();
        for (index, fd) in queues.into_iter().enumerate() {
            let counters = counters::new_shared();
            let spec = worker::WorkerSpec {
                index,
                workers,
                fd,
                cpu: affinity::cpu_for_worker(index, &cpus),
                layout,
                upcalls: tx.clone(),
                notify: notify.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
                snapshot: dp.snapshot.clone(),
                mss_clamp: config.mss_clamp,
                offload: config.offload,
                udp: config
                    .udp
                    .as_ref()
                    .zip(sockets.next())
                    .map(|(u, sock)| worker::UdpSpec {
                        gro: config.offload && receive_runs(&sock),
                        sock,
                        own_key: u.own_key.clone(),
                    }),
            };
            // On error `dp` drops here, stopping the workers already started.
            let thread = worker::spawn(spec)?;
            dp.workers.push(WorkerHandle {
                thread: Some(thread),
                counters,
            });
        }
        Ok((dp, UpcallReceiver { rx, notify }))
    }

    /// Writer for packets received from the relay.
    pub fn writer(&self) -> TunWriter {
        self.writer.clone()
    }

    /// Totals over all workers and the writer.
    pub fn counters(&self) -> CounterSnapshot {
        self.worker_counters()
            .into_iter()
            .chain(std::iter::once(self.writer.counters().snapshot()))
            .sum()
    }

    /// One entry per worker, in queue order.
    pub fn worker_counters(&self) -> Vec<CounterSnapshot> {
        self.workers.iter().map(|w| w.counters.snapshot()).collect()
    }

    /// The table workers follow; publish a new one to change routing.
    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// The UDP port every worker is bound to, if the direct path is on.
    pub fn udp_port(&self) -> Option<u16> {
        self.udp_port
    }

    /// For the control thread's own datagrams, if the direct path is on.
    pub fn udp_sender(&self) -> Option<UdpSender> {
        self.udp_sender.clone()
    }

    /// Workers that have stopped on their own (a read error, a panic).
    pub fn stopped_workers(&self) -> Vec<usize> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.thread.as_ref().is_none_or(|t| t.is_finished()))
            .map(|(i, _)| i)
            .collect()
    }

    /// Stop every worker (cancelling its read, then closing its queue) and
    /// join them. Returns the first worker error, if any.
    pub fn shutdown(mut self) -> Result<(), DataplaneError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), DataplaneError> {
        self.stop.store(true, Ordering::Release);
        let mut first = Ok(());
        for (queue, w) in self.workers.iter_mut().enumerate() {
            let Some(t) = w.thread.take() else { continue };
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(DataplaneError::WorkerPanicked { queue }),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Turn UDP GRO on, so that a run of datagrams from one peer arrives as
/// one receive and can leave as one TUN write. Without it everything
/// works, a datagram at a time.
fn receive_runs(sock: &OwnedFd) -> bool {
    match udp::enable_gro(sock) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%e, "UDP GRO not available; receiving datagrams one by one");
            false
        }
    }
}

/// One socket per worker on one port: the first bind picks the port when
/// `port` is 0, the rest join it.
fn bind_sockets(port: u16, workers: usize) -> Result<Vec<OwnedFd>, DataplaneError> {
    let first = udp::bind_reuseport(port, udp::SOCKET_BUFFER_BYTES)?;
    let port = udp::local_addr(first.as_fd())?.port();
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(udp::bind_reuseport(port, udp::SOCKET_BUFFER_BYTES)?);
    }
    if let Ok((rcv, snd)) = udp::buffer_sizes(all[0].as_fd()) {
        if rcv < udp::SOCKET_BUFFER_BYTES || snd < udp::SOCKET_BUFFER_BYTES {
            tracing::info!(
                rcv,
                snd,
                wanted = udp::SOCKET_BUFFER_BYTES,
                "UDP socket buffers capped by net.core.rmem_max/wmem_max"
            );
        }
    }
    Ok(all)
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod udp_tests;
