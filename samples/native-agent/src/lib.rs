//! A minimal native baton agent. Its resource is a service process: start runs
//! `program` with `args` detached from the agent (so it outlives the agent's own
//! process and no other resource's timeout reaches it), monitor finds it by the
//! tags baton puts on it, stop ends it. Replace the program with your product's
//! server and the checks with real ones (a connection, a query), and keep the shape.

use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent, service,
};
use std::path::Path;
use std::process::Command;

struct Sample;

fn param<'a>(req: &'a Request, name: &str) -> &'a str {
    // Parameters with a default always arrive (the host fills them in).
    req.params.get(name).map(String::as_str).unwrap_or_default()
}

fn text(name: &str, default: Option<&str>, description: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind: ParamType::String,
        required: false,
        unique: false,
        default: default.map(Into::into),
        description: description.into(),
    }
}

impl ResourceAgent for Sample {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "sample-native".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Runs a program as a service (sample native agent)".into(),
            longdesc: String::new(),
            parameters: vec![
                text("program", Some("/bin/sleep"), "The program (absolute path)"),
                text(
                    "args",
                    Some("infinity"),
                    "Its arguments, separated by spaces",
                ),
                text(
                    "log_file",
                    None,
                    "Where its output goes (default: discarded)",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 5_000),
                ActionSpec::new(Action::Stop, 15_000),
                ActionSpec::monitor(5_000, 10_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let program = Path::new(param(req, "program"));
        if !program.is_absolute() {
            return Err(AgentError::misconfigured(format!(
                "program {} must be an absolute path",
                program.display()
            )));
        }
        // Depth 1 checks this node: the program is installed here.
        if req.depth > 0 && !program.is_file() {
            return Err(AgentError::not_installed(format!(
                "{} is not installed on this node",
                program.display()
            )));
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        self.validate(req)?;
        if service::running(req) {
            return Ok(()); // already running: start is idempotent
        }
        let mut cmd = Command::new(param(req, "program"));
        cmd.args(param(req, "args").split_whitespace());
        let log = req.params.get("log_file").map(Path::new);
        service::start_detached(req, &mut cmd, log).map_err(|e| {
            AgentError::generic(format!("cannot start {}: {e}", param(req, "program")))
        })?;
        // Wait until it is usable; a real agent connects to it here.
        match self.monitor(req)? {
            MonitorState::Running => Ok(()),
            state => Err(AgentError::generic(format!("exited at once ({state})"))),
        }
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        // SIGTERM, then SIGKILL after most of the stop's time; succeeds when
        // nothing runs.
        let grace = req.context.timeout().mul_f64(0.6);
        service::stop(req, grace)
            .map(|_| ())
            .map_err(|e| AgentError::generic(format!("cannot stop: {e}")))
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        Ok(if service::running(req) {
            MonitorState::Running
        } else {
            MonitorState::NotRunning
        })
    }
}

baton_agent_abi::export_agent!(Sample);
