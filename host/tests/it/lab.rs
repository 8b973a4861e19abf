//! Real daemons in network namespaces (root only): three nodes with a private and a
//! service LAN, a TCP service run by the `process` agent, and a client probing it.

use crate::support::baton_exe;
use baton::lab::{Lab, Lan, RESPONDER, answering};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Running {
    lab: Lab,
    dir: tempfile::TempDir,
}

fn config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("key"), b"lab key lab key lab key lab key!!").unwrap();
    std::fs::write(dir.join("responder.py"), RESPONDER).unwrap();
    let mut nodes = String::new();
    for n in 1..=3 {
        nodes += &format!(
            "[[node]]\nname = \"n{n}\"\nid = {n}\nlinks = [\"{}:5405\", \"{}:5405\"]\n",
            Lab::address(n, Lan::Private),
            Lab::address(n, Lan::Service)
        );
    }
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[agents]\nstore = {store:?}\n[cluster]\nname = \"lab\"\nkey_file = {key:?}\ntiming = \"fast\"\nself_fence_ms = 500\n{nodes}\
             [[service]]\nname = \"web\"\nstrategy = \"standby\"\npreferred = [\"n1\", \"n2\", \"n3\"]\n\
             [[service.resource]]\nagent = \"process\"\nparams = {{ command = \"python3 {resp}\", ready_tcp = \"127.0.0.1:8080\", state_dir = {run:?}, stop_grace_ms = 300 }}\n",
            store = dir.join("store").display().to_string(),
            key = dir.join("key").display().to_string(),
            resp = dir.join("responder.py").display(),
            run = dir.join("run").display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn start(prefix: &str) -> Option<Running> {
    if !Lab::possible() {
        // Not root: the loopback daemon tests still cover failover. CI runs as root.
        eprintln!("lab tests need root and iproute2; skipped");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut lab = Lab::up(&format!("{prefix}{}", std::process::id() % 1000), 3).unwrap();
    for n in 1..=3 {
        let status = dir.path().join(format!("n{n}.json"));
        let args = [
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--node",
            &format!("n{n}"),
            "--status-file",
            status.to_str().unwrap(),
        ];
        lab.spawn(
            n,
            &baton_exe(),
            &args,
            &dir.path().join(format!("n{n}.log")),
        )
        .unwrap();
    }
    Some(Running { lab, dir })
}

impl Running {
    fn wait_answering(&self, what: &str, want: Vec<usize>) {
        let ok = self
            .lab
            .as_client(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if answering(3, 8080, Duration::from_millis(100)) == want {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                false
            })
            .unwrap();
        assert!(
            ok,
            "timed out waiting for {what}; logs in {}",
            self.dir.path().display()
        );
    }

    fn status(&self, n: usize) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join(format!("n{n}.json"))).unwrap())
            .unwrap()
    }
}

#[test]
fn cutting_the_private_link_is_a_warning_not_a_failover() {
    let Some(r) = start("bc") else { return };
    r.wait_answering("n1 to serve", vec![1]);
    let epoch = r.status(2)["epoch"].clone();
    r.lab.cut(1, Lan::Private).unwrap();
    // Watch for well past the takeover time (detection + fence wait + settle < 1.5 s).
    let stable = r
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
    let s = r.status(2);
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
    let Some(r) = start("bi") else { return };
    r.wait_answering("n1 to serve", vec![1]);
    let pid: i32 = std::fs::read_to_string(r.dir.path().join("run/n1.web-0.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    r.lab.cut(1, Lan::Private).unwrap();
    r.lab.cut(1, Lan::Service).unwrap();
    r.wait_answering("n2 to take over", vec![2]);
    // The isolated node lost quorum and stopped its copy (self-fencing).
    assert!(
        crate::support::gone_within(pid, Duration::from_secs(5)),
        "the isolated node still runs the service"
    );
    let s1 = r.status(1);
    assert_eq!(s1["quorate"], false);
    assert_eq!(s1["services"][0]["here"], "stopped");
    // Healed, n1 rejoins and (standby) gets the service back; still one server at a time.
    r.lab.heal(1, Lan::Private).unwrap();
    r.lab.heal(1, Lan::Service).unwrap();
    r.wait_answering("failback to n1", vec![1]);
}
