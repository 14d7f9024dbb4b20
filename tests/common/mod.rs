//! Helpers shared by the root-only tests that need a TUN device in a
//! network namespace of their own.

use std::path::Path;

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is absent");
    }
    None
}

/// Run `f` on a new thread inside a new network namespace. `None` if the
/// namespace could not be created; `f` never runs in the host namespace.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare only affects the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping: unshare(CLONE_NEWNET) failed: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .expect("test thread panicked")
}

/// Run `scenario` in a namespace of its own, or say why it was skipped.
pub fn run_in_own_netns(name: &str, scenario: fn()) {
    if let Some(why) = skip_reason() {
        eprintln!("skipping {name}: {why}");
        return;
    }
    if in_new_netns(scenario).is_none() {
        eprintln!("skipping {name}: no network namespace");
    }
}
