//! Where each service should run: a pure function of the agreed view, who currently
//! holds what, and the services' strategies. Every member computes it from the same
//! inputs, so every member reaches the same answer.

use super::wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

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
    pub expiry: std::time::Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_restarts: 3,
            expiry: std::time::Duration::from_secs(600),
        }
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
        why: "no member may run it".into(),
    }
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
    /// Members whose replica is starting: promotion waits for their score.
    pub starting: BTreeSet<NodeId>,
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
    // write a starting replica holds. A replica whose start keeps failing is
    // excluded after its restarts, and stops blocking.
    if let Some(s) = r.starting.iter().find(|n| !excluded.contains_key(n)) {
        return Placement {
            owner: None,
            why: format!("waiting for the replica on node {s} to start and report its score"),
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
        assert_eq!(place(&s, &set(&[1]), &set(&[]), &failed(&[1])).owner, None);
    }
}
