//! `baton reload` and SIGHUP on a running node: read the config file again,
//! say what the change does (the plan: what stops, starts, restarts or is
//! updated in place, and where it runs now), load the agents of what it adds
//! or changes, and stage it in the node driver. The services it continues
//! keep their running instances. The cluster core switches every node once
//! each has staged the same config (see `baton_cluster::reload`).

use crate::agent::catalog::AgentCatalog;
use crate::cluster::config::ClusterConfig;
use crate::cluster::driver::ServiceShell;
use crate::cluster::reload::{Plan, ServiceChange, Staged, plan};
use crate::config::Config;
use crate::node::services::{LoadedService, load_one};
use std::path::Path;
use std::sync::Arc;

/// A reload read, checked and loaded, ready to stage.
pub struct Prepared {
    /// The new config.
    pub cluster: ClusterConfig,
    /// What it changes.
    pub plan: Plan,
    /// Per new service, its loaded resources (the running instance for one
    /// that continues).
    pub services: Vec<Arc<LoadedService>>,
    /// Per new service, how the driver monitors it.
    pub shells: Vec<ServiceShell>,
}

impl Prepared {
    /// What the cluster core stages (with the agents' start deadlines).
    pub fn staged(&self) -> Staged {
        let mut staged = self.plan.staged.clone();
        for (s, loaded) in staged.services.iter_mut().zip(&self.services) {
            s.start_timeout = loaded.start_budget();
        }
        staged
    }
}

/// Read the config at `path` (the one the daemon was started with) and
/// prepare it over the `running` config and its `loaded` services for node
/// `node`; every problem, by place, if it cannot be reloaded (then nothing
/// changes).
pub fn prepare(
    path: Option<&Path>,
    node: &str,
    runner_exe: &Path,
    running: &ClusterConfig,
    loaded: &[Arc<LoadedService>],
) -> Result<Prepared, Vec<String>> {
    let config = Config::load(path).map_err(|e| vec![format!("{e:#}")])?;
    let Some(cluster) = config.cluster.clone() else {
        return Err(vec![
            "the config file has no [cluster] section now; put it back (a reload changes services, not whether this is a cluster node)".into(),
        ]);
    };
    cluster.this_node(node).map_err(|e| vec![e])?;
    let plan = plan(running, &cluster)?;
    let mut agents = config;
    agents.agents.node = Some(node.to_string());
    let mut catalog = AgentCatalog::new(agents, runner_exe.to_path_buf());
    let mut policy = catalog.runner_policy().clone();
    policy.long_lived = true;
    catalog.set_runner_policy(policy);
    let mut services = Vec::new();
    let mut problems = Vec::new();
    for (i, from) in plan.staged.continues.iter().enumerate() {
        match from {
            Some(o) => services.push(Arc::clone(&loaded[*o])),
            None => match load_one(&cluster, &catalog, node, i) {
                Ok(s) => services.push(Arc::new(s)),
                Err(p) => problems.extend(p),
            },
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let shells = services.iter().map(|s| s.shell()).collect();
    Ok(Prepared {
        cluster,
        plan,
        services,
        shells,
    })
}

/// The plan in words, one line per service, each saying where it runs now
/// (`runs_on`: the nodes that hold it, by the running config's name); and the
/// same as JSON.
pub fn describe(plan: &Plan, runs_on: impl Fn(&str) -> Vec<String>) -> (String, serde_json::Value) {
    let width = plan
        .services
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for (name, change) in &plan.services {
        let now = runs_on(name);
        let here = if now.is_empty() {
            "runs nowhere now".to_string()
        } else {
            format!("runs on {}", now.join(", "))
        };
        let what = match change {
            ServiceChange::Unchanged => format!("unchanged: not touched ({here})"),
            ServiceChange::Updated(keys) => format!(
                "updated in place ({}): not restarted; {here}, and placement may move it",
                keys.join(", ")
            ),
            ServiceChange::Restarted(keys) => format!(
                "restarted ({} changed): {}, then starts again where placement puts it",
                keys.join(", "),
                if now.is_empty() {
                    "nothing to stop".to_string()
                } else {
                    format!("stops on {}", now.join(", "))
                }
            ),
            ServiceChange::Added => "added: starts where placement puts it".to_string(),
            ServiceChange::Removed => {
                if now.is_empty() {
                    "removed: runs nowhere now".to_string()
                } else {
                    format!("removed: stops on {}", now.join(", "))
                }
            }
        };
        lines.push(format!("  {name:width$}  {what}"));
        let keys = match change {
            ServiceChange::Updated(k) | ServiceChange::Restarted(k) => k.clone(),
            _ => Vec::new(),
        };
        json.push(serde_json::json!({
            "service": name,
            "change": change.name(),
            "keys": keys,
            "runs_on": now,
        }));
    }
    if !plan.restart_only.is_empty() {
        lines.push(format!(
            "  not applied until this node restarts: {}",
            plan.restart_only.join(", ")
        ));
    }
    (
        lines.join("\n"),
        serde_json::json!({
            "config": format!("{:016x}", plan.config),
            "services": json,
            "restart_only": plan.restart_only,
        }),
    )
}
