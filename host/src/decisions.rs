//! What a node decides, as it decides it: after each tick the daemon compares
//! the state machine with what it saw last, and each change (membership,
//! quorum, a link, where a service should run and why, this node's starts,
//! stops and promotions) is logged with the reason `baton status` gives and
//! appended to the event history (history.rs), with the events the state
//! machine does not show: fences, failures and operators' requests.

use crate::cluster::node::{ClusterNode, Phase, Role};
use crate::cluster::wire::NodeId;
use crate::history::{Event, Journal};
use std::collections::{BTreeMap, BTreeSet};

/// What was last seen, and where events go.
pub struct Decisions {
    node: String,
    names: BTreeMap<NodeId, String>,
    services: Vec<String>,
    view: Option<BTreeSet<NodeId>>,
    quorum: Option<(bool, String)>,
    links: BTreeMap<(NodeId, u8), bool>,
    owners: Vec<Option<(Option<NodeId>, String)>>,
    phases: Vec<Phase>,
    roles: Vec<Role>,
    promoted: Vec<Option<(Option<NodeId>, String)>>,
    /// Nodes last seen running another config.
    foreign: BTreeSet<NodeId>,
    journal: Option<Journal>,
}

impl Decisions {
    /// For node `node` with the cluster's node `names` and `services`, recording
    /// to `journal` when there is one.
    pub fn new(
        node: &str,
        names: BTreeMap<NodeId, String>,
        services: Vec<String>,
        journal: Option<Journal>,
    ) -> Decisions {
        let n = services.len();
        Decisions {
            node: node.to_owned(),
            names,
            services,
            view: None,
            quorum: None,
            links: BTreeMap::new(),
            owners: vec![None; n],
            phases: vec![Phase::Stopped; n],
            roles: vec![Role::Replica; n],
            promoted: vec![None; n],
            foreign: BTreeSet::new(),
            journal,
        }
    }

    fn name(&self, id: NodeId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("node {id}"))
    }

    /// Log and record one event; `warn` for what needs a look (failures, fences).
    pub fn record(&mut self, kind: &str, service: Option<usize>, text: String) {
        let service = service.and_then(|i| self.services.get(i).cloned());
        crate::metrics::decision(kind);
        if matches!(kind, "failure" | "fence") {
            tracing::warn!(target: "baton::decision", kind, service = service.as_deref().unwrap_or(""), "{text}");
        } else {
            tracing::info!(target: "baton::decision", kind, service = service.as_deref().unwrap_or(""), "{text}");
        }
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let event = Event {
            at_ms: crate::daemon::unix_ms(),
            node: self.node.clone(),
            kind: kind.to_owned(),
            service,
            text,
        };
        if let Err(e) = journal.append(&event) {
            tracing::error!("the event history cannot be written ({e}); it is off from now on");
            self.journal = None;
        }
    }

    /// Compare the state machine with what was seen last; record each change.
    pub fn observe(&mut self, node: &ClusterNode, now: u64) {
        self.configs(node, now);
        self.membership(node);
        self.quorum(node);
        self.links(node);
        for i in 0..self.services.len() {
            self.service(node, i);
        }
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
        self.record("membership", None, text);
    }

    fn configs(&mut self, node: &ClusterNode, now: u64) {
        let foreign: BTreeSet<NodeId> = node
            .foreign_configs(now)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if foreign == self.foreign {
            return;
        }
        let texts = crate::daemon::other_configs(node, &self.names, now);
        self.foreign = foreign;
        for text in texts {
            self.record("config", None, text);
        }
    }

    fn quorum(&mut self, node: &ClusterNode) {
        let Some(q) = node.quorum() else { return };
        let now = (q.quorate, q.reason.clone());
        if self
            .quorum
            .as_ref()
            .is_some_and(|(quorate, _)| *quorate == now.0)
        {
            return;
        }
        self.quorum = Some(now);
        let text = if q.quorate {
            format!("quorate: {}", q.reason)
        } else {
            format!("no quorum: {}; services held here stop", q.reason)
        };
        self.record("quorum", None, text);
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
                self.record("link", None, text);
            }
        }
    }

    fn service(&mut self, node: &ClusterNode, i: usize) {
        let p = &node.placements()[i];
        let owner = (p.owner, p.why.clone());
        if self.owners[i].as_ref().map(|(o, _)| *o) != Some(owner.0) {
            let text = match owner.0 {
                Some(o) => format!("should run on {}: {}", self.name(o), owner.1),
                None => format!("runs nowhere: {}", owner.1),
            };
            self.owners[i] = Some(owner);
            self.record("placement", Some(i), text);
        }
        let phase = node.phases()[i];
        if phase != self.phases[i] {
            self.phases[i] = phase;
            let kind = match phase {
                Phase::Claiming { .. } | Phase::Starting | Phase::Running => "start",
                Phase::StopFailed => "failure",
                _ => "stop",
            };
            let text = match phase {
                Phase::StopFailed => "stop failed here: it may still run; it stays blocked until this node is fenced or cleared".to_string(),
                p => format!("{} here", p.name()),
            };
            self.record(kind, Some(i), text);
        }
        let role = node.roles()[i];
        if role != self.roles[i] {
            self.roles[i] = role;
            self.record("promotion", Some(i), format!("{} here", role.name()));
        }
        let promo = &node.promotions()[i];
        let promoted = (promo.owner, promo.why.clone());
        if promo.why != "not decided yet"
            && self.promoted[i].as_ref().map(|(o, _)| *o) != Some(promoted.0)
        {
            let text = match promoted.0 {
                Some(o) => format!("to be promoted on {}: {}", self.name(o), promoted.1),
                None => format!("promoted nowhere: {}", promoted.1),
            };
            self.promoted[i] = Some(promoted);
            self.record("promotion", Some(i), text);
        }
    }
}
