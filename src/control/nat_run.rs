//! One NAT classification over sockets of its own: the I/O loop around the
//! sans-IO [`Classifier`]. It sends what the classifier asks, feeds back
//! every binding response, and wakes it at its deadline. The client will
//! run the classifier on its dataplane's sockets instead (the main mapping
//! must be the one data uses); this standalone loop serves diagnostics and
//! the end-to-end tests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use crate::nat::{Classifier, ClassifierConfig, Outcome, Reply};
use crate::proto::stun;

fn v4(a: SocketAddr) -> io::Result<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(io::Error::other(format!("{a} is not IPv4"))),
    }
}

/// Binds `sockets` UDP sockets on `local_ip` and classifies the NAT between
/// them and the STUN server at `server`. Ends by itself: the classifier's
/// retries bound every test.
pub async fn classify_over_udp(
    server: SocketAddrV4,
    local_ip: Ipv4Addr,
    sockets: usize,
    seed: u64,
) -> io::Result<Outcome> {
    let (tx, mut rx) = mpsc::channel::<(SocketAddrV4, Vec<u8>)>(64);
    let mut socks = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..sockets {
        let s = Arc::new(UdpSocket::bind((local_ip, 0)).await?);
        let (reader, tx) = (s.clone(), tx.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, SocketAddr::V4(from))) = reader.recv_from(&mut buf).await {
                if tx.send((from, buf[..len].to_vec())).await.is_err() {
                    return;
                }
            }
        }));
        socks.push(s);
    }
    let locals = socks
        .iter()
        .map(|s| s.local_addr().and_then(v4))
        .collect::<io::Result<Vec<_>>>()?;
    let mut c = Classifier::new(ClassifierConfig::new(server, locals), seed);
    let outcome = loop {
        if let Some(outcome) = c.outcome() {
            break outcome;
        }
        while let Some(req) = c.poll_request(Instant::now()) {
            let bytes = stun::encode_binding_request_change(&req.txid, req.change);
            socks[req.socket].send_to(&bytes, req.to).await?;
        }
        let wake = c.poll_timeout().unwrap_or_else(Instant::now);
        match tokio::time::timeout_at(wake.into(), rx.recv()).await {
            Ok(Some((from, bytes))) => match stun::parse_binding_response_other(&bytes) {
                Ok(r) => {
                    c.handle_reply(Reply {
                        txid: r.txid,
                        from,
                        mapped: r.mapped,
                        other: r.other,
                    });
                }
                Err(e) => debug!("nat: ignored {} bytes from {from}: {e}", bytes.len()),
            },
            // Every reader failed: nothing more can arrive.
            Ok(None) => break Outcome::NoAnswer,
            Err(_) => c.handle_timeout(Instant::now()),
        }
    };
    for r in readers {
        r.abort();
    }
    Ok(outcome)
}
