//! The Oracle adapter (`agents/oracle`) against scripted stand-ins of `sqlplus`
//! and `lsnrctl` (host/tests/fixtures/oracle; Oracle Database cannot be
//! installed here): the conformance run, the command sequence of each action,
//! the escalation of a hung shutdown, the error class of each tool failure;
//! and ClusterLabs' own `oracle` and `oralsnr` agents through the OCF bridge.

use crate::support::{
    StandIns, WithTools, catalog, failed_steps, left_after_exit, native_lib, request,
};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome};

/// An ORACLE_HOME with the stand-ins, run as `nobody`, and the adapter. Each
/// test has its own ORACLE_SID: an instance is found by its process name,
/// `ora_pmon_SID`, and the tests run side by side.
fn oracle_home(resource: &str, sid: &str) -> WithTools {
    let tools = StandIns::new("oracle");
    let params = vec![
        ("sid".into(), sid.into()),
        ("home".into(), tools.path()),
        ("user".into(), "nobody".into()),
    ];
    WithTools::load(tools, &native_lib("baton-oracle"), "", resource, params)
}

const SQLPLUS: &str = "sqlplus -S -L /nolog: connect / as sysdba";

#[test]
fn the_oracle_adapter_passes_the_conformance_test_against_the_stand_ins() {
    let home = oracle_home("ora-conformance", "ORCONF");
    let report = home.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
}

#[test]
fn start_monitor_and_stop_run_the_documented_command_sequence() {
    let home = oracle_home("ora-sequence", "ORSEQ");
    assert!(home.call(Action::Start, 30_000).result.is_ok());
    assert_eq!(
        home.tools.calls(),
        [
            "lsnrctl status LISTENER".to_string(),
            "lsnrctl start LISTENER".into(),
            format!("{SQLPLUS}; startup; exit"),
            format!("{SQLPLUS}; select status from v$instance; exit"),
        ]
    );
    assert_eq!(
        home.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::Running)
    );
    assert_eq!(
        home.tools.calls(),
        [
            format!("{SQLPLUS}; select status from v$instance; exit"),
            "lsnrctl status LISTENER".to_string(),
        ]
    );
    assert!(home.call(Action::Stop, 30_000).result.is_ok());
    assert_eq!(
        home.tools.calls(),
        [
            format!("{SQLPLUS}; shutdown immediate; exit"),
            "lsnrctl stop LISTENER".to_string(),
        ]
    );
    let left = left_after_exit(&home.resource);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        home.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::NotRunning)
    );
}

/// `shutdown immediate` that hangs gets half the stop's time; then the tool is
/// killed and `shutdown abort` ends the instance, within the stop's deadline.
#[test]
fn a_hung_shutdown_immediate_escalates_to_shutdown_abort() {
    let home = oracle_home("ora-hang", "ORHANG");
    assert!(home.call(Action::Start, 30_000).result.is_ok());
    home.tools.calls();
    home.tools.mode("hang-shutdown-immediate");
    let stop = home.call(Action::Stop, 4_000);
    assert!(stop.result.is_ok(), "{:?}", stop.result);
    assert!(
        stop.elapsed < std::time::Duration::from_secs(4),
        "{:?}",
        stop.elapsed
    );
    let calls = home.tools.calls();
    assert_eq!(
        calls[..2],
        [
            format!("{SQLPLUS}; shutdown immediate; exit"),
            format!("{SQLPLUS}; shutdown abort; exit"),
        ],
        "{calls:?}"
    );
    let left = left_after_exit(&home.resource);
    assert!(left.is_empty(), "{left:?}");
}

/// A listener that keeps `lsnrctl`'s output open (a daemon that forgot to
/// close it) does not hold the start: the tool's output is read until the tool
/// itself exits, then a short grace, as for every program baton runs.
#[test]
fn a_daemon_that_keeps_a_tools_output_open_does_not_hold_the_call() {
    let home = oracle_home("ora-pipes", "ORPIPE");
    home.tools.mode("listener-keeps-output");
    let start = home.call(Action::Start, 20_000);
    assert!(start.result.is_ok(), "{:?}", start.result);
    assert!(
        start.elapsed < std::time::Duration::from_secs(10),
        "the start waited {:?} for the listener's pipes",
        start.elapsed
    );
    home.tools.mode("");
    assert!(home.call(Action::Stop, 20_000).result.is_ok());
}

#[test]
fn each_tool_failure_maps_to_its_error_class() {
    let home = oracle_home("ora-errors", "ORERR");
    home.tools.mode("ora-01031");
    let f = home.call(Action::Start, 30_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::Permission, "{f}");
    assert!(f.reason.contains("ORA-01031"), "{f}");
    home.tools.mode("ora-01078");
    let f = home.call(Action::Start, 30_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(f.reason.contains("LRM-00109"), "{f}");
    std::fs::remove_file(home.tools.dir.path().join("bin/sqlplus")).unwrap();
    let f = home.call(Action::Start, 30_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
    assert!(f.reason.contains("bin/sqlplus"), "{f}");
}

/// The other route to Oracle: ClusterLabs' `oracle` and `oralsnr` shell agents
/// through the OCF bridge. Their meta-data loads; validate, with no Oracle on
/// this machine, says so.
#[test]
fn clusterlabs_oracle_agents_load_through_the_ocf_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    for (name, param) in [
        ("ocf:heartbeat:oracle", "sid"),
        ("ocf:heartbeat:oralsnr", "sid"),
    ] {
        let agent = cat.load(name).unwrap();
        assert!(
            agent.metadata().parameters.iter().any(|p| p.name == param),
            "{name}: {:?}",
            agent.metadata().parameters
        );
        let mut req = request(
            Action::Validate,
            "ora-ocf",
            &[("sid", "ORCL"), ("home", "/nonexistent/oracle")],
            30_000,
        );
        req.depth = 1;
        let f = agent.call(&req).result.unwrap_err();
        assert!(
            matches!(
                f.class,
                ErrorClass::NotInstalled | ErrorClass::Misconfigured
            ),
            "{name}: {f}"
        );
    }
}
