//! One resource's bad agent costs only that resource, in the daemon: a
//! WebAssembly monitor that sleeps past its deadline fails its own service
//! again and again while a service of the same agent keeps running with no
//! failure, and SIGTERM still ends the daemon cleanly.

use crate::support::{baton_exe, wasm};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path, port: u16) -> String {
    let agent = wasm("hostile").display().to_string();
    format!(
        r#"[cluster]
name = "contain"
key_file = "{dir}/key"
timing = "fast"

[[node]]
name = "n1"
id = 1
links = ["127.0.0.1:{port}"]

[agents]
store = "{dir}/store"

[[service]]
name = "steady"
strategy = "standby"
[[service.resource]]
agent = "{agent}"
monitor_ms = 100

[[service]]
name = "sleepy"
strategy = "standby"
max_restarts = 20
[[service.resource]]
agent = "{agent}"
monitor_ms = 100
timeout_ms = 300
params = {{ mode = "sleep" }}
"#,
        dir = dir.display()
    )
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn a_sleeping_webassembly_monitor_fails_its_own_service_and_sigterm_still_ends_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("key"), b"containment test key, 32 bytes!!").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(d.join("cluster.toml"), config(d, port)).unwrap();
    let log = std::fs::File::create(d.join("n1.log")).unwrap();
    let mut daemon = Command::new(baton_exe())
        .arg("--config")
        .arg(d.join("cluster.toml"))
        .args(["run", "--node", "n1", "--status-file"])
        .arg(d.join("n1.json"))
        .arg("--socket")
        .arg(d.join("n1.sock"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(d.join("n1.json")).ok()?).ok()
    };
    // Three of the sleeping monitor's timeouts, each cut at its 300 ms deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failures = status().map(|s| service(&s, "sleepy")["failures"].as_u64());
        if failures.flatten().is_some_and(|f| f >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sleeping monitor never failed 3 times: {:?}",
            status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = status().unwrap();
    assert_eq!(service(&s, "steady")["here"], "running", "{s}");
    assert_eq!(service(&s, "steady")["failures"], 0, "{s}");

    // SIGTERM: the daemon stops both services and ends.
    // SAFETY: signalling the daemon this test started.
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = daemon.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() >= deadline {
            let _ = daemon.kill();
            panic!(
                "SIGTERM did not end the daemon within 60 s:\n{}",
                std::fs::read_to_string(d.join("n1.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(d.join("n1.log")).unwrap();
    assert!(exit.success(), "{exit}: {log}");
    assert!(
        log.contains("the call's deadline passed while the agent slept"),
        "{log}"
    );
    assert!(log.contains("left the cluster holding nothing"), "{log}");
}
