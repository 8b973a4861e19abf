//! A deliberately badly behaved agent for baton's sandbox tests. Its `mode`
//! parameter picks the misbehaviour that `monitor` shows; `start`/`stop` behave.

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.1", world: "resource-agent" });

use baton::agent::capabilities::{self, Command};
use baton::agent::host;
use baton::agent::types::{
    ActionSpec, AgentError, AgentMetadata, ErrorClass, MonitorState, ParamSpec, ParamType, Request,
};
use exports::baton::agent::agent::Guest;
use std::cell::Cell;

thread_local! { static STARTED: Cell<bool> = const { Cell::new(false) }; }

struct Hostile;

fn mode(req: &Request) -> &str {
    req.params
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.as_str())
        // The host passes the meta-data default; "(none)" would show it did not.
        .unwrap_or("(none)")
}

fn err(reason: String) -> AgentError {
    AgentError {
        class: ErrorClass::Generic,
        reason,
    }
}

impl Guest for Hostile {
    fn metadata() -> AgentMetadata {
        let action = |a: &str, t| ActionSpec {
            action: a.into(),
            timeout_ms: t,
            interval_ms: 0,
            depth: 0,
        };
        AgentMetadata {
            name: "hostile".into(),
            version: "0.1.0".into(),
            shortdesc: "Misbehaves on purpose (sandbox tests)".into(),
            longdesc: String::new(),
            parameters: vec![ParamSpec {
                name: "mode".into(),
                kind: ParamType::Select,
                options: [
                    "ok",
                    "trap",
                    "loop",
                    "membomb",
                    "hang-host",
                    "exec-forbidden",
                    "read-forbidden",
                    "net-forbidden",
                    "net-silent",
                    "net-handled",
                    "stack",
                    "exec-id",
                    "spawn",
                ]
                .map(String::from)
                .to_vec(),
                required: false,
                unique: false,
                default: Some("ok".into()),
                description: "What monitor does".into(),
            }],
            actions: vec![
                action("validate", 1000),
                action("start", 1000),
                action("stop", 1000),
                action("monitor", 1000),
            ],
            capabilities: vec![
                "exec:/bin/sleep".into(),
                "exec:/bin/sh".into(),
                "exec:/usr/bin/id".into(),
                "spawn:/bin/sleep".into(),
                "read:/etc".into(),
                "net:127.0.0.1:47999".into(),
            ],
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
    fn monitor(req: Request) -> Result<MonitorState, AgentError> {
        host::log(
            host::LogLevel::Debug,
            &format!("monitor in mode {}", mode(&req)),
        );
        match mode(&req) {
            "trap" => panic!("hostile agent panics on purpose"),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack" => {
                fn deep(n: u64) -> u64 {
                    if n == 0 {
                        0
                    } else {
                        std::hint::black_box(deep(n - 1)) + 1
                    }
                }
                Ok(if deep(u64::MAX) > 0 {
                    MonitorState::Running
                } else {
                    MonitorState::NotRunning
                })
            }
            "hang-host" => {
                let cmd = Command {
                    program: "/bin/sleep".into(),
                    args: vec!["3600".into()],
                    env: vec![],
                    timeout_ms: 3_600_000,
                };
                capabilities::run(&cmd).map_err(err)?;
                Ok(MonitorState::Running)
            }
            "exec-forbidden" => {
                let cmd = Command {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), "id".into()],
                    env: vec![],
                    timeout_ms: 1000,
                };
                capabilities::run(&cmd).map_err(err)?;
                Ok(MonitorState::Running)
            }
            // Which user a granted program runs as: the answer is the error's reason.
            "exec-id" => {
                let cmd = Command {
                    program: "/usr/bin/id".into(),
                    args: vec!["-u".into()],
                    env: vec![],
                    timeout_ms: 1000,
                };
                let out = capabilities::run(&cmd).map_err(err)?;
                Err(err(format!(
                    "uid {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                )))
            }
            // A service process started detached: run returns at once, no status.
            "spawn" => {
                let cmd = Command {
                    program: "/bin/sleep".into(),
                    args: vec!["600".into()],
                    env: vec![],
                    timeout_ms: 1000,
                };
                match capabilities::run(&cmd).map_err(err)?.status {
                    None => Ok(MonitorState::Running),
                    Some(code) => Err(err(format!("sleep exited with {code}"))),
                }
            }
            "read-forbidden" => {
                capabilities::read_file("/etc/shadow").map_err(err)?;
                Ok(MonitorState::Running)
            }
            "net-forbidden" => {
                capabilities::tcp_request("198.18.0.1:9", b"x", 100, 10).map_err(err)?;
                Ok(MonitorState::Running)
            }
            // A refusal the agent handles: it reports its own error.
            "net-handled" => match capabilities::tcp_request("198.18.0.1:9", b"x", 100, 10) {
                Ok(_) => Ok(MonitorState::Running),
                Err(_) => Err(err("the backend at 198.18.0.1:9 is unreachable".into())),
            },
            // A server that accepts and never answers (the test runs one there).
            "net-silent" => {
                capabilities::tcp_request("127.0.0.1:47999", b"x", 200, 10).map_err(err)?;
                Ok(MonitorState::Running)
            }
            _ => Ok(if STARTED.get() {
                MonitorState::Running
            } else {
                MonitorState::NotRunning
            }),
        }
    }
    fn promote(_: Request) -> Result<(), AgentError> {
        Err(AgentError {
            class: ErrorClass::Unimplemented,
            reason: "no roles".into(),
        })
    }
    fn demote(_: Request) -> Result<(), AgentError> {
        Err(AgentError {
            class: ErrorClass::Unimplemented,
            reason: "no roles".into(),
        })
    }
    fn notify(_: Request) -> Result<(), AgentError> {
        Err(AgentError {
            class: ErrorClass::Unimplemented,
            reason: "no clones".into(),
        })
    }
    fn reload(_: Request) -> Result<(), AgentError> {
        Err(AgentError {
            class: ErrorClass::Unimplemented,
            reason: "nothing to reload".into(),
        })
    }
    fn recover(_: Request) -> Result<(), AgentError> {
        Err(AgentError {
            class: ErrorClass::Unimplemented,
            reason: "no recover".into(),
        })
    }
}

export!(Hostile);
