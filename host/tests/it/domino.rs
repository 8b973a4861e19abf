//! The HCL Domino adapter (`wasm-agents/domino`, a WebAssembly component)
//! against scripted stand-ins of `server` and `nsd` (host/tests/fixtures/domino;
//! Domino cannot be installed here): the conformance run, the command sequence,
//! `server -q` escalating to `nsd -kill`, and a missing installation.

use crate::support::{StandIns, WithTools, failed_steps, left_after_exit, wasm};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, service};

/// The stand-ins, a notes.ini naming the port, the adapter with its
/// capabilities granted (`server` both as a service and as a command).
fn site(resource: &str) -> WithTools {
    let tools = StandIns::new("domino");
    let d = tools.path();
    let port = tools.port;
    std::fs::write(
        tools.dir.path().join("notes.ini"),
        format!(
            "[Notes]\nServerTasks=Replica,Router,Update\nTCPIP_TcpIpAddress=0,127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    let grants = format!(
        "[agents.grants]\ndomino = [\"spawn:{d}/bin/server\", \"exec:{d}/bin/server\", \
         \"exec:{d}/bin/nsd\", \"net:127.0.0.1:{port}\"]\n"
    );
    let params = vec![
        ("domino_bin".into(), format!("{d}/bin")),
        ("notes_ini".into(), format!("{d}/notes.ini")),
        ("port".into(), port.to_string()),
    ];
    WithTools::load(tools, &wasm("baton_domino"), &grants, resource, params)
}

#[test]
fn the_domino_adapter_passes_the_conformance_test_against_the_stand_ins() {
    let site = site("domino-conformance");
    let report = site.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
}

/// `server` runs as the resource's service process; `server -q` (the same
/// program, granted both ways) runs in the foreground and quits it.
#[test]
fn domino_starts_detached_and_quits_with_server_q() {
    let site = site("domino-sequence");
    let start = site.call(Action::Start, 30_000);
    assert!(start.result.is_ok(), "{:?}", start.result);
    let ini = format!("{}/notes.ini", site.tools.path());
    assert_eq!(site.tools.calls(), [format!("server ={ini}")]);
    assert!(!service::tagged(&service::host_id(), Some(&site.resource)).is_empty());
    assert_eq!(
        site.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::Running)
    );
    assert!(site.call(Action::Stop, 30_000).result.is_ok());
    assert_eq!(site.tools.calls(), ["server -q"]);
    let left = left_after_exit(&site.resource);
    assert!(left.is_empty(), "{left:?}");
}

/// A server that ignores `server -q` gets half the stop's time; then
/// `nsd -kill` ends it, within the stop's deadline.
#[test]
fn a_server_that_does_not_quit_is_killed_with_nsd() {
    let site = site("domino-hang");
    assert!(site.call(Action::Start, 30_000).result.is_ok());
    site.tools.calls();
    site.tools.mode("hang-quit");
    let stop = site.call(Action::Stop, 4_000);
    assert!(stop.result.is_ok(), "{:?}", stop.result);
    assert_eq!(site.tools.calls(), ["server -q", "nsd -kill"]);
    let left = left_after_exit(&site.resource);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_missing_domino_installation_is_not_installed() {
    let site = site("domino-missing");
    std::fs::remove_file(site.tools.dir.path().join("bin/server")).unwrap();
    let f = site.call(Action::Start, 10_000).result.unwrap_err();
    assert_eq!(f.class, ErrorClass::NotInstalled, "{f}");
}
