//! `baton run`: the node daemon. Thin I/O around [`ClusterNode`]: UDP sockets (one
//! per link), the clock, agent and fence calls on worker threads, the witness lease,
//! the control socket, the optional watchdog and a status file. Every decision is
//! made by the pure state machine.

use crate::agent_host::{AgentHandle, CallReport};
use crate::catalog::AgentCatalog;
use crate::cluster::config::{ClusterConfig, NodeSection, ServiceSection};
use crate::cluster::node::{ClusterNode, Command, Phase, Role};
use crate::cluster::placement::show_score;
use crate::cluster::wire::{ClusterKey, Drop, NodeId, ReplayGuard, decode, encode};
use crate::config::Config;
use crate::control::{ControlReply, ControlRequest};
use crate::crew::Crew;
use crate::guardian::{Charge, Guardian, descendant_groups};
use crate::watchdog::Watchdog;
use crate::witness_worker::{DiskStore, FileStore, Op, WitnessWorker};
use anyhow::{Context, bail};
use baton_plugin_api::{Action, MonitorState, Promotion, Recovery, Request, service};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

/// How often the status file is rewritten, at most.
const STATUS_EVERY_MS: u64 = 100;

/// How often the status file is rewritten while nothing in it changes (its
/// timers and ages move on): with a thousand resources a rewrite is a few
/// hundred kilobytes of JSON.
const STATUS_STEADY_MS: u64 = 1000;

/// How often the guardian's list of process groups is refreshed while nothing
/// starts or stops (a walk of /proc, a few milliseconds of CPU). Processes newer
/// than the list are found by their resource tags when the guardian fences.
const GROUPS_EVERY_MS: u64 = 2000;

/// How often the metrics' gauges are set from the state machine.
const METRICS_EVERY_MS: u64 = 500;

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A service's resources, loaded.
pub struct LoadedService {
    name: String,
    resources: Vec<(Arc<AgentHandle>, Request)>,
    /// How often to monitor the running service (the shortest resource interval; 0: never).
    monitor_every: u64,
    /// The virtual addresses its `ipaddr` resources add (for the guardian).
    addresses: Vec<std::net::IpAddr>,
    /// The mount points of its `filesystem` resources (for the guardian).
    mounts: Vec<PathBuf>,
    /// For a promotable service, per resource: whether it is replicated (its
    /// agent implements promote: it runs on every member and is promoted on
    /// one) or follows the promoted role (started on promotion, stopped on
    /// demotion: the service address). Empty for other services.
    replicated: Vec<bool>,
    /// Held by a start or stop round: the two never run at once, or a stop could
    /// finish (and the claim go) while the start still adds resources.
    round: std::sync::Mutex<()>,
    /// Set by a stop: the start round under way starts no further resource.
    abort: std::sync::atomic::AtomicBool,
}

/// What a start or monitor round found: healthy, or the recovery the failure asks
/// for and the failure in words; and each resource's state afterwards.
struct Round {
    result: Result<(), (Recovery, String)>,
    states: Vec<String>,
    /// A monitor's promotion score of the replicated resource (promotable services).
    score: Option<Promotion>,
}

/// Where agent work reports back: the loop's channel, and its bell (see wake.rs).
#[derive(Clone)]
struct DoneSender {
    tx: mpsc::Sender<Done>,
    bell: crate::wake::Bell,
}

impl DoneSender {
    fn send(&self, done: Done) {
        if self.tx.send(done).is_ok() {
            self.bell.ring();
        }
    }
}

/// A finished piece of agent work.
enum Done {
    Started(usize, Round),
    Stopped(usize, bool, Vec<String>),
    Promoted(usize, Round),
    Demoted(usize, bool, Vec<String>),
    /// A monitor round of a service, with its number (see `Monitors`).
    Monitored(usize, u64, Round),
    Fenced(NodeId, u64, bool),
}

/// Everything in the status file but its timers (ages, time left), so a change
/// is written within STATUS_EVERY_MS: phases, placements and their reasons, the
/// view, quorum, links, fencing, failure counts, moves, and the resources'
/// states (counted by `local_changes`).
fn status_key(node: &ClusterNode, now: u64, local_changes: u64) -> String {
    let quorum = node
        .quorum()
        .map(|q| (q.quorate, q.witness_held, q.reason.clone()));
    let links: Vec<bool> = node.membership().links().values().map(|s| s.up).collect();
    let fence = node.fence_state(now);
    let waiting: Vec<NodeId> = fence.waiting.iter().map(|(n, _)| *n).collect();
    let moves: Vec<(usize, NodeId)> = node
        .active_moves(now)
        .iter()
        .map(|m| (m.service, m.to))
        .collect();
    format!(
        "{:?}{:?}{:?}{:?}{:?}{quorum:?}{links:?}{:?}{:?}{waiting:?}{:?}{moves:?}{local_changes}",
        node.phases(),
        node.placements(),
        node.roles(),
        node.promotions(),
        node.membership().view(),
        fence.confirmed,
        fence.running,
        node.failure_counts(now),
    )
}

/// What this daemon knows of a service beyond the state machine, for status.
struct Local {
    /// Each resource's state after the last call, in words.
    states: Vec<String>,
    /// The latest failure here, in words.
    last_failure: Option<String>,
}

/// The fence agent, loaded, with its configured parameters.
pub struct Fencer {
    handle: AgentHandle,
    base: Request,
}

/// What `baton status` reads.
#[derive(Serialize)]
struct Status<'a> {
    /// The cluster's name.
    cluster: &'a str,
    node: &'a str,
    id: NodeId,
    epoch: u64,
    members: Vec<&'a str>,
    /// This node's config fingerprint (hex).
    config: String,
    /// Nodes heard that run another config: not admitted to the membership.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    other_configs: Vec<String>,
    quorate: bool,
    quorum: String,
    witness_held: bool,
    /// The witness's votes (0: no witness).
    witness_votes: u32,
    /// Why the witness lease could not be read or renewed just now (storage
    /// stalled or failing); the witness counts as not held meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    witness_problem: Option<String>,
    /// This node's health checks and their last results (when configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<crate::health::Health>,
    links: Vec<LinkStatus<'a>>,
    fencing: FencingStatus<'a>,
    watchdog: Option<String>,
    services: Vec<ServiceStatus<'a>>,
    dropped: BTreeMap<&'static str, u64>,
    uptime_ms: u64,
}

#[derive(Serialize)]
struct FencingStatus<'a> {
    /// The fence agent (`None`: survivors wait the fence wait).
    agent: Option<&'a str>,
    /// The fence wait, ms.
    fence_wait_ms: u64,
    /// Lost nodes this node confirmed fenced.
    confirmed: Vec<&'a str>,
    /// Fences under way from here.
    running: Vec<&'a str>,
    /// Lost nodes not confirmed fenced, and the ms left of their fence wait.
    waiting: BTreeMap<&'a str, u64>,
}

#[derive(Serialize)]
struct ResourceStatus<'a> {
    name: String,
    agent: &'a str,
    state: String,
}

#[derive(Serialize)]
struct MoveStatus<'a> {
    to: &'a str,
    by: &'a str,
    /// ms until the move ends; `None`: until cleared or the target leaves.
    ends_in_ms: Option<u64>,
}

#[derive(Serialize)]
struct LinkStatus<'a> {
    peer: &'a str,
    link: u8,
    up: bool,
    since_ms: u64,
    /// The smoothed round trip of heartbeats, ms (`None` until measured).
    rtt_ms: Option<f64>,
}

#[derive(Serialize)]
struct ServiceStatus<'a> {
    name: &'a str,
    here: &'static str,
    owner: Option<&'a str>,
    why: String,
    /// Members that claim it (hold it, or are about to).
    holders: Vec<&'a str>,
    /// Unexpired failures on this node.
    failures: usize,
    /// The latest failure here, in words.
    last_failure: Option<&'a str>,
    /// An operator's move in effect.
    #[serde(rename = "move")]
    moving: Option<MoveStatus<'a>>,
    /// A promotable service's promoted role.
    #[serde(skip_serializing_if = "Option::is_none")]
    promotion: Option<PromotionStatus<'a>>,
    resources: Vec<ResourceStatus<'a>>,
}

/// Where a promotable service is promoted, and what the choice rests on.
#[derive(Serialize)]
struct PromotionStatus<'a> {
    /// This node's role (replica, claiming, promoting, promoted, demoting).
    here: &'static str,
    /// The node that should be promoted.
    promoted: Option<&'a str>,
    /// Why there, or why nowhere.
    why: String,
    /// Each member's replica score (generation/position).
    scores: BTreeMap<&'a str, String>,
    /// The highest acknowledged position known: a replica below it lacks
    /// acknowledged writes.
    acknowledged: Option<String>,
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
        let mut req = Request::new(Action::Start, params);
        req.context.node = me.name.clone();
        req.context.resource = format!("{}-{j}", s.name);
        req.context.timeout_ms = r
            .timeout_ms
            .or_else(|| {
                handle
                    .metadata()
                    .action(Action::Start)
                    .map(|a| a.timeout_ms)
            })
            .unwrap_or(20_000);
        resources.push((handle, req));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let monitor_every = s
        .resources
        .iter()
        .map(|r| r.monitor_ms)
        .filter(|m| *m > 0)
        .min()
        .unwrap_or(0);
    let addresses = resources
        .iter()
        .filter(|(h, _)| h.metadata().name == "ipaddr")
        .filter_map(|(_, req)| req.params.get("address")?.split('/').next()?.parse().ok())
        .collect();
    let mounts = resources
        .iter()
        .filter(|(h, _)| h.metadata().name == "filesystem")
        .filter_map(|(_, req)| req.params.get("directory").map(PathBuf::from))
        .collect();
    let replicated: Vec<bool> = if s.strategy == "promotable" {
        resources
            .iter()
            .map(|(h, _)| h.metadata().implements(Action::Promote))
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
        resources,
        monitor_every,
        addresses,
        mounts,
        replicated,
        round: std::sync::Mutex::new(()),
        abort: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Call `action` on one resource (its deadline capped at `cap_ms`); the recovery
/// on failure, and the resource's state in words.
///
/// `here`: run an in-process agent's call on this thread (a monitor round,
/// whose deadline the loop supervises; see `Monitors`).
fn call(
    handle: &AgentHandle,
    base: &Request,
    action: Action,
    cap_ms: Option<u64>,
) -> (Result<(), Recovery>, String) {
    let mut req = base.clone();
    req.action = action;
    if let Some(cap) = cap_ms {
        req.context.timeout_ms = req.context.timeout_ms.min(cap.max(1));
    }
    judge(&handle.call(&req))
}

/// A call's report as the loop uses it: the recovery on failure, and the
/// resource's state in words.
fn judge(report: &CallReport) -> (Result<(), Recovery>, String) {
    let action = report.action;
    crate::metrics::agent_call(
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
        Err(ref f) => {
            tracing::error!(resource = %report.resource, %action, "{f}; recovery {}", report.recovery);
            (Err(report.recovery), format!("{action} failed: {f}"))
        }
    }
}

/// A failed start or promotion of service `i`: recorded with its recovery,
/// kept for status; the recovery it asks for.
fn round_failed(
    decisions: &mut crate::decisions::Decisions,
    local: &mut Local,
    i: usize,
    what: &str,
    (recovery, failure): (Recovery, String),
) -> Recovery {
    decisions.record(
        "failure",
        Some(i),
        format!("{what} failed here: {failure}; recovery {recovery}"),
    );
    local.last_failure = Some(failure);
    recovery
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

/// What this node asks of the witness lease at a tick: the partition's leader
/// takes or renews it, the others read it. A leader that fails its health
/// checks lets it go when it is alone (an isolated node that still reaches the
/// storage), so the healthy side need not wait for the lease to expire; in a
/// larger partition it only stops renewing, as members may still count it.
fn witness_op(node: &ClusterNode, me: NodeId, healthy: bool) -> Op {
    let view = node.membership().view().1;
    match (view.iter().next() == Some(&me), healthy) {
        (true, true) => Op::Lead(me, view.clone()),
        (true, false) if view.len() == 1 => Op::Release(me),
        _ => Op::Look,
    }
}

impl LoadedService {
    /// Whether resource `k` follows the promoted role (a promotable service's
    /// resource whose agent cannot be promoted: it runs only where promoted).
    fn follows_role(&self, k: usize) -> bool {
        self.replicated.get(k) == Some(&false)
    }
}

/// Start the service's resources in order (of a promotable service, its
/// replicas); on a failure, stop the ones started, in reverse.
fn start_service(svc: &LoadedService) -> Round {
    let _round = svc.round.lock().unwrap_or_else(|e| e.into_inner());
    svc.abort.store(false, Ordering::SeqCst);
    let mut states = vec!["stopped".to_string(); svc.resources.len()];
    let result = start_resources(svc, &mut states, |k| !svc.follows_role(k));
    if result.is_ok() {
        tracing::info!(service = %svc.name, "started");
    }
    Round {
        result,
        states,
        score: None,
    }
}

/// Promote a promotable service here: promote its replicated resources, then
/// start the ones that follow the role (the service address), in order. A
/// failure stops what this round started; the cluster stops the rest.
fn promote_service(svc: &LoadedService, states: Vec<String>) -> Round {
    let _round = svc.round.lock().unwrap_or_else(|e| e.into_inner());
    svc.abort.store(false, Ordering::SeqCst);
    let mut states = states;
    states.resize(svc.resources.len(), "stopped".into());
    for (k, (handle, req)) in svc.resources.iter().enumerate() {
        if svc.follows_role(k) {
            continue;
        }
        let (result, state) = call(handle, req, Action::Promote, None);
        states[k] = state;
        if let Err(recovery) = result {
            let failure = format!("{}: {}", req.context.resource, states[k]);
            return Round {
                result: Err((recovery, failure)),
                states,
                score: None,
            };
        }
        states[k] = "promoted".into();
    }
    let result = start_resources(svc, &mut states, |k| svc.follows_role(k));
    if result.is_ok() {
        tracing::info!(service = %svc.name, "promoted");
    }
    Round {
        result,
        states,
        score: None,
    }
}

/// Demote a promotable service here: stop the resources that follow the role,
/// in reverse, then demote the replicated ones. False if any step failed.
fn demote_service(svc: &LoadedService, states: Vec<String>) -> (bool, Vec<String>) {
    let _round = svc.round.lock().unwrap_or_else(|e| e.into_inner());
    let mut states = states;
    states.resize(svc.resources.len(), "stopped".into());
    let mut ok = true;
    for (k, (handle, req)) in svc.resources.iter().enumerate().rev() {
        let action = if svc.follows_role(k) {
            Action::Stop
        } else {
            Action::Demote
        };
        let (result, state) = call(handle, req, action, None);
        ok &= result.is_ok();
        states[k] = if result.is_ok() && action == Action::Demote {
            "running".into()
        } else {
            state
        };
    }
    if ok {
        tracing::info!(service = %svc.name, "demoted");
    } else {
        tracing::error!(service = %svc.name, "demote failed: the service stops here");
    }
    (ok, states)
}

/// Start the resources `which` selects, in order; on a failure, stop the ones
/// this round started, in reverse.
fn start_resources(
    svc: &LoadedService,
    states: &mut [String],
    which: impl Fn(usize) -> bool,
) -> Result<(), (Recovery, String)> {
    let mut started = Vec::new();
    for (k, (handle, req)) in svc.resources.iter().enumerate() {
        if !which(k) {
            continue;
        }
        if svc.abort.load(Ordering::SeqCst) {
            // A stop is waiting: start nothing more; it stops what started.
            return Err((
                Recovery::RestartHere,
                format!("start of {} given up for a stop", svc.name),
            ));
        }
        let (result, state) = call(handle, req, Action::Start, None);
        states[k] = state;
        if let Err(recovery) = result {
            let failure = format!("{}: {}", req.context.resource, states[k]);
            let mut stopped = true;
            for &j in started.iter().rev() {
                let (h, r): &(Arc<AgentHandle>, Request) = &svc.resources[j];
                let (result, state) = call(h, r, Action::Stop, None);
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

/// Recurring monitor rounds: one at a time per service, each on a thread of a
/// crew (`crew.rs`) that runs in-process agents' calls on that thread
/// (`AgentHandle::call_many_here`, no hand-off to a worker). The loop supervises the
/// round instead: one that has not answered within the sum of its calls'
/// deadlines, plus a second, is a failed monitor, and its late answer is ignored.
struct Monitors {
    /// When each service's next round is due.
    next: Vec<u64>,
    /// Each service's running round: its number, start and deadline.
    running: Vec<Option<(u64, u64, u64)>>,
    rounds: u64,
    crew: Crew,
}

impl Monitors {
    fn new(services: usize) -> Monitors {
        Monitors {
            next: vec![0; services],
            running: vec![None; services],
            rounds: 0,
            crew: Crew::new("monitor"),
        }
    }

    fn schedule(&mut self, i: usize, at: u64) {
        self.next[i] = at;
    }

    fn due(&self, i: usize, now: u64) -> bool {
        self.running[i].is_none() && now >= self.next[i]
    }

    /// The earliest time a round of a service for which `monitored` holds is
    /// due, or a running round is overdue (for the loop's sleep).
    fn next_event(&self, monitored: impl Fn(usize) -> bool) -> u64 {
        (0..self.next.len())
            .filter_map(|i| match self.running[i] {
                Some((_, _, deadline)) => Some(deadline + 1),
                None => monitored(i).then_some(self.next[i]),
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    fn launch(
        &mut self,
        i: usize,
        now: u64,
        promoted: bool,
        services: &Arc<Vec<LoadedService>>,
        done: &DoneSender,
    ) {
        self.rounds += 1;
        let id = self.rounds;
        let budget: u64 = services[i]
            .resources
            .iter()
            .map(|(_, r)| r.context.timeout_ms)
            .sum();
        self.running[i] = Some((id, now, now + budget + 1000));
        let all = Arc::clone(services);
        let tx = done.clone();
        let launched = self.crew.launch(move || {
            tx.send(Done::Monitored(i, id, monitor_service(&all[i], promoted)));
        });
        if let Err(e) = launched {
            // The round is overdue at its deadline and counts as failed then.
            tracing::error!(service = %services[i].name, "cannot start a monitor round: {e}");
        }
    }

    /// Round `id` of service `i` answered; whether it is the one still awaited.
    fn finish(&mut self, i: usize, id: u64) -> bool {
        let current = self.running[i].is_some_and(|(r, ..)| r == id);
        if current {
            self.running[i] = None;
        }
        current
    }

    /// Rounds past their deadline, given up on: (service, the ms they had).
    fn overdue(&mut self, now: u64) -> Vec<(usize, u64)> {
        let mut late = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            if let Some((_, started, deadline)) = *r
                && now > deadline
            {
                *r = None;
                late.push((i, deadline - started));
            }
        }
        late
    }
}

/// Monitor every resource; healthy when each answers running, degraded or promoted.
/// The resources of one agent go to it together, on this thread
/// (`AgentHandle::call_many_here`: a native runner gets them in one batch).
fn monitor_service(svc: &LoadedService, promoted: bool) -> Round {
    // A promotable service's resources that follow the role run only where promoted.
    let watched = |k: usize| promoted || !svc.follows_role(k);
    let mut reports: Vec<Option<CallReport>> = vec![None; svc.resources.len()];
    for (k, (handle, _)) in svc.resources.iter().enumerate() {
        if reports[k].is_some() || !watched(k) {
            continue;
        }
        let same: Vec<usize> = (k..svc.resources.len())
            .filter(|&j| watched(j) && Arc::ptr_eq(&svc.resources[j].0, handle))
            .collect();
        let reqs: Vec<Request> = same
            .iter()
            .map(|&j| {
                let mut req = svc.resources[j].1.clone();
                req.action = Action::Monitor;
                req
            })
            .collect();
        for (j, report) in same.into_iter().zip(handle.call_many_here(reqs)) {
            reports[j] = Some(report);
        }
    }
    let mut result = Ok(());
    let mut states = vec!["stopped".to_string(); svc.resources.len()];
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

/// A stop that began while this node was quorate (a monitor failure a moment
/// before a partition) has its full time; once quorum has been gone for the
/// self-fence bound, the survivors may take over, so whatever of the service
/// still runs here is ended now: every process tagged with its resources (the
/// stop then finds nothing left). Once per stop.
fn end_overrunning_stops(services: &[LoadedService], phases: &[Phase], ended: &mut [bool]) {
    let host = service::host_id();
    for (i, svc) in services.iter().enumerate() {
        if phases[i] != Phase::Stopping {
            ended[i] = false;
            continue;
        }
        if std::mem::replace(&mut ended[i], true) {
            continue;
        }
        for (_, req) in &svc.resources {
            match service::end(&host, Some(&req.context.resource), Duration::ZERO) {
                Ok(0) => {}
                Ok(n) => tracing::error!(
                    service = %svc.name,
                    resource = %req.context.resource,
                    "no quorum for the self-fence bound and the stop still runs: killed {n} of its processes"
                ),
                Err(e) => tracing::error!(service = %svc.name, "cannot end its processes: {e}"),
            }
        }
    }
}

/// Stop resources in reverse order; false if any stop failed (it may still run).
fn stop_resources(
    resources: &[(Arc<AgentHandle>, Request)],
    cap_ms: Option<u64>,
) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut states = vec![String::new(); resources.len()];
    for (k, (h, r)) in resources.iter().enumerate().rev() {
        let (result, state) = call(h, r, Action::Stop, cap_ms);
        ok &= result.is_ok();
        states[k] = state;
    }
    (ok, states)
}

fn stop_service(svc: &LoadedService, cap_ms: Option<u64>) -> (bool, Vec<String>) {
    // Let a start under way finish its current resource, then stop everything.
    svc.abort.store(true, Ordering::SeqCst);
    let _round = svc.round.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, states) = stop_resources(&svc.resources, cap_ms);
    if ok {
        tracing::info!(service = %svc.name, "stopped");
    } else {
        tracing::error!(service = %svc.name, "stop failed: the service may still run here; it stays blocked until this node is fenced or `baton clear {}`", svc.name);
    }
    (ok, states)
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

/// Probe every resource before joining: a previous run of this daemon may have died
/// (kill -9, crash) leaving resources running that the cluster may already have
/// started elsewhere. Whatever runs is stopped now, before this node claims
/// anything; a resource that cannot be stopped keeps the daemon from starting.
fn clean_up_leftovers(services: &[LoadedService]) -> anyhow::Result<()> {
    for svc in services {
        let running: Vec<bool> = svc
            .resources
            .iter()
            .map(|(h, base)| {
                let mut req = base.clone();
                req.action = Action::Monitor;
                req.probe = true;
                matches!(h.call(&req).result.ok().and_then(|o| o.state()), Some(s) if s.is_active())
            })
            .collect();
        if !running.contains(&true) {
            continue;
        }
        tracing::warn!(service = %svc.name, "found running from a previous run of this node; stopping it before joining");
        let (ok, states) = stop_service(svc, None);
        if !ok {
            bail!(
                "service {}: resources left running by a previous run cannot be stopped ({}); stop them by hand, then start baton again",
                svc.name,
                states.join("; ")
            );
        }
    }
    Ok(())
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
}

/// What each agent the config uses is on this node (see
/// `AgentCatalog::identity`).
fn agent_identities(
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

/// Fence `target` with the fence agent: its start with `target=NODE`.
fn fence(fencer: &Fencer, target: &str) -> bool {
    let mut req = fencer.base.clone();
    req.params.insert("target".into(), target.to_string());
    let report = fencer.handle.call(&req);
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

/// Write `pid start_time` of this process (the format the lab fence agent reads).
fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    let pid = std::process::id();
    let (start, _) = baton_agents::proc_stat(pid).context("reading /proc/self/stat")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("--pid-file {}", dir.display()))?;
    }
    std::fs::write(path, format!("{pid} {start}\n"))
        .with_context(|| format!("--pid-file {}", path.display()))
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Where `baton run` puts what it serves and records.
#[derive(Clone, Debug, Default)]
pub struct RunPaths {
    /// Status JSON, rewritten every 100 ms at most.
    pub status_file: Option<PathBuf>,
    /// The control socket (default `/run/baton/<node>.sock`).
    pub socket: Option<PathBuf>,
    /// `PID START_TIME` of the daemon, for a fence agent that kills it (the lab's).
    pub pid_file: Option<PathBuf>,
    /// The event history (default: beside the control socket when one is
    /// given, else [`default_history`]).
    pub history_file: Option<PathBuf>,
}

/// Where node `node` keeps its event history by default.
pub fn default_history(node: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/baton/{node}.history"))
}

/// Run node `node_name` until SIGTERM/SIGINT; then stop its services, tell the
/// others it left, and exit.
pub fn run(
    config: Config,
    node_name: &str,
    runner_exe: PathBuf,
    paths: RunPaths,
) -> anyhow::Result<()> {
    let cluster = config
        .cluster
        .clone()
        .context("the config has no [cluster] section; `baton run` needs nodes and services")?;
    let me = cluster
        .this_node(node_name)
        .map_err(anyhow::Error::msg)?
        .clone();
    let key_bytes = std::fs::read(&cluster.cluster.key_file)
        .with_context(|| format!("cluster.key_file {}", cluster.cluster.key_file.display()))?;
    let key = ClusterKey::new(&cluster.cluster.name, &key_bytes).map_err(|e| {
        anyhow::anyhow!(
            "cluster.key_file {}: {e}",
            cluster.cluster.key_file.display()
        )
    })?;
    let socket_path = paths
        .socket
        .clone()
        .unwrap_or_else(|| crate::control::default_socket(node_name));
    // Every process started for a resource carries this host's identity (see
    // plugin_api::service): the same node keeps it across restarts, and no other
    // daemon on this machine can share its control socket.
    let host = format!(
        "{}/{node_name}@{}",
        cluster.cluster.name,
        socket_path.display()
    );
    // SAFETY: no other thread exists yet (the agents, workers and sockets start below).
    unsafe { std::env::set_var(service::HOST_VAR, &host) };
    let mut agent_config = config.clone();
    agent_config.agents.node = Some(node_name.to_string());
    let mut catalog = AgentCatalog::new(agent_config, runner_exe.clone());
    let mut policy = catalog.runner_policy().clone();
    policy.long_lived = true;
    catalog.set_runner_policy(policy);
    let (services, fencer) = load_all(&cluster, &catalog, node_name).map_err(|problems| {
        anyhow::anyhow!(
            "the config has {} problem(s); nothing was started:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    })?;
    let services: Arc<Vec<LoadedService>> = Arc::new(services);
    let fencer: Option<Arc<Fencer>> = fencer.map(Arc::new);
    let mut sockets = Vec::new();
    for (i, addr) in cluster.addresses[&me.id].iter().enumerate() {
        let s = UdpSocket::bind(addr)
            .with_context(|| format!("node {node_name} link {i}: cannot bind {addr}"))?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    let (bell, ear) = crate::wake::pair().context("cannot create the loop's wake-up pipe")?;
    let (asker, control) = crate::control::channel(bell.clone());
    crate::control::serve(&socket_path, asker.clone())?;
    if let Some(p) = &paths.pid_file {
        write_pid_file(p)?;
    }
    let spec = cluster.spec();
    let names: BTreeMap<NodeId, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let history = paths
        .history_file
        .clone()
        .or_else(|| paths.socket.as_ref().map(|s| s.with_extension("history")))
        .unwrap_or_else(|| default_history(node_name));
    let journal = crate::history::Journal::open(&history, crate::history::LIMIT)
        .map_err(|e| {
            tracing::error!(
                "the event history {} cannot be opened ({e}); decisions are only logged",
                history.display()
            )
        })
        .ok();
    let metrics = match &me.http {
        Some(addr) => {
            let at: SocketAddr = addr
                .parse()
                .with_context(|| format!("node {node_name}: http {addr}"))?;
            let facts = crate::console::Facts {
                node: node_name.to_string(),
                key: key.check(),
                agents: agent_identities(&cluster, &catalog),
                fence: fencer.clone().map(|f| {
                    let target = node_name.to_string();
                    let agent = cluster
                        .cluster
                        .fencing
                        .as_ref()
                        .map(|c| c.agent.clone())
                        .unwrap_or_default();
                    let check: crate::console::FenceCheck = Box::new(move || f.check(&target));
                    (agent, check)
                }),
            };
            let routes = crate::console::routes(
                cluster.cluster.console.as_ref(),
                asker.clone(),
                history.clone(),
                facts,
            )?;
            Some(crate::metrics::serve(at, routes).with_context(|| {
                format!("node {node_name}: cannot serve HTTP on {addr} (http in its [[node]])")
            })?)
        }
        None => None,
    };
    let mut next_metrics = 0u64;
    let mut decisions = crate::decisions::Decisions::new(
        node_name,
        names.clone(),
        cluster.services.iter().map(|s| s.name.clone()).collect(),
        journal,
    );
    let peers: Vec<(NodeId, Vec<SocketAddr>)> = cluster
        .addresses
        .iter()
        .filter(|(id, _)| **id != me.id)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let lease_ms = (spec.bounds.membership.link_timeout * 2).as_millis() as u64;
    let mut witness = cluster.cluster.witness.as_ref().map(|w| {
        let bell = bell.clone();
        let answered = move || bell.ring();
        match (&w.disk, &w.file) {
            (Some(disk), _) => WitnessWorker::start(
                DiskStore::new(disk, w.slot, &cluster.cluster.name, lease_ms),
                lease_ms,
                unix_ms,
                answered,
            ),
            (None, file) => WitnessWorker::start(
                FileStore::new(file.as_deref().unwrap_or(Path::new("")), lease_ms, unix_ms),
                lease_ms,
                unix_ms,
                answered,
            ),
        }
    });
    let self_fence_ms = spec.bounds.self_fence.as_millis() as u64;
    clean_up_leftovers(&services)?;
    // The guardian fences this node's services if this process dies or hangs
    // for half the self-fence bound (see guardian.rs).
    let mut guardian = Guarded {
        guardian: Guardian::spawn(&runner_exe, spec.bounds.self_fence / 2)
            .context("cannot start the guardian (baton guardian)")?,
        charge: Charge::default(),
        next_scan: 0,
    };
    let guardian_lease_ms = (spec.bounds.self_fence / 2).as_millis() as u64;
    let health = cluster.cluster.health.as_ref().map(crate::health::start);
    let mut last_turn = 0u64;
    // Armed last, once nothing else can fail: an armed watchdog resets the machine.
    let mut watchdog = match &cluster.cluster.watchdog {
        Some(w) => Some(Watchdog::open(&w.device, w.timeout_s)?),
        None => None,
    };

    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    // Healthy, and when the last passing round began (on this loop's clock).
    let health_now = || match &health {
        None => (true, None),
        Some(h) => {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            let pass = h
                .last_pass
                .map(|t| t.saturating_duration_since(started).as_millis() as u64);
            (h.healthy, Some(pass.unwrap_or(0)))
        }
    };
    let incarnation = unix_ms();
    let mut node = ClusterNode::new(&spec, me.id, incarnation, 0);
    let mut guard = ReplayGuard::default();
    let mut dropped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let done_tx = DoneSender {
        tx: done_tx,
        bell: bell.clone(),
    };
    let interval = spec.bounds.membership.interval.as_millis() as u64;
    let mut next_tick = 0u64;
    let mut next_status = 0u64;
    // Quorum and health as the status file last showed them.
    let mut last_shown = (false, true);
    // What the status file last showed of the things that change it at once.
    let mut last_status_key = None;
    // Bumped whenever a resource's state in words changes.
    let mut local_changes = 0u64;
    let mut monitors = Monitors::new(services.len());
    let mut local: Vec<Local> = services
        .iter()
        .map(|s| Local {
            states: vec!["stopped".to_string(); s.resources.len()],
            last_failure: None,
        })
        .collect();
    // When this node last had quorum (for the watchdog's self-fence bound).
    let mut quorate_at = 0u64;
    // Services whose stop overran the self-fence bound without quorum, and
    // whose resources' processes were ended for it.
    let mut ended = vec![false; services.len()];
    // The witness's holder as the state machine last heard it.
    let mut witness_holder = None;
    let mut buf = [0u8; 65536];
    tracing::info!(
        node = node_name,
        id = me.id,
        incarnation,
        socket = %socket_path.display(),
        "baton node running"
    );
    let run_command = |c: Command, tx: &DoneSender, quorate: bool, local: &[Local]| {
        let services = Arc::clone(&services);
        // A promotion or demotion changes some resources' states; it starts from the others'.
        let states = match c {
            Command::Promote(i) | Command::Demote(i) => local[i].states.clone(),
            _ => Vec::new(),
        };
        let fencer = fencer.clone();
        let tx = tx.clone();
        let target = match &c {
            Command::Fence { node, .. } => names.get(node).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        std::thread::spawn(move || {
            let done = match c {
                Command::Start(i) => Done::Started(i, start_service(&services[i])),
                Command::Stop(i) => {
                    // Without quorum, stops are bounded by the self-fence bound: the
                    // survivors take over once it has passed.
                    let cap = (!quorate).then_some(self_fence_ms);
                    let (ok, states) = stop_service(&services[i], cap);
                    Done::Stopped(i, ok, states)
                }
                Command::Promote(i) => Done::Promoted(i, promote_service(&services[i], states)),
                Command::Demote(i) => {
                    let (ok, states) = demote_service(&services[i], states);
                    Done::Demoted(i, ok, states)
                }
                Command::Fence { node, incarnation } => {
                    let ok = fencer.as_ref().is_some_and(|f| fence(f, &target));
                    Done::Fenced(node, incarnation, ok)
                }
            };
            tx.send(done);
        });
    };
    let quorate_now = |node: &ClusterNode| node.quorum().is_some_and(|q| q.quorate);
    let send = |packets: Vec<crate::cluster::wire::Heartbeat>| {
        for hb in packets {
            let bytes = encode(&key, &hb);
            let link = usize::from(hb.link);
            for (_, addrs) in &peers {
                if let (Some(sock), Some(to)) = (sockets.get(link), addrs.get(link)) {
                    let _ = sock.send_to(&bytes, to);
                }
            }
        }
    };
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        // A turn of this loop that comes this late means the daemon was frozen
        // (SIGSTOP, a hung VM): its guardian has ended the services. Learn the
        // membership first; monitor nothing before that.
        let resumed = {
            let now = now_ms();
            let gap = now.saturating_sub(last_turn);
            let late = last_turn > 0 && gap > guardian_lease_ms;
            last_turn = now;
            if late {
                tracing::warn!(
                    "this daemon was frozen for {gap} ms: its guardian stopped the services held here"
                );
                next_tick = 0;
            }
            late
        };
        // Packets.
        for s in &sockets {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        match decode(&key, &buf[..n]).and_then(|hb| guard.admit(&hb).map(|()| hb)) {
                            Ok(hb) => node.on_heartbeat(now_ms(), &hb),
                            Err(d) => *dropped.entry(Drop::name(d)).or_default() += 1,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        // Agent and fence completions.
        while let Ok(d) = done_rx.try_recv() {
            let now = now_ms();
            let commands = match d {
                Done::Started(i, round) => {
                    // Its processes exist now: the guardian learns them at the next tick.
                    guardian.next_scan = 0;
                    local_changes += 1;
                    local[i].states = round.states;
                    monitors.schedule(i, now + services[i].monitor_every);
                    let result = round
                        .result
                        .map_err(|f| round_failed(&mut decisions, &mut local[i], i, "start", f));
                    node.start_done(i, result, now)
                }
                Done::Stopped(i, ok, states) => {
                    local_changes += 1;
                    local[i].states = states;
                    node.stop_done(i, ok)
                }
                Done::Promoted(i, round) => {
                    guardian.next_scan = 0;
                    local_changes += 1;
                    local[i].states = round.states;
                    let result = round.result.map_err(|f| {
                        round_failed(&mut decisions, &mut local[i], i, "promotion", f)
                    });
                    node.promote_done(i, result, now)
                }
                Done::Demoted(i, ok, states) => {
                    local_changes += 1;
                    local[i].states = states;
                    node.demote_done(i, ok, now)
                }
                Done::Monitored(i, id, round) => {
                    let current = monitors.finish(i, id);
                    monitors.schedule(i, now + services[i].monitor_every);
                    if !current || node.phases()[i] != Phase::Running {
                        Vec::new()
                    } else {
                        if local[i].states != round.states {
                            local_changes += 1;
                        }
                        local[i].states = round.states;
                        node.set_promotion(i, round.score);
                        match round.result {
                            Ok(()) => Vec::new(),
                            Err((recovery, failure)) => {
                                decisions.record(
                                    "failure",
                                    Some(i),
                                    format!("failed here: {failure}; recovery {recovery}"),
                                );
                                local[i].last_failure = Some(failure);
                                node.service_failed(i, now, recovery)
                            }
                        }
                    }
                }
                Done::Fenced(target, inc, ok) => {
                    let name = names.get(&target).cloned().unwrap_or_default();
                    decisions.record(
                        "fence",
                        None,
                        if ok {
                            format!("{name} fenced: the fence agent confirmed it off")
                        } else {
                            format!("the fence of {name} failed; it is tried again in a second")
                        },
                    );
                    node.fence_done(target, inc, ok, now);
                    // A confirmed fence may free a service: decide now.
                    next_tick = 0;
                    Vec::new()
                }
            };
            for c in commands {
                run_command(c, &done_tx, quorate_now(&node), &local);
            }
            decisions.observe(&node, now_ms());
        }
        // A claim moves on at once (published, acknowledged, started), and a
        // change of the witness's holder counts at once, not at the next heartbeat.
        let witness_news = witness
            .as_mut()
            .is_some_and(|w| w.holder(now_ms()) != witness_holder);
        if node.claim_news() || witness_news {
            next_tick = 0;
        }
        // Operator requests.
        while let Ok(crate::control::Pending {
            request: req,
            who,
            reply,
        }) = control.try_recv()
        {
            let now = now_ms();
            let answer = match control_request(&mut node, &req, &cluster, &names, now) {
                Ok((message, commands)) => {
                    if req != ControlRequest::Status {
                        let service = req.service().and_then(|s| service_index(&cluster, s).ok());
                        decisions.record("operator", service, format!("by {who}: {message}"));
                    }
                    for c in commands {
                        run_command(c, &done_tx, quorate_now(&node), &local);
                    }
                    let status = (req == ControlRequest::Status).then(|| {
                        let mut st =
                            status(&node, node_name, &names, &cluster, &dropped, now, &local);
                        st.witness_problem = witness.as_ref().and_then(|w| w.last_error.clone());
                        st.health = health
                            .as_ref()
                            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone());
                        serde_json::to_value(&st).unwrap_or_default()
                    });
                    ControlReply {
                        ok: true,
                        message,
                        status,
                    }
                }
                Err(e) => {
                    let service = req.service().and_then(|s| service_index(&cluster, s).ok());
                    decisions.record("operator", service, format!("refused for {who}: {e}"));
                    ControlReply::refused(e)
                }
            };
            let _ = reply.send(answer);
        }
        // Recurring monitors of services running here, one round at a time per service.
        let now = now_ms();
        for (i, svc) in services.iter().enumerate() {
            if svc.monitor_every > 0
                && !resumed
                && node.phases()[i] == Phase::Running
                && monitors.due(i, now)
            {
                let promoted = node.roles()[i] == Role::Promoted;
                monitors.launch(i, now, promoted, &services, &done_tx);
            }
        }
        for (i, ms) in monitors.overdue(now) {
            if node.phases()[i] == Phase::Running {
                let failure = format!(
                    "the monitor of {} did not answer within {ms} ms (an agent that runs in baton's process ignored its deadline)",
                    services[i].name
                );
                decisions.record("failure", Some(i), failure.clone());
                local[i].last_failure = Some(failure);
                for c in node.service_failed(i, now, Recovery::RestartHere) {
                    run_command(c, &done_tx, quorate_now(&node), &local);
                }
            }
        }
        let now = now_ms();
        if now >= next_tick {
            next_tick = now + interval;
            let (healthy, last_pass) = health_now();
            node.set_health(healthy, last_pass);
            if let Some(w) = witness.as_mut() {
                w.ask(now, witness_op(&node, me.id, healthy));
                witness_holder = w.holder(now);
                node.set_witness_holder(witness_holder);
            }
            let (packets, commands) = node.tick(now);
            send(packets);
            for c in &commands {
                if let Command::Fence { node: target, .. } = c {
                    let name = names.get(target).cloned().unwrap_or_default();
                    decisions.record(
                        "fence",
                        None,
                        format!("fencing {name}: it left the membership while it may hold services, or its stop failed"),
                    );
                }
            }
            decisions.observe(&node, now_ms());
            // Scrapers read every few seconds: the gauges follow the state
            // machine twice a second, not at every heartbeat.
            if let Some(m) = metrics.as_ref().filter(|_| now >= next_metrics) {
                next_metrics = now + METRICS_EVERY_MS;
                m.observe(&node, &names, now);
            }
            let quorate = quorate_now(&node);
            for c in commands {
                run_command(c, &done_tx, quorate, &local);
            }
            if quorate {
                quorate_at = now;
            }
            if !quorate && now.saturating_sub(quorate_at) >= self_fence_ms {
                end_overrunning_stops(&services, node.phases(), &mut ended);
            } else {
                ended.iter_mut().for_each(|e| *e = false);
            }
            guardian.renew(&services, node.phases(), now);
            if let Some(dog) = watchdog.as_mut() {
                // Clones kept without quorum share nothing: they do not count.
                let holds = node
                    .phases()
                    .iter()
                    .zip(node.services())
                    .any(|(p, s)| p.holds() && !s.keep_without_quorum);
                if quorate || !holds || now.saturating_sub(quorate_at) < self_fence_ms {
                    dog.pet();
                } else {
                    tracing::error!(
                        "no quorum and services still held after self_fence_ms: the watchdog will reset this machine"
                    );
                }
            }
            // Status is for people and scripts: at most every STATUS_EVERY_MS, not every
            // heartbeat (50 a second on the fast profile), and at once when quorum or
            // health changes (a fence may end this node a moment later). While
            // nothing in it changes, every STATUS_STEADY_MS.
            let shown = (quorate, healthy);
            let changed = shown != last_shown;
            last_shown = shown;
            let key = Some(status_key(&node, now, local_changes));
            let due = if key != last_status_key {
                next_status.saturating_sub(STATUS_STEADY_MS - STATUS_EVERY_MS)
            } else {
                next_status
            };
            if let Some(path) = paths.status_file.as_ref().filter(|_| changed || now >= due) {
                last_status_key = key;
                next_status = now + STATUS_STEADY_MS;
                let mut status = status(&node, node_name, &names, &cluster, &dropped, now, &local);
                status.witness_problem = witness.as_ref().and_then(|w| w.last_error.clone());
                status.health = health
                    .as_ref()
                    .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone());
                if let Ok(json) = serde_json::to_vec_pretty(&status) {
                    let _ = write_atomic(path, &json);
                }
            }
        }
        // Sleep until a packet, an agent's or the witness's answer or an
        // operator's request arrives (the bell), or the next tick or monitor
        // round is due.
        let now = now_ms();
        let wait = next_tick
            .min(monitors.next_event(|i| {
                services[i].monitor_every > 0 && !resumed && node.phases()[i] == Phase::Running
            }))
            .saturating_sub(now)
            .clamp(1, interval.max(1)) as i32;
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| s.as_raw_fd())
            .chain([ear.fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds for descriptors we own.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait);
        }
        ear.drain();
    }
    tracing::info!("stopping: stopping every service held here");
    let mut all_stopped = true;
    for (i, p) in node.phases().iter().enumerate() {
        if p.holds() {
            all_stopped &= stop_service(&services[i], None).0;
        }
    }
    if all_stopped {
        // Tell the others this node left holding nothing: they need not fence it.
        // Sent a few times: heartbeats are datagrams.
        for _ in 0..3 {
            send(node.leave(now_ms()));
        }
    }
    if all_stopped {
        guardian.guardian.stand_down();
    }
    if let Some(dog) = watchdog.as_mut() {
        dog.disarm();
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// The guardian and what it was last told this node holds.
struct Guarded {
    guardian: Guardian,
    charge: Charge,
    /// When to walk /proc for the services' process groups again.
    next_scan: u64,
}

impl Guarded {
    /// Renew the guardian's lease with what the services in `phases` hold now.
    /// Process groups only while something is held (with nothing held a late
    /// renewal must not touch the agents' runners); while a start or a stop
    /// runs, processes come and go, so they are learnt every tick then.
    fn renew(&mut self, services: &[LoadedService], phases: &[Phase], now: u64) {
        let holds = phases.iter().any(|p| p.holds());
        let changing = phases
            .iter()
            .any(|p| matches!(p, Phase::Starting | Phase::Stopping));
        if !holds {
            self.charge.groups.clear();
            self.next_scan = 0;
        } else if changing || now >= self.next_scan {
            self.next_scan = now + GROUPS_EVERY_MS;
            self.charge.groups = descendant_groups(std::process::id(), &[]);
        }
        self.charge.holds = holds;
        self.charge.addresses = held(services, phases, |s| &s.addresses);
        self.charge.mounts = held(services, phases, |s| &s.mounts);
        self.guardian.renew(&self.charge);
    }
}

/// What the services this node holds (or may hold) have of one kind
/// (addresses, mount points), for the guardian.
fn held<T: Ord + Clone>(
    services: &[LoadedService],
    phases: &[Phase],
    of: impl Fn(&LoadedService) -> &Vec<T>,
) -> std::collections::BTreeSet<T> {
    services
        .iter()
        .zip(phases)
        .filter(|(_, p)| p.holds())
        .flat_map(|(s, _)| of(s).iter().cloned())
        .collect()
}

fn service_index(cluster: &ClusterConfig, name: &str) -> Result<usize, String> {
    cluster
        .services
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            format!(
                "no service is named {name:?} (services: {})",
                cluster
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Carry out an operator request: a message and the commands it starts, or why not.
fn control_request(
    node: &mut ClusterNode,
    req: &ControlRequest,
    cluster: &ClusterConfig,
    names: &BTreeMap<NodeId, String>,
    now: u64,
) -> Result<(String, Vec<Command>), String> {
    match req {
        ControlRequest::Status => Ok((String::new(), Vec::new())),
        ControlRequest::Move {
            service,
            to,
            for_ms,
        } => {
            let i = service_index(cluster, service)?;
            let target = cluster
                .node(to)
                .ok_or_else(|| format!("no node is named {to:?}"))?
                .id;
            let until = for_ms.map(|d| now + d);
            node.move_service(i, target, until, false)?;
            Ok((
                match for_ms {
                    Some(d) => format!(
                        "moving {service} to {to} for {} s; it returns to normal placement after that",
                        d / 1000
                    ),
                    None => format!(
                        "moving {service} to {to} until `baton move {service} --clear` or {to} leaves"
                    ),
                },
                Vec::new(),
            ))
        }
        ControlRequest::Promote { service, on, force } => {
            let i = service_index(cluster, service)?;
            if cluster.services[i].strategy != "promotable" {
                return Err(format!(
                    "{service} is not promotable (strategy {}); use `baton move {service} --to {on}`",
                    cluster.services[i].strategy
                ));
            }
            let target = cluster
                .node(on)
                .ok_or_else(|| format!("no node is named {on:?}"))?
                .id;
            node.move_service(i, target, None, *force)?;
            Ok((
                if *force {
                    format!(
                        "promoting {service} on {on}, forced: writes acknowledged beyond its replica's position are lost"
                    )
                } else {
                    format!(
                        "promoting {service} on {on} once its replica holds every acknowledged write; `baton status` shows why it waits"
                    )
                },
                Vec::new(),
            ))
        }
        ControlRequest::Unmove { service } => {
            let i = service_index(cluster, service)?;
            let issued_here = node
                .active_moves(now)
                .iter()
                .any(|m| m.service == i && m.issuer == node.membership().me());
            if !issued_here {
                let other = node.active_moves(now).into_iter().find(|m| m.service == i);
                return Err(match other {
                    Some(m) => format!(
                        "the move of {service} was taken on {}; clear it there",
                        names.get(&m.issuer).map(String::as_str).unwrap_or("?")
                    ),
                    None => format!("{service} has no move in effect"),
                });
            }
            node.clear_move(i);
            Ok((format!("{service}: move cleared"), Vec::new()))
        }
        ControlRequest::Clear { service } => {
            let i = service_index(cluster, service)?;
            let commands = node.clear(i);
            Ok((
                format!("{service}: failures, ban and block on this node cleared"),
                commands,
            ))
        }
        ControlRequest::Refused { why } => Err(why.clone()),
    }
}

/// The status a simulated cluster's first quorate live node (else its first
/// live node) would show, as `baton status --json` prints it, and the nodes
/// that are down; `None` when every node is down. Resources show the phase of
/// their service.
pub(crate) fn simulated_status(
    sim: &crate::cluster::sim::Sim,
    cluster: &ClusterConfig,
    names: &BTreeMap<NodeId, String>,
) -> Option<(serde_json::Value, Vec<String>)> {
    let live = sim.live();
    let judge = sim.judge()?;
    let node = sim.node(judge)?;
    let local: Vec<Local> = cluster
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| Local {
            states: vec![node.phases()[i].name().to_string(); s.resources.len()],
            last_failure: None,
        })
        .collect();
    let st = status(
        node,
        &names[&judge],
        names,
        cluster,
        &BTreeMap::new(),
        sim.now(),
        &local,
    );
    let down = names
        .iter()
        .filter(|(id, _)| !live.contains(id))
        .map(|(_, n)| n.clone())
        .collect();
    Some((serde_json::to_value(&st).ok()?, down))
}

fn status<'a>(
    node: &ClusterNode,
    name: &'a str,
    names: &'a BTreeMap<NodeId, String>,
    cluster: &'a ClusterConfig,
    dropped: &BTreeMap<&'static str, u64>,
    now: u64,
    local: &'a [Local],
) -> Status<'a> {
    let (epoch, view) = node.membership().view();
    let n = |id: &NodeId| names.get(id).map(String::as_str).unwrap_or("?");
    let quorum = node.quorum();
    let fence = node.fence_state(now);
    let moves = node.active_moves(now);
    let me = node.membership().me();
    Status {
        cluster: &cluster.cluster.name,
        node: name,
        id: me,
        epoch,
        members: view.iter().map(n).collect(),
        config: format!("{:016x}", node.config()),
        other_configs: crate::cluster::changes::other_configs(node, names, now),
        quorate: quorum.is_some_and(|q| q.quorate),
        quorum: quorum.map(|q| q.reason.clone()).unwrap_or_default(),
        witness_held: quorum.is_some_and(|q| q.witness_held),
        witness_votes: cluster.cluster.witness.as_ref().map_or(0, |w| w.votes),
        witness_problem: None,
        health: None,
        links: node
            .membership()
            .links()
            .iter()
            .map(|((peer, link), s)| LinkStatus {
                peer: n(peer),
                link: *link,
                up: s.up,
                since_ms: s.since,
                rtt_ms: node
                    .membership()
                    .rtt(*peer, *link)
                    .map(|r| (r * 100.0).round() / 100.0),
            })
            .collect(),
        fencing: FencingStatus {
            agent: cluster.cluster.fencing.as_ref().map(|f| f.agent.as_str()),
            fence_wait_ms: node.bounds().fence_wait().as_millis() as u64,
            confirmed: fence.confirmed.iter().map(|f| n(&f.node)).collect(),
            running: fence.running.iter().map(n).collect(),
            waiting: fence
                .waiting
                .iter()
                .map(|(id, left)| (n(id), *left))
                .collect(),
        },
        watchdog: cluster
            .cluster
            .watchdog
            .as_ref()
            .map(|w| w.device.display().to_string()),
        services: cluster
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ServiceStatus {
                name: &s.name,
                here: node.phases()[i].name(),
                owner: node.placements()[i].owner.as_ref().map(n),
                why: node.placements()[i].why.clone(),
                holders: view
                    .iter()
                    .filter(|m| {
                        if **m == me {
                            node.phases()[i] != Phase::Stopped
                        } else {
                            node.membership()
                                .claims_of(**m)
                                .is_some_and(|c| c & (1 << i) != 0)
                        }
                    })
                    .map(n)
                    .collect(),
                failures: node.failure_counts(now)[i],
                last_failure: local[i].last_failure.as_deref(),
                moving: moves.iter().find(|m| m.service == i).map(|m| MoveStatus {
                    to: n(&m.to),
                    by: n(&m.issuer),
                    ends_in_ms: m.until.map(|u| u.saturating_sub(now)),
                }),
                promotion: (s.strategy == "promotable").then(|| PromotionStatus {
                    here: node.roles()[i].name(),
                    promoted: node.promotions()[i].owner.as_ref().map(n),
                    why: node.promotions()[i].why.clone(),
                    scores: node
                        .scores(i)
                        .into_iter()
                        .map(|(id, sc)| (n(&id), show_score(sc)))
                        .collect(),
                    acknowledged: node.acknowledged(i).map(show_score),
                }),
                resources: s
                    .resources
                    .iter()
                    .enumerate()
                    .map(|(j, r)| ResourceStatus {
                        name: format!("{}-{j}", s.name),
                        agent: &r.agent,
                        state: local[i].states[j].clone(),
                    })
                    .collect(),
            })
            .collect(),
        dropped: dropped.clone(),
        uptime_ms: now,
    }
}
