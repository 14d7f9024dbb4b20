//! Classifies the NAT in front of this host against a ringlink STUN
//! responder and prints the class as one line (used by
//! netns-tests/test_nat_lab.sh to check the classifier against the lab's
//! routers).
//!
//! Usage: nat_classify <stun ip:port> <local ip> [sockets]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;

use ringlink::control::nat_run::classify_over_udp;
use ringlink::nat::Outcome;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (
        args.get(1).and_then(|a| a.parse::<SocketAddrV4>().ok()),
        args.get(2).and_then(|a| a.parse::<Ipv4Addr>().ok()),
        args.get(3).map_or(Some(5), |a| a.parse::<usize>().ok()),
    );
    let (Some(server), Some(local), Some(sockets)) = parsed else {
        eprintln!("usage: nat_classify <stun ip:port> <local ip> [sockets]");
        return ExitCode::from(2);
    };
    match classify_over_udp(server, local, sockets, rand::random()).await {
        Ok(Outcome::Classified(c)) => {
            let k = c.kind;
            println!(
                "behind_nat={} mapping={:?} filtering={:?} delta={:?} mapped={} last={}",
                k.behind_nat, k.mapping, k.filtering, k.delta, c.mapped, c.last_mapped
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::NoAnswer) => {
            println!("no answer");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nat_classify: {e}");
            ExitCode::FAILURE
        }
    }
}
