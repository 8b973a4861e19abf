//! A cluster lab on one machine: network namespaces, one per node, each with two
//! links (a private LAN 198.18.1.0/24 and a service LAN 198.18.2.0/24) to two
//! bridges in a bridge namespace, which also probes the service like a client
//! (198.18.2.254). Used by `baton demo`, the lab tests and the failover benchmark.
//!
//! Rules kept: only addresses in 198.18.0.0/15; every name carries a per-run prefix;
//! only processes this lab started are stopped, by PID; everything is removed on
//! drop, also after a failure.

pub mod demo;
pub mod disk;
pub mod named;
pub mod shared_devices;

use anyhow::{Context, bail};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The LANs of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lan {
    /// The private (heartbeat) LAN, link 0.
    Private,
    /// The service LAN, link 1.
    Service,
}

/// A running lab.
pub struct Lab {
    prefix: String,
    nodes: usize,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    /// Whether this process may build a lab (root, `ip` available).
    pub fn possible() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Build a lab of `nodes` nodes (2..=9) with names starting with `prefix` (≤ 6 chars).
    pub fn up(prefix: &str, nodes: usize) -> anyhow::Result<Lab> {
        assert!((2..=9).contains(&nodes) && prefix.len() <= 6);
        let lab = Lab {
            prefix: prefix.to_string(),
            nodes,
            children: Vec::new(),
        };
        let br = lab.bridge_ns();
        ip(&["netns", "add", &br])?;
        lab.in_ns(&br, &["ip", "link", "set", "lo", "up"])?;
        for bridge in ["bpriv", "bsvc"] {
            lab.in_ns(&br, &["ip", "link", "add", bridge, "type", "bridge"])?;
            lab.in_ns(&br, &["ip", "link", "set", bridge, "up"])?;
        }
        lab.in_ns(
            &br,
            &["ip", "addr", "add", "198.18.2.254/24", "dev", "bsvc"],
        )?;
        for n in 1..=nodes {
            let ns = lab.node_ns(n);
            ip(&["netns", "add", &ns])?;
            lab.in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            for (lan, subnet, bridge) in [(Lan::Private, 1, "bpriv"), (Lan::Service, 2, "bsvc")] {
                let inside = lab.ifname(lan);
                let outside = lab.bridge_port(n, lan);
                ip(&[
                    "link",
                    "add",
                    &outside,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{outside}x"),
                ])?;
                ip(&["link", "set", &outside, "netns", &br])?;
                ip(&["link", "set", &format!("{outside}x"), "netns", &ns])?;
                lab.in_ns(
                    &ns,
                    &["ip", "link", "set", &format!("{outside}x"), "name", inside],
                )?;
                lab.in_ns(
                    &ns,
                    &[
                        "ip",
                        "addr",
                        "add",
                        &format!("198.18.{subnet}.{}/24", 10 + n),
                        "dev",
                        inside,
                    ],
                )?;
                lab.in_ns(&ns, &["ip", "link", "set", inside, "up"])?;
                lab.in_ns(&br, &["ip", "link", "set", &outside, "master", bridge])?;
                lab.in_ns(&br, &["ip", "link", "set", &outside, "up"])?;
            }
        }
        Ok(lab)
    }

    /// Give the clients' side of the service LAN (the bridge namespace) the
    /// address `address` too, for a server of the lab's own (a DNS server).
    pub fn add_client_address(&self, address: &str) -> anyhow::Result<()> {
        if address == "198.18.2.254" {
            return Ok(());
        }
        self.in_ns(
            &self.bridge_ns(),
            &[
                "ip",
                "addr",
                "replace",
                &format!("{address}/24"),
                "dev",
                "bsvc",
            ],
        )
    }

    /// The namespace of node `n` (1-based).
    pub fn node_ns(&self, n: usize) -> String {
        format!("{}-n{n}", self.prefix)
    }

    /// The bridge (and client) namespace.
    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn ifname(&self, lan: Lan) -> &'static str {
        match lan {
            Lan::Private => "priv",
            Lan::Service => "svc",
        }
    }

    fn bridge_port(&self, n: usize, lan: Lan) -> String {
        format!(
            "{}{}{n}",
            self.prefix,
            if lan == Lan::Private { "p" } else { "s" }
        )
    }

    /// Node `n`'s address on `lan`.
    pub fn address(n: usize, lan: Lan) -> String {
        format!(
            "198.18.{}.{}",
            if lan == Lan::Private { 1 } else { 2 },
            10 + n
        )
    }

    fn in_ns(&self, ns: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// Start `program args` inside node `n`'s namespace; the lab kills it on drop.
    pub fn spawn(
        &mut self,
        n: usize,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(n)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// kill -9 a process this lab started.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait (at most `limit`) for a process this lab started to exit; its exit
    /// status, or `None` while it still runs.
    pub fn wait(&mut self, pid: u32, limit: Duration) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                // Reaped by try_wait: nothing is left to wait for.
                drop(self.children.remove(i));
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every process in node `n`'s namespace: its daemon, guardian, agents and
    /// services (all started by this lab).
    pub fn pids(&self, n: usize) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.node_ns(n)])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Send `signal` to every process in node `n`'s namespace.
    pub fn signal_all(&self, n: usize, signal: i32) {
        for pid in self.pids(n) {
            // SAFETY: signalling a process in a namespace this lab created.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Take `lan` of node `n` down (its own end of the link).
    pub fn cut(&self, n: usize, lan: Lan) -> anyhow::Result<()> {
        self.in_ns(
            &self.node_ns(n),
            &["ip", "link", "set", self.ifname(lan), "down"],
        )
    }

    /// Bring `lan` of node `n` back.
    pub fn heal(&self, n: usize, lan: Lan) -> anyhow::Result<()> {
        self.in_ns(
            &self.node_ns(n),
            &["ip", "link", "set", self.ifname(lan), "up"],
        )
    }

    /// Take node `n`'s network off as a power failure does: both links down and
    /// every address on them gone (a virtual address it held included), so no
    /// other node can find the dead node's addresses still answering.
    pub fn power_off(&self, n: usize) -> anyhow::Result<()> {
        let ns = self.node_ns(n);
        for lan in [Lan::Private, Lan::Service] {
            ip(&["-n", &ns, "link", "set", self.ifname(lan), "down"])?;
            ip(&["-n", &ns, "addr", "flush", "dev", self.ifname(lan)])?;
        }
        Ok(())
    }

    /// Give node `n` its network back after [`Lab::power_off`] or a fence (a
    /// reboot: its own addresses, links up, nothing else).
    pub fn power_on(&self, n: usize) -> anyhow::Result<()> {
        let ns = self.node_ns(n);
        for lan in [Lan::Private, Lan::Service] {
            let own = format!("{}/24", Lab::address(n, lan));
            ip(&["-n", &ns, "addr", "flush", "dev", self.ifname(lan)])?;
            ip(&["-n", &ns, "addr", "add", &own, "dev", self.ifname(lan)])?;
            ip(&["-n", &ns, "link", "set", self.ifname(lan), "up"])?;
        }
        Ok(())
    }

    /// Whether node `n` has `address` configured on any interface.
    pub fn has_address(&self, n: usize, address: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.node_ns(n), "-o", "addr", "show"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {address}/")))
    }

    /// The MAC address of node `n`'s interface on `lan`.
    pub fn mac(&self, n: usize, lan: Lan) -> anyhow::Result<String> {
        let path = format!("/sys/class/net/{}/address", self.ifname(lan));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(n), "cat", &path])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The MAC address the client's neighbour cache holds for `address` on the
    /// service LAN, if it has an entry.
    pub fn client_neighbour(&self, address: &str) -> anyhow::Result<Option<String>> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.bridge_ns(),
                "neigh",
                "show",
                address,
                "dev",
                "bsvc",
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        Ok(words
            .by_ref()
            .find(|w| *w == "lladdr")
            .and_then(|_| words.next())
            .map(str::to_string))
    }

    /// Run `f` on a thread that has entered the bridge (client) namespace, so its
    /// sockets reach the service LAN like a client's would.
    pub fn as_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn_client(f)
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    }

    /// Like [`Lab::as_client`], without waiting for `f` to finish.
    pub fn spawn_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let path = format!("/var/run/netns/{}", self.bridge_ns());
        std::thread::spawn(move || -> anyhow::Result<T> {
            let ns = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns on this thread only, with a namespace file we opened.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
    }
}

/// Which of nodes `1..=nodes` answer on the service LAN at `port` (call from a
/// thread inside the bridge namespace, see [`Lab::as_client`]).
pub fn answering(nodes: usize, port: u16, timeout: Duration) -> Vec<usize> {
    (1..=nodes)
        .filter(|n| {
            let addr: SocketAddr = format!("{}:{port}", Lab::address(*n, Lan::Service))
                .parse()
                .expect("lab address");
            let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 8];
            matches!(read_answer(&mut s, &mut buf), Ok(n) if n > 0)
        })
        .collect()
}

/// Read what a server sent, again if a signal interrupted the read (a
/// socket with a read timeout is not restarted by the kernel: an EINTR is the
/// probing process's own signal, not a server that did not answer).
pub fn read_answer(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names = (0..=self.nodes).map(|n| {
            if n == 0 {
                self.bridge_ns()
            } else {
                self.node_ns(n)
            }
        });
        remove_namespaces(names);
    }
}

/// Kill every process in each namespace and delete it. Processes that our
/// daemons started inside the namespaces (agents' process groups) go with the
/// namespaces' PIDs; only namespaces this process created are passed here.
fn remove_namespaces(names: impl IntoIterator<Item = String>) {
    for ns in names {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: killing a process inside a namespace this process created.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// On SIGINT, SIGTERM or SIGHUP (an operator's Ctrl-C), remove the namespaces
/// named `PREFIX-…` and exit with 130, so an interrupted lab leaves nothing
/// behind. Call it before any other thread starts: the signals are blocked in
/// this thread, which every later thread inherits, and a thread of its own
/// waits for them.
pub fn remove_on_interrupt(prefix: &str) {
    // SAFETY: a signal set built and used on this stack; blocking signals in
    // this thread only changes which thread receives them.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mine = format!("{prefix}-");
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waiting on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("interrupted: removing the lab's namespaces {mine}*");
        let listed = Command::new("ip").args(["netns", "list"]).output();
        let names = listed.map_or_else(
            |_| Vec::new(),
            |out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|n| n.starts_with(&mine))
                    .map(String::from)
                    .collect()
            },
        );
        remove_namespaces(names);
        std::process::exit(130);
    });
}

/// A responder for the lab's service: answers every connection with "up NODE"
/// (the node from `BATON_NODE`, which the `process` agent sets).
pub const RESPONDER: &str = "import os, socket\nme = ('up ' + os.environ.get('BATON_NODE', '?') + '\\n').encode()\n\
s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080))\ns.listen(64)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(me)\n    c.close()\n";

/// The service's virtual address in the lab (the `ipaddr` resource of a
/// single-owner service), on the service LAN.
pub const VIP: &str = "198.18.2.100";

/// The `baton` binary of the build an example (a benchmark in `host/examples/`)
/// belongs to: `target/PROFILE/baton` beside `target/PROFILE/examples/`.
pub fn baton_beside_examples() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("baton"))
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("build baton first: cargo build --locked -p baton"))
}

/// Which node answers at the virtual address (`up nN`, or `up dbN`, from the
/// responder), if any, within `timeout` (call from a client thread, see
/// [`Lab::as_client`]).
pub fn vip_answer(timeout: Duration) -> Option<usize> {
    let addr: SocketAddr = format!("{VIP}:8080").parse().expect("lab address");
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 16];
    let n = read_answer(&mut s, &mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim()
        .strip_prefix("up ")?
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()
}

/// The service `web` of a cluster written by [`write_cluster_config`].
pub struct ServiceSpec<'a> {
    /// standby, mutual, rotating, clone, ...
    pub strategy: &'a str,
    /// TOML lines for the `[[service]]` table.
    pub extra: &'a str,
    /// The `process` resource's parameters (TOML inline-table entries).
    pub process_params: &'a str,
    /// `[[service.resource]]` tables before the process (e.g. a disk).
    pub before_process: &'a str,
    /// `[[service.resource]]` tables between the process and the ledger.
    pub after_process: &'a str,
}

/// Write `DIR/cluster.toml` (and `DIR/key`) for a cluster of `links.len()` nodes
/// named n1, n2, ... (plus `cluster_extra` TOML lines in `[cluster]`, e.g.
/// `self_fence_ms`, `witness`), with one service `web` of `strategy` (plus
/// `service_extra` TOML lines), preferred in node order,
/// run by the `process` agent with `process_params` (TOML inline-table entries) plus
/// its state under `DIR/run`, then the `[[service.resource]]` tables in
/// `after_process` (e.g. an `ipaddr`), followed by a `ledger` resource that records every
/// owner interval in `DIR/ledger` (see [`ledger_overlaps`]). `RUN_DIR` in
/// `cluster_extra` becomes `DIR/run` (for `[cluster.fencing]` with `lab-fence`).
/// Shared by the lab, the demo and the daemon tests.
pub fn write_cluster_config(
    dir: &Path,
    links: &[[String; 2]],
    timing: &str,
    cluster_extra: &str,
    service: &ServiceSpec,
) -> anyhow::Result<std::path::PathBuf> {
    let ServiceSpec {
        strategy,
        extra: service_extra,
        process_params,
        before_process,
        after_process,
    } = service;
    std::fs::write(dir.join("key"), b"lab key lab key lab key lab key!!")?;
    let mut nodes = String::new();
    for (i, [a, b]) in links.iter().enumerate() {
        nodes += &format!(
            "[[node]]\nname = \"n{n}\"\nid = {n}\nlinks = [\"{a}\", \"{b}\"]\n",
            n = i + 1
        );
    }
    let preferred: Vec<String> = (1..=links.len()).map(|n| format!("\"n{n}\"")).collect();
    let path = dir.join("cluster.toml");
    let run = dir.join("run").display().to_string();
    let cluster_extra = cluster_extra.replace("RUN_DIR", &run);
    std::fs::write(
        &path,
        format!(
            "[agents]\nstore = {store:?}\n[cluster]\nname = \"lab\"\nkey_file = {key:?}\ntiming = \"{timing}\"\n\
             {cluster_extra}\n{nodes}\
             [[service]]\nname = \"web\"\nstrategy = \"{strategy}\"\npreferred = [{preferred}]\n{service_extra}\n\
             {before_process}\
             [[service.resource]]\nagent = \"process\"\nmonitor_ms = 500\nparams = {{ {process_params}, state_dir = {run:?}, stop_grace_ms = 300 }}\n\
             {after_process}\
             [[service.resource]]\nagent = \"ledger\"\nmonitor_ms = 100\nparams = {{ file = {ledger:?}, state_dir = {run:?} }}\n",
            store = dir.join("store").display().to_string(),
            key = dir.join("key").display().to_string(),
            ledger = dir.join("ledger").display().to_string(),
            preferred = preferred.join(", "),
        ),
    )?;
    Ok(path)
}

/// The overlaps the ledger of a cluster written by [`write_cluster_config`] in
/// `dir` shows (empty: one owner at a time), and how many owner intervals it holds.
pub fn ledger_overlaps(dir: &Path) -> anyhow::Result<(Vec<String>, usize)> {
    let path = dir.join("ledger");
    let intervals = baton_agents::ledger::intervals(&path)
        .with_context(|| format!("reading the ledger {}", path.display()))?;
    Ok((baton_agents::ledger::overlaps(&intervals), intervals.len()))
}

/// How the serving node fails in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the daemon and the service, network off (a power failure).
    Kill,
    /// Both LANs cut: the owner loses quorum and must stop by itself.
    Isolate,
    /// kill -9 of the owner's daemon alone, no fence agent: its guardian must end
    /// the service's processes and remove the address.
    KillDaemon,
}

/// `[cluster]` lines for the `lab-fence` agent (kills a lost node's daemon and its
/// agents' process groups, recorded under the lab's run directory).
pub const LAB_FENCING: &str = "[cluster.fencing]\nagent = \"lab-fence\"\nparams = { state_dir = \"RUN_DIR\" }\ntimeout_ms = 5000\n";

/// What a [`ClusterLab`] runs. `WITNESS` and `LAB_DIR` in its strings become
/// the lab's witness file and directory.
pub struct LabSpec<'a> {
    /// `fast` or `default`.
    pub timing: &'a str,
    /// How many nodes (2..=9).
    pub nodes: usize,
    /// The service's strategy.
    pub strategy: &'a str,
    /// Whether a single-owner service gets the virtual address ([`VIP`]); a
    /// clone never does.
    pub address: bool,
    /// Extra `[cluster]` lines.
    pub cluster_extra: &'a str,
    /// `[[service.resource]]` tables before the service's process.
    pub before_process: &'a str,
    /// The process's command (default: [`RESPONDER`]); it must answer on port 8080.
    pub command: Option<&'a str>,
    /// `[[service.resource]]` tables after the virtual address (e.g. a name).
    pub after_address: &'a str,
}

impl Default for LabSpec<'_> {
    fn default() -> Self {
        LabSpec {
            timing: "fast",
            nodes: 3,
            strategy: "standby",
            address: true,
            cluster_extra: "self_fence_ms = 300",
            before_process: "",
            command: None,
            after_address: "",
        }
    }
}

/// A three-node baton cluster running in a [`Lab`]: the service `web` (the
/// `process` agent running [`RESPONDER`] on port 8080), standby on n1, n2, n3.
pub struct ClusterLab {
    /// The namespaces.
    pub lab: Lab,
    /// Config, key, logs, status files, agent state.
    pub dir: tempfile::TempDir,
    daemons: Vec<Option<u32>>,
    /// Node `n`'s name is `names[n - 1]`.
    names: Vec<String>,
    baton: std::path::PathBuf,
}

impl ClusterLab {
    /// Build a three-node lab, write the config (`timing` = fast|default; with
    /// `fencing`, the `lab-fence` agent) and start every node.
    pub fn start(
        prefix: &str,
        baton: &Path,
        timing: &str,
        self_fence_ms: u64,
        fencing: bool,
    ) -> anyhow::Result<ClusterLab> {
        let mut extra = format!("self_fence_ms = {self_fence_ms}\n");
        if fencing {
            extra += LAB_FENCING;
        }
        ClusterLab::start_with(prefix, baton, timing, 3, "standby", &extra)
    }

    /// Like [`ClusterLab::start`] with `nodes` nodes, the service's `strategy`
    /// and extra `[cluster]` lines; `WITNESS` in them is replaced by the lab's witness file
    /// path.
    pub fn start_with(
        prefix: &str,
        baton: &Path,
        timing: &str,
        nodes: usize,
        strategy: &str,
        cluster_extra: &str,
    ) -> anyhow::Result<ClusterLab> {
        let spec = LabSpec {
            timing,
            nodes,
            strategy,
            cluster_extra,
            ..LabSpec::default()
        };
        ClusterLab::start_spec(prefix, baton, &spec)
    }

    /// Build the lab `spec` describes and start every node.
    pub fn start_spec(prefix: &str, baton: &Path, spec: &LabSpec) -> anyhow::Result<ClusterLab> {
        ClusterLab::start_spec_with(prefix, baton, spec, |_, _| Ok(()))
    }

    /// [`ClusterLab::start_spec`], calling `prepare` with the lab's directory and
    /// namespaces before any node starts (to put files there that the service
    /// needs, or start a server it talks to).
    pub fn start_spec_with(
        prefix: &str,
        baton: &Path,
        spec: &LabSpec,
        prepare: impl FnOnce(&Path, &Lab) -> anyhow::Result<()>,
    ) -> anyhow::Result<ClusterLab> {
        let dir = tempfile::Builder::new().prefix("baton-lab").tempdir()?;
        let d = dir.path();
        let in_lab = |text: &str| {
            text.replace("WITNESS", &d.join("witness").display().to_string())
                .replace("LAB_DIR", &d.display().to_string())
        };
        std::fs::write(d.join("responder.py"), RESPONDER)?;
        let links: Vec<[String; 2]> = (1..=spec.nodes)
            .map(|n| {
                [
                    format!("{}:5405", Lab::address(n, Lan::Private)),
                    format!("{}:5405", Lab::address(n, Lan::Service)),
                ]
            })
            .collect();
        let command = spec
            .command
            .map(in_lab)
            .unwrap_or_else(|| format!("python3 {}", d.join("responder.py").display()));
        let process = format!("command = {command:?}, ready_tcp = \"127.0.0.1:8080\"");
        // A single-owner service is reached at its virtual address; a clone runs
        // everywhere and is reached at each node's own address.
        let vip = if !spec.address || spec.strategy == "clone" {
            String::new()
        } else {
            format!(
                "[[service.resource]]\nagent = \"ipaddr\"\nmonitor_ms = 500\nparams = {{ address = \"{VIP}/24\", interface = \"svc\", label = \"web\" }}\n"
            )
        };
        let after_process = vip + &in_lab(spec.after_address);
        let service = ServiceSpec {
            strategy: spec.strategy,
            extra: "",
            process_params: &process,
            before_process: &in_lab(spec.before_process),
            after_process: &after_process,
        };
        write_cluster_config(
            d,
            &links,
            spec.timing,
            &in_lab(spec.cluster_extra),
            &service,
        )?;
        let lab = Lab::up(prefix, spec.nodes)?;
        prepare(d, &lab)?;
        let mut c = ClusterLab {
            lab,
            dir,
            daemons: vec![None; spec.nodes],
            names: (1..=spec.nodes).map(|n| format!("n{n}")).collect(),
            baton: baton.to_owned(),
        };
        for n in 1..=spec.nodes {
            c.start_node(n)?;
        }
        Ok(c)
    }

    /// A lab of the nodes `names` (node `n` is `names[n - 1]`, with the lab's
    /// addresses of node `n`) running `config` (`LAB_DIR` in it replaced by
    /// the lab's directory), after `prepare` with the lab's directory and
    /// namespaces. The lab writes a `key` file for the config to name.
    pub fn start_config(
        prefix: &str,
        baton: &Path,
        names: &[&str],
        config: &str,
        prepare: impl FnOnce(&Path, &Lab) -> anyhow::Result<()>,
    ) -> anyhow::Result<ClusterLab> {
        let dir = tempfile::Builder::new().prefix("baton-lab").tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("key"), b"lab key lab key lab key lab key!!")?;
        std::fs::create_dir_all(d.join("run"))?;
        std::fs::write(
            d.join("cluster.toml"),
            config.replace("LAB_DIR", &d.display().to_string()),
        )?;
        let lab = Lab::up(prefix, names.len())?;
        prepare(d, &lab)?;
        let mut c = ClusterLab {
            lab,
            dir,
            daemons: vec![None; names.len()],
            names: names.iter().map(|n| n.to_string()).collect(),
            baton: baton.to_owned(),
        };
        for n in 1..=names.len() {
            c.start_node(n)?;
        }
        Ok(c)
    }

    /// Copy the lab's directory (logs, status, ledgers) to a kept one beside it
    /// (`…-failed`), for after a failure; returns where.
    pub fn keep_logs(&self) -> std::path::PathBuf {
        let kept = self.dir.path().with_extension("failed");
        let _ = Command::new("cp")
            .arg("-r")
            .arg(self.dir.path())
            .arg(&kept)
            .output();
        kept
    }

    /// The PID of node `n`'s daemon, while it runs.
    pub fn daemon_pid(&self, n: usize) -> Option<u32> {
        self.daemons[n - 1]
    }

    /// How many nodes the lab has.
    pub fn nodes(&self) -> usize {
        self.daemons.len()
    }

    /// Boot node `n`: its network as configured (a power-off or a fence may have
    /// taken it), then its daemon.
    pub fn start_node(&mut self, n: usize) -> anyhow::Result<()> {
        self.lab.power_on(n)?;
        self.start_daemon(n)
    }

    /// Start node `n`'s daemon, its network as it is now.
    pub fn start_daemon(&mut self, n: usize) -> anyhow::Result<()> {
        let d = self.dir.path();
        // A node given a config of its own (`use_config`) runs that one.
        let own = d.join(format!("cluster-n{n}.toml"));
        let cfg = if own.exists() {
            own
        } else {
            d.join("cluster.toml")
        };
        let status = d.join(format!("n{n}.json"));
        // The previous run's status is not this one's.
        let _ = std::fs::remove_file(&status);
        let node = self.names[n - 1].clone();
        let socket = self.socket(n);
        let pid_file = d.join(format!("run/{node}.daemon.pid"));
        let args = [
            "--config",
            cfg.to_str().unwrap_or(""),
            "run",
            "--node",
            &node,
            "--status-file",
            status.to_str().unwrap_or(""),
            "--socket",
            socket.to_str().unwrap_or(""),
            "--pid-file",
            pid_file.to_str().unwrap_or(""),
        ];
        let pid = self
            .lab
            .spawn(n, &self.baton, &args, &d.join(format!("n{n}.log")))?;
        self.daemons[n - 1] = Some(pid);
        Ok(())
    }

    /// Deploy `edit` of the lab's config to node `n` (it runs it from its next
    /// start), as an administrator rolling a change out node by node.
    pub fn use_config(&self, n: usize, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
        let d = self.dir.path();
        let text = std::fs::read_to_string(d.join("cluster.toml"))?;
        std::fs::write(d.join(format!("cluster-n{n}.toml")), edit(text))?;
        Ok(())
    }

    /// Whether node `n`'s daemon runs (a fence may have killed it).
    pub fn node_alive(&self, n: usize) -> bool {
        self.daemons[n - 1]
            .and_then(baton_agents::proc_stat)
            .is_some_and(|(_, zombie)| !zombie)
    }

    /// Start node `n` again if its daemon is gone (killed, or fenced: a reboot,
    /// with its network back as it was at boot).
    pub fn revive(&mut self, n: usize) -> anyhow::Result<()> {
        if !self.node_alive(n) {
            self.kill_node(n);
            self.start_node(n)?;
        }
        Ok(())
    }

    /// Node `n`'s control socket.
    pub fn socket(&self, n: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("n{n}.sock"))
    }

    /// The PID of the service process node `n` started (its process group
    /// leader), from the `process` agent's record `run/nN.web-I.pid` (not the
    /// ledger's `….ledger.pid`).
    pub fn service_pid(&self, n: usize) -> Option<i32> {
        let prefix = format!("n{n}.web-");
        let record = std::fs::read_dir(self.dir.path().join("run"))
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| {
                name.starts_with(&prefix)
                    && name.ends_with(".pid")
                    && !name.ends_with(".ledger.pid")
            })?;
        let text = std::fs::read_to_string(self.dir.path().join("run").join(record)).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// kill -9 node `n`'s daemon only (its agents' processes keep running).
    pub fn kill_daemon(&mut self, n: usize) {
        if let Some(pid) = self.daemons[n - 1].take() {
            self.lab.kill(pid);
        }
    }

    /// Node `n` freezes whole, as a paused VM or SIGSTOP of every process does:
    /// its daemon, guardian, agents and services stop where they are.
    pub fn freeze_node(&self, n: usize) {
        self.lab.signal_all(n, libc::SIGSTOP);
    }

    /// Node `n` runs again after [`ClusterLab::freeze_node`] (what a fence left).
    pub fn thaw_node(&self, n: usize) {
        self.lab.signal_all(n, libc::SIGCONT);
    }

    /// Stop node `n`'s daemon process alone (SIGSTOP), or let it go on (SIGCONT):
    /// its guardian and services run on meanwhile.
    pub fn pause_daemon(&self, n: usize, paused: bool) {
        if let Some(pid) = self.daemons[n - 1] {
            let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signalling the daemon this lab started.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// SIGTERM to node `n`'s daemon (a clean stop), then wait (at most `limit`)
    /// until it exits; its exit status, or `None` if it still runs.
    pub fn stop_daemon(&mut self, n: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.daemons[n - 1]?;
        // SAFETY: signalling the daemon this lab started.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let status = self.lab.wait(pid, limit);
        if status.is_some() {
            self.daemons[n - 1] = None;
        }
        status
    }

    /// Node `n` fails as a server does when its power goes: kill -9 of its daemon,
    /// its service's process group and every process started for its resources
    /// (tagged with its `BATON_HOST`), and its network off ([`Lab::power_off`]).
    /// [`ClusterLab::start_node`] boots it again.
    pub fn kill_node(&mut self, n: usize) {
        if let Some(pid) = self.daemons[n - 1].take() {
            self.lab.kill(pid);
        }
        if let Some(pid) = self.service_pid(n) {
            // SAFETY: signalling the process group our daemon created in our namespace.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let host = format!("lab/n{n}@{}", self.socket(n).display());
        if let Err(e) = baton_plugin_api::service::end(&host, None, Duration::ZERO) {
            eprintln!("lab: cannot end n{n}'s processes: {e}");
        }
        if let Err(e) = self.lab.power_off(n) {
            eprintln!("lab: cannot power off n{n}'s network: {e:#}");
        }
    }

    /// Wait (at most `limit`) until node `n` answers clients at the virtual address.
    pub fn wait_vip(&self, n: usize, limit: Duration) -> anyhow::Result<bool> {
        Ok(self.vip_server(limit, move |m| m == n)?.is_some())
    }

    /// Wait (at most `limit`) until a node for which `which` holds answers at
    /// the virtual address; which one.
    pub fn vip_server(
        &self,
        limit: Duration,
        which: impl Fn(usize) -> bool + Send + 'static,
    ) -> anyhow::Result<Option<usize>> {
        self.lab.as_client(move || {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                if let Some(n) = vip_answer(Duration::from_millis(100)).filter(|n| which(*n)) {
                    return Some(n);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    }

    /// Node `n`'s status (what `baton status --json` shows).
    pub fn status(&self, n: usize) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.dir.path().join(format!("n{n}.json"))).ok()?)
            .ok()
    }

    /// Whether node `n`, and only it, answers clients throughout the next `span`.
    pub fn served_only_by(&self, n: usize, span: Duration) -> anyhow::Result<bool> {
        let nodes = self.nodes();
        self.lab.as_client(move || {
            let until = std::time::Instant::now() + span;
            while std::time::Instant::now() < until {
                // A second per probe: a busy machine's scheduler must not
                // pass for an outage.
                if answering(nodes, 8080, Duration::from_secs(1)) != [n] {
                    return false;
                }
            }
            true
        })
    }

    /// One round: fault the node that serves at the virtual address, wait
    /// until another one serves there, run `check` (with the faulted node),
    /// then bring the faulted node back (heal its links, or boot it) and wait
    /// until every node is a member again. Returns the client-visible gap in ms.
    pub fn round(
        &mut self,
        fault: Fault,
        limit: Duration,
        check: impl FnOnce(&ClusterLab, usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let owner = self
            .vip_server(limit, |_| true)?
            .context("nobody serves before the fault")?;
        let t = std::time::Instant::now();
        match fault {
            Fault::Kill => self.kill_node(owner),
            Fault::KillDaemon => self.kill_daemon(owner),
            Fault::Isolate => {
                self.lab.cut(owner, Lan::Private)?;
                self.lab.cut(owner, Lan::Service)?;
            }
        }
        if self.vip_server(limit, move |n| n != owner)?.is_none() {
            anyhow::bail!("no other node took over from n{owner} after {fault:?}");
        }
        let gap = t.elapsed().as_millis() as u64;
        check(self, owner)?;
        if fault == Fault::Isolate {
            self.lab.heal(owner, Lan::Private)?;
            self.lab.heal(owner, Lan::Service)?;
            // With a fence agent the isolated node was fenced: it boots again.
            self.revive(owner)?;
        } else {
            self.start_node(owner)?;
        }
        let nodes = self.nodes();
        let deadline = std::time::Instant::now() + limit;
        while (1..=nodes).any(|n| {
            self.status(n)
                .and_then(|s| s["members"].as_array().map(Vec::len))
                != Some(nodes)
        }) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "n{owner} did not rejoin"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(gap)
    }

    /// Wait (at most `limit`) until exactly the nodes `want` answer clients.
    pub fn wait_answering(&self, want: Vec<usize>, limit: Duration) -> anyhow::Result<bool> {
        let nodes = self.nodes();
        self.lab.as_client(move || {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                if answering(nodes, 8080, Duration::from_millis(100)) == want {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    }
}
