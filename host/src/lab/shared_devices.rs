//! docs/operations.md's "A service on shared devices" in the namespace lab, run
//! as written there with only the site's data replaced: two nodes `db1` and
//! `db2` at the lab's addresses (the example's own), a partitioned loop device
//! as the shared disk (witness and `disk-lease` slots before partition 1, ext4
//! on it), the `lab-fence` agent as the fence agent, the client side of the
//! service LAN as the health check's gateway, a BIND of the lab's own at the
//! example's DNS server address, and as the server the shared-disk lab's writer
//! (acknowledged lines on the shared filesystem). Used by the lab test (a
//! round of each fault) and the `shared_devices_bench` example (many crashes).

use crate::lab::disk::{LoopDisk, WRITER};
use crate::lab::named::{KEY_NAME, Named, SECRET, key_text};
use crate::lab::{ClusterLab, Lan};
use anyhow::{Context, ensure};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The section of docs/operations.md that holds the example.
pub const SECTION: &str = "## A service on shared devices";
/// The example's service address, DNS server, zone and name.
pub const ADDRESS: &str = "198.18.2.100";
/// The DNS server the example updates.
pub const DNS_SERVER: &str = "198.18.2.53";
/// The zone.
pub const ZONE: &str = "example.com";
/// The name clients look up.
pub const NAME: &str = "db.example.com";
/// The example's disk.
const DISK: &str = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4";

/// The example's TOML block in `doc` (the text of docs/operations.md).
pub fn example(doc: &str) -> anyhow::Result<String> {
    let section = doc
        .split_once(SECTION)
        .context("docs/operations.md has no shared-devices section")?
        .1;
    let block = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .context("the shared-devices section has no toml block")?
        .0;
    Ok(block.to_string())
}

/// `example` with this site's data: the disk `disk`, files under `dir`, the
/// lab's interface and gateway, the lab's fence agent and the writer as the
/// server. Each replaced text must be in the example (so the test notices an
/// example that changed under it).
pub fn for_site(example: &str, dir: &Path, disk: &LoopDisk) -> anyhow::Result<String> {
    let d = dir.display();
    let site: [(&str, String); 10] = [
        ("\"ocf:vendor:fence-ipmi\"", "\"lab-fence\"".to_string()),
        (
            "{ user = \"admin\", password_file = \"/etc/baton/ipmi.pw\" }",
            format!("{{ state_dir = \"{d}/run\" }}"),
        ),
        ("\"arp:198.18.2.1\"", "\"arp:198.18.2.254\"".to_string()),
        (&format!("{DISK}-part1"), disk.fs.clone()),
        (DISK, disk.whole.clone()),
        ("/etc/baton/key", format!("{d}/key")),
        ("/etc/baton/dns.key", format!("{d}/dns.key")),
        (
            "command = \"/usr/sbin/mydbd --datadir /srv/db\", ready_tcp = \"127.0.0.1:5432\"",
            format!(
                "command = \"python3 {d}/writer.py {d}/mnt {d}/acks\", ready_tcp = \"127.0.0.1:8080\", state_dir = \"{d}/run\""
            ),
        ),
        ("/srv/db", format!("{d}/mnt")),
        ("\"eth1\"", "\"svc\"".to_string()),
    ];
    let mut text = example.to_string();
    for (from, to) in &site {
        ensure!(
            text.contains(from),
            "the shared-devices example no longer has {from}"
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

/// Write the files the example needs under `dir`: the cluster and DNS keys,
/// the writer, the mount point.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("key"), b"lab key lab key lab key lab key!!")?;
    std::fs::write(dir.join("dns.key"), key_text(KEY_NAME, SECRET))?;
    std::fs::write(dir.join("writer.py"), WRITER)?;
    std::fs::create_dir_all(dir.join("mnt"))?;
    std::fs::create_dir_all(dir.join("run"))?;
    Ok(())
}

/// The example running in a lab.
pub struct SharedDevicesLab {
    /// The two nodes (dropped first).
    pub cluster: ClusterLab,
    /// The DNS server.
    pub named: Named,
    /// The shared disk.
    pub disk: LoopDisk,
}

impl SharedDevicesLab {
    /// Build it (root only; parted, BIND) from `doc`, the text of
    /// docs/operations.md, and start both nodes.
    pub fn start(prefix: &str, baton: &Path, doc: &str) -> anyhow::Result<SharedDevicesLab> {
        let disk = LoopDisk::partitioned()?;
        let config = for_site(&example(doc)?, Path::new("LAB_DIR"), &disk)?;
        let mut named = None;
        let cluster =
            ClusterLab::start_config(prefix, baton, &["db1", "db2"], &config, |dir, lab| {
                prepare(dir)?;
                named = Some(Named::start(lab, DNS_SERVER, ZONE)?);
                Ok(())
            })?;
        Ok(SharedDevicesLab {
            cluster,
            named: named.context("named did not start")?,
            disk,
        })
    }

    /// What a client resolves the name to (empty: NXDOMAIN or no address).
    pub fn resolve(&self) -> anyhow::Result<Vec<String>> {
        self.cluster.lab.as_client(resolve)?
    }

    /// Wait (at most `limit`) until the name resolves to the service address.
    pub fn wait_name(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.resolve().is_ok_and(|a| a == [ADDRESS]) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the name never resolved to {ADDRESS}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resolve the name as a client does, over and over, until the returned
    /// watch is ended.
    pub fn watch_name(&self) -> NameWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let until = Arc::clone(&stop);
        let thread = self.cluster.lab.spawn_client(move || {
            let mut seen = Answers::default();
            // Bounded: ten minutes of lookups at most.
            let end = Instant::now() + Duration::from_secs(600);
            while !until.load(Ordering::Relaxed) && Instant::now() < end {
                match resolve() {
                    Ok(a) if a == [ADDRESS] => seen.right += 1,
                    Ok(a) if a.is_empty() => seen.nxdomain += 1,
                    Ok(a) => seen.wrong.push(a.join(",")),
                    Err(e) => seen.unanswered.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        NameWatch { stop, thread }
    }

    /// The log of node `n` (`db1` is 1).
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.cluster.dir.path().join(format!("n{n}.log")))
            .unwrap_or_default()
    }

    /// Wait (at most `limit`) until both nodes list both as members.
    pub fn wait_joined(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while (1..=2).any(|n| {
            self.cluster
                .status(n)
                .and_then(|s| s["members"].as_array().map(Vec::len))
                != Some(2)
        }) {
            ensure!(Instant::now() < deadline, "the nodes did not join");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Crash the node serving the service (power off: its network and every
    /// process); the milliseconds until the other node answers at the service
    /// address, and which node that is.
    pub fn crash_owner(&mut self, limit: Duration) -> anyhow::Result<(usize, u64)> {
        let owner = self
            .cluster
            .vip_server(limit, |_| true)?
            .context("nobody serves before the crash")?;
        let t = Instant::now();
        self.cluster.kill_node(owner);
        let other = self
            .cluster
            .vip_server(limit, move |n| n != owner)?
            .with_context(|| format!("nobody took over from db{owner}"))?;
        Ok((other, t.elapsed().as_millis() as u64))
    }

    /// Cut node `n` off from both LANs.
    pub fn isolate(&self, n: usize) -> anyhow::Result<()> {
        self.cluster.lab.cut(n, Lan::Private)?;
        self.cluster.lab.cut(n, Lan::Service)
    }

    /// The checks at the end: with both nodes stopped, the filesystem checks
    /// clean and holds every line the server acknowledged; how many.
    pub fn verify(mut self) -> anyhow::Result<usize> {
        for n in 1..=2 {
            self.cluster.kill_node(n);
        }
        // A mount goes when the last process of its namespace has: wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = self.disk.check_clean() {
            ensure!(Instant::now() < deadline, "fsck -n: {e:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let on_disk = self.disk.journal()?;
        let acks = std::fs::read_to_string(self.cluster.dir.path().join("acks"))?;
        let lost: Vec<&str> = acks.lines().filter(|l| !on_disk.contains(*l)).collect();
        ensure!(
            lost.is_empty(),
            "{} acknowledged writes are not on the disk, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        Ok(acks.lines().count())
    }
}

/// The name as a client resolves it (call inside the lab's client namespace).
fn resolve() -> anyhow::Result<Vec<String>> {
    let server = format!("{DNS_SERVER}:53").parse()?;
    let found = baton_agents::dns_name::lookup(server, NAME, Duration::from_secs(1))
        .map_err(anyhow::Error::msg)?;
    Ok(found.iter().map(|ip| ip.to_string()).collect())
}

/// What the name's lookups answered while a [`NameWatch`] ran.
#[derive(Debug, Default)]
pub struct Answers {
    /// The service address.
    pub right: usize,
    /// NXDOMAIN or no address.
    pub nxdomain: usize,
    /// Other addresses.
    pub wrong: Vec<String>,
    /// Lookups the server did not answer.
    pub unanswered: Vec<String>,
}

/// A client resolving the name in a loop ([`SharedDevicesLab::watch_name`]).
pub struct NameWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Answers>>,
}

impl NameWatch {
    /// Stop it; what it saw.
    pub fn end(self) -> anyhow::Result<Answers> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the resolving client panicked"))?
    }
}
