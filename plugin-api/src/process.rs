//! Running an external program the way an HA host must: in its own process group,
//! with a given input (or none) on stdin, output captured up to a bound, and
//! SIGKILL to the whole group when the deadline passes (after Pacemaker's
//! `child_timeout_callback`). The host's OCF bridge and WebAssembly exec calls
//! use it, and so may an agent that runs its product's tools.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a finished (or killed) program ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit status, when the program was not killed by the deadline.
    pub status: Option<ExitStatus>,
    /// Whether the deadline passed and the group was killed.
    pub timed_out: bool,
    /// Captured standard output (at most the bound).
    pub stdout: Vec<u8>,
    /// Captured standard error (at most the bound).
    pub stderr: Vec<u8>,
    /// Whether output beyond the bound was dropped.
    pub truncated: bool,
    /// Wall time from spawn to end.
    pub elapsed: Duration,
    /// The process group the program ran in (what it left behind is still in it).
    pub pgid: u32,
}

/// Send `signal` to every process in group `pgid`.
pub fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a process group this host created; ESRCH is harmless.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// Say how a process ended, in words (`exit code 3`, `killed by SIGSEGV (11)`).
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by {} ({sig})", signal_name(sig)),
        None => "ended in an unknown way".into(),
    }
}

/// The usual name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Make `cmd` run as `user` (an exec grant's `as USER`; `None` means `nobody`):
/// its uid, its primary group, no supplementary groups, and `HOME`, `USER` and
/// `LOGNAME` set for it. A host that does not run as root cannot switch users: it
/// runs the command as itself when the grant names no user, and refuses one that
/// names another user.
pub fn run_as(cmd: &mut Command, user: Option<&str>) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let name = user.unwrap_or("nobody");
    let entry = lookup_user(name);
    if euid != 0 {
        return match (user, entry) {
            (None, _) => Ok(()),
            (Some(_), Ok((uid, ..))) if uid == euid => Ok(()),
            (Some(u), _) => Err(format!(
                "the grant runs it as {u}, but baton runs as uid {euid}, not root, and cannot switch users"
            )),
        };
    }
    let (uid, gid, home) = entry?;
    cmd.uid(uid)
        .gid(gid)
        .env("HOME", home)
        .env("USER", name)
        .env("LOGNAME", name);
    Ok(())
}

/// A user's uid, primary gid and home directory, from the system's user database.
fn lookup_user(name: &str) -> Result<(u32, u32, String), String> {
    crate::service::user(name)
        .map(|u| (u.uid, u.gid, u.home))
        .ok_or_else(|| {
            format!(
                "user {name} does not exist on this node (named by the exec grant); create it or name another user with `as USER`"
            )
        })
}

/// Run `cmd` in a new process group with stdin closed, capture at most `limit`
/// bytes of each output stream, and kill the group with SIGKILL if it has not exited
/// within `timeout`.
///
/// A program that leaves a daemon behind (which keeps the output pipes open) is
/// fine: after the program itself exits, output is collected for a short grace and
/// the daemon is left alone.
pub fn run(cmd: Command, timeout: Duration, limit: usize) -> std::io::Result<Finished> {
    run_with_input(cmd, None, timeout, limit)
}

/// [`run`], with `input` written to the program's stdin (then closed) on a
/// thread of its own, so a program that does not read it cannot block the
/// caller past the deadline.
pub fn run_with_input(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
    limit: usize,
) -> std::io::Result<Finished> {
    let started = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let (chunks_tx, chunks_rx) = mpsc::channel::<(usize, Option<Vec<u8>>)>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for (index, stream) in streams.into_iter().enumerate() {
        let Some(mut stream) = stream else { continue };
        let tx = chunks_tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((index, Some(buf[..n].to_vec()))).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send((index, None));
        });
    }
    drop(chunks_tx);
    let (exit_tx, exit_rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let mut out = [Vec::new(), Vec::new()];
    let mut truncated = false;
    let mut open = 2;
    let mut keep = |index: usize, data: Vec<u8>, out: &mut [Vec<u8>; 2]| {
        let room = limit.saturating_sub(out[index].len());
        if data.len() > room {
            truncated = true;
        }
        out[index].extend_from_slice(&data[..data.len().min(room)]);
    };
    let deadline = started + timeout;
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    // Wait for the exit while collecting output.
    loop {
        if let Ok(s) = exit_rx.try_recv() {
            status = Some(s?);
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            signal_group(pgid, libc::SIGKILL);
            timed_out = true;
            // SIGKILL is certain to end the leader; collect its status.
            let _ = exit_rx.recv_timeout(Duration::from_secs(5));
            break;
        }
        let left = deadline - now;
        if open > 0 {
            match chunks_rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok((i, Some(data))) => keep(i, data, &mut out),
                Ok((_, None)) => open -= 1,
                Err(_) => {}
            }
        } else if let Ok(s) = exit_rx.recv_timeout(left) {
            status = Some(s?);
            break;
        }
    }
    // Collect what is left; a daemon holding the pipes gets only a short grace.
    let grace = Instant::now() + Duration::from_millis(100);
    while open > 0 {
        match chunks_rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((i, Some(data))) => keep(i, data, &mut out),
            Ok((_, None)) => open -= 1,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = out;
    Ok(Finished {
        status: if timed_out { None } else { status },
        timed_out,
        stdout,
        stderr,
        truncated,
        elapsed: started.elapsed(),
        pgid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn captures_output_and_exit_code() {
        let f = run(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        assert_eq!(f.status.unwrap().code(), Some(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr, b"err\n");
        assert!(!f.timed_out);
    }

    #[test]
    fn kills_the_whole_group_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let f = run(sh(&script), Duration::from_millis(300), 1024).unwrap();
        assert!(f.timed_out);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild got SIGKILL with its group; once reaped by init it is gone.
        // SAFETY: signal 0 only probes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_ne!(
            unsafe { libc::kill(pid, 0) },
            0,
            "the grandchild survived the group kill"
        );
    }

    #[test]
    fn bounds_captured_output() {
        let f = run(
            sh("head -c 100000 /dev/zero"),
            Duration::from_secs(10),
            1000,
        )
        .unwrap();
        assert_eq!(f.stdout.len(), 1000);
        assert!(f.truncated);
    }

    #[test]
    fn input_reaches_the_program_and_one_that_ignores_it_is_still_cut_at_its_deadline() {
        let f = run_with_input(
            sh("cat"),
            Some(b"script\n".to_vec()),
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        assert_eq!(f.stdout, b"script\n");
        // A big input the program never reads: the deadline still holds.
        let started = Instant::now();
        let f = run_with_input(
            sh("sleep 30"),
            Some(vec![b'x'; 1 << 20]),
            Duration::from_millis(300),
            1024,
        )
        .unwrap();
        assert!(f.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_daemon_left_behind_does_not_hold_the_caller() {
        // The daemon keeps stdout open; the call still ends right after the shell exits.
        let f = run(
            sh("echo started; sleep 30 & exit 0"),
            Duration::from_secs(20),
            1024,
        )
        .unwrap();
        signal_group(f.pgid, libc::SIGKILL);
        assert!(!f.timed_out, "the caller waited for the daemon");
        assert_eq!(f.status.unwrap().code(), Some(0));
        assert_eq!(f.stdout, b"started\n");
    }
}
