//! Quorum: whether this partition may run services. A pure function of the agreed
//! view, the votes, the witness and the cold-start state.
//!
//! Rules (stated precisely in docs/operations.md):
//! - total = the votes of every configured node + the witness's votes;
//! - present = the votes of the nodes in this partition's view + the witness's votes
//!   when this partition holds the witness lease;
//! - a partition is quorate iff `2 × present > total` (a strict majority), so two
//!   disjoint partitions can never both be quorate — the witness lease is held by
//!   at most one partition at a time (see `witness.rs`);
//! - with `wait_for_all`, a node that has not yet seen every configured node in one
//!   view since it started is never quorate (no split brain on a simultaneous boot of
//!   a two-node cluster).

use super::wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// Quorum settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumPolicy {
    /// Votes per configured node.
    pub votes: BTreeMap<NodeId, u32>,
    /// The witness's votes (0: no witness). N−1 lets the last survivor of N run.
    pub witness_votes: u32,
    /// Refuse quorum until every node has been seen in one view since start.
    pub wait_for_all: bool,
}

/// The quorum decision, with the numbers status shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumState {
    /// Whether this partition may run services.
    pub quorate: bool,
    /// Votes present (members + witness if held).
    pub present: u32,
    /// All votes.
    pub total: u32,
    /// Whether this partition holds the witness.
    pub witness_held: bool,
    /// Why, in words.
    pub reason: String,
}

impl QuorumPolicy {
    /// One vote per node, no witness.
    pub fn majority(nodes: &[NodeId]) -> QuorumPolicy {
        QuorumPolicy {
            votes: nodes.iter().map(|n| (*n, 1)).collect(),
            witness_votes: 0,
            wait_for_all: false,
        }
    }

    /// All votes.
    pub fn total(&self) -> u32 {
        self.votes.values().sum::<u32>() + self.witness_votes
    }

    /// Decide for a partition with `view`, holding the witness or not, and having
    /// (or not) seen every node at once since start.
    pub fn decide(
        &self,
        view: &BTreeSet<NodeId>,
        witness_held: bool,
        seen_all: bool,
    ) -> QuorumState {
        let total = self.total();
        let members: u32 = view.iter().filter_map(|n| self.votes.get(n)).sum();
        let witness_held = witness_held && self.witness_votes > 0;
        let present = members + if witness_held { self.witness_votes } else { 0 };
        let majority = 2 * present > total;
        let (quorate, reason) = if self.wait_for_all && !seen_all {
            (false, "waiting for all nodes: every node must be seen once after a cold start (wait_for_all)".to_string())
        } else if majority {
            (
                true,
                format!(
                    "{present} of {total} votes{} is a strict majority",
                    if witness_held {
                        " (with the witness)"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            (
                false,
                format!(
                    "{present} of {total} votes{} is not a strict majority (need {})",
                    if witness_held {
                        " (with the witness)"
                    } else {
                        ""
                    },
                    total / 2 + 1
                ),
            )
        };
        QuorumState {
            quorate,
            present,
            total,
            witness_held,
            reason,
        }
    }
}

/// What `config check` says of a quorum policy: what a partition of each
/// size needs, and the splits in two that leave no side able to be quorate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arithmetic {
    /// The explanation, a line each.
    pub lines: Vec<String>,
    /// Designs in which a split leaves no partition quorate, with the fix.
    pub warnings: Vec<String>,
}

impl QuorumPolicy {
    /// The quorum arithmetic of this policy, in words: for a partition of each
    /// possible weight, whether it is quorate on its own, only with the witness,
    /// or never; and every split in two after which no side can be quorate.
    /// (A partition takes the witness only when it makes it quorate, so with a
    /// witness one side of any split in two can always be.)
    pub fn arithmetic(&self) -> Arithmetic {
        let total = self.total();
        let nodes: Vec<u32> = self.votes.values().copied().collect();
        let node_votes: u32 = nodes.iter().sum();
        let uniform = nodes.iter().all(|v| *v == 1);
        let size = |v: u32| {
            if uniform {
                format!("{v} node{}", if v == 1 { "" } else { "s" })
            } else {
                format!("a partition of {v} vote{}", if v == 1 { "" } else { "s" })
            }
        };
        let w = self.witness_votes;
        let mut lines = vec![format!(
            "quorum: {total} votes in all ({} nodes{}, {}); a partition is quorate with {}",
            nodes.len(),
            if uniform { " of 1 vote" } else { "" },
            if w == 0 {
                "no witness".to_string()
            } else {
                format!("a witness of {w}")
            },
            total / 2 + 1
        )];
        // Every weight a set of nodes can have (subset sums), heaviest first.
        let mut sums = std::collections::BTreeSet::from([0u32]);
        for v in &nodes {
            let next: Vec<u32> = sums.iter().map(|s| s + v).collect();
            sums.extend(next);
        }
        for v in sums.iter().rev().filter(|v| **v > 0) {
            let what = if 2 * v > total {
                "quorate on its own".to_string()
            } else if w > 0 && 2 * (v + w) > total {
                format!("quorate only with the witness ({v} + {w} of {total})")
            } else if w > 0 {
                format!("never quorate ({} of {total} even with the witness)", v + w)
            } else {
                format!("never quorate ({v} of {total})")
            };
            lines.push(format!("  {}: {what}", size(*v)));
        }
        let mut warnings = Vec::new();
        for a in sums.iter().filter(|a| **a > 0 && 2 * **a <= node_votes) {
            let b = node_votes - a;
            let able = |v: u32| 2 * v > total || (w > 0 && 2 * (v + w) > total);
            if !able(*a) && !able(b) {
                warnings.push(format!(
                    "a split into {} and {} leaves no partition quorate, so nothing runs on either side; give the cluster a witness of 1 vote (the side that takes it runs the services), or one node one more vote",
                    size(*a),
                    size(b)
                ));
            }
        }
        if w > 0 {
            lines.push(
                "  after any split in two, the side the witness makes quorate takes it (a side it cannot make quorate lets it go)"
                    .into(),
            );
        }
        Arithmetic { lines, warnings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    fn with_witness(n: u16, witness_votes: u32, wait_for_all: bool) -> QuorumPolicy {
        QuorumPolicy {
            witness_votes,
            wait_for_all,
            ..QuorumPolicy::majority(&(1..=n).collect::<Vec<_>>())
        }
    }

    #[test]
    fn a_strict_majority_is_needed() {
        let q = QuorumPolicy::majority(&[1, 2, 3]);
        assert!(q.decide(&view(&[1, 2]), false, true).quorate);
        assert!(!q.decide(&view(&[3]), false, true).quorate);
        let q4 = QuorumPolicy::majority(&[1, 2, 3, 4]);
        let half = q4.decide(&view(&[1, 2]), false, true);
        assert!(
            !half.quorate,
            "a 2-2 split must not be quorate without a witness"
        );
        assert_eq!(
            half.reason,
            "2 of 4 votes is not a strict majority (need 3)"
        );
    }

    #[test]
    fn the_last_survivor_of_four_runs_with_the_witness_worth_three_votes() {
        let q = with_witness(4, 3, false);
        let alone = q.decide(&view(&[2]), true, true);
        assert!(alone.quorate, "{}", alone.reason);
        assert_eq!((alone.present, alone.total), (4, 7));
        assert!(!q.decide(&view(&[2]), false, true).quorate);
    }

    #[test]
    fn two_disjoint_partitions_are_never_both_quorate() {
        // Exhaustive over 4 nodes, witness weights 0..=3, every split, witness on either side.
        for w in 0..=3 {
            let q = with_witness(4, w, false);
            for mask in 0u16..16 {
                let left: Vec<NodeId> = (1..=4).filter(|n| mask & (1 << (n - 1)) != 0).collect();
                let right: Vec<NodeId> = (1..=4).filter(|n| mask & (1 << (n - 1)) == 0).collect();
                for left_has_witness in [true, false] {
                    let l = q.decide(&view(&left), left_has_witness, true);
                    let r = q.decide(&view(&right), !left_has_witness, true);
                    assert!(
                        !(l.quorate && r.quorate),
                        "w={w} {left:?}|{right:?} both quorate"
                    );
                }
            }
        }
    }

    #[test]
    fn the_arithmetic_says_what_each_partition_needs_and_warns_of_splits_nobody_survives() {
        let three_and_one = with_witness(3, 1, false).arithmetic();
        assert_eq!(
            three_and_one.lines[..4],
            [
                "quorum: 4 votes in all (3 nodes of 1 vote, a witness of 1); a partition is quorate with 3",
                "  3 nodes: quorate on its own",
                "  2 nodes: quorate only with the witness (2 + 1 of 4)",
                "  1 node: never quorate (2 of 4 even with the witness)",
            ]
        );
        assert!(three_and_one.warnings.is_empty());
        let four = with_witness(4, 0, false).arithmetic();
        assert_eq!(four.warnings.len(), 1);
        assert!(
            four.warnings[0]
                .starts_with("a split into 2 nodes and 2 nodes leaves no partition quorate")
                && four.warnings[0].contains("witness of 1 vote"),
            "{:?}",
            four.warnings
        );
        assert!(with_witness(4, 1, false).arithmetic().warnings.is_empty());
        assert!(with_witness(3, 0, false).arithmetic().warnings.is_empty());
    }

    #[test]
    fn two_nodes_with_a_witness_and_wait_for_all() {
        let q = with_witness(2, 1, true);
        // Cold start, the peer never seen: not quorate even with the witness.
        assert!(!q.decide(&view(&[1]), true, false).quorate);
        // After both were seen once, a link cut leaves exactly the witness holder quorate.
        assert!(q.decide(&view(&[1]), true, true).quorate);
        assert!(!q.decide(&view(&[2]), false, true).quorate);
    }
}
