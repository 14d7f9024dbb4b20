//! Which TURN server this node may relay through, and with what
//! credentials: the client's own `turn = "turn://user:pass@host:port"`, or
//! else the latest TURN_OFFER from the ringlink server (credentials it
//! minted from the secret it shares with coturn, renewed before they
//! expire). A static key wins, so an operator can point one node at
//! another server.

use crate::proto::ws::{TurnOffer, TurnTransport};
use crate::turn::{Credentials, TurnUrl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub transport: TurnTransport,
    pub host: String,
    pub port: u16,
    pub credentials: Credentials,
    pub source: Source,
}

#[derive(Debug, Default)]
pub struct TurnSource {
    current: Option<TurnServer>,
}

impl TurnSource {
    pub fn new(config: Option<TurnUrl>) -> Self {
        let current = config.and_then(|u| {
            Some(TurnServer {
                credentials: u.credentials?,
                transport: u.transport,
                host: u.host,
                port: u.port,
                source: Source::Config,
            })
        });
        TurnSource { current }
    }

    /// Takes a server's offer unless the config names a server. True if
    /// what the node uses changed.
    pub fn on_offer(&mut self, offer: TurnOffer) -> bool {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.source == Source::Config)
        {
            return false;
        }
        let next = TurnServer {
            transport: offer.transport,
            host: offer.host,
            port: offer.port,
            credentials: Credentials {
                username: offer.username,
                password: offer.password,
            },
            source: Source::Server,
        };
        let changed = self.current.as_ref() != Some(&next);
        self.current = Some(next);
        changed
    }

    pub fn current(&self) -> Option<&TurnServer> {
        self.current.as_ref()
    }

    /// For `ringlink status`: where, as whom, and until when.
    pub fn describe(&self, now_unix: u64) -> Option<String> {
        let c = self.current.as_ref()?;
        let whence = match (c.source, c.credentials.rest_expiry()) {
            (Source::Config, _) => "from the config".to_string(),
            (Source::Server, Some(exp)) if exp > now_unix => {
                format!("offered by the server, valid {}s more", exp - now_unix)
            }
            (Source::Server, Some(_)) => "offered by the server, expired".to_string(),
            (Source::Server, None) => "offered by the server".to_string(),
        };
        let over = match c.transport {
            TurnTransport::Udp => "",
            TurnTransport::Tcp => " over TCP",
            TurnTransport::Tls => " over TLS",
        };
        Some(format!(
            "{}:{}{over} user {} ({whence})",
            c.host, c.port, c.credentials.username
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(user: &str) -> TurnOffer {
        TurnOffer {
            host: "10.9.0.1".into(),
            port: 3478,
            username: user.into(),
            password: "p".into(),
            transport: TurnTransport::Udp,
        }
    }

    #[test]
    fn offers_replace_each_other_but_not_the_config() {
        let mut t = TurnSource::new(None);
        assert_eq!(t.describe(0), None);
        assert!(t.on_offer(offer("1000:10.77.0.2")));
        assert!(!t.on_offer(offer("1000:10.77.0.2")));
        assert_eq!(
            t.describe(400).unwrap(),
            "10.9.0.1:3478 user 1000:10.77.0.2 (offered by the server, valid 600s more)"
        );
        assert!(t.describe(1000).unwrap().ends_with("expired)"));
        assert!(t.on_offer(offer("2000:10.77.0.2")));
        assert_eq!(t.current().unwrap().credentials.rest_expiry(), Some(2000));

        let mut fixed = TurnSource::new(Some(TurnUrl::parse("turn://u:p@h:9").unwrap()));
        assert!(!fixed.on_offer(offer("1000:10.77.0.2")));
        assert_eq!(fixed.describe(0).unwrap(), "h:9 user u (from the config)");

        let mut t = TurnSource::new(None);
        assert!(t.on_offer(TurnOffer {
            transport: TurnTransport::Tls,
            ..offer("1000:10.77.0.2")
        }));
        assert_eq!(t.current().unwrap().transport, TurnTransport::Tls);
        assert!(t
            .describe(0)
            .unwrap()
            .starts_with("10.9.0.1:3478 over TLS user"));
        // Over TCP instead is a change too.
        assert!(t.on_offer(TurnOffer {
            transport: TurnTransport::Tcp,
            ..offer("1000:10.77.0.2")
        }));
        assert!(t
            .describe(0)
            .unwrap()
            .starts_with("10.9.0.1:3478 over TCP user"));
        // The same server and user over UDP is a change.
        assert!(t.on_offer(offer("1000:10.77.0.2")));
    }
}
