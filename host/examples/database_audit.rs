//! The acknowledged-transaction audit of a database on a shared disk for
//! docs/benchmarks.md: ROUNDS failovers (in turn: kill -9 of the node that
//! serves, its isolation, a kill -9 of its daemon alone; the faulted node then
//! rejoins) of `[disk-lease, filesystem, DATABASE, ipaddr]` on three nodes in
//! network namespaces, while a client writes a numbered row per transaction
//! through the service address; then every acknowledged row must be in the
//! table, one node must have mounted the disk at a time and the filesystem must
//! check clean. DATABASE is `postgresql` (the native adapter) or `mariadb` (the
//! WebAssembly adapter). `postgresql-replication` runs PostgreSQL with
//! synchronous streaming replication instead: a promotable service, a data
//! directory per node, the address following the promoted standby; then one
//! node must have been primary at a time. As root:
//!
//! ```text
//! scripts/build-wasm-agents && cargo build --locked --workspace --examples
//! target/debug/examples/database_audit postgresql 21
//! target/debug/examples/database_audit postgresql-replication 21      # fast timing
//! target/debug/examples/database_audit postgresql-replication 60 default fence
//! target/debug/examples/database_audit mariadb 12
//! target/debug/examples/database_audit postgresql-async 5
//! ```
//!
//! `postgresql-async` runs asynchronous replication instead, in rounds of: the
//! primary's WAL senders paused while it acknowledges writes, its node killed,
//! baton refusing to promote the standbys that are behind, an operator's
//! `baton promote --force`, and the old primary rejoining; it reports the
//! refusals and the acknowledged writes the forced promotions lost.

// The lab the tests use; their one-call helper is not needed here.
#[allow(dead_code)]
#[path = "../tests/it/db_lab.rs"]
mod db_lab;

use baton::lab::disk::Fault;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ensure_built(baton: &Path, adapter: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        baton.is_file() && adapter.is_file(),
        "build first: scripts/build-wasm-agents && cargo build --locked --workspace --examples ({} or {} is missing)",
        baton.display(),
        adapter.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let database = std::env::args().nth(1).unwrap_or_default();
    let rounds: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(20);
    // For the replicated runs: the cluster's timing, fast (default) or
    // default, and `fence` for the lab's fence agent.
    let timing = std::env::args().nth(3).unwrap_or_else(|| "fast".into());
    let fencing = std::env::args().nth(4).is_some_and(|a| a == "fence");
    anyhow::ensure!(
        ["fast", "default"].contains(&timing.as_str()),
        "TIMING is fast or default, not {timing}"
    );
    anyhow::ensure!(baton::lab::Lab::possible(), "run as root with iproute2");
    let profile = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    let baton = profile.join("baton");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let prefix = format!("da{}", std::process::id() % 1000);
    let (mut lab, client, adapter): (db_lab::DbLab, Box<dyn db_lab::Database>, PathBuf) =
        match database.as_str() {
            "postgresql" => {
                let adapter = profile.join("libbaton_postgresql.so");
                ensure_built(&baton, &adapter)?;
                let lab = db_lab::DbLab::postgresql(&prefix, &baton, &adapter)?;
                (lab, Box::new(db_lab::Postgres::default()), adapter)
            }
            "postgresql-replication" | "postgresql-async" => {
                let adapter = profile.join("libbaton_postgresql.so");
                ensure_built(&baton, &adapter)?;
                // Synchronous to one standby, or asynchronous.
                let sync = if database == "postgresql-replication" {
                    "synchronous_standby_names=* "
                } else {
                    ""
                };
                let lab = db_lab::DbLab::replicated_postgresql_timed(
                    &prefix,
                    &baton,
                    &adapter,
                    &format!("{sync}synchronous_commit=on wal_keep_size=256MB"),
                    "",
                    (&timing, fencing),
                )?;
                (lab, Box::new(db_lab::Postgres::default()), adapter)
            }
            "mariadb" => {
                let adapter =
                    repo.join("wasm-agents/target/wasm32-wasip2/release/baton_mariadb.wasm");
                ensure_built(&baton, &adapter)?;
                let lab = db_lab::DbLab::mariadb(&prefix, &baton, &adapter)?;
                (lab, Box::new(db_lab::MariaDb), adapter)
            }
            _ => anyhow::bail!(
                "usage: database_audit postgresql|postgresql-replication|postgresql-async|mariadb [ROUNDS [fast|default [fence]]]"
            ),
        };
    eprintln!("{database} ({}), {rounds} rounds", adapter.display());
    if database == "postgresql-async" {
        return refusals(lab, client, &baton, rounds);
    }
    lab.start_client(client);
    let faults = (0..rounds).map(|i| [Fault::Kill, Fault::Isolate, Fault::KillDaemon][i % 3]);
    let mut n = 0;
    let done = lab.rounds(faults, Duration::from_secs(90), |lab, r| {
        n += 1;
        eprintln!(
            "round {n}/{rounds} {:?}: takeover {} ms, write gap {} ms{}, {} writes acknowledged so far",
            r.fault,
            r.takeover_ms,
            r.write_gap_ms,
            r.follow_ms
                .map_or(String::new(), |f| format!(", standby streaming {f} ms after")),
            lab.acknowledged()
        );
    })?;
    let (acked, lost, mounts) = lab.verify()?;
    let replicated = done.iter().any(|r| r.follow_ms.is_some());
    if replicated {
        println!(
            "| fault | rounds | write gap p50 ms | p90 | max | takeover p50 ms | standby follows p50 ms | p90 | max |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    } else {
        println!("| fault | rounds | write gap p50 ms | p90 | max | takeover p50 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
    }
    let rows: [(&str, Option<Fault>); 4] = [
        ("kill", Some(Fault::Kill)),
        ("isolate", Some(Fault::Isolate)),
        ("kill-daemon", Some(Fault::KillDaemon)),
        ("all", None),
    ];
    for (label, only) in rows {
        let picked: Vec<&db_lab::Round> = done
            .iter()
            .filter(|r| only.is_none_or(|f| r.fault == f))
            .collect();
        if picked.is_empty() {
            continue;
        }
        let mut gaps: Vec<u64> = picked.iter().map(|r| r.write_gap_ms).collect();
        let mut takeovers: Vec<u64> = picked.iter().map(|r| r.takeover_ms).collect();
        let mut follows: Vec<u64> = picked.iter().filter_map(|r| r.follow_ms).collect();
        gaps.sort();
        takeovers.sort();
        follows.sort();
        let follow = if follows.is_empty() {
            String::new()
        } else {
            format!(
                " {} | {} | {} |",
                percentile(&follows, 0.5),
                percentile(&follows, 0.9),
                follows[follows.len() - 1]
            )
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} |{follow}",
            gaps.len(),
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.9),
            gaps[gaps.len() - 1],
            percentile(&takeovers, 0.5)
        );
    }
    let intervals = if database == "postgresql-replication" {
        format!("{mounts} primary intervals, never two at once")
    } else {
        format!("{mounts} mount intervals, never two at once; fsck clean")
    };
    println!(
        "\n{acked} transactions acknowledged, {} lost{}; {intervals}",
        lost.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(": {lost:?}")
        },
    );
    anyhow::ensure!(lost.is_empty(), "acknowledged transactions were lost");
    Ok(())
}

/// The asynchronous-replication rounds: each a refusal, then a forced promotion.
fn refusals(
    mut lab: db_lab::DbLab,
    client: Box<dyn db_lab::Database>,
    baton: &Path,
    rounds: usize,
) -> anyhow::Result<()> {
    lab.start_client(client);
    let mut lost_before = 0;
    println!(
        "| round | primary killed | refused, as status said | forced | acknowledged writes lost |"
    );
    println!("|---:|---|---|---|---:|");
    for n in 1..=rounds {
        let r = lab.refused_then_forced(baton)?;
        let why = r.why.split("; `baton promote").next().unwrap_or("");
        println!(
            "| {n} | n{} | {why} | n{} | {} |",
            r.primary,
            r.forced,
            r.lost - lost_before
        );
        lost_before = r.lost;
    }
    let (acked, lost, primaries) = lab.verify()?;
    println!(
        "\n{rounds} of {rounds} promotions refused until forced; {acked} transactions acknowledged, {} lost by the forced promotions; {primaries} primary intervals, never two at once",
        lost.len()
    );
    Ok(())
}
