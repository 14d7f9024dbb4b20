//! The NAT classifier driven over real UDP sockets against the server's own
//! STUN responder on loopback, where 127.0.0.2 is a second address of this
//! host: the request and response codecs, CHANGE-REQUEST, OTHER-ADDRESS and
//! the transaction state machine meet end to end. With no NAT in between the
//! answer is known: not behind a NAT, one mapping for every destination,
//! and answers from the other port (and address) get in. Every wait is
//! bounded.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ringlink::config::ServerConfig;
use ringlink::control::nat_run::classify_over_udp;
use ringlink::nat::{Delta, Filtering, Mapping, NatKind, Outcome};
use ringlink::server::{Server, Tuning};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const RUN_LIMIT: Duration = Duration::from_secs(20);

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("not IPv4: {a}"),
    }
}

async fn responder(alt_address: Option<&str>) -> (SocketAddrV4, ringlink::server::ShutdownHandle) {
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password: "pw".into(),
        pool: "10.77.0.0/24".parse().unwrap(),
        tls: None,
        stun: Some("127.0.0.1:0".parse().unwrap()),
        stun_alt_port: 0,
        stun_alt_address: alt_address.map(|a| a.parse().unwrap()),
        routes: vec![],
        max_clients: 8,
        max_unauthenticated: ringlink::config::DEFAULT_MAX_UNAUTHENTICATED,
        max_unauthenticated_per_ip: ringlink::config::DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
        broadcast_rate: ringlink::config::DEFAULT_BROADCAST_RATE,
        broadcast_burst: ringlink::config::DEFAULT_BROADCAST_BURST,
        general_rate: ringlink::config::DEFAULT_GENERAL_RATE,
        general_burst: ringlink::config::DEFAULT_GENERAL_BURST,
        metrics: None,
        // Servers started in tests serve no control socket (only `server::run` does).
        control_socket: "/nonexistent/ringlink-test.sock".into(),
        log: "info".into(),
        cluster: None,
        networks: vec![],
        turn: None,
    };
    let server = Server::bind_with(cfg, Tuning::default()).await.unwrap();
    let stun_addr = v4(server.stun_addr().unwrap());
    let stop = server.shutdown_handle();
    tokio::spawn(server.run());
    (stun_addr, stop)
}

async fn classify(server: SocketAddrV4, n: usize) -> Outcome {
    let run = classify_over_udp(server, Ipv4Addr::LOCALHOST, n, rand::random());
    timeout(RUN_LIMIT, run)
        .await
        .expect("classification did not finish")
        .unwrap()
}

#[tokio::test]
async fn two_addresses_show_an_open_host() {
    let (server, stop) = responder(Some("127.0.0.2")).await;
    let Outcome::Classified(class) = classify(server, 4).await else {
        panic!("no answer from the responder")
    };
    stop.shutdown();
    assert_eq!(
        class.kind,
        NatKind {
            behind_nat: false,
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
            delta: Delta::Equal,
        }
    );
    assert_eq!(class.mapped.ip(), &Ipv4Addr::LOCALHOST);
}

#[tokio::test]
async fn an_alternate_port_alone_cannot_tell_address_filtering() {
    let (server, stop) = responder(None).await;
    let Outcome::Classified(class) = classify(server, 3).await else {
        panic!("no answer from the responder")
    };
    stop.shutdown();
    assert_eq!(class.kind.mapping, Mapping::EndpointIndependent);
    assert_eq!(class.kind.filtering, Filtering::NotPortDependent);
    assert!(!class.kind.behind_nat);
}

#[tokio::test]
async fn a_silent_server_is_no_answer_not_a_class() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    assert_eq!(
        classify(v4(silent.local_addr().unwrap()), 2).await,
        Outcome::NoAnswer
    );
    // Three sends: 250 + 500 + 1000 ms.
    assert!(started.elapsed() >= Duration::from_millis(1750));
}
