//! The node driver: everything a node does around its state machine
//! ([`ClusterNode`]), with every input and output through [`NodeIo`]. The daemon
//! runs it with sockets, threads and its guardian; the simulator with its
//! virtual network and modelled agents, witness storage and guardian. So the
//! two run one shell and cannot drift.
//!
//! What the driver decides:
//!
//! - **When to tick**: every heartbeat interval, and at once when a claim can move
//!   on, the witness's holder changed, a fence was confirmed, or the daemon
//!   resumed after a freeze.
//! - **Completions**: agent work (start, stop, promotion, demotion, monitor
//!   rounds, fences) reported back and handed to the state machine, with the
//!   failure recorded. A stop that failed is checked before it counts: if every
//!   resource is found stopped (the guardian or the stop cap ended its
//!   processes), the stop is complete; only what may still run blocks the
//!   service.
//! - **Monitors**: one round at a time per running service, supervised: a round
//!   that has not answered within its calls' deadlines plus a second is a failed
//!   monitor.
//! - **The witness**: which operation to ask for ([`ClusterNode::witness_task`]),
//!   one at a time, and an answer counts only for half a lease after it was asked
//!   for (a stalled storage is "witness not held", never a stalled node).
//! - **The stop cap**: once this node has been without quorum for the self-fence
//!   bound *as it experienced it* (not counting a freeze, which the guardian
//!   covers), whatever a stop still runs is ended.
//! - **Freezes**: a turn that comes more than the guardian's lease after the last
//!   means this daemon was frozen and its guardian ended its services; it ticks
//!   at once (learning the membership) and monitors nothing in that turn.
//! - **The guardian**: renewed at every tick with what the services hold.
//! - **A clean stop**: the node leaves ([`ClusterNode::begin_leaving`]), keeps
//!   ticking, heartbeating and renewing its guardian while its services stop and
//!   move, and only once every stop has completed sends its last report
//!   ("leaving, holding nothing") and dismisses the guardian.

use super::changes::{Change, Observer, name_of};
use super::membership::Millis;
use super::node::{ClusterNode, ClusterSpec, Command, Phase, Role, WitnessSight};
use super::reload::Staged;
use super::wire::{Admin, Heartbeat, NodeId};
use super::witness::{LeaseOp, Sighting};
use baton_plugin_api::{Promotion, Recovery};
use std::collections::BTreeMap;

/// What the driver needs to know of one service beyond its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceShell {
    /// How often the running service is monitored, ms (0: never).
    pub monitor_every: Millis,
    /// How long one monitor round may take: its calls' deadlines together, ms.
    pub monitor_budget: Millis,
}

/// A failure: the recovery the agent's error asks for, and what failed, in words.
pub type Failure = (Recovery, String);

/// Agent and fence work the driver asks for; it comes back as a [`Done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Start the service's resources in order (a promotable service's
    /// replicas), knowing which lost nodes are confirmed fenced (a lease such a
    /// node holds is free).
    Start(usize, Vec<NodeId>),
    /// Stop them in reverse order; `cap`: without quorum, each call's deadline is
    /// at most the self-fence bound.
    Stop {
        /// The service.
        service: usize,
        /// The cap on each call's deadline, ms.
        cap: Option<Millis>,
    },
    /// Promote the service's replica here.
    Promote(usize),
    /// Demote it here.
    Demote(usize),
    /// One monitor round of the service's resources.
    Monitor {
        /// The service.
        service: usize,
        /// The round's number (its answer names it).
        round: u64,
        /// Whether the role is promoted here (the resources that follow the role
        /// are monitored too).
        promoted: bool,
    },
    /// After a failed stop: probe every resource; is anything left running?
    Verify(usize),
    /// Fence a node with the fence agent.
    Fence {
        /// The node.
        node: NodeId,
        /// Its incarnation as last known here.
        incarnation: u64,
    },
}

/// A finished [`Job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// A start round: ok, or the failure.
    Started(usize, Result<(), Failure>),
    /// A stop round: whether every stop succeeded.
    Stopped(usize, bool),
    /// A promotion.
    Promoted(usize, Result<(), Failure>),
    /// A demotion: whether it succeeded.
    Demoted(usize, bool),
    /// A monitor round.
    Monitored {
        /// The service.
        service: usize,
        /// The round it answers.
        round: u64,
        /// Healthy, or the failure.
        result: Result<(), Failure>,
        /// The replica's promotion score (promotable services).
        score: Option<Promotion>,
    },
    /// A probe after a failed stop: `true` when every resource is found
    /// stopped (a probe that fails is "may be running").
    Verified(usize, bool),
    /// A fence: whether the agent confirmed the node off.
    Fenced(NodeId, u64, bool),
}

/// The answer to a witness operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessAnswer {
    /// When the operation was asked for (the driver's clock).
    pub asked: Millis,
    /// What it saw, or why it failed.
    pub result: Result<Sighting, String>,
}

/// Everything the driver does outside itself.
pub trait NodeIo {
    /// The node's monotonic clock, ms.
    fn now(&self) -> Millis;
    /// Send heartbeats (each on its link, to every peer).
    fn send(&mut self, packets: Vec<Heartbeat>);
    /// Start agent or fence work; report back with [`Driver::done`].
    fn run(&mut self, job: Job);
    /// Start a witness operation asked for at `asked`; report back with
    /// [`Driver::witness_answer`].
    fn witness(&mut self, op: LeaseOp, asked: Millis);
    /// Whether this node passes its health checks, and when the last passing
    /// round began (`None`: no checks configured).
    fn health(&mut self) -> (bool, Option<Millis>);
    /// Renew the guardian's lease with what the services hold (by phase).
    fn guard(&mut self, phases: &[Phase]);
    /// The node left cleanly holding nothing: the guardian stands down.
    fn dismiss_guardian(&mut self);
    /// End whatever processes of service `service` still run (its stop overran
    /// the self-fence bound without quorum); how many were ended.
    fn end_processes(&mut self, service: usize) -> Result<usize, String>;
    /// Pet the hardware watchdog, if one is armed.
    fn pet_watchdog(&mut self) {}
    /// The node switched to the config staged for a reload: `continues[i]`
    /// is the index the new service `i` had (`None`: added, or restarted with
    /// a new config). Work finished after this for a service under its old
    /// index must not reach the driver (only monitor rounds can be under
    /// way: a switch waits for every other job).
    fn switched(&mut self, continues: &[Option<usize>]);
}

/// How long after its switch a node still admits heartbeats of the config it
/// ran before, ms: the members switch as they finish stopping what the
/// change retires. A member that has not switched by then is not heard (it is
/// fenced, or waited for, like any lost node).
pub const SWITCH_WINDOW_MS: Millis = 120_000;

/// How a clean stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every service stopped; the others were told this node left holding nothing.
    Clean,
    /// A stop failed: the service may still run here, so this node did not say
    /// it holds nothing (the others fence it; its guardian ends what it can).
    StopFailed,
}

/// Why a failed start or stop is being verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verifying {
    Start,
    Stop,
}

/// Recurring monitor rounds, one at a time per service.
struct Monitors {
    /// When each service's next round is due.
    next: Vec<Millis>,
    /// Each service's running round: its number, when it began, and its deadline.
    running: Vec<Option<(u64, Millis, Millis)>>,
    rounds: u64,
}

/// The witness as the driver sees it.
struct Witness {
    /// Half of this is how long an answer counts.
    lease: Millis,
    /// When the operation under way was asked for.
    in_flight: Option<Millis>,
    /// The latest answer.
    latest: Option<WitnessAnswer>,
}

impl Witness {
    /// What the state machine may count at `now`.
    fn sight(&self, now: Millis) -> WitnessSight {
        let fresh = |asked: Millis| now.saturating_sub(asked) <= self.lease / 2;
        let stuck = self
            .in_flight
            .is_some_and(|asked| now.saturating_sub(asked) > self.lease / 2);
        match &self.latest {
            Some(WitnessAnswer {
                asked,
                result: Ok(s),
            }) if fresh(*asked) => WitnessSight {
                holder: s.holder,
                stalled: s.stalled,
                reachable: !stuck,
            },
            Some(WitnessAnswer { result: Err(_), .. }) => WitnessSight {
                reachable: false,
                ..WitnessSight::default()
            },
            _ => WitnessSight {
                reachable: !stuck,
                ..WitnessSight::default()
            },
        }
    }

    /// Why the witness does not count now, if it does not.
    fn problem(&self, now: Millis) -> Option<String> {
        if let Some(WitnessAnswer { result: Err(e), .. }) = &self.latest {
            return Some(e.clone());
        }
        let asked = self.in_flight?;
        (now.saturating_sub(asked) > self.lease / 2).then(|| {
            format!(
                "the witness storage has not answered for {} ms; counting the witness as not held",
                now.saturating_sub(asked)
            )
        })
    }
}

/// One node: its state machine and the shell around it.
pub struct Driver {
    node: ClusterNode,
    shells: Vec<ServiceShell>,
    names: BTreeMap<NodeId, String>,
    observer: Observer,
    events: Vec<Change>,
    interval: Millis,
    self_fence: Millis,
    guardian_lease: Millis,
    next_tick: Millis,
    tick_soon: bool,
    /// When the last turn was (freeze detection).
    last_turn: Option<Millis>,
    /// This turn follows a freeze: nothing is monitored in it.
    resumed: bool,
    /// Since when this node has been without quorum, as it experienced it.
    no_quorum_since: Option<Millis>,
    /// Per service: the stop cap ended its processes during the current stop.
    capped: Vec<bool>,
    verifying: Vec<Option<Verifying>>,
    monitors: Monitors,
    witness: Option<Witness>,
    last_failure: Vec<Option<String>>,
    /// The watchdog is not being petted (said once).
    unpetted: bool,
    exit: Option<Exit>,
    /// The shells of the services of the config staged for a reload.
    staged_shells: Vec<ServiceShell>,
}

impl Driver {
    /// Node `me` of `cluster`, booting at `now` as `incarnation`; `shells` per
    /// service, `names` of the nodes for what it records.
    pub fn new(
        cluster: &ClusterSpec,
        me: NodeId,
        incarnation: u64,
        now: Millis,
        shells: Vec<ServiceShell>,
        names: BTreeMap<NodeId, String>,
    ) -> Driver {
        assert_eq!(shells.len(), cluster.services.len(), "a shell per service");
        let bounds = cluster.bounds;
        let n = shells.len();
        let ms = |d: std::time::Duration| d.as_millis() as Millis;
        Driver {
            node: ClusterNode::new(cluster, me, incarnation, now),
            observer: Observer::new(names.clone(), n),
            names,
            events: Vec::new(),
            interval: ms(bounds.membership.interval).max(1),
            self_fence: ms(bounds.self_fence),
            guardian_lease: ms(bounds.guardian_lease()),
            next_tick: now,
            tick_soon: true,
            last_turn: None,
            resumed: false,
            no_quorum_since: None,
            capped: vec![false; n],
            verifying: vec![None; n],
            monitors: Monitors {
                next: vec![0; n],
                running: vec![None; n],
                rounds: 0,
            },
            witness: (cluster.quorum.witness_votes > 0).then(|| Witness {
                lease: ms(bounds.witness_lease()),
                in_flight: None,
                latest: None,
            }),
            shells,
            last_failure: vec![None; n],
            unpetted: false,
            exit: None,
            staged_shells: Vec::new(),
        }
    }

    /// The state machine.
    pub fn node(&self) -> &ClusterNode {
        &self.node
    }

    /// The state machine, for what only the simulator's checks change
    /// ([`ClusterNode::skip_claim_acks`]).
    #[doc(hidden)]
    pub fn node_mut(&mut self) -> &mut ClusterNode {
        &mut self.node
    }

    /// The latest failure of service `i` here, in words.
    pub fn last_failure(&self, i: usize) -> Option<&str> {
        self.last_failure[i].as_deref()
    }

    /// Why the witness does not count now, if it does not.
    pub fn witness_problem(&self, now: Millis) -> Option<String> {
        self.witness.as_ref().and_then(|w| w.problem(now))
    }

    /// What was decided since the last call, in words (the daemon logs and
    /// records it; the simulator prints it as its timeline).
    pub fn take_events(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.events)
    }

    /// How a clean stop ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// The latest this node may sleep until (its clock): the next tick, monitor
    /// round or deadline, or witness answer going stale.
    pub fn next_wakeup(&self) -> Millis {
        let mut at = if self.tick_soon { 0 } else { self.next_tick };
        if let Some(expiry) = self.node.membership().next_expiry() {
            at = at.min(expiry);
        }
        for i in 0..self.shells.len() {
            at = at.min(match self.monitors.running[i] {
                Some((_, _, deadline)) => deadline + 1,
                None if self.node.wants_fresh_score(i) => 0,
                None if self.monitored(i) => self.monitors.next[i],
                None => Millis::MAX,
            });
        }
        if let Some(w) = &self.witness
            && let Some(a) = &w.latest
        {
            at = at.min(a.asked + w.lease / 2 + 1);
        }
        at
    }

    /// A heartbeat arrived at `now` (authenticated and replay-checked).
    pub fn receive(&mut self, now: Millis, hb: &Heartbeat) {
        self.node.on_heartbeat(now, hb);
    }

    /// One turn of the node's loop, after its inputs were taken in: tick if one
    /// is due, launch and supervise monitors, end overrunning stops, and see
    /// whether a clean stop is over.
    pub fn turn(&mut self, io: &mut impl NodeIo) {
        let now = io.now();
        self.notice_freeze(now);
        let expired = self
            .node
            .membership()
            .next_expiry()
            .is_some_and(|t| now >= t);
        if self.witness_news(now) || self.node.claim_news() || self.node.membership().news() {
            self.tick_soon = true;
        }
        if self.tick_soon || expired || now >= self.next_tick {
            self.tick(io, now);
        }
        if !self.resumed {
            self.launch_monitors(io, now);
        }
        self.give_up_late_monitors(io, now);
        self.switch_when_ready(io, now);
        self.check_exit(io, now);
    }

    /// Stage a reloaded config (`shells` per staged service): this node
    /// switches to it once every member has staged it and what it retires
    /// has stopped (see [`ClusterNode::stage`]).
    pub fn stage(&mut self, staged: Staged, shells: Vec<ServiceShell>) {
        assert_eq!(shells.len(), staged.services.len(), "a shell per service");
        let config = staged.config;
        self.node.stage(staged);
        self.staged_shells = shells;
        self.tick_soon = true;
        self.record(
            "reload",
            None,
            format!(
                "config {config:016x} staged: the cluster switches to it once every member has staged it"
            ),
        );
    }

    /// Give up a staged config that has not been switched to.
    pub fn unstage(&mut self) {
        if self.node.staged().is_some() {
            self.node.unstage();
            self.staged_shells.clear();
            self.record("reload", None, "the staged config was dropped".into());
        }
    }

    /// Switch to the staged config once the state machine is ready and no
    /// failed start or stop is being verified; the shell's per-service state
    /// follows the services to their new indices.
    fn switch_when_ready(&mut self, io: &mut impl NodeIo, now: Millis) {
        if self.node.leaving()
            || !self.node.switch_ready()
            || self.verifying.iter().any(Option::is_some)
        {
            return;
        }
        let from = self.node.config();
        let continues = self.node.switch(now, SWITCH_WINDOW_MS);
        fn follow<T: Clone>(old: &[T], continues: &[Option<usize>], fresh: T) -> Vec<T> {
            continues
                .iter()
                .map(|c| c.map_or(fresh.clone(), |o| old[o].clone()))
                .collect()
        }
        self.shells = std::mem::take(&mut self.staged_shells);
        self.capped = follow(&self.capped, &continues, false);
        self.verifying = vec![None; continues.len()];
        self.last_failure = follow(&self.last_failure, &continues, None);
        // Rounds under way are dropped (their answers name the old indices);
        // the services continued are monitored again at once.
        self.monitors.running = vec![None; continues.len()];
        self.monitors.next = vec![now; continues.len()];
        self.observer.renumber(&continues);
        io.switched(&continues);
        self.tick_soon = true;
        self.record(
            "reload",
            None,
            format!(
                "switched from config {from:016x} to {:016x}: {} service(s) continue, {} begin",
                self.node.config(),
                continues.iter().flatten().count(),
                continues.iter().filter(|c| c.is_none()).count()
            ),
        );
    }

    /// Stop cleanly (SIGTERM): services move off as their stops complete.
    pub fn leave(&mut self) {
        if self.node.leaving() {
            return;
        }
        self.node.begin_leaving();
        self.tick_soon = true;
        self.record(
            "daemon",
            None,
            "stopping cleanly: the services held here stop and move to other nodes".into(),
        );
    }

    /// Agent or fence work finished.
    pub fn done(&mut self, io: &mut impl NodeIo, done: Done) {
        let now = io.now();
        let service = match &done {
            Done::Started(i, _)
            | Done::Stopped(i, _)
            | Done::Verified(i, _)
            | Done::Promoted(i, _)
            | Done::Demoted(i, _) => Some(*i),
            Done::Monitored { service, .. } => Some(*service),
            Done::Fenced(..) => None,
        };
        if service.is_some_and(|i| i >= self.shells.len()) {
            // Work of a service a reload removed (the I/O drops such answers).
            return;
        }
        let commands = match done {
            Done::Started(i, result) => self.started(io, i, result, now),
            Done::Stopped(i, ok) => self.stopped(io, i, ok, now),
            Done::Verified(i, all_stopped) => self.verified(i, all_stopped, now),
            Done::Promoted(i, result) => {
                let result = result.map_err(|f| self.failed(i, "promotion", f));
                self.node.promote_done(i, result, now)
            }
            Done::Demoted(i, ok) => self.node.demote_done(i, ok, now),
            Done::Monitored {
                service,
                round,
                result,
                score,
            } => self.monitored_round(service, round, result, score, now),
            Done::Fenced(target, incarnation, ok) => {
                let name = name_of(&self.names, target);
                self.record(
                    "fence",
                    None,
                    if ok {
                        format!("{name} fenced: the fence agent confirmed it off")
                    } else {
                        format!("the fence of {name} failed; it is tried again in a second")
                    },
                );
                self.node.fence_done(target, incarnation, ok, now);
                // A confirmed fence may free a service or the witness: decide now.
                self.tick_soon = true;
                Vec::new()
            }
        };
        self.carry_out(io, commands);
        self.observe(now);
    }

    /// A witness operation answered.
    pub fn witness_answer(&mut self, answer: WitnessAnswer) {
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        w.in_flight = None;
        w.latest = Some(answer);
    }

    /// An operator's move (see [`ClusterNode::move_service`]).
    pub fn move_service(
        &mut self,
        service: usize,
        to: NodeId,
        until: Option<Millis>,
        force: bool,
    ) -> Result<(), String> {
        self.node.move_service(service, to, until, force)?;
        self.tick_soon = true;
        Ok(())
    }

    /// An operator's standby or maintenance change here at `unix_ms` (see
    /// [`ClusterNode::change_admin`]); the settings now.
    pub fn change_admin(&mut self, unix_ms: u64, change: impl FnOnce(&mut Admin)) -> Admin {
        let admin = self.node.change_admin(unix_ms, change);
        self.tick_soon = true;
        admin
    }

    /// Adopt saved (or heard) operators' settings if newer than this node's.
    pub fn adopt_admin(&mut self, admin: Admin) {
        if self.node.adopt_admin(admin) {
            self.tick_soon = true;
        }
    }

    /// An operator ends a move taken here.
    pub fn clear_move(&mut self, service: usize) {
        self.node.clear_move(service);
        self.tick_soon = true;
    }

    /// An operator's `baton clear` (see [`ClusterNode::clear`]).
    pub fn clear(&mut self, io: &mut impl NodeIo, service: usize) {
        let commands = self.node.clear(service);
        self.tick_soon = true;
        self.carry_out(io, commands);
    }

    fn record(&mut self, kind: &'static str, service: Option<usize>, text: String) {
        self.events.push(Change {
            kind,
            service,
            text,
        });
    }

    fn observe(&mut self, now: Millis) {
        let changes = self.observer.observe(&self.node, now);
        self.events.extend(changes);
    }

    fn monitored(&self, i: usize) -> bool {
        self.shells[i].monitor_every > 0
            && self.node.service(i).phase() == Phase::Running
            && !self.node.admin().in_maintenance(i)
    }

    /// A turn that comes this late means the daemon was frozen (SIGSTOP, a
    /// hung VM): its guardian has ended the services. Learn the membership
    /// first; monitor nothing in this turn.
    fn notice_freeze(&mut self, now: Millis) {
        let gap = self.last_turn.map_or(0, |t| now.saturating_sub(t));
        self.resumed = gap > self.guardian_lease;
        self.last_turn = Some(now);
        if self.resumed {
            self.tick_soon = true;
            self.record(
                "daemon",
                None,
                format!(
                    "this daemon was frozen for {gap} ms: its guardian stopped the services held here"
                ),
            );
        }
    }

    /// Whether the witness's holder (live or stalled) changed since the state
    /// machine last heard.
    fn witness_news(&self, now: Millis) -> bool {
        let known = self.node.witness();
        self.witness.as_ref().is_some_and(|w| {
            let sight = w.sight(now);
            sight.holder != known.holder || sight.stalled != known.stalled
        })
    }

    fn tick(&mut self, io: &mut impl NodeIo, now: Millis) {
        self.tick_soon = false;
        self.next_tick = now + self.interval;
        let (healthy, last_pass) = io.health();
        self.node.set_health(healthy, last_pass);
        self.node.follow_membership(now);
        self.ask_witness(io, now);
        let (packets, commands) = self.node.tick(now);
        io.send(packets);
        self.observe(now);
        for c in &commands {
            if let Command::Fence { node, .. } = c {
                let text = format!(
                    "fencing {}: it left the membership while it may hold services, its stop failed, or it holds the witness this partition needs and stopped renewing it",
                    name_of(&self.names, *node)
                );
                self.record("fence", None, text);
            }
        }
        self.carry_out(io, commands);
        if self.node.quorate() {
            self.no_quorum_since = None;
        } else {
            self.no_quorum_since.get_or_insert(now);
        }
        self.cap_overrunning_stops(io, now);
        io.guard(&self.node.phases());
        self.watchdog(io, now);
    }

    /// Ask for the witness operation this node's role calls for (one at a
    /// time), and tell the state machine what a fresh answer says.
    fn ask_witness(&mut self, io: &mut impl NodeIo, now: Millis) {
        let Some(task) = self.node.witness_task() else {
            return;
        };
        let fenced = self.node.fenced_since();
        let view = self.node.membership().view().1.clone();
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        if task == super::node::WitnessTask::Release {
            // Letting it go: this node stops counting it before the write.
            w.latest = None;
        }
        if w.in_flight.is_none() {
            let op = match task {
                super::node::WitnessTask::Look => LeaseOp::Look,
                super::node::WitnessTask::Lead => LeaseOp::Lead { view, fenced },
                super::node::WitnessTask::Release => LeaseOp::Release,
            };
            w.in_flight = Some(now);
            io.witness(op, now);
        }
        let sight = w.sight(now);
        self.node.set_witness(sight);
    }

    fn carry_out(&mut self, io: &mut impl NodeIo, commands: Vec<Command>) {
        let quorate = self.node.quorate();
        for c in commands {
            let job = match c {
                Command::Start(i) => Job::Start(
                    i,
                    self.node
                        .fenced_since()
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect(),
                ),
                Command::Stop(i) => {
                    self.capped[i] = false;
                    // Without quorum, stops are bounded by the self-fence bound:
                    // the survivors take over once it has passed.
                    Job::Stop {
                        service: i,
                        cap: (!quorate).then_some(self.self_fence),
                    }
                }
                Command::Promote(i) => Job::Promote(i),
                Command::Demote(i) => Job::Demote(i),
                Command::Fence { node, incarnation } => Job::Fence { node, incarnation },
            };
            io.run(job);
        }
    }

    /// Record a failed start or promotion; the recovery it asks for.
    fn failed(&mut self, i: usize, what: &str, (recovery, failure): Failure) -> Recovery {
        self.record(
            "failure",
            Some(i),
            format!("{what} failed here: {failure}; recovery {recovery}"),
        );
        self.last_failure[i] = Some(failure);
        recovery
    }

    fn started(
        &mut self,
        io: &mut impl NodeIo,
        i: usize,
        result: Result<(), Failure>,
        now: Millis,
    ) -> Vec<Command> {
        self.monitors.next[i] = now + self.shells[i].monitor_every;
        match result.map_err(|f| self.failed(i, "start", f)) {
            // A start that failed and whose rollback stop failed too: check
            // what is left before asking for a fence.
            Err(Recovery::Fence) if self.node.service(i).phase() == Phase::Starting => {
                self.verifying[i] = Some(Verifying::Start);
                io.run(Job::Verify(i));
                Vec::new()
            }
            result => self.node.start_done(i, result, now),
        }
    }

    fn stopped(&mut self, io: &mut impl NodeIo, i: usize, ok: bool, now: Millis) -> Vec<Command> {
        if ok || !self.node.service(i).phase().holds() {
            // A node without quorum may now let the witness go: decide now.
            self.tick_soon = true;
            return self.node.stop_done(i, ok, now);
        }
        self.record(
            "failure",
            Some(i),
            "stop failed here; probing its resources: whatever is found stopped counts as stopped"
                .into(),
        );
        self.verifying[i] = Some(Verifying::Stop);
        io.run(Job::Verify(i));
        Vec::new()
    }

    fn verified(&mut self, i: usize, all_stopped: bool, now: Millis) -> Vec<Command> {
        let Some(why) = self.verifying[i].take() else {
            return Vec::new();
        };
        if all_stopped {
            self.record(
                "stop",
                Some(i),
                "every resource is found stopped: the stop is complete".into(),
            );
        }
        match why {
            Verifying::Stop => self.node.stop_done(i, all_stopped, now),
            Verifying::Start => {
                let recovery = if all_stopped {
                    Recovery::RestartHere
                } else {
                    Recovery::Fence
                };
                self.node.start_done(i, Err(recovery), now)
            }
        }
    }

    fn monitored_round(
        &mut self,
        i: usize,
        round: u64,
        result: Result<(), Failure>,
        score: Option<Promotion>,
        now: Millis,
    ) -> Vec<Command> {
        let Some((_, began, _)) = self.monitors.running[i].filter(|(r, ..)| *r == round) else {
            return Vec::new();
        };
        self.monitors.running[i] = None;
        self.monitors.next[i] = now + self.shells[i].monitor_every;
        // A round that ends after the service went into maintenance is not
        // acted on: baton no longer manages it.
        if self.node.service(i).phase() != Phase::Running || self.node.admin().in_maintenance(i) {
            return Vec::new();
        }
        self.node.set_promotion(i, score, began);
        match result {
            Ok(()) => Vec::new(),
            Err((recovery, failure)) => {
                self.record(
                    "failure",
                    Some(i),
                    format!("failed here: {failure}; recovery {recovery}"),
                );
                self.last_failure[i] = Some(failure);
                self.node.service_failed(i, now, recovery)
            }
        }
    }

    fn launch_monitors(&mut self, io: &mut impl NodeIo, now: Millis) {
        for i in 0..self.shells.len() {
            let due = self.monitored(i) && now >= self.monitors.next[i];
            if self.monitors.running[i].is_some() || !(due || self.node.wants_fresh_score(i)) {
                continue;
            }
            self.monitors.rounds += 1;
            let round = self.monitors.rounds;
            let deadline = now + self.shells[i].monitor_budget + 1000;
            self.monitors.running[i] = Some((round, now, deadline));
            let promoted = self.node.service(i).role() == Role::Promoted;
            io.run(Job::Monitor {
                service: i,
                round,
                promoted,
            });
        }
    }

    /// Rounds past their deadline are given up on: a failed monitor (an agent
    /// that runs in this process ignored its deadline).
    fn give_up_late_monitors(&mut self, io: &mut impl NodeIo, now: Millis) {
        for i in 0..self.shells.len() {
            let Some((_, _, deadline)) = self.monitors.running[i] else {
                continue;
            };
            if now <= deadline {
                continue;
            }
            self.monitors.running[i] = None;
            self.monitors.next[i] = now + self.shells[i].monitor_every;
            if self.node.service(i).phase() != Phase::Running {
                continue;
            }
            let failure = format!(
                "the monitor round did not answer within {} ms (an agent ignored its deadline)",
                self.shells[i].monitor_budget + 1000
            );
            self.record("failure", Some(i), failure.clone());
            self.last_failure[i] = Some(failure);
            let commands = self.node.service_failed(i, now, Recovery::RestartHere);
            self.carry_out(io, commands);
        }
    }

    /// A stop that began while this node was quorate has its full time; once
    /// quorum has been gone for the self-fence bound (as this node experienced
    /// it), the survivors may take over, so whatever of the service still runs
    /// here is ended now: a stop under way, or one that failed (then checked
    /// again). Once per stop.
    fn cap_overrunning_stops(&mut self, io: &mut impl NodeIo, now: Millis) {
        let overran = self
            .no_quorum_since
            .is_some_and(|t| now.saturating_sub(t) >= self.self_fence);
        for i in 0..self.shells.len() {
            let phase = self.node.service(i).phase();
            if !matches!(phase, Phase::Stopping | Phase::StopFailed) {
                self.capped[i] = false;
                continue;
            }
            if !overran || std::mem::replace(&mut self.capped[i], true) {
                continue;
            }
            match io.end_processes(i) {
                Ok(0) => {}
                Ok(n) => self.record(
                    "failure",
                    Some(i),
                    format!("no quorum for the self-fence bound and the stop still runs: ended {n} of its processes"),
                ),
                Err(e) => self.record("failure", Some(i), format!("cannot end its processes: {e}")),
            }
            if phase == Phase::StopFailed && self.verifying[i].is_none() {
                self.verifying[i] = Some(Verifying::Stop);
                io.run(Job::Verify(i));
            }
        }
    }

    /// Pet the watchdog while this node is healthy: quorate, or holding
    /// nothing that shares anything, or within the self-fence bound of
    /// losing quorum.
    fn watchdog(&mut self, io: &mut impl NodeIo, now: Millis) {
        let holds = self
            .node
            .services()
            .iter()
            .any(|s| s.phase().holds() && !s.spec().keep_without_quorum);
        let within = self
            .no_quorum_since
            .is_none_or(|t| now.saturating_sub(t) < self.self_fence);
        if !holds || within {
            self.unpetted = false;
            io.pet_watchdog();
        } else if !std::mem::replace(&mut self.unpetted, true) {
            self.record(
                "daemon",
                None,
                "no quorum and services still held after self_fence_ms: the watchdog (if armed) will reset this machine".into(),
            );
        }
    }

    /// Once a clean stop has stopped everything: the last report and the
    /// guardian dismissed (or, after a failed stop, neither).
    fn check_exit(&mut self, io: &mut impl NodeIo, now: Millis) {
        if !self.node.leaving() || self.exit.is_some() {
            return;
        }
        let settled = self.verifying.iter().all(Option::is_none)
            && self.node.services().iter().all(|s| {
                matches!(s.phase(), Phase::Stopped | Phase::StopFailed)
                    && matches!(s.role(), Role::Replica | Role::Promoted)
            });
        if !settled {
            return;
        }
        if self.node.holds_nothing() {
            // Sent a few times: heartbeats are datagrams.
            for _ in 0..3 {
                let packets = self.node.leave(now);
                io.send(packets);
            }
            io.dismiss_guardian();
            self.record(
                "daemon",
                None,
                "left the cluster holding nothing: no node needs to fence or wait for it".into(),
            );
            self.exit = Some(Exit::Clean);
        } else {
            self.record(
                "daemon",
                None,
                "exiting with a failed stop: the service may still run here, so the others fence this node".into(),
            );
            self.exit = Some(Exit::StopFailed);
        }
    }
}
