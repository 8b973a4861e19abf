//! PostgreSQL on the shared-disk lab, with the acknowledged-transaction audit:
//! three nodes in network namespaces share a loop device; the service is
//! `[disk-lease, filesystem, mounts ledger, postgresql, responder, ipaddr,
//! owners ledger]`, the data directory on the shared filesystem. A client in
//! the client namespace inserts numbered rows through the service address, one
//! transaction each, and records every id the server acknowledged (its COMMIT
//! answered). After the failovers every acknowledged id must be in the table.
//!
//! Shared by the test (a few rounds) and the audit example (20+), which
//! includes this file.

use baton::disk_lab::{Fault, LoopDisk, SharedDiskLab};
use baton::lab::VIP;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The lab and its client.
pub struct PgLab {
    pub lab: SharedDiskLab,
    acks: Arc<Mutex<Vec<(i64, Instant)>>>,
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<anyhow::Result<()>>>,
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
}

/// The newest installed `bin` directory of PostgreSQL.
pub fn bindir() -> anyhow::Result<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .ok_or_else(|| anyhow::anyhow!("PostgreSQL is not installed: run scripts/setup"))
}

/// `initdb` on the shared filesystem, in a mount namespace of its own (the
/// machine's mounts are not touched), with clients of the lab's networks
/// trusted.
fn initdb_on(disk: &LoopDisk, dir: &Path) -> anyhow::Result<()> {
    let mnt = dir.join("init-mnt");
    std::fs::create_dir_all(&mnt)?;
    let script = format!(
        "set -e; mount {fs} {mnt}; mkdir {mnt}/pgdata; chown postgres:postgres {mnt}/pgdata; \
         chmod 700 {mnt}/pgdata; \
         runuser -u postgres -- {bin}/initdb --auth=trust --username=postgres -D {mnt}/pgdata >/dev/null; \
         echo 'host all all 198.18.0.0/15 trust' >> {mnt}/pgdata/pg_hba.conf; umount {mnt}",
        fs = disk.fs,
        mnt = mnt.display(),
        bin = bindir()?.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "initdb on the shared disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl PgLab {
    /// Build the lab (root only) with names starting with `prefix`, the
    /// adapter loaded from `adapter` (the built library).
    pub fn start(prefix: &str, baton: &Path, adapter: &Path) -> anyhow::Result<PgLab> {
        let resources = format!(
            "[[service.resource]]\nagent = {adapter:?}\nmonitor_ms = 1000\n\
             params = {{ pgdata = \"LAB_DIR/mnt/pgdata\", socket_dir = \"LAB_DIR/mnt/pgdata\", \
             listen_addresses = \"*\", options = \"synchronous_commit=on fsync=on\" }}\n",
            adapter = adapter.display().to_string(),
        );
        let lab = SharedDiskLab::start_with(prefix, baton, &resources, None, |dir, disk| {
            // postgres (another user) must reach the data directory's mount point.
            let mut perms = std::fs::metadata(dir)?.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(dir, perms)?;
            initdb_on(disk, dir)
        })?;
        Ok(PgLab {
            lab,
            acks: Arc::default(),
            stop: Arc::default(),
            client: None,
            last_error: Arc::default(),
        })
    }

    /// Start the client: a transaction per id through the service address,
    /// reconnecting after any error; ids never repeat (a write whose answer was
    /// lost may be in the table, and is not counted as acknowledged).
    pub fn start_client(&mut self) {
        let acks = Arc::clone(&self.acks);
        let stop = Arc::clone(&self.stop);
        let last_error = Arc::clone(&self.last_error);
        let note = move |e: postgres::Error| {
            *last_error.lock().unwrap_or_else(|e| e.into_inner()) = format!("{e:?}");
        };
        self.client = Some(self.lab.cluster.lab.spawn_client(move || {
            let mut next: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut client = match connect() {
                    Ok(client) => client,
                    Err(e) => {
                        note(e);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                if let Err(e) =
                    client.batch_execute("CREATE TABLE IF NOT EXISTS audit (id bigint PRIMARY KEY)")
                {
                    note(e);
                    continue;
                }
                while !stop.load(Ordering::SeqCst) {
                    next += 1;
                    match client.execute("INSERT INTO audit VALUES ($1)", &[&next]) {
                        Ok(_) => acks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((next, Instant::now())),
                        Err(e) => {
                            note(e);
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
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
        let takeover_ms = self.lab.round(fault, limit)?;
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
        })
    }

    /// Stop the client; read the table through the service address; then the
    /// disk checks (one mount at a time, one owner at a time, fsck clean).
    /// Returns (acknowledged, lost ids, mount intervals).
    pub fn verify(mut self) -> anyhow::Result<(usize, Vec<i64>, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(client) = self.client.take() {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("the client panicked"))??;
        }
        let stored: std::collections::BTreeSet<i64> =
            self.lab.cluster.lab.as_client(|| -> anyhow::Result<_> {
                let mut client = connect()?;
                Ok(client
                    .query("SELECT id FROM audit", &[])?
                    .iter()
                    .map(|r| r.get::<_, i64>(0))
                    .collect())
            })??;
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let lost: Vec<i64> = acks
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !stored.contains(id))
            .collect();
        let mounts = self.lab.verify_ownership()?;
        Ok((acks.len(), lost, mounts))
    }
}

/// A session with the database through the service address: short connect
/// timeout, and a connection to a server that died is noticed within a couple
/// of seconds (TCP user timeout, keepalives).
fn connect() -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
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
}
