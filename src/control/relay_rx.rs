//! What a packet that came through the server's relay is, decided against
//! the dataplane's table (its sessions and the peers that seal with us):
//! the server link calls this for every FORWARD frame and carries out the
//! verdict. Sans-IO; tested on plain buffers.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use crate::dataplane::Snapshot;
use crate::proto::sdwan::{self, SdwanError};
use crate::proto::udp::ty;
use crate::session::relay;
use crate::session::transport::{datagram_index, SessionError};

/// What to do with one relayed packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed<'a> {
    /// Write `packet` to the interface; `src` sent it (the outer source: a
    /// subnet gateway for a wrapped packet).
    Deliver {
        packet: Cow<'a, [u8]>,
        src: Ipv4Addr,
        sealed: bool,
        /// Our session of this index opened its first message.
        first_use: Option<u32>,
    },
    /// A session's empty message: it only shows the session is in use.
    Keepalive {
        first_use: Option<u32>,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsealed packet from {0}, which seals with us")]
    Unsealed(Ipv4Addr),
    #[error("sealed packet from {0} already received or too old")]
    Replayed(Ipv4Addr),
    /// Under a session we have, it does not authenticate: changed on the
    /// way, which only the relay (or someone between it and us) can do.
    #[error("sealed packet from {0} does not authenticate (tampered with on the way)")]
    Tampered(Ipv4Addr),
    /// Protocol 253 under no session of ours: a session that has ended, or
    /// not for us.
    #[error("sealed packet from {0} under no session of ours")]
    NoSession(Ipv4Addr),
    #[error("sealed message from {0} is not a packet")]
    NotAPacket(Ipv4Addr),
    #[error("malformed relayed packet: {0}")]
    Malformed(#[from] SdwanError),
}

/// Decide on the packet of a FORWARD frame from the server.
pub fn receive<'a>(snap: &Snapshot, packet: &'a [u8]) -> Relayed<'a> {
    let Some((src, datagram)) = relay::session_datagram(packet) else {
        return plain(snap, packet);
    };
    let Some(session) = datagram_index(datagram).and_then(|i| snap.sessions.get(&i)) else {
        return Relayed::Refused(Refusal::NoSession(src));
    };
    let mut d = datagram.to_vec();
    let (plain, first) = match session.open_datagram(&mut d) {
        Ok(o) => o,
        Err(SessionError::Replay(_)) => return Relayed::Refused(Refusal::Replayed(src)),
        Err(_) => return Relayed::Refused(Refusal::Tampered(src)),
    };
    let first_use = first.then_some(session.local_index);
    match d.get(plain.start) {
        None => Relayed::Keepalive { first_use },
        Some(&ty::FORWARD) => {
            let inner = plain.start + 1;
            match sdwan::parse_forwarded(&d[inner..]) {
                Ok(f) => Relayed::Deliver {
                    packet: Cow::Owned(d[inner + f.inner.start..inner + f.inner.end].to_vec()),
                    src: f.src,
                    sealed: true,
                    first_use,
                },
                Err(e) => Relayed::Refused(e.into()),
            }
        }
        Some(_) => Relayed::Refused(Refusal::NotAPacket(src)),
    }
}

/// Candy's relayed packet, in clear: taken unless its sender seals with us.
fn plain<'a>(snap: &Snapshot, packet: &'a [u8]) -> Relayed<'a> {
    match sdwan::parse_forwarded(packet) {
        // Broadcasts go to everyone as they are; nothing seals them.
        Ok(f) if snap.protected.contains(&f.src) && !snap.is_broadcast(f.dst) => {
            Relayed::Refused(Refusal::Unsealed(f.src))
        }
        Ok(f) => Relayed::Deliver {
            packet: Cow::Borrowed(&packet[f.inner]),
            src: f.src,
            sealed: false,
            first_use: None,
        },
        Err(e) => Relayed::Refused(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::CipherKind;
    use crate::session::transport::{Role, Session, SessionKeys};
    use std::sync::Arc;
    use std::time::Instant;

    const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        p
    }

    /// The peer's sending session and our receiving one.
    fn sessions() -> (Session, Arc<Session>) {
        let now = Instant::now();
        let (k1, k2) = ([3u8; 32], [4u8; 32]);
        let keys = |send, recv| SessionKeys { send, recv };
        (
            Session::new(
                US,
                (7, 9),
                Role::Initiator,
                CipherKind::Aes256Gcm,
                keys(&k1, &k2),
                now,
            ),
            Arc::new(Session::new(
                PEER,
                (9, 7),
                Role::Responder,
                CipherKind::Aes256Gcm,
                keys(&k2, &k1),
                now,
            )),
        )
    }

    /// What the peer's worker puts in the FORWARD frame, minus its type byte.
    fn sealed(theirs: &Session, message: &[u8]) -> Vec<u8> {
        let at = relay::FRAME_OVERHEAD;
        let mut f = vec![0u8; at + message.len()];
        f[at..].copy_from_slice(message);
        let end = f.len();
        let d = theirs.seal_datagram(&mut f, at..end).unwrap();
        relay::write_header(&mut f, PEER, US, d.len());
        f[1..].to_vec()
    }

    fn forward(p: &[u8]) -> Vec<u8> {
        let mut m = vec![ty::FORWARD];
        m.extend_from_slice(p);
        m
    }

    #[test]
    fn sealed_packets_open_once_and_tampering_is_named() {
        let (theirs, ours) = sessions();
        let mut snap = Snapshot::default();
        snap.sessions.insert(9, ours.clone());
        let p = packet(PEER, US);
        let frame = sealed(&theirs, &forward(&p));
        assert_eq!(
            receive(&snap, &frame),
            Relayed::Deliver {
                packet: Cow::Owned(p.clone()),
                src: PEER,
                sealed: true,
                first_use: Some(9),
            }
        );
        assert_eq!(
            receive(&snap, &frame),
            Relayed::Refused(Refusal::Replayed(PEER))
        );
        let mut bent = sealed(&theirs, &forward(&p));
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert_eq!(
            receive(&snap, &bent),
            Relayed::Refused(Refusal::Tampered(PEER))
        );
        // The next genuine one still opens: tampering moved no window.
        let next = sealed(&theirs, &forward(&p));
        assert!(matches!(
            receive(&snap, &next),
            Relayed::Deliver {
                first_use: None,
                sealed: true,
                ..
            }
        ));
        assert_eq!(
            receive(&snap, &sealed(&theirs, &[])),
            Relayed::Keepalive { first_use: None }
        );
        assert_eq!(
            receive(&snap, &sealed(&theirs, &[0, 1, 2])),
            Relayed::Refused(Refusal::NotAPacket(PEER))
        );
        snap.sessions.clear();
        assert_eq!(
            receive(&snap, &sealed(&theirs, &forward(&p))),
            Relayed::Refused(Refusal::NoSession(PEER))
        );
    }

    #[test]
    fn plain_packets_pass_unless_their_sender_seals() {
        let mut snap = Snapshot::default();
        let p = packet(PEER, US);
        assert_eq!(
            receive(&snap, &p),
            Relayed::Deliver {
                packet: Cow::Borrowed(&p[..]),
                src: PEER,
                sealed: false,
                first_use: None,
            }
        );
        snap.protected.insert(PEER);
        assert_eq!(
            receive(&snap, &p),
            Relayed::Refused(Refusal::Unsealed(PEER))
        );
        // A wrapped packet is judged by its outer source, the gateway.
        let lan = packet(Ipv4Addr::new(192, 168, 7, 7), Ipv4Addr::new(192, 168, 1, 1));
        let mut wrapped = sdwan::build_pseudo_header(PEER, US, lan.len())
            .unwrap()
            .to_vec();
        wrapped.extend_from_slice(&lan);
        assert_eq!(
            receive(&snap, &wrapped),
            Relayed::Refused(Refusal::Unsealed(PEER))
        );
        // Broadcasts are never sealed, so they pass.
        let multicast = packet(PEER, Ipv4Addr::new(224, 0, 0, 251));
        assert!(matches!(
            receive(&snap, &multicast),
            Relayed::Deliver { sealed: false, .. }
        ));
        assert!(matches!(
            receive(&snap, &[0x45, 0, 0]),
            Relayed::Refused(Refusal::Malformed(_))
        ));
    }
}
