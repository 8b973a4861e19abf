//! Real daemons in network namespaces (root only): three nodes with a private and a
//! service LAN, a TCP service run by the `process` agent, and a client probing it.

use crate::support::baton_exe;
use baton::lab::{ClusterLab, Lab, Lan, answering};
use std::time::{Duration, Instant};

fn start(prefix: &str) -> Option<ClusterLab> {
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
    )
    .unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 never served; logs in {}",
        c.dir.path().display()
    );
    Some(c)
}

#[test]
fn cutting_the_private_link_is_a_warning_not_a_failover() {
    let Some(c) = start("bc") else { return };
    let epoch = c.status(2).unwrap()["epoch"].clone();
    c.lab.cut(1, Lan::Private).unwrap();
    // Watch for well past the takeover time (detection + fence wait + settle < 1.5 s).
    let stable = c
        .lab
        .as_client(|| {
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if answering(3, 8080, Duration::from_millis(100)) != [1] {
                    return false;
                }
            }
            true
        })
        .unwrap();
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
    // Healed, n1 rejoins and (standby) gets the service back; still one server at a time.
    c.lab.heal(1, Lan::Private).unwrap();
    c.lab.heal(1, Lan::Service).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "no failback to n1"
    );
}

#[test]
fn kill_9_of_the_owner_fails_over_and_the_node_rejoins() {
    let Some(mut c) = start("bk") else { return };
    c.kill_node(1);
    assert!(
        c.wait_answering(vec![2], Duration::from_secs(20)).unwrap(),
        "n2 did not take over"
    );
    c.start_node(1).unwrap();
    assert!(
        c.wait_answering(vec![1], Duration::from_secs(20)).unwrap(),
        "n1 did not get the service back"
    );
}
