//! Agents compiled into baton (crate `baton-agents`, registered with `inventory`).

use crate::agent::host::{AgentKind, Backend, Failure, FailureCause, WorkerPool, run_here};
use baton_agents::BuiltinAgent;
use baton_plugin_api::{Action, ErrorClass, Metadata, Outcome, Request, ResourceAgent, dispatch};
use std::sync::Arc;

/// A compiled-in agent.
pub struct BuiltinBackend {
    agent: Arc<dyn ResourceAgent>,
    metadata: Metadata,
    workers: WorkerPool,
}

impl BuiltinBackend {
    /// Build the registered agent.
    pub fn new(registered: &BuiltinAgent) -> BuiltinBackend {
        let agent: Arc<dyn ResourceAgent> = Arc::from((registered.build)());
        let metadata = agent.metadata();
        let workers = WorkerPool::new(&metadata.name);
        BuiltinBackend {
            agent,
            metadata,
            workers,
        }
    }
}

impl Backend for BuiltinBackend {
    fn kind(&self) -> AgentKind {
        AgentKind::Builtin
    }

    fn call_here(&self, req: &Request) -> Result<Outcome, Failure> {
        let what = format!("built-in agent {}", self.metadata.name);
        run_here(req, &what, || dispatch(self.agent.as_ref(), req))
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn call(&self, req: &Request) -> Result<Outcome, Failure> {
        let agent = Arc::clone(&self.agent);
        let owned = req.clone();
        self.workers
            .run(
                req.context.timeout(),
                req.action == Action::Monitor,
                move || dispatch(agent.as_ref(), &owned),
            )
            .ok_or_else(|| {
                Failure::host(
                    FailureCause::Timeout,
                    ErrorClass::Generic,
                    format!(
                        "{} of built-in agent {} ran past its {} ms deadline",
                        req.action, self.metadata.name, req.context.timeout_ms
                    ),
                )
            })?
            .map_err(Failure::from)
    }
}
