//! The allocation state machine: one UDP allocation on one TURN server,
//! with its permissions and channels.
//!
//! ```text
//!  new ─► Allocate (no credentials) ─401 REALM,NONCE─► Allocate + MESSAGE-INTEGRITY
//!            │                                              │ success
//!            │ any other error, timeout                     ▼
//!            └──────────────────────► Failed ◄──── Allocated ─ Refresh before the lifetime ends
//!                                        ▲           │  per peer: CreatePermission (every 4 min)
//!                     437, 401, timeout ─┘           │            ChannelBind (every 9 min)
//!                                                    ▼ close()
//!                                      Closing (Refresh, LIFETIME 0) ─► Closed
//! ```
//!
//! A 438 (stale nonce) on any request takes the new NONCE and sends the
//! request again; a 401 to a request that already carried credentials
//! means they are wrong or expired and ends the allocation. The caller
//! drives it: [`Client::handle_input`] with each datagram from the
//! server's address, [`Client::handle_timeout`] when [`Client::poll_timeout`]
//! passes, then drains [`Client::poll_transmit`] and [`Client::poll_event`].

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::channel;
use super::credentials::Credentials;
use super::message::{attr, method, Builder, Class, Message, TransactionId, TRANSPORT_UDP};
use super::TurnError;
use crate::rng::SplitMix64;

/// First retransmission timeout (RFC 8489 §6.2.1 recommends 500 ms).
const RTO: Duration = Duration::from_millis(500);
/// Sends of one request before giving up (Rc), doubling the timeout each
/// time; after the last the client waits `LAST_WAIT_RTOS`·RTO (Rm), so an
/// unanswered request fails 39.5 s after its first send.
const MAX_SENDS: u32 = 7;
const LAST_WAIT_RTOS: u32 = 16;
/// An allocation's lifetime when the server names none (RFC 8656 §3.2).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Permissions last 300 s (§9); refresh with a minute to spare.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channel bindings last 600 s (§12); re-bind with a minute to spare.
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// Stale-nonce answers accepted in a row for one request before the
/// server is taken to be looping.
const MAX_NONCE_RETRIES: u8 = 3;
/// How long a removed peer's channel number stays unused: its binding may
/// live 600 s past the last bind, and a server refuses to bind the number
/// to another address for 5 minutes after that (RFC 8656 §12).
const CHANNEL_QUARANTINE: Duration = Duration::from_secs(900);

/// What a datagram from the server was.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A response or indication the client consumed.
    Control,
    /// Data a peer sent to the relayed address (ChannelData or a Data
    /// indication), with the peer's address.
    Peer { peer: SocketAddrV4, data: &'a [u8] },
}

/// What the caller learns from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The relay exists: peers send to `relayed`; the server saw this
    /// client at `mapped`.
    Allocated {
        relayed: SocketAddrV4,
        mapped: Option<SocketAddrV4>,
        lifetime: Duration,
    },
    Refreshed {
        lifetime: Duration,
    },
    /// The first CreatePermission for this IP succeeded.
    Permitted(Ipv4Addr),
    /// The first ChannelBind for this peer succeeded: ChannelData on
    /// `channel` now reaches it.
    ChannelBound {
        peer: SocketAddrV4,
        channel: u16,
    },
    /// A permission or channel for this peer was refused or timed out; the
    /// client stops refreshing it.
    PeerFailed {
        peer: SocketAddrV4,
        error: TurnError,
    },
    /// The allocation is gone; the client does nothing more.
    Failed(TurnError),
    /// `close` finished (the server confirmed, or gave up on, LIFETIME 0).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh { lifetime: u32 },
    Permission(SocketAddrV4),
    Bind { peer: SocketAddrV4, channel: u16 },
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Allocate => "Allocate",
            Request::Refresh { .. } => "Refresh",
            Request::Permission(_) => "CreatePermission",
            Request::Bind { .. } => "ChannelBind",
        }
    }
}

#[derive(Debug)]
struct Transaction {
    txid: TransactionId,
    request: Request,
    bytes: Vec<u8>,
    sends: u32,
    next_at: Instant,
    rto: Duration,
    authenticated: bool,
    nonce_retries: u8,
}

#[derive(Debug)]
struct Auth {
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated {
        relayed: SocketAddrV4,
        /// When to send the next Refresh; `None` while one is in flight.
        refresh_at: Option<Instant>,
    },
    Closing,
    Closed,
    Failed,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddrV4,
    channel: u16,
    permitted: bool,
    bound: bool,
    /// Next refreshes; `None` while the request is in flight or not yet
    /// sent (before the allocation exists).
    permission_at: Option<Instant>,
    bind_at: Option<Instant>,
}

/// One allocation. See the module documentation for the life cycle.
#[derive(Debug)]
pub struct Client {
    server: SocketAddr,
    credentials: Credentials,
    auth: Option<Auth>,
    state: State,
    rng: SplitMix64,
    transactions: Vec<Transaction>,
    peers: Vec<Peer>,
    /// Channel numbers of removed peers and when they may be bound again.
    retired: Vec<(u16, Instant)>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    stale_nonces: u64,
}

impl Client {
    /// Starts an allocation: the first Allocate is ready in
    /// [`Client::poll_transmit`]. `seed` feeds the transaction IDs, which
    /// are what stops an off-path host from forging answers, so production
    /// seeds it from the OS.
    pub fn new(server: SocketAddr, credentials: Credentials, seed: u64, now: Instant) -> Self {
        let mut c = Client {
            server,
            credentials,
            auth: None,
            state: State::Allocating,
            rng: SplitMix64::new(seed),
            transactions: Vec::new(),
            peers: Vec::new(),
            retired: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stale_nonces: 0,
        };
        c.start(Request::Allocate, now, 0);
        c
    }

    /// 438 (stale nonce) answers taken so far, each followed by a retry
    /// with the new nonce.
    pub fn stale_nonces(&self) -> u64 {
        self.stale_nonces
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddrV4> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// True once the client has failed or closed and will send nothing.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// The channel bound to `peer`, once the server confirmed it.
    pub fn channel(&self, peer: SocketAddrV4) -> Option<u16> {
        self.peers
            .iter()
            .find(|p| p.addr == peer && p.bound)
            .map(|p| p.channel)
    }

    /// Lets `peer` reach this allocation and binds it a channel; requests
    /// go out at once when allocated, else right after the allocation.
    /// Adding a peer twice does nothing.
    pub fn add_peer(&mut self, peer: SocketAddrV4, now: Instant) -> Result<(), TurnError> {
        if matches!(self.state, State::Closing | State::Closed | State::Failed) {
            return Err(TurnError::NotAllocated);
        }
        if self.peers.iter().any(|p| p.addr == peer) {
            return Ok(());
        }
        let mut used = [false; (channel::MAX_BOUND - channel::MIN) as usize + 1];
        self.retired.retain(|&(_, until)| until > now);
        let retired = self.retired.iter().map(|&(n, _)| n);
        for n in self.peers.iter().map(|p| p.channel).chain(retired) {
            used[usize::from(n - channel::MIN)] = true;
        }
        let channel = used
            .iter()
            .position(|u| !u)
            .map(|i| channel::MIN + i as u16)
            .ok_or(TurnError::NoChannel)?;
        self.peers.push(Peer {
            addr: peer,
            channel,
            permitted: false,
            bound: false,
            permission_at: None,
            bind_at: None,
        });
        if matches!(self.state, State::Allocated { .. }) {
            self.start(Request::Permission(peer), now, 0);
            self.start(Request::Bind { peer, channel }, now, 0);
        }
        Ok(())
    }

    /// Stops refreshing `peer`'s permission and channel; the server lets
    /// them lapse (TURN has no way to delete either), so the channel number
    /// is not handed out again before the server would accept it.
    pub fn remove_peer(&mut self, peer: SocketAddrV4, now: Instant) {
        for p in self.peers.iter().filter(|p| p.addr == peer) {
            self.retired.push((p.channel, now + CHANNEL_QUARANTINE));
        }
        self.peers.retain(|p| p.addr != peer);
        self.transactions.retain(|t| match t.request {
            Request::Permission(p) | Request::Bind { peer: p, .. } => p != peer,
            _ => true,
        });
    }

    /// Releases the allocation with a Refresh of LIFETIME 0.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Allocated { .. } => {
                self.transactions.clear();
                self.peers.clear();
                self.state = State::Closing;
                self.start(Request::Refresh { lifetime: 0 }, now, 0);
            }
            State::Allocating => {
                // The Allocate may already have created the allocation at
                // the server; nothing can release it without its answer,
                // and it expires by itself.
                self.transactions.clear();
                self.finish(Event::Closed);
            }
            State::Closing | State::Closed | State::Failed => {}
        }
    }

    /// The next datagram for the TURN server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.transactions.iter().map(|t| t.next_at);
        let refresh = match self.state {
            State::Allocated { refresh_at, .. } => refresh_at,
            _ => None,
        };
        let peers = self
            .peers
            .iter()
            .flat_map(|p| [p.permission_at, p.bind_at])
            .flatten();
        tx.chain(refresh).chain(peers).min()
    }

    fn is_allocated(&self) -> bool {
        matches!(self.state, State::Allocated { .. })
    }

    /// Retransmits, gives up on, and refreshes whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.transactions.len() {
            let t = &mut self.transactions[i];
            if t.next_at > now {
                i += 1;
                continue;
            }
            if t.sends < MAX_SENDS {
                t.sends += 1;
                t.rto *= 2;
                t.next_at = now
                    + if t.sends == MAX_SENDS {
                        RTO * LAST_WAIT_RTOS
                    } else {
                        t.rto
                    };
                self.out.push_back(t.bytes.clone());
                i += 1;
            } else {
                let t = self.transactions.remove(i);
                self.fail_request(t.request, TurnError::Timeout(t.request.name()), now);
            }
        }
        if let State::Allocated {
            refresh_at: Some(at),
            relayed,
        } = self.state
        {
            if at <= now {
                self.state = State::Allocated {
                    relayed,
                    refresh_at: None,
                };
                let lifetime = DEFAULT_LIFETIME.as_secs() as u32;
                self.start(Request::Refresh { lifetime }, now, 0);
            }
        }
        if !self.is_allocated() {
            return;
        }
        let mut due = Vec::new();
        for p in &mut self.peers {
            if p.permission_at.is_some_and(|at| at <= now) {
                p.permission_at = None;
                due.push(Request::Permission(p.addr));
            }
            if p.bind_at.is_some_and(|at| at <= now) {
                p.bind_at = None;
                due.push(Request::Bind {
                    peer: p.addr,
                    channel: p.channel,
                });
            }
        }
        for r in due {
            self.start(r, now, 0);
        }
    }

    /// Takes one datagram that arrived from `from`. Anything that is not a
    /// well-formed answer to a request in flight, or peer data on a known
    /// channel, is an error that leaves the client as it was.
    pub fn handle_input<'a>(
        &mut self,
        from: SocketAddr,
        dgram: &'a [u8],
        now: Instant,
    ) -> Result<Received<'a>, TurnError> {
        if from != self.server {
            return Err(TurnError::NotFromServer(from));
        }
        if channel::looks_like_channel_data(dgram) {
            let (number, data) = channel::parse(dgram)?;
            let peer = self
                .peers
                .iter()
                .find(|p| p.channel == number && p.bound)
                .ok_or(TurnError::UnknownChannel(number))?;
            return Ok(Received::Peer {
                peer: peer.addr,
                data,
            });
        }
        let msg = Message::parse(dgram)?;
        match msg.class {
            Class::Indication if msg.method == method::DATA => {
                let peer = msg
                    .xor_addr(attr::XOR_PEER_ADDRESS)?
                    .ok_or(TurnError::Malformed(
                        "Data indication without XOR-PEER-ADDRESS",
                    ))?;
                let data = msg
                    .get(attr::DATA)
                    .ok_or(TurnError::Malformed("Data indication without DATA"))?;
                if !self.peers.iter().any(|p| p.addr == peer) {
                    return Err(TurnError::Malformed("Data indication from an unknown peer"));
                }
                Ok(Received::Peer { peer, data })
            }
            Class::Success | Class::Error => {
                let i = self
                    .transactions
                    .iter()
                    .position(|t| t.txid == msg.txid)
                    .ok_or(TurnError::UnknownTransaction)?;
                self.on_response(i, &msg, now)?;
                Ok(Received::Control)
            }
            _ => Err(TurnError::Malformed(
                "neither a response nor a Data indication",
            )),
        }
    }

    /// A response matched transaction `i`. Checks come first, so a forged
    /// or broken response returns an error and leaves the transaction in
    /// flight for the real one.
    fn on_response(&mut self, i: usize, msg: &Message<'_>, now: Instant) -> Result<(), TurnError> {
        let t = &self.transactions[i];
        let request = t.request;
        let expected = match request {
            Request::Allocate => method::ALLOCATE,
            Request::Refresh { .. } => method::REFRESH,
            Request::Permission(_) => method::CREATE_PERMISSION,
            Request::Bind { .. } => method::CHANNEL_BIND,
        };
        if msg.method != expected {
            return Err(TurnError::Malformed(
                "response method differs from the request's",
            ));
        }
        if msg.class == Class::Success {
            if t.authenticated {
                let key = self
                    .auth
                    .as_ref()
                    .map(|a| a.key)
                    .ok_or(TurnError::Integrity)?;
                msg.verify_integrity(&key)?;
            }
            let success = self.parse_success(request, msg)?;
            self.transactions.remove(i);
            self.on_success(success, now);
            return Ok(());
        }
        let (code, reason) = msg
            .error_code()?
            .ok_or(TurnError::Malformed("error response without ERROR-CODE"))?;
        let authenticated = t.authenticated;
        let nonce_retries = t.nonce_retries;
        let retry_with_nonce = match code {
            401 if !authenticated => true,
            438 => nonce_retries < MAX_NONCE_RETRIES,
            _ => false,
        };
        if retry_with_nonce {
            let nonce = msg
                .get(attr::NONCE)
                .ok_or(TurnError::Malformed("401/438 without NONCE"))?;
            let realm = match msg.get(attr::REALM) {
                Some(r) => String::from_utf8_lossy(r).into_owned(),
                None => self
                    .auth
                    .as_ref()
                    .map(|a| a.realm.clone())
                    .ok_or(TurnError::Malformed("401 without REALM"))?,
            };
            self.auth = Some(Auth {
                key: self.credentials.key(&realm),
                realm,
                nonce: nonce.to_vec(),
            });
            self.transactions.remove(i);
            if code == 438 {
                self.stale_nonces += 1;
            }
            self.start(request, now, nonce_retries + u8::from(code == 438));
            return Ok(());
        }
        self.transactions.remove(i);
        let error = match code {
            401 => TurnError::Unauthorized(request.name()),
            _ => TurnError::Refused {
                request: request.name(),
                code,
                reason,
            },
        };
        self.fail_request(request, error, now);
        Ok(())
    }

    fn parse_success(&self, request: Request, msg: &Message<'_>) -> Result<Success, TurnError> {
        let lifetime = msg
            .u32_attr(attr::LIFETIME)?
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(match request {
            Request::Allocate => {
                Success::Allocated {
                    relayed: msg.xor_addr(attr::XOR_RELAYED_ADDRESS)?.ok_or(
                        TurnError::Malformed("Allocate success without XOR-RELAYED-ADDRESS"),
                    )?,
                    mapped: msg.xor_addr(attr::XOR_MAPPED_ADDRESS)?,
                    lifetime,
                }
            }
            Request::Refresh { lifetime: 0 } => Success::Closed,
            Request::Refresh { .. } => Success::Refreshed { lifetime },
            Request::Permission(peer) => Success::Permitted(peer),
            Request::Bind { peer, channel } => Success::Bound { peer, channel },
        })
    }

    fn on_success(&mut self, success: Success, now: Instant) {
        match success {
            Success::Allocated {
                relayed,
                mapped,
                lifetime,
            } => {
                self.state = State::Allocated {
                    relayed,
                    refresh_at: Some(now + refresh_after(lifetime)),
                };
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
                let peers: Vec<_> = self.peers.iter().map(|p| (p.addr, p.channel)).collect();
                for (peer, channel) in peers {
                    self.start(Request::Permission(peer), now, 0);
                    self.start(Request::Bind { peer, channel }, now, 0);
                }
            }
            Success::Closed => self.finish(Event::Closed),
            // A server may grant less than asked; zero would mean it
            // deleted the allocation.
            Success::Refreshed { lifetime } if lifetime.is_zero() => {
                self.finish(Event::Failed(TurnError::NotAllocated))
            }
            Success::Refreshed { lifetime } => {
                if let State::Allocated { relayed, .. } = self.state {
                    self.state = State::Allocated {
                        relayed,
                        refresh_at: Some(now + refresh_after(lifetime)),
                    };
                    self.events.push_back(Event::Refreshed { lifetime });
                }
            }
            Success::Permitted(peer) => {
                if let Some(p) = self.peers.iter_mut().find(|p| p.addr == peer) {
                    p.permission_at = Some(now + PERMISSION_REFRESH);
                    if !p.permitted {
                        p.permitted = true;
                        self.events.push_back(Event::Permitted(*peer.ip()));
                    }
                }
            }
            Success::Bound { peer, channel } => {
                if let Some(p) = self.peers.iter_mut().find(|p| p.addr == peer) {
                    p.bind_at = Some(now + CHANNEL_REFRESH);
                    if !p.bound {
                        p.bound = true;
                        self.events.push_back(Event::ChannelBound { peer, channel });
                    }
                }
            }
        }
    }

    /// A request failed for good: an allocation-wide one ends the client,
    /// a peer's ends that peer.
    fn fail_request(&mut self, request: Request, error: TurnError, now: Instant) {
        match request {
            Request::Allocate => self.finish(Event::Failed(error)),
            Request::Refresh { lifetime: 0 } => self.finish(Event::Closed),
            Request::Refresh { .. } => self.finish(Event::Failed(error)),
            Request::Permission(peer) | Request::Bind { peer, .. } => {
                self.remove_peer(peer, now);
                self.events.push_back(Event::PeerFailed { peer, error });
            }
        }
    }

    fn finish(&mut self, event: Event) {
        self.state = if event == Event::Closed {
            State::Closed
        } else {
            State::Failed
        };
        self.transactions.clear();
        self.peers.clear();
        self.events.push_back(event);
    }

    /// Encodes `request` with a fresh transaction ID (and credentials, once
    /// the server has named its realm), queues it and tracks it.
    fn start(&mut self, request: Request, now: Instant, nonce_retries: u8) {
        let mut txid = [0u8; 12];
        self.rng.fill(&mut txid);
        let b = match request {
            Request::Allocate => Builder::new(method::ALLOCATE, Class::Request, txid)
                .attr(attr::REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]),
            Request::Refresh { lifetime } => Builder::new(method::REFRESH, Class::Request, txid)
                .u32_attr(attr::LIFETIME, lifetime),
            Request::Permission(peer) => {
                Builder::new(method::CREATE_PERMISSION, Class::Request, txid)
                    .xor_addr(attr::XOR_PEER_ADDRESS, SocketAddrV4::new(*peer.ip(), 0))
            }
            Request::Bind { peer, channel } => {
                Builder::new(method::CHANNEL_BIND, Class::Request, txid)
                    .attr(
                        attr::CHANNEL_NUMBER,
                        &[(channel >> 8) as u8, channel as u8, 0, 0],
                    )
                    .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            }
        };
        let (bytes, authenticated) = match &self.auth {
            Some(a) => (
                b.attr(attr::USERNAME, self.credentials.username.as_bytes())
                    .attr(attr::REALM, a.realm.as_bytes())
                    .attr(attr::NONCE, &a.nonce)
                    .finish_with_integrity(&a.key),
                true,
            ),
            None => (b.finish(), false),
        };
        self.out.push_back(bytes.clone());
        self.transactions.push(Transaction {
            txid,
            request,
            bytes,
            sends: 1,
            next_at: now + RTO,
            rto: RTO,
            authenticated,
            nonce_retries,
        });
    }
}

/// A verified success response, read before anything changes.
enum Success {
    Allocated {
        relayed: SocketAddrV4,
        mapped: Option<SocketAddrV4>,
        lifetime: Duration,
    },
    Refreshed {
        lifetime: Duration,
    },
    Closed,
    Permitted(SocketAddrV4),
    Bound {
        peer: SocketAddrV4,
        channel: u16,
    },
}

/// When to refresh an allocation granted for `lifetime`: a minute before
/// it ends, or halfway through a lifetime shorter than two minutes.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime
        .saturating_sub(Duration::from_secs(60))
        .max(lifetime / 2)
}
