//! `process`: a long-lived command run as a managed resource.
//!
//! start: runs `/bin/sh -c "exec COMMAND"` in a new process group, records the
//! group leader's PID and kernel start time, and returns once the process is up
//! (and, with `ready_tcp`, accepts connections). monitor: the recorded process still
//! exists, is the same process (start time matches, so a recycled PID is not
//! mistaken for it), is not a zombie, and with `ready_tcp` accepts connections.
//! stop: SIGTERM to the whole process group, SIGKILL to the group after
//! `stop_grace_ms`, and success only once no process of the group is left.

use crate::reading::{ensure_dir, millis, required, state_file, text};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent, service,
};
use std::collections::HashMap;
use std::fs;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

inventory::submit! {
    crate::BuiltinAgent { name: "process", build: || Box::new(ProcessAgent::default()) }
}

/// The `process` agent.
#[derive(Default)]
pub struct ProcessAgent {
    /// Children this agent started and has not reaped yet (so they do not stay zombies
    /// in a long-running host).
    children: Mutex<HashMap<u32, Child>>,
}

/// The recorded identity of a started process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recorded {
    pid: u32,
    start_time: u64,
}

/// The kernel's start time of `pid` (field 22 of /proc/PID/stat) and whether it is a zombie.
pub fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((start_time, *state == "Z" || *state == "X"))
}

fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(-(pgid as i32), 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: sending a signal to a process group we created; a stale group yields ESRCH.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

fn accepts(address: &str, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .collect();
    let mut last = format!("{address} did not resolve to any address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{a} refused or timed out: {e}"),
        }
    }
    Err(last)
}

impl ProcessAgent {
    fn read_record(path: &Path) -> Option<Recorded> {
        let text = fs::read_to_string(path).ok()?;
        let mut it = text.split_whitespace();
        Some(Recorded {
            pid: it.next()?.parse().ok()?,
            start_time: it.next()?.parse().ok()?,
        })
    }

    /// Reap our own child if it exited; true when `pid` is one of ours that is gone.
    fn reap(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = children.get_mut(&pid)
            && let Ok(Some(_)) = child.try_wait()
        {
            children.remove(&pid);
            return true;
        }
        false
    }

    /// Whether the recorded process is the one we started and still runs.
    fn alive(&self, rec: Recorded) -> bool {
        if self.reap(rec.pid) {
            return false;
        }
        matches!(proc_stat(rec.pid), Some((start, zombie)) if start == rec.start_time && !zombie)
    }

    fn state(&self, meta: &Metadata, req: &Request) -> Result<Option<Recorded>, AgentError> {
        let pidfile = state_file(meta, req, "pid")?;
        Ok(Self::read_record(&pidfile).filter(|r| self.alive(*r)))
    }
}

impl ResourceAgent for ProcessAgent {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "process".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Runs a long-lived command as a managed resource".into(),
            longdesc: "Starts COMMAND with /bin/sh in its own process group, waits until it runs \
                       (and accepts TCP connections on ready_tcp when set), checks that the very \
                       same process still runs, and stops the whole process group with SIGTERM, \
                       then SIGKILL after stop_grace_ms. The command sees BATON_NODE and \
                       BATON_RESOURCE in its environment."
                .into(),
            parameters: vec![
                ParamSpec::new(
                    "command",
                    ParamType::String,
                    true,
                    None,
                    "Shell command to run (exec'd by /bin/sh -c)",
                ),
                ParamSpec::new(
                    "cwd",
                    ParamType::String,
                    false,
                    Some("/"),
                    "Working directory of the command",
                ),
                ParamSpec::new(
                    "log_file",
                    ParamType::String,
                    false,
                    Some("/dev/null"),
                    "File that receives the command's stdout and stderr (appended)",
                ),
                ParamSpec::new(
                    "ready_tcp",
                    ParamType::String,
                    false,
                    None,
                    "HOST:PORT that must accept connections before start returns; monitor checks it too",
                ),
                ParamSpec::new(
                    "stop_grace_ms",
                    ParamType::Integer,
                    false,
                    Some("5000"),
                    "Time between SIGTERM and SIGKILL to the process group on stop",
                ),
                ParamSpec::new(
                    "state_dir",
                    ParamType::String,
                    false,
                    Some("/run/baton/process"),
                    "Directory for the PID file (<resource>.pid)",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 20_000),
                ActionSpec::new(Action::Stop, 20_000),
                ActionSpec::monitor(10_000, 5_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let command = required(&meta, req, "command")?;
        if command.trim().is_empty() {
            return Err(AgentError::misconfigured("parameter command is empty"));
        }
        millis(&meta, req, "stop_grace_ms")?;
        if let Some(addr) = text(&meta, req, "ready_tcp")
            && addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            return Err(AgentError::misconfigured(format!(
                "parameter ready_tcp: {addr:?} is not HOST:PORT"
            )));
        }
        if req.depth > 0 {
            let cwd = required(&meta, req, "cwd")?;
            if !Path::new(cwd).is_dir() {
                return Err(AgentError::invalid_args(format!(
                    "cwd {cwd} is not a directory on this node"
                )));
            }
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let began = Instant::now();
        let meta = self.metadata();
        self.validate(req)?;
        if self.state(&meta, req)?.is_some() {
            return Ok(());
        }
        let pidfile = state_file(&meta, req, "pid")?;
        ensure_dir(&pidfile)?;
        let log_path = required(&meta, req, "log_file")?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| AgentError::permission(format!("cannot open log_file {log_path}: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| AgentError::generic(format!("cannot duplicate log_file handle: {e}")))?;
        let command = required(&meta, req, "command")?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(required(&meta, req, "cwd")?)
            .env("BATON_NODE", &req.context.node)
            .env(service::HOST_VAR, service::host_id())
            .env(service::RESOURCE_VAR, &req.context.resource)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| AgentError::not_installed(format!("cannot run /bin/sh: {e}")))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, child);
        let (start_time, _) = proc_stat(pid).ok_or_else(|| {
            AgentError::generic(format!("process {pid} exited at once: {command}"))
        })?;
        let rec = Recorded { pid, start_time };
        fs::write(&pidfile, format!("{pid} {start_time}\n")).map_err(|e| {
            AgentError::permission(format!("cannot write {}: {e}", pidfile.display()))
        })?;

        // Leave a tenth of the host's deadline for the host's own bookkeeping.
        let budget = req.context.timeout().mul_f64(0.9);
        let ready = text(&meta, req, "ready_tcp");
        loop {
            if !self.alive(rec) {
                let _ = fs::remove_file(&pidfile);
                return Err(AgentError::generic(format!(
                    "command exited during start: {command} (see log_file {log_path})"
                )));
            }
            match ready {
                None => return Ok(()),
                Some(addr) => match accepts(addr, Duration::from_millis(200)) {
                    Ok(()) => return Ok(()),
                    Err(why) if began.elapsed() >= budget => {
                        return Err(AgentError::generic(format!(
                            "process {pid} runs but {addr} did not accept connections within {budget:?}: {why}"
                        )));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                },
            }
        }
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let pidfile = state_file(&meta, req, "pid")?;
        let Some(rec) = Self::read_record(&pidfile) else {
            return Ok(());
        };
        if self.alive(rec) || group_alive(rec.pid) {
            let grace =
                millis(&meta, req, "stop_grace_ms")?.min(req.context.timeout().mul_f64(0.5));
            signal_group(rec.pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while group_alive(rec.pid) && Instant::now() < deadline {
                self.reap(rec.pid);
                std::thread::sleep(Duration::from_millis(10));
            }
            if group_alive(rec.pid) {
                signal_group(rec.pid, libc::SIGKILL);
                let deadline = Instant::now() + req.context.timeout().mul_f64(0.4);
                while group_alive(rec.pid) && Instant::now() < deadline {
                    self.reap(rec.pid);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            self.reap(rec.pid);
            if group_alive(rec.pid) && self.alive(rec) {
                return Err(AgentError::generic(format!(
                    "process group {} survived SIGKILL (stuck in the kernel?)",
                    rec.pid
                )));
            }
        }
        fs::remove_file(&pidfile)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                AgentError::permission(format!("cannot remove {}: {e}", pidfile.display()))
            })
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let meta = self.metadata();
        let Some(rec) = self.state(&meta, req)? else {
            return Ok(MonitorState::NotRunning);
        };
        if let Some(addr) = text(&meta, req, "ready_tcp") {
            let timeout = req
                .context
                .timeout()
                .mul_f64(0.5)
                .min(Duration::from_secs(2));
            accepts(addr, timeout).map_err(|why| {
                AgentError::generic(format!(
                    "process {} runs but does not serve {addr}: {why}",
                    rec.pid
                ))
            })?;
        }
        Ok(MonitorState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_plugin_api::Params;

    fn req(action: Action, dir: &Path, command: &str) -> Request {
        let mut params = Params::new();
        params.insert("command".into(), command.into());
        params.insert("state_dir".into(), dir.display().to_string());
        params.insert("stop_grace_ms".into(), "2000".into());
        let mut r = Request::new(action, params);
        r.context.resource = "p1".into();
        r
    }

    #[test]
    fn start_monitor_stop_cycle_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ProcessAgent::default();
        // The command forks a grandchild in the same group: stop must kill both.
        let cmd = "sh -c 'sleep 300 & sleep 300'";
        assert_eq!(
            agent
                .monitor(&req(Action::Monitor, dir.path(), cmd))
                .unwrap(),
            MonitorState::NotRunning
        );
        agent.start(&req(Action::Start, dir.path(), cmd)).unwrap();
        let rec = ProcessAgent::read_record(&dir.path().join("localhost.p1.pid")).unwrap();
        assert_eq!(
            agent
                .monitor(&req(Action::Monitor, dir.path(), cmd))
                .unwrap(),
            MonitorState::Running
        );
        agent.start(&req(Action::Start, dir.path(), cmd)).unwrap();
        assert_eq!(
            ProcessAgent::read_record(&dir.path().join("localhost.p1.pid")).unwrap(),
            rec,
            "double start must not start twice"
        );
        agent.stop(&req(Action::Stop, dir.path(), cmd)).unwrap();
        assert!(!group_alive(rec.pid), "the process group survived stop");
        assert_eq!(
            agent
                .monitor(&req(Action::Monitor, dir.path(), cmd))
                .unwrap(),
            MonitorState::NotRunning
        );
        agent.stop(&req(Action::Stop, dir.path(), cmd)).unwrap();
    }

    #[test]
    fn a_term_ignoring_process_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ProcessAgent::default();
        let cmd = "sh -c 'trap \"\" TERM; while :; do sleep 1; done'";
        let mut start = req(Action::Start, dir.path(), cmd);
        start.params.insert("stop_grace_ms".into(), "100".into());
        agent.start(&start).unwrap();
        let rec = ProcessAgent::read_record(&dir.path().join("localhost.p1.pid")).unwrap();
        let mut stop = req(Action::Stop, dir.path(), cmd);
        stop.params.insert("stop_grace_ms".into(), "100".into());
        agent.stop(&stop).unwrap();
        assert!(!group_alive(rec.pid));
    }

    #[test]
    fn a_command_that_exits_fails_start_and_monitor_sees_it_gone() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ProcessAgent::default();
        let mut r = req(Action::Start, dir.path(), "sh -c 'exit 3'");
        r.params.insert("ready_tcp".into(), "127.0.0.1:9".into());
        let err = agent.start(&r).unwrap_err();
        assert!(err.reason.contains("exited during start"), "{err}");
        assert_eq!(
            agent
                .monitor(&req(Action::Monitor, dir.path(), "x"))
                .unwrap(),
            MonitorState::NotRunning
        );
    }

    #[test]
    fn a_recycled_pid_is_not_taken_for_the_resource() {
        let dir = tempfile::tempdir().unwrap();
        // Our own PID exists, but with another start time than the one recorded.
        fs::write(
            dir.path().join("localhost.p1.pid"),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        let agent = ProcessAgent::default();
        assert_eq!(
            agent
                .monitor(&req(Action::Monitor, dir.path(), "x"))
                .unwrap(),
            MonitorState::NotRunning
        );
    }
}
