//! A minimal native baton agent. It manages a marker file: start creates it, stop
//! removes it, monitor reports whether it exists. Replace the three bodies with
//! your product's start/stop/check and keep the shape.

use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::path::Path;

struct Marker;

fn path(req: &Request) -> Result<&Path, AgentError> {
    req.params
        .get("path")
        .map(Path::new)
        .ok_or_else(|| AgentError::misconfigured("parameter path is required"))
}

impl ResourceAgent for Marker {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "sample-native".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Manages a marker file (sample native agent)".into(),
            longdesc: String::new(),
            parameters: vec![ParamSpec {
                name: "path".into(),
                kind: ParamType::String,
                required: true,
                unique: true,
                default: None,
                description: "The marker file".into(),
            }],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 5_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 10_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let p = path(req)?;
        if !p.is_absolute() {
            return Err(AgentError::misconfigured(format!(
                "path {} must be absolute",
                p.display()
            )));
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        self.validate(req)?;
        std::fs::write(path(req)?, b"")
            .map_err(|e| AgentError::generic(format!("cannot create marker: {e}")))
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        match std::fs::remove_file(path(req)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(AgentError::generic(format!("cannot remove marker: {e}")))
            }
            _ => Ok(()),
        }
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        Ok(if path(req)?.exists() {
            MonitorState::Running
        } else {
            MonitorState::NotRunning
        })
    }
}

baton_agent_abi::export_agent!(Marker);
