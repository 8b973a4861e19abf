//! `ipaddr` against ClusterLabs' `ocf:heartbeat:IPaddr2` (through the OCF bridge)
//! on the same machine, for docs/benchmarks.md. As root, from the repository root:
//!
//! ```text
//! cargo run --release --locked --example ipaddr_bench -- [CALLS]
//! ```
//!
//! Builds a two-node namespace lab (198.18.0.0/15 only), and in node 1's namespace
//! times CALLS (default 100) start, monitor and stop calls of each agent on the
//! same address, through `AgentHandle::call`. Both send one announcement
//! (`arp_count = 1`; IPaddr2 sends it in the background, `ipaddr` before start
//! returns) and neither probes for another holder (`probe_ms = 0`; IPaddr2 does
//! not probe), so the figures compare the agents' own cost; `ipaddr`'s default
//! probe adds its 100 ms of listening to start. Prints a markdown table.

use baton::agent::catalog::AgentCatalog;
use baton::config::Config;
use baton::lab::Lab;
use baton_plugin_api::{Action, Params, Request};
use std::time::{Duration, Instant};

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

/// Median start, monitor and stop of `agent` with `p`, over `n` cycles.
fn cycle(catalog: &AgentCatalog, agent: &str, p: &Params, n: usize) -> [Duration; 3] {
    let handle = catalog
        .load(agent)
        .unwrap_or_else(|e| panic!("{agent}: {e:#}"));
    let req = |action| {
        let mut r = Request::new(action, p.clone());
        r.context.resource = "bench".into();
        r.context.node = "n1".into();
        r.context.timeout_ms = 20_000;
        r
    };
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        for (i, action) in [Action::Start, Action::Monitor, Action::Stop]
            .into_iter()
            .enumerate()
        {
            let r = req(action);
            let t = Instant::now();
            let report = handle.call(&r);
            times[i].push(t.elapsed());
            if let Err(e) = report.result {
                panic!("{agent} {action}: {e}");
            }
        }
    }
    times.map(median)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("CALLS is a number"))
        .unwrap_or(100);
    anyhow::ensure!(Lab::possible(), "run as root with iproute2 installed");
    let lab = Lab::up(&format!("ib{}", std::process::id() % 1000), 2)?;
    let ns = format!("/var/run/netns/{}", lab.node_ns(1));
    let rows = std::thread::spawn(move || -> anyhow::Result<Vec<(String, [Duration; 3])>> {
        let f = std::fs::File::open(&ns)?;
        // SAFETY: setns on this thread only, with a namespace file we opened.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        let store = tempfile::tempdir()?;
        let mut config = Config::default();
        config.agents.store = store.path().join("store");
        let catalog = AgentCatalog::new(config, std::env::current_exe()?);
        let ours = params(&[
            ("address", "198.18.2.100/24"),
            ("interface", "svc"),
            ("arp_count", "1"),
            ("probe_ms", "0"),
        ]);
        let theirs = params(&[
            ("ip", "198.18.2.100"),
            ("cidr_netmask", "24"),
            ("nic", "svc"),
            ("arp_count", "1"),
        ]);
        Ok(vec![
            (
                "ipaddr (built-in)".into(),
                cycle(&catalog, "ipaddr", &ours, n),
            ),
            (
                "ocf:heartbeat:IPaddr2 (OCF bridge)".into(),
                cycle(&catalog, "ocf:heartbeat:IPaddr2", &theirs, n),
            ),
        ])
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bench thread panicked"))??;
    drop(lab);
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!("| agent | start median ms | monitor median ms | stop median ms | calls each |");
    println!("|---|---:|---:|---:|---:|");
    for (name, [start, monitor, stop]) in &rows {
        println!(
            "| {name} | {} | {} | {} | {n} |",
            ms(*start),
            ms(*monitor),
            ms(*stop)
        );
    }
    let (a, b) = (&rows[0].1, &rows[1].1);
    let ratio = |i: usize| b[i].as_secs_f64() / a[i].as_secs_f64();
    println!(
        "| IPaddr2 ÷ ipaddr | {:.0}× | {:.0}× | {:.0}× | |",
        ratio(0),
        ratio(1),
        ratio(2)
    );
    Ok(())
}
