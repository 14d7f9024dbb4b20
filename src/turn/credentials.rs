//! TURN credentials: the long-term key that MESSAGE-INTEGRITY is keyed
//! with, the short-lived credentials of the TURN REST API scheme that a
//! ringlink server mints from a secret it shares with coturn
//! (`use-auth-secret` / `static-auth-secret`), and the `turn://` URL of a
//! client's config.

use std::fmt;
use std::net::Ipv4Addr;

use base64::Engine as _;
use md5::{Digest, Md5};
use ring::hmac;

use super::TurnError;
use crate::proto::ws::TurnTransport;

/// The default TURN ports (RFC 8656 §3.1): over UDP, and over TLS.
pub const DEFAULT_PORT: u16 = 3478;
pub const DEFAULT_TLS_PORT: u16 = 5349;

/// A username and password for a TURN server.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    // Config dumps and log lines show who, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

impl Credentials {
    /// The long-term credential key (RFC 8489 §9.2.2):
    /// MD5(username ":" realm ":" password). SASLprep is the identity on the
    /// ASCII names and passwords this scheme produces; other strings are
    /// used as their UTF-8 bytes, as coturn does.
    pub fn key(&self, realm: &str) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update(self.username.as_bytes());
        md5.update(b":");
        md5.update(realm.as_bytes());
        md5.update(b":");
        md5.update(self.password.as_bytes());
        md5.finalize().into()
    }

    /// TURN REST API credentials for one node: the username is the expiry
    /// (Unix seconds) and the node's VIP, so coturn can refuse it after
    /// `expires_unix` and its logs name the node; the password is
    /// base64(HMAC-SHA1(secret, username)), which coturn recomputes from
    /// the same secret, so no password is ever stored.
    pub fn mint(secret: &[u8], vip: Ipv4Addr, expires_unix: u64) -> Self {
        let username = format!("{expires_unix}:{vip}");
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            username.as_bytes(),
        );
        Credentials {
            username,
            password: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        }
    }

    /// The expiry of REST API credentials (the number before the first
    /// colon of the username); `None` for static credentials.
    pub fn rest_expiry(&self) -> Option<u64> {
        self.username.split_once(':')?.0.parse().ok()
    }
}

/// A TURN server as a client's config names it:
/// `turn://[user:pass@]host[:port]` (UDP), the same with `?transport=tcp`
/// (TCP), or `turns://…` (TLS over TCP), as in RFC 7065's URIs.
/// The host is resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// How the client reaches the server. The relayed side, from the
    /// server to peers, is UDP either way.
    pub transport: TurnTransport,
    pub host: String,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

impl TurnUrl {
    pub fn parse(url: &str) -> Result<Self, TurnError> {
        let bad = |why| TurnError::BadUrl {
            url: redact(url),
            why,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("turn://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("turns://") {
            (true, rest)
        } else {
            return Err(bad("expected turn:// or turns://[user:pass@]host[:port]"));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains(['/', '#']) {
            return Err(bad("no path allowed after host:port"));
        }
        let transport =
            match (tls, query) {
                (false, None | Some("transport=udp")) => TurnTransport::Udp,
                (false, Some("transport=tcp")) => TurnTransport::Tcp,
                (true, None | Some("transport=tcp")) => TurnTransport::Tls,
                _ => return Err(bad(
                    "the only query is ?transport=udp or ?transport=tcp (turns:// is TLS over TCP)",
                )),
            };
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u
                    .split_once(':')
                    .ok_or(bad("user without a password; expected user:pass@"))?;
                let username = percent_decode(user).ok_or(bad("bad %-escape in the user"))?;
                let password = percent_decode(pass).ok_or(bad("bad %-escape in the password"))?;
                if username.is_empty() {
                    return Err(bad("empty user"));
                }
                Some(Credentials { username, password })
            }
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(bad("port is not a number in 1..=65535"))?,
            ),
            None => (hostport, if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT }),
        };
        if host.is_empty() || host.starts_with('[') {
            return Err(bad("expected a host name or an IPv4 address"));
        }
        if tls
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            // The name is what the certificate is checked against.
            return Err(bad("expected a host name or an IPv4 address"));
        }
        Ok(TurnUrl {
            transport,
            host: host.to_string(),
            port,
            credentials,
        })
    }

    /// The URL again, with `userinfo` (as it should appear, escaped or
    /// hidden) in place of the credentials: for `--check` output.
    pub fn to_url(&self, userinfo: Option<&str>) -> String {
        let (scheme, query) = match self.transport {
            TurnTransport::Udp => ("turn", ""),
            TurnTransport::Tcp => ("turn", "?transport=tcp"),
            TurnTransport::Tls => ("turns", ""),
        };
        let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}{}:{}{query}", self.host, self.port)
    }
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:…{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_key_vector() {
        // Cross-checked: printf 'user:realm:pass' | md5sum
        let c = Credentials {
            username: "user".into(),
            password: "pass".into(),
        };
        assert_eq!(
            c.key("realm"),
            [
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
    }

    #[test]
    fn rest_credentials_as_coturn_computes_them() {
        // Cross-checked with
        // printf '1700000000:10.77.0.2' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let c = Credentials::mint(b"s3cret", Ipv4Addr::new(10, 77, 0, 2), 1_700_000_000);
        assert_eq!(c.username, "1700000000:10.77.0.2");
        assert_eq!(c.password, "bWhdp9SIn7BkmZ3amCr1/Z1yo6I=");
        assert_eq!(c.rest_expiry(), Some(1_700_000_000));
        assert!(!format!("{c:?}").contains(&c.password));
    }

    #[test]
    fn urls() {
        let u = TurnUrl::parse("turn://alice:p%40ss@turn.example:3479").unwrap();
        assert_eq!(u.host, "turn.example");
        assert_eq!(u.port, 3479);
        let c = u.credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "p@ss")
        );
        assert_eq!(u.transport, TurnTransport::Udp);
        let u = TurnUrl::parse("turn://192.0.2.7").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.credentials),
            ("192.0.2.7", 3478, None)
        );
        let u = TurnUrl::parse("turns://a:b@turn.example").unwrap();
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (TurnTransport::Tls, "turn.example", 5349)
        );
        let u = TurnUrl::parse("turns://10.9.0.1:443?transport=tcp").unwrap();
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (TurnTransport::Tls, "10.9.0.1", 443)
        );
        let u = TurnUrl::parse("turn://a:b@192.0.2.7?transport=tcp").unwrap();
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (TurnTransport::Tcp, "192.0.2.7", 3478)
        );
        let u = TurnUrl::parse("turn://192.0.2.7:80?transport=udp").unwrap();
        assert_eq!((u.transport, u.port), (TurnTransport::Udp, 80));
        // Printed back, each parses to itself.
        for text in [
            "turn://a:b@h.example:3479",
            "turn://h.example:3478?transport=tcp",
            "turns://a:b@h.example:5349",
        ] {
            let u = TurnUrl::parse(text).unwrap();
            let userinfo = u
                .credentials
                .as_ref()
                .map(|c| format!("{}:{}", c.username, c.password));
            assert_eq!(u.to_url(userinfo.as_deref()), text);
        }
        for bad in [
            "turn://h?transport=tls",
            "turn://h?transport=TCP",
            "turn://h?",
            "turns://h?transport=udp",
            "turn://h/?transport=tcp",
            "turns://",
            "turns://h_x:5349",
            "turnss://h",
            "stun://h",
            "turn://h:0",
            "turn://h:99999",
            "turn://h:x",
            "turn://alice@h",
            "turn://:p@h",
            "turn://",
            "turn://h/path",
            "turn://[::1]:3478",
            "turn://a:%zz@h",
        ] {
            assert!(TurnUrl::parse(bad).is_err(), "{bad}");
        }
        // The password never appears in the error.
        let e = TurnUrl::parse("turn://alice:hunter2@h:0")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("alice"), "{e}");
    }
}
