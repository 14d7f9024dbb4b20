//! The Noise handshake between two ringlink nodes, sans-IO (issue 14).
//!
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, WireGuard's pattern: the
//! initiator already knows the responder's static key (pinned, see
//! `pins`), so one round trip makes a session, and the responder learns the
//! initiator's static key encrypted, checks it against its own pin, and
//! answers only a key it trusts. The pre-shared key is derived from the
//! network password, so only members can even complete a handshake; the
//! password alone still opens no session.
//!
//! The caller passes messages and `now`, sends what [`Handshakes::poll_transmit`]
//! gives it, and runs [`Handshakes::handle_timeout`] at
//! [`Handshakes::poll_timeout`]. Ephemeral keys come from the operating
//! system (through `snow`), never from the seeded generator, which only
//! picks session indices and retry jitter.
//!
//! Messages (docs/protocol.md §5.7), each the plaintext of a UDP peer
//! message sealed with Candy's key as every other:
//!
//! | type | message | bytes |
//! | --- | --- | --- |
//! | 0xF2 | initiation: sender VIP, sender index, Noise message 1 | 117 |
//! | 0xF3 | response: sender VIP, sender index, receiver index, Noise message 2 | 61 |
//! | 0xF4 | transport: receiver index, counter, sealed payload | 29 + payload |
//!
//! Replays: an initiation carries the initiator's clock (TAI64N) inside
//! Noise, and a responder answers only one newer than the newest it
//! answered for that peer; a response is taken only for the initiation in
//! flight with that index, once; transport messages have counters and the
//! replay window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::keys::{NodeKey, PublicKey, KEY_LEN};
use super::ratelimit::InitiationLimiter;
use super::timers::HandshakeTimers;
use super::transport::{Role, Session, SessionError, SessionKeys, TAG_LEN};
use crate::counters::counters;
use crate::peer::TokenBucket;
use crate::proto::crypto::CipherKind;
use crate::rng::SplitMix64;

pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"ringlink handshake v1";

pub mod ty {
    pub const INITIATION: u8 = 0xF2;
    pub const RESPONSE: u8 = 0xF3;
    pub const TRANSPORT: u8 = 0xF4;
}

/// Noise message 1 of IK: ephemeral key, encrypted static key, encrypted
/// 12-byte timestamp.
pub const NOISE_INIT_LEN: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + (TIMESTAMP_LEN + TAG_LEN);
/// Noise message 2 of IK: ephemeral key, encrypted empty payload.
pub const NOISE_RESP_LEN: usize = KEY_LEN + TAG_LEN;
pub const INITIATION_LEN: usize = 1 + 4 + 4 + NOISE_INIT_LEN;
pub const RESPONSE_LEN: usize = 1 + 4 + 4 + 4 + NOISE_RESP_LEN;
pub const TRANSPORT_HEADER_LEN: usize = 1 + 4 + 8;
pub const TIMESTAMP_LEN: usize = 12;
/// TAI64N: seconds since 1970 plus 2^62, then nanoseconds; both
/// big-endian, so later times compare greater byte for byte.
pub type Timestamp = [u8; TIMESTAMP_LEN];

/// One handshake message, parsed but not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation {
        sender: Ipv4Addr,
        sender_index: u32,
        noise: &'a [u8],
    },
    Response {
        sender: Ipv4Addr,
        sender_index: u32,
        receiver_index: u32,
        noise: &'a [u8],
    },
    Transport {
        receiver_index: u32,
        counter: u64,
        /// The sealed payload and its tag.
        sealed: &'a [u8],
    },
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

impl<'a> Message<'a> {
    /// Sizes are exact for the two handshake messages: Noise fixes them.
    pub fn decode(b: &'a [u8]) -> Result<Self, HandshakeError> {
        let malformed = |what| Err(HandshakeError::Malformed(what));
        match b.first() {
            Some(&ty::INITIATION) if b.len() == INITIATION_LEN => Ok(Message::Initiation {
                sender: ip_at(b, 1),
                sender_index: u32_at(b, 5),
                noise: &b[9..],
            }),
            Some(&ty::INITIATION) => malformed("initiation length"),
            Some(&ty::RESPONSE) if b.len() == RESPONSE_LEN => Ok(Message::Response {
                sender: ip_at(b, 1),
                sender_index: u32_at(b, 5),
                receiver_index: u32_at(b, 9),
                noise: &b[13..],
            }),
            Some(&ty::RESPONSE) => malformed("response length"),
            Some(&ty::TRANSPORT) if b.len() >= TRANSPORT_HEADER_LEN + TAG_LEN => {
                let mut c = [0u8; 8];
                c.copy_from_slice(&b[5..13]);
                Ok(Message::Transport {
                    receiver_index: u32_at(b, 1),
                    counter: u64::from_be_bytes(c),
                    sealed: &b[TRANSPORT_HEADER_LEN..],
                })
            }
            Some(&ty::TRANSPORT) => malformed("transport message shorter than its tag"),
            Some(_) => malformed("not a handshake message type"),
            None => malformed("empty"),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INITIATION_LEN);
        match *self {
            Message::Initiation {
                sender,
                sender_index,
                noise,
            } => {
                out.push(ty::INITIATION);
                out.extend_from_slice(&sender.octets());
                out.extend_from_slice(&sender_index.to_be_bytes());
                out.extend_from_slice(noise);
            }
            Message::Response {
                sender,
                sender_index,
                receiver_index,
                noise,
            } => {
                out.push(ty::RESPONSE);
                out.extend_from_slice(&sender.octets());
                out.extend_from_slice(&sender_index.to_be_bytes());
                out.extend_from_slice(&receiver_index.to_be_bytes());
                out.extend_from_slice(noise);
            }
            Message::Transport {
                receiver_index,
                counter,
                sealed,
            } => {
                out.push(ty::TRANSPORT);
                out.extend_from_slice(&receiver_index.to_be_bytes());
                out.extend_from_slice(&counter.to_be_bytes());
                out.extend_from_slice(sealed);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    #[error("initiation from {0}, whose key is not known here")]
    UnknownPeer(Ipv4Addr),
    #[error("initiation from {0} over its rate limit")]
    RateLimited(Ipv4Addr),
    #[error("handshake with {peer} failed: {why}")]
    Noise { peer: Ipv4Addr, why: String },
    #[error("{vip} offered key {offered}, but {pinned} is pinned for it")]
    KeyChanged {
        vip: Ipv4Addr,
        pinned: PublicKey,
        offered: PublicKey,
    },
    #[error("initiation from {0} is not newer than the last one answered (replayed?)")]
    Replayed(Ipv4Addr),
    #[error("response for index {0:#010x}, which no initiation in flight has")]
    Unmatched(u32),
    #[error("transport message for index {index:#010x}: {error}")]
    Transport { index: u32, error: SessionError },
}

counters! {
    /// Handshakes between ringlink nodes, for `ringlink status`.
    plain HandshakeStats {
        /// Initiations sent (first tries, retries and rekeys).
        initiations_sent,
        /// Initiations answered with a response.
        responses_sent,
        /// Handshakes that made a session, as initiator or responder.
        handshakes_completed,
        /// Initiations sent again because no response came.
        handshake_retries,
        /// Handshakes started to renew a session (age or message count).
        rekeys,
        /// Keys refused because another key is pinned for the VIP.
        keys_refused,
        /// Initiations whose timestamp was not newer than the last answered.
        replayed_initiations,
        /// Responses for no initiation in flight (late, duplicate, replayed).
        unmatched_responses,
        /// Initiations dropped by the rate limits.
        rate_limited,
        /// Initiations from VIPs with no known key.
        unknown_peers,
        /// Handshake messages that did not parse or did not authenticate.
        handshake_failures,
        /// Sessions dropped at REJECT_AFTER_TIME.
        sessions_expired,
        /// Transport messages opened (today: the keepalive that confirms a
        /// new session).
        transport_opened,
        /// Transport messages refused (unknown index, replay, forgery, expiry).
        transport_refused,
    }
}

/// The pre-shared key mixed into every handshake: members of one network
/// share it, nobody else has it.
pub fn psk_from_password(password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ringlink noise psk v1");
    h.update(password);
    h.finalize().into()
}

/// TAI64N of `since_epoch` (a wall-clock time).
pub fn tai64n(since_epoch: Duration) -> Timestamp {
    let mut t = [0u8; TIMESTAMP_LEN];
    t[..8].copy_from_slice(&((1u64 << 62) + since_epoch.as_secs()).to_be_bytes());
    t[8..].copy_from_slice(&since_epoch.subsec_nanos().to_be_bytes());
    t
}

fn prologue(initiator: Ipv4Addr, responder: Ipv4Addr) -> Vec<u8> {
    [PROLOGUE, &initiator.octets(), &responder.octets()].concat()
}

pub struct HandshakeConfig {
    pub own: Ipv4Addr,
    pub key: NodeKey,
    pub psk: [u8; 32],
    /// The network's cipher, which transport sessions use too.
    pub cipher: CipherKind,
    pub timers: HandshakeTimers,
    /// Seeds session indices and retry jitter.
    pub seed: u64,
    /// Wall-clock time at `now` of construction (for initiation
    /// timestamps, which must grow across restarts).
    pub wall_clock: Duration,
}

struct Pending {
    state: snow::HandshakeState,
    local_index: u32,
    retry_at: Instant,
}

/// What this node knows about one peer's sessions.
struct Peer {
    key: PublicKey,
    pending: Option<Pending>,
    /// When to start the first handshake, while there is no session.
    first_at: Instant,
    /// Wait before the next retry.
    backoff: Duration,
    /// Sealing and opening; the newest confirmed session.
    current: Option<Arc<Session>>,
    /// Still opens what was sealed before the last rekey.
    previous: Option<Arc<Session>>,
    /// A responder's new session, until the initiator's first message
    /// under it shows the initiator has it too.
    next: Option<Arc<Session>>,
    /// Newest initiation timestamp answered.
    newest_initiation: Option<Timestamp>,
    budget: TokenBucket,
    completed: u32,
    /// No initiation before this: the last one could not even be built
    /// (no randomness), and trying again at once would spin.
    hold_until: Option<Instant>,
}

impl Peer {
    fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
    }

    /// The session whose age decides the next rekey.
    fn freshest(&self) -> Option<&Arc<Session>> {
        self.sessions().max_by_key(|s| s.established)
    }
}

/// Status of one peer's handshake, for `ringlink status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerHandshake {
    pub key: PublicKey,
    /// Age of the session traffic is sealed under, if any.
    pub established: Option<Duration>,
    pub role: Option<Role>,
    pub in_flight: bool,
    pub completed: u32,
}

/// One peer's sessions, for the dataplane.
#[derive(Debug, Clone)]
pub struct PeerSessions {
    /// The current session, which seals.
    pub seal: Option<Arc<Session>>,
    /// Every live session, which open.
    pub open: Vec<Arc<Session>>,
    /// Some session of the peer's has opened a message: the peer seals
    /// with us, so its traffic without a session is refused.
    pub protected: bool,
}

/// What a handled message came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Handled {
    pub peer: Ipv4Addr,
    /// Send this back the way the message came.
    pub reply: Option<Vec<u8>>,
    /// A session was made (and with which role).
    pub established: Option<Role>,
}

pub struct Handshakes {
    own: Ipv4Addr,
    key: NodeKey,
    psk: [u8; 32],
    cipher: CipherKind,
    params: snow::params::NoiseParams,
    timers: HandshakeTimers,
    rng: SplitMix64,
    start: Instant,
    wall_clock: Duration,
    peers: BTreeMap<Ipv4Addr, Peer>,
    /// Our indices in use (initiations in flight and sessions) and whose.
    indices: HashMap<u32, Ipv4Addr>,
    limiter: InitiationLimiter,
    transmits: VecDeque<(Ipv4Addr, Vec<u8>)>,
    /// Bumped whenever a session is made, promoted or dropped, so the
    /// caller knows when to republish what the dataplane seals with.
    generation: u64,
    pub stats: HandshakeStats,
}

impl Handshakes {
    pub fn new(cfg: HandshakeConfig, now: Instant) -> Self {
        Handshakes {
            own: cfg.own,
            key: cfg.key,
            psk: cfg.psk,
            cipher: cfg.cipher,
            params: NOISE_PARAMS.parse().expect("a pattern snow supports"),
            timers: cfg.timers,
            rng: SplitMix64::new(cfg.seed),
            start: now,
            wall_clock: cfg.wall_clock,
            peers: BTreeMap::new(),
            indices: HashMap::new(),
            limiter: InitiationLimiter::new(now),
            transmits: VecDeque::new(),
            generation: 0,
            stats: HandshakeStats::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// A ringlink peer announced `key`, and the pin store accepted it.
    /// The lower VIP of a pair starts the first handshake at once; the
    /// higher one waits a retry interval, in case the lower one does not
    /// know its key yet, so a pair usually makes one session, not two.
    pub fn peer_key(&mut self, vip: Ipv4Addr, key: PublicKey, now: Instant) {
        if vip == self.own {
            return;
        }
        if let Some(p) = self.peers.get(&vip) {
            if p.key == key {
                return;
            }
        }
        let first_at = if self.own < vip {
            now
        } else {
            now + self.timers.rekey_timeout
        };
        let old = self.peers.insert(
            vip,
            Peer {
                key,
                pending: None,
                first_at,
                backoff: self.timers.rekey_timeout,
                current: None,
                previous: None,
                next: None,
                newest_initiation: None,
                budget: InitiationLimiter::peer_budget(now),
                completed: 0,
                hold_until: None,
            },
        );
        // A key that changed under a configured pin cannot get here (the
        // pin store refuses it); a peer rebuilt with one drops its indices.
        if let Some(old) = old {
            self.forget_indices(&old);
        }
    }

    /// The peer's pin is gone: its sessions and any handshake in flight
    /// end now, and a key it announces later starts afresh.
    pub fn forget(&mut self, vip: Ipv4Addr) {
        if let Some(old) = self.peers.remove(&vip) {
            self.forget_indices(&old);
        }
    }

    fn forget_indices(&mut self, p: &Peer) {
        self.generation += 1;
        for s in p.sessions() {
            self.indices.remove(&s.local_index);
        }
        if let Some(pending) = &p.pending {
            self.indices.remove(&pending.local_index);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(Ipv4Addr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn status(&self, vip: Ipv4Addr, now: Instant) -> Option<PeerHandshake> {
        let p = self.peers.get(&vip)?;
        Some(PeerHandshake {
            key: p.key,
            established: p
                .current
                .as_ref()
                .map(|s| now.saturating_duration_since(s.established)),
            role: p.current.as_ref().map(|s| s.role),
            in_flight: p.pending.is_some(),
            completed: p.completed,
        })
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u64() as u32;
            if !self.indices.contains_key(&i) {
                return i;
            }
        }
    }

    fn timestamp(&self, now: Instant) -> Timestamp {
        tai64n(self.wall_clock + now.saturating_duration_since(self.start))
    }

    fn builder<'b>(&'b self, prologue: &'b [u8]) -> Result<snow::Builder<'b>, snow::Error> {
        snow::Builder::new(self.params.clone())
            .local_private_key(self.key.private())?
            .prologue(prologue)?
            .psk(2, &self.psk)
    }

    /// Sends an initiation to `vip` now, replacing one in flight.
    fn initiate(&mut self, vip: Ipv4Addr, now: Instant) {
        let Some(key) = self.peers.get(&vip).map(|p| p.key) else {
            return;
        };
        let local_index = self.fresh_index();
        let stamp = self.timestamp(now);
        let prologue = prologue(self.own, vip);
        let mut noise = [0u8; NOISE_INIT_LEN];
        let built = self
            .builder(&prologue)
            .and_then(|b| b.remote_public_key(&key.0))
            .and_then(|b| b.build_initiator())
            .and_then(|mut state| {
                state.write_message(&stamp, &mut noise)?;
                Ok(state)
            });
        let state = match built {
            Ok(s) => s,
            Err(e) => {
                // snow fails here only without randomness for the
                // ephemeral key; counted, and tried again after a backoff.
                self.stats.handshake_failures += 1;
                tracing::warn!(peer = %vip, error = %e, "cannot start a handshake");
                if let Some(p) = self.peers.get_mut(&vip) {
                    p.hold_until = Some(now + p.backoff);
                    p.backoff = self.timers.next_retry(p.backoff);
                }
                return;
            }
        };
        let span = self.timers.jitter.as_nanos().min(u128::from(u64::MAX - 1)) as u64;
        let jitter = Duration::from_nanos(self.rng.next_u64() % (span + 1));
        let Some(p) = self.peers.get_mut(&vip) else {
            return;
        };
        if let Some(old) = p.pending.take() {
            self.indices.remove(&old.local_index);
        }
        p.pending = Some(Pending {
            state,
            local_index,
            retry_at: now + p.backoff + jitter,
        });
        self.indices.insert(local_index, vip);
        self.stats.initiations_sent += 1;
        let msg = Message::Initiation {
            sender: self.own,
            sender_index: local_index,
            noise: &noise,
        };
        self.transmits.push_back((vip, msg.encode()));
    }

    /// A handshake or transport message from a peer (plaintext after
    /// Candy's envelope). Errors are for counting and logging; none leaves
    /// any state changed that a genuine message would need.
    pub fn handle(&mut self, msg: &[u8], now: Instant) -> Result<Handled, HandshakeError> {
        let parsed = Message::decode(msg);
        if parsed.is_err() {
            self.stats.handshake_failures += 1;
        }
        let result = match parsed? {
            Message::Initiation {
                sender,
                sender_index,
                noise,
            } => self.on_initiation(sender, sender_index, noise, now),
            Message::Response {
                sender,
                sender_index,
                receiver_index,
                noise,
            } => self.on_response(sender, sender_index, receiver_index, noise, now),
            Message::Transport {
                receiver_index,
                counter,
                sealed,
            } => {
                let mut buf = sealed.to_vec();
                self.open(receiver_index, counter, &mut buf, now)
                    .map(|(peer, _)| Handled {
                        peer,
                        reply: None,
                        established: None,
                    })
                    .map_err(|error| HandshakeError::Transport {
                        index: receiver_index,
                        error,
                    })
            }
        };
        if let Err(e) = &result {
            match e {
                HandshakeError::UnknownPeer(_) => self.stats.unknown_peers += 1,
                HandshakeError::RateLimited(_) => self.stats.rate_limited += 1,
                HandshakeError::KeyChanged { .. } => self.stats.keys_refused += 1,
                HandshakeError::Replayed(_) => self.stats.replayed_initiations += 1,
                HandshakeError::Unmatched(_) => self.stats.unmatched_responses += 1,
                HandshakeError::Transport { .. } => self.stats.transport_refused += 1,
                HandshakeError::Noise { .. } => self.stats.handshake_failures += 1,
                HandshakeError::Malformed(_) => {}
            }
        }
        result
    }

    fn on_initiation(
        &mut self,
        sender: Ipv4Addr,
        sender_index: u32,
        noise: &[u8],
        now: Instant,
    ) -> Result<Handled, HandshakeError> {
        let Some(p) = self.peers.get_mut(&sender) else {
            return Err(HandshakeError::UnknownPeer(sender));
        };
        if !self.limiter.allow(&mut p.budget, now) {
            return Err(HandshakeError::RateLimited(sender));
        }
        let pinned = p.key;
        let prologue = prologue(sender, self.own);
        let fail = |e: snow::Error| HandshakeError::Noise {
            peer: sender,
            why: e.to_string(),
        };
        let mut state = self
            .builder(&prologue)
            .and_then(|b| b.build_responder())
            .map_err(fail)?;
        let mut payload = [0u8; NOISE_INIT_LEN];
        let n = state.read_message(noise, &mut payload).map_err(fail)?;
        let offered = state
            .get_remote_static()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or(HandshakeError::Malformed("no static key"))?;
        if offered != pinned {
            return Err(HandshakeError::KeyChanged {
                vip: sender,
                pinned,
                offered,
            });
        }
        let stamp: Timestamp = payload[..n]
            .try_into()
            .map_err(|_| HandshakeError::Malformed("initiation payload is not a timestamp"))?;
        if self.peers[&sender]
            .newest_initiation
            .is_some_and(|newest| stamp <= newest)
        {
            return Err(HandshakeError::Replayed(sender));
        }
        let mut noise_out = [0u8; NOISE_RESP_LEN];
        state.write_message(&[], &mut noise_out).map_err(fail)?;
        let (i2r, r2i) = state.dangerously_get_raw_split();
        let local_index = self.fresh_index();
        let session = Arc::new(Session::new(
            sender,
            (local_index, sender_index),
            Role::Responder,
            self.cipher,
            SessionKeys {
                send: &r2i,
                recv: &i2r,
            },
            now,
        ));
        self.generation += 1;
        self.indices.insert(local_index, sender);
        let p = self.peers.get_mut(&sender).expect("looked up above");
        p.newest_initiation = Some(stamp);
        if let Some(old) = p.next.replace(session) {
            self.indices.remove(&old.local_index);
        }
        p.completed += 1;
        p.backoff = self.timers.rekey_timeout;
        self.stats.responses_sent += 1;
        self.stats.handshakes_completed += 1;
        let reply = Message::Response {
            sender: self.own,
            sender_index: local_index,
            receiver_index: sender_index,
            noise: &noise_out,
        }
        .encode();
        Ok(Handled {
            peer: sender,
            reply: Some(reply),
            established: Some(Role::Responder),
        })
    }

    fn on_response(
        &mut self,
        sender: Ipv4Addr,
        sender_index: u32,
        receiver_index: u32,
        noise: &[u8],
        now: Instant,
    ) -> Result<Handled, HandshakeError> {
        let Some(p) = self.peers.get_mut(&sender) else {
            return Err(HandshakeError::Unmatched(receiver_index));
        };
        let Some(pending) = p.pending.take_if(|q| q.local_index == receiver_index) else {
            return Err(HandshakeError::Unmatched(receiver_index));
        };
        let Pending {
            mut state,
            local_index,
            retry_at,
        } = pending;
        let mut payload = [0u8; NOISE_RESP_LEN];
        if let Err(e) = state.read_message(noise, &mut payload) {
            // A forged response must not cancel the genuine one to come.
            p.pending = Some(Pending {
                state,
                local_index,
                retry_at,
            });
            return Err(HandshakeError::Noise {
                peer: sender,
                why: e.to_string(),
            });
        }
        let (i2r, r2i) = state.dangerously_get_raw_split();
        let session = Arc::new(Session::new(
            sender,
            (local_index, sender_index),
            Role::Initiator,
            self.cipher,
            SessionKeys {
                send: &i2r,
                recv: &r2i,
            },
            now,
        ));
        self.generation += 1;
        // The initiator's first transport message tells the responder the
        // session is in use on both ends (WireGuard's keepalive).
        let mut keepalive = [0u8; TAG_LEN];
        let counter = session
            .next_counter()
            .map_err(|error| HandshakeError::Transport {
                index: local_index,
                error,
            })?;
        session
            .seal(counter, &mut keepalive, 0)
            .map_err(|error| HandshakeError::Transport {
                index: local_index,
                error,
            })?;
        let reply = Message::Transport {
            receiver_index: sender_index,
            counter,
            sealed: &keepalive,
        }
        .encode();
        let old_previous = p.previous.take();
        p.previous = p.current.replace(session);
        p.completed += 1;
        p.backoff = self.timers.rekey_timeout;
        if let Some(old) = old_previous {
            self.indices.remove(&old.local_index);
        }
        self.stats.handshakes_completed += 1;
        Ok(Handled {
            peer: sender,
            reply: Some(reply),
            established: Some(Role::Initiator),
        })
    }

    /// Seals `buf[..len]` for `peer` under its current session; returns
    /// the peer's index and the counter to send with it, and the sealed
    /// length. A session that reaches the message limit starts its rekey
    /// here: the message count drives rekeying as directly as time does.
    pub fn seal(
        &mut self,
        peer: Ipv4Addr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<(u32, u64, usize), SessionError> {
        let reject = self.timers.reject_after_time;
        let limit = self.timers.rekey_after_messages;
        let p = self.peers.get(&peer).ok_or(SessionError::NoSession)?;
        let s = p.current.as_ref().ok_or(SessionError::NoSession)?;
        if now.saturating_duration_since(s.established) >= reject {
            return Err(SessionError::Expired);
        }
        let counter = s.next_counter()?;
        let sealed = s.seal(counter, buf, len)?;
        let remote = s.remote_index;
        if counter + 1 >= limit && p.pending.is_none() {
            self.stats.rekeys += 1;
            self.initiate(peer, now);
        }
        Ok((remote, counter, sealed))
    }

    /// Opens a transport message for our `index`; returns the peer and the
    /// payload's length. The first message under a responder's new session
    /// makes it the one we seal with.
    pub fn open(
        &mut self,
        index: u32,
        counter: u64,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<(Ipv4Addr, usize), SessionError> {
        let reject = self.timers.reject_after_time;
        let vip = *self.indices.get(&index).ok_or(SessionError::NoSession)?;
        let p = self.peers.get_mut(&vip).ok_or(SessionError::NoSession)?;
        let is_next = p.next.as_ref().is_some_and(|s| s.local_index == index);
        let s = p
            .sessions()
            .find(|s| s.local_index == index)
            .ok_or(SessionError::NoSession)?;
        if now.saturating_duration_since(s.established) >= reject {
            return Err(SessionError::Expired);
        }
        let n = s.open(counter, buf)?;
        if is_next {
            self.promote(vip);
        }
        self.stats.transport_opened += 1;
        Ok((vip, n))
    }

    /// A responder's new session opened its first message (here or in the
    /// dataplane): the initiator has it, so it becomes the one we seal with.
    fn promote(&mut self, vip: Ipv4Addr) {
        let Some(p) = self.peers.get_mut(&vip) else {
            return;
        };
        let Some(next) = p.next.take() else {
            return;
        };
        let dropped = p.previous.take();
        p.previous = p.current.replace(next);
        if let Some(old) = dropped {
            self.indices.remove(&old.local_index);
        }
        self.generation += 1;
    }

    /// The dataplane opened the first message of our session `index`.
    /// Promotes a responder's next session; for any session, the peer now
    /// shows it seals with us, which the dataplane's table must say.
    pub fn confirmed(&mut self, index: u32) {
        let Some(&vip) = self.indices.get(&index) else {
            return;
        };
        let is_next = self
            .peers
            .get(&vip)
            .and_then(|p| p.next.as_ref())
            .is_some_and(|s| s.local_index == index);
        if is_next {
            self.promote(vip);
        } else {
            self.generation += 1;
        }
    }

    /// Changes whenever the sessions below do.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every peer's sessions as the dataplane needs them: what to seal
    /// with, what may open, and whether the peer has shown it seals with
    /// us (then nothing from it is taken without a session).
    pub fn published(&self) -> impl Iterator<Item = (Ipv4Addr, PeerSessions)> + '_ {
        self.peers.iter().filter_map(|(&vip, p)| {
            let open: Vec<Arc<Session>> = p.sessions().cloned().collect();
            if open.is_empty() {
                return None;
            }
            Some((
                vip,
                PeerSessions {
                    seal: p.current.clone(),
                    protected: open.iter().any(|s| s.used()),
                    open,
                },
            ))
        })
    }

    /// Whether `vip` has shown it seals with us: some session of its opened
    /// a message.
    pub fn protected(&self, vip: Ipv4Addr) -> bool {
        self.peers
            .get(&vip)
            .is_some_and(|p| p.sessions().any(|s| s.used()))
    }

    /// The session to seal with for `peer`, if it has one.
    pub fn sealing(&self, peer: Ipv4Addr) -> Option<Arc<Session>> {
        self.peers.get(&peer)?.current.clone()
    }

    /// The earliest instant a retry, a first handshake, a rekey by age or
    /// an expiry is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timers;
        self.peers
            .values()
            .flat_map(|p| {
                let retry = p.pending.as_ref().map(|q| q.retry_at);
                let first = (p.pending.is_none() && p.freshest().is_none()).then_some(p.first_at);
                let rekey = p.freshest().filter(|_| p.pending.is_none()).map(|s| {
                    s.established
                        + match s.role {
                            Role::Initiator => t.rekey_after_time,
                            Role::Responder => t.responder_rekey(),
                        }
                });
                let held = |d: Instant| d.max(p.hold_until.unwrap_or(d));
                let expiry = p
                    .sessions()
                    .map(|s| s.established + t.reject_after_time)
                    .min();
                [retry, first.map(held), rekey.map(held), expiry]
            })
            .flatten()
            .min()
    }

    /// Retries, first handshakes, rekeys (by age and by message count)
    /// and expiries that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.timers;
        let mut initiate = Vec::new();
        let mut freed = Vec::new();
        // A next session the dataplane opened a message under, whose report
        // was lost (a full upcall channel): promoted here all the same.
        let used_next: Vec<Ipv4Addr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next.as_ref().is_some_and(|s| s.used()))
            .map(|(&vip, _)| vip)
            .collect();
        for vip in used_next {
            self.promote(vip);
        }
        for (&vip, p) in self.peers.iter_mut() {
            for slot in [&mut p.current, &mut p.previous, &mut p.next] {
                if slot.as_ref().is_some_and(|s| {
                    now.saturating_duration_since(s.established) >= t.reject_after_time
                }) {
                    if let Some(s) = slot.take() {
                        freed.push(s.local_index);
                        self.stats.sessions_expired += 1;
                    }
                }
            }
            if p.hold_until.is_some_and(|h| now < h) {
                continue;
            }
            if let Some(q) = &p.pending {
                if now >= q.retry_at {
                    p.backoff = t.next_retry(p.backoff);
                    self.stats.handshake_retries += 1;
                    initiate.push(vip);
                }
                continue;
            }
            match p.freshest() {
                None if now >= p.first_at => initiate.push(vip),
                None => {}
                Some(s) => {
                    let age = now.saturating_duration_since(s.established);
                    let due = match s.role {
                        Role::Initiator => t.rekey_after_time,
                        Role::Responder => t.responder_rekey(),
                    };
                    let spent = p
                        .current
                        .as_ref()
                        .is_some_and(|c| c.sent() >= t.rekey_after_messages);
                    if age >= due || spent {
                        self.stats.rekeys += 1;
                        initiate.push(vip);
                    }
                }
            }
        }
        if !freed.is_empty() {
            self.generation += 1;
        }
        for index in freed {
            self.indices.remove(&index);
        }
        for vip in initiate {
            self.initiate(vip, now);
        }
    }
}

#[cfg(test)]
mod tests;
