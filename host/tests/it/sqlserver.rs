//! The SQL Server adapter (`wasm-agents/sqlserver`, a WebAssembly component)
//! against scripted stand-ins of `sqlservr` and `sqlcmd`
//! (host/tests/fixtures/sqlserver; SQL Server cannot be installed here): every
//! outside action through granted capabilities, the command sequence of each
//! action, the escalation of a shutdown that does not end the server, and the
//! error class of each failure.

use crate::support::{catalog, failed_steps, repo, request, wasm};
use baton::agent_host::AgentHandle;
use baton::conformance;
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, Params, service};
use std::os::unix::fs::PermissionsExt;

/// The stand-ins in a directory of their own, a free port, the adapter with
/// its four capabilities granted.
struct Site {
    dir: tempfile::TempDir,
    port: u16,
    agent: AgentHandle,
    resource: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Site {
    fn new(resource: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        for tool in ["sqlservr", "sqlcmd"] {
            std::fs::copy(
                repo().join("host/tests/fixtures/sqlserver/bin").join(tool),
                d.join("bin").join(tool),
            )
            .unwrap();
        }
        std::fs::create_dir(d.join("standin")).unwrap();
        std::fs::write(d.join("standin/sa_password"), "Str0ng!secret").unwrap();
        std::os::unix::fs::chown(d.join("standin"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(d.join("standin/sa_password"), Some(65534), Some(65534)).unwrap();
        std::fs::create_dir(d.join("creds")).unwrap();
        std::fs::write(d.join("creds/password"), "Str0ng!secret\n").unwrap();
        let port = free_port();
        let grants = format!(
            "[agents.grants]\nsqlserver = [\"spawn:{d}/bin/sqlservr\", \"exec:{d}/bin/sqlcmd\", \
             \"net:127.0.0.1:{port}\", \"read:{d}/creds\"]\n",
            d = d.display()
        );
        let agent = catalog(&d.join("store"), &grants)
            .load(wasm("baton_sqlserver").to_str().unwrap())
            .unwrap();
        Site {
            dir,
            port,
            agent,
            resource: resource.into(),
        }
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path().display().to_string();
        vec![
            ("mssql_dir", d.clone()),
            ("tools_dir", d.clone()),
            ("credentials_dir", format!("{d}/creds")),
            ("port", self.port.to_string()),
        ]
    }

    fn call(&self, action: Action, timeout_ms: u64) -> baton::agent_host::CallReport {
        let params = self.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.agent
            .call(&request(action, &self.resource, &params, timeout_ms))
    }

    /// The calls the stand-ins recorded since the last look.
    fn calls(&self) -> Vec<String> {
        let path = self.dir.path().join("standin/calls");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_owned).collect()
    }

    fn left(&self) -> Vec<service::Tagged> {
        service::tagged(&service::host_id(), Some(&self.resource))
    }

    /// What of the resource still runs once a server that closed its port has
    /// had the conformance test's 2 s to exit.
    fn left_after_exit(&self) -> Vec<service::Tagged> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut left = self.left();
        while !left.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = self.left();
        }
        left
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = service::end(
            &service::host_id(),
            Some(&self.resource),
            Default::default(),
        );
    }
}

#[test]
fn the_sqlserver_adapter_passes_the_conformance_test_against_the_stand_ins() {
    let site = Site::new("mssql-conformance");
    let params: Params = site
        .params()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let report = conformance::run(&site.agent, params, &site.resource, "testnode", None);
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
}

#[test]
fn sqlserver_start_monitor_and_stop_run_the_documented_commands() {
    let site = Site::new("mssql-sequence");
    let start = site.call(Action::Start, 30_000);
    assert!(start.result.is_ok(), "{:?}", start.result);
    let query = format!(
        "sqlcmd -S 127.0.0.1,{} -U sa -Q SET NOCOUNT ON; SELECT 1",
        site.port
    );
    // sqlservr once; sqlcmd until the server answers (it may be tried before
    // the server listens).
    let calls = site.calls();
    let servers: Vec<&String> = calls.iter().filter(|c| c.starts_with("sqlservr")).collect();
    assert_eq!(
        servers,
        [&format!("sqlservr MSSQL_TCP_PORT={}", site.port)],
        "{calls:?}"
    );
    let queries: Vec<&String> = calls
        .iter()
        .filter(|c| !c.starts_with("sqlservr"))
        .collect();
    assert!(
        !queries.is_empty() && queries.iter().all(|c| **c == query),
        "{calls:?}"
    );
    // The server is the resource's service process, tagged with it.
    assert!(!site.left().is_empty());
    assert_eq!(
        site.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::Running)
    );
    assert_eq!(site.calls(), [query]);
    assert!(site.call(Action::Stop, 30_000).result.is_ok());
    assert_eq!(
        site.calls(),
        [format!(
            "sqlcmd -S 127.0.0.1,{} -U sa -Q SHUTDOWN",
            site.port
        )]
    );
    let left = site.left_after_exit();
    assert!(left.is_empty(), "{left:?}");
}

/// A `SHUTDOWN` that leaves the server up gets half the stop's time; then
/// `SHUTDOWN WITH NOWAIT` ends it, within the stop's deadline.
#[test]
fn a_shutdown_that_does_not_end_the_server_escalates_to_nowait() {
    let site = Site::new("mssql-hang");
    assert!(site.call(Action::Start, 30_000).result.is_ok());
    site.calls();
    std::fs::write(site.dir.path().join("standin/mode"), "hang-shutdown").unwrap();
    let stop = site.call(Action::Stop, 4_000);
    assert!(stop.result.is_ok(), "{:?}", stop.result);
    let p = site.port;
    assert_eq!(
        site.calls(),
        [
            format!("sqlcmd -S 127.0.0.1,{p} -U sa -Q SHUTDOWN"),
            format!("sqlcmd -S 127.0.0.1,{p} -U sa -Q SHUTDOWN WITH NOWAIT"),
        ]
    );
    let left = site.left_after_exit();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sqlserver_failures_map_to_their_error_classes() {
    let site = Site::new("mssql-errors");
    // A wrong password is wrong on every node: misconfigured, naming Msg 18456.
    std::fs::write(site.dir.path().join("creds/password"), "wrong\n").unwrap();
    let f = site.call(Action::Start, 10_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(f.reason.contains("Login failed"), "{f}");
    std::fs::write(site.dir.path().join("creds/password"), "Str0ng!secret\n").unwrap();
    assert!(site.call(Action::Stop, 10_000).result.is_ok());
    // No sqlservr where mssql_dir says: not installed.
    std::fs::remove_file(site.dir.path().join("bin/sqlservr")).unwrap();
    let f = site.call(Action::Start, 10_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
}
