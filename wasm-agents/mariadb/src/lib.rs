//! The MariaDB adapter: a baton WebAssembly agent that runs a real MariaDB
//! server through capability-gated host calls only. Its capabilities, each
//! following the resource's parameters:
//!
//! - `spawn:{mariadbd}` — `start` runs the server as the resource's service
//!   process (detached, tagged, as the grant's user: `mysql`);
//! - `exec:{admin}` — `mariadb-admin` over the server's unix socket, as the
//!   grant's user (MariaDB's `unix_socket` authentication): `ping` until it is
//!   up, `status` as health, `shutdown` to stop;
//! - `exec:{kill}` — `kill -KILL PID` when `shutdown` does not end it in half
//!   the stop's time (the pid from the server's pid file);
//! - `net:127.0.0.1:{port}` — whether anything listens on the port;
//! - `read:{datadir}` — that the data directory was initialised, and the pid.
//!
//! Tested against Debian's MariaDB 10.11 (see README.md).

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.1", world: "resource-agent" });

#[macro_use]
#[path = "../../common/kit.rs"]
mod kit;

use baton::agent::capabilities::{self, Command};
use baton::agent::types::{
    AgentError, AgentMetadata, ErrorClass, MonitorState, ParamType, Request,
};
use exports::baton::agent::agent::Guest;
use kit::{error, param, text};
use std::time::{Duration, Instant};

struct MariaDb;

fn port(req: &Request) -> u16 {
    kit::port(req, 3306)
}

fn datadir(req: &Request) -> &str {
    param(req, "datadir").trim_end_matches('/')
}

fn socket(req: &Request) -> String {
    format!("{}/mariadb.sock", datadir(req))
}

/// `mariadb-admin ARGS` over the server's socket as the grant's user; exit
/// status and output.
fn admin(
    req: &Request,
    args: &[&str],
    timeout_ms: u32,
) -> Result<(Option<i32>, String), AgentError> {
    let mut all = vec![
        format!("--socket={}", socket(req)),
        format!("--user={}", param(req, "admin_user")),
        "--connect-timeout=2".to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = capabilities::run(&Command {
        program: param(req, "admin").into(),
        args: all,
        env: vec![],
        timeout_ms,
    })
    .map_err(|e| {
        error(
            kit::run_failure(&e),
            format!("{}: {e}", param(req, "admin")),
        )
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        out.status,
        text.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

/// A failed `mariadb-admin` as the contract's error: a refused login
/// (`Access denied`) is wrong on every node (`misconfigured`).
fn admin_failed(what: &str, text: &str) -> AgentError {
    let class = if text.contains("Access denied") {
        ErrorClass::Misconfigured
    } else {
        ErrorClass::Generic
    };
    error(class, format!("mariadb-admin {what}: {text}"))
}

/// The data directory holds an initialised server (`aria_log_control`, which
/// `mariadb-install-db` creates).
fn check_datadir(req: &Request) -> Result<(), AgentError> {
    match capabilities::read_file(&format!("{}/aria_log_control", datadir(req))) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("capability denied") => Err(error(ErrorClass::Permission, e)),
        Err(e) => Err(error(
            ErrorClass::Misconfigured,
            format!(
                "datadir {} is not an initialised MariaDB data directory ({e}); run \
                 mariadb-install-db --datadir={} --user=mysql, or mount its filesystem first",
                datadir(req),
                datadir(req)
            ),
        )),
    }
}

impl Guest for MariaDb {
    fn metadata() -> AgentMetadata {
        AgentMetadata {
            name: "mariadb".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            shortdesc: "A MariaDB server on a data directory".into(),
            longdesc: "Starts mariadbd as the resource's service process, waits for \
                       mariadb-admin ping, watches it with mariadb-admin status, stops it \
                       with mariadb-admin shutdown and, past half the stop's time, kill. \
                       Everything through granted capabilities."
                .into(),
            parameters: vec![
                text("datadir", Some("/var/lib/mysql"), "The data directory"),
                crate::baton::agent::types::ParamSpec {
                    kind: ParamType::Integer,
                    ..text("port", Some("3306"), "TCP port")
                },
                text(
                    "bind_address",
                    Some("0.0.0.0"),
                    "Address the server listens on",
                ),
                text("mariadbd", Some("/usr/sbin/mariadbd"), "The server program"),
                text("admin", Some("/usr/bin/mariadb-admin"), "The admin program"),
                text(
                    "kill",
                    Some("/usr/bin/kill"),
                    "kill(1), for a server that does not shut down",
                ),
                text(
                    "admin_user",
                    Some("mysql"),
                    "The MariaDB account mariadb-admin logs in as (unix_socket: the grant's OS user)",
                ),
                text(
                    "options",
                    Some(""),
                    "Extra server options (--name=value), separated by spaces",
                ),
            ],
            actions: kit::actions(120_000, 30_000, 10_000),
            capabilities: vec![
                "spawn:{mariadbd}".into(),
                "exec:{admin}".into(),
                "exec:{kill}".into(),
                "net:127.0.0.1:{port}".into(),
                "read:{datadir}".into(),
            ],
        }
    }

    fn validate(req: Request) -> Result<(), AgentError> {
        kit::absolute(&req, &["datadir", "mariadbd", "admin", "kill"])?;
        if let Some(bad) = param(&req, "options")
            .split_whitespace()
            .find(|o| !o.starts_with("--"))
        {
            return Err(error(
                ErrorClass::Misconfigured,
                format!("parameter options: {bad:?} is not a --name=value server option"),
            ));
        }
        Ok(())
    }

    fn start(req: Request) -> Result<(), AgentError> {
        Self::validate(req.clone())?;
        check_datadir(&req)?;
        if !kit::listening(port(&req))? {
            let d = datadir(&req);
            let mut args = vec![
                format!("--datadir={d}"),
                format!("--port={}", port(&req)),
                format!("--bind-address={}", param(&req, "bind_address")),
                format!("--socket={}", socket(&req)),
                format!("--pid-file={d}/mariadb.pid"),
                format!("--log-error={d}/mariadb.err"),
            ];
            args.extend(param(&req, "options").split_whitespace().map(str::to_owned));
            capabilities::run(&Command {
                program: param(&req, "mariadbd").into(),
                args,
                env: vec![],
                timeout_ms: 0,
            })
            .map_err(|e| error(kit::run_failure(&e), format!("cannot start mariadbd: {e}")))?;
        }
        let until = Instant::now()
            + Duration::from_millis(req.timeout_ms).saturating_sub(Duration::from_secs(2));
        loop {
            let (status, text) = admin(&req, &["status"], 5_000)?;
            if status == Some(0) {
                return Ok(());
            }
            if text.contains("Access denied") || Instant::now() >= until {
                return Err(admin_failed("status", &text));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(req: Request) -> Result<(), AgentError> {
        if !kit::listening(port(&req))? {
            return Ok(());
        }
        let half = Duration::from_millis(req.timeout_ms / 2);
        // A shutdown that fails, or runs past half the stop's time (a stop
        // bounded by the self-fence bound is short), ends in a kill.
        let text = match admin(&req, &["shutdown"], (req.timeout_ms / 2) as u32) {
            Ok((Some(0), text)) => {
                if kit::wait_port(port(&req), false, half / 2)? {
                    return Ok(());
                }
                text
            }
            Ok((_, text)) => text,
            Err(e) => e.reason,
        };
        let pid = capabilities::read_file(&format!("{}/mariadb.pid", datadir(&req)))
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        if !pid.is_empty() {
            let _ = capabilities::run(&Command {
                program: param(&req, "kill").into(),
                args: vec!["-KILL".into(), pid],
                env: vec![],
                timeout_ms: (req.timeout_ms / 4).clamp(50, 5_000) as u32,
            });
        }
        if kit::wait_port(port(&req), false, Duration::from_millis(req.timeout_ms / 8))? {
            return Ok(());
        }
        Err(admin_failed("shutdown (then kill)", &text))
    }

    fn monitor(req: Request) -> Result<MonitorState, AgentError> {
        if !kit::listening(port(&req))? {
            return Ok(MonitorState::NotRunning);
        }
        match admin(&req, &["status"], (req.timeout_ms / 2) as u32)? {
            (Some(0), _) => Ok(MonitorState::Running),
            (_, text) => Err(admin_failed("status", &text)),
        }
    }

    no_optional_actions!();
}

export!(MariaDb);
