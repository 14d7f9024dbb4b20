//! `ringlink ping VIP`: an ICMP echo through the tunnel, with the path each
//! reply took as the running client reports it (direct with the endpoint,
//! via another node, or the server's relay), like `tailscale ping`. It
//! stops at the first reply over a direct path, or after `count` echoes.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::status::{self, Status};
use crate::proto::checksum;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const PAYLOAD: &[u8] = b"ringlink ping";

/// How a packet for `vip` leaves this node now, in `ringlink status`'s
/// words: "direct 198.51.100.7:41000", "turn", "tcp", "via 10.77.0.3",
/// "relay".
pub fn path_of(s: &Status, vip: Ipv4Addr) -> String {
    let v = vip.to_string();
    let peer = s.peers.iter().find(|p| p.vip == v);
    let route = s.routes.iter().find(|r| r.dst == v);
    match (route.map(|r| r.path.as_str()), peer) {
        (Some(p), _) if p.starts_with("via") => p.to_string(),
        (_, Some(p)) if p.path == "direct" => {
            format!("direct {}", p.endpoint.as_deref().unwrap_or("?"))
        }
        (_, Some(p)) if p.path == "turn" || p.path == "tcp" => p.path.clone(),
        _ => "relay".to_string(),
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(PAYLOAD);
    let sum = checksum::finish(checksum::add(0, &m));
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The (id, seq) of an echo reply from `from` in a raw-socket read (IPv4
/// header first), or None for anything else.
fn reply_ids(packet: &[u8], from: Ipv4Addr) -> Option<(u16, u16)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    let icmp = packet.get(ihl..)?;
    if src != from || icmp.len() < 8 || icmp[0] != ICMP_ECHO_REPLY {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

fn raw_icmp_socket(wait: Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_usec: wait.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn send_to(fd: &OwnedFd, packet: &[u8], to: Ipv4Addr) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: buffer and address are valid for the call's duration.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to the socket's timeout for the reply to (id, seq).
fn await_reply(
    fd: &OwnedFd,
    from: Ipv4Addr,
    id: u16,
    seq: u16,
    until: Instant,
) -> io::Result<bool> {
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(false),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        if reply_ids(&buf[..n as usize], from) == Some((id, seq)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Pings `vip` through the client whose control socket is `socket`;
/// prints one line per echo. Ok(true) when any reply came.
pub fn run(socket: &Path, vip: Ipv4Addr, count: u16, interval: Duration) -> Result<bool, String> {
    let wait = Duration::from_secs(1);
    let fd = raw_icmp_socket(wait)
        .map_err(|e| format!("raw ICMP socket (needs root or CAP_NET_RAW): {e}"))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut answered = 0;
    for seq in 1..=count {
        let start = Instant::now();
        send_to(&fd, &echo_request(id, seq), vip).map_err(|e| format!("send to {vip}: {e}"))?;
        let got = await_reply(&fd, vip, id, seq, start + wait).map_err(|e| e.to_string())?;
        let rtt = start.elapsed();
        // The path the client reports right after the reply: the one the
        // echo and its reply took, unless it moved in between.
        let path = status::query(socket)
            .map(|s| path_of(&s, vip))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        if got {
            answered += 1;
            println!(
                "reply from {vip}: seq={seq} time={:.2} ms path={path}",
                rtt.as_secs_f64() * 1e3
            );
            if path.starts_with("direct") {
                return Ok(true);
            }
        } else {
            println!("no reply from {vip}: seq={seq} (path now {path})");
        }
        if seq < count {
            std::thread::sleep(interval.saturating_sub(start.elapsed()));
        }
    }
    Ok(answered > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{PeerLine, RouteLine};

    #[test]
    fn echo_request_has_a_valid_checksum() {
        let m = echo_request(0x1234, 7);
        assert_eq!(checksum::finish(checksum::add(0, &m)), 0);
        assert_eq!(&m[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_are_matched_by_source_type_id_and_seq() {
        let vip = Ipv4Addr::new(10, 77, 0, 3);
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 77, 0, 3, 10, 77, 0, 2,
        ];
        p.extend_from_slice(&[ICMP_ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert_eq!(reply_ids(&p, vip), Some((0x1234, 7)));
        assert_eq!(reply_ids(&p, Ipv4Addr::new(10, 77, 0, 4)), None);
        p[20] = ICMP_ECHO_REQUEST;
        assert_eq!(reply_ids(&p, vip), None);
        assert_eq!(reply_ids(&p[..24], vip), None);
        assert_eq!(reply_ids(&[], vip), None);
    }

    #[test]
    fn path_words() {
        let vip = Ipv4Addr::new(10, 77, 0, 3);
        let mut s = Status {
            peers: vec![PeerLine {
                vip: vip.to_string(),
                path: "direct".into(),
                endpoint: Some("198.51.100.7:41000".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(path_of(&s, vip), "direct 198.51.100.7:41000");
        s.routes.push(RouteLine {
            dst: vip.to_string(),
            path: "via 10.77.0.9".into(),
            ..Default::default()
        });
        assert_eq!(path_of(&s, vip), "via 10.77.0.9");
        s.routes.clear();
        s.peers[0].path = "turn".into();
        assert_eq!(path_of(&s, vip), "turn");
        s.peers[0].path = "relay".into();
        assert_eq!(path_of(&s, vip), "relay");
        assert_eq!(path_of(&Status::default(), vip), "relay");
    }
}
