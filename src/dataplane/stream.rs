//! A direct TCP stream to a peer (docs/tcp.md), as the dataplane carries
//! it: the frames of `proto::stream` in both directions.
//!
//! Any worker may send to a peer on a stream, so the send half is shared:
//! a frame goes out whole with a non-blocking send under a lock, and what
//! the socket does not take waits in a bounded queue that the next send,
//! or the stream's owner when the socket turns writable, pushes on. Frames
//! never interleave, and a peer that stops reading costs a full queue and
//! dropped frames, never a blocked worker. One worker, the owner, reads the
//! stream.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::proto::stream::{self as framing, FrameError, HEADER_LEN};

/// Ids at or above this name streams in upcalls and snapshots; below it,
/// UDP sockets. `TURN_SOCKET` (the highest id) is neither.
pub const FIRST_STREAM_ID: u16 = 0x8000;

/// Bytes a stream's send queue holds beyond what the socket took (whose
/// own unsent queue is kept short too, `sys::tcp`): under a millisecond at
/// the rates a stream reaches, so a full path shows as drops, which the
/// flows inside react to, rather than as delay.
const QUEUE_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("send queue full")]
    Full,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream failed: {0}")]
    Failed(io::ErrorKind),
}

#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    failed: Option<io::ErrorKind>,
}

/// The send half, shared by every worker and the control thread.
#[derive(Debug)]
pub struct StreamTx {
    fd: Arc<OwnedFd>,
    queue: Mutex<Queue>,
}

impl StreamTx {
    pub fn new(fd: Arc<OwnedFd>) -> Self {
        StreamTx {
            fd,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Sends one datagram as a frame, or queues what the socket does not
    /// take at once.
    pub fn send(&self, datagram: &[u8]) -> Result<(), SendError> {
        let header = framing::header(datagram.len())?;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = q.failed {
            return Err(SendError::Failed(kind));
        }
        if !q.bytes.is_empty() {
            if q.bytes.len() + HEADER_LEN + datagram.len() > QUEUE_LIMIT {
                return Err(SendError::Full);
            }
            q.bytes.extend_from_slice(&header);
            q.bytes.extend_from_slice(datagram);
            return self.push(&mut q);
        }
        let sent = match send_parts(&self.fd, &header, datagram) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                q.failed = Some(e.kind());
                return Err(SendError::Failed(e.kind()));
            }
        };
        if sent < HEADER_LEN {
            q.bytes.extend_from_slice(&header[sent..]);
            q.bytes.extend_from_slice(datagram);
        } else {
            q.bytes.extend_from_slice(&datagram[sent - HEADER_LEN..]);
        }
        Ok(())
    }

    /// Pushes queued bytes into the socket; true if some still wait.
    pub fn flush(&self) -> Result<bool, SendError> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = q.failed {
            return Err(SendError::Failed(kind));
        }
        self.push(&mut q)?;
        Ok(!q.bytes.is_empty())
    }

    /// Bytes sent neither by the socket nor dropped yet.
    pub fn queued(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.bytes.len())
    }

    fn push(&self, q: &mut Queue) -> Result<(), SendError> {
        while !q.bytes.is_empty() {
            match send_parts(&self.fd, &q.bytes, &[]) {
                Ok(0) => break,
                Ok(n) => {
                    q.bytes.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    q.failed = Some(e.kind());
                    q.bytes = Vec::new();
                    return Err(SendError::Failed(e.kind()));
                }
            }
        }
        Ok(())
    }
}

/// One non-blocking send of `a` then `b`; how many bytes the socket took.
fn send_parts(fd: &OwnedFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is valid; the iovecs point at live slices
    // for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if b.is_empty() { 1 } else { 2 };
    // SAFETY: as above; the fd is open while `fd` lives.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A stream of this node's, as snapshots list it.
#[derive(Debug, Clone)]
pub struct LocalStream {
    /// At least [`FIRST_STREAM_ID`], unique among the node's streams.
    pub id: u16,
    /// The other end, as upcalls name the sender.
    pub remote: SocketAddrV4,
    pub fd: Arc<OwnedFd>,
    pub tx: Arc<StreamTx>,
}

impl LocalStream {
    pub fn new(id: u16, remote: SocketAddrV4, fd: OwnedFd) -> Self {
        let fd = Arc::new(fd);
        LocalStream {
            id,
            remote,
            tx: Arc::new(StreamTx::new(fd.clone())),
            fd,
        }
    }

    /// The worker that reads this stream, of `workers`.
    pub fn owner(&self, workers: usize) -> usize {
        usize::from(self.id) % workers.max(1)
    }
}

impl PartialEq for LocalStream {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id && Arc::ptr_eq(&self.fd, &o.fd)
    }
}

impl Eq for LocalStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn pair() -> (StreamTx, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (StreamTx::new(Arc::new(OwnedFd::from(a))), b)
    }

    fn read_frames(r: &mut UnixStream, want: usize) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 65536];
        while out.len() < want {
            let n = r.read(&mut chunk).unwrap();
            assert!(n > 0, "stream ended early");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((payload, next)) = framing::next_frame(&buf).unwrap() {
                out.push(buf[payload].to_vec());
                buf.drain(..next);
            }
        }
        out
    }

    #[test]
    fn frames_arrive_whole_and_in_order_through_a_full_socket() {
        let (tx, mut rx) = pair();
        // Far more than a socket buffer: some must wait in the queue and
        // some are dropped; what arrives is whole frames in order.
        let mut sent = Vec::new();
        let mut full = 0;
        for i in 0..2000u32 {
            let d = vec![(i % 251) as u8; 1000 + (i as usize % 400)];
            match tx.send(&d) {
                Ok(()) => sent.push(d),
                Err(SendError::Full) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full > 0, "the queue never filled");
        assert!(tx.queued() <= QUEUE_LIMIT);
        let reader = std::thread::spawn(move || read_frames(&mut rx, sent.len()) == sent);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tx.flush().unwrap() {
            assert!(std::time::Instant::now() < deadline, "queue never drained");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(reader.join().unwrap(), "frames differ");
    }

    #[test]
    fn a_closed_peer_fails_the_stream_and_every_later_send() {
        let (tx, rx) = pair();
        drop(rx);
        assert!(matches!(tx.send(b"x"), Err(SendError::Failed(_))));
        assert!(matches!(tx.send(b"y"), Err(SendError::Failed(_))));
        assert!(matches!(tx.flush(), Err(SendError::Failed(_))));
        assert!(matches!(
            tx.send(&[]),
            Err(SendError::Frame(FrameError::Empty))
        ));
    }
}
