//! The `dns-name` agent against a real BIND 9 (Debian's `bind9`), started by the
//! test in the lab's client namespace with a zone and a TSIG key of its own
//! (root only): the conformance run, a wrong key, a server that does not
//! answer, and a failover after which a client resolves the name to the new
//! owner.

use crate::support::{baton_exe, output_text};
use baton::lab::named::{KEY_NAME, Named, SECRET, installed, key_text};
use baton::lab::{ClusterLab, Lab, LabSpec, Lan};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ZONE: &str = "lab.test";
const NAME: &str = "db.lab.test";
/// BIND listens on the client's address of the service LAN.
const SERVER: &str = "198.18.2.254";

fn lab(prefix: &str) -> Option<Lab> {
    if !Lab::possible() || !installed() {
        eprintln!("dns tests need root, iproute2 and bind9; skipped");
        return None;
    }
    Some(Lab::up(&format!("{prefix}{}", std::process::id() % 1000), 2).unwrap())
}

fn agent_in(lab: &Lab, n: usize, args: &[&str], key: &Path, server: &str) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.node_ns(n)])
        .arg(baton_exe())
        .arg("agent")
        .args(args);
    for p in [
        format!("server={server}"),
        format!("zone={ZONE}"),
        format!("name={NAME}"),
        "interface=svc".to_string(),
        format!("key_file={}", key.display()),
        "timeout_ms=1000".to_string(),
    ] {
        cmd.args(["-p", &p]);
    }
    cmd.output().unwrap()
}

/// What a client in the lab resolves the name to.
fn resolve(lab: &Lab) -> Vec<String> {
    lab.as_client(|| {
        baton_agents::dns_name::lookup(
            format!("{SERVER}:53").parse().unwrap(),
            NAME,
            Duration::from_secs(2),
        )
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect()
    })
    .unwrap()
}

#[test]
fn dns_name_passes_the_conformance_run_against_bind_and_names_a_wrong_key() {
    let Some(lab) = lab("na") else { return };
    let named = Named::start(&lab, SERVER, ZONE).unwrap();
    let key = named.key_file("good.key", KEY_NAME, SECRET).unwrap();
    let out = agent_in(&lab, 1, &["test", "dns-name"], &key, SERVER);
    assert!(out.status.success(), "{}", output_text(&out));

    let out = agent_in(&lab, 1, &["run", "dns-name", "start"], &key, SERVER);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(resolve(&lab), [Lab::address(1, Lan::Service)]);
    // n2's stop must not remove n1's registration.
    let out = agent_in(&lab, 2, &["run", "dns-name", "stop"], &key, SERVER);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(resolve(&lab), [Lab::address(1, Lan::Service)]);

    // A wrong secret: refused, with the server and the key named.
    let wrong = named
        .key_file(
            "wrong.key",
            KEY_NAME,
            "d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5IQ==",
        )
        .unwrap();
    let out = agent_in(&lab, 2, &["run", "dns-name", "start"], &wrong, SERVER);
    assert!(!out.status.success());
    let said = output_text(&out);
    assert!(
        said.contains(SERVER) && said.contains("baton-lab"),
        "{said}"
    );
    assert_eq!(
        resolve(&lab),
        [Lab::address(1, Lan::Service)],
        "a wrong key changed the zone"
    );

    // A server that does not answer: an error naming it, within the timeout.
    let out = agent_in(&lab, 2, &["run", "dns-name", "start"], &key, "198.18.2.250");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("198.18.2.250:53 did not answer within 1000 ms"),
        "{}",
        output_text(&out)
    );
}

/// The name follows the service: after the owner dies, a client resolving the
/// name gets the new owner's address.
#[test]
fn after_a_failover_clients_resolve_the_name_to_the_new_owner() {
    if !Lab::possible() || !installed() {
        eprintln!("dns tests need root, iproute2 and bind9; skipped");
        return;
    }
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("baton.key");
    std::fs::write(&key, key_text(KEY_NAME, SECRET)).unwrap();
    let name = format!(
        "[[service.resource]]\nagent = \"dns-name\"\nmonitor_ms = 1000\n\
         params = {{ server = \"{SERVER}\", zone = \"{ZONE}\", name = \"{NAME}\", interface = \"svc\", key_file = \"{}\" }}\n",
        key.display()
    );
    let spec = LabSpec {
        after_address: &name,
        ..LabSpec::default()
    };
    let prefix = format!("nf{}", std::process::id() % 1000);
    let mut named = None;
    let mut c = ClusterLab::start_spec_with(&prefix, &baton_exe(), &spec, |_, lab| {
        named = Some(Named::start(lab, SERVER, ZONE)?);
        Ok(())
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while resolve(&c.lab) != [Lab::address(1, Lan::Service)] {
        assert!(
            Instant::now() < deadline,
            "the name never pointed to n1; logs in {}",
            c.keep_logs().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill_node(1);
    let owner = c
        .vip_server(Duration::from_secs(30), |n| n != 1)
        .unwrap()
        .expect("nobody took over from n1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while resolve(&c.lab) != [Lab::address(owner, Lan::Service)] {
        assert!(
            Instant::now() < deadline,
            "n{owner} serves, but the name resolves to {:?}; logs in {}",
            resolve(&c.lab),
            c.keep_logs().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(named);
}
