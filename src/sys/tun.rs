//! Opening a multiqueue TUN device.
//!
//! Each queue is its own file descriptor on `/dev/net/tun` attached to the
//! same interface; the kernel spreads outgoing flows over the queues by hash,
//! which is what lets one worker thread own one queue without sharing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Path of the TUN clone device.
pub const TUN_CLONE_DEV: &str = "/dev/net/tun";

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The kernel refuses to attach more queues than this (MAX_TAP_QUEUES).
pub const MAX_QUEUES: usize = 256;

/// How to open the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOptions {
    /// Number of queue fds to attach (1..=256).
    pub queues: usize,
    /// Open the queue fds with O_NONBLOCK.
    pub nonblocking: bool,
    /// Ask for a `virtio_net_hdr` in front of every packet (IFF_VNET_HDR),
    /// which is what lets the kernel hand over TSO/USO super-packets (see
    /// [`enable_offloads`]).
    pub vnet_hdr: bool,
}

impl Default for TunOptions {
    fn default() -> Self {
        TunOptions {
            queues: 1,
            nonblocking: true,
            vnet_hdr: false,
        }
    }
}

/// Why a TUN device could not be opened. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("tun device name {name:?} is empty or contains '/', NUL or whitespace")]
    InvalidName { name: String },
    #[error("tun device name {name:?} is {len} bytes, the kernel allows at most {MAX_IFNAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("tun device {name:?}: {queues} queues requested, must be 1..={MAX_QUEUES}")]
    InvalidQueueCount { name: String, queues: usize },
    #[error("tun device {name:?}: {TUN_CLONE_DEV} does not exist (is the tun module loaded?)")]
    NoCloneDevice { name: String },
    #[error(
        "tun device {name:?}: permission denied opening or attaching a queue (needs CAP_NET_ADMIN)"
    )]
    PermissionDenied { name: String, source: io::Error },
    #[error("tun device {name:?}: an interface of that name exists but is not a multiqueue TUN device, or is busy")]
    Busy { name: String, source: io::Error },
    #[error("tun device {name:?}: {op} failed: {source}")]
    Io {
        name: String,
        op: &'static str,
        source: io::Error,
    },
}

/// Validate an interface name the way the kernel will, before any syscall,
/// so a bad config value gets a precise error rather than EINVAL.
pub fn validate_ifname(name: &str) -> Result<(), TunError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b == b':' || b.is_ascii_whitespace())
    {
        return Err(TunError::InvalidName {
            name: name.to_owned(),
        });
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(TunError::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Open (creating if needed) the TUN device `name` with IFF_TUN | IFF_NO_PI |
/// IFF_MULTI_QUEUE and attach `opts.queues` queues to it.
///
/// The device lives as long as at least one returned fd is open (unless it
/// was made persistent elsewhere).
pub fn open_tun(name: &str, opts: &TunOptions) -> Result<Vec<OwnedFd>, TunError> {
    validate_ifname(name)?;
    if opts.queues == 0 || opts.queues > MAX_QUEUES {
        return Err(TunError::InvalidQueueCount {
            name: name.to_owned(),
            queues: opts.queues,
        });
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    if opts.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    let mut fds = Vec::with_capacity(opts.queues);
    for _ in 0..opts.queues {
        fds.push(open_queue(name, flags, opts.nonblocking)?);
    }
    Ok(fds)
}

fn open_queue(name: &str, flags: libc::c_int, nonblocking: bool) -> Result<OwnedFd, TunError> {
    let path = CString::new(TUN_CLONE_DEV).map_err(|_| TunError::InvalidName {
        name: name.to_owned(),
    })?;
    let mut oflags = libc::O_RDWR | libc::O_CLOEXEC;
    if nonblocking {
        oflags |= libc::O_NONBLOCK;
    }
    // SAFETY: path is a valid NUL-terminated string; the returned fd is
    // checked before being wrapped.
    let raw = unsafe { libc::open(path.as_ptr(), oflags) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                TunError::NoCloneDevice {
                    name: name.to_owned(),
                }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => TunError::PermissionDenied {
                name: name.to_owned(),
                source: err,
            },
            _ => TunError::Io {
                name: name.to_owned(),
                op: "open /dev/net/tun",
                source: err,
            },
        });
    }
    // SAFETY: raw is a freshly opened fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // ifr_flags is a short; all TUN flags we use fit in 16 bits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which ifr is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::PermissionDenied {
                name: name.to_owned(),
                source: err,
            },
            Some(libc::EBUSY) | Some(libc::EINVAL) => TunError::Busy {
                name: name.to_owned(),
                source: err,
            },
            _ => TunError::Io {
                name: name.to_owned(),
                op: "ioctl TUNSETIFF",
                source: err,
            },
        });
    }
    Ok(fd)
}

/// Offloads the kernel may use on packets it hands to a TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Whether UDP segmentation (USO, kernel 6.2+) was accepted besides
    /// checksum and TCP segmentation offload.
    pub uso: bool,
}

/// Let the kernel hand `fd`'s device packets with partial checksums and
/// TCP (and, where the kernel has it, UDP) segmentation left undone. The
/// device must have been opened with `vnet_hdr`; the setting is per device.
pub fn enable_offloads(fd: BorrowedFd<'_>, name: &str) -> Result<Offloads, TunError> {
    let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN;
    let set = |flags: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // Older kernels refuse the USO bit as unknown; TCP alone is the big win.
    // The kernel takes USO only for both families at once.
    if set(base | libc::TUN_F_USO4 | libc::TUN_F_USO6).is_ok() {
        return Ok(Offloads { uso: true });
    }
    set(base).map_err(|source| TunError::Io {
        name: name.to_owned(),
        op: "ioctl TUNSETOFFLOAD",
        source,
    })?;
    Ok(Offloads { uso: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_syscall() {
        assert!(validate_ifname("rl0").is_ok());
        assert!(validate_ifname("fifteen-chars-x").is_ok());
        assert!(matches!(
            validate_ifname("sixteen-chars-xx"),
            Err(TunError::NameTooLong { len: 16, .. })
        ));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "a\0b"] {
            assert!(
                matches!(validate_ifname(bad), Err(TunError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn queue_count_is_checked() {
        let opts = TunOptions {
            queues: 0,
            ..TunOptions::default()
        };
        assert!(matches!(
            open_tun("rl0", &opts),
            Err(TunError::InvalidQueueCount { queues: 0, .. })
        ));
        let opts = TunOptions {
            queues: MAX_QUEUES + 1,
            ..TunOptions::default()
        };
        assert!(matches!(
            open_tun("rl0", &opts),
            Err(TunError::InvalidQueueCount { .. })
        ));
    }

    #[test]
    fn error_messages_name_the_device() {
        let e = validate_ifname("sixteen-chars-xx").unwrap_err();
        assert!(e.to_string().contains("sixteen-chars-xx"));
    }
}
