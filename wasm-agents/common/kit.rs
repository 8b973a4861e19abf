//! Helpers every adapter in this workspace uses, included as a module by each
//! (`#[path = "../../common/kit.rs"] mod kit;`) so that each component stays one
//! crate a vendor can copy alone: errors, parameters, the wait for a port, the
//! actions an adapter does not implement. It uses the types `wit_bindgen`
//! generated in the including crate.

use crate::baton::agent::capabilities;
use crate::baton::agent::types::{
    ActionSpec, AgentError, ErrorClass, ParamSpec, ParamType, Request,
};
use std::time::{Duration, Instant};

pub fn error(class: ErrorClass, reason: impl Into<String>) -> AgentError {
    AgentError {
        class,
        reason: reason.into(),
    }
}

/// A parameter's value; one with a default always arrives (the host fills it in).
pub fn param<'a>(req: &'a Request, name: &str) -> &'a str {
    req.params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// An optional text parameter.
pub fn text(name: &str, default: Option<&str>, description: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind: ParamType::Text,
        options: vec![],
        required: false,
        unique: false,
        default: default.map(Into::into),
        description: description.into(),
    }
}

/// The four actions an adapter implements: validate (10 s), start and stop
/// (`start_stop_ms` each), and monitor (`monitor_ms`, every `interval_ms`).
pub fn actions(start_stop_ms: u64, monitor_ms: u64, interval_ms: u64) -> Vec<ActionSpec> {
    let action = |name: &str, timeout_ms, interval_ms| ActionSpec {
        action: name.into(),
        timeout_ms,
        interval_ms,
        depth: 0,
    };
    vec![
        action("validate", 10_000, 0),
        action("start", start_stop_ms, 0),
        action("stop", start_stop_ms, 0),
        action("monitor", monitor_ms, interval_ms),
    ]
}

/// Each of the parameters `names` is an absolute path, else `misconfigured`.
pub fn absolute(req: &Request, names: &[&str]) -> Result<(), AgentError> {
    match names.iter().find(|n| !param(req, n).starts_with('/')) {
        Some(name) => Err(error(
            ErrorClass::Misconfigured,
            format!("parameter {name} must be an absolute path"),
        )),
        None => Ok(()),
    }
}

/// The `port` parameter, or `default`.
pub fn port(req: &Request, default: u16) -> u16 {
    param(req, "port").parse().unwrap_or(default)
}

/// Whether something accepts connections on 127.0.0.1:`port` (capability
/// `net:127.0.0.1:{port}`). A refused capability is `permission`.
pub fn listening(port: u16) -> Result<bool, AgentError> {
    match capabilities::tcp_request(&format!("127.0.0.1:{port}"), &[], 1_000, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("refused") => Ok(false),
        // Not allowed to ask: the grant is missing.
        Err(e) if e.contains("capability denied") => Err(error(ErrorClass::Permission, e)),
        // Anything else (a reset, a timeout) came from something on the port.
        Err(_) => Ok(true),
    }
}

/// Wait until the port is open (`open`) or closed, at most `limit`; whether it
/// got there.
pub fn wait_port(port: u16, open: bool, limit: Duration) -> Result<bool, AgentError> {
    let until = Instant::now() + limit;
    loop {
        if listening(port)? == open {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The class of a failure to run a program: missing is `not-installed`, the
/// rest (a refused capability) `permission`.
pub fn run_failure(e: &str) -> ErrorClass {
    if e.contains("No such file") || e.contains("not found") {
        ErrorClass::NotInstalled
    } else if e.contains("ran past") {
        // It ran, but not within its time: trying again may work.
        ErrorClass::Generic
    } else {
        ErrorClass::Permission
    }
}

/// The answer of an action the adapter does not implement.
pub fn unimplemented() -> Result<(), AgentError> {
    Err(error(
        ErrorClass::Unimplemented,
        "not supported by this adapter",
    ))
}

/// Inside `impl Guest`: the optional actions (promote, demote, notify,
/// reload, recover) as not implemented.
macro_rules! no_optional_actions {
    () => {
        fn promote(_: Request) -> Result<(), AgentError> {
            kit::unimplemented()
        }
        fn demote(_: Request) -> Result<(), AgentError> {
            kit::unimplemented()
        }
        fn notify(_: Request) -> Result<(), AgentError> {
            kit::unimplemented()
        }
        fn reload(_: Request) -> Result<(), AgentError> {
            kit::unimplemented()
        }
        fn recover(_: Request) -> Result<(), AgentError> {
            kit::unimplemented()
        }
    };
}
