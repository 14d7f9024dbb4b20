//! ringlink's marker on Candy messages (docs/protocol.md §4.4, §5.2).
//!
//! Stock Candy receivers check only a message's minimum length, so bytes
//! after the fixed fields reach them unharmed and unread. ringlink appends
//! `"RL" version flags` to the messages that announce a node (HEARTBEAT on
//! UDP, UDP4CONN through the server): a peer carrying it speaks ringlink's
//! extensions (endpoint challenges), a peer without it gets Candy's exact
//! behaviour.

/// Bytes of the marker.
pub const TAIL_LEN: usize = 4;
const MAGIC: [u8; 2] = *b"RL";
/// The extension set this build speaks. A receiver accepts any version at
/// or above 1: later versions only add messages, which it ignores.
pub const VERSION: u8 = 1;

/// What a peer's marker says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub version: u8,
    /// Reserved; sent as 0, ignored on receipt.
    pub flags: u8,
}

impl Tail {
    pub const OURS: Tail = Tail {
        version: VERSION,
        flags: 0,
    };

    /// Reads the marker from the bytes after a message's fixed fields.
    /// Anything else there (a stock peer's garbage, nothing) is no marker.
    pub fn read(rest: &[u8]) -> Option<Tail> {
        match rest {
            [m0, m1, version, flags, ..] if [*m0, *m1] == MAGIC && *version >= 1 => Some(Tail {
                version: *version,
                flags: *flags,
            }),
            _ => None,
        }
    }

    pub fn encode(self) -> [u8; TAIL_LEN] {
        [MAGIC[0], MAGIC[1], self.version, self.flags]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_lookalikes() {
        assert_eq!(Tail::OURS.encode(), *b"RL\x01\x00");
        assert_eq!(Tail::read(&Tail::OURS.encode()), Some(Tail::OURS));
        assert_eq!(
            Tail::read(b"RL\x02\x05more"),
            Some(Tail {
                version: 2,
                flags: 5
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
}
