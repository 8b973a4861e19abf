//! `baton scenario` as an administrator uses it: a scenario from each
//! template, filled in with per-node site data, checked, compiled into each
//! node's config (accepted by `config check`, with one fingerprint), simulated
//! under a fault script and random schedules, and viewed; bad templates,
//! scripts and site data are errors that name the place and the fix.

use crate::daemons::Cluster;
use crate::support::{baton_exe, output_text};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn baton(dir: &Path, args: &[&str]) -> Output {
    Command::new(baton_exe())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A standby scenario with its site part filled in: a store, and n2 on
/// another interface name and data directory.
fn standby(dir: &Path) -> std::path::PathBuf {
    let out = baton(dir, &["scenario", "new", "--template", "standby", "s.toml"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let path = dir.join("s.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replacen(
            "[scenario]",
            &format!(
                "[agents]\nstore = {:?}\n\n[scenario]",
                dir.join("store").display().to_string()
            ),
            1,
        )
        .replace(
            "service_if = \"eth1\"              # the interface facing clients\n\n# ----",
            "service_if = \"ens4\"\n\n# ----",
        );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_template_makes_a_scenario_that_checks_simulates_a_failover_and_passes_random_schedules() {
    let dir = tempfile::tempdir().unwrap();
    for t in [
        "standby",
        "mutual",
        "n-to-1",
        "rotating",
        "clone",
        "promotable",
    ] {
        let file = format!("{t}.toml");
        let out = baton(dir.path(), &["scenario", "new", "--template", t, &file]);
        assert!(out.status.success(), "{t}: {}", output_text(&out));
        let out = baton(
            dir.path(),
            &[
                "scenario",
                "simulate",
                &file,
                "--fault",
                "kill n1; wait 20s; start n1",
                "--json",
            ],
        );
        let text = output_text(&out);
        assert!(out.status.success(), "{t}: {text}");
        let sim: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(sim["violation"].is_null(), "{t}: {text}");
        // Every service runs at the end, and n1's loss moved what it ran.
        for s in sim["placement"].as_array().unwrap() {
            assert!(!s["running_on"].as_array().unwrap().is_empty(), "{t}: {s}");
        }
        let timeline = sim["timeline"].as_array().unwrap();
        assert!(
            timeline
                .iter()
                .any(|e| e["kind"] == "fault" && e["text"] == "kill n1"),
            "{t}"
        );
        assert!(
            timeline
                .iter()
                .any(|e| e["kind"] == "membership"
                    && e["text"].as_str().unwrap().contains("left: n1")),
            "{t}: no node saw n1 leave"
        );
        // The template as written passes random fault schedules (hung starts,
        // clean stops and freezes among them) with the liveness check.
        let out = baton(
            dir.path(),
            &["scenario", "simulate", &file, "--random", "50", "--json"],
        );
        let text = output_text(&out);
        assert!(out.status.success(), "{t}: {text}");
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(runs["ok"], true, "{t}: {text}");
    }
    // A second `new` never overwrites.
    let out = baton(
        dir.path(),
        &["scenario", "new", "--template", "standby", "standby.toml"],
    );
    assert!(
        output_text(&out).contains("it must not exist"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn a_scenario_compiles_into_each_nodes_config_with_its_site_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = standby(dir.path());
    // The key file the compiled configs name, on this machine (`config check`
    // reads it, as `run` does).
    let key = dir.path().join("key");
    std::fs::write(&key, b"a cluster key of thirty-two bytes").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"/etc/baton/key\""));
    std::fs::write(&path, text.replace("/etc/baton/key", key.to_str().unwrap())).unwrap();
    let out = baton(dir.path(), &["scenario", "check", "s.toml"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok — template standby"), "{text}");
    let out = baton(
        dir.path(),
        &[
            "scenario", "compile", "s.toml", "--out", "compiled", "--json",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let compiled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fp = compiled["config"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("compiled/fingerprint")).unwrap(),
        format!("{fp}\n")
    );
    let n1 = std::fs::read_to_string(dir.path().join("compiled/n1.toml")).unwrap();
    let n2 = std::fs::read_to_string(dir.path().join("compiled/n2.toml")).unwrap();
    assert!(n1.contains("run --node n1") && n2.contains("run --node n2"));
    // Each node's resources get its own site data.
    assert!(n1.contains("interface = \"eth1\""), "{n1}");
    assert!(n2.contains("interface = \"ens4\""), "{n2}");
    // Both files are valid configs with the scenario's fingerprint.
    for n in ["n1", "n2"] {
        let file = dir.path().join(format!("compiled/{n}.toml"));
        let out = Command::new(baton_exe())
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{n}: {text}");
        assert!(text.contains(&format!("config {fp}")), "{n}: {text}");
    }
    drop(path);
}

#[test]
fn bad_templates_scripts_and_site_data_are_named_with_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = standby(dir.path());
    let out = baton(
        dir.path(),
        &["scenario", "new", "--template", "active-active", "x.toml"],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("\"active-active\" is not a template; use one of standby, mutual, n-to-1, rotating, clone, promotable"),
        "{}",
        output_text(&out)
    );
    assert!(!dir.path().join("x.toml").exists());
    let out = baton(
        dir.path(),
        &[
            "scenario",
            "simulate",
            "s.toml",
            "--fault",
            "kill n1; cut n2 lnk 0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains(
            "fault script, step 2 (\"cut n2 lnk 0\"): \"lnk\" is not a node (nodes: n1, n2)"
        ),
        "{}",
        output_text(&out)
    );
    // A {KEY} some node lacks, and an unknown template in the file.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("label = \"app\"", "label = \"{vlan}\"")
            .replace("template = \"standby\"", "template = \"failover\""),
    )
    .unwrap();
    let out = baton(dir.path(), &["scenario", "check", "s.toml"]);
    assert!(
        output_text(&out).contains("scenario.template: \"failover\" is not a template"),
        "{}",
        output_text(&out)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"failover\"", "\"standby\"")).unwrap();
    let out = baton(dir.path(), &["scenario", "check", "s.toml"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("service[0].resource[1].params.label: {vlan} is not in the site data of n1, n2; add vlan = \"...\" to their [node.site]"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn random_schedules_check_the_invariants_and_print_their_seeds() {
    let dir = tempfile::tempdir().unwrap();
    standby(dir.path());
    let out = baton(
        dir.path(),
        &[
            "scenario", "simulate", "s.toml", "--random", "3", "--seed", "40", "--json",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs["ok"], true);
    let seeds: Vec<u64> = runs["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [40, 41, 42]);
}

#[test]
fn the_design_view_is_the_consoles_page_with_the_simulated_frames() {
    let dir = tempfile::tempdir().unwrap();
    standby(dir.path());
    let (page, view) = design_view(dir.path(), "kill n1; wait 10s");
    let frames = view["frames"].as_array().unwrap();
    // Settled, after each of the two steps, settled again.
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0]["status"]["services"][0]["owner"], "n1");
    assert_eq!(frames[3]["status"]["services"][0]["owner"], "n2");
    assert_eq!(frames[3]["down"], serde_json::json!(["n1"]));
    assert!(page.contains("Services × nodes"));
    // Every step has its frame under its own label, also while every node is
    // down (the last view is shown, every node marked down).
    let (_, view) = design_view(dir.path(), "kill n1; kill n2; wait 5s");
    let labels: Vec<&str> = view["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "started and settled",
            "after: kill n1",
            "after: kill n2",
            "after: wait 5s",
            "settled"
        ]
    );
    assert_eq!(view["frames"][1]["down"], serde_json::json!(["n1"]));
    assert_eq!(view["frames"][2]["down"], serde_json::json!(["n1", "n2"]));
    assert_eq!(view["frames"][4]["down"], serde_json::json!(["n1", "n2"]));
}

/// `baton scenario view s.toml --fault FAULT` in `dir`: the page and its data.
fn design_view(dir: &Path, fault: &str) -> (String, serde_json::Value) {
    let out = baton(
        dir,
        &[
            "scenario",
            "view",
            "s.toml",
            "--out",
            "view.html",
            "--fault",
            fault,
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let page = std::fs::read_to_string(dir.join("view.html")).unwrap();
    let view = view_data(&page);
    (page, view)
}

/// The data `baton scenario view` put in its page.
pub(crate) fn view_data(page: &str) -> serde_json::Value {
    let start = page.find("const VIEW = ").unwrap() + "const VIEW = ".len();
    let end = start + page[start..].find(";\n").unwrap();
    serde_json::from_str(&page[start..end]).unwrap()
}

fn validate(dir: &Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = vec!["scenario", "validate", "site.toml", "--json"];
    args.extend(extra);
    let out = baton(dir, &args);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", output_text(&out)));
    (out.status.success(), report)
}

fn outcome<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check:?} in {report}"))
}

/// The live loopback cluster validated against its scenario: all passes;
/// without a token every node refuses; with another key on n3, the key and
/// n3's links fail, and say why.
#[test]
fn validate_checks_a_live_site_and_names_what_differs() {
    let mut c = Cluster::new("standby");
    let (_, tokens, _) = crate::console::with_console(&mut c);
    let dir = c.dir.path().to_owned();
    let config = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(
        dir.join("site.toml"),
        format!("{config}\n[scenario]\ntemplate = \"standby\"\n"),
    )
    .unwrap();
    c.wait_for("three members everywhere", Duration::from_secs(20), |c| {
        (1..=3).all(|n| {
            c.status(n)
                .is_some_and(|s| s["members"].as_array().unwrap().len() == 3)
        })
    });
    let token = tokens.display().to_string();
    let (ok, report) = validate(&dir, &["--token-file", &token]);
    assert!(ok, "{report}");
    for name in [
        "n3 runs the scenario's config",
        "the key is the same on every node",
        "n1 ⇄ n3 on link 1",
        "n2 sees every node as a member",
        "agent process is the same on every node",
    ] {
        assert_eq!(outcome(&report, name)["ok"], true, "{name}: {report}");
    }
    let answered = outcome(&report, "n1 answers")["detail"].as_str().unwrap();
    assert!(answered.contains("over HTTPS"), "{answered}");
    // Certificates from `baton tls init`: five years, listed with their date.
    let valid = outcome(&report, "n2's certificate is valid 30 days more");
    assert_eq!(valid["ok"], true, "{report}");
    assert!(
        valid["detail"]
            .as_str()
            .unwrap()
            .contains("n2.crt valid until 20"),
        "{valid}"
    );
    let (ok, report) = validate(&dir, &[]);
    assert!(!ok);
    let refused = outcome(&report, "n1 answers");
    assert!(
        refused["detail"].as_str().unwrap().contains("no token"),
        "{refused}"
    );
    // Certificates of another CA than the one given: no node is trusted.
    let other = dir.join("other-ca");
    let out = crate::support::baton_with(
        &c.config,
        &[],
        &[
            "tls",
            "init",
            c.config.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let ca = other.join("ca.crt").display().to_string();
    let (ok, report) = validate(&dir, &["--token-file", &token, "--ca-file", &ca]);
    assert!(!ok);
    let untrusted = outcome(&report, "n2 answers")["detail"].as_str().unwrap();
    assert!(
        untrusted.contains("invalid peer certificate"),
        "{untrusted}"
    );

    // n3 comes back with another key: it runs the same config (the key file is
    // per node) but nobody hears it.
    c.kill_node(3);
    std::fs::write(dir.join("other.key"), [9u8; 32]).unwrap();
    let other = dir.join("n3.toml");
    std::fs::write(
        &other,
        config.replace(
            &format!("{:?}", dir.join("key").display().to_string()),
            &format!("{:?}", dir.join("other.key").display().to_string()),
        ),
    )
    .unwrap();
    c.start_with_config(3, &other);
    c.wait_for("n1 to lose n3", Duration::from_secs(20), |c| {
        c.status(1)
            .is_some_and(|s| s["members"].as_array().unwrap().len() == 2)
            && c.status(3)
                .is_some_and(|s| s["members"].as_array().unwrap().len() == 1)
    });
    let (ok, report) = validate(&dir, &["--token-file", &token]);
    assert!(!ok, "{report}");
    let key = outcome(&report, "the key is the same on every node");
    assert_eq!(key["ok"], false);
    assert!(
        key["detail"]
            .as_str()
            .unwrap()
            .contains("copy one key_file to every node"),
        "{key}"
    );
    let link = outcome(&report, "n1 ⇄ n3 on link 0");
    assert_eq!(link["ok"], false);
    assert!(
        link["detail"]
            .as_str()
            .unwrap()
            .contains("n1 does not hear n3"),
        "{link}"
    );
    assert_eq!(
        outcome(&report, "n3 runs the scenario's config")["ok"],
        true
    );
    assert_eq!(outcome(&report, "n1 ⇄ n2 on link 0")["ok"], true);
}
