//! One node's cluster logic, without I/O: membership, quorum, placement and the
//! service ownership protocol. The daemon feeds it packets, clock ticks and agent
//! completions and carries out the commands it returns; the simulation does the
//! same on a virtual clock.
//!
//! Ownership protocol for a service that must run on one node only:
//!
//! 1. A node runs services only while its partition is quorate. When it loses
//!    quorum it stops them at once (self-fencing); stopping takes at most the
//!    configured `self_fence` bound (the daemon kills the agents' process groups
//!    if a stop overruns). Only a clone marked `keep_without_quorum` (it shares
//!    nothing) keeps running; it still starts only with quorum.
//! 2. A node *claims* a service (publishes it in its report) when placement names
//!    it and no member claims the service.
//! 3. It starts only after every other member of its view has acknowledged the
//!    claim (a member's report names the claimer's report that first carried it, or
//!    a newer one: that member has seen the claim, so it will not claim the service
//!    itself, and any claim of its own made before is in the same report), and
//!    every node outside its view has been
//!    outside for at least `fence_wait` (the longest a lost node can take to notice
//!    and finish self-fencing), counted from when this partition last gained quorum
//!    if that is later (another partition may have just lost it, e.g. the witness
//!    lease moved); it backs off if another member claimed the service meanwhile
//!    (the lower node id keeps its claim).
//! 4. It stops when placement moves the service away (switchover, failback, an
//!    operator's move), and the next owner starts only once no member claims it.
//!
//! Fencing shortens step 3: when a fence agent is configured, the partition's
//! fencer (its lowest quorate member other than the target)
//! fences every node that left the view while it may have held something, and
//! every member whose stop failed, and publishes the confirmation
//! (node and incarnation); a lost node confirmed fenced by any member needs no
//! fence wait. A node that left cleanly (its last report hears nobody and holds
//! nothing) needs neither. A failed stop keeps the service claimed (nobody else may
//! start it) until the node is fenced or an operator clears it.
//!
//! A promotable service runs a replica on every quorate member, like a clone, and
//! its promoted role is held by one node at a time under the same rules as a
//! service that runs once: the role is claimed, acknowledged by every member,
//! waits out (or fences) lost nodes, and is released only when the demotion, or
//! the stop of the whole service, has completed. A node that loses quorum stops
//! the service, so it holds no role after the self-fence bound. Which replica is
//! promoted follows the agents' scores ([`promote`]): the acknowledged position
//! that the promoted instance reports travels in every report, so the members
//! still know it when the promoted node is gone.

use super::membership::{Membership, Millis, Timing};
use super::placement::{Placement, Replicas, ScoreKey, ServiceSpec, Strategy, place, promote};
use super::quorum::{QuorumPolicy, QuorumState};
use super::wire::{Ack, Fenced, Heartbeat, Move, NodeId, Report, Score};
use baton_plugin_api::{Promotion, Recovery};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A service's state on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not held here.
    Stopped,
    /// Claimed, waiting for every member to acknowledge the claim before starting.
    Claiming {
        /// When the claim was made.
        since: Millis,
        /// The version of this node's first report that carries the claim.
        version: u64,
    },
    /// A start is under way.
    Starting,
    /// Running here.
    Running,
    /// A stop is under way.
    Stopping,
    /// A stop failed: the resources may still run here. The claim stays until the
    /// node is fenced or an operator clears it (`baton clear`, which retries the stop).
    StopFailed,
}

impl Phase {
    /// Whether this node holds (or may hold) the service's resources.
    pub fn holds(self) -> bool {
        matches!(
            self,
            Phase::Starting | Phase::Running | Phase::Stopping | Phase::StopFailed
        )
    }

    /// A short name for status.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Claiming { .. } => "claiming",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::StopFailed => "stop-failed",
        }
    }

    fn claims(self) -> bool {
        !matches!(self, Phase::Stopped)
    }
}

/// The promoted role of a promotable service on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not promoted here.
    Replica,
    /// Claimed, waiting for every member's acknowledgement before promoting.
    Claiming {
        /// When the claim was made.
        since: Millis,
        /// The version of this node's first report that carries the claim.
        version: u64,
    },
    /// A promotion is under way.
    Promoting,
    /// Promoted here.
    Promoted,
    /// A demotion is under way.
    Demoting,
}

impl Role {
    /// A short name for status.
    pub fn name(self) -> &'static str {
        match self {
            Role::Replica => "replica",
            Role::Claiming { .. } => "claiming",
            Role::Promoting => "promoting",
            Role::Promoted => "promoted",
            Role::Demoting => "demoting",
        }
    }

    fn claims(self) -> bool {
        self != Role::Replica
    }
}

/// What the node asks its environment to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start service `index` (its resources in order); report back with [`ClusterNode::start_done`].
    Start(usize),
    /// Stop service `index` (resources in reverse order); report back with [`ClusterNode::stop_done`].
    Stop(usize),
    /// Promote the replica of service `index` here; report back with
    /// [`ClusterNode::promote_done`].
    Promote(usize),
    /// Demote service `index` here to a replica; report back with
    /// [`ClusterNode::demote_done`].
    Demote(usize),
    /// Fence `node` as it runs in `incarnation` (the fence agent's start with
    /// `target`); report back with [`ClusterNode::fence_done`].
    Fence {
        /// The node to fence.
        node: NodeId,
        /// Its incarnation as last known here.
        incarnation: u64,
    },
}

/// Timing of the ownership protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Membership timing.
    pub membership: Timing,
    /// The longest a stop may take on a node that lost quorum (self-fencing bound).
    pub self_fence: Duration,
    /// The longest messages take on the wire (added to detection skew).
    pub max_delay: Duration,
}

impl Bounds {
    /// How long after a node leaves the view the survivors wait before taking over
    /// its services without a fence confirmation: the lost node's detection may lag
    /// the survivors' by a link timeout, a report timeout and two ticks, and then it
    /// needs up to `self_fence` to stop.
    pub fn fence_wait(&self) -> Duration {
        let t = self.membership;
        t.link_timeout + t.report_timeout + 2 * t.interval + self.max_delay + self.self_fence
    }
}

fn ms(d: Duration) -> Millis {
    d.as_millis() as Millis
}

/// What every node of a cluster knows about it.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Every node's id.
    pub nodes: Vec<NodeId>,
    /// Links per node.
    pub links: usize,
    /// Timing bounds.
    pub bounds: Bounds,
    /// Quorum policy.
    pub quorum: QuorumPolicy,
    /// The services, in index order (a service's index is its bit in claims).
    pub services: Vec<ServiceSpec>,
    /// Whether a fence agent is configured (the fencer fences lost nodes).
    pub fencing: bool,
    /// The fingerprint of the cluster-wide config (see
    /// `ClusterConfig::fingerprint`): heartbeats of another are not admitted.
    pub config: u64,
}

/// How long a failed fence waits before it is tried again.
const FENCE_RETRY_MS: Millis = 1_000;

/// An operator move in effect, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveMove {
    /// The service's index.
    pub service: usize,
    /// Where it goes.
    pub to: NodeId,
    /// Which node took the command (the move ends if that node leaves).
    pub issuer: NodeId,
    /// When it ends (state machine clock); `None`: when cleared or the target leaves.
    pub until: Option<Millis>,
    /// A forced promotion (the target may lack acknowledged writes).
    pub force: bool,
}

/// This node's fencing state, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceState {
    /// Lost nodes confirmed fenced by this node, with their incarnations.
    pub confirmed: Vec<Fenced>,
    /// Fences under way from this node.
    pub running: Vec<NodeId>,
    /// Lost nodes nobody has confirmed fenced yet, with the ms left of the fence wait.
    pub waiting: Vec<(NodeId, Millis)>,
}

/// One node's cluster state machine.
pub struct ClusterNode {
    membership: Membership,
    quorum: QuorumPolicy,
    services: Vec<ServiceSpec>,
    phases: Vec<Phase>,
    bounds: Bounds,
    nodes: Vec<NodeId>,
    /// When each node was last seen leaving this node's view (boot time for nodes
    /// never seen), for the fence wait.
    absent_since: BTreeMap<NodeId, Millis>,
    /// The incarnation each absent node had when it left this node's view (only
    /// nodes that were members: an incarnation never seen as a member is a new boot
    /// and is never fenced).
    lost_incarnation: BTreeMap<NodeId, u64>,
    /// The incarnation of each member of the current view.
    member_incarnation: BTreeMap<NodeId, u64>,
    seen_all: bool,
    /// Who holds a valid witness lease, as last read (the daemon polls the lease).
    witness_holder: Option<NodeId>,
    /// Whether this node passes its health checks (the daemon runs them).
    healthy: bool,
    /// When the last passing round of health checks began (`None`: no checks).
    health_pass: Option<Millis>,
    /// The current view, and since when it has been the view.
    view_since: (BTreeSet<NodeId>, Millis),
    quorum_state: Option<QuorumState>,
    placements: Vec<Placement>,
    /// Failure times per service (for restart limits and bans).
    failures: Vec<Vec<Millis>>,
    /// Per service: restart here when the current stop completes.
    restart: Vec<bool>,
    /// Per service: kept off this node until then (an error local to this node).
    ban_until: Vec<Option<Millis>>,
    /// Services an agent reported misconfigured here: stopped on every node.
    blocked: u64,
    fencing: bool,
    /// Fences this node confirmed, kept until the node boots again.
    fenced: BTreeMap<NodeId, u64>,
    /// Fences under way from here, by node: the incarnation being fenced.
    fencing_now: BTreeMap<NodeId, u64>,
    /// After a failed fence: not before this time again.
    fence_retry: BTreeMap<NodeId, Millis>,
    /// Operator moves taken here: service → (target, end, forced).
    moves: BTreeMap<usize, (NodeId, Option<Millis>, bool)>,
    /// The promoted role of each promotable service here.
    roles: Vec<Role>,
    /// Where each promotable service's role should be, and why.
    promotions: Vec<Placement>,
    /// Each promotable service's score here, from the last monitor of its replica.
    scores: Vec<Option<Promotion>>,
    /// The highest acknowledged position known, per service.
    acknowledged: Vec<Option<ScoreKey>>,
    /// The acknowledgements published at the last tick.
    last_acks: Vec<Ack>,
    /// Whether a claim of this node lacked acknowledgements at the last tick.
    awaiting_acks: bool,
    /// Whether a claim waits for the members' acknowledgements (always, except in
    /// the simulation's check that the acknowledgement is what keeps owners single).
    claim_acks: bool,
    /// This node's config fingerprint.
    config: u64,
    /// Nodes heard running another config: their fingerprint, and when last heard.
    foreign: BTreeMap<NodeId, (u64, Millis)>,
}

impl ClusterNode {
    /// Node `me` of `cluster`, booting at `now` as `incarnation`.
    pub fn new(cluster: &ClusterSpec, me: NodeId, incarnation: u64, now: Millis) -> ClusterNode {
        let n = cluster.services.len();
        assert!(n <= 64, "at most 64 services");
        let undecided = Placement {
            owner: None,
            why: "not decided yet".into(),
        };
        ClusterNode {
            membership: Membership::new(
                me,
                incarnation,
                &cluster.nodes,
                cluster.links,
                cluster.bounds.membership,
            ),
            quorum: cluster.quorum.clone(),
            phases: vec![Phase::Stopped; n],
            placements: vec![undecided.clone(); n],
            services: cluster.services.clone(),
            bounds: cluster.bounds,
            nodes: cluster.nodes.clone(),
            absent_since: cluster
                .nodes
                .iter()
                .filter(|n| **n != me)
                .map(|n| (*n, now))
                .collect(),
            lost_incarnation: BTreeMap::new(),
            member_incarnation: BTreeMap::new(),
            seen_all: cluster.nodes.len() == 1,
            witness_holder: None,
            healthy: true,
            health_pass: None,
            view_since: (BTreeSet::new(), 0),
            quorum_state: None,
            failures: vec![Vec::new(); n],
            restart: vec![false; n],
            ban_until: vec![None; n],
            blocked: 0,
            fencing: cluster.fencing,
            fenced: BTreeMap::new(),
            fencing_now: BTreeMap::new(),
            fence_retry: BTreeMap::new(),
            moves: BTreeMap::new(),
            roles: vec![Role::Replica; n],
            promotions: vec![undecided.clone(); n],
            scores: vec![None; n],
            acknowledged: vec![None; n],
            last_acks: Vec::new(),
            awaiting_acks: false,
            claim_acks: true,
            config: cluster.config,
            foreign: BTreeMap::new(),
        }
    }

    /// Start a service in the tick that claims it, without waiting for the
    /// members' acknowledgements. Unsafe: only for the simulation, to show that
    /// the acknowledgement is needed.
    #[doc(hidden)]
    pub fn skip_claim_acks(&mut self) {
        self.claim_acks = false;
    }

    /// The timing bounds.
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// The services' specs, in index order.
    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The membership state machine.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Each service's phase here.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The last quorum decision.
    pub fn quorum(&self) -> Option<&QuorumState> {
        self.quorum_state.as_ref()
    }

    /// The last placement of each service, with its reason.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The promoted role of each service here (always [`Role::Replica`] for a
    /// service that is not promotable).
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Where each promotable service's role should be, with the reason.
    pub fn promotions(&self) -> &[Placement] {
        &self.promotions
    }

    /// The highest acknowledged position known of service `i`.
    pub fn acknowledged(&self, i: usize) -> Option<ScoreKey> {
        self.acknowledged[i]
    }

    /// The scores of service `i`'s replicas in the current view, by node.
    pub fn scores(&self, i: usize) -> BTreeMap<NodeId, ScoreKey> {
        self.membership
            .view()
            .1
            .iter()
            .filter_map(|n| self.score_of(*n, i).map(|s| (*n, s)))
            .collect()
    }

    /// Node `n`'s score for service `i`: this node's own, or from `n`'s report.
    fn score_of(&self, n: NodeId, i: usize) -> Option<ScoreKey> {
        if n == self.membership.me() {
            return self.scores[i].map(|p| p.key());
        }
        let (r, _) = self.membership.report_of(n)?;
        r.scores
            .iter()
            .find(|s| usize::from(s.service) == i)
            .map(|s| (s.generation, s.position))
    }

    /// The last monitor of service `i`'s replica here gave `score` (`None`: no
    /// score). A promoted instance's acknowledged position raises the one every
    /// member keeps.
    pub fn set_promotion(&mut self, i: usize, score: Option<Promotion>) {
        if self.phases[i] != Phase::Running {
            return;
        }
        self.scores[i] = score;
        if let Some(p) = score
            && let Some(a) = p.acknowledged
            && matches!(self.roles[i], Role::Promoted)
        {
            let a = (p.generation, a);
            self.acknowledged[i] = self.acknowledged[i].max(Some(a));
        }
    }

    /// A promotion finished; on failure the service stops here (the failure
    /// counts as a monitor failure would) and its role is released once stopped.
    pub fn promote_done(
        &mut self,
        service: usize,
        result: Result<(), Recovery>,
        now: Millis,
    ) -> Vec<Command> {
        if self.roles[service] != Role::Promoting {
            return Vec::new();
        }
        match result {
            Ok(()) => {
                self.roles[service] = Role::Promoted;
                Vec::new()
            }
            Err(recovery) => self.service_failed(service, now, recovery),
        }
    }

    /// A demotion finished; a failed one stops the whole service here (it may
    /// still act as promoted until stopped), and the role is released once stopped.
    pub fn demote_done(&mut self, service: usize, ok: bool, now: Millis) -> Vec<Command> {
        if self.roles[service] != Role::Demoting {
            return Vec::new();
        }
        if ok {
            self.roles[service] = Role::Replica;
            return Vec::new();
        }
        self.service_failed(service, now, Recovery::RestartHere)
    }

    /// Who holds a valid witness lease (`None`: nobody, or no witness). Whether this
    /// partition holds it is decided in [`ClusterNode::tick`] against the view it
    /// computes there, never against an older view.
    pub fn set_witness_holder(&mut self, holder: Option<NodeId>) {
        self.witness_holder = holder;
    }

    /// This node's health checks: whether it passes them, and when the last
    /// passing round began (`None`: no checks are configured). A node that fails
    /// them has no quorum of its own, whatever its partition has: it runs
    /// nothing, is given nothing and fences no one (its report says so), and it
    /// must not take or renew the witness. Health only ever takes quorum away,
    /// so a flapping check cannot make two partitions quorate. And a node fences
    /// only once a round that began after its current view did has passed: a
    /// node cut off from its clients notices the partition before its checks
    /// fail, and must not fence the healthy standby in between.
    pub fn set_health(&mut self, healthy: bool, last_pass: Option<Millis>) {
        self.healthy = healthy;
        self.health_pass = last_pass;
    }

    /// A heartbeat arrived (already authenticated and replay-checked).
    pub fn on_heartbeat(&mut self, now: Millis, hb: &Heartbeat) {
        if hb.config != self.config {
            // One cluster, one config: a node that runs another is not admitted.
            self.foreign.insert(hb.sender, (hb.config, now));
            return;
        }
        self.foreign.remove(&hb.sender);
        self.membership.on_heartbeat(now, hb);
    }

    /// This node's config fingerprint.
    pub fn config(&self) -> u64 {
        self.config
    }

    /// The nodes heard within the link timeout that run another config, with
    /// their fingerprints: they are not admitted to the membership.
    pub fn foreign_configs(&self, now: Millis) -> Vec<(NodeId, u64)> {
        let recent = ms(self.bounds.membership.link_timeout);
        self.foreign
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) <= recent)
            .map(|(n, (c, _))| (*n, *c))
            .collect()
    }

    /// A start finished; `ok` false means it failed: the failure is counted and the
    /// service stops here (and restarts here while under `max_restarts`).
    pub fn start_done(
        &mut self,
        service: usize,
        result: Result<(), Recovery>,
        now: Millis,
    ) -> Vec<Command> {
        if self.phases[service] == Phase::Starting {
            match result {
                Ok(()) => self.phases[service] = Phase::Running,
                Err(recovery) => return self.service_failed(service, now, recovery),
            }
        }
        Vec::new()
    }

    /// A stop finished; `ok` false means it failed, so the resources may still run:
    /// the service stays claimed here ([`Phase::StopFailed`]) until this node is
    /// fenced or an operator clears it. After a failure under the restart limit, the
    /// service starts again here at once: the claim was never released, so no one
    /// else may have it.
    pub fn stop_done(&mut self, service: usize, ok: bool) -> Vec<Command> {
        if !ok && self.phases[service].holds() {
            self.phases[service] = Phase::StopFailed;
            self.restart[service] = false;
            return Vec::new();
        }
        if self.phases[service] == Phase::Stopping {
            self.roles[service] = Role::Replica;
            self.scores[service] = None;
            if std::mem::take(&mut self.restart[service])
                && self.quorum_state.as_ref().is_some_and(|q| q.quorate)
            {
                self.phases[service] = Phase::Starting;
                return vec![Command::Start(service)];
            }
            self.phases[service] = Phase::Stopped;
        }
        Vec::new()
    }

    /// A monitor (or start) found the service failed here at `now`, and the agent's
    /// error class asks for `recovery` ([`baton_plugin_api::recovery_for`]):
    ///
    /// - restart-here: failures expire after `failure_expiry`; below `max_restarts`
    ///   unexpired failures the service is restarted in place, at the limit this node
    ///   bans itself for the service (all members see the ban and place it elsewhere)
    ///   until the failures expire;
    /// - move: the problem is local to this node (not installed, no permission): the
    ///   node bans itself at once, for the failure expiry;
    /// - stop-everywhere: the configuration is wrong, so it is wrong everywhere: the
    ///   service stops here and every member keeps it stopped until an operator
    ///   clears it;
    /// - fence: only a failed stop asks for it; see [`ClusterNode::stop_done`].
    pub fn service_failed(
        &mut self,
        service: usize,
        now: Millis,
        recovery: Recovery,
    ) -> Vec<Command> {
        let policy = self.services[service].failures;
        let list = &mut self.failures[service];
        list.push(now);
        list.retain(|t| now.saturating_sub(*t) < ms(policy.expiry));
        let mut restart = (list.len() as u32) < policy.max_restarts;
        match recovery {
            Recovery::None | Recovery::RestartHere => {}
            Recovery::Move => {
                self.ban_until[service] = Some(now + ms(policy.expiry));
                restart = false;
            }
            Recovery::StopEverywhere => {
                self.blocked |= 1 << service;
                restart = false;
            }
            Recovery::Fence => return self.stop_done(service, false),
        }
        if !matches!(self.phases[service], Phase::Starting | Phase::Running) {
            return Vec::new();
        }
        self.phases[service] = Phase::Stopping;
        self.restart[service] = restart;
        vec![Command::Stop(service)]
    }

    /// An operator's `baton clear SERVICE` here: forget the failures, ban and block
    /// of the service on this node and any move taken here; after a failed stop, try
    /// the stop again.
    pub fn clear(&mut self, service: usize) -> Vec<Command> {
        self.failures[service].clear();
        self.ban_until[service] = None;
        self.blocked &= !(1 << service);
        self.moves.remove(&service);
        if self.phases[service] == Phase::StopFailed {
            self.phases[service] = Phase::Stopping;
            return vec![Command::Stop(service)];
        }
        Vec::new()
    }

    /// An operator's move of `service` to `to`, until `until` (`None`: until cleared
    /// or `to` leaves the view); for a promotable service, a promotion of its
    /// replica on `to`, which `force` makes even if that replica lacks
    /// acknowledged writes. Refused with the reason unless this partition is
    /// quorate, `to` is a member and the service is not a clone.
    pub fn move_service(
        &mut self,
        service: usize,
        to: NodeId,
        until: Option<Millis>,
        force: bool,
    ) -> Result<(), String> {
        let spec = &self.services[service];
        if spec.strategy == Strategy::Clone {
            return Err(format!(
                "{} is a clone: it runs on every member, so it cannot move",
                spec.name
            ));
        }
        if force && spec.strategy != Strategy::Promotable {
            return Err(format!(
                "{} is not promotable: --force is only for promoting a replica that is behind",
                spec.name
            ));
        }
        if !self.quorum_state.as_ref().is_some_and(|q| q.quorate) {
            return Err(
                "this node's partition has no quorum; run the move on a quorate node".into(),
            );
        }
        if !self.membership.view().1.contains(&to) {
            return Err(format!("node {to} is not a member of the current view"));
        }
        self.moves.insert(service, (to, until, force));
        Ok(())
    }

    /// End the move of `service` taken on this node, if any.
    pub fn clear_move(&mut self, service: usize) {
        self.moves.remove(&service);
    }

    /// A fence finished: `ok` means the agent confirmed `node` (in `incarnation`) off.
    pub fn fence_done(&mut self, node: NodeId, incarnation: u64, ok: bool, now: Millis) {
        self.fencing_now.remove(&node);
        if ok {
            self.fenced.insert(node, incarnation);
            self.fence_retry.remove(&node);
        } else {
            self.fence_retry.insert(node, now + FENCE_RETRY_MS);
        }
    }

    /// The moves in effect here (taken here or carried by a member), at `now`.
    pub fn active_moves(&self, now: Millis) -> Vec<ActiveMove> {
        let me = self.membership.me();
        let mut out: Vec<ActiveMove> = self
            .moves
            .iter()
            .map(|(s, (to, until, force))| ActiveMove {
                service: *s,
                to: *to,
                issuer: me,
                until: *until,
                force: *force,
            })
            .collect();
        for n in self.membership.view().1.iter().filter(|n| **n != me) {
            let Some((report, seen)) = self.membership.report_of(*n) else {
                continue;
            };
            for m in &report.moves {
                let until = (m.remaining_ms != Move::UNTIL_CLEARED)
                    .then(|| seen + Millis::from(m.remaining_ms));
                if until.is_none_or(|u| u > now) && usize::from(m.service) < self.services.len() {
                    out.push(ActiveMove {
                        service: usize::from(m.service),
                        to: m.to,
                        issuer: *n,
                        until,
                        force: m.force,
                    });
                }
            }
        }
        // One move per service: the lowest issuer's (a node id order every member shares).
        out.sort_by_key(|m| (m.service, m.issuer));
        out.dedup_by_key(|m| m.service);
        out
    }

    /// Services blocked (an agent reported them misconfigured), with the members
    /// reporting it.
    pub fn blocked_by(&self) -> Vec<(usize, Vec<NodeId>)> {
        let me = self.membership.me();
        (0..self.services.len())
            .filter_map(|i| {
                let nodes: Vec<NodeId> = self
                    .membership
                    .view()
                    .1
                    .iter()
                    .copied()
                    .filter(|n| {
                        let bits = if *n == me {
                            Some(self.blocked)
                        } else {
                            self.membership.report_of(*n).map(|(r, _)| r.blocked)
                        };
                        bits.is_some_and(|b| b & (1 << i) != 0)
                    })
                    .collect();
                (!nodes.is_empty()).then_some((i, nodes))
            })
            .collect()
    }

    /// This node's fencing state at `now`.
    pub fn fence_state(&self, now: Millis) -> FenceState {
        let fence_wait = ms(self.bounds.fence_wait());
        FenceState {
            confirmed: self
                .fenced
                .iter()
                .map(|(n, i)| Fenced {
                    node: *n,
                    incarnation: *i,
                })
                .collect(),
            running: self.fencing_now.keys().copied().collect(),
            waiting: self
                .absent_since
                .iter()
                .filter(|(n, _)| !self.lost_node_safe(**n, now))
                .map(|(n, since)| (*n, (since + fence_wait).saturating_sub(now)))
                .collect(),
        }
    }

    /// Whether lost node `n` can no longer run anything: it left cleanly, a member
    /// confirmed it fenced, or the fence wait since it left has passed.
    fn lost_node_safe(&self, n: NodeId, now: Millis) -> bool {
        let Some(since) = self.absent_since.get(&n) else {
            return true;
        };
        if now.saturating_sub(*since) >= ms(self.bounds.fence_wait()) {
            return true;
        }
        // Only a node that was a member can be known safe before the wait is over.
        let Some(&lost) = self.lost_incarnation.get(&n) else {
            return false;
        };
        if let Some((last, _)) = self.membership.report_of(n)
            && last.incarnation == lost
            && last.heard == 0
            && last.claims == 0
            && last.stop_failed == 0
        {
            return true;
        }
        let me = self.membership.me();
        let confirmed =
            |fenced: &[Fenced]| fenced.iter().any(|f| f.node == n && f.incarnation >= lost);
        self.membership.view().1.iter().any(|m| {
            if *m == me {
                self.fenced.get(&n).is_some_and(|i| *i >= lost)
            } else {
                self.membership
                    .report_of(*m)
                    .is_some_and(|(r, _)| confirmed(&r.fenced))
            }
        })
    }

    /// Unexpired failures of each service on this node.
    pub fn failure_counts(&self, now: Millis) -> Vec<usize> {
        self.failures
            .iter()
            .zip(&self.services)
            .map(|(f, s)| {
                f.iter()
                    .filter(|t| now.saturating_sub(**t) < ms(s.failures.expiry))
                    .count()
            })
            .collect()
    }

    /// The services this node is banned from at `now` (bit `i`: service `i`),
    /// after failures.
    pub fn banned(&self, now: Millis) -> u64 {
        self.banned_bits(now)
    }

    /// The services stopped everywhere until an operator clears them (bit
    /// `i`: service `i`), as this node knows it.
    pub fn blocked(&self) -> u64 {
        self.blocked
    }

    fn banned_bits(&self, now: Millis) -> u64 {
        self.failure_counts(now)
            .iter()
            .zip(&self.services)
            .zip(&self.ban_until)
            .enumerate()
            .filter(|(_, ((count, s), until))| {
                **count as u32 >= s.failures.max_restarts || until.is_some_and(|u| u > now)
            })
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    fn phase_bits(&self, wanted: impl Fn(Phase) -> bool) -> u64 {
        self.phases
            .iter()
            .enumerate()
            .filter(|(_, p)| wanted(**p))
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    /// Whether every other member of the current view has acknowledged this node's
    /// claim first published in report `version`.
    fn claim_acknowledged(&self, version: u64) -> bool {
        let me = self.membership.me();
        let incarnation = self.membership.incarnation();
        !self.claim_acks
            || self.membership.view().1.iter().all(|m| {
                *m == me
                    || self.membership.report_of(*m).is_some_and(|(r, _)| {
                        r.acks.iter().any(|a| {
                            a.node == me && a.incarnation == incarnation && a.version >= version
                        })
                    })
            })
    }

    /// Whether a tick now, before the next one is due, moves a claim on: a
    /// member's pending claim is not acknowledged yet, or the last
    /// acknowledgement of this node's claim came in. Each is true once per
    /// event, so ticking on it never busy-loops; a claim then takes one round
    /// trip instead of a few heartbeat intervals.
    pub fn claim_news(&self) -> bool {
        self.claim_versions()
            .any(|version| self.awaiting_acks && self.claim_acknowledged(version))
            || self.acks().any(|a| {
                !self
                    .last_acks
                    .iter()
                    .any(|l| l.node == a.node && l.incarnation == a.incarnation)
            })
    }

    /// The report versions of this node's pending claims (services and roles).
    fn claim_versions(&self) -> impl Iterator<Item = u64> + '_ {
        let services = self.phases.iter().filter_map(|p| match *p {
            Phase::Claiming { version, .. } => Some(version),
            _ => None,
        });
        let roles = self.roles.iter().filter_map(|r| match *r {
            Role::Claiming { version, .. } => Some(version),
            _ => None,
        });
        services.chain(roles)
    }

    /// The acknowledgements this node publishes: the newest report it has of every
    /// member whose claim is pending.
    fn acks(&self) -> impl Iterator<Item = Ack> + '_ {
        let me = self.membership.me();
        self.membership
            .view()
            .1
            .iter()
            .filter(move |n| **n != me)
            .filter_map(|n| self.membership.report_of(*n))
            .filter(|(r, _)| r.pending)
            .map(|(r, _)| Ack {
                node: r.node,
                incarnation: r.incarnation,
                version: r.version,
            })
    }

    /// What this node publishes in its report at `now`.
    fn published(&self, now: Millis, banned: u64) -> Report {
        Report {
            claims: self.phase_bits(Phase::claims),
            pending: self
                .phases
                .iter()
                .any(|p| matches!(p, Phase::Claiming { .. }))
                || self
                    .roles
                    .iter()
                    .any(|r| matches!(r, Role::Claiming { .. })),
            acks: self.acks().collect(),
            banned,
            blocked: self.blocked,
            stop_failed: self.phase_bits(|p| p == Phase::StopFailed),
            quorate: self.quorum_state.as_ref().is_some_and(|q| q.quorate),
            fenced: self
                .fenced
                .iter()
                .map(|(n, i)| Fenced {
                    node: *n,
                    incarnation: *i,
                })
                .collect(),
            moves: self
                .moves
                .iter()
                .map(|(s, (to, until, force))| Move {
                    service: *s as u8,
                    to: *to,
                    force: *force,
                    remaining_ms: until.map_or(Move::UNTIL_CLEARED, |u| {
                        u.saturating_sub(now)
                            .min(Millis::from(Move::UNTIL_CLEARED - 1))
                            as u32
                    }),
                })
                .collect(),
            replicas: self
                .phases
                .iter()
                .zip(&self.services)
                .enumerate()
                .filter(|(_, (p, s))| **p == Phase::Running && s.strategy == Strategy::Promotable)
                .fold(0, |acc, (i, _)| acc | (1 << i)),
            promoted: self
                .roles
                .iter()
                .enumerate()
                .filter(|(_, r)| r.claims())
                .fold(0, |acc, (i, _)| acc | (1 << i)),
            scores: self
                .scores
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.map(|p| Score {
                        service: i as u8,
                        generation: p.generation,
                        position: p.position,
                    })
                })
                .collect(),
            acknowledged: self
                .acknowledged
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    a.map(|(generation, position)| Score {
                        service: i as u8,
                        generation,
                        position,
                    })
                })
                .collect(),
            ..Report::default()
        }
    }

    /// The heartbeats a node sends as it leaves cleanly (after stopping everything):
    /// it hears nobody and holds nothing, so the others need neither fence nor wait.
    pub fn leave(&mut self, now: Millis) -> Vec<Heartbeat> {
        let mut hbs = self.membership.tick_with(now, Report::default());
        for hb in &mut hbs {
            hb.reports.truncate(1);
            hb.reports[0].heard = 0;
            hb.config = self.config;
        }
        hbs
    }

    /// Advance the clock: returns the heartbeats to send and the commands to carry out.
    pub fn tick(&mut self, now: Millis) -> (Vec<Heartbeat>, Vec<Command>) {
        let banned_here = self.banned_bits(now);
        self.moves
            .retain(|_, (_, until, _)| until.is_none_or(|u| u > now));
        self.membership.advance(now);
        let me = self.membership.me();
        let view = self.membership.view().1.clone();
        for n in &self.nodes {
            if *n == me {
                continue;
            }
            if view.contains(n) {
                self.absent_since.remove(n);
                self.lost_incarnation.remove(n);
                if let Some((r, _)) = self.membership.report_of(*n) {
                    self.member_incarnation.insert(*n, r.incarnation);
                }
            } else {
                self.absent_since.entry(*n).or_insert(now);
                if let Some(inc) = self.member_incarnation.remove(n) {
                    self.lost_incarnation.insert(*n, inc);
                }
            }
        }
        // A confirmation stands until the node boots again (a newer incarnation): a
        // fenced node may still look like a member for a moment after the fence.
        let membership = &self.membership;
        self.fenced.retain(|n, inc| {
            !view.contains(n)
                || membership
                    .report_of(*n)
                    .is_none_or(|(r, _)| r.incarnation <= *inc)
        });
        // A move ends when its target leaves: no constraint outlives its reason.
        self.moves.retain(|_, (to, _, _)| view.contains(to));
        if view.len() == self.nodes.len() {
            self.seen_all = true;
        }
        let witness_held = self.witness_holder.is_some_and(|h| view.contains(&h));
        if self.view_since.0 != view {
            self.view_since = (view.clone(), now);
        }
        let mut quorum = self.quorum.decide(&view, witness_held, self.seen_all);
        if !self.healthy && quorum.quorate {
            quorum.quorate = false;
            quorum.reason += ", but this node fails its health checks";
        }
        let quorate = quorum.quorate;
        let was_quorate = self.quorum_state.as_ref().is_some_and(|q| q.quorate);
        self.quorum_state = Some(quorum);
        if quorate && !was_quorate {
            // Gaining quorum (the witness lease passed to this partition, a node came
            // back) may mean another partition just lost it and is still stopping:
            // every absent node is waited for (or fenced) again from now.
            for since in self.absent_since.values_mut() {
                *since = now;
            }
        }
        let mut commands = Vec::new();
        let checked_since_view = self.health_pass.is_none_or(|t| t >= self.view_since.1);
        if quorate && self.fencing && checked_since_view {
            commands.extend(self.fences_to_run(&view, now));
        }
        let lost_nodes_safe = self
            .absent_since
            .keys()
            .all(|n| self.lost_node_safe(*n, now));
        let moves = self.active_moves(now);
        let blocked = self.blocked_by();
        // Members whose own last decision was "no quorum" (they run nothing, so they
        // are given nothing): one cut off from a witness its partition needs.
        let without_quorum = self.members_reporting(|r| !r.quorate);
        self.merge_acknowledged(&view);
        for i in 0..self.services.len() {
            let spec = &self.services[i];
            let others = self.members_reporting(|r| r.claims & (1 << i) != 0);
            let replicated = spec.strategy == Strategy::Promotable;
            let everywhere = spec.strategy == Strategy::Clone || replicated;
            // A clone that shares nothing may keep running without quorum (it
            // starts only with quorum).
            let kept = !quorate
                && spec.keep_without_quorum
                && matches!(self.phases[i], Phase::Starting | Phase::Running);
            let mut excluded: BTreeMap<NodeId, &str> = view
                .iter()
                .copied()
                .filter(|n| {
                    let bits = if *n == me {
                        Some(banned_here)
                    } else {
                        self.membership.banned_of(*n)
                    };
                    bits.is_some_and(|b| b & (1 << i) != 0)
                })
                .map(|n| (n, "is excluded after failures"))
                .collect();
            for n in &without_quorum {
                excluded.entry(*n).or_insert(
                    "has no quorum of its own (it cannot reach the witness, or is just joining)",
                );
            }
            let mine = if let Some((_, by)) = blocked.iter().find(|(s, _)| *s == i) {
                Placement {
                    owner: None,
                    why: format!(
                        "stopped everywhere: an agent reported its configuration wrong on node {}; fix the config, then `baton clear {}` there",
                        by.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", node "),
                        spec.name
                    ),
                }
            } else if everywhere {
                let banned = excluded.contains_key(&me) && replicated;
                Placement {
                    owner: ((quorate || kept) && !banned).then_some(me),
                    why: if kept {
                        "clone: keeps running here without quorum (without_quorum = keep)".into()
                    } else if replicated {
                        "promotable: a replica runs on every member".into()
                    } else {
                        "clone: runs on every member".into()
                    },
                }
            } else {
                // A rotating service stays where it runs; this node's own claim
                // that has not started yet does not hold it there (a member that
                // was just joining may be the better place).
                let mut holders = others.clone();
                if self.phases[i].holds() {
                    holders.insert(me);
                }
                match moves.iter().find(|m| m.service == i) {
                    Some(m) if view.contains(&m.to) && !excluded.contains_key(&m.to) => Placement {
                        owner: Some(m.to),
                        why: format!(
                            "moved to node {} by an operator on node {} ({})",
                            m.to,
                            m.issuer,
                            m.until.map_or("until cleared or node leaves".into(), |u| {
                                format!("for {} s more", u.saturating_sub(now).div_ceil(1000))
                            })
                        ),
                    },
                    _ => place(spec, &view, &holders, &excluded),
                }
            };
            let wanted_here = (quorate || kept) && mine.owner == Some(me);
            self.placements[i] = if quorate || kept {
                mine
            } else {
                Placement {
                    owner: None,
                    why: format!(
                        "no quorum: {}",
                        self.quorum_state
                            .as_ref()
                            .map(|q| q.reason.as_str())
                            .unwrap_or("")
                    ),
                }
            };
            let exclusive = !everywhere;
            let phase = self.phases[i];
            match phase {
                // Claiming is harmless (nothing starts), so the members acknowledge the
                // claim while the fence wait for lost nodes runs down.
                Phase::Stopped if wanted_here && (!exclusive || others.is_empty()) => {
                    if exclusive && (self.claim_acks || !lost_nodes_safe) {
                        self.phases[i] = Phase::Claiming {
                            since: now,
                            version: self.membership.version() + 1,
                        };
                    } else {
                        self.phases[i] = Phase::Starting;
                        commands.push(Command::Start(i));
                    }
                }
                Phase::Claiming { .. } if !wanted_here || others.iter().any(|o| *o < me) => {
                    self.phases[i] = Phase::Stopped;
                }
                Phase::Claiming { version, .. }
                    if others.is_empty() && lost_nodes_safe && self.claim_acknowledged(version) =>
                {
                    self.phases[i] = Phase::Starting;
                    commands.push(Command::Start(i));
                }
                Phase::Starting | Phase::Running
                    if !wanted_here || (exclusive && others.iter().any(|o| *o < me)) =>
                {
                    self.phases[i] = Phase::Stopping;
                    commands.push(Command::Stop(i));
                }
                _ => {}
            }
            if replicated {
                let operator = moves
                    .iter()
                    .find(|m| m.service == i)
                    .map(|m| (m.to, m.force));
                commands.extend(self.tick_role(
                    i,
                    quorate,
                    &excluded,
                    operator,
                    lost_nodes_safe,
                    now,
                ));
            }
        }
        let awaiting = self
            .claim_versions()
            .any(|version| !self.claim_acknowledged(version));
        self.awaiting_acks = awaiting;
        // The report follows this tick's decisions: a new claim, quorum, and the
        // acknowledgements of the claims seen so far go out at once.
        let published = self.published(now, banned_here);
        self.last_acks = published.acks.clone();
        let mut packets = self.membership.publish(published);
        for hb in &mut packets {
            hb.config = self.config;
        }
        (packets, commands)
    }

    /// The other members of the view whose latest report satisfies `what`.
    fn members_reporting(&self, what: impl Fn(&Report) -> bool) -> BTreeSet<NodeId> {
        let me = self.membership.me();
        self.membership
            .view()
            .1
            .iter()
            .copied()
            .filter(|n| *n != me && self.membership.report_of(*n).is_some_and(|(r, _)| what(r)))
            .collect()
    }

    /// Raise the acknowledged positions known here to the highest a member of
    /// `view` publishes.
    fn merge_acknowledged(&mut self, view: &BTreeSet<NodeId>) {
        let me = self.membership.me();
        for n in view.iter().filter(|n| **n != me) {
            if let Some((r, _)) = self.membership.report_of(*n) {
                for a in &r.acknowledged {
                    if let Some(known) = self.acknowledged.get_mut(usize::from(a.service)) {
                        *known = (*known).max(Some((a.generation, a.position)));
                    }
                }
            }
        }
    }

    /// What promotion knows of promotable service `i` in this node's view.
    fn replicas(&self, i: usize, operator: Option<(NodeId, bool)>) -> Replicas {
        let me = self.membership.me();
        let bit = 1u64 << i;
        let mut r = Replicas {
            acknowledged: self.acknowledged[i],
            operator,
            ..Replicas::default()
        };
        for n in self.membership.view().1 {
            let (running, starting, promoted) = if *n == me {
                // This node's own claim does not make it the holder: a claimer
                // still compares its score with the scores in the members'
                // acknowledgements, and gives the claim up to a better replica.
                (
                    self.phases[i] == Phase::Running,
                    self.phases[i] == Phase::Starting,
                    self.roles[i].claims() && !matches!(self.roles[i], Role::Claiming { .. }),
                )
            } else {
                let Some((rep, _)) = self.membership.report_of(*n) else {
                    continue;
                };
                let running = rep.replicas & bit != 0;
                (
                    running,
                    !running && rep.claims & bit != 0 && rep.stop_failed & bit == 0,
                    rep.promoted & bit != 0,
                )
            };
            if running {
                r.running.insert(*n, self.score_of(*n, i));
            } else if starting {
                r.starting.insert(*n);
            }
            if promoted && r.holder.is_none() {
                r.holder = Some(*n);
            }
        }
        r
    }

    /// Move the promoted role of service `i` on: claim it when promotion names
    /// this node and nobody holds it, promote once the claim is acknowledged and
    /// lost nodes are safe, demote when promotion names another node (or a
    /// lower node claims it too). Only while the replica runs here: a stop of
    /// the service takes the role down with it.
    fn tick_role(
        &mut self,
        i: usize,
        quorate: bool,
        excluded: &BTreeMap<NodeId, &str>,
        operator: Option<(NodeId, bool)>,
        lost_nodes_safe: bool,
        now: Millis,
    ) -> Vec<Command> {
        let me = self.membership.me();
        let replicas = self.replicas(i, operator);
        let bit = 1u64 << i;
        let others = self.members_reporting(|r| r.promoted & bit != 0);
        self.promotions[i] = if quorate {
            promote(&self.services[i], &replicas, excluded)
        } else {
            self.placements[i].clone()
        };
        // A one-time promotion ends once its target holds the role: promoted
        // here, or, for another target, its report shows the role and no
        // pending claim (a claimer still needs the operator's word).
        if let Some((to, ..)) = self.moves.get(&i)
            && replicas.holder == Some(*to)
            && if *to == me {
                self.roles[i] == Role::Promoted
            } else {
                self.membership
                    .report_of(*to)
                    .is_some_and(|(r, _)| !r.pending)
            }
        {
            self.moves.remove(&i);
        }
        if self.phases[i] != Phase::Running {
            if matches!(self.roles[i], Role::Claiming { .. }) {
                self.roles[i] = Role::Replica;
            }
            return Vec::new();
        }
        let wanted = quorate && self.promotions[i].owner == Some(me);
        let lower_claims = others.iter().any(|o| *o < me);
        match self.roles[i] {
            Role::Replica if wanted && others.is_empty() => {
                self.roles[i] = Role::Claiming {
                    since: now,
                    version: self.membership.version() + 1,
                };
                Vec::new()
            }
            Role::Claiming { .. } if !wanted || lower_claims => {
                self.roles[i] = Role::Replica;
                Vec::new()
            }
            Role::Claiming { version, .. }
                if others.is_empty() && lost_nodes_safe && self.claim_acknowledged(version) =>
            {
                self.roles[i] = Role::Promoting;
                vec![Command::Promote(i)]
            }
            Role::Promoting | Role::Promoted if !wanted || lower_claims => {
                self.roles[i] = Role::Demoting;
                vec![Command::Demote(i)]
            }
            _ => Vec::new(),
        }
    }

    /// The fences this node should start now: a node left the view and is not yet
    /// safe, or a member's stop failed, no fence of it is confirmed, and this node is
    /// its fencer (the lowest quorate member other than the target).
    fn fences_to_run(&mut self, view: &BTreeSet<NodeId>, now: Millis) -> Vec<Command> {
        let me = self.membership.me();
        let stop_failed = |n: NodeId| {
            if n == me {
                self.phases.contains(&Phase::StopFailed)
            } else {
                self.membership
                    .report_of(n)
                    .is_some_and(|(r, _)| r.stop_failed != 0)
            }
        };
        // Each target's fencer is the lowest quorate member other than the target.
        let quorate_member =
            |m: NodeId| m == me || self.membership.report_of(m).is_some_and(|(r, _)| r.quorate);
        let fencer_of = |t: NodeId| view.iter().copied().find(|m| *m != t && quorate_member(*m));
        // Lost members, as the incarnation that left the view (never a new boot).
        let lost = self
            .lost_incarnation
            .iter()
            .filter(|(n, _)| !self.lost_node_safe(**n, now))
            .map(|(n, inc)| (*n, *inc));
        let failed_members = view
            .iter()
            .copied()
            .filter(|n| *n != me && stop_failed(*n))
            .filter_map(|n| {
                self.membership
                    .report_of(n)
                    .map(|(r, _)| (n, r.incarnation))
            });
        let targets: Vec<(NodeId, u64)> = lost
            .chain(failed_members)
            .filter(|(n, _)| fencer_of(*n) == Some(me))
            .filter(|(n, _)| !self.fencing_now.contains_key(n))
            .filter(|(n, _)| self.fence_retry.get(n).is_none_or(|t| now >= *t))
            .filter(|(n, inc)| self.fenced.get(n).is_none_or(|f| f < inc))
            .collect();
        targets
            .into_iter()
            .map(|(node, incarnation)| {
                self.fencing_now.insert(node, incarnation);
                Command::Fence { node, incarnation }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::FailurePolicy;

    fn single(max_restarts: u32) -> ClusterNode {
        let spec = ClusterSpec {
            nodes: vec![1],
            links: 1,
            bounds: Bounds {
                membership: Timing::FAST,
                self_fence: Duration::from_millis(100),
                max_delay: Duration::from_millis(1),
            },
            quorum: QuorumPolicy::majority(&[1]),
            services: vec![ServiceSpec {
                name: "db".into(),
                strategy: Strategy::Standby,
                preferred: vec![1],
                failures: FailurePolicy {
                    max_restarts,
                    expiry: Duration::from_secs(10),
                },
                keep_without_quorum: false,
            }],
            fencing: false,
            config: 0,
        };
        ClusterNode::new(&spec, 1, 1, 0)
    }

    /// Tick until the service runs (answering starts at once).
    fn run_until_running(node: &mut ClusterNode, mut now: Millis) -> Millis {
        let limit = now + 5_000;
        while node.phases()[0] != Phase::Running {
            now += 20;
            assert!(now < limit, "never started");
            for c in node.tick(now).1 {
                assert_eq!(c, Command::Start(0));
                assert!(node.start_done(0, Ok(()), now).is_empty());
            }
        }
        now
    }

    #[test]
    fn failures_restart_in_place_then_ban_the_node_until_they_expire() {
        let mut node = single(3);
        let mut now = run_until_running(&mut node, 0);
        for round in 1..=2 {
            assert_eq!(
                node.service_failed(0, now, Recovery::RestartHere),
                [Command::Stop(0)]
            );
            assert_eq!(
                node.stop_done(0, true),
                [Command::Start(0)],
                "round {round}: restart here"
            );
            assert!(node.start_done(0, Ok(()), now).is_empty());
            assert_eq!(node.phases()[0], Phase::Running);
            now += 100;
        }
        assert_eq!(node.failure_counts(now), [2]);
        // The third failure within the expiry bans this node: stop and stay stopped.
        assert_eq!(
            node.service_failed(0, now, Recovery::RestartHere),
            [Command::Stop(0)]
        );
        assert!(node.stop_done(0, true).is_empty());
        for _ in 0..20 {
            now += 20;
            assert!(node.tick(now).1.is_empty());
        }
        assert_eq!(node.placements()[0].owner, None);
        assert!(
            node.placements()[0].why.contains("no member may run it"),
            "{}",
            node.placements()[0].why
        );
        // Failures expire: the node may run the service again.
        run_until_running(&mut node, now + 10_000);
        assert_eq!(node.failure_counts(now + 10_000), [0]);
    }

    #[test]
    fn a_failed_start_counts_and_restarts() {
        let mut node = single(2);
        let mut now = 0;
        let mut failed_once = false;
        while node.phases()[0] != Phase::Running {
            now += 20;
            assert!(now < 5_000);
            for c in node.tick(now).1 {
                assert_eq!(c, Command::Start(0));
                if !failed_once {
                    failed_once = true;
                    assert_eq!(
                        node.start_done(0, Err(Recovery::RestartHere), now),
                        [Command::Stop(0)]
                    );
                    assert_eq!(node.stop_done(0, true), [Command::Start(0)]);
                }
                assert!(node.start_done(0, Ok(()), now).is_empty());
            }
        }
        assert_eq!(node.failure_counts(now), [1]);
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::placement::FailurePolicy;
    use baton_plugin_api::Promotion;

    /// Three nodes on a perfect network, ticking together every 20 ms; agents answer
    /// at once. `down` nodes neither tick nor receive (crashed).
    struct Trio {
        nodes: Vec<ClusterNode>,
        down: BTreeSet<NodeId>,
        now: Millis,
        /// Fences asked for: (fencer, target, incarnation).
        fences: Vec<(NodeId, NodeId, u64)>,
        /// When each node last started service 0.
        started: BTreeMap<NodeId, Millis>,
        spec: ClusterSpec,
        /// A node whose reports reach the others without their acknowledgements.
        no_acks_from: Option<NodeId>,
        /// Each node's data for a promotable service 0: (generation, position).
        data: BTreeMap<NodeId, (u64, u64)>,
    }

    impl Trio {
        fn new(fencing: bool) -> Trio {
            let spec = ClusterSpec {
                nodes: vec![1, 2, 3],
                links: 1,
                bounds: Bounds {
                    membership: Timing::FAST,
                    self_fence: Duration::from_millis(300),
                    max_delay: Duration::from_millis(1),
                },
                quorum: QuorumPolicy::majority(&[1, 2, 3]),
                services: vec![ServiceSpec {
                    name: "db".into(),
                    strategy: Strategy::Standby,
                    preferred: vec![1, 2, 3],
                    failures: FailurePolicy::default(),
                    keep_without_quorum: false,
                }],
                fencing,
                config: 0,
            };
            Trio {
                nodes: (1..=3)
                    .map(|id| ClusterNode::new(&spec, id, 1, 0))
                    .collect(),
                down: BTreeSet::new(),
                now: 0,
                fences: Vec::new(),
                started: BTreeMap::new(),
                spec,
                no_acks_from: None,
                data: BTreeMap::new(),
            }
        }

        /// The same trio with service 0 promotable.
        fn promotable() -> Trio {
            let mut t = Trio::new(false);
            t.spec.services[0].strategy = Strategy::Promotable;
            t.nodes = (1..=3)
                .map(|id| ClusterNode::new(&t.spec, id, 1, 0))
                .collect();
            t
        }

        fn promoted(&self) -> Vec<NodeId> {
            (1..=3)
                .filter(|id| {
                    !self.down.contains(id)
                        && self.nodes[*id as usize - 1].roles()[0] == Role::Promoted
                })
                .collect()
        }

        fn run(&mut self, ms: Millis) {
            let end = self.now + ms;
            while self.now < end {
                self.now += 20;
                let mut packets = Vec::new();
                for k in 0..3 {
                    let id = k as NodeId + 1;
                    if self.down.contains(&id) {
                        continue;
                    }
                    if let Some(&(generation, position)) = self.data.get(&id) {
                        let promoted = self.nodes[k].roles()[0] == Role::Promoted;
                        self.nodes[k].set_promotion(
                            0,
                            Some(Promotion {
                                generation,
                                position,
                                acknowledged: promoted.then_some(position),
                            }),
                        );
                    }
                    let (hbs, commands) = self.nodes[k].tick(self.now);
                    packets.extend(hbs);
                    self.carry_out(k, commands);
                }
                for mut hb in packets {
                    for r in &mut hb.reports {
                        if Some(r.node) == self.no_acks_from {
                            r.acks.clear();
                        }
                    }
                    for k in 0..3 {
                        if !self.down.contains(&(k as NodeId + 1)) {
                            self.nodes[k].on_heartbeat(self.now, &hb);
                        }
                    }
                }
            }
        }

        fn carry_out(&mut self, k: usize, commands: Vec<Command>) {
            let id = k as NodeId + 1;
            for c in commands {
                let more = match c {
                    Command::Start(s) => {
                        self.started.insert(id, self.now);
                        self.nodes[k].start_done(s, Ok(()), self.now)
                    }
                    Command::Stop(s) => self.nodes[k].stop_done(s, true),
                    Command::Promote(s) => self.nodes[k].promote_done(s, Ok(()), self.now),
                    Command::Demote(s) => self.nodes[k].demote_done(s, true, self.now),
                    Command::Fence { node, incarnation } => {
                        self.fences.push((id, node, incarnation));
                        Vec::new()
                    }
                };
                self.carry_out(k, more);
            }
        }

        fn runs(&self) -> Vec<NodeId> {
            (1..=3)
                .filter(|id| {
                    !self.down.contains(id)
                        && self.nodes[*id as usize - 1].phases()[0] == Phase::Running
                })
                .collect()
        }
    }

    #[test]
    fn a_node_that_loses_quorum_keeps_only_the_clones_marked_keep() {
        let mut t = Trio::new(false);
        let standby = t.spec.services[0].clone();
        t.spec.services = vec![
            ServiceSpec {
                name: "web".into(),
                strategy: Strategy::Clone,
                keep_without_quorum: true,
                ..standby.clone()
            },
            ServiceSpec {
                name: "agent".into(),
                strategy: Strategy::Clone,
                ..standby.clone()
            },
            standby,
        ];
        t.nodes = (1..=3)
            .map(|id| ClusterNode::new(&t.spec, id, 1, 0))
            .collect();
        t.run(1_000);
        assert_eq!(t.nodes[0].phases(), [Phase::Running; 3]);
        t.down.extend([2, 3]);
        t.run(1_000);
        let n1 = &t.nodes[0];
        assert_eq!(
            n1.phases(),
            [Phase::Running, Phase::Stopped, Phase::Stopped]
        );
        assert!(
            n1.placements()[0]
                .why
                .contains("keeps running here without quorum"),
            "{}",
            n1.placements()[0].why
        );
    }

    #[test]
    fn a_claim_starts_only_once_every_member_acknowledged_it() {
        let mut t = Trio::new(true);
        t.run(1_000);
        assert_eq!(t.runs(), [1]);
        t.no_acks_from = Some(3);
        t.down.insert(1);
        t.run(2_000);
        assert!(t.fences.iter().any(|f| f.1 == 1), "node 1 was fenced");
        assert!(
            matches!(t.nodes[1].phases()[0], Phase::Claiming { .. }),
            "node 2 claims, but node 3 has not acknowledged: {:?}",
            t.nodes[1].phases()[0]
        );
        t.no_acks_from = None;
        let healed = t.now;
        t.run(100);
        assert_eq!(t.runs(), [2]);
        assert!(t.started[&2] - healed <= 60, "one heartbeat round");
    }

    #[test]
    fn a_confirmed_fence_lets_survivors_take_over_before_the_fence_wait() {
        let fence_wait = ms(Trio::new(false).nodes[0].bounds.fence_wait());
        for fencing in [false, true] {
            let mut t = Trio::new(fencing);
            t.run(1_000);
            assert_eq!(t.runs(), [1]);
            t.down.insert(1);
            let crashed_at = t.now;
            // Node 2 (the lowest survivor) fences node 1 once it leaves the view.
            let mut confirmed = false;
            while t.runs().is_empty() {
                assert!(
                    t.now < crashed_at + 3_000,
                    "no takeover (fencing {fencing})"
                );
                t.run(20);
                if let Some(&(fencer, target, inc)) = t.fences.first()
                    && !confirmed
                {
                    assert_eq!((fencer, target, inc), (2, 1, 1));
                    t.nodes[1].fence_done(target, inc, true, t.now);
                    confirmed = true;
                }
            }
            assert_eq!(t.runs(), [2]);
            let took = t.started[&2] - crashed_at;
            if fencing {
                assert!(took < fence_wait, "took {took} ms with a confirmed fence");
                assert_eq!(t.nodes[2].fence_state(t.now).waiting, []);
            } else {
                assert!(t.fences.is_empty());
                assert!(took >= fence_wait, "took {took} ms without fencing");
            }
        }
    }

    #[test]
    fn a_fenced_node_that_boots_again_is_not_fenced_again() {
        let mut t = Trio::new(true);
        t.run(1_000);
        t.down.insert(1);
        while t.fences.is_empty() {
            assert!(t.now < 3_000);
            t.run(20);
        }
        assert_eq!(t.fences, [(2, 1, 1)]);
        t.nodes[1].fence_done(1, 1, true, t.now);
        t.run(200);
        assert_eq!(t.runs(), [2]);
        // Node 1 boots again (incarnation 2): its reports reach the others before they
        // count it a member again; that new boot is never a fence target.
        t.nodes[0] = ClusterNode::new(&t.spec, 1, 2, t.now);
        t.down.remove(&1);
        t.run(2_000);
        assert_eq!(t.fences, [(2, 1, 1)], "the new boot was fenced");
        assert_eq!(t.runs(), [1], "standby fails back to the rebooted node");
    }

    #[test]
    fn a_failed_stop_blocks_the_service_until_the_node_is_fenced() {
        let mut t = Trio::new(true);
        t.run(1_000);
        assert_eq!(t.runs(), [1]);
        // A monitor failure on node 1, and the stop fails.
        assert_eq!(
            t.nodes[0].service_failed(0, t.now, Recovery::RestartHere),
            [Command::Stop(0)]
        );
        assert!(t.nodes[0].stop_done(0, false).is_empty());
        assert_eq!(t.nodes[0].phases()[0], Phase::StopFailed);
        t.run(1_000);
        // Nobody else starts it while node 1 may still run it; node 2 fences node 1.
        assert!(t.runs().is_empty());
        assert!(!t.started.contains_key(&2) && !t.started.contains_key(&3));
        assert_eq!(t.fences.first(), Some(&(2, 1, 1)));
        // The fence kills node 1; once confirmed, node 2 takes over without the wait.
        t.down.insert(1);
        t.nodes[1].fence_done(1, 1, true, t.now);
        t.run(1_000);
        assert_eq!(t.runs(), [2]);
    }

    #[test]
    fn misconfigured_stops_everywhere_until_cleared_and_move_bans_only_this_node() {
        let mut t = Trio::new(false);
        t.run(1_000);
        assert_eq!(
            t.nodes[0].service_failed(0, t.now, Recovery::StopEverywhere),
            [Command::Stop(0)]
        );
        assert!(t.nodes[0].stop_done(0, true).is_empty(), "no restart");
        t.run(1_000);
        assert!(t.runs().is_empty(), "stopped on every node");
        let why = &t.nodes[2].placements()[0].why;
        assert!(
            why.contains("stopped everywhere") && why.contains("baton clear db"),
            "{why}"
        );
        t.nodes[0].clear(0);
        t.run(1_000);
        assert_eq!(t.runs(), [1]);
        // Not installed here (move): node 1 is banned at once, node 2 runs it.
        assert_eq!(
            t.nodes[0].service_failed(0, t.now, Recovery::Move),
            [Command::Stop(0)]
        );
        assert!(t.nodes[0].stop_done(0, true).is_empty());
        t.run(1_000);
        assert_eq!(t.runs(), [2]);
        assert_eq!(t.nodes[0].failure_counts(t.now), [1]);
    }

    #[test]
    fn a_promotable_service_promotes_the_best_replica_and_never_one_behind() {
        let mut t = Trio::promotable();
        t.data = BTreeMap::from([(1, (1, 100)), (2, (1, 90)), (3, (1, 100))]);
        t.run(1_000);
        // Replicas everywhere; node 1 and 3 tie on data, node 1 is preferred.
        assert_eq!(t.runs(), [1, 2, 3]);
        assert_eq!(t.promoted(), [1]);
        // Node 1 writes and acknowledges up to 150; only node 3 follows.
        t.data.insert(1, (1, 150));
        t.data.insert(3, (1, 150));
        t.run(200);
        assert_eq!(t.nodes[1].acknowledged(0), Some((1, 150)));
        // Node 1 dies: node 3 has every acknowledged write, node 2 does not.
        t.down.insert(1);
        t.run(2_000);
        assert_eq!(t.promoted(), [3]);
        // Node 3 dies too: node 2 alone lacks acknowledged writes; nothing is promoted.
        t.down.remove(&1);
        t.nodes[0] = ClusterNode::new(&t.spec, 1, 2, t.now);
        t.data.insert(1, (1, 120));
        t.down.insert(3);
        t.run(2_000);
        assert_eq!(t.promoted(), Vec::<NodeId>::new());
        let why = &t.nodes[1].promotions()[0].why;
        assert!(
            why.contains("behind the acknowledged 1/96") && why.contains("--force"),
            "{why}"
        );
        // An operator forces node 2: it is promoted and the move ends.
        t.nodes[1].move_service(0, 2, None, false).unwrap();
        t.run(1_000);
        assert_eq!(
            t.promoted(),
            Vec::<NodeId>::new(),
            "refused without --force"
        );
        // Forced from another node (node 1): the move stays while node 2 only
        // claims the role, so node 2 keeps the operator's word until promoted.
        t.nodes[1].clear_move(0);
        t.nodes[0].move_service(0, 2, None, true).unwrap();
        t.run(1_000);
        assert_eq!(t.promoted(), [2]);
        assert!(t.nodes[0].active_moves(t.now).is_empty());
        assert!(t.nodes[1].active_moves(t.now).is_empty());
    }

    #[test]
    fn a_promoted_node_that_loses_quorum_stops_and_a_quorate_partition_promotes() {
        let mut t = Trio::promotable();
        t.data = BTreeMap::from([(1, (1, 10)), (2, (1, 10)), (3, (1, 10))]);
        t.run(1_000);
        assert_eq!(t.promoted(), [1]);
        // Nodes 2 and 3 go down: node 1 loses quorum and stops everything.
        t.down.extend([2, 3]);
        t.run(1_000);
        assert_eq!(t.nodes[0].phases()[0], Phase::Stopped);
        assert_eq!(t.nodes[0].roles()[0], Role::Replica);
        // Only node 2 and 3 come back (node 1 cut off): they promote one of them.
        t.down = BTreeSet::from([1]);
        t.nodes[1] = ClusterNode::new(&t.spec, 2, 2, t.now);
        t.nodes[2] = ClusterNode::new(&t.spec, 3, 2, t.now);
        t.run(3_000);
        assert_eq!(t.promoted(), [2]);
    }

    #[test]
    fn a_node_that_runs_another_config_is_not_admitted_and_both_sides_say_so() {
        let mut t = Trio::new(false);
        let mut other = t.spec.clone();
        other.config = 0x91c0;
        t.spec.config = 0x5be1;
        t.nodes = (1..=3)
            .map(|id| ClusterNode::new(if id == 3 { &other } else { &t.spec }, id, 1, 0))
            .collect();
        t.run(1_000);
        let view = |t: &Trio, k: usize| t.nodes[k].membership().view().1.clone();
        assert_eq!(view(&t, 0), BTreeSet::from([1, 2]));
        assert_eq!(view(&t, 2), BTreeSet::from([3]));
        assert_eq!(t.runs(), [1], "the quorate side runs the service");
        assert_eq!(t.nodes[0].foreign_configs(t.now), [(3, 0x91c0)]);
        assert_eq!(
            t.nodes[2].foreign_configs(t.now),
            [(1, 0x5be1), (2, 0x5be1)]
        );
        // Redeployed with the same config, node 3 joins.
        t.nodes[2] = ClusterNode::new(&t.spec, 3, 2, t.now);
        t.run(1_000);
        assert_eq!(view(&t, 0), BTreeSet::from([1, 2, 3]));
        assert!(t.nodes[0].foreign_configs(t.now + 10_000).is_empty());
    }

    #[test]
    fn a_move_switches_over_and_ends_by_itself() {
        let mut t = Trio::new(false);
        t.run(1_000);
        assert_eq!(t.runs(), [1]);
        let until = t.now + 2_000;
        // Taken on node 2, to node 3; refused for a non-member.
        t.nodes[1].move_service(0, 3, Some(until), false).unwrap();
        t.run(1_000);
        assert_eq!(t.runs(), [3]);
        let moves = t.nodes[0].active_moves(t.now);
        assert_eq!(moves.len(), 1, "every member sees it");
        assert_eq!((moves[0].to, moves[0].issuer), (3, 2));
        assert!(
            t.nodes[0].placements()[0]
                .why
                .contains("moved to node 3 by an operator")
        );
        // It ends on its own: standby fails back to node 1, and nothing is left behind.
        t.run(2_000);
        assert_eq!(t.runs(), [1]);
        assert!(t.nodes[0].active_moves(t.now).is_empty());
        // A move to a node that is down is refused; a move whose target leaves ends.
        t.down.insert(3);
        t.run(500);
        let e = t.nodes[0].move_service(0, 3, None, false).unwrap_err();
        assert!(e.contains("not a member"), "{e}");
        t.down.remove(&3);
        t.run(1_000);
        t.nodes[0].move_service(0, 3, None, false).unwrap();
        t.run(1_000);
        assert_eq!(t.runs(), [3]);
        t.down.insert(3);
        t.run(2_000);
        assert_eq!(t.runs(), [1]);
        assert!(t.nodes[0].active_moves(t.now).is_empty());
    }
}

#[cfg(test)]
mod witness_tests {
    use super::*;
    use crate::placement::FailurePolicy;

    #[test]
    fn a_partition_that_gains_the_witness_waits_for_the_one_that_lost_it_to_stop() {
        let self_fence = 2_000;
        let spec = ClusterSpec {
            nodes: vec![1, 2],
            links: 1,
            bounds: Bounds {
                membership: Timing::FAST,
                self_fence: Duration::from_millis(self_fence),
                max_delay: Duration::from_millis(1),
            },
            quorum: QuorumPolicy {
                witness_votes: 1,
                ..QuorumPolicy::majority(&[1, 2])
            },
            services: vec![ServiceSpec {
                name: "db".into(),
                strategy: Strategy::Standby,
                preferred: vec![1, 2],
                failures: FailurePolicy::default(),
                keep_without_quorum: false,
            }],
            fencing: false,
            config: 0,
        };
        let mut nodes = [
            ClusterNode::new(&spec, 1, 1, 0),
            ClusterNode::new(&spec, 2, 1, 0),
        ];
        let mut now = 0;
        let mut connected = true;
        let step = |nodes: &mut [ClusterNode; 2], now: Millis, connected: bool| {
            let mut out = Vec::new();
            let mut packets = Vec::new();
            for (k, node) in nodes.iter_mut().enumerate() {
                let (hbs, commands) = node.tick(now);
                packets.extend(hbs);
                out.extend(commands.into_iter().map(|c| (k, c)));
            }
            if connected {
                for hb in packets {
                    for node in nodes.iter_mut() {
                        node.on_heartbeat(now, &hb);
                    }
                }
            }
            out
        };
        // Node 1 holds the witness and runs db.
        for n in &mut nodes {
            n.set_witness_holder(Some(1));
        }
        while nodes[0].phases()[0] != Phase::Running {
            now += 20;
            assert!(now < 5_000);
            for (k, c) in step(&mut nodes, now, connected) {
                if let Command::Start(s) = c {
                    nodes[k].start_done(s, Ok(()), now);
                }
            }
        }
        // The link is cut: node 1 keeps the witness and db; node 2 has no quorum.
        connected = false;
        for _ in 0..50 {
            now += 20;
            assert!(step(&mut nodes, now, connected).is_empty());
        }
        assert_eq!(nodes[0].phases()[0], Phase::Running);
        // Node 1 loses the witness's storage: it stops db, slowly (up to self_fence).
        nodes[0].set_witness_holder(None);
        now += 20;
        let lost_at = now;
        assert_eq!(step(&mut nodes, now, connected), [(0, Command::Stop(0))]);
        // The lease expires and node 2 takes it: quorate, it must still not start db
        // before node 1's stop bound has passed.
        nodes[1].set_witness_holder(Some(2));
        let mut started_at = None;
        while started_at.is_none() {
            now += 20;
            assert!(now < lost_at + 10_000, "node 2 never took over");
            for (k, c) in step(&mut nodes, now, connected) {
                if k == 1 && c == Command::Start(0) {
                    started_at = Some(now);
                }
            }
        }
        let waited = started_at.unwrap() - lost_at;
        assert!(
            waited >= self_fence,
            "node 2 started db {waited} ms after node 1 began stopping (bound {self_fence} ms)"
        );
    }
}
