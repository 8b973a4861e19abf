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
