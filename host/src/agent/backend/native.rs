//! Native agent libraries: out of process in a supervised runner (the default), or
//! in-process when the administrator marks the library trusted.

use crate::agent::host::{AgentKind, Backend, Failure, FailureCause, WorkerPool};
use crate::agent::runner::{MAX_FRAME, PROTOCOL, RunnerMessage, write_frame};
use baton_agent_abi::NativeLibrary;
use baton_plugin_api::process::{describe_status, signal_group};
use baton_plugin_api::{Action, ErrorClass, Metadata, Outcome, Request, service};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits and restart policy of a runner.
#[derive(Clone, Debug)]
pub struct RunnerPolicy {
    /// The `baton` executable that provides `agent-runner`.
    pub runner_exe: PathBuf,
    /// Address-space limit of the runner process (RLIMIT_AS), in MiB; 0 for none.
    pub memory_limit_mib: u64,
    /// How long the runner may take to load the library and say hello.
    pub load_timeout: Duration,
    /// First restart delay after a crash; doubles per consecutive crash.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// Crashes within `crash_window` that quarantine the library.
    pub quarantine_after: usize,
    /// The window crashes are counted in.
    pub crash_window: Duration,
    /// How long a quarantined library stays refused.
    pub quarantine_for: Duration,
    /// Whether the runner serves a long-lived process (the daemon), where a
    /// quarantine lasts until its time is up or the daemon restarts; a one-shot
    /// command loads the library afresh next time.
    pub long_lived: bool,
    /// How many runner processes may serve one agent type at once. Its resources
    /// share them: a call takes a free runner, so one resource's slow call holds
    /// up another's only when every runner is busy.
    pub runners: usize,
}

impl RunnerPolicy {
    /// The defaults, running `runner_exe agent-runner`.
    pub fn new(runner_exe: PathBuf) -> RunnerPolicy {
        RunnerPolicy {
            runner_exe,
            memory_limit_mib: 1024,
            load_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            quarantine_after: 5,
            crash_window: Duration::from_secs(60),
            quarantine_for: Duration::from_secs(600),
            long_lived: false,
            runners: 4,
        }
    }
}

/// The last lines a runner wrote to stderr, for the message when it dies, and
/// what a backtrace after them would push out of those: the line of a Rust
/// allocation failure, and a panic's location and message (a library built
/// with `panic = "abort"` dies of it).
#[derive(Default)]
struct StderrLines {
    last: VecDeque<String>,
    allocation_failure: Option<String>,
    panic: Option<String>,
    /// The panic's message is the line after its location.
    panic_message_next: bool,
}

impl StderrLines {
    fn push(&mut self, line: String) {
        if line.contains("memory allocation of") {
            self.allocation_failure = Some(line.clone());
        }
        if self.panic_message_next {
            self.panic_message_next = false;
            if let Some(p) = &mut self.panic {
                p.push_str(": ");
                p.push_str(&line);
            }
        }
        if let Some(at) = line.find("panicked at") {
            self.panic = Some(line[at..].trim_end_matches(':').to_string());
            self.panic_message_next = true;
        }
        if self.last.len() == STDERR_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }
}

type StderrTail = Arc<Mutex<StderrLines>>;

/// How many of a runner's last stderr lines are kept.
const STDERR_LINES: usize = 8;

struct RunnerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr_tail: StderrTail,
    /// The thread that reads stderr (done once the runner and its group are gone).
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// Bytes read from the runner that do not make a whole frame yet.
    pending: Vec<u8>,
    /// Whether the runner is placed on one CPU (for a monitor; see `cpu.rs`).
    pinned: bool,
}

impl RunnerProcess {
    fn spawn(
        policy: &RunnerPolicy,
        library: &Path,
        agent: &str,
    ) -> Result<(RunnerProcess, Box<Metadata>), String> {
        let mut cmd = Command::new(&policy.runner_exe);
        cmd.arg("agent-runner")
            .arg(library)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(service::HOST_VAR, service::host_id())
            .process_group(0);
        let limit = policy.memory_limit_mib;
        if limit > 0 {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    // The soft limit only: it stops a runaway allocation in the
                    // agent's code, and a server the agent starts detached (as
                    // another user) can lift it again (`service::start_detached`).
                    let bytes = limit.saturating_mul(1 << 20) as libc::rlim_t;
                    let rl = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start the agent runner {}: {e}",
                policy.runner_exe.display()
            )
        })?;
        let stdin = child.stdin.take().ok_or("runner has no stdin")?;
        let stdout = child.stdout.take().ok_or("runner has no stdout")?;
        let stderr_tail = StderrTail::default();
        let stderr_reader = child.stderr.take().map(|stderr| {
            let agent = agent.to_owned();
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    tracing::info!(target: "baton::agent", agent = %agent, "{line}");
                    let line: String = line.chars().take(300).collect();
                    tail.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        });
        let mut proc = RunnerProcess {
            child,
            stdin,
            stdout,
            stderr_tail,
            stderr_reader,
            pending: Vec::new(),
            pinned: false,
        };
        let hello = proc.receive(policy.load_timeout);
        match hello {
            Ok(RunnerMessage::Hello {
                protocol, metadata, ..
            }) if protocol == PROTOCOL => Ok((proc, metadata)),
            Ok(RunnerMessage::Hello { protocol, .. }) => {
                proc.kill();
                Err(format!(
                    "the agent runner speaks protocol {protocol}, this host {PROTOCOL}; install matching baton binaries"
                ))
            }
            Ok(RunnerMessage::LoadFailed { message }) => {
                proc.kill();
                Err(message)
            }
            Ok(RunnerMessage::Reply(_)) => {
                proc.kill();
                Err("the agent runner answered before it was asked".into())
            }
            Err(e) => {
                let why = proc.kill();
                Err(format!(
                    "the agent runner failed while loading {}: {e}{why}",
                    library.display()
                ))
            }
        }
    }

    /// Read one frame on the calling thread, waiting at most `timeout`.
    ///
    /// Rationale: reading here (poll, then read) instead of in a reader thread saves a
    /// thread hand-off on every call, which was most of a native call's cost.
    fn receive(&mut self, timeout: Duration) -> Result<RunnerMessage, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.take_frame()? {
                return serde_json::from_slice(&frame)
                    .map_err(|e| format!("garbled frame from the runner: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {} ms", timeout.as_millis()));
            }
            let mut pfd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for a descriptor this struct owns.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("waiting for the runner failed: {e}"));
            }
            if ready == 0 {
                continue;
            }
            let mut buf = [0u8; 16 << 10];
            match self.stdout.read(&mut buf) {
                Ok(0) => return Err("the runner closed its channel".into()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from the runner failed: {e}")),
            }
        }
    }

    /// A whole frame from the bytes read so far, if there is one.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Some(header) = self.pending.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "the runner sent a frame of {len} bytes, over the {MAX_FRAME}-byte limit"
            ));
        }
        if self.pending.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.pending[4..4 + len].to_vec();
        self.pending.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Kill the runner's process group and reap it; returns how it ended, in words.
    fn kill(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                signal_group(self.child.id(), libc::SIGKILL);
                self.child.wait().ok()
            }
        };
        // Anything the agent left in its group goes too.
        signal_group(self.child.id(), libc::SIGKILL);
        status
            .map(|s| format!(" (runner {})", describe_status(s)))
            .unwrap_or_default()
    }

    /// Why a runner that died did: its exit, and what its last stderr lines
    /// tell (an allocation that failed at the memory limit is named as such).
    fn death(&mut self, memory_limit_mib: u64) -> Option<String> {
        let status = self.ended()?;
        // The reader drains the dead runner's pipe (its group is killed, so the
        // pipe closes); its last lines are read once it is done, within a bound.
        let until = Instant::now() + Duration::from_millis(500);
        while self
            .stderr_reader
            .as_ref()
            .is_some_and(|r| !r.is_finished())
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let lines = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = lines.last.iter().map(String::as_str).collect();
        Some(
            if let Some(failure) = lines
                .allocation_failure
                .as_ref()
                .filter(|_| memory_limit_mib > 0)
            {
                format!(
                    "{status}: an allocation failed at its memory limit {memory_limit_mib} MiB \
                 ([agents.native] memory_limit_mib); agent output: {failure}"
                )
            } else if let Some(panic) = lines.panic.as_ref().filter(|_| status.contains("SIGABRT"))
            {
                // A panic kills the runner only with panic = "abort".
                format!("{status}: the agent {panic}")
            } else if tail.is_empty() {
                status
            } else {
                format!("{status}; agent output: {}", tail.join(" | "))
            },
        )
    }

    /// The runner's exit, if it already ended.
    fn ended(&mut self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                signal_group(self.child.id(), libc::SIGKILL);
                return Some(describe_status(s));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct Supervision {
    process: Option<RunnerProcess>,
    crashes: VecDeque<Instant>,
    consecutive: u32,
    restart_at: Option<Instant>,
    quarantined_until: Option<Instant>,
    /// The last failure of the runner: a crash, or a timeout that killed it.
    last_crash: Option<String>,
    starts: u64,
}

/// A native agent in supervised runner processes: up to `policy.runners` of
/// them, started as calls need them, each supervised on its own (crashes,
/// backoff, quarantine).
pub struct RunnerBackend {
    library: PathBuf,
    metadata: Metadata,
    policy: RunnerPolicy,
    slots: Vec<Mutex<Supervision>>,
}

impl Supervision {
    fn new(process: Option<RunnerProcess>) -> Supervision {
        Supervision {
            starts: u64::from(process.is_some()),
            process,
            crashes: VecDeque::new(),
            consecutive: 0,
            restart_at: None,
            quarantined_until: None,
            last_crash: None,
        }
    }
}

impl RunnerBackend {
    /// Start a runner for `library`, read its meta-data, and keep the runner for calls.
    pub fn load(library: &Path, policy: RunnerPolicy) -> Result<RunnerBackend, String> {
        let name = library
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (process, metadata) = RunnerProcess::spawn(&policy, library, &name)?;
        crate::agent::host::usable_metadata(&metadata, library)?;
        let mut slots = vec![Mutex::new(Supervision::new(Some(process)))];
        slots.extend((1..policy.runners.max(1)).map(|_| Mutex::new(Supervision::new(None))));
        Ok(RunnerBackend {
            library: library.to_owned(),
            metadata: *metadata,
            policy,
            slots,
        })
    }

    /// A runner for one call: the first free one (a slot without a process gets
    /// one started), or, when all are busy, the first to come free before
    /// `deadline`.
    fn take_slot(&self, deadline: Instant) -> Option<std::sync::MutexGuard<'_, Supervision>> {
        loop {
            for slot in &self.slots {
                match slot.try_lock() {
                    Ok(guard) => return Some(guard),
                    Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => {}
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn record_crash(&self, st: &mut Supervision, what: String) {
        let now = Instant::now();
        st.crashes.push_back(now);
        while st
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.crash_window)
        {
            st.crashes.pop_front();
        }
        st.consecutive += 1;
        let backoff = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << st.consecutive.saturating_sub(1).min(16))
            .min(self.policy.backoff_max);
        st.restart_at = Some(now + backoff);
        if st.crashes.len() >= self.policy.quarantine_after {
            st.quarantined_until = Some(now + self.policy.quarantine_for);
            tracing::error!(agent = %self.metadata.name, crashes = st.crashes.len(), "native agent quarantined");
        }
        tracing::warn!(agent = %self.metadata.name, "native agent runner failed: {what}");
        st.last_crash = Some(what);
    }

    /// A runner for `action` in this slot: the one running, or a new one
    /// (after the backoff). A quarantined library is refused, except for a
    /// stop: what a resource of that type started can always be stopped.
    fn ensure_running(
        &self,
        st: &mut Supervision,
        deadline: Instant,
        action: Action,
    ) -> Result<(), Failure> {
        if let Some(until) = st.quarantined_until {
            if Instant::now() < until && action != Action::Stop {
                return Err(Failure::host(
                    FailureCause::Quarantined,
                    ErrorClass::Generic,
                    format!(
                        "native agent {} is quarantined for {} s more after its runner crashed {} times \
                         in {} s (last: {}); {}",
                        self.metadata.name,
                        (until - Instant::now()).as_secs(),
                        st.crashes.len(),
                        self.policy.crash_window.as_secs(),
                        st.last_crash.as_deref().unwrap_or("unknown"),
                        if self.policy.long_lived {
                            "install a fixed build with `baton agent install`, then restart this node's \
                             daemon, or wait"
                        } else {
                            "fix the library; the next baton command loads it afresh"
                        }
                    ),
                ));
            }
            if Instant::now() >= until {
                st.quarantined_until = None;
                st.crashes.clear();
            }
        }
        if st.process.is_some() {
            return Ok(());
        }
        if let Some(at) = st.restart_at {
            if at > deadline {
                return Err(Failure::host(
                    FailureCause::Crash,
                    ErrorClass::Generic,
                    format!(
                        "native agent {} is restarting after its runner failed ({}); next start in {} ms",
                        self.metadata.name,
                        st.last_crash.as_deref().unwrap_or("unknown"),
                        at.saturating_duration_since(Instant::now()).as_millis()
                    ),
                ));
            }
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let mut policy = self.policy.clone();
        policy.load_timeout = policy
            .load_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match RunnerProcess::spawn(&policy, &self.library, &self.metadata.name) {
            Ok((process, _)) => {
                st.process = Some(process);
                st.starts += 1;
                Ok(())
            }
            Err(e) => {
                self.record_crash(st, format!("restart failed: {e}"));
                Err(Failure::host(FailureCause::Crash, ErrorClass::Generic, e))
            }
        }
    }

    /// Send as many of `reqs` as fit in one write (at least the first) to one
    /// runner and read their answers in order, pushing one per request answered
    /// onto `answers`: all that were sent, or up to the first that failed the
    /// runner (timed out, crashed), after which the runner is gone and the rest
    /// are left for the caller to send again, to a new one.
    ///
    /// Each request has its own deadline, from when the runner could start it
    /// (the previous answer's arrival), as if it had been sent alone.
    ///
    /// Rationale: one write, one wake-up of the runner and one of this thread per
    /// batch instead of per call; the runner answers one request after another
    /// either way.
    fn pipeline(&self, reqs: &[Request], answers: &mut Vec<Result<Outcome, Failure>>) {
        let Some(first) = reqs.first() else {
            return;
        };
        let timeout = first.context.timeout();
        let Some(mut st) = self.take_slot(Instant::now() + timeout) else {
            answers.push(Err(Failure::host(
                FailureCause::Timeout,
                ErrorClass::Generic,
                format!(
                    "{} of native agent {}: all {} of its runners stayed busy for the call's {} ms",
                    first.action,
                    self.metadata.name,
                    self.slots.len(),
                    timeout.as_millis()
                ),
            )));
            return;
        };
        if let Err(f) = self.ensure_running(&mut st, Instant::now() + timeout, first.action) {
            answers.push(Err(f));
            return;
        }
        // A runner that died while idle was killed from outside (a guardian
        // fencing its node's process groups, the OOM killer): no call of the
        // agent's failed, so it is replaced before this one is sent instead of
        // failing it.
        if let Some(mut dead) = st
            .process
            .take_if(|p| p.child.try_wait().is_ok_and(|s| s.is_some()))
        {
            tracing::warn!(
                agent = %self.metadata.name,
                "a runner of native agent {} died while idle{}; starting another",
                self.metadata.name,
                dead.kill()
            );
            if let Err(f) = self.ensure_running(&mut st, Instant::now() + timeout, first.action) {
                answers.push(Err(f));
                return;
            }
        }
        let (frames, sent) = match encode_batch(reqs) {
            Ok(batch) => batch,
            Err(f) => {
                answers.push(Err(f));
                return;
            }
        };
        let Some(process) = st.process.as_mut() else {
            answers.push(Err(Failure::host(
                FailureCause::Crash,
                ErrorClass::Generic,
                "runner not available",
            )));
            return;
        };
        let pin = reqs[..sent].iter().all(|r| r.action == Action::Monitor);
        if pin {
            crate::agent::cpu::follow_caller(process.child.id() as libc::pid_t);
        } else if process.pinned {
            crate::agent::cpu::release(process.child.id() as libc::pid_t);
        }
        process.pinned = pin;
        let written = process
            .stdin
            .write_all(&frames)
            .and_then(|()| process.stdin.flush())
            .map_err(|e| format!("cannot write to the runner: {e}"));
        let mut began = Instant::now();
        let mut answered = false;
        for req in &reqs[..sent] {
            let deadline = began + req.context.timeout();
            let answer = written
                .clone()
                .and_then(|()| process.receive(deadline.saturating_duration_since(Instant::now())));
            began = Instant::now();
            match answer {
                Ok(RunnerMessage::Reply(reply)) => {
                    answered = true;
                    answers.push(reply.map_err(Failure::from));
                }
                other => {
                    if answered {
                        st.consecutive = 0;
                    }
                    answers.push(Err(self.runner_failed(&mut st, req, deadline, other)));
                    return;
                }
            }
        }
        st.consecutive = 0;
    }

    /// The failure of `req` when its runner did not answer it properly; the
    /// runner is killed (or found dead) and the crash recorded.
    fn runner_failed(
        &self,
        st: &mut Supervision,
        req: &Request,
        deadline: Instant,
        answer: Result<RunnerMessage, String>,
    ) -> Failure {
        let Some(mut process) = st.process.take() else {
            return Failure::host(
                FailureCause::Crash,
                ErrorClass::Generic,
                "runner not available",
            );
        };
        let (cause, what) = match answer {
            Ok(_) => (
                FailureCause::BadReply,
                format!("the runner sent an unexpected message{}", process.kill()),
            ),
            Err(e) if Instant::now() >= deadline && e.starts_with("no answer") => (
                FailureCause::Timeout,
                format!(
                    "{} of native agent {} ran past its {} ms deadline; its runner's process group was killed{}",
                    req.action,
                    self.metadata.name,
                    req.context.timeout_ms,
                    process.kill()
                ),
            ),
            Err(e) => {
                let how = process
                    .death(self.policy.memory_limit_mib)
                    .unwrap_or_else(|| {
                        process.kill();
                        e
                    });
                (
                    FailureCause::Crash,
                    format!(
                        "native agent {} crashed during {}: runner {how}",
                        self.metadata.name, req.action
                    ),
                )
            }
        };
        if cause == FailureCause::Timeout {
            // The call's own failure (the resource's, which the daemon counts):
            // the library did not crash, so no backoff and no quarantine.
            tracing::warn!(agent = %self.metadata.name, "{what}");
            st.last_crash = Some(what.clone());
        } else {
            self.record_crash(st, what.clone());
        }
        Failure::host(cause, ErrorClass::Generic, what)
    }
}

/// The frames of as many of `reqs` as fit in one batch (at least one), and how
/// many that is.
///
/// Rationale: the batch stays well under a pipe's 64 KiB, so the runner never
/// blocks on its answers while this side is still writing requests.
fn encode_batch(reqs: &[Request]) -> Result<(Vec<u8>, usize), Failure> {
    const BATCH_BYTES: usize = 32 << 10;
    let mut frames = Vec::new();
    let mut sent = 0;
    for req in reqs {
        if sent > 0 && frames.len() >= BATCH_BYTES {
            break;
        }
        let json = serde_json::to_vec(req).map_err(|e| {
            Failure::host(
                FailureCause::Refused,
                ErrorClass::Generic,
                format!("cannot encode the request: {e}"),
            )
        })?;
        if sent > 0 && frames.len() + json.len() > BATCH_BYTES {
            break;
        }
        write_frame(&mut frames, &json).map_err(|e| {
            Failure::host(FailureCause::Refused, ErrorClass::Generic, e.to_string())
        })?;
        sent += 1;
    }
    Ok((frames, sent))
}

impl Backend for RunnerBackend {
    fn kind(&self) -> AgentKind {
        AgentKind::Native
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn call(&self, req: &Request) -> Result<Outcome, Failure> {
        let mut answers = Vec::with_capacity(1);
        self.pipeline(std::slice::from_ref(req), &mut answers);
        answers.pop().unwrap_or_else(|| {
            Err(Failure::host(
                FailureCause::Crash,
                ErrorClass::Generic,
                "runner not available",
            ))
        })
    }

    /// Monitor rounds send a service's requests to one runner in one write and
    /// read the answers as they come (see `pipeline`).
    fn call_many_here(&self, reqs: &[Request]) -> Vec<Result<Outcome, Failure>> {
        let mut answers = Vec::with_capacity(reqs.len());
        while answers.len() < reqs.len() {
            self.pipeline(&reqs[answers.len()..], &mut answers);
        }
        answers
    }

    fn restart(&self) -> bool {
        for slot in &self.slots {
            let mut st = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut process) = st.process.take() {
                process.kill();
            }
        }
        true
    }

    fn health(&self) -> Vec<(String, String)> {
        let slots: Vec<_> = self
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let pids: Vec<String> = slots
            .iter()
            .filter_map(|st| st.process.as_ref().map(|p| format!("pid {}", p.child.id())))
            .collect();
        let mut facts = vec![
            ("library".into(), self.library.display().to_string()),
            (
                "runner".into(),
                if pids.is_empty() {
                    "not running".into()
                } else {
                    pids.join(", ")
                },
            ),
            (
                "runner starts".into(),
                slots.iter().map(|st| st.starts).sum::<u64>().to_string(),
            ),
            (
                "crashes in window".into(),
                slots
                    .iter()
                    .map(|st| st.crashes.len())
                    .sum::<usize>()
                    .to_string(),
            ),
        ];
        if let Some(c) = slots.iter().find_map(|st| st.last_crash.as_ref()) {
            facts.push(("last crash".into(), c.clone()));
        }
        if slots
            .iter()
            .any(|st| st.quarantined_until.is_some_and(|u| u > Instant::now()))
        {
            facts.push(("quarantined".into(), "yes".into()));
        }
        facts
    }
}

impl Drop for RunnerBackend {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let st = slot.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = st.process.as_mut() {
                p.kill();
            }
        }
    }
}

/// A trusted native library loaded into the host process. A crash here takes the
/// host down; only for libraries the administrator vouches for.
pub struct TrustedBackend {
    library: Arc<NativeLibrary>,
    workers: WorkerPool,
}

impl TrustedBackend {
    /// Load `path` into this process.
    pub fn load(path: &Path) -> Result<TrustedBackend, String> {
        let library = NativeLibrary::load(path).map_err(|e| e.to_string())?;
        crate::agent::host::usable_metadata(library.metadata(), path)?;
        Ok(TrustedBackend {
            workers: WorkerPool::new(&library.metadata().name),
            library: Arc::new(library),
        })
    }
}

impl Backend for TrustedBackend {
    fn kind(&self) -> AgentKind {
        AgentKind::NativeTrusted
    }

    fn call_here(&self, req: &Request) -> Result<Outcome, Failure> {
        let what = format!("trusted native agent {}", self.metadata().name);
        crate::agent::host::run_here(req, &what, || self.library.call(req))
    }

    fn metadata(&self) -> &Metadata {
        self.library.metadata()
    }

    fn call(&self, req: &Request) -> Result<Outcome, Failure> {
        let lib = Arc::clone(&self.library);
        let owned = req.clone();
        self.workers
            .run(
                req.context.timeout(),
                req.action == Action::Monitor,
                move || lib.call(&owned),
            )
            .ok_or_else(|| {
                Failure::host(
                    FailureCause::Timeout,
                    ErrorClass::Generic,
                    format!(
                        "{} of trusted native agent {} ran past its {} ms deadline (trusted code runs in \
                         the host and cannot be stopped; it keeps running in the background)",
                        req.action,
                        self.metadata().name,
                        req.context.timeout_ms
                    ),
                )
            })?
            .map_err(Failure::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library built with `panic = "abort"` dies of a panic; with
    /// RUST_BACKTRACE=1 a backtrace follows its message, longer than the lines
    /// kept: the location and the message are kept apart.
    #[test]
    fn a_panic_is_kept_whatever_follows_it() {
        let mut lines = StderrLines::default();
        lines.push("thread '<unnamed>' (4242) panicked at src/lib.rs:12:9:".into());
        lines.push("the config file is missing".into());
        lines.push("stack backtrace:".into());
        for i in 0..40 {
            lines.push(format!("  {i}: frame"));
        }
        assert_eq!(
            lines.panic.as_deref(),
            Some("panicked at src/lib.rs:12:9: the config file is missing")
        );
        assert_eq!(lines.last.len(), STDERR_LINES);
        assert_eq!(lines.allocation_failure, None);
    }
}
