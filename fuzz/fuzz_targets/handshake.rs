//! Handshake and session messages (`session::handshake`): the parser must
//! round-trip what it accepts, and a node that knows the sender's key must
//! turn any input into a typed error or a genuine result, never a panic.
//! The first byte picks who receives: the responder (B, which pins A's
//! key) or the initiator (A, with an initiation to B in flight, so
//! response-shaped inputs reach the Noise read).
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringlink::session::handshake::{
    psk_from_password, HandshakeConfig, Handshakes, Message,
};
use ringlink::session::keys::NodeKey;
use ringlink::session::timers::HandshakeTimers;

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

fn node(own: Ipv4Addr, key: u8, peer: Ipv4Addr, peer_key: u8, now: Instant) -> Handshakes {
    let mut h = Handshakes::new(
        HandshakeConfig {
            own,
            key: NodeKey::from_private([key; 32]),
            psk: psk_from_password(b"secret"),
            cipher: ringlink::proto::crypto::CipherKind::default(),
            timers: HandshakeTimers::default(),
            seed: 1,
            wall_clock: Duration::from_secs(1_765_000_000),
        },
        now,
    );
    h.peer_key(peer, NodeKey::from_private([peer_key; 32]).public(), now);
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, msg)) = data.split_first() else {
        return;
    };
    if let Ok(m) = Message::decode(msg) {
        assert_eq!(m.encode(), msg, "decode → encode gives the input back");
    }
    let now = Instant::now();
    let mut receiver = if who & 1 == 0 {
        node(B, 2, A, 1, now)
    } else {
        // A starts its first handshake at once: one initiation in flight.
        let mut a = node(A, 1, B, 2, now);
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
        a
    };
    // Twice: a second delivery must be refused (replay) or be harmless.
    for _ in 0..2 {
        if let Err(e) = receiver.handle(msg, now) {
            assert!(!e.to_string().is_empty());
        }
    }
});
