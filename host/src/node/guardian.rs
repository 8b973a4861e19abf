//! The guardian: self-fencing that does not depend on the daemon.
//!
//! Without a fence device, the survivors' fence wait is only safe if a node that
//! lost contact stops its services within the self-fence bound. The daemon does
//! that when it *notices*; a daemon that was killed, or hangs, notices nothing
//! while its services run on. The guardian is a separate small process (`baton
//! guardian`, started by `baton run`, sharing no threads or locks with it) that
//! holds what this node's services hold — their process groups and virtual
//! addresses — and a lease the daemon renews with every heartbeat tick through a
//! pipe. When the pipe closes (the daemon died) or no renewal arrives for half
//! the self-fence bound (the daemon hangs), the guardian kills the process
//! groups and removes the addresses, so the fence wait the survivors already
//! apply holds for a dead or frozen daemon too. After a hang it keeps guarding:
//! a daemon that resumes finds its services gone (and, having heard nobody for
//! that long, no quorum) and goes on from there. A daemon that exits cleanly says
//! goodbye first and the guardian leaves quietly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// What the guardian must end if the daemon cannot: one renewal's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Process groups of the services held here.
    pub groups: BTreeSet<i32>,
    /// Virtual addresses of the services held here.
    pub addresses: BTreeSet<IpAddr>,
    /// Mount points of the services' filesystems (shared disks).
    #[serde(default)]
    pub mounts: BTreeSet<std::path::PathBuf>,
    /// Whether the node holds (or may hold) any service: only then are the
    /// daemon's descendants (its services' processes) the guardian's to end.
    #[serde(default)]
    pub holds: bool,
    /// The daemon is exiting cleanly: stand down without fencing.
    #[serde(default)]
    pub bye: bool,
}

/// The daemon's side: the guardian process and the pipe to it.
pub struct Guardian {
    child: Child,
    pipe: ChildStdin,
}

impl Guardian {
    /// Start `baton guardian` for this daemon, fencing after `lease` without a
    /// renewal; it records what it ends in node `node`'s event `history`.
    pub fn spawn(
        exe: &std::path::Path,
        lease: Duration,
        (node, history): (&str, &std::path::Path),
    ) -> std::io::Result<Guardian> {
        let mut child = Command::new(exe)
            .arg("guardian")
            .arg("--lease-ms")
            .arg(lease.as_millis().to_string())
            .arg("--daemon-pid")
            .arg(std::process::id().to_string())
            .arg("--node")
            .arg(node)
            .arg("--history-file")
            .arg(history)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take().expect("piped stdin");
        // A full pipe (the guardian is slow) must never block the daemon.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = pipe.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(Guardian { child, pipe })
    }

    /// Renew the lease with what this node holds now.
    pub fn renew(&mut self, charge: &Charge) {
        if let Ok(mut line) = serde_json::to_vec(charge) {
            line.push(b'\n');
            // A short write on a full pipe is dropped; the next tick renews again.
            let _ = self.pipe.write(&line);
        }
    }

    /// The daemon exits cleanly (its services are stopped): the guardian leaves.
    pub fn stand_down(mut self) {
        self.renew(&Charge {
            bye: true,
            ..Charge::default()
        });
        let _ = self.child.wait();
    }
}

/// The process groups led by descendants of `root` (its agents' services),
/// other than `root`'s own group and `exclude`.
pub fn descendant_groups(root: u32, exclude: &[u32]) -> BTreeSet<i32> {
    let mut parent = std::collections::HashMap::new();
    let mut group = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let mut f = after.split_whitespace();
            let (_, ppid, pgrp) = (f.next(), f.next(), f.next());
            if let (Some(Ok(ppid)), Some(Ok(pgrp))) =
                (ppid.map(str::parse::<u32>), pgrp.map(str::parse::<i32>))
            {
                parent.insert(pid, ppid);
                group.insert(pid, pgrp);
            }
        }
    }
    let own = group.get(&root).copied();
    parent
        .keys()
        .filter(|pid| !exclude.contains(pid))
        .filter(|pid| {
            let mut p = **pid;
            for _ in 0..64 {
                match parent.get(&p) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 && !exclude.contains(&pp) => p = pp,
                    _ => return false,
                }
            }
            false
        })
        .filter_map(|pid| group.get(pid).copied())
        .filter(|g| Some(*g) != own && *g > 1)
        .collect()
}

/// End what `charge` holds: SIGKILL to every process group and, on a node that
/// holds services, to every process tagged with this host (a resource's processes
/// that left the daemon's family, see `plugin_api::service`), every filesystem
/// unmounted (once its users are gone; detached if it stays busy), every address
/// removed.
fn fence(charge: &Charge, host: &str, log: &Log, why: &str) {
    let mut done = Vec::new();
    if charge.holds {
        match baton_plugin_api::service::end(host, None, Duration::ZERO) {
            Ok(0) => {}
            Ok(n) => done.push(format!(
                "killed {n} processes tagged with this node's resources"
            )),
            Err(e) => done.push(e.to_string()),
        }
    }
    for g in &charge.groups {
        // SAFETY: signalling a process group the daemon reported as its service's.
        unsafe {
            libc::kill(-g, libc::SIGKILL);
        }
    }
    if !charge.groups.is_empty() {
        done.push(format!("killed process groups {:?}", charge.groups));
    }
    if !charge.mounts.is_empty() {
        done.push(format!("unmounting {:?}", charge.mounts));
    }
    if !charge.addresses.is_empty() {
        done.push(format!("removing addresses {:?}", charge.addresses));
    }
    if done.is_empty() {
        done.push("this node held nothing".into());
    }
    log.say(&format!("{why}: {}", done.join("; ")));
    let mounts: Vec<_> = charge.mounts.iter().cloned().collect();
    let addresses: Vec<_> = charge.addresses.iter().copied().collect();
    release(&mounts, &addresses);
}

/// Where the guardian says what it does: stderr, with the time, and the node's
/// event history (kind `guardian`), beside the daemon's own records.
pub struct Log {
    /// The node's name.
    pub node: String,
    /// Its event history.
    pub history: Option<std::path::PathBuf>,
}

impl Log {
    fn say(&self, text: &str) {
        let at = crate::node::history::unix_ms();
        eprintln!(
            "{} baton guardian: {text}",
            crate::node::history::local_time(at)
        );
        let Some(path) = &self.history else { return };
        let event = crate::node::history::Event {
            at_ms: at,
            node: self.node.clone(),
            kind: "guardian".into(),
            service: None,
            text: text.to_string(),
        };
        // One write of one line, appended: it never interleaves with the
        // daemon's records.
        if let Ok(mut line) = serde_json::to_vec(&event) {
            line.push(b'\n');
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(&line));
            if let Err(e) = appended {
                eprintln!("baton guardian: cannot record in {}: {e}", path.display());
            }
        }
    }
}

/// Unmount `mounts` (once their users are gone; detached if they stay busy) and
/// remove `addresses`: what a service holds besides its processes. The
/// guardian's fence and the daemon's stop cap both end a service this way.
pub fn release(mounts: &[std::path::PathBuf], addresses: &[IpAddr]) {
    for dir in mounts {
        unmount(dir);
    }
    if addresses.is_empty() {
        return;
    }
    match baton_agents::netlink::Netlink::open() {
        Ok(mut nl) => {
            for ip in addresses {
                if let Ok(Some(a)) = nl.find(*ip) {
                    eprintln!("baton: removing address {ip}");
                    let _ = nl.delete(a.index, a.ip, a.prefix);
                }
            }
        }
        Err(e) => eprintln!("baton: netlink: {e}; addresses left in place"),
    }
}

/// Unmount `dir`: retried for a moment while the killed processes release it,
/// then detached, so no new access goes through it.
fn unmount(dir: &std::path::Path) {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    for _ in 0..25 {
        // SAFETY: umount2 with a valid NUL-terminated path.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            eprintln!("baton guardian: unmounted {}", dir.display());
            return;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
            _ => return, // not mounted (any more)
        }
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        eprintln!("baton guardian: {} was busy; detached it", dir.display());
    }
}

/// Add the daemon's descendants' process groups to what a holding node's
/// guardian ends, at the moment it fences a frozen daemon (they are still its
/// children then). The daemon's own reports are up to `GROUPS_EVERY_MS` old;
/// processes started since carry the resource tags the fence also ends.
fn with_descendants(charge: &mut Charge, daemon_pid: u32) {
    if charge.holds {
        charge
            .groups
            .extend(descendant_groups(daemon_pid, &[std::process::id()]));
    }
}

/// `baton guardian`: read renewals on stdin until the daemon says goodbye; fence
/// when the pipe closes or a renewal is `lease` late.
pub fn run(lease: Duration, daemon_pid: u32, log: &Log) -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let mut lines = BufReader::new(stdin.lock());
    let mut charge = Charge::default();
    // The daemon's identity, inherited: what its resources' processes are tagged with.
    let host = baton_plugin_api::service::host_id();
    let mut renewed = Instant::now();
    loop {
        let left = lease.saturating_sub(renewed.elapsed());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // A line already read into the buffer (a renewal and the goodbye can
        // arrive in one read) is there without the descriptor being readable.
        let n = if lines.buffer().is_empty() {
            // SAFETY: poll on one pollfd that lives for the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) }
        } else {
            1
        };
        if n == 0 {
            if charge != Charge::default() {
                with_descendants(&mut charge, daemon_pid);
                let why = format!(
                    "no renewal from daemon {daemon_pid} for {} ms (it hangs, or is stopped): fencing this node's services",
                    lease.as_millis()
                );
                fence(&charge, &host, log, &why);
                charge = Charge::default();
            }
            renewed = Instant::now();
            continue;
        }
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) => {
                let why =
                    format!("daemon {daemon_pid} is gone without a clean stop: fencing this node");
                fence(&charge, &host, log, &why);
                return Ok(());
            }
            Ok(_) => match serde_json::from_str::<Charge>(&line) {
                Ok(c) if c.bye => return Ok(()),
                Ok(c) => {
                    if c != charge {
                        eprintln!(
                            "baton guardian: guarding process groups {:?}, mounts {:?} and addresses {:?}",
                            c.groups, c.mounts, c.addresses
                        );
                    }
                    charge = c;
                    renewed = Instant::now();
                }
                Err(_) => {} // a line cut by a full pipe: the next one renews
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_by_their_parent_chain() {
        use std::os::unix::process::CommandExt as _;
        // A child in its own group, with a grandchild: both groups are ours.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & wait")
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let me = std::process::id();
        loop {
            let groups = descendant_groups(me, &[]);
            if groups.contains(&(child.id() as i32)) {
                break;
            }
            assert!(Instant::now() < deadline, "{groups:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: our own child's process group.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    }

    /// A resource's process that left the daemon's family (reparented, its own
    /// session) is still ended by its tags, on a node that holds services only.
    #[test]
    fn a_fence_ends_the_processes_tagged_with_this_host() {
        use baton_plugin_api::service;
        use std::os::unix::process::CommandExt as _;
        let host = format!("guardian-test-{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg("30")
            .env(service::HOST_VAR, &host)
            .env(service::RESOURCE_VAR, "db")
            .process_group(0)
            .spawn()
            .unwrap();
        let tagged = || service::tagged(&host, None).len();
        // Its environment shows once the kernel has set up the new program.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tagged() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tagged(), 1);
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("n1.history");
        std::fs::write(&history, "").unwrap();
        let log = Log {
            node: "n1".into(),
            history: Some(history.clone()),
        };
        fence(&Charge::default(), &host, &log, "daemon 1 is gone");
        assert_eq!(tagged(), 1, "a node that holds nothing ends nothing");
        fence(
            &Charge {
                holds: true,
                ..Charge::default()
            },
            &host,
            &log,
            "daemon 1 is gone",
        );
        let _ = child.wait();
        assert_eq!(tagged(), 0);
        // Both fences are in the node's history, with what they ended.
        let events = crate::node::history::read(&history, None, None).unwrap();
        let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "daemon 1 is gone: this node held nothing",
                "daemon 1 is gone: killed 1 processes tagged with this node's resources"
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.kind == "guardian" && e.node == "n1")
        );
    }

    #[test]
    fn a_charge_round_trips_as_one_line() {
        let c = Charge {
            groups: [42, 7].into(),
            addresses: ["198.18.2.100".parse().unwrap()].into(),
            mounts: ["/srv/db".into()].into(),
            holds: true,
            bye: false,
        };
        let line = serde_json::to_string(&c).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Charge>(&line).unwrap(), c);
    }
}
