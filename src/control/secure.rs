//! The node's keys, pins and handshakes (issue 14), kept beside the node
//! so `node.rs` only routes messages here and carries out what comes back.
//!
//! Sans-IO like the node: the pin store's new text comes out for the
//! driver to write, the handshake messages come out for the node to send
//! (direct path if there is one, else the relay), and `now` comes in.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::dataplane::Sealer;
use crate::proto::crypto::CipherKind;
use crate::session::handshake::{
    psk_from_password, HandshakeConfig, HandshakeError, HandshakeStats, Handshakes,
};
use crate::session::keys::{NodeKey, PublicKey};
use crate::session::pins::{PinStore, Verdict};
use crate::session::timers::HandshakeTimers;
use crate::session::transport::{Role, Session};

/// What a node needs to take part in handshakes, built at startup (where
/// the key file and the pins file are read).
#[derive(Clone)]
pub struct Identity {
    pub key: NodeKey,
    pub pins: PinStore,
    pub timers: HandshakeTimers,
    /// Wall-clock time (since the Unix epoch) at the node's `now` of
    /// construction: initiation timestamps must grow across restarts.
    pub wall_clock: Duration,
}

/// A peer's key as `ringlink status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyLine {
    pub fingerprint: String,
    /// "pinned" (the client's `peers`) or "tofu" (first use).
    pub source: String,
}

/// The sessions as the dataplane snapshot holds them.
#[derive(Debug, Default)]
pub struct SessionTables {
    pub seals: HashMap<Ipv4Addr, Sealer>,
    pub open: HashMap<u32, Arc<Session>>,
    pub protected: HashSet<Ipv4Addr>,
}

pub struct Secure {
    handshakes: Handshakes,
    pins: PinStore,
    /// The last refused key of each VIP: a peer that keeps announcing it
    /// is counted every time and logged once.
    refused: HashMap<Ipv4Addr, PublicKey>,
}

impl Secure {
    pub fn new(
        own: Ipv4Addr,
        password: &[u8],
        cipher: CipherKind,
        id: Identity,
        seed: u64,
        now: Instant,
    ) -> Self {
        let handshakes = Handshakes::new(
            HandshakeConfig {
                own,
                key: id.key,
                psk: psk_from_password(password),
                cipher,
                timers: id.timers,
                seed,
                wall_clock: id.wall_clock,
            },
            now,
        );
        Secure {
            handshakes,
            pins: id.pins,
            refused: HashMap::new(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.handshakes.public_key()
    }

    pub fn stats(&self) -> HandshakeStats {
        self.handshakes.stats
    }

    /// A ringlink peer announced its key (UDP4CONN, TLV 2). Returns the
    /// pins file's new text when this pinned a key for the first time.
    pub fn announced(&mut self, vip: Ipv4Addr, key: PublicKey, now: Instant) -> Option<String> {
        match self.pins.observe(vip, key) {
            Verdict::Known => {
                self.handshakes.peer_key(vip, key, now);
                None
            }
            Verdict::PinnedNow => {
                info!(peer = %vip, key = %key, "pinned the peer's key (first use)");
                self.handshakes.peer_key(vip, key, now);
                Some(self.pins.encode())
            }
            Verdict::Changed { pinned } => {
                self.handshakes.stats.keys_refused += 1;
                self.log_refusal(vip, pinned, key);
                None
            }
        }
    }

    /// A reloaded `peers`: the configured pins are replaced. A VIP whose
    /// key changed loses its sessions and starts a handshake with the new
    /// key; one no longer configured loses them and is pinned afresh on
    /// its next announcement. Returns the pins file's new text when a
    /// remembered pin was replaced.
    pub fn set_configured_pins(&mut self, config: &[(Ipv4Addr, PublicKey)], now: Instant) -> usize {
        let changed = self.pins.set_configured(config);
        for &(vip, key) in &changed {
            self.refused.remove(&vip);
            match key {
                Some(key) => {
                    info!(peer = %vip, key = %key, "pinned key changed by reload: new session with it");
                    self.handshakes.peer_key(vip, key, now);
                }
                None => {
                    info!(peer = %vip, "pin removed by reload: its sessions end, its next key is pinned on first use");
                    self.handshakes.forget(vip);
                }
            }
        }
        changed.len()
    }

    fn log_refusal(&mut self, vip: Ipv4Addr, pinned: PublicKey, offered: PublicKey) {
        if self.refused.insert(vip, offered) != Some(offered) {
            let how = self.pins.get(vip).map_or("", |(_, s)| s.as_str());
            warn!(
                "refusing a changed key for {vip}: pinned {pinned} ({how}), offered {offered}; \
                 no session with it (remove its line from the pins file if the change is genuine)"
            );
        }
    }

    /// A handshake or transport message from `peer`'s direction; returns
    /// the reply to send back the same way, and for whom.
    pub fn handle(&mut self, msg: &[u8], now: Instant) -> Option<(Ipv4Addr, Vec<u8>)> {
        match self.handshakes.handle(msg, now) {
            Ok(h) => {
                if let Some(role) = h.established {
                    let role = match role {
                        Role::Initiator => "initiator",
                        Role::Responder => "responder",
                    };
                    info!(peer = %h.peer, role, "handshake complete: session keys ready");
                }
                h.reply.map(|r| (h.peer, r))
            }
            Err(HandshakeError::KeyChanged {
                vip,
                pinned,
                offered,
            }) => {
                self.log_refusal(vip, pinned, offered);
                None
            }
            Err(e) => {
                debug!(error = %e, "handshake message dropped");
                None
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(Ipv4Addr, Vec<u8>)> {
        self.handshakes.poll_transmit()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.handshakes.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.handshakes.handle_timeout(now);
    }

    /// The dataplane opened the first message of our session `index`.
    pub fn session_used(&mut self, index: u32) {
        self.handshakes.confirmed(index);
    }

    /// Changes whenever what [`Secure::dataplane`] returns does.
    pub fn generation(&self) -> u64 {
        self.handshakes.generation()
    }

    /// What the dataplane seals with per peer, every session that may
    /// open, and the peers that seal with us.
    pub fn dataplane(&self) -> SessionTables {
        let mut t = SessionTables::default();
        for (vip, s) in self.handshakes.published() {
            if let Some(seal) = s.seal {
                t.seals.insert(vip, Sealer(seal));
            }
            for o in s.open {
                t.open.insert(o.local_index, o);
            }
            if s.protected {
                t.protected.insert(vip);
            }
        }
        t
    }

    /// Whether `vip` seals with us, so nothing from it counts unsealed.
    pub fn protected(&self, vip: Ipv4Addr) -> bool {
        self.handshakes.protected(vip)
    }

    /// The session to seal a control message for `peer` with.
    pub fn sealing(&self, peer: Ipv4Addr) -> Option<Arc<Session>> {
        self.handshakes.sealing(peer)
    }

    /// Whether we hold a key for `vip`: only ringlink nodes have one.
    pub fn knows(&self, vip: Ipv4Addr) -> bool {
        self.pins.get(vip).is_some()
    }

    /// The key pinned for `vip` and the age of its session, for status.
    pub fn peer_line(&self, vip: Ipv4Addr, now: Instant) -> (Option<KeyLine>, Option<f64>, u32) {
        let key = self.pins.get(vip).map(|(k, s)| KeyLine {
            fingerprint: k.fingerprint(),
            source: s.as_str().to_string(),
        });
        let hs = self.handshakes.status(vip, now);
        (
            key,
            hs.and_then(|h| h.established).map(|d| d.as_secs_f64()),
            hs.map_or(0, |h| h.completed),
        )
    }
}
