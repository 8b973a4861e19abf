//! `baton scenario`: the design tool. A scenario is a config file with a
//! `[scenario]` table naming its template, written from a proven HA strategy
//! (`new`), checked as `run` would load it on every node (`check`), compiled
//! into each node's config with the cluster-wide fingerprint (`compile`), run
//! through the cluster simulator under a fault script or seeded random faults
//! (`simulate`), and shown on the console's screen before it runs (`view`).

use crate::cluster::changes::name_of;
use crate::cluster::config::ClusterConfig;
use crate::cluster::script::{self, Names};
use crate::cluster::sim::{Event, Fault, Sim, random_schedule};
use crate::cluster::wire::NodeId;
use crate::config::Config;
use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The templates: name, strategy part (with its description and node count).
pub const TEMPLATES: [(&str, &str); 6] = [
    ("standby", include_str!("../../scenarios/standby.toml")),
    ("mutual", include_str!("../../scenarios/mutual.toml")),
    ("n-to-1", include_str!("../../scenarios/n-to-1.toml")),
    ("rotating", include_str!("../../scenarios/rotating.toml")),
    ("clone", include_str!("../../scenarios/clone.toml")),
    (
        "promotable",
        include_str!("../../scenarios/promotable.toml"),
    ),
];

fn template_names() -> String {
    TEMPLATES.map(|(n, _)| n).join(", ")
}

/// A loaded scenario.
pub struct Scenario {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its template's name.
    pub template: String,
    /// The config part's text, comments kept (the scenario less `[scenario]`).
    pub text: String,
    /// The config it describes.
    pub config: Config,
}

impl Scenario {
    /// The cluster part (a scenario always has one).
    pub fn cluster(&self) -> &ClusterConfig {
        self.config
            .cluster
            .as_ref()
            .expect("a scenario has a [cluster]")
    }

    /// Node names by id.
    pub fn names(&self) -> BTreeMap<NodeId, String> {
        self.cluster()
            .nodes
            .iter()
            .map(|n| (n.id, n.name.clone()))
            .collect()
    }
}

/// The text of a new scenario from `template`.
pub fn new_scenario(template: &str) -> anyhow::Result<String> {
    let Some((_, body)) = TEMPLATES.iter().find(|(n, _)| *n == template) else {
        bail!(
            "--template {template:?} is not a template; use one of {}",
            template_names()
        );
    };
    let nodes: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("# nodes = "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(2);
    let about: Vec<&str> = body
        .lines()
        .take_while(|l| l.starts_with('#') && !l.starts_with("# nodes = "))
        .collect();
    let strategy: Vec<&str> = body
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
        .collect();
    let mut out = format!(
        "# A baton scenario from the template {template:?}.\n{}\n#\n\
         # Fill in the site part (servers, links, addresses, witness, fencing), then:\n\
         #   baton scenario check FILE      every problem, by path, as `run` would load it\n\
         #   baton scenario simulate FILE --fault \"kill n1; wait 10s; start n1\"\n\
         #   baton scenario simulate FILE --random 20 --seed 1\n\
         #   baton scenario view FILE --out design.html\n\
         #   baton scenario compile FILE --out compiled/   each node's config\n\n\
         [scenario]\ntemplate = \"{template}\"\n\n\
         # ---- site ----------------------------------------------------------------\n\n\
         [cluster]\n\
         name = \"{template}\"                  # packets of other clusters are dropped\n\
         key_file = \"/etc/baton/key\"         # the same key on every node: head -c 32 /dev/urandom\n\
         timing = \"default\"                  # a link is down after 800 ms; \"fast\": 100 ms\n\
         self_fence_ms = 2000                # the longest a node without quorum takes to stop\n",
        about.join("\n")
    );
    if nodes == 2 {
        out += "# Two nodes need a third vote to survive the loss of one: a witness lease\n\
                # on storage both reach (a network filesystem, or disk = \"/dev/...\").\n\
                witness = { file = \"/shared/baton/witness\", votes = 1 }\n";
    }
    out += "\n# A fence agent makes takeovers faster and safe when a node hangs (see\n\
            # docs/agents.md, Fence agents); without one, survivors wait the fence wait.\n\
            # [cluster.fencing]\n# agent = \"fence-ipmi\"\n\
            # params = { user = \"admin\", password_file = \"/etc/baton/ipmi.pw\" }\n\
            \n# With an http address on the nodes (below): HTTPS with the certificates\n\
            # `baton tls init` makes (or tls = { plain = true } for plain HTTP).\n\
            # [cluster.tls]\n# cert_file = \"/etc/baton/tls/{node}.crt\"\n\
            # key_file = \"/etc/baton/tls/{node}.key\"\n# ca_file = \"/etc/baton/tls/ca.crt\"\n";
    for i in 1..=nodes {
        out += &format!(
            "\n[[node]]\nname = \"n{i}\"\nid = {i}\n\
             links = [\"198.18.1.1{i}:5405\", \"198.18.3.1{i}:5405\"]   # ADDRESS:PORT per link (two networks)\n\
             # http = \"198.18.1.1{i}:9100\"   # the console and /metrics\n\
             [node.site]                      # {{KEY}} in a parameter value is this node's KEY\n\
             service_if = \"eth1\"              # the interface facing clients\n"
        );
        if template == "promotable" {
            out += "pgdir = \"/srv/pg\"                  # PostgreSQL's data (pgdir/data) and socket\n";
        }
    }
    out += "\n# ---- strategy ------------------------------------------------------------\n\n";
    out += &strategy.join("\n");
    out.push('\n');
    Ok(out)
}

/// Read and check a scenario's syntax and structure (not its agents).
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scenario {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let Some(toml::Value::Table(head)) = table.get("scenario") else {
        bail!(
            "{}: no [scenario] table; a scenario starts with [scenario] template = \"...\" (baton scenario new --template {})",
            path.display(),
            template_names().replace(", ", "|")
        );
    };
    for key in head.keys() {
        if key != "template" && key != "description" {
            bail!(
                "{}: scenario.{key}: unknown key; [scenario] has template and description",
                path.display()
            );
        }
    }
    let template = match head.get("template") {
        Some(toml::Value::String(t)) if TEMPLATES.iter().any(|(n, _)| n == t) => t.clone(),
        Some(other) => bail!(
            "{}: scenario.template: {other} is not a template; use one of {}",
            path.display(),
            template_names()
        ),
        None => bail!(
            "{}: scenario.template: missing; use one of {}",
            path.display(),
            template_names()
        ),
    };
    let body = without_table(&text, "scenario");
    let config = Config::parse(&body).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    if config.cluster.is_none() {
        bail!(
            "{}: cluster: missing; a scenario describes a cluster ([cluster], [[node]], [[service]])",
            path.display()
        );
    }
    Ok(Scenario {
        path: path.to_owned(),
        template,
        text: body,
        config,
    })
}

/// `text` without the table `[name]` (its header to the next header).
fn without_table(text: &str, name: &str) -> String {
    let header = format!("[{name}]");
    let mut skipping = false;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            skipping = t.starts_with(&header);
        }
        if !skipping {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// `baton scenario check`: what `config check` says, for a scenario.
pub fn check(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(e) => return report(json, path, &[format!("{e:#}")], None),
    };
    let runner = std::env::current_exe()
        .context("cannot find the baton executable for the native agent runner")?;
    let problems = crate::node::services::resource_problems(&scenario.config, &runner);
    let problems: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect();
    report(json, path, &problems, Some(&scenario))
}

fn report(
    json: bool,
    path: &Path,
    problems: &[String],
    scenario: Option<&Scenario>,
) -> anyhow::Result<ExitCode> {
    let fingerprint = scenario
        .filter(|_| problems.is_empty())
        .map(|s| format!("{:016x}", s.cluster().fingerprint));
    let arithmetic = scenario.map(|s| s.cluster().spec().quorum.arithmetic());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": problems.is_empty(),
                "problems": problems,
                "config": fingerprint,
                "quorum": arithmetic.as_ref().map(|a| &a.lines),
                "warnings": arithmetic.as_ref().map(|a| &a.warnings),
            })
        );
    } else if let (Some(s), Some(fp)) = (scenario, &fingerprint) {
        let c = s.cluster();
        println!(
            "{}: ok — template {}, cluster {}, config {fp}, {} nodes, {} service(s)",
            path.display(),
            s.template,
            c.cluster.name,
            c.nodes.len(),
            c.services.len()
        );
        for line in arithmetic.iter().flat_map(|a| &a.lines) {
            println!("{line}");
        }
        for w in arithmetic.iter().flat_map(|a| &a.warnings) {
            println!("WARNING: {w}");
        }
    } else {
        for p in problems {
            println!("{p}");
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `baton scenario compile`: each node's config in `out` (`NODE.toml`), and
/// the cluster-wide fingerprint (`fingerprint`).
pub fn compile(path: &Path, out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let scenario = load(path)?;
    let cluster = scenario.cluster();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let fp = format!("{:016x}", cluster.fingerprint);
    let mut files = Vec::new();
    for node in &cluster.nodes {
        let mut text = format!(
            "# The baton config of node {name}, compiled from {src} (template {t}).\n\
             # Run it there: baton --config /etc/baton/cluster.toml run --node {name}\n\
             # Cluster-wide fingerprint {fp}: every node's file has it (baton config check\n\
             # prints it); a node of another is not admitted.\n\n",
            name = node.name,
            src = path.display(),
            t = scenario.template,
        );
        text += scenario.text.trim_end();
        text += "\n\n# What this node's resources get ({node} and site data filled in):\n";
        for s in &cluster.services {
            for (j, r) in s.resources.iter().enumerate() {
                let params = node
                    .params(&r.params)
                    .into_iter()
                    .map(|(k, v)| format!("{k} = {v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                text += &format!("#   {}[{j}] {}: {params}\n", s.name, r.agent);
            }
        }
        let file = out.join(format!("{}.toml", node.name));
        let check = Config::parse(&text)
            .map_err(|e| anyhow::anyhow!("the compiled config of {} is wrong: {e:#}", node.name))?;
        let got = check.cluster.map(|c| c.fingerprint).unwrap_or_default();
        anyhow::ensure!(
            got == cluster.fingerprint,
            "the compiled config of {} has fingerprint {got:016x}, not {fp}",
            node.name
        );
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        files.push(file.display().to_string());
    }
    let fp_file = out.join("fingerprint");
    std::fs::write(&fp_file, format!("{fp}\n"))
        .with_context(|| format!("cannot write {}", fp_file.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"config": fp, "files": files, "fingerprint_file": fp_file})
        );
    } else {
        for f in &files {
            println!("wrote {f}");
        }
        println!("cluster-wide fingerprint {fp} (in {})", fp_file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A fault script against scenario's names.
pub fn parse_script(scenario: &Scenario, text: &str) -> anyhow::Result<Vec<Fault>> {
    let cluster = scenario.cluster();
    let nodes: BTreeMap<String, NodeId> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.id))
        .collect();
    let services: Vec<String> = cluster.services.iter().map(|s| s.name.clone()).collect();
    script::parse(
        text,
        &Names {
            nodes: &nodes,
            services: &services,
            links: cluster.spec().links,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// One timeline entry as printed and as JSON.
#[derive(Serialize)]
pub struct TimelineEntry {
    /// ms since the cold start.
    pub at_ms: u64,
    /// The node, or `None` for a fault.
    pub node: Option<String>,
    /// What kind of event.
    pub kind: String,
    /// The service.
    pub service: Option<String>,
    /// What happened and why.
    pub text: String,
}

/// Where each service ends up, from a quorate node's view.
#[derive(Serialize)]
pub struct FinalService {
    /// The service.
    pub name: String,
    /// The nodes that run it.
    pub running_on: Vec<String>,
    /// The promoted node, for a promotable service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoted_on: Option<String>,
    /// Why there (or why nowhere), from the first quorate node.
    pub why: String,
}

/// The outcome of a scripted simulation.
#[derive(Serialize)]
pub struct Simulation {
    /// The timeline.
    pub timeline: Vec<TimelineEntry>,
    /// Where each service runs at the end.
    pub placement: Vec<FinalService>,
    /// The first invariant broken, if any.
    pub violation: Option<String>,
    /// Virtual time at the end, ms.
    pub ended_ms: u64,
}

/// Run `faults` on the scenario from a cold start (settled first), then let
/// it settle; `frames` gets the sim after each step (the view's snapshots).
pub fn simulate_script(
    scenario: &Scenario,
    faults: &[Fault],
    seed: u64,
    mut frame: impl FnMut(&Sim),
) -> Simulation {
    let names = scenario.names();
    let cluster = scenario.cluster();
    let mut sim = Sim::new(
        &cluster.spec(),
        cluster.shells(),
        names.clone(),
        seed,
        false,
    );
    sim.record_timeline();
    let quiet = sim.quiet_ms();
    sim.run(quiet);
    frame(&sim);
    for f in faults {
        sim.apply(f);
        frame(&sim);
    }
    sim.run(quiet);
    frame(&sim);
    let violation = sim
        .violation()
        .map(str::to_owned)
        .or_else(|| (!sim.lossy()).then(|| sim.check().err()).flatten());
    Simulation {
        timeline: timeline(scenario, &sim),
        placement: placement(scenario, &sim),
        violation,
        ended_ms: sim.now(),
    }
}

fn timeline(scenario: &Scenario, sim: &Sim) -> Vec<TimelineEntry> {
    let names = scenario.names();
    let services = &scenario.cluster().services;
    sim.timeline()
        .iter()
        .map(|e: &Event| TimelineEntry {
            at_ms: e.at,
            node: e.node.map(|n| name_of(&names, n)),
            kind: e.change.kind.to_string(),
            service: e.change.service.map(|i| services[i].name.clone()),
            text: e.change.text.clone(),
        })
        .collect()
}

fn placement(scenario: &Scenario, sim: &Sim) -> Vec<FinalService> {
    let names = scenario.names();
    let cluster = scenario.cluster();
    let live = sim.live();
    let judge = sim.judge();
    cluster
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let running_on = live
                .iter()
                .filter(|id| {
                    sim.node(**id).is_some_and(|n| {
                        n.service(i).phase() == crate::cluster::node::Phase::Running
                    })
                })
                .map(|id| name_of(&names, *id))
                .collect();
            let promoted_on = (s.strategy == "promotable")
                .then(|| {
                    live.iter()
                        .find(|id| {
                            sim.node(**id).is_some_and(|n| {
                                n.service(i).role() == crate::cluster::node::Role::Promoted
                            })
                        })
                        .map(|id| name_of(&names, *id))
                })
                .flatten();
            let why = judge
                .and_then(|j| sim.node(j))
                .map(|n| n.service(i).placement().why.clone())
                .unwrap_or_else(|| "every node is down".into());
            FinalService {
                name: s.name.clone(),
                running_on,
                promoted_on,
                why,
            }
        })
        .collect()
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// `baton scenario simulate`.
pub fn simulate(
    path: &Path,
    fault: Option<&str>,
    random: Option<u32>,
    seed: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let scenario = load(path)?;
    if let Some(n) = random {
        return simulate_random(&scenario, n, seed, json);
    }
    let faults = parse_script(&scenario, fault.unwrap_or(""))?;
    let result = simulate_script(&scenario, &faults, seed, |_| {});
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_simulation(&scenario, &result);
    }
    Ok(if result.violation.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_simulation(scenario: &Scenario, result: &Simulation) {
    let c = scenario.cluster();
    println!(
        "{}: {} nodes, {} service(s), timing {}, {}, {} — simulated, virtual clock",
        scenario.path.display(),
        c.nodes.len(),
        c.services.len(),
        c.cluster.timing,
        c.cluster
            .witness
            .as_ref()
            .map(|w| format!(
                "witness of {} vote{}",
                w.votes,
                if w.votes == 1 { "" } else { "s" }
            ))
            .unwrap_or_else(|| "no witness".into()),
        c.cluster
            .fencing
            .as_ref()
            .map(|f| format!("fencing by {}", f.agent))
            .unwrap_or_else(|| "no fence agent (survivors wait the fence wait)".into()),
    );
    println!(
        "{:>10}  {:<6} {:<10} {:<12} WHAT",
        "TIME", "NODE", "KIND", "SERVICE"
    );
    for e in &result.timeline {
        let node = e.node.as_deref().unwrap_or("--");
        let marker = if e.kind == "fault" { ">>" } else { "" };
        println!(
            "{:>10}  {:<6} {:<10} {:<12} {marker}{}",
            secs(e.at_ms),
            node,
            e.kind,
            e.service.as_deref().unwrap_or(""),
            e.text
        );
    }
    println!("\nplacement at {}:", secs(result.ended_ms));
    for s in &result.placement {
        let on = if s.running_on.is_empty() {
            "nowhere".to_string()
        } else {
            s.running_on.join(", ")
        };
        let promoted = s
            .promoted_on
            .as_ref()
            .map(|p| format!(", promoted on {p}"))
            .unwrap_or_default();
        println!("  {:<16} runs on {on}{promoted} — {}", s.name, s.why);
    }
    match &result.violation {
        None => println!(
            "\nchecks: never two owners at any millisecond; the settled cluster runs everything its quorate partition can — ok"
        ),
        Some(v) => println!("\nCHECK FAILED: {v}"),
    }
}

fn simulate_random(scenario: &Scenario, n: u32, seed: u64, json: bool) -> anyhow::Result<ExitCode> {
    let spec = scenario.cluster().spec();
    let mut runs = Vec::new();
    let mut failed = None;
    for k in 0..u64::from(n) {
        let s = seed + k;
        let shells = scenario.cluster().shells();
        let mut sim = Sim::new(&spec, shells, scenario.names(), s, true);
        let outcome = random_schedule(&mut sim, 12);
        let (ok, text) = match &outcome {
            Ok(done) => (
                true,
                format!("{} faults, {} promotion(s)", done.faults, done.promotions),
            ),
            Err(e) => (false, e.clone()),
        };
        if !json {
            eprintln!(
                "schedule {}/{n} (seed {s}): {}",
                k + 1,
                if ok { text.clone() } else { "FAILED".into() }
            );
        }
        runs.push(serde_json::json!({"seed": s, "ok": ok, "detail": text}));
        if !ok {
            failed = Some((s, text));
            break;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": failed.is_none(), "schedules": runs})
        );
    } else if let Some((s, text)) = &failed {
        println!(
            "seed {s} FAILED: {text}\nreplay: baton scenario simulate {} --random 1 --seed {s}",
            scenario.path.display()
        );
    } else {
        println!(
            "{n} random schedules (seeds {seed}..={}), 12 faults or more each: never two owners, every settled quorate partition ran everything it could",
            seed + u64::from(n) - 1
        );
    }
    Ok(if failed.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
