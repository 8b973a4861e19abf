//! Starting and stopping the server process.

use crate::params::{Install, Settings};
use crate::probe;
use baton_plugin_api::{AgentError, Request, service};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Start `postgres` detached, as the user, and wait until it answers.
pub fn start(req: &Request, settings: &Settings, install: &Install) -> Result<(), AgentError> {
    remove_stale_lock(settings)?;
    let mut cmd = Command::new(install.bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&settings.pgdata)
        .arg("-p")
        .arg(settings.port.to_string())
        .arg("-k")
        .arg(&settings.socket_dir)
        .arg("-c")
        .arg(format!("listen_addresses={}", settings.listen_addresses));
    for option in crate::replication::server_options(req, settings)
        .iter()
        .chain(&settings.options)
    {
        cmd.arg("-c").arg(option);
    }
    cmd.current_dir(&settings.pgdata)
        .uid(install.uid)
        .gid(install.gid)
        .env("HOME", &settings.pgdata)
        .env("USER", &settings.user)
        .env("LOGNAME", &settings.user);
    let pid = service::start_detached(req, &mut cmd, Some(&settings.log_file)).map_err(|e| {
        AgentError::generic(format!(
            "cannot start {}/postgres: {e}",
            install.bindir.display()
        ))
    })?;
    wait_until_ready(req, settings, Some(pid))
}

/// Wait, until the start's deadline less a second, for the server to answer a
/// query; fail early when the postmaster (`pid`, when known) exits.
pub fn wait_until_ready(
    req: &Request,
    settings: &Settings,
    pid: Option<u32>,
) -> Result<(), AgentError> {
    let until = Instant::now() + req.context.timeout().saturating_sub(Duration::from_secs(1));
    loop {
        let last = match probe::check(settings, Duration::from_secs(2), false) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if pid.is_some_and(|p| !service::alive(p)) {
            return Err(AgentError::generic(format!(
                "postgres exited during start; its log {} ends: {}",
                settings.log_file.display(),
                log_tail(settings)
            )));
        }
        if Instant::now() >= until {
            return Err(AgentError::generic(format!(
                "postgres did not answer within the start's {} ms: it {last}",
                req.context.timeout_ms
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fast shutdown (SIGINT to the postmaster); an immediate one (SIGQUIT) once
/// half the stop's time is gone; SIGKILL to the rest of the resource's
/// processes after three quarters. Succeeds when nothing of it runs.
pub fn stop(req: &Request, settings: &Settings) -> Result<(), AgentError> {
    let timeout = req.context.timeout();
    let started = Instant::now();
    if service::processes(req).is_empty() {
        return Ok(());
    }
    let postmaster = postmaster_pid(settings).filter(|p| service::processes(req).contains(p));
    if let Some(pid) = postmaster {
        for (signal, share) in [(libc::SIGINT, 0.5), (libc::SIGQUIT, 0.75)] {
            // SAFETY: kill(2) on the postmaster of this resource (tagged by baton).
            unsafe {
                libc::kill(pid as i32, signal);
            }
            let until = started + timeout.mul_f64(share);
            while Instant::now() < until && !service::processes(req).is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if service::processes(req).is_empty() {
                return Ok(());
            }
        }
    }
    service::stop(req, Duration::ZERO)
        .map(drop)
        .map_err(|e| AgentError::generic(format!("cannot stop postgres: {e}")))
}

/// The postmaster's pid from `postmaster.pid`, if the file is there.
fn postmaster_pid(settings: &Settings) -> Option<u32> {
    std::fs::read_to_string(settings.pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A `postmaster.pid` left by a server that died with its node (on a shared
/// disk, the pid in it means nothing here): removed unless a `postgres` of that
/// pid runs here in this data directory, so PostgreSQL (and pg_rewind's crash
/// recovery) does not refuse to start. The caller has checked that no process
/// of this resource runs.
pub fn remove_stale_lock(settings: &Settings) -> Result<(), AgentError> {
    let lock = settings.pgdata.join("postmaster.pid");
    let Some(pid) = postmaster_pid(settings) else {
        return Ok(());
    };
    // A postmaster works in its data directory: a live `postgres` elsewhere
    // merely got the dead one's pid (another node's server, on a shared machine).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let same_dir = cwd.is_some_and(|c| {
        c == settings.pgdata || std::fs::canonicalize(&settings.pgdata).is_ok_and(|d| c == d)
    });
    if service::alive(pid) && comm.trim() == "postgres" && same_dir {
        return Err(AgentError::generic(format!(
            "a postgres (pid {pid}) not started by this resource holds {}; stop it first",
            settings.pgdata.display()
        )));
    }
    std::fs::remove_file(&lock).map_err(|e| {
        AgentError::generic(format!(
            "cannot remove the stale lock {}: {e}",
            lock.display()
        ))
    })
}

/// The last lines of the server's log, on one line.
fn log_tail(settings: &Settings) -> String {
    let text = std::fs::read_to_string(&settings.log_file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
