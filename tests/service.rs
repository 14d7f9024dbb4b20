//! The binary as a service manager and a packager see it: `--check`,
//! `generate man|completions`, and systemd's READY=1 from the server.
//! Runs the real binary; needs no root (the server listens on loopback).

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringlink");

/// A directory of its own per test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringlink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ringlink(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn client_check_prints_the_defaults_and_starts_nothing() {
    let dir = Scratch::new("check-client");
    let sock = dir.0.join("ctl.sock");
    let cfg = dir.file(
        "client.toml",
        &format!(
            "server = \"ws://10.91.0.1:7443\"\npassword = \"s3cret\"\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    );
    let out = ringlink(&["client", "--check", "--config", cfg.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in [
        "tun = \"rl0\"",
        "mtu = 1400",
        "workers = 0",
        "discovery = 60",
        "route_cost = 5",
        "cipher = \"aes-256-gcm\"",
        "offload = true",
        "pin_workers = true",
        "password = \"(hidden)\"",
    ] {
        assert!(stdout.lines().any(|l| l == line), "`{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret"), "password printed:\n{stdout}");
    // Nothing was started: the control socket a running client makes is
    // not there.
    assert!(!sock.exists());
}

#[test]
fn client_check_prints_the_public_key_and_refuses_a_shared_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("check-key");
    let key = dir.0.join("node.key");
    let cfg = dir.file(
        "client.toml",
        &format!(
            "server = \"ws://10.91.0.1:7443\"\npassword = \"p\"\nkey_file = \"{}\"\n",
            key.display()
        ),
    );
    let check = || ringlink(&["client", "--check", "--config", cfg.to_str().unwrap()]);
    // No key yet: the check says so and creates none.
    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("public key: none yet"),
        "{out:?}"
    );
    assert!(!key.exists());
    // RFC 7748's Alice: her public key is printed in base64.
    std::fs::write(&key, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("# public key: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="),
        "{}",
        text(&out.stdout)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("chmod 600"), "{out:?}");
}

#[test]
fn server_check_prints_the_defaults() {
    let dir = Scratch::new("check-server");
    let cfg = dir.file(
        "server.toml",
        "listen = \"10.91.0.1:7443\"\npassword = \"s3cret\"\npool = \"10.77.0.0/24\"\n",
    );
    let out = ringlink(&["server", "--check", "--config", cfg.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("stun = \"10.91.0.1:3478\""), "{stdout}");
    assert!(stdout.contains("max_clients = 4096"), "{stdout}");
}

#[test]
fn shipped_example_configs_pass_check() {
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/config");
    for kind in ["client", "server"] {
        let file = format!("{dist}/{kind}.toml.example");
        let out = ringlink(&[kind, "--check", "--config", &file]);
        assert!(out.status.success(), "{file}: {out:?}");
    }
}

#[test]
fn check_exits_2_naming_the_key() {
    let dir = Scratch::new("check-errors");
    let cases = [
        (
            "client",
            "server = \"ws://10.91.0.1:7443\"\npassword = \"p\"\nmtu = 9000\n",
            "mtu",
        ),
        (
            "server",
            "listen = \"10.91.0.1\"\npassword = \"p\"\npool = \"10.77.0.0/24\"\n",
            "listen",
        ),
    ];
    for (kind, toml, key) in cases {
        let cfg = dir.file(&format!("{kind}.toml"), toml);
        let out = ringlink(&[kind, "--check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{kind}: {out:?}");
        assert!(out.stdout.is_empty(), "{kind}: printed a config: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("key `{key}`")), "{kind}: {stderr}");
    }
}

#[test]
fn generate_writes_man_pages_for_the_visible_commands() {
    let dir = Scratch::new("man");
    let out = ringlink(&["generate", "man", dir.0.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "ringlink.1",
        "ringlink-server.1",
        "ringlink-client.1",
        "ringlink-status.1",
        "ringlink-metrics.1",
    ] {
        let body = std::fs::read_to_string(dir.0.join(page)).unwrap_or_default();
        assert!(body.contains(".TH "), "{page}: {body:.80}");
    }
    let client = std::fs::read_to_string(dir.0.join("ringlink-client.1")).unwrap();
    assert!(
        client.contains("check"),
        "the client page documents --check"
    );
    // The packaging helper itself stays out of the manual.
    assert!(!dir.0.join("ringlink-generate.1").exists());
}

#[test]
fn generate_prints_completions_per_shell() {
    // How each shell's script spells the client's --check option.
    for (shell, marker, check) in [
        ("bash", "complete -F", "--check"),
        ("zsh", "#compdef ringlink", "--check"),
        ("fish", "complete -c ringlink", "-l check"),
    ] {
        let out = ringlink(&["generate", "completions", shell]);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(script.contains(check), "{shell} completes --check");
    }
    let out = ringlink(&["generate", "completions", "cmd.exe"]);
    assert!(!out.status.success());
}

/// Kills the server if an assertion fails first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn server_sends_ready_once_listening() {
    let dir = Scratch::new("notify");
    let notify_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let cfg = dir.file(
        "server.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\npassword = \"p\"\npool = \"10.77.0.0/24\"\nstun = \"\"\nmetrics = \"\"\ncontrol_socket = \"{}\"\n",
            dir.0.join("server.sock").display()
        ),
    );
    let child = Command::new(BIN)
        .args(["server", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    let message = receive_within(&notify, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = server.0.kill();
        let mut log = String::new();
        if let Some(e) = server.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut log);
        }
        panic!("no notification within 30 s; server log:\n{log}")
    });
    let lines: Vec<&str> = message.lines().collect();
    assert!(lines.contains(&"READY=1"), "{message}");
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .unwrap_or_else(|| panic!("no listening status in {message}"));
    // READY means the port accepts connections now, not soon.
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // Exactly one notification.
    assert_eq!(receive_within(&notify, Duration::from_millis(300)), None);
}

fn receive_within(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => return Some(text(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for one notification and returns its lines.
fn notified(sock: &UnixDatagram) -> Vec<String> {
    receive_within(sock, Duration::from_secs(30))
        .expect("no notification within 30 s")
        .lines()
        .map(str::to_string)
        .collect()
}

/// SIGHUP as `systemctl reload` sends it: RELOADING=1, the live keys
/// applied (the metrics port moves, the log line says what changed and
/// what needs a restart), READY=1; a broken file is refused and the server
/// keeps running with what it had. `ringlink status --server` answers on
/// the configured control socket throughout.
#[test]
fn server_reloads_on_sighup() {
    let dir = Scratch::new("reload");
    let notify_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let sock = dir.0.join("server.sock");
    let (old_port, new_port) = (free_port(), free_port());
    let file = |metrics: u16, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\npassword = \"p\"\npool = \"10.77.0.0/24\"\nstun = \"\"\nmetrics = \"127.0.0.1:{metrics}\"\ncontrol_socket = \"{}\"\n{extra}",
            sock.display()
        )
    };
    const LAB: &str =
        "[[network]]\nname = \"lab\"\npath = \"/lab\"\npassword = \"q\"\npool = \"10.78.0.0/24\"\n";
    let cfg = dir.file("server.toml", &file(old_port, LAB));
    let child = Command::new(BIN)
        .args(["server", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    let pid = server.0.id() as libc::pid_t;
    assert!(notified(&notify).contains(&"READY=1".to_string()));
    TcpStream::connect(("127.0.0.1", old_port)).expect("metrics on the first port");

    let status = ringlink(&[
        "status",
        "--server",
        "--socket",
        sock.to_str().unwrap(),
        "--json",
    ]);
    assert!(status.status.success(), "{status:?}");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["networks"][0]["pool"], "10.77.0.0/24");
    assert_eq!(doc["networks"][1]["name"], "lab");
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(0));
    let table = ringlink(&["status", "--server", "--socket", sock.to_str().unwrap()]);
    assert!(text(&table.stdout).contains("no members"), "{table:?}");

    dir.file(
        "server.toml",
        &file(
            new_port,
            &format!(
                "log = \"debug\"\nmax_clients = 10\n[[route]]\ndst = \"192.168.21.0/24\"\nvia = \"10.77.0.20\"\n{LAB}[[network.route]]\ndst = \"192.168.9.0/24\"\nvia = \"10.78.0.9\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nname = \"a\"\n"
            ),
        ),
    );
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloading = notified(&notify);
    assert!(
        reloading.contains(&"RELOADING=1".to_string()),
        "{reloading:?}"
    );
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    assert!(notified(&notify).contains(&"READY=1".to_string()));
    assert!(
        TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old metrics port still answers"
    );
    TcpStream::connect(("127.0.0.1", new_port)).expect("metrics on the new port");

    dir.file("server.toml", "listen = \"127.0.0.1:0\"\npassword =\n");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(notified(&notify).contains(&"RELOADING=1".to_string()));
    assert!(notified(&notify).contains(&"READY=1".to_string()));
    assert!(matches!(server.0.try_wait(), Ok(None)), "the server exited");
    TcpStream::connect(("127.0.0.1", new_port)).expect("metrics stay where they were");
    let again = ringlink(&[
        "status",
        "--server",
        "--socket",
        sock.to_str().unwrap(),
        "--json",
    ]);
    assert!(again.status.success(), "{again:?}");

    let _ = server.0.kill();
    let _ = server.0.wait();
    let mut log = String::new();
    if let Some(e) = server.0.stderr.as_mut() {
        let _ = e.read_to_string(&mut log);
    }
    let applied = format!(
        "reload: applied log=\"debug\", metrics=127.0.0.1:{new_port}, routes +192.168.21.0/24 via 10.77.0.20 for 10.77.0.0/24 (sent to 0 members), network lab routes +192.168.9.0/24 via 10.78.0.9 for 10.78.0.0/24 (sent to 0 members)"
    );
    assert!(log.contains(&applied), "{applied} in:\n{log}");
    assert!(
        log.contains(
            "reload: changed but needs a restart to take effect: max_clients, [cluster] (added)"
        ),
        "{log}"
    );
    assert!(
        log.contains("reload rejected, keeping the running configuration"),
        "{log}"
    );
}
