//! The OCF bridge on real ClusterLabs agents (Debian's resource-agents) and on
//! fixtures that misbehave.

use crate::support::{agents_config, baton_with, call, catalog, gone_within, output_text, repo};
use baton::agent::catalog::AgentCatalog;
use baton::agent::conformance;
use baton::agent::host::FailureCause;
use baton_plugin_api::{Action, ErrorClass, Recovery};
use std::time::Duration;

fn fixtures(store: &std::path::Path) -> AgentCatalog {
    let root = repo().join("host/tests/fixtures/ocf");
    catalog(
        store,
        &format!("ocf_root = {:?}\n", root.display().to_string()),
    )
}

#[test]
fn real_clusterlabs_agents_pass_the_conformance_run() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let state = |n: &str| dir.path().join(n).display().to_string();
    let pidfile = state("anything.pid");
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "ocf:heartbeat:Dummy",
            vec![("state".into(), state("dummy.state"))],
        ),
        (
            "ocf:heartbeat:Stateful",
            vec![("state".into(), state("stateful.state"))],
        ),
        (
            "ocf:heartbeat:anything",
            vec![
                ("binfile".into(), "/bin/sleep".into()),
                ("cmdline_options".into(), "600".into()),
                ("pidfile".into(), pidfile.clone()),
                ("stop_timeout".into(), "1".into()),
            ],
        ),
    ];
    for (name, params) in cases {
        let agent = cat.load(name).unwrap_or_else(|e| {
            panic!("{name}: {e:#} (is resource-agents installed? scripts/test installs it)")
        });
        let report = conformance::run(
            &agent,
            params.into_iter().collect(),
            "ct-clusterlabs",
            "testnode",
            None,
        );
        assert!(report.passed, "{name}: {report:#?}");
    }
    assert!(
        !std::path::Path::new(&pidfile).exists(),
        "anything left its pidfile behind"
    );
}

#[test]
fn a_promotable_agent_reports_roles() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "");
    let agent = cat.load("ocf:heartbeat:Stateful").unwrap();
    let state = dir.path().join("s").display().to_string();
    let p = [("state", state.as_str())];
    call(&agent, Action::Start, "roles", &p, 20_000)
        .result
        .unwrap();
    call(&agent, Action::Promote, "roles", &p, 20_000)
        .result
        .unwrap();
    let r = call(&agent, Action::Monitor, "roles", &p, 20_000);
    assert_eq!(
        r.result.unwrap(),
        baton_plugin_api::Outcome::State(baton_plugin_api::MonitorState::Promoted)
    );
    call(&agent, Action::Demote, "roles", &p, 20_000)
        .result
        .unwrap();
    call(&agent, Action::Stop, "roles", &p, 20_000)
        .result
        .unwrap();
}

#[test]
fn garbage_meta_data_is_refused_with_the_agent_name() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        fixtures(dir.path()).load("ocf:test:Garbage").err().unwrap()
    );
    assert!(
        e.contains("ocf:test:Garbage: meta-data is not valid OCF XML"),
        "{e}"
    );
}

#[test]
fn a_missing_agent_names_the_path_and_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        fixtures(dir.path()).load("ocf:test:Nope").err().unwrap()
    );
    assert!(
        e.contains("resource.d/test/Nope") && e.contains("resource-agents"),
        "{e}"
    );
}

#[test]
fn an_unknown_exit_code_is_a_bad_reply_not_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Weird").unwrap();
    let r = call(&agent, Action::Monitor, "w", &[], 5000);
    let f = r.result.unwrap_err();
    assert_eq!(f.cause, FailureCause::BadReply);
    assert!(
        f.reason
            .contains("exited with 42, which is not an OCF exit code"),
        "{f}"
    );
    assert_eq!(r.recovery, Recovery::RestartHere);
}

#[test]
fn the_exit_reason_is_reported_and_a_failed_stop_means_fencing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Weird").unwrap();
    let r = call(&agent, Action::Stop, "w", &[], 5000);
    let f = r.result.unwrap_err();
    assert_eq!(f.class, ErrorClass::Generic);
    assert_eq!(f.reason, "the widget is jammed; unjam it by hand");
    assert_eq!(r.recovery, Recovery::Fence);
}

#[test]
fn a_hung_action_is_killed_with_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Weird").unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let p = pidfile.display().to_string();
    let r = call(&agent, Action::Start, "w", &[("pidfile", p.as_str())], 500);
    let f = r.result.unwrap_err();
    assert_eq!(f.cause, FailureCause::Timeout, "{f}");
    assert!(
        f.reason.contains("500 ms deadline") && f.reason.contains("process group was killed"),
        "{f}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "the agent's grandchild survived the timeout"
    );
}

#[test]
fn the_agent_gets_pacemakers_environment() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Weird").unwrap();
    let dump = dir.path().join("env");
    let d = dump.display().to_string();
    let mut req =
        crate::support::request(Action::Validate, "web-ip", &[("dump", d.as_str())], 4000);
    req.depth = 10;
    agent.call(&req).result.unwrap();
    let env = std::fs::read_to_string(&dump).unwrap();
    let root = repo().join("host/tests/fixtures/ocf");
    for expected in [
        format!("OCF_ROOT={}", root.display()),
        "OCF_RA_VERSION_MAJOR=1".into(),
        "OCF_RA_VERSION_MINOR=1".into(),
        "OCF_RESOURCE_INSTANCE=web-ip".into(),
        "OCF_RESOURCE_TYPE=Weird".into(),
        "OCF_RESOURCE_PROVIDER=test".into(),
        format!("OCF_RESKEY_dump={d}"),
        "OCF_RESKEY_CRM_meta_timeout=4000".into(),
        "OCF_RESKEY_CRM_meta_interval=0".into(),
        "OCF_RESKEY_CRM_meta_on_node=testnode".into(),
        "OCF_CHECK_LEVEL=10".into(),
        "OCF_EXIT_REASON_PREFIX=ocf-exit-reason:".into(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "missing {expected} in\n{env}"
        );
    }
}

/// A vendor's script in a directory of its own (`ocf_path`) runs with the
/// standard OCF_ROOT, so it finds `ocf-shellfuncs`; `agent list` shows it.
#[test]
fn an_agent_in_an_extra_directory_keeps_the_standard_ocf_root() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("vendor-ocf");
    std::fs::create_dir_all(extra.join("vendor")).unwrap();
    // Dummy sources ${OCF_ROOT}/lib/heartbeat/ocf-shellfuncs.
    std::fs::copy(
        "/usr/lib/ocf/resource.d/heartbeat/Dummy",
        extra.join("vendor/Probe"),
    )
    .unwrap();
    let cat = catalog(
        dir.path(),
        &format!("ocf_path = [{:?}]\n", extra.display().to_string()),
    );
    let agent = cat.load("ocf:vendor:Probe").unwrap();
    let state = dir.path().join("probe.state").display().to_string();
    let params = [("state".to_string(), state)].into_iter().collect();
    let report = conformance::run(&agent, params, "ct-ocf-path", "testnode", None);
    assert!(report.passed, "{report:#?}");
    assert!(
        cat.list()
            .iter()
            .any(|a| a.name == "ocf:vendor:Probe" && a.source == extra.display().to_string())
    );
    // A name found nowhere names every place searched.
    let e = format!("{:#}", cat.load("ocf:vendor:Nope").err().unwrap());
    assert!(
        e.contains("/usr/lib/ocf/resource.d/vendor/Nope")
            && e.contains("vendor-ocf/vendor/Nope")
            && e.contains("agents.ocf_path"),
        "{e}"
    );
}

/// `baton agent test ./script` tests an OCF agent before it is packaged, with
/// the standard shell helpers found; a failing action shows the agent's stderr.
#[test]
fn an_ocf_script_is_tested_by_its_path_before_it_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("myagent");
    std::fs::copy("/usr/lib/ocf/resource.d/heartbeat/Dummy", &script).unwrap();
    let config = agents_config(dir.path());
    let state = format!("state={}", dir.path().join("s.state").display());
    let o = baton_with(
        &config,
        &[],
        &["agent", "test", script.to_str().unwrap(), "-p", &state],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(output_text(&o).contains("PASS"), "{}", output_text(&o));
    // A script that fails says why, from its stderr.
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\n. ${OCF_ROOT}/lib/heartbeat/ocf-shellfuncs\n\
         case $1 in meta-data) cat <<'X'\n<?xml version=\"1.0\"?>\n<resource-agent name=\"broken\" version=\"0.1\">\n\
         <version>1.0</version><shortdesc lang=\"en\">b</shortdesc><parameters/>\n<actions>\
         <action name=\"start\" timeout=\"5s\"/><action name=\"stop\" timeout=\"5s\"/>\
         <action name=\"monitor\" timeout=\"5s\"/><action name=\"meta-data\" timeout=\"5s\"/>\
         </actions></resource-agent>\nX\nexit 0;;\n\
         start) echo \"cannot open /etc/broken.conf\" >&2; exit $OCF_ERR_GENERIC;;\n\
         *) exit $OCF_NOT_RUNNING;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = baton_with(
        &config,
        &[],
        &["agent", "run", broken.to_str().unwrap(), "start"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("cannot open /etc/broken.conf"),
        "{}",
        output_text(&o)
    );
}

/// What an agent's action leaves running is recorded with the resource (its
/// processes carry the resource's tags), so the conformance test finds a
/// process that stop forgot, names it, and kills it.
#[test]
fn a_process_left_behind_by_stop_fails_the_conformance_test() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Leaky").unwrap();
    let state = dir.path().join("leaky.state").display().to_string();
    let params = [("state".to_string(), state)].into_iter().collect();
    let report = conformance::run(&agent, params, "ct-leaky", "testnode", None);
    let failed: Vec<(&str, &str)> = crate::support::failed_steps(&report)
        .iter()
        .map(|s| (s.name.as_str(), s.got.as_str()))
        .collect();
    assert_eq!(failed.len(), 2, "{report:#?}");
    for (name, got) in failed {
        assert!(
            name.starts_with("no process of the resource left"),
            "{name}"
        );
        assert!(
            got.contains("1 left running (killed now)") && got.contains("(sleep)"),
            "{got}"
        );
    }
    let host = baton_plugin_api::service::host_id();
    assert!(baton_plugin_api::service::tagged(&host, Some("ct-leaky")).is_empty());
}

/// A monitor that never answers is killed at its deadline, each time, and fails
/// only its own resource: another resource of the same agent keeps answering
/// and stops cleanly.
#[test]
fn a_hung_monitor_fails_its_resource_alone() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fixtures(dir.path()).load("ocf:test:Sleepy").unwrap();
    let state = |r: &str| dir.path().join(r).display().to_string();
    let (good_state, bad_state) = (state("good"), state("bad"));
    let good = [("state", good_state.as_str())];
    let bad = [("state", bad_state.as_str()), ("hang", "yes")];
    crate::support::a_hung_monitor_fails_alone(&agent, &good, &bad, &bad[..1], 300, 6);
}

/// An agent whose meta-data fails is refused with what it said on stderr (a
/// missing helper, a syntax error), not only its exit code.
#[test]
fn a_failing_meta_data_is_refused_with_what_the_agent_said() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("Broken");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Broken: line 3: ocf-shellfuncs: No such file or directory' >&2\nexit 5\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = format!(
        "{:#}",
        fixtures(dir.path())
            .load(script.to_str().unwrap())
            .err()
            .unwrap()
    );
    assert!(
        e.contains("meta-data failed (exit code 5)")
            && e.contains("it said: Broken: line 3: ocf-shellfuncs: No such file or directory"),
        "{e}"
    );
}
