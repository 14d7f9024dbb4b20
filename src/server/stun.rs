//! The embedded STUN responder (PROTOCOL.md §4, RFC 5780 for NAT
//! classification): answers binding requests with the sender's address as
//! seen here. It listens on a primary and an alternate port, and on a second
//! address too when one is configured (two or four sockets). Responses
//! carry OTHER-ADDRESS, and a CHANGE-REQUEST is answered from the socket on
//! the other port and/or address.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, trace};

use crate::proto::stun::{
    encode_binding_response, encode_binding_response_other, parse_binding_request, ChangeRequest,
};

use super::counters::ServerCounters;
use super::error::ServerError;

/// Which of the responder's sockets: primary or alternate IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Role {
    pub alt_ip: bool,
    pub alt_port: bool,
}

/// The responder's bound endpoints, by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    primary: SocketAddr,
    alt_port: u16,
    alt_ip: Option<IpAddr>,
}

impl Layout {
    pub fn addr(&self, role: Role) -> SocketAddr {
        let ip = match (role.alt_ip, self.alt_ip) {
            (true, Some(ip)) => ip,
            _ => self.primary.ip(),
        };
        let port = if role.alt_port {
            self.alt_port
        } else {
            self.primary.port()
        };
        SocketAddr::new(ip, port)
    }

    pub fn roles(&self) -> Vec<Role> {
        let ips: &[bool] = if self.alt_ip.is_some() {
            &[false, true]
        } else {
            &[false]
        };
        ips.iter()
            .flat_map(|&alt_ip| [false, true].map(|alt_port| Role { alt_ip, alt_port }))
            .collect()
    }

    /// The socket that answers a request received at `at`: the flags flip
    /// IP and port; a flip to an address we do not have is not made (the
    /// client sees the answer's source and learns nothing from it).
    pub fn reply_role(&self, at: Role, change: ChangeRequest) -> Role {
        Role {
            alt_ip: at.alt_ip ^ (change.ip && self.alt_ip.is_some()),
            alt_port: at.alt_port ^ change.port,
        }
    }

    /// OTHER-ADDRESS for a request received at `at`: the endpoint differing
    /// in both IP (when there is a second one) and port. A wildcard bind
    /// sends 0.0.0.0, meaning "the IP you asked"; IPv6 has none (Candy's
    /// parser and ours speak IPv4).
    pub fn other(&self, at: Role) -> Option<SocketAddrV4> {
        let role = Role {
            alt_ip: !at.alt_ip && self.alt_ip.is_some(),
            alt_port: !at.alt_port,
        };
        match self.addr(role) {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        }
    }
}

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

/// The reply to one datagram received at `at`, and the socket to send it
/// from; None to ignore it. Never error 420: Candy sends CHANGE-REQUEST in
/// every request (§4).
pub fn answer(
    dgram: &[u8],
    from: SocketAddr,
    layout: &Layout,
    at: Role,
) -> Option<(Role, Vec<u8>)> {
    let req = parse_binding_request(dgram).ok()?;
    let mapped = mapped_v4(from)?;
    let bytes = match layout.other(at) {
        Some(other) => encode_binding_response_other(&req.txid, mapped, other).to_vec(),
        None => encode_binding_response(&req.txid, mapped).to_vec(),
    };
    Some((layout.reply_role(at, req.change), bytes))
}

/// The bound sockets of one responder.
pub struct Responder {
    layout: Layout,
    sockets: Vec<(Role, Arc<UdpSocket>)>,
}

async fn bind_one(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::StunBind { addr, source })
}

fn bound_port(sock: &UdpSocket, addr: SocketAddr) -> Result<u16, ServerError> {
    sock.local_addr()
        .map(|a| a.port())
        .map_err(|source| ServerError::StunBind { addr, source })
}

impl Responder {
    /// Binds `primary`, the alternate port on the same IP, and both ports on
    /// `alt_ip` if given. Port 0 binds an ephemeral port, which the other IP
    /// then reuses, so the layout stays a 2×2 grid.
    pub async fn bind(
        primary: SocketAddr,
        alt_port: u16,
        alt_ip: Option<IpAddr>,
    ) -> Result<Self, ServerError> {
        let first = bind_one(primary).await?;
        let primary = SocketAddr::new(primary.ip(), bound_port(&first, primary)?);
        let alt_addr = SocketAddr::new(primary.ip(), alt_port);
        let second = bind_one(alt_addr).await?;
        let layout = Layout {
            primary,
            alt_port: bound_port(&second, alt_addr)?,
            alt_ip,
        };
        let mut sockets = vec![
            (Role::default(), Arc::new(first)),
            (
                Role {
                    alt_ip: false,
                    alt_port: true,
                },
                Arc::new(second),
            ),
        ];
        for role in layout.roles().into_iter().filter(|r| r.alt_ip) {
            sockets.push((role, Arc::new(bind_one(layout.addr(role)).await?)));
        }
        Ok(Self { layout, sockets })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Serves every socket until shutdown.
    pub(crate) async fn serve(
        self,
        counters: Arc<ServerCounters>,
        shutdown: watch::Receiver<bool>,
    ) {
        let all = Arc::new(self.sockets);
        let layout = Arc::new(self.layout);
        let tasks: Vec<_> = all
            .iter()
            .map(|(role, _)| {
                tokio::spawn(serve_socket(
                    *role,
                    all.clone(),
                    layout.clone(),
                    counters.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn serve_socket(
    at: Role,
    all: Arc<Vec<(Role, Arc<UdpSocket>)>>,
    layout: Arc<Layout>,
    counters: Arc<ServerCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket_for = |role: Role| all.iter().find(|(r, _)| *r == role).map(|(_, s)| s.clone());
    let Some(sock) = socket_for(at) else { return };
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
        let Some((role, resp)) = answer(&buf[..n], from, &layout, at) else {
            ServerCounters::inc(&counters.stun_ignored);
            trace!("stun: ignored {n} bytes from {from}");
            continue;
        };
        let reply_sock = socket_for(role).unwrap_or_else(|| sock.clone());
        match reply_sock.send_to(&resp, from).await {
            Ok(_) => {
                ServerCounters::inc(&counters.stun_answered);
                trace!("stun: answered {from} from {}", layout.addr(role));
            }
            Err(e) => debug!("stun: cannot answer {from}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::{
        encode_binding_request, encode_binding_request_change, parse_binding_response_other,
    };

    fn layout(alt_ip: Option<&str>) -> Layout {
        Layout {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alt_port: 3479,
            alt_ip: alt_ip.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn answers_candy_requests_and_ignores_garbage() {
        let l = layout(None);
        let at = Role::default();
        let from: SocketAddr = "203.0.113.7:40001".parse().unwrap();
        let req = encode_binding_request(&[5; 12]);
        let (role, resp) = answer(&req, from, &l, at).unwrap();
        assert_eq!(role, at, "no flags: answered from where asked");
        let parsed = parse_binding_response_other(&resp).unwrap();
        assert_eq!(
            (parsed.txid, parsed.mapped),
            ([5; 12], "203.0.113.7:40001".parse().unwrap())
        );
        assert_eq!(parsed.other, Some("192.0.2.1:3479".parse().unwrap()));
        assert!(answer(&req[..19], from, &l, at).is_none());
        assert!(answer(&[0xff; 40], from, &l, at).is_none());
        assert!(
            answer(&resp, from, &l, at).is_none(),
            "responses are not answered"
        );
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert!(answer(&req, v6, &l, at).is_none());
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:9".parse().unwrap();
        let (_, resp) = answer(&req, mapped, &l, at).unwrap();
        assert_eq!(
            parse_binding_response_other(&resp).unwrap().mapped,
            "192.0.2.1:9".parse().unwrap()
        );
    }

    #[test]
    fn change_requests_pick_the_other_socket() {
        let from: SocketAddr = "203.0.113.7:40001".parse().unwrap();
        let both = ChangeRequest {
            ip: true,
            port: true,
        };
        let port = ChangeRequest {
            ip: false,
            port: true,
        };
        let four = layout(Some("192.0.2.2"));
        assert_eq!(four.roles().len(), 4);
        let primary = Role::default();
        let (role, resp) = answer(
            &encode_binding_request_change(&[1; 12], both),
            from,
            &four,
            primary,
        )
        .unwrap();
        assert_eq!(four.addr(role), "192.0.2.2:3479".parse().unwrap());
        assert_eq!(
            parse_binding_response_other(&resp).unwrap().other,
            Some("192.0.2.2:3479".parse().unwrap())
        );
        let (role, _) = answer(
            &encode_binding_request_change(&[1; 12], port),
            from,
            &four,
            primary,
        )
        .unwrap();
        assert_eq!(four.addr(role), "192.0.2.1:3479".parse().unwrap());
        // Asked at the alternate endpoint, the flags flip back.
        let alt = Role {
            alt_ip: true,
            alt_port: true,
        };
        let (role, resp) = answer(
            &encode_binding_request_change(&[1; 12], both),
            from,
            &four,
            alt,
        )
        .unwrap();
        assert_eq!(role, primary);
        assert_eq!(
            parse_binding_response_other(&resp).unwrap().other,
            Some("192.0.2.1:3478".parse().unwrap())
        );
        // Without a second address, "change IP" cannot be honoured.
        let two = layout(None);
        assert_eq!(two.roles().len(), 2);
        let (role, _) = answer(
            &encode_binding_request_change(&[1; 12], both),
            from,
            &two,
            primary,
        )
        .unwrap();
        assert_eq!(two.addr(role), "192.0.2.1:3479".parse().unwrap());
    }

    #[test]
    fn a_wildcard_bind_names_only_the_other_port() {
        let l = Layout {
            primary: "0.0.0.0:3478".parse().unwrap(),
            alt_port: 3479,
            alt_ip: None,
        };
        assert_eq!(
            l.other(Role::default()),
            Some("0.0.0.0:3479".parse().unwrap())
        );
        let v6 = Layout {
            primary: "[::]:3478".parse().unwrap(),
            alt_port: 3479,
            alt_ip: None,
        };
        assert_eq!(v6.other(Role::default()), None);
    }
}
