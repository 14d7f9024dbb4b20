//! What stands between the node and its TURN path (docs/turn.md): the
//! server to use and its address, the allocation's socket, and the pairs
//! that asked for TURN before both existed. The node asks for the address
//! and the socket through its outputs ([`Need`]); once it has both and
//! credentials, the [`TurnPath`] starts and takes the waiting pairs.
//!
//! One allocation per node, on one socket ([`TURN_SOCKET`]), shared by
//! every relayed pair. An allocation that fails ends; the next pair that
//! asks starts another on the same socket.
//!
//! A TURN server over TCP or TLS is "resolved" by starting a bridge to it
//! (`turn_stream.rs`): its address here is the bridge's loopback address,
//! and the link holds the [`Bridge`] for as long as it uses it. An
//! allocation lives and dies with its stream, so a new allocation gets a
//! new bridge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use tracing::info;

use super::turn::{TurnServer, TurnSource};
use super::turn_path::{TurnOutput, TurnPath};
use super::turn_stream::Bridge;
use crate::dataplane::{LocalSocket, TurnSocket, TURN_SOCKET};
use crate::proto::ws::{TurnOffer, TurnTransport};
use crate::rng::SplitMix64;
use crate::turn::TurnError;

/// What the node must fetch before the path can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The server's IPv4 address, for a host given by name; over a stream
    /// transport, a bridge to it (answered by [`TurnLink::bridged`]).
    Resolve {
        host: String,
        port: u16,
        transport: TurnTransport,
    },
    /// The allocation's socket.
    Socket,
}

struct Server {
    host: String,
    port: u16,
    transport: TurnTransport,
    /// The server's own address, or its bridge's loopback address.
    addr: SocketAddrV4,
    bridge: Option<Bridge>,
}

impl Server {
    fn is(&self, s: &TurnServer) -> bool {
        self.host == s.host && self.port == s.port && self.transport == s.transport
    }
}

pub struct TurnLink {
    source: TurnSource,
    /// The address of `source`'s server, with what it was resolved from.
    server: Option<Server>,
    resolving: bool,
    socket: Option<LocalSocket>,
    opening: bool,
    path: Option<TurnPath>,
    /// Pairs that asked before the path existed.
    wanted: BTreeSet<Ipv4Addr>,
    relayed: BTreeMap<Ipv4Addr, SocketAddrV4>,
    /// The last allocation to end had been granted (see
    /// [`TurnLink::ended_live`]).
    ended_live: bool,
    /// Seeds each allocation's transaction ids (from the node's RNG, which
    /// the OS seeds: an off-path host must not guess them).
    rng: SplitMix64,
}

impl TurnLink {
    pub fn new(source: TurnSource, seed: u64) -> Self {
        TurnLink {
            source,
            server: None,
            resolving: false,
            socket: None,
            opening: false,
            path: None,
            wanted: BTreeSet::new(),
            relayed: BTreeMap::new(),
            ended_live: false,
            rng: SplitMix64::new(seed),
        }
    }

    /// A TURN server is known: pairs may ask for TURN.
    pub fn available(&self) -> bool {
        self.source.current().is_some()
    }

    /// The server's offer; true if the server or credentials changed. The
    /// running allocation keeps its credentials until it ends (coturn ties
    /// an allocation to its username); the next one takes the new ones.
    pub fn on_offer(&mut self, offer: TurnOffer) -> bool {
        self.source.on_offer(offer)
    }

    pub fn describe(&self, now_unix: u64) -> Option<String> {
        self.source.describe(now_unix)
    }

    /// `peer` found no direct path.
    pub fn want(&mut self, peer: Ipv4Addr, now: Instant) -> Option<Need> {
        match &mut self.path {
            Some(p) => {
                p.want(peer);
                None
            }
            None => {
                self.wanted.insert(peer);
                self.start(now)
            }
        }
    }

    /// `peer` announced its relayed address.
    pub fn peer_relayed(
        &mut self,
        peer: Ipv4Addr,
        addr: SocketAddrV4,
        now: Instant,
    ) -> Option<Need> {
        match &mut self.path {
            Some(p) => {
                p.peer_relayed(peer, addr, now);
                None
            }
            None => {
                self.relayed.insert(peer, addr);
                self.start(now)
            }
        }
    }

    /// The answer to [`Need::Resolve`] for `host`:`port` over UDP.
    pub fn resolved(
        &mut self,
        host: &str,
        port: u16,
        addr: Option<SocketAddrV4>,
        now: Instant,
    ) -> Option<Need> {
        let found = addr.map(|a| (a, None));
        self.answered(host, port, TurnTransport::Udp, found, now)
    }

    /// The answer to [`Need::Resolve`] for `host`:`port` over a stream
    /// transport: a running bridge, or `None` (its setup failed).
    pub fn bridged(
        &mut self,
        host: &str,
        port: u16,
        transport: TurnTransport,
        bridge: Option<Bridge>,
        now: Instant,
    ) -> Option<Need> {
        let found = bridge.map(|b| (b.local, Some(b)));
        self.answered(host, port, transport, found, now)
    }

    fn answered(
        &mut self,
        host: &str,
        port: u16,
        transport: TurnTransport,
        found: Option<(SocketAddrV4, Option<Bridge>)>,
        now: Instant,
    ) -> Option<Need> {
        self.resolving = false;
        let current = self.source.current()?;
        if current.host != host || current.port != port || current.transport != transport {
            // The offer changed meanwhile (a late bridge is dropped here,
            // which ends it): resolve the new one.
            return self.start(now);
        }
        let (addr, bridge) = found?;
        self.server = Some(Server {
            host: host.to_string(),
            port,
            transport,
            addr,
            bridge,
        });
        self.start(now)
    }

    /// The bridge at `local` ended: the allocation on it ends too, now,
    /// rather than when its refreshes or pings time out. False if it was
    /// not this link's bridge (one already let go).
    pub fn bridge_ended(&mut self, local: SocketAddrV4, reason: &str) -> bool {
        let ours = self
            .server
            .as_ref()
            .is_some_and(|s| s.bridge.as_ref().is_some_and(|b| b.local == local));
        if !ours {
            return false;
        }
        self.server = None;
        if let Some(p) = &mut self.path {
            p.fail(TurnError::Stream(reason.to_string()));
        }
        true
    }

    /// The answer to [`Need::Socket`].
    pub fn socket_opened(&mut self, socket: LocalSocket, now: Instant) -> Option<Need> {
        self.opening = false;
        self.socket = Some(socket);
        self.start(now)
    }

    /// Starts the path once it has what it needs; else says what is
    /// missing (once: a request under way is not repeated).
    fn start(&mut self, now: Instant) -> Option<Need> {
        if self.path.is_some() || (self.wanted.is_empty() && self.relayed.is_empty()) {
            return None;
        }
        let current = self.source.current()?.clone();
        let server = match &self.server {
            Some(s) if s.is(&current) => s.addr,
            _ => {
                let TurnServer {
                    host,
                    port,
                    transport,
                    ..
                } = current.clone();
                match host.parse::<Ipv4Addr>() {
                    Ok(ip) if !transport.is_stream() => {
                        let addr = SocketAddrV4::new(ip, port);
                        self.server = Some(Server {
                            host,
                            port,
                            transport,
                            addr,
                            bridge: None,
                        });
                        addr
                    }
                    _ if self.resolving => return None,
                    _ => {
                        // A stale server (and its bridge) goes now.
                        self.server = None;
                        self.resolving = true;
                        return Some(Need::Resolve {
                            host,
                            port,
                            transport,
                        });
                    }
                }
            }
        };
        let credentials = current.credentials;
        if self.socket.is_none() {
            if self.opening {
                return None;
            }
            self.opening = true;
            return Some(Need::Socket);
        }
        info!(%server, user = %credentials.username, "allocating on the TURN server");
        let mut path = TurnPath::new(server, credentials, self.rng.next_u64(), now);
        for peer in std::mem::take(&mut self.wanted) {
            path.want(peer);
        }
        for (peer, addr) in std::mem::take(&mut self.relayed) {
            path.peer_relayed(peer, addr, now);
        }
        self.path = Some(path);
        None
    }

    /// What the path asks for next. An allocation that failed is dropped
    /// here, after its last outputs.
    pub fn poll_output(&mut self) -> Option<TurnOutput> {
        let path = self.path.as_mut()?;
        let out = path.poll_output();
        if let Some(TurnOutput::Failed { peer: None, .. }) = out {
            self.ended_live = path.was_allocated();
            self.path = None;
            if self
                .server
                .as_ref()
                .is_some_and(|s| s.transport.is_stream())
            {
                self.server = None;
            }
        }
        out
    }

    /// The allocation that just ended had been granted: its pairs may ask
    /// again at once, and a new one starts with the credentials of now
    /// (coturn refuses to refresh an allocation whose REST username has
    /// expired, so that is how a long-lived node renews). One that never
    /// was granted is not retried until a pair's next attempt misses, so
    /// wrong credentials cannot make it loop.
    pub fn ended_live(&self) -> bool {
        self.ended_live
    }

    /// A datagram from `from` on socket `local` that belongs to the
    /// allocation; false: not ours.
    pub fn is_server(&self, from: SocketAddrV4, local: u16) -> bool {
        local == TURN_SOCKET && self.server.as_ref().is_some_and(|s| s.addr == from)
    }

    pub fn on_datagram(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), TurnError> {
        match &mut self.path {
            Some(p) => p.on_datagram(from, datagram, now),
            None => Ok(()),
        }
    }

    pub fn on_pong(
        &mut self,
        peer: Ipv4Addr,
        from: SocketAddrV4,
        nonce: &[u8; 12],
        now: Instant,
    ) -> bool {
        self.path
            .as_mut()
            .is_some_and(|p| p.on_pong(peer, from, nonce, now))
    }

    /// `peer` went direct: its TURN path is let go.
    pub fn direct(&mut self, peer: Ipv4Addr, now: Instant) {
        self.wanted.remove(&peer);
        self.relayed.remove(&peer);
        if let Some(p) = &mut self.path {
            p.direct(peer, now);
        }
    }

    /// The channel of `peer`'s proven TURN path.
    pub fn channel(&self, peer: Ipv4Addr) -> Option<u16> {
        self.path.as_ref()?.channel(peer)
    }

    /// The channel bound to `addr`, which must be `peer`'s address.
    pub fn channel_to(&self, peer: Ipv4Addr, addr: SocketAddrV4) -> Option<u16> {
        self.path.as_ref()?.channel_to(peer, addr)
    }

    pub fn proven(&self) -> BTreeSet<Ipv4Addr> {
        self.path
            .as_ref()
            .map(|p| p.proven().collect())
            .unwrap_or_default()
    }

    /// The server's address and the socket, for datagrams to the server.
    pub fn endpoint(&self) -> Option<(SocketAddrV4, LocalSocket)> {
        Some((self.server.as_ref()?.addr, self.socket.clone()?))
    }

    /// For the dataplane: the socket to receive on, and the channels to
    /// unwrap on it.
    pub fn socket(&self) -> Option<LocalSocket> {
        self.socket.clone()
    }

    pub fn table(&self) -> Option<TurnSocket> {
        Some(self.path.as_ref()?.turn_socket())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.path.as_ref()?.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = &mut self.path {
            p.handle_timeout(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::turn::tests::{FakeTurn, SERVER};
    use crate::turn::TurnUrl;

    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

    fn link(host: &str) -> TurnLink {
        let url = TurnUrl::parse(&format!("turn://1700000000%3A10.77.0.2:pw@{host}")).unwrap();
        TurnLink::new(TurnSource::new(Some(url)), 7)
    }

    fn socket() -> LocalSocket {
        let fd = UdpSocket::bind("127.0.0.1:0").unwrap().into();
        LocalSocket {
            id: TURN_SOCKET,
            fd: Arc::new(fd),
        }
    }

    /// Carries what the link sends to the simulated server, and back;
    /// returns the rest.
    fn pump(l: &mut TurnLink, s: &mut FakeTurn, now: Instant) -> Vec<TurnOutput> {
        let server: SocketAddrV4 = SERVER.parse().unwrap();
        let mut other = Vec::new();
        for _ in 0..100 {
            match l.poll_output() {
                Some(TurnOutput::ToServer(d)) => {
                    if let Some(r) = s.answer(&d) {
                        assert!(l.is_server(server, TURN_SOCKET));
                        l.on_datagram(server, &r, now).unwrap();
                    }
                }
                Some(o) => other.push(o),
                None => return other,
            }
        }
        panic!("kept sending");
    }

    #[test]
    fn a_named_server_is_resolved_then_a_socket_opened_once_each() {
        let now = Instant::now();
        let mut l = link("turn.example.net:3478");
        assert!(l.available());
        let resolve = Need::Resolve {
            host: "turn.example.net".into(),
            port: 3478,
            transport: TurnTransport::Udp,
        };
        assert_eq!(l.want(B, now), Some(resolve.clone()));
        assert_eq!(l.want(B, now), None, "asked once");
        assert_eq!(l.resolved("turn.example.net", 3478, None, now), None);
        // A name that did not resolve is asked again by the next pair.
        assert_eq!(l.want(B, now), Some(resolve));
        let addr = Some(SERVER.parse().unwrap());
        assert_eq!(
            l.resolved("turn.example.net", 3478, addr, now),
            Some(Need::Socket)
        );
        assert!(l.poll_output().is_none(), "no path without a socket");
        assert_eq!(l.socket_opened(socket(), now), None);
        assert!(matches!(l.poll_output(), Some(TurnOutput::ToServer(_))));
    }

    #[test]
    fn an_allocation_that_ended_live_says_so_and_one_never_granted_does_not() {
        let now = Instant::now();
        let mut s = FakeTurn::new("pw");
        let mut l = link(SERVER);
        assert_eq!(l.want(B, now), Some(Need::Socket));
        assert_eq!(l.socket_opened(socket(), now), None);
        let out = pump(&mut l, &mut s, now);
        assert!(
            matches!(&out[..], [TurnOutput::Announce { peer: B, .. }]),
            "{out:?}"
        );
        // The refresh is refused, as coturn refuses an expired username.
        s.refuse_refresh = Some(401);
        let ended_at = (0..20).find_map(|_| {
            let t = l.poll_timeout().expect("a refresh is due");
            assert!(t < now + Duration::from_secs(900), "never refreshed");
            l.handle_timeout(t);
            let out = pump(&mut l, &mut s, t);
            out.iter()
                .any(|o| matches!(o, TurnOutput::Failed { peer: None, .. }))
                .then_some(t)
        });
        let t = ended_at.expect("the allocation ended");
        assert!(l.ended_live());
        // The next pair starts a new allocation on the same socket.
        assert_eq!(l.want(B, t), None);
        assert!(matches!(l.poll_output(), Some(TurnOutput::ToServer(_))));

        // Refused from the start: not live.
        let mut s = FakeTurn::new("pw");
        s.refuse_allocate = Some(486);
        let mut l = link(SERVER);
        l.want(B, now);
        l.socket_opened(socket(), now);
        let out = pump(&mut l, &mut s, now);
        assert!(out
            .iter()
            .any(|o| matches!(o, TurnOutput::Failed { peer: None, .. })));
        assert!(!l.ended_live());
    }
}
