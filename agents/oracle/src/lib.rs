//! The Oracle Database adapter: a baton native agent for one instance (and,
//! optionally, its listener), written against Oracle's documented command-line
//! tools, as the ClusterLabs `oracle` and `oralsnr` agents are:
//!
//! - `start`: the listener (`lsnrctl status`, else `lsnrctl start`); then the
//!   instance: `startup` when its process monitor (`ora_pmon_SID`) is not
//!   running, `alter database mount` / `open` when it is but the database is
//!   not open; an `ORA-01081` (a half-dead instance) gets `shutdown abort` and a
//!   new `startup`. Succeeds when `v$instance` says `OPEN`.
//! - `stop`: `shutdown immediate`, given half the stop's time; past that the
//!   tool is killed and `shutdown abort` runs; what is left of the resource is
//!   killed; then `lsnrctl stop`.
//! - `monitor`: `not-running` without a process monitor; else `OPEN` from
//!   `select status from v$instance` and, with a listener, `lsnrctl status`.
//!
//! It was exercised against scripted stand-ins of `sqlplus` and `lsnrctl`
//! (host/tests/fixtures/oracle), not against Oracle Database; see README.md.

mod tool;

use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, ErrorClass, Metadata, MonitorState,
    ParamSpec, ParamType, Request, ResourceAgent, service,
};
use std::path::PathBuf;
use std::time::Duration;
use tool::{Oracle, class_of, pmon_running, value};

struct OracleAgent;

fn param(name: &str, required: bool, default: Option<&str>, description: &str) -> ParamSpec {
    ParamSpec::new(name, ParamType::String, required, default, description)
}

fn text<'a>(req: &'a Request, name: &str) -> &'a str {
    req.params.get(name).map(String::as_str).unwrap_or_default()
}

/// The instance's settings from the parameters; with `on_node`, also the
/// owner's ids and the tools on this node.
fn oracle(req: &Request, on_node: bool) -> Result<Oracle, AgentError> {
    let sid = text(req, "sid");
    if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(AgentError::misconfigured(format!(
            "parameter sid = {sid:?}: give the instance's ORACLE_SID (letters, digits, _)"
        )));
    }
    let home = PathBuf::from(text(req, "home"));
    if !home.is_absolute() {
        return Err(AgentError::misconfigured(format!(
            "parameter home = {:?} must be the absolute ORACLE_HOME",
            home.display()
        )));
    }
    let user = text(req, "user").to_owned();
    let mut oracle = Oracle {
        home,
        sid: sid.to_owned(),
        uid: 0,
        gid: 0,
        user,
    };
    if on_node {
        let sqlplus = oracle.home.join("bin/sqlplus");
        if !sqlplus.is_file() {
            return Err(AgentError::not_installed(format!(
                "{} is not installed on this node; install Oracle Database there or fix home",
                sqlplus.display()
            )));
        }
        (oracle.uid, oracle.gid) = user_ids(&oracle.user)?;
    }
    Ok(oracle)
}

fn user_ids(user: &str) -> Result<(u32, u32), AgentError> {
    service::user(user).map(|u| (u.uid, u.gid)).ok_or_else(|| {
        AgentError::misconfigured(format!(
            "parameter user: no OS user {user:?} on this node (the Oracle software owner)"
        ))
    })
}

/// A failed tool run as the contract's error: its class from the Oracle error
/// codes, and what it printed.
fn failed(what: &str, output: &str) -> AgentError {
    let printed = output.split_whitespace().collect::<Vec<_>>().join(" ");
    AgentError::new(class_of(output), format!("{what}: {printed}"))
}

/// The instance's status from `v$instance` (`OPEN`, `MOUNTED`, `STARTED`).
fn status(o: &Oracle, req: &Request, timeout: Duration) -> Result<String, AgentError> {
    let run = o.sqlplus(req, "select status from v$instance;", timeout)?;
    if run.code.is_none() {
        return Err(AgentError::generic(format!(
            "sqlplus did not answer `select status from v$instance` within {} ms",
            timeout.as_millis()
        )));
    }
    if !tool::errors(&run.output).is_empty() {
        return Err(failed("select status from v$instance", &run.output));
    }
    Ok(value(&run.output).to_owned())
}

impl OracleAgent {
    fn start_listener(&self, o: &Oracle, req: &Request) -> Result<(), AgentError> {
        let listener = text(req, "listener");
        if listener.is_empty() {
            return Ok(());
        }
        let timeout = req.context.timeout().mul_f64(0.25);
        if o.lsnrctl(req, "status", listener, timeout)?.code == Some(0) {
            return Ok(());
        }
        let run = o.lsnrctl(req, "start", listener, timeout)?;
        if run.code != Some(0) {
            return Err(failed(&format!("lsnrctl start {listener}"), &run.output));
        }
        Ok(())
    }

    fn start_instance(&self, o: &Oracle, req: &Request) -> Result<(), AgentError> {
        let step = req.context.timeout().mul_f64(0.3);
        let sql = if pmon_running(&o.sid) {
            match status(o, req, step)?.as_str() {
                "OPEN" => return Ok(()),
                "STARTED" => "alter database mount;\nalter database open;",
                "MOUNTED" => "alter database open;",
                _ => "shutdown abort\nstartup",
            }
        } else {
            "startup"
        };
        let mut run = o.sqlplus(req, sql, step)?;
        if tool::errors(&run.output).contains(&"ORA-01081") {
            // "cannot start already-running ORACLE": what is left of a dead
            // instance goes first.
            run = o.sqlplus(req, "shutdown abort\nstartup", step)?;
        }
        if run.code.is_none() {
            return Err(AgentError::generic(format!(
                "sqlplus {sql:?} did not finish within {} ms",
                step.as_millis()
            )));
        }
        match status(o, req, step) {
            Ok(s) if s == "OPEN" => Ok(()),
            Ok(s) => Err(AgentError::generic(format!(
                "instance {} is {s} after {sql:?}, not OPEN; sqlplus printed: {}",
                o.sid,
                run.output.trim()
            ))),
            Err(_) => Err(failed(
                &format!("{sql:?} of instance {}", o.sid),
                &run.output,
            )),
        }
    }
}

impl ResourceAgent for OracleAgent {
    fn metadata(&self) -> Metadata {
        Metadata {
            name: "oracle".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "An Oracle Database instance and its listener".into(),
            longdesc: "Starts the listener with lsnrctl and the instance with sqlplus \
                       (startup); stops with shutdown immediate, then shutdown abort on \
                       timeout; monitors the process monitor, v$instance and the listener. \
                       Exercised against stand-ins of sqlplus and lsnrctl, not against \
                       Oracle Database."
                .into(),
            parameters: vec![
                param("sid", true, None, "The instance's ORACLE_SID"),
                param(
                    "home",
                    true,
                    None,
                    "ORACLE_HOME (with bin/sqlplus and bin/lsnrctl)",
                ),
                param(
                    "user",
                    false,
                    Some("oracle"),
                    "The Oracle software owner (OS user)",
                ),
                param(
                    "listener",
                    false,
                    Some("LISTENER"),
                    "The listener to start and watch; empty: none",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 10_000),
                ActionSpec::new(Action::Start, 300_000),
                ActionSpec::new(Action::Stop, 300_000),
                ActionSpec::monitor(60_000, 30_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        oracle(req, req.depth > 0).map(drop)
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let o = oracle(req, true)?;
        self.start_listener(&o, req)?;
        self.start_instance(&o, req)
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let o = oracle(req, true)?;
        let timeout = req.context.timeout();
        if pmon_running(&o.sid) {
            let immediate = o.sqlplus(req, "shutdown immediate", timeout.mul_f64(0.5))?;
            if immediate.code.is_none() || pmon_running(&o.sid) {
                // Past its share, or it left the instance up: abort.
                o.sqlplus(req, "shutdown abort", timeout.mul_f64(0.25))?;
            }
        }
        let listener = text(req, "listener");
        if !listener.is_empty() {
            let run = o.lsnrctl(req, "stop", listener, timeout.mul_f64(0.15))?;
            let not_running = tool::errors(&run.output)
                .iter()
                .any(|c| matches!(*c, "TNS-12541" | "TNS-12560"));
            if run.code != Some(0) && !not_running {
                return Err(failed(&format!("lsnrctl stop {listener}"), &run.output));
            }
        }
        // Whatever of the resource still runs (a hung tool, a background process).
        service::stop(req, Duration::ZERO)
            .map_err(|e| AgentError::generic(format!("cannot end instance {}: {e}", o.sid)))?;
        if pmon_running(&o.sid) {
            return Err(AgentError::generic(format!(
                "instance {} still runs after shutdown abort",
                o.sid
            )));
        }
        Ok(())
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let o = oracle(req, true)?;
        if !pmon_running(&o.sid) {
            return Ok(MonitorState::NotRunning);
        }
        let timeout = req.context.timeout().mul_f64(0.45);
        let state = status(&o, req, timeout)?;
        if state != "OPEN" {
            return Err(AgentError::new(
                ErrorClass::Generic,
                format!("instance {} is {state}, not OPEN", o.sid),
            ));
        }
        let listener = text(req, "listener");
        if !listener.is_empty() {
            let run = o.lsnrctl(req, "status", listener, timeout)?;
            if run.code != Some(0) {
                return Err(failed(
                    &format!("listener {listener} is not running"),
                    &run.output,
                ));
            }
        }
        Ok(MonitorState::Running)
    }
}

baton_agent_abi::export_agent!(OracleAgent);
