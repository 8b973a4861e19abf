//! A node's services as the daemon runs them: every resource loaded with its
//! agent, and the rounds the node driver asks for — start (in order, rolled
//! back on a failure), stop (in reverse), promote, demote, monitor, and the
//! probe that checks a failed stop — each call under the deadline of its own
//! action. `load_all` is the one loader `run`, `config check` and `scenario
//! check` share.

use crate::agent::catalog::AgentCatalog;
use crate::agent::host::{AgentHandle, CallReport};
use crate::cluster::config::{ClusterConfig, DEFAULT_TIMEOUT_MS, NodeSection, ServiceSection};
use crate::cluster::driver::{Failure, ServiceShell};
use baton_plugin_api::{Action, MonitorState, Promotion, Recovery, Request, service};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One resource: its agent, its request, and its configured deadline.
pub struct Resource {
    /// The agent (shared by the resources of its type).
    pub handle: Arc<AgentHandle>,
    /// The request every call starts from (parameters, context).
    pub base: Request,
    /// The config's `timeout_ms` for every action, if given.
    timeout_ms: Option<u64>,
}

impl Resource {
    /// The resource's name (`SERVICE-INDEX`).
    pub fn name(&self) -> &str {
        &self.base.context.resource
    }

    /// The deadline of `action`: the config's `timeout_ms`, else what the agent
    /// advertises for that action, else 20 s.
    pub fn timeout_ms(&self, action: Action) -> u64 {
        self.timeout_ms
            .or_else(|| self.handle.metadata().action(action).map(|a| a.timeout_ms))
            .unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// The request for `action`, its deadline capped at `cap_ms`.
    fn request(&self, action: Action, cap_ms: Option<u64>) -> Request {
        let mut req = self.base.clone();
        req.action = action;
        req.context.timeout_ms = self
            .timeout_ms(action)
            .min(cap_ms.unwrap_or(u64::MAX).max(1));
        req
    }
}

/// A service's resources, loaded.
pub struct LoadedService {
    /// Its name.
    pub name: String,
    /// Its resources, in start order.
    pub resources: Vec<Resource>,
    /// How often to monitor the running service (the shortest resource interval; 0: never).
    pub monitor_every: u64,
    /// The virtual addresses its `ipaddr` resources add (for the guardian).
    pub addresses: Vec<IpAddr>,
    /// The mount points of its `filesystem` resources (for the guardian).
    pub mounts: Vec<PathBuf>,
    /// For a promotable service, per resource: whether it is replicated (its
    /// agent implements promote: it runs on every member and is promoted on
    /// one) or follows the promoted role (started on promotion, stopped on
    /// demotion: the service address). Empty for other services.
    replicated: Vec<bool>,
    /// Held by a start or stop round: the two never run at once, or a stop could
    /// finish (and the claim go) while the start still adds resources.
    round: Mutex<()>,
    /// Set by a stop: the start round under way starts no further resource.
    abort: AtomicBool,
}

/// What a start, promotion or monitor round found, and each resource's state
/// afterwards, in words.
pub struct Round {
    /// Healthy, or the failure.
    pub result: Result<(), Failure>,
    /// Each resource's state, in words.
    pub states: Vec<String>,
    /// A monitor's promotion score of the replicated resource.
    pub score: Option<Promotion>,
}

/// The fence agent, loaded, with its configured parameters.
pub struct Fencer {
    handle: AgentHandle,
    base: Request,
}

/// Load every service's resources and the fence agent as `run` does, on node
/// `node`: the loaded services and fencer, or every problem, by path (agents
/// that do not load, parameters their meta-data refuses, a promotable service
/// without a resource that can be promoted, a fence agent that is not one).
/// `baton config check` reports the same list.
pub fn load_all(
    cluster: &ClusterConfig,
    catalog: &AgentCatalog,
    node: &str,
) -> Result<(Vec<LoadedService>, Option<Fencer>), Vec<String>> {
    let me = cluster.this_node(node).map_err(|e| vec![e])?;
    let mut services = Vec::new();
    let mut problems = Vec::new();
    let mut shared = BTreeMap::new();
    for (i, s) in cluster.services.iter().enumerate() {
        match load_service(i, s, catalog, me, &mut shared) {
            Ok(svc) => services.push(svc),
            Err(p) => problems.extend(p),
        }
    }
    let fencer = load_fencer(cluster, catalog, node).unwrap_or_else(|p| {
        problems.extend(p);
        None
    });
    if problems.is_empty() {
        Ok((services, fencer))
    } else {
        Err(problems)
    }
}

/// Load service `i` of `cluster` alone on node `node` (one a reload adds or
/// changes): the service, or its problems by path.
pub fn load_one(
    cluster: &ClusterConfig,
    catalog: &AgentCatalog,
    node: &str,
    i: usize,
) -> Result<LoadedService, Vec<String>> {
    let me = cluster.this_node(node).map_err(|e| vec![e])?;
    load_service(i, &cluster.services[i], catalog, me, &mut BTreeMap::new())
}

/// Every problem `run` would refuse `config` for, on any of its nodes
/// (`{node}` and site data in parameter values differ per node), by path,
/// each once: what `config check` and `scenario check` report.
pub fn resource_problems(
    config: &crate::config::Config,
    runner_exe: &std::path::Path,
) -> Vec<String> {
    let Some(cluster) = &config.cluster else {
        return Vec::new();
    };
    let catalog = AgentCatalog::new(config.clone(), runner_exe.to_path_buf());
    let mut problems: Vec<String> = Vec::new();
    for node in &cluster.nodes {
        if let Err(found) = load_all(cluster, &catalog, &node.name) {
            for p in found {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
    }
    problems
}

/// The loaded agent for `name`: one per agent type, shared by its resources (a
/// WebAssembly agent keeps an instance per resource inside it; a native agent
/// serves them from a few runner processes, see `RunnerPolicy::runners`).
fn agent_for(
    catalog: &AgentCatalog,
    name: &str,
    shared: &mut BTreeMap<String, Arc<AgentHandle>>,
) -> anyhow::Result<Arc<AgentHandle>> {
    if let Some(h) = shared.get(name) {
        return Ok(Arc::clone(h));
    }
    let h = Arc::new(catalog.load(name)?);
    shared.insert(name.to_owned(), Arc::clone(&h));
    Ok(h)
}

fn load_service(
    i: usize,
    s: &ServiceSection,
    catalog: &AgentCatalog,
    me: &NodeSection,
    shared: &mut BTreeMap<String, Arc<AgentHandle>>,
) -> Result<LoadedService, Vec<String>> {
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for (j, r) in s.resources.iter().enumerate() {
        let handle = match agent_for(catalog, &r.agent, shared) {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!(
                    "service[{i}].resource[{j}].agent ({}): {e:#}",
                    s.name
                ));
                continue;
            }
        };
        let params = me.params(&r.params);
        for p in catalog.resource_problems(&handle, &params) {
            problems.push(format!(
                "service[{i}].resource[{j}].params ({}): {p}",
                s.name
            ));
        }
        let mut base = Request::new(Action::Start, params);
        base.context.node = me.name.clone();
        base.context.resource = format!("{}-{j}", s.name);
        resources.push(Resource {
            handle,
            base,
            timeout_ms: r.timeout_ms,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let of_agent = |agent: &str, param: &str| -> Vec<String> {
        resources
            .iter()
            .filter(|r| r.handle.metadata().name == agent)
            .filter_map(|r| r.base.params.get(param).cloned())
            .collect()
    };
    let replicated: Vec<bool> = if s.strategy == "promotable" {
        resources
            .iter()
            .map(|r| r.handle.metadata().implements(Action::Promote))
            .collect()
    } else {
        Vec::new()
    };
    if s.strategy == "promotable" && !replicated.contains(&true) {
        return Err(vec![format!(
            "service[{i}] ({}) is promotable, but none of its resources' agents implements promote ({}); use strategy = \"clone\" or add the replicated resource",
            s.name,
            s.resources
                .iter()
                .map(|r| r.agent.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )]);
    }
    Ok(LoadedService {
        name: s.name.clone(),
        monitor_every: s
            .resources
            .iter()
            .map(|r| r.monitor_ms)
            .filter(|m| *m > 0)
            .min()
            .unwrap_or(0),
        addresses: of_agent("ipaddr", "address")
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect(),
        mounts: of_agent("filesystem", "directory")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        resources,
        replicated,
        round: Mutex::new(()),
        abort: AtomicBool::new(false),
    })
}

fn load_fencer(
    cluster: &ClusterConfig,
    catalog: &AgentCatalog,
    node: &str,
) -> Result<Option<Fencer>, Vec<String>> {
    let Some(f) = &cluster.cluster.fencing else {
        return Ok(None);
    };
    let handle = catalog
        .load(&f.agent)
        .map_err(|e| vec![format!("cluster.fencing.agent ({}): {e:#}", f.agent)])?;
    let mut problems = Vec::new();
    if handle.metadata().parameter("target").is_none() {
        problems.push(format!(
            "cluster.fencing.agent: {} has no `target` parameter, so it is not a fence agent (see docs/agents.md, fence agents)",
            f.agent
        ));
    }
    let mut params = match cluster.node(node) {
        Some(me) => me.params(&f.params),
        None => ClusterConfig::params(&f.params),
    };
    params.insert("target".into(), "check".into());
    if let Err(bad) = baton_plugin_api::check_params(handle.metadata(), &params) {
        problems.extend(
            bad.iter()
                .map(|p| p.to_string())
                // Said above: the agent has no `target`.
                .filter(|p| !p.starts_with("parameter target:"))
                .map(|p| format!("cluster.fencing.params: {p}")),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    params.remove("target");
    let mut base = Request::new(Action::Start, params);
    base.context.node = node.to_string();
    base.context.resource = "fence".into();
    base.context.timeout_ms = f.timeout_ms;
    Ok(Some(Fencer { handle, base }))
}

impl Fencer {
    /// The fence agent's monitor for `target` (is the fence device there and
    /// answering?), as `baton scenario validate` asks it.
    pub(crate) fn check(&self, target: &str) -> Result<String, String> {
        let mut req = self.base.clone();
        req.action = Action::Monitor;
        req.params.insert("target".into(), target.to_string());
        let report = self.handle.call(&req);
        match &report.result {
            Ok(outcome) => Ok(format!("{outcome:?}")),
            Err(f) => Err(f.to_string()),
        }
    }

    /// Fence `target`: the fence agent's start with `target=NODE`; whether it
    /// confirmed the node off.
    pub fn fence(&self, target: &str) -> bool {
        let mut req = self.base.clone();
        req.params.insert("target".into(), target.to_string());
        let report = self.handle.call(&req);
        match &report.result {
            Ok(_) => {
                tracing::warn!(target, ms = report.elapsed.as_millis() as u64, "fenced");
                true
            }
            Err(f) => {
                tracing::error!(
                    target,
                    "fence failed: {f}; retrying, and the fence wait still applies"
                );
                false
            }
        }
    }
}

/// What each agent the config uses is on this node (see
/// `AgentCatalog::identity`).
pub fn agent_identities(
    cluster: &ClusterConfig,
    catalog: &AgentCatalog,
) -> BTreeMap<String, Result<String, String>> {
    cluster
        .services
        .iter()
        .flat_map(|s| s.resources.iter().map(|r| r.agent.clone()))
        .chain(cluster.cluster.fencing.iter().map(|f| f.agent.clone()))
        .map(|a| {
            let id = catalog.identity(&a);
            (a, id)
        })
        .collect()
}

/// A call's report as a round uses it: the recovery on failure, and the
/// resource's state in words.
fn judge(report: &CallReport) -> (Result<(), Recovery>, String) {
    let action = report.action;
    crate::node::metrics::agent_call(
        &report.agent,
        action.name(),
        match &report.result {
            Ok(_) => "ok",
            Err(f) => f.class.name(),
        },
        report.elapsed.as_secs_f64(),
    );
    match report.result.as_ref().map(|o| (o.state(), o)) {
        Ok((Some(s), outcome)) if s.is_active() && s != MonitorState::FailedPromoted => {
            (Ok(()), outcome.to_string())
        }
        Ok((Some(s), _)) => {
            tracing::warn!(resource = %report.resource, "{action}: {s}; recovery {}", report.recovery);
            (Err(report.recovery), s.to_string())
        }
        Ok(_) => (
            Ok(()),
            if action == Action::Stop {
                "stopped"
            } else {
                "running"
            }
            .into(),
        ),
        Err(f) => {
            tracing::error!(resource = %report.resource, %action, "{f}; recovery {}", report.recovery);
            (Err(report.recovery), format!("{action} failed: {f}"))
        }
    }
}

/// Call `action` on resource `r` (its deadline capped at `cap_ms`).
fn call(r: &Resource, action: Action, cap_ms: Option<u64>) -> (Result<(), Recovery>, String) {
    judge(&r.handle.call(&r.request(action, cap_ms)))
}

/// The more drastic of two recoveries (stop-everywhere > move > restart-here).
fn worst(a: Recovery, b: Recovery) -> Recovery {
    let rank = |r: Recovery| match r {
        Recovery::None => 0,
        Recovery::RestartHere => 1,
        Recovery::Move => 2,
        Recovery::StopEverywhere => 3,
        Recovery::Fence => 4,
    };
    if rank(b) > rank(a) { b } else { a }
}

impl LoadedService {
    /// Whether resource `k` follows the promoted role (a promotable service's
    /// resource whose agent cannot be promoted: it runs only where promoted).
    fn follows_role(&self, k: usize) -> bool {
        self.replicated.get(k) == Some(&false)
    }

    /// The driver's view of this service: how often and how long it is monitored.
    pub fn shell(&self) -> ServiceShell {
        ServiceShell {
            monitor_every: self.monitor_every,
            monitor_budget: self
                .resources
                .iter()
                .map(|r| r.timeout_ms(Action::Monitor))
                .sum(),
        }
    }

    /// The longest a start round may take: its resources' start deadlines (of
    /// a promotable service, its replicas' only; the rest start on promotion).
    pub fn start_budget(&self) -> Duration {
        Duration::from_millis(
            self.resources
                .iter()
                .enumerate()
                .filter(|(k, _)| !self.follows_role(*k))
                .map(|(_, r)| r.timeout_ms(Action::Start))
                .sum(),
        )
    }

    /// Start the resources in order (of a promotable service, its replicas);
    /// on a failure, stop the ones started, in reverse. `fenced`: the nodes
    /// confirmed fenced, for the agents' [`CallContext::fenced`].
    ///
    /// [`CallContext::fenced`]: baton_plugin_api::CallContext::fenced
    pub fn start(&self, fenced: Vec<String>) -> Round {
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        self.abort.store(false, Ordering::SeqCst);
        let mut states = vec!["stopped".to_string(); self.resources.len()];
        let result = self.start_resources(&mut states, &fenced, |k| !self.follows_role(k));
        if result.is_ok() {
            tracing::info!(service = %self.name, "started");
        }
        Round {
            result,
            states,
            score: None,
        }
    }

    /// Promote the service here: promote its replicated resources, then start
    /// the ones that follow the role (the service address), in order. A failure
    /// stops what this round started; the cluster stops the rest.
    pub fn promote(&self, mut states: Vec<String>) -> Round {
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        self.abort.store(false, Ordering::SeqCst);
        states.resize(self.resources.len(), "stopped".into());
        for (k, r) in self.resources.iter().enumerate() {
            if self.follows_role(k) {
                continue;
            }
            let (result, state) = call(r, Action::Promote, None);
            states[k] = state;
            if let Err(recovery) = result {
                let failure = format!("{}: {}", r.name(), states[k]);
                return Round {
                    result: Err((recovery, failure)),
                    states,
                    score: None,
                };
            }
            states[k] = "promoted".into();
        }
        let result = self.start_resources(&mut states, &[], |k| self.follows_role(k));
        if result.is_ok() {
            tracing::info!(service = %self.name, "promoted");
        }
        Round {
            result,
            states,
            score: None,
        }
    }

    /// Demote the service here: stop the resources that follow the role, in
    /// reverse, then demote the replicated ones. False if any step failed.
    pub fn demote(&self, mut states: Vec<String>) -> (bool, Vec<String>) {
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        states.resize(self.resources.len(), "stopped".into());
        let mut ok = true;
        for (k, r) in self.resources.iter().enumerate().rev() {
            let action = if self.follows_role(k) {
                Action::Stop
            } else {
                Action::Demote
            };
            let (result, state) = call(r, action, None);
            ok &= result.is_ok();
            states[k] = if result.is_ok() && action == Action::Demote {
                "running".into()
            } else {
                state
            };
        }
        if ok {
            tracing::info!(service = %self.name, "demoted");
        } else {
            tracing::error!(service = %self.name, "demote failed: the service stops here");
        }
        (ok, states)
    }

    /// Start the resources `which` selects, in order; on a failure, stop the ones
    /// this round started, in reverse.
    fn start_resources(
        &self,
        states: &mut [String],
        fenced: &[String],
        which: impl Fn(usize) -> bool,
    ) -> Result<(), Failure> {
        let mut started = Vec::new();
        for (k, r) in self.resources.iter().enumerate() {
            if !which(k) {
                continue;
            }
            if self.abort.load(Ordering::SeqCst) {
                // A stop is waiting: start nothing more; it stops what started.
                return Err((
                    Recovery::RestartHere,
                    format!("start of {} given up for a stop", self.name),
                ));
            }
            let mut req = r.request(Action::Start, None);
            req.context.fenced = fenced.to_vec();
            let (result, state) = judge(&r.handle.call(&req));
            states[k] = state;
            if let Err(recovery) = result {
                let failure = format!("{}: {}", r.name(), states[k]);
                let mut stopped = true;
                for &j in started.iter().rev() {
                    let (result, state) = call(&self.resources[j], Action::Stop, None);
                    stopped &= result.is_ok();
                    states[j] = state;
                }
                // A start that failed and a stop that did not: the node must be fenced.
                let recovery = if stopped { recovery } else { Recovery::Fence };
                return Err((recovery, failure));
            }
            started.push(k);
        }
        Ok(())
    }

    /// Stop every resource in reverse order (letting a start under way finish
    /// its current resource first); false if any stop failed (it may still run).
    pub fn stop(&self, cap_ms: Option<u64>) -> (bool, Vec<String>) {
        self.abort.store(true, Ordering::SeqCst);
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        let mut ok = true;
        let mut states = vec![String::new(); self.resources.len()];
        for (k, r) in self.resources.iter().enumerate().rev() {
            let (result, state) = call(r, Action::Stop, cap_ms);
            ok &= result.is_ok();
            states[k] = state;
        }
        if ok {
            tracing::info!(service = %self.name, "stopped");
        } else {
            tracing::error!(service = %self.name, "stop failed: checking what is left");
        }
        (ok, states)
    }

    /// Probe every resource (a monitor as a probe); the ones found running, or
    /// whose probe failed, by name with why. Empty: everything is stopped.
    pub fn left_running(&self) -> Vec<String> {
        self.resources
            .iter()
            .filter_map(|r| {
                let mut req = r.request(Action::Monitor, None);
                req.probe = true;
                let report = r.handle.call(&req);
                match report.result.as_ref().map(|o| o.state()) {
                    Ok(Some(s)) if !s.is_active() => None,
                    Ok(Some(s)) => Some(format!("{}: {s}", r.name())),
                    Ok(None) => Some(format!("{}: the probe gave no state", r.name())),
                    // A probe that fails is "may be running", never "stopped".
                    Err(f) => Some(format!(
                        "{}: the probe failed ({f}): it may still run",
                        r.name()
                    )),
                }
            })
            .collect()
    }

    /// Monitor every resource; healthy when each answers running, degraded or
    /// promoted. The resources of one agent go to it together, on this thread
    /// (`AgentHandle::call_many_here`: a native runner gets them in one batch).
    pub fn monitor(&self, promoted: bool) -> Round {
        // A promotable service's resources that follow the role run only where promoted.
        let watched = |k: usize| promoted || !self.follows_role(k);
        let mut reports: Vec<Option<CallReport>> = vec![None; self.resources.len()];
        for (k, r) in self.resources.iter().enumerate() {
            if reports[k].is_some() || !watched(k) {
                continue;
            }
            let same: Vec<usize> = (k..self.resources.len())
                .filter(|&j| watched(j) && Arc::ptr_eq(&self.resources[j].handle, &r.handle))
                .collect();
            let reqs: Vec<Request> = same
                .iter()
                .map(|&j| self.resources[j].request(Action::Monitor, None))
                .collect();
            for (j, report) in same.into_iter().zip(r.handle.call_many_here(reqs)) {
                reports[j] = Some(report);
            }
        }
        let mut result = Ok(());
        let mut states = vec!["stopped".to_string(); self.resources.len()];
        let mut score = None;
        for (k, report) in reports.iter().enumerate() {
            let Some(report) = report else { continue };
            let (r, state) = judge(report);
            if let Err(recovery) = r {
                let failure = format!("{}: {state}", report.resource);
                result = match result {
                    Ok(()) => Err((recovery, failure)),
                    Err((worse, first)) => Err((worst(worse, recovery), first)),
                };
            }
            if score.is_none() {
                score = report.result.as_ref().ok().and_then(|o| o.promotion());
            }
            states[k] = state;
        }
        Round {
            result,
            states,
            score,
        }
    }

    /// End whatever of this service still runs, without its agents: every
    /// process tagged with its resources, its mounts and its addresses (as the
    /// guardian would). How many processes were ended.
    pub fn end(&self) -> Result<usize, String> {
        let host = service::host_id();
        let mut ended = 0;
        for r in &self.resources {
            ended += service::end(&host, Some(r.name()), Duration::ZERO)
                .map_err(|e| format!("{}: {e}", r.name()))?;
        }
        crate::node::guardian::release(&self.mounts, &self.addresses);
        Ok(ended)
    }
}

/// Probe every resource before joining: a previous run of this daemon may have
/// died (kill -9, crash) leaving resources running that the cluster may already
/// have started elsewhere. Whatever may run (a probe that fails counts as may
/// run) is stopped now, before this node claims anything; a resource that cannot
/// be stopped keeps the daemon from starting, named with why.
pub fn clean_up_leftovers(services: &[LoadedService]) -> anyhow::Result<()> {
    for svc in services {
        let found = svc.left_running();
        if found.is_empty() {
            continue;
        }
        tracing::warn!(
            service = %svc.name,
            "found from a previous run of this node: {}; stopping it before joining",
            found.join("; ")
        );
        // A stop that succeeds leaves nothing running (the agent contract).
        let (ok, states) = svc.stop(None);
        if !ok {
            anyhow::bail!(
                "service {}: left by a previous run ({}) and its stop failed ({}); stop it by hand, then start baton again",
                svc.name,
                found.join("; "),
                states.join("; ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[cluster]
name = "t"
key_file = "/nonexistent"
[[node]]
name = "n1"
id = 1
links = ["127.0.0.1:5405"]
[[service]]
name = "web"
strategy = "standby"
[[service.resource]]
agent = "ipaddr"
params = { address = "198.18.2.100/24", interface = "svc" }
[[service.resource]]
agent = "ipaddr"
params = { address = "198.18.2.101/24", interface = "svc" }
timeout_ms = 3000
"#;

    /// Each call waits its own action's deadline: `ipaddr` advertises 10 s for
    /// start and 5 s for monitor, and a monitor round is given the monitors'
    /// deadlines, not the starts'; the config's `timeout_ms` holds for every
    /// action of its resource.
    #[test]
    fn every_action_has_its_own_deadline() {
        let config = Config::parse(CONFIG).unwrap();
        let catalog = AgentCatalog::new(config.clone(), PathBuf::from("/nonexistent"));
        let (services, _) = load_all(config.cluster.as_ref().unwrap(), &catalog, "n1").unwrap();
        let [advertised, configured] = &services[0].resources[..] else {
            panic!("two resources")
        };
        assert_eq!(advertised.timeout_ms(Action::Start), 10_000);
        assert_eq!(advertised.timeout_ms(Action::Monitor), 5_000);
        assert_eq!(advertised.timeout_ms(Action::Stop), 5_000);
        assert_eq!(configured.timeout_ms(Action::Start), 3_000);
        assert_eq!(configured.timeout_ms(Action::Monitor), 3_000);
        assert_eq!(services[0].shell().monitor_budget, 5_000 + 3_000);
        assert_eq!(services[0].start_budget(), Duration::from_millis(13_000));
        assert_eq!(
            advertised
                .request(Action::Stop, Some(300))
                .context
                .timeout_ms,
            300,
            "without quorum a stop is capped at the self-fence bound"
        );
    }
}
