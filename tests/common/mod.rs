//! Helpers shared by the root-only tests that need a TUN device in a
//! network namespace of their own. Those tests are `#[ignore = "needs
//! root"]`; run with `--include-ignored` (as CI does) they fail loudly when
//! the privilege or the device is missing, so a green run always means the
//! scenario ran.

use std::path::Path;

use ringlink::dataplane::Upcall;
use ringlink::proto::ws::WsMessage;

/// Panics, naming what is missing, unless this process may create network
/// namespaces and TUN devices.
fn require_root_and_tun() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "needs root (network namespace and TUN device); run as root or leave it ignored"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "needs /dev/net/tun, which is absent on this host"
    );
}

/// Run `scenario` on a new thread inside a new network namespace, so it
/// never touches the host's interfaces; panics if the namespace cannot be
/// made, and passes on the scenario's own panics.
pub fn run_in_own_netns(scenario: fn()) {
    require_root_and_tun();
    std::thread::spawn(move || {
        // SAFETY: unshare only affects the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        scenario()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The packet a relay upcall carries, if it is one: the FORWARD frame the
/// server decodes, checked to be one.
pub fn relayed_packet(up: &Upcall) -> Option<&[u8]> {
    let Upcall::RelayFrame(frame) = up else {
        return None;
    };
    match WsMessage::decode(frame) {
        Ok(WsMessage::Forward(packet)) => Some(packet),
        other => panic!("relay frame is not a FORWARD: {other:?}"),
    }
}
