//! The vocabulary of a classification: RFC 4787 mapping and filtering
//! behaviour plus P2PD's delta type and value (seeds 003/004).

use std::net::SocketAddrV4;

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
