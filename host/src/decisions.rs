//! What a node decides, as it decides it: after each tick the daemon asks the
//! state machine's [`Observer`] what changed (membership, quorum, a link, where
//! a service should run and why, this node's starts, stops and promotions),
//! logs each change with the reason `baton status` gives and appends it to the
//! event history (history.rs), with the events the state machine does not
//! show: fences, failures and operators' requests.

use crate::cluster::changes::Observer;
use crate::cluster::node::ClusterNode;
use crate::cluster::wire::NodeId;
use crate::history::{Event, Journal};
use std::collections::BTreeMap;

/// What was last seen, and where events go.
pub struct Decisions {
    node: String,
    services: Vec<String>,
    observer: Observer,
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
        Decisions {
            node: node.to_owned(),
            observer: Observer::new(names, services.len()),
            services,
            journal,
        }
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
        for change in self.observer.observe(node, now) {
            self.record(change.kind, change.service, change.text);
        }
    }
}
