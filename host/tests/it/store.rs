//! Installing agents: validation, precompilation, hashes, and refusing changed files.

use crate::support::{call, catalog, native_lib, wasm};
use baton::agent::host::AgentKind;
use baton_plugin_api::{Action, MonitorState, Outcome};

#[test]
fn installed_agents_load_by_name_and_list_with_contract_and_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(
        dir.path(),
        "[agents.grants]\nhostile = [\"exec:/bin/sleep\", \"exec:/bin/true\"]\n",
    );
    let native = cat.install(&native_lib("sample-native-agent")).unwrap();
    assert_eq!(native.manifest.name, "sample-native");
    let comp = cat.install(&wasm("hostile")).unwrap();
    assert!(comp.manifest.precompiled.is_some());
    assert!(dir.path().join("hostile/agent.cwasm").is_file());

    let list = cat.list();
    let find = |n: &str| {
        list.iter()
            .find(|a| a.name == n)
            .unwrap_or_else(|| panic!("{n} not listed"))
    };
    assert_eq!(find("process").kind, AgentKind::Builtin);
    assert_eq!(find("sample-native").kind, AgentKind::Native);
    let h = find("hostile");
    assert_eq!((h.kind, h.state.as_str()), (AgentKind::Wasm, "ok"));
    assert_eq!(h.contract.unwrap().to_string(), "1.1");
    assert_eq!(
        h.requested,
        [
            "exec:/bin/sleep",
            "exec:/bin/sh",
            "exec:/usr/bin/id",
            "spawn:/bin/sleep",
            "read:/etc",
            "net:127.0.0.1:47999"
        ]
    );
    assert_eq!(
        h.granted,
        ["exec:/bin/sleep"],
        "a grant the agent did not request is not usable"
    );

    let agent = cat.load("hostile").unwrap();
    assert_eq!(agent.kind(), AgentKind::Wasm);
    call(&agent, Action::Start, "r", &[], 2000).result.unwrap();
    assert_eq!(
        call(&agent, Action::Monitor, "r", &[], 2000)
            .result
            .unwrap(),
        Outcome::State(MonitorState::Running)
    );
    let native = cat.load("sample-native").unwrap();
    assert!(
        call(&native, Action::Validate, "r", &[], 2000)
            .result
            .is_ok()
    );
}

#[test]
fn a_file_changed_after_install_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    cat.install(&wasm("legacy_1_0")).unwrap();
    let file = dir.path().join("legacy/agent.cwasm");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let e = format!("{:#}", cat.load("legacy").err().unwrap());
    assert!(
        e.contains("agent.cwasm changed after install") && e.contains("baton agent install"),
        "{e}"
    );
    let listed = cat.list().into_iter().find(|a| a.name == "legacy").unwrap();
    assert!(
        listed.state.contains("changed after install"),
        "{}",
        listed.state
    );
}

#[test]
fn reinstalling_replaces_and_reports_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    assert!(cat.install(&wasm("legacy_1_0")).unwrap().replaced.is_none());
    assert_eq!(
        cat.install(&wasm("legacy_1_0"))
            .unwrap()
            .replaced
            .as_deref(),
        Some("1.0.0")
    );
    assert!(cat.load("legacy").is_ok());
}

#[test]
fn bad_files_are_refused_and_nothing_installed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cat = catalog(&store, "");
    let junk = dir.path().join("junk.so");
    std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
    let e = format!("{:#}", cat.install(&junk).err().unwrap());
    assert!(e.contains("junk.so is neither a native library"), "{e}");
    let e = format!(
        "{:#}",
        cat.install(&native_lib("native-future")).err().unwrap()
    );
    assert!(e.contains("built for contract 2.0"), "{e}");
    let e = format!("{:#}", cat.install(&wasm("future_2_0")).err().unwrap());
    assert!(e.contains("built for contract 2.0"), "{e}");
    assert!(cat.store().manifests().is_empty());
}

#[test]
fn an_unknown_type_lists_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let e = format!("{:#}", cat.load("proces").err().unwrap());
    let builtins: Vec<&str> = baton_agents::builtin_agents()
        .iter()
        .map(|a| a.name)
        .collect();
    assert!(builtins.contains(&"process"));
    assert!(
        e.contains("unknown agent type \"proces\"")
            && e.contains(&format!("Built-in: {}", builtins.join(", "))),
        "{e}"
    );
    assert!(e.contains("baton agent install"), "{e}");
}
