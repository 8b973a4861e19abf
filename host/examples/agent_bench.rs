//! Agent call benchmarks for docs/benchmarks.md. Run from the repository root:
//!
//! ```text
//! scripts/build-wasm-agents && cargo build --release --workspace
//! cargo run --release --example agent_bench
//! ```
//!
//! Prints a markdown table: per-call cost of a trivial monitor on each kind of
//! agent, load/instantiate times, and memory per WebAssembly instance.

use baton::agent::catalog::AgentCatalog;
use baton::agent::host::AgentHandle;
use baton::config::Config;
use baton_plugin_api::{Action, Params, Request};
use std::path::Path;
use std::time::{Duration, Instant};

fn request(action: Action, resource: &str, params: &Params) -> Request {
    let mut req = Request::new(action, params.clone());
    req.context.resource = resource.into();
    req.context.timeout_ms = 20_000;
    req
}

struct Stats {
    median: Duration,
    p90: Duration,
    n: usize,
}

fn measure(agent: &AgentHandle, params: &Params, n: usize) -> Stats {
    let req = request(Action::Monitor, "bench", params);
    for _ in 0..n.min(50) {
        assert!(
            agent.call(&req).result.is_ok(),
            "{} monitor failed",
            agent.metadata().name
        );
    }
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            let r = agent.call(&req);
            let e = s.elapsed();
            assert!(r.result.is_ok());
            e
        })
        .collect();
    t.sort();
    Stats {
        median: t[n / 2],
        p90: t[n * 9 / 10],
        n,
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let s = Instant::now();
    let v = f();
    (v, s.elapsed())
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: sched_setaffinity on the calling thread with a plain cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The cost of waking another thread and being woken back: the floor under any
/// agent call that crosses a thread or a process. Both threads on CPU 0, or the
/// other on CPU 1 (where a wake-up is an interrupt to another vCPU).
fn ping_pong(n: usize, same_cpu: bool) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<usize>(1);
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<usize>(1);
    pin(0);
    std::thread::spawn(move || {
        pin(if same_cpu { 0 } else { 1 });
        while let Ok(v) = rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut t: Vec<Duration> = (0..n)
        .map(|i| {
            let s = Instant::now();
            tx.send(i).unwrap();
            back_rx.recv().unwrap();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let release = repo.join("target/release");
    let baton = release.join("baton");
    // Agents whose monitor does nothing but answer, so the figures are the
    // host's cost of a call (the samples' monitors scan /proc or read a file).
    let native = release.join("libnative_hostile.so");
    let wasm = repo.join("host/tests/fixtures/wasm/target/wasm32-wasip2/release/hostile.wasm");
    for p in [&baton, &native, &wasm] {
        anyhow::ensure!(
            p.is_file(),
            "{} missing: run scripts/build-wasm-agents && cargo build --release --workspace",
            p.display()
        );
    }
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");
    let config = |trusted: bool| {
        let text = format!(
            "[agents]\nstore = {:?}\nnode = \"bench\"\n{}",
            store.display().to_string(),
            if trusted {
                "trusted = [\"native-hostile\"]\n"
            } else {
                ""
            }
        );
        Config::parse(&text).unwrap()
    };
    let catalog = AgentCatalog::new(config(false), baton.clone());
    let trusted_catalog = AgentCatalog::new(config(true), baton.clone());

    // Install: native (validated in a runner) and wasm (compiled + precompiled).
    let (_, install_native) = time(|| catalog.install(&native).unwrap());
    let (_, install_wasm) = time(|| catalog.install(&wasm).unwrap());

    let (builtin, load_builtin) = time(|| catalog.load("process").unwrap());
    let (runner, load_runner) = time(|| catalog.load("native-hostile").unwrap());
    let (trusted, load_trusted) = time(|| trusted_catalog.load("native-hostile").unwrap());
    let _ = trusted_catalog.wasm_runtime()?;
    let (wasm_agent, load_wasm) = time(|| trusted_catalog.load("hostile").unwrap());
    let (ocf, load_ocf) = time(|| catalog.load("ocf:heartbeat:Dummy").unwrap());
    let rt = catalog.wasm_runtime()?;
    let bytes = std::fs::read(&wasm)?;
    let (_, compile) = time(|| rt.compile(&bytes, &wasm).unwrap());

    let builtin_params: Params = [
        ("command".to_string(), "true".to_string()),
        (
            "state_dir".to_string(),
            work.path().join("run").display().to_string(),
        ),
    ]
    .into();
    let native_params = Params::new();
    let ocf_params: Params = [(
        "state".to_string(),
        work.path().join("dummy.state").display().to_string(),
    )]
    .into();

    let rows = [
        (
            "built-in (`process`, not started)",
            measure(&builtin, &builtin_params, 20_000),
            load_builtin,
        ),
        (
            "native, trusted in-process (`native-hostile`)",
            measure(&trusted, &native_params, 20_000),
            load_trusted,
        ),
        (
            "native, runner process (`native-hostile`)",
            measure(&runner, &native_params, 20_000),
            load_runner,
        ),
        (
            "wasm (`hostile`)",
            measure(&wasm_agent, &Params::new(), 20_000),
            load_wasm,
        ),
        (
            "OCF bridge (`ocf:heartbeat:Dummy`, fork/exec)",
            measure(&ocf, &ocf_params, 300),
            load_ocf,
        ),
    ];
    let ocf_median = rows[4].1.median.as_secs_f64();
    println!("| agent kind | monitor median µs | p90 µs | calls | vs OCF | load µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s, load) in &rows {
        println!(
            "| {name} | {} | {} | {} | {:.0}× | {} |",
            us(s.median),
            us(s.p90),
            s.n,
            ocf_median / s.median.as_secs_f64(),
            us(*load)
        );
    }
    println!();
    println!("| one-time step | ms |");
    println!("|---|---:|");
    println!(
        "| install native (load in a runner, hash, copy) | {:.1} |",
        install_native.as_secs_f64() * 1e3
    );
    println!(
        "| install wasm (compile, precompile, hash) | {:.1} |",
        install_wasm.as_secs_f64() * 1e3
    );
    println!(
        "| compile the wasm component from bytes | {:.1} |",
        compile.as_secs_f64() * 1e3
    );

    // Instantiation and memory: 200 resources, each with its own instance.
    let before = rss_kib();
    let n = 200;
    let (_, inst) = time(|| {
        for i in 0..n {
            let r = wasm_agent.call(&request(
                Action::Monitor,
                &format!("inst-{i}"),
                &Params::new(),
            ));
            assert!(r.result.is_ok());
        }
    });
    let after = rss_kib();
    println!(
        "| instantiate a wasm agent for a new resource (first call, mean of {n}) | {:.3} |",
        inst.as_secs_f64() * 1e3 / n as f64
    );
    println!();
    println!(
        "memory per wasm instance: {:.0} KiB RSS ({} instances: {} KiB -> {} KiB)",
        (after - before) as f64 / n as f64,
        n,
        before,
        after
    );
    let (cross, same) = (ping_pong(20_000, false), ping_pong(20_000, true));
    println!(
        "floor: a bare thread ping-pong (two wake-ups, what any cross-thread or cross-process call pays) takes {} µs median between two CPUs and {} µs on one CPU",
        us(cross),
        us(same)
    );
    Ok(())
}
