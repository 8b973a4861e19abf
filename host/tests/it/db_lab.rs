//! A database on the shared-disk lab, with the acknowledged-transaction audit:
//! three nodes in network namespaces share a loop device; the service is
//! `[disk-lease, filesystem, mounts ledger, DATABASE, responder, ipaddr, owners
//! ledger]`, the data directory on the shared filesystem. A client in the
//! client namespace inserts numbered rows through the service address, one
//! transaction each, and records every id the server acknowledged (its commit
//! answered). After the failovers every acknowledged id must be in the table.
//! PostgreSQL (the native adapter) and MariaDB (the WebAssembly adapter).
//!
//! PostgreSQL also runs with streaming replication: a `promotable` service
//! `[postgresql, responder, ipaddr, owners ledger]` whose database runs as a
//! standby on every node (each its own data directory) and is promoted on one;
//! the responder and the address follow the promoted role, and the standbys
//! stream from that address.
//!
//! Shared by the tests (a few rounds) and the audit example (20+), which
//! includes this file.

pub use baton::lab::disk::Fault;
use baton::lab::disk::{LoopDisk, SharedDiskLab};
use baton::lab::{ClusterLab, LabSpec, VIP};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the client talks to the database through the service address.
pub trait Database: Send + 'static {
    /// Insert row `id` in a transaction of its own; `Ok` once the server
    /// acknowledged the commit. Reconnects as needed.
    fn insert(&mut self, id: i64) -> Result<(), String>;
    /// Every id in the table.
    fn ids(&mut self) -> Result<BTreeSet<i64>, String>;
}

/// Where the database keeps its data.
pub enum Storage {
    /// One data directory on the shared disk.
    Shared(SharedDiskLab),
    /// A data directory per node, kept by streaming replication.
    Replicated(ClusterLab),
}

/// The lab and its client.
pub struct DbLab {
    pub storage: Storage,
    acks: Arc<Mutex<Vec<(i64, Instant)>>>,
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<anyhow::Result<Box<dyn Database>>>>,
    /// The client's latest error, for messages.
    last_error: Arc<Mutex<String>>,
}

/// One failover as the client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// The fault.
    pub fault: Fault,
    /// From the fault until another node answered at the service address, ms.
    pub takeover_ms: u64,
    /// The longest time between two acknowledged writes around the fault, ms.
    pub write_gap_ms: u64,
    /// Streaming replication: from the new primary answering at the service
    /// address until every surviving standby streams from it, ms.
    pub follow_ms: Option<u64>,
}

/// From now until the primary at the service address has `standbys` WAL
/// senders streaming, ms (call from a client thread; at most `limit`).
fn standbys_streaming(standbys: i64, limit: Duration) -> anyhow::Result<u64> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < limit {
        let count = postgres::Config::new()
            .host(VIP)
            .port(5432)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_millis(500))
            .connect(postgres::NoTls)
            .and_then(|mut c| {
                c.query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
            })
            .map(|row| row.get::<_, i64>(0));
        match count {
            Ok(n) if n >= standbys => return Ok(t.elapsed().as_millis() as u64),
            Ok(n) => last = format!("{n} streaming"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the new primary had not {standbys} standbys streaming within {limit:?}: {last}")
}

/// Run `script` with the shared filesystem mounted at `DIR/init-mnt`, in a
/// mount namespace of its own (the machine's mounts are not touched).
fn on_disk(disk: &LoopDisk, dir: &Path, script: &str) -> anyhow::Result<()> {
    let mnt = dir.join("init-mnt");
    std::fs::create_dir_all(&mnt)?;
    let script = format!(
        "set -e; mount {fs} {mnt}; {script}; umount {mnt}",
        fs = disk.fs,
        mnt = mnt.display(),
        script = script.replace("MNT", &mnt.display().to_string()),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "preparing the shared disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The lab directory must be reachable by the database's own user.
fn open_lab_dir(dir: &Path) -> anyhow::Result<()> {
    let mut perms = std::fs::metadata(dir)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    Ok(std::fs::set_permissions(dir, perms)?)
}

/// The processes under `dir/nN/pgdata`'s postmaster whose command line starts
/// with `what` (e.g. `postgres: walreceiver`).
fn postgres_children(dir: &Path, n: usize, what: &str) -> Vec<i32> {
    let pid_file = dir.join(format!("n{n}/pgdata/postmaster.pid"));
    let Some(postmaster) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(postmaster) && cmdline.starts_with(what.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Wait (at most `limit`) until every node runs its replica again: the
/// faulted primary came back as a standby (rewound if it had diverged) and
/// reports its score.
fn standbys_rejoined(cluster: &ClusterLab, limit: Duration) -> anyhow::Result<()> {
    let nodes = cluster.nodes();
    let deadline = Instant::now() + limit;
    loop {
        let status = cluster.status(1).unwrap_or_default();
        let promotion = &status["services"][0]["promotion"];
        if promotion["scores"].as_object().map(|s| s.len()) == Some(nodes)
            && promotion["promoted"].is_string()
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every node runs its standby again: {promotion}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the asynchronous-replication run showed.
pub struct Refusal {
    /// The node that served when it was killed.
    pub primary: usize,
    /// Why the survivors promoted nobody, as their status said.
    pub why: String,
    /// The node promoted with `--force` afterwards.
    pub forced: usize,
    /// Acknowledged writes missing from the table after it (counting earlier
    /// forced promotions' too).
    pub lost: usize,
}

/// Seed `nodes` replicas under `dir`: `initdb` for n1, a server on it (unix
/// socket only) for `pg_basebackup` of n2, n3, ..., then stopped.
fn seed_replicas(dir: &Path, bin: &Path, nodes: usize) -> anyhow::Result<()> {
    let first = dir.join("n1");
    let mut script = format!(
        "set -e; B={bin}; D={d}; \
         for n in $(seq 1 {nodes}); do mkdir -p $D/n$n; chown postgres:postgres $D/n$n; done; \
         runuser -u postgres -- $B/initdb --data-checksums --auth=trust --username=postgres -D $D/n1/pgdata >/dev/null; \
         echo 'host all all 198.18.0.0/15 trust' >> $D/n1/pgdata/pg_hba.conf; \
         echo 'host replication all 198.18.0.0/15 trust' >> $D/n1/pgdata/pg_hba.conf; \
         runuser -u postgres -- $B/pg_ctl -D $D/n1/pgdata -w -l $D/n1/seed.log \
           -o \"-c listen_addresses='' -k {first} -c wal_keep_size=256MB\" start >/dev/null; ",
        bin = bin.display(),
        d = dir.display(),
        first = first.display(),
    );
    for n in 2..=nodes {
        script += &format!(
            "runuser -u postgres -- $B/pg_basebackup -h {first} -U postgres -D $D/n{n}/pgdata -X stream; ",
            first = first.display()
        );
    }
    script += "runuser -u postgres -- $B/pg_ctl -D $D/n1/pgdata -w -m fast stop >/dev/null";
    let out = Command::new("sh").args(["-c", &script]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "seeding the replicas: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The newest installed `bin` directory of PostgreSQL.
pub fn pg_bindir() -> anyhow::Result<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .ok_or_else(|| anyhow::anyhow!("PostgreSQL is not installed: run scripts/setup"))
}

impl DbLab {
    fn new(storage: Storage) -> DbLab {
        DbLab {
            storage,
            acks: Arc::default(),
            stop: Arc::default(),
            client: None,
            last_error: Arc::default(),
        }
    }

    /// PostgreSQL through `adapter` (the built library): `initdb` on the shared
    /// disk, clients of the lab's networks trusted.
    pub fn postgresql(prefix: &str, baton: &Path, adapter: &Path) -> anyhow::Result<DbLab> {
        let resources = format!(
            "[[service.resource]]\nagent = {adapter:?}\nmonitor_ms = 1000\n\
             params = {{ pgdata = \"LAB_DIR/mnt/pgdata\", socket_dir = \"LAB_DIR/mnt/pgdata\", \
             listen_addresses = \"*\", options = \"synchronous_commit=on fsync=on\" }}\n",
            adapter = adapter.display().to_string(),
        );
        let bin = pg_bindir()?;
        let lab = SharedDiskLab::start_with(prefix, baton, &resources, None, "", |dir, disk| {
            open_lab_dir(dir)?;
            on_disk(
                disk,
                dir,
                &format!(
                    "mkdir MNT/pgdata; chown postgres:postgres MNT/pgdata; chmod 700 MNT/pgdata; \
                     runuser -u postgres -- {bin}/initdb --auth=trust --username=postgres -D MNT/pgdata >/dev/null; \
                     echo 'host all all 198.18.0.0/15 trust' >> MNT/pgdata/pg_hba.conf",
                    bin = bin.display()
                ),
            )
        })?;
        Ok(DbLab::new(Storage::Shared(lab)))
    }

    /// PostgreSQL with streaming replication through `adapter`: `initdb` in
    /// n1's directory, base backups of it for n2 and n3, clients and standbys of
    /// the lab's networks trusted; `options` are the servers' settings
    /// (`synchronous_standby_names=*` for synchronous replication).
    pub fn replicated_postgresql(
        prefix: &str,
        baton: &Path,
        adapter: &Path,
        options: &str,
    ) -> anyhow::Result<DbLab> {
        DbLab::replicated_postgresql_with(prefix, baton, adapter, options, "")
    }

    /// [`DbLab::replicated_postgresql`] with `extra` lines in the database's
    /// `[[service.resource]]` table (e.g. a `timeout_ms`). Each node's servers
    /// run from `LAB_DIR/bin-NODE`, a link to the installed binaries (so a test
    /// may give one node binaries of its own).
    pub fn replicated_postgresql_with(
        prefix: &str,
        baton: &Path,
        adapter: &Path,
        options: &str,
        extra: &str,
    ) -> anyhow::Result<DbLab> {
        DbLab::replicated_postgresql_timed(prefix, baton, adapter, options, extra, ("fast", false))
    }

    /// [`DbLab::replicated_postgresql_with`] with the cluster's `timing`
    /// (`fast` or `default`), and with the lab's fence agent when `fencing`.
    pub fn replicated_postgresql_timed(
        prefix: &str,
        baton: &Path,
        adapter: &Path,
        options: &str,
        extra: &str,
        (timing, fencing): (&str, bool),
    ) -> anyhow::Result<DbLab> {
        // The default timing's own self-fence bound; the guardian's lease is
        // half of it, which a loaded machine must meet.
        let self_fence = if timing == "default" { 2000 } else { 500 };
        let cluster_extra = format!(
            "self_fence_ms = {self_fence}\n{}",
            if fencing { baton::lab::LAB_FENCING } else { "" }
        );
        let before = format!(
            "[[service.resource]]\nagent = {adapter:?}\nmonitor_ms = 1000\n{extra}\
             params = {{ pgdata = \"LAB_DIR/{{node}}/pgdata\", socket_dir = \"LAB_DIR/{{node}}\", \
             bindir = \"LAB_DIR/bin-{{node}}\", \
             listen_addresses = \"*\", primary_host = \"{VIP}\", options = \"{options}\" }}\n",
            adapter = adapter.display().to_string(),
        );
        let spec = LabSpec {
            timing,
            strategy: "promotable",
            cluster_extra: &cluster_extra,
            before_process: &before,
            ..LabSpec::default()
        };
        let bin = pg_bindir()?;
        let cluster = ClusterLab::start_spec_with(prefix, baton, &spec, |dir, _| {
            open_lab_dir(dir)?;
            for n in 1..=3 {
                std::os::unix::fs::symlink(&bin, dir.join(format!("bin-n{n}")))?;
            }
            seed_replicas(dir, &bin, 3)
        })?;
        Ok(DbLab::new(Storage::Replicated(cluster)))
    }

    /// With asynchronous replication: the standbys fall behind (the primary's
    /// WAL senders paused, as on a slow link) while the primary acknowledges
    /// writes; the primary's node is killed; the survivors must promote
    /// nobody, and say why; then an operator forces the best one
    /// (`baton promote --force`), writes flow again, and the old primary
    /// rejoins as a standby. Returns what the forced promotion lost.
    pub fn refused_then_forced(&mut self, baton: &Path) -> anyhow::Result<Refusal> {
        let limit = Duration::from_secs(60);
        self.wait_for_writes(20, limit)?;
        let Storage::Replicated(cluster) = &mut self.storage else {
            anyhow::bail!("only a replicated lab has standbys");
        };
        let primary = cluster
            .vip_server(limit, |_| true)?
            .ok_or_else(|| anyhow::anyhow!("nobody serves"))?;
        let dir = cluster.dir.path().to_owned();
        let standbys: Vec<usize> = (1..=cluster.nodes()).filter(|n| *n != primary).collect();
        // The link stalls: the primary's WAL senders stop sending, so what it
        // acknowledges from now on never reaches a standby, and the standbys'
        // WAL receivers stop too (otherwise a standby gives up on a silent
        // sender after wal_receiver_timeout and streams from a new one).
        // Every standby streams first (a former primary may still be rejoining).
        let deadline = Instant::now() + limit;
        let (senders, receivers) = loop {
            let receivers: Vec<i32> = standbys
                .iter()
                .flat_map(|n| postgres_children(&dir, *n, "postgres: walreceiver"))
                .collect();
            let senders = postgres_children(&dir, primary, "postgres: walsender");
            if receivers.len() == standbys.len() && senders.len() == standbys.len() {
                break (senders, receivers);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {} standbys stream from n{primary}",
                senders.len(),
                standbys.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let signal = |pids: &[i32], signal| {
            for pid in pids {
                // SAFETY: kill(2) of a WAL sender or receiver of a server this lab started.
                unsafe {
                    libc::kill(*pid, signal);
                }
            }
        };
        signal(&senders, libc::SIGSTOP);
        signal(&receivers, libc::SIGSTOP);
        // The primary goes on acknowledging; its monitor (every second) publishes
        // how far.
        self.wait_for_writes(100, limit)?;
        std::thread::sleep(Duration::from_millis(2500));
        let Storage::Replicated(cluster) = &mut self.storage else {
            unreachable!()
        };
        cluster.kill_node(primary);
        // With the primary gone there is nothing left to receive (the senders
        // stopped first); a promotion needs the receivers to end when told.
        signal(&receivers, libc::SIGCONT);
        let survivor = standbys[0];
        let deadline = Instant::now() + limit;
        let why = loop {
            let status = cluster.status(survivor).unwrap_or_default();
            let promotion = &status["services"][0]["promotion"];
            let why = promotion["why"].as_str().unwrap_or("").to_string();
            if status["members"].as_array().map(Vec::len) == Some(2)
                && why.contains("would lose acknowledged writes")
            {
                anyhow::ensure!(
                    promotion["promoted"].is_null(),
                    "a standby that is behind was promoted: {promotion}"
                );
                break why;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "n{survivor} never refused to promote: {promotion}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Hold still: nobody is promoted while the operator decides.
        std::thread::sleep(Duration::from_secs(2));
        anyhow::ensure!(
            cluster
                .vip_server(Duration::from_millis(500), |_| true)?
                .is_none(),
            "somebody serves without a promotion"
        );
        let scores =
            cluster.status(survivor).unwrap_or_default()["services"][0]["promotion"]["scores"]
                .clone();
        let forced = standbys
            .iter()
            .copied()
            .max_by_key(|n| {
                let text = scores[format!("n{n}")].as_str().unwrap_or("").to_string();
                let (generation, position) = text.split_once('/').unwrap_or(("0", "0"));
                (
                    generation.parse::<u64>().unwrap_or(0),
                    u64::from_str_radix(position, 16).unwrap_or(0),
                )
            })
            .unwrap_or(survivor);
        let out = Command::new(baton)
            .args(["promote", "web", "--on", &format!("n{forced}"), "--force"])
            .arg("--socket")
            .arg(cluster.socket(survivor))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "baton promote --force: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            cluster.wait_vip(forced, limit)?,
            "n{forced} did not serve after the forced promotion"
        );
        self.wait_for_writes(20, limit)?;
        // What the forced promotion lost, so far: ids acknowledged before the
        // table is read that are not in it.
        let acked: Vec<i64> = self
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let stored = self
            .cluster()
            .lab
            .as_client(|| Postgres::default().ids())?
            .map_err(|e| anyhow::anyhow!("reading the table: {e}"))?;
        let lost = acked.iter().filter(|id| !stored.contains(id)).count();
        // The old primary comes back and rejoins as a standby (rewound).
        let Storage::Replicated(cluster) = &mut self.storage else {
            unreachable!()
        };
        cluster.start_node(primary)?;
        standbys_rejoined(cluster, limit)?;
        Ok(Refusal {
            primary,
            why,
            forced,
            lost,
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterLab {
        match &self.storage {
            Storage::Shared(lab) => &lab.cluster,
            Storage::Replicated(cluster) => cluster,
        }
    }

    /// The replicated lab's cluster, to act on.
    pub fn cluster_mut(&mut self) -> &mut ClusterLab {
        match &mut self.storage {
            Storage::Replicated(c) => c,
            Storage::Shared(lab) => &mut lab.cluster,
        }
    }

    /// MariaDB through `adapter` (the built component) and its grants:
    /// `mariadb-install-db` on the shared disk (with an 8 MiB redo log: the
    /// lab's disk is 64 MiB); an init file creates the client's account and
    /// table at every start.
    pub fn mariadb(prefix: &str, baton: &Path, adapter: &Path) -> anyhow::Result<DbLab> {
        let resources = format!(
            "[[service.resource]]\nagent = {adapter:?}\nmonitor_ms = 1000\n\
             params = {{ datadir = \"LAB_DIR/mnt/mysql\", options = \"--init-file=LAB_DIR/init.sql --innodb-flush-log-at-trx-commit=1 --innodb-log-file-size=8M\" }}\n",
            adapter = adapter.display().to_string(),
        );
        let lab = SharedDiskLab::start_with(
            prefix,
            baton,
            &resources,
            None,
            "[agents.grants]\nmariadb = [\"spawn:/usr/sbin/mariadbd as mysql\", \
             \"exec:/usr/bin/mariadb-admin as mysql\", \"exec:/usr/bin/kill as mysql\", \
             \"net:127.0.0.1:3306\", \"read:LAB_DIR/mnt/mysql\"]\n",
            |dir, disk| {
                open_lab_dir(dir)?;
                std::fs::write(
                    dir.join("init.sql"),
                    "CREATE DATABASE IF NOT EXISTS audit;\n\
                     CREATE TABLE IF NOT EXISTS audit.t (id BIGINT PRIMARY KEY) ENGINE=InnoDB;\n\
                     CREATE USER IF NOT EXISTS 'audit'@'%' IDENTIFIED BY 'audit';\n\
                     GRANT ALL ON audit.* TO 'audit'@'%';\n",
                )?;
                on_disk(
                    disk,
                    dir,
                    "mariadb-install-db --datadir=MNT/mysql --user=mysql --skip-test-db --innodb-log-file-size=8M >/dev/null",
                )
            },
        )?;
        Ok(DbLab::new(Storage::Shared(lab)))
    }

    /// Start the client: a transaction per id through the service address,
    /// reconnecting after any error; ids never repeat (a write whose answer was
    /// lost may be in the table, and is not counted as acknowledged).
    pub fn start_client(&mut self, mut db: Box<dyn Database>) {
        let acks = Arc::clone(&self.acks);
        let stop = Arc::clone(&self.stop);
        let last_error = Arc::clone(&self.last_error);
        self.client = Some(self.cluster().lab.spawn_client(move || {
            let mut next: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                next += 1;
                match db.insert(next) {
                    Ok(()) => acks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((next, Instant::now())),
                    Err(e) => {
                        *last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            db
        }));
    }

    /// How many writes have been acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wait (at most `limit`) until `more` writes beyond the current count are
    /// acknowledged.
    pub fn wait_for_writes(&self, more: usize, limit: Duration) -> anyhow::Result<()> {
        let want = self.acknowledged() + more;
        let deadline = Instant::now() + limit;
        while self.acknowledged() < want {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the client got {} of {want} writes acknowledged within {limit:?}; its last error: {}",
                self.acknowledged(),
                self.last_error.lock().unwrap_or_else(|e| e.into_inner())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// One failover: writes flow, the owner fails (`fault`), another node takes
    /// over and writes flow again; the faulted node rejoins.
    pub fn round(&mut self, fault: Fault, limit: Duration) -> anyhow::Result<Round> {
        self.wait_for_writes(20, limit)?;
        let at = Instant::now();
        let mut follow_ms = None;
        let takeover_ms = match &mut self.storage {
            Storage::Shared(lab) => lab.round(fault, limit)?,
            Storage::Replicated(cluster) => {
                let gap = cluster.round(fault, limit, |c, owner| {
                    // Another node serves: whatever the faulted one still ran is gone.
                    let host = format!("lab/n{owner}@{}", c.socket(owner).display());
                    let left = baton_plugin_api::service::tagged(&host, None);
                    anyhow::ensure!(
                        left.is_empty(),
                        "n{owner} still runs {} processes of the service after {fault:?}",
                        left.len()
                    );
                    // The standbys that survived follow the new primary.
                    let standbys = c.nodes() as i64 - 2;
                    follow_ms = Some(
                        c.lab
                            .as_client(move || standbys_streaming(standbys, limit))??,
                    );
                    Ok(())
                })?;
                standbys_rejoined(cluster, limit)?;
                gap
            }
        };
        self.wait_for_writes(20, limit)?;
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let write_gap_ms = acks
            .windows(2)
            .filter(|w| w[1].1 >= at && w[0].1 <= at + Duration::from_millis(takeover_ms))
            .map(|w| w[1].1.duration_since(w[0].1).as_millis() as u64)
            .max()
            .unwrap_or(0);
        Ok(Round {
            fault,
            takeover_ms,
            write_gap_ms,
            follow_ms,
        })
    }

    /// [`DbLab::round`] for each of `faults` in turn, calling `progress` after
    /// each; on a failure the lab's logs are kept and the error says where.
    pub fn rounds(
        &mut self,
        faults: impl IntoIterator<Item = Fault>,
        limit: Duration,
        mut progress: impl FnMut(&DbLab, &Round),
    ) -> anyhow::Result<Vec<Round>> {
        let mut done = Vec::new();
        for (i, fault) in faults.into_iter().enumerate() {
            match self.round(fault, limit) {
                Ok(round) => {
                    progress(self, &round);
                    done.push(round);
                }
                Err(e) => {
                    let kept = self.cluster().keep_logs();
                    anyhow::bail!(
                        "round {} ({fault:?}): {e:#}; logs kept in {}",
                        i + 1,
                        kept.display()
                    );
                }
            }
        }
        Ok(done)
    }

    /// The lab test of a database: the three faults in turn (each round
    /// printed), then [`DbLab::verify`].
    pub fn each_fault_once(mut self) -> anyhow::Result<(usize, Vec<i64>, usize)> {
        let faults = [Fault::Kill, Fault::Isolate, Fault::KillDaemon];
        self.rounds(faults, Duration::from_secs(60), |_, round| {
            eprintln!(
                "{:?}: takeover {} ms, write gap {} ms",
                round.fault, round.takeover_ms, round.write_gap_ms
            )
        })?;
        self.verify()
    }

    /// Stop the client; read the table through the service address; then the
    /// disk checks (one mount at a time, one owner at a time, fsck clean).
    /// Returns (acknowledged, lost ids, mount intervals).
    pub fn verify(mut self) -> anyhow::Result<(usize, Vec<i64>, usize)> {
        let (acknowledged, lost) = self.lost_writes()?;
        let intervals = match &mut self.storage {
            Storage::Shared(lab) => lab.verify_ownership()?,
            Storage::Replicated(cluster) => {
                let (overlaps, intervals) = baton::lab::ledger_overlaps(cluster.dir.path())?;
                anyhow::ensure!(overlaps.is_empty(), "two primaries at once: {overlaps:?}");
                intervals
            }
        };
        Ok((acknowledged, lost, intervals))
    }

    /// Stop the client and read the table through the service address: how
    /// many writes were acknowledged, and which of them the table lacks.
    pub fn lost_writes(&mut self) -> anyhow::Result<(usize, Vec<i64>)> {
        self.stop.store(true, Ordering::SeqCst);
        let client = self
            .client
            .take()
            .ok_or_else(|| anyhow::anyhow!("the client was never started"))?;
        let mut db = client
            .join()
            .map_err(|_| anyhow::anyhow!("the client panicked"))??;
        let stored = self
            .cluster()
            .lab
            .as_client(move || db.ids())?
            .map_err(|e| anyhow::anyhow!("reading the table: {e}"))?;
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let lost: Vec<i64> = acks
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !stored.contains(id))
            .collect();
        Ok((acks.len(), lost))
    }
}

/// PostgreSQL's client: rust-postgres through the service address, a short
/// connect timeout, and a dead server noticed within a couple of seconds (TCP
/// user timeout, keepalives); as `postgres`, with `password` when the
/// server asks for one.
#[derive(Default)]
pub struct Postgres {
    session: Option<postgres::Client>,
    password: Option<&'static str>,
}

impl Postgres {
    /// A client that logs in with `password`.
    pub fn with_password(password: &'static str) -> Postgres {
        Postgres {
            session: None,
            password: Some(password),
        }
    }

    fn session(&mut self) -> Result<&mut postgres::Client, String> {
        if self.session.is_none() {
            let mut config = postgres::Config::new();
            if let Some(password) = self.password {
                config.password(password);
            }
            let mut client = config
                .host(VIP)
                .port(5432)
                .user("postgres")
                .dbname("postgres")
                .connect_timeout(Duration::from_millis(500))
                .tcp_user_timeout(Duration::from_secs(1))
                .keepalives_idle(Duration::from_secs(1))
                .keepalives_interval(Duration::from_secs(1))
                .keepalives_retries(2)
                .connect(postgres::NoTls)
                .map_err(|e| format!("{e:?}"))?;
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS audit (id bigint PRIMARY KEY)")
                .map_err(|e| format!("{e:?}"))?;
            self.session = Some(client);
        }
        self.session
            .as_mut()
            .ok_or_else(|| "no session".to_string())
    }
}

impl Database for Postgres {
    fn insert(&mut self, id: i64) -> Result<(), String> {
        let result = self
            .session()?
            .execute("INSERT INTO audit VALUES ($1)", &[&id])
            .map(drop)
            .map_err(|e| format!("{e:?}"));
        if result.is_err() {
            self.session = None;
        }
        result
    }

    fn ids(&mut self) -> Result<BTreeSet<i64>, String> {
        self.session = None;
        let rows = self
            .session()?
            .query("SELECT id FROM audit", &[])
            .map_err(|e| format!("{e:?}"))?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
    }
}

/// MariaDB's client: Debian's `mariadb` command-line client through the
/// service address, a process per statement (autocommit), killed after 3 s.
pub struct MariaDb;

impl MariaDb {
    fn sql(&self, statement: &str) -> Result<String, String> {
        let mut child = Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h",
                VIP,
                "-P",
                "3306",
                "-u",
                "audit",
                "-paudit",
            ])
            .args(["--connect-timeout=1", "-N", "-B", "-e", statement])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run mariadb: {e}"))?;
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("mariadb {statement:?}: no answer within 3 s"));
                }
            }
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Database for MariaDb {
    fn insert(&mut self, id: i64) -> Result<(), String> {
        self.sql(&format!("INSERT INTO audit.t VALUES ({id})"))
            .map(drop)
    }

    fn ids(&mut self) -> Result<BTreeSet<i64>, String> {
        Ok(self
            .sql("SELECT id FROM audit.t")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }
}

/// The heading of docs/operations.md's section that takes a promotable
/// PostgreSQL cluster from the template to running.
pub const DOCUMENTED: &str = "### From the template to a running cluster";

/// The password the documented procedure gives the `postgres` role.
pub const DOCUMENTED_PASSWORD: &str = "change-me";

/// One step of the documented procedure: the nodes it runs on (`# on n1:`,
/// `# on n2 and n3:`, `# on every node:`) and its commands.
#[derive(Debug)]
struct Step {
    nodes: Vec<usize>,
    commands: Vec<String>,
}

/// The steps of the section's `sh` block in `doc` (the text of
/// docs/operations.md); comments other than a step's heading are skipped.
fn documented_steps(doc: &str) -> anyhow::Result<Vec<Step>> {
    let section = doc
        .split_once(DOCUMENTED)
        .ok_or_else(|| anyhow::anyhow!("docs/operations.md has no section {DOCUMENTED:?}"))?
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .ok_or_else(|| anyhow::anyhow!("{DOCUMENTED:?} has no sh block"))?
        .0;
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        if let Some(heading) = line.strip_prefix("# on ") {
            let who = heading.split(':').next().unwrap_or_default();
            let nodes = match who {
                "every node" => vec![1, 2, 3],
                _ => who
                    .split(" and ")
                    .map(|n| n.trim_start_matches('n').parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| anyhow::anyhow!("a step for {who:?}: not nN or every node"))?,
            };
            steps.push(Step {
                nodes,
                commands: Vec::new(),
            });
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            steps
                .last_mut()
                .ok_or_else(|| anyhow::anyhow!("{line:?} comes before any `# on NODE:`"))?
                .commands
                .push(line.to_string());
        }
    }
    Ok(steps)
}

/// `text` with each `(from, to)` replaced; every `from` must be in it (so a
/// changed procedure is noticed, not silently run with the documented paths).
fn replaced(text: &str, site: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = text.to_string();
    for (from, to) in site {
        anyhow::ensure!(out.contains(from), "the procedure no longer has {from:?}");
        out = out.replace(from, to);
    }
    Ok(out)
}

/// The `$EDITOR site.toml` step: the lab's site part. The second link on the
/// clients' network (the lab has two), the lab's interface, each node's
/// PostgreSQL directory under `dir`, the key and password files there, and an
/// agent store of the lab's own.
fn edit_site(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let d = dir.display();
    let mut text = replaced(
        &std::fs::read_to_string(path)?,
        &[
            ("198.18.3.1", "198.18.2.1".into()),
            ("service_if = \"eth1\"", "service_if = \"svc\"".into()),
            ("/etc/baton/", format!("{d}/")),
        ],
    )?;
    for n in 1..=3 {
        anyhow::ensure!(
            text.contains("pgdir = \"/srv/pg\""),
            "the site has no pgdir"
        );
        text = text.replacen("pgdir = \"/srv/pg\"", &format!("pgdir = \"{d}/n{n}\""), 1);
    }
    text += &format!("\n[agents]\nstore = \"{d}/agents\"\n");
    Ok(std::fs::write(path, text)?)
}

/// Run the documented procedure in `lab`, each step in its nodes' namespaces
/// from `dir`, with the site's data replaced: `/srv/pg` is `dir/nN`,
/// `/etc/baton` is `dir`, the binaries are this build's and this machine's.
/// Leaves `dir/cluster-nN.toml`, the compiled configs.
fn run_documented(
    doc: &str,
    dir: &Path,
    lab: &baton::lab::Lab,
    (baton, adapter): (&Path, &Path),
) -> anyhow::Result<()> {
    let d = dir.display().to_string();
    let bin = pg_bindir()?.display().to_string();
    for step in documented_steps(doc)? {
        for &n in &step.nodes {
            for command in &step.commands {
                if command == "$EDITOR site.toml" {
                    edit_site(&dir.join("site.toml"), dir)?;
                    continue;
                }
                let mut site = vec![
                    ("/srv/pg", format!("{d}/n{n}")),
                    ("/etc/baton/", format!("{d}/")),
                ];
                if command.contains("/usr/lib/postgresql/15/bin") {
                    site.push(("/usr/lib/postgresql/15/bin", bin.clone()));
                }
                if command.contains("libbaton_postgresql.so") {
                    site.push((
                        "/usr/lib/baton/agents/libbaton_postgresql.so",
                        adapter.display().to_string(),
                    ));
                }
                let mut line = command.clone();
                if let Some(rest) = line.strip_prefix("baton ") {
                    line = format!("{} {rest}", baton.display());
                }
                let site: Vec<_> = site.into_iter().filter(|(f, _)| line.contains(f)).collect();
                let line = replaced(&line, &site)?;
                let out = Command::new("ip")
                    .args(["netns", "exec", &lab.node_ns(n), "sh", "-ec", &line])
                    .current_dir(dir)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "on n{n}: {command}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    for n in 1..=3 {
        std::fs::copy(
            dir.join(format!("compiled/n{n}.toml")),
            dir.join(format!("cluster-n{n}.toml")),
        )?;
    }
    std::fs::copy(dir.join("compiled/n1.toml"), dir.join("cluster.toml"))?;
    Ok(())
}

impl DbLab {
    /// docs/operations.md's promotable PostgreSQL cluster, made by running its
    /// procedure ([`DOCUMENTED`]) as written in a 3-node lab, then started
    /// from the compiled configs.
    pub fn documented_postgresql(
        prefix: &str,
        baton: &Path,
        adapter: &Path,
        doc: &str,
    ) -> anyhow::Result<DbLab> {
        let names = ["n1", "n2", "n3"];
        let cluster = ClusterLab::start_config(prefix, baton, &names, "", |dir, lab| {
            open_lab_dir(dir)?;
            run_documented(doc, dir, lab, (baton, adapter))
        })?;
        Ok(DbLab::new(Storage::Replicated(cluster)))
    }
}
