//! The built-in agents pass the same conformance run as every other kind.

use crate::support::catalog;
use baton::agent::conformance;
use baton::agent::host::AgentKind;
use std::net::TcpListener;

#[test]
fn process_and_tcp_check_pass_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let state = dir.path().join("run").display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cases = [
        (
            "process",
            vec![
                ("command", "sleep 600"),
                ("state_dir", state.as_str()),
                ("stop_grace_ms", "500"),
            ],
        ),
        (
            "tcp-check",
            vec![("address", address.as_str()), ("state_dir", state.as_str())],
        ),
    ];
    for (name, params) in cases {
        let agent = cat.load(name).unwrap();
        assert_eq!(agent.kind(), AgentKind::Builtin);
        let params = params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let report = conformance::run(&agent, params, "ct-builtin", "testnode", None);
        assert!(report.passed, "{name}: {report:#?}");
    }
}
