//! Deterministic simulation of the cluster state machine (`ClusterNode`: membership,
//! quorum, placement, service ownership): a virtual clock, a simulated network
//! (per-link, per-direction cuts, loss, duplication, delay and reordering), crashes
//! with restarts, pauses, agents whose starts and stops take time, injected monitor
//! failures (restart-here and move recoveries), and 200 seeded random fault
//! schedules. Even seeds run with a fence agent: the fencer's fences kill their
//! target after a delay (or fail, and are retried), and stops may fail, which only a
//! fence resolves. Seeds divisible by 3 add a witness worth N−1 votes (a lease with
//! the daemon's rules: the partition leader takes or renews it, the others read it,
//! an unhealthy leader alone lets it go),
//! and faults that cut one node, or every node, off the witness's storage. Packets go
//! through the real codec and replay guard.
//!
//! Checked after **every** millisecond: no service that must run once is held
//! (starting, running or stopping) by two nodes at the same time, and no
//! promotable service's promoted role is held (from the promote command until
//! its demotion or stop completes) by two nodes at the same time.
//!
//! The promotable service `pg` models synchronous replication: the promoted node
//! writes every 10 ms, each replica it hears gets the write with a chance of
//! 70 %, and a write is acknowledged only once some replica has it. Each node's
//! data (generation, position) survives its crashes; a promotion starts a new
//! generation; replicas take the promoted node's data whenever they hear it.
//! Checked at every promotion: the promoted replica has at least the
//! acknowledged position its node knows, and no running replica in its view has
//! more data than it.
//!
//! After each fault the topology is held still for longer than the timeouts and the
//! invariant is checked: every live node's view is exactly its component of the
//! graph of node pairs that hear each other (directly, or relayed through others),
//! and connected nodes share one view and one epoch; a quorate partition runs every
//! service (once, or on every member for a clone) and nodes without quorum hold
//! nothing but a clone that keeps running without quorum. A failing seed is printed with its schedule; replay it with
//! `BATON_SIM_SEED=<seed> cargo test -p baton-cluster --test sim`.
//!
//! A claimed service starts only once every member acknowledged the claim; one
//! seed is run with that step skipped, to show the check catches it.

use baton_cluster::membership::{Millis, Timing};
use baton_cluster::node::{Bounds, ClusterNode, ClusterSpec, Command, Phase, Role};
use baton_cluster::placement::{FailurePolicy, ServiceSpec, Strategy};
use baton_cluster::quorum::QuorumPolicy;
use baton_cluster::wire::{ClusterKey, NodeId, ReplayGuard, decode, encode};
use baton_plugin_api::{Promotion, Recovery};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

/// SplitMix64: a tiny deterministic generator, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const LINKS: u8 = 2;

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
    /// Services whose resources exist on this node right now (from the start
    /// command until the stop completes).
    holding: BTreeSet<usize>,
    /// Promotable services promoted here (from the promote command until the
    /// demotion or the stop completes).
    promoted: BTreeSet<usize>,
    /// Fences in progress from this node: (target, incarnation, finishes at).
    fences: Vec<(NodeId, u64, Millis)>,
}

const SELF_FENCE_MS: u64 = 200;
const MAX_DELAY_MS: u64 = 15;

fn bounds() -> Bounds {
    Bounds {
        membership: Timing::FAST,
        self_fence: Duration::from_millis(SELF_FENCE_MS),
        max_delay: Duration::from_millis(MAX_DELAY_MS),
    }
}

fn services() -> Vec<ServiceSpec> {
    let s = |name: &str, strategy, preferred: &[NodeId]| ServiceSpec {
        name: name.into(),
        strategy,
        preferred: preferred.to_vec(),
        // Short expiry: a ban from an injected failure ends within a quiet period.
        failures: FailurePolicy {
            max_restarts: 3,
            expiry: Duration::from_millis(1200),
        },
        keep_without_quorum: false,
    };
    vec![
        s("db", Strategy::Standby, &[1, 2]),
        s("web", Strategy::Rotating, &[2, 3]),
        s("mail", Strategy::Mutual, &[3, 1]),
        s("monitor", Strategy::Clone, &[]),
        ServiceSpec {
            keep_without_quorum: true,
            ..s("cache", Strategy::Clone, &[])
        },
        s("pg", Strategy::Promotable, &[1, 2]),
    ]
}

/// The promotable service's index in `services()`.
const PG: usize = 5;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: std::cmp::Reverse<Millis>,
    order: std::cmp::Reverse<u64>,
    to: NodeId,
    bytes: Vec<u8>,
}

struct Sim {
    rng: Rng,
    key: ClusterKey,
    ids: Vec<NodeId>,
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
    timing: Timing,
    log: Vec<String>,
    violation: Option<String>,
    /// A fence agent is configured (even seeds).
    fencing: bool,
    /// Targets whose last fence failed.
    fence_failed: BTreeSet<NodeId>,
    /// The witness's votes (0: none).
    witness_votes: u32,
    /// The witness lease: (holder, expires).
    lease: Option<(NodeId, Millis)>,
    /// Nodes that cannot reach the witness's storage.
    witness_cut: BTreeSet<NodeId>,
    /// Nodes failing their health checks.
    unhealthy: BTreeSet<NodeId>,
    /// Nodes start claimed services without the members' acknowledgements.
    skip_claim_acks: bool,
    /// Each node's replicated data for `pg`: (generation, position). Kept
    /// across crashes (it is on disk).
    data: BTreeMap<NodeId, (u64, u64)>,
    /// The highest generation any promotion started.
    generation: u64,
    /// Promotions so far.
    promotions: u64,
}

/// The lease time the daemon uses: twice the link timeout.
fn lease_ms() -> Millis {
    2 * Timing::FAST.link_timeout.as_millis() as Millis
}

impl Sim {
    fn new(seed: u64, n: u16, skip_claim_acks: bool) -> Sim {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut sim = Sim {
            rng: Rng(seed),
            key: ClusterKey::new("sim", b"simulation key, thirty-two bytes").unwrap(),
            ids: ids.clone(),
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
            timing: Timing::FAST,
            log: Vec::new(),
            violation: None,
            fencing: seed.is_multiple_of(2),
            fence_failed: BTreeSet::new(),
            witness_votes: if seed.is_multiple_of(3) {
                u32::from(n) - 1
            } else {
                0
            },
            lease: None,
            witness_cut: BTreeSet::new(),
            unhealthy: BTreeSet::new(),
            skip_claim_acks,
            data: ids.iter().map(|id| (*id, (1, 0))).collect(),
            generation: 1,
            promotions: 0,
        };
        for id in ids {
            sim.boot(id, 1);
        }
        sim
    }

    fn boot(&mut self, id: NodeId, incarnation: u64) {
        let phase = self.rng.below(self.timing.interval.as_millis() as u64);
        let spec = ClusterSpec {
            nodes: self.ids.clone(),
            links: LINKS as usize,
            bounds: bounds(),
            quorum: QuorumPolicy {
                witness_votes: self.witness_votes,
                ..QuorumPolicy::majority(&self.ids)
            },
            services: services(),
            fencing: self.fencing,
            config: 7,
        };
        let mut state = ClusterNode::new(&spec, id, incarnation, self.now);
        if self.skip_claim_acks {
            state.skip_claim_acks();
        }
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
            },
        );
    }

    fn running(&self, id: NodeId) -> bool {
        !self.crashed.contains(&id) && self.paused_until.get(&id).is_none_or(|t| *t <= self.now)
    }

    fn step(&mut self) {
        self.now += 1;
        let interval = self.timing.interval.as_millis() as u64;
        let ids = self.ids.clone();
        for id in &ids {
            if self.crashed.contains(id) {
                continue;
            }
            // Agents keep working while the daemon is paused; the daemon learns of
            // completions when it runs again.
            let now = self.now;
            let running = self.running(*id);
            let fences_done: Vec<(NodeId, u64)> = {
                let node = self.nodes.get_mut(id).unwrap();
                let mut out = Vec::new();
                node.fences.retain(|&(t, inc, at)| {
                    if at <= now && running {
                        out.push((t, inc));
                        false
                    } else {
                        true
                    }
                });
                out
            };
            for (target, inc) in fences_done {
                // A fence fails now and then (never twice in a row for one target, so
                // a retry lands within a quiet period); the fencer retries.
                let ok = self.fence_failed.remove(&target) || !self.rng.chance(20);
                if !ok {
                    self.fence_failed.insert(target);
                }
                if ok && !self.crashed.contains(&target) && self.nodes[&target].incarnation == inc {
                    self.crash(target);
                    self.log.push(format!("t={now} node {id} fenced {target}"));
                }
                self.nodes
                    .get_mut(id)
                    .unwrap()
                    .state
                    .fence_done(target, inc, ok, now);
            }
            let node = self.nodes.get_mut(id).unwrap();
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
            let mut promoted_now = false;
            for (svc, work) in done {
                if work == Work::Start {
                    commands.extend(node.state.start_done(svc, Ok(()), now));
                } else if work == Work::Promote {
                    promoted_now = true;
                    commands.extend(node.state.promote_done(svc, Ok(()), now));
                } else if work == Work::Demote {
                    node.promoted.remove(&svc);
                    commands.extend(node.state.demote_done(svc, true, now));
                } else {
                    // With a fence agent, a stop sometimes fails: the resources stay
                    // while the node is quorate (a fence resolves it). Without quorum
                    // the self-fence bound holds anyway: the daemon kills the agents'
                    // process groups, and the watchdog (opt-in) resets a node that
                    // still holds services after the bound.
                    let ok = !(self.fencing && self.rng.chance(5));
                    let quorate = node.state.quorum().is_some_and(|q| q.quorate);
                    if ok || !quorate {
                        node.holding.remove(&svc);
                        node.promoted.remove(&svc);
                    }
                    commands.extend(node.state.stop_done(svc, ok));
                }
            }
            if promoted_now {
                // A promotion starts a new generation (a database's new timeline).
                self.generation += 1;
                self.promotions += 1;
                let position = self.data[id].1;
                self.data.insert(*id, (self.generation, position));
            }
            self.report_score(*id);
            let node = self.nodes.get_mut(id).unwrap();
            // A tick every interval, and at once when a claim can move on (as the
            // daemon does).
            if running && ((now + node.phase).is_multiple_of(interval) || node.state.claim_news()) {
                if self.witness_votes > 0 {
                    // As the daemon does: the partition's leader takes or renews the
                    // lease, the others read it; unreachable storage reads as nobody.
                    let view = node.state.membership().view().1.clone();
                    let leads = view.iter().next() == Some(id);
                    let holder = if self.witness_cut.contains(id) {
                        None
                    } else if leads && self.unhealthy.contains(id) && view.len() == 1 {
                        // An unhealthy leader alone lets its lease go.
                        if self.lease.is_some_and(|(h, _)| h == *id) {
                            self.lease = None;
                        }
                        None
                    } else if leads && !self.unhealthy.contains(id) {
                        match self.lease {
                            Some((h, exp)) if now < exp && !view.contains(&h) => Some(h),
                            _ => {
                                self.lease = Some((*id, now + lease_ms()));
                                Some(*id)
                            }
                        }
                    } else {
                        self.lease.filter(|(_, exp)| now < *exp).map(|(h, _)| h)
                    };
                    node.state.set_witness_holder(holder);
                }
                let healthy = !self.unhealthy.contains(id);
                node.state.set_health(healthy, healthy.then_some(now));
                let (packets, more) = node.state.tick(now);
                commands.extend(more);
                self.send(*id, packets);
            }
            for c in &commands {
                if let Command::Promote(s) = c {
                    self.check_promotion(*id, *s);
                }
            }
            let node = self.nodes.get_mut(id).unwrap();
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
                        node.fences.push((target, incarnation, at));
                        continue;
                    }
                };
                // A stop supersedes a start, promotion or demotion still in progress.
                if work == Work::Stop {
                    node.pending.retain(|p| p.0 != svc);
                }
                let took = match work {
                    Work::Start | Work::Promote => 5 + self.rng.below(45),
                    Work::Stop | Work::Demote => 1 + self.rng.below(SELF_FENCE_MS),
                };
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
        if self.now.is_multiple_of(10) {
            self.replicate();
        }
        self.deliver();
        self.check_single_owner();
    }

    /// The promoted node of `pg` writes once; replicas it hears get the write
    /// (each with a chance of 70 %); acknowledged once one has it. Replicas
    /// that hear it and lag catch up.
    fn replicate(&mut self) {
        let primaries: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| {
                self.running(*id)
                    && self.nodes[id].promoted.contains(&PG)
                    && self.nodes[id].state.roles()[PG] == Role::Promoted
            })
            .collect();
        for p in primaries {
            let (generation, position) = self.data[&p];
            let replicas: Vec<NodeId> = self
                .ids
                .iter()
                .copied()
                .filter(|r| {
                    *r != p
                        && self.nodes[r].holding.contains(&PG)
                        && !self.crashed.contains(r)
                        && self.hears(*r, p)
                        && self.hears(p, *r)
                })
                .collect();
            let mut got = false;
            for r in replicas {
                if self.rng.chance(70) {
                    self.data.insert(r, (generation, position + 1));
                    got = true;
                }
            }
            if got {
                self.data.insert(p, (generation, position + 1));
            }
        }
    }

    /// What the monitor of `pg`'s replica on `id` reports: its data, and on the
    /// promoted node the acknowledged position (everything it wrote was
    /// acknowledged only once a replica had it).
    fn report_score(&mut self, id: NodeId) {
        let (generation, position) = self.data[&id];
        let node = self.nodes.get_mut(&id).unwrap();
        if node.state.phases()[PG] != Phase::Running || !node.holding.contains(&PG) {
            return;
        }
        let promoted = node.state.roles()[PG] == Role::Promoted;
        node.state.set_promotion(
            PG,
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
        let mine = self.data[&id];
        let node = &self.nodes[&id].state;
        if let Some(a) = node.acknowledged(svc)
            && mine < a
            && self.violation.is_none()
        {
            self.violation = Some(format!(
                "t={} node {id} promoted at {mine:?}, below the acknowledged {a:?}",
                self.now
            ));
        }
        for r in node.membership().view().1 {
            let other = &self.nodes[r];
            if *r != id
                && other.state.phases()[svc] == Phase::Running
                && self.data[r] > mine
                && self.violation.is_none()
            {
                self.violation = Some(format!(
                    "t={} node {id} promoted at {mine:?}, but node {r} has {:?}",
                    self.now, self.data[r]
                ));
            }
        }
    }

    fn send(&mut self, id: NodeId, packets: Vec<baton_cluster::wire::Heartbeat>) {
        let ids = self.ids.clone();
        {
            for hb in packets {
                let bytes = encode(&self.key, &hb);
                for &to in &ids {
                    if to == id
                        || self.cut.contains(&(id, to, hb.link))
                        || self.rng.chance(self.loss)
                    {
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
    }

    /// kill -9 of a node (a crash, or a fence): its agents' processes die with it.
    fn crash(&mut self, id: NodeId) {
        self.crashed.insert(id);
        let node = self.nodes.get_mut(&id).unwrap();
        node.holding.clear();
        node.promoted.clear();
        node.pending.clear();
        node.fences.clear();
    }

    fn deliver(&mut self) {
        while self.queue.peek().is_some_and(|p| p.at.0 <= self.now) {
            let p = self.queue.pop().unwrap();
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
            let node = self.nodes.get_mut(&p.to).unwrap();
            if let Ok(hb) = decode(&self.key, &p.bytes)
                && node.guard.admit(&hb).is_ok()
            {
                node.state.on_heartbeat(self.now, &hb);
            }
        }
    }

    /// Safety, every millisecond: a service that must run once is held by one node at most.
    fn check_single_owner(&mut self) {
        for (i, spec) in services().iter().enumerate() {
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
            if holders.len() > 1 && self.violation.is_none() {
                self.violation = Some(format!(
                    "t={} service {} held by nodes {holders:?} at once",
                    self.now, spec.name
                ));
            }
        }
    }

    fn run(&mut self, ms: Millis) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// One random fault (or repair).
    fn fault(&mut self) {
        let ids = self.ids.clone();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        let a = pick(&mut self.rng);
        let b = pick(&mut self.rng);
        let link = self.rng.below(LINKS as u64) as u8;
        let what = self.rng.below(12);
        let text = match what {
            0 if a != b => {
                self.cut.insert((a, b, link));
                self.cut.insert((b, a, link));
                format!("cut {a}-{b} link {link}")
            }
            1 if a != b => {
                for l in 0..LINKS {
                    self.cut.insert((a, b, l));
                    self.cut.insert((b, a, l));
                }
                format!("cut {a}-{b} on every link")
            }
            2 if a != b => {
                self.cut.insert((a, b, link));
                format!("cut {a}->{b} link {link} (one direction)")
            }
            3 => {
                for &o in &ids {
                    for l in 0..LINKS {
                        if o != a {
                            self.cut.insert((a, o, l));
                            self.cut.insert((o, a, l));
                        }
                    }
                }
                format!("isolate {a}")
            }
            4 if !self.crashed.contains(&a) => {
                self.crash(a);
                format!("crash {a}")
            }
            9 if !self.crashed.contains(&a) && self.running(a) => {
                // A monitor finds a service failed on its holder.
                let now = self.now;
                let svc = self.rng.below(services().len() as u64) as usize;
                let recovery = if self.rng.chance(50) {
                    Recovery::RestartHere
                } else {
                    Recovery::Move
                };
                let node = self.nodes.get_mut(&a).unwrap();
                if node.state.phases()[svc] != Phase::Running {
                    return self
                        .log
                        .push(format!("t={now} (no failure: {a} does not run {svc})"));
                }
                for c in node.state.service_failed(svc, now, recovery) {
                    let Command::Stop(s) = c else {
                        panic!("a failure only stops")
                    };
                    node.pending.retain(|p| p.0 != s);
                    node.pending
                        .push((s, now + 1 + self.rng.below(50), Work::Stop));
                }
                format!("service {svc} fails on {a}: {recovery}")
            }
            5 if self.crashed.contains(&a) => {
                self.crashed.remove(&a);
                let inc = self.nodes[&a].incarnation + 1;
                self.boot(a, inc);
                format!("restart {a} as incarnation {inc}")
            }
            6 => {
                // Bounded: a longer stall needs the watchdog (opt-in) to stay safe.
                let ms = 20 + self.rng.below(280);
                self.paused_until.insert(a, self.now + ms);
                format!("pause {a} for {ms} ms")
            }
            10 if self.witness_votes > 0 => {
                if self.rng.chance(50) {
                    self.witness_cut.insert(a);
                    format!("{a} loses the witness's storage")
                } else {
                    self.witness_cut.extend(ids.iter().copied());
                    "the witness's storage is lost for every node".into()
                }
            }
            11 => {
                // Health checks flap: a node fails them, or passes them again.
                if self.unhealthy.remove(&a) {
                    format!("{a} passes its health checks again")
                } else {
                    self.unhealthy.insert(a);
                    format!("{a} fails its health checks")
                }
            }
            7 => {
                self.loss = self.rng.below(25);
                self.dup = self.rng.below(20);
                self.max_delay = 1 + self.rng.below(MAX_DELAY_MS);
                format!(
                    "loss {}% dup {}% delay up to {} ms",
                    self.loss, self.dup, self.max_delay
                )
            }
            _ => {
                self.cut.clear();
                self.witness_cut.clear();
                self.unhealthy.clear();
                self.loss = 0;
                self.dup = 0;
                self.max_delay = 1;
                for id in self.crashed.clone() {
                    self.crashed.remove(&id);
                    let inc = self.nodes[&id].incarnation + 1;
                    self.boot(id, inc);
                }
                "heal everything".into()
            }
        };
        self.log.push(format!("t={} {text}", self.now));
    }

    /// Whom `a` hears directly on some link (packets from them reach `a`), given
    /// the current faults. Loss below 100 % does not cut a link.
    fn hears(&self, a: NodeId, b: NodeId) -> bool {
        a != b && !self.crashed.contains(&b) && (0..LINKS).any(|l| !self.cut.contains(&(b, a, l)))
    }

    /// The view `a` must have: everything reachable from `a` through pairs of nodes
    /// that hear each other (both directions, each on some link).
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

    fn check(&self) -> Result<(), String> {
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
        // Liveness: a quorate partition runs every service; other nodes hold nothing.
        // A partition is quorate with a strict majority of votes, counting the witness
        // when one of its members holds the lease.
        let total = self.ids.len() as u32 + self.witness_votes;
        let holder = self
            .lease
            .filter(|(_, exp)| self.now < *exp)
            .map(|(h, _)| h);
        for &a in &live {
            let component = self.expected_view(a);
            let node = &self.nodes[&a];
            let members = component.len() as u32;
            let held = holder.is_some_and(|h| component.contains(&h));
            let quorate = 2 * (members + if held { self.witness_votes } else { 0 }) > total;
            let counts_witness = !(2 * members <= total && self.witness_cut.contains(&a));
            if !quorate || !counts_witness || self.unhealthy.contains(&a) {
                // A failed stop stays held (blocked) until a fence or an operator's
                // clear, and a partition without quorum cannot fence.
                let stuck: BTreeSet<usize> = (0..services().len())
                    .filter(|i| {
                        node.state.phases()[*i] == Phase::StopFailed
                            || services()[*i].keep_without_quorum
                    })
                    .collect();
                if !node.holding.is_subset(&stuck) {
                    return Err(format!(
                        "node {a} has no quorum but holds services {:?}",
                        node.holding
                    ));
                }
                continue;
            }
            // A member that cannot reach the witness's storage counts no witness: in a
            // partition that needs the witness it runs nothing and is given nothing.
            let needs_witness = 2 * members <= total;
            let able: BTreeSet<NodeId> = component
                .iter()
                .copied()
                .filter(|n| !(needs_witness && self.witness_cut.contains(n)))
                .filter(|n| !self.unhealthy.contains(n))
                .collect();
            for (i, spec) in services().iter().enumerate() {
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
                    // Kept where it ran when a member lost its health.
                    running_set.is_superset(&clone_able)
                } else if spec.strategy == Strategy::Clone {
                    running_set == clone_able
                } else if spec.strategy == Strategy::Promotable {
                    running_set == clone_able && self.one_promoted(i, &component, &clone_able)
                } else {
                    // A failed stop keeps the service claimed until its node is fenced
                    // (by another able member, with a fence agent) or cleared: by
                    // design nothing runs it meanwhile.
                    let stop_failed: Vec<NodeId> = component
                        .iter()
                        .copied()
                        .filter(|n| self.nodes[n].state.phases()[i] == Phase::StopFailed)
                        .collect();
                    let can_fence = self.fencing && able.iter().any(|n| !stop_failed.contains(n));
                    let blocked = !stop_failed.is_empty() && !can_fence;
                    // Exactly one able member runs it (none when no member is able).
                    (blocked && running.is_empty())
                        || (running.len() == usize::from(!able.is_empty())
                            && running.iter().all(|n| able.contains(n)))
                };
                if !ok {
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
                                self.data[n],
                                st.acknowledged(i),
                                st.fence_state(self.now)
                            )
                        })
                        .collect();
                    return Err(format!(
                        "service {} runs on {running:?} in the quorate partition {component:?}; {}",
                        spec.name,
                        phases.join("; ")
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Sim {
    /// Liveness of a promoted role in a quorate partition: exactly one able
    /// member is promoted when some able replica holds the acknowledged
    /// position the partition knows; none when none does, or when a member
    /// whose stop failed still holds the role and nobody can fence it.
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
            .any(|n| acknowledged.is_none_or(|a| self.data[n] >= a));
        let stuck = component.iter().any(|n| {
            let st = &self.nodes[n].state;
            st.phases()[i] == Phase::StopFailed && st.roles()[i] != Role::Replica
        }) && !(self.fencing && able.len() > 1);
        if stuck || !candidate {
            return promoted.iter().all(|n| able.contains(n)) && promoted.len() <= 1;
        }
        promoted.len() == 1 && able.contains(&promoted[0])
    }
}

/// Run one seeded schedule; the number of promotions it made.
fn run_schedule(seed: u64, skip_claim_acks: bool) -> Result<u64, String> {
    let n = 3 + (seed % 3) as u16;
    let mut sim = Sim::new(seed, n, skip_claim_acks);
    sim.run(2000);
    sim.check().map_err(|e| format!("at start: {e}"))?;
    for _ in 0..12 {
        sim.fault();
        // Some faults overlap (no quiet time in between), then the network holds still.
        if sim.rng.chance(30) {
            sim.run(30);
            sim.fault();
        }
        // Loss and duplication stay on while we check, but delays are bounded and the
        // quiet period is far beyond link and report timeouts.
        sim.run(2000);
        if let Some(v) = &sim.violation {
            return Err(format!("{v}\nschedule:\n  {}", sim.log.join("\n  ")));
        }
        if sim.loss > 0 {
            // With loss, links may flap; only check once loss is off again.
            continue;
        }
        sim.check()
            .map_err(|e| format!("{e}\nschedule:\n  {}", sim.log.join("\n  ")))?;
    }
    Ok(sim.promotions)
}

#[test]
fn never_two_owners_and_quorate_partitions_run_everything_under_200_random_fault_schedules() {
    let seeds: Vec<u64> = match std::env::var("BATON_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("BATON_SIM_SEED must be a number")],
        Err(_) => (1..=200).collect(),
    };
    let mut promotions = 0;
    for seed in &seeds {
        match run_schedule(*seed, false) {
            Ok(p) => promotions += p,
            Err(e) => panic!(
                "cluster simulation failed for seed {seed} (replay: BATON_SIM_SEED={seed}):\n{e}"
            ),
        }
    }
    // The promoted role moved: every schedule promotes at start, and faults move it.
    assert!(
        seeds.len() == 1 || promotions > 2 * seeds.len() as u64,
        "{promotions} promotions in {} schedules",
        seeds.len()
    );
}

/// The claim acknowledgement is what keeps simultaneous claims apart, and
/// what makes a promotion see every replica's latest score: with it skipped (a
/// node starts, or promotes, in the tick it claims, once lost nodes are safe),
/// seed 112's schedule has nodes 1 and 3 both start `mail`, 6 s in, and seed
/// 52's promotes node 3 while node 4 has one more write; with it, both
/// schedules pass. (A change to the simulation reshuffles the schedules: then
/// take the first seeds of 1..=200 that fail each way with it skipped.)
#[test]
fn skipping_the_claim_acknowledgement_gives_two_owners_or_a_stale_promotion() {
    for (seed, failure) in [(112, "held by nodes"), (52, "but node 4 has")] {
        let err = run_schedule(seed, true).expect_err("a failure without acknowledgements");
        assert!(err.contains(failure), "seed {seed}: {err}");
        if let Err(e) = run_schedule(seed, false) {
            panic!("seed {seed} with acknowledgements:\n{e}");
        }
    }
}
