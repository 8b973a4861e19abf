//! `baton scenario view`: the web console's page for a scenario that does not
//! run yet, filled in from the cluster simulator: the status a quorate node
//! would show after start-up and after each fault step, and the simulated
//! timeline in place of the history.

use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;

/// `baton scenario view`: the console's page for a scenario, with the
/// simulator's frames (the status of a quorate node after start-up and after
/// each fault step) and its timeline.
pub fn write_view(file: &Path, out: &Path, fault: Option<&str>) -> anyhow::Result<ExitCode> {
    let scenario = crate::design::scenario::load(file)?;
    let faults = crate::design::scenario::parse_script(&scenario, fault.unwrap_or(""))?;
    let cluster = scenario.cluster();
    let names = scenario.names();
    let mut labels = vec!["started and settled".to_string()];
    labels
        .extend(crate::cluster::script::steps(fault.unwrap_or("")).map(|s| format!("after: {s}")));
    labels.push("settled".into());
    let mut frames: Vec<Value> = Vec::new();
    let mut steps = labels.into_iter();
    let everyone: Vec<&String> = names.values().collect();
    let result = crate::design::scenario::simulate_script(&scenario, &faults, 1, |sim| {
        // One frame per step under its own label; with every node down, the
        // last view seen, every node marked down.
        let label = steps.next().unwrap_or_default();
        let (status, down) = match crate::node::status::simulated(sim, cluster, &names) {
            Some((status, down)) => (json!(status), json!(down)),
            None => match frames.last() {
                Some(last) => (last["status"].clone(), json!(everyone)),
                None => return,
            },
        };
        frames.push(json!({"at_ms": sim.now(), "label": label, "status": status, "down": down}));
    });
    let data = json!({
        "scenario": file.display().to_string(),
        "frames": frames,
        "timeline": result.timeline,
        "violation": result.violation,
    });
    let page = crate::node::console::PAGE.replace(
        "/*BATON_VIEW*/null",
        &serde_json::to_string(&data)?.replace("</", "<\\/"),
    );
    std::fs::write(out, page).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {}: the console's screen for {} ({} frames; open it in a browser)",
        out.display(),
        file.display(),
        frames.len()
    );
    if let Some(v) = &result.violation {
        println!("CHECK FAILED in the simulation: {v}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
