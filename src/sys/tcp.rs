//! Socket options for the TCP connections that carry tunnelled traffic:
//! the WebSocket relay's and direct TCP streams (docs/tcp.md).

use std::os::fd::AsRawFd;

/// Unsent bytes the kernel may hold for one relay connection. The relay
/// carries other TCP flows inside this one: a deep socket queue turns into
/// seconds of ping time under load (Candy's relay shows exactly that), so
/// it is kept shallow and the bounded queues in front of it drop instead.
const NOTSENT_LOWAT: libc::c_int = 128 * 1024;

/// Keeps the socket's queue of unsent data short; see `NOTSENT_LOWAT`.
/// Best effort: an old kernel without the option still works, only slower
/// to react under load.
pub fn limit_unsent(socket: &impl AsRawFd) {
    let v = NOTSENT_LOWAT;
    // SAFETY: a valid fd and an int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
