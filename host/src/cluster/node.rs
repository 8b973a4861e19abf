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
//!    if a stop overruns).
//! 2. A node *claims* a service (publishes it in its report) when placement names
//!    it and no member claims the service.
//! 3. It starts only after its claim has been visible for `settle` (longer than a
//!    report takes to reach every member) and every node outside its view has been
//!    outside for at least `fence_wait` (the longest a lost node can take to notice
//!    and finish self-fencing); it backs off if another member claimed the service
//!    meanwhile (the lower node id keeps its claim).
//! 4. It stops when placement moves the service away (switchover, failback), and
//!    the next owner starts only once no member claims it any more.

use super::membership::{Membership, Millis, Timing};
use super::placement::{Placement, ServiceSpec, Strategy, place};
use super::quorum::{QuorumPolicy, QuorumState};
use super::wire::{Heartbeat, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A service's state on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not held here.
    Stopped,
    /// Claimed, waiting for the claim to settle before starting.
    Claiming {
        /// When the claim was made.
        since: Millis,
    },
    /// A start is under way.
    Starting,
    /// Running here.
    Running,
    /// A stop is under way.
    Stopping,
}

impl Phase {
    /// Whether this node holds (or may hold) the service's resources.
    pub fn holds(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Stopping)
    }

    fn claims(self) -> bool {
        !matches!(self, Phase::Stopped)
    }
}

/// What the node asks its environment to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start service `index` (its resources in order); report back with [`ClusterNode::start_done`].
    Start(usize),
    /// Stop service `index` (resources in reverse order); report back with [`ClusterNode::stop_done`].
    Stop(usize),
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

    /// How long a claim must be visible before the start.
    pub fn settle(&self) -> Duration {
        self.membership.report_timeout + self.max_delay
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
    seen_all: bool,
    /// Who holds a valid witness lease, as last read (the daemon polls the lease).
    witness_holder: Option<NodeId>,
    quorum_state: Option<QuorumState>,
    placements: Vec<Placement>,
    /// Failure times per service (for restart limits and bans).
    failures: Vec<Vec<Millis>>,
    /// Per service: restart here when the current stop completes.
    restart: Vec<bool>,
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
            placements: vec![undecided; n],
            services: cluster.services.clone(),
            bounds: cluster.bounds,
            nodes: cluster.nodes.clone(),
            absent_since: cluster
                .nodes
                .iter()
                .filter(|n| **n != me)
                .map(|n| (*n, now))
                .collect(),
            seen_all: cluster.nodes.len() == 1,
            witness_holder: None,
            quorum_state: None,
            failures: vec![Vec::new(); n],
            restart: vec![false; n],
        }
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

    /// Who holds a valid witness lease (`None`: nobody, or no witness). Whether this
    /// partition holds it is decided in [`ClusterNode::tick`] against the view it
    /// computes there, never against an older view.
    pub fn set_witness_holder(&mut self, holder: Option<NodeId>) {
        self.witness_holder = holder;
    }

    /// A heartbeat arrived (already authenticated and replay-checked).
    pub fn on_heartbeat(&mut self, now: Millis, hb: &Heartbeat) {
        self.membership.on_heartbeat(now, hb);
    }

    /// A start finished; `ok` false means it failed: the failure is counted and the
    /// service stops here (and restarts here while under `max_restarts`).
    pub fn start_done(&mut self, service: usize, ok: bool, now: Millis) -> Vec<Command> {
        if self.phases[service] == Phase::Starting {
            if ok {
                self.phases[service] = Phase::Running;
            } else {
                return self.service_failed(service, now);
            }
        }
        Vec::new()
    }

    /// A stop finished. After a failure under the restart limit, the service starts
    /// again here at once: the claim was never released, so no one else may have it.
    pub fn stop_done(&mut self, service: usize) -> Vec<Command> {
        if self.phases[service] == Phase::Stopping {
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

    /// A monitor (or start) found the service failed here at `now`. Failures expire
    /// after `failure_expiry`; below `max_restarts` unexpired failures the service is
    /// restarted in place, at the limit this node bans itself for the service (all
    /// members see the ban and place it elsewhere) until the failures expire.
    pub fn service_failed(&mut self, service: usize, now: Millis) -> Vec<Command> {
        let policy = self.services[service].failures;
        let list = &mut self.failures[service];
        list.push(now);
        list.retain(|t| now.saturating_sub(*t) < ms(policy.expiry));
        let banned = list.len() as u32 >= policy.max_restarts;
        if !matches!(self.phases[service], Phase::Starting | Phase::Running) {
            return Vec::new();
        }
        self.phases[service] = Phase::Stopping;
        self.restart[service] = !banned;
        vec![Command::Stop(service)]
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

    fn banned_bits(&self, now: Millis) -> u64 {
        self.failure_counts(now)
            .iter()
            .zip(&self.services)
            .enumerate()
            .filter(|(_, (count, s))| **count as u32 >= s.failures.max_restarts)
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    fn claims_bits(&self) -> u64 {
        self.phases
            .iter()
            .enumerate()
            .filter(|(_, p)| p.claims())
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    /// Advance the clock: returns the heartbeats to send and the commands to carry out.
    pub fn tick(&mut self, now: Millis) -> (Vec<Heartbeat>, Vec<Command>) {
        let banned_here = self.banned_bits(now);
        let packets = self
            .membership
            .tick_with_claims(now, self.claims_bits(), banned_here);
        let me = self.membership.me();
        let view = self.membership.view().1.clone();
        for n in &self.nodes {
            if *n == me {
                continue;
            }
            if view.contains(n) {
                self.absent_since.remove(n);
            } else {
                self.absent_since.entry(*n).or_insert(now);
            }
        }
        if view.len() == self.nodes.len() {
            self.seen_all = true;
        }
        let witness_held = self.witness_holder.is_some_and(|h| view.contains(&h));
        let quorum = self.quorum.decide(&view, witness_held, self.seen_all);
        let quorate = quorum.quorate;
        self.quorum_state = Some(quorum);
        let fence_wait = ms(self.bounds.fence_wait());
        let lost_nodes_safe = self
            .absent_since
            .values()
            .all(|since| now.saturating_sub(*since) >= fence_wait);
        let mut commands = Vec::new();
        for i in 0..self.services.len() {
            let spec = &self.services[i];
            let others: BTreeSet<NodeId> = view
                .iter()
                .copied()
                .filter(|n| {
                    *n != me
                        && self
                            .membership
                            .claims_of(*n)
                            .is_some_and(|c| c & (1 << i) != 0)
                })
                .collect();
            let mine = if spec.strategy == Strategy::Clone {
                Placement {
                    owner: quorate.then_some(me),
                    why: "clone: runs on every member".into(),
                }
            } else {
                let mut holders = others.clone();
                if self.phases[i].claims() {
                    holders.insert(me);
                }
                let excluded: BTreeSet<NodeId> = view
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
                    .collect();
                place(spec, &view, &holders, &excluded)
            };
            let wanted_here = quorate && mine.owner == Some(me);
            self.placements[i] = if quorate {
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
            let exclusive = spec.strategy != Strategy::Clone;
            let phase = self.phases[i];
            match phase {
                // Claiming is harmless (nothing starts), so the claim settles while the
                // fence wait for lost nodes runs down.
                Phase::Stopped if wanted_here && (!exclusive || others.is_empty()) => {
                    if exclusive {
                        self.phases[i] = Phase::Claiming { since: now };
                    } else {
                        self.phases[i] = Phase::Starting;
                        commands.push(Command::Start(i));
                    }
                }
                Phase::Claiming { .. } if !wanted_here || others.iter().any(|o| *o < me) => {
                    self.phases[i] = Phase::Stopped;
                }
                Phase::Claiming { since }
                    if now.saturating_sub(since) >= ms(self.bounds.settle())
                        && others.is_empty()
                        && lost_nodes_safe =>
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
        }
        (packets, commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::FailurePolicy;

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
            }],
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
                assert!(node.start_done(0, true, now).is_empty());
            }
        }
        now
    }

    #[test]
    fn failures_restart_in_place_then_ban_the_node_until_they_expire() {
        let mut node = single(3);
        let mut now = run_until_running(&mut node, 0);
        for round in 1..=2 {
            assert_eq!(node.service_failed(0, now), [Command::Stop(0)]);
            assert_eq!(
                node.stop_done(0),
                [Command::Start(0)],
                "round {round}: restart here"
            );
            assert!(node.start_done(0, true, now).is_empty());
            assert_eq!(node.phases()[0], Phase::Running);
            now += 100;
        }
        assert_eq!(node.failure_counts(now), [2]);
        // The third failure within the expiry bans this node: stop and stay stopped.
        assert_eq!(node.service_failed(0, now), [Command::Stop(0)]);
        assert!(node.stop_done(0).is_empty());
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
                    assert_eq!(node.start_done(0, false, now), [Command::Stop(0)]);
                    assert_eq!(node.stop_done(0), [Command::Start(0)]);
                }
                assert!(node.start_done(0, true, now).is_empty());
            }
        }
        assert_eq!(node.failure_counts(now), [1]);
    }
}
