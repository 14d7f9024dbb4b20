//! The node's side of direct TCP paths (docs/tcp.md): offering our
//! listener to peers without a direct UDP path, connecting to theirs,
//! proving streams and telling the router which peers they reach.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Node, Output};
use crate::control::tcp_path::TcpOutput;
use crate::dataplane::LocalStream;
use crate::proto::ext::{Punch, Tail};
use crate::proto::udp::{PeerMessage, Ping, Pong};
use crate::proto::ws::PeerConn;
use crate::proto::ProtoError;
use std::ops::Range;
use std::time::Duration;

/// How far ahead a punch proposal sets the meeting: the proposal and its
/// answer each cross the server once, which takes milliseconds to a few
/// hundred on a slow link.
const PUNCH_LEAD: Duration = Duration::from_millis(1500);
/// Local ports punches take: Linux's default ephemeral range.
const PUNCH_PORTS: Range<u16> = 32768..61000;

impl Node {
    /// `peer` has no direct UDP path: offer it our listener, and connect
    /// to its own if it offered one.
    pub(super) fn tcp_no_direct(&mut self, peer: Ipv4Addr, now: Instant) {
        self.offer_listener(peer);
        if let Some(&to) = self.tcp_offers.get(&peer) {
            self.tcp_connect(peer, to, now);
        } else if self.tcp_offer.is_none() {
            // Neither side listens (as far as we know yet): a hole punch.
            self.propose_punch(peer, now);
        }
    }

    /// Tells `peer` where our TCP listener is, if we have one.
    fn offer_listener(&mut self, peer: Ipv4Addr) {
        if let Some(ours) = self.tcp_offer {
            info!(%peer, endpoint = %ours, "no direct UDP path; offering our TCP listener");
            let frame = PeerConn {
                src: self.own,
                dst: peer,
                endpoint: ours,
                tail: Some(Tail {
                    key: Some(self.secure.public_key().0),
                    tcp: Some(ours),
                    ..Tail::OURS
                }),
            }
            .encode();
            self.send_server(frame);
        }
    }

    /// A peer offered its TCP listener (a UDP4CONN with TLV 4, which
    /// carries nothing for the state machine).
    pub(super) fn on_peer_tcp(&mut self, peer: Ipv4Addr, to: SocketAddrV4, now: Instant) {
        self.tcp_offers.insert(peer, to);
        if self.direct.contains_key(&peer) {
            debug!(%peer, %to, "peer offers TCP; our direct path to it stands");
            return;
        }
        // A listener beats a punch: one we proposed before the offer came
        // is dropped (the peer does not answer it, see `on_peer_punch`).
        if self.punches.remove(&peer).is_some() {
            self.tcp.forget_connecting(peer);
        }
        self.tcp_connect(peer, to, now);
    }

    fn tcp_connect(&mut self, peer: Ipv4Addr, to: SocketAddrV4, now: Instant) {
        // Two listeners: the lower VIP connects, so one stream serves.
        if self.tcp_offer.is_some() && self.own > peer {
            return;
        }
        self.tcp.want(peer, to, now);
    }

    /// Where our TCP connect from `port` will seem to come from: the
    /// address the server sees, and the port itself, which a NAT that
    /// preserves ports (Linux masquerade, most home routers) keeps.
    fn predicted(&self, port: u16) -> Option<SocketAddrV4> {
        let seen = self.clock.observed()?;
        Some(SocketAddrV4::new(*seen.ip(), port))
    }

    /// A local port for a punch, from the range Linux hands out itself.
    fn punch_port(&mut self) -> u16 {
        PUNCH_PORTS.start
            + (self.rng.next_u64() % u64::from(PUNCH_PORTS.end - PUNCH_PORTS.start)) as u16
    }

    /// Proposes a hole punch to `peer`: our predicted endpoint and an
    /// instant of the server's clock far enough ahead for the proposal and
    /// the answer to cross the server.
    fn propose_punch(&mut self, peer: Ipv4Addr, now: Instant) {
        let port = self.punch_port();
        let (Some(endpoint), Some(at)) = (
            self.predicted(port),
            self.clock.server_time(now + PUNCH_LEAD),
        ) else {
            debug!(%peer, "no TCP hole punch: the server's clock or our address is unknown");
            return;
        };
        if !self.tcp.expect(peer, now) {
            return;
        }
        info!(%peer, %endpoint, "proposing a TCP hole punch");
        self.punches.insert(peer, (port, at));
        self.send_punch(peer, Punch { endpoint, at });
    }

    fn send_punch(&mut self, peer: Ipv4Addr, punch: Punch) {
        let frame = PeerConn {
            src: self.own,
            dst: peer,
            endpoint: punch.endpoint,
            tail: Some(Tail {
                key: Some(self.secure.public_key().0),
                punch: Some(punch),
                ..Tail::OURS
            }),
        }
        .encode();
        self.send_server(frame);
    }

    /// Tells `peer` we punch from `port` at its instant `at`; the port, or
    /// `None` if our address is unknown.
    fn answer_punch(&mut self, peer: Ipv4Addr, port: u16, at: u64) -> Option<u16> {
        let endpoint = self.predicted(port)?;
        self.send_punch(peer, Punch { endpoint, at });
        Some(port)
    }

    /// A peer proposed a hole punch, or answered ours (a UDP4CONN with TLV
    /// 5, which carries nothing for the state machine).
    pub(super) fn on_peer_punch(&mut self, peer: Ipv4Addr, theirs: Punch, now: Instant) {
        if self.tcp_offer.is_some() {
            // We listen: the peer connects instead of punching.
            debug!(%peer, "TCP hole punch proposed to a listener; offering the listener");
            self.offer_listener(peer);
            return;
        }
        let Some(at) = self.clock.local_instant(theirs.at) else {
            debug!(%peer, "TCP hole punch refused: the server's clock is unknown here");
            return;
        };
        if at <= now {
            self.stats.tcp_refused += 1;
            debug!(%peer, "TCP hole punch refused: its instant has passed");
            self.tcp
                .connect_failed(peer, "the punch's instant passed".into());
            self.punches.remove(&peer);
            return;
        }
        let port = match self.punches.remove(&peer) {
            // The answer to ours.
            Some((port, ours)) if ours == theirs.at => port,
            // Proposals crossed: the lower VIP's stands, and the other
            // side answers it.
            Some(mine) if self.own < peer => {
                self.punches.insert(peer, mine);
                return;
            }
            // Ours crossed theirs and theirs stands: answer it from ours.
            Some((port, _)) => match self.answer_punch(peer, port, theirs.at) {
                Some(port) => port,
                None => return,
            },
            None => {
                if self.direct.contains_key(&peer) || !self.tcp.expect(peer, now) {
                    return;
                }
                let port = self.punch_port();
                match self.answer_punch(peer, port, theirs.at) {
                    Some(port) => port,
                    None => {
                        self.tcp.forget_connecting(peer);
                        return;
                    }
                }
            }
        };
        info!(%peer, to = %theirs.endpoint, port, "TCP hole punch agreed");
        self.outputs.push_back(Output::Punch {
            peer,
            port,
            to: theirs.endpoint,
            at,
        });
    }

    /// The stream [`Output::Connect`] asked for is open.
    pub fn on_stream_connected(
        &mut self,
        peer: Ipv4Addr,
        remote: SocketAddrV4,
        fd: OwnedFd,
        now: Instant,
    ) {
        info!(%peer, %remote, "TCP stream open; challenging it");
        self.tcp.connected(peer, remote, fd, now);
        self.flush(now);
    }

    pub fn on_stream_connect_failed(&mut self, peer: Ipv4Addr, reason: String, now: Instant) {
        self.tcp.connect_failed(peer, reason);
        self.flush(now);
    }

    /// Someone opened a stream to our listener.
    pub fn on_stream_accepted(&mut self, remote: SocketAddrV4, fd: OwnedFd, now: Instant) {
        if self.tcp.accepted(remote, fd, now) {
            debug!(%remote, "TCP stream accepted");
        } else {
            self.stats.tcp_refused += 1;
            warn!(%remote, "TCP stream refused: too many streams");
        }
        self.flush(now);
    }

    /// The dataplane stopped reading stream `id`.
    pub fn on_stream_ended(&mut self, id: u16, reason: String, now: Instant) {
        self.tcp.ended(id, reason);
        self.flush(now);
    }

    /// A peer message that came on stream `local` (whose other end is
    /// `from`). Only messages in the named peer's session count: a stream
    /// is a ringlink path, and nothing else may claim it.
    pub(super) fn on_stream_message(
        &mut self,
        local: u16,
        from: SocketAddrV4,
        decoded: Result<PeerMessage<'_>, ProtoError>,
        session: Option<Ipv4Addr>,
        now: Instant,
    ) {
        let in_session = |peer: Ipv4Addr| session == Some(peer);
        match decoded {
            Ok(PeerMessage::Ping(p)) if in_session(p.tunip) => {
                if self.tcp.on_ping(local, p.tunip, now) {
                    let plain = Pong {
                        tunip: self.own,
                        nonce: p.nonce,
                        seen: from,
                    }
                    .encode();
                    if let Some(s) = self.tcp.stream_for(local, p.tunip).cloned() {
                        self.send_stream(p.tunip, &s, &plain);
                    }
                } else {
                    self.stats.tcp_refused += 1;
                }
            }
            Ok(PeerMessage::Pong(p)) if in_session(p.tunip) => {
                if self.tcp.on_pong(local, p.tunip, &p.nonce, now) {
                    debug!(peer = %p.tunip, "TCP stream answers its challenge");
                }
            }
            Ok(PeerMessage::Delay(d)) if session.is_some() => {
                let _ = self.router.handle_delay(d, now);
            }
            Ok(PeerMessage::Route(r)) if session.is_some() => {
                let _ = self.router.handle_route(r, now);
            }
            Ok(PeerMessage::Session(m)) => {
                if let Some((peer, reply)) = self.secure.handle(m, now) {
                    if !self.send_on_path(peer, &reply) {
                        self.send_relayed(peer, &reply);
                    }
                }
            }
            Ok(_) => {
                self.stats.tcp_refused += 1;
                debug!(%from, ?session, "peer message on a TCP stream refused");
            }
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, %from, "malformed peer message on a TCP stream");
            }
        }
    }

    /// Carries out what the TCP paths asked for.
    pub(super) fn drain_tcp(&mut self, now: Instant) {
        while let Some(o) = self.tcp.poll_output() {
            match o {
                TcpOutput::Connect { peer, to } => {
                    info!(%peer, %to, "connecting a TCP stream");
                    self.outputs.push_back(Output::Connect { peer, to });
                }
                TcpOutput::Ping {
                    peer,
                    stream,
                    nonce,
                } => {
                    let plain = Ping {
                        tunip: self.own,
                        nonce,
                    }
                    .encode();
                    self.send_stream(peer, &stream, &plain);
                }
                TcpOutput::Close { stream, reason } => {
                    debug!(stream = stream.id, remote = %stream.remote, %reason, "closing a TCP stream");
                    self.outputs.push_back(Output::CloseStream(stream));
                }
                TcpOutput::Changed => self.sync_tcp(now),
                TcpOutput::Failed { peer, reason } => {
                    self.stats.tcp_failures += 1;
                    warn!(%peer, %reason, "TCP path failed");
                    self.setbacks
                        .note(Some(peer), super::why::Fallback::Tcp, reason, now);
                    self.sync_tcp(now);
                }
            }
        }
    }

    /// Tells the router which peers a TCP stream now reaches, as for TURN.
    fn sync_tcp(&mut self, now: Instant) {
        let before = std::mem::replace(&mut self.streamed, self.tcp.proven());
        self.relink(&before, |n| &n.streamed, "TCP", now);
    }

    /// A peer message on a stream, sealed for the peer.
    pub(super) fn send_stream(&mut self, peer: Ipv4Addr, stream: &LocalStream, plaintext: &[u8]) {
        let datagram = self.seal_for(peer, plaintext);
        self.outputs.push_back(Output::StreamFrame {
            stream: stream.clone(),
            datagram,
        });
    }
}
