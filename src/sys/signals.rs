//! Keeping the process signals (SIGHUP for a reload, SIGINT and SIGTERM to
//! stop) on the control thread.
//!
//! The kernel hands a process-directed signal to any thread that does not
//! block it. On a dataplane worker it would cut the worker's io_uring wait
//! short for nothing; threads started inside [`with_process_signals_blocked`]
//! inherit a mask that keeps them out of the choice, so the signals land on
//! threads where tokio's handlers turn them into events.

/// The signals the control side handles.
const HANDLED: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM];

/// Restores the calling thread's mask, even if the closure panics.
struct Restore(libc::sigset_t);

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: a valid set saved by pthread_sigmask below.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// Runs `f` with SIGHUP, SIGINT and SIGTERM blocked on this thread, so the
/// threads `f` spawns start (and stay) with them blocked. The calling
/// thread's mask is as before when it returns.
pub fn with_process_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls only read and write the sets passed.
    let _restore = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0).then_some(Restore(old))
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_here(sig: libc::c_int) -> bool {
        // SAFETY: as above; a null new set only reads the mask.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, sig) == 1
        }
    }

    #[test]
    fn spawned_threads_inherit_the_mask_and_the_caller_gets_its_own_back() {
        let before: Vec<bool> = HANDLED.iter().map(|&s| blocked_here(s)).collect();
        let child = with_process_signals_blocked(|| {
            assert!(HANDLED.iter().all(|&s| blocked_here(s)));
            std::thread::spawn(|| HANDLED.iter().map(|&s| blocked_here(s)).collect::<Vec<_>>())
        });
        assert_eq!(child.join().unwrap(), [true, true, true]);
        let after: Vec<bool> = HANDLED.iter().map(|&s| blocked_here(s)).collect();
        assert_eq!(before, after);
        // Other signals are left alone.
        let usr1 = with_process_signals_blocked(|| blocked_here(libc::SIGUSR1));
        assert_eq!(usr1, blocked_here(libc::SIGUSR1));
    }
}
