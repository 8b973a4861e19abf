//! A minimal baton WebAssembly agent. Its "resource" is a marker file,
//! `{dir}/{resource}.sample-wasm`: start creates it, stop removes it, monitor
//! reads it. The state lives outside the instance, as a real resource does, so
//! it survives the instance being replaced (after a trap, or a restart of
//! baton). The component reaches outside its sandbox only through capabilities
//! it requests in `capabilities` and the administrator grants in the config:
//! here two programs and reading below the directory the `dir` parameter names
//! (`read:{dir}` is expanded per resource and must fall inside a grant).

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.2", world: "resource-agent" });

use baton::agent::capabilities::{self, Command};
use baton::agent::host::{self, LogLevel};
use baton::agent::types::{
    ActionSpec, AgentError, AgentMetadata, ErrorClass, MonitorState, ParamSpec, ParamType,
    Promotion, Request,
};
use exports::baton::agent::agent::Guest;

struct Sample;

fn unimplemented() -> Result<(), AgentError> {
    Err(AgentError {
        class: ErrorClass::Unimplemented,
        reason: "not supported by this agent".into(),
    })
}

fn param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The marker file of this resource.
fn marker(req: &Request) -> String {
    format!(
        "{}/{}.sample-wasm",
        param(req, "dir").unwrap_or("/tmp"),
        req.resource
    )
}

/// Run a granted program; a non-zero exit is an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), AgentError> {
    let out = capabilities::run(&Command {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        timeout_ms: 2_000,
    })
    .map_err(|reason| AgentError {
        class: ErrorClass::Permission,
        reason,
    })?;
    match out.status {
        Some(0) => Ok(()),
        status => Err(AgentError {
            class: ErrorClass::Generic,
            reason: format!(
                "{program} {} failed ({status:?}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
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
            shortdesc: "Manages a marker file (sample WebAssembly agent)".into(),
            longdesc: String::new(),
            parameters: vec![
                ParamSpec {
                    name: "dir".into(),
                    kind: ParamType::Text,
                    options: vec![],
                    required: false,
                    unique: false,
                    default: Some("/tmp".into()),
                    description: "The directory of the marker file".into(),
                },
                ParamSpec {
                    name: "greeting".into(),
                    kind: ParamType::Text,
                    options: vec![],
                    required: false,
                    unique: false,
                    default: Some("hello".into()),
                    description: "Logged at start".into(),
                },
            ],
            actions: vec![
                action("validate", 0),
                action("start", 0),
                action("stop", 0),
                action("monitor", 10_000),
            ],
            capabilities: vec![
                "exec:/usr/bin/touch".into(),
                "exec:/usr/bin/rm".into(),
                "read:{dir}".into(),
            ],
        }
    }

    fn validate(req: Request) -> Result<(), AgentError> {
        match param(&req, "dir") {
            Some(dir) if dir.starts_with('/') => Ok(()),
            _ => Err(AgentError {
                class: ErrorClass::Misconfigured,
                reason: "dir must be an absolute path".into(),
            }),
        }
    }

    fn start(req: Request) -> Result<(), AgentError> {
        Self::validate(req.clone())?;
        host::log(
            LogLevel::Info,
            &format!(
                "{} from {} on {}",
                param(&req, "greeting").unwrap_or("hello"),
                req.resource,
                host::node_name()
            ),
        );
        run("/usr/bin/touch", &[&marker(&req)])
    }

    fn stop(req: Request) -> Result<(), AgentError> {
        run("/usr/bin/rm", &["-f", &marker(&req)])
    }

    fn monitor(req: Request) -> Result<MonitorState, AgentError> {
        match capabilities::read_file(&marker(&req)) {
            Ok(_) => Ok(MonitorState::Running),
            // The host's message ends with the OS error; 2 is "no such file".
            Err(e) if e.ends_with("(os error 2)") => Ok(MonitorState::NotRunning),
            Err(reason) => Err(AgentError {
                class: ErrorClass::Generic,
                reason,
            }),
        }
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
    /// Asked only of agents that implement promote (a replicated database):
    /// this one never has a score.
    fn promotion_score(_: Request) -> Result<Option<Promotion>, AgentError> {
        Ok(None)
    }
}

export!(Sample);
