//! The vocabulary of a classification: RFC 4787 mapping and filtering
//! behaviour plus P2PD's delta type and value (seeds 003/004).

use std::fmt;
use std::net::SocketAddrV4;

use crate::proto::ext::NatAdvert;

/// How the NAT picks the public endpoint for a new destination (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// One public endpoint per local socket, whatever the destination ("cone").
    EndpointIndependent,
    /// A new public endpoint per destination ("symmetric").
    EndpointDependent,
    /// No second server endpoint answered, so it could not be told.
    Unknown,
}

/// Which inbound datagrams reach a mapped socket (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone may send to the mapping ("full cone").
    EndpointIndependent,
    /// Only addresses we sent to, from any port ("restricted cone").
    AddressDependent,
    /// Only exact endpoints we sent to ("port-restricted cone").
    AddressAndPortDependent,
    /// A reply from another port got through, but the server has no second
    /// address to tell endpoint-independent from address-dependent.
    NotPortDependent,
    /// The server does not support CHANGE-REQUEST (no OTHER-ADDRESS).
    Unknown,
}

/// P2PD's delta type and value: how successive new mappings (new local
/// socket, or new destination on a symmetric NAT) relate to each other,
/// taken in the order the NAT allocated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delta {
    /// Mapped port == local port (port-preserving NAT, or no NAT).
    Equal,
    /// Mapped port − local port is one constant: the NAT keeps the
    /// distances between local ports.
    Preserving,
    /// Each new mapping is the previous one + Δ, whatever the local port
    /// ("sequential").
    Independent(i32),
    /// Mapped steps are Δ × the local-port steps: the mapping follows the
    /// local port with a scale.
    Dependent(i32),
    /// No pattern: the NAT picks ports at random.
    Random,
    /// Too few mappings were seen to tell.
    Unknown,
}

/// The parts of a classification that choose a traversal method; two runs
/// agree when their kinds are equal (the public endpoint may move freely).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatKind {
    /// The mapped address differs from the local one.
    pub behind_nat: bool,
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub delta: Delta,
}

/// One finished classification run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatClass {
    /// The main socket's mapping as the primary server saw it.
    pub mapped: SocketAddrV4,
    /// The most recent new mapping seen in the run: port prediction starts
    /// from the peer's last allocation, not its first.
    pub last_mapped: SocketAddrV4,
    pub kind: NatKind,
}

impl NatKind {
    /// A cone: one mapping serves every destination.
    pub fn is_cone(&self) -> bool {
        !self.behind_nat || self.mapping == Mapping::EndpointIndependent
    }
}

/// What a peer told us about its NAT (the UDP4CONN marker's TLV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    pub kind: NatKind,
    pub last_mapped: SocketAddrV4,
    /// Anyone can reach the peer's main socket (a port forward).
    pub reachable: bool,
}

impl NatClass {
    /// This class in the marker's wire codes.
    pub fn advert(&self, reachable: bool) -> NatAdvert {
        let k = &self.kind;
        let (delta_kind, delta) = match k.delta {
            Delta::Unknown => (0, 0),
            Delta::Equal => (1, 0),
            Delta::Preserving => (2, 0),
            Delta::Independent(d) => (3, d),
            Delta::Dependent(d) => (4, d),
            Delta::Random => (5, 0),
        };
        let mut flags = 0;
        if k.behind_nat {
            flags |= NatAdvert::BEHIND_NAT;
        }
        if reachable {
            flags |= NatAdvert::REACHABLE;
        }
        NatAdvert {
            mapping: match k.mapping {
                Mapping::Unknown => 0,
                Mapping::EndpointIndependent => 1,
                Mapping::EndpointDependent => 2,
            },
            filtering: match k.filtering {
                Filtering::Unknown => 0,
                Filtering::EndpointIndependent => 1,
                Filtering::AddressDependent => 2,
                Filtering::AddressAndPortDependent => 3,
                Filtering::NotPortDependent => 4,
            },
            delta_kind,
            flags,
            delta,
            last_mapped: self.last_mapped,
        }
    }
}

/// The advert of a node that has no classification yet but knows it is
/// reachable at `public` (a configured port forward): every code unknown,
/// the reachable flag set.
pub fn reachable_advert(public: SocketAddrV4) -> NatAdvert {
    NatAdvert {
        mapping: 0,
        filtering: 0,
        delta_kind: 0,
        flags: NatAdvert::REACHABLE,
        delta: 0,
        last_mapped: public,
    }
}

impl Advertised {
    /// Codes this build does not know read as "unknown", which the method
    /// table treats as the strictest cone: still tried, never refused.
    pub fn from_wire(a: &NatAdvert) -> Self {
        let mapping = match a.mapping {
            1 => Mapping::EndpointIndependent,
            2 => Mapping::EndpointDependent,
            _ => Mapping::Unknown,
        };
        let filtering = match a.filtering {
            1 => Filtering::EndpointIndependent,
            2 => Filtering::AddressDependent,
            3 => Filtering::AddressAndPortDependent,
            4 => Filtering::NotPortDependent,
            _ => Filtering::Unknown,
        };
        let delta = match a.delta_kind {
            1 => Delta::Equal,
            2 => Delta::Preserving,
            3 => Delta::Independent(a.delta),
            4 => Delta::Dependent(a.delta),
            5 => Delta::Random,
            _ => Delta::Unknown,
        };
        Advertised {
            kind: NatKind {
                behind_nat: a.flags & NatAdvert::BEHIND_NAT != 0,
                mapping,
                filtering,
                delta,
            },
            last_mapped: a.last_mapped,
            reachable: a.flags & NatAdvert::REACHABLE != 0,
        }
    }
}

impl fmt::Display for NatKind {
    /// Short and stable, for `ringlink status`: "none", "cone/full",
    /// "cone/restricted", "cone/port-restricted", "symmetric/+1",
    /// "symmetric/random", …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nothing_known = self.mapping == Mapping::Unknown
            && self.filtering == Filtering::Unknown
            && self.delta == Delta::Unknown;
        if nothing_known {
            return f.write_str("unknown");
        }
        if !self.behind_nat {
            return f.write_str("none");
        }
        match self.mapping {
            Mapping::EndpointIndependent => {
                let filter = match self.filtering {
                    Filtering::EndpointIndependent => "full",
                    Filtering::AddressDependent => "restricted",
                    Filtering::AddressAndPortDependent => "port-restricted",
                    Filtering::NotPortDependent => "restricted-or-full",
                    Filtering::Unknown => "unknown-filter",
                };
                write!(f, "cone/{filter}")
            }
            Mapping::EndpointDependent => match self.delta {
                Delta::Independent(d) | Delta::Dependent(d) => write!(f, "symmetric/{d:+}"),
                Delta::Random => f.write_str("symmetric/random"),
                Delta::Equal | Delta::Preserving => f.write_str("symmetric/preserving"),
                Delta::Unknown => f.write_str("symmetric/unknown"),
            },
            Mapping::Unknown => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip_every_kind() {
        let last: SocketAddrV4 = "198.51.100.7:20005".parse().unwrap();
        for mapping in [
            Mapping::Unknown,
            Mapping::EndpointIndependent,
            Mapping::EndpointDependent,
        ] {
            for filtering in [
                Filtering::Unknown,
                Filtering::EndpointIndependent,
                Filtering::AddressDependent,
                Filtering::AddressAndPortDependent,
                Filtering::NotPortDependent,
            ] {
                for delta in [
                    Delta::Unknown,
                    Delta::Equal,
                    Delta::Preserving,
                    Delta::Independent(-3),
                    Delta::Dependent(2),
                    Delta::Random,
                ] {
                    for behind_nat in [false, true] {
                        let kind = NatKind {
                            behind_nat,
                            mapping,
                            filtering,
                            delta,
                        };
                        let class = NatClass {
                            mapped: last,
                            last_mapped: last,
                            kind,
                        };
                        let back = Advertised::from_wire(&class.advert(true));
                        assert_eq!(
                            (back.kind, back.last_mapped, back.reachable),
                            (kind, last, true)
                        );
                    }
                }
            }
        }
        let unknown = NatAdvert {
            mapping: 9,
            filtering: 9,
            delta_kind: 9,
            flags: 0,
            delta: 0,
            last_mapped: last,
        };
        let k = Advertised::from_wire(&unknown).kind;
        assert_eq!(
            (k.mapping, k.filtering, k.delta),
            (Mapping::Unknown, Filtering::Unknown, Delta::Unknown)
        );
    }

    #[test]
    fn labels() {
        let k = |mapping, filtering, delta| NatKind {
            behind_nat: true,
            mapping,
            filtering,
            delta,
        };
        use Filtering as F;
        use Mapping as M;
        assert_eq!(
            k(
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                Delta::Equal
            )
            .to_string(),
            "cone/port-restricted"
        );
        assert_eq!(
            k(
                M::EndpointDependent,
                F::AddressAndPortDependent,
                Delta::Independent(1)
            )
            .to_string(),
            "symmetric/+1"
        );
        assert_eq!(
            k(M::EndpointDependent, F::Unknown, Delta::Random).to_string(),
            "symmetric/random"
        );
    }
}
