//! The shared-disk audit for docs/benchmarks.md: ROUNDS failovers (in turn: kill -9
//! of the node that serves, its isolation, a kill -9 of its daemon alone; the
//! faulted node then rejoins) of a service
//! `[disk-lease, filesystem, writer, ipaddr]` on a loop device shared by three
//! nodes in network namespaces; then the checks: one mount at a time, `fsck -n`
//! clean, every write the writer acknowledged on the disk. As root:
//!
//! ```text
//! cargo build --locked -p baton && cargo run --locked --example shared_disk_audit -- 20
//! ```

use baton::lab::disk::{Fault, SharedDiskLab};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(20);
    anyhow::ensure!(baton::lab::Lab::possible(), "run as root with iproute2");
    let baton = baton::lab::baton_beside_examples()?;
    let mut lab = SharedDiskLab::start(&format!("sa{}", std::process::id() % 1000), &baton)?;
    let mut gaps = Vec::new();
    for round in 1..=rounds {
        let fault = [Fault::Kill, Fault::Isolate, Fault::KillDaemon][(round - 1) % 3];
        let gap = match lab.round(fault, Duration::from_secs(30)) {
            Ok(gap) => gap,
            Err(e) => {
                let kept = lab.cluster.keep_logs();
                anyhow::bail!(
                    "round {round} ({fault:?}): {e:#}; logs kept in {}",
                    kept.display()
                );
            }
        };
        println!(
            "round {round:>2}: {fault:?} of the owner: another node served {gap} ms later; the faulted node rejoined"
        );
        gaps.push((fault, gap));
    }
    let (mounts, acked) = lab.verify()?;
    for fault in [Fault::Kill, Fault::Isolate, Fault::KillDaemon] {
        let mut g: Vec<u64> = gaps
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, g)| *g)
            .collect();
        g.sort();
        if !g.is_empty() {
            println!(
                "{fault:?}: {} rounds, gap p50 {} ms, max {} ms",
                g.len(),
                g[g.len() / 2],
                g[g.len() - 1]
            );
        }
    }
    println!(
        "{rounds} failovers: {mounts} mount intervals, never two at once; \
         fsck -n clean; all {acked} acknowledged writes on the disk"
    );
    Ok(())
}
