//! TURN: the message parser and its accessors, ChannelData framing, the
//! input as a TURN stream (TLS) cut in pieces, and a
//! client fed the input as datagrams from its server (split at 0xFF 0xFE
//! 0xFD 0xFC) with timeouts between them. The client's transaction IDs
//! come from a fixed seed, so libFuzzer can learn them from the comparisons
//! and reach the response paths.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringlink::turn::message::{attr, Message};
use ringlink::turn::stream::{frame, Deframer};
use ringlink::turn::{channel, Client, Credentials};

const SPLIT: &[u8] = &[0xFF, 0xFE, 0xFD, 0xFC];

fuzz_target!(|input: &[u8]| {
    if let Ok(m) = Message::parse(input) {
        for ty in [
            attr::XOR_RELAYED_ADDRESS,
            attr::XOR_MAPPED_ADDRESS,
            attr::XOR_PEER_ADDRESS,
        ] {
            let _ = m.xor_addr(ty);
        }
        let _ = m.u32_attr(attr::LIFETIME);
        let _ = m.error_code();
        let _ = m.verify_integrity(b"key");
        assert_eq!(m.attribute_types().count() > 0, input.len() > 20);
    }
    if let Ok((number, data)) = channel::parse(input) {
        let mut again = channel::header(number, data.len()).unwrap().to_vec();
        again.extend_from_slice(data);
        assert_eq!(channel::parse(&again), Ok((number, data)));
    }

    // The input as a TURN stream, in pieces as long as its first byte says:
    // whatever comes out frames again, to no more bytes than went in.
    let mut d = Deframer::new();
    let step = usize::from(input.first().copied().unwrap_or(1)).max(1);
    let mut framed = Vec::new();
    'stream: for piece in input.chunks(step) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frame(f, &mut framed).expect("a deframed datagram frames again"),
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    assert!(framed.len() <= input.len());

    let server: SocketAddr = "192.0.2.10:3478".parse().unwrap();
    let t0 = Instant::now();
    let creds = Credentials {
        username: "1700000000:10.77.0.2".into(),
        password: "pw".into(),
    };
    let mut c = Client::new(server, creds, 7, t0);
    let _ = c.add_peer("203.0.113.5:41000".parse().unwrap(), t0);
    let mut now = t0;
    let mut rest = input;
    loop {
        let (dgram, more) = match rest.windows(4).position(|w| w == SPLIT) {
            Some(i) => (&rest[..i], Some(&rest[i + 4..])),
            None => (rest, None),
        };
        let _ = c.handle_input(server, dgram, now);
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        if let Some(at) = c.poll_timeout() {
            assert!(at + Duration::from_secs(1) > now, "deadline far in the past");
            // Every other datagram, time moves to the next deadline.
            if dgram.len() % 2 == 1 {
                now = at.max(now);
                c.handle_timeout(now);
            }
        }
        match more {
            Some(m) => rest = m,
            None => break,
        }
    }
    c.close(now);
    while c.poll_transmit().is_some() {}
});
