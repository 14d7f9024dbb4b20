//! Telling systemd (`Type=notify`) that the service is up. Without
//! `$NOTIFY_SOCKET` (not started by systemd) this does nothing.

use tracing::warn;

/// Sends `READY=1` with a one-line status `systemctl status` shows. A
/// failure is logged, not fatal: the service itself works, and systemd
/// times the start out on its own if it never hears from us.
pub fn ready(status: &str) {
    let states = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ];
    if let Err(e) = sd_notify::notify(&states) {
        warn!(%e, "could not tell the service manager we are ready");
    }
}
