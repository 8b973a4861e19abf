//! An agent built against the frozen contract 1.0 (no `recover`). baton's tests load
//! it in a 1.1 host to show that agents built for 1.0 keep loading.
//! It manages a marker "resource" kept in the instance's memory.

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.0", world: "resource-agent" });

use baton::agent::types::{
    ActionSpec, AgentError, AgentMetadata, ErrorClass, MonitorState, Request,
};
use exports::baton::agent::agent::Guest;
use std::cell::Cell;

thread_local! { static STARTED: Cell<bool> = const { Cell::new(false) }; }

struct Legacy;

fn unimplemented(what: &str) -> Result<(), AgentError> {
    Err(AgentError {
        class: ErrorClass::Unimplemented,
        reason: format!("legacy does not implement {what}"),
    })
}

impl Guest for Legacy {
    fn metadata() -> AgentMetadata {
        let action = |a: &str| ActionSpec {
            action: a.into(),
            timeout_ms: 2000,
            interval_ms: if a == "monitor" { 10_000 } else { 0 },
            depth: 0,
        };
        AgentMetadata {
            name: "legacy".into(),
            version: "1.0.0".into(),
            shortdesc: "An agent built for contract 1.0".into(),
            longdesc: String::new(),
            parameters: vec![],
            actions: ["validate", "start", "stop", "monitor"]
                .map(action)
                .to_vec(),
            capabilities: vec![],
        }
    }
    fn validate(_: Request) -> Result<(), AgentError> {
        Ok(())
    }
    fn start(_: Request) -> Result<(), AgentError> {
        STARTED.set(true);
        Ok(())
    }
    fn stop(_: Request) -> Result<(), AgentError> {
        STARTED.set(false);
        Ok(())
    }
    fn monitor(_: Request) -> Result<MonitorState, AgentError> {
        Ok(if STARTED.get() {
            MonitorState::Running
        } else {
            MonitorState::NotRunning
        })
    }
    fn promote(_: Request) -> Result<(), AgentError> {
        unimplemented("promote")
    }
    fn demote(_: Request) -> Result<(), AgentError> {
        unimplemented("demote")
    }
    fn notify(_: Request) -> Result<(), AgentError> {
        unimplemented("notify")
    }
    fn reload(_: Request) -> Result<(), AgentError> {
        unimplemented("reload")
    }
}

export!(Legacy);
