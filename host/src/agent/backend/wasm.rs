//! WebAssembly component agents, run by wasmtime in a deny-by-default sandbox.
//!
//! One [`WasmRuntime`] (engine, epoch ticker, one linker per supported contract)
//! serves every component. Each resource gets its own instance (its own `Store`),
//! so agents may keep state between calls and resources do not share memory. Every
//! call gets an epoch deadline from the request's timeout; memory, instances and
//! tables are bounded; a trapped instance is dropped and rebuilt on the next call.
//! Host imports check the [`CapabilitySet`] (requested ∩ granted) on every use.

use crate::agent::host::{AgentKind, Backend, Failure, FailureCause};
use baton_plugin_api::process;
use baton_plugin_api::{
    Action, ActionSpec, AgentError, Capability, CapabilitySet, ContractVersion, ErrorClass, Grant,
    Metadata, MonitorState, Outcome, ParamSpec, ParamType, Promotion, Request, service,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod v1_0 {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/v1.0",
        world: "resource-agent",
        imports: { default: trappable },
    });
}

mod v1_1 {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/v1.1",
        world: "resource-agent",
        imports: { default: trappable },
    });
}

mod v1_2 {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/v1.2",
        world: "resource-agent",
        imports: { default: trappable },
    });
}

/// How many compiled components the by-path cache keeps (the newest).
const CACHE_KEPT: usize = 8;

/// Remove all but the newest [`CACHE_KEPT`] compiled components from `dir`:
/// each build of an agent under development is a new content.
fn prune_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(CACHE_KEPT) {
        let _ = std::fs::remove_file(path);
    }
}

/// The WASI clock interface whose subscriptions (sleeps, poll timeouts) are
/// bounded by the call's deadline; a component of any 0.2 version of WASI
/// links to it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The guest's monotonic clock: nanoseconds since its store was made (the host
/// keeps the origin, to turn an instant the guest names into a wait).
struct GuestClock(Instant);

impl wasmtime_wasi::HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A wake-up at an instant: the pollable behind a bounded sleep.
struct WakeAt(tokio::time::Instant);

impl wasmtime_wasi::p2::Pollable for WakeAt {
    fn ready<'a, 'b>(
        &'a mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(tokio::time::sleep_until(self.0))
    }
}

/// Replace WASI's clock subscriptions with ones that wake at the call's
/// deadline at the latest: a sleep in the agent (or a poll with a timeout) is
/// guest waiting, cut at the deadline like guest code; the epoch deadline then
/// traps the guest as soon as it runs again.
fn bound_sleeps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    fn subscribe(
        mut store: wasmtime::StoreContextMut<'_, HostState>,
        asked: Duration,
    ) -> wasmtime::Result<(wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>,)> {
        let state = store.data_mut();
        let left = state.remaining();
        if asked > left {
            state.host_timeout = Some(format!(
                "the call's deadline passed while the agent slept (it asked for {} ms, {} ms were left)",
                asked.as_millis(),
                left.as_millis()
            ));
        }
        let at = tokio::time::Instant::now() + asked.min(left);
        let wake = state.table.push(WakeAt(at))?;
        Ok((wasmtime_wasi::p2::subscribe(&mut state.table, wake)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store, (nanos,): (u64,)| {
        subscribe(store, Duration::from_nanos(nanos))
    })?;
    clock.func_wrap("subscribe-instant", |store, (when,): (u64,)| {
        let now = wasmtime_wasi::HostMonotonicClock::now(&GuestClock(store.data().clock_origin));
        subscribe(store, Duration::from_nanos(when.saturating_sub(now)))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// How often the epoch ticks; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The guest's stdout/stderr are kept in memory up to this size, then the
/// instance is recycled.
const OUTPUT_LIMIT: usize = 256 << 10;

/// Sandbox limits for every instance.
#[derive(Clone, Debug)]
pub struct WasmLimits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Wasm stack per call.
    pub stack_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory_bytes: 64 << 20,
            stack_bytes: 512 << 10,
        }
    }
}

/// The per-instance state host imports see.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    caps: Arc<CapabilitySet>,
    node: String,
    agent: String,
    /// The resource instance this store serves (its `run` children are tagged so).
    resource: String,
    deadline: Instant,
    /// Capability refusals during the current call.
    denials: Vec<String>,
    /// Set when a host call hit the call's deadline.
    host_timeout: Option<String>,
    /// Where the guest's monotonic clock starts.
    clock_origin: Instant,
    /// What the agent's host calls reached for (shared by its instances).
    used: Used,
}

/// The capabilities an agent's host calls reached for, granted or not, each as
/// the concrete use (`exec:/usr/bin/touch`, `read:/srv/db/marker`).
type Used = Arc<Mutex<std::collections::BTreeSet<String>>>;

/// How many distinct uses are kept.
const USED_KEPT: usize = 256;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Note a use, for `agent test`'s report; bounded, since a long-lived
    /// daemon's agents may read ever new paths.
    fn used(&self, what: String) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.len() < USED_KEPT {
            used.insert(what);
        }
    }

    fn deny(&mut self, why: String) -> String {
        tracing::warn!(agent = %self.agent, "{why}");
        self.denials.push(why.clone());
        why
    }

    /// A host call that ran into the call's deadline traps the guest at once.
    fn out_of_time(&mut self, what: &str) -> wasmtime::Error {
        let why = format!("the call's deadline passed inside host call {what}");
        self.host_timeout = Some(why.clone());
        wasmtime::Error::msg(why)
    }

    fn log(&self, level: u8, message: &str) {
        let agent = &self.agent;
        match level {
            0 => tracing::error!(target: "baton::agent", agent = %agent, "{message}"),
            1 => tracing::warn!(target: "baton::agent", agent = %agent, "{message}"),
            2 => tracing::info!(target: "baton::agent", agent = %agent, "{message}"),
            3 => tracing::debug!(target: "baton::agent", agent = %agent, "{message}"),
            _ => tracing::trace!(target: "baton::agent", agent = %agent, "{message}"),
        }
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(Option<i32>, Vec<u8>, Vec<u8>), String>> {
        // A program the agent requested as `spawn:` starts as a detached service
        // process of this resource: `run` returns at once, with no status. One
        // requested both ways (a server that is also its own stop command)
        // starts so only for a call without a deadline (timeout 0).
        if let Ok(user) = self.caps.check_spawn(program)
            && (timeout_ms == 0 || self.caps.check_exec(program).is_err())
        {
            self.used(format!("spawn:{program}"));
            return Ok(self.spawn(program, args, env, user.as_deref()));
        }
        self.used(format!("exec:{program}"));
        let user = match self.caps.check_exec(program) {
            Ok(user) => user,
            Err(why) => return Ok(Err(self.deny(why))),
        };
        let remaining = self.remaining();
        let limit = Duration::from_millis(u64::from(timeout_ms)).min(remaining);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().cloned())
            .env(service::HOST_VAR, service::host_id())
            .env(service::RESOURCE_VAR, &self.resource);
        if let Err(why) = process::run_as(&mut cmd, user.as_deref()) {
            return Ok(Err(format!("cannot run {program}: {why}")));
        }
        match process::run(cmd, limit, 1 << 20) {
            Ok(f) if f.timed_out && limit == remaining => {
                Err(self.out_of_time(&format!("run({program})")))
            }
            Ok(f) if f.timed_out => Ok(Err(format!(
                "{program} ran past its {timeout_ms} ms timeout and was killed"
            ))),
            Ok(f) => Ok(Ok((f.status.and_then(|s| s.code()), f.stdout, f.stderr))),
            Err(e) => Ok(Err(format!("cannot run {program}: {e}"))),
        }
    }

    /// Start `program` detached, as the resource's service process (see
    /// `plugin_api::service::start_detached`): own process group, no output,
    /// tagged with the resource, as the grant's user.
    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        user: Option<&str>,
    ) -> Result<(Option<i32>, Vec<u8>, Vec<u8>), String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().cloned());
        process::run_as(&mut cmd, user).map_err(|why| format!("cannot start {program}: {why}"))?;
        let mut req = Request::new(Action::Start, Default::default());
        req.context.resource.clone_from(&self.resource);
        service::start_detached(&req, &mut cmd, None)
            .map(|_| (None, Vec::new(), Vec::new()))
            .map_err(|e| format!("cannot start {program}: {e}"))
    }

    fn tcp_request(
        &mut self,
        address: &str,
        payload: &[u8],
        timeout_ms: u32,
        max_reply: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        self.used(format!("net:{address}"));
        if let Err(why) = self.caps.check_connect(address) {
            return Ok(Err(self.deny(why)));
        }
        let remaining = self.remaining();
        let limit = Duration::from_millis(u64::from(timeout_ms))
            .min(remaining)
            .max(Duration::from_millis(1));
        // Which step failed, for the message: a timeout names the step and the limit.
        let mut step = "connecting to";
        let result = (|| -> std::io::Result<Vec<u8>> {
            let addr = address
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
            let mut stream = TcpStream::connect_timeout(&addr, limit)?;
            stream.set_read_timeout(Some(limit))?;
            stream.set_write_timeout(Some(limit))?;
            step = "sending to";
            stream.write_all(payload)?;
            let _ = stream.shutdown(std::net::Shutdown::Write);
            step = "waiting for the reply of";
            let mut reply = Vec::new();
            stream.take(u64::from(max_reply)).read_to_end(&mut reply)?;
            Ok(reply)
        })();
        match result {
            Err(_) if self.remaining().is_zero() => {
                Err(self.out_of_time(&format!("tcp-request({address})")))
            }
            Err(e) if is_timeout(&e) => Ok(Err(format!(
                "timeout after {} ms {step} {address}",
                limit.as_millis()
            ))),
            Err(e) => Ok(Err(format!("{address}: {e}"))),
            Ok(reply) => Ok(Ok(reply)),
        }
    }

    fn read_file(&mut self, path: &str) -> wasmtime::Result<Result<Vec<u8>, String>> {
        self.used(format!("read:{path}"));
        if let Err(why) = self.caps.check_read(path) {
            return Ok(Err(self.deny(why)));
        }
        // Resolve symlinks and check again, so a link cannot lead out of the granted directory.
        let real = match std::fs::canonicalize(path) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("{path}: {e}"))),
        };
        if let Err(why) = self.caps.check_read(&real.to_string_lossy()) {
            return Ok(Err(self.deny(why)));
        }
        Ok(std::fs::read(&real).map_err(|e| format!("{path}: {e}")))
    }
}

/// Whether an I/O error is a socket timeout (a connect that timed out, or a read
/// or write past its timeout, which Linux reports as "would block").
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Whether `bytes` are a core WebAssembly module (version 1) rather than a
/// component (the component model's layer 1 header).
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A WIT version's `agent-error`, converted to the contract's.
trait IntoContract {
    fn into_contract(self) -> AgentError;
}

fn done<E: IntoContract>(
    r: wasmtime::Result<Result<(), E>>,
) -> wasmtime::Result<Result<Outcome, AgentError>> {
    r.map(|r| {
        r.map(|()| Outcome::Done)
            .map_err(IntoContract::into_contract)
    })
}

fn werr(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// Host imports and type conversions for one WIT version. The generated types of
/// each version are distinct Rust types with the same names, so one macro body
/// serves every version.
macro_rules! contract_version {
    ($v:ident) => {
        impl $v::baton::agent::types::Host for HostState {}

        impl $v::baton::agent::host::Host for HostState {
            fn log(
                &mut self,
                level: $v::baton::agent::host::LogLevel,
                message: String,
            ) -> wasmtime::Result<()> {
                use $v::baton::agent::host::LogLevel as L;
                let n = match level {
                    L::Error => 0,
                    L::Warn => 1,
                    L::Info => 2,
                    L::Debug => 3,
                    L::Trace => 4,
                };
                HostState::log(self, n, &message);
                Ok(())
            }

            fn node_name(&mut self) -> wasmtime::Result<String> {
                Ok(self.node.clone())
            }
        }

        impl $v::baton::agent::capabilities::Host for HostState {
            fn run(
                &mut self,
                cmd: $v::baton::agent::capabilities::Command,
            ) -> wasmtime::Result<Result<$v::baton::agent::capabilities::CommandOutput, String>>
            {
                Ok(
                    HostState::run(self, &cmd.program, &cmd.args, &cmd.env, cmd.timeout_ms)?.map(
                        |(status, stdout, stderr)| $v::baton::agent::capabilities::CommandOutput {
                            status,
                            stdout,
                            stderr,
                        },
                    ),
                )
            }

            fn tcp_request(
                &mut self,
                address: String,
                payload: Vec<u8>,
                timeout_ms: u32,
                max_reply: u32,
            ) -> wasmtime::Result<Result<Vec<u8>, String>> {
                HostState::tcp_request(self, &address, &payload, timeout_ms, max_reply)
            }

            fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, String>> {
                HostState::read_file(self, &path)
            }
        }

        impl IntoContract for $v::baton::agent::types::AgentError {
            fn into_contract(self) -> AgentError {
                use $v::baton::agent::types::ErrorClass as C;
                let class = match self.class {
                    C::Generic => ErrorClass::Generic,
                    C::InvalidArgs => ErrorClass::InvalidArgs,
                    C::Unimplemented => ErrorClass::Unimplemented,
                    C::Permission => ErrorClass::Permission,
                    C::NotInstalled => ErrorClass::NotInstalled,
                    C::Misconfigured => ErrorClass::Misconfigured,
                };
                AgentError::new(class, self.reason)
            }
        }

        impl $v::baton::agent::types::MonitorState {
            fn into_contract(self) -> MonitorState {
                use $v::baton::agent::types::MonitorState as S;
                match self {
                    S::Running => MonitorState::Running,
                    S::NotRunning => MonitorState::NotRunning,
                    S::Degraded => MonitorState::Degraded,
                    S::Promoted => MonitorState::Promoted,
                    S::FailedPromoted => MonitorState::FailedPromoted,
                    S::DegradedPromoted => MonitorState::DegradedPromoted,
                }
            }
        }

        impl $v::baton::agent::types::AgentMetadata {
            fn into_contract(self, contract: ContractVersion) -> Result<Metadata, String> {
                use $v::baton::agent::types::ParamType as T;
                let mut actions = Vec::new();
                for a in self.actions {
                    let action = Action::parse(&a.action)
                        .ok_or_else(|| format!("actions: unknown action {:?}", a.action))?;
                    actions.push(ActionSpec {
                        action,
                        timeout_ms: a.timeout_ms,
                        interval_ms: a.interval_ms,
                        depth: a.depth,
                    });
                }
                let mut capabilities = Vec::new();
                for c in self.capabilities {
                    capabilities.push(
                        c.parse::<Capability>()
                            .map_err(|e| format!("capabilities: {e}"))?,
                    );
                }
                Ok(Metadata {
                    name: self.name,
                    version: self.version,
                    contract,
                    shortdesc: self.shortdesc,
                    longdesc: self.longdesc,
                    parameters: self
                        .parameters
                        .into_iter()
                        .map(|p| ParamSpec {
                            name: p.name,
                            kind: match p.kind {
                                T::Text => ParamType::String,
                                T::Integer => ParamType::Integer,
                                T::Boolean => ParamType::Boolean,
                                T::Select => ParamType::Select(p.options),
                            },
                            required: p.required,
                            unique: p.unique,
                            default: p.default,
                            description: p.description,
                        })
                        .collect(),
                    actions,
                    capabilities,
                })
            }
        }

        impl From<&Request> for $v::baton::agent::types::Request {
            fn from(r: &Request) -> Self {
                $v::baton::agent::types::Request {
                    params: r
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    node: r.context.node.clone(),
                    resource: r.context.resource.clone(),
                    timeout_ms: r.context.timeout_ms,
                    depth: r.depth,
                    probe: r.probe,
                    notification: r.notification.as_ref().map(|n| {
                        $v::baton::agent::types::Notification {
                            pre: n.pre,
                            operation: n.operation.map(|a| a.name().to_string()),
                            nodes: n.nodes.clone(),
                            active: n.active.clone(),
                        }
                    }),
                }
            }
        }
    };
}

contract_version!(v1_0);
contract_version!(v1_1);
contract_version!(v1_2);

/// Calls into one instance, by contract version.
enum Instance {
    V1_0(v1_0::ResourceAgent),
    V1_1(v1_1::ResourceAgent),
    V1_2(v1_2::ResourceAgent),
}

/// A component ready to instantiate, by contract version.
#[derive(Clone)]
enum Prepared {
    V1_0(v1_0::ResourceAgentPre<HostState>),
    V1_1(v1_1::ResourceAgentPre<HostState>),
    V1_2(v1_2::ResourceAgentPre<HostState>),
}

/// The engine and linkers shared by every WebAssembly agent in a process.
pub struct WasmRuntime {
    engine: Engine,
    linker_1_0: Linker<HostState>,
    linker_1_1: Linker<HostState>,
    linker_1_2: Linker<HostState>,
    limits: WasmLimits,
}

impl WasmRuntime {
    /// Build the engine (with epoch interruption and a ticker thread) and the linkers.
    pub fn new(limits: WasmLimits) -> anyhow::Result<Arc<WasmRuntime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(limits.stack_bytes);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(werr)?;
        let mut linker_1_0 = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker_1_0).map_err(werr)?;
        bound_sleeps(&mut linker_1_0).map_err(werr)?;
        v1_0::ResourceAgent::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker_1_0, |s| s)
            .map_err(werr)?;
        let mut linker_1_1 = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker_1_1).map_err(werr)?;
        bound_sleeps(&mut linker_1_1).map_err(werr)?;
        v1_1::ResourceAgent::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker_1_1, |s| s)
            .map_err(werr)?;
        let mut linker_1_2 = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker_1_2).map_err(werr)?;
        bound_sleeps(&mut linker_1_2).map_err(werr)?;
        v1_2::ResourceAgent::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker_1_2, |s| s)
            .map_err(werr)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(WasmRuntime {
            engine,
            linker_1_0,
            linker_1_1,
            linker_1_2,
            limits,
        }))
    }

    /// Compile component bytes (validates them). This is slow; it happens at install
    /// time or when a vendor tests a file directly, never on the failover path.
    pub fn compile(&self, bytes: &[u8], origin: &Path) -> Result<Component, String> {
        if is_core_module(bytes) {
            return Err(format!(
                "{} is a core module, not a component (built for wasm32-wasip1?); build it with \
                 `cargo build --target wasm32-wasip2` against plugin-api/wit",
                origin.display()
            ));
        }
        Component::new(&self.engine, bytes).map_err(|e| {
            format!(
                "{} is not a valid WebAssembly component ({}); build it with `cargo build --target \
                 wasm32-wasip2` against plugin-api/wit",
                origin.display(),
                e.to_string().lines().next().unwrap_or("")
            )
        })
    }

    /// [`WasmRuntime::compile`], through a cache of compiled components in
    /// `cache` (files named by the SHA-256 of the component's bytes): a
    /// component given by path is compiled once per content, not on every
    /// command. Any trouble with the cache (unwritable, a file compiled by
    /// another baton) falls back to compiling.
    pub fn compile_cached(
        &self,
        bytes: &[u8],
        origin: &Path,
        cache: Option<&Path>,
    ) -> Result<Component, String> {
        use sha2::Digest;
        let Some(dir) = cache else {
            return self.compile(bytes, origin);
        };
        let file = dir.join(format!(
            "{}.cwasm",
            hex::encode(sha2::Sha256::digest(bytes))
        ));
        // SAFETY: the cache holds only what this function wrote (a directory
        // of this user's), and wasmtime checks that the file was compiled by a
        // compatible engine.
        if let Ok(component) = unsafe { self.deserialize(&file) } {
            return Ok(component);
        }
        // A file that does not compile gets compile's words for why.
        let Ok(compiled) = self.precompile(bytes, origin) else {
            return self.compile(bytes, origin);
        };
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let stored = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, &compiled))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if stored.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return self.compile(bytes, origin);
        }
        prune_cache(dir);
        // SAFETY: as above; written just now.
        unsafe { self.deserialize(&file) }.or_else(|_| self.compile(bytes, origin))
    }

    /// Compile to the engine's native form, for the agent store.
    pub fn precompile(&self, bytes: &[u8], origin: &Path) -> Result<Vec<u8>, String> {
        self.engine
            .precompile_component(bytes)
            .map_err(|e| format!("{}: cannot precompile: {e}", origin.display()))
    }

    /// Load a component precompiled by [`WasmRuntime::precompile`].
    ///
    /// # Safety
    /// `path` must have been written by `precompile` of this baton build and not
    /// modified since; the agent store checks its SHA-256 before calling this.
    pub unsafe fn deserialize(&self, path: &Path) -> Result<Component, String> {
        // SAFETY: forwarded to the caller's contract above.
        unsafe { Component::deserialize_file(&self.engine, path) }.map_err(|e| {
            format!(
                "{}: cannot load the precompiled agent ({e}); reinstall it with `baton agent install`",
                path.display()
            )
        })
    }

    /// Which contract a component targets: read from the version of the
    /// `baton:agent/agent` interface it exports.
    pub fn contract_of(
        &self,
        component: &Component,
        origin: &Path,
    ) -> Result<ContractVersion, String> {
        let ty = component.component_type();
        let exported: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let Some(version) = exported
            .iter()
            .find_map(|n| n.strip_prefix("baton:agent/agent@"))
        else {
            return Err(format!(
                "{} does not export baton:agent/agent (it exports: {}); build it for the WIT world \
                 baton:agent/resource-agent in plugin-api/wit",
                origin.display(),
                if exported.is_empty() {
                    "nothing".into()
                } else {
                    exported.join(", ")
                }
            ));
        };
        let contract = ContractVersion::parse(version).ok_or_else(|| {
            format!(
                "{}: unreadable contract version {version:?}",
                origin.display()
            )
        })?;
        contract
            .check_supported()
            .map_err(|e| format!("{}: {e}", origin.display()))?;
        Ok(contract)
    }

    fn prepare(
        &self,
        component: &Component,
        contract: ContractVersion,
        origin: &Path,
    ) -> Result<Prepared, String> {
        let missing = |e: wasmtime::Error| {
            format!(
                "{}: the component needs imports baton does not provide ({}); agents may import only \
                 baton:agent/host, baton:agent/capabilities and WASI 0.2",
                origin.display(),
                e.to_string().lines().next().unwrap_or("")
            )
        };
        if contract == ContractVersion::new(1, 0) {
            let pre = self
                .linker_1_0
                .instantiate_pre(component)
                .map_err(missing)?;
            Ok(Prepared::V1_0(
                v1_0::ResourceAgentPre::new(pre).map_err(missing)?,
            ))
        } else if contract == ContractVersion::new(1, 1) {
            let pre = self
                .linker_1_1
                .instantiate_pre(component)
                .map_err(missing)?;
            Ok(Prepared::V1_1(
                v1_1::ResourceAgentPre::new(pre).map_err(missing)?,
            ))
        } else {
            let pre = self
                .linker_1_2
                .instantiate_pre(component)
                .map_err(missing)?;
            Ok(Prepared::V1_2(
                v1_2::ResourceAgentPre::new(pre).map_err(missing)?,
            ))
        }
    }

    fn new_store(
        &self,
        caps: Arc<CapabilitySet>,
        node: &str,
        agent: &str,
        output: &MemoryOutputPipe,
    ) -> Store<HostState> {
        let clock_origin = Instant::now();
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .monotonic_clock(GuestClock(clock_origin))
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(32)
            .tables(32)
            .memories(8)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits,
                caps,
                node: node.to_owned(),
                agent: agent.to_owned(),
                resource: String::new(),
                deadline: Instant::now(),
                denials: Vec::new(),
                host_timeout: None,
                clock_origin,
                used: Used::default(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store
    }
}

struct Live {
    store: Store<HostState>,
    instance: Instance,
    output: MemoryOutputPipe,
    output_seen: usize,
}

/// A WebAssembly agent: a prepared component plus one live instance per resource.
pub struct WasmBackend {
    runtime: Arc<WasmRuntime>,
    prepared: Prepared,
    metadata: Metadata,
    caps: Arc<CapabilitySet>,
    node: String,
    instances: Mutex<HashMap<String, Arc<Mutex<Option<Live>>>>>,
    traps: Mutex<u64>,
    used: Used,
}

fn ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

impl WasmBackend {
    /// Prepare `component` (already compiled) and read its meta-data from a
    /// throw-away instance. `granted` are the administrator's grants for this agent.
    pub fn load(
        runtime: Arc<WasmRuntime>,
        component: &Component,
        origin: &Path,
        granted: &[Grant],
        node: &str,
    ) -> Result<WasmBackend, String> {
        let contract = runtime.contract_of(component, origin)?;
        let prepared = runtime.prepare(component, contract, origin)?;
        let mut backend = WasmBackend {
            runtime,
            prepared,
            metadata: Metadata {
                name: origin.display().to_string(),
                version: String::new(),
                contract,
                shortdesc: String::new(),
                longdesc: String::new(),
                parameters: vec![],
                actions: vec![],
                capabilities: vec![],
            },
            caps: Arc::new(CapabilitySet::default()),
            node: node.to_owned(),
            instances: Mutex::new(HashMap::new()),
            traps: Mutex::new(0),
            used: Used::default(),
        };
        let mut live = backend
            .instantiate(Duration::from_secs(10))
            .map_err(|e| format!("{}: {}", origin.display(), e.reason))?;
        live.store
            .set_epoch_deadline(ticks(Duration::from_secs(10)));
        let raw = match &live.instance {
            Instance::V1_0(b) => b
                .baton_agent_agent()
                .call_metadata(&mut live.store)
                .map(|m| m.into_contract(contract)),
            Instance::V1_1(b) => b
                .baton_agent_agent()
                .call_metadata(&mut live.store)
                .map(|m| m.into_contract(contract)),
            Instance::V1_2(b) => b
                .baton_agent_agent()
                .call_metadata(&mut live.store)
                .map(|m| m.into_contract(contract)),
        };
        let metadata = raw
            .map_err(|e| format!("{}: meta-data trapped: {}", origin.display(), e))?
            .map_err(|e| format!("{} has unusable meta-data: {e}", origin.display()))?;
        crate::agent::host::usable_metadata(&metadata, origin)?;
        backend.caps =
            Arc::new(CapabilitySet::new(&metadata.capabilities, granted).for_agent(&metadata.name));
        backend.metadata = metadata;
        Ok(backend)
    }

    /// The capabilities the agent may use (requested and granted).
    pub fn capabilities(&self) -> &CapabilitySet {
        &self.caps
    }

    fn instantiate(&self, timeout: Duration) -> Result<Live, Failure> {
        let output = MemoryOutputPipe::new(OUTPUT_LIMIT);
        let mut store = self.runtime.new_store(
            Arc::clone(&self.caps),
            &self.node,
            &self.metadata.name,
            &output,
        );
        store.set_epoch_deadline(ticks(timeout));
        store.data_mut().deadline = Instant::now() + timeout;
        store.data_mut().used = Arc::clone(&self.used);
        let instance = match &self.prepared {
            Prepared::V1_0(pre) => pre.instantiate(&mut store).map(Instance::V1_0),
            Prepared::V1_1(pre) => pre.instantiate(&mut store).map(Instance::V1_1),
            Prepared::V1_2(pre) => pre.instantiate(&mut store).map(Instance::V1_2),
        }
        .map_err(|e| {
            Failure::host(
                FailureCause::Trap,
                ErrorClass::Generic,
                format!("cannot instantiate: {e}"),
            )
        })?;
        Ok(Live {
            store,
            instance,
            output,
            output_seen: 0,
        })
    }

    fn classify_trap(&self, live: &Live, error: &wasmtime::Error, req: &Request) -> Failure {
        let name = &self.metadata.name;
        if let Some(why) = &live.store.data().host_timeout {
            return Failure::host(
                FailureCause::Timeout,
                ErrorClass::Generic,
                format!("{} of wasm agent {name}: {why}", req.action),
            );
        }
        let tail = String::from_utf8_lossy(&live.output.contents())
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        let text = error
            .chain()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        let (cause, what) = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => (
                FailureCause::Timeout,
                format!(
                    "ran past its {} ms deadline and was interrupted",
                    req.context.timeout_ms
                ),
            ),
            Some(Trap::StackOverflow) => (
                FailureCause::Trap,
                format!(
                    "hit its stack limit ({} KiB): deep or endless recursion",
                    self.runtime.limits.stack_bytes >> 10
                ),
            ),
            Some(Trap::UnreachableCodeReached) => (
                FailureCause::Trap,
                "panicked (unreachable instruction)".to_string(),
            ),
            // Rust and C keep their stack in linear memory: running off its
            // end shows as an access below address 0, not as a stack overflow.
            Some(Trap::MemoryOutOfBounds) => (
                FailureCause::Trap,
                "trapped: out of bounds memory access — in a Rust or C component most likely a \
                 stack overflow (its stack lives in linear memory: 1 MiB unless linked with \
                 `-C link-arg=-zstack-size=BYTES`; deep or endless recursion, or large locals), \
                 else a bad pointer"
                    .to_string(),
            ),
            Some(trap) => (FailureCause::Trap, format!("trapped: {trap}")),
            None if text.contains("growing memory") || text.contains("growing table") => (
                FailureCause::Trap,
                format!(
                    "exceeded its memory limit of {} MiB",
                    self.runtime.limits.memory_bytes >> 20
                ),
            ),
            None => (
                FailureCause::Trap,
                format!("trapped: {}", error.root_cause()),
            ),
        };
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; agent output: {tail}")
        };
        Failure::host(
            cause,
            ErrorClass::Generic,
            format!(
                "{} of wasm agent {name} {what}; the instance was dropped and will be rebuilt{tail}",
                req.action
            ),
        )
    }

    fn log_output(&self, live: &mut Live) {
        let all = live.output.contents();
        if all.len() > live.output_seen {
            for line in String::from_utf8_lossy(&all[live.output_seen..]).lines() {
                tracing::info!(target: "baton::agent", agent = %self.metadata.name, "{line}");
            }
            live.output_seen = all.len();
        }
    }
}

macro_rules! call_export {
    ($bindings:expr, $store:expr, $req:expr, $wreq:expr) => {{
        let a = $bindings.baton_agent_agent();
        match $req.action {
            Action::MetaData => unreachable!("meta-data is answered from the cache"),
            Action::Validate => done(a.call_validate(&mut $store, &$wreq)),
            Action::Start => done(a.call_start(&mut $store, &$wreq)),
            Action::Stop => done(a.call_stop(&mut $store, &$wreq)),
            Action::Monitor => match a.call_monitor(&mut $store, &$wreq) {
                Ok(Ok(s)) => score!(a, $store, $wreq, s.into_contract()),
                Ok(Err(e)) => Ok(Err(e.into_contract())),
                Err(trap) => Err(trap),
            },
            Action::Promote => done(a.call_promote(&mut $store, &$wreq)),
            Action::Demote => done(a.call_demote(&mut $store, &$wreq)),
            Action::Notify => done(a.call_notify(&mut $store, &$wreq)),
            Action::Reload => done(a.call_reload(&mut $store, &$wreq)),
            Action::Recover => recover!(a, $store, $wreq),
        }
    }};
}

impl Backend for WasmBackend {
    fn kind(&self) -> AgentKind {
        AgentKind::Wasm
    }

    fn restart(&self) -> bool {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        true
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn call(&self, req: &Request) -> Result<Outcome, Failure> {
        if req.action == Action::MetaData {
            return Ok(Outcome::Metadata(Box::new(self.metadata.clone())));
        }
        let timeout = req.context.timeout();
        let slot = {
            let mut all = self.instances.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(all.entry(req.context.resource.clone()).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.instantiate(timeout)?);
        }
        let Some(live) = slot.as_mut() else {
            return Err(Failure::host(
                FailureCause::Trap,
                ErrorClass::Generic,
                "no instance",
            ));
        };
        {
            let state = live.store.data_mut();
            state.deadline = Instant::now() + timeout;
            state.resource.clone_from(&req.context.resource);
            // Requests that name parameters are expanded for this call's resource.
            state.caps = if self.caps.templates().is_empty() {
                Arc::clone(&self.caps)
            } else {
                Arc::new(self.caps.for_params(&req.params))
            };
            state.denials.clear();
            state.host_timeout = None;
        }
        live.store.set_epoch_deadline(ticks(timeout));
        let result = match &live.instance {
            Instance::V1_0(b) => {
                let wreq = v1_0::baton::agent::types::Request::from(req);
                macro_rules! recover {
                    ($a:ident, $s:expr, $w:expr) => {
                        Ok(Err(AgentError::unimplemented(Action::Recover)))
                    };
                }
                macro_rules! score {
                    ($a:ident, $s:expr, $w:expr, $state:expr) => {
                        Ok(Ok(Outcome::State($state)))
                    };
                }
                call_export!(b, live.store, req, wreq)
            }
            Instance::V1_1(b) => {
                let wreq = v1_1::baton::agent::types::Request::from(req);
                macro_rules! recover {
                    ($a:ident, $s:expr, $w:expr) => {
                        done($a.call_recover(&mut $s, &$w))
                    };
                }
                macro_rules! score {
                    ($a:ident, $s:expr, $w:expr, $state:expr) => {
                        Ok(Ok(Outcome::State($state)))
                    };
                }
                call_export!(b, live.store, req, wreq)
            }
            Instance::V1_2(b) => {
                let wreq = v1_2::baton::agent::types::Request::from(req);
                macro_rules! recover {
                    ($a:ident, $s:expr, $w:expr) => {
                        done($a.call_recover(&mut $s, &$w))
                    };
                }
                // The score is asked only of an active instance of an agent
                // that can be promoted, as the native dispatch does.
                macro_rules! score {
                    ($a:ident, $s:expr, $w:expr, $state:expr) => {{
                        let state: MonitorState = $state;
                        if !state.is_active() || !self.metadata.implements(Action::Promote) {
                            Ok(Ok(Outcome::State(state)))
                        } else {
                            $a.call_promotion_score(&mut $s, &$w).map(|r| match r {
                                Ok(Some(p)) => Ok(Outcome::Scored {
                                    state,
                                    promotion: Promotion {
                                        generation: p.generation,
                                        position: p.position,
                                        acknowledged: p.acknowledged,
                                    },
                                }),
                                Ok(None) => Ok(Outcome::State(state)),
                                Err(e) => Err(e.into_contract()),
                            })
                        }
                    }};
                }
                call_export!(b, live.store, req, wreq)
            }
        };
        self.log_output(live);
        // A call whose sleep was cut at the deadline returns too late, whatever
        // it returns: it timed out, as if the epoch had trapped it.
        let result = match result {
            Ok(_) if live.store.data().host_timeout.is_some() => {
                Err(wasmtime::Error::msg("the call's deadline passed"))
            }
            r => r,
        };
        match result {
            Ok(Ok(outcome)) => {
                if live.output_seen > OUTPUT_LIMIT / 2 {
                    *slot = None;
                }
                Ok(outcome)
            }
            Ok(Err(agent_error)) => {
                let denials = std::mem::take(&mut live.store.data_mut().denials);
                // A refusal is `misconfigured` (the grant is missing on every node)
                // only when the agent passed it on as its error; an agent that
                // handled it keeps its own error, and the refusal stays a warning
                // in the log.
                if let Some(denied) = denials
                    .iter()
                    .find(|d| agent_error.reason.contains(d.as_str()))
                {
                    // The same grant is missing on every node: a configuration problem.
                    Err(Failure::host(
                        FailureCause::CapabilityDenied,
                        ErrorClass::Misconfigured,
                        format!(
                            "wasm agent {} failed after a refused capability: {denied}{}",
                            self.metadata.name,
                            // The agent passed the refusal on: its text adds nothing
                            // unless it said more.
                            if agent_error.reason == *denied {
                                String::new()
                            } else {
                                format!("; the agent said: {}", agent_error.reason)
                            }
                        ),
                    ))
                } else {
                    Err(agent_error.into())
                }
            }
            Err(trap) => {
                let failure = self.classify_trap(live, &trap, req);
                *slot = None;
                *self.traps.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                Err(failure)
            }
        }
    }

    fn capabilities_used(&self) -> Vec<String> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn health(&self) -> Vec<(String, String)> {
        let live = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        vec![
            ("instances".into(), live.to_string()),
            (
                "traps".into(),
                self.traps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .to_string(),
            ),
            (
                "capabilities usable".into(),
                self.caps
                    .effective()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "capabilities not granted".into(),
                self.caps
                    .not_granted()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]
    }
}
