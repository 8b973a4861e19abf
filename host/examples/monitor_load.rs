//! What recurring monitors cost the daemon, for docs/benchmarks.md. Run from the
//! repository root:
//!
//! ```text
//! cargo build --release --workspace && cargo run --release --example monitor_load -- [RESOURCES [ROW]]
//! ```
//!
//! Starts one `baton run` (a one-node cluster on loopback, no namespaces) with
//! RESOURCES (default 1000) resources spread over 50 services (a cluster has at
//! most 64), every resource monitored once a second, waits until all run, then reads the CPU time of the
//! daemon and its agent processes over 30 s, 10 s after all run. Three rows: a
//! native agent in its runner (a runner per resource), the same library trusted
//! in-process, and a WebAssembly component (the `legacy-1-0` fixture, an
//! instance per resource). Their monitors do nothing but answer, so the figures
//! are the host's own cost. ROW (`runner`, `trusted`, `WebAssembly`) measures
//! only the rows whose name contains it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time of `root` and every descendant, in ns: the sum over their threads
/// of `/proc/PID/task/TID/schedstat` (time on a CPU, exact).
///
/// Rationale: utime and stime are sampled at the clock tick, and a daemon that
/// wakes on timers runs in step with the tick, so those figures swung by a
/// factor of two from run to run; schedstat counts every nanosecond run. A
/// thread that ends inside the window would not count: the daemon's threads
/// (loop, monitor crew, workers) and runners live on.
fn tree_cpu(root: u32) -> u64 {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parent.insert(pid, ppid);
    }
    let in_tree = |pid: u32| {
        let mut p = pid;
        for _ in 0..32 {
            if p == root {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    let mut total = 0;
    for pid in parent.keys().copied().filter(|p| in_tree(*p)) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("schedstat");
            total += std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn write_config(
    dir: &Path,
    n: usize,
    agent: &str,
    params: &str,
    trusted: bool,
    monitor_ms: u64,
) -> PathBuf {
    let key = dir.join("key");
    std::fs::write(&key, "monitor-load benchmark key, 32+ bytes long").unwrap();
    let mut text = format!(
        "[agents]\nstore = {:?}\n{}\n[cluster]\nname = \"load\"\nkey_file = {:?}\n\n\
         [[node]]\nname = \"n1\"\nid = 1\nlinks = [\"127.0.0.1:47391\"]\n",
        dir.join("store").display().to_string(),
        if trusted {
            "trusted = [\"native-hostile\"]"
        } else {
            ""
        },
        key.display().to_string()
    );
    // A cluster has at most 64 services: RESOURCES spread over 50 of them.
    let services = n.min(50);
    for i in 0..services {
        text.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\nstrategy = \"standby\"\n"
        ));
        for _ in 0..(n / services + usize::from(i < n % services)) {
            text.push_str(&format!(
                "[[service.resource]]\nagent = {agent:?}\nparams = {{ {params} }}\nmonitor_ms = {monitor_ms}\n"
            ));
        }
    }
    let path = dir.join("baton.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn running_services(status: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(status) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    v["services"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["here"] == "running").count())
        .unwrap_or(0)
}

/// The CPU share (of one core) of the daemon and its agents with `n` resources
/// of `agent`, monitored every `monitor_ms` (0: never).
fn measure(
    baton: &Path,
    name: &str,
    n: usize,
    agent: &str,
    params: &str,
    trusted: bool,
    monitor_ms: u64,
) -> Option<f64> {
    let services = n.min(50);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), n, agent, params, trusted, monitor_ms);
    let repo = baton.parent().unwrap().parent().unwrap().parent().unwrap();
    let file = match agent {
        "native-hostile" => repo.join("target/release/libnative_hostile.so"),
        _ => repo.join("host/tests/fixtures/wasm/target/wasm32-wasip2/release/legacy_1_0.wasm"),
    };
    let o = Command::new(baton)
        .arg("--config")
        .arg(&config)
        .args(["agent", "install"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status = dir.path().join("status.json");
    let mut cmd = Command::new(baton);
    // SAFETY: prctl in the child before exec: the daemon ends with this bench.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut daemon: Child = cmd
        .args(["run", "--node", "n1", "--config"])
        .arg(&config)
        .arg("--status-file")
        .arg(&status)
        .arg("--socket")
        .arg(dir.path().join("n1.sock"))
        .env("BATON_LOG", "error")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now() + Duration::from_secs(120);
    let mut last = 0;
    while Instant::now() < up {
        let r = running_services(&status);
        if r != last {
            eprint!("\r{name}: {r}/{services} services running");
            last = r;
        }
        if r == services {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!();
    if last < services {
        let _ = daemon.kill();
        let _ = daemon.wait();
        println!("| {name} | {n} | did not start all services ({last}) |");
        return None;
    }
    // Let the start-up settle (probes, starts, the first monitors), then
    // measure a window.
    std::thread::sleep(Duration::from_secs(10));
    let window = Duration::from_secs(30);
    let before = tree_cpu(daemon.id());
    let t0 = Instant::now();
    std::thread::sleep(window);
    let used = tree_cpu(daemon.id()).saturating_sub(before) as f64 / 1e9;
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: SIGTERM to the daemon this function started.
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let _ = daemon.wait();
    Some(used / secs)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RESOURCES must be a number"))
        .unwrap_or(1000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let baton = repo.join("target/release/baton");
    let native = repo.join("target/release/libnative_hostile.so");
    let wasm = repo.join("host/tests/fixtures/wasm/target/wasm32-wasip2/release/legacy_1_0.wasm");
    assert!(
        baton.is_file() && native.is_file() && wasm.is_file(),
        "run `scripts/build-wasm-agents && cargo build --release --workspace` first"
    );
    // An optional second argument picks the rows whose name contains it.
    let only = std::env::args().nth(2).unwrap_or_default();
    let native = "native-hostile";
    println!(
        "| agent | resources | CPU, not monitored | CPU, each monitored every second | per monitor |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, agent, params, trusted) in [
        ("native, runner process", native, "", false),
        ("native, trusted in-process", native, "", true),
        ("WebAssembly", "legacy", "", false),
    ] {
        if !name.contains(only.as_str()) {
            continue;
        }
        let idle = measure(&baton, name, n, agent, params, trusted, 0);
        let busy = measure(&baton, name, n, agent, params, trusted, 1000);
        if let (Some(idle), Some(busy)) = (idle, busy) {
            println!(
                "| {name} | {n} | {:.2} % | {:.2} % | {:.1} µs |",
                idle * 100.0,
                busy * 100.0,
                (busy - idle) / n as f64 * 1e6
            );
        }
    }
}
