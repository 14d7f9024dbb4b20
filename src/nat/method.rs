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
}
