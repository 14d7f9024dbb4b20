//! The one sysctl ringlink touches: IPv4 forwarding, needed when a gateway
//! routes a site's subnet into the mesh.

use std::io;
use std::path::{Path, PathBuf};

/// Path of the IPv4 forwarding switch (per network namespace).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} holds {value:?}, expected 0 or 1")]
    Unexpected { path: PathBuf, value: String },
}

/// Whether IPv4 forwarding is enabled in this network namespace.
pub fn ip_forward() -> Result<bool, SysctlError> {
    read_bool(Path::new(IP_FORWARD))
}

/// Enable or disable IPv4 forwarding in this network namespace.
pub fn set_ip_forward(enabled: bool) -> Result<(), SysctlError> {
    write_bool(Path::new(IP_FORWARD), enabled)
}

/// Read a 0/1 sysctl file.
pub fn read_bool(path: &Path) -> Result<bool, SysctlError> {
    let raw = std::fs::read_to_string(path).map_err(|source| SysctlError::Read {
        path: path.to_owned(),
        source,
    })?;
    match raw.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(SysctlError::Unexpected {
            path: path.to_owned(),
            value: other.chars().take(32).collect(),
        }),
    }
}

/// Write a 0/1 sysctl file. Skips the write when the value already matches,
/// so an unprivileged process that only needs the current state does not
/// fail on EACCES.
pub fn write_bool(path: &Path, value: bool) -> Result<(), SysctlError> {
    if let Ok(current) = read_bool(path) {
        if current == value {
            return Ok(());
        }
    }
    std::fs::write(path, if value { "1\n" } else { "0\n" }).map_err(|source| SysctlError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ringlink-sysctl-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn reads_and_writes_bools() {
        let p = temp("rw", "0\n");
        assert!(!read_bool(&p).unwrap());
        write_bool(&p, true).unwrap();
        assert!(read_bool(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn rejects_garbage_and_names_the_path() {
        let p = temp("bad", "maybe\n");
        let e = read_bool(&p).unwrap_err();
        assert!(matches!(e, SysctlError::Unexpected { .. }));
        assert!(e.to_string().contains("ringlink-sysctl"));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(read_bool(&p), Err(SysctlError::Read { .. })));
    }

    /// The real switch reads as what the file holds (every Linux network
    /// namespace has it; its absence is a failure, not a pass).
    #[test]
    fn real_ip_forward_reads_as_the_file_says() {
        let raw = std::fs::read_to_string(IP_FORWARD).unwrap();
        assert_eq!(ip_forward().unwrap(), raw.trim() == "1");
    }
}
