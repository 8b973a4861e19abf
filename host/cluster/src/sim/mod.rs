//! The cluster simulator: every node runs the daemon's own node driver
//! ([`Driver`], and through it [`ClusterNode`]) on a virtual clock, over a
//! simulated network whose packets go through the real codec and replay
//! guard. Only the I/O is modelled (`node.rs`): agents whose work takes time
//! (starts may hang until their timeout, and with chaos stops and fences fail
//! now and then), the witness worker running the real lease logic on modelled
//! storage, the guardian that ends a frozen or dead daemon's services, and
//! health checks. Faults: crashes and restarts, clean stops, cuts and
//! isolation, loss and delay, pauses of a daemon and freezes of a whole
//! machine, monitor failures, hung starts, health flaps, witness storage loss
//! and operators' moves. `baton scenario simulate` drives it with an
//! administrator's fault script or seeded random schedules; the test suite
//! runs 200 seeded schedules through it. The checkers are in `check.rs`.
//!
//! Each promotable service models synchronous replication: the promoted node
//! writes every 10 ms, each replica it hears gets the write with a chance of
//! 70 %, and a write is acknowledged once some replica has it.

mod check;
mod node;
mod schedule;
mod world;

pub use schedule::{Schedule, random_schedule};

use crate::changes::{Change, name_of};
use crate::driver::{Driver, ServiceShell};
use crate::membership::Millis;
use crate::node::{ClusterNode, ClusterSpec, Role};
use crate::placement::Strategy;
use crate::wire::{Admin, NodeId, decode};
use baton_plugin_api::Recovery;
use node::{SimNode, State};
use std::collections::{BTreeMap, BTreeSet};
use world::Breakage;
use world::{InFlight, World};

/// One fault, repair or operator action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node crashes (power off): its processes die with it.
    Kill(NodeId),
    /// The node's daemon is stopped cleanly (SIGTERM): its services move.
    Stop(NodeId),
    /// A node that is down boots again, as a new incarnation.
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
    /// Every network, witness and health fault is repaired (nodes that are down
    /// stay down: `start` them).
    Heal,
    /// The node's daemon stalls this long (its guardian and its agents'
    /// processes run on).
    Pause(NodeId, Millis),
    /// The whole machine stalls this long (daemon, guardian and agents).
    Freeze(NodeId, Millis),
    /// A monitor finds the service failed on the node; the agent's error asks
    /// for `recovery`.
    Fail(usize, NodeId, Recovery),
    /// Starts of the service on the node hang until their timeout: every one
    /// until healed, or only the next (`once`).
    Hang(usize, NodeId, bool),
    /// Starts of the service on the node fail at once (until healed).
    Break(usize, NodeId),
    /// The node fails its health checks, or passes them again.
    Health(NodeId, bool),
    /// The witness's storage is lost for one node, or for every node.
    WitnessLost(Option<NodeId>),
    /// The witness's storage is back for every node.
    WitnessBack,
    /// An operator moves the service to the node (`baton move`), on a quorate
    /// member, for this long (`None`: until cleared).
    Move(usize, NodeId, Option<Millis>),
    /// An operator puts a node in standby (`true`) or takes it out.
    Standby(NodeId, bool),
    /// An operator puts a service in maintenance (`true`) or releases it.
    Maintenance(usize, bool),
    /// Loss and duplication in %, and delays up to this many ms, on every link.
    Weather(u64, u64, Millis),
    /// Time passes.
    Wait(Millis),
}

/// One entry of the timeline: a node's decision, a fence, or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Virtual time, ms since the cluster's cold start.
    pub at: Millis,
    /// The node it happened on (`None`: a fault applied from outside).
    pub node: Option<NodeId>,
    /// The change, or `fault` with its text.
    pub change: Change,
}

/// A simulated cluster.
pub struct Sim {
    spec: ClusterSpec,
    shells: Vec<ServiceShell>,
    names: BTreeMap<NodeId, String>,
    world: World,
    nodes: BTreeMap<NodeId, SimNode>,
    log: Vec<String>,
    violation: Option<String>,
    skip_claim_acks: bool,
    promotions: u64,
    timeline: Option<Vec<Event>>,
    /// Incarnations that stopped cleanly, with the members that heard them
    /// leave: those never fence them (a node cut off from the leaver cannot
    /// tell a clean stop from a freeze).
    left_clean: BTreeMap<(NodeId, u64), BTreeSet<NodeId>>,
}

/// Monitor every service every ten heartbeat intervals, each round allowed a
/// second: the shells for a spec that comes without its agents.
pub fn default_shells(spec: &ClusterSpec) -> Vec<ServiceShell> {
    let every = 10 * spec.bounds.membership.interval.as_millis() as Millis;
    vec![
        ServiceShell {
            monitor_every: every,
            monitor_budget: 1000,
        };
        spec.services.len()
    ]
}

impl Sim {
    /// A cluster of `spec` (its nodes, links, timing, quorum, services and
    /// whether it fences) whose services are monitored as `shells` say, named
    /// `names`, from a cold start. `seed` drives every random choice (agent
    /// durations, boot phases, the faults of [`Sim::random_fault`]); with
    /// `chaos`, fences and stops fail now and then.
    pub fn new(
        spec: &ClusterSpec,
        shells: Vec<ServiceShell>,
        names: BTreeMap<NodeId, String>,
        seed: u64,
        chaos: bool,
    ) -> Sim {
        Sim::with(spec, shells, names, seed, chaos, false)
    }

    /// As [`Sim::new`], with nodes that start claimed services without the
    /// members' acknowledgements: to show that the checks catch what that step
    /// prevents.
    pub fn without_claim_acks(
        spec: &ClusterSpec,
        shells: Vec<ServiceShell>,
        names: BTreeMap<NodeId, String>,
        seed: u64,
    ) -> Sim {
        Sim::with(spec, shells, names, seed, true, true)
    }

    fn with(
        spec: &ClusterSpec,
        shells: Vec<ServiceShell>,
        names: BTreeMap<NodeId, String>,
        seed: u64,
        chaos: bool,
        skip_claim_acks: bool,
    ) -> Sim {
        let ids = spec.nodes.clone();
        let mut world = World::new(ids.clone(), spec.links as u8, seed, chaos);
        for service in &spec.services {
            if service.strategy == Strategy::Promotable {
                for id in &ids {
                    world.data.insert((service.name.clone(), *id), (1, 0));
                }
            }
        }
        let mut sim = Sim {
            spec: spec.clone(),
            shells,
            names,
            world,
            nodes: BTreeMap::new(),
            log: Vec::new(),
            violation: None,
            skip_claim_acks,
            promotions: 0,
            timeline: None,
            left_clean: BTreeMap::new(),
        };
        for id in ids {
            sim.boot(id, 1);
        }
        sim
    }

    /// An administrator deploys `next` (monitored as `shells`) on every node
    /// and reloads each node that is up: the services named in `restarted`
    /// changed (they stop and start again), the others of the same name
    /// continue. Nodes down now boot with `next`. A promotable service keeps
    /// its replicated data by name (a restarted one starts on the same data).
    pub fn reload(&mut self, next: &ClusterSpec, shells: Vec<ServiceShell>, restarted: &[&str]) {
        for service in next
            .services
            .iter()
            .filter(|s| s.strategy == Strategy::Promotable)
        {
            for id in &next.nodes {
                self.world
                    .data
                    .entry((service.name.clone(), *id))
                    .or_insert((1, 0));
            }
        }
        self.spec = next.clone();
        self.shells = shells.clone();
        for node in self.nodes.values_mut() {
            if node.state == State::Down {
                continue;
            }
            let staged = crate::reload::Staged::by_name(&node.spec.services, next, restarted);
            node.driver.stage(staged, shells.clone());
        }
        self.log.push(format!(
            "t={} reload: config {:016x} staged on every node that is up",
            self.world.now, next.config
        ));
    }

    /// Keep a timeline of every node's decisions (see [`Sim::timeline`]).
    pub fn record_timeline(&mut self) {
        self.timeline = Some(Vec::new());
    }

    /// The timeline so far (empty unless [`Sim::record_timeline`] was called).
    pub fn timeline(&self) -> &[Event] {
        self.timeline.as_deref().unwrap_or_default()
    }

    /// The virtual time, ms.
    pub fn now(&self) -> Millis {
        self.world.now
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
        let n = self.nodes.get(&id)?;
        (n.state != State::Down).then(|| n.driver.node())
    }

    /// The latest failure of service `i` on node `id`, in words.
    pub fn last_failure(&self, id: NodeId, i: usize) -> Option<&str> {
        self.nodes.get(&id)?.driver.last_failure(i)
    }

    /// The nodes that are up, in id order.
    pub fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state != State::Down)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The node whose view stands for the cluster's: the first live quorate
    /// node, else the first live node.
    pub fn judge(&self) -> Option<NodeId> {
        let live = self.live();
        live.iter()
            .copied()
            .find(|id| self.nodes[id].driver.node().quorate())
            .or(live.first().copied())
    }

    /// Whether loss or duplication is on (views may flap; [`Sim::check`] holds
    /// only without).
    pub fn lossy(&self) -> bool {
        self.world.loss > 0 || self.world.dup > 0
    }

    /// How long to let the cluster settle after a fault before [`Sim::check`]:
    /// well beyond detection, the fence wait, a stop on a node that lost
    /// quorum, the witness lease, the longest restart backoff before a node
    /// gives a service up, and the timeout of a start that hangs or may hang.
    pub fn quiet_ms(&self) -> Millis {
        let b = &self.spec.bounds;
        let t = b.membership;
        let ms = |d: std::time::Duration| d.as_millis() as Millis;
        let backoff = self
            .spec
            .services
            .iter()
            .map(|s| {
                ms(s.failures
                    .restart_delay(s.failures.max_restarts.saturating_sub(1) as usize))
            })
            .max()
            .unwrap_or(0);
        // A start that hangs, or may hang, times out within the period.
        let armed = self
            .world
            .broken
            .values()
            .any(|b| matches!(b, Breakage::Hang | Breakage::HangOnce));
        let hang = if armed {
            self.spec
                .services
                .iter()
                .map(|s| ms(s.start_timeout))
                .max()
                .unwrap_or(0)
        } else {
            0
        }
        .max(self.world.hangs_until.saturating_sub(self.world.now));
        let monitors = self
            .shells
            .iter()
            .map(|s| s.monitor_every)
            .max()
            .unwrap_or(0);
        (ms(b.fence_wait())
            + ms(b.self_fence)
            + 2 * ms(t.report_timeout)
            + 2 * ms(b.witness_lease()))
        .max(2000)
            + 1000
            + backoff
            + hang
            + 2 * monitors
    }

    fn boot(&mut self, id: NodeId, incarnation: u64) {
        let now = self.world.now;
        let mut driver = Driver::new(
            &self.spec,
            id,
            incarnation,
            now,
            self.shells.clone(),
            self.names.clone(),
        );
        if self.skip_claim_acks {
            driver.node_mut().skip_claim_acks();
        }
        let lease_ms = self.spec.bounds.witness_lease().as_millis() as Millis;
        let seed = self.world.rng.next_u64();
        let mut node = SimNode::boot(
            driver,
            self.spec.clone(),
            id,
            incarnation,
            lease_ms,
            seed,
            now,
        );
        // Nodes boot at different moments within a heartbeat interval.
        let interval = self.spec.bounds.membership.interval.as_millis() as u64;
        node.state = State::Booting(now + self.world.rng.below(interval.max(1)));
        self.world.down.remove(&id);
        self.nodes.insert(id, node);
    }

    fn note(&mut self, node: Option<NodeId>, change: Change) {
        if let Some(t) = self.timeline.as_mut() {
            t.push(Event {
                at: self.world.now,
                node,
                change,
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
        self.world.now += 1;
        let now = self.world.now;
        for (id, node) in self.nodes.iter_mut() {
            if let State::Paused(t) | State::Frozen(t) | State::Booting(t) = node.state
                && t <= now
            {
                node.state = State::Up;
                self.world.frozen.remove(id);
            }
        }
        let woken = self.deliver();
        for id in self.world.ids.clone() {
            self.step_node(id, woken.contains(&id));
        }
        if now.is_multiple_of(10) {
            let promotable: Vec<String> = self
                .spec
                .services
                .iter()
                .filter(|s| s.strategy == Strategy::Promotable)
                .map(|s| s.name.clone())
                .collect();
            for name in promotable {
                self.replicate(&name);
            }
        }
        self.check_single_owner();
    }

    /// Packets due now reach their nodes: a paused or frozen node's socket
    /// buffers them until it runs again; a node that is down loses them.
    fn deliver(&mut self) -> Vec<NodeId> {
        let now = self.world.now;
        let mut woken = Vec::new();
        for p in self.world.due() {
            let node = self.nodes.get_mut(&p.to).expect("a node");
            match node.state {
                State::Down | State::Booting(_) => {}
                State::Paused(t) | State::Frozen(t) => self.world.queue.push(InFlight {
                    at: std::cmp::Reverse(t),
                    ..p
                }),
                State::Up => {
                    if let Ok(hb) = decode(&self.world.key, &p.bytes)
                        && node.guard.admit(&hb).is_ok()
                    {
                        node.driver.receive(now, &hb);
                        woken.push(p.to);
                    }
                }
            }
        }
        woken
    }

    /// One millisecond of node `id`: its agents, witness worker and guardian,
    /// and a turn of its daemon when something arrived or is due.
    fn step_node(&mut self, id: NodeId, woken: bool) {
        let now = self.world.now;
        let lease = self.spec.bounds.guardian_lease().as_millis() as Millis;
        let node = self.nodes.get_mut(&id).expect("a node");
        if !node.machine_runs() {
            return;
        }
        node.local.progress_agents(&mut self.world, &node.spec);
        if node.daemon_runs() {
            node.local.progress_witness(&mut self.world);
        }
        node.local.watch(now, lease, false);
        if node.daemon_runs() && (woken || node.has_input() || now >= node.driver.next_wakeup()) {
            node.turn(&mut self.world);
        }
        self.after_turn(id);
    }

    /// What a node's turn set off: fences that landed, promotions to check,
    /// its decisions for the timeline, and a clean stop that ended.
    fn after_turn(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("a node");
        let fenced = std::mem::take(&mut node.local.fenced);
        let promotions = std::mem::take(&mut node.local.promotions);
        let notes = std::mem::take(&mut node.local.guardian_notes);
        let events = node.driver.take_events();
        let exited = node.driver.exit();
        for (target, inc) in fenced {
            let heard = self
                .left_clean
                .get(&(target, inc))
                .is_some_and(|members| members.contains(&id));
            if heard && self.violation.is_none() {
                self.violation = Some(format!(
                    "t={} node {id} fenced node {target} (incarnation {inc}), which had stopped cleanly",
                    self.world.now
                ));
            }
            let t = self.nodes.get_mut(&target).expect("a node");
            if t.state != State::Down && t.incarnation == inc {
                t.crash();
                self.world.down.insert(target);
                self.world.frozen.remove(&target);
                self.log
                    .push(format!("t={} node {id} fenced {target}", self.world.now));
            }
        }
        for s in promotions {
            self.promotions += 1;
            self.check_promotion(id, s);
        }
        for text in notes {
            self.note(
                Some(id),
                Change {
                    kind: "guardian",
                    service: None,
                    text,
                },
            );
        }
        for change in events {
            self.note(Some(id), change);
        }
        if let Some(exit) = exited {
            let node = self.nodes.get_mut(&id).expect("a node");
            if exit == crate::driver::Exit::Clean {
                let members = node.driver.node().membership().view().1.clone();
                self.left_clean.insert((id, node.incarnation), members);
            }
            // The process exits; a guardian that was not dismissed ends what is left.
            node.local.watch(self.world.now, 0, true);
            node.crash();
            self.world.down.insert(id);
        }
    }

    /// The promoted node of service `name` writes once; replicas it hears get
    /// the write (each with a chance of 70 %); acknowledged once one has it.
    /// Each node knows the service by its own config's index.
    fn replicate(&mut self, name: &str) {
        let index = |n: &SimNode| n.spec.services.iter().position(|s| s.name == name);
        let primaries: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                index(n).is_some_and(|i| {
                    n.daemon_runs()
                        && n.local.promoted.contains(&i)
                        && n.driver.node().service(i).role() == Role::Promoted
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for p in primaries {
            let (generation, position) = self.world.data[&(name.to_string(), p)];
            let replicas: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(r, n)| {
                    **r != p
                        && index(n).is_some_and(|i| n.local.holding.contains(&i))
                        && n.machine_runs()
                        && self.world.hears(**r, p)
                        && self.world.hears(p, **r)
                })
                .map(|(id, _)| *id)
                .collect();
            let mut got = false;
            for r in replicas {
                if self.world.rng.chance(70) {
                    self.world
                        .data
                        .insert((name.to_string(), r), (generation, position + 1));
                    got = true;
                }
            }
            if got {
                self.world
                    .data
                    .insert((name.to_string(), p), (generation, position + 1));
            }
        }
    }

    /// Apply one fault or action; what it did, in words (also in the timeline
    /// and the log).
    pub fn apply(&mut self, fault: &Fault) -> String {
        if let Fault::Wait(ms) = fault {
            self.run(*ms);
            return format!("wait {ms} ms");
        }
        let text = self.apply_now(fault);
        self.log.push(format!("t={} {text}", self.world.now));
        self.note(
            None,
            Change {
                kind: "fault",
                service: None,
                text: text.clone(),
            },
        );
        text
    }

    fn apply_now(&mut self, fault: &Fault) -> String {
        let names = self.names.clone();
        let n = |id: &NodeId| name_of(&names, *id);
        let now = self.world.now;
        match fault {
            Fault::Kill(a) => {
                if self.world.down.contains(a) {
                    return format!("{} is already down", n(a));
                }
                self.nodes.get_mut(a).expect("a node").crash();
                self.world.down.insert(*a);
                self.world.frozen.remove(a);
                format!("kill {}", n(a))
            }
            Fault::Stop(a) => {
                if self.world.down.contains(a) {
                    return format!("{} is already down", n(a));
                }
                self.nodes.get_mut(a).expect("a node").driver.leave();
                format!("stop {} (SIGTERM: a clean stop)", n(a))
            }
            Fault::Start(a) => {
                if !self.world.down.contains(a) {
                    return format!("{} is already up", n(a));
                }
                let inc = self.nodes[a].incarnation + 1;
                self.boot(*a, inc);
                format!("start {} (incarnation {inc})", n(a))
            }
            Fault::Pause(a, ms) | Fault::Freeze(a, ms) => {
                let frozen = matches!(fault, Fault::Freeze(..));
                let node = self.nodes.get_mut(a).expect("a node");
                match node.state {
                    State::Down => format!("{} is down", n(a)),
                    _ if frozen => {
                        node.state = State::Frozen(now + ms);
                        self.world.frozen.insert(*a);
                        format!("freeze {} (the whole machine) for {ms} ms", n(a))
                    }
                    State::Frozen(_) => format!("{} is frozen", n(a)),
                    _ => {
                        node.state = State::Paused(now + ms);
                        format!("pause {}'s daemon for {ms} ms", n(a))
                    }
                }
            }
            Fault::Fail(svc, a, recovery) => self.fail(*svc, *a, *recovery),
            Fault::Hang(svc, a, once) => {
                let (breakage, which) = if *once {
                    (Breakage::HangOnce, "the next start")
                } else {
                    (Breakage::Hang, "starts")
                };
                self.world.broken.insert((*a, *svc), breakage);
                format!(
                    "{which} of {} on {} hang(s) until the start timeout ({} ms)",
                    self.spec.services[*svc].name,
                    n(a),
                    self.spec.services[*svc].start_timeout.as_millis()
                )
            }
            Fault::Break(svc, a) => {
                self.world.broken.insert((*a, *svc), Breakage::Fail);
                format!(
                    "starts of {} on {} fail at once",
                    self.spec.services[*svc].name,
                    n(a)
                )
            }
            Fault::Move(svc, to, hold) => self.operator_move(*svc, *to, *hold),
            Fault::Standby(node, on) => {
                let what = format!(
                    "{}standby {}",
                    if *on { "" } else { "un" },
                    name_of(&self.names, *node)
                );
                let bit = 1u64 << (node - 1);
                self.operator_admin(&what, |a| {
                    a.standby = if *on {
                        a.standby | bit
                    } else {
                        a.standby & !bit
                    }
                })
            }
            Fault::Maintenance(svc, on) => {
                let what = format!(
                    "{} {}",
                    if *on { "maintenance" } else { "release" },
                    self.spec.services[*svc].name
                );
                let bit = 1u64 << svc;
                self.operator_admin(&what, |a| {
                    a.maintenance = if *on {
                        a.maintenance | bit
                    } else {
                        a.maintenance & !bit
                    }
                })
            }
            _ => self.apply_network(fault),
        }
    }

    /// Faults of the network, the witness's storage and health.
    fn apply_network(&mut self, fault: &Fault) -> String {
        let n = |id: &NodeId| name_of(&self.names, *id);
        let links = self.spec.links as u8;
        let w = &mut self.world;
        match fault {
            Fault::Isolate(a) => {
                for o in w.ids.clone() {
                    for l in (0..links).filter(|_| o != *a) {
                        w.cut.insert((*a, o, l));
                        w.cut.insert((o, *a, l));
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
                    w.cut.insert((*from, *to, l));
                    if *both {
                        w.cut.insert((*to, *from, l));
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
                for o in w.ids.clone().into_iter().filter(|o| o != a) {
                    w.cut.insert((*a, o, *l));
                    w.cut.insert((o, *a, *l));
                }
                format!("cut {} link {l}", n(a))
            }
            Fault::Heal => {
                w.broken.clear();
                w.cut.clear();
                w.witness_cut.clear();
                w.unhealthy.clear();
                w.loss = 0;
                w.dup = 0;
                w.max_delay = 1;
                "heal the network, the witness's storage, health checks and broken starts".into()
            }
            Fault::Health(a, healthy) => {
                if *healthy {
                    w.unhealthy.remove(a);
                    format!("{} passes its health checks", n(a))
                } else {
                    w.unhealthy.insert(*a);
                    format!("{} fails its health checks", n(a))
                }
            }
            Fault::WitnessLost(who) => match who {
                Some(a) => {
                    w.witness_cut.insert(*a);
                    format!("{} loses the witness's storage", n(a))
                }
                None => {
                    w.witness_cut.extend(w.ids.clone());
                    "every node loses the witness's storage".into()
                }
            },
            Fault::WitnessBack => {
                w.witness_cut.clear();
                "the witness's storage is back".into()
            }
            Fault::Weather(loss, dup, delay) => {
                w.loss = *loss;
                w.dup = *dup;
                w.max_delay = (*delay).max(1);
                format!("loss {loss}% dup {dup}% delay up to {delay} ms")
            }
            other => format!("{other:?}: not a network fault"),
        }
    }

    fn fail(&mut self, svc: usize, a: NodeId, recovery: Recovery) -> String {
        let name = self.spec.services[svc].name.clone();
        let who = name_of(&self.names, a);
        if self.shells[svc].monitor_every == 0 {
            return format!("no failure: {name} has no monitor (monitor_ms) to find one");
        }
        let node = self.nodes.get_mut(&a).expect("a node");
        if node.state == State::Down
            || node.driver.node().service(svc).phase() != crate::node::Phase::Running
        {
            return format!("no failure: {who} does not run {name}");
        }
        node.local.fail.insert(svc, recovery);
        format!("{name}'s next monitor on {who} finds it failed: {recovery}")
    }

    /// An operator's standby or maintenance change (`what`), taken on the
    /// first running node (the virtual clock stands in for the wall clock).
    fn operator_admin(&mut self, what: &str, change: impl FnOnce(&mut Admin)) -> String {
        let now = self.world.now;
        let Some((id, node)) = self.nodes.iter_mut().find(|(_, n)| n.daemon_runs()) else {
            return format!("{what} refused: no daemon runs");
        };
        node.driver.change_admin(now, change);
        format!("{what} (taken on {})", name_of(&self.names, *id))
    }

    fn operator_move(&mut self, svc: usize, to: NodeId, hold: Option<Millis>) -> String {
        let name = self.spec.services[svc].name.clone();
        let target = name_of(&self.names, to);
        let issuer = self
            .nodes
            .iter()
            .find(|(_, n)| n.daemon_runs() && n.driver.node().quorate())
            .map(|(id, _)| *id);
        let Some(issuer) = issuer else {
            return format!("move {name} to {target} refused: no node has quorum");
        };
        let until = hold.map(|h| self.world.now + h);
        let node = self.nodes.get_mut(&issuer).expect("a node");
        match node.driver.move_service(svc, to, until, false) {
            Ok(()) => format!(
                "move {name} to {target}{} (taken on {})",
                hold.map(|h| format!(" for {h} ms")).unwrap_or_default(),
                name_of(&self.names, issuer)
            ),
            Err(e) => format!("move {name} to {target} refused: {e}"),
        }
    }
}
