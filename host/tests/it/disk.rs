//! The shared-disk agents against real loop devices (root only): `disk-lease`
//! (one holder at a time, a held lease waited out, other clusters' leases and
//! foreign data refused) and `filesystem` (mount, busy unmount, refusals); then
//! a service on a shared disk failing over in the namespace lab.

use crate::support::{baton_exe, catalog, request};
use baton::lab::Lab;
use baton::lab::disk::{Fault, LoopDisk, SharedDiskLab};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A loop disk, or `None` when not root (CI runs as root).
fn loop_disk() -> Option<LoopDisk> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("disk tests need root (loop devices); skipped");
        return None;
    }
    Some(LoopDisk::new().unwrap())
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
    let Some(disk) = loop_disk() else { return };
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
    let Some(disk) = loop_disk() else { return };
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
    let Some(disk) = loop_disk() else { return };
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
    agent: &baton::agent::host::AgentHandle,
    params: &[(String, String)],
    action: Action,
) -> Result<Outcome, baton::agent::host::Failure> {
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
    let Some(disk) = loop_disk() else { return };
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

/// The service `[disk-lease, filesystem, writer, ipaddr]` fails over on a kill -9
/// of its owner, an isolation of it, and a kill -9 of its daemon alone (no fence
/// agent: the guardian acts): one mount at a time, the isolated owner unmounts
/// by itself, the filesystem stays clean and no acknowledged write is lost.
/// (20+ rounds: the shared_disk_audit example.)
#[test]
fn a_shared_disk_follows_its_service_one_mount_at_a_time_losing_no_acknowledged_write() {
    if !Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("sd{}", std::process::id() % 1000);
    let mut lab = SharedDiskLab::start(&prefix, &baton_exe()).unwrap();
    let limit = Duration::from_secs(30);
    for fault in [Fault::Kill, Fault::Isolate, Fault::KillDaemon] {
        if let Err(e) = lab.round(fault, limit) {
            let logs = (1..=3)
                .map(|n| {
                    std::fs::read_to_string(lab.cluster.dir.path().join(format!("n{n}.log")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n---\n");
            panic!("{fault:?}: {e:#}\n{logs}");
        }
    }
    let (mounts, acked) = lab.verify().unwrap();
    assert!(mounts >= 3, "only {mounts} mount intervals recorded");
    assert!(acked > 0, "the writer acknowledged nothing");
}

/// Two partitions' leaders contend for a disk witness: the one that renews keeps
/// it; the other takes it only after watching it unchanged for the lease time; a
/// member that only reads stops counting a holder that stopped renewing.
#[test]
fn a_disk_witness_passes_to_another_partition_only_after_its_holder_stops_renewing() {
    use baton::cluster::witness::{DeltaLease, LeaseOp};
    use baton::node::witness_worker::{DiskBlock, operate};
    let Some(disk) = loop_disk() else { return };
    let lease = Duration::from_millis(400);
    let device = Path::new(&disk.whole);
    let epoch = Instant::now();
    let now = move || epoch.elapsed().as_millis() as u64;
    let run = |l: &mut DeltaLease, d: &mut DiskBlock, op: LeaseOp, cluster: &str| {
        operate(l, d, op, now(), cluster, 400, &now).map(|s| s.holder)
    };
    let lead = |n: u16| LeaseOp::Lead {
        view: [n].into(),
        fenced: Vec::new(),
    };
    let (mut a, mut b, mut reader) = (
        DeltaLease::new(1, 400, 1),
        DeltaLease::new(2, 400, 2),
        DeltaLease::new(3, 400, 3),
    );
    let (mut da, mut db, mut dr) = (
        DiskBlock::new(device, 1),
        DiskBlock::new(device, 1),
        DiskBlock::new(device, 1),
    );
    assert_eq!(run(&mut a, &mut da, lead(1), "lab").unwrap(), Some(1));
    // A first sight tells nothing; from the next read on, the renewals show.
    run(&mut b, &mut db, LeaseOp::Look, "lab").unwrap();
    run(&mut reader, &mut dr, LeaseOp::Look, "lab").unwrap();
    // While 1 renews (every 20 ms, like a fast-profile tick), 2 never gets it.
    let until = Instant::now() + lease * 3;
    let mut last_renewal = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(run(&mut a, &mut da, lead(1), "lab").unwrap(), Some(1));
        last_renewal = Instant::now();
        assert_eq!(
            run(&mut b, &mut db, lead(2), "lab").unwrap(),
            Some(1),
            "taken while renewed"
        );
        assert_eq!(
            run(&mut reader, &mut dr, LeaseOp::Look, "lab").unwrap(),
            Some(1)
        );
    }
    // 1 stops renewing: the reader stops counting it, and 2 takes it after a lease.
    let stopped = last_renewal;
    let mut reader_stopped = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if reader_stopped.is_none()
            && run(&mut reader, &mut dr, LeaseOp::Look, "lab")
                .unwrap()
                .is_none()
        {
            reader_stopped = Some(stopped.elapsed());
        }
        if run(&mut b, &mut db, lead(2), "lab").unwrap() == Some(2) {
            break;
        }
        assert!(
            stopped.elapsed() < lease * 10,
            "2 never took the abandoned witness"
        );
    }
    let taken = stopped.elapsed();
    assert!(
        taken >= lease,
        "taken after {taken:?}, before a whole lease unchanged"
    );
    let reader_stopped = reader_stopped.expect("the reader still counted the old holder");
    assert!(
        reader_stopped < taken,
        "the reader counted 1 until {reader_stopped:?}, 2 took it at {taken:?}"
    );
    // Another cluster's (or a resource's) lease in the slot is refused, not overwritten.
    let mut other = DeltaLease::new(1, 400, 9);
    let e = run(&mut other, &mut DiskBlock::new(device, 1), lead(1), "other").unwrap_err();
    assert!(e.contains("not this cluster's witness"), "{e}");
}

/// The seed's configuration: two servers and a shared disk, no file server. The
/// owner is cut off from both LANs: exactly one side runs the service, decided by
/// the witness on the disk; the owner killed: the other takes the witness and
/// the service.
#[test]
fn two_nodes_and_a_disk_witness_run_the_service_on_exactly_one_side() {
    use baton::lab::{ClusterLab, LabSpec, Lan};
    if !Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let Some(disk) = loop_disk() else { return };
    let extra = format!(
        "self_fence_ms = 300\nwait_for_all = true\nwitness = {{ disk = \"{}\", slot = 1, votes = 1 }}",
        disk.whole
    );
    // The default timing: a disk answer counts for half a lease (800 ms here); the
    // fast profile's 100 ms is tighter than a loaded test machine's disk.
    let spec = LabSpec {
        timing: "default",
        nodes: 2,
        address: false,
        cluster_extra: &extra,
        ..LabSpec::default()
    };
    let prefix = format!("dw{}", std::process::id() % 1000);
    let mut c = ClusterLab::start_spec(&prefix, &baton_exe(), &spec).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 never served"
    );
    let held = |c: &ClusterLab, n: usize| c.status(n).is_some_and(|s| s["witness_held"] == true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(held(&c, 1) && held(&c, 2)) {
        assert!(
            Instant::now() < deadline,
            "the witness never counted on both"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    // n1 keeps the witness (it still reaches the disk) and the service; n2 never runs it.
    let members = |c: &ClusterLab, n: usize| {
        c.status(n)
            .and_then(|s| s["members"].as_array().map(Vec::len))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while members(&c, 1) != Some(1) || members(&c, 2) != Some(1) {
        assert!(Instant::now() < deadline, "the partition was not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let s2 = c.status(2).unwrap();
        assert_eq!(s2["services"][0]["here"], "stopped", "n2 runs it too: {s2}");
        assert_eq!(c.status(1).unwrap()["services"][0]["here"], "running");
        std::thread::sleep(Duration::from_millis(50));
    }
    // n1 dies: n2 sees the witness unchanged for a lease, takes it, and serves.
    c.kill_node(1);
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over; logs in {}",
        c.keep_logs().display()
    );
    assert_eq!(c.status(2).unwrap()["witness_held"], true);
    let (overlaps, _) = baton::lab::ledger_overlaps(c.dir.path()).unwrap();
    assert!(overlaps.is_empty(), "{overlaps:?}");
}

/// A lease record that fails its checksum (a write torn by a crash) is not
/// someone else's data: it is watched like a held lease, then taken.
#[test]
fn a_damaged_lease_record_is_waited_out_then_taken() {
    use std::io::{Seek, Write};
    let Some(disk) = loop_disk() else { return };
    let store = tempfile::tempdir().unwrap();
    let cat = catalog(store.path(), "");
    let agent = cat.load("disk-lease").unwrap();
    let mut start = lease_request(&disk, "n1", Action::Start, 5_000);
    start.params.insert("slot".into(), "2".into());
    assert!(agent.call(&start).result.is_ok());
    let mut stop = start.clone();
    stop.action = Action::Stop;
    assert!(agent.call(&stop).result.is_ok());
    // Damage the record's body; its magic stays.
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.whole)
        .unwrap();
    dev.seek(std::io::SeekFrom::Start(2 * 4096 + 20)).unwrap();
    dev.write_all(b"torn").unwrap();
    dev.sync_all().unwrap();
    let t = Instant::now();
    let taken = agent.call(&start).result;
    assert!(taken.is_ok(), "{taken:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "a damaged record was not watched"
    );
    assert!(agent.call(&stop).result.is_ok());
}
