//! The takeover time of docs/operations.md's "A service on shared devices", as
//! written there (default timing, the disk witness, a fence agent, `disk-lease`
//! → `filesystem` → server → `ipaddr` → `dns-name`), for docs/benchmarks.md:
//! ROUNDS crashes of the node that serves (power off: network and processes),
//! each timed from the crash until the other node answers at the service
//! address; the crashed node then restarts and the service fails back. A client
//! resolves the name throughout. Then the checks: `fsck -n` clean, every
//! acknowledged write on the disk. As root:
//!
//! ```text
//! cargo build --locked -p baton && cargo run --locked --example shared_devices_bench -- 10
//! ```

use baton::lab::shared_devices::SharedDevicesLab;
use std::time::Duration;

const DOC: &str = include_str!("../../docs/operations.md");

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(10);
    anyhow::ensure!(baton::lab::Lab::possible(), "run as root with iproute2");
    let baton = baton::lab::baton_beside_examples()?;
    let prefix = format!("sb{}", std::process::id() % 1000);
    let mut lab = SharedDevicesLab::start(&prefix, &baton, DOC)?;
    let limit = Duration::from_secs(60);
    lab.wait_name(limit)?;
    let watch = lab.watch_name();
    let mut gaps = Vec::new();
    for round in 1..=rounds {
        let crashed = lab
            .cluster
            .vip_server(limit, |_| true)?
            .ok_or_else(|| anyhow::anyhow!("round {round}: nobody serves"))?;
        let (survivor, gap) = lab.crash_owner(limit).map_err(|e| {
            let kept = lab.cluster.keep_logs();
            anyhow::anyhow!("round {round}: {e:#}; logs kept in {}", kept.display())
        })?;
        let fenced = lab
            .log(survivor)
            .matches("which the cluster fenced: taking it without waiting")
            .count();
        println!(
            "round {round:>2}: crash of db{crashed}: db{survivor} served {gap} ms later \
             (leases taken from a fenced holder so far: {fenced})"
        );
        gaps.push(gap);
        lab.cluster.start_node(crashed)?;
        lab.wait_joined(limit)?;
        if lab.cluster.vip_server(limit, |n| n == 1)?.is_none() {
            anyhow::bail!("round {round}: no failback to db1");
        }
    }
    let answers = watch.end()?;
    let acked = lab.verify()?;
    gaps.sort();
    println!(
        "{rounds} crashes: takeover p50 {} ms, p90 {} ms, max {} ms; \
         lookups of the name: {} right, {} NXDOMAIN, {} other, {} unanswered; \
         fsck -n clean; all {acked} acknowledged writes on the disk",
        gaps[gaps.len() / 2],
        gaps[(gaps.len() * 9 / 10).min(gaps.len() - 1)],
        gaps[gaps.len() - 1],
        answers.right,
        answers.nxdomain,
        answers.wrong.len(),
        answers.unanswered.len()
    );
    Ok(())
}
