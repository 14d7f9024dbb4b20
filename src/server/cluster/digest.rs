//! What must be the same on every instance of a cluster: the networks,
//! their passwords, pools and routes. Each instance publishes a digest of
//! each such section (a password only as a salted hash) and compares the
//! digests it hears from the others with its own, so a mismatch is named
//! (which instance, which section) instead of showing up as members that
//! cannot reach each other.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::{PushedRoute, ServerConfig, DEFAULT_NETWORK};

/// Section name → digest, for every section that must match.
pub type Sections = BTreeMap<String, String>;

/// What an instance announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub instance: String,
    pub incarnation: u64,
    pub sections: Sections,
}

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        // Strings and integers always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

fn hash(label: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"ringlink cluster config v1\0");
    h.update(label.as_bytes());
    h.update([0]);
    h.update(bytes);
    let mut s = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn routes_text(routes: &[PushedRoute]) -> String {
    routes
        .iter()
        .map(|r| format!("{} via {} for {};", r.dst, r.via, r.for_clients))
        .collect()
}

/// The sections of `cfg`, named as the file names them: `password`,
/// `pool` and `route` for the default network, `network lab password`
/// (and `path`, `pool`, `route`) for the others, and `networks` for which
/// networks there are.
pub fn sections(cfg: &ServerConfig) -> Sections {
    let mut s = Sections::new();
    let mut names = Vec::new();
    if let (Some(password), Some(pool)) = (&cfg.password, cfg.pool) {
        names.push(DEFAULT_NETWORK.to_string());
        s.insert("password".into(), hash("password", password.as_bytes()));
        s.insert("pool".into(), hash("pool", pool.to_string().as_bytes()));
        s.insert(
            "route".into(),
            hash("route", routes_text(&cfg.routes).as_bytes()),
        );
    }
    for n in &cfg.networks {
        names.push(n.name.clone());
        let key = |k: &str| format!("network {} {k}", n.name);
        s.insert(key("path"), hash("path", n.path.as_bytes()));
        s.insert(key("password"), hash("password", n.password.as_bytes()));
        s.insert(key("pool"), hash("pool", n.pool.to_string().as_bytes()));
        s.insert(
            key("route"),
            hash("route", routes_text(&n.routes).as_bytes()),
        );
    }
    // In clear: names are no secret, and a log line naming them says more.
    names.sort();
    s.insert("networks".into(), names.join(","));
    s
}

/// The sections in which `theirs` differs from `ours`. A network one side
/// lacks is reported once, as `networks`, not again for each of its keys.
pub fn differing(ours: &Sections, theirs: &Sections) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.into_iter()
        .filter(|k| match (ours.get(*k), theirs.get(*k)) {
            (Some(a), Some(b)) => a != b,
            // Only in one: covered by `networks`.
            _ => false,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ServerConfig {
        ServerConfig::parse(
            "t",
            &format!(
                "listen = \"127.0.0.1:1\"\npassword = \"p\"\npool = \"10.77.0.0/24\"\n{extra}"
            ),
        )
        .unwrap()
    }

    const LAB: &str =
        "[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"q\"\npool = \"10.78.0.0/24\"\n";

    #[test]
    fn same_config_same_digest_and_local_keys_do_not_count() {
        let a = sections(&cfg(LAB));
        let b = sections(&cfg(&format!(
            "max_clients = 9\nstun = \"\"\nmetrics = \"\"\n{LAB}[cluster]\nnats = \"nats://h:4222\"\nname = \"b\"\n"
        )));
        assert_eq!(a, b);
        assert!(differing(&a, &b).is_empty());
        // No password in clear anywhere.
        let text = String::from_utf8(
            Announcement {
                instance: "a".into(),
                incarnation: 1,
                sections: a,
            }
            .encode(),
        )
        .unwrap();
        assert!(
            !text.contains("\"q\"") && !text.contains(":\"p\""),
            "{text}"
        );
    }

    #[test]
    fn each_difference_is_named() {
        let base = sections(&cfg(LAB));
        let cases = [
            (cfg(&LAB.replace("\"q\"", "\"r\"")), vec!["network lab password"]),
            (cfg(&LAB.replace("10.78.0.0", "10.79.0.0")), vec!["network lab pool"]),
            (cfg(&LAB.replace("/lab", "/lab2")), vec!["network lab path"]),
            (
                cfg(&format!("{LAB}[[network.route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.78.0.9\"\n")),
                vec!["network lab route"],
            ),
            (
                cfg(&format!("[[route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.77.0.9\"\n{LAB}")),
                vec!["route"],
            ),
            (cfg(""), vec!["networks"]),
            (
                ServerConfig::parse(
                    "t",
                    &format!("listen = \"127.0.0.1:1\"\npassword = \"x\"\npool = \"10.77.0.0/24\"\n{LAB}"),
                )
                .unwrap(),
                vec!["password"],
            ),
        ];
        for (other, want) in cases {
            assert_eq!(differing(&base, &sections(&other)), want);
            assert_eq!(differing(&sections(&other), &base), want, "symmetric");
        }
    }

    #[test]
    fn announcements_round_trip_and_junk_is_none() {
        let a = Announcement {
            instance: "srv-a".into(),
            incarnation: u64::MAX,
            sections: sections(&cfg("")),
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a));
        assert_eq!(Announcement::decode(b"{nope"), None);
    }
}
