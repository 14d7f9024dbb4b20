//! Why each peer is on the path it is on, for `ringlink status`: what the
//! direct UDP attempt is doing, and what became of TURN and TCP when it
//! found nothing. An operator reading "relay" wants to know which of the
//! better paths was tried and how it failed, without reading the log.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::Node;
use crate::peer::{PeerState, PeerStatus};

/// A fallback path that failed for a peer (or for every peer, when the
/// TURN allocation itself failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fallback {
    Turn,
    Tcp,
}

/// The last failure of each fallback: by peer, and the TURN allocation's.
#[derive(Debug, Default)]
pub(super) struct Setbacks {
    by_peer: BTreeMap<(Ipv4Addr, Fallback), (String, Instant)>,
    allocation: Option<(String, Instant)>,
}

impl Setbacks {
    /// `peer` None: the TURN allocation failed, for every pair on it.
    pub(super) fn note(
        &mut self,
        peer: Option<Ipv4Addr>,
        what: Fallback,
        reason: String,
        now: Instant,
    ) {
        match peer {
            Some(peer) => {
                self.by_peer.insert((peer, what), (reason, now));
            }
            None => self.allocation = Some((reason, now)),
        }
    }

    fn last(&self, peer: Ipv4Addr, what: Fallback) -> Option<&(String, Instant)> {
        let own = self.by_peer.get(&(peer, what));
        match (what, own, &self.allocation) {
            (Fallback::Turn, Some(p), Some(a)) => Some(if a.1 > p.1 { a } else { p }),
            (Fallback::Turn, None, Some(a)) => Some(a),
            _ => own,
        }
    }
}

fn ago(at: Instant, now: Instant) -> String {
    format!("{}s ago", now.saturating_duration_since(at).as_secs())
}

impl Node {
    /// One line: the path's reason, then what the better ones are doing.
    pub(super) fn path_why(&self, p: &PeerStatus, now: Instant) -> String {
        // A pinned key says ringlink as surely as the UDP4CONN marker.
        let ringlink = p.ringlink || self.secure.knows(p.vip);
        let udp = udp_why(p, ringlink, now);
        match self.link_to(p.vip) {
            "direct" => udp,
            "turn" => format!("{udp}; TURN channel proven"),
            "tcp" => format!("{udp}; TCP stream proven"),
            _ if !ringlink => format!("{udp}; a stock Candy peer has no other path"),
            _ => format!(
                "{udp}; {}; {}",
                self.turn_why(p.vip, now),
                self.tcp_why(p.vip, now)
            ),
        }
    }

    fn turn_why(&self, peer: Ipv4Addr, now: Instant) -> String {
        if !self.turn.available() {
            return "no TURN server".into();
        }
        match self.setbacks.last(peer, Fallback::Turn) {
            Some((reason, at)) => format!("TURN failed {}: {reason}", ago(*at, now)),
            None => "TURN not proven yet".into(),
        }
    }

    fn tcp_why(&self, peer: Ipv4Addr, now: Instant) -> String {
        if let Some((reason, at)) = self.setbacks.last(peer, Fallback::Tcp) {
            return format!("TCP failed {}: {reason}", ago(*at, now));
        }
        let listener = self.tcp_offer.is_some() || self.tcp_offers.contains_key(&peer);
        if !listener && (self.clock.observed().is_none() || self.clock.server_time(now).is_none()) {
            "no TCP listener on either side, and no server clock to punch by".into()
        } else {
            "TCP not proven yet".into()
        }
    }
}

/// What the direct UDP attempt is doing.
fn udp_why(p: &PeerStatus, ringlink: bool, now: Instant) -> String {
    let next = (p.since + p.retry).saturating_duration_since(now).as_secs();
    let method = p.method.map(|m| format!(" ({m})")).unwrap_or_default();
    match p.state {
        PeerState::Connected if ringlink => format!("direct UDP{method}, proven by challenge"),
        PeerState::Connected => "direct UDP, on Candy's heartbeats".into(),
        PeerState::Init => "no direct attempt yet (one starts with traffic)".into(),
        PeerState::Preparing => {
            format!("direct attempt {}: asking STUN for our mapping", p.attempts)
        }
        PeerState::Synchronizing => {
            format!(
                "direct attempt {}: waiting for the peer's endpoint",
                p.attempts
            )
        }
        PeerState::Connecting => format!("direct attempt {}{method}: punching", p.attempts),
        PeerState::Waiting => format!(
            "no direct UDP path after {} attempts{method}, next in {next}s",
            p.attempts
        ),
        PeerState::Failed if ringlink => {
            format!("no direct UDP path (STUN or the peer never answered), next in {next}s")
        }
        PeerState::Failed => "no direct UDP path (STUN or the peer never answered)".into(),
    }
}
