//! `baton config check` and `baton scenario`.

use super::{ScenarioCommand, runner_exe};
use crate::config::Config;
use anyhow::Context;
use std::process::ExitCode;

/// Carry out a `scenario` subcommand.
pub fn scenario(cmd: &ScenarioCommand) -> anyhow::Result<ExitCode> {
    use crate::design::scenario;
    match cmd {
        ScenarioCommand::New { template, file } => {
            let text = scenario::new_scenario(template)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file)
                .with_context(|| format!("cannot create {} (it must not exist)", file.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            println!(
                "wrote {}: fill in its site part, then: baton scenario check {0}",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Check { file, json } => scenario::check(file, *json),
        ScenarioCommand::Compile { file, out, json } => scenario::compile(file, out, *json),
        ScenarioCommand::Simulate {
            file,
            fault,
            random,
            seed,
            json,
        } => scenario::simulate(file, fault.as_deref(), *random, *seed, *json),
        ScenarioCommand::Validate {
            file,
            token_file,
            ca_file,
            json,
        } => crate::design::validate::run(file, token_file.as_deref(), ca_file.as_deref(), *json),
        ScenarioCommand::View { file, out, fault } => {
            crate::design::view::write_view(file, out, fault.as_deref())
        }
    }
}

/// `baton config check FILE`.
pub fn config_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(Some(file)) {
        Err(e) => {
            println!("{e:#}");
            Ok(ExitCode::from(1))
        }
        Ok(config) => {
            let mut problems = crate::node::services::resource_problems(&config, &runner_exe()?);
            if let Some(c) = &config.cluster {
                problems.extend(crate::node::daemon::site_file_problems(c));
                problems.extend(slot_problems(c));
            }
            if !problems.is_empty() {
                for p in &problems {
                    println!("{}: {p}", file.display());
                }
                return Ok(ExitCode::from(1));
            }
            match &config.cluster {
                None => println!("{}: ok (agents only; no [cluster] section)", file.display()),
                Some(c) => {
                    let b = c.spec().bounds;
                    println!(
                        "{}: ok — cluster {}, config {:016x}, {} nodes, {} links, {} services; timing {}: a link is down after {} ms, survivors take over a lost node's services after {} ms without a fence confirmation",
                        file.display(),
                        c.cluster.name,
                        c.fingerprint,
                        c.nodes.len(),
                        c.spec().links,
                        c.services.len(),
                        c.cluster.timing,
                        b.membership.link_timeout.as_millis(),
                        b.fence_wait().as_millis()
                    );
                    for line in takeover_lines(c) {
                        println!("{line}");
                    }
                    let arithmetic = c.spec().quorum.arithmetic();
                    for line in &arithmetic.lines {
                        println!("{line}");
                    }
                    for w in &arithmetic.warnings {
                        println!("WARNING: {w}");
                    }
                    for w in crate::node::daemon::site_file_warnings(c) {
                        println!("WARNING: {w}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The lease slots of shared disks (the witness's, each `disk-lease`'s): two
/// users of one slot, and, where the device is on this machine, a slot that
/// holds anything but this cluster's lease for the same purpose (a partition
/// table, a filesystem, another cluster's lease).
fn slot_problems(c: &crate::cluster::config::ClusterConfig) -> Vec<String> {
    let mut users: Vec<(String, std::path::PathBuf, u64, &str)> = Vec::new();
    if let Some(w) = &c.cluster.witness
        && let Some(disk) = &w.disk
    {
        users.push(("cluster.witness".into(), disk.clone(), w.slot, "witness"));
    }
    for (i, svc) in c.services.iter().enumerate() {
        for (k, r) in svc.resources.iter().enumerate() {
            let (Some(device), Some(slot)) = (
                r.params.get("device").and_then(|d| d.as_str()),
                r.params.get("slot").and_then(|s| s.as_integer()),
            ) else {
                continue;
            };
            if r.agent == "disk-lease" {
                let at = format!("service[{i}].resource[{k}].params.slot");
                users.push((at, device.into(), slot.max(0) as u64, "lease"));
            }
        }
    }
    let mut problems = Vec::new();
    for (n, (at, device, slot, purpose)) in users.iter().enumerate() {
        if let Some((other, ..)) = users[..n]
            .iter()
            .find(|(_, d, s, _)| d == device && s == slot)
        {
            problems.push(format!(
                "{at}: slot {slot} of {} is {other}'s too; every lease needs a slot of its own",
                device.display()
            ));
            continue;
        }
        if let Err(e) = baton_agents::lease::check_slot(device, *slot, &c.cluster.name, purpose) {
            problems.push(format!("{at}: {e}"));
        }
    }
    problems
}

/// What the survivors wait, after a node crashed, before they start its
/// services (the agents' starts come on top): with a fence agent, noticing
/// the loss and (where they need it) the crashed node's witness lease running
/// out, then the fence; without one, the fence wait. Each `disk-lease` adds the
/// claim of its lease, and without a fence confirmation waiting it out.
fn takeover_lines(c: &crate::cluster::config::ClusterConfig) -> Vec<String> {
    let spec = c.spec();
    let b = spec.bounds;
    let q = &spec.quorum;
    let all: u32 = q.votes.values().sum();
    let needs_witness = q.witness_votes > 0
        && q.votes.values().any(|v| {
            let others = all - v;
            2 * others <= q.total() && 2 * (others + q.witness_votes) > q.total()
        });
    let notice = b.membership.link_timeout + b.membership.interval;
    let before_fence = if needs_witness {
        notice.max(b.witness_lease())
    } else {
        notice
    };
    let mut lines = vec![if c.cluster.fencing.is_some() {
        format!(
            "after a crash, survivors start its services at most {} ms after it (to notice{}) plus the fence agent's time, or {} ms after it left the view when the fence fails",
            before_fence.as_millis(),
            if needs_witness {
                ", and its witness lease to run out"
            } else {
                ""
            },
            b.fence_wait().as_millis()
        )
    } else {
        format!(
            "after a crash, survivors start its services {} ms after it left the view (the fence wait; a fence agent would shorten it to {} ms plus the fence)",
            b.fence_wait().as_millis(),
            before_fence.as_millis()
        )
    }];
    for svc in &c.services {
        for r in svc.resources.iter().filter(|r| r.agent == "disk-lease") {
            let lease = r
                .params
                .get("lease_ms")
                .and_then(|v| v.as_integer())
                .unwrap_or(4000)
                .max(0) as u128;
            lines.push(format!(
                "  service {}: + {} ms to claim its disk lease{}",
                svc.name,
                lease / 8,
                if c.cluster.fencing.is_some() {
                    format!(
                        "; + {lease} ms more (waiting out the lease) when the holder was not fenced"
                    )
                } else {
                    format!(" after waiting out the crashed holder's {lease} ms lease")
                }
            ));
        }
    }
    lines
}
