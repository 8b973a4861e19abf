//! Config reloads on a live cluster, for docs/benchmarks.md: three nodes in
//! network namespaces serve `web` (the lab's responder, its address, its
//! ledger) on n1 while a client probes it. ROUNDS times, a service is added
//! (`baton reload` on n3, n2, then n1) and removed again (SIGHUP on every
//! node), each timed from the last node's reload until every node runs the
//! new config, and until the added service runs (or the removed one runs
//! nowhere). At the end: the probes web did not answer, whether it is still
//! the same process, and its owner intervals. As root:
//!
//! ```text
//! cargo build --locked -p baton && cargo run --locked --example reload_bench -- 10 fast
//! ```

use baton::lab::{ClusterLab, Lab, Lan, ledger_overlaps};
use baton::node::control::{ControlRequest, ask};
use std::time::{Duration, Instant};

/// Every node's status over its control socket.
fn statuses(c: &ClusterLab) -> anyhow::Result<Vec<baton::node::status::Status>> {
    (1..=3)
        .map(|n| {
            ask(&c.socket(n), &ControlRequest::Status)?
                .status
                .ok_or_else(|| anyhow::anyhow!("n{n} gave no status"))
        })
        .collect()
}

/// Wait (up to a minute) until `done` holds for the nodes' statuses; how long
/// since `from`.
fn until(
    c: &ClusterLab,
    from: Instant,
    done: impl Fn(&[baton::node::status::Status]) -> bool,
) -> anyhow::Result<u128> {
    loop {
        if done(&statuses(c)?) {
            return Ok(from.elapsed().as_millis());
        }
        anyhow::ensure!(
            from.elapsed() < Duration::from_secs(60),
            "not done after a minute; logs in {}",
            c.keep_logs().display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One probe of web on n1's service address (from the lab's client
/// namespace): connected and answered within `timeout`, or how it failed.
fn probe(timeout: Duration) -> Result<(), String> {
    let addr: std::net::SocketAddr = format!("{}:8080", Lab::address(1, Lan::Service))
        .parse()
        .expect("lab address");
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {e} after {} ms", started.elapsed().as_millis()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 8];
    match baton::lab::read_answer(&mut s, &mut buf) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) => Err(format!(
            "read: {e} after {} ms",
            started.elapsed().as_millis()
        )),
    }
}

fn p(sorted: &[u128], q: usize) -> u128 {
    sorted[(sorted.len() * q / 100).min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let timing = args.next().unwrap_or_else(|| "fast".into());
    anyhow::ensure!(baton::lab::Lab::possible(), "run as root with iproute2");
    let baton = baton::lab::baton_beside_examples()?;
    let prefix = format!("rb{}", std::process::id() % 1000);
    let c = ClusterLab::start_with(
        &prefix,
        &baton,
        &timing,
        3,
        "standby",
        "self_fence_ms = 300",
    )?;
    anyhow::ensure!(
        c.wait_answering(vec![1], Duration::from_secs(30))?,
        "n1 never served"
    );
    let web = c.service_pid(1);
    // The ledger resource starts after the responder clients see.
    let started = Instant::now();
    let intervals = loop {
        match ledger_overlaps(c.dir.path()) {
            Ok((_, n)) if n > 0 => break n,
            _ if started.elapsed() > Duration::from_secs(10) => anyhow::bail!("no ledger"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let file = c.dir.path().join("cluster.toml");
    let base = std::fs::read_to_string(&file)?;
    let added = base.clone()
        + &format!(
            "\n[[service]]\nname = \"extra\"\nstrategy = \"standby\"\npreferred = [\"n2\", \"n3\"]\n[[service.resource]]\nagent = \"process\"\nparams = {{ command = \"sleep 3600\", state_dir = {:?} }}\n",
            c.dir.path().join("run").display().to_string()
        );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    let probes = {
        let stop = std::sync::Arc::clone(&stop);
        c.lab.spawn_client(move || {
            // Each probe of web on n1: when it began (ms since `epoch`), and
            // how it failed, if it did.
            let mut seen: Vec<(u128, Result<(), String>)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let at = epoch.elapsed().as_millis();
                seen.push((at, probe(Duration::from_secs(1))));
            }
            seen
        })
    };
    // When each reload began on the last node (ms since `epoch`).
    let mut reloads_at = Vec::new();
    let (mut switch, mut applied) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (text, adding) in [(&added, true), (&base, false)] {
            std::fs::write(&file, text)?;
            for n in [3, 2] {
                if adding {
                    let r = ask(&c.socket(n), &ControlRequest::Reload { dry_run: false })?;
                    anyhow::ensure!(r.ok, "n{n}: {}", r.message);
                } else {
                    let pid = c
                        .daemon_pid(n)
                        .ok_or_else(|| anyhow::anyhow!("n{n} is down"))?;
                    let hup = std::process::Command::new("kill")
                        .args(["-HUP", &pid.to_string()])
                        .status()?;
                    anyhow::ensure!(hup.success(), "kill -HUP {pid} failed");
                }
            }
            let last = Instant::now();
            reloads_at.push(epoch.elapsed().as_millis());
            let r = ask(&c.socket(1), &ControlRequest::Reload { dry_run: false })?;
            let answered = last.elapsed().as_millis();
            anyhow::ensure!(r.ok, "n1: {}", r.message);
            let want = r
                .plan
                .map(|p| p["config"].as_str().unwrap_or("").to_string());
            let switched = until(&c, last, |all| {
                all.iter().all(|s| Some(&s.config) == want.as_ref())
            })?;
            let done = until(&c, last, |all| {
                let running = all
                    .iter()
                    .flat_map(|s| s.services.iter().filter(|x| x.name == "extra"))
                    .filter(|x| x.here == "running")
                    .count();
                let listed = all
                    .iter()
                    .any(|s| s.services.iter().any(|x| x.name == "extra"));
                if adding { running == 1 } else { !listed }
            })?;
            println!(
                "round {round:>2}: {} extra: n1 answered the reload in {answered} ms, every node switched {switched} ms after it began, extra {} after {done} ms",
                if adding { "added" } else { "removed" },
                if adding { "running" } else { "gone" }
            );
            switch.push(switched);
            applied.push(done);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = probes
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))??;
    let missed: Vec<&(u128, Result<(), String>)> =
        seen.iter().filter(|(_, r)| r.is_err()).collect();
    for (at, why) in &missed {
        let nearest = reloads_at
            .iter()
            .map(|r| *at as i128 - *r as i128)
            .min_by_key(|d| d.abs())
            .unwrap_or_default();
        println!("the probe at {at} ms failed: {why:?} ({nearest:+} ms from the nearest reload)");
    }
    let missed = missed.len();
    let (overlaps, now) = ledger_overlaps(c.dir.path())?;
    switch.sort();
    applied.sort();
    println!(
        "{} reloads ({timing} timing): switched p50 {} ms, p90 {} ms, max {} ms; applied p50 {} ms, p90 {} ms, max {} ms; \
         web: {} probes, {missed} not answered by n1; same process: {}; owner intervals {intervals} -> {now}, overlaps {}",
        switch.len(),
        p(&switch, 50),
        p(&switch, 90),
        switch[switch.len() - 1],
        p(&applied, 50),
        p(&applied, 90),
        applied[applied.len() - 1],
        seen.len(),
        c.service_pid(1) == web,
        overlaps.len()
    );
    Ok(())
}
