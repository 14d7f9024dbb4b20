//! CPU pinning for dataplane workers.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("cpu {cpu} is out of range (the affinity mask holds {max} cpus)")]
    CpuOutOfRange { cpu: usize, max: usize },
    #[error("sched_setaffinity to cpu {cpu} failed: {source}")]
    SetAffinity { cpu: usize, source: io::Error },
    #[error("sched_getaffinity failed: {source}")]
    GetAffinity { source: io::Error },
}

/// Bits in a `cpu_set_t`; CPUs above this cannot be expressed with it.
const CPU_SET_BITS: usize = std::mem::size_of::<libc::cpu_set_t>() * 8;

/// Pin the calling thread to exactly one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<(), AffinityError> {
    if cpu >= CPU_SET_BITS {
        return Err(AffinityError::CpuOutOfRange {
            cpu,
            max: CPU_SET_BITS,
        });
    }
    // SAFETY: cpu_set_t is a plain bit array; zeroed means "no cpus".
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SET_BITS was checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the
    // size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(AffinityError::SetAffinity {
            cpu,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Number of online CPUs (at least 1).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}

/// The CPUs the calling thread may run on, ascending. In a cgroup or under
/// `taskset` this is narrower than the online set, and pinning a worker
/// outside it would fail, so workers are placed from this list.
pub fn allowed_cpus() -> Result<Vec<usize>, AffinityError> {
    // SAFETY: as in pin_current_thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most
    // size_of::<cpu_set_t>() bytes into set.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(AffinityError::GetAffinity {
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: every index is below CPU_SET_BITS.
    Ok((0..CPU_SET_BITS)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// CPU for worker `index`: round-robin over `allowed`, so more workers than
/// CPUs wrap around instead of failing. `None` when `allowed` is empty.
pub fn cpu_for_worker(index: usize, allowed: &[usize]) -> Option<usize> {
    if allowed.is_empty() {
        None
    } else {
        Some(allowed[index % allowed.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_is_positive_and_allowed_is_nonempty() {
        assert!(online_cpus() >= 1);
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert!(allowed.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn workers_wrap_around_allowed_cpus() {
        let allowed = [2, 5];
        let got: Vec<_> = (0..5)
            .map(|i| cpu_for_worker(i, &allowed).unwrap())
            .collect();
        assert_eq!(got, [2, 5, 2, 5, 2]);
        assert_eq!(cpu_for_worker(0, &[]), None);
    }

    #[test]
    fn pin_in_own_thread() {
        let cpu = allowed_cpus().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
        })
        .join()
        .unwrap();
        assert!(matches!(
            pin_current_thread(CPU_SET_BITS),
            Err(AffinityError::CpuOutOfRange { .. })
        ));
    }
}
