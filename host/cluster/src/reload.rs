//! A config reload: what a changed config file means for the running cluster.
//!
//! A reload applies the `[[service]]` list without a restart: services added,
//! removed or changed. Everything else of the cluster-wide part (the nodes,
//! their links, quorum, the witness, fencing, the timing profile) decides who
//! hears whom and how long a lost node may take to stop; a change there is
//! refused, naming the keys, because nodes would briefly run under two sets of
//! those rules: it is rolled out with a restart, node by node. Per-node keys
//! (`key_file`, `health`, `console`, `tls`, `watchdog`, `wire_version`, the
//! witness's paths) are read at start; a reload lists them as waiting for the
//! next restart of the node.
//!
//! Each service is compared by name ([`ServiceChange`]): unchanged, it is not
//! touched; a change of its preferences or failure policy is applied where it
//! runs (its placement may then move it); a change of its resources (agent,
//! parameters, deadlines, monitor interval), strategy or quorum behaviour
//! stops it and starts it again with the new ones; a removed service stops; an
//! added one starts where placement puts it.
//!
//! The switch itself is the cluster core's ([`crate::node::ClusterNode::stage`]):
//! every node stages the new config; once every member has staged it, each
//! stops what the change retires and switches; while the members' configs
//! differ nobody claims or starts anything, so the service bits of two configs
//! are never mixed.

use super::config::{ClusterConfig, ServiceSection};
use super::placement::ServiceSpec;

/// What a reload does with one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceChange {
    /// Not touched.
    Unchanged,
    /// Applied where it runs, without a restart (these keys changed).
    Updated(Vec<String>),
    /// Stopped and started again with the new config (these keys changed).
    Restarted(Vec<String>),
    /// New: started where placement puts it.
    Added,
    /// Gone from the config: stopped.
    Removed,
}

impl ServiceChange {
    /// A short name (`--json`).
    pub fn name(&self) -> &'static str {
        match self {
            ServiceChange::Unchanged => "unchanged",
            ServiceChange::Updated(_) => "updated",
            ServiceChange::Restarted(_) => "restarted",
            ServiceChange::Added => "added",
            ServiceChange::Removed => "removed",
        }
    }
}

/// A config staged on a node for a reload: its services and how they continue
/// the running ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// The new config's fingerprint.
    pub config: u64,
    /// Its services, in index order.
    pub services: Vec<ServiceSpec>,
    /// Per new service: the running service it continues without a restart
    /// (unchanged or updated), by index; `None`: added or restarted.
    pub continues: Vec<Option<usize>>,
    /// Per new service: the running service of the same name, by index (also
    /// for a restarted one): the operators' settings follow the name.
    pub same_name: Vec<Option<usize>>,
}

impl Staged {
    /// `next` staged over the running `services`: a service of the same name
    /// continues unless it is named in `restarted`.
    pub fn by_name(
        services: &[ServiceSpec],
        next: &super::node::ClusterSpec,
        restarted: &[&str],
    ) -> Staged {
        let same_name: Vec<Option<usize>> = next
            .services
            .iter()
            .map(|s| services.iter().position(|o| o.name == s.name))
            .collect();
        Staged {
            config: next.config,
            services: next.services.clone(),
            continues: same_name
                .iter()
                .zip(&next.services)
                .map(|(o, s)| o.filter(|_| !restarted.contains(&s.name.as_str())))
                .collect(),
            same_name,
        }
    }

    /// The running services the change retires (removed or restarted), as bits.
    pub fn retiring(&self, running: usize) -> u64 {
        (0..running)
            .filter(|i| !self.continues.contains(&Some(*i)))
            .fold(0, |bits, i| bits | 1 << i)
    }
}

/// A reload's plan: per service, by name, what happens.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The new config's fingerprint.
    pub config: u64,
    /// Every service of either config: the new ones in file order, then the
    /// removed ones.
    pub services: Vec<(String, ServiceChange)>,
    /// Per-node keys that changed: read at the next restart of the node.
    pub restart_only: Vec<String>,
    /// What the cluster core stages.
    pub staged: Staged,
}

impl Plan {
    /// Whether the reload changes nothing that is applied live.
    pub fn is_empty(&self) -> bool {
        self.services
            .iter()
            .all(|(_, c)| *c == ServiceChange::Unchanged)
    }
}

/// Compare a service's two sections: the keys that changed, split into those
/// applied in place and those that need a restart of the service.
fn compare(old: &ServiceSection, new: &ServiceSection) -> ServiceChange {
    let section = |s: &ServiceSection| {
        let mut t = toml::Table::new();
        t.insert("strategy".into(), s.strategy.clone().into());
        t.insert("without_quorum".into(), s.without_quorum.clone().into());
        let resources: Vec<toml::Value> = s
            .resources
            .iter()
            .map(|r| {
                let mut rt = toml::Table::new();
                rt.insert("agent".into(), r.agent.clone().into());
                rt.insert(
                    "params".into(),
                    toml::Value::Table(r.params.clone().into_iter().collect()),
                );
                rt.insert("monitor_ms".into(), (r.monitor_ms as i64).into());
                if let Some(t) = r.timeout_ms {
                    rt.insert("timeout_ms".into(), (t as i64).into());
                }
                toml::Value::Table(rt)
            })
            .collect();
        t.insert("resource".into(), resources.into());
        t
    };
    let in_place = |s: &ServiceSection| {
        let mut t = toml::Table::new();
        t.insert("preferred".into(), s.preferred.to_vec().into());
        t.insert("max_restarts".into(), i64::from(s.max_restarts).into());
        t.insert(
            "failure_expiry_s".into(),
            (s.failure_expiry_s as i64).into(),
        );
        t.insert(
            "restart_backoff_ms".into(),
            (s.restart_backoff_ms as i64).into(),
        );
        t.insert(
            "restart_backoff_max_ms".into(),
            (s.restart_backoff_max_ms as i64).into(),
        );
        t
    };
    let mut restart = Vec::new();
    differing(
        &toml::Value::Table(section(old)),
        &toml::Value::Table(section(new)),
        "",
        &mut restart,
    );
    if !restart.is_empty() {
        return ServiceChange::Restarted(restart);
    }
    let mut updated = Vec::new();
    differing(
        &toml::Value::Table(in_place(old)),
        &toml::Value::Table(in_place(new)),
        "",
        &mut updated,
    );
    if updated.is_empty() {
        ServiceChange::Unchanged
    } else {
        ServiceChange::Updated(updated)
    }
}

/// The paths (`cluster.timing`, `node[1].links`) where `a` and `b` differ.
fn differing(a: &toml::Value, b: &toml::Value, path: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for k in keys {
                match (ta.get(k), tb.get(k)) {
                    (Some(va), Some(vb)) => differing(va, vb, &join(k), out),
                    _ => out.push(join(k)),
                }
            }
        }
        (toml::Value::Array(aa), toml::Value::Array(ab))
            if aa.len() == ab.len() && aa.iter().any(toml::Value::is_table) =>
        {
            for (i, (va, vb)) in aa.iter().zip(ab).enumerate() {
                differing(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

/// What reloading `next` over `running` would do, or why it cannot be
/// reloaded (each problem names the key and the way to apply it).
pub fn plan(running: &ClusterConfig, next: &ClusterConfig) -> Result<Plan, Vec<String>> {
    let frame = |c: &ClusterConfig| {
        let mut t = c.table.clone();
        t.remove("service");
        t
    };
    let mut changed = Vec::new();
    differing(
        &toml::Value::Table(frame(running)),
        &toml::Value::Table(frame(next)),
        "",
        &mut changed,
    );
    let local = |path: &String| {
        super::config::LOCAL_KEYS
            .iter()
            .any(|k| path == &format!("cluster.{k}") || path.starts_with(&format!("cluster.{k}.")))
            || path == "cluster.witness.file"
            || path == "cluster.witness.disk"
    };
    let (restart_only, refused): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|p| local(p));
    if !refused.is_empty() {
        return Err(refused
            .iter()
            .map(|p| {
                format!(
                    "{p}: changed, and a reload applies services only; roll it out with a restart, node by node (docs/operations.md, \"One cluster, one config\"), or put the old value back to reload the services"
                )
            })
            .collect());
    }
    let spec = next.spec();
    let mut services = Vec::new();
    let mut continues = Vec::new();
    let mut same_name = Vec::new();
    for new in &next.services {
        let old = running.services.iter().position(|s| s.name == new.name);
        let change = match old {
            None => ServiceChange::Added,
            Some(o) => compare(&running.services[o], new),
        };
        continues.push(match change {
            ServiceChange::Unchanged | ServiceChange::Updated(_) => old,
            _ => None,
        });
        same_name.push(old);
        services.push((new.name.clone(), change));
    }
    for old in &running.services {
        if !next.services.iter().any(|s| s.name == old.name) {
            services.push((old.name.clone(), ServiceChange::Removed));
        }
    }
    Ok(Plan {
        config: next.fingerprint,
        services,
        restart_only,
        staged: Staged {
            config: next.fingerprint,
            services: spec.services,
            continues,
            same_name,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[cluster]
name = "prod"
key_file = "/etc/baton/key"
timing = "fast"

[[node]]
name = "n1"
id = 1
links = ["198.18.0.1:7000"]

[[node]]
name = "n2"
id = 2
links = ["198.18.0.2:7000"]

[[service]]
name = "web"
strategy = "standby"
preferred = ["n1", "n2"]
[[service.resource]]
agent = "process"
params = { command = "sleep 1000" }

[[service]]
name = "db"
strategy = "standby"
[[service.resource]]
agent = "process"
params = { command = "sleep 2000" }
"#;

    fn cfg(text: &str) -> ClusterConfig {
        ClusterConfig::parse(text).unwrap().unwrap()
    }

    #[test]
    fn each_service_is_compared_by_name() {
        let next = BASE
            .replace(r#"preferred = ["n1", "n2"]"#, r#"preferred = ["n2", "n1"]"#)
            .replace("sleep 2000", "sleep 3000")
            + r#"
[[service]]
name = "cache"
strategy = "clone"
[[service.resource]]
agent = "process"
params = { command = "sleep 4000" }
"#;
        let p = plan(&cfg(BASE), &cfg(&next)).unwrap();
        assert_eq!(
            p.services,
            vec![
                (
                    "web".into(),
                    ServiceChange::Updated(vec!["preferred".into()])
                ),
                (
                    "db".into(),
                    ServiceChange::Restarted(vec!["resource[0].params.command".into()])
                ),
                ("cache".into(), ServiceChange::Added),
            ]
        );
        assert_eq!(p.staged.continues, vec![Some(0), None, None]);
        assert_eq!(p.staged.same_name, vec![Some(0), Some(1), None]);
        assert_eq!(p.staged.retiring(2), 0b10);
        let removed = plan(
            &cfg(BASE),
            &cfg(&BASE.replace("name = \"db\"", "name = \"db2\"")),
        )
        .unwrap();
        assert_eq!(removed.services[2], ("db".into(), ServiceChange::Removed));
        assert_eq!(removed.staged.retiring(2), 0b10);
        assert!(plan(&cfg(BASE), &cfg(BASE)).unwrap().is_empty());
    }

    #[test]
    fn the_cluster_frame_is_refused_and_per_node_keys_wait_for_a_restart() {
        let err = plan(
            &cfg(BASE),
            &cfg(&BASE.replace("timing = \"fast\"", "timing = \"default\"")),
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].starts_with("cluster.timing: changed, and a reload applies services only"),
            "{err:?}"
        );
        let err = plan(
            &cfg(BASE),
            &cfg(&BASE.replace("198.18.0.2:7000", "198.18.0.3:7000")),
        )
        .unwrap_err();
        assert!(err[0].starts_with("node[1].links:"), "{err:?}");
        let local = plan(
            &cfg(BASE),
            &cfg(&BASE.replace("/etc/baton/key", "/etc/baton/key2")),
        )
        .unwrap();
        assert_eq!(local.restart_only, vec!["cluster.key_file".to_string()]);
        assert!(local.is_empty());
    }
}
