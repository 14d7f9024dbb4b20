//! Which public key belongs to which virtual IP (issue 14).
//!
//! Trust on first use: the first key a VIP announces is pinned, and a
//! different one later is refused. Keys from the client's `peers = [...]`
//! are pinned before any is seen, for sites that trust nobody in the
//! middle, the server included.
//!
//! [`PinStore`] is sans-IO: the node asks it and it answers; when a first
//! use pinned something, [`PinStore::encode`] gives the state file's new
//! text and the caller writes it ([`save`], atomic).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::keys::PublicKey;

/// Why a key is trusted for a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// The client's `peers = [...]`.
    Config,
    /// First seen, then remembered in the state file.
    FirstUse,
}

impl PinSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            PinSource::Config => "pinned",
            PinSource::FirstUse => "tofu",
        }
    }
}

/// What [`PinStore::observe`] made of a key a VIP announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key pinned for the VIP.
    Known,
    /// The VIP had no key: this one is pinned now (save the store).
    PinnedNow,
    /// The VIP is pinned to another key: refuse this one.
    Changed { pinned: PublicKey },
}

#[derive(Debug, Clone, Default)]
pub struct PinStore {
    pins: BTreeMap<Ipv4Addr, (PublicKey, PinSource)>,
}

impl PinStore {
    /// Pins from the configuration win over remembered ones: the operator
    /// wrote them down on purpose.
    pub fn new(
        config: &[(Ipv4Addr, PublicKey)],
        remembered: BTreeMap<Ipv4Addr, PublicKey>,
    ) -> Self {
        let mut pins: BTreeMap<_, _> = remembered
            .into_iter()
            .map(|(vip, key)| (vip, (key, PinSource::FirstUse)))
            .collect();
        for &(vip, key) in config {
            pins.insert(vip, (key, PinSource::Config));
        }
        PinStore { pins }
    }

    pub fn get(&self, vip: Ipv4Addr) -> Option<(PublicKey, PinSource)> {
        self.pins.get(&vip).copied()
    }

    pub fn observe(&mut self, vip: Ipv4Addr, key: PublicKey) -> Verdict {
        match self.pins.get(&vip) {
            Some(&(pinned, _)) if pinned == key => Verdict::Known,
            Some(&(pinned, _)) => Verdict::Changed { pinned },
            None => {
                self.pins.insert(vip, (key, PinSource::FirstUse));
                Verdict::PinnedNow
            }
        }
    }

    /// Replaces the configured pins (a reloaded `peers`); returns every VIP
    /// whose pin changed, with its new key (`None`: no pin any more, so the
    /// next key it announces is pinned on first use).
    pub fn set_configured(
        &mut self,
        config: &[(Ipv4Addr, PublicKey)],
    ) -> Vec<(Ipv4Addr, Option<PublicKey>)> {
        let old: BTreeMap<Ipv4Addr, PublicKey> = self
            .pins
            .iter()
            .filter(|(_, (_, s))| *s == PinSource::Config)
            .map(|(&v, &(k, _))| (v, k))
            .collect();
        let new: BTreeMap<Ipv4Addr, PublicKey> = config.iter().copied().collect();
        let mut changed = Vec::new();
        for &vip in old.keys() {
            if !new.contains_key(&vip) {
                self.pins.remove(&vip);
                changed.push((vip, None));
            }
        }
        for (&vip, &key) in &new {
            if self.pins.get(&vip) != Some(&(key, PinSource::Config)) {
                let was = self.pins.insert(vip, (key, PinSource::Config)).map(|p| p.0);
                if was != Some(key) {
                    changed.push((vip, Some(key)));
                }
            }
        }
        changed
    }

    /// The state file's text: the first-use pins, one `VIP base64-key` a
    /// line (configured pins live in the configuration).
    pub fn encode(&self) -> String {
        let mut out = String::from("# ringlink pinned peer keys (trust on first use): VIP key\n");
        for (vip, (key, source)) in &self.pins {
            if *source == PinSource::FirstUse {
                out.push_str(&format!("{vip} {}\n", key.to_base64()));
            }
        }
        out
    }
}

#[derive(Debug, Error)]
pub enum PinFileError {
    #[error("pins file {path}, line {line}: {why}; expected `VIP base64-key`")]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("pins file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses a state file's text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<Ipv4Addr, PublicKey>, PinFileError> {
    let mut pins = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| PinFileError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
            why,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(vip), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("not two words".into()));
        };
        let vip: Ipv4Addr = vip
            .parse()
            .map_err(|_| bad(format!("{vip:?} is not an IPv4 address")))?;
        let key = PublicKey::from_base64(key).map_err(|e| bad(format!("key: {e}")))?;
        if pins.insert(vip, key).is_some() {
            return Err(bad(format!("{vip} appears twice")));
        }
    }
    Ok(pins)
}

/// Reads the state file; a missing file is an empty store.
pub fn load(path: &Path) -> Result<BTreeMap<Ipv4Addr, PublicKey>, PinFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(PinFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces the state file with `text` atomically: a crash leaves the old
/// file or the new one, never half of one.
pub fn save(path: &Path, text: &str) -> Result<(), PinFileError> {
    let io = |source| PinFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    fn vip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, last)
    }

    #[test]
    fn first_use_pins_and_a_change_is_refused() {
        let mut pins = PinStore::default();
        assert_eq!(pins.observe(vip(3), key(1)), Verdict::PinnedNow);
        assert_eq!(pins.observe(vip(3), key(1)), Verdict::Known);
        assert_eq!(
            pins.observe(vip(3), key(2)),
            Verdict::Changed { pinned: key(1) }
        );
        // The refused key did not replace the pinned one.
        assert_eq!(pins.get(vip(3)), Some((key(1), PinSource::FirstUse)));
        assert_eq!(pins.observe(vip(4), key(2)), Verdict::PinnedNow);
    }

    #[test]
    fn configured_pins_win_and_are_not_written_to_the_state_file() {
        let remembered = BTreeMap::from([(vip(3), key(1)), (vip(4), key(4))]);
        let mut pins = PinStore::new(&[(vip(3), key(9))], remembered);
        assert_eq!(pins.get(vip(3)), Some((key(9), PinSource::Config)));
        assert_eq!(
            pins.observe(vip(3), key(1)),
            Verdict::Changed { pinned: key(9) }
        );
        let text = pins.encode();
        assert!(!text.contains("10.77.0.3"), "{text}");
        let back = parse(Path::new("pins"), &text).unwrap();
        assert_eq!(back, BTreeMap::from([(vip(4), key(4))]));
    }

    #[test]
    fn state_file_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("ringlink-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.pins");
        assert!(load(&path).unwrap().is_empty());
        let mut pins = PinStore::default();
        pins.observe(vip(7), key(7));
        save(&path, &pins.encode()).unwrap();
        assert_eq!(load(&path).unwrap(), BTreeMap::from([(vip(7), key(7))]));
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        for (text, line, why) in [
            ("10.77.0.3\n", 1, "two words"),
            ("# c\n10.77.0.300 AAAA\n", 2, "IPv4"),
            ("10.77.0.3 AAAA\n", 1, "3 bytes"),
            ("10.77.0.3 x y\n", 1, "two words"),
        ] {
            let e = parse(&path, text).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.contains(&format!("line {line}")) && shown.contains(why),
                "{text:?}: {shown}"
            );
        }
        let k = key(5).to_base64();
        let e = parse(&path, &format!("10.77.0.3 {k}\n10.77.0.3 {k}\n")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reloaded_configured_pins_replace_the_old_ones_and_name_what_changed() {
        let (k1, k2, k3) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        let remembered: BTreeMap<_, _> = [(ip(9), k3)].into();
        let mut store = PinStore::new(&[(ip(1), k1), (ip(2), k2)], remembered);
        // Same list: nothing changes.
        assert_eq!(store.set_configured(&[(ip(1), k1), (ip(2), k2)]), vec![]);
        // 1 dropped, 2 re-keyed, 3 added; the remembered pin is left alone.
        let changed = store.set_configured(&[(ip(2), k3), (ip(3), k1)]);
        assert_eq!(
            changed,
            vec![(ip(1), None), (ip(2), Some(k3)), (ip(3), Some(k1))]
        );
        assert_eq!(store.get(ip(1)), None);
        assert_eq!(store.get(ip(2)), Some((k3, PinSource::Config)));
        assert_eq!(store.get(ip(9)), Some((k3, PinSource::FirstUse)));
        // A dropped pin is learned again on first use.
        assert_eq!(store.observe(ip(1), k2), Verdict::PinnedNow);
        // A remembered pin the operator now configures becomes configured;
        // with the same key it is no change to the sessions.
        assert_eq!(
            store.set_configured(&[(ip(2), k3), (ip(3), k1), (ip(9), k3)]),
            vec![]
        );
        assert_eq!(store.get(ip(9)), Some((k3, PinSource::Config)));
    }
}
