//! Native agents: the runner contains crashes, hangs and runaway memory; versions
//! are checked; trusted libraries run in-process.

use crate::support::{call, catalog, native_lib};
use baton::agent::backend::native::RunnerPolicy;
use baton::agent::conformance;
use baton::agent::host::{AgentKind, FailureCause};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome, Recovery};
use std::time::Duration;

fn fast_policy() -> RunnerPolicy {
    let mut p = RunnerPolicy::new(crate::support::baton_exe());
    p.backoff_initial = Duration::from_millis(1);
    p.backoff_max = Duration::from_millis(5);
    p.memory_limit_mib = 512;
    p
}

fn hostile() -> (tempfile::TempDir, baton::agent::host::AgentHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = catalog(dir.path(), "");
    cat.set_runner_policy(fast_policy());
    let agent = cat
        .load(native_lib("native-hostile").to_str().unwrap())
        .unwrap();
    (dir, agent)
}

#[test]
fn the_sample_passes_conformance_through_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let agent = cat
        .load(native_lib("sample-native-agent").to_str().unwrap())
        .unwrap();
    assert_eq!(agent.kind(), AgentKind::Native);
    let report = conformance::run(&agent, Default::default(), "sample-r1", "testnode", None);
    assert!(report.passed, "{report:#?}");
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.name.contains("agent's process restarted") && s.passed),
        "{report:#?}"
    );
}

/// An agent whose resource lives only in its runner's memory (as a server
/// started as a plain child of the runner would) fails the conformance test at
/// the runner restart, and only there.
#[test]
fn a_resource_that_dies_with_the_runner_fails_the_conformance_test() {
    let (_d, agent) = hostile();
    let report = conformance::run(&agent, Default::default(), "outlive", "testnode", None);
    let failed: Vec<&str> = crate::support::failed_steps(&report)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        failed,
        ["monitor after the agent's process restarted: running"],
        "{report:#?}"
    );
    // The failure says what the likely cause is and the fix.
    let step = crate::support::failed_steps(&report)[0];
    assert!(
        step.got
            .contains("likely cause: the resource died with the agent's process")
            && step.got.contains("service::start_detached"),
        "{}",
        step.got
    );
}

#[test]
fn a_panic_is_a_generic_failure_and_the_runner_survives() {
    let (_d, agent) = hostile();
    call(&agent, Action::Start, "r", &[], 2000).result.unwrap();
    let r = call(&agent, Action::Monitor, "r", &[("mode", "panic")], 2000);
    let f = r.result.unwrap_err();
    assert_eq!(
        (f.cause, f.class),
        (FailureCause::Agent, ErrorClass::Generic)
    );
    assert!(
        f.reason
            .contains("panicked in monitor: native-hostile panics on purpose"),
        "{f}"
    );
    assert_eq!(r.recovery, Recovery::RestartHere);
    // Same runner, same state: the start before the panic is still remembered.
    let r = call(&agent, Action::Monitor, "r", &[], 2000);
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::Running));
    let health = agent.health();
    assert!(
        health.contains(&("runner starts".into(), "1".into())),
        "{health:?}"
    );
}

#[test]
fn segfault_and_abort_are_classified_crashes_and_the_runner_restarts() {
    let (_d, agent) = hostile();
    for (mode, signal) in [("segfault", "SIGSEGV"), ("abort", "SIGABRT")] {
        let f = call(&agent, Action::Monitor, "r", &[("mode", mode)], 3000)
            .result
            .unwrap_err();
        assert_eq!(f.cause, FailureCause::Crash, "{f}");
        assert!(f.reason.contains(signal), "{mode}: {f}");
        // The next call gets a fresh runner.
        let ok = call(&agent, Action::Monitor, "r", &[], 3000);
        assert_eq!(ok.result.unwrap(), Outcome::State(MonitorState::NotRunning));
    }
}

/// A runner killed from outside while idle (a guardian fencing its node's
/// process groups, the OOM killer) fails no call: the next call runs on a new
/// runner.
#[test]
fn a_runner_killed_while_idle_fails_no_call() {
    let (_d, agent) = hostile();
    let ok = call(&agent, Action::Monitor, "r", &[], 3000);
    assert_eq!(ok.result.unwrap(), Outcome::State(MonitorState::NotRunning));
    let pid = runner_pid(&agent);
    // SAFETY: killing the runner this test's agent started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    // Dead: a zombie until the host reaps it.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while baton_agents::proc_stat(pid as u32).is_some_and(|(_, zombie)| !zombie) {
        assert!(
            std::time::Instant::now() < until,
            "the runner survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = call(&agent, Action::Monitor, "r", &[], 3000);
    assert_eq!(
        after.result.unwrap(),
        Outcome::State(MonitorState::NotRunning),
        "the call after the kill failed"
    );
    assert_ne!(runner_pid(&agent), pid, "not a new runner");
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let (_d, agent) = hostile();
    let pid_before = runner_pid(&agent);
    let r = call(&agent, Action::Monitor, "r", &[("mode", "loop")], 300);
    let f = r.result.unwrap_err();
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(
        f.reason.contains("300 ms deadline") && f.reason.contains("process group was killed"),
        "{f}"
    );
    assert!(
        crate::support::gone_within(pid_before, Duration::from_secs(5)),
        "the looping runner survived"
    );
    let ok = call(&agent, Action::Monitor, "r", &[], 3000);
    assert_eq!(ok.result.unwrap(), Outcome::State(MonitorState::NotRunning));
}

#[test]
fn a_memory_bomb_hits_the_runner_limit_not_the_host() {
    let (_d, agent) = hostile();
    let f = call(&agent, Action::Monitor, "r", &[("mode", "membomb")], 10_000)
        .result
        .unwrap_err();
    assert_eq!(f.cause, FailureCause::Crash, "{f}");
    assert!(
        f.reason.contains("SIGABRT")
            && f.reason
                .contains("an allocation failed at its memory limit 512 MiB"),
        "{f}"
    );
    assert!(call(&agent, Action::Monitor, "r", &[], 3000).result.is_ok());
}

#[test]
fn agent_output_on_stdout_does_not_corrupt_the_protocol() {
    let (_d, agent) = hostile();
    for _ in 0..3 {
        let r = call(&agent, Action::Monitor, "r", &[("mode", "stdout")], 2000);
        assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::NotRunning));
    }
}

#[test]
fn repeated_crashes_quarantine_the_library_while_other_agents_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = catalog(dir.path(), "");
    let mut policy = fast_policy();
    policy.quarantine_after = 3;
    cat.set_runner_policy(policy);
    let bad = cat
        .load(native_lib("native-hostile").to_str().unwrap())
        .unwrap();
    let good = cat
        .load(native_lib("sample-native-agent").to_str().unwrap())
        .unwrap();
    for _ in 0..3 {
        let f = call(&bad, Action::Monitor, "r", &[("mode", "abort")], 3000)
            .result
            .unwrap_err();
        assert_eq!(f.cause, FailureCause::Crash);
        let ok = call(&good, Action::Monitor, "g", &[], 3000);
        assert_eq!(ok.result.unwrap(), Outcome::State(MonitorState::NotRunning));
    }
    let f = call(&bad, Action::Monitor, "r", &[], 3000)
        .result
        .unwrap_err();
    assert_eq!(f.cause, FailureCause::Quarantined, "{f}");
    assert!(
        f.reason.contains("quarantined")
            && f.reason.contains("crashed 3 times")
            && f.reason.contains("the next baton command loads it afresh")
            && !f.reason.contains("restart"),
        "a one-shot command's message: {f}"
    );
    // A stop still runs under quarantine: what the agent started can be stopped.
    let stop = call(&bad, Action::Stop, "r", &[], 3000);
    assert!(stop.result.is_ok(), "{:?}", stop.result);
    // In the daemon, the same quarantine points at the daemon.
    let mut policy = fast_policy();
    policy.quarantine_after = 1;
    policy.long_lived = true;
    cat.set_runner_policy(policy);
    let bad = cat
        .load(native_lib("native-hostile").to_str().unwrap())
        .unwrap();
    call(&bad, Action::Monitor, "r", &[("mode", "abort")], 3000)
        .result
        .unwrap_err();
    let f = call(&bad, Action::Monitor, "r", &[], 3000)
        .result
        .unwrap_err();
    assert!(
        f.reason
            .contains("then restart this node's daemon, or wait"),
        "{f}"
    );
}

/// A monitor that never answers is its resource's failure alone: however
/// often it times out (far past the quarantine's five), the library is not
/// quarantined, and another resource of the same type keeps answering and
/// stops cleanly.
#[test]
fn a_hung_monitor_fails_its_resource_alone_and_never_quarantines_the_library() {
    let (_d, agent) = hostile();
    let good = [("mode", "detached")];
    let bad = [("mode", "hang-monitor")];
    crate::support::a_hung_monitor_fails_alone(&agent, &good, &bad, &bad, 200, 8);
    assert!(!agent.health().iter().any(|(k, _)| k == "quarantined"));
    for resource in ["good", "bad"] {
        let gone = call(&agent, Action::Monitor, resource, &good, 3000);
        assert_eq!(
            gone.result.unwrap(),
            Outcome::State(MonitorState::NotRunning)
        );
    }
}

#[test]
fn a_library_built_for_contract_2_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let e = format!(
        "{:#}",
        cat.load(native_lib("native-future").to_str().unwrap())
            .err()
            .unwrap()
    );
    assert!(e.contains("libnative_future.so"), "{e}");
    assert!(
        e.contains("built for contract 2.0") && e.contains("supports contracts 1.0..=1.2"),
        "{e}"
    );
}

#[test]
fn a_random_file_named_so_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, b"\x7fELF but not really a library").unwrap();
    let e = format!("{:#}", cat.load(fake.to_str().unwrap()).err().unwrap());
    assert!(
        e.contains("libfake.so") && e.contains("is not a baton native agent"),
        "{e}"
    );
    // A real shared library that is not an agent: missing export.
    let libc_so = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap();
    let copy = dir.path().join("libnotagent.so");
    std::fs::copy(libc_so, &copy).unwrap();
    let e = format!("{:#}", cat.load(copy.to_str().unwrap()).err().unwrap());
    assert!(
        e.contains("does not export baton's agent root module"),
        "{e}"
    );
}

#[test]
fn a_trusted_library_runs_in_process_and_its_panics_are_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "trusted = [\"native-hostile\"]\n");
    let installed = cat.install(&native_lib("native-hostile")).unwrap();
    assert_eq!(installed.manifest.name, "native-hostile");
    let agent = cat.load("native-hostile").unwrap();
    assert_eq!(agent.kind(), AgentKind::NativeTrusted);
    let f = call(&agent, Action::Monitor, "r", &[("mode", "panic")], 2000)
        .result
        .unwrap_err();
    assert!(f.reason.contains("panicked"), "{f}");
    assert!(call(&agent, Action::Start, "r", &[], 2000).result.is_ok());
}

fn runner_pid(agent: &baton::agent::host::AgentHandle) -> i32 {
    let runner = agent
        .health()
        .into_iter()
        .find(|(k, _)| k == "runner")
        .unwrap()
        .1;
    runner.strip_prefix("pid ").unwrap().parse().unwrap()
}

/// Two resources of one native type: a monitor of one that hangs past its
/// deadline kills the runner, and the other's server (started with the SDK's
/// `service::start_detached`) keeps running; a server started as a plain child
/// of the runner does not, which is why the SDK call exists.
#[test]
fn one_resources_timeout_leaves_another_resources_server_running() {
    let (_d, agent) = hostile();
    let host = baton_plugin_api::service::host_id();
    let pids = |r: &str| -> Vec<u32> {
        baton_plugin_api::service::tagged(&host, Some(r))
            .iter()
            .map(|t| t.pid)
            .collect()
    };
    for r in ["iso-a", "iso-b"] {
        call(&agent, Action::Start, r, &[("mode", "detached")], 3000)
            .result
            .unwrap();
    }
    call(&agent, Action::Start, "iso-c", &[("mode", "child")], 3000)
        .result
        .unwrap();
    let b = pids("iso-b");
    assert_eq!(b.len(), 1, "one server for iso-b: {b:?}");
    let f = call(&agent, Action::Monitor, "iso-a", &[("mode", "loop")], 300)
        .result
        .unwrap_err();
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    let r = call(
        &agent,
        Action::Monitor,
        "iso-b",
        &[("mode", "detached")],
        3000,
    );
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::Running));
    assert_eq!(pids("iso-b"), b, "the same server, untouched");
    let r = call(&agent, Action::Monitor, "iso-c", &[("mode", "child")], 3000);
    assert_eq!(
        r.result.unwrap(),
        Outcome::State(MonitorState::NotRunning),
        "a plain child dies with the runner"
    );
    for r in ["iso-a", "iso-b"] {
        call(&agent, Action::Stop, r, &[("mode", "detached")], 3000)
            .result
            .unwrap();
        assert!(pids(r).is_empty(), "{r} stopped");
    }
}

/// A stop that runs past its deadline: the host kills the resource's tagged
/// processes (and only those) and says so; the stop still counts as failed.
#[test]
fn a_stop_past_its_deadline_ends_the_resources_processes() {
    let (_d, agent) = hostile();
    let host = baton_plugin_api::service::host_id();
    let count = |r: &str| baton_plugin_api::service::tagged(&host, Some(r)).len();
    for r in ["overrun", "bystander"] {
        call(&agent, Action::Start, r, &[("mode", "detached")], 3000)
            .result
            .unwrap();
    }
    let f = call(&agent, Action::Stop, "overrun", &[("mode", "loop")], 300)
        .result
        .unwrap_err();
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(
        f.reason
            .contains("the host killed the resource's 1 processes"),
        "{f}"
    );
    assert_eq!(count("overrun"), 0);
    assert_eq!(
        count("bystander"),
        1,
        "another resource's server is untouched"
    );
    call(
        &agent,
        Action::Stop,
        "bystander",
        &[("mode", "detached")],
        3000,
    )
    .result
    .unwrap();
    assert_eq!(count("bystander"), 0);
}

/// The resources of one native agent type share a few runners: while one
/// resource's call hangs in one runner, another resource's call is served by
/// another runner at once instead of waiting behind it.
#[test]
fn a_hanging_call_does_not_hold_up_another_resources_call() {
    let (_d, agent) = hostile();
    let agent = std::sync::Arc::new(agent);
    let (tx, rx) = std::sync::mpsc::channel();
    let hung = std::sync::Arc::clone(&agent);
    std::thread::spawn(move || {
        let r = call(&hung, Action::Monitor, "pool-a", &[("mode", "loop")], 3000);
        let _ = tx.send(r);
    });
    let r = call(&agent, Action::Monitor, "pool-b", &[], 2000);
    assert_eq!(r.result.unwrap(), Outcome::State(MonitorState::NotRunning));
    assert!(
        rx.try_recv().is_err(),
        "pool-b was answered while pool-a's call still hung"
    );
    let hung = rx.recv().unwrap();
    assert_eq!(hung.result.unwrap_err().cause, FailureCause::Timeout);
}

/// A monitor round sends a service's requests for one native agent to one
/// runner in a batch. Each still gets its own answer and its own deadline: a
/// request that hangs or crashes the runner fails alone, and the ones after it
/// are answered by a new runner.
#[test]
fn a_batch_of_monitors_answers_each_even_when_one_hangs_and_one_crashes() {
    let (_d, agent) = hostile();
    let modes = ["ok", "loop", "ok", "segfault", "ok"];
    let reqs: Vec<_> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            crate::support::request(
                Action::Monitor,
                &format!("batch-{i}"),
                &[("mode", mode)],
                400,
            )
        })
        .collect();
    let reports = agent.call_many_here(reqs);
    assert_eq!(reports.len(), modes.len());
    for (i, (report, mode)) in reports.iter().zip(modes).enumerate() {
        assert_eq!(report.resource, format!("batch-{i}"));
        match mode {
            "ok" => assert_eq!(
                report.result.as_ref().unwrap(),
                &Outcome::State(MonitorState::NotRunning),
                "{i}"
            ),
            "loop" => {
                let f = report.result.as_ref().unwrap_err();
                assert_eq!(f.cause, FailureCause::Timeout, "{f}");
                assert!(f.reason.contains("400 ms deadline"), "{f}");
            }
            _ => {
                let f = report.result.as_ref().unwrap_err();
                assert_eq!(f.cause, FailureCause::Crash, "{f}");
                assert!(f.reason.contains("SIGSEGV"), "{f}");
            }
        }
    }
}
