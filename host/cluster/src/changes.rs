//! What a node decided since the last look: after each tick the state machine is
//! compared with what was seen before, and each change (membership, quorum, a
//! fence wait, the witness's holder, a link, a node of another config, where a
//! service should run and why, this node's starts, stops and promotions) comes
//! out as one [`Change`] with the reason `baton status` gives. The daemon logs and records them (the event
//! history); the simulator prints them as its timeline.

use super::membership::Millis;
use super::node::{ClusterNode, Phase, Role, WitnessSight};
use super::wire::{Admin, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// One decision, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `membership`, `quorum`, `fence-wait`, `witness`, `link`, `config`,
    /// `placement`, `start`, `stop`, `failure` or `promotion`.
    pub kind: &'static str,
    /// The service's index, for a service's change.
    pub service: Option<usize>,
    /// What changed and why.
    pub text: String,
}

/// What was last seen of one node's state machine.
pub struct Observer {
    names: BTreeMap<NodeId, String>,
    view: Option<BTreeSet<NodeId>>,
    quorate: Option<bool>,
    links: BTreeMap<(NodeId, u8), bool>,
    owners: Vec<Option<Option<NodeId>>>,
    phases: Vec<Phase>,
    roles: Vec<Role>,
    promoted: Vec<Option<Option<NodeId>>>,
    foreign: BTreeSet<NodeId>,
    /// Lost nodes not yet known safe.
    waiting: BTreeSet<NodeId>,
    /// The witness as this node last read it (with a witness).
    witness: Option<WitnessSight>,
    /// The operators' standby and maintenance settings last seen.
    admin: Admin,
    out: Vec<Change>,
}

/// The name of node `id` for texts.
pub fn name_of(names: &BTreeMap<NodeId, String>, id: NodeId) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("node {id}"))
}

/// Why each node of another config is not admitted, as status and the
/// history say it.
pub fn other_configs(
    node: &ClusterNode,
    names: &BTreeMap<NodeId, String>,
    now: Millis,
) -> Vec<String> {
    node.foreign_configs(now)
        .into_iter()
        .map(|(id, config)| {
            format!(
                "{} runs config {config:016x}, this node {:016x}: it is not admitted; deploy the same config (less [agents] and per-node paths) to every node",
                name_of(names, id),
                node.config()
            )
        })
        .collect()
}

impl Observer {
    /// For a cluster whose nodes are called `names`, with `services` services.
    pub fn new(names: BTreeMap<NodeId, String>, services: usize) -> Observer {
        Observer {
            names,
            view: None,
            quorate: None,
            links: BTreeMap::new(),
            owners: vec![None; services],
            phases: vec![Phase::Stopped; services],
            roles: vec![Role::Replica; services],
            promoted: vec![None; services],
            foreign: BTreeSet::new(),
            waiting: BTreeSet::new(),
            witness: None,
            admin: Admin::default(),
            out: Vec::new(),
        }
    }

    fn name(&self, id: NodeId) -> String {
        name_of(&self.names, id)
    }

    fn push(&mut self, kind: &'static str, service: Option<usize>, text: String) {
        self.out.push(Change {
            kind,
            service,
            text,
        });
    }

    /// The services were renumbered by a reload: `continues[i]` is the
    /// index service `i` had (`None`: new to this node, not seen yet).
    pub fn renumber(&mut self, continues: &[Option<usize>]) {
        fn take<T: Clone>(old: &[T], continues: &[Option<usize>], fresh: T) -> Vec<T> {
            continues
                .iter()
                .map(|c| c.map_or(fresh.clone(), |o| old[o].clone()))
                .collect()
        }
        self.owners = take(&self.owners, continues, None);
        self.phases = take(&self.phases, continues, Phase::Stopped);
        self.roles = take(&self.roles, continues, Role::Replica);
        self.promoted = take(&self.promoted, continues, None);
    }

    /// Compare the state machine with what was seen last: the changes, in order.
    pub fn observe(&mut self, node: &ClusterNode, now: Millis) -> Vec<Change> {
        self.configs(node, now);
        self.membership(node);
        self.quorum(node);
        self.fences(node, now);
        self.witness(node);
        self.admin(node);
        self.links(node);
        for i in 0..self.phases.len() {
            self.service(node, i, now);
        }
        std::mem::take(&mut self.out)
    }

    fn membership(&mut self, node: &ClusterNode) {
        let (epoch, view) = node.membership().view();
        if self.view.as_ref() == Some(view) {
            return;
        }
        let before = self.view.replace(view.clone()).unwrap_or_default();
        let list = |ids: &mut dyn Iterator<Item = &NodeId>| {
            ids.map(|n| self.name(*n)).collect::<Vec<_>>().join(", ")
        };
        let joined = list(&mut view.difference(&before));
        let left = list(&mut before.difference(view));
        let mut text = format!("members {} (epoch {epoch})", list(&mut view.iter()));
        if !joined.is_empty() {
            text += &format!("; joined: {joined}");
        }
        if !left.is_empty() {
            text += &format!("; left: {left}");
        }
        self.push("membership", None, text);
    }

    fn configs(&mut self, node: &ClusterNode, now: Millis) {
        let foreign: BTreeSet<NodeId> = node
            .foreign_configs(now)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if foreign == self.foreign {
            return;
        }
        self.foreign = foreign;
        for text in other_configs(node, &self.names, now) {
            self.push("config", None, text);
        }
    }

    /// The fence wait: when a lost node starts holding back the services it
    /// may still run, and when (and why) it stops.
    fn fences(&mut self, node: &ClusterNode, now: Millis) {
        let state = node.fence_state(now);
        // A node not heard since this one started is news only when it holds
        // a claim back (at boot every peer is unheard for a moment).
        let claiming = (0..self.phases.len())
            .any(|i| matches!(node.service(i).phase(), Phase::Claiming { .. }));
        let waiting: BTreeSet<NodeId> = state
            .waiting
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| node.was_lost(*n) || claiming || self.waiting.contains(n))
            .collect();
        for (n, left) in &state.waiting {
            if self.waiting.contains(n) || !waiting.contains(n) {
                continue;
            }
            let how = if state.running.contains(n) {
                "the fence agent confirms it off (a fence is under way)"
            } else {
                "a fence confirms it off"
            };
            let text = if node.was_lost(*n) {
                format!(
                    "{} is lost and not yet known safe: what it held starts elsewhere once {how}, or when its fence wait ends in {left} ms",
                    self.name(*n)
                )
            } else {
                format!(
                    "{} is not heard since this node started, and not known safe: what it may run starts here only once it joins, {how}, or when the fence wait ends in {left} ms",
                    self.name(*n)
                )
            };
            self.push("fence-wait", None, text);
        }
        for n in self
            .waiting
            .difference(&waiting)
            .copied()
            .collect::<Vec<_>>()
        {
            let why = node.why_safe(n, now).unwrap_or("it is a member");
            let text = format!("{} is known safe: {why}", self.name(n));
            self.push("fence-wait", None, text);
        }
        self.waiting = waiting;
    }

    /// The operators' standby and maintenance settings, when they change.
    fn admin(&mut self, node: &ClusterNode) {
        let admin = node.admin();
        if admin == self.admin {
            return;
        }
        let before = std::mem::replace(&mut self.admin, admin);
        for n in self.names.keys().copied().collect::<Vec<_>>() {
            if admin.in_standby(n) != before.in_standby(n) {
                let text = if admin.in_standby(n) {
                    format!(
                        "{} is in standby: it runs nothing until `baton unstandby {0}`",
                        self.name(n)
                    )
                } else {
                    format!("{} is out of standby", self.name(n))
                };
                self.push("operator", None, text);
            }
        }
        for i in 0..self.phases.len() {
            if admin.in_maintenance(i) != before.in_maintenance(i) {
                let text = if admin.in_maintenance(i) {
                    "in maintenance: baton neither monitors, starts nor stops it".to_string()
                } else {
                    "released from maintenance: baton manages it again".to_string()
                };
                self.push("operator", Some(i), text);
            }
        }
    }

    /// Who holds the witness, as this node reads it, when that changes.
    fn witness(&mut self, node: &ClusterNode) {
        if node.witness_task().is_none() {
            return;
        }
        let sight = node.witness();
        if self.witness == Some(sight) {
            return;
        }
        self.witness = Some(sight);
        let text = if !sight.reachable {
            "witness: its storage does not answer this node".to_string()
        } else if let Some(n) = sight.stalled {
            format!(
                "witness: {}'s lease stopped changing (dead, frozen or cut off from the storage)",
                self.name(n)
            )
        } else if let Some(n) = sight.holder {
            format!("witness: held by {}", self.name(n))
        } else {
            "witness: held by nobody".to_string()
        };
        self.push("witness", None, text);
    }

    fn quorum(&mut self, node: &ClusterNode) {
        let Some(q) = node.quorum() else { return };
        if self.quorate == Some(q.quorate) {
            return;
        }
        self.quorate = Some(q.quorate);
        let text = if q.quorate {
            format!("quorate: {}", q.reason)
        } else {
            format!("no quorum: {}; services held here stop", q.reason)
        };
        self.push("quorum", None, text);
    }

    fn links(&mut self, node: &ClusterNode) {
        let changed: Vec<((NodeId, u8), bool)> = node
            .membership()
            .links()
            .iter()
            .map(|(k, s)| (*k, s.up))
            .filter(|(k, up)| self.links.get(k) != Some(up))
            .collect();
        for ((peer, link), up) in changed {
            // A link's first state (down until heard) is not news; its changes are.
            if self.links.insert((peer, link), up).is_some() {
                let text = format!(
                    "link {link} to {} {}",
                    self.name(peer),
                    if up { "up" } else { "down" }
                );
                self.push("link", None, text);
            }
        }
    }

    fn service(&mut self, node: &ClusterNode, i: usize, now: Millis) {
        let p = node.service(i).placement();
        if self.owners[i] != Some(p.owner) {
            let text = match p.owner {
                Some(o) => format!("should run on {}: {}", self.name(o), p.why),
                None => format!("runs nowhere: {}", p.why),
            };
            self.owners[i] = Some(p.owner);
            self.push("placement", Some(i), text);
        }
        let phase = node.service(i).phase();
        if phase != self.phases[i] {
            self.phases[i] = phase;
            let kind = match phase {
                Phase::Claiming { .. } | Phase::Starting | Phase::Running => "start",
                Phase::StopFailed => "failure",
                _ => "stop",
            };
            let text = match phase {
                Phase::StopFailed => "stop failed here: it may still run; it stays blocked until this node is fenced or cleared".to_string(),
                Phase::Restarting { at } => format!(
                    "restarting here in {} ms: restarts back off after repeated failures",
                    at.saturating_sub(now)
                ),
                p => format!("{} here", p.name()),
            };
            self.push(kind, Some(i), text);
        }
        let role = node.service(i).role();
        if role != self.roles[i] {
            self.roles[i] = role;
            self.push("promotion", Some(i), format!("{} here", role.name()));
        }
        let promo = node.service(i).promotion();
        if promo.why != "not decided yet" && self.promoted[i] != Some(promo.owner) {
            let text = match promo.owner {
                Some(o) => format!("to be promoted on {}: {}", self.name(o), promo.why),
                None => format!("promoted nowhere: {}", promo.why),
            };
            self.promoted[i] = Some(promo.owner);
            self.push("promotion", Some(i), text);
        }
    }
}
