//! A direct TCP stream as a path through the workers: the UDP harness's
//! peer is reached over a loopback TCP connection instead, whose far end
//! the test reads and writes frames on by hand.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::udp_tests::{forward, harness, ipv4, key, wait_for, Harness, OWN, PEER};
use super::*;
use crate::proto::crypto::IvSequence;
use crate::proto::stream::{header, next_frame};

/// (dataplane end, test end) of a loopback TCP connection.
fn tcp_pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let far = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (near, _) = l.accept().unwrap();
    near.set_nonblocking(true).unwrap();
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (OwnedFd::from(near), far)
}

/// The harness with PEER reached over a stream, and that stream's far end.
fn stream_harness() -> (Harness, TcpStream, LocalStream) {
    let h = harness(16);
    let (near, far) = tcp_pair();
    let remote = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9);
    let stream = LocalStream::new(FIRST_STREAM_ID, remote, near);
    let mut snap = (*h.dp.snapshot().load()).clone();
    snap.generation += 1;
    let entry = PeerEntry {
        endpoint: remote,
        socket: None,
        channel: None,
        stream: Some(stream.clone()),
        key: Arc::new(key(PEER)),
        session: None,
        counters: h.peer_counters.clone(),
    };
    snap.add_direct_peer(PEER, entry);
    snap.streams = vec![stream.clone()];
    h.dp.snapshot().publish(snap);
    (h, far, stream)
}

/// The next frame's payload on the far end, opened with PEER's key.
fn read_frame(far: &mut TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((payload, next)) = next_frame(pending).unwrap() {
            let mut d = pending[payload].to_vec();
            pending.drain(..next);
            return key(PEER)
                .open_in_place(&mut d)
                .expect("frame does not open with the peer's key")
                .to_vec();
        }
        let n = far.read(&mut chunk).expect("no frame on the stream");
        assert!(n > 0, "stream closed");
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn write_frame(far: &mut TcpStream, ivs: &mut IvSequence, plain: &[u8]) {
    let d = key(OWN).seal_to_vec(ivs.next_iv(), plain);
    far.write_all(&header(d.len()).unwrap()).unwrap();
    far.write_all(&d).unwrap();
}

#[test]
fn packets_cross_a_stream_both_ways_as_frames() {
    let (h, mut far, _stream) = stream_harness();
    let mut pending = Vec::new();
    for seq in 0..32u32 {
        let p = ipv4(OWN, PEER, 20 + (seq as usize * 41) % 1380, seq);
        h.tun.send(&p).unwrap();
        assert_eq!(
            read_frame(&mut far, &mut pending),
            forward(&p),
            "packet {seq}"
        );
    }
    // Frames written in pieces that cut through headers and payloads.
    let mut ivs = IvSequence::new();
    let mut bytes = Vec::new();
    let packets: Vec<_> = (0..32u32)
        .map(|seq| ipv4(PEER, OWN, 20 + (seq as usize * 29) % 1380, seq))
        .collect();
    for p in &packets {
        let d = key(OWN).seal_to_vec(ivs.next_iv(), &forward(p));
        bytes.extend_from_slice(&header(d.len()).unwrap());
        bytes.extend_from_slice(&d);
    }
    for piece in bytes.chunks(777) {
        far.write_all(piece).unwrap();
        far.flush().unwrap();
    }
    for (seq, p) in packets.iter().enumerate() {
        assert_eq!(&h.tun_recv(), p, "packet {seq}");
    }
    wait_for("counters", || h.dp.counters().tcp_rx_packets == 32);
    let c = h.dp.counters();
    assert_eq!(
        (c.tcp_tx_packets, c.tcp_rx_packets, c.tcp_tx_dropped),
        (32, 32, 0)
    );
    assert_eq!(c.udp_tx_packets + c.decrypt_failed + c.dropped_malformed, 0);
    let pc = h.peer_counters.snapshot();
    assert_eq!((pc.tx_packets, pc.rx_packets), (32, 32));
    // A control message goes up named by the stream's id.
    write_frame(&mut far, &mut ivs, &[0x7f, 1, 2, 3]);
    match h.upcall() {
        Upcall::Peer {
            local, plaintext, ..
        } => {
            assert_eq!(local, FIRST_STREAM_ID);
            assert_eq!(plaintext, vec![0x7f, 1, 2, 3]);
        }
        other => panic!("unexpected upcall {other:?}"),
    }
    h.dp.shutdown().unwrap();
}

#[test]
fn a_length_no_datagram_has_ends_the_stream_and_nothing_else() {
    let (h, mut far, _stream) = stream_harness();
    // A 4 GiB length is not even sayable in two bytes; the longest is.
    far.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    match h.upcall() {
        Upcall::StreamEnded { id, reason } => {
            assert_eq!(id, FIRST_STREAM_ID);
            assert!(reason.contains("not a frame"), "{reason}");
        }
        other => panic!("unexpected upcall {other:?}"),
    }
    // The worker goes on: a packet for the peer still leaves on the
    // stream's send half (the control thread retires the path).
    let p = ipv4(OWN, PEER, 100, 1);
    h.tun.send(&p).unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_frame(&mut far, &mut pending), forward(&p));
    h.dp.shutdown().unwrap();
}

#[test]
fn a_peer_closing_mid_frame_ends_the_stream() {
    let (h, mut far, _stream) = stream_harness();
    far.write_all(&[0x01, 0x00, 9, 9, 9]).unwrap();
    drop(far);
    match h.upcall() {
        Upcall::StreamEnded { id, reason } => {
            assert_eq!(id, FIRST_STREAM_ID);
            assert!(reason.contains("closed"), "{reason}");
        }
        other => panic!("unexpected upcall {other:?}"),
    }
    h.dp.shutdown().unwrap();
}
