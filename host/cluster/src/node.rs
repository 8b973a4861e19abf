//! One node's cluster logic, without I/O: membership, quorum, placement and the
//! service ownership protocol. The node driver ([`crate::driver`]) feeds it
//! packets, clock ticks and agent completions and carries out the commands it
//! returns, in the daemon and in the simulator alike.
//!
//! Ownership protocol for a service that must run on one node only:
//!
//! 1. A node runs services only while its partition is quorate. When it loses
//!    quorum it stops them at once (self-fencing); stopping takes at most the
//!    configured `self_fence` bound (the driver ends the agents' processes if a
//!    stop overruns). Only a clone marked `keep_without_quorum` (it shares
//!    nothing) keeps running; it still starts only with quorum.
//! 2. A node *claims* a service (publishes it in its report) when placement names
//!    it and no member claims the service.
//! 3. It starts only after every other member of its view has acknowledged the
//!    claim (a member's report names the claimer's report that first carried it, or
//!    a newer one: that member has seen the claim, so it will not claim the service
//!    itself, and any claim of its own made before is in the same report), and
//!    every node outside its view has been outside for at least `fence_wait` (the
//!    longest a lost node can take to notice and finish self-fencing), counted from
//!    when this partition last gained quorum if that is later (another partition
//!    may have just lost it, e.g. the witness lease moved); it backs off if another
//!    member claimed the service meanwhile (the lower node id keeps its claim).
//! 4. It stops when placement moves the service away (switchover, failback, an
//!    operator's move, this node leaving cleanly), and the next owner starts only
//!    once no member claims it.
//!
//! Fencing shortens step 3: when a fence agent is configured, the partition's
//! fencer (its lowest quorate member other than the target) fences every node
//! that left the view while it may have held something, and every member whose
//! stop failed, and publishes the confirmation (node and incarnation); a lost node
//! confirmed fenced by any member needs no fence wait. A node that left cleanly
//! (its last report hears nobody and holds nothing) needs neither, nor does an
//! incarnation that a newer one of the same node replaced (a daemon stops its
//! predecessor's leftovers before it sends anything). A failed stop keeps the
//! service claimed (nobody else may start it) until the node is fenced or an
//! operator clears it.
//!
//! The witness: a partition's leader (its lowest member that passes its health
//! checks and reached the witness's storage) takes or renews the lease only when
//! the witness would make the partition quorate, and lets it go when it cannot
//! (see [`WitnessTask`]). A partition that needs the witness while its holder,
//! outside the partition, has stopped renewing it may fence that holder: the
//! confirmation frees the lease at once instead of after its lease time.
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
use super::reload::Staged;
use super::wire::{Ack, Admin, Fenced, Heartbeat, Move, NodeId, Report, Score};
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
    /// Stopped after a failure and claimed still: it starts here again at `at`
    /// (restarts back off, see `FailurePolicy::restart_delay`).
    Restarting {
        /// When the restart is due.
        at: Millis,
    },
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
            Phase::Restarting { .. } => "restarting",
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

    /// The witness lease's time: twice the link timeout. A holder counts the
    /// witness for half of it after each renewal it asked for; another
    /// partition takes a lease only after seeing it unchanged this long.
    pub fn witness_lease(&self) -> Duration {
        2 * self.membership.link_timeout
    }

    /// How long the guardian waits for a renewal before it ends this node's
    /// services: half the self-fence bound.
    pub fn guardian_lease(&self) -> Duration {
        self.self_fence / 2
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

/// Why a member is given nothing: it reports no quorum of its own.
const NO_QUORUM_OF_ITS_OWN: &str =
    "has no quorum of its own (it cannot reach the witness, or is just joining)";
/// Why a member is given nothing: it is stopping cleanly.
const LEAVING: &str = "is leaving (a clean stop)";
const STANDBY: &str = "is in standby (`baton unstandby NODE` ends it)";

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

/// What this node knows of the witness lease, from its latest lease
/// operation that is still fresh (the driver keeps that rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WitnessSight {
    /// Who holds a live lease (its record keeps changing as it renews).
    pub holder: Option<NodeId>,
    /// Who holds a lease that stopped changing: dead, frozen, or cut off from
    /// the storage. A partition that needs the witness may fence it.
    pub stalled: Option<NodeId>,
    /// Whether this node's last operation reached the storage.
    pub reachable: bool,
}

impl Default for WitnessSight {
    fn default() -> Self {
        WitnessSight {
            holder: None,
            stalled: None,
            // Until the first answer: a node may lead, and learns otherwise.
            reachable: true,
        }
    }
}

/// What this node should do with the witness lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitnessTask {
    /// Only read it (a member that does not lead).
    Look,
    /// Take or renew it: this node leads its partition's witness, and the
    /// witness would make the partition quorate.
    Lead,
    /// Let it go if held: this node leads a partition that cannot be quorate
    /// even with the witness, or it fails its health checks alone.
    Release,
}

/// One service on this node: its spec and everything this node decided about it.
#[derive(Clone, Debug)]
pub struct Service {
    spec: ServiceSpec,
    phase: Phase,
    role: Role,
    placement: Placement,
    promotion: Placement,
    /// Failure times here (for restart limits, backoff and bans).
    failures: Vec<Millis>,
    /// Restart here when the current stop completes.
    restart: bool,
    /// Kept off this node until then (an error local to this node).
    ban_until: Option<Millis>,
    /// An agent reported it misconfigured here: stopped on every node.
    blocked: bool,
    /// Its replica's score here, from the last monitor (promotable services).
    score: Option<Promotion>,
    /// The highest acknowledged position known (promotable services).
    acknowledged: Option<ScoreKey>,
    /// When each member was first seen starting its replica (promotion waits
    /// for it, within the start timeout).
    starting_since: BTreeMap<NodeId, Millis>,
    /// When the monitor round that gave `score` began.
    scored_at: Option<Millis>,
}

impl Service {
    fn new(spec: ServiceSpec) -> Service {
        let undecided = Placement {
            owner: None,
            why: "not decided yet".into(),
        };
        Service {
            spec,
            phase: Phase::Stopped,
            role: Role::Replica,
            placement: undecided.clone(),
            promotion: undecided,
            failures: Vec::new(),
            restart: false,
            ban_until: None,
            blocked: false,
            score: None,
            acknowledged: None,
            starting_since: BTreeMap::new(),
            scored_at: None,
        }
    }

    /// Its spec.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Its phase here.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Its promoted role here ([`Role::Replica`] unless promotable).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where it should run, and why.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Where its promoted role should be, and why (promotable services).
    pub fn promotion(&self) -> &Placement {
        &self.promotion
    }

    /// The highest acknowledged position known (promotable services).
    pub fn acknowledged(&self) -> Option<ScoreKey> {
        self.acknowledged
    }

    /// Unexpired failures here at `now`.
    pub fn failures(&self, now: Millis) -> usize {
        let expiry = ms(self.spec.failures.expiry);
        self.failures
            .iter()
            .filter(|t| now.saturating_sub(**t) < expiry)
            .count()
    }

    fn banned(&self, now: Millis) -> bool {
        self.failures(now) as u32 >= self.spec.failures.max_restarts
            || self.ban_until.is_some_and(|u| u > now)
    }

    fn replicated(&self) -> bool {
        self.spec.strategy == Strategy::Promotable
    }

    /// Runs on every member (a clone, or a promotable service's replicas).
    fn everywhere(&self) -> bool {
        matches!(self.spec.strategy, Strategy::Clone | Strategy::Promotable)
    }
}

/// The members a clone or replica runs on every one of but those listed, with
/// why each is not: `" but node 3 (is excluded after failures)"`.
fn everywhere_but(s: &Service, me: NodeId, excluded: &BTreeMap<NodeId, &str>) -> String {
    let off: Vec<String> = excluded
        .iter()
        .filter(|(n, why)| **n != me && (s.replicated() || **why == LEAVING || **why == STANDBY))
        .map(|(n, why)| format!("node {n} ({why})"))
        .collect();
    if off.is_empty() {
        String::new()
    } else {
        format!(" but {}", off.join(", "))
    }
}

/// What this node's failures of `s` mean at `now`, for its placement's why:
/// how many, the restart they wait for, the ban they caused and how it ends.
fn failures_here(s: &Service, now: Millis, banned: bool) -> String {
    let count = s.failures(now);
    let name = &s.spec.name;
    if banned && s.banned(now) {
        let expiry = ms(s.spec.failures.expiry);
        // Below max_restarts once enough of the oldest failures expire; after
        // an error local to this node, not before its ban ends.
        let mut expiring: Vec<Millis> = s
            .failures
            .iter()
            .map(|t| t + expiry)
            .filter(|t| *t > now)
            .collect();
        expiring.sort_unstable();
        let over = (count + 1).saturating_sub(s.spec.failures.max_restarts as usize);
        let by_count = over
            .checked_sub(1)
            .and_then(|k| expiring.get(k).copied())
            .unwrap_or(now);
        let ends = by_count.max(s.ban_until.unwrap_or(now));
        return format!(
            ": {count} failure(s) here within failure_expiry ({} s; max_restarts = {}); \
             it may run here again in {} s, or at once after `baton clear {name}` on this node",
            expiry / 1000,
            s.spec.failures.max_restarts,
            (ends - now).div_ceil(1000)
        );
    }
    match s.phase {
        Phase::Restarting { at } => format!(
            "; here it failed {count} time(s) and restarts in {} s (restart_backoff_ms doubles with each failure; {} more and this node is excluded)",
            at.saturating_sub(now).div_ceil(1000),
            (s.spec.failures.max_restarts as usize).saturating_sub(count)
        ),
        _ if count > 0 => format!(
            "; here it failed {count} time(s) within failure_expiry ({} more and this node is excluded; `baton clear {name}` forgets them)",
            (s.spec.failures.max_restarts as usize).saturating_sub(count)
        ),
        _ => String::new(),
    }
}

/// What one tick decided before it turns to the services.
struct Round {
    now: Millis,
    me: NodeId,
    view: BTreeSet<NodeId>,
    quorate: bool,
    banned_here: u64,
    lost_nodes_safe: bool,
    moves: Vec<ActiveMove>,
    blocked: Vec<(usize, Vec<NodeId>)>,
    /// Members that are given nothing, with why.
    unable: BTreeMap<NodeId, &'static str>,
    /// While the members' configs differ, or a switch is under way: the
    /// services this node stops (bits of its running config); nothing starts.
    hold: Option<u64>,
}

/// One node's cluster state machine.
pub struct ClusterNode {
    membership: Membership,
    quorum: QuorumPolicy,
    services: Vec<Service>,
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
    witness: WitnessSight,
    /// Whether this node passes its health checks (the driver runs them).
    healthy: bool,
    /// When the last passing round of health checks began (`None`: no checks).
    health_pass: Option<Millis>,
    /// The current view, and since when it has been the view.
    view_since: (BTreeSet<NodeId>, Millis),
    /// When this node's partition last gained quorum.
    quorate_since: Option<Millis>,
    quorum_state: Option<QuorumState>,
    fencing: bool,
    /// Fences this node confirmed, kept until the node boots again.
    fenced: BTreeMap<NodeId, u64>,
    /// When this node first knew each lost node confirmed fenced (by itself or
    /// a member), for the witness: a lease that node left is free from then.
    fence_known: BTreeMap<NodeId, Millis>,
    /// Fences under way from here, by node: the incarnation being fenced.
    fencing_now: BTreeMap<NodeId, u64>,
    /// After a failed fence: not before this time again.
    fence_retry: BTreeMap<NodeId, Millis>,
    /// Operator moves taken here: service → (target, end, forced).
    moves: BTreeMap<usize, (NodeId, Option<Millis>, bool)>,
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
    /// A config staged for a reload: heartbeats of it are admitted, and this
    /// node switches to it once every member has staged it.
    staged: Option<Staged>,
    /// After a switch: the config run before, admitted from members until
    /// then (they are switching too).
    previous: Option<(u64, Millis)>,
    /// This node stops cleanly: it gives up every service and claims nothing.
    leaving: bool,
    /// Claims of a promoted role by members, by (claimer, service), with when
    /// this node first saw each: it acknowledges such a claim only with a score
    /// of its own replica measured after that, so the claimer compares fresh
    /// scores (see [`ClusterNode::wants_fresh_score`]).
    role_claims: BTreeMap<(NodeId, usize), Millis>,
    /// The operators' standby and maintenance settings, the newest known.
    admin: Admin,
    /// The services in maintenance at the last tick (a release is noticed).
    maintained: u64,
}

impl ClusterNode {
    /// Node `me` of `cluster`, booting at `now` as `incarnation`.
    pub fn new(cluster: &ClusterSpec, me: NodeId, incarnation: u64, now: Millis) -> ClusterNode {
        assert!(cluster.services.len() <= 64, "at most 64 services");
        ClusterNode {
            membership: Membership::new(
                me,
                incarnation,
                &cluster.nodes,
                cluster.links,
                cluster.bounds.membership,
            ),
            quorum: cluster.quorum.clone(),
            services: cluster.services.iter().cloned().map(Service::new).collect(),
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
            witness: WitnessSight::default(),
            healthy: true,
            health_pass: None,
            view_since: (BTreeSet::new(), 0),
            quorate_since: None,
            quorum_state: None,
            fencing: cluster.fencing,
            fenced: BTreeMap::new(),
            fence_known: BTreeMap::new(),
            fencing_now: BTreeMap::new(),
            fence_retry: BTreeMap::new(),
            moves: BTreeMap::new(),
            last_acks: Vec::new(),
            awaiting_acks: false,
            claim_acks: true,
            config: cluster.config,
            foreign: BTreeMap::new(),
            staged: None,
            previous: None,
            leaving: false,
            role_claims: BTreeMap::new(),
            admin: Admin::default(),
            maintained: 0,
        }
    }

    /// The operators' standby and maintenance settings this node follows.
    pub fn admin(&self) -> Admin {
        self.admin
    }

    /// Adopt `admin` if it is newer than the settings known here (a saved copy
    /// at boot, or a member's); whether it was.
    pub fn adopt_admin(&mut self, admin: Admin) -> bool {
        let newer = admin.generation > self.admin.generation;
        if newer {
            self.admin = admin;
        }
        newer
    }

    /// An operator's change of the settings here at `unix_ms` (wall clock):
    /// it is newer than any known, and every member adopts it.
    pub fn change_admin(&mut self, unix_ms: u64, change: impl FnOnce(&mut Admin)) -> Admin {
        let mut next = self.admin;
        change(&mut next);
        next.generation =
            Admin::generation_of(unix_ms, self.membership.me()).max(self.admin.generation + 1);
        self.admin = next;
        next
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

    /// The services, in index order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Service `i`.
    pub fn service(&self, i: usize) -> &Service {
        &self.services[i]
    }

    /// The membership state machine.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Each service's phase here, in index order.
    pub fn phases(&self) -> Vec<Phase> {
        self.services.iter().map(|s| s.phase).collect()
    }

    /// Each service's promoted role here, in index order.
    pub fn roles(&self) -> Vec<Role> {
        self.services.iter().map(|s| s.role).collect()
    }

    /// The last quorum decision.
    pub fn quorum(&self) -> Option<&QuorumState> {
        self.quorum_state.as_ref()
    }

    /// Whether this node's partition was quorate at the last tick.
    pub fn quorate(&self) -> bool {
        self.quorum_state.as_ref().is_some_and(|q| q.quorate)
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
            return self.services[i].score.map(|p| p.key());
        }
        let (r, _) = self.report_here(n)?;
        r.scores
            .iter()
            .find(|s| usize::from(s.service) == i)
            .map(|s| (s.generation, s.position))
    }

    /// The monitor round of service `i`'s replica here that began at
    /// `measured` gave `score` (`None`: no score). A promoted instance's
    /// acknowledged position raises the one every member keeps.
    pub fn set_promotion(&mut self, i: usize, score: Option<Promotion>, measured: Millis) {
        let s = &mut self.services[i];
        if s.phase != Phase::Running {
            return;
        }
        s.score = score;
        s.scored_at = Some(measured);
        if let Some(p) = score
            && let Some(a) = p.acknowledged
            && s.role == Role::Promoted
        {
            s.acknowledged = s.acknowledged.max(Some((p.generation, a)));
        }
    }

    /// Whether service `i`'s replica here should be monitored now for a fresh
    /// score: a member (or this node) claims the promoted role and the score
    /// here is older than the claim. Positions stop moving once the old holder
    /// released the role, so scores measured after a claim are what the
    /// claimer compares: it promotes only if it is still the best.
    pub fn wants_fresh_score(&self, i: usize) -> bool {
        let s = &self.services[i];
        if s.phase != Phase::Running || !s.replicated() || self.admin.in_maintenance(i) {
            return false;
        }
        let older = |since: Millis| s.scored_at.is_none_or(|t| t < since);
        let mine = matches!(s.role, Role::Claiming { since, .. } if older(since));
        mine || self
            .role_claims
            .iter()
            .any(|((_, svc), since)| *svc == i && older(*since))
    }

    /// A promotion finished; on failure the service stops here (the failure
    /// counts as a monitor failure would) and its role is released once stopped.
    pub fn promote_done(
        &mut self,
        service: usize,
        result: Result<(), Recovery>,
        now: Millis,
    ) -> Vec<Command> {
        if self.services[service].role != Role::Promoting {
            return Vec::new();
        }
        match result {
            Ok(()) => {
                self.services[service].role = Role::Promoted;
                Vec::new()
            }
            Err(recovery) => self.service_failed(service, now, recovery),
        }
    }

    /// A demotion finished; a failed one stops the whole service here (it may
    /// still act as promoted until stopped), and the role is released once stopped.
    pub fn demote_done(&mut self, service: usize, ok: bool, now: Millis) -> Vec<Command> {
        if self.services[service].role != Role::Demoting {
            return Vec::new();
        }
        if ok {
            self.services[service].role = Role::Replica;
            return Vec::new();
        }
        self.service_failed(service, now, Recovery::RestartHere)
    }

    /// What the latest fresh witness operation saw. Whether this partition
    /// holds the witness is decided in [`ClusterNode::tick`] against the view it
    /// computes there, never against an older view.
    pub fn set_witness(&mut self, sight: WitnessSight) {
        self.witness = sight;
    }

    /// What this node knows of the witness.
    pub fn witness(&self) -> WitnessSight {
        self.witness
    }

    /// What this node should do with the witness lease now (`None`: no witness).
    ///
    /// The leader of a partition is its lowest member that passes its health
    /// checks and reached the witness's storage at its last try. It takes or
    /// renews the lease only when the witness would make the partition quorate
    /// (so a lone node of three with a one-vote witness never keeps it from the
    /// other two), and otherwise lets it go once its services are stopped. A
    /// node that fails its health checks alone lets it go too, so a healthy
    /// partition need not wait for the lease to run out. In a larger partition
    /// a non-leader never lets go: members may count the lease the old leader
    /// renewed until the new leader takes it over.
    pub fn witness_task(&self) -> Option<WitnessTask> {
        if self.quorum.witness_votes == 0 {
            return None;
        }
        let me = self.membership.me();
        let view = self.membership.view().1;
        let capable = |n: NodeId| {
            if n == me {
                self.healthy && self.witness.reachable
            } else {
                self.membership.report_of(n).is_some_and(|(r, _)| r.witness)
            }
        };
        let leader = view.iter().copied().find(|n| capable(*n));
        // Letting go waits for this node's stops: the partition that takes the
        // witness over fences this node, and should find its services stopped.
        // The lease runs out meanwhile all the same.
        let let_go = if self.stopped_for_others() {
            WitnessTask::Release
        } else {
            WitnessTask::Look
        };
        Some(if leader == Some(me) {
            if self.quorum.decide(view, true, true).quorate {
                WitnessTask::Lead
            } else {
                let_go
            }
        } else if !self.healthy && view.len() == 1 {
            let_go
        } else {
            WitnessTask::Look
        })
    }

    /// Whether every service another node could take over is stopped here
    /// (clone replicas do not count: they are nobody else's to take).
    fn stopped_for_others(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.role == Role::Replica && (s.everywhere() || s.phase == Phase::Stopped))
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
        if !self.admits(now, hb.config) {
            // One cluster, one config: a node that runs another is not admitted.
            self.foreign.insert(hb.sender, (hb.config, now));
            return;
        }
        self.foreign.remove(&hb.sender);
        self.membership.on_heartbeat(now, hb);
    }

    /// Whether a heartbeat of config `config` is admitted at `now`: this
    /// node's, the one it staged, or the one it ran before a switch, for a
    /// while.
    fn admits(&self, now: Millis, config: u64) -> bool {
        config == self.config
            || self.staged.as_ref().is_some_and(|s| s.config == config)
            || self
                .previous
                .is_some_and(|(p, until)| p == config && now < until)
    }

    /// Member `n`'s latest report, if it was made under this node's config
    /// (its service bits mean this node's services).
    fn report_here(&self, n: NodeId) -> Option<(&Report, Millis)> {
        self.membership
            .report_of(n)
            .filter(|(r, _)| r.config == self.config)
    }

    /// Stage `next` for a reload (replacing any staged before): heartbeats of
    /// it are admitted from now, and this node switches to it once every
    /// member has staged it (see [`ClusterNode::switch_ready`]).
    pub fn stage(&mut self, next: Staged) {
        assert!(next.services.len() <= 64, "at most 64 services");
        self.staged = (next.config != self.config).then_some(next);
    }

    /// Drop the staged config, if any (a reload given up before it switched).
    pub fn unstage(&mut self) {
        self.staged = None;
    }

    /// The config staged here, if any.
    pub fn staged(&self) -> Option<&Staged> {
        self.staged.as_ref()
    }

    /// The other members of the view whose latest report (`None`: none
    /// yet) satisfies `what`.
    fn members_whose_report(&self, what: impl Fn(Option<&Report>) -> bool) -> Vec<NodeId> {
        let me = self.membership.me();
        self.membership
            .view()
            .1
            .iter()
            .copied()
            .filter(|n| *n != me && what(self.membership.report_of(*n).map(|(r, _)| r)))
            .collect()
    }

    /// The members of the view that have not staged or switched to the
    /// staged config yet; `None` when nothing is staged.
    pub fn switch_waits_for(&self) -> Option<Vec<NodeId>> {
        let next = self.staged.as_ref()?.config;
        Some(self.members_whose_report(|r| r.is_none_or(|r| r.config != next && r.staged != next)))
    }

    /// The members of the view whose latest report was made under another
    /// config than this node's (during a reload's switch: those that have
    /// not switched yet, or switched already).
    pub fn members_on_other_configs(&self) -> Vec<NodeId> {
        self.members_whose_report(|r| r.is_some_and(|r| r.config != self.config))
    }

    /// While the cluster changes config, what this node holds back: `Some`
    /// with the services it stops (bits) once every member has staged the
    /// config staged here (a switch is under way), or with none while some
    /// member's report was made under another config than this node's; then
    /// nothing is claimed or started, since the service bits of the two
    /// configs differ. `None`: business as usual.
    fn hold(&self) -> Option<u64> {
        if let Some(next) = &self.staged
            && self.switch_waits_for().is_some_and(|w| w.is_empty())
        {
            return Some(next.retiring(self.services.len()));
        }
        let mixed = !self.members_on_other_configs().is_empty();
        mixed.then_some(0)
    }

    /// Service `i` while the cluster changes config (see [`Self::hold`]): a
    /// claim not started yet (of the service or of its promoted role) is given
    /// up, a retiring service stops, the rest stays as it is. Without quorum,
    /// or leaving, nothing is held back.
    fn held_for_reload(&mut self, i: usize, round: &Round) -> Option<Vec<Command>> {
        let retiring = round.hold? & (1 << i) != 0;
        // Losing quorum and a clean stop only ever stop services: they go on
        // as always (a leaving node held back would never leave).
        if !round.quorate || self.leaving || (retiring && self.admin.in_maintenance(i)) {
            return None;
        }
        let s = &mut self.services[i];
        s.placement.why = "held while the cluster switches to a reloaded config".into();
        if matches!(s.role, Role::Claiming { .. }) {
            // A claim of the promoted role not acted on yet is given up too.
            s.role = Role::Replica;
        }
        Some(match s.phase {
            Phase::Claiming { .. } => {
                s.phase = Phase::Stopped;
                Vec::new()
            }
            Phase::Restarting { .. } if retiring => {
                s.phase = Phase::Stopped;
                Vec::new()
            }
            Phase::Starting | Phase::Running if retiring => {
                s.phase = Phase::Stopping;
                vec![Command::Stop(i)]
            }
            _ => Vec::new(),
        })
    }

    /// Whether this node may switch to the staged config now: every member
    /// has staged it, what it retires has stopped here (or is in maintenance),
    /// and nothing is starting, stopping, promoting or demoting.
    pub fn switch_ready(&self) -> bool {
        let Some(next) = &self.staged else {
            return false;
        };
        if self.switch_waits_for().is_none_or(|w| !w.is_empty()) {
            return false;
        }
        let retiring = next.retiring(self.services.len());
        self.services.iter().enumerate().all(|(i, s)| {
            let settled = matches!(
                s.phase,
                Phase::Stopped | Phase::Running | Phase::Restarting { .. }
            ) && matches!(s.role, Role::Replica | Role::Promoted);
            let retired = retiring & (1 << i) == 0
                || s.phase == Phase::Stopped
                || self.admin.in_maintenance(i);
            settled && retired
        })
    }

    /// Switch to the staged config at `now` (once [`Self::switch_ready`]):
    /// the services it continues keep their state under their new index,
    /// added and restarted ones begin stopped; the operators' settings and
    /// moves follow the services. Heartbeats of the config run before are
    /// admitted for `window` ms more, while the members switch too. Returns,
    /// per new service, the index of the running service it continues.
    pub fn switch(&mut self, now: Millis, window: Millis) -> Vec<Option<usize>> {
        let next = self.staged.take().expect("a staged config");
        let mut old: Vec<Option<Service>> = std::mem::take(&mut self.services)
            .into_iter()
            .map(Some)
            .collect();
        self.services = next
            .services
            .iter()
            .zip(&next.continues)
            .map(|(spec, from)| {
                let mut s = from
                    .and_then(|o| old[o].take())
                    .unwrap_or_else(|| Service::new(spec.clone()));
                s.spec = spec.clone();
                s
            })
            .collect();
        let renumber = |bits: u64, by: &[Option<usize>]| {
            by.iter()
                .enumerate()
                .filter(|(_, o)| o.is_some_and(|o| bits & (1 << o) != 0))
                .fold(0, |acc, (i, _)| acc | 1 << i)
        };
        self.admin.maintenance = renumber(self.admin.maintenance, &next.same_name);
        self.maintained = renumber(self.maintained, &next.same_name);
        let new_index = |o: usize| next.continues.iter().position(|c| *c == Some(o));
        self.moves = std::mem::take(&mut self.moves)
            .into_iter()
            .filter_map(|(o, m)| new_index(o).map(|i| (i, m)))
            .collect();
        self.role_claims = std::mem::take(&mut self.role_claims)
            .into_iter()
            .filter_map(|((n, o), at)| new_index(o).map(|i| ((n, i), at)))
            .collect();
        self.previous = Some((self.config, now + window));
        self.config = next.config;
        next.continues
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
        if self.services[service].phase == Phase::Starting {
            match result {
                Ok(()) => self.services[service].phase = Phase::Running,
                Err(recovery) => return self.service_failed(service, now, recovery),
            }
        }
        Vec::new()
    }

    /// A stop finished; `ok` false means it failed, so the resources may still run:
    /// the service stays claimed here ([`Phase::StopFailed`]) until this node is
    /// fenced or an operator clears it. After a failure under the restart limit, the
    /// service starts again here, at once after the first failure and after a
    /// growing wait after more ([`Phase::Restarting`]): the claim is never
    /// released meanwhile, so no one else may have it.
    pub fn stop_done(&mut self, service: usize, ok: bool, now: Millis) -> Vec<Command> {
        let quorate = self.quorate();
        let s = &mut self.services[service];
        if !ok && s.phase.holds() {
            s.phase = Phase::StopFailed;
            s.restart = false;
            return Vec::new();
        }
        if ok && s.phase == Phase::StopFailed {
            // Found stopped after all (the stop cap ended what was left).
            s.phase = Phase::Stopped;
            s.role = Role::Replica;
            s.score = None;
            return Vec::new();
        }
        if s.phase != Phase::Stopping {
            return Vec::new();
        }
        s.role = Role::Replica;
        s.score = None;
        s.phase = Phase::Stopped;
        if std::mem::take(&mut s.restart) && quorate {
            let delay = ms(s.spec.failures.restart_delay(s.failures(now)));
            if delay > 0 {
                s.phase = Phase::Restarting { at: now + delay };
            } else {
                s.phase = Phase::Starting;
                return vec![Command::Start(service)];
            }
        }
        Vec::new()
    }

    /// A monitor (or start) found the service failed here at `now`, and the agent's
    /// error class asks for `recovery` ([`baton_plugin_api::recovery_for`]):
    ///
    /// - restart-here: failures expire after `failure_expiry`; below `max_restarts`
    ///   unexpired failures the service is restarted in place (backing off after
    ///   the first), at the limit this node bans itself for the service (all
    ///   members see the ban and place it elsewhere) until the failures expire;
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
        let s = &mut self.services[service];
        let expiry = ms(s.spec.failures.expiry);
        s.failures.push(now);
        s.failures.retain(|t| now.saturating_sub(*t) < expiry);
        let mut restart = (s.failures.len() as u32) < s.spec.failures.max_restarts;
        match recovery {
            Recovery::None | Recovery::RestartHere => {}
            Recovery::Move => {
                s.ban_until = Some(now + expiry);
                restart = false;
            }
            Recovery::StopEverywhere => {
                s.blocked = true;
                restart = false;
            }
            Recovery::Fence => return self.stop_done(service, false, now),
        }
        if !matches!(s.phase, Phase::Starting | Phase::Running) {
            return Vec::new();
        }
        s.phase = Phase::Stopping;
        s.restart = restart;
        vec![Command::Stop(service)]
    }

    /// An operator's `baton clear SERVICE` here: forget the failures, ban and block
    /// of the service on this node and any move taken here; after a failed stop, try
    /// the stop again.
    pub fn clear(&mut self, service: usize) -> Vec<Command> {
        self.moves.remove(&service);
        let s = &mut self.services[service];
        s.failures.clear();
        s.ban_until = None;
        s.blocked = false;
        if s.phase == Phase::StopFailed {
            s.phase = Phase::Stopping;
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
        let spec = &self.services[service].spec;
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
        if !self.quorate() {
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
            self.fence_known.entry(node).or_insert(now);
            self.fence_retry.remove(&node);
        } else {
            self.fence_retry.insert(node, now + FENCE_RETRY_MS);
        }
    }

    /// Lost nodes confirmed fenced (by this node or a member), with when this
    /// node first knew it: a witness lease such a node holds, unchanged since
    /// before then, is free (the node can no longer renew it).
    pub fn fenced_since(&self) -> Vec<(NodeId, Millis)> {
        self.fence_known.iter().map(|(n, t)| (*n, *t)).collect()
    }

    /// Stop cleanly: this node gives up every service (its members place them
    /// elsewhere as its stops complete) and claims nothing more. See
    /// [`ClusterNode::left`] and [`ClusterNode::leave`].
    pub fn begin_leaving(&mut self) {
        self.leaving = true;
    }

    /// Whether this node is stopping cleanly.
    pub fn leaving(&self) -> bool {
        self.leaving
    }

    /// Whether nothing is held or claimed here any more (all stopped).
    pub fn holds_nothing(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.phase == Phase::Stopped && s.role == Role::Replica)
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
            let Some((report, seen)) = self.report_here(*n) else {
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
        let blocked = self.blocked();
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
                            Some(blocked)
                        } else {
                            self.report_here(*n).map(|(r, _)| r.blocked)
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

    /// Whether lost node `n` can no longer run anything: it left cleanly, a newer
    /// incarnation of it reports (which stopped whatever its predecessor left
    /// before it sent anything), a member confirmed it fenced, or the fence wait
    /// since it left has passed.
    fn lost_node_safe(&self, n: NodeId, now: Millis) -> bool {
        self.why_safe(n, now).is_some()
    }

    /// Whether `n` was a member this node lost (not one it has not heard
    /// since it started).
    pub fn was_lost(&self, n: NodeId) -> bool {
        self.lost_incarnation.contains_key(&n)
    }

    /// Why lost node `n` is known safe at `now` (see `lost_node_safe`), for the
    /// history; `None` while it is not.
    pub fn why_safe(&self, n: NodeId, now: Millis) -> Option<&'static str> {
        let Some(since) = self.absent_since.get(&n) else {
            return Some("it is a member");
        };
        if now.saturating_sub(*since) >= ms(self.bounds.fence_wait()) {
            return Some("its fence wait has passed");
        }
        // Only a node that was a member can be known safe before the wait is over.
        let &lost = self.lost_incarnation.get(&n)?;
        if let Some((last, _)) = self.membership.report_of(n) {
            if last.incarnation > lost {
                return Some("it restarted (a new incarnation stops what the old one left)");
            }
            if last.incarnation == lost
                && last.heard == 0
                && last.claims == 0
                && last.stop_failed == 0
            {
                return Some("it left cleanly, holding nothing");
            }
        }
        self.confirmed_fenced(n, lost)
            .then_some("a fence confirmed it off")
    }

    /// Whether this node or a member confirmed `n` fenced in incarnation `lost`
    /// (or a later one).
    fn confirmed_fenced(&self, n: NodeId, lost: u64) -> bool {
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
        self.services.iter().map(|s| s.failures(now)).collect()
    }

    /// The services this node is banned from at `now` (bit `i`: service `i`),
    /// after failures.
    pub fn banned(&self, now: Millis) -> u64 {
        self.bits(|s| s.banned(now))
    }

    /// The services stopped everywhere until an operator clears them (bit
    /// `i`: service `i`), as this node knows it.
    pub fn blocked(&self) -> u64 {
        self.bits(|s| s.blocked)
    }

    fn bits(&self, wanted: impl Fn(&Service) -> bool) -> u64 {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| wanted(s))
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
        self.services.iter().flat_map(|s| {
            let service = match s.phase {
                Phase::Claiming { version, .. } => Some(version),
                _ => None,
            };
            let role = match s.role {
                Role::Claiming { version, .. } => Some(version),
                _ => None,
            };
            service.into_iter().chain(role)
        })
    }

    /// The acknowledgements this node publishes: the newest report it has of every
    /// member whose claim is pending, once this node's scores are fresher than
    /// any promoted role that member claims.
    fn acks(&self) -> impl Iterator<Item = Ack> + '_ {
        let me = self.membership.me();
        let stale_for = move |claimer: NodeId| {
            self.role_claims.iter().any(|((n, i), since)| {
                *n == claimer && self.services[*i].scored_at.is_none_or(|t| t < *since)
            })
        };
        self.membership
            .view()
            .1
            .iter()
            .filter(move |n| **n != me)
            .filter_map(|n| self.membership.report_of(*n))
            .filter(|(r, _)| r.pending)
            .filter(move |(r, _)| !stale_for(r.node))
            .map(|(r, _)| Ack {
                node: r.node,
                incarnation: r.incarnation,
                version: r.version,
            })
    }

    /// What this node publishes in its report at `now`.
    fn published(&self, now: Millis, banned: u64) -> Report {
        let scores = |which: fn(&Service) -> Option<ScoreKey>| {
            self.services
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    which(s).map(|(generation, position)| Score {
                        service: i as u8,
                        generation,
                        position,
                    })
                })
                .collect()
        };
        Report {
            admin: self.admin,
            config: self.config,
            staged: self.staged.as_ref().map_or(0, |s| s.config),
            claims: self.bits(|s| s.phase.claims()),
            pending: self.claim_versions().next().is_some(),
            acks: self.acks().collect(),
            banned,
            blocked: self.blocked(),
            stop_failed: self.bits(|s| s.phase == Phase::StopFailed),
            quorate: self.quorate(),
            leaving: self.leaving,
            witness: self.healthy && self.witness.reachable,
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
            replicas: self.bits(|s| s.phase == Phase::Running && s.replicated()),
            promoted: self.bits(|s| s.role.claims()),
            scores: scores(|s| s.score.map(|p| p.key())),
            acknowledged: scores(|s| s.acknowledged),
            ..Report::default()
        }
    }

    /// The heartbeats a node sends as it leaves cleanly (after stopping everything):
    /// it hears nobody and holds nothing, so the others need neither fence nor wait.
    pub fn leave(&mut self, now: Millis) -> Vec<Heartbeat> {
        debug_assert!(
            self.holds_nothing(),
            "a node leaves cleanly only holding nothing"
        );
        let mut hbs = self.membership.tick_with(
            now,
            Report {
                leaving: true,
                ..Report::default()
            },
        );
        for hb in &mut hbs {
            hb.reports.truncate(1);
            hb.reports[0].heard = 0;
            hb.config = self.config;
        }
        hbs
    }

    /// Advance the clock: returns the heartbeats to send and the commands to carry
    /// out. In phases: follow the membership, decide quorum, start the fences this
    /// node owes, decide each service (placement, then its phase and role here),
    /// and publish the report that follows from those decisions.
    pub fn tick(&mut self, now: Millis) -> (Vec<Heartbeat>, Vec<Command>) {
        let banned_here = self.banned(now);
        self.moves
            .retain(|_, (_, until, _)| until.is_none_or(|u| u > now));
        self.follow_membership(now);
        let quorate = self.decide_quorum(now);
        let mut commands = self.fences_to_run(now);
        let round = self.round(now, quorate, banned_here);
        for i in 0..self.services.len() {
            commands.extend(self.tick_service(i, &round));
        }
        debug_assert!(
            quorate
                || commands
                    .iter()
                    .all(|c| !matches!(c, Command::Start(_) | Command::Promote(_))),
            "a node without quorum starts and promotes nothing"
        );
        debug_assert!(
            !self.leaving
                || self
                    .services
                    .iter()
                    .all(|s| !matches!(s.phase, Phase::Claiming { .. } | Phase::Starting)),
            "a leaving node claims and starts nothing"
        );
        let packets = self.publish_report(now, banned_here);
        (packets, commands)
    }

    /// Membership phase: the view at `now`, who left (and as which
    /// incarnation), which fence confirmations still stand, and the moves
    /// whose target left. [`ClusterNode::tick`] begins with it; the driver also
    /// runs it before it picks the witness operation, so that a view change is
    /// answered with the witness operation the new view calls for (take it,
    /// or let it go) in the same tick, not one tick later.
    pub fn follow_membership(&mut self, now: Millis) {
        self.membership.advance(now);
        let me = self.membership.me();
        let view = self.membership.view().1.clone();
        for &n in &self.nodes {
            if n == me {
                continue;
            }
            if view.contains(&n) {
                self.absent_since.remove(&n);
                self.lost_incarnation.remove(&n);
                if let Some((r, _)) = self.membership.report_of(n) {
                    self.member_incarnation.insert(n, r.incarnation);
                }
            } else {
                self.absent_since.entry(n).or_insert(now);
                if let Some(inc) = self.member_incarnation.remove(&n) {
                    self.lost_incarnation.insert(n, inc);
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
        let known: Vec<NodeId> = self
            .lost_incarnation
            .iter()
            .filter(|(n, inc)| self.confirmed_fenced(**n, **inc))
            .map(|(n, _)| *n)
            .collect();
        self.fence_known.retain(|n, _| known.contains(n));
        for n in known {
            self.fence_known.entry(n).or_insert(now);
        }
        self.follow_role_claims(now);
        for n in view.iter().filter(|n| **n != me) {
            if let Some((r, _)) = self.report_here(*n) {
                let admin = r.admin;
                self.adopt_admin(admin);
            }
        }
        // A move ends when its target leaves: no constraint outlives its reason.
        self.moves.retain(|_, (to, _, _)| view.contains(to));
        if view.len() == self.nodes.len() {
            self.seen_all = true;
        }
        if self.view_since.0 != view {
            self.view_since = (view.clone(), now);
        }
        debug_assert!(view.contains(&me), "a node is always in its own view");
        debug_assert!(
            self.absent_since.keys().all(|n| !view.contains(n)),
            "no member is absent"
        );
    }

    /// The members' pending claims of a promoted role of a service whose
    /// replica runs here, and since when this node has seen each.
    fn follow_role_claims(&mut self, now: Millis) {
        let me = self.membership.me();
        let mut claims = BTreeMap::new();
        for n in self.membership.view().1.iter().filter(|n| **n != me) {
            let Some((r, _)) = self.report_here(*n) else {
                continue;
            };
            for (i, s) in self.services.iter().enumerate() {
                if r.pending
                    && r.promoted & (1 << i) != 0
                    && s.replicated()
                    && s.phase == Phase::Running
                {
                    let since = self.role_claims.get(&(*n, i)).copied().unwrap_or(now);
                    claims.insert((*n, i), since);
                }
            }
        }
        self.role_claims = claims;
    }

    /// Quorum phase: whether this partition may run services now. Gaining
    /// quorum restarts the fence wait for every absent node.
    fn decide_quorum(&mut self, now: Millis) -> bool {
        let view = self.membership.view().1;
        let witness_held = self.witness.holder.is_some_and(|h| view.contains(&h));
        let mut quorum = self.quorum.decide(view, witness_held, self.seen_all);
        if !self.healthy && quorum.quorate {
            quorum.quorate = false;
            quorum.reason += ", but this node fails its health checks";
        }
        let quorate = quorum.quorate;
        let was_quorate = self.quorate();
        self.quorum_state = Some(quorum);
        if !quorate {
            self.quorate_since = None;
        } else if !was_quorate {
            self.quorate_since = Some(now);
        }
        if quorate && !was_quorate {
            // Gaining quorum (the witness lease passed to this partition, a node came
            // back) may mean another partition just lost it and is still stopping:
            // every absent node is waited for (or fenced) again from now.
            for since in self.absent_since.values_mut() {
                *since = now;
            }
        }
        debug_assert!(
            self.healthy || !quorate,
            "an unhealthy node is never quorate"
        );
        quorate
    }

    /// What every service's decision this tick shares.
    fn round(&mut self, now: Millis, quorate: bool, banned_here: u64) -> Round {
        let me = self.membership.me();
        let view = self.membership.view().1.clone();
        // Members given nothing: those whose own last decision was "no quorum"
        // (one cut off from a witness its partition needs) and those leaving.
        let mut unable: BTreeMap<NodeId, &'static str> = self
            .members_reporting(|r| !r.quorate)
            .into_iter()
            .map(|n| (n, NO_QUORUM_OF_ITS_OWN))
            .collect();
        for n in self.members_reporting(|r| r.leaving) {
            unable.insert(n, LEAVING);
        }
        if self.leaving {
            unable.insert(me, LEAVING);
        }
        self.merge_acknowledged(&view);
        Round {
            now,
            me,
            quorate,
            banned_here,
            lost_nodes_safe: self
                .absent_since
                .keys()
                .all(|n| self.lost_node_safe(*n, now)),
            moves: self.active_moves(now),
            blocked: self.blocked_by(),
            unable,
            hold: self.hold(),
            view,
        }
    }

    /// Service phase for service `i`: where it should run, then what this node
    /// does about it (claim, start, stop, restart), then its promoted role.
    fn tick_service(&mut self, i: usize, round: &Round) -> Vec<Command> {
        if let Some(commands) = self.held_for_reload(i, round) {
            return commands;
        }
        if let Some(commands) = self.maintenance(i) {
            return commands;
        }
        let others = self.members_reporting(|r| r.claims & (1 << i) != 0);
        let excluded = self.excluded(i, round);
        let s = &self.services[i];
        // A clone that shares nothing may keep running without quorum (it
        // starts only with quorum).
        let kept = !round.quorate
            && !self.leaving
            && s.spec.keep_without_quorum
            && matches!(s.phase, Phase::Starting | Phase::Running);
        let placement = if round.quorate || kept {
            self.place_service(i, round, &excluded, &others, kept)
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
        let wanted_here = (round.quorate || kept) && placement.owner == Some(round.me);
        self.services[i].placement = placement;
        let mut commands = self.step_phase(i, round, wanted_here, &others);
        if self.services[i].replicated() {
            let operator = round
                .moves
                .iter()
                .find(|m| m.service == i)
                .map(|m| (m.to, m.force));
            commands.extend(self.tick_role(i, round, &excluded, operator));
        }
        commands
    }

    /// Service `i` in maintenance: nothing is decided for it (`Some`, with no
    /// command), unless this node is leaving (a clean stop leaves nothing
    /// running that no daemon guards). Released: a node that does not hold it
    /// stops it once, which ends whatever was started here by hand meanwhile
    /// (a stop of a stopped resource does nothing); a node that holds it
    /// monitors it again.
    fn maintenance(&mut self, i: usize) -> Option<Vec<Command>> {
        let bit = 1u64 << i;
        let s = &mut self.services[i];
        if self.admin.in_maintenance(i) && !self.leaving {
            self.maintained |= bit;
            s.placement.why = format!(
                "in maintenance: baton neither monitors, starts nor stops it (`baton maintenance {} --off` ends it)",
                s.spec.name
            );
            return Some(Vec::new());
        }
        if self.maintained & bit == 0 {
            return None;
        }
        self.maintained &= !bit;
        if s.phase == Phase::Stopped {
            s.phase = Phase::Stopping;
            return Some(vec![Command::Stop(i)]);
        }
        None
    }

    /// The members service `i` must avoid, each with why.
    fn excluded(&self, i: usize, round: &Round) -> BTreeMap<NodeId, &'static str> {
        let mut excluded: BTreeMap<NodeId, &'static str> = round
            .view
            .iter()
            .copied()
            .filter(|n| {
                let bits = if *n == round.me {
                    Some(round.banned_here)
                } else {
                    self.membership.banned_of(*n)
                };
                bits.is_some_and(|b| b & (1 << i) != 0)
            })
            .map(|n| (n, "is excluded after failures"))
            .collect();
        for n in round.view.iter().filter(|n| self.admin.in_standby(**n)) {
            excluded.insert(*n, STANDBY);
        }
        for (n, why) in &round.unable {
            // Leaving outranks failures: a clone's ban does not keep it off, leaving does.
            if *why == LEAVING {
                excluded.insert(*n, why);
            } else {
                excluded.entry(*n).or_insert(why);
            }
        }
        excluded
    }

    /// Where service `i` should run in a quorate partition (or here, for a clone
    /// kept without quorum), and why.
    fn place_service(
        &self,
        i: usize,
        round: &Round,
        excluded: &BTreeMap<NodeId, &str>,
        others: &BTreeSet<NodeId>,
        kept: bool,
    ) -> Placement {
        let s = &self.services[i];
        let spec = &s.spec;
        if let Some((_, by)) = round.blocked.iter().find(|(b, _)| *b == i) {
            return Placement {
                owner: None,
                why: format!(
                    "stopped everywhere: an agent reported its configuration wrong on node {}; fix the config, then `baton clear {}` there",
                    by.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", node "),
                    spec.name
                ),
            };
        }
        if s.everywhere() {
            let excluded_here = excluded.get(&round.me).copied().filter(|why| {
                // A clone's ban does not keep it off (it runs everywhere);
                // leaving and standby do.
                s.replicated() || *why == LEAVING || *why == STANDBY
            });
            let why = match excluded_here {
                Some(why) => format!(
                    "not here: this node {why}{}",
                    failures_here(s, round.now, true)
                ),
                None if kept => {
                    "clone: keeps running here without quorum (without_quorum = keep)".into()
                }
                None => format!(
                    "{}{}{}",
                    if s.replicated() {
                        "promotable: a replica runs on every member"
                    } else {
                        "clone: runs on every member"
                    },
                    everywhere_but(s, round.me, excluded),
                    failures_here(s, round.now, false)
                ),
            };
            return Placement {
                owner: excluded_here.is_none().then_some(round.me),
                why,
            };
        }
        // A rotating service stays where it runs; this node's own claim that has
        // not started yet does not hold it there (a member that was just joining
        // may be the better place).
        let mut holders = others.clone();
        if s.phase.holds() {
            holders.insert(round.me);
        }
        match round.moves.iter().find(|m| m.service == i) {
            Some(m) if round.view.contains(&m.to) && !excluded.contains_key(&m.to) => Placement {
                owner: Some(m.to),
                why: format!(
                    "moved to node {} by an operator on node {} ({})",
                    m.to,
                    m.issuer,
                    m.until.map_or("until cleared or node leaves".into(), |u| {
                        format!("for {} s more", u.saturating_sub(round.now).div_ceil(1000))
                    })
                ),
            },
            _ => place(spec, &round.view, &holders, excluded),
        }
    }

    /// What this node does about service `i` given whether placement wants it
    /// here and which other members claim it.
    fn step_phase(
        &mut self,
        i: usize,
        round: &Round,
        wanted_here: bool,
        others: &BTreeSet<NodeId>,
    ) -> Vec<Command> {
        let me = round.me;
        // Alone in its view, nobody needs to acknowledge a claim.
        let claim_acks = self.claim_acks && round.view.len() > 1;
        let version = self.membership.version() + 1;
        let acknowledged = |v: u64| self.claim_acknowledged(v);
        let s = &self.services[i];
        let exclusive = !s.everywhere();
        let lower_claims = exclusive && others.iter().any(|o| *o < me);
        let next = match s.phase {
            // Claiming is harmless (nothing starts), so the members acknowledge the
            // claim while the fence wait for lost nodes runs down.
            Phase::Stopped if wanted_here && (!exclusive || others.is_empty()) => {
                if exclusive && (claim_acks || !round.lost_nodes_safe) {
                    Some(Phase::Claiming {
                        since: round.now,
                        version,
                    })
                } else {
                    Some(Phase::Starting)
                }
            }
            Phase::Claiming { .. } if !wanted_here || lower_claims => Some(Phase::Stopped),
            Phase::Claiming { version, .. }
                if others.is_empty() && round.lost_nodes_safe && acknowledged(version) =>
            {
                Some(Phase::Starting)
            }
            Phase::Restarting { .. } if !wanted_here || lower_claims => Some(Phase::Stopped),
            Phase::Restarting { at } if round.now >= at => Some(Phase::Starting),
            Phase::Starting | Phase::Running if !wanted_here || lower_claims => {
                Some(Phase::Stopping)
            }
            _ => None,
        };
        let Some(next) = next else {
            return Vec::new();
        };
        self.services[i].phase = next;
        match next {
            Phase::Starting => vec![Command::Start(i)],
            Phase::Stopping => vec![Command::Stop(i)],
            _ => Vec::new(),
        }
    }

    /// Publish phase: this node's report, which carries this tick's decisions.
    fn publish_report(&mut self, now: Millis, banned_here: u64) -> Vec<Heartbeat> {
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
        packets
    }

    /// The other members of the view whose latest report satisfies `what`.
    fn members_reporting(&self, what: impl Fn(&Report) -> bool) -> BTreeSet<NodeId> {
        let me = self.membership.me();
        self.membership
            .view()
            .1
            .iter()
            .copied()
            .filter(|n| *n != me && self.report_here(*n).is_some_and(|(r, _)| what(r)))
            .collect()
    }

    /// Raise the acknowledged positions known here to the highest a member of
    /// `view` publishes.
    fn merge_acknowledged(&mut self, view: &BTreeSet<NodeId>) {
        let me = self.membership.me();
        let config = self.config;
        for n in view.iter().filter(|n| **n != me) {
            if let Some((r, _)) = self
                .membership
                .report_of(*n)
                .filter(|(r, _)| r.config == config)
            {
                for a in &r.acknowledged {
                    if let Some(s) = self.services.get_mut(usize::from(a.service)) {
                        s.acknowledged = s.acknowledged.max(Some((a.generation, a.position)));
                    }
                }
            }
        }
    }

    /// What promotion knows of promotable service `i` in this node's view at
    /// `now`; remembers since when each member has been starting its replica.
    fn replicas(&mut self, i: usize, now: Millis, operator: Option<(NodeId, bool)>) -> Replicas {
        let me = self.membership.me();
        let bit = 1u64 << i;
        let wait = ms(self.services[i].spec.start_timeout);
        let mut r = Replicas {
            acknowledged: self.services[i].acknowledged,
            operator,
            ..Replicas::default()
        };
        let mut starting = BTreeSet::new();
        for n in self.membership.view().1 {
            let (running, start, promoted) = if *n == me {
                // This node's own claim does not make it the holder: a claimer
                // still compares its score with the scores in the members'
                // acknowledgements, and gives the claim up to a better replica.
                // Starting as the members see it in this node's report: claimed,
                // not running, not blocked by a failed stop.
                let s = &self.services[i];
                (
                    s.phase == Phase::Running,
                    s.phase.claims() && !matches!(s.phase, Phase::Running | Phase::StopFailed),
                    s.role.claims() && !matches!(s.role, Role::Claiming { .. }),
                )
            } else {
                let Some((rep, _)) = self.report_here(*n) else {
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
            } else if start {
                starting.insert(*n);
            }
            if promoted && r.holder.is_none() {
                r.holder = Some(*n);
            }
        }
        let since = &mut self.services[i].starting_since;
        since.retain(|n, _| starting.contains(n));
        for n in starting {
            let at = *since.entry(n).or_insert(now);
            let left = (at + wait).saturating_sub(now);
            if left > 0 {
                r.starting.insert(n, left);
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
        round: &Round,
        excluded: &BTreeMap<NodeId, &str>,
        operator: Option<(NodeId, bool)>,
    ) -> Vec<Command> {
        let me = round.me;
        let replicas = self.replicas(i, round.now, operator);
        let bit = 1u64 << i;
        let others = self.members_reporting(|r| r.promoted & bit != 0);
        let s = &self.services[i];
        let promotion = if round.quorate {
            promote(&s.spec, &replicas, excluded)
        } else {
            s.placement.clone()
        };
        // A one-time promotion ends once its target holds the role: promoted
        // here, or, for another target, its report shows the role and no
        // pending claim (a claimer still needs the operator's word).
        if let Some((to, ..)) = self.moves.get(&i)
            && replicas.holder == Some(*to)
            && if *to == me {
                s.role == Role::Promoted
            } else {
                self.membership
                    .report_of(*to)
                    .is_some_and(|(r, _)| !r.pending)
            }
        {
            self.moves.remove(&i);
        }
        let version = self.membership.version() + 1;
        let acknowledged = |v: u64| self.claim_acknowledged(v);
        let s = &self.services[i];
        let wanted = round.quorate && promotion.owner == Some(me);
        let lower_claims = others.iter().any(|o| *o < me);
        let (role, command) = if s.phase != Phase::Running {
            let role = if matches!(s.role, Role::Claiming { .. }) {
                Role::Replica
            } else {
                s.role
            };
            (role, None)
        } else {
            match s.role {
                Role::Replica if wanted && others.is_empty() => (
                    Role::Claiming {
                        since: round.now,
                        version,
                    },
                    None,
                ),
                Role::Claiming { .. } if !wanted || lower_claims => (Role::Replica, None),
                Role::Claiming { version, since }
                    if others.is_empty()
                        && round.lost_nodes_safe
                        && acknowledged(version)
                        && s.scored_at.is_some_and(|t| t >= since) =>
                {
                    (Role::Promoting, Some(Command::Promote(i)))
                }
                Role::Promoting | Role::Promoted if !wanted || lower_claims => {
                    (Role::Demoting, Some(Command::Demote(i)))
                }
                role => (role, None),
            }
        };
        let s = &mut self.services[i];
        s.promotion = promotion;
        s.role = role;
        command.into_iter().collect()
    }

    /// Fence phase: the fences this node should start now. With quorum: a node
    /// left the view and is not yet safe, or a member's stop failed, no fence of
    /// it is confirmed, and this node is its fencer (the lowest quorate member
    /// other than the target). Without quorum: the holder of the witness this
    /// partition needs, if it stopped renewing the lease and this node leads the
    /// partition's witness (the confirmation frees the lease at once).
    fn fences_to_run(&mut self, now: Millis) -> Vec<Command> {
        if !self.fencing {
            return Vec::new();
        }
        // A node that kept quorum through a change of its view fences only after
        // a round of health checks that began after the change has passed: a
        // node cut off from its clients (holding the witness) notices the
        // partition before its checks fail, and must not fence the healthy
        // standby meanwhile. A node that gained quorum after its view changed
        // took the witness from a holder that let it go (failing its checks)
        // or stopped renewing it, so it fences at once; and a stalled witness
        // holder is fenced at once too: it lost the witness anyway, and only a
        // healthy node leads the witness.
        let view_began = self.view_since.1;
        let checked_since_view = self.health_pass.is_none_or(|t| t >= view_began)
            || self.quorate_since.is_some_and(|t| t > view_began);
        let targets = if self.quorate() && checked_since_view {
            self.fence_targets(now)
        } else if !self.quorate() {
            self.stalled_witness_holder(now).into_iter().collect()
        } else {
            Vec::new()
        };
        let targets: Vec<(NodeId, u64)> = targets
            .into_iter()
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

    /// The nodes this quorate node fences: lost members not yet safe, and
    /// members whose stop failed, each by its fencer.
    fn fence_targets(&self, now: Millis) -> Vec<(NodeId, u64)> {
        let me = self.membership.me();
        let view = self.membership.view().1;
        let stop_failed = |n: NodeId| {
            if n == me {
                self.services.iter().any(|s| s.phase == Phase::StopFailed)
            } else {
                self.membership
                    .report_of(n)
                    .is_some_and(|(r, _)| r.stop_failed != 0)
            }
        };
        // Each target's fencer is the lowest quorate member other than the target.
        let quorate_member = |m: NodeId| {
            m == me
                || self
                    .membership
                    .report_of(m)
                    .is_some_and(|(r, _)| r.quorate && !r.leaving)
        };
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
        lost.chain(failed_members)
            .filter(|(n, _)| fencer_of(*n) == Some(me))
            .collect()
    }

    /// The witness holder this partition may fence to free the witness: it is
    /// outside the view (a member that left it, as that incarnation), its
    /// lease stopped changing, this node leads the witness for a partition the
    /// witness would make quorate, and the holder is not already known safe.
    fn stalled_witness_holder(&self, now: Millis) -> Option<(NodeId, u64)> {
        let holder = self.witness.stalled?;
        if self.membership.view().1.contains(&holder)
            || self.witness_task() != Some(WitnessTask::Lead)
            || self.lost_node_safe(holder, now)
        {
            return None;
        }
        Some((holder, *self.lost_incarnation.get(&holder)?))
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
                    backoff: Duration::ZERO,
                    ..FailurePolicy::default()
                },
                keep_without_quorum: false,
                start_timeout: Duration::from_secs(20),
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
                node.stop_done(0, true, now),
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
        assert!(node.stop_done(0, true, now).is_empty());
        for _ in 0..20 {
            now += 20;
            assert!(node.tick(now).1.is_empty());
        }
        assert_eq!(node.service(0).placement().owner, None);
        assert!(
            node.service(0)
                .placement()
                .why
                .contains("no member may run it"),
            "{}",
            node.service(0).placement().why
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
                    assert_eq!(node.stop_done(0, true, now), [Command::Start(0)]);
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
                    start_timeout: Duration::from_secs(20),
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
                            self.now,
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
                    Command::Stop(s) => self.nodes[k].stop_done(s, true, self.now),
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
            n1.service(0)
                .placement()
                .why
                .contains("keeps running here without quorum"),
            "{}",
            n1.service(0).placement().why
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
        assert!(t.nodes[0].stop_done(0, false, t.now).is_empty());
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
        assert!(
            t.nodes[0].stop_done(0, true, t.now).is_empty(),
            "no restart"
        );
        t.run(1_000);
        assert!(t.runs().is_empty(), "stopped on every node");
        let why = &t.nodes[2].service(0).placement().why;
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
        assert!(t.nodes[0].stop_done(0, true, t.now).is_empty());
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
        assert_eq!(t.nodes[1].service(0).acknowledged(), Some((1, 150)));
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
        let why = &t.nodes[1].service(0).promotion().why;
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
            t.nodes[0]
                .service(0)
                .placement()
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
                start_timeout: Duration::from_secs(20),
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
            n.set_witness(WitnessSight {
                holder: Some(1),
                ..WitnessSight::default()
            });
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
        nodes[0].set_witness(WitnessSight::default());
        now += 20;
        let lost_at = now;
        assert_eq!(step(&mut nodes, now, connected), [(0, Command::Stop(0))]);
        // The lease expires and node 2 takes it: quorate, it must still not start db
        // before node 1's stop bound has passed.
        nodes[1].set_witness(WitnessSight {
            holder: Some(2),
            ..WitnessSight::default()
        });
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
