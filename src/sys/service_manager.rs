//! Telling systemd (`Type=notify`) that the service is up, and when it is
//! reloading. Without `$NOTIFY_SOCKET` (not started by systemd) this does
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// Set once READY=1 went out: a reload before that (a client still waiting
/// for its first login) must not announce readiness when it ends.
static READY_SENT: AtomicBool = AtomicBool::new(false);

fn send(states: &[sd_notify::NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(%e, "could not tell the service manager {what}");
    }
}

/// Sends `READY=1` with a one-line status `systemctl status` shows. A
/// failure is logged, not fatal: the service itself works, and systemd
/// times the start out on its own if it never hears from us.
pub fn ready(status: &str) {
    READY_SENT.store(true, Ordering::Relaxed);
    send(
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
        "we are ready",
    );
}

/// `RELOADING=1`, when a reload starts. MONOTONIC_USEC goes with it, as
/// systemd 253 and later require (older ones ignore it).
pub fn reloading() {
    if !READY_SENT.load(Ordering::Relaxed) {
        return;
    }
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states, "we are reloading");
}

/// `READY=1` again once a reload is over, applied or refused.
pub fn reloaded(status: &str) {
    if READY_SENT.load(Ordering::Relaxed) {
        ready(status);
    }
}
