//! One hard-NAT attempt of one peer (docs/protocol.md §9.2): the plan both
//! sides derived from their NAT classes, and how far it has got. The
//! decisions are in `machine.rs`; this holds the state they read.
//!
//! An attempt runs in rounds. A leader starts a round when CONNECTING
//! starts and again while no path is proven; a follower starts one for each
//! endpoint the peer announces (a fresh socket's mapping). A round of a
//! hard step holds the node's one hard-NAT slot while its probes go out
//! and, behind a sequential NAT that the peer predicts, until the peer's
//! probes can have arrived: no other round of this node may open sessions
//! on the router meanwhile (they would share its session table and move
//! the port the peer is predicting).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::nat::schedule::{packets_per_round, BIRTHDAY_PROBES, PACKETS_PER_SECOND};
use crate::nat::{Plan, Role, Step};

/// Ticks between a leader's rounds: for its announcement to travel, the
/// follower's spray and announcement to come back, and the probes that
/// follow to cross both NATs.
const ROUND_TICKS: u32 = 2;
/// The leader between two sequential NATs waits this long for the
/// follower's observation: the follower answers only once its own node's
/// slot is free, and a later answer would meet a newer observation of
/// ours and have to answer again.
const STRIDE_LEAD_TICKS: u32 = 4;
/// Ticks a side that observes and then sprays waits for its own STUN
/// answer, holding the slot.
const OBSERVE_TICKS: u32 = 1;
/// Ticks a follower waits for the leader's first announcement before it
/// acts on what it knows (the peer may be an older build, or its
/// observation was lost).
const FOLLOW_WAIT_TICKS: u32 = 2;
/// Waiting, for the slot or the leader, stretches CONNECTING by at most
/// this many times its length, so a silent peer is given up in the end.
const MAX_WAIT_FACTOR: u32 = 2;

#[derive(Debug, Clone, Copy)]
struct Round {
    start: Instant,
    /// The node's slot is this round's until then.
    hold_until: Instant,
    /// A leader's next round starts no earlier.
    next_at: Instant,
    /// The spray from the observed socket went out.
    sprayed: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub plan: Plan,
    started: Instant,
    /// Rounds started, the fallback included.
    rounds: u32,
    fell_back: bool,
    round: Option<Round>,
    /// The announcement the latest round acted on (followers).
    acted_on: Option<SocketAddrV4>,
    /// The round's fresh socket mapping, once STUN told it.
    own: Option<SocketAddrV4>,
    /// Time spent waiting, which CONNECTING's timeout does not count.
    waited: Duration,
    /// Waiting right now (counted on the next tick).
    blocked: bool,
    /// Of that, waiting for the node's slot.
    wants_slot: bool,
}

/// What the machine should do next for this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Nothing,
    /// Start a round of `step` acting on `on` (a follower's announcement;
    /// None: the leader's own start, or a follower's fallback).
    Round {
        step: Step,
        on: Option<SocketAddrV4>,
    },
    /// In the round: spray from the observed socket now.
    SprayObserved {
        step: Step,
    },
}

impl Attempt {
    pub fn new(plan: Plan, now: Instant) -> Self {
        Attempt {
            plan,
            started: now,
            rounds: 0,
            fell_back: false,
            round: None,
            acted_on: None,
            own: None,
            waited: Duration::ZERO,
            blocked: false,
            wants_slot: false,
        }
    }

    /// The slot is ours: a round of a hard step is running.
    pub fn holds_slot(&self, now: Instant) -> bool {
        self.plan.step.is_some_and(Step::is_hard) && self.round.is_some_and(|r| now < r.hold_until)
    }

    pub fn waits_for_slot(&self) -> bool {
        self.wants_slot
    }

    /// How much longer CONNECTING may last than its own timeout.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// One tick passed: a blocked attempt's wait counts, up to the cap.
    pub fn tick(&mut self, tick: Duration, connecting: Duration) {
        if self.blocked {
            self.waited = (self.waited + tick).min(connecting * MAX_WAIT_FACTOR);
        }
    }

    /// The next thing to do, given the peer's latest announcement
    /// (`heard`, with its arrival) and whether the node's slot is free.
    pub fn next(
        &mut self,
        now: Instant,
        tick: Duration,
        heard: Option<(SocketAddrV4, Instant)>,
        slot_free: bool,
    ) -> Next {
        let Some(step) = self.plan.step else {
            return Next::Nothing;
        };
        self.wants_slot = false;
        self.blocked = false;
        if let Some(next) = self.spray_observed(step, now, tick, heard) {
            return next;
        }
        if self.rounds >= self.plan.rounds + u32::from(self.fell_back) {
            return Next::Nothing;
        }
        let fresh = heard
            .map(|(ep, _)| ep)
            .filter(|&ep| Some(ep) != self.acted_on);
        let on = match self.plan.role {
            Role::Lead => {
                if self.round.is_some_and(|r| now < r.next_at) {
                    return Next::Nothing;
                }
                None
            }
            // A follower acts on each new announcement: the leader has
            // moved on to a newer observation, so the last round is spent.
            Role::Follow => {
                // Until the leader has announced once, this side waits:
                // that costs the attempt no time.
                self.blocked = heard.is_none();
                match fresh {
                    Some(ep) => Some(ep),
                    None if self.plan.fallback
                        && self.rounds == 0
                        && now >= self.started + self.follow_wait(step, tick) =>
                    {
                        self.fell_back = true;
                        None
                    }
                    None => return Next::Nothing,
                }
            }
        };
        let ours = self.round.is_some_and(|r| now < r.hold_until);
        if step.is_hard() && !slot_free && !ours {
            self.blocked = true;
            self.wants_slot = true;
            return Next::Nothing;
        }
        self.rounds += 1;
        let (hold, gap) = round_times(step, self.plan.role, tick);
        self.round = Some(Round {
            start: now,
            hold_until: now + hold,
            next_at: now + gap,
            sprayed: false,
        });
        self.acted_on = on.or(self.acted_on);
        self.own = None;
        Next::Round { step, on }
    }

    /// The current round's socket sprays once it knows its own mapping
    /// and, between two sequential NATs, the peer's base. The leader takes
    /// only a base announced after its round began: the one the follower
    /// observed in answer to it. A round that waited longer than its
    /// leader would has missed its chance: its observation is stale.
    fn spray_observed(
        &mut self,
        step: Step,
        now: Instant,
        tick: Duration,
        heard: Option<(SocketAddrV4, Instant)>,
    ) -> Option<Next> {
        let count = match step {
            Step::ObserveAndStride { count, .. } | Step::ObserveAndBirthday { count } => count,
            _ => return None,
        };
        let round = self.round.as_mut()?;
        let live = now < round.start + tick * STRIDE_LEAD_TICKS;
        if round.sprayed || self.own.is_none() || !live {
            return None;
        }
        let ready = match (step, self.plan.role) {
            (Step::ObserveAndStride { .. }, Role::Lead) => {
                heard.is_some_and(|(_, at)| at >= round.start)
            }
            _ => true,
        };
        if !ready {
            // Waiting for the follower within the round: nothing else to do.
            return (now < round.hold_until).then_some(Next::Nothing);
        }
        round.sprayed = true;
        // The slot is held while the probes leave, and no longer.
        round.hold_until = now + probe_time(usize::from(count));
        round.next_at = round.next_at.max(round.hold_until);
        Some(Next::SprayObserved { step })
    }

    /// The round's fresh socket is mapped at `mapped`.
    pub fn observed(&mut self, mapped: SocketAddrV4) {
        if self.round.is_some() {
            self.own = Some(mapped);
        }
    }

    /// The follower's base for a stride spray: what its round acted on.
    pub fn acted_on(&self) -> Option<SocketAddrV4> {
        self.acted_on
    }

    fn follow_wait(&self, step: Step, tick: Duration) -> Duration {
        // A birthday's cone sprays for seconds before it announces.
        let leader_spray = match step {
            Step::Sockets { .. } => probe_time(packets_per_round(Step::FreshPortBirthday {
                count: BIRTHDAY_PROBES as u16,
            })),
            _ => Duration::ZERO,
        };
        tick * FOLLOW_WAIT_TICKS + leader_spray
    }
}

fn probe_time(packets: usize) -> Duration {
    Duration::from_secs(1) / PACKETS_PER_SECOND * packets as u32
}

/// How long a round of `step` holds the slot, and when a leader's next
/// round may start. A side the peer predicts (it observed its NAT's next
/// port) holds it until the peer's probes can have crossed; one that
/// observes in order to spray, until it has sprayed; every other round
/// while its probes leave, since its NAT's later sessions change nothing
/// for the peer (a cone keeps its mapping, a random NAT was never
/// predicted).
fn round_times(step: Step, role: Role, tick: Duration) -> (Duration, Duration) {
    let probes = probe_time(packets_per_round(step));
    let hold = match (step, role) {
        (Step::Observe, _) => tick * ROUND_TICKS,
        (Step::ObserveAndStride { .. }, Role::Lead) => tick * STRIDE_LEAD_TICKS,
        (Step::ObserveAndStride { .. } | Step::ObserveAndBirthday { .. }, _) => {
            tick * OBSERVE_TICKS
        }
        _ => probes,
    };
    (hold, hold.max(probes + tick * ROUND_TICKS))
}
