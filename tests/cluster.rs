//! Two server instances sharing leases and the relay through a real
//! nats-server on loopback (Debian's `nats-server`, started here with
//! JetStream). Ignored by default; with `--include-ignored` (as CI runs)
//! they fail loudly when nats-server is missing, so a green run means the
//! scenarios ran. Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ringlink::config::{ClusterConfig, NetworkConfig, ServerConfig, DEFAULT_LEASE_SECONDS};
use ringlink::proto::ws::{self, Auth, Discovery, ExptTun, Vmac, WsMessage};
use ringlink::reload::LogControl;
use ringlink::server::Tuning;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/config.rs"]
mod base_config;
#[path = "support/harness.rs"]
mod harness;

use base_config::server_config;
use harness::{
    closed, connect_path, forward, ip, load, now, recv, recv_within, scrape, send, start_with,
    Running, Ws, WAIT,
};

const PW: &str = "cluster secret";
const NEEDS: &str = "needs nats-server (apt-get install nats-server)";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server with JetStream, on loopback, ended (by its own PID) on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringlink-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut n = Self {
            child: None,
            port: free_port(),
            dir,
        };
        n.resume();
        n
    }

    /// (Re)starts the server on the same port and store.
    fn resume(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{NEEDS}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const LAB_PW: &str = "lab secret";

/// Instance `name` on `nats`: the default network and a second one, "lab",
/// with the same pool (its leases and subjects are its own).
fn config(nats: &Nats, name: &str) -> ServerConfig {
    let mut cfg = server_config(PW, "10.77.0.0/24");
    cfg.stun = None;
    cfg.networks = vec![NetworkConfig {
        name: "lab".into(),
        path: "/lab".into(),
        password: LAB_PW.into(),
        pool: "10.77.0.0/24".parse().unwrap(),
        routes: vec![],
    }];
    cfg.cluster = Some(ClusterConfig {
        nats: vec![nats.url()],
        name: name.into(),
        replicas: 1,
        lease_seconds: DEFAULT_LEASE_SECONDS,
    });
    cfg
}

async fn start(nats: &Nats, name: &str) -> Running {
    start_with(config(nats, name), Tuning::default()).await
}

async fn connect(addr: SocketAddr) -> Ws {
    connect_path(addr, "/").await
}

/// How a login ended: the echo of a self-addressed GENERAL (a member), or
/// the Close reason.
async fn outcome(ws: &mut Ws, vip: Ipv4Addr) -> Result<(), String> {
    // Queued behind AUTH: the server reads it only if the login held.
    let _ = ws.send(Message::Binary(ws::encode_keepalive(vip))).await;
    timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b == ws::encode_keepalive(vip) => return Ok(()),
                Some(Ok(Message::Close(Some(f)))) => return Err(f.reason.into_owned()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Err("closed without a reason".into())
                }
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("neither an echo nor a close in time")
}

fn vmac(tag: u8) -> [u8; 16] {
    let mut v = *b"cluster-vmac-000";
    v[15] = tag;
    v
}

async fn login(addr: SocketAddr, vip: Ipv4Addr, tag: u8, ts: i64) -> Ws {
    let mut ws = connect(addr).await;
    send(&mut ws, Vmac::new(PW.as_bytes(), vmac(tag), ts).encode()).await;
    send(&mut ws, Auth::new(PW.as_bytes(), vip, ts).encode()).await;
    ws
}

async fn member(addr: SocketAddr, vip: &str, tag: u8) -> Ws {
    let mut ws = login(addr, ip(vip), tag, now()).await;
    outcome(&mut ws, ip(vip)).await.expect("login refused");
    ws
}

/// Sends `frame` from `from` until `to` receives it (another instance
/// learns of a member through the bucket watch, a few milliseconds after
/// the join). Returns how many sends it took.
async fn deliver_eventually(from: &mut Ws, to: &mut Ws, frame: &[u8]) -> usize {
    let deadline = Instant::now() + WAIT;
    for n in 1.. {
        send(from, frame.to_vec()).await;
        if let Some(got) = recv_within(to, Duration::from_millis(200)).await {
            assert_eq!(got, frame, "byte-for-byte");
            // An earlier send may still be on its way: only copies of this
            // frame may follow.
            while let Some(late) = recv_within(to, Duration::from_millis(300)).await {
                assert_eq!(late, frame, "only late copies of the probe");
            }
            return n;
        }
        assert!(Instant::now() < deadline, "frame never crossed instances");
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn two_instances_never_grant_one_address_twice() {
    let nats = Nats::start();
    let a = start(&nats, "a").await;
    let b = start(&nats, "b").await;
    const ROUNDS: u8 = 40;
    let mut wins = [0u32; 2];
    for round in 0..ROUNDS {
        let vip = Ipv4Addr::new(10, 77, 0, 10 + round);
        let ts = now();
        // Two different clients, each on its own instance, at once.
        let (mut x, mut y) = tokio::join!(
            login(a.addr, vip, 2 * round, ts),
            login(b.addr, vip, 2 * round + 1, ts)
        );
        let (rx, ry) = tokio::join!(outcome(&mut x, vip), outcome(&mut y, vip));
        match (&rx, &ry) {
            (Ok(()), Err(why)) | (Err(why), Ok(())) => {
                assert!(why.contains("in use"), "round {round}: loser told {why:?}");
            }
            _ => panic!("round {round}: exactly one must win, got {rx:?} and {ry:?}"),
        }
        wins[usize::from(rx.is_err())] += 1;
    }
    let refused = load(&a.counters, |c| &c.refused_address_in_use)
        + load(&b.counters, |c| &c.refused_address_in_use);
    assert_eq!(refused, u64::from(ROUNDS));
    println!("wins a={} b={} over {ROUNDS} rounds", wins[0], wins[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn frames_cross_instances_and_broadcasts_arrive_once() {
    let nats = Nats::start();
    let a = start(&nats, "a").await;
    let b = start(&nats, "b").await;
    let mut x = member(a.addr, "10.77.0.1", 1).await;
    let mut y = member(b.addr, "10.77.0.2", 2).await;
    let mut z = member(b.addr, "10.77.0.3", 3).await;
    let mut w = member(a.addr, "10.77.0.4", 4).await;

    let f = forward("10.77.0.1", "10.77.0.2", b"to y on b");
    deliver_eventually(&mut x, &mut y, &f).await;
    let back = forward("10.77.0.2", "10.77.0.1", b"to x on a");
    deliver_eventually(&mut y, &mut x, &back).await;
    // Now both ends are known: every frame crosses.
    for i in 0..50u8 {
        let f = forward("10.77.0.1", "10.77.0.2", &[i; 100]);
        send(&mut x, f.clone()).await;
        assert_eq!(recv(&mut y).await, f);
    }
    // z on b is known to a too once it answers.
    let to_z = forward("10.77.0.1", "10.77.0.3", b"to z");
    deliver_eventually(&mut x, &mut z, &to_z).await;

    // A broadcast from x: w (same instance), y and z (the other), once each.
    let bc = forward("10.77.0.1", "10.77.0.255", b"all");
    send(&mut x, bc.clone()).await;
    assert_eq!(recv(&mut w).await, bc);
    assert_eq!(recv(&mut y).await, bc);
    assert_eq!(recv(&mut z).await, bc);
    // A DISCOVERY broadcast from y the same way.
    let d = Discovery {
        src: ip("10.77.0.2"),
        dst: ws::BROADCAST,
    }
    .encode();
    send(&mut y, d.clone()).await;
    assert_eq!(recv(&mut x).await, d);
    assert_eq!(recv(&mut w).await, d);
    assert_eq!(recv(&mut z).await, d);
    // Nothing else is queued: the next frame each sees is its own echo.
    for (ws, vip) in [
        (&mut x, "10.77.0.1"),
        (&mut y, "10.77.0.2"),
        (&mut z, "10.77.0.3"),
        (&mut w, "10.77.0.4"),
    ] {
        send(ws, ws::encode_keepalive(ip(vip))).await;
        assert_eq!(recv(ws).await, ws::encode_keepalive(ip(vip)), "{vip}");
    }
    assert!(load(&a.counters, |c| &c.cluster_frames_out) >= 53);
    assert!(load(&b.counters, |c| &c.cluster_frames_in) >= 52);
    assert_eq!(load(&a.counters, |c| &c.cluster_out_dropped), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn a_client_keeps_its_address_on_another_instance() {
    let nats = Nats::start();
    let a = start(&nats, "a").await;
    let b = start(&nats, "b").await;
    let c = start(&nats, "c").await;
    let vip = ip("10.77.0.5");
    let ts = now();
    let mut on_a = login(a.addr, vip, 7, ts).await;
    outcome(&mut on_a, vip).await.expect("first login");

    // Another client may not have it, on either instance. (Its time is
    // not ts + 1: AUTH covers only password, address and time, so that
    // would make the same login as the move below, refused as a replay.)
    let mut thief = login(b.addr, vip, 8, ts + 2).await;
    let why = outcome(&mut thief, vip).await.unwrap_err();
    assert!(
        why.contains("in use") && why.contains("instance a"),
        "{why}"
    );

    // The same client moves to b: asks for its address back, then logs in.
    let mut on_b = connect(b.addr).await;
    send(
        &mut on_b,
        Vmac::new(PW.as_bytes(), vmac(7), ts + 1).encode(),
    )
    .await;
    let ask = ExptTun::new(PW.as_bytes(), "10.77.0.5/24".parse().unwrap(), ts + 1).encode();
    send(&mut on_b, ask).await;
    match WsMessage::decode(&recv(&mut on_b).await).unwrap() {
        WsMessage::ExptTun(e) => assert_eq!(e.cidr.addr, vip, "granted its own address"),
        other => panic!("{other:?}"),
    }
    send(&mut on_b, Auth::new(PW.as_bytes(), vip, ts + 1).encode()).await;
    outcome(&mut on_b, vip).await.expect("login on b");
    // Its old session on a is closed.
    assert!(closed(&mut on_a).await.contains("replaced"));
    assert_eq!(load(&b.counters, |c| &c.cluster_takeovers), 1);
    assert_eq!(load(&a.counters, |c| &c.cluster_lease_lost), 1);

    // A replay of the first login, on an instance that has not seen it,
    // may not take it back.
    let mut replay = login(c.addr, vip, 7, ts).await;
    let why = outcome(&mut replay, vip).await.unwrap_err();
    assert!(why.contains("not newer"), "{why}");
    outcome(&mut on_b, vip).await.expect("b's session lives on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn without_nats_members_keep_relaying_and_joins_fail_clearly() {
    let mut nats = Nats::start();
    let a = start(&nats, "a").await;
    let mut x = member(a.addr, "10.77.0.1", 1).await;
    let mut y = member(a.addr, "10.77.0.2", 2).await;
    nats.stop();

    // Members of one instance keep relaying to each other.
    for i in 0..20u8 {
        let f = forward("10.77.0.1", "10.77.0.2", &[i; 64]);
        send(&mut x, f.clone()).await;
        assert_eq!(recv(&mut y).await, f);
    }
    // A newcomer is told why it cannot join.
    let mut z = login(a.addr, ip("10.77.0.3"), 3, now()).await;
    let why = outcome(&mut z, ip("10.77.0.3")).await.unwrap_err();
    assert!(why.contains("cluster unavailable"), "{why}");

    // NATS comes back: joins work again, on their own.
    nats.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut z = login(a.addr, ip("10.77.0.3"), 3, now()).await;
        match outcome(&mut z, ip("10.77.0.3")).await {
            Ok(()) => break,
            Err(why) => assert!(
                Instant::now() < deadline,
                "still refused after NATS returned: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let f = forward("10.77.0.1", "10.77.0.2", b"still here");
    send(&mut x, f.clone()).await;
    assert_eq!(recv(&mut y).await, f);
}

/// All of NATS away for longer than a lease and its grace: when it
/// returns, every lease in the bucket looks long expired, a live
/// instance's too. The other instance must not take that for a death, and
/// a lease deleted anyway is written back by its holder: the member keeps
/// its session and receives frames from the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn members_survive_an_outage_longer_than_their_leases() {
    let mut nats = Nats::start();
    let short = |name: &str| {
        let mut cfg = config(&nats, name);
        if let Some(c) = cfg.cluster.as_mut() {
            c.lease_seconds = 3;
        }
        cfg
    };
    let a = start_with(short("a"), Tuning::default()).await;
    let b = start_with(short("b"), Tuning::default()).await;
    let mut x = member(a.addr, "10.77.0.1", 1).await;
    let mut y = member(b.addr, "10.77.0.2", 2).await;
    let f = forward("10.77.0.2", "10.77.0.1", b"before");
    deliver_eventually(&mut y, &mut x, &f).await;

    nats.stop();
    // Expiry (3 s) + clock slack (2 s) + the lease time again (3 s) + a
    // renewal period: b would call x's lease dead.
    tokio::time::sleep(Duration::from_secs(10)).await;
    nats.resume();

    // Two lease times after NATS listens: long enough for b to judge and
    // for a to renew (or write back).
    let settle = Instant::now() + Duration::from_secs(8);
    let after = forward("10.77.0.2", "10.77.0.1", b"after the outage");
    deliver_eventually(&mut y, &mut x, &after).await;
    while Instant::now() < settle {
        send(&mut x, ws::encode_keepalive(ip("10.77.0.1"))).await;
        let echo = recv_within(&mut x, Duration::from_secs(1)).await;
        assert!(echo.is_some(), "x's session on a ended after the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        load(&a.counters, |c| &c.cluster_lease_lost),
        0,
        "x lost its lease"
    );
    let last = forward("10.77.0.2", "10.77.0.1", b"settled");
    deliver_eventually(&mut y, &mut x, &last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn networks_stay_apart_across_instances() {
    let nats = Nats::start();
    let a = start(&nats, "a").await;
    let b = start(&nats, "b").await;
    let lab = |addr: SocketAddr, vip: &'static str, tag: u8| async move {
        let mut ws = connect_path(addr, "/lab").await;
        send(
            &mut ws,
            Vmac::new(LAB_PW.as_bytes(), vmac(tag), now()).encode(),
        )
        .await;
        send(
            &mut ws,
            Auth::new(LAB_PW.as_bytes(), ip(vip), now()).encode(),
        )
        .await;
        outcome(&mut ws, ip(vip)).await.expect("lab login");
        ws
    };
    // The same two addresses in both networks, spread over both instances.
    let mut d1 = member(a.addr, "10.77.0.1", 1).await;
    let mut l1 = lab(b.addr, "10.77.0.1", 2).await;
    let mut d2 = member(b.addr, "10.77.0.2", 3).await;
    let mut l2 = lab(a.addr, "10.77.0.2", 4).await;
    let f = forward("10.77.0.1", "10.77.0.2", b"default, a to b");
    deliver_eventually(&mut d1, &mut d2, &f).await;
    let g = forward("10.77.0.1", "10.77.0.2", b"lab, b to a");
    deliver_eventually(&mut l1, &mut l2, &g).await;
    let bc = forward("10.77.0.1", "10.77.0.255", b"lab broadcast");
    send(&mut l1, bc.clone()).await;
    assert_eq!(recv(&mut l2).await, bc);
    // Nothing crossed networks: each member's next frame is its own echo.
    for (ws, vip) in [
        (&mut d1, "10.77.0.1"),
        (&mut d2, "10.77.0.2"),
        (&mut l1, "10.77.0.1"),
        (&mut l2, "10.77.0.2"),
    ] {
        send(ws, ws::encode_keepalive(ip(vip))).await;
        assert_eq!(recv(ws).await, ws::encode_keepalive(ip(vip)), "{vip}");
    }
}

/// Scrapes `addr` until the body has `line`, within WAIT.
async fn scrape_until(addr: SocketAddr, line: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = scrape(addr).await;
        if body.lines().any(|l| l == line) {
            return body;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster instance's status names it by its cluster name; its /metrics,
/// moved by a reload, still counts members per instance and network; a
/// reload applies a network's routes live and names cluster changes as
/// needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn status_metrics_and_reload_on_a_cluster_instance() {
    let nats = Nats::start();
    let mut cfg = config(&nats, "a");
    cfg.metrics = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let a = start_with(cfg, Tuning::default()).await;
    let b = start(&nats, "b").await;
    let mut x = member(a.addr, "10.77.0.1", 1).await;
    let _y = member(b.addr, "10.77.0.2", 2).await;
    let _z = member(b.addr, "10.77.0.3", 3).await;

    let st = a.control.status();
    assert_eq!(st.instance, "a");
    let names: Vec<&str> = st.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["default", "lab"]);
    assert_eq!(st.members.len(), 1, "only a's own members: {st:?}");
    let m = &st.members[0];
    assert_eq!(
        (m.vip.as_str(), m.network.as_str(), m.instance.as_str()),
        ("10.77.0.1", "default", "a")
    );

    let first = a.cfg.metrics.unwrap();
    scrape_until(
        first,
        "ringlink_server_cluster_members{instance=\"b\",network=\"default\"} 2",
    )
    .await;

    // Reload: /metrics moves, lab gets a route, the lease time would need
    // a restart.
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut new = a.cfg.clone();
    new.metrics = Some(second);
    new.networks[0].routes = vec![ringlink::config::PushedRoute {
        dst: "192.168.9.0/24".parse().unwrap(),
        via: ip("10.77.0.9"),
        for_clients: "10.77.0.0/24".parse().unwrap(),
    }];
    new.cluster.as_mut().unwrap().lease_seconds += 1;
    let report = a.control.reload(new, &LogControl::detached()).await;
    assert_eq!(
        report.applied,
        [
            format!("metrics={second}"),
            "network lab routes +192.168.9.0/24 via 10.77.0.9 for 10.77.0.0/24 (sent to 0 members)"
                .to_string()
        ]
    );
    assert_eq!(report.restart, ["cluster.lease_seconds"]);
    assert!(TcpStream::connect(first).await.is_err(), "old port closed");
    let body = scrape_until(
        second,
        "ringlink_server_cluster_members{instance=\"a\",network=\"default\"} 1",
    )
    .await;
    assert!(
        body.lines()
            .any(|l| l == "ringlink_server_cluster_members{instance=\"b\",network=\"default\"} 2"),
        "{body}"
    );
    // The default network's members got nothing from lab's reload.
    send(&mut x, ws::encode_keepalive(ip("10.77.0.1"))).await;
    assert_eq!(recv(&mut x).await, ws::encode_keepalive(ip("10.77.0.1")));
}

/// `ringlink server` as a process of its own (the signal path is the
/// CLI's), ended by its PID on drop if the test has not ended it.
struct Process {
    child: Child,
    dir: PathBuf,
}

impl Process {
    /// Instance `name` on `nats`, with the config of [`config`] (but the
    /// lab network's password `lab_pw`) written to a file; returns once it
    /// accepts connections.
    fn start(nats: &Nats, name: &str, port: u16, lab_pw: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringlink-cluster-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("server.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:{port}\"\npassword = \"{PW}\"\npool = \"10.77.0.0/24\"\nstun = \"\"\nmetrics = \"\"\ncontrol_socket = \"{}\"\n[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"{lab_pw}\"\npool = \"10.77.0.0/24\"\n[cluster]\nnats = \"{}\"\nname = \"{name}\"\n",
                dir.join("server.sock").display(),
                nats.url()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringlink"))
            .args(["server", "--config", file.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let p = Self { child, dir };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "instance {name} did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Its log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits until its log has `text`; returns the log.
    fn log_until(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {text:?} in:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit within `within`; returns its log.
    fn terminate(&mut self, within: Duration) -> String {
        // SAFETY: signals our own child, which has not been reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        self.log()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM to an instance hands its leases back: another client gets the
/// address on another instance at once, not after the lease time (15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn a_stopped_instance_hands_its_leases_back() {
    let nats = Nats::start();
    let port = free_port();
    let mut a = Process::start(&nats, "a", port, LAB_PW);
    let b = start(&nats, "b").await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let vip = ip("10.77.0.5");
    let _x = member(addr, "10.77.0.5", 1).await;
    let _lab = {
        let mut ws = connect_path(addr, "/lab").await;
        send(
            &mut ws,
            Vmac::new(LAB_PW.as_bytes(), vmac(2), now()).encode(),
        )
        .await;
        send(&mut ws, Auth::new(LAB_PW.as_bytes(), vip, now()).encode()).await;
        outcome(&mut ws, vip).await.expect("lab login on a");
        ws
    };
    // The lease is live: another client is refused on b.
    let mut y = login(b.addr, vip, 3, now()).await;
    let why = outcome(&mut y, vip).await.unwrap_err();
    assert!(why.contains("instance a"), "{why}");

    let t0 = Instant::now();
    let log = a.terminate(Duration::from_secs(10));
    assert!(
        log.contains("cluster: released 2 of 2 leases held at shutdown"),
        "{log}"
    );
    // Another client again; a later timestamp, as the AUTH hash covers
    // only the password, the address and the time (the same would be a
    // replay).
    let mut z = login(b.addr, vip, 4, now() + 1).await;
    outcome(&mut z, vip)
        .await
        .expect("the address is free once a has stopped");
    let took = t0.elapsed();
    println!(
        "address free on b {} ms after SIGTERM to a",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(DEFAULT_LEASE_SECONDS.into()) / 3,
        "{took:?}: no faster than the lease expiry"
    );
    assert_eq!(
        load(&b.counters, |c| &c.cluster_takeovers),
        0,
        "freed, not expired"
    );
}

/// Instances publish digests of what must match (networks, password
/// hashes, pools, routes); one that differs is named in the log of the
/// other, with the section, and counted in the mismatch gauge; a reload
/// that changes routes is compared again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn a_config_mismatch_is_named_and_counted() {
    let nats = Nats::start();
    let mut cfg = config(&nats, "a");
    cfg.metrics = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let a = start_with(cfg, Tuning::default()).await;
    let metrics = a.cfg.metrics.unwrap();
    let c = start(&nats, "c").await;
    let b = Process::start(&nats, "b", free_port(), "another lab secret");
    let log = b.log_until("cluster: configuration of instance a differs from this instance b in:");
    assert!(
        log.contains("configuration of instance a differs from this instance b in: network lab password; every instance must serve the same networks"),
        "{log}"
    );
    assert!(
        !log.contains("another lab secret"),
        "the password itself is never logged"
    );
    // a sees b (not c, which matches) as different.
    scrape_until(metrics, "ringlink_server_cluster_config_mismatch 1").await;

    // c's lab gets a route by a reload: now c differs too, at once.
    let mut new = c.cfg.clone();
    new.networks[0].routes = vec![ringlink::config::PushedRoute {
        dst: "192.168.9.0/24".parse().unwrap(),
        via: ip("10.77.0.9"),
        for_clients: "10.77.0.0/24".parse().unwrap(),
    }];
    c.control.reload(new, &LogControl::detached()).await;
    scrape_until(metrics, "ringlink_server_cluster_config_mismatch 2").await;
    b.log_until(
        "instance c differs from this instance b in: network lab password, network lab route;",
    );
    // And back: only b differs again.
    c.control
        .reload(c.cfg.clone(), &LogControl::detached())
        .await;
    scrape_until(metrics, "ringlink_server_cluster_config_mismatch 1").await;
}
