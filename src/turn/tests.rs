//! The client against a simulated TURN server on a simulated clock: the
//! server speaks the long-term credential mechanism (401 challenge,
//! MESSAGE-INTEGRITY on both sides, 438 on a rotated nonce) and keeps the
//! allocation, permissions and channels it granted, so each test checks
//! what the server ended up with, not only what the client believes.
//! `control::turn_path` drives the same simulated server.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::channel;
use super::client::{Client, Event, Received};
use super::credentials::Credentials;
use super::message::{attr, method, Builder, Class, Message};
use super::TurnError;

pub(crate) const SERVER: &str = "192.0.2.10:3478";
pub(crate) const RELAYED: &str = "192.0.2.10:50000";
const MAPPED: &str = "198.51.100.4:40000";

fn server_addr() -> SocketAddr {
    SERVER.parse().unwrap()
}

pub(crate) fn creds(pass: &str) -> Credentials {
    Credentials {
        username: "1700000000:10.77.0.2".into(),
        password: pass.into(),
    }
}

#[derive(Default)]
struct Seen {
    unauthenticated: usize,
    allocates: usize,
    refreshes: Vec<u32>,
    permissions: Vec<Ipv4Addr>,
    binds: Vec<(u16, SocketAddrV4)>,
    stale: usize,
}

pub(crate) struct FakeTurn {
    realm: String,
    nonce: Vec<u8>,
    creds: Credentials,
    lifetime: u32,
    allocated: bool,
    channels: HashMap<u16, SocketAddrV4>,
    /// Answer the next Allocate with this error instead.
    pub(crate) refuse_allocate: Option<u16>,
    /// Answer Refresh with this error instead.
    pub(crate) refuse_refresh: Option<u16>,
    seen: Seen,
}

impl FakeTurn {
    pub(crate) fn new(pass: &str) -> Self {
        FakeTurn {
            realm: "ringlink.test".into(),
            nonce: b"nonce-1".to_vec(),
            creds: creds(pass),
            lifetime: 600,
            allocated: false,
            channels: HashMap::new(),
            refuse_allocate: None,
            refuse_refresh: None,
            seen: Seen::default(),
        }
    }

    fn key(&self) -> [u8; 16] {
        self.creds.key(&self.realm)
    }

    fn error(&self, m: &Message<'_>, code: u16, with_nonce: bool) -> Vec<u8> {
        let b = Builder::new(m.method, Class::Error, m.txid).error_code(code, "simulated");
        if with_nonce {
            b.attr(attr::REALM, self.realm.as_bytes())
                .attr(attr::NONCE, &self.nonce)
                .finish()
        } else {
            b.finish()
        }
    }

    pub(crate) fn answer(&mut self, req: &[u8]) -> Option<Vec<u8>> {
        let m = Message::parse(req).expect("the client sends well-formed messages");
        assert_eq!(m.class, Class::Request);
        if !m.has_integrity() {
            self.seen.unauthenticated += 1;
            return Some(self.error(&m, 401, true));
        }
        assert_eq!(m.get(attr::USERNAME), Some(self.creds.username.as_bytes()));
        assert_eq!(m.get(attr::REALM), Some(self.realm.as_bytes()));
        if m.verify_integrity(&self.key()).is_err() {
            return Some(self.error(&m, 401, true));
        }
        if m.get(attr::NONCE) != Some(&self.nonce[..]) {
            self.seen.stale += 1;
            return Some(self.error(&m, 438, true));
        }
        let ok = Builder::new(m.method, Class::Success, m.txid);
        let ok = match m.method {
            method::ALLOCATE => {
                self.seen.allocates += 1;
                assert_eq!(m.get(attr::REQUESTED_TRANSPORT), Some(&[17, 0, 0, 0][..]));
                if let Some(code) = self.refuse_allocate {
                    return Some(self.error(&m, code, false));
                }
                self.allocated = true;
                ok.xor_addr(attr::XOR_RELAYED_ADDRESS, RELAYED.parse().unwrap())
                    .xor_addr(attr::XOR_MAPPED_ADDRESS, MAPPED.parse().unwrap())
                    .u32_attr(attr::LIFETIME, self.lifetime)
            }
            method::REFRESH => {
                let asked = m.u32_attr(attr::LIFETIME).unwrap().unwrap();
                self.seen.refreshes.push(asked);
                if let Some(code) = self.refuse_refresh {
                    return Some(self.error(&m, code, false));
                }
                if asked == 0 {
                    self.allocated = false;
                }
                ok.u32_attr(attr::LIFETIME, asked.min(self.lifetime))
            }
            method::CREATE_PERMISSION => {
                let peer = m.xor_addr(attr::XOR_PEER_ADDRESS).unwrap().unwrap();
                self.seen.permissions.push(*peer.ip());
                ok
            }
            method::CHANNEL_BIND => {
                let n = m.get(attr::CHANNEL_NUMBER).unwrap();
                let number = u16::from_be_bytes([n[0], n[1]]);
                let peer = m.xor_addr(attr::XOR_PEER_ADDRESS).unwrap().unwrap();
                self.seen.binds.push((number, peer));
                self.channels.insert(number, peer);
                ok
            }
            other => panic!("unexpected method {other:#x}"),
        };
        Some(ok.finish_with_integrity(&self.key()))
    }
}

/// Delivers everything the client has to send, and the answers back,
/// until it has nothing more to say.
fn pump(c: &mut Client, s: &mut FakeTurn, now: Instant) {
    for _ in 0..100 {
        let Some(d) = c.poll_transmit() else { return };
        if let Some(r) = s.answer(&d) {
            assert_eq!(
                c.handle_input(server_addr(), &r, now),
                Ok(Received::Control)
            );
        }
    }
    panic!("client kept transmitting");
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn allocated(pass: &str) -> (Client, FakeTurn, Instant) {
    let t0 = Instant::now();
    let mut s = FakeTurn::new(pass);
    let mut c = Client::new(server_addr(), creds(pass), 7, t0);
    pump(&mut c, &mut s, t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Allocated {
            relayed: RELAYED.parse().unwrap(),
            mapped: Some(MAPPED.parse().unwrap()),
            lifetime: Duration::from_secs(600),
        }]
    );
    (c, s, t0)
}

fn peer() -> SocketAddrV4 {
    "203.0.113.5:41000".parse().unwrap()
}

#[test]
fn allocates_after_the_401_challenge() {
    let (c, s, _) = allocated("pw");
    assert_eq!(s.seen.unauthenticated, 1);
    assert_eq!(s.seen.allocates, 1);
    assert!(s.allocated);
    assert_eq!(c.relayed(), Some(RELAYED.parse().unwrap()));
}

#[test]
fn wrong_password_fails_with_unauthorized() {
    let t0 = Instant::now();
    let mut s = FakeTurn::new("right");
    let mut c = Client::new(server_addr(), creds("wrong"), 1, t0);
    pump(&mut c, &mut s, t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(TurnError::Unauthorized("Allocate"))]
    );
    assert!(c.is_done());
    assert!(!s.allocated);
    assert_eq!(c.poll_timeout(), None);
    assert!(c.add_peer(peer(), t0).is_err());
}

#[test]
fn refused_allocation_names_the_code() {
    let t0 = Instant::now();
    let mut s = FakeTurn::new("pw");
    s.refuse_allocate = Some(486);
    let mut c = Client::new(server_addr(), creds("pw"), 1, t0);
    pump(&mut c, &mut s, t0);
    match events(&mut c).as_slice() {
        [Event::Failed(TurnError::Refused {
            request: "Allocate",
            code: 486,
            ..
        })] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn permission_and_channel_then_data_both_ways() {
    let (mut c, mut s, t0) = allocated("pw");
    c.add_peer(peer(), t0).unwrap();
    pump(&mut c, &mut s, t0);
    assert_eq!(
        events(&mut c),
        vec![
            Event::Permitted(*peer().ip()),
            Event::ChannelBound {
                peer: peer(),
                channel: 0x4000
            }
        ]
    );
    assert_eq!(s.seen.permissions, vec![*peer().ip()]);
    assert_eq!(s.channels.get(&0x4000), Some(&peer()));
    // Client → peer: the header the dataplane prepends, as the server
    // reads it.
    let ch = c.channel(peer()).unwrap();
    let mut out = channel::header(ch, 3).unwrap().to_vec();
    out.extend_from_slice(b"abc");
    let (n, data) = channel::parse(&out).unwrap();
    assert_eq!((s.channels[&n], data), (peer(), &b"abc"[..]));
    // Peer → client, padded as a server may pad.
    let mut inbound = channel::header(0x4000, 3).unwrap().to_vec();
    inbound.extend_from_slice(b"xyz\0");
    assert_eq!(
        c.handle_input(server_addr(), &inbound, t0),
        Ok(Received::Peer {
            peer: peer(),
            data: b"xyz"
        })
    );
    // A Data indication from the same peer is data too.
    let ind = Builder::new(method::DATA, Class::Indication, [9; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, peer())
        .attr(attr::DATA, b"hello")
        .finish();
    assert_eq!(
        c.handle_input(server_addr(), &ind, t0),
        Ok(Received::Peer {
            peer: peer(),
            data: b"hello"
        })
    );
    // A channel nobody bound is refused.
    let mut stray = channel::header(0x4001, 1).unwrap().to_vec();
    stray.push(0);
    assert_eq!(
        c.handle_input(server_addr(), &stray, t0),
        Err(TurnError::UnknownChannel(0x4001))
    );
}

#[test]
fn stale_nonce_is_retried_with_the_new_one() {
    let (mut c, mut s, t0) = allocated("pw");
    s.nonce = b"nonce-2".to_vec();
    c.add_peer(peer(), t0).unwrap();
    pump(&mut c, &mut s, t0);
    assert_eq!(
        s.seen.stale, 2,
        "permission and bind both met the old nonce"
    );
    assert_eq!(c.stale_nonces(), 2);
    assert_eq!(c.channel(peer()), Some(0x4000));
    assert_eq!(events(&mut c).len(), 2);
}

#[test]
fn refreshes_before_each_lifetime_ends() {
    let (mut c, mut s, t0) = allocated("pw");
    c.add_peer(peer(), t0).unwrap();
    pump(&mut c, &mut s, t0);
    events(&mut c);
    // Run 25 simulated minutes, waking only when the client asks to.
    let mut now = t0;
    let end = t0 + Duration::from_secs(25 * 60);
    let mut wakes = 0;
    while let Some(at) = c.poll_timeout() {
        if at > end {
            break;
        }
        assert!(at >= now, "deadline in the past");
        now = at;
        c.handle_timeout(now);
        pump(&mut c, &mut s, now);
        wakes += 1;
        assert!(wakes < 100);
    }
    // The allocation (600 s) was refreshed at 540, 1080: before it ended.
    assert_eq!(s.seen.refreshes, vec![600, 600]);
    // Permissions (300 s) every 240 s: at 0, 240, ..., 1440.
    assert_eq!(s.seen.permissions.len(), 7);
    // Channels (600 s) re-bound every 540 s, always with the same number.
    assert_eq!(s.seen.binds.len(), 3);
    assert!(s.seen.binds.iter().all(|b| *b == (0x4000, peer())));
    assert!(events(&mut c).iter().all(|e| *e
        == Event::Refreshed {
            lifetime: Duration::from_secs(600)
        }));
    // Nothing is due before the first refresh.
    let (mut c2, _s2, t2) = allocated("pw");
    c2.handle_timeout(t2 + Duration::from_secs(539));
    assert_eq!(c2.poll_transmit(), None);
    c2.handle_timeout(t2 + Duration::from_secs(540));
    assert!(c2.poll_transmit().is_some());
}

#[test]
fn a_short_lifetime_is_refreshed_halfway() {
    let t0 = Instant::now();
    let mut s = FakeTurn::new("pw");
    s.lifetime = 60;
    let mut c = Client::new(server_addr(), creds("pw"), 1, t0);
    pump(&mut c, &mut s, t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
}

#[test]
fn close_sends_lifetime_zero() {
    let (mut c, mut s, t0) = allocated("pw");
    c.add_peer(peer(), t0).unwrap();
    pump(&mut c, &mut s, t0);
    events(&mut c);
    c.close(t0);
    pump(&mut c, &mut s, t0);
    assert_eq!(s.seen.refreshes, vec![0]);
    assert!(!s.allocated);
    assert_eq!(events(&mut c), vec![Event::Closed]);
    assert!(c.is_done());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn lost_allocation_on_refresh_fails() {
    let (mut c, mut s, _) = allocated("pw");
    s.refuse_refresh = Some(437);
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    pump(&mut c, &mut s, at);
    match events(&mut c).as_slice() {
        [Event::Failed(TurnError::Refused { code: 437, .. })] => {}
        other => panic!("{other:?}"),
    }
    assert!(c.is_done());
}

#[test]
fn retransmits_then_times_out_after_39_5_s() {
    let t0 = Instant::now();
    let mut c = Client::new(server_addr(), creds("pw"), 1, t0);
    let mut sends = vec![Duration::ZERO];
    assert!(c.poll_transmit().is_some());
    let mut now = t0;
    while let Some(at) = c.poll_timeout() {
        now = at;
        c.handle_timeout(now);
        while c.poll_transmit().is_some() {
            sends.push(now - t0);
        }
    }
    let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(now - t0, Duration::from_millis(39_500));
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(TurnError::Timeout("Allocate"))]
    );
}

#[test]
fn a_lost_answer_is_retransmitted_with_the_same_transaction() {
    let (mut c, mut s, t0) = allocated("pw");
    c.add_peer(peer(), t0).unwrap();
    let first = c.poll_transmit().unwrap();
    let bind = c.poll_transmit().unwrap();
    let r = s.answer(&bind).unwrap();
    c.handle_input(server_addr(), &r, t0).unwrap();
    // The permission request is lost; half a second later it goes again.
    c.handle_timeout(t0 + Duration::from_millis(500));
    let again = c.poll_transmit().unwrap();
    assert_eq!(again, first);
    let r = s.answer(&again).unwrap();
    c.handle_input(server_addr(), &r, t0).unwrap();
    assert_eq!(events(&mut c).len(), 2);
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let t0 = Instant::now();
    let mut s = FakeTurn::new("pw");
    let mut c = Client::new(server_addr(), creds("pw"), 3, t0);
    let challenge = s.answer(&c.poll_transmit().unwrap()).unwrap();
    c.handle_input(server_addr(), &challenge, t0).unwrap();
    let request = c.poll_transmit().unwrap();
    let good = s.answer(&request).unwrap();
    // Every truncation of the real answer.
    for cut in 0..good.len() {
        assert!(c.handle_input(server_addr(), &good[..cut], t0).is_err());
    }
    // Garbage of every first-byte class.
    for first in [0x00u8, 0x40, 0x80, 0xC0] {
        let mut g = vec![first; 48];
        g[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        assert!(c.handle_input(server_addr(), &g, t0).is_err());
    }
    // The answer from another address.
    let other: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    assert_eq!(
        c.handle_input(other, &good, t0),
        Err(TurnError::NotFromServer(other))
    );
    // A forged success: right transaction, wrong key.
    let m = Message::parse(&good).unwrap();
    let forged = Builder::new(method::ALLOCATE, Class::Success, m.txid)
        .xor_addr(attr::XOR_RELAYED_ADDRESS, "6.6.6.6:6".parse().unwrap())
        .finish_with_integrity(b"not the key");
    assert_eq!(
        c.handle_input(server_addr(), &forged, t0),
        Err(TurnError::Integrity)
    );
    // A success without integrity at all.
    let bare = Builder::new(method::ALLOCATE, Class::Success, m.txid)
        .xor_addr(attr::XOR_RELAYED_ADDRESS, "6.6.6.6:6".parse().unwrap())
        .finish();
    assert_eq!(
        c.handle_input(server_addr(), &bare, t0),
        Err(TurnError::Integrity)
    );
    // An error response without ERROR-CODE, and one for another method.
    let no_code = Builder::new(method::ALLOCATE, Class::Error, m.txid).finish();
    assert!(c.handle_input(server_addr(), &no_code, t0).is_err());
    let wrong_method = Builder::new(method::REFRESH, Class::Error, m.txid)
        .error_code(400, "x")
        .finish();
    assert!(c.handle_input(server_addr(), &wrong_method, t0).is_err());
    // A response to no transaction.
    let unknown = Builder::new(method::ALLOCATE, Class::Error, [0xEE; 12])
        .error_code(400, "x")
        .finish();
    assert_eq!(
        c.handle_input(server_addr(), &unknown, t0),
        Err(TurnError::UnknownTransaction)
    );
    assert!(events(&mut c).is_empty());
    // The real answer still completes the allocation.
    assert_eq!(
        c.handle_input(server_addr(), &good, t0),
        Ok(Received::Control)
    );
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Allocated { .. }]
    ));
}

#[test]
fn channel_numbers_are_distinct_and_bounded() {
    let (mut c, _s, t0) = allocated("pw");
    let total = usize::from(channel::MAX_BOUND - channel::MIN) + 1;
    for i in 0..total {
        let p = SocketAddrV4::new(Ipv4Addr::from(0x0A00_0000 + i as u32), 9);
        c.add_peer(p, t0).unwrap();
    }
    assert_eq!(
        c.add_peer("203.0.113.1:1".parse().unwrap(), t0),
        Err(TurnError::NoChannel)
    );
    // Removing a peer frees its number for the next one, but only once
    // the server would bind it to another address: 15 minutes on.
    c.remove_peer(SocketAddrV4::new(Ipv4Addr::from(0x0A00_0005), 9), t0);
    let next: SocketAddrV4 = "203.0.113.1:1".parse().unwrap();
    let early = t0 + Duration::from_secs(899);
    assert_eq!(c.add_peer(next, early), Err(TurnError::NoChannel));
    c.add_peer(next, t0 + Duration::from_secs(900)).unwrap();
}
