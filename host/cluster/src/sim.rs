//! The cluster simulator: every node's real state machine (`ClusterNode`) on a
//! virtual clock, over a simulated network (per-link, per-direction cuts, loss,
//! duplication, delay and reordering; packets through the real codec and replay
//! guard), with crashes and restarts, pauses, agents whose starts, stops,
//! promotions and fences take time, monitor failures, health checks and the
//! witness lease as the daemon runs it. `baton scenario simulate` drives it
//! with an administrator's fault script or seeded random schedules; the test
//! suite runs 200 seeded schedules through it.
//!
//! Checked after **every** millisecond ([`Sim::violation`]): no service that must
//! run once is held (from the start command until its stop completes) by two
//! nodes at once, and no promotable service's promoted role (from the promote
//! command until its demotion or stop completes) is held by two nodes at once.
//! Each promotable service models synchronous replication: the promoted node
//! writes every 10 ms, each replica it hears gets the write with a chance of
//! 70 %, and a write is acknowledged once some replica has it. Checked at every
//! promotion: the promoted replica has at least the acknowledged position its
//! node knows, and no running replica in its view has more data.
//!
//! Checked once the topology has been still for longer than the timeouts
//! ([`Sim::check`]): every live node's view is its component of the graph of
//! node pairs that hear each other (directly or relayed), connected nodes share
//! one view and epoch, a quorate partition runs every service it can (once, or
//! on every able member for a clone or a promotable service's replicas, with one
//! promoted), and nodes without quorum hold nothing but a clone that keeps
//! running without quorum.

use super::changes::{Change, Observer, name_of};
use super::membership::{Millis, Timing};
use super::node::{ClusterNode, ClusterSpec, Command, Phase, Role};
use super::placement::Strategy;
use super::wire::{ClusterKey, Heartbeat, NodeId, ReplayGuard, decode, encode};
use baton_plugin_api::{Promotion, Recovery};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// SplitMix64: a tiny deterministic generator, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    /// The next number.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with a chance of `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One fault, repair or operator action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node crashes (power off): its processes die with it.
    Kill(NodeId),
    /// A killed node boots again, as a new incarnation.
    Start(NodeId),
    /// The node loses every link to every other node.
    Isolate(NodeId),
    /// Packets from `from` to `to` are lost on `link` (every link: `None`), and
    /// from `to` to `from` too when `both`.
    Cut {
        /// The sender.
        from: NodeId,
        /// The receiver.
        to: NodeId,
        /// The link, or every link.
        link: Option<u8>,
        /// Both directions.
        both: bool,
    },
    /// Every one of the node's links on `link` is cut, both ways.
    CutLink(NodeId, u8),
    /// Every network, witness and health fault is repaired (killed nodes stay
    /// down: `start` them).
    Heal,
    /// The node's daemon stalls this long (its agents keep working).
    Pause(NodeId, Millis),
    /// A monitor finds the service failed on the node; the agent's error asks
    /// for `recovery`.
    Fail(usize, NodeId, Recovery),
    /// The node fails its health checks, or passes them again.
    Health(NodeId, bool),
    /// The witness's storage is lost for one node, or for every node.
    WitnessLost(Option<NodeId>),
    /// The witness's storage is back for every node.
    WitnessBack,
    /// An operator moves the service to the node (`baton move`), on a quorate
    /// member, for this long (`None`: until cleared).
    Move(usize, NodeId, Option<Millis>),
    /// Loss and duplication in %, and delays up to this many ms, on every link.
    Weather(u64, u64, Millis),
    /// Time passes.
    Wait(Millis),
}

/// Agent work a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Start,
    Stop,
    Promote,
    Demote,
}

struct Node {
    state: ClusterNode,
    guard: ReplayGuard,
    incarnation: u64,
    phase: Millis,
    /// Agent work in progress: (service, finishes at, what).
    pending: Vec<(usize, Millis, Work)>,
    /// Services whose resources exist here (from the start command until the
    /// stop completes).
    holding: BTreeSet<usize>,
    /// Promotable services promoted here (from the promote command until the
    /// demotion or the stop completes).
    promoted: BTreeSet<usize>,
    /// Fences in progress from this node: (target, incarnation, finishes at).
    fences: Vec<(NodeId, u64, Millis)>,
    observer: Option<Observer>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: std::cmp::Reverse<Millis>,
    order: std::cmp::Reverse<u64>,
    to: NodeId,
    bytes: Vec<u8>,
}

/// One entry of the timeline: a node's decision, a fence, or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Virtual time, ms since the cluster's cold start.
    pub at: Millis,
    /// The node it happened on (`None`: a fault applied from outside).
    pub node: Option<NodeId>,
    /// The change, or `fault` / `fence` with its text.
    pub change: Change,
}

/// A simulated cluster.
pub struct Sim {
    spec: ClusterSpec,
    rng: Rng,
    key: ClusterKey,
    ids: Vec<NodeId>,
    names: BTreeMap<NodeId, String>,
    nodes: BTreeMap<NodeId, Node>,
    crashed: BTreeSet<NodeId>,
    paused_until: BTreeMap<NodeId, Millis>,
    /// (from, to, link) blocked.
    cut: BTreeSet<(NodeId, NodeId, u8)>,
    loss: u64,
    dup: u64,
    max_delay: Millis,
    queue: BinaryHeap<InFlight>,
    sent: u64,
    now: Millis,
    log: Vec<String>,
    violation: Option<String>,
    /// Fences and stops fail now and then.
    chaos: bool,
    /// Targets whose last fence failed.
    fence_failed: BTreeSet<NodeId>,
    /// The witness lease: (holder, expires).
    lease: Option<(NodeId, Millis)>,
    /// Nodes that cannot reach the witness's storage.
    witness_cut: BTreeSet<NodeId>,
    /// Nodes failing their health checks.
    unhealthy: BTreeSet<NodeId>,
    skip_claim_acks: bool,
    /// Replicated data of each promotable service on each node: (generation,
    /// position). Kept across crashes (it is on disk).
    data: BTreeMap<(usize, NodeId), (u64, u64)>,
    /// The highest generation any promotion started.
    generation: u64,
    promotions: u64,
    timeline: Option<Vec<Event>>,
}

impl Sim {
    /// A cluster of `spec` (its nodes, links, timing, quorum, services and
    /// whether it fences), named `names`, from a cold start. `seed` drives every
    /// random choice (agent durations, boot phases, the faults of
    /// [`Sim::random_fault`]); with `chaos`, fences and stops fail now and then.
    pub fn new(spec: &ClusterSpec, names: BTreeMap<NodeId, String>, seed: u64, chaos: bool) -> Sim {
        Sim::with(spec, names, seed, chaos, false)
    }

    /// As [`Sim::new`], with nodes that start claimed services without the
    /// members' acknowledgements: to show that the checks catch what that step
    /// prevents.
    pub fn without_claim_acks(
        spec: &ClusterSpec,
        names: BTreeMap<NodeId, String>,
        seed: u64,
    ) -> Sim {
        Sim::with(spec, names, seed, true, true)
    }

    fn with(
        spec: &ClusterSpec,
        names: BTreeMap<NodeId, String>,
        seed: u64,
        chaos: bool,
        skip_claim_acks: bool,
    ) -> Sim {
        let ids = spec.nodes.clone();
        let promotable: Vec<usize> = spec
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.strategy == Strategy::Promotable)
            .map(|(i, _)| i)
            .collect();
        let data = promotable
            .iter()
            .flat_map(|s| ids.iter().map(move |id| ((*s, *id), (1, 0))))
            .collect();
        let mut sim = Sim {
            spec: spec.clone(),
            rng: Rng(seed),
            key: ClusterKey::new("sim", b"simulation key, thirty-two bytes").expect("a valid key"),
            ids: ids.clone(),
            names,
            nodes: BTreeMap::new(),
            crashed: BTreeSet::new(),
            paused_until: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0,
            dup: 0,
            max_delay: 1,
            queue: BinaryHeap::new(),
            sent: 0,
            now: 0,
            log: Vec::new(),
            violation: None,
            chaos,
            fence_failed: BTreeSet::new(),
            lease: None,
            witness_cut: BTreeSet::new(),
            unhealthy: BTreeSet::new(),
            skip_claim_acks,
            data,
            generation: 1,
            promotions: 0,
            timeline: None,
        };
        for id in ids {
            sim.boot(id, 1);
        }
        sim
    }

    /// Keep a timeline of every node's decisions (see [`Sim::timeline`]).
    pub fn record_timeline(&mut self) {
        self.timeline = Some(Vec::new());
        for node in self.nodes.values_mut() {
            node.observer = Some(Observer::new(self.names.clone(), self.spec.services.len()));
        }
    }

    /// The timeline so far (empty unless [`Sim::record_timeline`] was called).
    pub fn timeline(&self) -> &[Event] {
        self.timeline.as_deref().unwrap_or_default()
    }

    /// The virtual time, ms.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The faults applied so far, with their times.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// The first safety violation seen, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// Promotions so far.
    pub fn promotions(&self) -> u64 {
        self.promotions
    }

    /// The cluster's spec.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// A node's state machine, unless the node is down.
    pub fn node(&self, id: NodeId) -> Option<&ClusterNode> {
        (!self.crashed.contains(&id)).then(|| &self.nodes[&id].state)
    }

    /// The nodes that are up, in id order.
    pub fn live(&self) -> Vec<NodeId> {
        self.ids
            .iter()
            .copied()
            .filter(|id| !self.crashed.contains(id))
            .collect()
    }

    /// The node whose view stands for the cluster's: the first live quorate
    /// node, else the first live node.
    pub fn judge(&self) -> Option<NodeId> {
        let live = self.live();
        live.iter()
            .copied()
            .find(|id| self.nodes[id].state.quorum().is_some_and(|q| q.quorate))
            .or(live.first().copied())
    }

    /// Whether loss or duplication is on (views may flap; [`Sim::check`] holds
    /// only without).
    pub fn lossy(&self) -> bool {
        self.loss > 0 || self.dup > 0
    }

    /// How long to let the cluster settle after a fault before [`Sim::check`]:
    /// well beyond detection, the fence wait and a stop on a node that lost
    /// quorum.
    pub fn quiet_ms(&self) -> Millis {
        let b = &self.spec.bounds;
        let t = b.membership;
        let ms = |d: std::time::Duration| d.as_millis() as Millis;
        (ms(b.fence_wait()) + ms(b.self_fence) + 2 * ms(t.report_timeout) + 1000).max(2000)
    }

    fn timing(&self) -> Timing {
        self.spec.bounds.membership
    }

    fn boot(&mut self, id: NodeId, incarnation: u64) {
        let phase = self.rng.below(self.timing().interval.as_millis() as u64);
        let mut state = ClusterNode::new(&self.spec, id, incarnation, self.now);
        if self.skip_claim_acks {
            state.skip_claim_acks();
        }
        let observer = self
            .timeline
            .as_ref()
            .map(|_| Observer::new(self.names.clone(), self.spec.services.len()));
        self.nodes.insert(
            id,
            Node {
                state,
                guard: ReplayGuard::default(),
                incarnation,
                phase,
                pending: Vec::new(),
                holding: BTreeSet::new(),
                promoted: BTreeSet::new(),
                fences: Vec::new(),
                observer,
            },
        );
    }

    fn running(&self, id: NodeId) -> bool {
        !self.crashed.contains(&id) && self.paused_until.get(&id).is_none_or(|t| *t <= self.now)
    }

    fn note(
        &mut self,
        node: Option<NodeId>,
        kind: &'static str,
        service: Option<usize>,
        text: String,
    ) {
        if let Some(t) = self.timeline.as_mut() {
            t.push(Event {
                at: self.now,
                node,
                change: Change {
                    kind,
                    service,
                    text,
                },
            });
        }
    }

    /// Let `ms` milliseconds pass.
    pub fn run(&mut self, ms: Millis) {
        for _ in 0..ms {
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += 1;
        for id in self.ids.clone() {
            if !self.crashed.contains(&id) {
                self.step_node(id);
            }
        }
        if self.now.is_multiple_of(10) {
            for s in self.promotable() {
                self.replicate(s);
            }
        }
        self.deliver();
        self.check_single_owner();
    }

    fn promotable(&self) -> Vec<usize> {
        (0..self.spec.services.len())
            .filter(|i| self.spec.services[*i].strategy == Strategy::Promotable)
            .collect()
    }

    fn step_node(&mut self, id: NodeId) {
        let now = self.now;
        let running = self.running(id);
        self.finish_fences(id, running);
        let mut commands = self.finish_work(id, running);
        for s in self.promotable() {
            self.report_score(id, s);
        }
        let interval = self.timing().interval.as_millis() as u64;
        let node = &self.nodes[&id];
        // A tick every interval, and at once when a claim can move on (as the
        // daemon does).
        if running && ((now + node.phase).is_multiple_of(interval) || node.state.claim_news()) {
            self.witness_round(id);
            let healthy = !self.unhealthy.contains(&id);
            let node = self.nodes.get_mut(&id).expect("a node");
            node.state.set_health(healthy, healthy.then_some(now));
            let (packets, more) = node.state.tick(now);
            commands.extend(more);
            self.send(id, packets);
        }
        for c in &commands {
            if let Command::Promote(s) = c {
                self.check_promotion(id, *s);
            }
        }
        self.carry_out(id, commands);
        let node = self.nodes.get_mut(&id).expect("a node");
        if let Some(observer) = node.observer.as_mut() {
            let changes = observer.observe(&node.state, now);
            for change in changes {
                self.note(Some(id), change.kind, change.service, change.text);
            }
        }
    }

    fn finish_fences(&mut self, id: NodeId, running: bool) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("a node");
        let mut done = Vec::new();
        node.fences.retain(|&(t, inc, at)| {
            if at <= now && running {
                done.push((t, inc));
                false
            } else {
                true
            }
        });
        for (target, inc) in done {
            // With chaos a fence fails now and then (never twice in a row for one
            // target, so a retry lands within a quiet period); the fencer retries.
            let ok = self.fence_failed.remove(&target) || !(self.chaos && self.rng.chance(20));
            if !ok {
                self.fence_failed.insert(target);
            }
            let target_name = name_of(&self.names, target);
            if ok && !self.crashed.contains(&target) && self.nodes[&target].incarnation == inc {
                self.crash(target);
                self.log.push(format!("t={now} node {id} fenced {target}"));
            }
            let text = if ok {
                format!("fence of {target_name} confirmed")
            } else {
                format!("fence of {target_name} failed; retried")
            };
            self.note(Some(id), "fence", None, text);
            self.nodes
                .get_mut(&id)
                .expect("a node")
                .state
                .fence_done(target, inc, ok, now);
        }
    }

    /// Agent work that completed: the commands the state machine answers with.
    fn finish_work(&mut self, id: NodeId, running: bool) -> Vec<Command> {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("a node");
        // Agents keep working while the daemon is paused; the daemon learns of
        // completions when it runs again.
        let mut done = Vec::new();
        node.pending.retain(|&(svc, at, work)| {
            if at <= now && running {
                done.push((svc, work));
                false
            } else {
                true
            }
        });
        let mut commands = Vec::new();
        for (svc, work) in done {
            let node = self.nodes.get_mut(&id).expect("a node");
            match work {
                Work::Start => commands.extend(node.state.start_done(svc, Ok(()), now)),
                Work::Promote => {
                    commands.extend(node.state.promote_done(svc, Ok(()), now));
                    // A promotion starts a new generation (a database's new timeline).
                    self.generation += 1;
                    self.promotions += 1;
                    let position = self.data[&(svc, id)].1;
                    self.data.insert((svc, id), (self.generation, position));
                }
                Work::Demote => {
                    node.promoted.remove(&svc);
                    commands.extend(node.state.demote_done(svc, true, now));
                }
                Work::Stop => {
                    // With chaos and a fence agent, a stop sometimes fails: the
                    // resources stay while the node is quorate (a fence resolves
                    // it). Without quorum the self-fence bound holds anyway: the
                    // daemon kills the agents' process groups.
                    let ok = !(self.chaos && self.spec.fencing && self.rng.chance(5));
                    let node = self.nodes.get_mut(&id).expect("a node");
                    let quorate = node.state.quorum().is_some_and(|q| q.quorate);
                    if ok || !quorate {
                        node.holding.remove(&svc);
                        node.promoted.remove(&svc);
                    }
                    commands.extend(node.state.stop_done(svc, ok));
                }
            }
        }
        commands
    }

    /// As the daemon does: the partition's leader takes or renews the witness
    /// lease, the others read it; unreachable storage reads as nobody.
    fn witness_round(&mut self, id: NodeId) {
        if self.spec.quorum.witness_votes == 0 {
            return;
        }
        let now = self.now;
        let lease_ms = 2 * self.timing().link_timeout.as_millis() as Millis;
        let node = self.nodes.get_mut(&id).expect("a node");
        let view = node.state.membership().view().1.clone();
        let leads = view.iter().next() == Some(&id);
        let holder = if self.witness_cut.contains(&id) {
            None
        } else if leads && self.unhealthy.contains(&id) && view.len() == 1 {
            // An unhealthy leader alone lets its lease go.
            if self.lease.is_some_and(|(h, _)| h == id) {
                self.lease = None;
            }
            None
        } else if leads && !self.unhealthy.contains(&id) {
            match self.lease {
                Some((h, exp)) if now < exp && !view.contains(&h) => Some(h),
                _ => {
                    self.lease = Some((id, now + lease_ms));
                    Some(id)
                }
            }
        } else {
            self.lease.filter(|(_, exp)| now < *exp).map(|(h, _)| h)
        };
        node.state.set_witness_holder(holder);
    }

    fn carry_out(&mut self, id: NodeId, commands: Vec<Command>) {
        let now = self.now;
        let self_fence = self.spec.bounds.self_fence.as_millis() as u64;
        for c in commands {
            let (svc, work) = match c {
                Command::Start(s) => (s, Work::Start),
                Command::Stop(s) => (s, Work::Stop),
                Command::Promote(s) => (s, Work::Promote),
                Command::Demote(s) => (s, Work::Demote),
                Command::Fence {
                    node: target,
                    incarnation,
                } => {
                    let at = now + 5 + self.rng.below(50);
                    let text = format!("fencing {}", name_of(&self.names, target));
                    self.note(Some(id), "fence", None, text);
                    let node = self.nodes.get_mut(&id).expect("a node");
                    node.fences.push((target, incarnation, at));
                    continue;
                }
            };
            let took = match work {
                Work::Start | Work::Promote => 5 + self.rng.below(45),
                Work::Stop | Work::Demote => 1 + self.rng.below(self_fence.max(1)),
            };
            let node = self.nodes.get_mut(&id).expect("a node");
            // A stop supersedes a start, promotion or demotion still in progress.
            if work == Work::Stop {
                node.pending.retain(|p| p.0 != svc);
            }
            node.pending.push((svc, now + took, work));
            match work {
                Work::Start => {
                    node.holding.insert(svc);
                }
                Work::Promote => {
                    node.promoted.insert(svc);
                }
                _ => {}
            }
        }
    }

    /// The promoted node of `svc` writes once; replicas it hears get the write
    /// (each with a chance of 70 %); acknowledged once one has it.
    fn replicate(&mut self, svc: usize) {
        let primaries: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| {
                self.running(*id)
                    && self.nodes[id].promoted.contains(&svc)
                    && self.nodes[id].state.roles()[svc] == Role::Promoted
            })
            .collect();
        for p in primaries {
            let (generation, position) = self.data[&(svc, p)];
            let replicas: Vec<NodeId> = self
                .ids
                .iter()
                .copied()
                .filter(|r| {
                    *r != p
                        && self.nodes[r].holding.contains(&svc)
                        && !self.crashed.contains(r)
                        && self.hears(*r, p)
                        && self.hears(p, *r)
                })
                .collect();
            let mut got = false;
            for r in replicas {
                if self.rng.chance(70) {
                    self.data.insert((svc, r), (generation, position + 1));
                    got = true;
                }
            }
            if got {
                self.data.insert((svc, p), (generation, position + 1));
            }
        }
    }

    /// What the monitor of `svc`'s replica on `id` reports: its data, and on the
    /// promoted node the acknowledged position.
    fn report_score(&mut self, id: NodeId, svc: usize) {
        let (generation, position) = self.data[&(svc, id)];
        let node = self.nodes.get_mut(&id).expect("a node");
        if node.state.phases()[svc] != Phase::Running || !node.holding.contains(&svc) {
            return;
        }
        let promoted = node.state.roles()[svc] == Role::Promoted;
        node.state.set_promotion(
            svc,
            Some(Promotion {
                generation,
                position,
                acknowledged: promoted.then_some(position),
            }),
        );
    }

    /// At a promote command: the chosen replica holds at least the acknowledged
    /// position its node knows, and no running replica it hears has more data.
    fn check_promotion(&mut self, id: NodeId, svc: usize) {
        let mine = self.data[&(svc, id)];
        let node = &self.nodes[&id].state;
        let name = &self.spec.services[svc].name;
        if let Some(a) = node.acknowledged(svc)
            && mine < a
            && self.violation.is_none()
        {
            self.violation = Some(format!(
                "t={} {name}: node {id} promoted at {mine:?}, below the acknowledged {a:?}",
                self.now
            ));
        }
        for r in node.membership().view().1 {
            let other = &self.nodes[r];
            if *r != id
                && other.state.phases()[svc] == Phase::Running
                && self.data[&(svc, *r)] > mine
                && self.violation.is_none()
            {
                self.violation = Some(format!(
                    "t={} {name}: node {id} promoted at {mine:?}, but node {r} has {:?}",
                    self.now,
                    self.data[&(svc, *r)]
                ));
            }
        }
    }

    fn send(&mut self, id: NodeId, packets: Vec<Heartbeat>) {
        for hb in packets {
            let bytes = encode(&self.key, &hb);
            for to in self.ids.clone() {
                if to == id || self.cut.contains(&(id, to, hb.link)) || self.rng.chance(self.loss) {
                    continue;
                }
                let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let at = self.now + 1 + self.rng.below(self.max_delay);
                    self.sent += 1;
                    self.queue.push(InFlight {
                        at: std::cmp::Reverse(at),
                        order: std::cmp::Reverse(self.sent),
                        to,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
    }

    /// kill -9 of a node (a crash, or a fence): its agents' processes die with it.
    fn crash(&mut self, id: NodeId) {
        self.crashed.insert(id);
        let node = self.nodes.get_mut(&id).expect("a node");
        node.holding.clear();
        node.promoted.clear();
        node.pending.clear();
        node.fences.clear();
    }

    fn deliver(&mut self) {
        while self.queue.peek().is_some_and(|p| p.at.0 <= self.now) {
            let Some(p) = self.queue.pop() else { break };
            // A paused node's socket buffers packets; a crashed node loses them.
            if self.crashed.contains(&p.to) {
                continue;
            }
            if !self.running(p.to) {
                let resume = self.paused_until[&p.to];
                self.queue.push(InFlight {
                    at: std::cmp::Reverse(resume),
                    ..p
                });
                continue;
            }
            let node = self.nodes.get_mut(&p.to).expect("a node");
            if let Ok(hb) = decode(&self.key, &p.bytes)
                && node.guard.admit(&hb).is_ok()
            {
                node.state.on_heartbeat(self.now, &hb);
            }
        }
    }

    /// Safety, every millisecond: a service that must run once is held by one
    /// node at most; a promoted role too.
    fn check_single_owner(&mut self) {
        if self.violation.is_some() {
            return;
        }
        for (i, spec) in self.spec.services.iter().enumerate() {
            if spec.strategy == Strategy::Clone {
                continue;
            }
            let replicated = spec.strategy == Strategy::Promotable;
            let holders: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| {
                    if replicated {
                        n.promoted.contains(&i)
                    } else {
                        n.holding.contains(&i)
                    }
                })
                .map(|(id, _)| *id)
                .collect();
            if holders.len() > 1 {
                self.violation = Some(format!(
                    "t={} service {} held by nodes {holders:?} at once",
                    self.now, spec.name
                ));
                return;
            }
        }
    }

    /// Apply one fault or action; what it did, in words (also in the timeline
    /// and the log).
    pub fn apply(&mut self, fault: &Fault) -> String {
        let names = self.names.clone();
        let n = |id: &NodeId| name_of(&names, *id);
        let links = self.spec.links as u8;
        let text = match fault {
            Fault::Kill(a) => {
                if self.crashed.contains(a) {
                    format!("{} is already down", n(a))
                } else {
                    self.crash(*a);
                    format!("kill {}", n(a))
                }
            }
            Fault::Start(a) => {
                if self.crashed.remove(a) {
                    let inc = self.nodes[a].incarnation + 1;
                    self.boot(*a, inc);
                    format!("start {} (incarnation {inc})", n(a))
                } else {
                    format!("{} is already up", n(a))
                }
            }
            Fault::Isolate(a) => {
                for o in self.ids.clone() {
                    for l in 0..links {
                        if o != *a {
                            self.cut.insert((*a, o, l));
                            self.cut.insert((o, *a, l));
                        }
                    }
                }
                format!("isolate {}", n(a))
            }
            Fault::Cut {
                from,
                to,
                link,
                both,
            } => {
                for l in (0..links).filter(|l| link.is_none_or(|x| x == *l)) {
                    self.cut.insert((*from, *to, l));
                    if *both {
                        self.cut.insert((*to, *from, l));
                    }
                }
                format!(
                    "cut {}{}{} {}",
                    n(from),
                    if *both { " " } else { "->" },
                    n(to),
                    link.map(|l| format!("link {l}"))
                        .unwrap_or_else(|| "on every link".into())
                )
            }
            Fault::CutLink(a, l) => {
                for o in self.ids.clone() {
                    if o != *a {
                        self.cut.insert((*a, o, *l));
                        self.cut.insert((o, *a, *l));
                    }
                }
                format!("cut {} link {l}", n(a))
            }
            Fault::Heal => {
                self.cut.clear();
                self.witness_cut.clear();
                self.unhealthy.clear();
                self.loss = 0;
                self.dup = 0;
                self.max_delay = 1;
                "heal the network, the witness's storage and health checks".into()
            }
            Fault::Pause(a, ms) => {
                self.paused_until.insert(*a, self.now + ms);
                format!("pause {} for {ms} ms", n(a))
            }
            Fault::Fail(svc, a, recovery) => self.fail(*svc, *a, *recovery),
            Fault::Health(a, healthy) => {
                if *healthy {
                    self.unhealthy.remove(a);
                    format!("{} passes its health checks", n(a))
                } else {
                    self.unhealthy.insert(*a);
                    format!("{} fails its health checks", n(a))
                }
            }
            Fault::WitnessLost(Some(a)) => {
                self.witness_cut.insert(*a);
                format!("{} loses the witness's storage", n(a))
            }
            Fault::WitnessLost(None) => {
                self.witness_cut.extend(self.ids.iter().copied());
                "the witness's storage is lost for every node".into()
            }
            Fault::WitnessBack => {
                self.witness_cut.clear();
                "the witness's storage is back".into()
            }
            Fault::Move(svc, to, hold) => self.operator_move(*svc, *to, *hold),
            Fault::Weather(loss, dup, delay) => {
                self.loss = *loss;
                self.dup = *dup;
                self.max_delay = (*delay).max(1);
                format!("loss {loss}% dup {dup}% delay up to {delay} ms")
            }
            Fault::Wait(ms) => {
                self.run(*ms);
                return format!("wait {ms} ms");
            }
        };
        self.log.push(format!("t={} {text}", self.now));
        self.note(None, "fault", None, text.clone());
        text
    }

    fn fail(&mut self, svc: usize, a: NodeId, recovery: Recovery) -> String {
        let now = self.now;
        let name = self.spec.services[svc].name.clone();
        let who = name_of(&self.names, a);
        if !self.running(a) || self.nodes[&a].state.phases()[svc] != Phase::Running {
            return format!("no failure: {who} does not run {name}");
        }
        let node = self.nodes.get_mut(&a).expect("a node");
        let commands = node.state.service_failed(svc, now, recovery);
        for c in &commands {
            if let Command::Stop(s) = c {
                node.pending.retain(|p| p.0 != *s);
            }
        }
        self.carry_out(a, commands);
        format!("{name} fails on {who}: {recovery}")
    }

    fn operator_move(&mut self, svc: usize, to: NodeId, hold: Option<Millis>) -> String {
        let name = self.spec.services[svc].name.clone();
        let target = name_of(&self.names, to);
        let issuer = self.ids.iter().copied().find(|id| {
            self.running(*id) && self.nodes[id].state.quorum().is_some_and(|q| q.quorate)
        });
        let Some(issuer) = issuer else {
            return format!("move {name} to {target} refused: no node has quorum");
        };
        let until = hold.map(|h| self.now + h);
        match self
            .nodes
            .get_mut(&issuer)
            .expect("a node")
            .state
            .move_service(svc, to, until, false)
        {
            Ok(()) => format!(
                "move {name} to {target}{} (taken on {})",
                hold.map(|h| format!(" for {h} ms")).unwrap_or_default(),
                name_of(&self.names, issuer)
            ),
            Err(e) => format!("move {name} to {target} refused: {e}"),
        }
    }

    /// One random fault or repair, as the suite's schedules make them.
    pub fn random_fault(&mut self) -> String {
        let ids = self.ids.clone();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        let a = pick(&mut self.rng);
        let b = pick(&mut self.rng);
        let link = self.rng.below(self.spec.links as u64) as u8;
        let fault = match self.rng.below(12) {
            0 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: Some(link),
                both: true,
            },
            1 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: None,
                both: true,
            },
            2 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: Some(link),
                both: false,
            },
            3 => Fault::Isolate(a),
            4 if !self.crashed.contains(&a) => Fault::Kill(a),
            9 if !self.crashed.contains(&a) && self.running(a) => {
                let svc = self.rng.below(self.spec.services.len() as u64) as usize;
                let recovery = if self.rng.chance(50) {
                    Recovery::RestartHere
                } else {
                    Recovery::Move
                };
                Fault::Fail(svc, a, recovery)
            }
            5 if self.crashed.contains(&a) => Fault::Start(a),
            // Bounded: a longer stall needs the watchdog (opt-in) to stay safe.
            6 => Fault::Pause(a, 20 + self.rng.below(280)),
            10 if self.spec.quorum.witness_votes > 0 => {
                Fault::WitnessLost(self.rng.chance(50).then_some(a))
            }
            11 => Fault::Health(a, self.unhealthy.contains(&a)),
            7 => {
                let max_delay = self.spec.bounds.max_delay.as_millis() as Millis;
                Fault::Weather(
                    self.rng.below(25),
                    self.rng.below(20),
                    1 + self.rng.below(max_delay.max(1)),
                )
            }
            _ => {
                let text = self.apply(&Fault::Heal);
                for id in self.crashed.clone() {
                    self.apply(&Fault::Start(id));
                }
                return text;
            }
        };
        self.apply(&fault)
    }

    /// Whom `a` hears directly on some link (packets from them reach `a`).
    /// Loss below 100 % does not cut a link.
    fn hears(&self, a: NodeId, b: NodeId) -> bool {
        a != b
            && !self.crashed.contains(&b)
            && (0..self.spec.links as u8).any(|l| !self.cut.contains(&(b, a, l)))
    }

    /// The view `a` must have: everything reachable from `a` through pairs of
    /// nodes that hear each other.
    fn expected_view(&self, a: NodeId) -> BTreeSet<NodeId> {
        if self.crashed.contains(&a) {
            return BTreeSet::new();
        }
        let mut seen: BTreeSet<NodeId> = [a].into();
        let mut stack = vec![a];
        while let Some(u) = stack.pop() {
            for &v in &self.ids {
                if self.hears(u, v) && self.hears(v, u) && seen.insert(v) {
                    stack.push(v);
                }
            }
        }
        seen
    }

    /// The invariants of a settled cluster (see the module's documentation);
    /// the first one broken, in words.
    pub fn check(&self) -> Result<(), String> {
        let live: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !self.crashed.contains(id))
            .collect();
        for &a in &live {
            let (_, view) = self.nodes[&a].state.membership().view();
            let expected = self.expected_view(a);
            if *view != expected {
                return Err(format!("node {a} sees {view:?}, expected {expected:?}"));
            }
        }
        for &a in &live {
            for &b in &live {
                let (ea, va) = self.nodes[&a].state.membership().view();
                let (eb, vb) = self.nodes[&b].state.membership().view();
                if a < b && va.contains(&b) && (va != vb || ea != eb) {
                    return Err(format!(
                        "nodes {a} and {b} are connected but disagree: {ea}:{va:?} vs {eb}:{vb:?}"
                    ));
                }
            }
        }
        for &a in &live {
            self.check_partition(a)?;
        }
        Ok(())
    }

    /// Liveness of `a`'s partition: quorate, it runs every service it can;
    /// otherwise `a` holds nothing but what may stay.
    fn check_partition(&self, a: NodeId) -> Result<(), String> {
        let policy = &self.spec.quorum;
        let total = policy.total();
        let holder = self
            .lease
            .filter(|(_, exp)| self.now < *exp)
            .map(|(h, _)| h);
        let component = self.expected_view(a);
        let node = &self.nodes[&a];
        let members: u32 = component.iter().filter_map(|n| policy.votes.get(n)).sum();
        let held = holder.is_some_and(|h| component.contains(&h));
        let quorate = 2 * (members + if held { policy.witness_votes } else { 0 }) > total;
        let needs_witness = 2 * members <= total;
        let counts_witness = !(needs_witness && self.witness_cut.contains(&a));
        // wait_for_all holds quorum back, by design, until a restarted node has
        // seen every node once.
        let waiting = node
            .state
            .quorum()
            .is_some_and(|q| q.reason.starts_with("waiting for all"));
        if !quorate || !counts_witness || self.unhealthy.contains(&a) || waiting {
            // A failed stop stays held (blocked) until a fence or an operator's
            // clear, and a partition without quorum cannot fence.
            let stuck: BTreeSet<usize> = (0..self.spec.services.len())
                .filter(|i| {
                    node.state.phases()[*i] == Phase::StopFailed
                        || self.spec.services[*i].keep_without_quorum
                })
                .collect();
            if !node.holding.is_subset(&stuck) {
                return Err(format!(
                    "node {a} has no quorum but holds services {:?}",
                    node.holding
                ));
            }
            return Ok(());
        }
        // A member that cannot reach the witness's storage counts no witness: in
        // a partition that needs the witness it runs nothing and is given nothing.
        let able: BTreeSet<NodeId> = component
            .iter()
            .copied()
            .filter(|n| !(needs_witness && self.witness_cut.contains(n)))
            .filter(|n| !self.unhealthy.contains(n))
            .collect();
        for (i, spec) in self.spec.services.iter().enumerate() {
            // Members banned for this service (failures) are not able to run it,
            // and a stop-everywhere block keeps it stopped on purpose.
            let able: BTreeSet<NodeId> = able
                .iter()
                .copied()
                .filter(|n| self.nodes[n].state.banned(self.now) & (1 << i) == 0)
                .collect();
            if component
                .iter()
                .any(|n| self.nodes[n].state.blocked() & (1 << i) != 0)
            {
                continue;
            }
            let running: Vec<NodeId> = component
                .iter()
                .copied()
                .filter(|n| self.nodes[n].state.phases()[i] == Phase::Running)
                .collect();
            let running_set: BTreeSet<NodeId> = running.iter().copied().collect();
            // A clone whose stop failed on a member waits there for a fence or
            // an operator's clear, by design.
            let clone_able: BTreeSet<NodeId> = able
                .iter()
                .copied()
                .filter(|n| self.nodes[n].state.phases()[i] != Phase::StopFailed)
                .collect();
            let ok = if spec.keep_without_quorum {
                running_set.is_superset(&clone_able)
            } else if spec.strategy == Strategy::Clone {
                running_set == clone_able
            } else if spec.strategy == Strategy::Promotable {
                running_set == clone_able && self.one_promoted(i, &component, &clone_able)
            } else {
                // A failed stop keeps the service claimed until its node is fenced
                // (by another able member, with a fence agent) or cleared.
                let stop_failed: Vec<NodeId> = component
                    .iter()
                    .copied()
                    .filter(|n| self.nodes[n].state.phases()[i] == Phase::StopFailed)
                    .collect();
                let can_fence = self.spec.fencing && able.iter().any(|n| !stop_failed.contains(n));
                let blocked = !stop_failed.is_empty() && !can_fence;
                (blocked && running.is_empty())
                    || (running.len() == usize::from(!able.is_empty())
                        && running.iter().all(|n| able.contains(n)))
            };
            if !ok {
                return Err(self.describe(i, &running, &component));
            }
        }
        Ok(())
    }

    fn describe(&self, i: usize, running: &[NodeId], component: &BTreeSet<NodeId>) -> String {
        let phases: Vec<String> = component
            .iter()
            .map(|n| {
                let st = &self.nodes[n].state;
                format!(
                    "{n}: {} {} ({}; {}; data {:?}; acknowledged {:?}; fencing {:?})",
                    st.phases()[i].name(),
                    st.roles()[i].name(),
                    st.placements()[i].why,
                    st.promotions()[i].why,
                    self.data.get(&(i, *n)),
                    st.acknowledged(i),
                    st.fence_state(self.now)
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
        let promoted: Vec<NodeId> = component
            .iter()
            .copied()
            .filter(|n| self.nodes[n].state.roles()[i] == Role::Promoted)
            .collect();
        let acknowledged = component
            .iter()
            .filter_map(|n| self.nodes[n].state.acknowledged(i))
            .max();
        let candidate = able
            .iter()
            .any(|n| acknowledged.is_none_or(|a| self.data[&(i, *n)] >= a));
        let stuck = component.iter().any(|n| {
            let st = &self.nodes[n].state;
            st.phases()[i] == Phase::StopFailed && st.roles()[i] != Role::Replica
        }) && !(self.spec.fencing && able.len() > 1);
        if stuck || !candidate {
            return promoted.iter().all(|n| able.contains(n)) && promoted.len() <= 1;
        }
        promoted.len() == 1 && able.contains(&promoted[0])
    }
}

/// What one random schedule did.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Promotions made.
    pub promotions: u64,
    /// Faults applied.
    pub faults: usize,
}

/// Run one seeded random schedule of `faults` faults (some overlapping), each
/// followed by a quiet period and [`Sim::check`]; the first violation with the
/// schedule that led to it.
pub fn random_schedule(sim: &mut Sim, faults: usize) -> Result<Schedule, String> {
    let quiet = sim.quiet_ms();
    sim.run(quiet);
    sim.check().map_err(|e| format!("at start: {e}"))?;
    let mut applied = 0;
    for _ in 0..faults {
        sim.random_fault();
        applied += 1;
        // Some faults overlap (no quiet time in between), then the network holds
        // still.
        if sim.rng.chance(30) {
            sim.run(30);
            sim.random_fault();
            applied += 1;
        }
        sim.run(quiet);
        if let Some(v) = sim.violation() {
            return Err(format!("{v}\nschedule:\n  {}", sim.log.join("\n  ")));
        }
        // With loss, links may flap; check once loss is off again.
        if sim.lossy() {
            continue;
        }
        sim.check()
            .map_err(|e| format!("{e}\nschedule:\n  {}", sim.log.join("\n  ")))?;
    }
    Ok(Schedule {
        promotions: sim.promotions,
        faults: applied,
    })
}
