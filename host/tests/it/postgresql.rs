//! The PostgreSQL adapter (`agents/postgresql`) against a real PostgreSQL
//! (Debian's `postgresql`, installed by scripts/setup): each test makes its own
//! cluster with `initdb` in a temporary directory, listens on a unix socket there
//! only (no TCP), and ends every server it started.

use crate::support::{Subject, catalog, failed_steps, native_lib};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, service};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh cluster owned by `postgres`, and the adapter loaded in its runner.
struct Cluster {
    dir: tempfile::TempDir,
    subject: Subject,
}

impl std::ops::Deref for Cluster {
    type Target = Subject;
    fn deref(&self) -> &Subject {
        &self.subject
    }
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn bindir() -> PathBuf {
    crate::db_lab::pg_bindir()
        .expect("PostgreSQL is not installed: run scripts/setup (scripts/test does)")
}

impl Cluster {
    fn new(resource: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = postgres_ids();
        for sub in ["data", "sock"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            std::os::unix::fs::chown(dir.path().join(sub), Some(uid), Some(gid)).unwrap();
        }
        let out = Command::new(bindir().join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = dir.path().join("store");
        let agent = catalog(&store, "")
            .load(native_lib("baton-postgresql").to_str().unwrap())
            .unwrap();
        let path = |sub: &str| dir.path().join(sub).display().to_string();
        let params = vec![
            ("pgdata".into(), path("data")),
            ("socket_dir".into(), path("sock")),
            ("listen_addresses".into(), String::new()),
            ("port".into(), "5432".into()),
        ];
        Cluster {
            dir,
            subject: Subject {
                agent,
                resource: resource.into(),
                params,
            },
        }
    }

    fn path(&self, sub: &str) -> String {
        self.dir.path().join(sub).display().to_string()
    }
}

/// The whole run, promote and demote included: a standby with no primary to
/// follow (`primary_host` answers nothing: the server listens on no TCP
/// address), promoted with `pg_promote()`, demoted to a standby again. Its
/// monitor reports the promotion score. (Without `primary_host`, promote and
/// demote answer `misconfigured`, naming it.)
#[test]
fn a_real_postgresql_passes_the_conformance_test() {
    let mut pg = Cluster::new("pg-conformance");
    pg.subject
        .params
        .push(("primary_host".into(), "127.0.0.1".into()));
    let report = pg.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.name.contains("agent's process restarted") && s.passed),
        "{report:#?}"
    );
    let promoted = report
        .steps
        .iter()
        .find(|s| s.name.starts_with("monitor after promote"))
        .unwrap();
    assert!(
        promoted.got.starts_with("promoted, score ") && promoted.got.contains("acknowledged"),
        "{promoted:?}"
    );
}

/// The single-server mode (no `primary_host`) passes too: the adapter refuses
/// promote and demote there, and the run says they do not apply.
#[test]
fn a_single_server_passes_the_conformance_test_without_promotion() {
    let pg = Cluster::new("pg-single");
    let report = pg.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
    let skipped = report
        .steps
        .iter()
        .find(|s| s.name == "promote and demote: not for these parameters")
        .unwrap_or_else(|| panic!("{report:#?}"));
    assert!(
        skipped.got.contains("needs streaming replication"),
        "{skipped:?}"
    );
    assert!(
        !report
            .steps
            .iter()
            .any(|s| s.name.starts_with("monitor after promote"))
    );
}

#[test]
fn promote_without_streaming_replication_names_primary_host() {
    let pg = Cluster::new("pg-single");
    let e = pg.call(Action::Promote, 10_000).result.unwrap_err();
    assert_eq!(e.class, ErrorClass::Misconfigured);
    assert!(e.reason.contains("set primary_host"), "{}", e.reason);
}

/// What failover on a shared disk does: the node that ran the server died with
/// it (every process killed, its `postmaster.pid` left behind); the next start
/// removes the stale lock, PostgreSQL recovers from its WAL, and data written
/// before the crash is there.
#[test]
fn a_server_killed_with_its_node_starts_again_with_its_data() {
    let pg = Cluster::new("pg-crash");
    assert!(pg.call(Action::Start, 60_000).result.is_ok());
    psql(&pg, "CREATE TABLE t (id int); INSERT INTO t VALUES (42);");
    service::end(&service::host_id(), Some(&pg.resource), Default::default()).unwrap();
    assert!(Path::new(&pg.path("data")).join("postmaster.pid").exists());
    assert_eq!(
        pg.call(Action::Monitor, 60_000).result.unwrap(),
        Outcome::State(MonitorState::NotRunning)
    );
    let started = pg.call(Action::Start, 60_000);
    assert!(started.result.is_ok(), "{:?}", started.result);
    assert_eq!(psql(&pg, "SELECT id FROM t;"), "42");
    let deep = pg.call_with(Action::Monitor, 1, &[], 60_000);
    assert_eq!(deep.result.unwrap(), Outcome::State(MonitorState::Running));
    // Depth 1 wrote its row.
    assert_eq!(psql(&pg, "SELECT count(*) FROM baton_monitor;"), "1");
    assert!(pg.call(Action::Stop, 60_000).result.is_ok());
    assert!(service::tagged(&service::host_id(), Some(&pg.resource)).is_empty());
}

#[test]
fn missing_binaries_and_a_bare_directory_keep_it_off_this_node_only() {
    let pg = Cluster::new("pg-errors");
    let f = pg
        .call_with(
            Action::Validate,
            1,
            &[("bindir", "/nonexistent/bin")],
            60_000,
        )
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
    assert!(f.reason.contains("/nonexistent/bin/postgres"), "{f}");
    let empty = pg.path("sock");
    let f = pg
        .call_with(Action::Start, 0, &[("pgdata", &empty)], 60_000)
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
    assert!(f.reason.contains("not a PostgreSQL cluster"), "{f}");
    // A clone of the primary that a start began and did not finish (the
    // start ran past its deadline as the primary died): with no primary to
    // clone from, the start fails, says so, and leaves the directory alone.
    let partial = pg.path("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(format!("{partial}/backup_label"), "partial").unwrap();
    std::fs::write(format!("{partial}.baton-cloning"), "").unwrap();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port().to_string();
    drop(nobody);
    let f = pg
        .call_with(
            Action::Start,
            0,
            &[
                ("pgdata", &partial),
                ("primary_host", "127.0.0.1"),
                ("port", &port),
            ],
            60_000,
        )
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::Generic, "{f}");
    assert!(
        f.reason.contains("unfinished clone") && f.reason.contains("no primary answers"),
        "{f}"
    );
    assert!(std::path::Path::new(&format!("{partial}/backup_label")).exists());
    let f = pg
        .call_with(Action::Validate, 0, &[("options", "fsync")], 60_000)
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(f.reason.contains("NAME=VALUE"), "{f}");
    // A password file others may read: libpq would ignore it and the
    // standby's stream would fail to log in; the start says so and how to fix it.
    let passfile = pg.path("pgpass");
    std::fs::write(&passfile, "*:*:*:postgres:secret\n").unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = pg
        .call_with(Action::Start, 0, &[("passfile", &passfile)], 60_000)
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(
        f.reason.contains("parameter passfile") && f.reason.contains("chmod 600"),
        "{f}"
    );
}

/// Run SQL with `psql` as postgres over the test cluster's socket; its output.
fn psql(pg: &Cluster, sql: &str) -> String {
    let (uid, gid) = postgres_ids();
    let out = Command::new(bindir().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(pg.path("sock"))
        .args(["-p", "5432", "-U", "postgres", "-d", "postgres", "-c", sql])
        .uid(uid)
        .gid(gid)
        .current_dir(pg.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The acknowledged-transaction audit on a shared disk, three rounds (kill -9
/// of the owner's node, its isolation, kill -9 of its daemon alone): a client
/// writes through the service address all along; afterwards every write the
/// server acknowledged is in the table, one node mounted the disk at a time,
/// and the filesystem checks clean. (20+ rounds: the database_audit example.)
#[test]
fn postgresql_on_a_shared_disk_fails_over_losing_no_acknowledged_transaction() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("pg{}", std::process::id() % 1000);
    let mut lab = crate::db_lab::DbLab::postgresql(
        &prefix,
        &crate::support::baton_exe(),
        &native_lib("baton-postgresql"),
    )
    .unwrap();
    lab.start_client(Box::new(crate::db_lab::Postgres::default()));
    let (acked, lost, mounts) = lab.each_fault_once().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(acked >= 80, "only {acked} writes acknowledged");
    assert!(mounts >= 4, "only {mounts} mount intervals recorded");
}

/// Streaming replication as a promotable service, synchronous to one standby:
/// the three faults in turn, each time the best standby is promoted, the
/// address follows it and the old primary rejoins as a standby (pg_rewind when
/// it diverged); every acknowledged write is in the table, and one node was
/// primary at a time. (20+ rounds: the database_audit example.)
#[test]
fn postgresql_streaming_replication_promotes_a_standby_losing_no_acknowledged_transaction() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("pr{}", std::process::id() % 1000);
    let mut lab = crate::db_lab::DbLab::replicated_postgresql(
        &prefix,
        &crate::support::baton_exe(),
        &native_lib("baton-postgresql"),
        "synchronous_standby_names=* synchronous_commit=on wal_keep_size=256MB",
    )
    .unwrap();
    lab.start_client(Box::new(crate::db_lab::Postgres::default()));
    let faults = [
        crate::db_lab::Fault::Kill,
        crate::db_lab::Fault::Isolate,
        crate::db_lab::Fault::KillDaemon,
    ];
    lab.rounds(faults, Duration::from_secs(90), |_, r| {
        eprintln!(
            "{:?}: takeover {} ms, write gap {} ms, the standby streams {:?} ms after",
            r.fault, r.takeover_ms, r.write_gap_ms, r.follow_ms
        )
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Every node runs the database again: one promoted, the others standbys
    // that report a score.
    let status = lab.cluster().status(1).unwrap();
    let promotion = &status["services"][0]["promotion"];
    assert_eq!(
        promotion["scores"].as_object().map(|s| s.len()),
        Some(3),
        "{promotion}"
    );
    assert!(promotion["acknowledged"].is_string(), "{promotion}");
    let (acked, lost, primaries) = lab.verify().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(acked >= 80, "only {acked} writes acknowledged");
    assert!(
        primaries >= 4,
        "only {primaries} primary intervals recorded"
    );
}

/// Asynchronous replication with standbys that fell behind: when the primary's
/// node dies, baton promotes nobody and says why (they would lose acknowledged
/// writes); `baton promote --force` then promotes the best standby, and the
/// writes it lacked are lost, as the operator accepted.
#[test]
fn asynchronous_standbys_that_are_behind_are_not_promoted_unless_forced() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("pa{}", std::process::id() % 1000);
    let baton = crate::support::baton_exe();
    let mut lab = crate::db_lab::DbLab::replicated_postgresql(
        &prefix,
        &baton,
        &native_lib("baton-postgresql"),
        "synchronous_commit=on wal_keep_size=256MB",
    )
    .unwrap();
    lab.start_client(Box::new(crate::db_lab::Postgres::default()));
    let refusal = lab
        .refused_then_forced(&baton)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refusal.why.contains("--force"), "{}", refusal.why);
    assert_ne!(refusal.forced, refusal.primary);
    assert!(
        refusal.lost > 0,
        "the forced standby lacked no acknowledged write"
    );
    let (acked, lost, primaries) = lab.verify().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lost.len(), refusal.lost, "of {acked} acknowledged");
    assert!(primaries >= 2, "{primaries} primary intervals");
}

/// A standby whose start hangs (its server never accepts a connection: "the
/// database system is starting up", as with hot_standby off) does not hold the
/// promotion: when the primary's node dies, the synchronous standby, which
/// holds every acknowledged write, is promoted once the hung start has had its
/// start timeout (20 s here), not after it failed again and again.
#[test]
fn a_standby_whose_start_hangs_does_not_hold_the_promotion() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("ph{}", std::process::id() % 1000);
    // n3 is the synchronous standby (first in the list), n2 a potential one.
    let mut lab = crate::db_lab::DbLab::replicated_postgresql_with(
        &prefix,
        &crate::support::baton_exe(),
        &native_lib("baton-postgresql"),
        "synchronous_standby_names=n3,n2,n1 synchronous_commit=on wal_keep_size=256MB",
        "timeout_ms = 20000\n",
    )
    .unwrap();
    lab.start_client(Box::new(crate::db_lab::Postgres::default()));
    lab.wait_for_writes(20, Duration::from_secs(60)).unwrap();
    let cluster = lab.cluster_mut();
    let dir = cluster.dir.path().to_owned();
    // n2's daemon stops cleanly; its servers now start with hot_standby off.
    assert!(
        cluster
            .stop_daemon(2, Duration::from_secs(60))
            .is_some_and(|e| e.success())
    );
    hang_standby_starts(&dir.join("bin-n2")).unwrap();
    cluster.start_node(2).unwrap();
    wait_until(
        Duration::from_secs(30),
        "n2's replica to be starting",
        || {
            cluster
                .status(2)
                .is_some_and(|s| s["services"][0]["here"] == "starting")
        },
    );
    cluster.kill_node(1);
    let killed = Instant::now();
    let promoted = wait_for(Duration::from_secs(45), || {
        cluster
            .status(3)
            .is_some_and(|s| s["services"][0]["promotion"]["here"] == "promoted")
    });
    assert!(
        promoted,
        "n3 was not promoted: {}\nn2: {}\nlogs in {}",
        cluster.status(3).unwrap_or_default()["services"][0],
        cluster.status(2).unwrap_or_default()["services"][0],
        cluster.keep_logs().display()
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(35),
        "promoted {took:?} after the primary died: the hung standby held it past its start timeout"
    );
    let (acked, lost, _) = lab.verify().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost",
        lost.len()
    );
}

/// Make the servers started from `bin` never accept a connection (hot_standby
/// off, the last `-c` wins): a copy of `pg_ctl` (which runs the `postgres`
/// beside itself) and a `postgres` that adds the setting, links for the rest.
fn hang_standby_starts(bin: &std::path::Path) -> std::io::Result<()> {
    let real = std::fs::read_link(bin)?;
    std::fs::remove_file(bin)?;
    std::fs::create_dir(bin)?;
    for entry in std::fs::read_dir(&real)? {
        let name = entry?.file_name();
        let (from, to) = (real.join(&name), bin.join(&name));
        match name.to_str() {
            Some("pg_ctl") => {
                std::fs::copy(&from, &to)?;
            }
            Some("postgres") => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(
                    &to,
                    format!(
                        "#!/bin/sh\nexec {} \"$@\" -c hot_standby=off\n",
                        from.display()
                    ),
                )?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            }
            _ => std::os::unix::fs::symlink(&from, &to)?,
        }
    }
    Ok(())
}

/// A replicated lab (names starting with `tag`) with the servers' `options`,
/// and the node that serves; `None` when not root.
fn replicated_lab(tag: &str, options: &str) -> Option<(crate::db_lab::DbLab, usize)> {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return None;
    }
    let prefix = format!("{tag}{}", std::process::id() % 1000);
    let lab = crate::db_lab::DbLab::replicated_postgresql(
        &prefix,
        &crate::support::baton_exe(),
        &native_lib("baton-postgresql"),
        options,
    )
    .unwrap();
    let primary = lab
        .cluster()
        .vip_server(Duration::from_secs(90), |_| true)
        .unwrap()
        .expect("nobody serves");
    Some((lab, primary))
}

/// A standby that was away while the primary recycled the WAL it needs cannot
/// stream after its rewind: its monitor fails it, and its restart clones the
/// primary, after which it streams again.
#[test]
fn a_standby_whose_wal_is_gone_is_cloned_from_the_primary() {
    let Some((mut lab, primary)) =
        replicated_lab("pw", "wal_keep_size=0 max_wal_size=32MB min_wal_size=32MB")
    else {
        return;
    };
    let limit = Duration::from_secs(90);
    let standby = if primary == 1 { 2 } else { 1 };
    let dir = lab.cluster().dir.path().to_owned();
    // How many standbys stream from the primary now (one that reconnects
    // every second and fails shows as a walsender for a moment, and a killed
    // one's lingers until the primary's sender times out: neither has
    // replied in the last 3 s, and neither is counted).
    let streaming = |lab: &baton::lab::Lab| -> i64 {
        lab.as_client(|| -> Option<i64> {
            let mut c = postgres::Config::new()
                .host(baton::lab::VIP)
                .port(5432)
                .user("postgres")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(2))
                .connect(postgres::NoTls)
                .ok()?;
            let sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' \
                       AND reply_time > now() - interval '3 seconds'";
            c.query_one(sql, &[]).ok().map(|row| row.get(0))
        })
        .ok()
        .flatten()
        .unwrap_or(0)
    };
    wait_until(limit, "both standbys streaming", || {
        streaming(&lab.cluster().lab) == 2
    });
    lab.cluster_mut().kill_node(standby);
    // WAL far past what the primary keeps (max_wal_size, no wal_keep_size).
    lab.cluster()
        .lab
        .as_client(|| -> Result<(), postgres::Error> {
            let mut c = postgres::Config::new()
                .host(baton::lab::VIP)
                .port(5432)
                .user("postgres")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(5))
                .connect(postgres::NoTls)?;
            c.batch_execute("CREATE TABLE filler (x text)")?;
            for _ in 0..10 {
                c.batch_execute(
                    "INSERT INTO filler SELECT repeat('x', 400) FROM generate_series(1, 10000);
                     SELECT pg_switch_wal(); CHECKPOINT;",
                )?;
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    lab.cluster_mut().start_node(standby).unwrap();
    wait_until(
        Duration::from_secs(180),
        "the standby to stream again",
        || streaming(&lab.cluster().lab) == 2,
    );
    let log = std::fs::read_to_string(dir.join(format!("n{standby}.log"))).unwrap();
    assert!(
        // Cloned because it did not stream; or, on a loaded machine, a clone
        // begun earlier was cut short by the kill and is finished at restart.
        (log.contains("did not stream after its last start")
            && log.contains("cloning the primary"))
            || log.contains("did not finish") && log.contains("cloning it again"),
        "n{standby} was not cloned; logs in {}",
        lab.cluster().keep_logs().display()
    );
}

/// A standby re-seeded with a plain `pg_basebackup` while its primary runs is
/// recovered by pg_rewind with records of its own on the primary's timeline:
/// WAL "ahead" of every genuine standby that no primary wrote, and pg_rewind
/// says "no rewind required". Its start finds its checkpoint record is not
/// the primary's and clones the primary before it runs as a standby, so it is
/// never a candidate while diverged; then the primary's node dies, a standby
/// is promoted, the other follows it, and no acknowledged write is lost.
#[test]
fn a_standby_reseeded_while_its_primary_runs_is_cloned_before_it_can_be_promoted() {
    let Some((mut lab, primary)) = replicated_lab(
        "ps",
        "synchronous_standby_names=* synchronous_commit=on wal_keep_size=256MB",
    ) else {
        return;
    };
    let limit = Duration::from_secs(90);
    lab.start_client(Box::new(crate::db_lab::Postgres::default()));
    lab.wait_for_writes(20, limit).unwrap();
    let copy = if primary == 1 { 2 } else { 1 };
    let dir = lab.cluster().dir.path().to_owned();
    lab.cluster_mut().kill_node(copy);
    let bin = crate::db_lab::pg_bindir().unwrap();
    let reseed = format!(
        "rm -rf {d}/n{copy}/pgdata && runuser -u postgres -- {b}/pg_basebackup -h {d}/n{primary} \
         -U postgres -D {d}/n{copy}/pgdata -X stream",
        d = dir.display(),
        b = bin.display()
    );
    let out = Command::new("sh").args(["-c", &reseed]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.cluster_mut().start_node(copy).unwrap();
    let log = || std::fs::read_to_string(dir.join(format!("n{copy}.log"))).unwrap_or_default();
    wait_until(limit, "the copy to start as a standby", || {
        log().contains("started service=web")
    });
    let said = log();
    assert!(
        said.contains("diverged from the primary: its latest checkpoint record at")
            && said.contains("cloning the primary"),
        "the copy was not found diverged; logs in {}",
        lab.cluster().keep_logs().display()
    );
    lab.wait_for_writes(50, limit).unwrap();
    lab.cluster_mut().kill_node(primary);
    let promoted = lab
        .cluster()
        .vip_server(limit, move |n| n != primary)
        .unwrap();
    assert!(promoted.is_some(), "nobody was promoted");
    lab.wait_for_writes(20, limit).unwrap();
    let (acked, lost, primaries) = lab.verify().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(primaries >= 2, "{primaries} primary intervals");
}

/// Whether `done` holds within `limit` (checked every 100 ms).
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn wait_until(limit: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(wait_for(limit, done), "waited {limit:?} for {what}");
}

/// The node that holds the promoted role, as node 1..=3's status says (the
/// first that answers), once every node runs its replica with a score.
fn promoted(lab: &crate::db_lab::DbLab, not: Option<usize>, limit: Duration) -> usize {
    let mut found = None;
    wait_until(
        limit,
        "a promoted replica and a score from every node",
        || {
            found = (1..=3).filter(|n| Some(*n) != not).find_map(|n| {
                let status = lab.cluster().status(n)?;
                let promotion = &status["services"][0]["promotion"];
                let by = promotion["promoted"].as_str()?;
                let node: usize = by.strip_prefix('n')?.parse().ok()?;
                (Some(node) != not).then_some(node)
            });
            found.is_some()
        },
    );
    found.unwrap_or_default()
}

/// docs/operations.md's "From the template to a running cluster", run as
/// written (only the site's data replaced: `DbLab::documented_postgresql`):
/// the template, the site, the key and password files, the seed, the agent
/// install, `scenario check`, `scenario compile`; then the compiled configs
/// run, a client writes through the service address with the documented
/// password, the primary's node is killed, another replica is promoted, the
/// killed node rejoins as a standby, and no acknowledged write is lost.
#[test]
fn the_documented_path_from_the_template_runs_as_written() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("pd{}", std::process::id() % 1000);
    let doc = include_str!("../../../docs/operations.md");
    let mut lab = crate::db_lab::DbLab::documented_postgresql(
        &prefix,
        &crate::support::baton_exe(),
        &native_lib("baton-postgresql"),
        doc,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let limit = Duration::from_secs(90);
    let first = promoted(&lab, None, limit);
    lab.start_client(Box::new(crate::db_lab::Postgres::with_password(
        crate::db_lab::DOCUMENTED_PASSWORD,
    )));
    lab.wait_for_writes(20, limit)
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", lab.cluster().keep_logs().display()));
    lab.cluster_mut().kill_node(first);
    let second = promoted(&lab, Some(first), limit);
    lab.wait_for_writes(20, limit)
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", lab.cluster().keep_logs().display()));
    lab.cluster_mut().start_node(first).unwrap();
    // The killed primary rejoins as a standby of the new one.
    wait_until(limit, "the old primary back as a standby", || {
        lab.cluster().status(first).is_some_and(|s| {
            let promotion = &s["services"][0]["promotion"];
            promotion["promoted"].as_str() == Some(&format!("n{second}"))
                && promotion["scores"].as_object().map(|s| s.len()) == Some(3)
        })
    });
    lab.wait_for_writes(20, limit).unwrap();
    let (acked, lost) = lab.lost_writes().unwrap();
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}
