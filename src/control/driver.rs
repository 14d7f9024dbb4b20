//! Carries out what the sans-IO [`Node`] asks for: the only place where its
//! datagrams meet the UDP socket, its frames meet the server queue, its
//! tables meet the dataplane and its routes meet the kernel.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::iface::Interface;
use super::node::{Node, Output};
use super::status::ControlCounters;
use super::turn_stream::{self, TurnEvent};
use crate::dataplane::{SharedSnapshot, UdpSender};
use crate::proto::ws::TurnTransport;
use crate::session::pins;

/// How long a TURN server's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connect to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a hole punch keeps connecting after its instant: SYNs lost
/// before the peer's NAT had its mapping are sent again by the kernel
/// (after 1 s, then 3 s), and a connect refused outright is started again.
/// A router without an input firewall answers a SYN it has no mapping for
/// with a reset, which also closes our NAT's entry; the two SYNs then meet
/// only if one arrives while the other side's is in flight. So refused
/// connects are retried every 2 ms for the first second, when both sides
/// are at it, and every 50 ms after.
const PUNCH_WINDOW: Duration = Duration::from_secs(5);
const PUNCH_FAST: Duration = Duration::from_secs(1);
const PUNCH_RETRY_FAST: Duration = Duration::from_millis(2);
const PUNCH_RETRY: Duration = Duration::from_millis(50);

/// A TCP stream for the node, from a connect it asked for or from the
/// listener.
pub enum StreamEvent {
    Connected {
        peer: Ipv4Addr,
        remote: SocketAddrV4,
        fd: OwnedFd,
    },
    ConnectFailed {
        peer: Ipv4Addr,
        reason: String,
    },
    Accepted {
        remote: SocketAddrV4,
        fd: OwnedFd,
    },
}

impl StreamEvent {
    pub fn deliver(self, node: &mut Node) {
        let now = Instant::now();
        match self {
            StreamEvent::Connected { peer, remote, fd } => {
                node.on_stream_connected(peer, remote, fd, now)
            }
            StreamEvent::ConnectFailed { peer, reason } => {
                node.on_stream_connect_failed(peer, reason, now)
            }
            StreamEvent::Accepted { remote, fd } => node.on_stream_accepted(remote, fd, now),
        }
    }
}

/// The answer to [`Output::ResolveTurn`] for a UDP server, for the
/// control loop to hand to [`Node::on_turn_resolved`].
pub struct Resolved {
    pub host: String,
    pub port: u16,
    pub addr: Option<SocketAddrV4>,
}

/// What the control loop hears about the TURN server.
pub enum TurnNews {
    Resolved(Resolved),
    Bridge(TurnEvent),
}

impl From<TurnEvent> for TurnNews {
    fn from(e: TurnEvent) -> Self {
        TurnNews::Bridge(e)
    }
}

impl TurnNews {
    pub fn deliver(self, node: &mut Node) {
        let now = Instant::now();
        match self {
            TurnNews::Resolved(r) => node.on_turn_resolved(&r.host, r.port, r.addr, now),
            TurnNews::Bridge(TurnEvent::Up {
                host,
                port,
                transport,
                result,
            }) => node.on_turn_bridge(&host, port, transport, result, now),
            TurnNews::Bridge(TurnEvent::Ended { local, reason }) => {
                node.on_turn_bridge_ended(local, &reason, now)
            }
        }
    }
}

/// Where the tasks and threads that outputs start report back to the
/// control loop, and what they need to start. One set per client; every
/// node of it shares the same.
#[derive(Clone)]
pub struct Helpers {
    pub turn: mpsc::Sender<TurnNews>,
    pub streams: mpsc::Sender<StreamEvent>,
    /// The TLS setup of `turns://` (the client's tls_ca/tls_insecure).
    pub turn_tls: TlsConnector,
}

/// A node and the handles its outputs go to.
pub struct NodeDriver {
    pub node: Node,
    udp: UdpSender,
    snapshot: SharedSnapshot,
    pins_file: PathBuf,
    helpers: Helpers,
}

impl NodeDriver {
    pub fn new(
        node: Node,
        udp: UdpSender,
        snapshot: SharedSnapshot,
        pins_file: PathBuf,
        helpers: Helpers,
    ) -> Self {
        Self {
            node,
            udp,
            snapshot,
            pins_file,
            helpers,
        }
    }

    /// Drains the node's outputs; call after every call into the node.
    pub async fn carry_out(
        &mut self,
        iface: &Interface,
        to_server: &mpsc::Sender<Vec<u8>>,
        counters: &mut ControlCounters,
    ) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Datagram {
                    to,
                    via,
                    datagram,
                    ttl,
                } => {
                    if let Err(e) = self.udp.send_to(&datagram, to, via.as_ref(), ttl) {
                        counters.udp_send_errors += 1;
                        debug!(error = %e, %to, "UDP send failed");
                    }
                }
                Output::OpenSockets { count } => {
                    let mut fds = Vec::with_capacity(count);
                    for _ in 0..count {
                        match self.udp.open_socket() {
                            Ok(fd) => fds.push(fd),
                            Err(e) => {
                                warn!(error = %e, opened = fds.len(), wanted = count, "opening hard-NAT attempt sockets");
                                break;
                            }
                        }
                    }
                    self.node.on_sockets_opened(fds, std::time::Instant::now());
                }
                Output::OpenTurnSocket => match self.udp.open_socket() {
                    Ok(fd) => self.node.on_turn_socket(fd, std::time::Instant::now()),
                    Err(e) => warn!(error = %e, "opening the TURN allocation's socket"),
                },
                // In a task of its own: a slow resolver must not hold up
                // the heartbeats of every direct path.
                Output::ResolveTurn {
                    host,
                    port,
                    transport: TurnTransport::Udp,
                } => {
                    let tx = self.helpers.turn.clone();
                    tokio::spawn(async move {
                        let addr = resolve_v4(&host, port).await;
                        let _ = tx
                            .send(TurnNews::Resolved(Resolved { host, port, addr }))
                            .await;
                    });
                }
                Output::ResolveTurn {
                    host,
                    port,
                    transport,
                } => {
                    let h = &self.helpers;
                    let tls = (transport == TurnTransport::Tls).then(|| h.turn_tls.clone());
                    turn_stream::spawn(host, port, tls, h.turn.clone())
                }
                // In a task of its own, like a name lookup.
                Output::Connect { peer, to } => self.open_stream(peer, to, connect(to)),
                Output::Punch { peer, port, to, at } => {
                    self.open_stream(peer, to, punch(port, to, at))
                }
                Output::StreamFrame { stream, datagram } => {
                    if let Err(e) = stream.tx.send(&datagram) {
                        counters.stream_send_errors += 1;
                        debug!(error = %e, remote = %stream.remote, "stream send failed");
                    }
                }
                // The owner worker's receive then ends, and with the last
                // reference the fd closes.
                Output::CloseStream(stream) => {
                    // SAFETY: shutdown on an fd this process holds open.
                    unsafe { libc::shutdown(stream.fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
                Output::ServerFrame(frame) => {
                    if to_server.try_send(frame).is_err() {
                        counters.server_queue_full += 1;
                    }
                }
                Output::Publish(snapshot) => self.snapshot.publish(*snapshot),
                Output::InstallRoutes(routes) => iface.install_routes(&routes).await,
                // The pin holds in memory either way; a failed write only
                // means it is learnt again, first use, after a restart.
                Output::SavePins(text) => {
                    if let Err(e) = pins::save(&self.pins_file, &text) {
                        warn!(error = %e, "cannot save the pinned keys");
                    }
                }
            }
        }
    }
}

/// A TCP stream to `to`, ready for the dataplane: no Nagle delay (each
/// frame is a packet someone waits for), non-blocking.
async fn connect(to: SocketAddrV4) -> Result<OwnedFd, String> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect to {to}: {e}")),
            Err(_) => return Err(format!("connect to {to}: no answer in {CONNECT_TIMEOUT:?}")),
        };
    stream_fd(stream).map_err(|e| format!("setting up the stream to {to}: {e}"))
}

impl NodeDriver {
    /// Runs `open` beside the control loop and hands the node its stream
    /// to `to` for `peer`, or why there is none.
    fn open_stream(
        &self,
        peer: Ipv4Addr,
        to: SocketAddrV4,
        open: impl std::future::Future<Output = Result<OwnedFd, String>> + Send + 'static,
    ) {
        let tx = self.helpers.streams.clone();
        tokio::spawn(async move {
            let event = match open.await {
                Ok(fd) => StreamEvent::Connected {
                    peer,
                    remote: to,
                    fd,
                },
                Err(reason) => StreamEvent::ConnectFailed { peer, reason },
            };
            let _ = tx.send(event).await;
        });
    }
}

/// A TCP hole punch: from local `port` to `to`, starting at `at` and
/// trying again until the window closes.
async fn punch(port: u16, to: SocketAddrV4, at: Instant) -> Result<OwnedFd, String> {
    tokio::time::sleep_until(at.into()).await;
    let end = at + PUNCH_WINDOW;
    let mut last = String::from("no attempt");
    let mut tries = 0u32;
    while Instant::now() < end {
        tries += 1;
        let left = end.saturating_duration_since(Instant::now());
        let socket = tokio::net::TcpSocket::new_v4()
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    port,
                )))?;
                Ok(s)
            })
            .map_err(|e| format!("punch from port {port}: {e}"))?;
        match tokio::time::timeout(left, socket.connect(SocketAddr::V4(to))).await {
            Ok(Ok(stream)) => {
                debug!(%to, port, tries, "TCP hole punch connected");
                return stream_fd(stream)
                    .map_err(|e| format!("setting up the stream to {to}: {e}"));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        let pause = if Instant::now() < at + PUNCH_FAST {
            PUNCH_RETRY_FAST
        } else {
            PUNCH_RETRY
        };
        tokio::time::sleep(pause).await;
    }
    Err(format!(
        "punch from port {port} to {to}: {last} ({tries} tries)"
    ))
}

/// The fd of a tokio stream, for the dataplane: TCP_NODELAY, and a short
/// queue of unsent data in the kernel, as on the relay's connection
/// (`sys::tcp`), since the flows inside would see a deep one as delay.
pub fn stream_fd(stream: tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
    stream.set_nodelay(true)?;
    crate::sys::tcp::limit_unsent(&stream);
    Ok(OwnedFd::from(stream.into_std()?))
}

/// Accepts streams on our TCP listener for as long as the node runs.
pub async fn accept_streams(listener: tokio::net::TcpListener, tx: mpsc::Sender<StreamEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, SocketAddr::V4(remote))) => match stream_fd(stream) {
                Ok(fd) => {
                    if tx.send(StreamEvent::Accepted { remote, fd }).await.is_err() {
                        return;
                    }
                }
                Err(e) => debug!(%remote, error = %e, "accepted TCP stream unusable"),
            },
            Ok((_, remote)) => debug!(%remote, "TCP stream from a non-IPv4 address ignored"),
            // Out of fds, say: wait rather than spin.
            Err(e) => {
                warn!(error = %e, "accepting a TCP stream");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The first IPv4 address `host` resolves to, or None (after a warning).
async fn resolve_v4(host: &str, port: u16) -> Option<SocketAddrV4> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.into_iter().find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        }),
        Ok(Err(e)) => {
            warn!(host, error = %e, "resolving the TURN server");
            None
        }
        Err(_) => {
            warn!(
                host,
                secs = RESOLVE_TIMEOUT.as_secs(),
                "resolving the TURN server timed out"
            );
            None
        }
    }
}
