//! The HCL Domino adapter: a baton WebAssembly agent. Its capabilities, each
//! following the resource's parameters:
//!
//! - `spawn:{domino_bin}/server` — `start` runs the Domino server, as the
//!   grant's user (the Notes user), as the resource's service process, with
//!   its `notes.ini` (`server =DATA/notes.ini`);
//! - `exec:{domino_bin}/server` — `server -q`, the documented way to quit it;
//! - `exec:{domino_bin}/nsd` — `nsd -kill`, the documented way to end a server
//!   that does not quit;
//! - `net:127.0.0.1:{port}` — whether the server answers on its NRPC port.
//!
//! `stop` runs `server -q` and waits for the port to close for half the stop's
//! time; then `nsd -kill`. Exercised against scripted stand-ins of `server` and
//! `nsd` (host/tests/fixtures/domino), not Domino; see README.md.

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.1", world: "resource-agent" });

#[macro_use]
#[path = "../../common/kit.rs"]
mod kit;

use baton::agent::capabilities::{self, Command};
use baton::agent::types::{
    AgentError, AgentMetadata, ErrorClass, MonitorState, ParamSpec, ParamType, Request,
};
use exports::baton::agent::agent::Guest;
use kit::{error, param, text};
use std::time::Duration;

struct Domino;

/// Run `{domino_bin}/PROGRAM ARGS`; a program that is not there is
/// `not-installed`, a refused capability `permission`.
fn run(
    req: &Request,
    program: &str,
    args: &[&str],
    timeout_ms: u32,
) -> Result<Option<i32>, AgentError> {
    let path = format!("{}/{program}", param(req, "domino_bin"));
    capabilities::run(&Command {
        program: path.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![(
            "Notes_ExecDirectory".into(),
            param(req, "domino_bin").into(),
        )],
        timeout_ms,
    })
    .map(|out| out.status)
    .map_err(|e| {
        error(
            kit::run_failure(&e),
            format!("{path} {}: {e}", args.join(" ")),
        )
    })
}

impl Guest for Domino {
    fn metadata() -> AgentMetadata {
        AgentMetadata {
            name: "domino".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            shortdesc: "An HCL Domino server".into(),
            longdesc: "Starts the Domino server as the resource's service process, watches \
                       its NRPC port, quits it with server -q and ends it with nsd -kill when \
                       it does not quit. Exercised against stand-ins of server and nsd, not \
                       Domino."
                .into(),
            parameters: vec![
                text(
                    "domino_bin",
                    Some("/opt/hcl/domino/bin"),
                    "Where `server` and `nsd` are",
                ),
                text(
                    "notes_ini",
                    Some("/local/notesdata/notes.ini"),
                    "The server's notes.ini (its data directory beside it)",
                ),
                ParamSpec {
                    kind: ParamType::Integer,
                    ..text("port", Some("1352"), "The server's NRPC port")
                },
            ],
            actions: kit::actions(300_000, 20_000, 15_000),
            capabilities: vec![
                "spawn:{domino_bin}/server".into(),
                "exec:{domino_bin}/server".into(),
                "exec:{domino_bin}/nsd".into(),
                "net:127.0.0.1:{port}".into(),
            ],
        }
    }

    fn validate(req: Request) -> Result<(), AgentError> {
        kit::absolute(&req, &["domino_bin", "notes_ini"])?;
        Ok(())
    }

    fn start(req: Request) -> Result<(), AgentError> {
        Self::validate(req.clone())?;
        if kit::listening(port(&req))? {
            return Ok(());
        }
        // Requested as spawn: and exec: both, `server` starts detached (as the
        // resource's service process) for a call without a deadline.
        run(
            &req,
            "server",
            &[&format!("={}", param(&req, "notes_ini"))],
            0,
        )?;
        let limit = Duration::from_millis(req.timeout_ms).saturating_sub(Duration::from_secs(1));
        if kit::wait_port(port(&req), true, limit)? {
            Ok(())
        } else {
            Err(error(
                ErrorClass::Generic,
                format!(
                    "the Domino server did not answer on port {} within {} ms",
                    port(&req),
                    limit.as_millis()
                ),
            ))
        }
    }

    fn stop(req: Request) -> Result<(), AgentError> {
        if !kit::listening(port(&req))? {
            return Ok(());
        }
        let half = Duration::from_millis(req.timeout_ms / 2);
        let quit = run(&req, "server", &["-q"], (req.timeout_ms / 4) as u32)?;
        if quit == Some(0) && kit::wait_port(port(&req), false, half)? {
            return Ok(());
        }
        run(&req, "nsd", &["-kill"], (req.timeout_ms / 4) as u32)?;
        if kit::wait_port(port(&req), false, Duration::from_millis(req.timeout_ms / 8))? {
            return Ok(());
        }
        Err(error(
            ErrorClass::Generic,
            format!(
                "the Domino server still answers on port {} after nsd -kill",
                port(&req)
            ),
        ))
    }

    fn monitor(req: Request) -> Result<MonitorState, AgentError> {
        Ok(if kit::listening(port(&req))? {
            MonitorState::Running
        } else {
            MonitorState::NotRunning
        })
    }

    no_optional_actions!();
}

export!(Domino);

fn port(req: &Request) -> u16 {
    kit::port(req, 1352)
}
