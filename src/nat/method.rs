//! The method table: which traversal a pair of nodes tries, from both
//! classifications and reachabilities. One pure function, the same on both
//! sides (each calls it with itself as "mine"; the answers mirror).
//!
//! Classification chooses the method; it never forbids trying. An unknown
//! class is taken as the strictest cone (port-restricted), which still gets
//! an attempt with every peer, and only a pair of *known* random symmetric
//! NATs stays on the relay: there a hit needs one side's random mapping and
//! the other's random target to coincide in both directions at once, so
//! with a and b probes per side P ≈ 1 − exp(−a·b/N²) (N = 64512 ports):
//! even odds take a·b ≈ ln 2·N², about 54 000 probes per side, far more
//! than any router's session table should be asked to hold.

use super::class::{Delta, Filtering, Mapping, NatKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Mine,
    Peer,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Side::Mine => Side::Peer,
            Side::Peer => Side::Mine,
        }
    }
}

/// One side's input to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNat {
    /// The published classification; None when unknown (not run yet, no
    /// STUN, a stock Candy peer).
    pub kind: Option<NatKind>,
    /// Anyone can reach this side's main socket: a configured
    /// `public_endpoint` (port forward), or no NAT and no filter.
    pub reachable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The unreachable side sends to the reachable one's endpoint, asking
    /// through the server first when the reachable side initiates (seed
    /// 003, strategy 2); the reachable side answers the source it sees.
    ReverseConnect { reachable: Side },
    /// Both send to each other's mapped endpoint at once and answer the
    /// source they see (Candy's punching): enough whenever one side's
    /// mapping serves every destination and the other's filter admits it.
    SimultaneousOpen,
    /// The `predicted` side's next mappings are guessed from its last one
    /// and its delta; the other side sprays that window
    /// ([`super::schedule::prediction`]). `Both`: each predicts the other.
    PortPrediction { predicted: Predicted },
    /// Many sockets on the `symmetric` side, random target ports from the
    /// other ([`super::schedule::birthday`]).
    Birthday { symmetric: Side },
    /// The `sequential` side's ports are predicted while the random side's
    /// are guessed ([`super::schedule::prediction_and_birthday`]).
    PredictionAndBirthday { sequential: Side },
    /// Stay on the relay; no packets spent on punching.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Predicted {
    Mine,
    Peer,
    Both,
}

/// What the table needs from a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hardness {
    /// One mapping for every destination; `port_filtered`: only the exact
    /// endpoint we sent to gets in (or we could not tell).
    Cone { port_filtered: bool },
    /// Mapping per destination, following a pattern.
    Predictable,
    /// Mapping per destination, at random.
    Random,
}

fn hardness(kind: Option<NatKind>) -> Hardness {
    let strictest_cone = Hardness::Cone {
        port_filtered: true,
    };
    let Some(k) = kind else { return strictest_cone };
    match (k.is_cone(), k.mapping, k.delta) {
        (true, _, _) => Hardness::Cone {
            port_filtered: !matches!(
                k.filtering,
                Filtering::EndpointIndependent
                    | Filtering::AddressDependent
                    | Filtering::NotPortDependent
            ),
        },
        (false, Mapping::EndpointDependent, Delta::Random) => Hardness::Random,
        // An unknown delta still gets the cheap prediction window.
        (false, Mapping::EndpointDependent, _) => Hardness::Predictable,
        // A single server could not tell the mapping: try as a cone.
        (false, _, _) => strictest_cone,
    }
}

/// The class maps per destination (sequential or random): its announced
/// mappings admit only the STUN server, so they are bases to predict
/// from, not endpoints to challenge.
pub fn is_symmetric(kind: Option<NatKind>) -> bool {
    matches!(hardness(kind), Hardness::Predictable | Hardness::Random)
}

fn side_if(mine: bool) -> Side {
    if mine {
        Side::Mine
    } else {
        Side::Peer
    }
}

/// The method `mine` should use with `peer`.
pub fn choose(mine: PeerNat, peer: PeerNat) -> Method {
    use Hardness::*;
    match (mine.reachable, peer.reachable) {
        (true, true) => return Method::SimultaneousOpen,
        (true, false) | (false, true) => {
            return Method::ReverseConnect {
                reachable: side_if(mine.reachable),
            }
        }
        (false, false) => {}
    }
    match (hardness(mine.kind), hardness(peer.kind)) {
        (Cone { .. }, Cone { .. }) => Method::SimultaneousOpen,
        // A filter that admits any port of an address we sent to lets the
        // symmetric side's fresh mapping in; we answer the source we see.
        (
            Cone {
                port_filtered: false,
            },
            Predictable | Random,
        )
        | (
            Predictable | Random,
            Cone {
                port_filtered: false,
            },
        ) => Method::SimultaneousOpen,
        (Cone { .. }, Predictable) => Method::PortPrediction {
            predicted: Predicted::Peer,
        },
        (Predictable, Cone { .. }) => Method::PortPrediction {
            predicted: Predicted::Mine,
        },
        (Predictable, Predictable) => Method::PortPrediction {
            predicted: Predicted::Both,
        },
        (Cone { .. }, Random) => Method::Birthday {
            symmetric: Side::Peer,
        },
        (Random, Cone { .. }) => Method::Birthday {
            symmetric: Side::Mine,
        },
        (Predictable, Random) => Method::PredictionAndBirthday {
            sequential: Side::Mine,
        },
        (Random, Predictable) => Method::PredictionAndBirthday {
            sequential: Side::Peer,
        },
        (Random, Random) => Method::Relay,
    }
}

/// Who moves first in a hard-NAT attempt. Both sides call [`plan`] and
/// get complementary roles, so neither waits for a step the other will not
/// take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Acts when the attempt starts, and again each round while no path
    /// is proven.
    Lead,
    /// Acts on each endpoint the peer announces during the attempt (the
    /// mapping of its fresh socket); after a wait without one, once on what
    /// it already knows, so a peer that never announces costs time only.
    Follow,
}

/// What one side does in one round of an attempt. "Fresh socket": opened
/// for the round, so every NAT session it has is the round's own; "announce":
/// its mapping, learned by STUN, goes to the peer in a UDP4CONN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A port-filtering cone in simultaneous open: a fresh socket probes
    /// the peer's mapping, then announces itself (a bare masquerade has
    /// given its main mapping towards the peer away to the peer's early
    /// probe).
    FreshPort,
    /// The sequential side of port prediction: a fresh socket asks STUN
    /// first, so its mapping is the newest port the NAT gave out, and
    /// announces it: the base of the window the peer sprays.
    Observe,
    /// Sequential ↔ sequential: observe, then, once the peer's observed
    /// base is known too, send `count` probes from the fresh socket to the
    /// peer's base + `stride`·Δ·k, k = 1…count (the leader strides by 2,
    /// the follower by 1: see [`super::schedule`]).
    ObserveAndStride { stride: i32, count: u16 },
    /// The sequential side of sequential ↔ random: observe, then send
    /// `count` probes to random ports of the peer from the fresh socket
    /// (its k-th probe leaves from base + k·Δ, where the peer aims).
    ObserveAndBirthday { count: u16 },
    /// A port-filtering cone against a sequential NAT: a fresh socket
    /// sprays the ports `behind` before to `ahead` after the peer's
    /// announced base (widened by the drift measured between its
    /// announcements), then announces itself.
    FreshPortWindow { behind: u16, ahead: u16 },
    /// A port-filtering cone against a random NAT: a fresh socket sprays
    /// `count` random ports of the peer, then announces itself.
    FreshPortBirthday { count: u16 },
    /// The random side against a cone: `count` sockets (opened once, then
    /// retargeted) each send one probe to the peer's announced endpoint.
    Sockets { count: u16 },
    /// The random side against a sequential NAT: `per_slot` sockets each
    /// send to the `slots` ports after the peer's announced base.
    SlotSockets { slots: u16, per_slot: u16 },
}

impl Step {
    /// A step that spends many probes or needs this NAT quiet while the
    /// peer predicts it: one such step runs per node at a time. A fresh
    /// port that only probes the peer's mapping costs three datagrams.
    pub fn is_hard(self) -> bool {
        !matches!(self, Step::FreshPort)
    }
}

/// One side's part in an attempt: the method, who moves first, what each
/// round does and how many rounds an attempt may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Plan {
    pub method: Method,
    pub role: Role,
    /// None: the tick's challenges are all this side sends.
    pub step: Option<Step>,
    /// A leader's rounds, or the announcements a follower acts on.
    pub rounds: u32,
    /// A follower whose leader stays silent acts once on what it knows,
    /// besides its `rounds` (only where the budget holds both).
    pub fallback: bool,
}

impl Plan {
    /// The most rounds of `step` one attempt may send.
    pub fn max_rounds(&self) -> u32 {
        self.rounds + u32::from(self.fallback)
    }
}

/// This side's plan with `peer`. `leads_ties` settles the one symmetric
/// case (both sequential), where each side predicts the other: the same
/// rule on both sides (the lower VIP leads) must give opposite answers.
pub fn plan(mine: PeerNat, peer: PeerNat, leads_ties: bool) -> Plan {
    use super::schedule as s;
    let method = choose(mine, peer);
    let lead = |step, rounds| Plan {
        method,
        role: Role::Lead,
        step: Some(step),
        rounds,
        fallback: false,
    };
    let follow = |step, rounds| Plan {
        method,
        role: Role::Follow,
        step: Some(step),
        rounds,
        fallback: s::packets_per_round(step) * (rounds as usize + 1) <= s::MAX_PACKETS_PER_ATTEMPT,
    };
    // Only a cone known to filter by port: the fresh port is for the
    // router that gave its mapping away, which classifies as exactly that.
    let port_filtered_cone = mine.kind.is_some_and(|k| {
        k.behind_nat && k.is_cone() && k.filtering == Filtering::AddressAndPortDependent
    });
    match method {
        Method::SimultaneousOpen if port_filtered_cone => lead(Step::FreshPort, 1),
        Method::PortPrediction {
            predicted: Predicted::Peer,
        } => follow(
            Step::FreshPortWindow {
                behind: s::WINDOW_BEHIND,
                ahead: s::WINDOW_AHEAD,
            },
            s::PREDICTION_ROUNDS,
        ),
        Method::PortPrediction {
            predicted: Predicted::Mine,
        } => lead(Step::Observe, s::PREDICTION_ROUNDS),
        Method::PortPrediction {
            predicted: Predicted::Both,
        } if leads_ties => lead(
            Step::ObserveAndStride {
                stride: 2,
                count: s::STRIDE_PROBES,
            },
            s::PREDICTION_ROUNDS,
        ),
        Method::PortPrediction {
            predicted: Predicted::Both,
        } => follow(
            Step::ObserveAndStride {
                stride: 1,
                count: 2 * s::STRIDE_PROBES,
            },
            s::PREDICTION_ROUNDS,
        ),
        Method::Birthday {
            symmetric: Side::Peer,
        } => lead(
            Step::FreshPortBirthday {
                count: s::BIRTHDAY_PROBES as u16,
            },
            s::BIRTHDAY_ROUNDS,
        ),
        Method::Birthday {
            symmetric: Side::Mine,
        } => follow(
            Step::Sockets {
                count: s::BIRTHDAY_SOCKETS as u16,
            },
            s::BIRTHDAY_ROUNDS,
        ),
        Method::PredictionAndBirthday {
            sequential: Side::Mine,
        } => lead(
            Step::ObserveAndBirthday {
                count: s::PB_SLOTS as u16,
            },
            1,
        ),
        Method::PredictionAndBirthday {
            sequential: Side::Peer,
        } => follow(
            Step::SlotSockets {
                slots: s::PB_SLOTS as u16,
                per_slot: s::PB_PER_SLOT as u16,
            },
            1,
        ),
        Method::ReverseConnect { .. } | Method::SimultaneousOpen | Method::Relay => Plan {
            method,
            role: Role::Lead,
            step: None,
            rounds: 0,
            fallback: false,
        },
    }
}

impl Method {
    /// Whether an attempt is a random draw (birthday): a miss says nothing
    /// about the next attempt, which is as likely to hit as the first.
    pub fn is_draw(self) -> bool {
        matches!(
            self,
            Method::Birthday { .. } | Method::PredictionAndBirthday { .. }
        )
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::ReverseConnect { .. } => "reverse connect",
            Method::SimultaneousOpen => "simultaneous open",
            Method::PortPrediction { .. } => "port prediction",
            Method::Birthday { .. } => "birthday",
            Method::PredictionAndBirthday { .. } => "prediction + birthday",
            Method::Relay => "relay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(mapping: Mapping, filtering: Filtering, delta: Delta) -> Option<NatKind> {
        Some(NatKind {
            behind_nat: true,
            mapping,
            filtering,
            delta,
        })
    }

    /// Representative classes, in the order of the table's rows and columns.
    fn classes() -> [(&'static str, PeerNat); 8] {
        use Filtering as F;
        use Mapping::*;
        let at = |kind| PeerNat {
            kind,
            reachable: false,
        };
        [
            (
                "open",
                PeerNat {
                    kind: Some(NatKind {
                        behind_nat: false,
                        mapping: EndpointIndependent,
                        filtering: F::EndpointIndependent,
                        delta: Delta::Equal,
                    }),
                    reachable: true,
                },
            ),
            (
                "full",
                at(nat(
                    EndpointIndependent,
                    F::EndpointIndependent,
                    Delta::Equal,
                )),
            ),
            (
                "restr",
                at(nat(
                    EndpointIndependent,
                    F::AddressDependent,
                    Delta::Preserving,
                )),
            ),
            (
                "port",
                at(nat(
                    EndpointIndependent,
                    F::AddressAndPortDependent,
                    Delta::Random,
                )),
            ),
            (
                "seq",
                at(nat(
                    EndpointDependent,
                    F::AddressAndPortDependent,
                    Delta::Independent(1),
                )),
            ),
            (
                "rand",
                at(nat(
                    EndpointDependent,
                    F::AddressAndPortDependent,
                    Delta::Random,
                )),
            ),
            ("unknown", at(None)),
            // A single STUN server: mapping unknown, filtering unknown.
            (
                "oneserver",
                at(nat(Mapping::Unknown, F::Unknown, Delta::Random)),
            ),
        ]
    }

    /// Short names for the expected table.
    fn code(m: Method) -> &'static str {
        match m {
            Method::ReverseConnect {
                reachable: Side::Mine,
            } => "RC<",
            Method::ReverseConnect {
                reachable: Side::Peer,
            } => "RC>",
            Method::SimultaneousOpen => "SO",
            Method::PortPrediction {
                predicted: Predicted::Mine,
            } => "PP<",
            Method::PortPrediction {
                predicted: Predicted::Peer,
            } => "PP>",
            Method::PortPrediction {
                predicted: Predicted::Both,
            } => "PP=",
            Method::Birthday {
                symmetric: Side::Mine,
            } => "BD<",
            Method::Birthday {
                symmetric: Side::Peer,
            } => "BD>",
            Method::PredictionAndBirthday {
                sequential: Side::Mine,
            } => "PB<",
            Method::PredictionAndBirthday {
                sequential: Side::Peer,
            } => "PB>",
            Method::Relay => "RELAY",
        }
    }

    /// Rows: mine; columns: peer (same order as `classes`). `<` points at
    /// mine, `>` at the peer.
    const EXPECTED: [[&str; 8]; 8] = [
        //      open   full   restr  port   seq    rand   unknown oneserver
        /*open*/
        ["SO", "RC<", "RC<", "RC<", "RC<", "RC<", "RC<", "RC<"],
        /*full*/ ["RC>", "SO", "SO", "SO", "SO", "SO", "SO", "SO"],
        /*restr*/ ["RC>", "SO", "SO", "SO", "SO", "SO", "SO", "SO"],
        /*port*/ ["RC>", "SO", "SO", "SO", "PP>", "BD>", "SO", "SO"],
        /*seq*/ ["RC>", "SO", "SO", "PP<", "PP=", "PB<", "PP<", "PP<"],
        /*rand*/ ["RC>", "SO", "SO", "BD<", "PB>", "RELAY", "BD<", "BD<"],
        /*unknown*/ ["RC>", "SO", "SO", "SO", "PP>", "BD>", "SO", "SO"],
        /*oneserver*/ ["RC>", "SO", "SO", "SO", "PP>", "BD>", "SO", "SO"],
    ];

    #[test]
    fn every_pair_gets_its_method() {
        let cs = classes();
        for (i, (mine_name, mine)) in cs.iter().enumerate() {
            for (j, (peer_name, peer)) in cs.iter().enumerate() {
                assert_eq!(
                    code(choose(*mine, *peer)),
                    EXPECTED[i][j],
                    "{mine_name} ↔ {peer_name}"
                );
            }
        }
    }

    #[test]
    fn both_sides_agree_on_the_method() {
        let mirror = |m: Method| match m {
            Method::ReverseConnect { reachable } => Method::ReverseConnect {
                reachable: reachable.other(),
            },
            Method::PortPrediction { predicted } => Method::PortPrediction {
                predicted: match predicted {
                    Predicted::Mine => Predicted::Peer,
                    Predicted::Peer => Predicted::Mine,
                    Predicted::Both => Predicted::Both,
                },
            },
            Method::Birthday { symmetric } => Method::Birthday {
                symmetric: symmetric.other(),
            },
            Method::PredictionAndBirthday { sequential } => Method::PredictionAndBirthday {
                sequential: sequential.other(),
            },
            m => m,
        };
        for (_, a) in classes() {
            for (_, b) in classes() {
                assert_eq!(choose(a, b), mirror(choose(b, a)));
            }
        }
    }

    #[test]
    fn only_two_known_random_nats_stay_on_the_relay() {
        let cs = classes();
        let relayed: Vec<_> = cs
            .iter()
            .flat_map(|(a, x)| cs.iter().map(move |(b, y)| ((*a, *b), choose(*x, *y))))
            .filter(|(_, m)| *m == Method::Relay)
            .map(|(names, _)| names)
            .collect();
        assert_eq!(relayed, vec![("rand", "rand")]);
        // A port forward on either side lifts even that pair.
        let (_, rand) = cs[5];
        let forwarded = PeerNat {
            reachable: true,
            ..rand
        };
        assert_eq!(
            choose(rand, forwarded),
            Method::ReverseConnect {
                reachable: Side::Peer
            }
        );
    }

    /// Short names for a plan: role, then the step.
    fn plan_code(p: Plan) -> &'static str {
        let lead = p.role == Role::Lead;
        match (lead, p.step) {
            (_, None) => "-",
            (true, Some(Step::FreshPort)) => "L:FP",
            (true, Some(Step::Observe)) => "L:OB",
            (true, Some(Step::ObserveAndStride { stride: 2, .. })) => "L:ST2",
            (false, Some(Step::ObserveAndStride { stride: 1, .. })) => "F:ST1",
            (true, Some(Step::ObserveAndBirthday { .. })) => "L:OBD",
            (false, Some(Step::FreshPortWindow { .. })) => "F:FPW",
            (true, Some(Step::FreshPortBirthday { .. })) => "L:FPB",
            (false, Some(Step::Sockets { .. })) => "F:SK",
            (false, Some(Step::SlotSockets { .. })) => "F:SL",
            _ => "??",
        }
    }

    /// What each side does, rows mine and columns peer as in `EXPECTED`.
    /// L: leads (acts at the start and each round), F: follows (acts on
    /// the peer's announcements). FP fresh port; OB observe; ST2/ST1
    /// observe, then stride 2/1 over the peer's base; OBD observe, then
    /// random ports; FPW fresh port spraying the window; FPB fresh port
    /// spraying random ports; SK birthday sockets; SL sockets aimed at
    /// predicted slots.
    const PLANS: [[&str; 8]; 8] = [
        //          open full  restr   port     seq      rand     unknown  oneserver
        /*open*/
        ["-", "-", "-", "-", "-", "-", "-", "-"],
        /*full*/ ["-", "-", "-", "-", "-", "-", "-", "-"],
        /*restr*/ ["-", "-", "-", "-", "-", "-", "-", "-"],
        /*port*/
        [
            "-", "L:FP", "L:FP", "L:FP", "F:FPW", "L:FPB", "L:FP", "L:FP",
        ],
        /*seq*/ ["-", "-", "-", "L:OB", "L:ST2", "L:OBD", "L:OB", "L:OB"],
        /*rand*/ ["-", "-", "-", "F:SK", "F:SL", "-", "F:SK", "F:SK"],
        /*unknown*/ ["-", "-", "-", "-", "F:FPW", "L:FPB", "-", "-"],
        /*oneserver*/ ["-", "-", "-", "-", "F:FPW", "L:FPB", "-", "-"],
    ];

    #[test]
    fn every_pair_gets_its_plan() {
        let cs = classes();
        for (i, (mine_name, mine)) in cs.iter().enumerate() {
            for (j, (peer_name, peer)) in cs.iter().enumerate() {
                let p = plan(*mine, *peer, true);
                assert_eq!(p.method, choose(*mine, *peer));
                assert_eq!(plan_code(p), PLANS[i][j], "{mine_name} ↔ {peer_name}");
            }
        }
    }

    #[test]
    fn every_hard_pair_has_one_leader_and_one_follower() {
        let cs = classes();
        for (a_name, a) in cs.iter() {
            for (b_name, b) in cs.iter() {
                // Each side computes with itself as "mine"; ties go to one.
                let (pa, pb) = (plan(*a, *b, true), plan(*b, *a, false));
                let follows = |p: Plan| p.step.is_some() && p.role == Role::Follow;
                if follows(pa) {
                    assert!(
                        pb.step.is_some() && pb.role == Role::Lead,
                        "{a_name} follows {b_name}, which does not lead"
                    );
                }
                if follows(pb) {
                    assert!(
                        pa.step.is_some() && pa.role == Role::Lead,
                        "{b_name} follows {a_name}, which does not lead"
                    );
                }
            }
        }
        // Two sequential NATs: the tie decides, and it decides one each way.
        let (_, seq) = cs[4];
        assert_eq!(plan_code(plan(seq, seq, true)), "L:ST2");
        assert_eq!(plan_code(plan(seq, seq, false)), "F:ST1");
    }

    #[test]
    fn followers_fall_back_where_the_budget_allows_it() {
        let cs = classes();
        let (port, seq, rand) = (cs[3].1, cs[4].1, cs[5].1);
        // A cone after a sequential peer, a random side after a cone: yes.
        assert!(plan(port, seq, true).fallback);
        assert!(plan(rand, port, true).fallback);
        assert!(plan(seq, seq, false).fallback);
        // A random side's slot sockets fill the budget in one round.
        assert!(!plan(rand, seq, true).fallback);
        assert!(!plan(seq, port, true).fallback, "leaders never wait");
    }

    #[test]
    fn every_plan_fits_the_attempt_budget() {
        use crate::nat::schedule as s;
        let cs = classes();
        for (_, a) in cs.iter() {
            for (_, b) in cs.iter() {
                for tie in [true, false] {
                    let p = plan(*a, *b, tie);
                    let packets = p.step.map_or(0, s::packets_per_round) * p.max_rounds() as usize;
                    assert!(
                        packets <= s::MAX_PACKETS_PER_ATTEMPT,
                        "{p:?}: {packets} packets"
                    );
                }
            }
        }
    }
}
