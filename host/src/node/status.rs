//! What `baton status` shows, typed: built by the daemon from its node's state
//! machine (and by `baton scenario view` from a simulated node's), read by
//! the CLI, the console and `baton scenario validate`.

use crate::cluster::config::ClusterConfig;
use crate::cluster::membership::Millis;
use crate::cluster::node::{ClusterNode, Phase};
use crate::cluster::placement::show_score;
use crate::cluster::wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// The cluster's name.
    pub cluster: String,
    /// This node.
    pub node: String,
    /// Its id.
    pub id: NodeId,
    /// The membership epoch.
    pub epoch: u64,
    /// The agreed view.
    pub members: Vec<String>,
    /// This node's config fingerprint (hex).
    pub config: String,
    /// Nodes heard that run another config: not admitted to the membership.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_configs: Vec<String>,
    /// A config staged for a reload, and what the switch waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
    /// The certificate this node's HTTPS address serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// Whether this node's partition is quorate.
    pub quorate: bool,
    /// Why, in words.
    pub quorum: String,
    /// Whether this partition holds the witness.
    pub witness_held: bool,
    /// The witness's votes (0: no witness).
    pub witness_votes: u32,
    /// Why the witness does not count just now (storage stalled or failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_problem: Option<String>,
    /// This node's health checks and their last results (when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// Nodes in standby (they run nothing until an operator takes them out).
    #[serde(default)]
    pub standby: Vec<String>,
    /// Wire versions: spoken here, by the cluster, by each peer; refusals.
    #[serde(default)]
    pub wire: crate::node::versions::WireStatus,
    /// Per peer and link.
    pub links: Vec<LinkStatus>,
    /// Fencing.
    pub fencing: FencingStatus,
    /// The armed watchdog device, if configured.
    pub watchdog: Option<String>,
    /// Per service.
    pub services: Vec<ServiceStatus>,
    /// Packets dropped, by cause.
    pub dropped: BTreeMap<String, u64>,
    /// When the latest packet of each cause was dropped (ms since the daemon
    /// started, as `uptime_ms`).
    #[serde(default)]
    pub dropped_last_ms: BTreeMap<String, u64>,
    /// How long the daemon has run, ms.
    pub uptime_ms: u64,
}

/// The certificate a node serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsStatus {
    /// Its file.
    pub cert_file: String,
    /// When it stops being valid, Unix seconds.
    pub not_after: i64,
    /// Set within 30 days of that: what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The node's health checks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Whether the node counts as healthy (after hysteresis).
    pub healthy: bool,
    /// Each check's latest result.
    pub checks: Vec<CheckStatus>,
}

/// One health check's latest result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckStatus {
    /// The check as configured.
    pub check: String,
    /// Whether it passed last time.
    pub ok: bool,
    /// Why it failed, if it did.
    pub detail: Option<String>,
}

/// Fencing, as this node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FencingStatus {
    /// The fence agent (`None`: survivors wait the fence wait).
    pub agent: Option<String>,
    /// The fence wait, ms.
    pub fence_wait_ms: u64,
    /// Lost nodes this node confirmed fenced.
    pub confirmed: Vec<String>,
    /// Fences under way from here.
    pub running: Vec<String>,
    /// Lost nodes not confirmed fenced, and the ms left of their fence wait.
    pub waiting: BTreeMap<String, u64>,
}

/// One link to one peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The peer.
    pub peer: String,
    /// The link's index.
    pub link: u8,
    /// Whether heartbeats arrive on it.
    pub up: bool,
    /// Since when (the daemon's clock, ms) it has been in this state.
    pub since_ms: u64,
    /// The smoothed round trip of heartbeats, ms (`None` until measured).
    pub rtt_ms: Option<f64>,
}

/// One service.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Its phase here (stopped, claiming, starting, running, stopping,
    /// stop-failed, restarting).
    pub here: String,
    /// The node placement puts it on.
    pub owner: Option<String>,
    /// Why there, or why nowhere.
    pub why: String,
    /// Members that claim it (hold it, or are about to).
    pub holders: Vec<String>,
    /// Unexpired failures on this node.
    pub failures: usize,
    /// The latest failure here, in words.
    pub last_failure: Option<String>,
    /// An operator's move in effect.
    #[serde(rename = "move")]
    pub moving: Option<MoveStatus>,
    /// In maintenance: baton neither monitors, starts nor stops it.
    #[serde(default)]
    pub maintenance: bool,
    /// A promotable service's promoted role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionStatus>,
    /// Its resources.
    pub resources: Vec<ResourceStatus>,
}

/// One resource.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// `SERVICE-INDEX`.
    pub name: String,
    /// Its agent.
    pub agent: String,
    /// Its state after the last call, in words.
    pub state: String,
}

/// An operator's move in effect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MoveStatus {
    /// Where the service goes.
    pub to: String,
    /// The node that took the command.
    pub by: String,
    /// ms until the move ends; `None`: until cleared or the target leaves.
    pub ends_in_ms: Option<u64>,
}

/// Where a promotable service is promoted, and what the choice rests on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PromotionStatus {
    /// This node's role (replica, claiming, promoting, promoted, demoting).
    pub here: String,
    /// The node that should be promoted.
    pub promoted: Option<String>,
    /// Why there, or why nowhere.
    pub why: String,
    /// Each member's replica score (generation/position).
    pub scores: BTreeMap<String, String>,
    /// The highest acknowledged position known: a replica below it lacks
    /// acknowledged writes.
    pub acknowledged: Option<String>,
}

/// What the node knows of a service beyond its state machine.
pub struct Local<'a> {
    /// Each resource's state after the last call, in words.
    pub states: &'a [String],
    /// The latest failure here, in words.
    pub last_failure: Option<&'a str>,
    /// Who asked for the move taken here, as the history names them
    /// (`alice on the console from …`).
    pub mover: Option<&'a str>,
}

/// The status of `node`, named `name`, at `now`; `local(i)` gives what the
/// node knows of service `i` beyond the state machine.
pub fn status<'a>(
    node: &ClusterNode,
    name: &str,
    names: &BTreeMap<NodeId, String>,
    cluster: &ClusterConfig,
    now: Millis,
    local: impl Fn(usize) -> Local<'a>,
) -> Status {
    let (epoch, view) = node.membership().view();
    let n = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| "?".into());
    let quorum = node.quorum();
    let fence = node.fence_state(now);
    Status {
        cluster: cluster.cluster.name.clone(),
        node: name.to_string(),
        id: node.membership().me(),
        epoch,
        members: view.iter().map(n).collect(),
        config: format!("{:016x}", node.config()),
        other_configs: crate::cluster::changes::other_configs(node, names, now),
        reload: None,
        tls: None,
        quorate: quorum.is_some_and(|q| q.quorate),
        quorum: quorum.map(|q| q.reason.clone()).unwrap_or_default(),
        witness_held: quorum.is_some_and(|q| q.witness_held),
        witness_votes: cluster.cluster.witness.as_ref().map_or(0, |w| w.votes),
        witness_problem: None,
        health: None,
        wire: Default::default(),
        standby: names
            .keys()
            .filter(|id| node.admin().in_standby(**id))
            .map(n)
            .collect(),
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
            agent: cluster.cluster.fencing.as_ref().map(|f| f.agent.clone()),
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
        services: (0..cluster.services.len())
            .map(|i| service_status(node, i, names, cluster, now, local(i)))
            .collect(),
        dropped: BTreeMap::new(),
        dropped_last_ms: BTreeMap::new(),
        uptime_ms: now,
    }
}

fn service_status(
    node: &ClusterNode,
    i: usize,
    names: &BTreeMap<NodeId, String>,
    cluster: &ClusterConfig,
    now: Millis,
    local: Local,
) -> ServiceStatus {
    let n = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| "?".into());
    let me = node.membership().me();
    let s = node.service(i);
    let section = &cluster.services[i];
    ServiceStatus {
        name: section.name.clone(),
        here: s.phase().name().into(),
        owner: s.placement().owner.as_ref().map(n),
        why: s.placement().why.clone(),
        holders: node
            .membership()
            .view()
            .1
            .iter()
            .filter(|m| {
                if **m == me {
                    s.phase() != Phase::Stopped
                } else {
                    node.membership()
                        .claims_of(**m)
                        .is_some_and(|c| c & (1 << i) != 0)
                }
            })
            .map(n)
            .collect(),
        failures: s.failures(now),
        last_failure: local.last_failure.map(str::to_string),
        moving: node
            .active_moves(now)
            .iter()
            .find(|m| m.service == i)
            .map(|m| MoveStatus {
                to: n(&m.to),
                by: match local.mover.filter(|_| m.issuer == node.membership().me()) {
                    Some(who) => format!("{who}, on {}", n(&m.issuer)),
                    None => n(&m.issuer),
                },
                ends_in_ms: m.until.map(|u| u.saturating_sub(now)),
            }),
        maintenance: node.admin().in_maintenance(i),
        promotion: (section.strategy == "promotable").then(|| PromotionStatus {
            here: s.role().name().into(),
            promoted: s.promotion().owner.as_ref().map(n),
            why: s.promotion().why.clone(),
            scores: node
                .scores(i)
                .into_iter()
                .map(|(id, sc)| (n(&id), show_score(sc)))
                .collect(),
            acknowledged: s.acknowledged().map(show_score),
        }),
        resources: section
            .resources
            .iter()
            .enumerate()
            .map(|(j, r)| ResourceStatus {
                name: format!("{}-{j}", section.name),
                agent: r.agent.clone(),
                state: local.states.get(j).cloned().unwrap_or_default(),
            })
            .collect(),
    }
}

/// One line for a service manager's status: quorum, members, what runs here.
pub fn summary(node: &ClusterNode, names: &BTreeMap<NodeId, String>) -> String {
    let (epoch, view) = node.membership().view();
    let n = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| "?".into());
    let members: Vec<String> = view.iter().map(n).collect();
    let quorum = match node.quorum() {
        Some(q) if q.quorate => "quorate".to_string(),
        Some(q) => format!("no quorum ({})", q.reason),
        None => "no quorum yet".to_string(),
    };
    let here: Vec<&str> = node
        .services()
        .iter()
        .filter(|s| s.phase().holds())
        .map(|s| s.spec().name.as_str())
        .collect();
    format!(
        "{quorum}; members {} (epoch {epoch}); {}",
        members.join(", "),
        if here.is_empty() {
            "holds nothing".to_string()
        } else {
            format!("holds {}", here.join(", "))
        }
    )
}

/// The status a simulated cluster's first quorate live node (else its first
/// live node) would show, and the nodes that are down; `None` when every node
/// is down. Resources show the phase of their service.
pub fn simulated(
    sim: &crate::cluster::sim::Sim,
    cluster: &ClusterConfig,
    names: &BTreeMap<NodeId, String>,
) -> Option<(Status, Vec<String>)> {
    let live = sim.live();
    let judge = sim.judge()?;
    let node = sim.node(judge)?;
    let states: Vec<Vec<String>> = cluster
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| vec![node.service(i).phase().name().to_string(); s.resources.len()])
        .collect();
    let st = status(node, &names[&judge], names, cluster, sim.now(), |i| Local {
        states: &states[i],
        last_failure: sim.last_failure(judge, i),
        mover: None,
    });
    let down = names
        .iter()
        .filter(|(id, _)| !live.contains(id))
        .map(|(_, n)| n.clone())
        .collect();
    Some((st, down))
}
