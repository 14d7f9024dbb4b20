//! ringlink's marker on Candy messages (docs/protocol.md §4.4, §5.2).
//!
//! Stock Candy receivers check only a message's minimum length, so bytes
//! after the fixed fields reach them unharmed and unread. ringlink appends
//! `"RL" version flags` to the messages that announce a node (HEARTBEAT on
//! UDP, UDP4CONN through the server): a peer carrying it speaks ringlink's
//! extensions (endpoint challenges), a peer without it gets Candy's exact
//! behaviour.
//!
//! After the marker come TLVs (type, length, value), which a receiver
//! skips when it does not know the type. Type 1 is the sender's NAT
//! classification (on UDP4CONN), so the peer can choose a traversal method;
//! type 2 is the sender's 32-byte X25519 public key (on UDP4CONN), which
//! the peer pins and runs the Noise handshake against (`crate::session`);
//! type 3 is the sender's TURN relayed address, which the peer sends to
//! through its own allocation when no direct path forms (docs/turn.md);
//! type 4 is the address where the sender accepts direct TCP streams,
//! offered to a peer that has no direct UDP path; type 5 proposes (or
//! accepts) a TCP hole punch: the sender's predicted TCP endpoint and the
//! instant, on the server's clock, when both connect (docs/tcp.md).

use std::net::{Ipv4Addr, SocketAddrV4};

/// Bytes of the marker.
pub const TAIL_LEN: usize = 4;
const MAGIC: [u8; 2] = *b"RL";
/// The extension set this build speaks. A receiver accepts any version at
/// or above 1: later versions only add messages, which it ignores.
pub const VERSION: u8 = 1;

const TLV_NAT: u8 = 1;
const TLV_KEY: u8 = 2;
const TLV_RELAYED: u8 = 3;
const TLV_TCP: u8 = 4;
const TLV_PUNCH: u8 = 5;
/// Bytes of TLV 5's value: IPv4 address, port, then the instant (Unix ns
/// on the server's clock, `u64` BE).
const PUNCH_LEN: usize = 14;
/// Bytes of the value of TLVs 3 and 4: IPv4 address and port.
const ADDR_LEN: usize = 6;
/// Bytes of TLV 2's value: an X25519 public key.
pub const KEY_LEN: usize = 32;

/// What a peer's marker says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub version: u8,
    /// Reserved; sent as 0, ignored on receipt.
    pub flags: u8,
    /// The sender's NAT classification, when it has one.
    pub nat: Option<NatAdvert>,
    /// TLV 2: the sender's static public key, when it has one.
    pub key: Option<[u8; KEY_LEN]>,
    /// TLV 3: the sender's TURN relayed address, while it has one.
    pub relayed: Option<SocketAddrV4>,
    /// TLV 4: where the sender accepts direct TCP streams.
    pub tcp: Option<SocketAddrV4>,
    /// TLV 5: a TCP hole punch, proposed or accepted.
    pub punch: Option<Punch>,
}

/// TLV 5: connect from `endpoint` (as the sender predicts its NAT maps
/// it) at `at`, Unix ns on the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punch {
    pub endpoint: SocketAddrV4,
    pub at: u64,
}

/// TLV 1: a NAT classification in wire codes (`crate::nat` gives them
/// meaning). 14 bytes:
///
/// | off | size | field |
/// | --- | --- | --- |
/// | 0 | 1 | mapping: 0 unknown, 1 endpoint-independent, 2 endpoint-dependent |
/// | 1 | 1 | filtering: 0 unknown, 1 endpoint-independent, 2 address-dependent, 3 address-and-port-dependent, 4 not port-dependent |
/// | 2 | 1 | delta: 0 unknown, 1 equal, 2 preserving, 3 independent, 4 dependent, 5 random |
/// | 3 | 1 | flags: bit 0 behind a NAT, bit 1 reachable by anyone |
/// | 4 | 4 | delta value, `i32` BE |
/// | 8 | 6 | the latest mapping seen: IPv4, port BE |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatAdvert {
    pub mapping: u8,
    pub filtering: u8,
    pub delta_kind: u8,
    pub flags: u8,
    pub delta: i32,
    pub last_mapped: SocketAddrV4,
}

impl NatAdvert {
    pub const LEN: usize = 14;
    pub const BEHIND_NAT: u8 = 1;
    pub const REACHABLE: u8 = 2;

    fn decode(v: &[u8]) -> Option<Self> {
        let v: &[u8; Self::LEN] = v.get(..Self::LEN)?.try_into().ok()?;
        Some(NatAdvert {
            mapping: v[0],
            filtering: v[1],
            delta_kind: v[2],
            flags: v[3],
            delta: i32::from_be_bytes([v[4], v[5], v[6], v[7]]),
            last_mapped: SocketAddrV4::new(
                Ipv4Addr::new(v[8], v[9], v[10], v[11]),
                u16::from_be_bytes([v[12], v[13]]),
            ),
        })
    }

    fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0u8; Self::LEN];
        v[..4].copy_from_slice(&[self.mapping, self.filtering, self.delta_kind, self.flags]);
        v[4..8].copy_from_slice(&self.delta.to_be_bytes());
        v[8..12].copy_from_slice(&self.last_mapped.ip().octets());
        v[12..].copy_from_slice(&self.last_mapped.port().to_be_bytes());
        v
    }
}

impl Tail {
    pub const OURS: Tail = Tail {
        version: VERSION,
        flags: 0,
        nat: None,
        key: None,
        relayed: None,
        tcp: None,
        punch: None,
    };

    /// Reads the marker and its TLVs from the bytes after a message's fixed
    /// fields. Anything else there (a stock peer's garbage, nothing) is no
    /// marker; a TLV cut short ends the reading, unknown types are skipped.
    pub fn read(rest: &[u8]) -> Option<Tail> {
        let [m0, m1, version, flags, ref tlvs @ ..] = *rest else {
            return None;
        };
        if [m0, m1] != MAGIC || version < 1 {
            return None;
        }
        let mut tail = Tail {
            version,
            flags,
            nat: None,
            key: None,
            relayed: None,
            tcp: None,
            punch: None,
        };
        let mut at = tlvs;
        while let [ty, len, ref more @ ..] = *at {
            let Some(value) = more.get(..usize::from(len)) else {
                break;
            };
            match ty {
                TLV_NAT => tail.nat = NatAdvert::decode(value),
                // Any other length is no key: skipped, like an unknown type.
                TLV_KEY => tail.key = value.try_into().ok(),
                TLV_RELAYED => tail.relayed = decode_addr(value),
                TLV_TCP => tail.tcp = decode_addr(value),
                TLV_PUNCH if value.len() == PUNCH_LEN => {
                    tail.punch = decode_addr(&value[..ADDR_LEN]).map(|endpoint| Punch {
                        endpoint,
                        at: u64::from_be_bytes(value[ADDR_LEN..].try_into().unwrap_or_default()),
                    })
                }
                _ => {}
            }
            at = &more[usize::from(len)..];
        }
        Some(tail)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MAGIC[0], MAGIC[1], self.version, self.flags];
        if let Some(nat) = &self.nat {
            out.extend_from_slice(&[TLV_NAT, NatAdvert::LEN as u8]);
            out.extend_from_slice(&nat.encode());
        }
        if let Some(key) = &self.key {
            out.extend_from_slice(&[TLV_KEY, KEY_LEN as u8]);
            out.extend_from_slice(key);
        }
        for (ty, addr) in [(TLV_RELAYED, &self.relayed), (TLV_TCP, &self.tcp)] {
            if let Some(a) = addr {
                out.extend_from_slice(&[ty, ADDR_LEN as u8]);
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        if let Some(p) = &self.punch {
            out.extend_from_slice(&[TLV_PUNCH, PUNCH_LEN as u8]);
            out.extend_from_slice(&p.endpoint.ip().octets());
            out.extend_from_slice(&p.endpoint.port().to_be_bytes());
            out.extend_from_slice(&p.at.to_be_bytes());
        }
        out
    }
}

/// An address of exactly 6 bytes; any other length is skipped like an
/// unknown type.
fn decode_addr(v: &[u8]) -> Option<SocketAddrV4> {
    let v: &[u8; ADDR_LEN] = v.try_into().ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(v[0], v[1], v[2], v[3]),
        u16::from_be_bytes([v[4], v[5]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_lookalikes() {
        assert_eq!(Tail::OURS.encode(), b"RL\x01\x00");
        assert_eq!(Tail::read(&Tail::OURS.encode()), Some(Tail::OURS));
        assert_eq!(
            Tail::read(b"RL\x02\x05more"),
            Some(Tail {
                version: 2,
                flags: 5,
                nat: None,
                key: None,
                relayed: None,
                tcp: None,
                punch: None,
            })
        );
        for rest in [
            &b""[..],
            b"RL\x01",
            b"RL\x00\x00",
            b"rl\x01\x00",
            b"\0\0\0\0",
        ] {
            assert_eq!(Tail::read(rest), None, "{rest:?}");
        }
    }

    #[test]
    fn nat_tlv_vector_and_skipping() {
        let nat = NatAdvert {
            mapping: 2,
            filtering: 3,
            delta_kind: 3,
            flags: NatAdvert::BEHIND_NAT,
            delta: 1,
            last_mapped: "198.51.100.7:20005".parse().unwrap(),
        };
        let tail = Tail {
            nat: Some(nat),
            ..Tail::OURS
        };
        let wire = tail.encode();
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "524c0100010e0203030100000001c63364074e25");
        assert_eq!(Tail::read(&wire), Some(tail));
        // An unknown TLV before it is skipped; a cut one ends the reading.
        let mut skipping = b"RL\x01\x00\x09\x02ab".to_vec();
        skipping.extend_from_slice(&wire[4..]);
        assert_eq!(Tail::read(&skipping), Some(tail));
        assert_eq!(Tail::read(&wire[..wire.len() - 1]), Some(Tail::OURS));
    }

    #[test]
    fn key_tlv_vector() {
        let key: [u8; KEY_LEN] = core::array::from_fn(|i| i as u8);
        let tail = Tail {
            key: Some(key),
            ..Tail::OURS
        };
        let wire = tail.encode();
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "524c01000220000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        );
        assert_eq!(Tail::read(&wire), Some(tail));
        // Both TLVs: NAT first, then the key, each read.
        let nat = NatAdvert {
            mapping: 1,
            filtering: 1,
            delta_kind: 1,
            flags: 0,
            delta: 0,
            last_mapped: "198.51.100.7:20005".parse().unwrap(),
        };
        let both = Tail {
            nat: Some(nat),
            key: Some(key),
            ..Tail::OURS
        };
        assert_eq!(Tail::read(&both.encode()), Some(both));
        // A key TLV of another length is skipped; one cut short is not read.
        assert_eq!(Tail::read(b"RL\x01\x00\x02\x03abc"), Some(Tail::OURS));
        assert_eq!(Tail::read(&wire[..wire.len() - 1]), Some(Tail::OURS));
    }

    #[test]
    fn relayed_tlv_vector() {
        let tail = Tail {
            relayed: Some("203.0.113.5:49152".parse().unwrap()),
            ..Tail::OURS
        };
        let wire = tail.encode();
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "524c01000306cb007105c000");
        assert_eq!(Tail::read(&wire), Some(tail));
        // Another length is skipped, a cut one not read.
        assert_eq!(Tail::read(b"RL\x01\x00\x03\x05abcde"), Some(Tail::OURS));
        assert_eq!(Tail::read(&wire[..wire.len() - 1]), Some(Tail::OURS));
    }

    #[test]
    fn tcp_tlv_vector_and_beside_the_relayed_one() {
        let tail = Tail {
            tcp: Some("203.0.113.5:41000".parse().unwrap()),
            ..Tail::OURS
        };
        let wire = tail.encode();
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "524c01000406cb007105a028");
        assert_eq!(Tail::read(&wire), Some(tail));
        let both = Tail {
            relayed: Some("198.51.100.1:3478".parse().unwrap()),
            ..tail
        };
        assert_eq!(Tail::read(&both.encode()), Some(both));
        assert_eq!(Tail::read(b"RL\x01\x00\x04\x04abcd"), Some(Tail::OURS));
    }

    #[test]
    fn punch_tlv_round_trips_and_other_lengths_are_skipped() {
        let tail = Tail {
            punch: Some(Punch {
                endpoint: "203.0.113.5:41000".parse().unwrap(),
                at: 0x0102_0304_0506_0708,
            }),
            ..Tail::OURS
        };
        let wire = tail.encode();
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "524c0100050ecb007105a0280102030405060708");
        assert_eq!(Tail::read(&wire), Some(tail));
        assert_eq!(Tail::read(b"RL\x01\x00\x05\x06abcdef"), Some(Tail::OURS));
    }
}
