//! The Debian package as an administrator gets it: `scripts/package --debug`
//! builds it (the debug build the suite made; a release is the same script
//! without the flag), its contents are what docs/operations.md's "Installing"
//! names, it unpacks into a temporary root whose binary runs, its systemd unit
//! passes `systemd-analyze verify`, and a daemon started from it the way
//! systemd starts it (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) says
//! READY once it has formed its view, pets the watchdog, and says STOPPING
//! when stopped. (These machines do not run systemd as PID 1: the protocol is
//! tested on a socket the test listens on, not a live systemd.)

use crate::daemons::Cluster;
use crate::support::{output_text, repo};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Build the package, once for all the tests here; its path.
fn build_package() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(package).clone()
}

fn package() -> PathBuf {
    let out = Command::new(repo().join("scripts/package"))
        .arg("--debug")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/package: {}",
        output_text(&out)
    );
    let dir = repo().join("target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

/// `deb` unpacked into a temporary root; the root and its `baton`.
fn unpack(deb: &Path) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
    let baton = root.path().join("usr/bin/baton");
    (root, baton)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The datagrams on `sock` until one contains `want` (bounded); all of them.
fn until_message(sock: &UnixDatagram, want: &str, got: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(
            Instant::now() < deadline,
            "no {want} from the daemon; it sent {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn the_package_installs_a_binary_a_unit_and_docs_that_work_from_their_paths() {
    let deb = build_package();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/baton",
        "./usr/lib/systemd/system/baton.service",
        "./usr/lib/baton/agents/libbaton_postgresql.so",
        "./usr/share/man/man1/baton.1.gz",
        "./usr/share/man/man1/baton-run.1.gz",
        "./usr/share/bash-completion/completions/baton",
        "./usr/share/zsh/vendor-completions/_baton",
        "./usr/share/fish/vendor_completions.d/baton.fish",
        "./usr/share/doc/baton/operations.md",
        "./usr/share/doc/baton/monitoring/baton-alerts.yml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains("Package: baton"), "{info}");
    let postinst = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(
        postinst.contains("install -d -m 0700 /etc/baton /var/lib/baton"),
        "{postinst}"
    );
    // An upgrade does not restart the daemon behind the administrator's back.
    assert!(!postinst.contains("try-restart"), "{postinst}");

    let (root, baton) = unpack(&deb);
    assert!(run(Command::new(&baton).arg("--version")).starts_with("baton "));
    let man = root.path().join("usr/share/man");
    let page = run(Command::new("man")
        .env("MANPATH", &man)
        .args(["-w", "baton-run"]));
    assert!(page.trim().ends_with("man1/baton-run.1.gz"), "{page}");

    // The unit: what it promises, and systemd's own check of it (its
    // ExecStart pointed at the unpacked binary, its man pages found there).
    let unit_path = root.path().join("usr/lib/systemd/system/baton.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/baton --config /etc/baton/cluster.toml run",
        "Restart=on-failure",
        "KillMode=mixed",
        "RuntimeDirectory=baton",
        "StateDirectory=baton",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    let check = root.path().join("check");
    std::fs::create_dir(&check).unwrap();
    std::fs::write(
        check.join("baton.service"),
        unit.replace("/usr/bin/baton", &baton.display().to_string()),
    )
    .unwrap();
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = Command::new("systemd-analyze")
            .env("MANPATH", &man)
            .arg("verify")
            .arg(check.join("baton.service"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && output_text(&out).trim().is_empty(),
            "systemd-analyze verify: {}",
            output_text(&out)
        );
    } else {
        eprintln!("systemd-analyze is not installed: the unit's own check skipped");
    }
}

/// The unpacked package's daemon, started as systemd starts a Type=notify unit
/// with WatchdogSec=: READY once its node joined the others, a status that
/// says so, the watchdog petted from the loop, STOPPING on SIGTERM.
#[test]
fn the_packaged_daemon_speaks_the_systemd_notify_protocol() {
    let deb = build_package();
    let (root, baton) = unpack(&deb);

    let mut c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    // Without --node, the node is named after the host: not one of n1..n3.
    let out = Command::new(&baton)
        .arg("--config")
        .arg(&c.config)
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("give --node NAME, or name the node after the host"),
        "{}",
        output_text(&out)
    );

    c.kill_node(3);
    let notify = root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let config = c.config.clone();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(&baton)
        .args(c.node_args(3, &config))
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = Daemon(cmd.spawn().unwrap());
    let mut got = Vec::new();
    until_message(&sock, "READY=1", &mut got);
    let ready = got.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=quorate; members n1, n2, n3"),
        "{ready}"
    );
    let pets = |got: &Vec<String>| got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while pets(&got) < 3 {
        assert!(
            Instant::now() < deadline,
            "the watchdog was petted {} times: {got:?}",
            pets(&got)
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // SAFETY: signalling the daemon this test started.
    unsafe {
        libc::kill(daemon.0.id() as i32, libc::SIGTERM);
    }
    until_message(&sock, "STOPPING=1", &mut got);
    assert!(daemon.0.wait().unwrap().success());
}

/// A daemon stopped with SIGKILL when dropped (also when the test fails).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
