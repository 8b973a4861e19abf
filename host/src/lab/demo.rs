//! `baton demo`: a first look on this machine.
//!
//! The default demo starts a three-node cluster in network namespaces (root needed),
//! runs a TCP service on it, cuts the owner's private link (a warning, not a
//! failover), then kills the owner with kill -9 and shows how long clients went
//! without an answer. `--runs N` repeats the fault and prints p50/p90/max (the
//! failover benchmark). `--agents` shows the agent side instead: every kind of
//! agent behind one contract, a process killed behind baton's back, the sandbox
//! stopping misbehaving agents, and the conformance run.

use crate::agent::catalog::AgentCatalog;
use crate::agent::conformance;
use crate::agent::host::AgentHandle;
use crate::config::Config;
use anyhow::{Context, bail};
use baton_plugin_api::{Action, MonitorState, Outcome, Params, Request};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `baton demo` flags.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Show the agent side (four kinds of agent, sandbox, conformance) instead of the cluster.
    #[arg(long)]
    pub agents: bool,
    /// Repeat the fault this many times and report p50/p90/max of the client-visible gap.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// The fault: kill (kill -9 of the owner's daemon and service) or isolate (cut both LANs).
    #[arg(long, default_value = "kill")]
    pub fault: String,
    /// Timing profile: fast or default.
    #[arg(long, default_value = "fast")]
    pub timing: String,
    /// Self-fencing bound in ms (how long a node that lost quorum may take to stop).
    #[arg(long, default_value_t = 300)]
    pub self_fence_ms: u64,
    /// Fencing: `lab` (the lab fence agent kills a lost node's daemon and processes,
    /// so survivors need not wait) or `none` (survivors wait the fence wait).
    #[arg(long, default_value = "lab", value_parser = ["lab", "none"])]
    pub fence: String,
    /// Print the measurements as JSON.
    #[arg(long)]
    pub json: bool,
    /// The repository checkout holding the built sample agents (for --agents).
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

fn find_repo(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    candidates.extend(given);
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/baton -> the checkout
        candidates.extend(exe.ancestors().nth(3).map(Path::to_path_buf));
    }
    candidates.extend(std::env::current_dir().ok());
    candidates
        .into_iter()
        .find(|c| c.join("samples/wasm-agent").is_dir())
        .context("cannot find the baton checkout with the sample agents; run scripts/demo from the repository, or pass --repo")
}

fn request(action: Action, resource: &str, params: &Params, timeout_ms: u64) -> Request {
    let mut req = Request::new(action, params.clone());
    req.context.resource = resource.into();
    req.context.node = "demo".into();
    req.context.timeout_ms = timeout_ms;
    req
}

fn say(step: &str) {
    println!("\n== {step}");
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Median cost of `n` monitor calls, in microseconds.
fn monitor_cost(agent: &AgentHandle, resource: &str, params: &Params, n: usize) -> f64 {
    let req = request(Action::Monitor, resource, params, 5_000);
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let _ = agent.call(&req);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// Run the demo.
pub fn run(args: DemoArgs, config: Config, runner: PathBuf) -> anyhow::Result<ExitCode> {
    if !args.agents {
        if crate::lab::Lab::possible() {
            return cluster(&args, &runner);
        }
        println!(
            "The cluster demo needs root (network namespaces) and iproute2; showing the agent side instead."
        );
    }
    let repo = find_repo(args.repo)?;
    let work = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut config = config;
    config.agents.store = work.join("store");
    config.agents.node = Some("demo".into());
    // The sample WebAssembly agent keeps its marker file in /tmp.
    config.agents.grants.insert(
        "sample-wasm".into(),
        ["exec:/usr/bin/touch", "exec:/usr/bin/rm", "read:/tmp"]
            .iter()
            .map(|g| g.parse())
            .collect::<Result<_, _>>()?,
    );
    let catalog = AgentCatalog::new(config, runner);
    let result = tour(&repo, &work, &catalog);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tour(repo: &Path, work: &Path, catalog: &AgentCatalog) -> anyhow::Result<ExitCode> {
    println!(
        "baton demo: resource agents of four kinds behind one contract (work dir {})",
        work.display()
    );

    say("1. install the sample agents a vendor copies (validated, hashed, precompiled)");
    let samples = [
        repo.join("samples/wasm-agent/target/wasm32-wasip2/release/sample_wasm_agent.wasm"),
        repo.join("target/debug/libsample_native_agent.so"),
    ];
    for s in &samples {
        if !s.is_file() {
            bail!(
                "{} is missing; run scripts/demo, which builds it",
                s.display()
            );
        }
        let installed = catalog.install(s)?;
        println!(
            "   installed {:<14} {:?} contract {}",
            installed.manifest.name, installed.manifest.kind, installed.manifest.contract
        );
    }
    let list = catalog.list();
    let ocf = list
        .iter()
        .filter(|a| a.kind == crate::agent::host::AgentKind::Ocf)
        .count();
    println!(
        "   available: {} agents ({} OCF agents through the bridge)",
        list.len(),
        ocf
    );

    say("2. a managed process: start, kill it behind baton's back, detect, recover");
    let port = free_port()?;
    let process = catalog.load("process")?;
    let mut params = Params::new();
    let responder = work.join("responder.py");
    std::fs::write(
        &responder,
        "import socket, sys\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'up\\n')\n    c.close()\n",
    )?;
    params.insert(
        "command".into(),
        format!("python3 {} {port}", responder.display()),
    );
    params.insert("ready_tcp".into(), format!("127.0.0.1:{port}"));
    params.insert("state_dir".into(), work.join("run").display().to_string());
    params.insert("stop_grace_ms".into(), "1000".into());
    let t = Instant::now();
    let r = process.call(&request(Action::Start, "web", &params, 10_000));
    r.result
        .as_ref()
        .map_err(|f| anyhow::anyhow!("start failed: {f}"))?;
    println!(
        "   start: serving on 127.0.0.1:{port} after {} ms",
        t.elapsed().as_millis()
    );
    let pid: i32 = std::fs::read_to_string(work.join("run/demo.web.pid"))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()?;
    baton_plugin_api::process::signal_group(pid as u32, libc::SIGKILL);
    let killed = Instant::now();
    let detect = loop {
        let r = process.call(&request(Action::Monitor, "web", &params, 2_000));
        match r.result {
            Ok(Outcome::State(MonitorState::Running))
                if killed.elapsed() < Duration::from_secs(5) =>
            {
                continue;
            }
            _ => break r,
        }
    };
    println!(
        "   kill -9 {pid}: monitor says {} -> recovery {} ({} ms after the kill)",
        match &detect.result {
            Ok(o) => o.to_string(),
            Err(f) => f.to_string(),
        },
        detect.recovery,
        killed.elapsed().as_millis()
    );
    let _ = process.call(&request(Action::Stop, "web", &params, 10_000));
    process
        .call(&request(Action::Start, "web", &params, 10_000))
        .result
        .map_err(|f| anyhow::anyhow!("restart failed: {f}"))?;
    println!(
        "   restarted in place: serving again {} ms after the kill",
        killed.elapsed().as_millis()
    );
    process
        .call(&request(Action::Stop, "web", &params, 10_000))
        .result
        .map_err(|f| anyhow::anyhow!("stop failed: {f}"))?;
    println!("   stop: process group gone");

    say("3. one monitor call on each kind (median of 50, this debug build)");
    let dummy_state = work.join("dummy.state").display().to_string();
    let kinds: Vec<(&str, Params)> = vec![
        ("sample-native", Params::new()),
        ("sample-wasm", Params::new()),
        (
            "tcp-check",
            [
                ("address".to_string(), format!("127.0.0.1:{port}")),
                (
                    "state_dir".to_string(),
                    work.join("tc").display().to_string(),
                ),
            ]
            .into(),
        ),
        (
            "ocf:heartbeat:Dummy",
            [("state".to_string(), dummy_state.clone())].into(),
        ),
    ];
    for (name, params) in &kinds {
        match catalog.load(name) {
            Ok(agent) => {
                let us = monitor_cost(&agent, "cost", params, 50);
                println!(
                    "   {:<22} {:<15} {:>9.1} µs",
                    name,
                    agent.kind().to_string(),
                    us
                );
            }
            Err(e) => println!("   {name:<22} unavailable: {e:#}"),
        }
    }

    say("4. the sandbox: misbehaving agents fail within their deadline, the host carries on");
    let hostile_wasm =
        repo.join("host/tests/fixtures/wasm/target/wasm32-wasip2/release/hostile.wasm");
    if hostile_wasm.is_file() {
        let agent = catalog.load(&hostile_wasm.display().to_string())?;
        for mode in ["loop", "membomb", "exec-forbidden"] {
            let p: Params = [("mode".to_string(), mode.to_string())].into();
            let t = Instant::now();
            let r = agent.call(&request(Action::Monitor, mode, &p, 300));
            if let Err(f) = &r.result {
                println!(
                    "   wasm {mode:<15} -> {} after {} ms: {}",
                    f.cause.name(),
                    t.elapsed().as_millis(),
                    f.reason.chars().take(90).collect::<String>()
                );
            }
        }
    }
    let hostile_native = repo.join("target/debug/libnative_hostile.so");
    if hostile_native.is_file() {
        let agent = catalog.load(&hostile_native.display().to_string())?;
        for mode in ["segfault", "loop"] {
            let p: Params = [("mode".to_string(), mode.to_string())].into();
            let t = Instant::now();
            let r = agent.call(&request(Action::Monitor, mode, &p, 300));
            if let Err(f) = &r.result {
                println!(
                    "   native {mode:<13} -> {} after {} ms: {}",
                    f.cause.name(),
                    t.elapsed().as_millis(),
                    f.reason.chars().take(90).collect::<String>()
                );
            }
        }
        let ok = agent.call(&request(Action::Monitor, "after", &Params::new(), 2000));
        println!(
            "   native agent after the crashes: {}",
            ok.result
                .map(|o| o.to_string())
                .unwrap_or_else(|f| f.to_string())
        );
    }

    say("5. conformance runs (what `baton agent test` prints for vendors)");
    let mut all_passed = true;
    for (name, params) in &kinds {
        if name.starts_with("tcp") {
            continue;
        }
        let Ok(agent) = catalog.load(name) else {
            continue;
        };
        let report = conformance::run(&agent, params.clone(), "conformance", "demo", None);
        let failed = report.steps.iter().filter(|s| !s.passed).count();
        println!(
            "   {:<22} {} ({} steps, {} failed)",
            name,
            if report.passed { "PASS" } else { "FAIL" },
            report.steps.len(),
            failed
        );
        all_passed &= report.passed;
    }
    println!(
        "\nNext: `baton agent list`, `baton agent info process`, `baton agent test ocf:heartbeat:Dummy -p state=/tmp/x`."
    );
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// The client-visible gap after one fault on the current owner `owner`: from the
/// fault to the first answer from another node at the service's virtual address.
fn one_failover(c: &mut crate::lab::ClusterLab, owner: usize, fault: &str) -> anyhow::Result<u64> {
    use crate::lab::Lan;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    // The prober runs as a client; it learns the fault time from the channel.
    let prober = c.lab.spawn_client(move || -> Option<u64> {
        let start = rx.recv().ok()?;
        let deadline = start + Duration::from_secs(60);
        while Instant::now() < deadline {
            let who = crate::lab::vip_answer(Duration::from_millis(50));
            if who.is_some_and(|n| n != owner) {
                return Some(start.elapsed().as_millis() as u64);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    match fault {
        "kill" => c.kill_node(owner),
        "isolate" => {
            c.lab.cut(owner, Lan::Private)?;
            c.lab.cut(owner, Lan::Service)?;
        }
        other => bail!("--fault {other:?}: use kill or isolate"),
    }
    let _ = tx.send(Instant::now());
    let gap = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;
    gap.context("no other node answered within 60 s")
}

/// Wait (at most 2 s) until node `n`'s status file says the service is `here`.
fn wait_status(c: &crate::lab::ClusterLab, n: usize, here: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && c.status(n).is_none_or(|s| s["services"][0]["here"] != here) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cluster(args: &DemoArgs, baton: &Path) -> anyhow::Result<ExitCode> {
    use crate::lab::{ClusterLab, Lan};
    let prefix = format!("bd{}", std::process::id() % 10_000);
    crate::lab::remove_on_interrupt(&prefix);
    if !args.json {
        println!(
            "baton demo: three nodes in network namespaces {prefix}-n1..n3, each with a private LAN"
        );
        println!(
            "(198.18.1.0/24) and a service LAN (198.18.2.0/24); service `web` (a TCP responder run by the"
        );
        println!(
            "`process` agent, and its address {} from the `ipaddr` agent) is standby on n1, n2, n3;",
            crate::lab::VIP
        );
        println!("a client probes that address from {prefix}-br.");
    }
    let mut c = ClusterLab::start(
        &prefix,
        baton,
        &args.timing,
        args.self_fence_ms,
        args.fence == "lab",
    )?;
    let wait = Duration::from_secs(30);
    if !c.wait_vip(1, wait)? {
        bail!(
            "the service never came up on n1; logs in {}",
            c.dir.path().display()
        );
    }
    // Clients may be served before the next heartbeat rewrites the status file.
    wait_status(&c, 1, "running");
    let status_line = |c: &ClusterLab, n: usize| -> String {
        c.status(n)
            .map(|s| {
                format!(
                    "n{n}: members {} quorum {} web {} ({})",
                    s["members"],
                    if s["quorate"] == true { "yes" } else { "no" },
                    s["services"][0]["here"].as_str().unwrap_or("?"),
                    s["services"][0]["why"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default()
    };
    if !args.json {
        say("1. the cluster is up; n1 serves");
        for n in 1..=3 {
            println!("   {}", status_line(&c, n));
        }
        say("2. cut n1's private LAN: a warning, not a failover");
        c.lab.cut(1, Lan::Private)?;
        let stayed = c.served_only_by(1, Duration::from_secs(3))?;
        if let Some(s) = c.status(2) {
            for l in s["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["up"] == false)
            {
                println!(
                    "   n2 status: WARNING link {} to {} down",
                    l["link"],
                    l["peer"].as_str().unwrap_or("?")
                );
            }
        }
        println!(
            "   clients were served by n1 all along: {}",
            if stayed { "yes" } else { "NO" }
        );
        c.lab.heal(1, Lan::Private)?;
        say(&format!(
            "3. fault on the owner ({}): how long clients go without an answer",
            args.fault
        ));
    }
    let mut gaps = Vec::new();
    for run in 0..args.runs.max(1) {
        // Let the cluster settle with n1 serving, then fault it.
        if !c.wait_answering(vec![1], wait)? || !c.wait_vip(1, wait)? {
            let kept = c.dir.path().with_extension("failed");
            let _ = std::fs::rename(c.dir.path(), &kept);
            bail!(
                "run {run}: n1 did not serve again; logs kept in {}",
                kept.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        let gap = one_failover(&mut c, 1, &args.fault)?;
        gaps.push(gap);
        if !args.json {
            println!("   run {}: n2 answered {gap} ms after the fault", run + 1);
        }
        match args.fault.as_str() {
            "kill" => c.start_node(1)?,
            _ => {
                c.lab.heal(1, Lan::Private)?;
                c.lab.heal(1, Lan::Service)?;
                // With the lab fence agent, the isolated node was fenced (killed).
                // Without one it lived through the isolation, and its address's
                // monitor may have counted the down link as a failure: an operator
                // who repaired the network clears that, or the failures would keep
                // n1 out once they reach max_restarts.
                if c.node_alive(1) {
                    let clear = crate::node::control::ControlRequest::Clear {
                        service: "web".into(),
                    };
                    crate::node::control::ask(&c.socket(1), &clear)?;
                }
                c.revive(1)?;
            }
        }
    }
    let mut sorted = gaps.clone();
    sorted.sort();
    let (p50, p90, max) = (
        percentile(&sorted, 50),
        percentile(&sorted, 90),
        *sorted.last().unwrap_or(&0),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"fault": args.fault, "timing": args.timing, "self_fence_ms": args.self_fence_ms, "fence": args.fence,
                               "runs": gaps.len(), "gaps_ms": gaps, "p50_ms": p50, "p90_ms": p90, "max_ms": max})
        );
    } else {
        wait_status(&c, 2, "running");
        say("4. after the failover");
        for n in 2..=3 {
            println!("   {}", status_line(&c, n));
        }
        if let Some(s) = c.status(2) {
            let f = &s["fencing"];
            println!(
                "   fencing: {}",
                f["agent"]
                    .as_str()
                    .map(|a| format!("agent {a}: the lost node was fenced, then n2 took over"))
                    .unwrap_or_else(|| format!(
                        "none: survivors waited the fence wait ({} ms)",
                        f["fence_wait_ms"]
                    ))
            );
        }
        let (overlaps, intervals) = crate::lab::ledger_overlaps(c.dir.path())?;
        println!(
            "   ledger: {intervals} owner intervals recorded, {}",
            if overlaps.is_empty() {
                "never two owners at once".to_string()
            } else {
                format!("OVERLAPS: {}", overlaps.join("; "))
            }
        );
        println!(
            "\nfailover as the client saw it: p50 {p50} ms, p90 {p90} ms, max {max} ms over {} run(s) ({} timing, {}, fencing {}).",
            gaps.len(),
            args.timing,
            args.fault,
            args.fence
        );
        println!(
            "Logs and status files: {} (removed at exit). Try `baton demo --runs 20` or `baton demo --agents`.",
            c.dir.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
