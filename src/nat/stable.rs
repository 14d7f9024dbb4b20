//! Hysteresis between classification runs and the class the node publishes
//! (and chooses methods with), so a flapping measurement cannot flap the
//! method.
//!
//! The rule:
//! - the first classified run is published at once (there is nothing to
//!   flap from);
//! - after that, a run whose [`NatKind`] differs from the published one is
//!   a *candidate*; the published kind changes only after
//!   [`AGREEING_RUNS`] classified runs in a row agree on the same new kind;
//! - a run that agrees with the published kind clears any candidate; a run
//!   with another new kind restarts the count on that kind;
//! - runs without an answer ([`Outcome::NoAnswer`]) say nothing about the
//!   NAT and neither count nor clear;
//! - the public endpoints of an agreeing run are taken at once: a NAT that
//!   rebooted onto a new port is still the same kind of NAT.

use super::class::{NatClass, NatKind};
use super::classify::Outcome;

/// Consecutive agreeing runs before the published kind changes. With the
/// classifier re-run every few minutes, three runs keep a one-off outlier
/// (a lost CHANGE-REQUEST answer, a busy router skewing the delta) from
/// ever reaching the method, at the cost of following a real change late.
pub const AGREEING_RUNS: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct StableClass {
    published: Option<NatClass>,
    candidate: Option<(NatKind, u32)>,
}

impl StableClass {
    pub fn published(&self) -> Option<&NatClass> {
        self.published.as_ref()
    }

    /// Takes one run's outcome; returns true when the published kind changed.
    pub fn observe(&mut self, outcome: Outcome) -> bool {
        let Outcome::Classified(run) = outcome else {
            return false;
        };
        let Some(published) = &mut self.published else {
            self.published = Some(run);
            return true;
        };
        if run.kind == published.kind {
            *published = run;
            self.candidate = None;
            return false;
        }
        let agreeing = match self.candidate {
            Some((kind, n)) if kind == run.kind => n + 1,
            _ => 1,
        };
        if agreeing >= AGREEING_RUNS {
            *published = run;
            self.candidate = None;
            true
        } else {
            self.candidate = Some((run.kind, agreeing));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::class::{Delta, Filtering, Mapping};

    fn run(filtering: Filtering, port: u16) -> Outcome {
        let mapped = std::net::SocketAddrV4::new([198, 51, 100, 7].into(), port);
        Outcome::Classified(NatClass {
            mapped,
            last_mapped: mapped,
            kind: NatKind {
                behind_nat: true,
                mapping: Mapping::EndpointIndependent,
                filtering,
                delta: Delta::Equal,
            },
        })
    }

    const EIF: Filtering = Filtering::EndpointIndependent;
    const APDF: Filtering = Filtering::AddressAndPortDependent;

    #[test]
    fn flapping_runs_never_change_the_published_kind() {
        let mut s = StableClass::default();
        assert!(s.observe(run(EIF, 1)));
        let flaps = [
            APDF,
            EIF,
            APDF,
            APDF,
            EIF,
            APDF,
            APDF,
            Filtering::Unknown,
            APDF,
            EIF,
        ];
        for (i, f) in flaps.into_iter().enumerate() {
            assert!(!s.observe(run(f, 1)), "run {i} ({f:?}) changed the class");
            assert_eq!(s.published().unwrap().kind.filtering, EIF, "after run {i}");
        }
    }

    #[test]
    fn a_lasting_change_is_followed_after_three_runs() {
        let mut s = StableClass::default();
        s.observe(run(EIF, 1));
        assert!(!s.observe(run(APDF, 2)));
        assert!(
            !s.observe(Outcome::NoAnswer),
            "no answer neither counts nor resets"
        );
        assert!(!s.observe(run(APDF, 3)));
        assert!(s.observe(run(APDF, 4)));
        assert_eq!(s.published().unwrap().kind.filtering, APDF);
        assert_eq!(s.published().unwrap().mapped.port(), 4);
    }

    #[test]
    fn an_agreeing_run_updates_the_endpoint_at_once() {
        let mut s = StableClass::default();
        assert!(!s.observe(Outcome::NoAnswer));
        assert!(s.published().is_none());
        s.observe(run(EIF, 1));
        assert!(!s.observe(run(EIF, 9)));
        assert_eq!(s.published().unwrap().mapped.port(), 9);
    }
}
