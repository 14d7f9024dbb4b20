//! What a node does with datagrams and relayed packets that may be session
//! datagrams: any input is a verdict, never a panic, and nothing that did
//! not authenticate moves a session's replay window. The first byte picks
//! the door: a UDP datagram (`frame::open`), a relayed packet
//! (`relay_rx::receive`), or a round trip (the input sealed by the peer's
//! end opens once, to itself, and then never again).
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringlink::control::relay_rx::{self, Relayed};
use ringlink::dataplane::{frame, Snapshot};
use ringlink::proto::crypto::{CipherKind, PeerKey, ENVELOPE_LEN};
use ringlink::session::transport::{Role, Session, SessionKeys};

const US: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
/// Our index: four bytes a fuzzer finds quickly ("RLRL").
const INDEX: u32 = 0x524c_524c;

fuzz_target!(|data: &[u8]| {
    let Some((&door, rest)) = data.split_first() else {
        return;
    };
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let now = Instant::now();
    let aes = CipherKind::Aes256Gcm;
    let ours = Arc::new(Session::new(PEER, (INDEX, 7), Role::Initiator, aes, SessionKeys { send: &k1, recv: &k2 }, now));
    let theirs = Session::new(US, (7, INDEX), Role::Responder, aes, SessionKeys { send: &k2, recv: &k1 }, now);
    let mut snap = Snapshot {
        own_vip: US,
        ..Default::default()
    };
    snap.sessions.insert(INDEX, ours.clone());
    snap.protected.insert(PEER);
    let own_key = PeerKey::for_vip(aes, b"fuzz", US);
    match door % 3 {
        0 => {
            let mut d = rest.to_vec();
            if let Ok(o) = frame::open(&snap, &own_key, &mut d) {
                // Whatever opened, the plaintext lies after the header.
                assert!(d.len() >= ENVELOPE_LEN);
                if o.session.is_some() {
                    // Forged by chance is impossible; a session datagram
                    // here would mean the fuzzer found the key.
                    unreachable!("a datagram opened under a session without its key");
                }
            }
        }
        1 => {
            if let Relayed::Deliver { sealed: true, .. } | Relayed::Keepalive { .. } =
                relay_rx::receive(&snap, rest)
            {
                unreachable!("a relayed packet opened under a session without its key");
            }
        }
        _ => {
            let mut d = vec![0u8; ENVELOPE_LEN + rest.len()];
            d[ENVELOPE_LEN..].copy_from_slice(rest);
            let end = d.len();
            let r = theirs.seal_datagram(&mut d, ENVELOPE_LEN..end).expect("room in front");
            let wire = d[r].to_vec();
            let mut once = wire.clone();
            let o = frame::open(&snap, &own_key, &mut once).expect("the genuine one opens");
            assert!(o.first_use);
            assert_eq!(&once[ENVELOPE_LEN..], rest);
            assert!(matches!(
                frame::open(&snap, &own_key, &mut wire.clone()),
                Err(frame::OpenError::Replayed)
            ));
        }
    }
});
