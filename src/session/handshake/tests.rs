//! Two handshake instances on a simulated clock: every message goes
//! through the real codecs and the real Noise, nothing sleeps.

use super::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const PASSWORD: &[u8] = b"handshake test";

fn key(b: u8) -> NodeKey {
    NodeKey::from_private([b; 32])
}

fn node(own: Ipv4Addr, k: &NodeKey, timers: HandshakeTimers, t0: Instant) -> Handshakes {
    Handshakes::new(
        HandshakeConfig {
            own,
            key: k.clone(),
            psk: psk_from_password(PASSWORD),
            cipher: CipherKind::ChaCha20Poly1305,
            timers,
            seed: u64::from(own.octets()[3]),
            wall_clock: Duration::from_secs(1_700_000_000),
        },
        t0,
    )
}

/// A and B, each with the other's key pinned.
fn pair(timers: HandshakeTimers, t0: Instant) -> (Handshakes, Handshakes) {
    let (ka, kb) = (key(1), key(2));
    let mut a = node(A, &ka, timers, t0);
    let mut b = node(B, &kb, timers, t0);
    a.peer_key(B, kb.public(), t0);
    b.peer_key(A, ka.public(), t0);
    (a, b)
}

/// A and B (default timers), A's first initiation taken off the wire at
/// `t0`, and B's response to it, which A has not seen yet.
fn initiation_and_response(t0: Instant) -> (Handshakes, Handshakes, Vec<u8>, Vec<u8>) {
    let (mut a, mut b) = pair(HandshakeTimers::default(), t0);
    a.handle_timeout(t0);
    let (_, init) = a.poll_transmit().expect("A initiates");
    let response = b.handle(&init, t0).unwrap().reply.expect("B answers");
    (a, b, init, response)
}

/// A and B with the first handshake done at `t0`.
fn connected(timers: HandshakeTimers, t0: Instant) -> (Handshakes, Handshakes) {
    let (mut a, mut b) = pair(timers, t0);
    assert_eq!(run_until(&mut a, &mut b, t0), vec![]);
    (a, b)
}

/// The earliest timer of either node.
fn next_timeout(a: &Handshakes, b: &Handshakes) -> Option<Instant> {
    [a.poll_timeout(), b.poll_timeout()]
        .into_iter()
        .flatten()
        .min()
}

/// Hands `msg` to `to`; its reply goes back to `from`, and so on.
/// Returns every error on the way.
fn deliver(
    from: &mut Handshakes,
    to: &mut Handshakes,
    msg: Vec<u8>,
    now: Instant,
) -> Vec<HandshakeError> {
    match to.handle(&msg, now) {
        Ok(Handled {
            reply: Some(reply), ..
        }) => deliver(to, from, reply, now),
        Ok(_) => Vec::new(),
        Err(e) => vec![e],
    }
}

/// Delivers everything both sides want to send until both are quiet.
fn settle(a: &mut Handshakes, b: &mut Handshakes, now: Instant) -> Vec<HandshakeError> {
    let mut errors = Vec::new();
    for _ in 0..10 {
        let mut moved = false;
        while let Some((to, m)) = a.poll_transmit() {
            assert_eq!(to, B);
            errors.extend(deliver(a, b, m, now));
            moved = true;
        }
        while let Some((to, m)) = b.poll_transmit() {
            assert_eq!(to, A);
            errors.extend(deliver(b, a, m, now));
            moved = true;
        }
        if !moved {
            return errors;
        }
    }
    panic!("the two nodes never went quiet");
}

/// Runs timeouts up to `until` in order, delivering as it goes.
fn run_until(a: &mut Handshakes, b: &mut Handshakes, until: Instant) -> Vec<HandshakeError> {
    let mut errors = Vec::new();
    for _ in 0..1000 {
        match next_timeout(a, b) {
            Some(t) if t <= until => {
                a.handle_timeout(t);
                b.handle_timeout(t);
                errors.extend(settle(a, b, t));
            }
            _ => return errors,
        }
    }
    panic!("timers keep firing");
}

/// `from` seals a payload for `to`, which opens it.
fn roundtrip(
    from: &mut Handshakes,
    to: &mut Handshakes,
    peer: Ipv4Addr,
    now: Instant,
) -> Result<(), SessionError> {
    let mut buf = [0u8; 64];
    buf[..4].copy_from_slice(b"data");
    let (index, counter, n) = from.seal(peer, &mut buf, 4, now)?;
    let (who, len) = to.open(index, counter, &mut buf[..n], now)?;
    assert_eq!((who, &buf[..len]), (from.own, &b"data"[..]));
    Ok(())
}

#[test]
fn handshake_completes_and_both_ends_seal_and_open() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(HandshakeTimers::default(), t0);
    // The lower VIP starts at once, the higher one waits.
    assert_eq!(a.poll_timeout(), Some(t0));
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(run_until(&mut a, &mut b, t0), vec![]);
    assert_eq!(a.stats.initiations_sent, 1);
    assert_eq!(b.stats.responses_sent, 1);
    assert_eq!(
        (a.stats.handshakes_completed, b.stats.handshakes_completed),
        (1, 1)
    );
    // The keepalive confirmed B's session: both seal with it now.
    let sa = a.status(B, t0).unwrap();
    let sb = b.status(A, t0).unwrap();
    assert_eq!(
        (sa.role, sb.role),
        (Some(Role::Initiator), Some(Role::Responder))
    );
    assert_eq!(
        (sa.established, sb.established),
        (Some(Duration::ZERO), Some(Duration::ZERO))
    );
    assert_eq!(b.stats.transport_opened, 1);
    let later = t0 + Duration::from_secs(30);
    roundtrip(&mut a, &mut b, B, later).unwrap();
    roundtrip(&mut b, &mut a, A, later).unwrap();
    // B does not start a handshake of its own once it has a session.
    assert_eq!(run_until(&mut a, &mut b, later), vec![]);
    assert_eq!(b.stats.initiations_sent, 0);
    assert_eq!(
        a.status(B, later).unwrap().established,
        Some(Duration::from_secs(30))
    );
}

#[test]
fn transport_keys_are_noise_split_with_noise_nonces() {
    // A raw snow handshake: our Session on one end, snow's own transport
    // on the other, so the key order and the nonce layout are Noise's.
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let (ka, kb) = (key(1), key(2));
    let psk = psk_from_password(PASSWORD);
    let pro = prologue(A, B);
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(ka.private())
        .unwrap()
        .remote_public_key(&kb.public().0)
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(kb.private())
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m1, mut m2, mut p) = ([0u8; 256], [0u8; 256], [0u8; 256]);
    let n1 = i.write_message(&tai64n(Duration::ZERO), &mut m1).unwrap();
    assert_eq!(n1, NOISE_INIT_LEN);
    r.read_message(&m1[..n1], &mut p).unwrap();
    let n2 = r.write_message(&[], &mut m2).unwrap();
    assert_eq!(n2, NOISE_RESP_LEN);
    i.read_message(&m2[..n2], &mut p).unwrap();
    let (i2r, r2i) = i.dangerously_get_raw_split();
    let ours = Session::new(
        B,
        (1, 2),
        Role::Initiator,
        CipherKind::ChaCha20Poly1305,
        SessionKeys {
            send: &i2r,
            recv: &r2i,
        },
        Instant::now(),
    );
    let theirs = r.into_stateless_transport_mode().unwrap();
    let mut buf = [0u8; 64];
    buf[..5].copy_from_slice(b"hello");
    let counter = 0x0102_0304_0506;
    let n = ours.seal(counter, &mut buf, 5).unwrap();
    let mut out = [0u8; 64];
    let len = theirs.read_message(counter, &buf[..n], &mut out).unwrap();
    assert_eq!(&out[..len], b"hello");
}

#[test]
fn a_changed_key_is_refused_and_named() {
    let t0 = Instant::now();
    let (ka, kb, impostor) = (key(1), key(2), key(3));
    let mut a = node(A, &impostor, HandshakeTimers::default(), t0);
    let mut b = node(B, &kb, HandshakeTimers::default(), t0);
    a.peer_key(B, kb.public(), t0);
    b.peer_key(A, ka.public(), t0);
    let errors = run_until(&mut a, &mut b, t0);
    assert_eq!(
        errors,
        vec![HandshakeError::KeyChanged {
            vip: A,
            pinned: ka.public(),
            offered: impostor.public(),
        }]
    );
    assert_eq!(b.stats.keys_refused, 1);
    assert_eq!(b.stats.responses_sent, 0);
    assert_eq!(b.status(A, t0).unwrap().established, None);
    assert_eq!(a.status(B, t0).unwrap().established, None);
    // Nor does B's own initiation get anywhere: A's key is not the one B
    // pinned, so the Noise handshake itself fails on A's side.
    let errors = run_until(&mut a, &mut b, t0 + Duration::from_secs(6));
    assert!(!errors.is_empty());
    assert_eq!(
        a.stats.handshakes_completed + b.stats.handshakes_completed,
        0
    );
}

#[test]
fn replayed_handshake_messages_are_refused() {
    let t0 = Instant::now();
    let (mut a, mut b, init, response) = initiation_and_response(t0);
    let keepalive = a.handle(&response, t0).unwrap().reply.unwrap();
    b.handle(&keepalive, t0).unwrap();
    let later = t0 + Duration::from_secs(1);
    // The same initiation again: its timestamp is not newer.
    assert_eq!(b.handle(&init, later), Err(HandshakeError::Replayed(A)));
    assert_eq!(b.stats.replayed_initiations, 1);
    assert_eq!(b.stats.responses_sent, 1);
    // The response again: no initiation is in flight for it.
    assert!(matches!(
        a.handle(&response, later),
        Err(HandshakeError::Unmatched(_))
    ));
    assert_eq!(a.stats.unmatched_responses, 1);
    // The keepalive again: the replay window has its counter.
    assert!(matches!(
        b.handle(&keepalive, later),
        Err(HandshakeError::Transport {
            error: SessionError::Replay(_),
            ..
        })
    ));
    // None of it moved anything: both still have the one session.
    assert_eq!(
        (a.stats.handshakes_completed, b.stats.handshakes_completed),
        (1, 1)
    );
    roundtrip(&mut a, &mut b, B, later).unwrap();
    // A newer initiation is answered (a rekey, or A restarted).
    a.handle_timeout(t0 + Duration::from_secs(120));
    let (_, fresh) = a.poll_transmit().unwrap();
    assert!(b.handle(&fresh, t0 + Duration::from_secs(120)).is_ok());
}

#[test]
fn a_forged_response_does_not_cancel_the_genuine_one() {
    let t0 = Instant::now();
    let (mut a, _b, _, response) = initiation_and_response(t0);
    let mut forged = response.clone();
    forged[20] ^= 0x40;
    assert!(matches!(
        a.handle(&forged, t0),
        Err(HandshakeError::Noise { .. })
    ));
    assert!(a.handle(&response, t0).is_ok());
}

#[test]
fn rekey_on_time_keeps_the_old_session_for_receiving() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(HandshakeTimers::default(), t0);
    // A message sealed under the first session, delivered after the rekey.
    let mut late = [0u8; 32];
    let (late_index, late_counter, late_len) = a.seal(B, &mut late, 0, t0).unwrap();
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    let before = a.status(B, t0).unwrap();
    assert_eq!(
        run_until(&mut a, &mut b, t0 + Duration::from_secs(119)),
        vec![]
    );
    assert_eq!(a.stats.rekeys, 0);
    let t120 = t0 + Duration::from_secs(120);
    assert_eq!(run_until(&mut a, &mut b, t120), vec![]);
    assert_eq!(a.stats.rekeys, 1);
    assert_eq!(
        (a.stats.handshakes_completed, b.stats.handshakes_completed),
        (2, 2)
    );
    let after = a.status(B, t120).unwrap();
    assert_eq!((before.completed, after.completed), (1, 2));
    assert_eq!(after.established, Some(Duration::ZERO));
    assert_eq!(b.status(A, t120).unwrap().established, Some(Duration::ZERO));
    let (who, _) = b
        .open(late_index, late_counter, &mut late[..late_len], t120)
        .unwrap();
    assert_eq!(who, A);
    roundtrip(&mut a, &mut b, B, t120).unwrap();
    roundtrip(&mut b, &mut a, A, t120).unwrap();
    // The responder never rekeyed: the initiator renewed first each time.
    assert_eq!(
        run_until(&mut a, &mut b, t0 + Duration::from_secs(600)),
        vec![]
    );
    assert_eq!(b.stats.initiations_sent, 0);
    assert_eq!(a.stats.rekeys, 5);
}

#[test]
fn the_responder_rekeys_when_the_initiator_does_not() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(HandshakeTimers::default(), t0);
    // A's rekey at 120 s is lost; B renews at 165 s.
    for t in [120, 125, 135, 155] {
        let now = t0 + Duration::from_secs(t);
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
    }
    let t165 = t0 + Duration::from_secs(165);
    b.handle_timeout(t165);
    assert_eq!(b.stats.rekeys, 1);
    let (_, init) = b.poll_transmit().unwrap();
    assert!(a.handle(&init, t165).is_ok());
}

#[test]
fn rekey_on_message_count() {
    let t0 = Instant::now();
    let timers = HandshakeTimers {
        rekey_after_messages: 10,
        ..HandshakeTimers::default()
    };
    let (mut a, mut b) = connected(timers, t0);
    let now = t0 + Duration::from_secs(1);
    // The keepalive was counter 0; eight more stay under the limit.
    for _ in 0..8 {
        roundtrip(&mut a, &mut b, B, now).unwrap();
    }
    assert_eq!(a.stats.rekeys, 0);
    assert!(a.poll_transmit().is_none());
    roundtrip(&mut a, &mut b, B, now).unwrap();
    assert_eq!(a.stats.rekeys, 1);
    assert!(settle(&mut a, &mut b, now).is_empty());
    assert_eq!(a.status(B, now).unwrap().completed, 2);
    // The responder's sends count too, through the timer check.
    for _ in 0..10 {
        roundtrip(&mut b, &mut a, A, now).unwrap();
    }
    b.handle_timeout(now);
    assert_eq!(b.stats.rekeys, 1);
}

#[test]
fn a_session_expires_after_reject_after_time() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(HandshakeTimers::default(), t0);
    let mut old = [0u8; 32];
    let (index, counter, len) = a.seal(B, &mut old, 0, t0).unwrap();
    // Every renewal is lost from here on.
    let mut now = t0;
    while now < t0 + Duration::from_secs(180) {
        now = next_timeout(&a, &b).unwrap();
        a.handle_timeout(now);
        b.handle_timeout(now);
        while a.poll_transmit().is_some() || b.poll_transmit().is_some() {}
    }
    assert_eq!(now, t0 + Duration::from_secs(180));
    assert_eq!((a.stats.sessions_expired, b.stats.sessions_expired), (1, 1));
    assert_eq!(a.status(B, now).unwrap().established, None);
    assert_eq!(
        a.seal(B, &mut [0u8; 32], 0, now),
        Err(SessionError::NoSession)
    );
    assert_eq!(
        b.open(index, counter, &mut old[..len], now),
        Err(SessionError::NoSession)
    );
    // Just before expiry the same message would have opened: an expired
    // session is refused even if the timer has not run yet.
    let (mut a, mut b) = connected(HandshakeTimers::default(), t0);
    let mut m = [0u8; 32];
    let (i, c, n) = a.seal(B, &mut m, 0, t0).unwrap();
    let at = t0 + Duration::from_secs(180);
    assert_eq!(b.open(i, c, &mut m[..n], at), Err(SessionError::Expired));
    assert_eq!(a.seal(B, &mut [0u8; 32], 0, at), Err(SessionError::Expired));
}

#[test]
fn retries_back_off_and_stop_when_answered() {
    let t0 = Instant::now();
    let timers = HandshakeTimers {
        jitter: Duration::ZERO,
        ..HandshakeTimers::default()
    };
    let (mut a, mut b) = pair(timers, t0);
    let mut sent_at = Vec::new();
    let mut now = t0;
    // B is unreachable for the first 100 s: A's initiations go nowhere.
    while now < t0 + Duration::from_secs(100) {
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {
            sent_at.push((now - t0).as_secs());
        }
        now = a.poll_timeout().unwrap();
    }
    assert_eq!(sent_at, [0, 5, 15, 35, 75]);
    assert_eq!(a.stats.handshake_retries, 4);
    // Reachable again: the next retry completes, and the backoff resets.
    assert_eq!(now, t0 + Duration::from_secs(135));
    // B's own first attempt is due too; drop it, it would race A's.
    b.handle_timeout(now);
    while b.poll_transmit().is_some() {}
    a.handle_timeout(now);
    assert!(settle(&mut a, &mut b, now).is_empty());
    assert!(a.status(B, now).unwrap().established.is_some());
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_secs(120)));
}

#[test]
fn initiation_floods_are_rate_limited() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(HandshakeTimers::default(), t0);
    let mut answered = 0;
    for i in 0..20u64 {
        // Fresh initiations, each newer than the last.
        let now = t0 + Duration::from_millis(i);
        a.initiate(B, now);
        let (_, init) = a.poll_transmit().unwrap();
        match b.handle(&init, now) {
            Ok(_) => answered += 1,
            Err(e) => assert_eq!(e, HandshakeError::RateLimited(A)),
        }
    }
    assert_eq!(answered, 4);
    assert_eq!(b.stats.rate_limited, 16);
}

#[test]
fn unknown_peers_cost_no_diffie_hellman() {
    let t0 = Instant::now();
    let ka = key(1);
    let mut a = node(A, &ka, HandshakeTimers::default(), t0);
    let mut b = node(B, &key(2), HandshakeTimers::default(), t0);
    a.peer_key(B, key(2).public(), t0);
    a.handle_timeout(t0);
    let (_, init) = a.poll_transmit().unwrap();
    assert_eq!(b.handle(&init, t0), Err(HandshakeError::UnknownPeer(A)));
    assert_eq!(b.stats.unknown_peers, 1);
}

#[test]
fn garbage_never_panics_and_every_error_is_typed() {
    let t0 = Instant::now();
    let (mut a, mut b, init, response) = initiation_and_response(t0);
    let keepalive = a.handle(&response, t0).unwrap().reply.unwrap();
    let mut rng = SplitMix64::new(99);
    let mut seen = std::collections::HashSet::new();
    for round in 0..3000u32 {
        let now = t0 + Duration::from_millis(u64::from(round) * 300);
        let base = match round % 4 {
            0 => init.clone(),
            1 => response.clone(),
            2 => keepalive.clone(),
            _ => {
                let mut v = vec![0u8; (rng.next_u64() % 200) as usize];
                rng.fill(&mut v);
                v
            }
        };
        let mut m = base;
        // Flip a byte, cut or extend, sometimes all three.
        if !m.is_empty() && rng.next_u64().is_multiple_of(2) {
            let at = (rng.next_u64() as usize) % m.len();
            m[at] ^= 1 << (rng.next_u64() % 8);
        }
        if rng.next_u64().is_multiple_of(3) {
            m.truncate((rng.next_u64() as usize) % (m.len() + 1));
        }
        if rng.next_u64().is_multiple_of(5) {
            m.push(rng.next_u64() as u8);
        }
        for target in [&mut a, &mut b] {
            if let Err(e) = target.handle(&m, now) {
                seen.insert(std::mem::discriminant(&e));
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(seen.len() >= 4, "only {} kinds of error seen", seen.len());
    assert_eq!(
        Message::decode(&[]),
        Err(HandshakeError::Malformed("empty"))
    );
}

#[test]
fn wire_layout_and_lengths() {
    let noise = [7u8; NOISE_INIT_LEN];
    let init = Message::Initiation {
        sender: A,
        sender_index: 0x0102_0304,
        noise: &noise,
    };
    let bytes = init.encode();
    assert_eq!(bytes.len(), 117);
    assert_eq!(&bytes[..9], &[0xF2, 10, 77, 0, 2, 1, 2, 3, 4]);
    assert_eq!(Message::decode(&bytes), Ok(init));
    let noise = [9u8; NOISE_RESP_LEN];
    let resp = Message::Response {
        sender: B,
        sender_index: 5,
        receiver_index: 0x0102_0304,
        noise: &noise,
    };
    let bytes = resp.encode();
    assert_eq!(bytes.len(), 61);
    assert_eq!(&bytes[..13], &[0xF3, 10, 77, 0, 3, 0, 0, 0, 5, 1, 2, 3, 4]);
    assert_eq!(Message::decode(&bytes), Ok(resp));
    let sealed = [1u8; TAG_LEN];
    let t = Message::Transport {
        receiver_index: 5,
        counter: 0x0102,
        sealed: &sealed,
    };
    let bytes = t.encode();
    assert_eq!(bytes.len(), 29);
    assert_eq!(&bytes[..13], &[0xF4, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(Message::decode(&bytes), Ok(t));
    for cut in [116, 118] {
        let mut v = init.encode();
        v.resize(cut, 0);
        assert!(Message::decode(&v).is_err());
    }
    assert!(Message::decode(&bytes[..28]).is_err());
    // docs/protocol.md §5.7: the psk for the password "secret".
    let psk: String = psk_from_password(b"secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        psk,
        "60621547ebd0726437ad06da075fdccf6937967da861c4b9a9a0c187b3d00e89"
    );
    assert_eq!(
        prologue(A, B),
        b"ringlink handshake v1\x0a\x4d\x00\x02\x0a\x4d\x00\x03"
    );
    assert_eq!(
        tai64n(Duration::new(1, 2)),
        [0x40, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    );
}

#[test]
fn a_responder_seals_with_the_new_session_once_the_dataplane_opened_under_it() {
    let t0 = Instant::now();
    let (mut a, mut b, _, response) = initiation_and_response(t0);
    // A's confirmation is lost on the way.
    let _lost = a
        .handle(&response, t0)
        .unwrap()
        .reply
        .expect("confirmation");
    assert!(
        b.sealing(A).is_none(),
        "B waits for proof A has the session"
    );
    let before = b.generation();
    // A seals data with its new session; B's dataplane opens it under the
    // next session it published.
    let seal = a.sealing(B).expect("A seals at once");
    let mut d = vec![0u8; 28 + 4];
    seal.seal_datagram(&mut d, 28..32).unwrap();
    let open: Vec<_> = b.published().flat_map(|(_, s)| s.open).collect();
    let next = open
        .iter()
        .find(|s| s.local_index == seal.remote_index)
        .unwrap();
    let (_, first) = next.open_datagram(&mut d).unwrap();
    assert!(first);
    // Even if the report of it never arrives, the next timer run promotes.
    b.handle_timeout(t0 + Duration::from_millis(1));
    let now_sealing = b.sealing(A).expect("B seals with the new session");
    assert_eq!(now_sealing.local_index, seal.remote_index);
    assert!(b.generation() > before, "the dataplane's table changes");
    assert!(b.protected(A));
}
