//! The shared-disk lab: the namespace cluster of `lab.rs` with a disk every node
//! sees (a loop device), and a service that uses it the way a database does:
//! `[disk-lease, filesystem, ledger of mounts, writer, ipaddr, ledger]`. The
//! writer appends numbered lines to a journal on the shared filesystem, fsyncs
//! each one and only then acknowledges it in a file outside the disk; after any
//! number of failovers, every acknowledged line must be on the disk, the
//! filesystem must check clean, and the mount ledger must show one mount at a
//! time. Used by the lab test (a few rounds) and the audit example (20+).

pub use crate::lab::Fault;
use crate::lab::{ClusterLab, LabSpec};
use anyhow::{Context, ensure};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A file-backed disk: the whole file as one loop device (lease slots in its
/// first MiB) and an ext4 filesystem after the first MiB, as a second loop
/// device or as the disk's partition 1.
pub struct LoopDisk {
    _file: tempfile::NamedTempFile,
    /// The whole disk (lease area at its start).
    pub whole: String,
    /// The filesystem's device.
    pub fs: String,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopDisk {
    /// A 64 MiB disk with ext4 after its first MiB (needs root, losetup, mkfs.ext4).
    pub fn new() -> anyhow::Result<LoopDisk> {
        let file = tempfile::Builder::new().prefix("baton-disk").tempfile()?;
        file.as_file().set_len(64 << 20)?;
        let path = file.path().to_str().context("temp path")?.to_string();
        run("mkfs.ext4", &["-q", "-F", "-E", "offset=1048576", &path])?;
        // Direct I/O, as a real disk: reads and writes reach the file, not a cache.
        let whole = run("losetup", &["-f", "--show", "--direct-io=on", &path])?;
        let fs = match run(
            "losetup",
            &["-f", "--show", "--direct-io=on", "-o", "1048576", &path],
        ) {
            Ok(fs) => fs,
            Err(e) => {
                let _ = run("losetup", &["-d", &whole]);
                return Err(e);
            }
        };
        Ok(LoopDisk {
            _file: file,
            whole,
            fs,
        })
    }

    /// A 64 MiB disk prepared as docs/operations.md says ("Preparing a shared
    /// disk"): a GPT label, partition 1 from 1 MiB to the end, ext4 on it; `fs`
    /// is the partition's device (needs root, parted, losetup, partx, mkfs.ext4).
    pub fn partitioned() -> anyhow::Result<LoopDisk> {
        let file = tempfile::Builder::new().prefix("baton-disk").tempfile()?;
        file.as_file().set_len(64 << 20)?;
        let path = file.path().to_str().context("temp path")?.to_string();
        run(
            "parted",
            &[
                "-s", &path, "mklabel", "gpt", "mkpart", "db", "ext4", "1MiB", "100%",
            ],
        )?;
        let whole = run("losetup", &["-f", "--show", "-P", "--direct-io=on", &path])?;
        let disk = LoopDisk {
            _file: file,
            fs: format!("{whole}p1"),
            whole,
        };
        // Without udev the partition's device node may not appear by itself.
        if !Path::new(&disk.fs).exists() {
            run("partx", &["-a", &disk.whole])?;
        }
        run("mkfs.ext4", &["-q", "-F", "-L", "db", &disk.fs])?;
        Ok(disk)
    }

    /// `fsck -n` of the filesystem passes (nothing mounts it).
    pub fn check_clean(&self) -> anyhow::Result<()> {
        run("e2fsck", &["-f", "-n", &self.fs]).map(drop)
    }

    /// The lines of the journal the writer keeps on the filesystem (mounted
    /// read-only for the read).
    pub fn journal(&self) -> anyhow::Result<BTreeSet<String>> {
        let dir = tempfile::tempdir()?;
        let mnt = dir.path().to_str().context("temp path")?;
        run("mount", &["-o", "ro,noload", &self.fs, mnt])?;
        let text = std::fs::read_to_string(dir.path().join("journal"));
        let _ = run("umount", &[mnt]);
        Ok(text?.lines().map(str::to_string).collect())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if self.fs.starts_with(&self.whole) {
            // A partition of the whole disk: it goes with it.
            let _ = Command::new("partx").args(["-d", &self.whole]).output();
            let _ = Command::new("losetup").args(["-d", &self.whole]).output();
        } else {
            let _ = Command::new("losetup")
                .args(["-d", &self.fs, &self.whole])
                .output();
        }
    }
}

/// The service's process: answers clients on port 8080 like the lab's responder,
/// and appends `NODE PID N` lines to the journal on the shared filesystem,
/// fsyncing each before acknowledging it in LAB_DIR/acks.
pub const WRITER: &str = r#"import os, socket, sys, threading, time
mnt, acks = sys.argv[1], sys.argv[2]
node = os.environ.get('BATON_NODE', '?')
me = ('up ' + node + '\n').encode()
def serve():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', 8080))
    s.listen(64)
    while True:
        c, _ = s.accept()
        c.sendall(me)
        c.close()
threading.Thread(target=serve, daemon=True).start()
j = os.open(os.path.join(mnt, 'journal'), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
a = open(acks, 'a')
i = 0
while True:
    line = '%s %d %d\n' % (node, os.getpid(), i)
    os.write(j, line.encode())
    os.fsync(j)
    a.write(line)
    a.flush()
    i += 1
    time.sleep(0.005)
"#;

/// A three-node lab whose service holds [`LoopDisk`] through `disk-lease` and
/// `filesystem`.
pub struct SharedDiskLab {
    /// The cluster (dropped first: its nodes' mounts go with their namespaces).
    pub cluster: ClusterLab,
    /// The shared disk.
    pub disk: LoopDisk,
}

/// Whether node `n`'s daemon has `mnt` mounted (in its own mount namespace).
fn mounted(cluster: &ClusterLab, n: usize, mnt: &Path) -> bool {
    let Some(pid) = cluster.daemon_pid(n) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|t| {
        t.lines()
            .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap_or("")))
    })
}

impl SharedDiskLab {
    /// Build it (root only) with names starting with `prefix`, the writer as
    /// the service's process.
    pub fn start(prefix: &str, baton: &Path) -> anyhow::Result<SharedDiskLab> {
        SharedDiskLab::start_with(
            prefix,
            baton,
            "",
            Some("python3 LAB_DIR/writer.py LAB_DIR/mnt LAB_DIR/acks"),
            "",
            |dir, _| Ok(std::fs::write(dir.join("writer.py"), WRITER)?),
        )
    }

    /// Build it with `resources` (`[[service.resource]]` tables, `LAB_DIR`
    /// replaced) after the disk's and before the service's process, which runs
    /// `command` (default: the lab's responder); `config`: TOML tables after
    /// `[cluster]`'s own lines (e.g. `[agents.grants]` for a WebAssembly agent).
    /// `prepare` gets the lab's directory and the disk before any node starts.
    pub fn start_with(
        prefix: &str,
        baton: &Path,
        resources: &str,
        command: Option<&str>,
        config: &str,
        prepare: impl FnOnce(&Path, &LoopDisk) -> anyhow::Result<()>,
    ) -> anyhow::Result<SharedDiskLab> {
        let disk = LoopDisk::new()?;
        let before = format!(
            "[[service.resource]]\nagent = \"disk-lease\"\nmonitor_ms = 250\n\
             params = {{ device = \"{whole}\", cluster = \"lab\", lease_ms = \"1000\" }}\n\
             [[service.resource]]\nagent = \"filesystem\"\nmonitor_ms = 500\n\
             params = {{ device = \"{fs}\", directory = \"LAB_DIR/mnt\" }}\n\
             [[service.resource]]\nagent = \"ledger\"\nmonitor_ms = 100\n\
             params = {{ file = \"LAB_DIR/mounts\", state_dir = \"LAB_DIR/run\" }}\n{resources}",
            whole = disk.whole,
            fs = disk.fs,
        );
        let cluster_extra = format!("self_fence_ms = 500\n{config}");
        let spec = LabSpec {
            cluster_extra: &cluster_extra,
            before_process: &before,
            command,
            ..LabSpec::default()
        };
        // Files the service needs must exist before the nodes start it.
        let cluster =
            ClusterLab::start_spec_with(prefix, baton, &spec, |dir, _| prepare(dir, &disk))?;
        Ok(SharedDiskLab { cluster, disk })
    }

    /// Whether node `n`'s daemon has the shared filesystem mounted (in its own
    /// mount namespace).
    pub fn mounted_on(&self, n: usize) -> bool {
        mounted(&self.cluster, n, &self.cluster.dir.path().join("mnt"))
    }

    /// One round ([`ClusterLab::round`]), with the disk's checks: after a
    /// killed daemon its guardian unmounted the disk; an isolated owner
    /// unmounts it by itself before its links heal.
    pub fn round(&mut self, fault: Fault, limit: Duration) -> anyhow::Result<u64> {
        let mnt = self.cluster.dir.path().join("mnt");
        self.cluster.round(fault, limit, |cluster, owner| {
            if fault == Fault::KillDaemon {
                let log =
                    std::fs::read_to_string(cluster.dir.path().join(format!("n{owner}.log")))?;
                ensure!(
                    log.contains("baton guardian: unmounted"),
                    "the guardian of n{owner} did not unmount the disk"
                );
            }
            if fault == Fault::Isolate {
                // Without quorum, the owner stopped everything: the disk is no
                // longer mounted there.
                let deadline = Instant::now() + limit;
                while mounted(cluster, owner, &mnt) {
                    ensure!(
                        Instant::now() < deadline,
                        "the isolated n{owner} still has the disk mounted"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        })
    }

    /// The checks after the rounds: one mount and one owner at a time (the
    /// ledgers), then, with every node stopped, a clean filesystem holding every
    /// line the writer acknowledged. Returns (mount intervals, acknowledged lines).
    pub fn verify(mut self) -> anyhow::Result<(usize, usize)> {
        let dir = self.cluster.dir.path().to_owned();
        let mounts = self.verify_ownership()?;
        let on_disk = self.disk.journal()?;
        let acks = std::fs::read_to_string(dir.join("acks"))?;
        let acked: Vec<&str> = acks.lines().collect();
        let lost: Vec<&&str> = acked.iter().filter(|l| !on_disk.contains(**l)).collect();
        ensure!(
            lost.is_empty(),
            "{} acknowledged writes are not on the disk, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        Ok((mounts, acked.len()))
    }

    /// One mount and one owner at a time (the ledgers); then every node is
    /// stopped and the filesystem must check clean. Returns the mount intervals.
    pub fn verify_ownership(&mut self) -> anyhow::Result<usize> {
        let dir = self.cluster.dir.path().to_owned();
        let mounts = baton_agents::ledger::intervals(&dir.join("mounts"))?;
        let overlaps = baton_agents::ledger::overlaps(&mounts);
        ensure!(overlaps.is_empty(), "two mounts at once: {overlaps:?}");
        let (owners, _) = crate::lab::ledger_overlaps(&dir)?;
        ensure!(owners.is_empty(), "two owners at once: {owners:?}");
        for n in 1..=self.cluster.nodes() {
            self.cluster.kill_node(n);
        }
        // A mount goes when the last process of its namespace has: wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = self.disk.check_clean() {
            ensure!(Instant::now() < deadline, "fsck -n: {e:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(mounts.len())
    }
}
