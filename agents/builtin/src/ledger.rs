//! `ledger`: a test resource that records who runs it, and when, in a file every
//! node shares, so a test can prove that no two nodes ever ran it at the same time.
//!
//! Each call appends one line, under an exclusive `flock`, with the system-wide
//! monotonic clock (shared by every network namespace of a machine):
//! `start|alive|stop NODE RESOURCE NANOS`. start and every monitor append, so a
//! node killed without a stop leaves its last `alive` as the latest moment it is
//! known to have run. The resource is a real process (a `sleep` in its own process
//! group, recorded in `NODE.RESOURCE.ledger.pid`), so fencing — a fence agent, or
//! the node's guardian — ends it like any service process: once it is gone the
//! resource is not running, and a late stop writes nothing (its interval ended at
//! its last `alive`). The running marker also names the host process that started
//! it: a marker left by a killed host is stale, so a restarted host's probe sees
//! "not running" and writes nothing. [`overlaps`] reads a ledger and lists every
//! overlap.

use crate::reading::{ensure_dir, required, state_file};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;

inventory::submit! {
    crate::BuiltinAgent { name: "ledger", build: || Box::new(LedgerAgent::default()) }
}

/// The `ledger` agent.
#[derive(Default)]
pub struct LedgerAgent {
    /// The marker processes started here, kept to be reaped.
    children: std::sync::Mutex<std::collections::HashMap<u32, std::process::Child>>,
}

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

impl LedgerAgent {
    fn append(&self, req: &Request, event: &str) -> Result<(), AgentError> {
        let meta = self.metadata();
        let path = required(&meta, req, "file")?;
        let io = |e: std::io::Error| AgentError::generic(format!("ledger {path}: {e}"));
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; released when `f` closes.
        unsafe {
            libc::flock(f.as_raw_fd(), libc::LOCK_EX);
        }
        // The time is taken under the lock, so the file's order is the clock's order.
        let line = format!(
            "{event} {} {} {}\n",
            req.context.node,
            req.context.resource,
            monotonic_ns()
        );
        f.write_all(line.as_bytes()).map_err(io)
    }

    fn marker(&self, req: &Request) -> Result<std::path::PathBuf, AgentError> {
        state_file(&self.metadata(), req, "ledger")
    }

    /// The resource's process, if this host process started it and it still runs
    /// (a marker of a killed host is stale; a killed process ended the resource).
    fn running_here(&self, req: &Request) -> Result<Option<u32>, AgentError> {
        let marker = self.marker(req)?;
        let text = fs::read_to_string(&marker).unwrap_or_default();
        let mut f = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(host)), Some(Ok(pid)), Some(Ok(started))) = (f.next(), f.next(), f.next())
        else {
            return Ok(None);
        };
        let alive = crate::process::proc_stat(pid as u32)
            .is_some_and(|(t, zombie)| t == started && !zombie);
        Ok((host == u64::from(std::process::id()) && alive).then_some(pid as u32))
    }

    /// Reap (and, when `kill`, first end) the marker process `pid`.
    fn end(&self, pid: u32, kill: bool) {
        if kill {
            // SAFETY: the process group of the marker process this agent started.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        if let Some(mut child) = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid)
        {
            let _ = child.wait();
        }
    }
}

impl ResourceAgent for LedgerAgent {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "ledger".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Test resource: records owner intervals in a shared file".into(),
            longdesc: "start, monitor and stop append start/alive/stop lines with the monotonic clock to a file every node shares; a test reads it to prove no two nodes ran the resource at once.".into(),
            parameters: vec![
                ParamSpec::new(
                    "file",
                    ParamType::String,
                    true,
                    None,
                    "The shared ledger file",
                ),
                ParamSpec::new(
                    "state_dir",
                    ParamType::String,
                    false,
                    Some("/run/baton/ledger"),
                    "Directory of this node's running marker",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 5_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 1_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        required(&self.metadata(), req, "file").map(|_| ())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        if self.running_here(req)?.is_some() {
            return Ok(());
        }
        let marker = self.marker(req)?;
        ensure_dir(&marker)?;
        let child = std::process::Command::new("sleep")
            .arg("2147483647")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| AgentError::not_installed(format!("cannot run sleep: {e}")))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, child);
        let (started, _) = crate::process::proc_stat(pid)
            .ok_or_else(|| AgentError::generic("the ledger's process exited at once"))?;
        self.append(req, "start")?;
        // Recorded like a service process, so a fence agent ends it too.
        let record = state_file(&self.metadata(), req, "ledger.pid")?;
        fs::write(&record, format!("{pid} {started}\n"))
            .and_then(|()| fs::write(&marker, format!("{} {pid} {started}\n", std::process::id())))
            .map_err(|e| AgentError::permission(format!("{}: {e}", marker.display())))
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let marker = self.marker(req)?;
        match self.running_here(req)? {
            Some(pid) => {
                // The stop line first: if it cannot be written, the stop fails (and the
                // node is fenced) rather than leave a ledger that hides an owner.
                self.append(req, "stop")?;
                self.end(pid, true);
            }
            // Fenced (its process killed) or never started: its interval already
            // ended at its last `alive`.
            None => {
                let pids: Vec<u32> = self
                    .children
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .copied()
                    .collect();
                for pid in pids {
                    if crate::process::proc_stat(pid).is_none_or(|(_, zombie)| zombie) {
                        self.end(pid, false);
                    }
                }
            }
        }
        for file in [marker, state_file(&self.metadata(), req, "ledger.pid")?] {
            if file.exists() {
                fs::remove_file(&file)
                    .map_err(|e| AgentError::permission(format!("{}: {e}", file.display())))?;
            }
        }
        Ok(())
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        if self.running_here(req)?.is_none() {
            return Ok(MonitorState::NotRunning);
        }
        self.append(req, "alive")?;
        Ok(MonitorState::Running)
    }
}

/// An interval during which `node` ran `resource`, in monotonic ns: from its start
/// to its stop, or to its last record when it never stopped (killed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The node.
    pub node: String,
    /// The resource.
    pub resource: String,
    /// Start, ns.
    pub from: u128,
    /// Stop (or last sign of life), ns.
    pub to: u128,
    /// Whether a stop was recorded.
    pub stopped: bool,
}

/// The owner intervals recorded in the ledger at `path`, in start order.
pub fn intervals(path: &Path) -> std::io::Result<Vec<Interval>> {
    let text = fs::read_to_string(path)?;
    let mut open: BTreeMap<(String, String), Interval> = BTreeMap::new();
    let mut done = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [event, node, resource, ns] = parts[..] else {
            continue;
        };
        let Ok(ns) = ns.parse::<u128>() else { continue };
        let key = (node.to_string(), resource.to_string());
        match event {
            "start" => {
                if let Some(prev) = open.remove(&key) {
                    done.push(prev);
                }
                open.insert(
                    key,
                    Interval {
                        node: node.into(),
                        resource: resource.into(),
                        from: ns,
                        to: ns,
                        stopped: false,
                    },
                );
            }
            "alive" => {
                if let Some(i) = open.get_mut(&key) {
                    i.to = ns;
                }
            }
            "stop" => {
                if let Some(mut i) = open.remove(&key) {
                    i.to = ns;
                    i.stopped = true;
                    done.push(i);
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|i| i.from);
    Ok(done)
}

/// Every pair of intervals of the same resource on different nodes that overlap,
/// described in words; empty when the ledger shows one owner at a time.
pub fn overlaps(intervals: &[Interval]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, a) in intervals.iter().enumerate() {
        for b in &intervals[k + 1..] {
            if a.resource == b.resource && a.node != b.node && b.from <= a.to && a.from <= b.to {
                out.push(format!(
                    "{} ran on {} ({}..{} ns) and on {} ({}..{} ns) at once",
                    a.resource, a.node, a.from, a.to, b.node, b.from, b.to
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_owners_are_found_and_handovers_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        fs::write(
            &path,
            "start n1 db-0 10\nalive n1 db-0 20\nstop n1 db-0 30\nstart n2 db-0 31\nalive n2 db-0 50\n",
        )
        .unwrap();
        let iv = intervals(&path).unwrap();
        assert_eq!(iv.len(), 2);
        assert!(overlaps(&iv).is_empty());
        // n2 was killed (no stop) after its last alive at 50; n3 starting at 45 overlaps.
        fs::write(
            &path,
            "start n2 db-0 10\nalive n2 db-0 50\nstart n3 db-0 45\n",
        )
        .unwrap();
        let found = overlaps(&intervals(&path).unwrap());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("n2") && found[0].contains("n3"),
            "{found:?}"
        );
    }

    #[test]
    fn a_fenced_ledger_is_not_running_and_its_late_stop_records_nothing() {
        use baton_plugin_api::{Params, Request};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger");
        let params: Params = [
            ("file".to_string(), file.display().to_string()),
            ("state_dir".to_string(), dir.path().display().to_string()),
        ]
        .into_iter()
        .collect();
        let agent = LedgerAgent::default();
        let req = Request::new(baton_plugin_api::Action::Start, params);
        agent.start(&req).unwrap();
        assert_eq!(agent.monitor(&req).unwrap(), MonitorState::Running);
        // A fence kills the recorded process group.
        let record = state_file(&agent.metadata(), &req, "ledger.pid").unwrap();
        let pid: i32 = fs::read_to_string(&record)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // SAFETY: the process group of the ledger process this test started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while agent.monitor(&req).unwrap() == MonitorState::Running {
            assert!(
                std::time::Instant::now() < deadline,
                "still running after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        agent.stop(&req).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("stop "),
            "a late stop extended the interval: {text}"
        );
        assert!(!record.exists());
    }
}
