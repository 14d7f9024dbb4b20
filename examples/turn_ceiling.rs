//! How fast a TURN server relays, with nothing of ringlink's dataplane in
//! the way: two allocations on one server, a channel each way, and one
//! thread sending ChannelData as fast as its socket takes it while another
//! counts what arrives through the other allocation. No sealing, no TUN,
//! no TCP above it: an upper bound for ringlink's TURN path on the same
//! machine (perf/RESULTS.md, issue 15's throughput target).
//!
//! Usage: turn_ceiling <server ip:port> <user> <password> [seconds] [bytes]
//!        turn_ceiling <server ip:port> --secret <secret> [seconds] [bytes]
//! (`--secret`: credentials minted as a ringlink server mints them for a
//! coturn with `use-auth-secret`.)

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlink::sys::udp;
use ringlink::turn::channel;
use ringlink::turn::{Client, Credentials, Event};

/// Setting up both allocations and channels takes a few round trips.
const SETUP_DEADLINE: Duration = Duration::from_secs(10);

struct Side {
    socket: UdpSocket,
    client: Client,
    relayed: Option<SocketAddrV4>,
    channel: Option<u16>,
}

impl Side {
    fn new(server: SocketAddrV4, creds: Credentials, seed: u64) -> std::io::Result<Self> {
        // The buffers ringlink's own sockets get, so a loss is the relay's.
        let fd = udp::bind_reuseport(0, udp::SOCKET_BUFFER_BYTES).map_err(std::io::Error::other)?;
        let socket = UdpSocket::from(fd);
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Duration::from_millis(5)))?;
        Ok(Self {
            socket,
            client: Client::new(SocketAddr::V4(server), creds, seed, Instant::now()),
            relayed: None,
            channel: None,
        })
    }

    /// Sends what the client queued, takes what arrived, reads its events.
    fn step(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let server = self.client.server();
        while let Some(t) = self.client.poll_transmit() {
            self.socket.send_to(&t, server).map_err(|e| e.to_string())?;
        }
        if let Ok((n, from)) = self.socket.recv_from(buf) {
            let now = Instant::now();
            if let Err(e) = self.client.handle_input(from, &buf[..n], now) {
                eprintln!("turn_ceiling: ignored a datagram: {e}");
            }
        }
        let now = Instant::now();
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::Allocated { relayed, .. } => self.relayed = Some(relayed),
                Event::ChannelBound { channel, .. } => self.channel = Some(channel),
                Event::PeerFailed { error, .. } | Event::Failed(error) => {
                    return Err(error.to_string())
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn setup(server: SocketAddrV4, user: &str, pass: &str) -> Result<(Side, Side), String> {
    let creds = || {
        if user == "--secret" {
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + 3600;
            Credentials::mint(pass.as_bytes(), Ipv4Addr::UNSPECIFIED, expires)
        } else {
            Credentials {
                username: user.into(),
                password: pass.into(),
            }
        }
    };
    let io = |e: std::io::Error| e.to_string();
    let mut a = Side::new(server, creds(), 1).map_err(io)?;
    let mut b = Side::new(server, creds(), 2).map_err(io)?;
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut asked = false;
    while a.channel.is_none() || b.channel.is_none() {
        if Instant::now() > deadline {
            return Err("allocations or channels not ready within 10 s".into());
        }
        a.step(&mut buf)?;
        b.step(&mut buf)?;
        if let (false, Some(ra), Some(rb)) = (asked, a.relayed, b.relayed) {
            let now = Instant::now();
            a.client.add_peer(rb, now).map_err(|e| e.to_string())?;
            b.client.add_peer(ra, now).map_err(|e| e.to_string())?;
            asked = true;
        }
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (
        args.get(1).and_then(|a| a.parse::<SocketAddrV4>().ok()),
        args.get(2),
        args.get(3),
        args.get(4).map_or(Some(2), |a| a.parse::<u64>().ok()),
        args.get(5).map_or(Some(1400), |a| a.parse::<usize>().ok()),
    );
    let (Some(server), Some(user), Some(pass), Some(secs), Some(size)) = parsed else {
        eprintln!(
            "usage: turn_ceiling <server ip:port> (<user> <password> | --secret <secret>) [seconds] [bytes]"
        );
        return ExitCode::from(2);
    };
    let (a, b) = match setup(server, user, pass) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("turn_ceiling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(ch) = a.channel else {
        return ExitCode::FAILURE;
    };
    let Ok(header) = channel::header(ch, size) else {
        eprintln!("turn_ceiling: {size} bytes do not fit a ChannelData message");
        return ExitCode::from(2);
    };
    let mut frame = header.to_vec();
    frame.resize(header.len() + size, 0x5a);

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (stop, received) = (stop.clone(), received.clone());
        let socket = b.socket;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    if let Ok((_, data)) = channel::parse(&buf[..n]) {
                        received.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    if let Err(e) = a.socket.connect(server) {
        eprintln!("turn_ceiling: {e}");
        return ExitCode::FAILURE;
    }
    // Paced rates first (an overloaded relay drops more than it would at
    // its limit), then as fast as the socket takes it.
    let mut lossless = 0.0f64;
    let mut most = 0.0f64;
    for rate in RATES_MBPS.iter().copied().map(Some).chain([None]) {
        let before = received.load(Ordering::Relaxed);
        let (sent, elapsed) = send_for(&a.socket, &frame, size, rate, Duration::from_secs(secs));
        // What is still in flight through the server arrives within moments.
        std::thread::sleep(Duration::from_millis(200));
        let got = received.load(Ordering::Relaxed) - before;
        let gbit = |bytes: u64| bytes as f64 * 8.0 / elapsed / 1e9;
        let share = if sent > 0 {
            got as f64 / sent as f64
        } else {
            0.0
        };
        say(format_args!(
            "offered {:.3} Gbit/s ({}), delivered {:.3} Gbit/s ({:.1} %)",
            gbit(sent),
            rate.map_or("unpaced".into(), |r| format!("paced at {r} Mbit/s")),
            gbit(got),
            share * 100.0
        ));
        most = most.max(gbit(got));
        if share >= 0.99 {
            lossless = lossless.max(gbit(got));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    say(format_args!(
        "coturn relayed at most {most:.3} Gbit/s; {lossless:.3} Gbit/s with under 1 % lost ({size} B payloads, {secs} s per rate)"
    ));
    ExitCode::SUCCESS
}

/// A line on stdout; a reader that went away is not an error here.
fn say(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Paced sending, Mbit/s of payload.
const RATES_MBPS: [u64; 5] = [250, 500, 1000, 2000, 4000];

/// Sends `frame` for `span`, at `rate` Mbit/s of payload or unpaced;
/// returns the payload bytes the socket took and the seconds it took.
fn send_for(
    socket: &UdpSocket,
    frame: &[u8],
    size: usize,
    rate: Option<u64>,
    span: Duration,
) -> (u64, f64) {
    const BATCH: u64 = 32;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < span {
        for _ in 0..BATCH {
            if socket.send(frame).is_ok() {
                sent += size as u64;
            }
        }
        if let Some(mbps) = rate {
            let due = Duration::from_secs_f64(sent as f64 * 8.0 / (mbps as f64 * 1e6));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    (sent, started.elapsed().as_secs_f64())
}
