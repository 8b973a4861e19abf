//! Where each service should run: a pure function of the agreed view, who currently
//! holds what, and the services' strategies. Every member computes it from the same
//! inputs, so every member reaches the same answer.

use super::wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How a service maps to nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One active node, the others back it up; the service returns to its first
    /// preferred node when that node is back (failback).
    Standby,
    /// Each node runs its own services and backs up the others' (preferences differ
    /// per service; otherwise as standby).
    Mutual,
    /// Several active nodes share one backup (preferences: own node, then the backup).
    NToOne,
    /// No failback: the service stays where it runs; a repaired node becomes the backup.
    Rotating,
    /// Runs on every member (a parallel database, a monitoring agent).
    Clone,
    /// Runs on every member as a replica, and exactly one member is promoted (a
    /// replicated database's primary): the most up-to-date replica, never one
    /// that lacks an acknowledged write unless an operator forces it.
    Promotable,
}

/// How failures of a service on a node are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures (within `expiry`) restarted in place; at this many the node is banned
    /// for the service and it moves.
    pub max_restarts: u32,
    /// A failure stops counting after this long (failure counts expire by default).
    pub expiry: Duration,
    /// The wait before the second restart in a row (the first is at once); it
    /// doubles with every further unexpired failure.
    pub backoff: Duration,
    /// The longest wait before a restart.
    pub backoff_max: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_restarts: 3,
            expiry: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl FailurePolicy {
    /// How long to wait before restarting after the `failures`-th unexpired
    /// failure: nothing after the first, then `backoff`, doubling, at most
    /// `backoff_max`. *Rationale:* a one-off crash is restarted at once; a
    /// start that fails at once is not retried in a loop that excludes every
    /// node within a second.
    pub fn restart_delay(&self, failures: usize) -> Duration {
        if failures <= 1 {
            return Duration::ZERO;
        }
        let doublings = (failures - 2).min(31) as u32;
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// One service as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name.
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// Nodes in order of preference; nodes not listed may still run it, after these.
    pub preferred: Vec<NodeId>,
    /// Restart limit and failure expiry.
    pub failures: FailurePolicy,
    /// A clone that keeps running on a node that lost quorum (it shares
    /// nothing); it still starts only with quorum.
    pub keep_without_quorum: bool,
    /// The longest a start of its resources may take (their start deadlines
    /// together): how long a promotion waits for a replica that is starting.
    pub start_timeout: Duration,
}

/// The owner a non-clone service should have, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The chosen node, if any member may run it.
    pub owner: Option<NodeId>,
    /// Why, in words (status shows it).
    pub why: String,
}

/// Place one non-clone service. `holders` are the members that currently claim it;
/// `excluded` are nodes it must avoid, each with the reason in words ("is excluded
/// after failures", "has no quorum of its own").
pub fn place(
    spec: &ServiceSpec,
    view: &BTreeSet<NodeId>,
    holders: &BTreeSet<NodeId>,
    excluded: &BTreeMap<NodeId, &str>,
) -> Placement {
    let eligible = |n: &NodeId| view.contains(n) && !excluded.contains_key(n);
    if spec.strategy == Strategy::Rotating
        && let Some(h) = holders.iter().find(|h| eligible(h))
    {
        return Placement {
            owner: Some(*h),
            why: format!("stays on node {h} where it runs (rotating: no failback)"),
        };
    }
    let order = spec
        .preferred
        .iter()
        .copied()
        .chain(view.iter().copied().filter(|n| !spec.preferred.contains(n)));
    for (rank, n) in order.enumerate() {
        if eligible(&n) {
            let why = if rank == 0 {
                format!("node {n} is its first preferred node and a member")
            } else {
                let skipped: Vec<String> = spec
                    .preferred
                    .iter()
                    .take(rank)
                    .map(|p| {
                        if let Some(reason) = excluded.get(p) {
                            format!("node {p} {reason}")
                        } else {
                            format!("node {p} is not a member")
                        }
                    })
                    .collect();
                format!("on node {n} because {}", skipped.join(", "))
            };
            return Placement {
                owner: Some(n),
                why,
            };
        }
    }
    Placement {
        owner: None,
        why: nobody_may(spec, view, excluded),
    }
}

/// Why no member may run a service, and what lets one run it again.
fn nobody_may(
    spec: &ServiceSpec,
    view: &BTreeSet<NodeId>,
    excluded: &BTreeMap<NodeId, &str>,
) -> String {
    let reasons: Vec<String> = view
        .iter()
        .filter_map(|n| excluded.get(n).map(|r| format!("node {n} {r}")))
        .collect();
    let failed: Vec<String> = view
        .iter()
        .filter(|n| excluded.get(n).is_some_and(|r| r.contains("failures")))
        .map(|n| n.to_string())
        .collect();
    let mut why = format!("no member may run it: {}", reasons.join(", "));
    if !failed.is_empty() {
        why += &format!(
            "; once the cause is fixed, `baton clear {}` on node {} lets it run there again (failures also expire after {} s)",
            spec.name,
            failed.join(", node "),
            spec.failures.expiry.as_secs()
        );
    }
    why
}

/// A score as promotion compares it: (generation, position).
pub type ScoreKey = (u64, u64);

/// Show a score as `generation/position` (position in hex, as databases print
/// log positions).
pub fn show_score(s: ScoreKey) -> String {
    format!("{}/{:X}", s.0, s.1)
}

/// What promotion knows of one promotable service in a partition.
#[derive(Clone, Debug, Default)]
pub struct Replicas {
    /// Members whose replica runs, with the score of their last monitor (`None`:
    /// the agent gave none).
    pub running: BTreeMap<NodeId, Option<ScoreKey>>,
    /// Members whose replica is starting, with how much longer (ms) promotion
    /// waits for their score; one that has started for longer than the
    /// service's start timeout is not waited for.
    pub starting: BTreeMap<NodeId, u64>,
    /// The member holding (or claiming) the promoted role, if any.
    pub holder: Option<NodeId>,
    /// The highest acknowledged position known: a replica below it would lose
    /// acknowledged writes.
    pub acknowledged: Option<ScoreKey>,
    /// An operator's promotion in effect: (target, forced).
    pub operator: Option<(NodeId, bool)>,
}

/// Which member holds the promoted role of a promotable service, and why.
///
/// The holder keeps it while its replica runs (no failback: a switch of primary
/// is never free). Otherwise the replica with the highest score is promoted,
/// once every replica that is starting has reported, and only if its score is
/// at least the acknowledged position. An operator's promotion moves the role
/// to its target; a forced one skips the acknowledged check.
pub fn promote(spec: &ServiceSpec, r: &Replicas, excluded: &BTreeMap<NodeId, &str>) -> Placement {
    let usable = |n: &NodeId| r.running.contains_key(n) && !excluded.contains_key(n);
    let score = |n: &NodeId| r.running.get(n).copied().flatten();
    let safe = |n: &NodeId| match (score(n), r.acknowledged) {
        (_, None) => true,
        (Some(s), Some(a)) => s >= a,
        (None, Some(_)) => false,
    };
    let behind = |n: &NodeId| match (score(n), r.acknowledged) {
        (Some(s), Some(a)) => format!(
            "node {n} at {} is behind the acknowledged {} and would lose acknowledged writes",
            show_score(s),
            show_score(a)
        ),
        _ => format!("node {n} reports no score"),
    };
    let force_hint = format!(
        "`baton promote {} --on NODE --force` accepts the loss",
        spec.name
    );
    let held = r.holder.filter(usable);
    if let Some((t, force)) = r.operator {
        if usable(&t) && (held.is_some() || force || safe(&t)) {
            return Placement {
                owner: Some(t),
                why: format!(
                    "promoted on node {t} by an operator{}",
                    if force { " (forced)" } else { "" }
                ),
            };
        }
        let refused = if usable(&t) {
            format!("{}; {force_hint}", behind(&t))
        } else {
            format!("node {t} runs no usable replica")
        };
        return Placement {
            owner: held,
            why: format!(
                "the operator's promotion of node {t} waits: {refused}{}",
                held.map_or(String::new(), |h| format!("; node {h} stays promoted"))
            ),
        };
    }
    if let Some(h) = held {
        return Placement {
            owner: Some(h),
            why: format!("promoted on node {h}, where it stays while its replica runs"),
        };
    }
    // The best replica can only be told once every replica has reported: the
    // acknowledged position known here may be a moment older than the last
    // write a starting replica holds. The wait is bounded by the start
    // timeout: a replica whose start hangs is then passed over, as long as a
    // running one holds every acknowledged write.
    if let Some((s, left)) = r.starting.iter().find(|(n, _)| !excluded.contains_key(n)) {
        return Placement {
            owner: None,
            why: format!(
                "waiting for the replica on node {s} to start and report its score (at most {} s more)",
                left.div_ceil(1000)
            ),
        };
    }
    let rank = |n: &NodeId| {
        spec.preferred
            .iter()
            .position(|p| p == n)
            .unwrap_or(spec.preferred.len())
    };
    let best = r
        .running
        .keys()
        .filter(|n| usable(n) && score(n).is_some())
        .max_by(|a, b| {
            score(a)
                .cmp(&score(b))
                .then(rank(b).cmp(&rank(a)))
                .then(b.cmp(a))
        });
    match best {
        None => Placement {
            owner: None,
            why: "no replica runs with a score yet".into(),
        },
        Some(b) if !safe(b) => Placement {
            owner: None,
            why: format!(
                "not promoted: the best replica, {}; {force_hint}",
                behind(b),
            ),
        },
        Some(b) => Placement {
            owner: Some(*b),
            why: format!(
                "promoted on node {b}: the most up-to-date replica ({})",
                score(b).map(show_score).unwrap_or_default()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &[NodeId]) -> BTreeSet<NodeId> {
        n.iter().copied().collect()
    }

    fn failed(n: &[NodeId]) -> BTreeMap<NodeId, &'static str> {
        n.iter()
            .map(|n| (*n, "is excluded after failures"))
            .collect()
    }

    fn spec(strategy: Strategy, preferred: &[NodeId]) -> ServiceSpec {
        ServiceSpec {
            name: "db".into(),
            strategy,
            preferred: preferred.to_vec(),
            failures: FailurePolicy::default(),
            keep_without_quorum: false,
            start_timeout: Duration::from_secs(20),
        }
    }

    #[test]
    fn standby_prefers_the_first_member_and_fails_back() {
        let s = spec(Strategy::Standby, &[1, 2]);
        assert_eq!(
            place(&s, &set(&[1, 2, 3]), &set(&[]), &failed(&[])).owner,
            Some(1)
        );
        let p = place(&s, &set(&[2, 3]), &set(&[]), &failed(&[]));
        assert_eq!(p.owner, Some(2));
        assert_eq!(p.why, "on node 2 because node 1 is not a member");
        // Node 1 is back: standby fails back even though 2 holds it.
        assert_eq!(
            place(&s, &set(&[1, 2, 3]), &set(&[2]), &failed(&[])).owner,
            Some(1)
        );
    }

    #[test]
    fn rotating_never_fails_back() {
        let s = spec(Strategy::Rotating, &[1, 2]);
        let p = place(&s, &set(&[1, 2, 3]), &set(&[2]), &failed(&[]));
        assert_eq!(p.owner, Some(2));
        assert!(p.why.contains("no failback"), "{}", p.why);
    }

    #[test]
    fn exclusions_and_unlisted_members() {
        let s = spec(Strategy::Standby, &[1]);
        let p = place(&s, &set(&[1, 3]), &set(&[]), &failed(&[1]));
        assert_eq!(p.owner, Some(3));
        assert!(p.why.contains("excluded after failures"), "{}", p.why);
        let nobody = place(&s, &set(&[1]), &set(&[]), &failed(&[1]));
        assert_eq!(nobody.owner, None);
        assert_eq!(
            nobody.why,
            "no member may run it: node 1 is excluded after failures; once the cause is fixed, `baton clear db` on node 1 lets it run there again (failures also expire after 600 s)"
        );
    }

    #[test]
    fn restarts_back_off_after_the_first() {
        let p = FailurePolicy {
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(3),
            ..FailurePolicy::default()
        };
        let waits: Vec<u128> = (1..=6).map(|k| p.restart_delay(k).as_millis()).collect();
        assert_eq!(waits, [0, 500, 1000, 2000, 3000, 3000]);
        assert_eq!(p.restart_delay(1000), Duration::from_secs(3));
    }

    #[test]
    fn a_starting_replica_is_waited_for_only_within_its_bound() {
        let s = spec(Strategy::Promotable, &[1, 2, 3]);
        let mut r = Replicas {
            running: BTreeMap::from([(1, Some((1, 10))), (2, Some((1, 10)))]),
            starting: BTreeMap::from([(3, 4_500)]),
            acknowledged: Some((1, 10)),
            ..Replicas::default()
        };
        let waiting = promote(&s, &r, &failed(&[]));
        assert_eq!(waiting.owner, None);
        assert!(
            waiting.why.contains("node 3") && waiting.why.contains("at most 5 s more"),
            "{}",
            waiting.why
        );
        // Past its bound the starting replica is not in the list: the best running one is promoted.
        r.starting.clear();
        assert_eq!(promote(&s, &r, &failed(&[])).owner, Some(1));
    }
}
