//! What a node decides, as it decides it: the node driver's events (what its
//! state machine changed — membership, quorum, a link, where a service should
//! run and why, this node's starts, stops and promotions — and what the driver
//! itself did: fences, failures, freezes, a clean stop) and operators'
//! requests, each logged with its reason and appended to the event history
//! (history.rs).

use crate::node::history::{Event, Journal};

/// Where events go.
pub struct Decisions {
    node: String,
    services: Vec<String>,
    journal: Option<Journal>,
}

impl Decisions {
    /// For node `node` with the cluster's `services`, recording to `journal`
    /// when there is one.
    pub fn new(node: &str, services: Vec<String>, journal: Option<Journal>) -> Decisions {
        Decisions {
            node: node.to_owned(),
            services,
            journal,
        }
    }

    /// The services were renumbered by a reload: their names now.
    pub fn set_services(&mut self, services: Vec<String>) {
        self.services = services;
    }

    /// Log and record one event; `warn` for what needs a look (failures, fences).
    pub fn record(&mut self, kind: &str, service: Option<usize>, text: String) {
        let service = service.and_then(|i| self.services.get(i).cloned());
        crate::node::metrics::decision(kind);
        if matches!(kind, "failure" | "fence") {
            tracing::warn!(target: "baton::decision", kind, service = service.as_deref().unwrap_or(""), "{text}");
        } else {
            tracing::info!(target: "baton::decision", kind, service = service.as_deref().unwrap_or(""), "{text}");
        }
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let event = Event {
            at_ms: crate::node::history::unix_ms(),
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
}
