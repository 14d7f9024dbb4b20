//! The sans-IO TURN client against a real coturn (Debian's `turnserver`)
//! on loopback, with `use-auth-secret` as a ringlink server's `turn` key
//! expects: two clients allocate, permit and bind each other's relayed
//! addresses, and exchange ChannelData through the relay both ways, before
//! and after refreshing everything; credentials from a wrong secret, or
//! expired ones, fail with the client's Unauthorized error.
//!
//! Ignored by default; with `--include-ignored` (as CI runs) it fails
//! loudly when turnserver is missing, so a green run means it ran. Every
//! wait is bounded by a deadline; coturn is ended by its PID on drop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringlink::control::turn_path::{TurnOutput, TurnPath};
use ringlink::proto::stun;
use ringlink::turn::{channel, Client, Credentials, Event, Received, TurnError};

const NEEDS: &str = "needs coturn (apt-get install coturn)";
const SECRET: &str = "ringlink-test-secret";
const REALM: &str = "ringlink.test";
const WAIT: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A UDP port nobody uses right now (the listener's and the relay range's
/// start), drawn by the kernel.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One turnserver on 127.0.0.1, killed by its own PID on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Coturn {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let port = free_udp_port();
        // 40 relay ports from a kernel-chosen base, so concurrent runs
        // (other tests, other sessions) rarely overlap.
        let base = free_udp_port().clamp(20_000, 60_000);
        let dir =
            std::env::temp_dir().join(format!("ringlink-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &base.to_string()])
            .args(["--max-port", &(base + 40).to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", SECRET])
            .args(["--realm", REALM, "--allow-loopback-peers"])
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--log-file")
            .arg(dir.join("turn.log"))
            .args(["--simple-log", "--no-stdout-log"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{NEEDS}: {e}"));
        let c = Coturn {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
        };
        c.wait_ready();
        c
    }

    /// Ready when it answers a STUN Binding request on its port.
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 1500];
        loop {
            assert!(
                Instant::now() < deadline,
                "turnserver did not answer STUN on {} (log: {})",
                self.addr,
                self.dir.join("turn.log").display()
            );
            sock.send_to(&stun::encode_binding_request(&[3; 12]), self.addr)
                .unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if stun::parse_binding_response(&buf[..n]).is_ok() {
                    return;
                }
            }
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One client on its own socket, driven on a clock that can be moved
/// ahead: the client only knows the `now` it is given, so jumping to its
/// refresh deadline makes it refresh against the real server at once.
struct Driver {
    client: Client,
    sock: UdpSocket,
    skew: Duration,
    events: Vec<Event>,
    received: Vec<(SocketAddrV4, Vec<u8>)>,
}

impl Driver {
    fn new(server: SocketAddr, creds: Credentials, seed: u64) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Driver {
            client: Client::new(server, creds, seed, Instant::now()),
            sock,
            skew: Duration::ZERO,
            events: Vec::new(),
            received: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + self.skew
    }

    fn flush(&mut self) {
        while let Some(d) = self.client.poll_transmit() {
            self.sock.send_to(&d, self.client.server()).unwrap();
        }
    }

    /// Runs the client until `done` holds for an event or a datagram it
    /// received, or the (real-time) deadline passes.
    fn until(&mut self, what: &str, done: impl Fn(&Driver) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 2048];
        loop {
            self.flush();
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; events {:?}, next deadline in {:?}",
                self.events,
                self.client
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.now()))
            );
            let wake = self
                .client
                .poll_timeout()
                .map(|at| at.saturating_duration_since(self.now()))
                .unwrap_or(WAIT)
                .clamp(Duration::from_millis(1), Duration::from_millis(200));
            self.sock.set_read_timeout(Some(wake)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = self.now();
                    match self.client.handle_input(from, &buf[..n], now) {
                        Ok(Received::Peer { peer, data }) => {
                            self.received.push((peer, data.to_vec()))
                        }
                        Ok(Received::Control) => {}
                        Err(e) => panic!("{what}: coturn sent something the client refused: {e}"),
                    }
                }
                Err(_) => {
                    let now = self.now();
                    self.client.handle_timeout(now);
                }
            }
        }
    }

    fn allocated(&self) -> Option<SocketAddrV4> {
        self.events.iter().find_map(|e| match e {
            Event::Allocated { relayed, .. } => Some(*relayed),
            _ => None,
        })
    }

    fn failed(&self) -> Option<&TurnError> {
        self.events.iter().find_map(|e| match e {
            Event::Failed(err) => Some(err),
            _ => None,
        })
    }

    fn send_to_peer(&mut self, peer: SocketAddrV4, data: &[u8]) {
        let number = self.client.channel(peer).expect("channel bound");
        let mut d = channel::header(number, data.len()).unwrap().to_vec();
        d.extend_from_slice(data);
        self.sock.send_to(&d, self.client.server()).unwrap();
    }

    /// Moves this client's clock to its next deadline and lets it act.
    fn jump_to_deadline(&mut self) {
        let at = self.client.poll_timeout().expect("a deadline");
        self.skew += at.saturating_duration_since(self.now());
        let now = self.now();
        self.client.handle_timeout(now);
    }
}

fn rest_credentials(secret: &str, vip: &str, valid_for: i64) -> Credentials {
    let expiry = (unix_now() as i64 + valid_for) as u64;
    Credentials::mint(secret.as_bytes(), vip.parse().unwrap(), expiry)
}

fn exchange(a: &mut Driver, b: &mut Driver, ra: SocketAddrV4, rb: SocketAddrV4, tag: &str) {
    let to_b = format!("{tag}: a to b");
    a.send_to_peer(rb, to_b.as_bytes());
    b.until(&to_b, |d| {
        d.received
            .iter()
            .any(|(p, m)| *p == ra && m == to_b.as_bytes())
    });
    let to_a = format!("{tag}: b to a");
    b.send_to_peer(ra, to_a.as_bytes());
    a.until(&to_a, |d| {
        d.received
            .iter()
            .any(|(p, m)| *p == rb && m == to_a.as_bytes())
    });
}

#[test]
#[ignore = "needs coturn (apt-get install coturn)"]
fn two_clients_relay_through_coturn() {
    let turn = Coturn::start();
    let mut a = Driver::new(turn.addr, rest_credentials(SECRET, "10.77.0.2", 600), 1);
    let mut b = Driver::new(turn.addr, rest_credentials(SECRET, "10.77.0.3", 600), 2);
    a.until("allocate a", |d| d.allocated().is_some());
    b.until("allocate b", |d| d.allocated().is_some());
    let (ra, rb) = (a.allocated().unwrap(), b.allocated().unwrap());
    assert_eq!(*ra.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(ra, rb);
    match &a.events[0] {
        Event::Allocated {
            mapped, lifetime, ..
        } => {
            assert_eq!(
                *mapped,
                Some(match a.sock.local_addr().unwrap() {
                    SocketAddr::V4(v4) => v4,
                    other => panic!("{other}"),
                })
            );
            assert!(lifetime.as_secs() > 60, "lifetime {lifetime:?}");
        }
        other => panic!("{other:?}"),
    }

    a.client.add_peer(rb, a.now()).unwrap();
    b.client.add_peer(ra, b.now()).unwrap();
    let bound = |peer: SocketAddrV4| {
        move |d: &Driver| {
            d.events.contains(&Event::Permitted(*peer.ip()))
                && d.events
                    .iter()
                    .any(|e| matches!(e, Event::ChannelBound { peer: p, .. } if *p == peer))
        }
    };
    a.until("permission and channel on a", bound(rb));
    b.until("permission and channel on b", bound(ra));
    exchange(&mut a, &mut b, ra, rb, "first");

    // Refresh: jump each clock from deadline to deadline (permissions at
    // 240 s and 480 s, the allocation and the channel at 540 s), letting
    // the real server answer each time, until the allocation was refreshed.
    for d in [&mut a, &mut b] {
        for _ in 0..4 {
            d.jump_to_deadline();
            // Settled: nothing in flight (a retransmission would be due
            // within 16 s), so the next deadline is a refresh, and those
            // are at least 60 s apart.
            d.until("refresh answered", |d| {
                d.client
                    .poll_timeout()
                    .is_some_and(|t| t > d.now() + Duration::from_secs(20))
            });
            if d.events
                .iter()
                .any(|e| matches!(e, Event::Refreshed { .. }))
            {
                break;
            }
        }
        assert!(
            d.events
                .iter()
                .any(|e| matches!(e, Event::Refreshed { lifetime } if lifetime.as_secs() > 60)),
            "{:?}",
            d.events
        );
        assert!(d.failed().is_none(), "{:?}", d.events);
        // 540 s of client time, less the real time the test took.
        assert!(d.skew >= Duration::from_secs(500), "{:?}", d.skew);
    }
    exchange(&mut a, &mut b, ra, rb, "after refresh");

    // Close: LIFETIME 0, answered.
    a.client.close(a.now());
    a.until("close", |d| d.events.contains(&Event::Closed));
    b.client.close(b.now());
    b.until("close", |d| d.events.contains(&Event::Closed));
}

#[test]
#[ignore = "needs coturn (apt-get install coturn)"]
fn wrong_secret_and_expired_credentials_are_refused() {
    let turn = Coturn::start();
    let mut wrong = Driver::new(
        turn.addr,
        rest_credentials("not-the-secret", "10.77.0.4", 600),
        3,
    );
    wrong.until("refusal", |d| d.failed().is_some());
    let e = wrong.failed().unwrap().clone();
    assert_eq!(e, TurnError::Unauthorized("Allocate"));
    assert!(e.to_string().contains("shared secret"), "{e}");
    assert!(wrong.client.is_done());

    let mut expired = Driver::new(turn.addr, rest_credentials(SECRET, "10.77.0.5", -60), 4);
    expired.until("refusal", |d| d.failed().is_some());
    assert_eq!(expired.failed(), Some(&TurnError::Unauthorized("Allocate")));

    // The same server still serves good credentials.
    let mut good = Driver::new(turn.addr, rest_credentials(SECRET, "10.77.0.6", 600), 5);
    good.until("allocate", |d| d.allocated().is_some());
}

/// coturn with nonces that go stale after 2 s: the client meets its 438,
/// takes the new nonce and carries on without an error.
#[test]
#[ignore = "needs coturn (apt-get install coturn)"]
fn stale_nonce_from_coturn_is_retried() {
    let turn = Coturn::start_with(&["--stale-nonce=2"]);
    let mut a = Driver::new(turn.addr, rest_credentials(SECRET, "10.77.0.7", 600), 6);
    a.until("allocate", |d| d.allocated().is_some());
    // Refresh after refresh (each answered before the next) until coturn
    // has called the nonce stale once; it lives 2 s of coturn's time.
    let deadline = Instant::now() + WAIT;
    while a.client.stale_nonces() == 0 {
        assert!(
            Instant::now() < deadline,
            "no 438 within {WAIT:?}: {:?}",
            a.events
        );
        a.jump_to_deadline();
        a.until("refresh answered", |d| {
            d.client
                .poll_timeout()
                .is_some_and(|t| t > d.now() + Duration::from_secs(20))
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(a.failed().is_none(), "{:?}", a.events);
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, Event::Refreshed { .. })),
        "{:?}",
        a.events
    );
}

/// One node's `TurnPath` on its own socket, as the node and the dataplane
/// will drive it: STUN to the path, ChannelData unwrapped through its
/// `turn_socket()` table, PINGs answered through the same channel.
struct PathEnd {
    vip: Ipv4Addr,
    path: TurnPath,
    sock: UdpSocket,
    server: SocketAddrV4,
    /// What it announced, for the other end's UDP4CONN.
    announced: Option<SocketAddrV4>,
}

impl PathEnd {
    fn new(vip: &str, server: SocketAddr, seed: u64) -> Self {
        let SocketAddr::V4(server) = server else {
            unreachable!("coturn listens on IPv4")
        };
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        PathEnd {
            vip: vip.parse().unwrap(),
            path: TurnPath::new(
                server,
                rest_credentials(SECRET, vip, 600),
                seed,
                Instant::now(),
            ),
            sock,
            server,
            announced: None,
        }
    }

    fn carry_out(&mut self) {
        while let Some(o) = self.path.poll_output() {
            match o {
                TurnOutput::ToServer(d) => {
                    self.sock.send_to(&d, self.server).unwrap();
                }
                TurnOutput::Announce { relayed, .. } => self.announced = Some(relayed),
                TurnOutput::Ping { channel, nonce, .. } => self.send(channel, b"PING", &nonce),
                TurnOutput::Changed => {}
                TurnOutput::Failed { peer, error } => panic!("{peer:?}: {error}"),
            }
        }
    }

    fn send(&self, ch: u16, what: &[u8], nonce: &[u8; 12]) {
        let mut d = channel::header(ch, what.len() + nonce.len())
            .unwrap()
            .to_vec();
        d.extend_from_slice(what);
        d.extend_from_slice(nonce);
        self.sock.send_to(&d, self.server).unwrap();
    }

    /// One datagram, if any came within 20 ms.
    fn receive(&mut self, other: Ipv4Addr) {
        let mut buf = [0u8; 1500];
        let Ok((n, SocketAddr::V4(from))) = self.sock.recv_from(&mut buf) else {
            return;
        };
        assert_eq!(from, self.server);
        let d = &buf[..n];
        if !channel::looks_like_channel_data(d) {
            self.path.on_datagram(from, d, Instant::now()).unwrap();
            return;
        }
        let (ch, data) = channel::parse(d).unwrap();
        let peer = self.path.turn_socket().channels[&ch];
        let nonce: [u8; 12] = data[4..].try_into().unwrap();
        match &data[..4] {
            b"PING" => self.send(ch, b"PONG", &nonce),
            b"PONG" => {
                assert!(
                    self.path.on_pong(other, peer, &nonce, Instant::now()),
                    "the challenge's PONG"
                );
            }
            _ => panic!("unexpected data {data:?}"),
        }
    }
}

/// Two nodes' `TurnPath`s meet relay to relay through coturn: each
/// learns the other's relayed address (as from UDP4CONN TLV 3), permits
/// and binds it, and proves the path with a PING/PONG through the
/// channels; neither sends to the other except through coturn.
#[test]
#[ignore = "needs coturn (apt-get install coturn)"]
fn turn_paths_prove_each_other_through_coturn() {
    let turn = Coturn::start();
    let mut a = PathEnd::new("10.77.0.2", turn.addr, 1);
    let mut b = PathEnd::new("10.77.0.3", turn.addr, 2);
    a.path.want(b.vip);
    b.path.want(a.vip);
    let deadline = Instant::now() + WAIT;
    let mut told = (false, false);
    while a.path.channel(b.vip).is_none() || b.path.channel(a.vip).is_none() {
        assert!(
            Instant::now() < deadline,
            "no proven TURN path within {WAIT:?}"
        );
        a.carry_out();
        b.carry_out();
        if let (Some(r), false) = (a.announced, told.0) {
            b.path.peer_relayed(a.vip, r, Instant::now());
            told.0 = true;
        }
        if let (Some(r), false) = (b.announced, told.1) {
            a.path.peer_relayed(b.vip, r, Instant::now());
            told.1 = true;
        }
        a.receive(b.vip);
        b.receive(a.vip);
        for end in [&mut a, &mut b] {
            let now = Instant::now();
            if end.path.poll_timeout().is_some_and(|t| t <= now) {
                end.path.handle_timeout(now);
            }
        }
    }
    let (ra, rb) = (a.path.relayed().unwrap(), b.path.relayed().unwrap());
    assert_eq!(a.path.turn_socket().channels.values().next(), Some(&rb));
    assert_eq!(b.path.turn_socket().channels.values().next(), Some(&ra));
    assert_ne!(ra, rb);
}
