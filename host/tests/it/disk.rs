//! The shared-disk agents against real loop devices (root only): `disk-lease`
//! (one holder at a time, a held lease waited out, other clusters' leases and
//! foreign data refused) and `filesystem` (mount, busy unmount, refusals).

use crate::support::{baton_exe, catalog, request};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A file-backed disk: the whole file as one loop device (lease slots in its
/// first MiB) and an ext4 filesystem after the first MiB as a second one.
pub struct LoopDisk {
    _file: tempfile::NamedTempFile,
    /// The whole disk (lease area at its start).
    pub whole: String,
    /// The filesystem partition.
    pub fs: String,
}

fn losetup(args: &[&str]) -> String {
    let out = Command::new("losetup").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "losetup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopDisk {
    /// A 64 MiB disk, or `None` when not root.
    pub fn new() -> Option<LoopDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("disk tests need root (loop devices); skipped");
            return None;
        }
        let file = tempfile::Builder::new()
            .prefix("baton-disk")
            .tempfile()
            .unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "offset=1048576", &path])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.ext4: {out:?}");
        let whole = losetup(&["-f", "--show", &path]);
        let fs = losetup(&["-f", "--show", "-o", "1048576", &path]);
        Some(LoopDisk {
            _file: file,
            whole,
            fs,
        })
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.fs).output();
        let _ = Command::new("losetup")
            .args(["-d", &self.fs, &self.whole])
            .output();
    }
}

fn agent_test(name: &str, params: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(baton_exe());
    cmd.args(["agent", "test", name]);
    for p in params {
        cmd.args(["-p", p]);
    }
    cmd.output().unwrap()
}

#[test]
fn disk_lease_and_filesystem_pass_the_conformance_run() {
    let Some(disk) = LoopDisk::new() else { return };
    let out = agent_test(
        "disk-lease",
        &[
            &format!("device={}", disk.whole),
            "cluster=lab",
            "lease_ms=400",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let out = agent_test(
        "filesystem",
        &[
            &format!("device={}", disk.fs),
            &format!("directory={}", mnt.display()),
            "options=noatime",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `(node, resource)` request of `disk-lease` on `disk`'s slot 0.
fn lease_request(
    disk: &LoopDisk,
    node: &str,
    action: Action,
    timeout_ms: u64,
) -> baton_plugin_api::Request {
    let device = format!("device={}", disk.whole);
    let kv: Vec<(&str, &str)> = vec![
        ("device", device.strip_prefix("device=").unwrap()),
        ("cluster", "lab"),
        ("lease_ms", "400"),
    ];
    let mut req = request(action, "data-lease", &kv, timeout_ms);
    req.context.node = node.into();
    req
}

#[test]
fn a_lease_is_held_by_one_node_and_taken_over_only_once_its_holder_stops_renewing() {
    let Some(disk) = LoopDisk::new() else { return };
    let store = tempfile::tempdir().unwrap();
    let cat = catalog(store.path(), "");
    let (n1, n2) = (
        cat.load("disk-lease").unwrap(),
        cat.load("disk-lease").unwrap(),
    );

    assert!(
        n1.call(&lease_request(&disk, "n1", Action::Start, 5_000))
            .result
            .is_ok()
    );
    // n1 renews: n2 watches for its whole deadline and gives up, naming n1.
    let refused = n2
        .call(&lease_request(&disk, "n2", Action::Start, 1_500))
        .result
        .unwrap_err();
    assert_eq!(refused.class, ErrorClass::Generic, "{refused:?}");
    assert!(
        refused.reason.contains("held by node n1 and still renewed"),
        "{}",
        refused.reason
    );
    assert_eq!(
        n1.call(&lease_request(&disk, "n1", Action::Monitor, 5_000))
            .result
            .unwrap(),
        Outcome::State(MonitorState::Running)
    );
    // A clean stop releases it: n2 takes it without waiting out the lease.
    assert!(
        n1.call(&lease_request(&disk, "n1", Action::Stop, 5_000))
            .result
            .is_ok()
    );
    assert!(
        n2.call(&lease_request(&disk, "n2", Action::Start, 5_000))
            .result
            .is_ok()
    );
    assert!(
        n2.call(&lease_request(&disk, "n2", Action::Stop, 5_000))
            .result
            .is_ok()
    );

    // A holder that dies without releasing (a one-shot command exits): the next
    // node must watch the record unchanged for the lease time before taking it.
    let out = Command::new(baton_exe())
        .args(["agent", "run", "disk-lease", "start"])
        .args([
            "-p",
            &format!("device={}", disk.whole),
            "-p",
            "cluster=lab",
            "-p",
            "lease_ms=400",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    assert!(
        n2.call(&lease_request(&disk, "n2", Action::Start, 5_000))
            .result
            .is_ok()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "took a lease that was not released without watching it for its lease time"
    );
    assert!(
        n2.call(&lease_request(&disk, "n2", Action::Stop, 5_000))
            .result
            .is_ok()
    );
}

#[test]
fn a_lease_of_another_cluster_or_foreign_data_is_never_overwritten() {
    let Some(disk) = LoopDisk::new() else { return };
    let store = tempfile::tempdir().unwrap();
    let cat = catalog(store.path(), "");
    let agent = cat.load("disk-lease").unwrap();
    let mut other = lease_request(&disk, "n1", Action::Start, 5_000);
    other.params.insert("cluster".into(), "other".into());
    assert!(agent.call(&other).result.is_ok());
    other.action = Action::Stop;
    assert!(agent.call(&other).result.is_ok());
    let e = agent
        .call(&lease_request(&disk, "n1", Action::Start, 5_000))
        .result
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Misconfigured);
    assert!(
        e.reason.contains("lease of cluster \"other\""),
        "{}",
        e.reason
    );
    // Slot 256 is the first block of the ext4 filesystem: not a lease.
    let mut on_data = lease_request(&disk, "n1", Action::Start, 5_000);
    on_data.params.insert("slot".into(), "256".into());
    let e = agent.call(&on_data).result.unwrap_err();
    assert!(e.reason.contains("not a baton lease"), "{}", e.reason);
    let out = Command::new("e2fsck")
        .args(["-n", &disk.fs])
        .output()
        .unwrap();
    assert!(out.status.success(), "the filesystem was damaged: {out:?}");
}

fn fs_params(disk: &LoopDisk, mnt: &Path) -> Vec<(String, String)> {
    vec![
        ("device".into(), disk.fs.clone()),
        ("directory".into(), mnt.display().to_string()),
    ]
}

fn fs_call(
    agent: &baton::agent_host::AgentHandle,
    params: &[(String, String)],
    action: Action,
) -> Result<Outcome, baton::agent_host::Failure> {
    let kv: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut req = request(action, "data-fs", &kv, 10_000);
    req.depth = 1;
    agent.call(&req).result
}

#[test]
fn a_busy_filesystem_is_unmounted_by_stopping_what_keeps_it_busy() {
    let Some(disk) = LoopDisk::new() else { return };
    let store = tempfile::tempdir().unwrap();
    let cat = catalog(store.path(), "");
    let agent = cat.load("filesystem").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt: PathBuf = dir.path().join("data");
    let p = fs_params(&disk, &mnt);
    fs_call(&agent, &p, Action::Start).unwrap();
    assert_eq!(
        fs_call(&agent, &p, Action::Monitor).unwrap(),
        Outcome::State(MonitorState::Running)
    );
    // Mounted here already at another place: refused.
    let elsewhere = vec![
        ("device".to_string(), disk.fs.clone()),
        (
            "directory".to_string(),
            dir.path().join("other").display().to_string(),
        ),
    ];
    let e = fs_call(&agent, &elsewhere, Action::Start).unwrap_err();
    assert!(e.reason.contains("already mounted at"), "{}", e.reason);
    // A process that ignores SIGTERM keeps a file open and sits in the mount.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("trap '' TERM; exec 3>data.log; while :; do sleep 1; done")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mnt.join("data.log").exists() {
        assert!(
            Instant::now() < deadline,
            "the holder never opened its file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fs_call(&agent, &p, Action::Stop).unwrap();
    assert_eq!(
        fs_call(&agent, &p, Action::Monitor).unwrap(),
        Outcome::State(MonitorState::NotRunning)
    );
    // It ignored SIGTERM, so the stop escalated to SIGKILL.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(holder.wait().unwrap().signal(), Some(libc::SIGKILL));
    fs_call(&agent, &p, Action::Stop).unwrap();
    let out = Command::new("e2fsck")
        .args(["-n", &disk.fs])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn filesystem_names_a_missing_device_and_a_bad_option() {
    let store = tempfile::tempdir().unwrap();
    let cat = catalog(store.path(), "");
    let agent = cat.load("filesystem").unwrap();
    let p = vec![
        ("device".to_string(), "/dev/baton-no-such-disk".to_string()),
        (
            "directory".to_string(),
            "/tmp/baton-never-mounted".to_string(),
        ),
    ];
    let e = fs_call(&agent, &p, Action::Start).unwrap_err();
    assert_eq!(e.class, ErrorClass::InvalidArgs);
    assert!(e.reason.contains("/dev/baton-no-such-disk"), "{}", e.reason);
    let mut bad = p.clone();
    bad.push(("fsck".into(), "maybe".into()));
    let e = fs_call(&agent, &bad, Action::Start).unwrap_err();
    assert!(e.reason.contains("fsck"), "{}", e.reason);
}
