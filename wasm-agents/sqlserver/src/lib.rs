//! The SQL Server on Linux adapter: a baton WebAssembly agent. Everything it
//! does outside its sandbox goes through capabilities it requests and the
//! administrator grants, each following the resource's parameters:
//!
//! - `spawn:{mssql_dir}/bin/sqlservr` — `start` runs the server as the
//!   resource's service process (detached, tagged, as the grant's user), with
//!   `MSSQL_TCP_PORT` set to `port`;
//! - `exec:{tools_dir}/bin/sqlcmd` — the health query, and `SHUTDOWN` to stop;
//! - `net:127.0.0.1:{port}` — whether anything listens on the port;
//! - `read:{credentials_dir}` — the login's password (file `password`), passed
//!   to sqlcmd in `SQLCMDPASSWORD`, never on a command line.
//!
//! `stop` asks for `SHUTDOWN` (checkpoints every database, waits for running
//! statements) with half the stop's time, then `SHUTDOWN WITH NOWAIT`; the port
//! must close. Exercised against scripted stand-ins of `sqlservr` and `sqlcmd`
//! (host/tests/fixtures/sqlserver), not SQL Server; see README.md.

wit_bindgen::generate!({ path: "../../plugin-api/wit/v1.1", world: "resource-agent" });

#[macro_use]
#[path = "../../common/kit.rs"]
mod kit;

use baton::agent::capabilities::{self, Command, CommandOutput};
use baton::agent::types::{
    AgentError, AgentMetadata, ErrorClass, MonitorState, ParamSpec, ParamType, Request,
};
use exports::baton::agent::agent::Guest;
use kit::{error, param, text};
use std::time::{Duration, Instant};

struct SqlServer;

/// `sqlcmd` with `query`; its output, or the error its output maps to.
fn sqlcmd(req: &Request, query: &str, timeout_ms: u32) -> Result<String, AgentError> {
    let password = capabilities::read_file(&format!("{}/password", param(req, "credentials_dir")))
        .map_err(|e| {
            error(
                ErrorClass::Misconfigured,
                format!("cannot read the login's password: {e}"),
            )
        })?;
    let password = String::from_utf8_lossy(&password).trim_end().to_string();
    let login_s = (timeout_ms / 1000).clamp(1, 60).to_string();
    let out = capabilities::run(&Command {
        program: format!("{}/bin/sqlcmd", param(req, "tools_dir")),
        args: vec![
            "-S".into(),
            format!("127.0.0.1,{}", port(req)),
            "-U".into(),
            param(req, "login").into(),
            "-C".into(),
            "-b".into(),
            "-h".into(),
            "-1".into(),
            "-l".into(),
            login_s,
            "-Q".into(),
            query.into(),
        ],
        env: vec![("SQLCMDPASSWORD".into(), password)],
        timeout_ms,
    })
    .map_err(|e| error(kit::run_failure(&e), e))?;
    judge(query, &out)
}

/// sqlcmd's exit and output as the contract's result: a failed login
/// (Msg 18456) is wrong everywhere (`misconfigured`); the rest `generic`.
fn judge(query: &str, out: &CommandOutput) -> Result<String, AgentError> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match out.status {
        Some(0) => Ok(text),
        None => Err(error(
            ErrorClass::Generic,
            format!("sqlcmd {query:?} did not finish in time"),
        )),
        Some(_) if text.contains("Msg 18456") => Err(error(
            ErrorClass::Misconfigured,
            format!("sqlcmd {query:?}: {printed}; check login and credentials_dir/password"),
        )),
        Some(code) => Err(error(
            ErrorClass::Generic,
            format!("sqlcmd {query:?} exited {code}: {printed}"),
        )),
    }
}

impl Guest for SqlServer {
    fn metadata() -> AgentMetadata {
        AgentMetadata {
            name: "sqlserver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            shortdesc: "SQL Server on Linux (sqlservr and sqlcmd)".into(),
            longdesc: "Starts sqlservr as the resource's service process, watches it with a \
                       sqlcmd query, stops it with SHUTDOWN then SHUTDOWN WITH NOWAIT. \
                       Exercised against stand-ins of sqlservr and sqlcmd, not SQL Server."
                .into(),
            parameters: vec![
                text("mssql_dir", Some("/opt/mssql"), "Where bin/sqlservr is"),
                text(
                    "tools_dir",
                    Some("/opt/mssql-tools18"),
                    "Where bin/sqlcmd is",
                ),
                ParamSpec {
                    kind: ParamType::Integer,
                    ..text("port", Some("1433"), "TCP port (MSSQL_TCP_PORT)")
                },
                text("login", Some("sa"), "The login the health query uses"),
                text(
                    "credentials_dir",
                    Some("/etc/baton/sqlserver"),
                    "Directory with the login's password in a file `password`",
                ),
            ],
            actions: kit::actions(120_000, 30_000, 15_000),
            capabilities: vec![
                "spawn:{mssql_dir}/bin/sqlservr".into(),
                "exec:{tools_dir}/bin/sqlcmd".into(),
                "net:127.0.0.1:{port}".into(),
                "read:{credentials_dir}".into(),
            ],
        }
    }

    fn validate(req: Request) -> Result<(), AgentError> {
        kit::absolute(&req, &["mssql_dir", "tools_dir", "credentials_dir"])?;
        if param(&req, "login").is_empty() {
            return Err(error(ErrorClass::Misconfigured, "parameter login is empty"));
        }
        Ok(())
    }

    fn start(req: Request) -> Result<(), AgentError> {
        Self::validate(req.clone())?;
        if !kit::listening(port(&req))? {
            capabilities::run(&Command {
                program: format!("{}/bin/sqlservr", param(&req, "mssql_dir")),
                args: vec![],
                env: vec![("MSSQL_TCP_PORT".into(), port(&req).to_string())],
                timeout_ms: 5_000,
            })
            .map_err(|e| error(kit::run_failure(&e), format!("cannot start sqlservr: {e}")))?;
        }
        // Ready when a login and a query succeed.
        let until = Instant::now()
            + Duration::from_millis(req.timeout_ms).saturating_sub(Duration::from_secs(2));
        loop {
            match sqlcmd(&req, "SET NOCOUNT ON; SELECT 1", 5_000) {
                Ok(_) => return Ok(()),
                Err(e) if e.class != ErrorClass::Generic || Instant::now() >= until => {
                    return Err(e);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn stop(req: Request) -> Result<(), AgentError> {
        if !kit::listening(port(&req))? {
            return Ok(());
        }
        let half = Duration::from_millis(req.timeout_ms / 2);
        let graceful = sqlcmd(&req, "SHUTDOWN", (req.timeout_ms / 4) as u32);
        if graceful.is_ok() && kit::wait_port(port(&req), false, half)? {
            return Ok(());
        }
        let _ = sqlcmd(&req, "SHUTDOWN WITH NOWAIT", (req.timeout_ms / 8) as u32);
        if kit::wait_port(port(&req), false, Duration::from_millis(req.timeout_ms / 8))? {
            return Ok(());
        }
        Err(error(
            ErrorClass::Generic,
            format!(
                "sqlservr still accepts connections on port {} after SHUTDOWN WITH NOWAIT",
                port(&req)
            ),
        ))
    }

    fn monitor(req: Request) -> Result<MonitorState, AgentError> {
        if !kit::listening(port(&req))? {
            return Ok(MonitorState::NotRunning);
        }
        let out = sqlcmd(
            &req,
            "SET NOCOUNT ON; SELECT 1",
            (req.timeout_ms / 2) as u32,
        )?;
        if out.split_whitespace().any(|w| w == "1") {
            Ok(MonitorState::Running)
        } else {
            Err(error(
                ErrorClass::Generic,
                format!("SELECT 1 answered {:?}", out.trim()),
            ))
        }
    }

    no_optional_actions!();
}

export!(SqlServer);

fn port(req: &Request) -> u16 {
    kit::port(req, 1433)
}
