//! Why the kernel refused io_uring, told apart so the operator reads the
//! cause and the fix instead of a bare `EPERM`.
//!
//! Four different things look alike from `io_uring_setup(2)`: the
//! `kernel.io_uring_disabled` sysctl (Linux 6.6+), a seccomp filter (Docker's
//! and Podman's default profiles block io_uring with `EPERM`), a kernel too old
//! for the features the dataplane uses (`EINVAL` for an unknown setup flag,
//! `ENOSYS` before io_uring existed), and a security module. [`diagnose`] is
//! pure: it is fed the errno and what `/proc` said, so every cause can be
//! tested; [`observe`] is the only part that reads the system.

use std::fmt;

/// The newest io_uring feature the dataplane relies on is multishot read
/// (`IORING_OP_READ_MULTISHOT`, Linux 6.7); the others are older.
pub const MIN_KERNEL: &str = "6.7";

/// The seccomp profile shipped for containers (see the README).
pub const SECCOMP_PROFILE: &str = "dist/docker/seccomp-io-uring.json";

/// Where a ring could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `io_uring_setup` with SINGLE_ISSUER and DEFER_TASKRUN (6.0, 6.1).
    Setup,
    /// Registering a provided-buffer ring (5.19).
    RegisterBufRing,
    /// The opcode probe said multishot read is missing (6.7).
    MultishotRead,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Setup => "io_uring_setup",
            Step::RegisterBufRing => "register_buf_ring",
            Step::MultishotRead => "IORING_OP_READ_MULTISHOT",
        }
    }

    /// The feature a failure at this step means the kernel lacks.
    fn feature(self) -> &'static str {
        match self {
            Step::Setup => "io_uring SINGLE_ISSUER/DEFER_TASKRUN rings (Linux 6.1)",
            Step::RegisterBufRing => "provided buffer rings (Linux 5.19)",
            Step::MultishotRead => "multishot read, IORING_OP_READ_MULTISHOT (Linux 6.7)",
        }
    }

    /// How the kernel showed it lacks the feature.
    fn evidence(self) -> &'static str {
        match self {
            Step::Setup => "io_uring_setup gave EINVAL",
            Step::RegisterBufRing => "register_buf_ring gave EINVAL",
            Step::MultishotRead => "the io_uring opcode probe does not list it",
        }
    }
}

/// `Seccomp:` in /proc/self/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    Off,
    Strict,
    Filter,
}

impl SeccompMode {
    /// Parses the value of the `Seccomp:` line (0, 1 or 2).
    pub fn from_status_value(v: &str) -> Option<Self> {
        match v.trim() {
            "0" => Some(SeccompMode::Off),
            "1" => Some(SeccompMode::Strict),
            "2" => Some(SeccompMode::Filter),
            _ => None,
        }
    }
}

/// What the process could see when the kernel said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub errno: i32,
    /// `kernel.io_uring_disabled`; `None` where the sysctl does not exist
    /// (before 6.6), which behaves like 0.
    pub io_uring_disabled: Option<u8>,
    pub seccomp: Option<SeccompMode>,
    /// `uname -r`, for the message.
    pub kernel_release: String,
}

/// The cause of a refusal; its `Display` names the cause and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `kernel.io_uring_disabled = 2`: nobody may create a ring.
    DisabledBySysctl,
    /// `kernel.io_uring_disabled = 1`: only CAP_SYS_ADMIN or members of
    /// `kernel.io_uring_group` may.
    RestrictedBySysctl,
    /// A seccomp filter answered for the kernel.
    Seccomp { errno: i32 },
    /// The kernel has no io_uring at all.
    NoIoUring { release: String },
    /// The kernel has io_uring but not a feature the dataplane needs.
    OldKernel { release: String, step: Step },
    /// EPERM with neither the sysctl nor seccomp to blame.
    Denied,
}

/// Names the cause of a failed ring setup step, or `None` when the error
/// is not a refusal (e.g. `ENOMEM`), which is then reported as it is.
pub fn diagnose(step: Step, seen: &Observed) -> Option<Refusal> {
    let filtered = seen.seccomp == Some(SeccompMode::Filter);
    match seen.errno {
        libc::EPERM | libc::EACCES => Some(match seen.io_uring_disabled {
            Some(2) => Refusal::DisabledBySysctl,
            Some(1) => Refusal::RestrictedBySysctl,
            _ if filtered => Refusal::Seccomp { errno: seen.errno },
            _ => Refusal::Denied,
        }),
        // A filter may also answer ENOSYS ("no such call"), which a kernel
        // that has io_uring (5.1+; all with the sysctl, 6.6+) would never
        // say about it by itself.
        libc::ENOSYS
            if filtered
                && (seen.io_uring_disabled.is_some()
                    || release_at_least(&seen.kernel_release, (5, 1))) =>
        {
            Some(Refusal::Seccomp { errno: seen.errno })
        }
        libc::ENOSYS => Some(Refusal::NoIoUring {
            release: seen.kernel_release.clone(),
        }),
        libc::EINVAL => Some(Refusal::OldKernel {
            release: seen.kernel_release.clone(),
            step,
        }),
        _ => None,
    }
}

/// Whether `uname -r` (e.g. "6.1.0-18-amd64") is at least major.minor;
/// false when it does not parse.
fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        _ => "an error",
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DisabledBySysctl => write!(
                f,
                "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2) and the \
                 dataplane needs it; fix: `sysctl -w kernel.io_uring_disabled=0`, and make it \
                 permanent in /etc/sysctl.d/"
            ),
            Refusal::RestrictedBySysctl => write!(
                f,
                "io_uring is limited to privileged processes (sysctl kernel.io_uring_disabled = 1) \
                 and this one has neither CAP_SYS_ADMIN nor the group in kernel.io_uring_group; \
                 fix: `sysctl -w kernel.io_uring_disabled=0`, or set kernel.io_uring_group to a \
                 group id and run ringlink in that group (systemd: SupplementaryGroups=)"
            ),
            Refusal::Seccomp { errno } => write!(
                f,
                "a seccomp filter blocks io_uring (io_uring_setup gave {} while \
                 kernel.io_uring_disabled allows it, and /proc/self/status says Seccomp: 2); \
                 Docker's and Podman's default profiles do this: fix: run the container with \
                 `--security-opt seccomp={SECCOMP_PROFILE}` (shipped with ringlink); under \
                 systemd keep io_uring in SystemCallFilter= (@system-service has it)",
                errno_name(*errno)
            ),
            Refusal::NoIoUring { release } => write!(
                f,
                "this kernel ({release}) has no io_uring (io_uring_setup gave ENOSYS): it is \
                 older than 5.1 or built without CONFIG_IO_URING; fix: run Linux {MIN_KERNEL} or \
                 later with io_uring"
            ),
            Refusal::OldKernel { release, step } => write!(
                f,
                "this kernel ({release}) lacks {} ({}), which the dataplane needs; fix: upgrade \
                 to Linux {MIN_KERNEL} or later",
                step.feature(),
                step.evidence()
            ),
            Refusal::Denied => write!(
                f,
                "io_uring_setup was refused with EPERM although kernel.io_uring_disabled allows \
                 it and no seccomp filter is active: a security module (SELinux, AppArmor) may \
                 deny it; fix: look for the denial in the audit log and allow io_uring for ringlink"
            ),
        }
    }
}

/// Reads what [`diagnose`] needs from /proc. Anything unreadable is left
/// out rather than guessed.
pub fn observe(errno: i32) -> Observed {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let io_uring_disabled =
        read("/proc/sys/kernel/io_uring_disabled").and_then(|s| s.trim().parse().ok());
    let seccomp = read("/proc/self/status").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(SeccompMode::from_status_value)
    });
    let kernel_release = read("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown release".to_string());
    Observed {
        errno,
        io_uring_disabled,
        seccomp,
        kernel_release,
    }
}

/// The refusal for a feature the kernel's opcode probe does not list.
pub fn missing(step: Step) -> Refusal {
    Refusal::OldKernel {
        release: observe(0).kernel_release,
        step,
    }
}

/// [`diagnose`] for an error the kernel just returned.
pub fn explain(step: Step, err: &std::io::Error) -> Option<Refusal> {
    diagnose(step, &observe(err.raw_os_error()?))
}

/// Sets up a small ring the way the dataplane does and probes for its
/// newest opcode: `Ok` when this process may run the dataplane, else why
/// not. For `ringlink netcheck`; the dataplane reports the same causes when
/// its own setup fails.
pub fn check() -> Result<(), String> {
    let ring: io_uring::IoUring = io_uring::IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .map_err(|e| match explain(Step::Setup, &e) {
            Some(refusal) => refusal.to_string(),
            None => format!("io_uring_setup failed: {e}"),
        })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring register_probe failed: {e}"))?;
    if !probe.is_supported(io_uring::opcode::ReadMulti::CODE) {
        return Err(missing(Step::MultishotRead).to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(errno: i32, sysctl: Option<u8>, seccomp: SeccompMode) -> Observed {
        Observed {
            errno,
            io_uring_disabled: sysctl,
            seccomp: Some(seccomp),
            kernel_release: "5.15.0-test".into(),
        }
    }

    fn message(step: Step, o: Observed) -> String {
        diagnose(step, &o)
            .unwrap_or_else(|| panic!("{o:?} should be a refusal"))
            .to_string()
    }

    #[test]
    fn sysctl_two_disables_for_everyone() {
        let o = seen(libc::EPERM, Some(2), SeccompMode::Filter);
        // The sysctl is the cause even under a filter: loosening the filter
        // alone would not help.
        assert_eq!(diagnose(Step::Setup, &o), Some(Refusal::DisabledBySysctl));
        let m = message(Step::Setup, o);
        assert!(m.contains("kernel.io_uring_disabled = 2"), "{m}");
        assert!(m.contains("sysctl -w kernel.io_uring_disabled=0"), "{m}");
    }

    #[test]
    fn sysctl_one_restricts_to_a_group() {
        let o = seen(libc::EPERM, Some(1), SeccompMode::Off);
        assert_eq!(diagnose(Step::Setup, &o), Some(Refusal::RestrictedBySysctl));
        let m = message(Step::Setup, o);
        assert!(m.contains("kernel.io_uring_disabled = 1"), "{m}");
        assert!(m.contains("kernel.io_uring_group"), "{m}");
        assert!(m.contains("SupplementaryGroups="), "{m}");
    }

    #[test]
    fn eperm_under_a_filter_with_the_sysctl_open_is_seccomp() {
        for sysctl in [Some(0), None] {
            let o = seen(libc::EPERM, sysctl, SeccompMode::Filter);
            assert_eq!(
                diagnose(Step::Setup, &o),
                Some(Refusal::Seccomp { errno: libc::EPERM })
            );
            let m = message(Step::Setup, o);
            assert!(m.contains("seccomp filter"), "{m}");
            assert!(m.contains("gave EPERM"), "{m}");
            assert!(
                m.contains(&format!("--security-opt seccomp={SECCOMP_PROFILE}")),
                "{m}"
            );
        }
        // A filter that answers ENOSYS on a kernel that has io_uring is
        // still the filter, not a missing io_uring.
        let o = seen(libc::ENOSYS, Some(0), SeccompMode::Filter);
        assert!(message(Step::Setup, o).contains("gave ENOSYS"));
        let o = seen(libc::ENOSYS, None, SeccompMode::Filter);
        assert!(message(Step::Setup, o).contains("seccomp filter"));
        let old = Observed {
            kernel_release: "4.19.0-27-amd64".into(),
            ..seen(libc::ENOSYS, None, SeccompMode::Filter)
        };
        assert!(message(Step::Setup, old).contains("has no io_uring"));
    }

    #[test]
    fn enosys_without_a_filter_is_a_kernel_without_io_uring() {
        let o = seen(libc::ENOSYS, None, SeccompMode::Off);
        let m = message(Step::Setup, o);
        assert!(m.contains("has no io_uring"), "{m}");
        assert!(m.contains("5.15.0-test"), "names the running kernel: {m}");
        assert!(m.contains(&format!("Linux {MIN_KERNEL} or later")), "{m}");
    }

    #[test]
    fn einval_names_the_missing_feature() {
        let cases = [
            (Step::Setup, "DEFER_TASKRUN"),
            (Step::RegisterBufRing, "provided buffer rings"),
            (Step::MultishotRead, "IORING_OP_READ_MULTISHOT"),
        ];
        for (step, feature) in cases {
            let o = seen(libc::EINVAL, Some(0), SeccompMode::Off);
            let m = message(step, o);
            assert!(m.contains(feature), "{step:?}: {m}");
            assert!(m.contains("upgrade to Linux"), "{m}");
            assert!(m.contains("5.15.0-test"), "{m}");
        }
    }

    #[test]
    fn eperm_with_nothing_to_blame_points_at_security_modules() {
        let o = seen(libc::EPERM, Some(0), SeccompMode::Off);
        assert_eq!(diagnose(Step::Setup, &o), Some(Refusal::Denied));
        assert!(message(Step::Setup, o).contains("audit log"));
    }

    #[test]
    fn other_errors_are_not_refusals() {
        for errno in [libc::ENOMEM, libc::EMFILE, libc::EFAULT] {
            assert_eq!(
                diagnose(Step::Setup, &seen(errno, Some(0), SeccompMode::Off)),
                None
            );
        }
    }

    #[test]
    fn kernel_releases() {
        assert!(release_at_least("6.1.0-18-amd64", (5, 1)));
        assert!(release_at_least("5.1", (5, 1)));
        assert!(!release_at_least("4.19.0-27-amd64", (5, 1)));
        assert!(!release_at_least("unknown release", (5, 1)));
    }

    #[test]
    fn seccomp_status_values() {
        assert_eq!(
            SeccompMode::from_status_value("\t2"),
            Some(SeccompMode::Filter)
        );
        assert_eq!(SeccompMode::from_status_value("0"), Some(SeccompMode::Off));
        assert_eq!(SeccompMode::from_status_value("x"), None);
    }
}
