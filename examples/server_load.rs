//! Load on one or more `ringlink server` instances: N simulated members,
//! each logging in as the client does (VMAC, then AUTH, with the crate's
//! own message codec), then sending relayed FORWARD frames to other members
//! and keepalives. Reports how many joined, how fast, what share of the
//! frames arrived, and the instances' memory (from /proc/PID/status of the
//! PIDs it is given). With `--throughput SECS` it then measures relay
//! throughput between two members on different instances and two on the
//! same instance, one pair after the other, in the same run.
//!
//! Members are spread over the servers round-robin (member i on server
//! i mod k); each sends to a peer picked at random (seeded by its index),
//! so with three instances about two frames in three cross instances.
//!
//! Run from `perf/server_load.sh`, which starts NATS and the instances;
//! by hand:
//!   cargo run --release --example server_load -- --server ws://127.0.0.1:7443/ \
//!       --password secret --members 1000 --pid $(pidof ringlink)
//!
//! Traffic goes only to the servers named (loopback in perf/); every wait
//! is bounded by the phase's deadline.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use ringlink::config::ServerUrl;
use ringlink::proto::ws::{self, Auth, ExptTun, Vmac, WsMessage};
use ringlink::proto::{ipv4, Ipv4Cidr};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser, Debug)]
#[command(about = "Simulated members against ringlink server instances")]
struct Args {
    /// A server URL (ws://host:port/path); give it once per instance.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// The network's password.
    #[arg(long)]
    password: String,
    /// The network's pool; member i claims its (i+1)-th host address.
    #[arg(long, default_value = "10.80.0.0/18")]
    pool: Ipv4Cidr,
    /// Ask for an address with an address request (EXPTTUN) first, as a
    /// client without `address` does, instead of claiming one directly.
    #[arg(long)]
    dynamic: bool,
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Relayed FORWARD frames per member per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds between a member's keepalives.
    #[arg(long, default_value_t = 5)]
    keepalive: u64,
    /// Seconds of traffic once every member has joined (or join-timeout passed).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds the join phase may take at most.
    #[arg(long, default_value_t = 180)]
    join_timeout: u64,
    /// PIDs of the server instances, for their memory.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Seconds per pair for the relay throughput measurement; 0 = none.
    #[arg(long, default_value_t = 0)]
    throughput: u64,
}

type Ws = WebSocketStream<TcpStream>;

/// Marks a frame of this tool: magic, sender index, sequence number.
const MAGIC: [u8; 4] = *b"RLLD";
const IP_UDP_HEADER: usize = 28;

#[derive(Default)]
struct Totals {
    joined: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    keepalives: AtomicU64,
    echoes: AtomicU64,
    /// Members whose session ended during the traffic phase.
    dropped: AtomicU64,
    /// Join failures by reason.
    failures: Mutex<BTreeMap<String, u64>>,
    /// When each join completed, relative to the start.
    join_times: Mutex<Vec<Duration>>,
}

impl Totals {
    fn fail(&self, why: String) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Join,
    Traffic,
    Drain,
}

fn host(pool: Ipv4Cidr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pool.addr) + 1 + i as u32)
}

fn vmac(i: usize) -> [u8; 16] {
    let mut v = *b"server-load-0000";
    v[8..16].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A FORWARD frame: an IPv4/UDP packet from `src` to `dst` whose payload
/// starts with the magic, `from` and `seq`, padded to `size` bytes.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, from: u32, seq: u32, size: usize) -> Vec<u8> {
    let len = size.max(IP_UDP_HEADER + 12);
    let mut p = vec![0u8; len];
    p[..20].copy_from_slice(&ipv4::header(src, dst, 17, len as u16));
    let body = &mut p[IP_UDP_HEADER..];
    body[..4].copy_from_slice(&MAGIC);
    body[4..8].copy_from_slice(&from.to_be_bytes());
    body[8..12].copy_from_slice(&seq.to_be_bytes());
    let mut f = Vec::with_capacity(len + 1);
    ws::encode_forward(&p, &mut f);
    f
}

/// Bytes of one of our frames addressed to `me`, or None for anything else.
fn ours(frame: &[u8], me: Ipv4Addr) -> Option<usize> {
    match WsMessage::decode(frame) {
        Ok(WsMessage::Forward(p))
            if p.len() >= IP_UDP_HEADER + 12
                && p[16..20] == me.octets()
                && p[IP_UDP_HEADER..IP_UDP_HEADER + 4] == MAGIC =>
        {
            Some(p.len())
        }
        _ => None,
    }
}

async fn connect(url: &ServerUrl) -> Result<Ws, String> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let (ws, _) = tokio_tungstenite::client_async(url.to_url(), tcp)
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}

/// The login of `ringlink client` (PROTOCOL.md §2.2): VMAC, an address
/// request when dynamic, AUTH; then a keepalive, whose echo proves the
/// session is a member (the server never acknowledges AUTH itself).
async fn login(
    url: &ServerUrl,
    password: &[u8],
    i: usize,
    pool: Ipv4Cidr,
    dynamic: bool,
) -> Result<(Ws, Ipv4Addr), String> {
    let mut ws = connect(url).await?;
    let send_err = |e: tokio_tungstenite::tungstenite::Error| format!("send: {e}");
    ws.send(Message::Binary(
        Vmac::new(password, vmac(i), now()).encode(),
    ))
    .await
    .map_err(send_err)?;
    let vip = if dynamic {
        let ask = ExptTun::new(password, ExptTun::unspecified_cidr(), now()).encode();
        ws.send(Message::Binary(ask)).await.map_err(send_err)?;
        let grant = next_frame(&mut ws).await?;
        match WsMessage::decode(&grant) {
            Ok(WsMessage::ExptTun(e)) if e.verify(password) => e.cidr.addr,
            _ => return Err("no valid address grant".into()),
        }
    } else {
        host(pool, i)
    };
    ws.send(Message::Binary(Auth::new(password, vip, now()).encode()))
        .await
        .map_err(send_err)?;
    let ka = ws::encode_keepalive(vip);
    ws.send(Message::Binary(ka.clone()))
        .await
        .map_err(send_err)?;
    loop {
        // Route pushes may come first.
        if next_frame(&mut ws).await? == ka {
            return Ok((ws, vip));
        }
    }
}

/// The next binary frame, or the reason the session ended.
async fn next_frame(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(Some(f)))) => return Err(f.reason.into_owned()),
            Some(Ok(Message::Close(None))) | None => return Err("closed".into()),
            Some(Err(e)) => return Err(format!("read: {e}")),
            Some(Ok(_)) => continue,
        }
    }
}

struct Ctx {
    args: Args,
    urls: Vec<ServerUrl>,
    totals: Totals,
    /// The address of each member that joined (0.0.0.0: not joined).
    vips: Vec<AtomicU64>,
    joined: Vec<AtomicBool>,
    start: Instant,
}

async fn member(
    ctx: Arc<Ctx>,
    i: usize,
    logins: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) {
    let a = &ctx.args;
    let url = &ctx.urls[i % ctx.urls.len()];
    let permit = logins.acquire().await;
    let joined = timeout(
        Duration::from_secs(a.join_timeout),
        login(url, a.password.as_bytes(), i, a.pool, a.dynamic),
    )
    .await;
    drop(permit);
    let (ws, vip) = match joined {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return ctx.totals.fail(why),
        Err(_) => return ctx.totals.fail("join timed out".into()),
    };
    ctx.vips[i].store(u32::from(vip).into(), Ordering::Relaxed);
    ctx.joined[i].store(true, Ordering::Release);
    ctx.totals.joined.fetch_add(1, Ordering::Relaxed);
    ctx.totals
        .join_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ctx.start.elapsed());

    let (mut sink, mut stream) = ws.split();
    let totals_rx = ctx.clone();
    let reader = tokio::spawn(async move {
        let ka = ws::encode_keepalive(vip);
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if b == ka => {
                    totals_rx.totals.echoes.fetch_add(1, Ordering::Relaxed);
                }
                Message::Binary(b) if ours(&b, vip).is_some() => {
                    totals_rx.totals.received.fetch_add(1, Ordering::Relaxed);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });

    while *phase.borrow_and_update() == Phase::Join {
        if phase.changed().await.is_err() {
            return;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    // Spread the members' sends over the period.
    let mut next_frame_at = tokio::time::Instant::now() + period.mul_f64(rng.gen::<f64>());
    let ka_period = Duration::from_secs(a.keepalive.max(1));
    let mut next_ka = tokio::time::Instant::now() + ka_period.mul_f64(rng.gen::<f64>());
    let mut seq = 0u32;
    loop {
        if *phase.borrow() != Phase::Traffic {
            break;
        }
        let at = next_frame_at.min(next_ka);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = phase.changed() => continue,
        }
        let now = tokio::time::Instant::now();
        let ok = if now >= next_ka {
            next_ka += ka_period;
            ctx.totals.keepalives.fetch_add(1, Ordering::Relaxed);
            sink.send(Message::Binary(ws::encode_keepalive(vip))).await
        } else {
            next_frame_at += period;
            let peer = loop {
                let p = rng.gen_range(0..ctx.vips.len());
                if p != i {
                    break p;
                }
            };
            if !ctx.joined[peer].load(Ordering::Acquire) {
                continue;
            }
            let dst = Ipv4Addr::from(ctx.vips[peer].load(Ordering::Relaxed) as u32);
            seq += 1;
            ctx.totals.sent.fetch_add(1, Ordering::Relaxed);
            sink.send(Message::Binary(frame(vip, dst, i as u32, seq, 100)))
                .await
        };
        if ok.is_err() {
            ctx.totals.dropped.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    // Connected until the run ends (the phase sender goes), so frames in
    // flight still arrive and are counted.
    let _ = phase.wait_for(|_| false).await;
    reader.abort();
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// This process may hold as many sockets as its hard limit allows.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Relay throughput from `from` to `to`: the sender writes 1400-byte
/// frames as fast as its socket takes them for `secs`; what arrives in
/// that time (and a second after) is counted. Returns (Mbit/s, share of
/// the frames sent that arrived).
async fn throughput(
    ctx: &Ctx,
    from: (usize, &ServerUrl),
    to: (usize, &ServerUrl),
    secs: u64,
) -> Result<(f64, f64), String> {
    let a = &ctx.args;
    let pw = a.password.as_bytes();
    let (tx, src) = login(from.1, pw, from.0, a.pool, a.dynamic).await?;
    let (mut rx, dst) = login(to.1, pw, to.0, a.pool, a.dynamic).await?;
    let (mut sink, _unread) = tx.split();
    let window = Duration::from_secs(secs);
    // The receiving instance learns where the sender is through the lease
    // bucket: a probe first, until it crosses.
    let probe_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sink.send(Message::Binary(frame(src, dst, from.0 as u32, 0, 100)))
            .await
            .map_err(|e| e.to_string())?;
        match timeout(Duration::from_millis(200), next_frame(&mut rx)).await {
            Ok(Ok(f)) if ours(&f, dst).is_some() => break,
            Ok(Err(e)) => return Err(e),
            _ if Instant::now() > probe_deadline => return Err("probe never arrived".into()),
            _ => {}
        }
    }
    let counter = tokio::spawn(async move {
        let mut bytes = 0u64;
        let mut frames = 0u64;
        let end = tokio::time::Instant::now() + window + Duration::from_secs(1);
        while let Ok(Ok(f)) = tokio::time::timeout_at(end, next_frame(&mut rx)).await {
            // Only the measured frames, not late copies of the probe.
            if let Some(n @ 1400) = ours(&f, dst) {
                bytes += n as u64;
                frames += 1;
            }
        }
        (bytes, frames)
    });
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < window {
        for _ in 0..64 {
            sent += 1;
            sink.feed(Message::Binary(frame(
                src,
                dst,
                from.0 as u32,
                sent as u32,
                1400,
            )))
            .await
            .map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
    }
    let (bytes, frames) = counter.await.map_err(|e| e.to_string())?;
    Ok((
        bytes as f64 * 8.0 / window.as_secs_f64() / 1e6,
        frames as f64 / sent.max(1) as f64,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let urls: Vec<ServerUrl> = args
        .servers
        .iter()
        .map(|s| ServerUrl::parse(s).unwrap_or_else(|| panic!("not a ws:// URL: {s}")))
        .collect();
    assert!(
        urls.iter().all(|u| !u.tls),
        "wss:// is not supported by this tool"
    );
    let hosts = (1u64 << (32 - args.pool.prefix)) - 2;
    // Throughput pairs use the four addresses after the members'.
    let needed = args.members as u64 + if args.throughput > 0 { 4 } else { 0 };
    assert!(
        needed <= hosts,
        "pool {} has {hosts} host addresses, {needed} needed",
        args.pool
    );
    let nofile = raise_nofile();
    println!(
        "server_load: {} members over {} instance(s), {} frame(s)/s each, keepalive every {} s, {} s of traffic; open files limit {nofile}",
        args.members,
        urls.len(),
        args.rate,
        args.keepalive,
        args.duration
    );
    let before: Vec<Option<(u64, u64)>> = args.pids.iter().map(|p| memory(*p)).collect();
    let n = args.members;
    let ctx = Arc::new(Ctx {
        urls,
        totals: Totals::default(),
        vips: (0..n).map(|_| AtomicU64::new(0)).collect(),
        joined: (0..n).map(|_| AtomicBool::new(false)).collect(),
        start: Instant::now(),
        args,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Join);
    let logins = Arc::new(Semaphore::new(ctx.args.concurrency.max(1)));
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(member(ctx.clone(), i, logins.clone(), phase_rx.clone())))
        .collect();

    // The join phase ends when every member joined or failed, or at the timeout.
    let join_deadline = Instant::now() + Duration::from_secs(ctx.args.join_timeout + 5);
    loop {
        let t = &ctx.totals;
        let failed: u64 = t
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        let joined = t.joined.load(Ordering::Relaxed);
        if joined + failed >= n as u64 || Instant::now() > join_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let join_phase = ctx.start.elapsed();
    let mut times = ctx
        .totals
        .join_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    times.sort();
    let joined = ctx.totals.joined.load(Ordering::Relaxed);
    let last = times.last().copied().unwrap_or_default();
    let join_rate = joined as f64 / last.as_secs_f64().max(1e-9);
    println!(
        "joined {joined} of {n} in {:.2} s: {join_rate:.0} joins/s; join completed at p50 {:.2} s, p99 {:.2} s",
        last.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.99).as_secs_f64()
    );
    for (why, count) in ctx
        .totals
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        println!("  join failed x{count}: {why}");
    }
    let after_join: Vec<Option<(u64, u64)>> = ctx.args.pids.iter().map(|p| memory(*p)).collect();
    // Another instance learns a member through the lease bucket: a moment
    // for the last joins to be seen everywhere.
    tokio::time::sleep(Duration::from_secs(2)).await;

    phase_tx.send_replace(Phase::Traffic);
    tokio::time::sleep(Duration::from_secs(ctx.args.duration)).await;
    // Stop sending; a few seconds for frames in flight.
    phase_tx.send_replace(Phase::Drain);
    let sent_at_stop = ctx.totals.sent.load(Ordering::Relaxed);
    let mut settled = ctx.totals.received.load(Ordering::Relaxed);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = ctx.totals.received.load(Ordering::Relaxed);
        if now == settled && now >= sent_at_stop {
            break;
        }
        settled = now;
    }
    let t = &ctx.totals;
    let (sent, received) = (
        t.sent.load(Ordering::Relaxed),
        t.received.load(Ordering::Relaxed),
    );
    let (kas, echoes) = (
        t.keepalives.load(Ordering::Relaxed),
        t.echoes.load(Ordering::Relaxed),
    );
    let delivery = received as f64 / sent.max(1) as f64;
    println!(
        "frames: sent {sent}, delivered {received} ({:.4} %), {:.0} frames/s; keepalives {kas}, echoed {echoes}; sessions lost during traffic {}",
        delivery * 100.0,
        sent as f64 / ctx.args.duration.max(1) as f64,
        t.dropped.load(Ordering::Relaxed)
    );
    let per_instance = joined as f64 / ctx.urls.len() as f64;
    let mut mem_json = Vec::new();
    for (k, pid) in ctx.args.pids.iter().enumerate() {
        let now = memory(*pid);
        let fmt = |m: Option<(u64, u64)>| {
            m.map_or("?".to_string(), |(rss, _)| {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            })
        };
        let per_member = match (before[k], after_join[k]) {
            (Some((b, _)), Some((a, _))) if per_instance > 0.0 => {
                (a.saturating_sub(b)) as f64 * 1024.0 / per_instance
            }
            _ => f64::NAN,
        };
        println!(
            "instance pid {pid}: RSS before {}, after joins {}, at the end {} (peak {}); {:.1} KiB per member held ({per_instance:.0} each)",
            fmt(before[k]),
            fmt(after_join[k]),
            fmt(now),
            now.map_or("?".into(), |(_, hwm)| format!("{:.1} MiB", hwm as f64 / 1024.0)),
            per_member / 1024.0
        );
        mem_json.push(format!(
            "{{\"pid\":{pid},\"rss_kib_before\":{},\"rss_kib_joined\":{},\"rss_kib_end\":{},\"hwm_kib\":{}}}",
            before[k].map_or(0, |m| m.0),
            after_join[k].map_or(0, |m| m.0),
            now.map_or(0, |m| m.0),
            now.map_or(0, |m| m.1)
        ));
    }

    let mut tput = String::new();
    if ctx.args.throughput > 0 {
        let base = n;
        let u0 = &ctx.urls[0];
        let u1 = &ctx.urls[1 % ctx.urls.len()];
        let secs = ctx.args.throughput;
        if ctx.urls.len() > 1 {
            match throughput(&ctx, (base, u0), (base + 1, u1), secs).await {
                Ok((mbit, share)) => {
                    println!("relay throughput across instances (server 1 -> server 2): {mbit:.1} Mbit/s, {:.1} % of frames offered", share * 100.0);
                    tput.push_str(&format!(",\"across_mbit\":{mbit:.1}"));
                }
                Err(e) => println!("relay throughput across instances: failed: {e}"),
            }
        }
        match throughput(&ctx, (base + 2, u0), (base + 3, u0), secs).await {
            Ok((mbit, share)) => {
                println!("relay throughput within one instance (server 1 -> server 1): {mbit:.1} Mbit/s, {:.1} % of frames offered", share * 100.0);
                tput.push_str(&format!(",\"within_mbit\":{mbit:.1}"));
            }
            Err(e) => println!("relay throughput within one instance: failed: {e}"),
        }
    }
    println!(
        "RESULT {{\"members\":{n},\"instances\":{},\"joined\":{joined},\"join_seconds\":{:.3},\"join_rate\":{join_rate:.1},\"join_phase_seconds\":{:.3},\"sent\":{sent},\"delivered\":{received},\"delivery\":{delivery:.6},\"memory\":[{}]{tput}}}",
        ctx.urls.len(),
        last.as_secs_f64(),
        join_phase.as_secs_f64(),
        mem_json.join(",")
    );
    drop(phase_tx);
    for t in tasks {
        t.abort();
    }
}
