//! The seven per-peer states of the seed (PROTOCOL.md §5).

use std::fmt;

/// Where one remote VIP stands in the direct-path negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerState {
    /// Known, nothing in progress; left only by try-P2P or public info.
    Init,
    /// Waiting for our own STUN mapping.
    Preparing,
    /// Our public info is sent; the peer's has not arrived.
    Synchronizing,
    /// Both public endpoints known; punching with heartbeats.
    Connecting,
    /// Direct path in use.
    Connected,
    /// Punching failed; backing off before the next attempt.
    Waiting,
    /// The peer (or this node) cannot do P2P; only public info revives it.
    Failed,
}

impl PeerState {
    /// Every state, in declaration order (handy for exhaustive tests and status output).
    pub const ALL: [PeerState; 7] = [
        PeerState::Init,
        PeerState::Preparing,
        PeerState::Synchronizing,
        PeerState::Connecting,
        PeerState::Connected,
        PeerState::Waiting,
        PeerState::Failed,
    ];

    /// Candy's spelling, so `ringlink status` reads like Candy's logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Init => "INIT",
            PeerState::Preparing => "PREPARING",
            PeerState::Synchronizing => "SYNCHRONIZING",
            PeerState::Connecting => "CONNECTING",
            PeerState::Connected => "CONNECTED",
            PeerState::Waiting => "WAITING",
            PeerState::Failed => "FAILED",
        }
    }

    /// Entering one of these forgets the candidates and the ack (§5.1 Reset).
    pub fn resets_on_entry(self) -> bool {
        matches!(
            self,
            PeerState::Init | PeerState::Waiting | PeerState::Failed
        )
    }

    /// Heartbeats arriving in these states are dropped (§5.3).
    pub fn ignores_heartbeats(self) -> bool {
        matches!(
            self,
            PeerState::Init | PeerState::Waiting | PeerState::Failed
        )
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_heartbeat_sets_match_spec() {
        let resets: Vec<_> = PeerState::ALL
            .into_iter()
            .filter(|s| s.resets_on_entry())
            .collect();
        assert_eq!(
            resets,
            [PeerState::Init, PeerState::Waiting, PeerState::Failed]
        );
        let deaf: Vec<_> = PeerState::ALL
            .into_iter()
            .filter(|s| s.ignores_heartbeats())
            .collect();
        assert_eq!(deaf, resets);
        assert_eq!(PeerState::Synchronizing.to_string(), "SYNCHRONIZING");
    }
}
