//! `baton agent`: list, info, run, test, new, install.

use super::{AgentCommand, InfoFormat, parse_params};
use crate::agent::catalog::AgentCatalog;
use crate::agent::conformance;
use crate::agent::host::{CallReport, FailureCause};
use anyhow::Context;
use baton_plugin_api::{Action, Outcome};
use std::path::PathBuf;
use std::process::ExitCode;

/// Before anything else, on stderr (stdout may be JSON): how many capabilities
/// the agent requests and how many are granted, with the config line that
/// grants the rest.
fn capability_header(
    catalog: &AgentCatalog,
    handle: &crate::agent::host::AgentHandle,
    params: &baton_plugin_api::Params,
) {
    let meta = handle.metadata();
    if meta.capabilities.is_empty() {
        return;
    }
    if !crate::agent::catalog::enforces_capabilities(handle.kind()) {
        eprintln!(
            "{} capabilities declared (not enforced: a {} agent runs with baton's rights; no grant is needed)",
            meta.capabilities.len(),
            handle.kind().name()
        );
        return;
    }
    let set = catalog.resource_capabilities(handle, params);
    eprintln!(
        "{} capabilities requested, {} granted{}",
        meta.capabilities.len(),
        set.effective().len(),
        set.grant_line()
            .map(|line| format!("; to grant the rest, add to the config:\n{line}"))
            .unwrap_or_default()
    );
    for problem in set.problems() {
        eprintln!("capability not usable: {problem}");
    }
}

/// Carry out an `agent` subcommand.
pub fn agent(cmd: AgentCommand, catalog: AgentCatalog) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::List { json } => list(&catalog, json),
        AgentCommand::Info { agent, format } => info(&catalog, &agent, format),
        AgentCommand::Run {
            agent,
            action,
            params,
            timeout,
            resource,
            depth,
            probe,
            json,
        } => {
            let mut req =
                baton_plugin_api::Request::new(parse_action(&action)?, parse_params(&params)?);
            req.depth = depth;
            req.probe = probe;
            req.context.resource = resource;
            run(&catalog, &agent, req, timeout, json)
        }
        AgentCommand::Test {
            agent,
            params,
            resource,
            timeout,
            json,
        } => test(&catalog, &agent, &params, &resource, timeout, json),
        AgentCommand::New {
            name,
            kind,
            dir,
            sdk,
        } => new(&name, kind, dir, sdk.as_deref()),
        AgentCommand::Install { path, json } => install(&catalog, &path, json),
    }
}

/// `agent list`.
fn list(catalog: &AgentCatalog, json: bool) -> anyhow::Result<ExitCode> {
    let list = catalog.list();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!(
            "{:<28} {:<15} {:<10} {:<9} CAPABILITIES (requested / granted; native: declared)",
            "TYPE", "KIND", "VERSION", "CONTRACT"
        );
        for a in &list {
            let caps = if a.requested.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{} / {}",
                    a.requested.join(","),
                    if !crate::agent::catalog::enforces_capabilities(a.kind) {
                        "not enforced".into()
                    } else if a.granted.is_empty() {
                        "none".into()
                    } else {
                        a.granted.join(",")
                    }
                )
            };
            println!(
                "{:<28} {:<15} {:<10} {:<9} {caps}{}",
                a.name,
                a.kind.name(),
                if a.version.is_empty() {
                    "-"
                } else {
                    &a.version
                },
                match (&a.ocf_api, a.contract) {
                    (Some(api), _) => format!("ocf {api}"),
                    (None, Some(c)) => c.to_string(),
                    (None, None) => "-".into(),
                },
                if a.state == "ok" {
                    String::new()
                } else {
                    format!("  [{}]", a.state)
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `agent info`.
fn info(catalog: &AgentCatalog, agent: &str, format: InfoFormat) -> anyhow::Result<ExitCode> {
    let handle = catalog.load(agent)?;
    let meta = handle.metadata();
    match format {
        InfoFormat::Json => println!("{}", serde_json::to_string_pretty(meta)?),
        InfoFormat::OcfXml => print!("{}", meta.to_ocf_xml()),
        InfoFormat::Text => {
            println!("{} {} — {}", meta.name, meta.version, meta.shortdesc);
            println!(
                "kind: {}   contract: {}   source: {}",
                handle.kind(),
                meta.contract,
                handle.source()
            );
            if !meta.longdesc.is_empty() {
                println!("\n{}", meta.longdesc);
            }
            println!("\nparameters:");
            for p in &meta.parameters {
                println!(
                    "  {:<16} {:<8} {}{}{} {}",
                    p.name,
                    p.kind.ocf_name(),
                    if p.required { "required " } else { "" },
                    if p.unique { "unique " } else { "" },
                    p.default
                        .as_ref()
                        .map(|d| {
                            if d.is_empty() {
                                "default=\"\"".to_string()
                            } else {
                                format!("default={d}")
                            }
                        })
                        .unwrap_or_default(),
                    p.description
                );
            }
            println!("\nactions:");
            for a in &meta.actions {
                let interval = if a.interval_ms > 0 {
                    format!(" every {} ms", a.interval_ms)
                } else {
                    String::new()
                };
                println!("  {:<10} timeout {} ms{interval}", a.action, a.timeout_ms);
            }
            if !meta.capabilities.is_empty() {
                println!(
                    "\ncapabilities requested: {}",
                    meta.capabilities
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if crate::agent::catalog::enforces_capabilities(handle.kind()) {
                    let set = catalog.capability_set(meta);
                    let granted: Vec<String> = set
                        .effective()
                        .iter()
                        .map(|c| c.to_string())
                        .chain(set.templates_within())
                        .collect();
                    println!(
                        "capabilities granted: {}",
                        if granted.is_empty() {
                            "none".to_string()
                        } else {
                            granted.join(", ")
                        }
                    );
                } else {
                    println!(
                        "capabilities are declared, not enforced, for a {} agent",
                        handle.kind().name()
                    );
                }
            }
            for (k, v) in handle.health() {
                println!("{k}: {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_action(action: &str) -> anyhow::Result<Action> {
    Action::parse(action).with_context(|| {
        format!(
            "unknown action {action:?}; use one of {}",
            Action::ALL
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// What the run reached for (granted or not), and which requests it never
/// did: a grant for one of those may not be needed.
fn print_capability_use(set: &baton_plugin_api::CapabilitySet, used: &[String]) {
    let uses: Vec<baton_plugin_api::Capability> =
        used.iter().filter_map(|u| u.parse().ok()).collect();
    let unused = |caps: &[baton_plugin_api::Capability]| -> Vec<String> {
        caps.iter()
            .filter(|c| {
                let grant = c.to_string().parse::<baton_plugin_api::Grant>();
                !grant.is_ok_and(|g| uses.iter().any(|u| g.covers(u)))
            })
            .map(|c| c.to_string())
            .collect()
    };
    if !used.is_empty() {
        println!(
            "capabilities the agent reached for in this run: {}",
            used.join(", ")
        );
    }
    for (caps, what) in [
        (unused(set.effective()), "granted"),
        (unused(set.refused()), "not granted"),
    ] {
        if !caps.is_empty() {
            println!(
                "requested, {what}, and not reached for in this run: {} (needed only where the test does not reach)",
                caps.join(", ")
            );
        }
    }
}

/// `agent run`: one call of `req` (its action, parameters, depth, probe and
/// resource set) on `agent`.
fn run(
    catalog: &AgentCatalog,
    agent: &str,
    mut req: baton_plugin_api::Request,
    timeout: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let handle = catalog.load(agent)?;
    capability_header(catalog, &handle, &req.params);
    req.context.node = catalog.node().to_string();
    req.context.timeout_ms = timeout
        .or_else(|| handle.metadata().action(req.action).map(|a| a.timeout_ms))
        .unwrap_or(20_000);
    let report = handle.call(&req);
    print_report(&report, json)?;
    // 2: the host refused the input (parameters, action) before the agent
    // ran; 1: the agent ran and failed.
    Ok(match &report.result {
        Ok(_) => ExitCode::SUCCESS,
        Err(f) if f.cause == FailureCause::Refused => ExitCode::from(2),
        Err(_) => ExitCode::from(1),
    })
}

/// `agent test`: the conformance sequence.
fn test(
    catalog: &AgentCatalog,
    agent: &str,
    params: &[String],
    resource: &str,
    timeout: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let params = parse_params(params)?;
    let handle = catalog.load(agent)?;
    capability_header(catalog, &handle, &params);
    let usable = catalog.resource_capabilities(&handle, &params);
    let report = conformance::run(&handle, params, resource, catalog.node(), timeout);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("conformance test of {} ({})", report.agent, report.kind);
        // A refused capability fails many steps the same way: each says what
        // was refused, and the config line that grants it comes once, at the end.
        const GRANT_HINT: &str = "; to allow it, add to the config: ";
        let mut grant_hint = None;
        for s in &report.steps {
            let got = match s.got.split_once(GRANT_HINT) {
                Some((refused, hint)) => {
                    grant_hint.get_or_insert_with(|| hint.to_string());
                    refused
                }
                None => s.got.as_str(),
            };
            println!(
                "  {} {:<45} {} ({} µs)",
                if s.passed { "PASS" } else { "FAIL" },
                s.name,
                got,
                s.micros
            );
        }
        let failed = report.steps.iter().filter(|s| !s.passed).count();
        println!(
            "{}: {} passed, {} failed",
            if report.passed { "PASS" } else { "FAIL" },
            report.steps.len() - failed,
            failed
        );
        if let Some(hint) = grant_hint {
            println!("to allow the refused capabilities, add to the config: {hint}");
        }
        if crate::agent::catalog::enforces_capabilities(handle.kind()) {
            print_capability_use(&usable, &handle.capabilities_used());
        }
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `agent new`: a standalone agent project.
fn new(
    name: &str,
    kind: crate::agent::scaffold::ProjectKind,
    dir: Option<PathBuf>,
    sdk: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let (files, commands) = crate::agent::scaffold::create(name, kind, &dir, sdk)?;
    let kind_name = clap::ValueEnum::to_possible_value(&kind)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    println!("created {name} ({kind_name}) in {}:", dir.display());
    for f in files {
        println!("  {}", f.display());
    }
    println!("build and test it:");
    for c in commands {
        println!("  {c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `agent install`.
fn install(catalog: &AgentCatalog, path: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let installed = catalog.install(path)?;
    let m = &installed.manifest;
    if json {
        println!("{}", serde_json::to_string_pretty(&installed)?);
    } else {
        println!(
            "installed {} {} ({:?}, contract {}) into {}",
            m.name,
            m.metadata.version,
            m.kind,
            m.contract,
            catalog.store().root().join(&m.name).display()
        );
        if let Some(old) = &installed.replaced {
            println!("replaced version {old}");
        }
        println!("sha256 {}", m.sha256);
        if !m.metadata.capabilities.is_empty() {
            let listed = m
                .metadata
                .capabilities
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            if m.kind == crate::agent::store::StoredKind::Wasm {
                println!(
                    "requests capabilities: {listed} — grant them under [agents.grants] {} = [...] in the config",
                    m.name
                );
            } else {
                println!(
                    "declares capabilities: {listed} (not enforced: a native agent runs with baton's rights; no grant is needed)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Print one call's result for people or as JSON.
pub fn print_report(report: &CallReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    match &report.result {
        Ok(Outcome::Metadata(m)) => println!("{}", serde_json::to_string_pretty(m)?),
        Ok(outcome) => println!(
            "{} {}: {outcome} ({} µs)",
            report.agent,
            report.action,
            report.elapsed.as_micros()
        ),
        Err(f) => println!(
            "{} {}: FAILED {f}\nrecovery: {} ({} µs)",
            report.agent,
            report.action,
            report.recovery,
            report.elapsed.as_micros()
        ),
    }
    Ok(())
}
