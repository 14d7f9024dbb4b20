//! The dataplane's UDP sockets: one per worker, all bound to one port.
//!
//! SO_REUSEPORT lets every worker own a socket of its own on the shared port
//! (the kernel picks the socket by a hash of the 4-tuple, so one peer's
//! datagrams always land on the same worker and stay in order).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What the sockets are asked for (the kernel doubles it for overhead).
/// Bigger than the stock 208 KiB so a burst of GSO sends or a scheduling
/// hiccup does not drop, but far below Candy's 16 MiB: when the receiving
/// worker is the bottleneck, TCP fills whatever buffer there is, and every
/// packet of that peer (pings included) waits behind it. Measured with
/// perf/run: 16 MiB gave 28 ms median ping under load, 1 MiB 5 ms at the
/// same or better throughput; 512 KiB started to cost throughput.
pub const SOCKET_BUFFER_BYTES: usize = 1 << 20;

/// `UDP_SEGMENT` and `UDP_GRO` from linux/udp.h (level `SOL_UDP`), which
/// the libc crate only defines for some C libraries.
pub const UDP_SEGMENT: i32 = 103;
pub const UDP_GRO: i32 = 104;

/// Most datagrams one UDP GSO send may carry (the kernel's
/// UDP_MAX_SEGMENTS, 64 on every kernel that has the option).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes one GSO send may carry: all of it has to fit the
/// length field of one IPv4 datagram.
pub const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("creating a UDP socket: {0}")]
    Socket(#[source] io::Error),
    #[error("setting {option} on the UDP socket: {source}")]
    SetOption {
        option: &'static str,
        source: io::Error,
    },
    #[error("binding UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("reading the bound UDP address: {0}")]
    LocalAddr(#[source] io::Error),
}

fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value is a live c_int and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are live and sized for a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ask for `bytes` of buffer: the FORCE variant ignores net.core.*mem_max
/// but needs CAP_NET_ADMIN; without it the plain option is capped at the
/// sysctl, which is slower under bursts, not wrong.
fn set_buffer(fd: &OwnedFd, force: i32, plain: i32, bytes: usize) -> io::Result<()> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    set_int(fd, libc::SOL_SOCKET, force, bytes)
        .or_else(|_| set_int(fd, libc::SOL_SOCKET, plain, bytes))
}

/// Both buffers of `fd` at `bytes`, past the sysctl limits when the
/// process may (CAP_NET_ADMIN).
pub fn set_buffers(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)?;
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
}

/// A non-blocking, close-on-exec IPv4 UDP socket with SO_REUSEPORT bound to
/// `0.0.0.0:port` (0 = ephemeral), with large buffers.
pub fn bind_reuseport(port: u16, buffer_bytes: usize) -> Result<OwnedFd, UdpError> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(UdpError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|source| {
        UdpError::SetOption {
            option: "SO_REUSEPORT",
            source,
        }
    })?;
    set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, buffer_bytes).map_err(|source| {
        UdpError::SetOption {
            option: "SO_RCVBUF",
            source,
        }
    })?;
    set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, buffer_bytes).map_err(|source| {
        UdpError::SetOption {
            option: "SO_SNDBUF",
            source,
        }
    })?;
    let sa = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: sa is a valid sockaddr_in and its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(UdpError::Bind {
            port,
            source: io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

/// Ask the kernel to hand over runs of datagrams from one sender as one
/// buffer (UDP_GRO); each receive then carries the run's datagram size in a
/// control message.
pub fn enable_gro(fd: &OwnedFd) -> io::Result<()> {
    set_int(fd, libc::SOL_UDP, UDP_GRO, 1)
}

/// Control buffer a receive needs for the UDP_GRO message:
/// `CMSG_SPACE(sizeof(int))`.
pub const GRO_CONTROL_LEN: usize = CMSG_HDR_LEN + 8;

/// `struct cmsghdr` on 64-bit Linux: a `size_t` length, level, type.
const CMSG_HDR_LEN: usize = 16;

/// The datagram size of a coalesced receive, from its control messages;
/// `None` for an ordinary single datagram.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let mut rest = control;
    while rest.len() >= CMSG_HDR_LEN {
        let len = usize::from_ne_bytes(rest[..8].try_into().ok()?);
        let level = i32::from_ne_bytes(rest[8..12].try_into().ok()?);
        let kind = i32::from_ne_bytes(rest[12..16].try_into().ok()?);
        let data = rest.get(CMSG_HDR_LEN..len)?;
        if level == libc::SOL_UDP && kind == UDP_GRO {
            let size = i32::from_ne_bytes(data.get(..4)?.try_into().ok()?);
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        rest = rest.get(len.next_multiple_of(8)..)?;
    }
    None
}

/// The address a socket is bound to (to learn an ephemeral port).
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddrV4, UdpError> {
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa and len are live and sized for a sockaddr_in.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(UdpError::LocalAddr(io::Error::last_os_error()));
    }
    from_sockaddr_in(&sa).ok_or_else(|| {
        UdpError::LocalAddr(io::Error::new(
            io::ErrorKind::InvalidData,
            "socket is not bound to an IPv4 address",
        ))
    })
}

/// Receive and send buffer sizes the kernel actually granted, in bytes.
pub fn buffer_sizes(fd: BorrowedFd<'_>) -> io::Result<(usize, usize)> {
    let r = get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    let s = get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok((r.max(0) as usize, s.max(0) as usize))
}

pub fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: an all-zero sockaddr_in is a valid value; the padding stays 0.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(addr.ip().octets()),
    };
    sa
}

pub fn from_sockaddr_in(sa: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    if i32::from(sa.sin_family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    ))
}

/// Decode a `sockaddr_in` as the kernel wrote it into a receive buffer
/// (unaligned, possibly short).
pub fn parse_sockaddr_in(name: &[u8]) -> Option<SocketAddrV4> {
    if name.len() < mem::size_of::<libc::sockaddr_in>() {
        return None;
    }
    let family = u16::from_ne_bytes([name[0], name[1]]);
    if i32::from(family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::new(name[4], name[5], name[6], name[7]),
        u16::from_be_bytes([name[2], name[3]]),
    ))
}

/// The `IP_TTL` control message of [`send_to`]: a `cmsghdr`, then the
/// TTL as an int, padded to `CMSG_SPACE(sizeof(int))`.
#[repr(C)]
struct TtlCmsg {
    hdr: libc::cmsghdr,
    ttl: libc::c_int,
    _pad: [u8; 4],
}

/// One send without waiting: a full socket buffer is an error
/// (`WouldBlock`), never a stall of the caller's event loop. `ttl` sets
/// this datagram's IP TTL alone (an `IP_TTL` control message): the socket
/// is shared with the workers' sends, which a setsockopt would race with.
pub fn send_to(
    fd: BorrowedFd<'_>,
    datagram: &[u8],
    to: SocketAddrV4,
    ttl: Option<u8>,
) -> io::Result<()> {
    let mut sa = sockaddr_in(to);
    let mut iov = libc::iovec {
        iov_base: datagram.as_ptr() as *mut libc::c_void,
        iov_len: datagram.len(),
    };
    // SAFETY: all-zero msghdr and cmsghdr are valid values (no name, no
    // control).
    let (mut msg, mut control): (libc::msghdr, TtlCmsg) = unsafe { (mem::zeroed(), mem::zeroed()) };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(ttl) = ttl {
        control.hdr.cmsg_len = mem::offset_of!(TtlCmsg, ttl) + mem::size_of::<libc::c_int>();
        control.hdr.cmsg_level = libc::IPPROTO_IP;
        control.hdr.cmsg_type = libc::IP_TTL;
        control.ttl = libc::c_int::from(ttl);
        msg.msg_control = (&mut control as *mut TtlCmsg).cast();
        msg.msg_controllen = mem::size_of::<TtlCmsg>();
    }
    loop {
        // SAFETY: msg points at sa, iov (and so datagram) and control,
        // all live for the call.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n >= 0 {
            // UDP sends all or nothing.
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sockaddr_round_trip_and_parse() {
        let a = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 40_001);
        let sa = sockaddr_in(a);
        assert_eq!(from_sockaddr_in(&sa), Some(a));
        // SAFETY: sockaddr_in is plain old data.
        let bytes: [u8; 16] = unsafe { mem::transmute(sa) };
        assert_eq!(parse_sockaddr_in(&bytes), Some(a));
        assert_eq!(parse_sockaddr_in(&bytes[..15]), None);
        let mut v6 = bytes;
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(parse_sockaddr_in(&v6), None);
    }

    #[test]
    fn reuseport_sockets_share_an_ephemeral_port() {
        let a = bind_reuseport(0, 1 << 20).unwrap();
        let port = local_addr(a.as_fd()).unwrap().port();
        assert_ne!(port, 0);
        let b = bind_reuseport(port, 1 << 20).unwrap();
        assert_eq!(local_addr(b.as_fd()).unwrap().port(), port);
        let (r, s) = buffer_sizes(a.as_fd()).unwrap();
        assert!(r > 0 && s > 0);

        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let std::net::SocketAddr::V4(to) = peer.local_addr().unwrap() else {
            unreachable!()
        };
        send_to(a.as_fd(), b"hi", to, None).unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from.port(), port);
    }

    /// The TTL a datagram arrived with, read from its IP_TTL control
    /// message (IP_RECVTTL on).
    fn recv_ttl(fd: BorrowedFd<'_>) -> Option<i32> {
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is a valid value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: msg points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "recvmsg: {}", io::Error::last_os_error());
        // SAFETY: control holds msg_controllen bytes written by the kernel.
        let bytes = unsafe {
            std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), msg.msg_controllen)
        };
        let level = i32::from_ne_bytes(bytes.get(8..12)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(bytes.get(12..16)?.try_into().ok()?);
        (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
            .then(|| i32::from_ne_bytes(bytes[16..20].try_into().unwrap()))
    }

    #[test]
    fn a_ttl_applies_to_its_datagram_alone() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let rx = OwnedFd::from(rx);
        set_int(&rx, libc::IPPROTO_IP, libc::IP_RECVTTL, 1).unwrap();
        let to = local_addr(rx.as_fd()).unwrap();
        let tx = bind_reuseport(0, 1 << 16).unwrap();
        send_to(tx.as_fd(), b"primer", to, Some(2)).unwrap();
        send_to(tx.as_fd(), b"probe", to, None).unwrap();
        assert_eq!(recv_ttl(rx.as_fd()), Some(2));
        // The socket's own TTL (64 unless the host says otherwise) again.
        let default = get_int(tx.as_fd(), libc::IPPROTO_IP, libc::IP_TTL).unwrap();
        assert_eq!(recv_ttl(rx.as_fd()), Some(default));
        assert_ne!(default, 2);
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut c = (CMSG_HDR_LEN + data.len()).to_ne_bytes().to_vec();
        c.extend_from_slice(&level.to_ne_bytes());
        c.extend_from_slice(&kind.to_ne_bytes());
        c.extend_from_slice(data);
        c.resize(c.len().next_multiple_of(8), 0);
        c
    }

    #[test]
    fn gro_size_is_found_among_control_messages_and_junk_is_not_read() {
        let gro = cmsg(libc::SOL_UDP, UDP_GRO, &1372i32.to_ne_bytes());
        assert_eq!(gro.len(), GRO_CONTROL_LEN);
        assert_eq!(gro_segment_size(&gro), Some(1372));
        let mut two = cmsg(libc::SOL_IP, 8, &[1, 2, 3, 4, 5]);
        two.extend_from_slice(&gro);
        assert_eq!(gro_segment_size(&two), Some(1372));
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(gro_segment_size(&gro[..19]), None);
        assert_eq!(
            gro_segment_size(&cmsg(libc::SOL_UDP, UDP_GRO, &0i32.to_ne_bytes())),
            None
        );
        let mut zero_len = gro.clone();
        zero_len[..8].fill(0);
        assert_eq!(gro_segment_size(&zero_len), None);
        let mut huge = gro;
        huge[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(gro_segment_size(&huge), None);
    }
}
