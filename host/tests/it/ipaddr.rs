//! The `ipaddr` agent against a real kernel, in network namespaces (root only):
//! the conformance run, bad parameters, an address another host already holds,
//! and a failover that clients follow without waiting for their ARP cache.

use crate::support::{baton_exe, output_text};
use baton::lab::{ClusterLab, Lab, Lan, VIP};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn lab(prefix: &str, nodes: usize) -> Option<Lab> {
    if !Lab::possible() {
        eprintln!("ipaddr tests need root and iproute2; skipped");
        return None;
    }
    Some(Lab::up(&format!("{prefix}{}", std::process::id() % 1000), nodes).unwrap())
}

/// `baton agent ARGS` inside node `n`'s namespace.
fn agent_in(lab: &Lab, n: usize, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(n)])
        .arg(baton_exe())
        .arg("agent")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn ipaddr_passes_the_conformance_run_and_refuses_an_address_another_host_holds() {
    let Some(lab) = lab("ia", 2) else { return };
    let vip = format!("address={VIP}/24");
    let out = agent_in(&lab, 1, &["test", "ipaddr", "-p", &vip, "-p", "label=web"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!lab.has_address(1, VIP), "the conformance run left it");

    // Chosen from the routing table: no interface parameter needed.
    let out = agent_in(&lab, 2, &["run", "ipaddr", "start", "-p", &vip]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(lab.has_address(2, VIP));
    let out = agent_in(&lab, 2, &["run", "ipaddr", "monitor", "-p", &vip]);
    assert!(
        output_text(&out).contains("running"),
        "{}",
        output_text(&out)
    );

    // n2 holds it: n1's start is refused, names n2's MAC, and adds nothing.
    let out = agent_in(&lab, 1, &["run", "ipaddr", "start", "-p", &vip]);
    assert!(!out.status.success());
    let said = output_text(&out);
    let mac2 = lab.mac(2, Lan::Service).unwrap();
    assert!(
        said.contains("already answered for by") && said.contains(&mac2),
        "{said}"
    );
    assert!(!lab.has_address(1, VIP));
    let out = agent_in(&lab, 1, &["run", "ipaddr", "monitor", "-p", &vip]);
    assert!(
        output_text(&out).contains("not-running"),
        "{}",
        output_text(&out)
    );

    // Stop twice: both succeed, and it is gone.
    for _ in 0..2 {
        let out = agent_in(&lab, 2, &["run", "ipaddr", "stop", "-p", &vip]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    assert!(!lab.has_address(2, VIP));
}

#[test]
fn ipaddr_names_the_bad_parameter_and_the_missing_interface() {
    let Some(lab) = lab("ib", 2) else { return };
    let out = agent_in(
        &lab,
        1,
        &["run", "ipaddr", "start", "-p", "address=198.18.2.300/24"],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("address: 198.18.2.300 is not an IPv4 or IPv6 address"),
        "{}",
        output_text(&out)
    );
    let out = agent_in(
        &lab,
        1,
        &["run", "ipaddr", "start", "-p", "address=198.18.2.100"],
    );
    assert!(
        output_text(&out).contains("has no prefix length"),
        "{}",
        output_text(&out)
    );
    let vip = format!("address={VIP}/24");
    let out = agent_in(
        &lab,
        1,
        &["run", "ipaddr", "start", "-p", &vip, "-p", "interface=eth9"],
    );
    assert!(!out.status.success());
    let said = output_text(&out);
    assert!(said.contains("no interface eth9 on node"), "{said}");
    assert!(said.contains("svc"), "lists the interfaces there: {said}");
    // A link that is down: a clear error, and the address is not left behind.
    lab.cut(1, Lan::Service).unwrap();
    let out = agent_in(
        &lab,
        1,
        &["run", "ipaddr", "start", "-p", &vip, "-p", "interface=svc"],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("interface svc is down"),
        "{}",
        output_text(&out)
    );
    assert!(!lab.has_address(1, VIP));
}

/// After the owner is cut off, the new owner's announcement updates the client's
/// neighbour cache before the client sends anything, and the old owner removes
/// the address when it loses quorum.
#[test]
fn after_a_failover_clients_reach_the_address_without_waiting_for_their_arp_cache() {
    if !Lab::possible() {
        eprintln!("ipaddr tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("ic{}", std::process::id() % 1000);
    let c = ClusterLab::start(&prefix, &baton_exe(), "fast", 500, false).unwrap();
    assert!(
        c.wait_vip(1, Duration::from_secs(20)).unwrap(),
        "n1 never served at {VIP}; logs in {}",
        c.dir.path().display()
    );
    let mac1 = c.lab.mac(1, Lan::Service).unwrap();
    let mac2 = c.lab.mac(2, Lan::Service).unwrap();
    assert_eq!(c.lab.client_neighbour(VIP).unwrap(), Some(mac1.clone()));

    c.lab.cut(1, Lan::Private).unwrap();
    c.lab.cut(1, Lan::Service).unwrap();
    // No client traffic until the client's cache has changed by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cached = c.lab.client_neighbour(VIP).unwrap();
        if cached.as_deref() == Some(mac2.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client still has {cached:?} for {VIP} (n1 {mac1}, n2 {mac2}); logs in {}",
            c.dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        c.wait_vip(2, Duration::from_secs(5)).unwrap(),
        "n2 does not answer at {VIP}"
    );
    // The isolated old owner lost quorum and removed the address itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.lab.has_address(1, VIP) {
        assert!(Instant::now() < deadline, "n1 still has {VIP}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (overlaps, _) = baton::lab::ledger_overlaps(c.dir.path()).unwrap();
    assert!(overlaps.is_empty(), "two owners at once: {overlaps:?}");
}

/// A stop ends the announcements a start left running: a node that gave the
/// address up never announces it again (it would send clients to the wrong
/// node, and the next owner's probe would find it).
#[test]
fn a_stopped_address_is_not_announced_any_more() {
    let Some(lab) = lab("id", 2) else { return };
    let ns = format!("/var/run/netns/{}", lab.node_ns(1));
    // The agent runs in this process (as in a daemon), on a thread inside n1's
    // namespace; its announcer thread inherits the namespace.
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns on this thread only, with a namespace file we opened.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
            0
        );
        let store = tempfile::tempdir().unwrap();
        let agent = crate::support::catalog(store.path(), "")
            .load("ipaddr")
            .unwrap();
        let vip = format!("{VIP}/24");
        let params = [
            ("address", vip.as_str()),
            ("arp_count", "10"),
            ("arp_interval_ms", "100"),
        ];
        let start = crate::support::call(
            &agent,
            baton_plugin_api::Action::Start,
            "vip",
            &params,
            5_000,
        );
        assert!(start.result.is_ok(), "{:?}", start.result);
        let stop = crate::support::call(
            &agent,
            baton_plugin_api::Action::Stop,
            "vip",
            &params,
            5_000,
        );
        assert!(stop.result.is_ok(), "{:?}", stop.result);
    })
    .join()
    .unwrap();
    // n2 probes for longer than the announcements would have lasted.
    let vip = format!("address={VIP}/24");
    let out = agent_in(
        &lab,
        2,
        &["run", "ipaddr", "start", "-p", &vip, "-p", "probe_ms=1200"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
}
