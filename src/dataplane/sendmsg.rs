//! What an io_uring sendmsg in flight points at: the header, its iovecs,
//! the destination and, for a UDP GSO send, the segment-size control
//! message; for a send through a TURN channel, the 4-byte ChannelData
//! header too, so the datagram behind it is not copied to make room. The slots live in a boxed slice that never moves, one set per
//! buffer, so queuing a send allocates nothing.

use std::net::SocketAddrV4;

use crate::sys::udp::{sockaddr_in, UDP_SEGMENT};
use crate::turn::channel::HEADER_LEN as CHANNEL_HEADER_LEN;

/// `struct cmsghdr` followed by a `u16`, padded to `CMSG_SPACE(2)`.
#[repr(C)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

pub(crate) struct SendSlot {
    msg: libc::msghdr,
    /// The ChannelData header, then the data; or just the data.
    iov: [libc::iovec; 2],
    channel_header: [u8; CHANNEL_HEADER_LEN],
    dest: libc::sockaddr_in,
    cmsg: SegmentCmsg,
    /// Datagrams this send carries, for the counters at completion.
    pub datagrams: u16,
}

impl SendSlot {
    pub fn new() -> SendSlot {
        // SAFETY: msghdr, iovec, sockaddr_in and cmsghdr are plain C structs
        // for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    /// Fill the slot for sending `data` to `dest`, as one datagram or, with
    /// `segment`, as datagrams of that size (the last may be shorter).
    /// Returns the header to pass to sendmsg; it points into `self`, so the
    /// slot must not move or be refilled until the send completes.
    pub fn prepare(
        &mut self,
        data: &[u8],
        dest: SocketAddrV4,
        segment: Option<u16>,
    ) -> *const libc::msghdr {
        self.address(data, dest);
        self.msg.msg_iov = &mut self.iov[1];
        self.msg.msg_iovlen = 1;
        match segment {
            Some(size) if data.len() > usize::from(size) => {
                self.cmsg.hdr.cmsg_len = std::mem::offset_of!(SegmentCmsg, size) + 2;
                self.cmsg.hdr.cmsg_level = libc::SOL_UDP;
                self.cmsg.hdr.cmsg_type = UDP_SEGMENT;
                self.cmsg.size = size;
                self.msg.msg_control = (&mut self.cmsg as *mut SegmentCmsg).cast();
                self.msg.msg_controllen = std::mem::size_of::<SegmentCmsg>();
                self.datagrams = data.len().div_ceil(usize::from(size)) as u16;
            }
            _ => {
                self.msg.msg_control = std::ptr::null_mut();
                self.msg.msg_controllen = 0;
                self.datagrams = 1;
            }
        }
        &self.msg
    }

    /// Fill the slot for sending `data` as one ChannelData datagram led by
    /// `header` (`turn::channel::header`). No GSO: every datagram through a
    /// channel needs a header with its own length.
    pub fn prepare_channel(
        &mut self,
        header: [u8; CHANNEL_HEADER_LEN],
        data: &[u8],
        dest: SocketAddrV4,
    ) -> *const libc::msghdr {
        self.address(data, dest);
        self.channel_header = header;
        self.iov[0] = libc::iovec {
            iov_base: self.channel_header.as_mut_ptr().cast(),
            iov_len: CHANNEL_HEADER_LEN,
        };
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = 2;
        self.msg.msg_control = std::ptr::null_mut();
        self.msg.msg_controllen = 0;
        self.datagrams = 1;
        &self.msg
    }

    /// The destination, and the data as the last iovec.
    fn address(&mut self, data: &[u8], dest: SocketAddrV4) {
        self.dest = sockaddr_in(dest);
        self.iov[1] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        self.msg.msg_name = (&mut self.dest as *mut libc::sockaddr_in).cast();
        self.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;

    #[test]
    fn control_message_has_the_kernel_layout() {
        // SAFETY: CMSG_* are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(2), libc::CMSG_LEN(2)) };
        assert_eq!(std::mem::size_of::<SegmentCmsg>(), space as usize);
        let mut slot = SendSlot::new();
        slot.prepare(
            &[0; 100],
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            Some(10),
        );
        assert_eq!(slot.cmsg.hdr.cmsg_len, len as usize);
        assert_eq!(slot.datagrams, 10);
    }

    /// A receiving socket (set up by `setup`), a sending one, and where to
    /// send.
    fn loopback_pair(setup: impl FnOnce(&UdpSocket)) -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        setup(&rx);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            unreachable!()
        };
        (rx, tx, to)
    }

    /// Send 250 counting bytes as 100-byte datagrams in one sendmsg(2).
    fn send_run(tx: &UdpSocket, to: SocketAddrV4) -> (Vec<u8>, Box<SendSlot>) {
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut slot = Box::new(SendSlot::new());
        let msg = slot.prepare(&data, to, Some(100));
        // SAFETY: msg points into `slot` and `data`, both alive here.
        let n = unsafe { libc::sendmsg(tx.as_raw_fd(), msg, 0) };
        assert_eq!(n, 250, "{}", std::io::Error::last_os_error());
        (data, slot)
    }

    /// A real sendmsg(2) with the prepared header: the receiver sees the
    /// run cut at the segment size, and a short run needs no cmsg.
    #[test]
    fn prepared_header_sends_segmented_datagrams() {
        let (rx, tx, to) = loopback_pair(|_| ());
        let (data, mut slot) = send_run(&tx, to);
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for want in [100, 100, 50] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, want);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        let msg = slot.prepare(&data[..80], to, Some(100));
        assert_eq!(slot.datagrams, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sendmsg(tx.as_raw_fd(), msg, 0) }, 80);
        assert_eq!(rx.recv(&mut buf).unwrap(), 80);
    }

    /// A channel send is header and data in one datagram, and a plain
    /// send after it from the same slot carries no header.
    #[test]
    fn channel_send_leads_the_data_with_its_header() {
        let (rx, tx, to) = loopback_pair(|_| ());
        let data: Vec<u8> = (0..90u8).collect();
        let mut slot = Box::new(SendSlot::new());
        let header = crate::turn::channel::header(0x4001, data.len()).unwrap();
        let msg = slot.prepare_channel(header, &data, to);
        // SAFETY: msg points into `slot` and `data`, both alive here.
        assert_eq!(unsafe { libc::sendmsg(tx.as_raw_fd(), msg, 0) }, 94);
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(
            crate::turn::channel::parse(&buf[..n]).unwrap(),
            (0x4001, &data[..])
        );
        let msg = slot.prepare(&data, to, Some(100));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sendmsg(tx.as_raw_fd(), msg, 0) }, 90);
        assert_eq!(rx.recv(&mut buf).unwrap(), 90);
        assert_eq!(&buf[..90], &data[..]);
    }

    /// The receiving half: with UDP_GRO on the socket, the same run comes
    /// back as one buffer and its segment size as a control message.
    #[test]
    fn gro_receiver_gets_the_run_whole_with_its_segment_size() {
        use crate::sys::udp::{enable_gro, gro_segment_size, GRO_CONTROL_LEN};
        use std::os::fd::OwnedFd;
        let (rx, tx, to) = loopback_pair(|rx| {
            let owned: OwnedFd = rx.try_clone().unwrap().into();
            enable_gro(&owned).unwrap();
        });
        let (data, mut slot) = send_run(&tx, to);
        let mut buf = [0u8; 1024];
        let mut control = [0u8; GRO_CONTROL_LEN];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers set below
        // outlive the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = control.len();
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut hdr, 0) };
        assert_eq!(n, 250, "{}", std::io::Error::last_os_error());
        assert_eq!(&buf[..250], &data[..]);
        assert_eq!(gro_segment_size(&control[..hdr.msg_controllen]), Some(100));
        // A lone datagram carries no size.
        let msg = slot.prepare(&data[..80], to, Some(100));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sendmsg(tx.as_raw_fd(), msg, 0) }, 80);
        hdr.msg_controllen = control.len();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::recvmsg(rx.as_raw_fd(), &mut hdr, 0) }, 80);
        assert_eq!(gro_segment_size(&control[..hdr.msg_controllen]), None);
    }
}
