//! One simulated node: the real [`Driver`] (and through it the real
//! [`crate::node::ClusterNode`]), and a model of everything the daemon does
//! around it — agents whose work takes time (a start may hang until its
//! timeout; with chaos a stop or a fence may fail), the witness worker running
//! the real lease logic on the world's storage, and the guardian, which ends
//! the node's services when the daemon stops renewing it.

use super::world::{Breakage, World};
use crate::driver::{Done, Driver, Failure, Job, NodeIo, WitnessAnswer};
use crate::membership::Millis;
use crate::node::{ClusterSpec, Phase};
use crate::placement::Strategy;
use crate::wire::{Heartbeat, NodeId, ReplayGuard};
use crate::witness::{DeltaLease, LeaseOp, Outcome, Slot, Step};
use baton_plugin_api::{Promotion, Recovery};
use std::collections::{BTreeMap, BTreeSet};

/// Where a node's processes stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Running.
    Up,
    /// The daemon (with its witness worker) is stopped until then; its guardian
    /// and its agents' processes run on.
    Paused(Millis),
    /// The whole machine is stopped until then: nothing on it runs.
    Frozen(Millis),
    /// The daemon is starting until then: its sockets are not open yet.
    Booting(Millis),
    /// Powered off, fenced, or stopped cleanly.
    Down,
}

/// What reaches the daemon from its workers.
enum Input {
    Done(Done),
    Witness(WitnessAnswer),
}

/// Agent or fence work in progress.
struct Pending {
    at: Millis,
    job: Job,
    /// The work fails (a hung start timing out, a process the guardian or the
    /// stop cap killed, an injected failure).
    fails: bool,
}

/// The guardian: its lease, what it was last told the node holds, and whether
/// the daemon dismissed it.
struct Guardian {
    renewed: Millis,
    holds: bool,
    dismissed: bool,
}

/// The witness worker: the real lease logic, one operation at a time, each
/// storage access taking a few ms.
struct WitnessWorker {
    lease: DeltaLease,
    next: Option<(Millis, Step)>,
    asked: Millis,
}

/// Everything of a node but its driver (so the driver can be handed it as I/O).
pub(crate) struct Local {
    pub(crate) id: NodeId,
    /// Services whose resources exist here (from the start command until the
    /// stop completes, or the guardian or a fence ends them).
    pub(crate) holding: BTreeSet<usize>,
    /// Promotable services promoted here (from the promote command until the
    /// demotion or the stop completes).
    pub(crate) promoted: BTreeSet<usize>,
    pending: Vec<Pending>,
    inbox: Vec<Input>,
    guardian: Guardian,
    witness: WitnessWorker,
    /// The next monitor of these services here fails with this recovery.
    pub(crate) fail: BTreeMap<usize, Recovery>,
    /// Promote jobs issued since the last look (checked by the simulator).
    pub(crate) promotions: Vec<usize>,
    /// Fences that landed since the last look: (target, incarnation).
    pub(crate) fenced: Vec<(NodeId, u64)>,
    /// What the guardian ended since the last look, in words.
    pub(crate) guardian_notes: Vec<String>,
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) driver: Driver,
    /// The config this node runs (after a reload, the one it switched to).
    pub(crate) spec: ClusterSpec,
    pub(crate) guard: ReplayGuard,
    pub(crate) incarnation: u64,
    pub(crate) state: State,
    pub(crate) local: Local,
}

impl SimNode {
    pub(crate) fn boot(
        driver: Driver,
        spec: ClusterSpec,
        id: NodeId,
        incarnation: u64,
        lease_ms: Millis,
        seed: u64,
        now: Millis,
    ) -> SimNode {
        SimNode {
            driver,
            spec,
            guard: ReplayGuard::default(),
            incarnation,
            state: State::Up,
            local: Local {
                id,
                holding: BTreeSet::new(),
                promoted: BTreeSet::new(),
                pending: Vec::new(),
                inbox: Vec::new(),
                guardian: Guardian {
                    renewed: now,
                    holds: false,
                    dismissed: false,
                },
                witness: WitnessWorker {
                    lease: DeltaLease::new(id, lease_ms, seed),
                    next: None,
                    asked: 0,
                },
                fail: BTreeMap::new(),
                promotions: Vec::new(),
                fenced: Vec::new(),
                guardian_notes: Vec::new(),
            },
        }
    }

    /// Whether the daemon runs (its loop turns).
    pub(crate) fn daemon_runs(&self) -> bool {
        self.state == State::Up
    }

    /// Whether anything on the machine runs.
    pub(crate) fn machine_runs(&self) -> bool {
        matches!(self.state, State::Up | State::Paused(_))
    }

    /// Whether the daemon has input waiting.
    pub(crate) fn has_input(&self) -> bool {
        !self.local.inbox.is_empty()
    }

    /// Hand the daemon what its workers finished, then one turn of its loop.
    pub(crate) fn turn(&mut self, world: &mut World) {
        let mut io = SimIo {
            world,
            local: &mut self.local,
            spec: &self.spec,
        };
        for input in std::mem::take(&mut io.local.inbox) {
            match input {
                Input::Done(d) => self.driver.done(&mut io, d),
                Input::Witness(a) => self.driver.witness_answer(a),
            }
        }
        self.driver.turn(&mut io);
        let node = self.driver.node();
        if node.config() != self.spec.config {
            self.spec.config = node.config();
            self.spec.services = node.services().iter().map(|s| s.spec().clone()).collect();
        }
    }

    /// The name of this node's service `i`.
    pub(crate) fn service_name(&self, i: usize) -> &str {
        &self.spec.services[i].name
    }

    /// A crash (power off, or a fence): its processes die with it.
    pub(crate) fn crash(&mut self) {
        self.state = State::Down;
        self.local.holding.clear();
        self.local.promoted.clear();
        self.local.pending.clear();
        self.local.inbox.clear();
        self.local.witness.next = None;
    }
}

impl Local {
    /// Agent work due by `now` completes (while the machine runs); completions
    /// wait in the inbox until the daemon runs.
    pub(crate) fn progress_agents(&mut self, world: &mut World, spec: &ClusterSpec) {
        let now = world.now;
        let (done, pending): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.at <= now);
        self.pending = pending;
        for p in done {
            let done = self.complete(p, world, spec);
            self.inbox.push(Input::Done(done));
        }
    }

    fn complete(&mut self, p: Pending, world: &mut World, spec: &ClusterSpec) -> Done {
        let failure = |what: &str| -> Failure { (Recovery::RestartHere, what.to_string()) };
        match p.job {
            Job::Start(i, _) => Done::Started(
                i,
                if p.fails {
                    Err(failure(
                        "start failed: its processes were ended or it timed out",
                    ))
                } else {
                    Ok(())
                },
            ),
            Job::Stop { service, .. } => {
                // With chaos and a fence agent, a stop sometimes fails: the
                // resources stay (a fence or an operator resolves it). A stop
                // whose processes were ended fails as a call but leaves nothing.
                let stays = world.chaos && spec.fencing && world.rng.chance(5);
                if !stays {
                    self.holding.remove(&service);
                    self.promoted.remove(&service);
                }
                Done::Stopped(service, !stays && !p.fails)
            }
            Job::Promote(i) => {
                if p.fails || !self.holding.contains(&i) {
                    self.promoted.remove(&i);
                    return Done::Promoted(i, Err(failure("promote failed: the replica is gone")));
                }
                // A promotion starts a new generation (a database's new timeline).
                world.generation += 1;
                let key = (spec.services[i].name.clone(), self.id);
                let position = world.data[&key].1;
                world.data.insert(key, (world.generation, position));
                Done::Promoted(i, Ok(()))
            }
            Job::Demote(i) => {
                self.promoted.remove(&i);
                Done::Demoted(i, true)
            }
            Job::Monitor {
                service,
                round,
                promoted,
            } => self.monitor(world, spec, service, round, promoted),
            Job::Verify(i) => Done::Verified(i, !self.holding.contains(&i)),
            Job::Fence { node, incarnation } => {
                // With chaos a fence fails now and then (never twice in a row for
                // one target, so a retry lands within a quiet period).
                let ok = world.fence_failed.remove(&node)
                    || world.frozen.contains(&node)
                    || !(world.chaos && world.rng.chance(20));
                if ok {
                    self.fenced.push((node, incarnation));
                } else {
                    world.fence_failed.insert(node);
                }
                Done::Fenced(node, incarnation, ok)
            }
        }
    }

    /// A monitor round: an injected failure, a replica whose processes are gone
    /// (the guardian ended them), or healthy with the replica's score.
    fn monitor(
        &mut self,
        world: &World,
        spec: &ClusterSpec,
        i: usize,
        round: u64,
        promoted: bool,
    ) -> Done {
        let result = if let Some(recovery) = self.fail.remove(&i) {
            Err((recovery, "monitor failed (injected)".to_string()))
        } else if !self.holding.contains(&i) {
            Err((Recovery::RestartHere, "not running".to_string()))
        } else {
            Ok(())
        };
        let score = (spec.services[i].strategy == Strategy::Promotable)
            .then(|| world.data[&(spec.services[i].name.clone(), self.id)])
            .map(|(generation, position)| Promotion {
                generation,
                position,
                acknowledged: promoted.then_some(position),
            });
        Done::Monitored {
            service: i,
            round,
            result,
            score,
        }
    }

    /// The witness worker's next storage access, if due.
    pub(crate) fn progress_witness(&mut self, world: &mut World) {
        let Some((at, step)) = self.witness.next.take() else {
            return;
        };
        if at > world.now {
            self.witness.next = Some((at, step));
            return;
        }
        let cut = world.witness_cut.contains(&self.id);
        let unreachable = "witness storage: unreachable (simulated)".to_string();
        let outcome = match step {
            Step::Read => Outcome::Read(if cut {
                Err(unreachable)
            } else {
                Ok(world.slot.clone())
            }),
            Step::Write(r) => Outcome::Wrote(if cut {
                Err(unreachable)
            } else {
                world.slot = Slot::Lease(r);
                Ok(())
            }),
            Step::Wait(_) => Outcome::Waited,
            Step::Done(_) => return,
        };
        let next = self.witness.lease.step(world.now, outcome);
        self.schedule_witness(world, next);
    }

    fn schedule_witness(&mut self, world: &mut World, step: Step) {
        let at = match &step {
            Step::Done(result) => {
                self.inbox.push(Input::Witness(WitnessAnswer {
                    asked: self.witness.asked,
                    result: result.clone(),
                }));
                return;
            }
            Step::Wait(ms) => world.now + ms,
            Step::Read | Step::Write(_) => world.now + world.storage_delay(),
        };
        self.witness.next = Some((at, step));
    }

    /// The guardian, once a millisecond while the machine runs: it ends what the
    /// node holds when no renewal came for its lease (the daemon is frozen) or
    /// the daemon is gone without dismissing it.
    pub(crate) fn watch(&mut self, now: Millis, lease: Millis, daemon_gone: bool) {
        let g = &self.guardian;
        let expired = daemon_gone || now.saturating_sub(g.renewed) > lease;
        if g.dismissed || !g.holds || !expired || self.holding.is_empty() {
            return;
        }
        let ended: Vec<usize> = self.holding.iter().copied().collect();
        self.holding.clear();
        self.promoted.clear();
        for p in &mut self.pending {
            if matches!(p.job, Job::Start(..) | Job::Promote(_)) {
                p.fails = true;
            }
        }
        // It fences once, then waits for the daemon's next renewal.
        self.guardian.holds = false;
        self.guardian_notes
            .push(format!("the guardian ended services {ended:?}"));
    }
}

/// The daemon's I/O, modelled.
struct SimIo<'a> {
    world: &'a mut World,
    local: &'a mut Local,
    spec: &'a ClusterSpec,
}

impl NodeIo for SimIo<'_> {
    fn now(&self) -> Millis {
        self.world.now
    }

    fn send(&mut self, packets: Vec<Heartbeat>) {
        self.world.send(self.local.id, packets);
    }

    fn run(&mut self, job: Job) {
        let now = self.world.now;
        let self_fence = self.spec.bounds.self_fence.as_millis() as u64;
        let local = &mut *self.local;
        let (took, fails) = match &job {
            Job::Start(i, _) => match self.world.broken.get(&(local.id, *i)).copied() {
                Some(Breakage::HangOnce) => {
                    self.world.broken.remove(&(local.id, *i));
                    (
                        self.spec.services[*i].start_timeout.as_millis() as u64,
                        true,
                    )
                }
                Some(Breakage::Hang) => (
                    self.spec.services[*i].start_timeout.as_millis() as u64,
                    true,
                ),
                Some(Breakage::Fail) => (1 + self.world.rng.below(3), true),
                None => (5 + self.world.rng.below(45), false),
            },
            Job::Promote(_) => (5 + self.world.rng.below(45), false),
            Job::Stop { service, cap } => {
                // A stop supersedes a start, promotion or demotion in progress.
                local.pending.retain(|p| {
                    !matches!(p.job, Job::Start(s, _) | Job::Promote(s) | Job::Demote(s) if s == *service)
                });
                let took = 1 + self.world.rng.below(self_fence.max(1));
                (cap.map_or(took, |c| took.min(c)), false)
            }
            Job::Demote(_) => (1 + self.world.rng.below(self_fence.max(1)), false),
            Job::Monitor { .. } | Job::Verify(_) => (1 + self.world.rng.below(5), false),
            Job::Fence { .. } => (5 + self.world.rng.below(50), false),
        };
        match job {
            Job::Start(i, _) => {
                local.holding.insert(i);
                if fails && took > 3 {
                    self.world.hangs_until = self.world.hangs_until.max(now + took);
                }
            }
            Job::Promote(i) => {
                local.promoted.insert(i);
                local.promotions.push(i);
            }
            _ => {}
        }
        local.pending.push(Pending {
            at: now + took,
            job,
            fails,
        });
    }

    fn witness(&mut self, op: LeaseOp, asked: Millis) {
        let first = self.local.witness.lease.begin(op, asked);
        self.local.witness.asked = asked;
        self.local.schedule_witness(self.world, first);
    }

    fn health(&mut self) -> (bool, Option<Millis>) {
        let healthy = !self.world.unhealthy.contains(&self.local.id);
        (healthy, healthy.then_some(self.world.now))
    }

    fn guard(&mut self, phases: &[Phase]) {
        self.local.guardian.renewed = self.world.now;
        self.local.guardian.holds = phases.iter().any(|p| p.holds());
    }

    fn dismiss_guardian(&mut self) {
        self.local.guardian.dismissed = true;
    }

    fn end_processes(&mut self, service: usize) -> Result<usize, String> {
        let held = self.local.holding.remove(&service);
        self.local.promoted.remove(&service);
        for p in &mut self.local.pending {
            if matches!(p.job, Job::Stop { service: s, .. } if s == service) {
                // The stop's own calls were killed with the processes.
                p.fails = true;
            }
        }
        Ok(usize::from(held))
    }

    fn switched(&mut self, continues: &[Option<usize>]) {
        let local = &mut *self.local;
        let follow = |old: &BTreeSet<usize>| -> BTreeSet<usize> {
            (0..continues.len())
                .filter(|i| continues[*i].is_some_and(|o| old.contains(&o)))
                .collect()
        };
        local.holding = follow(&local.holding);
        local.promoted = follow(&local.promoted);
        // Only monitor rounds and fences can be under way at a switch; the
        // rounds' answers would name the old indices.
        local.pending.retain(|p| matches!(p.job, Job::Fence { .. }));
        local
            .inbox
            .retain(|i| !matches!(i, Input::Done(Done::Monitored { .. } | Done::Verified(..))));
        local.fail.clear();
    }
}
