//! P2PD's delta type and value from a run's new mappings.
//!
//! The input is (local port, mapped port) for every *new* NAT session of a
//! run, in the order the sessions were created; the rules, tried in order:
//!
//! 1. `Equal`: every mapped port equals its local port.
//! 2. `Preserving`: mapped − local is the same for every sample.
//! 3. `Independent(Δ)`: successive mapped ports step by Δ ≠ 0. Other hosts
//!    behind the same NAT may take ports between two of ours, so a step may
//!    be larger than Δ: it is enough that at least two thirds of the steps
//!    equal Δ and the rest go the same way and skip at most
//!    [`MAX_FOREIGN_SESSIONS`] sessions.
//! 4. `Dependent(Δ)`: every mapped step equals Δ × the local step.
//! 5. `Random` otherwise. Fewer than [`MIN_SAMPLES`] samples: `Unknown`.

use super::class::Delta;

/// Three sessions give two steps: the least that shows a pattern.
pub const MIN_SAMPLES: usize = 3;
/// Sessions another host may open between two of ours and still leave the
/// NAT "sequential" (a busy home router, a few per second).
pub const MAX_FOREIGN_SESSIONS: i32 = 8;

/// A port difference in −32768..=32767, so a step across 65535→0 is small.
fn port_step(from: u16, to: u16) -> i32 {
    i32::from(to.wrapping_sub(from) as i16)
}

pub fn infer(samples: &[(u16, u16)]) -> Delta {
    if samples.len() < MIN_SAMPLES {
        return Delta::Unknown;
    }
    if samples.iter().all(|&(local, mapped)| local == mapped) {
        return Delta::Equal;
    }
    let offset = |&(local, mapped): &(u16, u16)| mapped.wrapping_sub(local);
    if samples.iter().all(|s| offset(s) == offset(&samples[0])) {
        return Delta::Preserving;
    }
    let steps: Vec<(i32, i32)> = samples
        .windows(2)
        .map(|w| (port_step(w[0].0, w[1].0), port_step(w[0].1, w[1].1)))
        .collect();
    if let Some(d) = independent_step(&steps) {
        return Delta::Independent(d);
    }
    if let Some(d) = dependent_scale(&steps) {
        return Delta::Dependent(d);
    }
    Delta::Random
}

fn independent_step(steps: &[(i32, i32)]) -> Option<i32> {
    let mapped: Vec<i32> = steps.iter().map(|&(_, m)| m).collect();
    // The most common non-zero step, the smallest on a tie (foreign
    // sessions only ever make a step larger).
    let delta = mapped
        .iter()
        .copied()
        .filter(|&d| d != 0)
        .max_by_key(|&d| (mapped.iter().filter(|&&x| x == d).count(), -d.abs()))?;
    let exact = mapped.iter().filter(|&&d| d == delta).count();
    let plausible = mapped.iter().all(|&d| {
        d == delta
            || (d.signum() == delta.signum() && d.abs() <= delta.abs() * (1 + MAX_FOREIGN_SESSIONS))
    });
    (exact * 3 >= mapped.len() * 2 && plausible).then_some(delta)
}

fn dependent_scale(steps: &[(i32, i32)]) -> Option<i32> {
    let (l0, m0) = steps[0];
    if l0 == 0 || m0 % l0 != 0 {
        return None;
    }
    let scale = m0 / l0;
    let fits = steps
        .iter()
        .all(|&(l, m)| l != 0 && l.checked_mul(scale) == Some(m));
    (scale != 0 && fits).then_some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_from_its_pattern() {
        assert_eq!(
            infer(&[(40000, 40000), (40007, 40007), (39000, 39000)]),
            Delta::Equal
        );
        assert_eq!(
            infer(&[(40000, 50000), (40007, 50007), (39000, 49000)]),
            Delta::Preserving
        );
        assert_eq!(
            infer(&[(40000, 2000), (40007, 2001), (39000, 2002), (41000, 2003)]),
            Delta::Independent(1)
        );
        assert_eq!(
            infer(&[(40000, 2000), (40007, 1998), (39000, 1996)]),
            Delta::Independent(-2)
        );
        assert_eq!(
            infer(&[(100, 1000), (103, 1006), (101, 1002), (110, 1020)]),
            Delta::Dependent(2)
        );
        assert_eq!(
            infer(&[(40000, 2000), (40007, 61234), (39000, 777), (41000, 30333)]),
            Delta::Random
        );
        assert_eq!(infer(&[(40000, 2000), (40007, 2001)]), Delta::Unknown);
    }

    #[test]
    fn sequential_survives_a_few_foreign_sessions_but_not_many() {
        // Another host took two ports between our second and third session.
        let busy = [(1, 2000), (9, 2001), (4, 2004), (7, 2005), (3, 2006)];
        assert_eq!(infer(&busy), Delta::Independent(1));
        let too_busy = [(1, 2000), (9, 2001), (4, 2100), (7, 2101), (3, 2300)];
        assert_eq!(infer(&too_busy), Delta::Random);
    }

    #[test]
    fn steps_wrap_around_the_port_space() {
        assert_eq!(
            infer(&[(1, 65534), (9, 65535), (4, 0), (7, 1)]),
            Delta::Independent(1)
        );
    }
}
