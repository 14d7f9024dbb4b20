//! The embedded STUN responder (PROTOCOL.md §4): answers binding requests
//! with the sender's address as seen here, from the socket they reached.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, trace};

use crate::proto::stun::{encode_binding_response, parse_binding_request};

use super::counters::Counters;

/// The mapped address to report, if the sender has an IPv4 one (Candy's
/// parser and our encoder only speak IPv4).
pub fn mapped_v4(from: SocketAddr) -> Option<SocketAddrV4> {
    match from {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// The reply to one datagram, or None to ignore it. CHANGE-REQUEST and any
/// other attribute are ignored: we answer from where we were asked, never
/// with error 420.
pub fn answer(dgram: &[u8], from: SocketAddr) -> Option<[u8; crate::proto::stun::RESPONSE_LEN]> {
    let txid = parse_binding_request(dgram).ok()?;
    let mapped = mapped_v4(from)?;
    Some(encode_binding_response(&txid, mapped))
}

pub(crate) async fn serve(
    sock: UdpSocket,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Larger than any request we answer, so an oversized datagram is seen
    // whole and ignored rather than truncated into something parseable.
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.changed() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // Unconnected UDP sockets only fail transiently (ICMP
                    // errors, memory pressure); keep serving.
                    debug!("stun: recv error: {e}");
                    continue;
                }
            },
        };
        match answer(&buf[..n], from) {
            Some(resp) => match sock.send_to(&resp, from).await {
                Ok(_) => {
                    Counters::inc(&counters.stun_answered);
                    trace!("stun: answered {from}");
                }
                Err(e) => debug!("stun: cannot answer {from}: {e}"),
            },
            None => {
                Counters::inc(&counters.stun_ignored);
                trace!("stun: ignored {n} bytes from {from}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::{encode_binding_request, parse_binding_response};

    #[test]
    fn answers_candy_requests_and_ignores_garbage() {
        let from: SocketAddr = "203.0.113.7:40001".parse().unwrap();
        let req = encode_binding_request(&[5; 12]);
        let resp = answer(&req, from).unwrap();
        assert_eq!(
            parse_binding_response(&resp).unwrap(),
            ([5; 12], "203.0.113.7:40001".parse().unwrap())
        );
        assert!(answer(&req[..19], from).is_none());
        assert!(answer(&[0xff; 40], from).is_none());
        assert!(answer(&resp, from).is_none(), "responses are not answered");
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert!(answer(&req, v6).is_none());
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:9".parse().unwrap();
        assert_eq!(
            parse_binding_response(&answer(&req, mapped).unwrap())
                .unwrap()
                .1,
            "192.0.2.1:9".parse().unwrap()
        );
    }
}
