//! `ringlink demo`: the namespace demo network. The topology and checks
//! live in a shell script shared with the netns tests (so the demo shows
//! exactly what the tests assert); the binary embeds it and runs it against
//! itself.

use std::io::Write;
use std::process::Command;

const LIB: &str = include_str!("../netns-tests/lib.sh");
const DEMO: &str = include_str!("../netns-tests/demo.sh");

pub fn run() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo creates network namespaces and TUN devices: run it as root (sudo ringlink demo)".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Err(format!(
                "the demo needs `{tool}` (Debian: apt-get install iproute2 nftables)"
            ));
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("ringlink-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let script = dir.join("demo.sh");
    let mut f = std::fs::File::create(&script).map_err(|e| format!("{}: {e}", script.display()))?;
    f.write_all(LIB.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.write_all(DEMO.as_bytes()))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    drop(f);
    // Ctrl-C reaches bash too, whose trap tears the namespaces down; this
    // process must outlive that cleanup, so it catches SIGINT and waits. A
    // caught (not ignored) signal is reset to default in the child on exec.
    // SAFETY: the handler only returns; it touches no state.
    unsafe {
        libc::signal(
            libc::SIGINT,
            ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let status = Command::new("bash")
        .arg(&script)
        .env("RINGLINK", &exe)
        .status()
        .map_err(|e| format!("running bash: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err("demo interrupted; namespaces removed".into()),
        _ => Err(format!("demo failed ({status})")),
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}
