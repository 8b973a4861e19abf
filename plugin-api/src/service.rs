//! Service processes: starting a resource's long-lived process so that it outlives
//! the agent's own process, and finding it again later.
//!
//! An agent's code runs in a process that comes and goes: a native agent's runner is
//! restarted after a crash or a timeout (and its whole process group is killed), a
//! WebAssembly instance is replaced after a trap, an OCF script is a process per
//! call. A server started as a plain child of that process dies with it, or is
//! killed by the next timeout of *another* resource of the same type. A process
//! started with [`start_detached`] instead:
//!
//! - runs in a process group of its own (its pid), so no other resource's timeout
//!   reaches it;
//! - carries two environment variables, `BATON_HOST` (which baton host started it,
//!   see [`host_id`]) and `BATON_RESOURCE` (the resource instance), that its
//!   children inherit, so the host finds every process of a resource
//!   ([`processes`]): the conformance test looks for what `stop` left behind, a stop
//!   that overruns its deadline ends the resource's processes, and the node's
//!   guardian ends them when the node fences itself;
//! - has stdin closed and its output in a log file you name (or discarded), so it
//!   holds no pipe of the agent's process open;
//! - is reaped when it exits, so a dead server is not mistaken for a live one;
//! - does not inherit the memory limit of a native agent's runner (the server's
//!   own size is its business; the limit guards the agent's code).
//!
//! `monitor` and `stop` then need no pid file: [`running`], [`processes`] and
//! [`stop`] find the resource's processes by their tags ([`running`] checks the
//! pids it already knows first, so a monitor does not scan `/proc` each time). A program that clears its environment (`env
//! -i`, `su -`, `sudo` with its default `env_reset`) loses the tags; start such
//! programs directly, or stop them by their own pid files.
//!
//! ```no_run
//! use baton_plugin_api::{AgentError, MonitorState, Request, service};
//! use std::process::Command;
//! use std::time::Duration;
//!
//! fn start(req: &Request) -> Result<(), AgentError> {
//!     if service::running(req) {
//!         return Ok(()); // already running: start is idempotent
//!     }
//!     let mut cmd = Command::new("/usr/sbin/mydaemon");
//!     cmd.arg("--foreground");
//!     service::start_detached(req, &mut cmd, Some("/var/log/mydaemon.log".as_ref()))
//!         .map_err(|e| AgentError::generic(format!("cannot start mydaemon: {e}")))?;
//!     Ok(())
//! }
//!
//! fn monitor(req: &Request) -> Result<MonitorState, AgentError> {
//!     Ok(if service::running(req) {
//!         MonitorState::Running
//!     } else {
//!         MonitorState::NotRunning
//!     })
//! }
//!
//! fn stop(req: &Request) -> Result<(), AgentError> {
//!     service::stop(req, Duration::from_secs(10))
//!         .map(|_| ())
//!         .map_err(|e| AgentError::generic(format!("cannot stop mydaemon: {e}")))
//! }
//! ```

use crate::Request;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the baton host that started a process.
pub const HOST_VAR: &str = "BATON_HOST";
/// The environment variable naming the resource instance a process belongs to.
pub const RESOURCE_VAR: &str = "BATON_RESOURCE";

/// This host's identity as tagged on the processes it starts: `BATON_HOST` when set
/// (the daemon sets it to its node and state directory, and passes it to agent
/// runners; `baton agent run` sets it to `cli:uidUID`, the same for each run of
/// one user, so one run finds what an earlier one started), else `pid:PID` of
/// this process.
pub fn host_id() -> String {
    std::env::var(HOST_VAR).unwrap_or_else(|_| format!("pid:{}", std::process::id()))
}

/// Start `cmd` as a long-lived process of `req`'s resource, detached from the
/// calling process (see the module documentation). Its standard output and error
/// are appended to `log` when given, else discarded. Returns its pid, which is
/// also its process group.
///
/// Returns as soon as the process exists; wait for it to be usable (its port
/// answers, its socket appears) before `start` returns.
pub fn start_detached(req: &Request, cmd: &mut Command, log: Option<&Path>) -> io::Result<u32> {
    let (out, err) = match log {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            (Stdio::from(file.try_clone()?), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env(HOST_VAR, host_id())
        .env(RESOURCE_VAR, &req.context.resource)
        .process_group(0);
    // SAFETY: setrlimit is async-signal-safe and touches only the child. Best
    // effort: without the privilege to raise it, the limit stays.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_AS, &unlimited);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // spawn can return while the kernel is still setting up the new program
    // (its environment reads empty for that moment): wait until its tags show,
    // so a monitor right after start finds it.
    let tag = format!("{RESOURCE_VAR}={}", req.context.resource).into_bytes();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == tag.as_slice()) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    remember(&req.context.resource, &[pid]);
    // Reap it when it exits; a zombie would look alive to kill(pid, 0).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// An OS user, as [`user`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its home directory.
    pub home: String,
}

/// The OS user `name` from the system's user database (thread-safe), for
/// starting a service as that user (`Command::uid`, `Command::gid`); `None`
/// when there is no such user.
pub fn user(name: &str) -> Option<User> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both live for the call;
    // `found` points at `pwd` or is null; the strings are copied out before
    // `buf` goes.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        );
        if rc != 0 || found.is_null() {
            return None;
        }
        Some(User {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: std::ffi::CStr::from_ptr(pwd.pw_dir)
                .to_string_lossy()
                .into_owned(),
        })
    }
}

/// A process tagged with a baton host and resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    /// Its pid.
    pub pid: u32,
    /// The resource instance it belongs to.
    pub resource: String,
    /// Its command name (`/proc/PID/comm`), for messages.
    pub name: String,
}

/// Pids this process started or found per resource, so [`running`] can check a
/// few pids instead of scanning `/proc`.
static KNOWN: std::sync::Mutex<Option<std::collections::HashMap<String, Vec<u32>>>> =
    std::sync::Mutex::new(None);

fn remember(resource: &str, pids: &[u32]) {
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    let map = known.get_or_insert_with(Default::default);
    if pids.is_empty() {
        map.remove(resource);
    } else {
        map.insert(resource.to_owned(), pids.to_vec());
    }
}

/// Whether `pid` is alive and still carries this host's tag for `resource`.
fn still_tagged(pid: u32, host: &str, resource: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = |var: &str, value: &str| format!("{var}={value}").into_bytes();
    let (h, r) = (want(HOST_VAR, host), want(RESOURCE_VAR, resource));
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    vars.contains(&h.as_slice()) && vars.contains(&r.as_slice()) && alive(pid)
}

/// Whether any process of `req`'s resource runs: [`processes`] made cheap for a
/// `monitor` that runs every few seconds for many resources. It checks the pids
/// it knows (from [`start_detached`] or an earlier scan in this process) and
/// scans `/proc` only when none of them is alive any more.
pub fn running(req: &Request) -> bool {
    let resource = &req.context.resource;
    let host = host_id();
    let known = KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(resource).cloned())
        .unwrap_or_default();
    if known.iter().any(|pid| still_tagged(*pid, &host, resource)) {
        return true;
    }
    let found = processes(req);
    remember(resource, &found);
    !found.is_empty()
}

/// The live processes of `req`'s resource started by this host (with
/// [`start_detached`], or by the host for an OCF agent or a WebAssembly `run`),
/// and their children.
pub fn processes(req: &Request) -> Vec<u32> {
    tagged(&host_id(), Some(&req.context.resource))
        .into_iter()
        .map(|t| t.pid)
        .collect()
}

/// The live processes tagged with host `host` and, when given, resource
/// `resource` (any resource otherwise). Zombies and processes this user may not
/// inspect are left out.
pub fn tagged(host: &str, resource: Option<&str>) -> Vec<Tagged> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut h, mut r) = (None, None);
        for var in environ.split(|b| *b == 0) {
            if let Some(v) = var
                .strip_prefix(HOST_VAR.as_bytes())
                .and_then(|v| v.strip_prefix(b"="))
            {
                h = Some(v);
            } else if let Some(v) = var
                .strip_prefix(RESOURCE_VAR.as_bytes())
                .and_then(|v| v.strip_prefix(b"="))
            {
                r = Some(v);
            }
        }
        let (Some(h), Some(r)) = (h, r) else { continue };
        if h != host.as_bytes() || resource.is_some_and(|want| want.as_bytes() != r) {
            continue;
        }
        if !alive(pid) {
            continue;
        }
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        found.push(Tagged {
            pid,
            resource: String::from_utf8_lossy(r).into_owned(),
            name: name.trim_end().to_owned(),
        });
    }
    found
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) STATE ...": comm may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Stop `req`'s resource's processes: SIGTERM to each, up to `grace` for them to
/// exit, then SIGKILL to what is left. Returns how many processes there were.
/// Succeeds when none were running.
pub fn stop(req: &Request, grace: Duration) -> io::Result<usize> {
    let ended = end(&host_id(), Some(&req.context.resource), grace)?;
    remember(&req.context.resource, &[]);
    Ok(ended)
}

/// [`stop`] for every process tagged with `host` (and `resource` when given): the
/// host uses it when a stop overruns its deadline and when a node fences itself.
pub fn end(host: &str, resource: Option<&str>, grace: Duration) -> io::Result<usize> {
    let first = tagged(host, resource);
    if first.is_empty() {
        return Ok(0);
    }
    let signal_all = |signal: i32| {
        for t in tagged(host, resource) {
            // SAFETY: kill(2) on a process that carries this host's tag.
            unsafe {
                libc::kill(t.pid as i32, signal);
            }
        }
    };
    if !grace.is_zero() {
        signal_all(libc::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until && !tagged(host, resource).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if tagged(host, resource).is_empty() {
            return Ok(first.len());
        }
        if Instant::now() >= until {
            let left: Vec<String> = tagged(host, resource)
                .iter()
                .map(|t| format!("{} ({})", t.pid, t.name))
                .collect();
            return Err(io::Error::other(format!(
                "still running after SIGKILL: {}",
                left.join(", ")
            )));
        }
        signal_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name() {
        let root = user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user("no-such-user-of-baton"), None);
        assert_eq!(user("bad\0name"), None);
    }
    use crate::{Action, Params};

    fn request(resource: &str) -> Request {
        let mut req = Request::new(Action::Start, Params::new());
        req.context.resource = resource.into();
        req
    }

    #[test]
    fn a_detached_process_is_found_by_its_resource_and_stopped() {
        let req = request(&format!("svc-test-{}", std::process::id()));
        let other = request(&format!("svc-other-{}", std::process::id()));
        let pid = start_detached(&req, Command::new("sleep").arg("30"), None).unwrap();
        let other_pid = start_detached(&other, Command::new("sleep").arg("30"), None).unwrap();
        // Its own process group: a kill of the caller's group does not reach it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let pgrp: u32 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pgrp, pid);
        assert_eq!(processes(&req), vec![pid]);
        assert!(running(&req));
        assert_eq!(stop(&req, Duration::from_secs(2)).unwrap(), 1);
        assert!(processes(&req).is_empty());
        assert!(
            !running(&req),
            "the known pid is gone, and a scan finds none"
        );
        assert_eq!(
            processes(&other),
            vec![other_pid],
            "another resource's process"
        );
        assert_eq!(stop(&other, Duration::ZERO).unwrap(), 1);
        assert_eq!(
            stop(&other, Duration::ZERO).unwrap(),
            0,
            "nothing left to stop"
        );
    }
}
