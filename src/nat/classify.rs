//! One classification run as a STUN transaction state machine.
//!
//! The caller owns the sockets and the clock. It asks [`Classifier::poll_request`]
//! what to send (from which of its local sockets, to which server endpoint,
//! with which CHANGE-REQUEST flags and transaction ID), feeds every binding
//! response to [`Classifier::handle_reply`], calls
//! [`Classifier::handle_timeout`] once [`Classifier::poll_timeout`] has
//! passed, and reads [`Classifier::outcome`] when it is done.
//!
//! The tests run one at a time, in this order (RFC 5780 §4.3–4.4). Mapping
//! and filtering use different sockets: the mapping test must reach an
//! endpoint that has not sent to that socket's mapping yet (on a router
//! without an input firewall, an unsolicited datagram leaves a conntrack
//! entry that makes masquerade give our next flow to that endpoint another
//! port: a bare masquerade cone would look symmetric), and the filtering
//! tests must run before anything of theirs went to the other endpoint (or
//! the filter would be open already).
//!
//! 1. `Base`: socket 0 → primary. No answer after every retry ends the
//!    run inconclusive. The answer's OTHER-ADDRESS names the other endpoint.
//! 2. `Second`: socket 0 → the other endpoint (or the configured fallback):
//!    the same mapped address means endpoint-independent mapping.
//! 3. `FilterBase`: socket 1 → primary, opening the mapping the filtering
//!    tests probe (needs OTHER-ADDRESS and a second socket; otherwise the
//!    filtering stays `Unknown`).
//! 4. `ChangeBoth`: socket 1 → primary, change IP and port (only when the
//!    other endpoint has another IP). An answer from the other endpoint:
//!    endpoint-independent filtering.
//! 5. `ChangePort`: socket 1 → primary, change port. An answer from the
//!    primary IP and the other port: address-dependent (or, without a second
//!    IP, "not port-dependent"); none: address-and-port-dependent.
//! 6. `Extra(i)`: socket i → primary for every further socket, one after the
//!    other. With the sessions of the tests before, in creation order, they
//!    give the delta.
//!
//! Each request is retried with the same transaction ID after `rto`, then
//! 2·rto, … for `attempts` sends in all; a test that never gets an answer is
//! a timeout, which for the filtering tests is the answer.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::class::{Filtering, Mapping, NatClass, NatKind};
use super::delta;
use crate::proto::stun::{ChangeRequest, TransactionId};

/// A binding request the caller must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Index into [`ClassifierConfig::sockets`].
    pub socket: usize,
    pub to: SocketAddrV4,
    pub change: ChangeRequest,
    pub txid: TransactionId,
}

/// A binding success response as the caller received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub txid: TransactionId,
    /// Where the response came from (the CHANGE-REQUEST tests need it).
    pub from: SocketAddrV4,
    pub mapped: SocketAddrV4,
    /// RFC 5780 OTHER-ADDRESS, when the server has one.
    pub other: Option<SocketAddrV4>,
}

#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// The STUN server's primary endpoint.
    pub server: SocketAddrV4,
    /// A second endpoint for the mapping test when the server gives no
    /// OTHER-ADDRESS (e.g. another STUN server); without either, the mapping
    /// is `Unknown`. Filtering can only be told with OTHER-ADDRESS.
    pub fallback_second: Option<SocketAddrV4>,
    /// The caller's sockets with their local (interface) addresses; index 0
    /// is the main one. Three or more give the delta.
    pub sockets: Vec<SocketAddrV4>,
    /// First retransmission timeout; doubles per retry.
    pub rto: Duration,
    /// Sends per request, first included.
    pub attempts: u32,
}

impl ClassifierConfig {
    /// Defaults for a live network: 250 ms, 500 ms, 1 s between sends.
    pub fn new(server: SocketAddrV4, sockets: Vec<SocketAddrV4>) -> Self {
        Self {
            server,
            fallback_second: None,
            sockets,
            rto: Duration::from_millis(250),
            attempts: 3,
        }
    }
}

/// The socket the filtering tests use (the mapping tests use socket 0).
const FILTER_SOCKET: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Base,
    Second,
    FilterBase,
    ChangeBoth,
    ChangePort,
    Extra(usize),
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    test: Test,
    request: Request,
    sent: u32,
    /// When the next send (or, after the last one, the timeout) is due;
    /// None until the caller has taken the request.
    due: Option<Instant>,
}

#[derive(Debug)]
pub struct Classifier {
    cfg: ClassifierConfig,
    rng: StdRng,
    current: Option<InFlight>,
    /// The primary's answer to the main socket.
    base: Option<SocketAddrV4>,
    /// The server's other endpoint (RFC 5780), if it announced one.
    other: Option<SocketAddrV4>,
    second: Option<SocketAddrV4>,
    filtering: Filtering,
    /// (local port, mapped port) per new NAT session, in creation order.
    sessions: Vec<(u16, u16)>,
    last_mapped: Option<SocketAddrV4>,
    outcome: Option<Outcome>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Classified(NatClass),
    /// The primary never answered: nothing was learnt (offline, or the
    /// server is down); not a classification.
    NoAnswer,
}

impl Classifier {
    /// `seed` drives the transaction IDs, so a run is reproducible in tests;
    /// live callers pass a random seed.
    pub fn new(cfg: ClassifierConfig, seed: u64) -> Self {
        let mut me = Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            current: None,
            base: None,
            other: None,
            second: None,
            filtering: Filtering::Unknown,
            sessions: Vec::new(),
            last_mapped: None,
            outcome: None,
        };
        if me.cfg.sockets.is_empty() || me.cfg.attempts == 0 {
            me.outcome = Some(Outcome::NoAnswer);
        } else {
            me.start(Test::Base);
        }
        me
    }

    /// The next datagram to send, if one is due at `now`.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        let rto = self.cfg.rto;
        let attempts = self.cfg.attempts;
        let f = self.current.as_mut()?;
        let due = f.due.is_none_or(|d| now >= d);
        if !due || f.sent >= attempts {
            return None;
        }
        f.due = Some(now + rto * 2u32.saturating_pow(f.sent));
        f.sent += 1;
        Some(f.request)
    }

    /// When [`Self::handle_timeout`] (or [`Self::poll_request`]) next has
    /// work; None when done or when a request is waiting to be taken.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.and_then(|f| f.due)
    }

    /// Gives up on the current test once its last send has timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(f) = self.current else { return };
        if f.sent >= self.cfg.attempts && f.due.is_some_and(|d| now >= d) {
            self.current = None;
            self.after(f.test, None);
        }
    }

    /// Feeds a binding response; ones that match no outstanding request
    /// (late retransmits, strays, forgeries without the ID) are ignored and
    /// reported as false.
    pub fn handle_reply(&mut self, reply: Reply) -> bool {
        let Some(f) = self.current else { return false };
        if f.request.txid != reply.txid || f.due.is_none() {
            return false;
        }
        self.current = None;
        self.after(f.test, Some(reply));
        true
    }

    /// None while running.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    fn start(&mut self, test: Test) {
        let (socket, to, change) = match test {
            Test::Base => (0, self.cfg.server, ChangeRequest::default()),
            Test::FilterBase => (FILTER_SOCKET, self.cfg.server, ChangeRequest::default()),
            Test::ChangeBoth => (
                FILTER_SOCKET,
                self.cfg.server,
                ChangeRequest {
                    ip: true,
                    port: true,
                },
            ),
            Test::ChangePort => (
                FILTER_SOCKET,
                self.cfg.server,
                ChangeRequest {
                    ip: false,
                    port: true,
                },
            ),
            Test::Second => match self.other.or(self.cfg.fallback_second) {
                Some(second) => (0, second, ChangeRequest::default()),
                None => return self.after(Test::Second, None),
            },
            Test::Extra(i) => (i, self.cfg.server, ChangeRequest::default()),
        };
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        self.current = Some(InFlight {
            test,
            request: Request {
                socket,
                to,
                change,
                txid,
            },
            sent: 0,
            due: None,
        });
    }

    /// Records one test's result and starts the next test.
    fn after(&mut self, test: Test, reply: Option<Reply>) {
        let next = match test {
            Test::Base => {
                let Some(r) = reply else {
                    self.outcome = Some(Outcome::NoAnswer);
                    return;
                };
                self.base = Some(r.mapped);
                self.record(0, r.mapped);
                // A responder bound to the wildcard address cannot name
                // its own IP and sends 0.0.0.0: the IP we asked is meant.
                let server_ip = *self.cfg.server.ip();
                self.other = r
                    .other
                    .map(|o| match o.ip().is_unspecified() {
                        true => SocketAddrV4::new(server_ip, o.port()),
                        false => o,
                    })
                    .filter(|o| *o != self.cfg.server);
                Test::Second
            }
            Test::Second => {
                if let Some(r) = reply {
                    self.second = Some(r.mapped);
                    if Some(r.mapped) != self.base {
                        self.record(0, r.mapped);
                    }
                }
                if self.other.is_some() && self.cfg.sockets.len() > FILTER_SOCKET {
                    Test::FilterBase
                } else {
                    Test::Extra(1)
                }
            }
            Test::FilterBase => match reply {
                Some(r) => {
                    self.record(FILTER_SOCKET, r.mapped);
                    match self.other {
                        Some(o) if o.ip() != self.cfg.server.ip() => Test::ChangeBoth,
                        _ => Test::ChangePort,
                    }
                }
                None => Test::Extra(FILTER_SOCKET + 1),
            },
            Test::ChangeBoth => {
                if reply.is_some_and(|r| Some(r.from) == self.other) {
                    self.filtering = Filtering::EndpointIndependent;
                    Test::Extra(FILTER_SOCKET + 1)
                } else {
                    Test::ChangePort
                }
            }
            Test::ChangePort => {
                let changed_port = self
                    .other
                    .map(|o| SocketAddrV4::new(*self.cfg.server.ip(), o.port()));
                let two_ips = self.other.is_some_and(|o| o.ip() != self.cfg.server.ip());
                self.filtering = match reply {
                    Some(r) if Some(r.from) == changed_port && two_ips => {
                        Filtering::AddressDependent
                    }
                    Some(r) if Some(r.from) == changed_port => Filtering::NotPortDependent,
                    // Answered from where we asked: the server ignored the
                    // flag, so nothing was learnt.
                    Some(_) => Filtering::Unknown,
                    None => Filtering::AddressAndPortDependent,
                };
                Test::Extra(FILTER_SOCKET + 1)
            }
            Test::Extra(i) => {
                if let Some(r) = reply {
                    self.record(i, r.mapped);
                }
                Test::Extra(i + 1)
            }
        };
        match next {
            Test::Extra(i) if i >= self.cfg.sockets.len() => self.finish(),
            t => self.start(t),
        }
    }

    fn record(&mut self, socket: usize, mapped: SocketAddrV4) {
        self.sessions
            .push((self.cfg.sockets[socket].port(), mapped.port()));
        self.last_mapped = Some(mapped);
    }

    fn finish(&mut self) {
        let Some(mapped) = self.base else {
            self.outcome = Some(Outcome::NoAnswer);
            return;
        };
        let mapping = match self.second {
            None => Mapping::Unknown,
            Some(s) if s == mapped => Mapping::EndpointIndependent,
            Some(_) => Mapping::EndpointDependent,
        };
        let kind = NatKind {
            behind_nat: mapped != self.cfg.sockets[0],
            mapping,
            filtering: self.filtering,
            delta: delta::infer(&self.sessions),
        };
        self.outcome = Some(Outcome::Classified(NatClass {
            mapped,
            last_mapped: self.last_mapped.unwrap_or(mapped),
            kind,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::class::Delta;
    use crate::nat::sim::{SimNat, SimStun};

    /// Ephemeral-looking local ports: not evenly spaced, so a sequential
    /// NAT cannot be mistaken for one that follows the local port.
    const LOCAL_PORTS: [u16; 5] = [40000, 40213, 39555, 41777, 40101];

    fn lan_sockets() -> Vec<SocketAddrV4> {
        LOCAL_PORTS
            .iter()
            .map(|&p| SocketAddrV4::new([192, 168, 1, 2].into(), p))
            .collect()
    }

    struct Run {
        outcome: Outcome,
        sends: usize,
        took: Duration,
    }

    /// Drives one run through `nat` to `stun` under a simulated clock;
    /// `lose(n)` drops the n-th request sent.
    fn run_with(
        nat: &mut SimNat,
        stun: &SimStun,
        cfg: ClassifierConfig,
        mut lose: impl FnMut(usize) -> bool,
    ) -> Run {
        let start = Instant::now();
        let mut now = start;
        let sockets = cfg.sockets.clone();
        let mut c = Classifier::new(cfg, 7);
        let mut sends = 0;
        for _ in 0..1000 {
            if let Some(outcome) = c.outcome() {
                return Run {
                    outcome,
                    sends,
                    took: now - start,
                };
            }
            while let Some(req) = c.poll_request(now) {
                sends += 1;
                let mapped = nat.outbound(sockets[req.socket], req.to);
                if lose(sends - 1) {
                    continue;
                }
                let from = stun.answer_from(req.to, req.change.ip, req.change.port);
                if nat.inbound(from, mapped.port()) {
                    let reply = Reply {
                        txid: req.txid,
                        from,
                        mapped,
                        other: stun.other,
                    };
                    assert!(c.handle_reply(reply));
                }
            }
            if let Some(t) = c.poll_timeout() {
                now = now.max(t);
                c.handle_timeout(now);
            }
        }
        panic!("classifier did not finish in 1000 steps");
    }

    fn classify(nat: &mut SimNat, stun: &SimStun, sockets: Vec<SocketAddrV4>) -> NatKind {
        let cfg = ClassifierConfig::new(stun.primary, sockets);
        match run_with(nat, stun, cfg, |_| false).outcome {
            Outcome::Classified(c) => c.kind,
            Outcome::NoAnswer => panic!("no answer"),
        }
    }

    fn kind(mapping: Mapping, filtering: Filtering, delta: Delta) -> NatKind {
        NatKind {
            behind_nat: true,
            mapping,
            filtering,
            delta,
        }
    }

    #[test]
    fn each_simulated_nat_gets_its_class() {
        use Filtering as F;
        use Mapping::*;
        let stun = SimStun::two_addresses();
        let mut full = SimNat::new(
            false,
            crate::nat::sim::Filter::Open,
            crate::nat::sim::Alloc::Preserve,
            1,
        );
        let mut restricted = SimNat::new(
            false,
            crate::nat::sim::Filter::Address,
            crate::nat::sim::Alloc::Offset(1000),
            2,
        );
        let cases: Vec<(&str, &mut SimNat, NatKind)> = vec![
            (
                "full cone, port-preserving",
                &mut full,
                kind(EndpointIndependent, F::EndpointIndependent, Delta::Equal),
            ),
            (
                "restricted cone, offset ports",
                &mut restricted,
                kind(EndpointIndependent, F::AddressDependent, Delta::Preserving),
            ),
        ];
        for (name, nat, want) in cases {
            assert_eq!(classify(nat, &stun, lan_sockets()), want, "{name}");
        }
        let owned = [
            (
                "port-restricted cone",
                SimNat::port_restricted(3),
                kind(
                    EndpointIndependent,
                    F::AddressAndPortDependent,
                    Delta::Random,
                ),
            ),
            (
                "symmetric, sequential",
                SimNat::symmetric_sequential(4),
                kind(
                    EndpointDependent,
                    F::AddressAndPortDependent,
                    Delta::Independent(1),
                ),
            ),
            (
                "symmetric, random",
                SimNat::symmetric_random(5),
                kind(EndpointDependent, F::AddressAndPortDependent, Delta::Random),
            ),
        ];
        for (name, mut nat, want) in owned {
            assert_eq!(classify(&mut nat, &stun, lan_sockets()), want, "{name}");
        }
    }

    #[test]
    fn no_nat_is_told_apart_from_a_port_preserving_nat() {
        let stun = SimStun::two_addresses();
        let public: Vec<SocketAddrV4> = LOCAL_PORTS
            .iter()
            .map(|&p| SocketAddrV4::new([198, 51, 100, 7].into(), p))
            .collect();
        let open = classify(&mut SimNat::none(), &stun, public);
        assert_eq!(
            open,
            NatKind {
                behind_nat: false,
                mapping: Mapping::EndpointIndependent,
                filtering: Filtering::EndpointIndependent,
                delta: Delta::Equal,
            }
        );
        // The same answers from behind a port-preserving full cone: only
        // `behind_nat` differs (EasyTier's "NoPat" confusion, issue 13).
        let full = SimNat::new(
            false,
            crate::nat::sim::Filter::Open,
            crate::nat::sim::Alloc::Preserve,
            1,
        );
        let natted = classify(&mut { full }, &stun, lan_sockets());
        assert_eq!(
            natted,
            NatKind {
                behind_nat: true,
                ..open
            }
        );
    }

    #[test]
    fn a_bare_masquerade_cone_is_not_mistaken_for_symmetric() {
        // The filtering tests' unsolicited answers leave conntrack entries
        // that would remap a flow to their source (issue 13); they hit
        // socket 1, so socket 0's mapping test still sees one mapping.
        let stun = SimStun::two_addresses();
        let mut nat = SimNat::bare_masquerade();
        let got = classify(&mut nat, &stun, lan_sockets());
        assert_eq!(
            got,
            kind(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
                Delta::Equal
            )
        );
        // The same NAT does remap socket 1's flow to an endpoint that sent
        // first: the simulation has the clash the ordering avoids.
        let other = stun.other.unwrap();
        let first = nat.outbound(lan_sockets()[1], stun.primary);
        assert_ne!(nat.outbound(lan_sockets()[1], other), first);
    }

    #[test]
    fn server_with_only_an_alternate_port() {
        let stun = SimStun::alt_port_only();
        let full = classify(&mut SimNat::full_cone(1), &stun, lan_sockets());
        assert_eq!(full.filtering, Filtering::NotPortDependent);
        let restricted = classify(&mut SimNat::restricted(1), &stun, lan_sockets());
        assert_eq!(restricted.filtering, Filtering::NotPortDependent);
        let port = classify(&mut SimNat::port_restricted(1), &stun, lan_sockets());
        assert_eq!(port.filtering, Filtering::AddressAndPortDependent);
        let sym = classify(&mut SimNat::symmetric_random(1), &stun, lan_sockets());
        assert_eq!(sym.mapping, Mapping::EndpointDependent);
    }

    #[test]
    fn without_other_address_a_second_server_still_gives_the_mapping() {
        let stun = SimStun {
            primary: "192.0.2.1:3478".parse().unwrap(),
            other: None,
        };
        let mut cfg = ClassifierConfig::new(stun.primary, lan_sockets());
        cfg.fallback_second = Some("203.0.113.5:3478".parse().unwrap());
        let mut nat = SimNat::symmetric_sequential(1);
        let Outcome::Classified(c) = run_with(&mut nat, &stun, cfg, |_| false).outcome else {
            panic!("no answer")
        };
        assert_eq!(c.kind.mapping, Mapping::EndpointDependent);
        assert_eq!(c.kind.filtering, Filtering::Unknown);
        assert_eq!(c.kind.delta, Delta::Independent(1));
        // No OTHER-ADDRESS, so no filtering tests: socket 0 twice, then the
        // four other sockets: six sessions, the last one allocated 20005.
        assert_eq!(c.last_mapped.port(), 20005);
        let alone = ClassifierConfig::new(stun.primary, lan_sockets());
        let Outcome::Classified(c) =
            run_with(&mut SimNat::port_restricted(1), &stun, alone, |_| false).outcome
        else {
            panic!("no answer")
        };
        assert_eq!(c.kind.mapping, Mapping::Unknown);
    }

    #[test]
    fn lost_requests_are_retried_with_backoff() {
        let stun = SimStun::two_addresses();
        let cfg = ClassifierConfig::new(stun.primary, lan_sockets());
        let rto = cfg.rto;
        // The first two sends of the base test are lost; the third gets
        // through 250 + 500 ms later and the run still classifies right.
        let r = run_with(
            &mut SimNat::symmetric_sequential(1),
            &stun,
            cfg.clone(),
            |n| n < 2,
        );
        let Outcome::Classified(c) = r.outcome else {
            panic!("no answer")
        };
        assert_eq!(c.kind.mapping, Mapping::EndpointDependent);
        assert_eq!(c.kind.delta, Delta::Independent(1));
        assert!(r.took >= rto * 3, "took {:?}", r.took);

        // Everything lost: three sends, then NoAnswer after 250+500+1000 ms.
        let r = run_with(&mut SimNat::full_cone(1), &stun, cfg, |_| true);
        assert_eq!(r.outcome, Outcome::NoAnswer);
        assert_eq!(r.sends, 3);
        assert_eq!(r.took, rto * 7);
    }

    #[test]
    fn a_filtered_test_waits_out_every_retry() {
        // Port-restricted: ChangeBoth and ChangePort each send 3 times and
        // time out, then Second and the extra sockets answer at once.
        let stun = SimStun::two_addresses();
        let cfg = ClassifierConfig::new(stun.primary, lan_sockets());
        let r = run_with(&mut SimNat::port_restricted(1), &stun, cfg.clone(), |_| {
            false
        });
        assert_eq!(r.sends, 1 + 3 + 3 + 1 + 4);
        assert_eq!(r.took, cfg.rto * 14);
    }

    #[test]
    fn replies_that_match_nothing_are_ignored() {
        let stun = SimStun::two_addresses();
        let now = Instant::now();
        let mut c = Classifier::new(ClassifierConfig::new(stun.primary, lan_sockets()), 1);
        let req = c.poll_request(now).unwrap();
        assert_eq!(c.poll_request(now), None, "nothing more until the RTO");
        let mapped: SocketAddrV4 = "198.51.100.7:5000".parse().unwrap();
        let mut forged = Reply {
            txid: [0; 12],
            from: stun.primary,
            mapped,
            other: stun.other,
        };
        assert!(!c.handle_reply(forged));
        forged.txid = req.txid;
        assert!(c.handle_reply(forged));
        assert!(!c.handle_reply(forged), "a duplicate answers nothing");
        let second = c.poll_request(now).unwrap();
        assert_eq!((second.socket, second.to), (0, stun.other.unwrap()));
        assert!(c.handle_reply(Reply {
            txid: second.txid,
            ..forged
        }));
        let filter_base = c.poll_request(now).unwrap();
        assert_eq!((filter_base.socket, filter_base.to), (1, stun.primary));
        assert!(c.handle_reply(Reply {
            txid: filter_base.txid,
            ..forged
        }));
        // A server that ignores CHANGE-REQUEST answers from where it was
        // asked: that proves nothing about filtering.
        let change = c.poll_request(now).unwrap();
        assert_eq!(
            change.change,
            ChangeRequest {
                ip: true,
                port: true
            }
        );
        assert!(c.handle_reply(Reply {
            txid: change.txid,
            ..forged
        }));
        let port = c.poll_request(now).unwrap();
        assert_eq!(
            port.change,
            ChangeRequest {
                ip: false,
                port: true
            }
        );
        assert!(c.handle_reply(Reply {
            txid: port.txid,
            ..forged
        }));
        assert_eq!(c.filtering, Filtering::Unknown);
    }

    #[test]
    fn transaction_ids_come_from_the_seed() {
        let stun = SimStun::two_addresses();
        let first = |seed| {
            Classifier::new(ClassifierConfig::new(stun.primary, lan_sockets()), seed)
                .poll_request(Instant::now())
                .unwrap()
                .txid
        };
        assert_eq!(first(3), first(3));
        assert_ne!(first(3), first(4));
    }
}
