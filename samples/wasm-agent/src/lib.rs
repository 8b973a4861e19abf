//! A minimal baton WebAssembly agent. It keeps its "resource" (a started flag) in
//! the instance's memory and logs through the host; replace the bodies with real
//! checks. To reach outside the sandbox, request a capability in `capabilities`
//! (e.g. "exec:/usr/bin/myctl") and call `capabilities::run`; the administrator
//! must grant it in the config.

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.1", world: "resource-agent" });

use baton::agent::host::{self, LogLevel};
use baton::agent::types::{
    ActionSpec, AgentError, AgentMetadata, ErrorClass, MonitorState, ParamSpec, ParamType, Request,
};
use exports::baton::agent::agent::Guest;
use std::cell::Cell;

thread_local! { static STARTED: Cell<bool> = const { Cell::new(false) }; }

struct Sample;

fn unimplemented() -> Result<(), AgentError> {
    Err(AgentError {
        class: ErrorClass::Unimplemented,
        reason: "not supported by this agent".into(),
    })
}

impl Guest for Sample {
    fn metadata() -> AgentMetadata {
        let action = |name: &str, interval_ms| ActionSpec {
            action: name.into(),
            timeout_ms: 5_000,
            interval_ms,
            depth: 0,
        };
        AgentMetadata {
            name: "sample-wasm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            shortdesc: "Keeps a flag in memory (sample WebAssembly agent)".into(),
            longdesc: String::new(),
            parameters: vec![ParamSpec {
                name: "greeting".into(),
                kind: ParamType::Text,
                options: vec![],
                required: false,
                unique: false,
                default: Some("hello".into()),
                description: "Logged at start".into(),
            }],
            actions: vec![
                action("validate", 0),
                action("start", 0),
                action("stop", 0),
                action("monitor", 10_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(_: Request) -> Result<(), AgentError> {
        Ok(())
    }

    fn start(req: Request) -> Result<(), AgentError> {
        let greeting = req
            .params
            .iter()
            .find(|(k, _)| k == "greeting")
            .map(|(_, v)| v.as_str())
            .unwrap_or("hello");
        host::log(
            LogLevel::Info,
            &format!("{greeting} from {} on {}", req.resource, host::node_name()),
        );
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
        unimplemented()
    }
    fn demote(_: Request) -> Result<(), AgentError> {
        unimplemented()
    }
    fn notify(_: Request) -> Result<(), AgentError> {
        unimplemented()
    }
    fn reload(_: Request) -> Result<(), AgentError> {
        unimplemented()
    }
    fn recover(_: Request) -> Result<(), AgentError> {
        unimplemented()
    }
}

export!(Sample);
