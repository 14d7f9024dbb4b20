//! The server configuration the in-process server tests start from:
//! loopback, an ephemeral port, the STUN responder on an ephemeral port,
//! no `/metrics`, no control socket, default limits. Each test changes what
//! it is about.

use ringlink::config::{self, ServerConfig};

/// One default network with `password` and `pool`, and nothing else.
pub fn server_config(password: &str, pool: &str) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password: Some(password.into()),
        pool: Some(pool.parse().unwrap()),
        tls: None,
        stun: Some("127.0.0.1:0".parse().unwrap()),
        stun_alt_port: 0,
        stun_alt_address: None,
        routes: vec![],
        max_clients: 64,
        max_unauthenticated: config::DEFAULT_MAX_UNAUTHENTICATED,
        max_unauthenticated_per_ip: config::DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
        broadcast_rate: config::DEFAULT_BROADCAST_RATE,
        broadcast_burst: config::DEFAULT_BROADCAST_BURST,
        general_rate: config::DEFAULT_GENERAL_RATE,
        general_burst: config::DEFAULT_GENERAL_BURST,
        metrics: None,
        // Servers started in tests serve no control socket (only `server::run` does).
        control_socket: "/nonexistent/ringlink-test.sock".into(),
        log: "info".into(),
        cluster: None,
        networks: vec![],
        turn: None,
    }
}
