//! The one interface the rest of baton uses to call an agent, whatever its kind.
//!
//! Every backend (built-in, native, WebAssembly, OCF) implements [`Backend`]; the
//! failover engine and the CLI only ever hold an [`AgentHandle`], which checks
//! parameters, refuses actions the agent does not implement, owns the deadline, and
//! maps the result to a [`Recovery`] in one place.

use baton_plugin_api::{
    Action, AgentError, ErrorClass, Metadata, Outcome, Recovery, Request, check_params,
    recovery_for, recovery_for_state, service,
};
use serde::Serialize;
use std::fmt;
use std::time::{Duration, Instant};

/// How an agent is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// Compiled into baton.
    Builtin,
    /// A native library run in a separate runner process.
    Native,
    /// A native library the administrator trusts, run inside the host process.
    NativeTrusted,
    /// A WebAssembly component run in wasmtime's sandbox.
    Wasm,
    /// An OCF shell agent run through the bridge.
    Ocf,
}

impl AgentKind {
    /// The kebab-case name shown in `baton agent list`.
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Builtin => "builtin",
            AgentKind::Native => "native",
            AgentKind::NativeTrusted => "native-trusted",
            AgentKind::Wasm => "wasm",
            AgentKind::Ocf => "ocf",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a call failed, beyond the agent's own class: whether the agent said so or the
/// host had to step in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// The agent returned an error.
    Agent,
    /// The call ran past its deadline; the agent's code was stopped.
    Timeout,
    /// The agent's process died (signal, abort, exit) during the call.
    Crash,
    /// The WebAssembly instance trapped (panic, out of memory, stack overflow).
    Trap,
    /// The agent tried something its capabilities do not allow.
    CapabilityDenied,
    /// The agent answered something that is not a valid reply.
    BadReply,
    /// The native runner crashed too often and is quarantined for a while.
    Quarantined,
    /// The host refused the call before running it (bad parameters, action not implemented).
    Refused,
}

impl FailureCause {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            FailureCause::Agent => "agent",
            FailureCause::Timeout => "timeout",
            FailureCause::Crash => "crash",
            FailureCause::Trap => "trap",
            FailureCause::CapabilityDenied => "capability-denied",
            FailureCause::BadReply => "bad-reply",
            FailureCause::Quarantined => "quarantined",
            FailureCause::Refused => "refused",
        }
    }
}

/// A failed call: the error class (which drives recovery), the reason, and the cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The error class recovery is based on.
    pub class: ErrorClass,
    /// What happened, for people.
    pub reason: String,
    /// Whether the agent reported it or the host detected it.
    pub cause: FailureCause,
}

impl Failure {
    /// A failure the host detected.
    pub fn host(cause: FailureCause, class: ErrorClass, reason: impl Into<String>) -> Failure {
        Failure {
            class,
            reason: reason.into(),
            cause,
        }
    }

    /// The contract-level error this failure amounts to.
    pub fn as_agent_error(&self) -> AgentError {
        AgentError::new(self.class, self.reason.clone())
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Failure {
        Failure {
            class: e.class,
            reason: e.reason,
            cause: FailureCause::Agent,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.class, self.cause.name(), self.reason)
    }
}

/// What every kind of agent implements. `call` must return by the request's
/// deadline (`req.context.timeout_ms`) and must stop the agent's code when it
/// runs over, where the kind allows it.
pub trait Backend: Send + Sync {
    /// How the agent is loaded.
    fn kind(&self) -> AgentKind;
    /// The agent's meta-data (read once, at load).
    fn metadata(&self) -> &Metadata;
    /// Run one request.
    fn call(&self, req: &Request) -> Result<Outcome, Failure>;
    /// Run one request on the calling thread, for a caller that supervises the
    /// deadline itself and can abandon its thread (the daemon's monitor rounds).
    /// Kinds whose code the host cannot stop (built-in, trusted native) run it
    /// here instead of handing it to a worker, which saves two thread wake-ups;
    /// a call that comes back after its deadline is still a timeout. The others
    /// run it as [`Backend::call`].
    fn call_here(&self, req: &Request) -> Result<Outcome, Failure> {
        self.call(req)
    }
    /// Run several requests (a monitor round's, for resources of this agent)
    /// as [`Backend::call_here`] would, one answer per request in order. A
    /// native runner sends them in one batch.
    fn call_many_here(&self, reqs: &[Request]) -> Vec<Result<Outcome, Failure>> {
        reqs.iter().map(|r| self.call_here(r)).collect()
    }
    /// Free-form facts for `baton agent info` (runner PID, crashes, instances).
    fn health(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// What the agent's host calls reached for so far, granted or not, as
    /// concrete uses (`exec:/usr/bin/touch`); empty for kinds whose
    /// capabilities are not enforced.
    fn capabilities_used(&self) -> Vec<String> {
        Vec::new()
    }
    /// End the process the agent's code runs in, as a crash or an upgrade would
    /// (the next call starts a new one); `false` when the kind has none of its
    /// own (built-in, OCF: a process per call). For the conformance test: a
    /// resource must outlive its agent's process.
    fn restart(&self) -> bool {
        false
    }
}

/// `metadata` of the agent loaded from `origin`, checked
/// ([`Metadata::check`](baton_plugin_api::Metadata::check)): every problem, in one
/// message that names the file.
pub fn usable_metadata(
    metadata: &baton_plugin_api::Metadata,
    origin: &std::path::Path,
) -> Result<(), String> {
    metadata.check().map_err(|problems| {
        format!(
            "{} has unusable meta-data: {}",
            origin.display(),
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// A stop that ran past its deadline leaves the resource's processes to the host:
/// it ends every process tagged with the resource (`plugin_api::service`) and says
/// so in the failure. The stop still counts as failed (addresses, mounts and other
/// state the agent held are not known here).
fn end_overrun_stop(req: &Request, f: &mut Failure) {
    if req.action != Action::Stop || f.cause != FailureCause::Timeout {
        return;
    }
    let host = service::host_id();
    match service::end(&host, Some(&req.context.resource), Duration::ZERO) {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(resource = %req.context.resource, "stop ran past its deadline: killed the resource's {n} processes");
            f.reason
                .push_str(&format!("; the host killed the resource's {n} processes"));
        }
        Err(e) => f.reason.push_str(&format!(
            "; the host could not end the resource's processes: {e}"
        )),
    }
}

/// The result of one call, as status and logs show it.
#[derive(Clone, Debug, Serialize)]
pub struct CallReport {
    /// The agent type.
    pub agent: String,
    /// The resource instance.
    pub resource: String,
    /// The action.
    pub action: Action,
    /// The outcome or the failure.
    pub result: Result<Outcome, Failure>,
    /// What the host should do about it.
    pub recovery: Recovery,
    /// How long the call took.
    #[serde(serialize_with = "as_micros")]
    pub elapsed: Duration,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// An agent ready to be called: any kind behind one handle.
pub struct AgentHandle {
    backend: Box<dyn Backend>,
    source: String,
}

impl AgentHandle {
    /// See [`Backend::restart`].
    pub fn restart(&self) -> bool {
        self.backend.restart()
    }

    /// Wrap a loaded backend; `source` says where it came from (path, store entry).
    pub fn new(backend: Box<dyn Backend>, source: impl Into<String>) -> AgentHandle {
        AgentHandle {
            backend,
            source: source.into(),
        }
    }

    /// The agent's meta-data.
    pub fn metadata(&self) -> &Metadata {
        self.backend.metadata()
    }

    /// How the agent is loaded.
    pub fn kind(&self) -> AgentKind {
        self.backend.kind()
    }

    /// Where the agent came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Backend facts for `baton agent info`.
    pub fn health(&self) -> Vec<(String, String)> {
        self.backend.health()
    }

    /// What the agent's host calls reached for so far ([`Backend::capabilities_used`]).
    pub fn capabilities_used(&self) -> Vec<String> {
        self.backend.capabilities_used()
    }

    /// Run `req`: check the parameters and the action, call the backend under the
    /// request's deadline, and map the result to a recovery.
    pub fn call(&self, req: &Request) -> CallReport {
        let started = Instant::now();
        let span = self.call_span(req);
        let _enter = span.enter();
        let req = &self.with_defaults(req);
        let result = self.precheck(req).and_then(|()| self.backend.call(req));
        self.report(req, result, started)
    }

    /// [`AgentHandle::call`] for several requests (a monitor round's resources
    /// of this agent) on the calling thread where the kind allows it (see
    /// [`Backend::call_here`]; only for a caller that supervises the deadline
    /// and can abandon its thread), one report per request in order; a native
    /// runner gets them in one batch ([`Backend::call_many_here`]). Each
    /// report's `elapsed` is the time from the batch's start to its answer.
    pub fn call_many_here(&self, reqs: Vec<Request>) -> Vec<CallReport> {
        let started = Instant::now();
        let mut passed = Vec::with_capacity(reqs.len());
        let mut refused = Vec::with_capacity(reqs.len());
        for req in reqs {
            let full = self.fill_defaults(req);
            match self.precheck(&full) {
                Ok(()) => {
                    passed.push(full);
                    refused.push(None);
                }
                Err(f) => refused.push(Some((full, f))),
            }
        }
        let mut answers = self.backend.call_many_here(&passed).into_iter();
        let mut next = 0;
        refused
            .into_iter()
            .map(|refusal| {
                let (req, result) = match &refusal {
                    Some((req, f)) => (req, Err(f.clone())),
                    None => {
                        // One entry of `passed` per request that was not refused.
                        next += 1;
                        let answer = answers.next().unwrap_or_else(|| {
                            Err(Failure::host(
                                FailureCause::BadReply,
                                ErrorClass::Generic,
                                "the agent's backend gave no answer for this request",
                            ))
                        });
                        (&passed[next - 1], answer)
                    }
                };
                let span = self.call_span(req);
                let _enter = span.enter();
                self.report(req, result, started)
            })
            .collect()
    }

    /// The span every call's log lines carry.
    fn call_span(&self, req: &Request) -> tracing::Span {
        tracing::debug_span!(
            "agent_call",
            agent = %self.metadata().name,
            resource = %req.context.resource,
            action = %req.action,
            timeout_ms = req.context.timeout_ms,
            kind = %self.kind(),
        )
    }

    /// The report of a call to `req` that began at `started`: a stop that overran
    /// ends the resource's processes, the result maps to a recovery, and the
    /// call is logged.
    fn report(
        &self,
        req: &Request,
        mut result: Result<Outcome, Failure>,
        started: Instant,
    ) -> CallReport {
        if let Err(f) = &mut result {
            end_overrun_stop(req, f);
        }
        let recovery = match &result {
            Ok(outcome) => outcome.state().map_or(Recovery::None, recovery_for_state),
            Err(f) => recovery_for(req.action, &f.as_agent_error()),
        };
        let elapsed_us = started.elapsed().as_micros() as u64;
        match &result {
            Ok(outcome) => tracing::debug!(elapsed_us, %outcome, "agent call done"),
            Err(f) => {
                tracing::info!(elapsed_us, failure = %f, recovery = %recovery, "agent call failed")
            }
        }
        CallReport {
            agent: self.metadata().name.clone(),
            resource: req.context.resource.clone(),
            action: req.action,
            result,
            recovery,
            elapsed: started.elapsed(),
        }
    }

    /// `req` with every parameter it does not set at its meta-data default, for
    /// every kind but OCF: an OCF agent applies its own defaults (`OCF_RESKEY_x`
    /// unset means "use the default"), as Pacemaker leaves them to it.
    fn with_defaults<'a>(&self, req: &'a Request) -> std::borrow::Cow<'a, Request> {
        if self.missing_defaults(req).next().is_none() {
            return std::borrow::Cow::Borrowed(req);
        }
        std::borrow::Cow::Owned(self.fill_defaults(req.clone()))
    }

    /// `req` with its missing defaults filled in (see `with_defaults`).
    fn fill_defaults(&self, mut req: Request) -> Request {
        let missing: Vec<(String, String)> = self
            .missing_defaults(&req)
            .map(|p| (p.name.clone(), p.default.clone().unwrap_or_default()))
            .collect();
        req.params.extend(missing);
        req
    }

    /// The parameters with a default that `req` does not set (none for OCF).
    fn missing_defaults<'a>(
        &'a self,
        req: &'a Request,
    ) -> impl Iterator<Item = &'a baton_plugin_api::ParamSpec> + 'a {
        let ocf = self.kind() == AgentKind::Ocf;
        self.metadata()
            .parameters
            .iter()
            .filter(move |p| !ocf && p.default.is_some() && !req.params.contains_key(&p.name))
    }

    fn precheck(&self, req: &Request) -> Result<(), Failure> {
        let meta = self.metadata();
        if req.action == Action::MetaData {
            return Ok(());
        }
        if !req.action.is_required() && !meta.implements(req.action) {
            return Err(Failure::host(
                FailureCause::Refused,
                ErrorClass::Unimplemented,
                format!("agent {} does not implement {}", meta.name, req.action),
            ));
        }
        if let Err(problems) = check_params(meta, &req.params) {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(Failure::host(
                FailureCause::Refused,
                ErrorClass::Misconfigured,
                text.join("; "),
            ));
        }
        if req.context.timeout_ms == 0 {
            return Err(Failure::host(
                FailureCause::Refused,
                ErrorClass::Misconfigured,
                "the call's timeout is 0 ms; give a timeout of at least 1 ms",
            ));
        }
        Ok(())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Run `f` (an in-process agent's call) on this thread; an answer that comes
/// after `req`'s deadline is reported as a timeout, as from a worker.
pub fn run_here(
    req: &Request,
    what: &str,
    f: impl FnOnce() -> Result<Outcome, AgentError>,
) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let result = f();
    if started.elapsed() > req.context.timeout() {
        return Err(Failure::host(
            FailureCause::Timeout,
            ErrorClass::Generic,
            format!(
                "{} of {what} ran past its {} ms deadline (it answered after {} ms)",
                req.action,
                req.context.timeout_ms,
                started.elapsed().as_millis()
            ),
        ));
    }
    result.map_err(Failure::from)
}

/// Worker threads for code the host cannot stop from outside (built-in agents,
/// trusted native libraries): each call runs on an idle worker and the caller
/// waits at most the deadline.
///
/// Rationale: a thread cannot be killed safely, so a call that overruns leaves
/// its worker behind (it finishes the call in the background and then exits) and
/// the caller gets its timeout failure on time. Only agents the administrator
/// trusts run this way, and they are expected to honour `context.timeout_ms`.
/// Reusing idle workers keeps a call to a few microseconds instead of a thread
/// spawn each.
pub struct WorkerPool {
    name: String,
    idle: std::sync::Mutex<Vec<Worker>>,
}

/// An idle worker: where to send its next job, its thread id, and whether it is
/// placed on one CPU (see `cpu.rs`).
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
    tid: libc::pid_t,
    pinned: bool,
}

impl WorkerPool {
    /// Idle workers kept for reuse.
    const MAX_IDLE: usize = 16;

    /// A pool whose threads are named `agent-NAME`.
    pub fn new(name: &str) -> WorkerPool {
        WorkerPool {
            name: name.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn spawn(&self) -> Option<Worker> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("agent-{}", self.name))
            .spawn(move || {
                let _ = tid_tx.send(crate::agent::cpu::thread_id());
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .ok()?;
        Some(Worker {
            jobs: tx,
            tid: tid_rx.recv().ok()?,
            pinned: false,
        })
    }

    /// Run `f` on a worker; `None` when it did not finish within `timeout`. With
    /// `pin`, the worker runs on the caller's CPU (a `monitor`; see `cpu.rs`).
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        pin: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let mut worker = loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut worker = match idle {
                Some(w) => w,
                None => self.spawn()?,
            };
            if pin {
                crate::agent::cpu::follow_caller(worker.tid);
            } else if worker.pinned {
                crate::agent::cpu::release(worker.tid);
            }
            worker.pinned = pin;
            match worker.jobs.send(job) {
                Ok(()) => break worker,
                // That worker is gone; take the job back and try another.
                Err(std::sync::mpsc::SendError(back)) => job = back,
            }
        };
        let result = rx.recv_timeout(timeout).ok();
        if result.is_some() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < Self::MAX_IDLE {
                idle.push(worker);
            }
        } else if worker.pinned {
            // Left behind with its call: not confined to one CPU.
            crate::agent::cpu::release(worker.tid);
            worker.pinned = false;
        }
        result
    }
}
