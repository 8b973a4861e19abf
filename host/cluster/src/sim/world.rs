//! What the simulated nodes share: the virtual clock, the network (per-link,
//! per-direction cuts, loss, duplication, delay and reordering; packets through
//! the real codec), the witness's storage, health, and each promotable
//! service's replicated data.

use crate::membership::Millis;
use crate::wire::{ClusterKey, Heartbeat, NodeId, encode};
use crate::witness::Slot;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// SplitMix64: a tiny deterministic generator, so a seed replays exactly.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next number.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with a chance of `percent` %.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct InFlight {
    pub(crate) at: std::cmp::Reverse<Millis>,
    pub(crate) order: std::cmp::Reverse<u64>,
    pub(crate) to: NodeId,
    pub(crate) bytes: Vec<u8>,
}

/// How starts of a service fail on a node (until healed): part of the node's
/// environment, so it outlives a restart of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Breakage {
    /// They hang until their timeout.
    Hang,
    /// The next one hangs until its timeout.
    HangOnce,
    /// They fail at once.
    Fail,
}

/// The shared world.
pub(crate) struct World {
    pub(crate) now: Millis,
    pub(crate) rng: Rng,
    pub(crate) key: ClusterKey,
    pub(crate) ids: Vec<NodeId>,
    pub(crate) links: u8,
    /// (from, to, link) blocked.
    pub(crate) cut: BTreeSet<(NodeId, NodeId, u8)>,
    pub(crate) loss: u64,
    pub(crate) dup: u64,
    pub(crate) max_delay: Millis,
    pub(crate) queue: BinaryHeap<InFlight>,
    sent: u64,
    /// The witness's storage.
    pub(crate) slot: Slot,
    /// Nodes that cannot reach the witness's storage.
    pub(crate) witness_cut: BTreeSet<NodeId>,
    /// Nodes failing their health checks.
    pub(crate) unhealthy: BTreeSet<NodeId>,
    /// Replicated data of each promotable service (by name: a reload
    /// renumbers services) on each node: (generation, position). Kept across
    /// crashes (it is on disk).
    pub(crate) data: BTreeMap<(String, NodeId), (u64, u64)>,
    /// The highest generation any promotion started.
    pub(crate) generation: u64,
    /// Fences and stops fail now and then.
    pub(crate) chaos: bool,
    /// Targets whose last fence failed.
    pub(crate) fence_failed: BTreeSet<NodeId>,
    /// Nodes down (crashed, fenced or stopped).
    pub(crate) down: BTreeSet<NodeId>,
    /// Machines frozen whole: a fence of one always lands (a power switch
    /// does not need the machine to answer).
    pub(crate) frozen: BTreeSet<NodeId>,
    /// Starts that hang or fail, by (node, service).
    pub(crate) broken: BTreeMap<(NodeId, usize), Breakage>,
    /// When the last start that hangs times out.
    pub(crate) hangs_until: Millis,
}

impl World {
    pub(crate) fn new(ids: Vec<NodeId>, links: u8, seed: u64, chaos: bool) -> World {
        World {
            now: 0,
            rng: Rng(seed),
            key: ClusterKey::new("sim", b"simulation key, thirty-two bytes").expect("a valid key"),
            ids,
            links,
            cut: BTreeSet::new(),
            loss: 0,
            dup: 0,
            max_delay: 1,
            queue: BinaryHeap::new(),
            sent: 0,
            slot: Slot::Empty,
            witness_cut: BTreeSet::new(),
            unhealthy: BTreeSet::new(),
            data: BTreeMap::new(),
            generation: 1,
            chaos,
            fence_failed: BTreeSet::new(),
            down: BTreeSet::new(),
            frozen: BTreeSet::new(),
            broken: BTreeMap::new(),
            hangs_until: 0,
        }
    }

    /// Put `from`'s heartbeats on the wire to every other node.
    pub(crate) fn send(&mut self, from: NodeId, packets: Vec<Heartbeat>) {
        for hb in packets {
            let bytes = encode(&self.key, &hb);
            for to in self.ids.clone() {
                if to == from
                    || self.cut.contains(&(from, to, hb.link))
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

    /// The packets due now, in order.
    pub(crate) fn due(&mut self) -> Vec<InFlight> {
        let mut out = Vec::new();
        while self.queue.peek().is_some_and(|p| p.at.0 <= self.now) {
            out.extend(self.queue.pop());
        }
        out
    }

    /// Whether `a` hears `b` directly on some link (packets from `b` reach
    /// `a`). Loss below 100 % does not cut a link.
    pub(crate) fn hears(&self, a: NodeId, b: NodeId) -> bool {
        a != b && !self.down.contains(&b) && (0..self.links).any(|l| !self.cut.contains(&(b, a, l)))
    }

    /// Everything reachable from `a` through pairs of nodes that hear each other.
    pub(crate) fn component(&self, a: NodeId) -> BTreeSet<NodeId> {
        if self.down.contains(&a) {
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

    /// Storage latency of one witness read or write, ms.
    pub(crate) fn storage_delay(&mut self) -> Millis {
        1 + self.rng.below(3)
    }
}
