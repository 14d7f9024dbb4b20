//! TURN over a stream (RFC 8656 §3.1): `turn://…?transport=tcp` and
//! `turns://`, for networks whose only way out is TCP. There is no kernel
//! TLS here, so TLS runs in user space, on a thread of its own so that data
//! never passes through the control loop; plain TCP takes the same thread,
//! so both transports are one code path.
//!
//! The thread (a *bridge*) owns the stream to the TURN server and a UDP
//! socket on loopback. To the rest of the node, that loopback address *is*
//! the TURN server: the allocation's socket sends STUN and ChannelData
//! there exactly as it would to a server over UDP, and the bridge puts each
//! datagram on the stream ([`crate::turn::stream::frame`]) and each frame
//! from the stream back into a datagram ([`crate::turn::stream::Deframer`]).
//! The dataplane, the TURN client and the path logic are the ones of a UDP
//! `turn://`, unchanged; only the server's address differs.
//!
//! Loopback UDP keeps datagram boundaries, so nothing above the bridge
//! learns about stream framing, and a worker never blocks on the stream:
//! when the bridge falls behind, its socket buffer overflows and datagrams
//! drop, as on any congested UDP path, and the tunnelled TCP backs off.
//!
//! The bridge trusts the first sender on its loopback socket (the
//! allocation's socket, whose first datagram is the Allocate) and drops
//! datagrams from any other local port: a local process cannot bind the
//! bridge's port, and without root it cannot forge the allocation's.
//!
//! It ends when the TURN server closes the stream, sends bytes that are
//! not TURN framing, or the TLS session fails, and says why
//! ([`TurnEvent::Ended`]); or when the node drops its [`Bridge`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tracing::{debug, info};

use crate::proto::mtu::MAX_DATAGRAM;
use crate::proto::ws::TurnTransport;
use crate::sys::{signals, udp};
use crate::turn::stream::{frame, Deframer};

/// Resolving and connecting; the TLS handshake, if any, gets as long again.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much the bridge puts on the stream in one write: the datagrams
/// that queued while the last write went out, up to about one TLS record.
const WRITE_BATCH: usize = 16 * 1024;
/// Room on the loopback socket for bursts while the TLS write catches up.
const SOCKET_BUFFER: usize = 4 << 20;

/// What the bridge tells the control loop.
pub enum TurnEvent {
    /// The answer to a `ResolveTurn` for a server over TCP or TLS: the
    /// loopback address that now stands for it, or why there is none.
    Up {
        host: String,
        port: u16,
        transport: TurnTransport,
        result: Result<Bridge, String>,
    },
    /// The bridge whose loopback address is `local` has ended.
    Ended { local: SocketAddrV4, reason: String },
}

/// A running bridge. Dropping it ends the stream.
#[derive(Debug)]
pub struct Bridge {
    pub local: SocketAddrV4,
    _stop: oneshot::Sender<()>,
}

/// Starts a bridge to `host`:`port` on a thread of its own, inside TLS
/// with `tls`, else over plain TCP; the outcome arrives on `events` as
/// [`TurnEvent::Up`].
pub fn spawn<T>(host: String, port: u16, tls: Option<TlsConnector>, events: mpsc::Sender<T>)
where
    T: From<TurnEvent> + Send + 'static,
{
    let to = Target {
        transport: if tls.is_some() {
            TurnTransport::Tls
        } else {
            TurnTransport::Tcp
        },
        host,
        port,
    };
    let thread_events = events.clone();
    let thread_to = to.clone();
    // Started with the process signals blocked, like the workers: SIGTERM
    // and SIGHUP belong to the control thread's handlers.
    let builder = std::thread::Builder::new().name(format!("turn-{}", to.transport.label()));
    let spawned = signals::with_process_signals_blocked(|| {
        builder.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let up = thread_to.up(Err(format!("starting the bridge's runtime: {e}")));
                    let _ = thread_events.blocking_send(up.into());
                    return;
                }
            };
            rt.block_on(run(thread_to, tls, thread_events));
        })
    });
    if let Err(e) = spawned {
        // The control loop's own task delivers this, so it cannot be full
        // of the loop's own waiting.
        tokio::spawn(async move {
            let up = to.up(Err(format!("starting the bridge thread: {e}")));
            let _ = events.send(up.into()).await;
        });
    }
}

/// The server a bridge is for, as the node asked for it.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    transport: TurnTransport,
}

impl Target {
    fn up(self, result: Result<Bridge, String>) -> TurnEvent {
        TurnEvent::Up {
            host: self.host,
            port: self.port,
            transport: self.transport,
            result,
        }
    }
}

async fn run<T: From<TurnEvent>>(to: Target, tls: Option<TlsConnector>, events: mpsc::Sender<T>) {
    let setup = tokio::time::timeout(SETUP_TIMEOUT, connect(&to.host, to.port)).await;
    let (tcp, server) = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => return up_failed(&events, to, why).await,
        Err(_) => {
            let why = format!("no TCP connection in {SETUP_TIMEOUT:?}");
            return up_failed(&events, to, why).await;
        }
    };
    let Some(tls) = tls else {
        return serve(tcp, server, to, events).await;
    };
    let handshake = tokio::time::timeout(SETUP_TIMEOUT, tls_handshake(&to.host, server, tcp, &tls));
    match handshake.await {
        Ok(Ok(stream)) => serve(stream, server, to, events).await,
        Ok(Err(why)) => up_failed(&events, to, why).await,
        Err(_) => {
            let why = format!("no TLS session in {SETUP_TIMEOUT:?}");
            up_failed(&events, to, why).await
        }
    }
}

/// Opens the loopback side, reports the bridge up and carries datagrams
/// until it ends.
async fn serve<S, T>(stream: S, server: SocketAddrV4, to: Target, events: mpsc::Sender<T>)
where
    S: AsyncRead + AsyncWrite,
    T: From<TurnEvent>,
{
    let socket = match loopback_socket() {
        Ok(s) => s,
        Err(e) => {
            let why = format!("opening the loopback socket: {e}");
            return up_failed(&events, to, why).await;
        }
    };
    let local = match socket.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        other => {
            let why = format!("loopback socket address {other:?}");
            return up_failed(&events, to, why).await;
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let bridge = Bridge {
        local,
        _stop: stop_tx,
    };
    let transport = to.transport.label();
    info!(%server, %local, transport, "stream to the TURN server up");
    if events.send(to.up(Ok(bridge)).into()).await.is_err() {
        return;
    }
    let reason = carry(stream, socket, stop_rx).await;
    if let Some(reason) = reason {
        let _ = events.send(TurnEvent::Ended { local, reason }.into()).await;
    }
}

async fn up_failed<T: From<TurnEvent>>(events: &mpsc::Sender<T>, to: Target, why: String) {
    let _ = events.send(to.up(Err(why)).into()).await;
}

async fn connect(host: &str, port: u16) -> Result<(TcpStream, SocketAddrV4), String> {
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{host} has no IPv4 address"))?;
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))?;
    // Each frame is a packet someone waits for.
    tcp.set_nodelay(true).ok();
    Ok((tcp, server))
}

async fn tls_handshake(
    host: &str,
    server: SocketAddrV4,
    tcp: TcpStream,
    tls: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a name a certificate can carry"))?;
    tls.connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {server}: {e}"))
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
async fn carry<S: AsyncRead + AsyncWrite>(
    stream: S,
    socket: UdpSocket,
    stop: oneshot::Receiver<()>,
) -> Option<String> {
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
                    Ok(()) => "the TURN server closed the stream".to_string(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::ServerTrust;
    use crate::control::tls;
    use crate::proto::stun::MAGIC_COOKIE;

    const WAIT: Duration = Duration::from_secs(10);

    /// A TLS server for "localhost" on loopback, and a connector that
    /// trusts its certificate through a `tls_ca` file.
    struct Server {
        listener: TcpListener,
        acceptor: TlsAcceptor,
        trusting: TlsConnector,
    }

    async fn server(tag: &str) -> Server {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca = std::env::temp_dir().join(format!(
            "ringlink-turn-tls-{tag}-{}.pem",
            std::process::id()
        ));
        std::fs::write(&ca, cert.pem()).unwrap();
        let trusting = tls::connector(&ServerTrust::Roots {
            extra_ca: Some(ca.clone()),
        })
        .unwrap();
        let _ = std::fs::remove_file(&ca);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Server {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            trusting,
        }
    }

    impl Server {
        fn port(&self) -> u16 {
            self.listener.local_addr().unwrap().port()
        }

        /// Starts a bridge to this server; the server's end of the session
        /// and the bridge.
        async fn bridge(
            &self,
            events: &mut mpsc::Receiver<TurnEvent>,
            tx: mpsc::Sender<TurnEvent>,
        ) -> (tokio_rustls::server::TlsStream<TcpStream>, Bridge) {
            spawn(
                "localhost".into(),
                self.port(),
                Some(self.trusting.clone()),
                tx,
            );
            let (tcp, _) = timeout(WAIT, self.listener.accept())
                .await
                .unwrap()
                .unwrap();
            let session = timeout(WAIT, self.acceptor.accept(tcp))
                .await
                .unwrap()
                .unwrap();
            match timeout(WAIT, events.recv()).await.unwrap() {
                Some(TurnEvent::Up {
                    result: Ok(bridge), ..
                }) => (session, bridge),
                Some(TurnEvent::Up { result: Err(e), .. }) => panic!("no bridge: {e}"),
                _ => panic!("no Up event"),
            }
        }
    }

    fn stun() -> Vec<u8> {
        let mut m = vec![0x01, 0x13, 0x00, 0x04];
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&[1, 2, 3, 4]);
        m
    }

    async fn ended(events: &mut mpsc::Receiver<TurnEvent>, local: SocketAddrV4) -> String {
        match timeout(WAIT, events.recv()).await.unwrap() {
            Some(TurnEvent::Ended { local: l, reason }) if l == local => reason,
            _ => panic!("no Ended event for {local}"),
        }
    }

    #[tokio::test]
    async fn frames_go_both_ways_strangers_are_dropped_and_garbage_ends_it() {
        let s = server("both").await;
        let (tx, mut events) = mpsc::channel(4);
        let (mut session, bridge) = s.bridge(&mut events, tx).await;
        assert!(bridge.local.ip().is_loopback());
        let allocation = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();

        // Up: STUN as it is, ChannelData padded to a multiple of 4.
        allocation.send_to(&stun(), bridge.local).await.unwrap();
        allocation
            .send_to(
                &[0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'],
                bridge.local,
            )
            .await
            .unwrap();
        let mut want = stun();
        want.extend_from_slice(&[
            0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
        ]);
        let mut got = vec![0u8; want.len()];
        timeout(WAIT, session.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
        // A stranger's datagram never reaches the stream: what follows on
        // it is the allocation's next one.
        stranger
            .send_to(&[0x40, 0x02, 0x00, 0x00], bridge.local)
            .await
            .unwrap();
        allocation
            .send_to(&[0x40, 0x03, 0x00, 0x00], bridge.local)
            .await
            .unwrap();
        let mut next = [0u8; 4];
        timeout(WAIT, session.read_exact(&mut next))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next, [0x40, 0x03, 0x00, 0x00]);

        // Down: a padded ChannelData split over two writes, then STUN.
        let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
        session.write_all(&frame[..5]).await.unwrap();
        session.flush().await.unwrap();
        session.write_all(&frame[5..]).await.unwrap();
        session.write_all(&stun()).await.unwrap();
        session.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = timeout(WAIT, allocation.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&frame[..7], SocketAddr::V4(bridge.local))
        );
        let (n, _) = timeout(WAIT, allocation.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &stun()[..]);

        // Garbage (first bits 11) ends the bridge, with the reason.
        session.write_all(&[0xC0, 0, 0, 0]).await.unwrap();
        session.flush().await.unwrap();
        let reason = ended(&mut events, bridge.local).await;
        assert!(
            reason.contains("bad stream") && reason.contains("0xc0"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_close_mid_frame_ends_it_and_dropping_the_bridge_closes_the_session() {
        let s = server("close").await;
        let (tx, mut events) = mpsc::channel(4);
        let (mut session, bridge) = s.bridge(&mut events, tx.clone()).await;
        let allocation = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        allocation.send_to(&stun(), bridge.local).await.unwrap();
        let mut got = [0u8; 24];
        timeout(WAIT, session.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        session
            .write_all(&[0x40, 0x01, 0x00, 0x08, 1, 2])
            .await
            .unwrap();
        session.shutdown().await.unwrap();
        let reason = ended(&mut events, bridge.local).await;
        assert!(reason.contains("6 bytes into a frame"), "{reason}");

        // The node lets a bridge go: its session closes, and its thread
        // ends without an event (the node already moved on): the channel
        // closes with the last sender, which the thread held.
        let (mut session, bridge) = s.bridge(&mut events, tx).await;
        drop(bridge);
        let mut byte = [0u8; 1];
        let read = timeout(WAIT, session.read(&mut byte)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            timeout(WAIT, events.recv()).await.unwrap().is_none(),
            "an event after the node let the bridge go"
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_or_no_server_is_a_reason() {
        let s = server("untrusted").await;
        let port = s.port();
        let web_roots_only = tls::connector(&ServerTrust::Roots { extra_ca: None }).unwrap();
        let (tx, mut events) = mpsc::channel(4);
        spawn(
            "localhost".into(),
            port,
            Some(web_roots_only.clone()),
            tx.clone(),
        );
        let (tcp, _) = timeout(WAIT, s.listener.accept()).await.unwrap().unwrap();
        // The server side fails too; only the client's reason matters.
        let _ = timeout(WAIT, s.acceptor.accept(tcp)).await;
        match timeout(WAIT, events.recv()).await.unwrap() {
            Some(TurnEvent::Up { result: Err(e), .. }) => {
                assert!(e.contains("certificate"), "{e}")
            }
            _ => panic!("a bridge despite an untrusted certificate"),
        }
        drop(s);
        // Nothing listens there any more.
        spawn("localhost".into(), port, Some(web_roots_only), tx);
        match timeout(WAIT, events.recv()).await.unwrap() {
            Some(TurnEvent::Up { result: Err(e), .. }) => assert!(e.contains("connect"), "{e}"),
            _ => panic!("a bridge to a closed port"),
        }
    }

    #[tokio::test]
    async fn over_plain_tcp_the_same_frames_cross_with_no_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut events) = mpsc::channel(4);
        spawn("127.0.0.1".into(), port, None, tx);
        let (mut session, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let bridge = match timeout(WAIT, events.recv()).await.unwrap() {
            Some(TurnEvent::Up {
                transport,
                result: Ok(bridge),
                ..
            }) => {
                assert_eq!(transport, TurnTransport::Tcp);
                bridge
            }
            _ => panic!("no bridge over TCP"),
        };
        let allocation = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        allocation.send_to(&stun(), bridge.local).await.unwrap();
        // The stream carries the framing itself: no TLS record around it.
        let mut got = vec![0u8; stun().len()];
        timeout(WAIT, session.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, stun());
        session
            .write_all(&[0x40, 0x01, 0x00, 0x02, b'h', b'i', 0, 0])
            .await
            .unwrap();
        let mut dgram = [0u8; 16];
        let (n, from) = timeout(WAIT, allocation.recv_from(&mut dgram))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, SocketAddr::V4(bridge.local));
        assert_eq!(&dgram[..n], &[0x40, 0x01, 0x00, 0x02, b'h', b'i']);
        drop(session);
        let why = ended(&mut events, bridge.local).await;
        assert!(why.contains("closed the stream"), "{why}");
    }
}
