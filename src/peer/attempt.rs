//! One hard-NAT attempt of one peer (docs/protocol.md §9.2): the plan both
//! sides derived from their NAT classes, and how far it has got. The
//! decisions are in `machine.rs`; this holds the state they read.
//!
//! An attempt runs in rounds. A leader starts a round when CONNECTING
//! starts and again whenever the last one ended without a proven path; a
//! follower starts one for each endpoint the peer announces (a fresh
//! socket's mapping). A round of a hard step holds the node's one hard-NAT
//! slot until it ends, so no two such rounds of one node overlap: their
//! probes would share the router's session table and, behind a sequential
//! NAT, move the port the peer is predicting.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::nat::schedule::{packets_per_round, PACKETS_PER_SECOND};
use crate::nat::{Plan, Role, Step};

/// Ticks a round outlasts its probes: for the peer's answer to an
/// announcement (a spray, a STUN request, a relayed UDP4CONN and a
/// challenge) to cross both NATs.
const ROUND_GRACE_TICKS: u32 = 2;
/// The leader between two sequential NATs waits this long for the
/// follower's observation: the follower answers only once its own node's
/// slot is free, and a later answer meets a newer observation of ours that
/// it has to answer again.
const STRIDE_LEAD_TICKS: u32 = 4;
/// Ticks a follower waits for the leader's first announcement before it
/// acts on what it knows (the peer may be an older build, or its
/// observation was lost).
const FOLLOW_WAIT_TICKS: u32 = 2;
/// Waiting, for the slot or the leader, stretches CONNECTING by at most
/// this many times its length, so a silent peer is given up in the end.
const MAX_WAIT_FACTOR: u32 = 2;

#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub plan: Plan,
    started: Instant,
    rounds: u32,
    /// The current round's start and end (it holds the slot until then).
    round: Option<(Instant, Instant)>,
    /// The announcement the latest round acted on (followers).
    acted_on: Option<SocketAddrV4>,
    /// The round's fresh socket mapping, once STUN told it.
    own: Option<SocketAddrV4>,
    /// The round's spray from its observed socket went out.
    sprayed: bool,
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
    SprayObserved { step: Step },
}

impl Attempt {
    pub fn new(plan: Plan, now: Instant) -> Self {
        Attempt {
            plan,
            started: now,
            rounds: 0,
            round: None,
            acted_on: None,
            own: None,
            sprayed: false,
            waited: Duration::ZERO,
            blocked: false,
            wants_slot: false,
        }
    }

    /// The slot is ours: a round of a hard step is running.
    pub fn holds_slot(&self, now: Instant) -> bool {
        self.plan.step.is_some_and(Step::is_hard) && self.round.is_some_and(|(_, end)| now < end)
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
        let fresh = heard.map(|(ep, _)| ep).filter(|&ep| Some(ep) != self.acted_on);
        if let Some((start, end)) = self.round {
            // A follower's round is spent once the leader has moved on to
            // a newer observation: the next one starts at once.
            let superseded = self.plan.role == Role::Follow && fresh.is_some();
            if now < end && !(superseded && self.rounds < self.plan.rounds) {
                self.blocked = false;
                return self.in_round(step, start, heard);
            }
        }
        self.blocked = false;
        if self.rounds >= self.plan.rounds {
            return Next::Nothing;
        }
        let on = match self.plan.role {
            Role::Lead => None,
            Role::Follow => {
                // Until the leader has announced once, this side waits:
                // that costs the attempt no time.
                self.blocked = heard.is_none();
                match fresh {
                    Some(ep) => Some(ep),
                    None if self.rounds == 0 && now >= self.started + self.follow_wait(step, tick) => None,
                    None => return Next::Nothing,
                }
            }
        };
        if step.is_hard() && !slot_free {
            self.blocked = true;
            self.wants_slot = true;
            return Next::Nothing;
        }
        self.rounds += 1;
        self.round = Some((now, now + round_length(step, self.plan.role, tick)));
        self.acted_on = on.or(self.acted_on);
        self.own = None;
        self.sprayed = false;
        Next::Round { step, on }
    }

    /// Within a round: the observed socket sprays once it knows its own
    /// mapping and, between two sequential NATs, the peer's base. The
    /// leader takes only a base announced after its round began: the one
    /// the follower observed in answer to it.
    fn in_round(&mut self, step: Step, start: Instant, heard: Option<(SocketAddrV4, Instant)>) -> Next {
        if self.sprayed || self.own.is_none() {
            return Next::Nothing;
        }
        let ready = match step {
            Step::ObserveAndStride { .. } => match self.plan.role {
                Role::Lead => heard.is_some_and(|(_, at)| at >= start),
                Role::Follow => true,
            },
            Step::ObserveAndBirthday { .. } => true,
            _ => false,
        };
        if !ready {
            return Next::Nothing;
        }
        self.sprayed = true;
        Next::SprayObserved { step }
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
                count: crate::nat::schedule::BIRTHDAY_PROBES as u16,
            })),
            _ => Duration::ZERO,
        };
        tick * FOLLOW_WAIT_TICKS + leader_spray
    }
}

fn probe_time(packets: usize) -> Duration {
    Duration::from_secs(1) / PACKETS_PER_SECOND * packets as u32
}

/// How long a round of `step` holds the slot: its probes at the paced
/// rate, then time for the answer.
fn round_length(step: Step, role: Role, tick: Duration) -> Duration {
    let grace = match (step, role) {
        (Step::ObserveAndStride { .. }, Role::Lead) => STRIDE_LEAD_TICKS,
        _ => ROUND_GRACE_TICKS,
    };
    probe_time(packets_per_round(step)) + tick * grace
}
