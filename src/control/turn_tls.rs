//! `turns://`: TURN over TLS (RFC 8656 §3.1), for networks whose only way
//! out is TCP. There is no kernel TLS here, so TLS runs in user space, on
//! a thread of its own so that data never passes through the control loop.
//!
//! The thread (a *bridge*) owns the TLS session to the TURN server and a
//! UDP socket on loopback. To the rest of the node, that loopback address
//! *is* the TURN server: the allocation's socket sends STUN and ChannelData
//! there exactly as it would to a server over UDP, and the bridge puts each
//! datagram on the stream ([`crate::turn::stream::frame`]) and each frame
//! from the stream back into a datagram ([`crate::turn::stream::Deframer`]).
//! The dataplane, the TURN client and the path logic are the ones of
//! `turn://`, unchanged; only the server's address differs.
//!
//! Loopback UDP keeps datagram boundaries, so nothing above the bridge
//! learns about stream framing, and a worker never blocks on TLS: when the
//! bridge falls behind, its socket buffer overflows and datagrams drop, as
//! on any congested UDP path, and the tunnelled TCP backs off.
//!
//! The bridge trusts the first sender on its loopback socket (the
//! allocation's socket, whose first datagram is the Allocate) and drops
//! datagrams from any other local port: a local process cannot bind the
//! bridge's port, and without root it cannot forge the allocation's.
//!
//! It ends when the TURN server closes the stream, sends bytes that are
//! not TURN framing, or the TLS session fails, and says why
//! ([`TurnEvent::BridgeEnded`]); or when the node drops its [`Bridge`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tracing::{debug, info};

use crate::proto::mtu::MAX_DATAGRAM;
use crate::sys::udp;
use crate::turn::stream::{frame, Deframer};

/// Resolving, connecting and the TLS handshake together.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much the bridge puts on the stream in one write: the datagrams
/// that queued while the last write went out, up to about one TLS record.
const WRITE_BATCH: usize = 16 * 1024;
/// Room on the loopback socket for bursts while the TLS write catches up.
const SOCKET_BUFFER: usize = 4 << 20;

/// What the bridge tells the control loop.
pub enum TurnEvent {
    /// The answer to a `ResolveTurn` for a `turns://` server: the loopback
    /// address that now stands for it, or why there is none.
    Up {
        host: String,
        port: u16,
        result: Result<Bridge, String>,
    },
    /// The bridge whose loopback address is `local` has ended.
    Ended { local: SocketAddrV4, reason: String },
}

/// A running bridge. Dropping it ends the TLS session.
#[derive(Debug)]
pub struct Bridge {
    pub local: SocketAddrV4,
    _stop: oneshot::Sender<()>,
}

/// Starts a bridge to `host`:`port` on a thread of its own; the outcome
/// arrives on `events` as [`TurnEvent::Up`].
pub fn spawn<T>(host: String, port: u16, tls: TlsConnector, events: mpsc::Sender<T>)
where
    T: From<TurnEvent> + Send + 'static,
{
    let thread_events = events.clone();
    let (thread_host, thread_port) = (host.clone(), port);
    let spawned = std::thread::Builder::new()
        .name("turn-tls".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let result = Err(format!("starting the TLS thread's runtime: {e}"));
                    let up = TurnEvent::Up {
                        host: thread_host,
                        port: thread_port,
                        result,
                    };
                    let _ = thread_events.blocking_send(up.into());
                    return;
                }
            };
            rt.block_on(run(thread_host, thread_port, tls, thread_events));
        });
    if let Err(e) = spawned {
        // The control loop's own task delivers this, so it cannot be full
        // of the loop's own waiting.
        tokio::spawn(async move {
            let result = Err(format!("starting the TLS thread: {e}"));
            let up = TurnEvent::Up { host, port, result };
            let _ = events.send(up.into()).await;
        });
    }
}

async fn run<T: From<TurnEvent>>(
    host: String,
    port: u16,
    tls: TlsConnector,
    events: mpsc::Sender<T>,
) {
    let setup = tokio::time::timeout(SETUP_TIMEOUT, connect(&host, port, &tls)).await;
    let (stream, server) = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => return up_failed(&events, host, port, why).await,
        Err(_) => {
            let why = format!("no TLS session in {SETUP_TIMEOUT:?}");
            return up_failed(&events, host, port, why).await;
        }
    };
    let socket = match loopback_socket() {
        Ok(s) => s,
        Err(e) => {
            let why = format!("opening the loopback socket: {e}");
            return up_failed(&events, host, port, why).await;
        }
    };
    let local = match socket.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        other => {
            let why = format!("loopback socket address {other:?}");
            return up_failed(&events, host, port, why).await;
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let bridge = Bridge {
        local,
        _stop: stop_tx,
    };
    info!(%server, %local, "TLS session to the TURN server up");
    let up = TurnEvent::Up {
        host,
        port,
        result: Ok(bridge),
    };
    if events.send(up.into()).await.is_err() {
        return;
    }
    let reason = carry(stream, socket, stop_rx).await;
    if let Some(reason) = reason {
        let _ = events.send(TurnEvent::Ended { local, reason }.into()).await;
    }
}

async fn up_failed<T: From<TurnEvent>>(
    events: &mpsc::Sender<T>,
    host: String,
    port: u16,
    why: String,
) {
    let up = TurnEvent::Up {
        host,
        port,
        result: Err(why),
    };
    let _ = events.send(up.into()).await;
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(host: &str, port: u16, tls: &TlsConnector) -> Result<(Tls, SocketAddrV4), String> {
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{host} has no IPv4 address"))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a name a certificate can carry"))?;
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))?;
    // Each frame is a packet someone waits for.
    tcp.set_nodelay(true).ok();
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {server}: {e}"))?;
    Ok((stream, server))
}

fn loopback_socket() -> io::Result<UdpSocket> {
    let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_nonblocking(true)?;
    let fd: OwnedFd = socket.into();
    udp::set_buffers(&fd, SOCKET_BUFFER)?;
    UdpSocket::from_std(StdUdpSocket::from(fd))
}

/// Carries datagrams both ways until one side ends; `None` when the node
/// let the bridge go, else why it ended.
async fn carry(stream: Tls, socket: UdpSocket, stop: oneshot::Receiver<()>) -> Option<String> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let allocation = OnceLock::new();
    let up = async {
        let mut dgram = vec![0u8; MAX_DATAGRAM + 1];
        let mut out = Vec::with_capacity(WRITE_BATCH + MAX_DATAGRAM);
        let mut strangers = 0u64;
        loop {
            let (n, from) = match socket.recv_from(&mut dgram).await {
                Ok(r) => r,
                Err(e) => return format!("loopback socket: {e}"),
            };
            // The remaining datagrams of a burst go out in the same write.
            let mut next = Some((n, from));
            while let Some((n, from)) = next.take() {
                if *allocation.get_or_init(|| from) != from {
                    strangers += 1;
                    debug!(%from, strangers, "datagram from a stranger on the TURN bridge, dropped");
                } else if let Err(e) = frame(&dgram[..n], &mut out) {
                    // The node only sends what the TURN client built.
                    debug!(error = %e, "unframeable datagram for the TURN server, dropped");
                }
                if out.len() < WRITE_BATCH {
                    next = socket.try_recv_from(&mut dgram).ok();
                }
            }
            if out.is_empty() {
                continue;
            }
            if let Err(e) = wr.write_all(&out).await {
                return format!("writing to the TURN server: {e}");
            }
            out.clear();
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut deframer = Deframer::new();
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return format!("reading from the TURN server: {e}"),
            };
            if n == 0 {
                return match deframer.finish() {
                    Ok(()) => "the TURN server closed the TLS session".to_string(),
                    Err(e) => format!("bad stream from the TURN server: {e}"),
                };
            }
            deframer.push(&buf[..n]);
            loop {
                match deframer.next_frame() {
                    Ok(Some(d)) => {
                        // Nothing was sent yet, so nothing can be answered.
                        let Some(&to) = allocation.get() else {
                            continue;
                        };
                        // A full socket drops the datagram, as UDP would.
                        let _ = socket.try_send_to(d, to);
                    }
                    Ok(None) => break,
                    Err(e) => return format!("bad stream from the TURN server: {e}"),
                }
            }
        }
    };
    tokio::select! {
        why = up => Some(why),
        why = down => Some(why),
        _ = stop => None,
    }
}
