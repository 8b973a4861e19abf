//! Real daemons in network namespaces (root only): three nodes with a private and a
//! service LAN, a TCP service run by the `process` agent, a `ledger` resource that
//! records every owner interval in a shared file (any overlap fails the test), and
//! a client probing the service.

use crate::support::{baton_at, baton_exe};
use baton::lab::{ClusterLab, Lab, LabSpec, Lan, ledger_overlaps};
use std::time::{Duration, Instant};

/// The ledger shows one owner at a time, and (once the latest owner's ledger
/// resource, started after the responder clients see, has written) at least `min`
/// owner intervals.
fn assert_one_owner_at_a_time(c: &ClusterLab, min: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok((overlaps, intervals)) = ledger_overlaps(c.dir.path()) {
            assert!(overlaps.is_empty(), "two owners at once: {overlaps:?}");
            if intervals >= min {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {min} owner intervals in the ledger:\n{}\n{}",
            std::fs::read_to_string(c.dir.path().join("ledger")).unwrap_or_default(),
            log_tails(c)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of every node's daemon log, for failure messages.
fn log_tails(c: &ClusterLab) -> String {
    (1..=c.nodes())
        .map(|n| {
            let log =
                std::fs::read_to_string(c.dir.path().join(format!("n{n}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let addrs = std::process::Command::new("ip")
                .args(["-n", &c.lab.node_ns(n), "-o", "addr", "show", "svc"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            format!(
                "--- n{n}.log (svc MAC {}; {})\n{}",
                c.lab.mac(n, Lan::Service).unwrap_or_default(),
                addrs
                    .split_whitespace()
                    .filter(|w| w.contains('/'))
                    .collect::<Vec<_>>()
                    .join(" "),
                lines[lines.len().saturating_sub(12)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn start(prefix: &str) -> Option<ClusterLab> {
    start_fencing(prefix, false)
}

fn start_fencing(prefix: &str, fencing: bool) -> Option<ClusterLab> {
    if !Lab::possible() {
        // Not root: the loopback daemon tests still cover failover. CI runs as root.
        eprintln!("lab tests need root and iproute2; skipped");
        return None;
    }
    let c = ClusterLab::start(
        &format!("{prefix}{}", std::process::id() % 1000),
        &baton_exe(),
        "fast",
        500,
        fencing,
    )
    .unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 never served; logs in {}",
        c.keep_logs().display()
    );
    // The ledger resource starts after the responder: wait for n1's interval too.
    assert_one_owner_at_a_time(&c, 1);
    Some(c)
}

#[test]
fn cutting_the_private_link_is_a_warning_not_a_failover() {
    let Some(c) = start("bc") else { return };
    let epoch = c.status(2).unwrap()["epoch"].clone();
    c.lab.cut(1, Lan::Private).unwrap();
    // Watch for well past the takeover time (detection + fence wait + settle < 1.5 s).
    let stable = c.served_only_by(1, Duration::from_secs(3)).unwrap();
    assert!(stable, "losing the private link moved the service");
    let s = c.status(2).unwrap();
    assert_eq!(s["epoch"], epoch, "membership changed");
    let down: Vec<_> = s["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["up"] == false)
        .collect();
    assert_eq!(down.len(), 1, "{s}");
    assert_eq!(
        (down[0]["peer"].as_str(), down[0]["link"].as_u64()),
        (Some("n1"), Some(0))
    );
}

#[test]
fn an_isolated_owner_stops_and_exactly_one_other_node_serves() {
    let Some(c) = start("bi") else { return };
    let pid = c.service_pid(1).unwrap();
    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over"
    );
    // The isolated node lost quorum and stopped its copy (self-fencing).
    assert!(
        crate::support::gone_within(pid, Duration::from_secs(5)),
        "the isolated node still runs the service"
    );
    let s1 = c.status(1).unwrap();
    assert_eq!(s1["quorate"], false);
    assert_eq!(s1["services"][0]["here"], "stopped");
    // The address answers as soon as it is added, a moment before n2's
    // daemon takes the start's completion in and records it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c
        .status(2)
        .is_none_or(|s| s["services"][0]["here"] != "running")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "n2 serves but does not say it runs the service"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each node's history says what it decided and why.
    let history = |n: usize, service: Option<&str>| {
        let mut cmd = std::process::Command::new(crate::support::baton_exe());
        cmd.args(["history", "--json", "--file"])
            .arg(c.dir.path().join(format!("n{n}.history")));
        if let Some(s) = service {
            cmd.args(["--service", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            crate::support::output_text(&out)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let has = |events: &[serde_json::Value], kind: &str, text: &str| {
        events
            .iter()
            .any(|e| e["kind"] == kind && e["text"].as_str().unwrap_or("").contains(text))
    };
    let n1 = history(1, None);
    assert!(has(&n1, "quorum", "no quorum"), "{n1:#?}");
    assert!(has(&n1, "stop", "stopping here"), "{n1:#?}");
    let n2 = history(2, Some("web"));
    assert!(has(&n2, "placement", "should run on n2"), "{n2:#?}");
    assert!(has(&n2, "start", "running here"), "{n2:#?}");
    assert!(n2.iter().all(|e| e["service"] == "web"), "{n2:#?}");
    assert!(has(&history(2, None), "membership", "left: n1"));
    // Healed, n1 rejoins; one node serves. (Whether n1 gets the service back
    // depends on whether its address monitor saw the cut interface before it saw
    // the lost quorum: such failures count against it until they expire.)
    c.lab.heal(1, Lan::Private).unwrap();
    c.lab.heal(1, Lan::Service).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .status(1)
        .and_then(|s| s["members"].as_array().map(Vec::len))
        != Some(3)
    {
        assert!(Instant::now() < deadline, "n1 did not rejoin");
        std::thread::sleep(Duration::from_millis(20));
    }
    let settled = c
        .lab
        .as_client(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let at_address = baton::lab::vip_answer(Duration::from_millis(100));
                let serving = baton::lab::answering(3, 8080, Duration::from_millis(100));
                if at_address.is_some_and(|n| serving == [n]) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
        .unwrap();
    assert!(settled, "not exactly one node serves after the heal");
    assert_one_owner_at_a_time(&c, 2);
}

#[test]
fn kill_9_of_the_owner_fails_over_and_the_node_rejoins() {
    let Some(mut c) = start("bk") else { return };
    c.kill_node(1);
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over"
    );
    // n2's start is complete (its ledger, the last resource, recorded it)
    // before n1 comes back and the service fails back.
    assert_one_owner_at_a_time(&c, 2);
    c.start_node(1).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 did not get the service back"
    );
    assert_one_owner_at_a_time(&c, 3);
}

#[test]
fn with_the_lab_fence_agent_survivors_fence_a_lost_owner_whose_service_still_runs() {
    let Some(mut c) = start_fencing("bf", true) else {
        return;
    };
    let service = c.service_pid(1).unwrap();
    // Only n1's daemon dies: its service process keeps running, which only a fence
    // (here: killing n1's recorded process groups) can end.
    c.kill_daemon(1);
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over; logs in {}",
        c.dir.path().display()
    );
    assert!(
        crate::support::gone_within(service, Duration::from_secs(5)),
        "the fence did not end n1's service"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = c.status(2).unwrap()["fencing"].clone();
        if f["confirmed"] == serde_json::json!(["n1"]) {
            assert_eq!(f["agent"], "lab-fence");
            assert_eq!(f["waiting"], serde_json::json!({}), "{f}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 never confirmed n1 fenced: {f}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_one_owner_at_a_time(&c, 2);
    // n1 boots again as a new incarnation and rejoins; standby fails back to it.
    c.start_node(1).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 did not get the service back"
    );
    assert_one_owner_at_a_time(&c, 3);
}

#[test]
fn an_operator_move_switches_over_shows_in_status_and_ends_by_itself() {
    let Some(c) = start("bm") else { return };
    let out = baton_at(&c.socket(2), &["move", "web", "--to", "n3", "--for", "3s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("moving web to n3 for 3 s"));
    assert!(
        c.wait_answering(vec![3], Duration::from_secs(10)).unwrap(),
        "the move did not reach n3"
    );
    let s = c.status(1).unwrap();
    let m = &s["services"][0]["move"];
    assert_eq!(
        (m["to"].as_str(), m["by"].as_str()),
        (Some("n3"), Some("n2")),
        "{s}"
    );
    assert!(
        m["ends_in_ms"].as_u64().is_some_and(|ms| ms <= 3_000),
        "{s}"
    );
    // The move ends by itself: standby returns the service to n1, nothing left behind.
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(10)).unwrap(),
        "the service did not return after the move"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.status(1).unwrap()["services"][0]["move"].is_null() {
        assert!(Instant::now() < deadline, "the move is still shown");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A move to an unknown node is refused with the reason.
    let out = baton_at(&c.socket(1), &["move", "web", "--to", "n9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node is named \"n9\""));
    assert_one_owner_at_a_time(&c, 3);
}

fn start_with(prefix: &str, nodes: usize, cluster_extra: &str) -> Option<ClusterLab> {
    start_strategy(prefix, nodes, "standby", cluster_extra)
}

fn start_strategy(
    prefix: &str,
    nodes: usize,
    strategy: &str,
    cluster_extra: &str,
) -> Option<ClusterLab> {
    let spec = LabSpec {
        nodes,
        strategy,
        cluster_extra,
        ..LabSpec::default()
    };
    start_spec(prefix, &spec)
}

/// The lab `spec` describes, with n1 serving and its owner interval recorded.
fn start_spec(prefix: &str, spec: &LabSpec) -> Option<ClusterLab> {
    if !Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return None;
    }
    let prefix = format!("{prefix}{}", std::process::id() % 1000);
    let c = ClusterLab::start_spec(&prefix, &baton_exe(), spec).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 never served; logs in {}",
        c.keep_logs().display()
    );
    // The ledger resource starts after the responder: wait for n1's interval too.
    assert_one_owner_at_a_time(&c, 1);
    Some(c)
}

fn quorate_and_here(c: &ClusterLab, n: usize) -> (bool, String) {
    let s = c.status(n).unwrap();
    (
        s["quorate"] == true,
        s["services"][0]["here"].as_str().unwrap_or("?").to_string(),
    )
}

#[test]
fn a_two_node_partition_with_a_witness_leaves_exactly_one_side_running() {
    // Without the virtual address: n1's service LAN is cut too, and an address
    // there cannot serve (a health check's job); this test is about the witness.
    let spec = LabSpec {
        nodes: 2,
        address: false,
        cluster_extra: "self_fence_ms = 300\nwait_for_all = true\nwitness = { file = \"WITNESS\", votes = 1 }",
        ..LabSpec::default()
    };
    let Some(c) = start_spec("bw", &spec) else {
        return;
    };
    let pid1 = c.service_pid(1).unwrap();
    // Cut the two nodes apart on both LANs (n1 is cut off from everything).
    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    // Both sides notice, well within this bound; then exactly one side may run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status(1).unwrap()["members"].as_array().unwrap().len() != 1
        || c.status(2).unwrap()["members"].as_array().unwrap().len() != 1
    {
        assert!(Instant::now() < deadline, "the partition was not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Watch past the takeover time: never both sides. n1 holds the witness
    // and keeps the service, unless a loaded machine delayed its renewal past
    // the lease: then n2 takes the witness and the service, which is as safe.
    let both = |c: &ClusterLab| {
        let (s1, s2) = (quorate_and_here(c, 1), quorate_and_here(c, 2));
        assert!(
            !(s1.1 == "running" && s2.1 == "running"),
            "both sides run the service: {s1:?} {s2:?}\nwitness: {}",
            std::fs::read_to_string(c.dir.path().join("witness")).unwrap_or_default()
        );
        (s1, s2)
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        both(&c);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exactly one side serves, settled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let winner = loop {
        match both(&c) {
            ((true, h1), (false, _)) if h1 == "running" => break 1,
            ((false, _), (true, h2)) if h2 == "running" => break 2,
            other => assert!(
                Instant::now() < deadline,
                "no side serves: {other:?}; logs in {}",
                c.keep_logs().display()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The winner runs it (n1 the process it started with, unless it lost the
    // lease for a moment on a loaded machine); the other runs nothing.
    let runs = |pid: i32| baton_agents::proc_stat(pid as u32).is_some_and(|(_, zombie)| !zombie);
    let loser = 3 - winner;
    assert!(c.service_pid(winner).is_some_and(runs));
    assert!(!c.service_pid(loser).is_some_and(runs));
    if winner == 2 {
        assert!(!runs(pid1), "n1's service survived its loss of the witness");
    }
    assert_eq!(c.status(winner).unwrap()["witness_held"], true);
    assert_one_owner_at_a_time(&c, 1);
}

#[test]
fn the_last_survivor_of_four_runs_the_service_with_a_witness_worth_three_votes() {
    let Some(mut c) = start_with(
        "bs",
        4,
        "self_fence_ms = 300\nwitness = { file = \"WITNESS\", votes = 3 }",
    ) else {
        return;
    };
    // Three nodes die at once, the owner among them.
    for n in 1..=3 {
        c.kill_node(n);
    }
    assert!(
        c.wait_answering(vec![4], Duration::from_secs(20)).unwrap(),
        "the survivor did not take over; logs in {}",
        c.dir.path().display()
    );
    let s = c.status(4).unwrap();
    assert_eq!(s["quorate"], true, "{s}");
    assert_eq!(s["witness_held"], true, "{s}");
    assert_eq!(
        s["quorum"],
        "4 of 7 votes (with the witness) is a strict majority"
    );
    assert_one_owner_at_a_time(&c, 2);
}

#[test]
fn a_returning_node_rejoins_without_disturbing_a_rotating_service() {
    // Waiting for all at first start: without failback, whichever pair of nodes
    // forms quorum first would otherwise keep the service.
    let extra = "self_fence_ms = 300\nwait_for_all = true";
    let Some(mut c) = start_strategy("br", 3, "rotating", extra) else {
        return;
    };
    c.kill_node(1);
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over"
    );
    let served_by = c.service_pid(2).unwrap();
    c.start_node(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .status(1)
        .is_none_or(|s| s["members"].as_array().map(Vec::len) != Some(3))
    {
        assert!(Instant::now() < deadline, "n1 did not rejoin");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past any takeover time, n2 still serves, with the same process: no failback.
    let stable = c.served_only_by(2, Duration::from_secs(2)).unwrap();
    assert!(stable, "the returning node disturbed the rotating service");
    assert_eq!(c.service_pid(2), Some(served_by));
    let why = c.status(1).unwrap()["services"][0]["why"].clone();
    assert!(why.as_str().unwrap().contains("no failback"), "{why}");
    assert_one_owner_at_a_time(&c, 2);
}

/// Watch clients for `span`: the most nodes that answered at once, and whether
/// node `want` answered alone at the end.
fn most_servers_at_once(c: &ClusterLab, span: Duration, want: usize) -> (usize, bool) {
    let nodes = c.nodes();
    c.lab
        .as_client(move || {
            let until = Instant::now() + span;
            let mut most = 0;
            let mut last = Vec::new();
            while Instant::now() < until {
                last = baton::lab::answering(nodes, 8080, Duration::from_millis(50));
                most = most.max(last.len());
            }
            (most, last == [want])
        })
        .unwrap()
}

/// Without a fence agent, a daemon killed while its services run: its guardian
/// ends the service and removes the address at once, so the survivors' fence
/// wait holds and no two nodes ever serve.
#[test]
fn a_killed_daemons_guardian_ends_its_services_without_a_fence_agent() {
    let Some(mut c) = start("bg") else { return };
    let service = c.service_pid(1).unwrap();
    let daemon = c.daemon_pid(1).unwrap();
    let groups = baton::node::guardian::descendant_groups(daemon, &[]);
    assert!(
        groups.contains(&service),
        "the daemon's descendants {groups:?} miss {service}"
    );
    c.kill_daemon(1);
    assert!(
        crate::support::gone_within(service, Duration::from_secs(5)),
        "the service of the killed daemon still runs; logs in {}",
        c.keep_logs().display()
    );
    assert!(
        !c.lab.has_address(1, baton::lab::VIP),
        "n1 still has the address"
    );
    // The guardian's fence is in n1's history, with what it ended.
    let history =
        baton::node::history::read(&c.socket(1).with_extension("history"), None, None).unwrap();
    assert!(
        history.iter().any(|e| e.kind == "guardian"
            && e.text.starts_with(&format!(
                "daemon {daemon} is gone without a clean stop: fencing this node: "
            ))
            && e.text.contains("killed process groups")
            && e.text.contains("removing addresses {198.18.2.100}")),
        "{history:?}"
    );
    let (most, n2_alone) = most_servers_at_once(&c, Duration::from_secs(4), 2);
    assert!(most <= 1, "{most} nodes served at once");
    assert!(
        n2_alone,
        "n2 does not serve alone; logs in {}",
        c.keep_logs().display()
    );
    assert_one_owner_at_a_time(&c, 2);
}

/// Without a fence agent, a daemon frozen (SIGSTOP) while its services run:
/// half the self-fence bound later its guardian ends them, the survivors take
/// over after the fence wait, and no two nodes ever serve. Resumed, the node
/// rejoins.
#[test]
fn a_frozen_daemons_guardian_ends_its_services_without_a_fence_agent() {
    let Some(c) = start("bz") else { return };
    let service = c.service_pid(1).unwrap();
    let daemon = c.daemon_pid(1).unwrap() as i32;
    // SAFETY: stopping and continuing the daemon this lab started.
    unsafe {
        libc::kill(daemon, libc::SIGSTOP);
    }
    let (most, n2_alone) = most_servers_at_once(&c, Duration::from_secs(4), 2);
    // Killed, it stays a zombie until its frozen parent reaps it: ended, not gone.
    let gone = baton_agents::proc_stat(service as u32).is_none_or(|(_, zombie)| zombie);
    let vip_left = c.lab.has_address(1, baton::lab::VIP);
    // SAFETY: as above.
    unsafe {
        libc::kill(daemon, libc::SIGCONT);
    }
    assert!(gone, "the frozen daemon's service still runs");
    assert!(!vip_left, "the frozen node still has the address");
    assert!(most <= 1, "{most} nodes served at once");
    assert!(
        n2_alone,
        "n2 does not serve alone; logs in {}",
        c.keep_logs().display()
    );
    // Resumed, n1 rejoins and (standby) gets the service back.
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 did not rejoin and serve; logs in {}",
        c.keep_logs().display()
    );
    assert_one_owner_at_a_time(&c, 3);
}

/// Two nodes, a witness, a fence agent, and a health check that the service LAN
/// is reachable (ARP for the clients' side, 198.18.2.254).
fn two_nodes_with_health(prefix: &str) -> Option<ClusterLab> {
    let extra = format!(
        "self_fence_ms = 300\nwait_for_all = true\nwitness = {{ file = \"WITNESS\", votes = 1 }}\n{}\
         [cluster.health]\nchecks = [\"arp:198.18.2.254\"]\ninterval_ms = 200\ntimeout_ms = 100\n",
        baton::lab::LAB_FENCING
    );
    start_with(prefix, 2, &extra)
}

/// n2 answers at the virtual address within 20 s, and then alone: at no moment
/// of the next 2 s does another node answer too.
fn n2_serves_alone(c: &ClusterLab) {
    let server = c.vip_server(Duration::from_secs(20), |n| n == 2).unwrap();
    assert_eq!(
        server,
        Some(2),
        "n2 did not take over; logs in {}",
        c.keep_logs().display()
    );
    let (most, n2_alone) = most_servers_at_once(c, Duration::from_secs(2), 2);
    assert!(
        most <= 1 && n2_alone,
        "{most} nodes served; logs in {}",
        c.keep_logs().display()
    );
}

/// After `fault`, n2 (the standby) serves alone, is never fenced, and the ledger
/// shows one owner at a time.
fn the_standby_takes_over(c: &ClusterLab) {
    n2_serves_alone(c);
    assert!(c.node_alive(2), "the healthy standby was fenced");
    let s1 = c.status(1).unwrap();
    assert_eq!(s1["health"]["healthy"], false, "{s1}");
    assert_one_owner_at_a_time(c, 2);
}

/// The owner cut off from both LANs still reaches the witness's storage; its
/// failing health check makes it give up the witness and the service, so the
/// standby takes over, and the standby is not the one fenced.
#[test]
fn an_isolated_owner_that_fails_its_health_check_lets_the_standby_serve() {
    let Some(c) = two_nodes_with_health("bh") else {
        return;
    };
    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    the_standby_takes_over(&c);
}

/// Only the owner's service LAN is cut: both nodes still hear each other on the
/// private LAN, and the service moves to the node clients can reach.
#[test]
fn an_owner_that_loses_only_its_service_lan_hands_the_service_over() {
    let Some(c) = two_nodes_with_health("bl") else {
        return;
    };
    c.lab.cut(1, Lan::Service).unwrap();
    the_standby_takes_over(&c);
    assert_eq!(
        c.status(2).unwrap()["members"].as_array().map(Vec::len),
        Some(2)
    );
    // n1 is still a member, and says why it runs nothing.
    let text = baton_at(&c.socket(1), &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("health: FAILING") && text.contains("arp:198.18.2.254: FAILED"),
        "{text}"
    );
}

/// Two nodes, a witness file and the lab fence agent; the owner's whole
/// machine freezes (SIGSTOP of every process in its namespace: daemon,
/// guardian, service), in whatever moment of its witness renewals that lands.
/// The survivor sees the lease stop changing, fences the frozen holder, takes
/// the witness and serves — every round, never two servers.
#[test]
fn a_frozen_owner_of_two_nodes_and_a_witness_is_fenced_and_the_survivor_serves() {
    let extra = format!(
        "self_fence_ms = 300\nwait_for_all = true\nwitness = {{ file = \"WITNESS\", votes = 1 }}\n{}",
        baton::lab::LAB_FENCING
    );
    let Some(mut c) = start_with("bq", 2, &extra) else {
        return;
    };
    for round in 1..=3 {
        c.freeze_node(1);
        assert!(
            c.wait_answering(vec![2], Duration::from_secs(10)).unwrap(),
            "round {round}: n2 did not take over from the frozen n1; logs in {}",
            c.keep_logs().display()
        );
        let fenced = c
            .status(2)
            .is_some_and(|s| s["fencing"]["confirmed"].to_string().contains("n1"));
        assert!(fenced, "round {round}: n2 serves without fencing n1");
        // The frozen machine, fenced, boots again; standby fails back to it.
        c.thaw_node(1);
        c.revive(1).unwrap();
        assert!(
            c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
            "round {round}: no failback to n1; logs in {}",
            c.keep_logs().display()
        );
    }
    assert_one_owner_at_a_time(&c, 4);
}

/// Three nodes and a one-vote witness (a partition needs 3 of 4 votes): the
/// owner cut off from both LANs cannot be quorate even with the witness, so
/// it lets it go; the other two take it and serve through the isolation.
#[test]
fn three_nodes_and_a_one_vote_witness_serve_through_the_owners_isolation() {
    // The default timing: its 1.6 s witness lease is one a busy machine renews
    // in time (the fast timing's 200 ms is for an idle one).
    let spec = LabSpec {
        timing: "default",
        nodes: 3,
        cluster_extra: "self_fence_ms = 2000\nwitness = { file = \"WITNESS\", votes = 1 }",
        ..LabSpec::default()
    };
    let Some(c) = start_spec("b1", &spec) else {
        return;
    };
    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(30)).unwrap(),
        "n2 did not take over; logs in {}",
        c.keep_logs().display()
    );
    let s2 = c.status(2).unwrap();
    assert_eq!(s2["quorate"], true, "{s2}");
    assert_eq!(s2["witness_held"], true, "{s2}");
    assert_eq!(c.status(1).unwrap()["quorate"], false);
    // Served for the rest of the isolation, by n2 alone.
    assert!(
        c.served_only_by(2, Duration::from_secs(3)).unwrap(),
        "n2 did not serve throughout; logs in {}",
        c.keep_logs().display()
    );
    assert_one_owner_at_a_time(&c, 2);
}

/// SIGTERM to the owner's daemon, with a fence agent and the default timing
/// (fence wait 4 s): its service moves without a fence and without its
/// guardian firing, the daemon exits once the stop has completed, and the
/// daemon started again 3 s later (within the fence wait) is not fenced.
#[test]
fn a_clean_stop_moves_the_service_with_no_fence_and_a_restart_is_not_fenced() {
    let extra = format!("self_fence_ms = 2000\n{}", baton::lab::LAB_FENCING);
    let spec = LabSpec {
        timing: "default",
        cluster_extra: &extra,
        ..LabSpec::default()
    };
    let Some(mut c) = start_spec("bt", &spec) else {
        return;
    };
    let exit = c.stop_daemon(1, Duration::from_secs(30));
    assert!(exit.is_some_and(|e| e.success()), "n1's daemon: {exit:?}");
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over"
    );
    let n1_log = std::fs::read_to_string(c.dir.path().join("n1.log")).unwrap();
    assert!(
        n1_log.contains("left the cluster holding nothing"),
        "{n1_log}"
    );
    assert!(
        !n1_log.contains("no renewal from daemon"),
        "the guardian fired:\n{n1_log}"
    );
    std::thread::sleep(Duration::from_secs(3));
    c.start_node(1).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "no failback to the restarted n1; logs in {}",
        c.keep_logs().display()
    );
    assert!(c.node_alive(1), "the restarted n1 was fenced");
    for n in 2..=3 {
        let log = std::fs::read_to_string(c.dir.path().join(format!("n{n}.log"))).unwrap();
        assert!(!log.contains("fencing n1"), "n{n} fenced n1:\n{log}");
    }
    assert_one_owner_at_a_time(&c, 3);
}

/// Three nodes and no fence device; the owner's daemon alone is frozen for
/// 2.3 s (its guardian ends the service meanwhile). Within seconds of the
/// resume the service runs somewhere, and no node is left blocked with a
/// failed stop.
#[test]
fn after_the_owners_daemon_is_frozen_the_service_runs_again_and_nothing_is_blocked() {
    let Some(c) = start("bz") else { return };
    c.pause_daemon(1, true);
    std::thread::sleep(Duration::from_millis(2300));
    c.pause_daemon(1, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let phases: Vec<String> = (1..=3)
            .filter_map(|n| c.status(n))
            .map(|s| s["services"][0]["here"].as_str().unwrap_or("?").to_string())
            .collect();
        assert!(
            !phases.iter().any(|p| p == "stop-failed"),
            "a node is blocked: {phases:?}; logs in {}",
            c.keep_logs().display()
        );
        let serving = c
            .lab
            .as_client(|| baton::lab::answering(3, 8080, Duration::from_millis(200)))
            .unwrap();
        if phases.iter().any(|p| p == "running") && serving.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody runs the service after the resume: {phases:?}; logs in {}",
            c.keep_logs().display()
        );
    }
    assert_one_owner_at_a_time(&c, 2);
}

/// A stop issued while a start is under way waits for it, then stops
/// everything: a service moved away while its address is still being probed
/// must not get that address added after its stop (it would answer for the new
/// owner's address and block its start).
#[test]
fn a_service_moved_away_during_its_start_leaves_nothing_behind() {
    if !Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let slow_address = format!(
        "[[service.resource]]\nagent = \"ipaddr\"\nparams = {{ address = \"{}/24\", interface = \"svc\", probe_ms = \"1500\" }}\n",
        baton::lab::VIP
    );
    let spec = LabSpec {
        address: false,
        after_address: &slow_address,
        ..LabSpec::default()
    };
    let prefix = format!("bv{}", std::process::id() % 1000);
    let c = ClusterLab::start_spec(&prefix, &baton_exe(), &spec).unwrap();
    // n1's process answers: its start round is now probing for the address.
    assert!(c.wait_answering(vec![1], Duration::from_secs(20)).unwrap());
    let out = baton_at(&c.socket(2), &["move", "web", "--to", "n2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.wait_vip(2, Duration::from_secs(20)).unwrap(),
        "n2 never served at the address; logs in {}",
        c.keep_logs().display()
    );
    assert!(
        !c.lab.has_address(1, baton::lab::VIP),
        "n1 added the address after its stop"
    );
    // Nor did n1 race n2 for it (an address start after its stop).
    let log = std::fs::read_to_string(c.dir.path().join("n1.log")).unwrap();
    assert!(
        !log.contains("already answered for"),
        "n1 started the address after its stop: {log}"
    );
    assert!(c.served_only_by(2, Duration::from_secs(1)).unwrap());
    assert_one_owner_at_a_time(&c, 1);
}

/// One cluster, one config: a node restarted with a changed cluster-wide config
/// is not admitted, and both sides' status says why; rolled out node by node
/// (as docs/operations.md describes), the service stays with the side that
/// holds quorum and everyone is a member again at the end.
#[test]
fn a_config_change_rolled_out_node_by_node() {
    let Some(mut c) = start("rc") else { return };
    assert!(c.wait_vip(1, Duration::from_secs(20)).unwrap());
    let changed = |text: String| {
        text.replace(
            "strategy = \"standby\"",
            "strategy = \"standby\"\nmax_restarts = 5",
        )
    };
    let members = |c: &ClusterLab, n: usize| {
        c.status(n)
            .and_then(|s| s["members"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let wait = |c: &ClusterLab, what: &dyn Fn(&ClusterLab) -> bool, about: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what(c) {
            assert!(Instant::now() < deadline, "{about}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // n3 first: it runs alone; n1 and n2 keep quorum and the service.
    c.kill_node(3);
    c.use_config(3, changed).unwrap();
    c.start_node(3).unwrap();
    wait(
        &c,
        &|c: &ClusterLab| {
            c.status(1).is_some_and(|s| {
                s["other_configs"][0]
                    .as_str()
                    .is_some_and(|t| t.starts_with("n3 runs config"))
            }) && c
                .status(3)
                .is_some_and(|s| s["other_configs"].as_array().map(Vec::len) == Some(2))
        },
        "neither side says n3 runs another config",
    );
    assert_eq!(members(&c, 1), 2);
    assert_eq!(members(&c, 3), 1);
    assert!(c.served_only_by(1, Duration::from_secs(1)).unwrap());
    // n2 next: n2 and n3 are the majority on the new config; n1 stops, n2 serves.
    c.kill_node(2);
    c.use_config(2, changed).unwrap();
    c.start_node(2).unwrap();
    assert!(
        c.wait_vip(2, Duration::from_secs(30)).unwrap(),
        "n2 did not take over"
    );
    // n1 last: everyone is a member again.
    c.kill_node(1);
    c.use_config(1, changed).unwrap();
    c.start_node(1).unwrap();
    wait(
        &c,
        &|c: &ClusterLab| (1..=3).all(|n| members(c, n) == 3),
        "the nodes did not all join on the new config",
    );
    assert!(c.status(1).unwrap()["other_configs"].is_null());
    assert_one_owner_at_a_time(&c, 2);
}

/// A rolling upgrade under client load. Three nodes held at the previous wire
/// version (`wire_version = 6`: they stand in for the previous release) are
/// upgraded one at a time, n3, n2 then n1 (the owner): a clean stop (its
/// services move), the new build, a start. A client probes the service all
/// along. The nodes form one membership throughout (the cluster speaks 6
/// until the last node speaks 7; status says so), standby is refused while
/// the versions are mixed (it would not reach the older nodes), the service
/// moves once (off n1; rotating, it does not come back) and is never served
/// by two nodes.
#[test]
fn a_rolling_upgrade_node_by_node_moves_the_service_once() {
    let Some(mut c) = start_strategy("ru", 3, "rotating", "wire_version = 6\n") else {
        return;
    };
    let members = |c: &ClusterLab, n: usize| {
        c.status(n)
            .and_then(|s| s["members"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let wait = |c: &ClusterLab, what: &dyn Fn(&ClusterLab) -> bool, about: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !what(c) {
            assert!(
                Instant::now() < deadline,
                "{about}; logs in {}",
                c.keep_logs().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(c.status(1).unwrap()["wire"]["cluster"], 6);
    // The client: who answers, every probe, until told to stop (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = {
        let stop = std::sync::Arc::clone(&stop);
        c.lab.spawn_client(move || {
            let mut seen: Vec<Vec<usize>> = Vec::new();
            let until = Instant::now() + Duration::from_secs(300);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                seen.push(baton::lab::answering(3, 8080, Duration::from_secs(1)));
            }
            seen
        })
    };
    for n in [3, 2, 1] {
        assert!(
            c.stop_daemon(n, Duration::from_secs(60))
                .is_some_and(|e| e.success()),
            "n{n} did not stop cleanly"
        );
        c.use_config(n, |text| text.replace("wire_version = 6\n", ""))
            .unwrap();
        c.start_daemon(n).unwrap();
        wait(
            &c,
            &|c: &ClusterLab| (1..=3).all(|m| members(c, m) == 3),
            &format!("n{n} did not rejoin after its upgrade"),
        );
        let newest = baton::cluster::wire::VERSION;
        let want = if n == 1 { newest } else { 6 };
        wait(
            &c,
            &|c: &ClusterLab| {
                c.status(n)
                    .is_some_and(|s| s["wire"]["cluster"] == want && s["wire"]["newest"] == newest)
            },
            &format!("n{n} does not say the cluster speaks {want}"),
        );
        if n == 3 {
            let out = baton_at(&c.socket(3), &["standby", "n3"]);
            let said = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!out.status.success(), "standby in a mixed cluster");
            assert!(
                said.contains("the cluster speaks wire version 6 (n1 (6), n2 (6)"),
                "{said}"
            );
        }
    }
    // The client sees the service where it moved before it stops probing.
    assert!(
        c.vip_server(Duration::from_secs(30), |n| n != 1)
            .unwrap()
            .is_some(),
        "nobody took over from n1: {:?}; logs in {}",
        (1..=3)
            .map(|n| c.status(n).map(|s| s["services"][0].clone()))
            .collect::<Vec<_>>(),
        c.keep_logs().display()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = probes.join().unwrap().unwrap();
    assert!(
        seen.iter().all(|a| a.len() <= 1),
        "two nodes served at once: {:?}",
        seen.iter().find(|a| a.len() > 1)
    );
    let mut servers: Vec<usize> = seen.iter().filter_map(|a| a.first().copied()).collect();
    servers.dedup();
    assert_eq!(servers.len(), 2, "the service moved {servers:?}");
    assert_eq!(servers[0], 1);
    assert_one_owner_at_a_time(&c, 2);
    // Upgraded: standby reaches every node again.
    let out = baton_at(&c.socket(1), &["standby", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
}

/// The service `name` in node `n`'s status, if it lists it.
fn service_status(c: &ClusterLab, n: usize, name: &str) -> Option<serde_json::Value> {
    c.status(n)?["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// A reload applies the services of a changed config file without a restart,
/// node by node, and never touches the service the change leaves alone. Three
/// nodes serve `web` on n1 (its process, address and ledger). First a service
/// is added: the new file is deployed, `baton reload --dry-run`
/// shows the plan (web unchanged on n1, extra added), and `baton reload` on
/// n3, n2, then n1 with `--wait` stages it; the cluster switches once the last
/// node has staged it, extra runs, and web runs on n1 as the same process,
/// with no new owner interval. A change of the timing profile is refused,
/// naming the key, and nothing is staged. Then the added service is removed
/// with SIGHUP on every node (what `systemctl reload baton` sends): it stops,
/// web again untouched.
#[test]
fn a_reload_adds_and_removes_a_service_without_touching_the_others() {
    let Some(c) = start_with("rl", 3, "") else {
        return;
    };
    let extra = format!(
        "\n[[service]]\nname = \"extra\"\nstrategy = \"standby\"\npreferred = [\"n2\", \"n3\"]\n[[service.resource]]\nagent = \"process\"\nparams = {{ command = \"sleep 3600\", state_dir = {:?} }}\n",
        c.dir.path().join("run").display().to_string()
    );
    let web_pid = c.service_pid(1).expect("web runs on n1");
    let (_, intervals) = ledger_overlaps(c.dir.path()).unwrap();
    let wait = |what: &dyn Fn() -> bool, about: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !what() {
            assert!(
                Instant::now() < deadline,
                "{about}; logs in {}\n{}",
                c.keep_logs().display(),
                log_tails(&c)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let config_of = |n: usize| c.status(n).map(|s| s["config"].clone());
    let before = config_of(1).unwrap();
    // Every node runs the lab's cluster.toml: deploying is rewriting it.
    let file = c.dir.path().join("cluster.toml");
    let base = std::fs::read_to_string(&file).unwrap();
    let deploy = |text: &str| std::fs::write(&file, text).unwrap();
    deploy(&(base.clone() + &extra));
    let plan = baton_at(&c.socket(3), &["reload", "--dry-run"]);
    let text = crate::support::output_text(&plan);
    assert!(plan.status.success(), "{text}");
    assert!(text.contains("dry run: nothing staged"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("web") && l.contains("unchanged: not touched (runs on n1)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("extra") && l.contains("added: starts where placement puts it")),
        "{text}"
    );
    assert!(c.status(3).unwrap()["reload"].is_null(), "a dry run staged");
    for n in [3, 2] {
        let out = baton_at(&c.socket(n), &["reload", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            crate::support::output_text(&out)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["plan"]["staged"], true, "{reply}");
    }
    wait(
        &|| {
            c.status(3).is_some_and(|s| {
                s["reload"]
                    .as_str()
                    .is_some_and(|r| r.contains("waiting for n1"))
            })
        },
        "n3's status does not say the switch waits for n1",
    );
    assert_eq!(
        config_of(2).unwrap(),
        before,
        "n2 switched before n1 staged"
    );
    // A dry run of the running file says there is nothing to switch to, and
    // leaves the staged reload alone.
    deploy(&base);
    let out = baton_at(&c.socket(3), &["reload", "--dry-run"]);
    let text = crate::support::output_text(&out);
    assert!(text.contains("nothing to switch to (dry run)"), "{text}");
    let live: serde_json::Value =
        serde_json::from_slice(&baton_at(&c.socket(3), &["status", "--json"]).stdout).unwrap();
    assert!(
        live["reload"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for n1")),
        "a dry run dropped the staged reload: {live}"
    );
    deploy(&(base.clone() + &extra));
    let out = baton_at(&c.socket(1), &["reload", "--wait", "60s"]);
    let text = crate::support::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("switched to config"), "{text}");
    let after = config_of(1).unwrap();
    assert_ne!(after, before);
    wait(
        &|| (1..=3).all(|n| config_of(n).as_ref() == Some(&after)),
        "not every node switched",
    );
    wait(
        &|| {
            (1..=3)
                .filter(|n| service_status(&c, *n, "extra").is_some_and(|s| s["here"] == "running"))
                .count()
                == 1
        },
        "the added service does not run on one node",
    );
    assert_eq!(c.service_pid(1), Some(web_pid), "web was restarted");
    assert!(c.served_only_by(1, Duration::from_secs(1)).unwrap());
    // Not a reload's: the timing profile.
    deploy(&(base.replace("timing = \"fast\"", "timing = \"default\"") + &extra));
    let out = baton_at(&c.socket(2), &["reload"]);
    let text = crate::support::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("cluster.timing: changed, and a reload applies services only"),
        "{text}"
    );
    assert!(
        c.status(2).unwrap()["reload"].is_null(),
        "a refused reload staged"
    );
    // Removed again, by SIGHUP on every node.
    deploy(&base);
    for n in 1..=3 {
        let pid = c.daemon_pid(n).unwrap();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
    wait(
        &|| (1..=3).all(|n| config_of(n).as_ref() == Some(&before)),
        "not every node switched back after SIGHUP",
    );
    wait(
        &|| (1..=3).all(|n| service_status(&c, n, "extra").is_none()),
        "the removed service is still listed",
    );
    assert_eq!(c.service_pid(1), Some(web_pid), "web was restarted");
    let (overlaps, now) = ledger_overlaps(c.dir.path()).unwrap();
    assert!(overlaps.is_empty(), "{overlaps:?}");
    assert_eq!(now, intervals, "web got a new owner interval");
    let history = std::fs::read_to_string(c.dir.path().join("n1.history")).unwrap_or_default();
    assert!(history.contains("reload by SIGHUP"), "{history}");
}
