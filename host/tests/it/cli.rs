//! The `baton agent` commands as a user runs them.

use crate::support::{
    agents_config as config, baton_exe, baton_with, native_lib, output_text, wasm,
};
use std::process::{Command, Output};

fn baton(config: &std::path::Path, args: &[&str]) -> Output {
    baton_with(config, &[], args)
}

#[test]
fn install_list_run_and_test_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let o = baton(
        &cfg,
        &[
            "agent",
            "install",
            wasm("sample_wasm_agent").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("installed sample-wasm 0.1.0"),
        "{}",
        output_text(&o)
    );

    let o = baton(&cfg, &["agent", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"process") && names.contains(&"sample-wasm"),
        "{names:?}"
    );

    let markers = format!("dir={}", dir.path().join("markers").display());
    let o = baton(
        &cfg,
        &[
            "agent",
            "run",
            "sample-wasm",
            "start",
            "-p",
            &markers,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["action"], "start");
    assert_eq!(report["result"]["Ok"]["kind"], "done");
    assert_eq!(report["recovery"], "none");

    let o = baton(&cfg, &["agent", "test", "sample-wasm", "-p", &markers]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(" passed, 0 failed"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn info_renders_ocf_xml() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(
        &config(dir.path()),
        &["agent", "info", "process", "--format", "ocf-xml"],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let xml = String::from_utf8(o.stdout).unwrap();
    assert!(xml.contains("<resource-agent name=\"process\""), "{xml}");
    assert!(
        xml.contains("<parameter name=\"command\" required=\"1\">"),
        "{xml}"
    );
}

/// A server one `agent run … start` started is found by the next `agent run`
/// of the same resource: monitor says running, stop ends it.
#[test]
fn one_agent_run_finds_what_an_earlier_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let lib = native_lib("native-hostile");
    let run = |action: &str| {
        baton(
            &cfg,
            &[
                "agent",
                "run",
                lib.to_str().unwrap(),
                action,
                "-p",
                "mode=detached",
                "--resource",
                "cli-finds-it",
                "--json",
            ],
        )
    };
    let state = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", output_text(o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        report["result"]["Ok"]["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    state(&run("start"));
    assert_eq!(state(&run("monitor")), "running");
    state(&run("stop"));
    assert_eq!(state(&run("monitor")), "not-running");
}

/// Without its grants, a component fails many conformance steps the same way:
/// each step says what was refused in a line, and the config line that grants
/// it comes once; the host's own logs of those calls stay out of the way.
#[test]
fn a_refused_capability_is_explained_once_by_agent_test() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "[agents]\nnode = \"n1\"\n").unwrap();
    let o = baton(
        &bare,
        &[
            "agent",
            "test",
            wasm("sample_wasm_agent").to_str().unwrap(),
            "-p",
            "dir=/tmp",
        ],
    );
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert_eq!(
        said.matches(
            "to allow the refused capabilities, add to the config: [agents.grants] sample-wasm = ["
        )
        .count(),
        1,
        "{said}"
    );
    assert!(!said.contains("; to allow it, add to the config"), "{said}");
    // What it reached for: the three it requested, so none is "not reached for".
    assert!(
        said.contains("capabilities the agent reached for in this run: exec:/usr/bin/rm, exec:/usr/bin/touch, read:/tmp/"),
        "{said}"
    );
    assert!(!said.contains("not reached for"), "{said}");
    // An agent that requests more than the test makes it use says which.
    let o = baton(&bare, &["agent", "test", wasm("hostile").to_str().unwrap()]);
    let said = output_text(&o);
    assert!(
        said.contains(
            "requested, not granted, and not reached for in this run: exec:/bin/sleep, exec:/bin/sh"
        ),
        "{said}"
    );
    assert!(said.lines().count() < 30, "{said}");
    assert!(said.lines().all(|l| l.chars().count() < 300), "{said}");
}

/// `agent info` and `agent list` say what is granted, a request that names a
/// parameter included ("within" its grants), and that a native agent's
/// requests are not enforced.
#[test]
fn agent_info_shows_templated_grants_and_native_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let o = baton(
        &cfg,
        &["agent", "info", wasm("sample_wasm_agent").to_str().unwrap()],
    );
    let said = output_text(&o);
    assert!(o.status.success(), "{said}");
    let markers = dir.path().join("markers");
    assert!(
        said.contains(&format!(
            "capabilities granted: exec:/usr/bin/touch, exec:/usr/bin/rm, read:{{dir}} within read:{}",
            markers.display()
        )),
        "{said}"
    );
    let o = baton(
        &cfg,
        &[
            "agent",
            "info",
            native_lib("native-hostile").to_str().unwrap(),
        ],
    );
    let said = output_text(&o);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("capabilities requested: exec:/bin/sleep")
            && said.contains("capabilities are declared, not enforced, for a native agent"),
        "{said}"
    );
    assert!(!said.contains("capabilities granted"), "{said}");
}

/// The agent commands take a scenario file as their config (its `[agents]`),
/// so an agent is installed into the store `scenario check` reads.
#[test]
fn agent_install_accepts_a_scenario_file() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    let o = Command::new(baton_exe())
        .args(["scenario", "new", "--template", "standby"])
        .arg(&site)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let store = dir.path().join("store");
    let mut text = std::fs::read_to_string(&site).unwrap();
    text.push_str(&format!(
        "\n[agents]\nstore = {:?}\n",
        store.display().to_string()
    ));
    std::fs::write(&site, text).unwrap();
    let o = baton(
        &site,
        &[
            "agent",
            "install",
            wasm("sample_wasm_agent").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(store.join("sample-wasm").exists(), "{}", output_text(&o));
}

/// A directory or Python source given as an agent gets what to give instead.
#[test]
fn a_directory_or_python_source_given_as_an_agent_says_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let o = baton(&cfg, &["agent", "info", project.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        output_text(&o).contains("is a directory; give the agent file"),
        "{}",
        output_text(&o)
    );
    let app = project.join("app.py");
    std::fs::write(&app, "print('hello')\n").unwrap();
    let o = baton(&cfg, &["agent", "info", app.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        output_text(&o).contains("is Python source, not an agent")
            && output_text(&o).contains("componentize-py"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn a_failed_call_exits_1_and_names_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(
        &config(dir.path()),
        &[
            "agent",
            "run",
            native_lib("native-hostile").to_str().unwrap(),
            "monitor",
            "-p",
            "mode=abort",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("FAILED generic (crash)")
            && output_text(&o).contains("recovery: restart-here"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn bad_flags_and_names_get_errors_that_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for (args, wanted) in [
        (
            &["agent", "run", "process", "monitor", "-p", "command"][..],
            "-p \"command\": write KEY=VALUE",
        ),
        (
            &["agent", "run", "process", "jump"][..],
            "unknown action \"jump\"; use one of meta-data, validate",
        ),
        (
            &["agent", "run", "process", "monitor", "-p", "comand=x"][..],
            "did you mean \"command\"?",
        ),
        (
            &["agent", "info", "nosuch"][..],
            "unknown agent type \"nosuch\"",
        ),
        (
            &["agent", "info", "ocf:heartbeat"][..],
            "write ocf:PROVIDER:TYPE",
        ),
    ] {
        let o = baton(&cfg, args);
        // Refused input is exit 2, as documented; 1 is an agent that failed.
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", output_text(&o));
        assert!(
            output_text(&o).contains(wanted),
            "{args:?}: {}",
            output_text(&o)
        );
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[agents]\nstore = 5\n").unwrap();
    let o = baton(&bad, &["agent", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        output_text(&o).contains("bad.toml") && output_text(&o).contains("store"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn config_check_names_every_problem_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        r#"
[cluster]
name = "lab"
key_file = "/etc/baton/key"
timing = "fast"
[[node]]
name = "n1"
id = 1
links = ["198.18.1.11:5405", "198.18.2.11:5405"]
[[node]]
name = "n2"
id = 2
links = ["198.18.1.12:5405"]
[[service]]
name = "web"
strategy = "standby"
preferred = ["n3"]
[[service.resource]]
agent = "process"
params = { command = "sleep 1", port = { a = 1 } }
"#,
    )
    .unwrap();
    let o = Command::new(baton_exe())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = output_text(&o);
    for wanted in [
        "node[1].links: 1 links, but node[0] has 2",
        "service[0].preferred[0]: no node is named \"n3\"",
        "service[0].resource[0].params.port: arrays and tables are not parameter values",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in {out}");
    }
}

/// `config check` refuses what `run` would refuse in the files the config names:
/// a missing key file, a tokens file others can read.
#[test]
fn config_check_refuses_the_files_run_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        baton::node::console::token_line(
            "alice",
            baton::node::console::Role::Operator,
            "0123456789abcdef0123",
        ) + "\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nname = \"c\"\nkey_file = {key:?}\n[cluster.console]\ntokens_file = {tokens:?}\n\
             [[node]]\nname = \"n1\"\nid = 1\nlinks = [\"127.0.0.1:5405\"]\n\
             [[service]]\nname = \"web\"\nstrategy = \"standby\"\n\
             [[service.resource]]\nagent = \"process\"\nparams = {{ command = \"sleep 60\" }}\n"
        ),
    )
    .unwrap();
    let o = Command::new(baton_exe())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let said = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cluster.key_file") && said.contains("cannot read it"),
        "{said}"
    );
    assert!(said.contains("lets others read it; chmod 600"), "{said}");
    // Both fixed: ok.
    std::fs::write(&key, b"a cluster key of thirty-two bytes").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new(baton_exe())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
}

/// `config check` explains the quorum arithmetic, and warns of a design in
/// which a split leaves no partition able to be quorate, with the fix.
#[test]
fn config_check_warns_of_a_split_that_leaves_no_partition_quorate() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"a cluster key of thirty-two bytes").unwrap();
    let mut text = format!(
        "[cluster]\nname = \"c\"\nkey_file = {key:?}\n[[service]]\nname = \"web\"\nstrategy = \"standby\"\n\
         [[service.resource]]\nagent = \"process\"\nparams = {{ command = \"sleep 60\" }}\n"
    );
    for n in 1..=4 {
        text += &format!(
            "[[node]]\nname = \"n{n}\"\nid = {n}\nlinks = [\"127.0.0.1:{}\"]\n",
            5400 + n
        );
    }
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(crate::support::baton_exe())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout.contains("2 nodes: never quorate (2 of 4)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("WARNING: a split into 2 nodes and 2 nodes leaves no partition quorate")
            && stdout.contains("witness of 1 vote"),
        "{stdout}"
    );
}

/// `agent list` shows each OCF agent's own version and its OCF API version, as
/// its meta-data declares them (read from the script, not by running it).
#[test]
fn agent_list_shows_the_versions_ocf_agents_declare() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(&config(dir.path()), &["agent", "list", "--json"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let meta = std::process::Command::new("/usr/lib/ocf/resource.d/heartbeat/Filesystem")
        .arg("meta-data")
        .env("OCF_ROOT", "/usr/lib/ocf")
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&meta.stdout);
    let declared = |prefix: &str, end: char| {
        let at = meta.find(prefix).unwrap() + prefix.len();
        meta[at..at + meta[at..].find(end).unwrap()].to_string()
    };
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ocf:heartbeat:Filesystem")
        .expect("ocf:heartbeat:Filesystem listed");
    assert_eq!(
        entry["version"],
        declared("<resource-agent name=\"Filesystem\" version=\"", '"')
    );
    assert_eq!(entry["ocf_api"], declared("<version>", '<'));
    let text = baton(&config(dir.path()), &["agent", "list"]);
    let line = String::from_utf8_lossy(&text.stdout)
        .lines()
        .find(|l| l.starts_with("ocf:heartbeat:Filesystem "))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&format!("ocf {}", entry["ocf_api"].as_str().unwrap())),
        "{line}"
    );
}

/// `agent run` shows what the agent logs at info by default; with
/// BATON_LOG=debug every call shows its deadline and result.
#[test]
fn agent_run_shows_the_agents_log_and_debug_shows_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sample = wasm("sample_wasm_agent");
    let o = baton(&cfg, &["agent", "run", sample.to_str().unwrap(), "start"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("INFO") && err.contains("hello from cli"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour codes in a pipe: {err}");
    let o = baton_with(
        &cfg,
        &[("BATON_LOG", "debug")],
        &["agent", "run", "process", "monitor", "-p", "command=true"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("agent call done")
            && err.contains("action=monitor")
            && err.contains("timeout_ms=")
            && err.contains("outcome=not-running"),
        "{err}"
    );
}

/// A parameter the caller leaves out reaches a WebAssembly (or native) agent at
/// its meta-data default; the agent logs the mode it got.
#[test]
fn meta_data_defaults_are_passed_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton_with(
        &config(dir.path()),
        &[("BATON_LOG", "warn,baton::agent=debug")],
        &["agent", "run", wasm("hostile").to_str().unwrap(), "monitor"],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("monitor in mode ok"),
        "{}",
        output_text(&o)
    );
}

/// `baton agent new` for each kind: the project, built outside this repository
/// exactly as the command says, passes `baton agent test` unchanged.
#[test]
fn a_scaffolded_project_of_each_kind_builds_and_passes_the_conformance_test() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // Shared across runs, so only the first build compiles the SDK.
    let target = crate::support::repo().join("target/scaffold");
    for (kind, name, artifact, params) in [
        ("ocf", "acme-ocf", "acme-ocf/acme-ocf".to_string(), "state"),
        (
            "native",
            "acme-native",
            target
                .join("release/libacme_native.so")
                .display()
                .to_string(),
            "",
        ),
        (
            "wasm",
            "acme-wasm",
            target
                .join("wasm32-wasip2/release/acme_wasm.wasm")
                .display()
                .to_string(),
            "",
        ),
        (
            "python",
            "acme-python",
            "acme-python/acme_python.wasm".to_string(),
            "",
        ),
    ] {
        let project = dir.path().join(name);
        let o = baton(
            &cfg,
            &[
                "agent",
                "new",
                name,
                "--kind",
                kind,
                "--dir",
                project.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{kind}: {}", output_text(&o));
        if kind == "python" {
            // The componentize-py the suite's set-up installed (else build.sh
            // makes a virtualenv of its own).
            let tool = crate::support::repo().join("target/python-venv/bin/componentize-py");
            let b = Command::new(project.join("build.sh"))
                .env("COMPONENTIZE_PY", tool)
                .output()
                .unwrap();
            assert!(b.status.success(), "{kind} build: {}", output_text(&b));
        } else if kind != "ocf" {
            let mut build = Command::new("cargo");
            build
                .args(["build", "--release", "--manifest-path"])
                .arg(project.join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(&project);
            if kind == "wasm" {
                build.args(["--target", "wasm32-wasip2"]);
            }
            let b = build.output().unwrap();
            assert!(b.status.success(), "{kind} build: {}", output_text(&b));
        }
        let artifact = if kind == "ocf" || kind == "python" {
            dir.path().join(&artifact).display().to_string()
        } else {
            artifact
        };
        let mut args = vec!["agent", "test", artifact.as_str()];
        let param = format!("{params}={}", dir.path().join("state").display());
        if !params.is_empty() {
            args.extend(["-p", param.as_str()]);
        }
        // A component's project carries the grants its capabilities need.
        let project_cfg = project.join("baton.toml");
        let components = kind == "wasm" || kind == "python";
        let t = baton(if components { &project_cfg } else { &cfg }, &args);
        assert!(t.status.success(), "{kind}: {}", output_text(&t));
        assert!(
            output_text(&t).contains(" passed, 0 failed"),
            "{kind}: {}",
            output_text(&t)
        );
    }
    // A name that is not one, and a directory that is taken, are refused.
    let o = baton(&cfg, &["agent", "new", "Bad_Name", "--kind", "ocf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        output_text(&o).contains("use lowercase letters"),
        "{}",
        output_text(&o)
    );
    let o = baton(
        &cfg,
        &[
            "agent",
            "new",
            "again",
            "--kind",
            "ocf",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(
        output_text(&o).contains("is not empty"),
        "{}",
        output_text(&o)
    );
}

/// Capability refusals say which half is missing: a requested capability gets
/// the config line that grants it, and `agent run` says up front how many are
/// requested and granted.
#[test]
fn capability_errors_say_which_half_is_missing_and_the_line_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agents]\nstore = {:?}\n[agents.grants]\nhostile = [\"exec:/bin/sleep\"]\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .unwrap();
    let hostile = wasm("hostile");
    let run = |mode: &str| {
        baton(
            &cfg,
            &[
                "agent",
                "run",
                hostile.to_str().unwrap(),
                "monitor",
                "-p",
                &format!("mode={mode}"),
            ],
        )
    };
    let o = run("net-silent");
    let text = output_text(&o);
    let line = "hostile = [\"exec:/bin/sleep\", \"exec:/bin/sh\", \"exec:/usr/bin/id\", \"spawn:/bin/sleep\", \"read:/etc\", \"net:127.0.0.1:47999\"]";
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with(
            "6 capabilities requested, 1 granted; to grant the rest, add to the config:"
        ),
        "{text}"
    );
    assert!(
        text.contains("net:127.0.0.1:47999 is requested by the agent but not granted")
            && text.contains(line)
            && !text.contains("the agent said"),
        "{text}"
    );
    let o = run("net-forbidden");
    assert!(
        output_text(&o).contains("net:198.18.0.1:9 is not requested in the agent's meta-data"),
        "{}",
        output_text(&o)
    );
}

/// A granted program runs as the grant's user: `nobody` when the grant names
/// none, root only when granted `as root`, and a user that does not exist is
/// named in the error.
#[test]
fn a_granted_program_runs_as_the_user_its_grant_names() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = wasm("hostile");
    let uid_of = |grant: &str| {
        let cfg = dir.path().join("baton.toml");
        std::fs::write(&cfg, format!("[agents.grants]\nhostile = [{grant:?}]\n")).unwrap();
        let o = baton(
            &cfg,
            &[
                "agent",
                "run",
                hostile.to_str().unwrap(),
                "monitor",
                "-p",
                "mode=exec-id",
            ],
        );
        output_text(&o)
    };
    let nobody = uid_of("exec:/usr/bin/id");
    assert!(nobody.contains("uid 65534"), "{nobody}");
    let root = uid_of("exec:/usr/bin/id as root");
    assert!(root.contains("uid 0"), "{root}");
    let daemon = uid_of("exec:/usr/bin/* as daemon");
    assert!(daemon.contains("uid 1"), "{daemon}");
    let missing = uid_of("exec:/usr/bin/id as no-such-user");
    assert!(
        missing.contains("user no-such-user does not exist on this node"),
        "{missing}"
    );
}

/// A capability request that names a parameter is expanded per resource, and a
/// value that takes it outside every grant is refused by `config check` (and
/// `run`), naming the parameter, the expansion and the grants.
#[test]
fn a_parameter_that_escapes_its_grant_is_refused_at_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let sample = wasm("sample_wasm_agent");
    let write = |data_dir: &str| {
        let cfg = dir.path().join("cluster.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[agents.grants]
sample-wasm = ["exec:/usr/bin/touch", "exec:/usr/bin/rm", "read:/srv/markers"]

[cluster]
name = "grants"
key_file = {key:?}

[[node]]
name = "n1"
id = 1
links = ["127.0.0.1:47101"]

[[service]]
name = "web"
strategy = "standby"
[[service.resource]]
agent = {sample:?}
params = {{ dir = {data_dir:?} }}
"#
            ),
        )
        .unwrap();
        baton(&cfg, &["config", "check", cfg.to_str().unwrap()])
    };
    let ok = write("/srv/markers/web");
    assert!(ok.status.success(), "{}", output_text(&ok));
    let bad = write("/etc");
    assert_eq!(bad.status.code(), Some(1), "{}", output_text(&bad));
    let text = output_text(&bad);
    assert!(
        text.contains("service[0].resource[0].params (web): parameter dir = \"/etc\" makes read:{dir} into read:/etc, which no grant for sample-wasm covers (granted: [read:/srv/markers])"),
        "{text}"
    );
}

/// `baton agent list | head` and the like: a closed stdout ends a printing
/// command quietly (killed by SIGPIPE, as other tools are), never with a panic.
#[test]
fn a_closed_stdout_ends_a_printing_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["agent", "list"][..],
        &["agent", "info", "process"],
        &["agent", "info", "process", "--format", "ocf-xml"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(baton_exe())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
    }
}

/// `config check` loads every agent as `run` does and reports every problem at
/// once (a misspelled parameter, a missing required one, a fence agent that is
/// not one); `run` refuses the same config with the same full list, starting
/// nothing.
#[test]
fn config_check_and_run_report_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("key"), [7u8; 32]).unwrap();
    let config = d.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[agents]\nstore = {store:?}\n[cluster]\nname = \"c\"\nkey_file = {key:?}\n\
             [cluster.fencing]\nagent = \"process\"\nparams = {{}}\n\
             [[node]]\nname = \"n1\"\nid = 1\nlinks = [\"127.0.0.1:0\"]\n\
             [[node]]\nname = \"n2\"\nid = 2\nlinks = [\"127.0.0.1:0\"]\n\
             [[service]]\nname = \"web\"\nstrategy = \"standby\"\npreferred = [\"n1\", \"n2\"]\n\
             [[service.resource]]\nagent = \"ipaddr\"\nparams = {{ adress = \"198.18.0.100/24\" }}\n",
            store = d.join("store").display().to_string(),
            key = d.join("key").display().to_string(),
        ),
    )
    .unwrap();
    let expected = [
        "service[0].resource[0].params (web): parameter adress: unknown to agent ipaddr; did you mean \"address\"?",
        "service[0].resource[0].params (web): parameter address: required by agent ipaddr but not set",
        "cluster.fencing.agent: process has no `target` parameter, so it is not a fence agent",
        "cluster.fencing.params: parameter command: required by agent process but not set",
    ];
    let check = Command::new(baton_exe())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    let text = output_text(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    for e in expected {
        assert!(text.contains(e), "config check misses {e:?}:\n{text}");
    }
    let run = Command::new(baton_exe())
        .arg("--config")
        .arg(&config)
        .args(["run", "--node", "n1", "--socket"])
        .arg(d.join("n1.sock"))
        .output()
        .unwrap();
    let text = output_text(&run);
    assert!(!run.status.success(), "{text}");
    assert!(
        text.contains("the config has 4 problem(s); nothing was started"),
        "{text}"
    );
    for e in expected {
        assert!(text.contains(e), "run misses {e:?}:\n{text}");
    }
    assert!(
        !d.join("n1.sock").exists(),
        "run started its control socket"
    );
}

/// A node that serves HTTP: `config check` refuses no [cluster.tls], a key
/// others can read, a certificate not made for the node's address; passes
/// the files `baton tls init` made.
#[test]
fn config_check_refuses_tls_files_run_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"a cluster key of thirty-two bytes").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = format!(
        "[cluster]\nname = \"c\"\nkey_file = {key:?}\n\
         [[node]]\nname = \"n1\"\nid = 1\nlinks = [\"127.0.0.1:5405\"]\nhttp = \"127.0.0.1:9100\"\n\
         [[service]]\nname = \"web\"\nstrategy = \"standby\"\n\
         [[service.resource]]\nagent = \"process\"\nparams = {{ command = \"sleep 60\" }}\n"
    );
    let path = dir.path().join("c.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let o = Command::new(baton_exe())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        (o.status.success(), output_text(&o))
    };
    let (ok, said) = check(&base);
    assert!(!ok && said.contains("[cluster.tls] is missing"), "{said}");
    let tls = dir.path().join("tls");
    let o = Command::new(baton_exe())
        .args(["tls", "init"])
        .arg(&path)
        .arg("--out")
        .arg(&tls)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let with = |cert: &str| {
        base.replacen(
            "[cluster]\n",
            &format!(
                "[cluster]\ntls = {{ cert_file = \"{t}/{cert}\", key_file = \"{t}/{{node}}.key\", ca_file = \"{t}/ca.crt\" }}\n",
                t = tls.display()
            ),
            1,
        )
    };
    let (ok, said) = check(&with("{node}.crt"));
    assert!(ok, "{said}");
    let (ok, said) = check(&with("ca.crt"));
    assert!(
        !ok && said.contains("not valid for this node's address 127.0.0.1"),
        "{said}"
    );
    std::fs::set_permissions(tls.join("n1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, said) = check(&with("{node}.crt"));
    assert!(
        !ok && said.contains("lets others read it; chmod 600"),
        "{said}"
    );
}
