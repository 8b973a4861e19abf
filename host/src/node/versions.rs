//! Wire versions in a rolling upgrade: this node speaks `OLDEST..=newest`,
//! sends each peer the newest version both speak (what the peer's own packets
//! say it speaks; this node's newest until it is heard), and says which
//! version the cluster speaks (the oldest among the members) and whom it
//! cannot talk to, naming both sides' versions.

use crate::cluster::membership::Millis;
use crate::cluster::wire::{NodeId, OLDEST};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A refusal older than this is no longer shown.
const REFUSED_SHOWN_MS: Millis = 60_000;
/// How often a peer spoken to in an older version is sent one heartbeat in
/// the newest: an upgraded peer answers in it and both move up; a peer of
/// the older release drops that one packet.
const PROBE_EVERY_MS: Millis = 2_000;

/// What this node knows of the wire versions around it.
pub struct WireVersions {
    newest: u8,
    /// The newest version each peer's current incarnation has sent: a stale
    /// packet in an older one (sent before it heard this node's newest) does
    /// not step it back down; a restart (a new incarnation) may.
    spoken: BTreeMap<NodeId, (u64, u8)>,
    /// Packets refused for their version, by the sender they claim: the
    /// version and when.
    refused: BTreeMap<NodeId, (u8, Millis)>,
    /// When each peer spoken to in an older version was last sent the newest.
    probed: BTreeMap<NodeId, Millis>,
}

/// The wire versions, as status shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WireStatus {
    /// The versions this node speaks, `OLDEST–NEWEST`.
    pub speaks: String,
    /// The newest of them.
    pub newest: u8,
    /// The version the members speak together (the oldest of theirs).
    pub cluster: u8,
    /// The version each peer last spoke to this node.
    pub peers: BTreeMap<String, u8>,
    /// Nodes refused in the last minute for their version, with both sides'.
    pub refused: Vec<String>,
}

impl WireVersions {
    /// A node that speaks up to `newest`.
    pub fn new(newest: u8) -> WireVersions {
        WireVersions {
            newest,
            spoken: BTreeMap::new(),
            refused: BTreeMap::new(),
            probed: BTreeMap::new(),
        }
    }

    /// The newest version this node speaks.
    pub fn newest(&self) -> u8 {
        self.newest
    }

    /// The version to send `peer`.
    pub fn to_peer(&self, peer: NodeId) -> u8 {
        self.spoken
            .get(&peer)
            .map_or(self.newest, |(_, v)| (*v).min(self.newest))
    }

    /// The version to send `peer` a heartbeat in at `now`: [`Self::to_peer`],
    /// but the newest once per PROBE_EVERY_MS while that is older.
    pub fn sending(&mut self, peer: NodeId, now: Millis) -> u8 {
        let version = self.to_peer(peer);
        if version >= self.newest {
            return version;
        }
        let last = self.probed.entry(peer).or_insert(now);
        if now.saturating_sub(*last) >= PROBE_EVERY_MS {
            *last = now;
            return self.newest;
        }
        version
    }

    /// A packet of `version` from incarnation `incarnation` of `peer` was
    /// accepted.
    pub fn heard(&mut self, peer: NodeId, incarnation: u64, version: u8) {
        let entry = self.spoken.entry(peer).or_insert((incarnation, version));
        *entry = if entry.0 == incarnation {
            (incarnation, entry.1.max(version))
        } else {
            (incarnation, version)
        };
        self.refused.remove(&peer);
    }

    /// A packet claiming to be from `peer` was refused for its `version`.
    pub fn refused(&mut self, peer: NodeId, version: u8, now: Millis) {
        self.refused.insert(peer, (version, now));
    }

    /// As status shows it, with `members` (this node among them) and names.
    pub fn status(
        &self,
        me: NodeId,
        members: &BTreeSet<NodeId>,
        names: &BTreeMap<NodeId, String>,
        now: Millis,
    ) -> WireStatus {
        let name = |id: &NodeId| {
            names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("node {id}"))
        };
        let cluster = members
            .iter()
            .filter(|n| **n != me)
            .map(|n| self.to_peer(*n))
            .min()
            .unwrap_or(self.newest);
        let speaks = format!("{OLDEST}–{}", self.newest);
        WireStatus {
            newest: self.newest,
            cluster,
            peers: self.spoken.iter().map(|(n, (_, v))| (name(n), *v)).collect(),
            refused: self
                .refused
                .iter()
                .filter(|(_, (_, at))| now.saturating_sub(*at) < REFUSED_SHOWN_MS)
                .map(|(n, (v, _))| {
                    let fix = if *v > self.newest {
                        "upgrade this node"
                    } else {
                        "upgrade it"
                    };
                    format!(
                        "{} speaks wire version {v}, this node {speaks}: they cannot hear each other; {fix}",
                        name(n)
                    )
                })
                .collect(),
            speaks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_the_newest_version_both_speak_and_refusals_name_both() {
        let mut w = WireVersions::new(7);
        assert_eq!(w.to_peer(2), 7, "unheard: this node's newest");
        w.heard(2, 1, 6);
        w.heard(3, 1, 7);
        assert_eq!((w.to_peer(2), w.to_peer(3)), (6, 7));
        let names = BTreeMap::from([(1, "n1".into()), (2, "n2".into()), (3, "n3".into())]);
        let all = BTreeSet::from([1, 2, 3]);
        let st = w.status(1, &all, &names, 0);
        assert_eq!(st.cluster, 6);
        assert_eq!(st.speaks, "6–7");
        w.heard(2, 1, 7);
        assert_eq!(w.status(1, &all, &names, 0).cluster, 7);
        // A packet it sent in 6 before it heard this node's 7: no step down.
        w.heard(2, 1, 6);
        assert_eq!(w.to_peer(2), 7);
        // Restarted at the older release: down again.
        w.heard(2, 2, 6);
        assert_eq!(w.to_peer(2), 6);
        w.heard(2, 3, 7);
        w.refused(3, 9, 10);
        let st = w.status(1, &all, &names, 20);
        assert_eq!(
            st.refused,
            [
                "n3 speaks wire version 9, this node 6–7: they cannot hear each other; upgrade this node"
            ]
        );
        assert!(w.status(1, &all, &names, 70_000).refused.is_empty());
        // A node held at the older version never sends the newer one.
        let mut held = WireVersions::new(6);
        assert_eq!(held.to_peer(2), 6);
        held.heard(2, 1, 6);
        assert_eq!(held.sending(2, 10_000), 6);
        // A peer spoken to in 6 gets one heartbeat in 7 every 2 s: once it
        // answers in 7 (it was upgraded), both speak 7.
        let mut w = WireVersions::new(7);
        w.heard(2, 1, 6);
        assert_eq!(w.sending(2, 0), 6);
        assert_eq!(w.sending(2, 1_000), 6);
        assert_eq!(w.sending(2, 2_000), 7);
        assert_eq!(w.sending(2, 2_100), 6);
        w.heard(2, 1, 7);
        assert_eq!(w.sending(2, 2_200), 7);
    }
}
