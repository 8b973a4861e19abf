//! docs/operations.md's "A service on shared devices", run verbatim in the
//! namespace lab (only the site's data replaced: `baton::lab::shared_devices`):
//! `config check` of the example and of a slot on the partition table; then a
//! crash, a failback, an isolation and a restart with the service link down,
//! with a client resolving the name all along (root, parted and BIND only).

use crate::support::{baton_exe, output_text};
use baton::lab::disk::LoopDisk;
use baton::lab::shared_devices::{self, ADDRESS, SharedDevicesLab};
use baton::lab::{Lab, Lan, named};
use std::process::Command;
use std::time::{Duration, Instant};

const DOC: &str = include_str!("../../../docs/operations.md");

fn possible() -> bool {
    let parted = Command::new("parted").arg("--version").output().is_ok();
    if !Lab::possible() || !named::installed() || !parted {
        eprintln!("shared-devices tests need root, iproute2, parted and bind9; skipped");
        return false;
    }
    true
}

fn config_check(path: &std::path::Path) -> std::process::Output {
    Command::new(baton_exe())
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_example_checks_with_its_takeover_time_and_a_slot_on_the_partition_table_is_refused() {
    if !possible() {
        return;
    }
    let disk = LoopDisk::partitioned().unwrap();
    let dir = tempfile::tempdir().unwrap();
    shared_devices::prepare(dir.path()).unwrap();
    let config =
        shared_devices::for_site(&shared_devices::example(DOC).unwrap(), dir.path(), &disk)
            .unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &config).unwrap();
    let out = config_check(&path);
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    // The quorum arithmetic of two nodes and a witness.
    assert!(
        said.contains("quorum: 3 votes in all (2 nodes of 1 vote, a witness of 1)")
            && said.contains("1 node: quorate only with the witness (1 + 1 of 3)"),
        "{said}"
    );
    // The bound includes the disk lease: its claim, and the wait without a fence.
    assert!(
        said.contains("service db: + 1000 ms to claim its disk lease; + 8000 ms more (waiting out the lease) when the holder was not fenced"),
        "{said}"
    );

    // The witness on slot 0: the GPT partition table, refused with the fix.
    std::fs::write(&path, config.replace("slot = 16", "slot = 0")).unwrap();
    let out = config_check(&path);
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("cluster.witness: slot 0 of")
            && said.contains("holds a GPT partition table")
            && said.contains("Preparing a shared disk"),
        "{said}"
    );
    // The lease on the witness's slot: one of them is refused.
    std::fs::write(&path, config.replace("slot = 17", "slot = 16")).unwrap();
    let out = config_check(&path);
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("slot 16 of") && said.contains("every lease needs a slot of its own"),
        "{said}"
    );
    // The first slot of partition 1 (at 1 MiB): the filesystem's superblock.
    std::fs::write(&path, config.replace("slot = 17", "slot = 256")).unwrap();
    let out = config_check(&path);
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("holds an ext2/3/4 superblock"), "{said}");
}

/// Wait (at most `limit`) until `cond` holds.
fn wait_for(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_example_fails_over_keeps_its_name_and_never_fences_for_it() {
    if !possible() {
        return;
    }
    let prefix = format!("sd{}", std::process::id() % 1000);
    let mut l = SharedDevicesLab::start(&prefix, &baton_exe(), DOC).unwrap();
    let limit = Duration::from_secs(60);
    let logs = |l: &SharedDevicesLab| l.cluster.keep_logs().display().to_string();
    let first = l.cluster.vip_server(limit, |_| true).unwrap();
    assert_eq!(
        first,
        Some(1),
        "db1 (preferred) does not serve; logs in {}",
        logs(&l)
    );
    l.wait_name(limit).unwrap();
    let watch = l.watch_name();

    // A crash: the other node fences it and takes the disk lease without
    // waiting it out (the fence confirmed the holder off).
    let (survivor, ms) = l.crash_owner(limit).unwrap();
    eprintln!("crash of db1: db{survivor} serves after {ms} ms");
    assert!(
        l.log(survivor)
            .contains("which the cluster fenced: taking it without waiting out its lease"),
        "the lease was waited out; logs in {}",
        logs(&l)
    );

    // The failback: db1 starts again (its start-up cleanup must leave db2's
    // name alone) and the service returns to it.
    l.cluster.start_node(1).unwrap();
    let back = l.cluster.vip_server(limit, |n| n == 1).unwrap();
    assert_eq!(back, Some(1), "no failback to db1; logs in {}", logs(&l));

    // An isolation of the owner: it cannot reach the DNS server, and its stop
    // of the name is no failed stop.
    l.isolate(1).unwrap();
    let other = l.cluster.vip_server(limit, |n| n == 2).unwrap();
    assert_eq!(
        other,
        Some(2),
        "db2 did not take over; logs in {}",
        logs(&l)
    );
    let isolated = l.log(1);
    assert!(
        !isolated.contains("stop failed")
            && isolated.contains("is left for the next owner to replace"),
        "the isolated db1's stop of the name: logs in {}",
        logs(&l)
    );
    l.cluster.lab.heal(1, Lan::Private).unwrap();
    l.cluster.lab.heal(1, Lan::Service).unwrap();
    l.cluster.revive(1).unwrap();
    l.wait_joined(limit).unwrap();
    l.cluster
        .vip_server(limit, |n| n == 1)
        .unwrap()
        .expect("no failback after the isolation");
    l.wait_name(limit).unwrap();
    let answers = watch.end().unwrap();
    eprintln!("lookups while failing over: {answers:?}");
    assert_eq!(
        answers.nxdomain,
        0,
        "the name went missing; logs in {}",
        logs(&l)
    );
    assert!(answers.wrong.is_empty() && answers.right > 0, "{answers:?}");
    assert!(
        !l.named.log().contains("deleting an RR at db.example.com A"),
        "a node deleted the name's address record:\n{}",
        l.named.log()
    );

    // A restart with the service link down and the address left over from a
    // previous run (a daemon and guardian killed with the address up): the
    // start-up cleanup removes it, and the service stays on db1 alone.
    l.cluster.kill_node(2);
    let lab = &l.cluster.lab;
    lab.power_on(2).unwrap();
    lab.cut(2, Lan::Service).unwrap();
    Command::new("ip")
        .args([
            "-n",
            &lab.node_ns(2),
            "addr",
            "add",
            &format!("{ADDRESS}/24"),
            "dev",
            "svc",
        ])
        .output()
        .unwrap();
    assert!(lab.has_address(2, ADDRESS));
    l.cluster.start_daemon(2).unwrap();
    wait_for(
        limit,
        "db2 did not rejoin with its service link down",
        || {
            l.cluster
                .status(2)
                .and_then(|s| s["members"].as_array().map(Vec::len))
                == Some(2)
        },
    );
    assert!(
        !l.cluster.lab.has_address(2, ADDRESS),
        "db2 joined with the address still up; logs in {}",
        logs(&l)
    );
    assert!(l.cluster.lab.has_address(1, ADDRESS));
    assert!(
        l.log(2).contains("found from a previous run of this node"),
        "logs in {}",
        logs(&l)
    );
    let acked = l.verify().unwrap();
    assert!(acked > 0, "the server acknowledged nothing");
}
