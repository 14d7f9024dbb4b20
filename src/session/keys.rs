//! The node's static X25519 key and its file (issue 14).
//!
//! The key file holds the 32-byte private key in standard base64 and a
//! newline, like WireGuard's. It is created on first start with mode 0600,
//! and a file anyone but its owner may read or write is refused: a key
//! others can read is no longer this node's alone, and one others can
//! write can be swapped under it.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const KEY_LEN: usize = 32;

/// A node's public key, as peers pin it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Standard base64, the form `peers = [...]` and `--check` use.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(text: &str) -> Result<Self, KeyTextError> {
        decode_key(text).map(PublicKey)
    }

    /// 16 hex digits of SHA-256 over the key: short enough for a log line
    /// and a status column, long enough that two keys of one network do
    /// not share it by accident.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(self.0)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyTextError {
    #[error("not base64")]
    NotBase64,
    #[error("{0} bytes where a key has 32")]
    Length(usize),
    #[error("all zeros, which is no X25519 key")]
    Zero,
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyTextError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyTextError::NotBase64)?;
    let key: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyTextError::Length(bytes.len()))?;
    if key == [0; KEY_LEN] {
        return Err(KeyTextError::Zero);
    }
    Ok(key)
}

/// This node's static key pair.
#[derive(Clone)]
pub struct NodeKey {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// The key pair of a private key (clamped by X25519 on use).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(private);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        NodeKey { private, public }
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut private = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error(
        "key file {path}: mode {mode:04o} lets others read or write it; run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: {why}; expected one base64 X25519 private key")]
    Malformed { path: PathBuf, why: String },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`load_or_create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Loaded,
    Created,
}

/// Reads the key at `path`; `None` if there is no file.
pub fn load(path: &Path) -> Result<Option<NodeKey>, KeyFileError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let malformed = |why: String| KeyFileError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| malformed(e.to_string()))?;
    let private = decode_key(&text).map_err(|e| malformed(e.to_string()))?;
    Ok(Some(NodeKey::from_private(private)))
}

/// Reads the key at `path`, or creates one there (mode 0600) if there is
/// no file. Never overwrites: a file that cannot be used is an error.
pub fn load_or_create(path: &Path) -> Result<(NodeKey, KeyOrigin), KeyFileError> {
    if let Some(key) = load(path)? {
        return Ok((key, KeyOrigin::Loaded));
    }
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let key = NodeKey::generate();
    // create_new: two processes starting at once never both write.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    writeln!(file, "{}", STANDARD.encode(key.private)).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((key, KeyOrigin::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlink-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 §6.1, Alice's key pair.
        let private: [u8; 32] =
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let key = NodeKey::from_private(private);
        assert_eq!(
            key.public().0,
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            PublicKey::from_base64(&key.public().to_base64()),
            Ok(key.public())
        );
        assert_eq!(key.public().fingerprint().len(), 16);
    }

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn created_once_with_mode_0600_then_loaded() {
        let dir = temp_dir("create");
        let path = dir.join("node.key");
        assert!(load(&path).unwrap().is_none());
        let (created, how) = load_or_create(&path).unwrap();
        assert_eq!(how, KeyOrigin::Created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, how) = load_or_create(&path).unwrap();
        assert_eq!(how, KeyOrigin::Loaded);
        assert_eq!(loaded.public(), created.public());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn readable_by_others_or_malformed_is_refused() {
        let dir = temp_dir("refuse");
        let path = dir.join("node.key");
        load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create(&path).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Permissions { .. }),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (text, why) in [
            ("not a key\n", "not base64"),
            ("AAAA\n", "3 bytes"),
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
                "all zeros",
            ),
            ("", "0 bytes"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load_or_create(&path).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Malformed { .. }) && e.to_string().contains(why),
                "{text:?}: {e}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn key_text_errors() {
        assert_eq!(PublicKey::from_base64("$$$"), Err(KeyTextError::NotBase64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyTextError::Length(3)));
    }
}
