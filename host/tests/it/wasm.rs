//! WebAssembly agents: deadlines, memory and stack limits, capability checks,
//! rebuilt instances, and contract versions 1.0 and 1.1 side by side.

use crate::support::{call, catalog, wasm};
use baton::agent::conformance;
use baton::agent::host::{AgentHandle, AgentKind, FailureCause};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, Promotion, Recovery};
use std::sync::OnceLock;
use std::time::Duration;

/// Compiling a component is the slow part: share one hostile agent per test binary.
/// Each test uses its own resource name, so each gets its own instance.
fn hostile() -> &'static AgentHandle {
    static AGENT: OnceLock<(tempfile::TempDir, AgentHandle)> = OnceLock::new();
    &AGENT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let cat = catalog(
                dir.path(),
                "[agents.grants]\nhostile = [\"exec:/bin/sleep\"]\n",
            );
            let agent = cat.load(wasm("hostile").to_str().unwrap()).unwrap();
            (dir, agent)
        })
        .1
}

fn fails_then_recovers(resource: &str, mode: &str, timeout_ms: u64) -> baton::agent::host::Failure {
    let agent = hostile();
    call(agent, Action::Start, resource, &[], 2000)
        .result
        .unwrap();
    let r = call(
        agent,
        Action::Monitor,
        resource,
        &[("mode", mode)],
        timeout_ms,
    );
    let f = r.result.unwrap_err();
    // The next call on the same resource works (a trapped instance is rebuilt).
    let next = call(agent, Action::Validate, resource, &[], 2000);
    assert!(
        next.result.is_ok(),
        "{mode}: the agent did not recover: {:?}",
        next.result
    );
    f
}

#[test]
fn a_panic_traps_and_is_reported_with_the_agents_message() {
    let f = fails_then_recovers("trap", "trap", 2000);
    assert_eq!(
        (f.cause, f.class),
        (FailureCause::Trap, ErrorClass::Generic),
        "{f}"
    );
    assert!(
        f.reason.contains("panicked") && f.reason.contains("hostile agent panics on purpose"),
        "{f}"
    );
    // The rebuilt instance lost the in-memory start: agents must check real state.
    let r = call(hostile(), Action::Monitor, "trap", &[], 2000);
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::NotRunning));
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_deadline() {
    let f = fails_then_recovers("loop", "loop", 200);
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(f.reason.contains("200 ms deadline"), "{f}");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let f = fails_then_recovers("membomb", "membomb", 10_000);
    assert_eq!(f.cause, FailureCause::Trap, "{f}");
    assert!(f.reason.contains("memory limit of 64 MiB"), "{f}");
}

#[test]
fn unbounded_recursion_overflows_the_stack_limit() {
    let f = fails_then_recovers("stack", "stack", 10_000);
    assert_eq!(f.cause, FailureCause::Trap, "{f}");
    assert!(f.reason.contains("hit its stack limit (512 KiB)"), "{f}");
}

#[test]
fn running_off_the_stack_in_linear_memory_is_named_as_a_likely_stack_overflow() {
    let f = fails_then_recovers("shadow", "shadow-stack", 10_000);
    assert_eq!(f.cause, FailureCause::Trap, "{f}");
    assert!(
        f.reason.contains("out of bounds memory access")
            && f.reason.contains("most likely a stack overflow"),
        "{f}"
    );
}

#[test]
fn a_sleep_in_the_agent_is_cut_at_the_deadline() {
    let started = std::time::Instant::now();
    let f = fails_then_recovers("sleep", "sleep", 300);
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(
        f.reason
            .contains("while the agent slept (it asked for 3600000 ms"),
        "{f}"
    );
    // The hour's sleep did not hold the call.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_hang_inside_a_host_call_is_cut_at_the_deadline_and_the_command_killed() {
    let started = std::time::Instant::now();
    let f = fails_then_recovers("hang", "hang-host", 300);
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(f.reason.contains("inside host call run(/bin/sleep)"), "{f}");
    // The 3600 s sleep did not hold the call (it would have, had it not been killed).
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn forbidden_command_file_and_network_attempts_are_denied_and_classified() {
    for (resource, mode, wanted) in [
        ("exec", "exec-forbidden", "exec:/bin/sh"),
        ("read", "read-forbidden", "read:/etc/shadow"),
        ("net", "net-forbidden", "net:198.18.0.1:9"),
    ] {
        let r = call(
            hostile(),
            Action::Monitor,
            resource,
            &[("mode", mode)],
            2000,
        );
        let f = r.result.unwrap_err();
        assert_eq!(
            (f.cause, f.class),
            (FailureCause::CapabilityDenied, ErrorClass::Misconfigured),
            "{f}"
        );
        assert!(
            f.reason.contains(&format!("capability denied: {wanted}")),
            "{f}"
        );
        assert_eq!(r.recovery, Recovery::StopEverywhere);
    }
}

#[test]
fn a_tcp_request_timeout_names_the_step_the_limit_and_the_address() {
    // A server that accepts and never answers, at the address the agent requests.
    let server = std::net::TcpListener::bind("127.0.0.1:47999")
        .expect("port 47999 on loopback is needed by this test");
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(
        dir.path(),
        "[agents.grants]\nhostile = [\"net:127.0.0.1:47999\"]\n",
    );
    let agent = cat.load(wasm("hostile").to_str().unwrap()).unwrap();
    let r = call(
        &agent,
        Action::Monitor,
        "silent",
        &[("mode", "net-silent")],
        5000,
    );
    let f = r.result.unwrap_err();
    assert!(
        f.reason
            .contains("timeout after 200 ms waiting for the reply of 127.0.0.1:47999"),
        "{f}"
    );
    drop(server);
}

#[test]
fn a_core_module_is_refused_as_one_with_the_target_to_build_for() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let core = dir.path().join("core.wasm");
    // The smallest core module: magic and version 1.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = format!("{:#}", cat.load(core.to_str().unwrap()).err().unwrap());
    assert!(
        e.contains("core.wasm is a core module, not a component (built for wasm32-wasip1?)")
            && e.contains("--target wasm32-wasip2"),
        "{e}"
    );
}

/// An agent that handles a refused capability keeps its own error (the refusal
/// is a warning in the log); only a refusal passed on is `misconfigured`.
#[test]
fn a_refusal_the_agent_handled_keeps_the_agents_own_error() {
    let r = call(
        hostile(),
        Action::Monitor,
        "handled",
        &[("mode", "net-handled")],
        2000,
    );
    let f = r.result.unwrap_err();
    assert_eq!(
        (f.cause, f.class),
        (FailureCause::Agent, ErrorClass::Generic),
        "{f}"
    );
    assert!(f.reason.contains("198.18.0.1:9 is unreachable"), "{f}");
    assert_eq!(r.recovery, Recovery::RestartHere);
}

#[test]
fn the_agent_keeps_serving_other_resources_while_one_misbehaves() {
    let agent = hostile();
    call(agent, Action::Start, "steady", &[], 2000)
        .result
        .unwrap();
    let _ = call(agent, Action::Monitor, "noisy", &[("mode", "trap")], 2000);
    let r = call(agent, Action::Monitor, "steady", &[], 2000);
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::Running));
    // A monitor that sleeps past its deadline, again and again, fails its own
    // resource each time and no other.
    for round in 0..6 {
        let f = call(agent, Action::Monitor, "noisy", &[("mode", "sleep")], 200)
            .result
            .unwrap_err();
        assert_eq!(f.cause, FailureCause::Timeout, "round {round}: {f}");
        let r = call(agent, Action::Monitor, "steady", &[], 2000);
        assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::Running));
    }
    assert!(
        call(agent, Action::Stop, "steady", &[], 2000)
            .result
            .is_ok()
    );
}

/// A component built for contract 1.2 reports its promotion score with its
/// monitor state, in one answer; the promoted instance adds its acknowledged
/// position. It loads beside the 1.0 and 1.1 ones.
#[test]
fn a_component_for_contract_1_2_reports_its_promotion_score() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let replica = cat.load(wasm("replica_1_2").to_str().unwrap()).unwrap();
    assert_eq!(replica.metadata().contract.to_string(), "1.2");
    let params = [
        ("generation", "3"),
        ("position", "4096"),
        ("acknowledged", "4000"),
    ];
    let run = |action| call(&replica, action, "r", &params, 2000).result;
    let score = |state, acknowledged| Outcome::Scored {
        state,
        promotion: Promotion {
            generation: 3,
            position: 4096,
            acknowledged,
        },
    };
    assert!(run(Action::Start).is_ok());
    assert_eq!(
        run(Action::Monitor).unwrap(),
        score(MonitorState::Running, None)
    );
    assert!(run(Action::Promote).is_ok());
    assert_eq!(
        run(Action::Monitor).unwrap(),
        score(MonitorState::Promoted, Some(4000))
    );
    // Not running: a state, no score.
    assert!(run(Action::Stop).is_ok());
    assert_eq!(
        run(Action::Monitor).unwrap(),
        Outcome::State(MonitorState::NotRunning)
    );
}

#[test]
fn agents_built_for_1_0_1_1_and_1_2_load_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let (grants, markers) = crate::support::sample_wasm_grants(dir.path());
    let cat = catalog(dir.path(), &grants);
    let legacy = cat.load(wasm("legacy_1_0").to_str().unwrap()).unwrap();
    let current = cat
        .load(wasm("sample_wasm_agent").to_str().unwrap())
        .unwrap();
    assert_eq!(legacy.metadata().contract.to_string(), "1.0");
    assert_eq!(hostile().metadata().contract.to_string(), "1.1");
    assert_eq!(current.metadata().contract.to_string(), "1.2");
    assert_eq!(
        (legacy.kind(), current.kind()),
        (AgentKind::Wasm, AgentKind::Wasm)
    );
    let params = [("dir".to_string(), markers.display().to_string())].into();
    let report = conformance::run(&current, params, "side-by-side", "testnode", None);
    assert!(report.passed, "{report:#?}");
    // The 1.0 fixture keeps its resource in the instance's memory, which the
    // conformance test catches when it replaces the instance, and only there.
    let report = conformance::run(
        &legacy,
        Default::default(),
        "side-by-side",
        "testnode",
        None,
    );
    let failed: Vec<&str> = crate::support::failed_steps(&report)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        failed,
        ["monitor after the agent's process restarted: running"],
        "{report:#?}"
    );
    // recover exists since 1.1: a 1.0 agent is never asked, the host answers for it.
    let f = call(&legacy, Action::Recover, "r1", &[], 1000)
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::Unimplemented);
    assert_eq!(
        call(&legacy, Action::Recover, "r1", &[], 1000).recovery,
        Recovery::None
    );
}

#[test]
fn a_component_for_contract_2_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let e = format!(
        "{:#}",
        cat.load(wasm("future_2_0").to_str().unwrap())
            .err()
            .unwrap()
    );
    assert!(e.contains("future_2_0.wasm"), "{e}");
    assert!(
        e.contains("built for contract 2.0") && e.contains("1.0..=1.2"),
        "{e}"
    );
}

#[test]
fn random_bytes_named_wasm_are_refused_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let e = format!("{:#}", cat.load(fake.to_str().unwrap()).err().unwrap());
    assert!(
        e.contains("fake.wasm is not a valid WebAssembly component"),
        "{e}"
    );
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let e = format!("{:#}", cat.load(text.to_str().unwrap()).err().unwrap());
    assert!(e.contains("text.wasm is neither a native library"), "{e}");
}

#[test]
fn unknown_and_missing_parameters_are_refused_before_the_agent_runs() {
    let r = call(
        hostile(),
        Action::Monitor,
        "params",
        &[("mdoe", "ok")],
        1000,
    );
    let f = r.result.unwrap_err();
    assert_eq!(
        (f.cause, f.class),
        (FailureCause::Refused, ErrorClass::Misconfigured)
    );
    assert!(
        f.reason
            .contains("parameter mdoe: unknown to agent hostile; did you mean \"mode\"?"),
        "{f}"
    );
    let r = call(
        hostile(),
        Action::Monitor,
        "params",
        &[("mode", "sideways")],
        1000,
    );
    assert!(
        r.result
            .unwrap_err()
            .reason
            .contains("\"sideways\" is not one of")
    );
}

/// The Python sample (componentize-py), in the same sandbox and through the same
/// contract as a Rust component: it passes the conformance test, its state
/// outside the instance, its capabilities expanded from its `dir` parameter.
#[test]
fn a_python_component_passes_the_conformance_test() {
    let dir = tempfile::tempdir().unwrap();
    let (grants, markers) = crate::support::sample_wasm_grants(dir.path());
    let cat = catalog(dir.path(), &grants.replace("sample-wasm", "sample-python"));
    let agent = cat
        .load(wasm("sample_python_agent").to_str().unwrap())
        .unwrap();
    assert_eq!(agent.kind(), AgentKind::Wasm);
    assert_eq!(agent.metadata().name, "sample-python");
    let params = [("dir".to_string(), markers.display().to_string())].into();
    let report = conformance::run(&agent, params, "python", "testnode", None);
    assert!(report.passed, "{report:#?}");
}

/// A WebAssembly agent starts a foreground server detached through `run`: the
/// program it requested as `spawn:` runs on in its own process group, as the
/// grant's user, tagged with the resource, and `run` returns at once.
#[test]
fn a_spawned_program_runs_on_detached_and_tagged_with_its_resource() {
    use baton_plugin_api::service;
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(
        dir.path(),
        "[agents.grants]\nhostile = [\"spawn:/bin/sleep\"]\n",
    );
    let agent = cat.load(wasm("hostile").to_str().unwrap()).unwrap();
    let r = call(
        &agent,
        Action::Monitor,
        "spawned",
        &[("mode", "spawn")],
        2000,
    );
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::Running));
    let host = service::host_id();
    let found = service::tagged(&host, Some("spawned"));
    assert_eq!(found.len(), 1, "{found:?}");
    let pid = found[0].pid;
    assert_eq!(found[0].name, "sleep");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgrp: u32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, pid, "its own process group");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534")),
        "runs as nobody: {status}"
    );
    assert_eq!(
        service::end(&host, Some("spawned"), Duration::ZERO).unwrap(),
        1
    );
}
