//! Writing packets from the relay into the TUN device.
//!
//! Why a plain write(2) on a dup of a queue fd rather than a channel to a
//! worker plus an eventfd wake: a TUN write never blocks (the packet goes
//! straight into the stack's receive path, or is dropped under pressure), so
//! the control thread's event loop cannot stall on it, and it costs one
//! syscall per relayed packet instead of a channel hop, a wake-up syscall and
//! the worker's own write. Relay traffic is bounded by the WebSocket anyway.
//!
//! Why a dup of an existing queue rather than attaching a new queue: every
//! attached queue gets a share of the kernel's transmit hashing, and nobody
//! would read a writer-only queue, so flows hashed to it would be lost.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::counters::{new_shared, SharedCounters};
use super::offload::VNET_HDR_LEN;
use crate::proto::ipv4::{classify, PacketError};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to write a malformed packet to the tun device: {0}")]
    Malformed(#[from] PacketError),
    #[error("tun write failed: {0}")]
    Io(#[source] io::Error),
    #[error("tun write was short: {written} of {len} bytes")]
    Short { written: usize, len: usize },
}

struct Inner {
    fd: OwnedFd,
    counters: SharedCounters,
    /// The device expects a `virtio_net_hdr` in front of every packet.
    vnet_hdr: bool,
}

/// Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct TunWriter {
    inner: Arc<Inner>,
}

impl TunWriter {
    /// Writer over a duplicate of `queue` (any queue of the device);
    /// `vnet_hdr` if the device was opened with IFF_VNET_HDR.
    pub fn new(queue: BorrowedFd<'_>, vnet_hdr: bool) -> io::Result<Self> {
        let fd = queue.try_clone_to_owned()?;
        Ok(TunWriter {
            inner: Arc::new(Inner {
                fd,
                counters: new_shared(),
                vnet_hdr,
            }),
        })
    }

    /// Write one IPv4 packet (no packet-info header) into the device.
    pub fn write(&self, packet: &[u8]) -> Result<(), WriteError> {
        let c = &self.inner.counters;
        if let Err(e) = classify(packet) {
            c.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        // An all-zero virtio header: a plain packet, checksums complete.
        let vnet = [0u8; VNET_HDR_LEN];
        let iov = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: if self.inner.vnet_hdr { VNET_HDR_LEN } else { 0 },
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        let header = iov[0].iov_len;
        loop {
            // SAFETY: both iovecs describe live readable memory.
            let n = unsafe { libc::writev(self.inner.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                c.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                return Err(WriteError::Io(err));
            }
            let n = (n as usize).saturating_sub(header);
            if n != packet.len() {
                c.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                return Err(WriteError::Short {
                    written: n,
                    len: packet.len(),
                });
            }
            c.tun_written.fetch_add(1, Ordering::Relaxed);
            c.tun_written_bytes
                .fetch_add(packet.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
    }

    pub(crate) fn counters(&self) -> &SharedCounters {
        &self.inner.counters
    }
}

impl AsFd for TunWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned here.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn writes_valid_packets_and_refuses_malformed() {
        let (mut rd, wr) = pipe();
        let w = TunWriter::new(wr.as_fd(), false).unwrap();
        drop(wr);
        let mut pkt = [0u8; 20];
        pkt[0] = 0x45;
        w.write(&pkt).unwrap();
        assert!(matches!(
            w.write(&[0x60; 40]),
            Err(WriteError::Malformed(PacketError::NotIpv4 { version: 6 }))
        ));
        let s = w.counters().snapshot();
        assert_eq!(
            (s.tun_written, s.tun_written_bytes, s.tun_write_errors),
            (1, 20, 1)
        );
        drop(w);
        let mut got = Vec::new();
        rd.read_to_end(&mut got).unwrap();
        assert_eq!(got, pkt);
    }

    #[test]
    fn vnet_mode_puts_an_empty_virtio_header_in_front() {
        let (mut rd, wr) = pipe();
        let w = TunWriter::new(wr.as_fd(), true).unwrap();
        drop(wr);
        let mut pkt = [7u8; 28];
        pkt[0] = 0x45;
        w.write(&pkt).unwrap();
        assert_eq!(w.counters().snapshot().tun_written_bytes, 28);
        drop(w);
        let mut got = Vec::new();
        rd.read_to_end(&mut got).unwrap();
        assert_eq!(got[..VNET_HDR_LEN], [0u8; VNET_HDR_LEN]);
        assert_eq!(got[VNET_HDR_LEN..], pkt);
    }
}
