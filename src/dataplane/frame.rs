//! Byte layout of the direct path, kept apart from the io_uring plumbing so
//! it can be tested on plain buffers.
//!
//! TUN → UDP, in one provided buffer (headroom in front of the packet the
//! kernel read):
//!
//! ```text
//!   | unused | IV 12 | tag 16 | type 1 | pseudo-header 20? | IPv4 packet |
//!            ^ datagram start           ^ headroom - 20      ^ headroom
//! ```
//!
//! UDP → TUN, in one provided buffer filled by a multishot recvmsg:
//!
//! ```text
//!   | io_uring_recvmsg_out 16 | sockaddr_in 16 | IV | tag | type | packet |
//! ```
//!
//! Between ringlink nodes with a session, the 28 bytes in front are the
//! session datagram's header (index, counter, tag) instead of Candy's
//! envelope (IV, tag): the same size, so every offset here holds for both.
//!
//! Opening in place leaves the plaintext where the ciphertext was, so the
//! inner packet is written to TUN from the same buffer; a FORWARD for
//! another node is resealed where it lies, since either header is the same
//! size.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

use io_uring::types::RecvMsgOut;

use std::sync::Arc;

use super::snapshot::{PeerEntry, Snapshot};
use crate::proto::crypto::{CryptoError, PeerKey, ENVELOPE_LEN, IV_LEN};
use crate::proto::mtu::{FORWARD_OVERHEAD, MAX_DATAGRAM};
use crate::proto::sdwan::{self, SdwanError, PSEUDO_HEADER_LEN};
use crate::proto::udp::ty;
use crate::session::transport::{datagram_index, Session, SessionError};
use crate::sys::udp::{gro_segment_size, parse_sockaddr_in};

/// Room a multishot recvmsg buffer needs in front of the payload: the
/// kernel's `io_uring_recvmsg_out` and the source `sockaddr_in`.
pub const RECVMSG_PREFIX: usize = 16 + std::mem::size_of::<libc::sockaddr_in>();

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{need} bytes of headroom needed, the buffer has {have}")]
    NoHeadroom { need: usize, have: usize },
    #[error("packet of {len} bytes does not fit the buffer")]
    PacketOutOfRange { len: usize },
    #[error("sealed datagram would be {0} bytes, more than {MAX_DATAGRAM}")]
    Oversize(usize),
    #[error("packet cannot be wrapped: {0}")]
    Wrap(#[from] SdwanError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// What seals a datagram for its next hop.
#[derive(Debug, Clone, Copy)]
pub enum Seal<'a> {
    /// The session with a ringlink peer: counter nonce, replay window.
    Session(&'a Session),
    /// Candy's envelope under the peer's key, with a fresh IV.
    Envelope(&'a PeerKey, [u8; IV_LEN]),
}

impl Seal<'_> {
    /// Seals the plaintext at `buf[d.start + 28..d.end]` into the datagram
    /// `buf[d]`, in place.
    pub fn seal(self, buf: &mut [u8], d: Range<usize>) -> Result<(), FrameError> {
        match self {
            Seal::Session(s) => {
                s.seal_datagram(buf, d.start + ENVELOPE_LEN..d.end)?;
            }
            Seal::Envelope(key, iv) => key.seal_in_place(iv, &mut buf[d])?,
        }
        Ok(())
    }
}

/// How a received datagram opened.
#[derive(Debug, Clone, Copy)]
pub struct Opened<'s> {
    /// The session that opened it; `None` for Candy's envelope.
    pub session: Option<&'s Arc<Session>>,
    /// The session's first message: tell the control thread.
    pub first_use: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("session datagram already received or too old")]
    Replayed,
    #[error("session datagram does not authenticate")]
    Forged,
    #[error(transparent)]
    Envelope(#[from] CryptoError),
}

/// Opens a received datagram in place, its plaintext then at
/// `d[ENVELOPE_LEN..]`: with the session its first four bytes name, if we
/// have one, else with our own key. A Candy IV that happens to start like a
/// live index (one in 2^32 per session) fails and is dropped like any
/// datagram that does not open.
pub fn open<'s>(
    snap: &'s Snapshot,
    own_key: &PeerKey,
    d: &mut [u8],
) -> Result<Opened<'s>, OpenError> {
    if let Some(s) = datagram_index(d).and_then(|i| snap.sessions.get(&i)) {
        return match s.open_datagram(d) {
            Ok((_, first_use)) => Ok(Opened {
                session: Some(s),
                first_use,
            }),
            Err(SessionError::Replay(_)) => Err(OpenError::Replayed),
            Err(_) => Err(OpenError::Forged),
        };
    }
    own_key.open_in_place(d)?;
    Ok(Opened {
        session: None,
        first_use: false,
    })
}

/// Turn the packet at `buf[headroom..headroom + len]` into a sealed FORWARD
/// datagram in place, optionally wrapped in an sdwan pseudo-header from
/// `own_vip` to `wrap_for`. Returns where the datagram lies in `buf`.
pub fn seal_forward(
    seal: Seal<'_>,
    buf: &mut [u8],
    headroom: usize,
    len: usize,
    wrap: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<Range<usize>, FrameError> {
    let end = headroom
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or(FrameError::PacketOutOfRange { len })?;
    let extra = if wrap.is_some() { PSEUDO_HEADER_LEN } else { 0 };
    let need = FORWARD_OVERHEAD + extra;
    let start = headroom.checked_sub(need).ok_or(FrameError::NoHeadroom {
        need,
        have: headroom,
    })?;
    if end - start > MAX_DATAGRAM {
        return Err(FrameError::Oversize(end - start));
    }
    if let Some((own_vip, gateway)) = wrap {
        let h = sdwan::build_pseudo_header(own_vip, gateway, len)?;
        buf[headroom - PSEUDO_HEADER_LEN..headroom].copy_from_slice(&h);
    }
    buf[start + ENVELOPE_LEN] = ty::FORWARD;
    seal.seal(buf, start..end)?;
    Ok(start..end)
}

/// Write the pseudo-header in front of the packet for a relayed packet and
/// return the range of the wrapped packet.
pub fn wrap_in_place(
    buf: &mut [u8],
    headroom: usize,
    len: usize,
    own_vip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<Range<usize>, FrameError> {
    let end = headroom
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or(FrameError::PacketOutOfRange { len })?;
    let start = headroom
        .checked_sub(PSEUDO_HEADER_LEN)
        .ok_or(FrameError::NoHeadroom {
            need: PSEUDO_HEADER_LEN,
            have: headroom,
        })?;
    let h = sdwan::build_pseudo_header(own_vip, gateway, len)?;
    buf[start..headroom].copy_from_slice(&h);
    Ok(start..end)
}

/// A datagram as the multishot recvmsg left it in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: SocketAddrV4,
    /// Where the UDP payload lies in the buffer.
    pub payload: Range<usize>,
    /// With UDP GRO, the payload is a run of datagrams this long (the last
    /// may be shorter); `None` for a single datagram.
    pub segment: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("recvmsg output of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("datagram was truncated by the receive buffer")]
    Truncated,
    #[error("source address is not IPv4")]
    NotIpv4,
}

/// Parse the output of a multishot recvmsg (`res` bytes at the start of
/// `buf`) armed with `msghdr`.
pub fn parse_recvmsg(buf: &[u8], msghdr: &libc::msghdr) -> Result<Received, RecvError> {
    let out = RecvMsgOut::parse(buf, msghdr).map_err(|()| RecvError::Short(buf.len()))?;
    if out.is_payload_truncated() {
        return Err(RecvError::Truncated);
    }
    if out.is_name_data_truncated() {
        return Err(RecvError::NotIpv4);
    }
    let from = parse_sockaddr_in(out.name_data()).ok_or(RecvError::NotIpv4)?;
    let payload = out.payload_data();
    // The payload is a sub-slice of `buf`; its offset is what the caller
    // needs to work on the buffer mutably.
    let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
    Ok(Received {
        from,
        payload: start..start + payload.len(),
        segment: gro_segment_size(out.control_data()),
    })
}

/// What a worker does with an opened datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'s> {
    /// Write `packet` (range within the plaintext) to TUN; count it for the
    /// peer `src` (the outer source VIP).
    Deliver { packet: Range<usize>, src: Ipv4Addr },
    /// A FORWARD for another node (from `src`): reseal for this direct peer.
    Relay { peer: &'s PeerEntry, src: Ipv4Addr },
    /// A FORWARD for another node with no direct next hop.
    NoRoute,
    /// Any other message: the control thread's business.
    Upcall,
    /// Empty plaintext, or a FORWARD whose packet is not IPv4.
    Malformed,
}

/// Decide on an opened plaintext (type byte first). The FORWARD's packet
/// is parsed once, for both the routing decision and delivery.
pub fn inbound<'s>(snap: &'s Snapshot, plain: &[u8]) -> Inbound<'s> {
    match plain.first() {
        None => Inbound::Malformed,
        Some(&ty::FORWARD) => {
            let Ok(f) = sdwan::parse_forwarded(&plain[1..]) else {
                return Inbound::Malformed;
            };
            if f.dst != snap.own_vip {
                return match snap.forward_hop(f.dst) {
                    Some(peer) => Inbound::Relay { peer, src: f.src },
                    None => Inbound::NoRoute,
                };
            }
            Inbound::Deliver {
                packet: 1 + f.inner.start..1 + f.inner.end,
                src: f.src,
            }
        }
        Some(_) => Inbound::Upcall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::{CipherKind, IvSequence};

    const OWN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn key(vip: Ipv4Addr) -> PeerKey {
        PeerKey::for_vip(CipherKind::Aes256Gcm, b"pw", vip)
    }

    fn in_buffer(p: &[u8], headroom: usize) -> Vec<u8> {
        let mut buf = vec![0xeeu8; headroom + p.len() + 7];
        buf[headroom..headroom + p.len()].copy_from_slice(p);
        buf
    }

    #[test]
    fn sealed_forward_opens_to_type_and_packet() {
        let p = packet(OWN, PEER, 100);
        let mut buf = in_buffer(&p, 64);
        let mut ivs = IvSequence::new();
        let r = seal_forward(
            Seal::Envelope(&key(PEER), ivs.next_iv()),
            &mut buf,
            64,
            p.len(),
            None,
        )
        .unwrap();
        assert_eq!(r, 64 - 29..64 + 100);
        let mut dgram = buf[r].to_vec();
        let plain = key(PEER).open_in_place(&mut dgram).unwrap();
        assert_eq!(plain[0], ty::FORWARD);
        assert_eq!(&plain[1..], &p[..]);
        // Bytes in front of the datagram are left alone.
        assert!(buf[..64 - 29].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn wrapped_forward_carries_a_valid_pseudo_header() {
        let lan = Ipv4Addr::new(172, 16, 2, 9);
        let p = packet(Ipv4Addr::new(192, 168, 1, 5), lan, 60);
        let mut buf = in_buffer(&p, 64);
        let gw = Ipv4Addr::new(10, 0, 0, 3);
        let r = seal_forward(
            Seal::Envelope(&key(PEER), [1; 12]),
            &mut buf,
            64,
            p.len(),
            Some((OWN, gw)),
        )
        .unwrap();
        assert_eq!(r.len(), 29 + 20 + 60);
        let mut dgram = buf[r].to_vec();
        let plain = key(PEER).open_in_place(&mut dgram).unwrap();
        let wrapped = &plain[1..];
        assert_eq!(
            &wrapped[..20],
            &sdwan::build_pseudo_header(OWN, gw, 60).unwrap()
        );
        assert_eq!(sdwan::decapsulate(wrapped).unwrap(), &p[..]);
    }

    #[test]
    fn refuses_missing_headroom_and_oversize() {
        let p = packet(OWN, PEER, 100);
        let mut buf = in_buffer(&p, 40);
        assert_eq!(
            seal_forward(
                Seal::Envelope(&key(PEER), [0; 12]),
                &mut buf,
                40,
                100,
                Some((OWN, PEER))
            ),
            Err(FrameError::NoHeadroom { need: 49, have: 40 })
        );
        // 1471 + 29 = 1500 fits; one more byte does not.
        let big = packet(OWN, PEER, 1472);
        let mut buf = in_buffer(&big, 64);
        assert_eq!(
            seal_forward(
                Seal::Envelope(&key(PEER), [0; 12]),
                &mut buf,
                64,
                1472,
                None
            ),
            Err(FrameError::Oversize(1501))
        );
        assert!(seal_forward(
            Seal::Envelope(&key(PEER), [0; 12]),
            &mut buf,
            64,
            1471,
            None
        )
        .is_ok());
        assert_eq!(
            seal_forward(
                Seal::Envelope(&key(PEER), [0; 12]),
                &mut buf,
                64,
                5000,
                None
            ),
            Err(FrameError::PacketOutOfRange { len: 5000 })
        );
    }

    #[test]
    fn wrap_in_place_prepends_the_header() {
        let p = packet(OWN, PEER, 40);
        let mut buf = in_buffer(&p, 64);
        let r = wrap_in_place(&mut buf, 64, 40, OWN, PEER).unwrap();
        assert_eq!(r, 44..104);
        assert_eq!(sdwan::decapsulate(&buf[r]).unwrap(), &p[..]);
        assert!(wrap_in_place(&mut buf, 10, 40, OWN, PEER).is_err());
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            own_vip: OWN,
            ..Default::default()
        };
        s.add_direct_peer(
            PEER,
            PeerEntry {
                endpoint: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
                socket: None,
                channel: None,
                stream: None,
                key: Arc::new(key(PEER)),
                session: None,
                counters: Arc::default(),
            },
        );
        s
    }

    fn forward(p: &[u8]) -> Vec<u8> {
        let mut v = vec![ty::FORWARD];
        v.extend_from_slice(p);
        v
    }

    #[test]
    fn inbound_decisions() {
        let s = snapshot();
        let p = packet(PEER, OWN, 48);
        assert_eq!(
            inbound(&s, &forward(&p)),
            Inbound::Deliver {
                packet: 1..49,
                src: PEER
            }
        );
        // Wrapped for us: the inner packet is delivered, counted to the
        // outer source (the sending gateway).
        let inner = packet(
            Ipv4Addr::new(172, 17, 0, 1),
            Ipv4Addr::new(192, 168, 1, 2),
            30,
        );
        let mut wrapped = sdwan::build_pseudo_header(PEER, OWN, 30).unwrap().to_vec();
        wrapped.extend_from_slice(&inner);
        assert_eq!(
            inbound(&s, &forward(&wrapped)),
            Inbound::Deliver {
                packet: 21..51,
                src: PEER
            }
        );
        // Candy's all-zero pseudo-header is accepted too.
        let mut zero = [0u8; 20];
        zero[9] = 4;
        zero[12..16].copy_from_slice(&PEER.octets());
        zero[16..20].copy_from_slice(&OWN.octets());
        let mut candy = zero.to_vec();
        candy.extend_from_slice(&inner);
        assert!(matches!(
            inbound(&s, &forward(&candy)),
            Inbound::Deliver { .. }
        ));
        // For someone else: relayed to a direct hop, or dropped.
        assert_eq!(
            inbound(&s, &forward(&packet(OWN, PEER, 20))),
            Inbound::Relay {
                peer: &s.direct[&PEER],
                src: OWN
            }
        );
        assert_eq!(
            inbound(&s, &forward(&packet(PEER, Ipv4Addr::new(10, 0, 0, 9), 20))),
            Inbound::NoRoute
        );
        assert_eq!(inbound(&s, &[0, 1, 2]), Inbound::Upcall);
        assert_eq!(inbound(&s, &[7]), Inbound::Upcall);
        assert_eq!(inbound(&s, &[]), Inbound::Malformed);
        assert_eq!(inbound(&s, &[ty::FORWARD, 0x45, 0]), Inbound::Malformed);
        let mut truncated_inner = sdwan::build_pseudo_header(PEER, OWN, 30).unwrap().to_vec();
        truncated_inner.extend_from_slice(&[0x45; 10]);
        assert_eq!(inbound(&s, &forward(&truncated_inner)), Inbound::Malformed);
        // Parsed once: a FORWARD that is no IPv4 is not relayed either.
        let mut v6 = packet(OWN, PEER, 40);
        v6[0] = 0x60;
        assert_eq!(inbound(&s, &forward(&v6)), Inbound::Malformed);
    }

    #[test]
    fn parses_recvmsg_output() {
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 4), 3478);
        // SAFETY: an all-zero msghdr is valid.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_namelen = 16;
        let mut buf = vec![0u8; RECVMSG_PREFIX + 5];
        buf[0..4].copy_from_slice(&16u32.to_ne_bytes()); // namelen
        buf[8..12].copy_from_slice(&5u32.to_ne_bytes()); // payloadlen
        let sa = crate::sys::udp::sockaddr_in(from);
        // SAFETY: sockaddr_in is plain old data.
        let sa: [u8; 16] = unsafe { std::mem::transmute(sa) };
        buf[16..32].copy_from_slice(&sa);
        buf[32..].copy_from_slice(b"hello");
        let r = parse_recvmsg(&buf, &hdr).unwrap();
        assert_eq!(r.from, from);
        assert_eq!(&buf[r.payload], b"hello");
        assert_eq!(parse_recvmsg(&buf[..20], &hdr), Err(RecvError::Short(20)));
        let mut trunc = buf.clone();
        trunc[12..16].copy_from_slice(&(libc::MSG_TRUNC as u32).to_ne_bytes());
        assert_eq!(parse_recvmsg(&trunc, &hdr), Err(RecvError::Truncated));
        assert_eq!(r.segment, None);

        // With room for a control message, a GRO receive says its size.
        use crate::sys::udp::{GRO_CONTROL_LEN, UDP_GRO};
        hdr.msg_controllen = GRO_CONTROL_LEN;
        let mut gro = buf[..32].to_vec();
        gro[4..8].copy_from_slice(&(GRO_CONTROL_LEN as u32).to_ne_bytes());
        let mut cmsg = (16usize + 4).to_ne_bytes().to_vec();
        cmsg.extend_from_slice(&libc::SOL_UDP.to_ne_bytes());
        cmsg.extend_from_slice(&UDP_GRO.to_ne_bytes());
        cmsg.extend_from_slice(&2i32.to_ne_bytes());
        cmsg.resize(GRO_CONTROL_LEN, 0);
        gro.extend_from_slice(&cmsg);
        gro.extend_from_slice(b"hello");
        let r = parse_recvmsg(&gro, &hdr).unwrap();
        assert_eq!(&gro[r.payload], b"hello");
        assert_eq!(r.segment, Some(2));
    }
}
