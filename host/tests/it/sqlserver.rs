//! The SQL Server adapter (`wasm-agents/sqlserver`, a WebAssembly component)
//! against scripted stand-ins of `sqlservr` and `sqlcmd`
//! (host/tests/fixtures/sqlserver; SQL Server cannot be installed here): every
//! outside action through granted capabilities, the command sequence of each
//! action, the escalation of a shutdown that does not end the server, and the
//! error class of each failure.

use crate::support::{StandIns, WithTools, failed_steps, left_after_exit, wasm};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, service};

/// The stand-ins, the login's password, the adapter with its four
/// capabilities granted.
fn site(resource: &str) -> WithTools {
    let tools = StandIns::new("sqlserver");
    let d = tools.path();
    let port = tools.port;
    let standin = tools.dir.path().join("standin");
    std::fs::write(standin.join("sa_password"), "Str0ng!secret").unwrap();
    std::os::unix::fs::chown(standin.join("sa_password"), Some(65534), Some(65534)).unwrap();
    std::fs::create_dir(tools.dir.path().join("creds")).unwrap();
    std::fs::write(tools.dir.path().join("creds/password"), "Str0ng!secret\n").unwrap();
    let grants = format!(
        "[agents.grants]\nsqlserver = [\"spawn:{d}/bin/sqlservr\", \"exec:{d}/bin/sqlcmd\", \
         \"net:127.0.0.1:{port}\", \"read:{d}/creds\"]\n"
    );
    let params = vec![
        ("mssql_dir".into(), d.clone()),
        ("tools_dir".into(), d.clone()),
        ("credentials_dir".into(), format!("{d}/creds")),
        ("port".into(), port.to_string()),
    ];
    WithTools::load(tools, &wasm("baton_sqlserver"), &grants, resource, params)
}

#[test]
fn the_sqlserver_adapter_passes_the_conformance_test_against_the_stand_ins() {
    let site = site("mssql-conformance");
    let report = site.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
}

#[test]
fn sqlserver_start_monitor_and_stop_run_the_documented_commands() {
    let site = site("mssql-sequence");
    let start = site.call(Action::Start, 30_000);
    assert!(start.result.is_ok(), "{:?}", start.result);
    let query = format!(
        "sqlcmd -S 127.0.0.1,{} -U sa -Q SET NOCOUNT ON; SELECT 1",
        site.tools.port
    );
    // sqlservr once; sqlcmd until the server answers (it may be tried before
    // the server listens).
    let calls = site.tools.calls();
    let servers: Vec<&String> = calls.iter().filter(|c| c.starts_with("sqlservr")).collect();
    assert_eq!(
        servers,
        [&format!("sqlservr MSSQL_TCP_PORT={}", site.tools.port)],
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
    assert!(!service::tagged(&service::host_id(), Some(&site.resource)).is_empty());
    assert_eq!(
        site.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::Running)
    );
    assert_eq!(site.tools.calls(), [query]);
    assert!(site.call(Action::Stop, 30_000).result.is_ok());
    assert_eq!(
        site.tools.calls(),
        [format!(
            "sqlcmd -S 127.0.0.1,{} -U sa -Q SHUTDOWN",
            site.tools.port
        )]
    );
    let left = left_after_exit(&site.resource);
    assert!(left.is_empty(), "{left:?}");
}

/// A `SHUTDOWN` that leaves the server up gets half the stop's time; then
/// `SHUTDOWN WITH NOWAIT` ends it, within the stop's deadline.
#[test]
fn a_shutdown_that_does_not_end_the_server_escalates_to_nowait() {
    let site = site("mssql-hang");
    assert!(site.call(Action::Start, 30_000).result.is_ok());
    site.tools.calls();
    site.tools.mode("hang-shutdown");
    let stop = site.call(Action::Stop, 4_000);
    assert!(stop.result.is_ok(), "{:?}", stop.result);
    let p = site.tools.port;
    assert_eq!(
        site.tools.calls(),
        [
            format!("sqlcmd -S 127.0.0.1,{p} -U sa -Q SHUTDOWN"),
            format!("sqlcmd -S 127.0.0.1,{p} -U sa -Q SHUTDOWN WITH NOWAIT"),
        ]
    );
    let left = left_after_exit(&site.resource);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sqlserver_failures_map_to_their_error_classes() {
    let site = site("mssql-errors");
    // A wrong password is wrong on every node: misconfigured, naming Msg 18456.
    std::fs::write(site.tools.dir.path().join("creds/password"), "wrong\n").unwrap();
    let f = site.call(Action::Start, 10_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(f.reason.contains("Login failed"), "{f}");
    std::fs::write(
        site.tools.dir.path().join("creds/password"),
        "Str0ng!secret\n",
    )
    .unwrap();
    assert!(site.call(Action::Stop, 10_000).result.is_ok());
    // No sqlservr where mssql_dir says: not installed.
    std::fs::remove_file(site.tools.dir.path().join("bin/sqlservr")).unwrap();
    let f = site.call(Action::Start, 10_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
}
