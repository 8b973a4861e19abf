//! The baton resource-agent contract.
//!
//! A *resource agent* knows how to start, stop and watch one kind of resource (a
//! virtual IP, a filesystem, a process, a database). baton loads agents four ways —
//! compiled in, as a native library run out of process, as a WebAssembly component
//! and as an existing OCF shell agent — and this crate is what all four have in
//! common: the [`ResourceAgent`] trait, the typed results and errors, the
//! [`Metadata`] an agent describes itself with, the [`Capability`] strings it
//! requests, the [`ContractVersion`] it was built for, and the one place
//! ([`recovery_for`]) where a failure is turned into a recovery decision.
//!
//! The semantics follow the OCF resource-agent API so the existing ClusterLabs agents
//! fit, but results are typed instead of overloaded exit codes: `stop` cannot answer
//! "not running" as an error, and "the parameters are wrong everywhere" is an
//! [`ErrorClass`], not the number 6.
//!
//! [`service`] starts a resource's long-lived process so that it outlives the
//! agent's own process, and finds it again by its tags; [`process`] runs a
//! short-lived program (a product's tool) in a process group of its own,
//! bounded in time and output.
//!
//! Rationale for the shape of this crate: it depends on `serde` (and `libc` on Unix) only. The native ABI
//! (abi_stable), the WIT package (wasmtime) and the host's runtime (threads,
//! processes) all sit on top of it, so an agent author who implements the trait
//! pulls in nothing heavy, and a later change of FFI layer does not touch it.
#![deny(missing_docs)]

mod capability;
mod metadata;
mod outcome;
mod params;
#[cfg(unix)]
pub mod process;
mod recovery;
#[cfg(unix)]
pub mod service;
mod version;

pub use capability::{Capability, CapabilityError, CapabilitySet, Grant};
pub use metadata::{ActionSpec, Metadata, MetadataError, ParamSpec, ParamType};
pub use outcome::{AgentError, ErrorClass, MonitorState, Outcome, Promotion};
pub use params::{ParamProblem, Params, check_params};
pub use recovery::{Recovery, recovery_for, recovery_for_state};
pub use version::{CONTRACT_VERSION, ContractVersion, SUPPORTED_CONTRACTS, VersionError};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// One action of the contract.
///
/// `meta-data`, `validate`, `start`, `stop` and `monitor` are required; the others
/// are optional and an agent that does not implement one answers
/// [`ErrorClass::Unimplemented`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Describe the agent ([`Metadata`]). Must never fail.
    MetaData,
    /// Check the parameters (and, at depth > 0, the local environment).
    Validate,
    /// Bring the resource up; returns only when it is usable. Idempotent.
    Start,
    /// Take the resource down; leaves nothing running. Succeeds when already stopped.
    Stop,
    /// Report the local state of the resource without disturbing it.
    Monitor,
    /// Switch a running resource to the promoted role (optional).
    Promote,
    /// Switch a promoted resource back to the unpromoted role (optional).
    Demote,
    /// Tell a clone instance about an operation on its peers (optional).
    Notify,
    /// Re-read the resource's own configuration without a restart (optional).
    Reload,
    /// Repair a failed resource in place, cheaper than stop + start (optional,
    /// contract 1.1 and later).
    Recover,
}

impl Action {
    /// Every action, in contract order.
    pub const ALL: [Action; 10] = [
        Action::MetaData,
        Action::Validate,
        Action::Start,
        Action::Stop,
        Action::Monitor,
        Action::Promote,
        Action::Demote,
        Action::Notify,
        Action::Reload,
        Action::Recover,
    ];

    /// The action's name as written on the command line and in OCF (`meta-data`,
    /// `start`, ...). `validate` is spelled `validate-all` only by the OCF bridge.
    pub fn name(self) -> &'static str {
        match self {
            Action::MetaData => "meta-data",
            Action::Validate => "validate",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::Promote => "promote",
            Action::Demote => "demote",
            Action::Notify => "notify",
            Action::Reload => "reload",
            Action::Recover => "recover",
        }
    }

    /// Parse an action name; accepts the OCF spelling `validate-all` and the legacy
    /// `status` for `monitor`.
    pub fn parse(name: &str) -> Option<Action> {
        match name {
            "validate-all" => return Some(Action::Validate),
            "status" => return Some(Action::Monitor),
            _ => {}
        }
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether every agent must implement this action.
    pub fn is_required(self) -> bool {
        matches!(
            self,
            Action::MetaData | Action::Validate | Action::Start | Action::Stop | Action::Monitor
        )
    }

    /// The first contract version that has this action.
    pub fn since(self) -> ContractVersion {
        match self {
            Action::Recover => ContractVersion::new(1, 1),
            _ => ContractVersion::new(1, 0),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a `notify` call is about (clones with notifications on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `true` before the operation happens, `false` after it.
    pub pre: bool,
    /// The operation on the peers (`start`, `stop`, `promote` or `demote`).
    pub operation: Option<Action>,
    /// Nodes the operation applies to.
    pub nodes: Vec<String>,
    /// Nodes where the clone is active.
    pub active: Vec<String>,
}

/// One call of an agent: the action, the resource's parameters and the
/// action-specific arguments. The same value travels to every kind of agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The action to run. `meta-data` is not a request; use [`ResourceAgent::metadata`].
    pub action: Action,
    /// The resource's parameters (already checked against the meta-data).
    pub params: Params,
    /// Monitor depth (OCF check level: 0 cheap, 10 local environment, 20 deep).
    #[serde(default)]
    pub depth: u32,
    /// For `monitor`: `true` when this is a probe (a one-shot check at start-up
    /// or after cleanup that finds where the resource already runs).
    #[serde(default)]
    pub probe: bool,
    /// For `notify`: what happened.
    #[serde(default)]
    pub notification: Option<Notification>,
    /// Facts about the call the agent may use (node, resource name, deadline).
    pub context: CallContext,
}

impl Request {
    /// A request for `action` with `params` and a default context.
    pub fn new(action: Action, params: Params) -> Request {
        Request {
            action,
            params,
            depth: 0,
            probe: false,
            notification: None,
            context: CallContext::default(),
        }
    }
}

/// Facts about one call that the host gives the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    /// The name of the node the call runs on.
    pub node: String,
    /// The resource instance's name (unique in the cluster; clones add `:N`).
    pub resource: String,
    /// The time the host gives the call. The host enforces it (kills the agent's
    /// code when it runs over); an agent uses it to bound its own waits.
    pub timeout_ms: u64,
    /// With `start`: the nodes the cluster has confirmed fenced (off, by its
    /// fence agent) since they last left the membership, by name. A lease or a
    /// lock such a node holds is free: it can neither renew nor use it again.
    /// Empty for other actions, without a fence agent, and outside a cluster.
    #[serde(default)]
    pub fenced: Vec<String>,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            node: "localhost".into(),
            resource: "resource".into(),
            timeout_ms: 20_000,
            fenced: Vec::new(),
        }
    }
}

impl CallContext {
    /// [`CallContext::timeout_ms`] as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A resource agent, as an agent author implements it.
///
/// Every method runs synchronously; the host runs it on a thread (built-in and
/// trusted native agents), in a runner process (native agents) or in a sandbox
/// (WebAssembly) and enforces the deadline from outside. Optional actions have
/// default implementations that answer [`ErrorClass::Unimplemented`].
pub trait ResourceAgent: Send + Sync {
    /// Describe the agent. Must not fail and must not depend on parameters.
    fn metadata(&self) -> Metadata;

    /// Check the parameters; at `depth > 0` also the local environment (binaries
    /// installed, directories present).
    fn validate(&self, req: &Request) -> Result<(), AgentError>;

    /// Bring the resource up. Return only when it is usable; succeed when it already runs.
    fn start(&self, req: &Request) -> Result<(), AgentError>;

    /// Take the resource down and leave nothing running. Succeed when already stopped.
    fn stop(&self, req: &Request) -> Result<(), AgentError>;

    /// Report the local state of the resource without disturbing it.
    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError>;

    /// Promote a running instance (optional).
    fn promote(&self, req: &Request) -> Result<(), AgentError> {
        let _ = req;
        Err(AgentError::unimplemented(Action::Promote))
    }

    /// Demote a promoted instance (optional).
    fn demote(&self, req: &Request) -> Result<(), AgentError> {
        let _ = req;
        Err(AgentError::unimplemented(Action::Demote))
    }

    /// Learn about an operation on peer instances (optional).
    fn notify(&self, req: &Request) -> Result<(), AgentError> {
        let _ = req;
        Err(AgentError::unimplemented(Action::Notify))
    }

    /// Re-read the resource's configuration without a restart (optional).
    fn reload(&self, req: &Request) -> Result<(), AgentError> {
        let _ = req;
        Err(AgentError::unimplemented(Action::Reload))
    }

    /// Repair a failed resource in place (optional, contract 1.1).
    fn recover(&self, req: &Request) -> Result<(), AgentError> {
        let _ = req;
        Err(AgentError::unimplemented(Action::Recover))
    }

    /// How much of the data this instance holds (optional, contract 1.2): asked
    /// right after a `monitor` that found the instance active, from agents that
    /// implement `promote`. `None`: no score now (the instance cannot tell), so it
    /// is not promoted unless an operator forces it. See [`Promotion`].
    fn promotion_score(&self, req: &Request) -> Result<Option<Promotion>, AgentError> {
        let _ = req;
        Ok(None)
    }
}

/// Run `req` on `agent`: the single place that turns a [`Request`] into a trait call.
/// Every transport (built-in, native ABI, runner) goes through it.
pub fn dispatch(agent: &dyn ResourceAgent, req: &Request) -> Result<Outcome, AgentError> {
    let done = |r: Result<(), AgentError>| r.map(|()| Outcome::Done);
    match req.action {
        Action::MetaData => Ok(Outcome::Metadata(Box::new(agent.metadata()))),
        Action::Validate => done(agent.validate(req)),
        Action::Start => done(agent.start(req)),
        Action::Stop => done(agent.stop(req)),
        Action::Monitor => {
            let state = agent.monitor(req)?;
            if !state.is_active() {
                return Ok(Outcome::State(state));
            }
            Ok(match agent.promotion_score(req)? {
                Some(promotion) => Outcome::Scored { state, promotion },
                None => Outcome::State(state),
            })
        }
        Action::Promote => done(agent.promote(req)),
        Action::Demote => done(agent.demote(req)),
        Action::Notify => done(agent.notify(req)),
        Action::Reload => done(agent.reload(req)),
        Action::Recover => done(agent.recover(req)),
    }
}
