//! `lab-fence`: the fence agent of a cluster whose nodes are processes on one
//! machine (the namespace lab, `baton demo`). Fencing node N kills N's daemon and
//! every process group its agents recorded, then confirms they are gone.
//!
//! start (with `target=N`): reads `<state_dir>/N.*.pid` (the daemon's `--pid-file`,
//! `PID`, and the `process` agent's records, `PID START_TIME`), takes the network
//! of the daemon's namespace off (every address removed, links down: a powered-off
//! node answers for no virtual address), sends SIGKILL to
//! each recorded process and its process group when the process is still the one
//! recorded (the same start time, or for a bare `PID`, started before its record
//! was written), and returns only when none of them is left (a zombie counts as gone).
//! The node's namespace is `<state_dir>/N.netns` when that file names one (a path
//! such as `/run/netns/lab-n1`: it works after every process of the node died),
//! else the namespace of any recorded process still alive.
//! The daemon's own record must exist: without it nothing proves the node is off.
//! monitor: the state directory exists (the "device" is reachable). stop: nothing to
//! do (a lab node is restarted by whoever runs the lab).
//!
//! A production fence agent does the same with a power switch: start powers the
//! target off and returns once the switch reports it off (see docs/agents.md).

use crate::reading::{required, text};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

inventory::submit! {
    crate::BuiltinAgent { name: "lab-fence", build: || Box::new(LabFenceAgent) }
}

/// The `lab-fence` agent.
pub struct LabFenceAgent;

/// How a record tells its process from a later one that reused the PID.
#[derive(Clone, Copy)]
enum Identity {
    /// `PID START_TIME` (the `process` agent's records): the start time, in
    /// clock ticks since boot.
    Started(u64),
    /// `PID` alone (the daemon's `--pid-file`): the process started before its
    /// record was written (Unix seconds).
    StartedBy(u64),
}

/// When the machine booted, Unix seconds, and the clock ticks per second.
fn boot_clock() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let btime = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((btime, u64::try_from(ticks).ok().filter(|t| *t > 0)?))
}

/// Whether the recorded process is still that one and not a zombie.
fn alive(pid: u32, id: Identity) -> bool {
    let Some((start, zombie)) = crate::process::proc_stat(pid) else {
        return false;
    };
    !zombie
        && match id {
            Identity::Started(t) => start == t,
            // Boot time is in whole seconds: a second of slack.
            Identity::StartedBy(written) => {
                boot_clock().is_some_and(|(btime, hz)| btime + start / hz <= written + 1)
            }
        }
}

/// A record's PID and identity: `PID START_TIME`, or `PID` with the file's
/// modification time.
fn record(path: &Path) -> Option<(u32, Identity)> {
    let text = fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let id = match it.next() {
        Some(start) => Identity::Started(start.parse().ok()?),
        None => {
            let written = fs::metadata(path).ok()?.modified().ok()?;
            let secs = written
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            Identity::StartedBy(secs)
        }
    };
    Some((pid, id))
}

fn kill(pid: u32) {
    // SAFETY: signals to a recorded PID (checked by start time just before) and to the
    // process group it leads, if it leads one.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Take the network namespace `theirs` (a `/proc/PID/ns/net` or `/run/netns/NAME`
/// file) off, as a power failure would: every address gone and every link down,
/// so the node's virtual addresses stop answering. Nothing is done when it is
/// our own namespace (a lab on loopback).
fn power_off_network(theirs: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let theirs = fs::File::open(theirs)?;
    if theirs.metadata()?.ino() == fs::metadata("/proc/self/ns/net")?.ino() {
        return Ok(());
    }
    std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: setns on this short-lived thread only, with a namespace file we opened.
        if unsafe { libc::setns(theirs.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut nl = crate::netlink::Netlink::open()?;
        let links: Vec<_> = nl.links()?.into_iter().filter(|l| !l.loopback).collect();
        for family in [
            std::net::IpAddr::from([0u8; 4]),
            std::net::IpAddr::from([0u16; 8]),
        ] {
            for a in nl.addresses(family)? {
                if links.iter().any(|l| l.index == a.index) {
                    let _ = nl.delete(a.index, a.ip, a.prefix);
                }
            }
        }
        for link in links {
            nl.set_down(link.index)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the power-off thread panicked"))?
}

impl LabFenceAgent {
    fn fence(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let target = text(&meta, req, "target").ok_or_else(|| {
            AgentError::invalid_args("fencing needs target=NODE (the daemon sets it)")
        })?;
        let dir = required(&meta, req, "state_dir")?;
        let entries = fs::read_dir(dir).map_err(|e| {
            AgentError::misconfigured(format!("state_dir {dir}: {e}; give the directory the daemons' --pid-file and the process agents write to"))
        })?;
        let prefix = format!("{target}.");
        let mut records = Vec::new();
        let mut daemon_seen = false;
        let mut daemon = None;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || !name.ends_with(".pid") {
                continue;
            }
            let is_daemon = name == format!("{target}.daemon.pid");
            daemon_seen |= is_daemon;
            if let Some(r) = record(&entry.path()) {
                records.push(r);
                if is_daemon {
                    daemon = Some(r);
                }
            }
        }
        // The node's namespace: named in N.netns, or that of any recorded
        // process still alive.
        let named = fs::read_to_string(Path::new(dir).join(format!("{target}.netns")))
            .ok()
            .map(|text| std::path::PathBuf::from(text.trim()));
        let namespace = named.or_else(|| {
            daemon
                .into_iter()
                .chain(records.iter().copied())
                .find(|(p, s)| alive(*p, *s))
                .map(|(pid, _)| format!("/proc/{pid}/ns/net").into())
        });
        if let Some(namespace) = namespace {
            power_off_network(&namespace).map_err(|e| {
                AgentError::generic(format!(
                    "node {target}: cannot take its network ({}) off: {e}",
                    namespace.display()
                ))
            })?;
        }
        if !daemon_seen {
            return Err(AgentError::generic(format!(
                "no {dir}/{target}.daemon.pid: nothing proves node {target} is off (start its daemon with --pid-file there)"
            )));
        }
        for (pid, start) in &records {
            if alive(*pid, *start) {
                kill(*pid);
            }
        }
        let deadline = Instant::now() + req.context.timeout();
        while records.iter().any(|(p, s)| alive(*p, *s)) {
            if Instant::now() >= deadline {
                return Err(AgentError::generic(format!(
                    "node {target}: processes still alive after SIGKILL"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

impl ResourceAgent for LabFenceAgent {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "lab-fence".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Fences a lab node by killing its daemon and agents' process groups".into(),
            longdesc: "For clusters whose nodes share one machine (network-namespace labs). start with target=NODE takes the network of the node's namespace (named by the path in state_dir/NODE.netns, else that of a recorded process still alive) off (addresses removed, links down), kills the node's daemon and every process group recorded under state_dir, and returns once they are gone.".into(),
            parameters: vec![
                ParamSpec::new(
                    "target",
                    ParamType::String,
                    false,
                    None,
                    "Node to fence (set by the daemon for each fence)",
                ),
                ParamSpec::new(
                    "state_dir",
                    ParamType::String,
                    false,
                    Some("/run/baton/process"),
                    "Directory of the <node>.*.pid records",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 20_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 60_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let dir = required(&meta, req, "state_dir")?;
        if req.depth > 0 && !Path::new(dir).is_dir() {
            return Err(AgentError::not_installed(format!(
                "state_dir {dir} is not a directory on this node"
            )));
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        self.fence(req)
    }

    fn stop(&self, _req: &Request) -> Result<(), AgentError> {
        Ok(())
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let meta = self.metadata();
        let dir = required(&meta, req, "state_dir")?;
        if Path::new(dir).is_dir() {
            Ok(MonitorState::Running)
        } else {
            Err(AgentError::not_installed(format!(
                "state_dir {dir} does not exist"
            )))
        }
    }
}
