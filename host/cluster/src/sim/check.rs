//! The simulator's checkers. Safety, every millisecond: a service that must run
//! once is held by one node at most, and so is a promoted role; a promotion
//! never picks a replica below the acknowledged position, or below another
//! running replica. Liveness, once the topology has been still for the quiet
//! period: views are the components of the graph of nodes that hear each
//! other; if some partition *could* be quorate (its votes, plus the witness's
//! when a member can reach the storage), one is, and it runs every service it
//! can, with one promoted replica wherever a running replica holds the
//! acknowledged position; nodes without quorum hold nothing (but a failed stop
//! nobody can fence, and clones kept without quorum); a node stopped cleanly
//! has left.

use super::Sim;
use crate::node::{Phase, Role};
use crate::placement::Strategy;
use crate::wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

impl Sim {
    /// Safety, every millisecond: a service that must run once is held by one
    /// node at most; a promoted role too.
    pub(super) fn check_single_owner(&mut self) {
        if self.violation.is_some() {
            return;
        }
        // By name: during a reload nodes number the services by two configs,
        // and an old and a new instance of a changed service count as one.
        let mut holders: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for (id, n) in &self.nodes {
            for (i, spec) in n.spec.services.iter().enumerate() {
                let held = match spec.strategy {
                    Strategy::Clone => false,
                    Strategy::Promotable => n.local.promoted.contains(&i),
                    _ => n.local.holding.contains(&i),
                };
                if held {
                    holders.entry(n.service_name(i)).or_default().push(*id);
                }
            }
        }
        if let Some((name, nodes)) = holders.iter().find(|(_, h)| h.len() > 1) {
            self.violation = Some(format!(
                "t={} service {name} held by nodes {nodes:?} at once",
                self.world.now
            ));
        }
    }

    /// At a promote command: the chosen replica holds at least the acknowledged
    /// position its node knows, and no running replica it hears has more data.
    pub(super) fn check_promotion(&mut self, id: NodeId, svc: usize) {
        let name = self.nodes[&id].service_name(svc).to_string();
        let data = |n: NodeId| self.world.data[&(name.clone(), n)];
        let mine = data(id);
        let node = self.nodes[&id].driver.node();
        if let Some(a) = node.service(svc).acknowledged()
            && mine < a
            && self.violation.is_none()
        {
            self.violation = Some(format!(
                "t={} {name}: node {id} promoted at {mine:?}, below the acknowledged {a:?}",
                self.world.now
            ));
        }
        for r in node.membership().view().1 {
            let other = &self.nodes[r];
            // The replica of the same service on `r`, by `r`'s own config.
            let running = other
                .spec
                .services
                .iter()
                .position(|s| s.name == name)
                .is_some_and(|i| other.driver.node().service(i).phase() == Phase::Running);
            if *r != id && running && data(*r) > mine && self.violation.is_none() {
                self.violation = Some(format!(
                    "t={} {name}: node {id} promoted at {mine:?}, but node {r} has {:?}",
                    self.world.now,
                    data(*r)
                ));
            }
        }
    }

    /// The invariants of a settled cluster (see the module's documentation);
    /// the first one broken, in words.
    pub fn check(&self) -> Result<(), String> {
        let live = self.live();
        for a in &live {
            let node = self.nodes[a].driver.node();
            if node.config() != self.spec.config || node.staged().is_some() {
                return Err(format!(
                    "node {a} runs config {:016x} (staged: {:?}), not the deployed {:016x}: the reload did not finish",
                    node.config(),
                    node.staged().map(|s| format!("{:016x}", s.config)),
                    self.spec.config
                ));
            }
        }
        if let Some(a) = live.iter().find(|a| self.nodes[a].driver.node().leaving()) {
            return Err(format!(
                "node {a} was stopped cleanly but has not left: it still holds {:?}",
                self.nodes[a].local.holding
            ));
        }
        for &a in &live {
            let (_, view) = self.nodes[&a].driver.node().membership().view();
            let expected = self.world.component(a);
            if *view != expected {
                return Err(format!("node {a} sees {view:?}, expected {expected:?}"));
            }
        }
        for &a in &live {
            for &b in &live {
                let (ea, va) = self.nodes[&a].driver.node().membership().view();
                let (eb, vb) = self.nodes[&b].driver.node().membership().view();
                if a < b && va.contains(&b) && (va != vb || ea != eb) {
                    return Err(format!(
                        "nodes {a} and {b} are connected but disagree: {ea}:{va:?} vs {eb}:{vb:?}"
                    ));
                }
            }
        }
        self.check_quorum(&live)?;
        for &a in &live {
            self.check_partition(a)?;
        }
        Ok(())
    }

    fn quorate(&self, n: NodeId) -> bool {
        self.nodes[&n].driver.node().quorate()
    }

    /// Whether `n` waits, by design, to see every node once (`wait_for_all`).
    fn waiting_for_all(&self, n: NodeId) -> bool {
        self.nodes[&n]
            .driver
            .node()
            .quorum()
            .is_some_and(|q| q.reason.starts_with("waiting for all"))
    }

    /// Votes of a component, and whether it could be quorate: alone, or with
    /// the witness if a member that passes its health checks reaches the
    /// witness's storage.
    fn could_be_quorate(&self, c: &BTreeSet<NodeId>) -> (bool, bool) {
        let policy = &self.spec.quorum;
        let total = policy.total();
        let votes: u32 = c.iter().filter_map(|n| policy.votes.get(n)).sum();
        let alone = 2 * votes > total;
        let reaches = c
            .iter()
            .any(|n| !self.world.unhealthy.contains(n) && !self.world.witness_cut.contains(n));
        let with =
            policy.witness_votes > 0 && reaches && 2 * (votes + policy.witness_votes) > total;
        (alone, alone || with)
    }

    /// Liveness of quorum: a partition quorate on its own votes is quorate; if
    /// partitions could be quorate only with the witness, one of them is.
    fn check_quorum(&self, live: &[NodeId]) -> Result<(), String> {
        let mut components: Vec<BTreeSet<NodeId>> = Vec::new();
        for &a in live {
            if !components.iter().any(|c| c.contains(&a)) {
                components.push(self.world.component(a));
            }
        }
        let healthy = |n: &NodeId| !self.world.unhealthy.contains(n);
        let mut needing = Vec::new();
        for c in &components {
            if c.iter().any(|n| self.waiting_for_all(*n)) {
                continue;
            }
            let (alone, could) = self.could_be_quorate(c);
            let quorate = c.iter().any(|n| self.quorate(*n));
            if alone && !c.iter().filter(|n| healthy(n)).all(|n| self.quorate(*n)) {
                return Err(format!(
                    "the partition {c:?} has a majority of votes, but not every healthy member is quorate"
                ));
            }
            if could && !alone {
                needing.push((c, quorate));
            }
        }
        if !needing.is_empty() && !needing.iter().any(|(_, q)| *q) {
            let list: Vec<String> = needing.iter().map(|(c, _)| format!("{c:?}")).collect();
            return Err(format!(
                "no partition is quorate, although {} could be with the witness (witness storage {:?})",
                list.join(" or "),
                self.world.slot
            ));
        }
        Ok(())
    }

    /// Liveness of `a`'s partition: quorate, it runs every service it can;
    /// otherwise `a` holds nothing but what may stay.
    fn check_partition(&self, a: NodeId) -> Result<(), String> {
        let component = self.world.component(a);
        let node = &self.nodes[&a];
        let state = node.driver.node();
        let policy = &self.spec.quorum;
        let members: u32 = component.iter().filter_map(|n| policy.votes.get(n)).sum();
        let needs_witness = 2 * members <= policy.total();
        if !self.quorate(a) {
            // A failed stop stays held (blocked) until a fence or an operator's
            // clear, and a partition without quorum cannot fence.
            let stuck: BTreeSet<usize> = (0..self.spec.services.len())
                .filter(|i| {
                    state.service(*i).phase() == Phase::StopFailed
                        || self.spec.services[*i].keep_without_quorum
                })
                .collect();
            if !node.local.holding.is_subset(&stuck) {
                return Err(format!(
                    "node {a} has no quorum but holds services {:?}",
                    node.local.holding
                ));
            }
            return Ok(());
        }
        // A failed stop blocks its service: it must be one that left something.
        for i in 0..self.spec.services.len() {
            if state.service(i).phase() == Phase::StopFailed && !node.local.holding.contains(&i) {
                return Err(format!(
                    "node {a} says the stop of {} failed, but nothing of it runs there: a completed stop blocks the service",
                    self.spec.services[i].name
                ));
            }
        }
        // A member that cannot reach the witness's storage counts no witness: in
        // a partition that needs the witness it runs nothing and is given nothing.
        let able: BTreeSet<NodeId> = component
            .iter()
            .copied()
            .filter(|n| !(needs_witness && self.world.witness_cut.contains(n)))
            .filter(|n| !self.world.unhealthy.contains(n))
            .collect();
        for i in 0..self.spec.services.len() {
            self.check_service(i, &component, &able)?;
        }
        Ok(())
    }

    fn check_service(
        &self,
        i: usize,
        component: &BTreeSet<NodeId>,
        able: &BTreeSet<NodeId>,
    ) -> Result<(), String> {
        let spec = &self.spec.services[i];
        let phase = |n: &NodeId| self.nodes[n].driver.node().service(i).phase();
        // The operators' settings the partition follows (the newest a member has).
        let admin = component
            .iter()
            .map(|n| self.nodes[n].driver.node().admin())
            .max_by_key(|a| a.generation)
            .unwrap_or_default();
        // A service in maintenance is left as the operator has it.
        if admin.in_maintenance(i) {
            return Ok(());
        }
        // Members banned for this service (failures) or in standby are not
        // able to run it, and a stop-everywhere block keeps it stopped on
        // purpose.
        let able: BTreeSet<NodeId> = able
            .iter()
            .copied()
            .filter(|n| self.nodes[n].driver.node().banned(self.world.now) & (1 << i) == 0)
            .filter(|n| !admin.in_standby(*n))
            .collect();
        if component
            .iter()
            .any(|n| self.nodes[n].driver.node().blocked() & (1 << i) != 0)
        {
            return Ok(());
        }
        let running: Vec<NodeId> = component
            .iter()
            .copied()
            .filter(|n| phase(n) == Phase::Running)
            .collect();
        let running_set: BTreeSet<NodeId> = running.iter().copied().collect();
        // A clone whose stop failed on a member waits there for a fence or an
        // operator's clear, by design.
        let clone_able: BTreeSet<NodeId> = able
            .iter()
            .copied()
            .filter(|n| phase(n) != Phase::StopFailed)
            .collect();
        let ok = if spec.keep_without_quorum {
            running_set.is_superset(&clone_able)
        } else if spec.strategy == Strategy::Clone {
            running_set == clone_able
        } else if spec.strategy == Strategy::Promotable {
            running_set == clone_able && self.one_promoted(i, component, &clone_able)
        } else {
            // A failed stop keeps the service claimed until its node is fenced
            // (by another able member, with a fence agent) or cleared.
            let stop_failed: Vec<NodeId> = component
                .iter()
                .copied()
                .filter(|n| phase(n) == Phase::StopFailed)
                .collect();
            let can_fence = self.spec.fencing && able.iter().any(|n| !stop_failed.contains(n));
            let blocked = !stop_failed.is_empty() && !can_fence;
            (blocked && running.is_empty())
                || (running.len() == usize::from(!able.is_empty())
                    && running.iter().all(|n| able.contains(n)))
        };
        if ok {
            Ok(())
        } else {
            Err(self.describe(i, &running, component))
        }
    }

    fn describe(&self, i: usize, running: &[NodeId], component: &BTreeSet<NodeId>) -> String {
        let phases: Vec<String> = component
            .iter()
            .map(|n| {
                let st = self.nodes[n].driver.node();
                let s = st.service(i);
                format!(
                    "{n}: {} {} ({}; {}; data {:?}; acknowledged {:?}; fencing {:?})",
                    s.phase().name(),
                    s.role().name(),
                    s.placement().why,
                    s.promotion().why,
                    self.world
                        .data
                        .get(&(self.spec.services[i].name.clone(), *n)),
                    s.acknowledged(),
                    st.fence_state(self.world.now)
                )
            })
            .collect();
        format!(
            "service {} runs on {running:?} in the quorate partition {component:?}; {}",
            self.spec.services[i].name,
            phases.join("; ")
        )
    }

    /// Exactly one able member is promoted when some able replica holds the
    /// acknowledged position the partition knows; none when none does, or when
    /// a member whose stop failed still holds the role and nobody can fence it.
    fn one_promoted(
        &self,
        i: usize,
        component: &BTreeSet<NodeId>,
        able: &BTreeSet<NodeId>,
    ) -> bool {
        let state = |n: &NodeId| self.nodes[n].driver.node().service(i);
        let promoted: Vec<NodeId> = component
            .iter()
            .copied()
            .filter(|n| state(n).role() == Role::Promoted)
            .collect();
        let acknowledged = component
            .iter()
            .filter_map(|n| state(n).acknowledged())
            .max();
        let candidate = able.iter().any(|n| {
            acknowledged
                .is_none_or(|a| self.world.data[&(self.spec.services[i].name.clone(), *n)] >= a)
        });
        let stuck = component
            .iter()
            .any(|n| state(n).phase() == Phase::StopFailed && state(n).role() != Role::Replica)
            && !(self.spec.fencing && able.len() > 1);
        if stuck || !candidate {
            return promoted.iter().all(|n| able.contains(n)) && promoted.len() <= 1;
        }
        promoted.len() == 1 && able.contains(&promoted[0])
    }
}
