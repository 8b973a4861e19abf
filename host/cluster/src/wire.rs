//! The heartbeat wire format: authenticated, sequenced, versioned UDP packets.
//!
//! Layout (big-endian):
//!
//! ```text
//! magic "BTN1" | version u8 | kind u8 | cluster u32 | sender u16 | link u8
//! | incarnation u64 | seq u64 | body_len u16 | body | tag [16]
//! ```
//!
//! `tag` is HMAC-SHA256 over everything before it, keyed with the cluster key and
//! truncated to 16 bytes. A packet is acted on only if it decodes, its tag verifies,
//! and it is newer than anything seen from the same sender on the same link
//! ([`ReplayGuard`]): forged, replayed, truncated or garbled packets are dropped and
//! counted, never acted on.
//!
//! The heartbeat body carries the sender's membership epoch, its config
//! fingerprint, and the reports it knows
//! ([`Report`]: whom a node hears, which services it claims, refuses or blocks, the
//! nodes it confirmed fenced, the operator moves it carries, and the pending claims
//! of others it has seen): its own, and the
//! latest of every other node's, so a node that cannot hear a peer directly still
//! learns it is alive, and what it runs, through a third node (relayed heartbeats).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

const MAGIC: &[u8; 4] = b"BTN1";
/// The wire version this build speaks (7: the sender's config fingerprint, its
/// send time and the echoes that measure round trips, and reports carry
/// blocks, failed stops, fence confirmations, moves, claim acknowledgements,
/// promotable services' replicas, promoted role, scores and acknowledged
/// positions, whether the node is leaving cleanly or may lead the witness,
/// the operators' standby and maintenance settings, and the config each
/// report was made under and the one its node has staged for a reload). It
/// also speaks the versions down to [`OLDEST`], so nodes of adjacent releases
/// form one cluster during a rolling upgrade; a packet of any other version is
/// dropped (`UnsupportedVersion`).
pub const VERSION: u8 = 8;
/// The oldest wire version this build still speaks, to the nodes of earlier
/// releases during a rolling upgrade: 6, whose reports carry no operators'
/// settings (standby and maintenance do not reach those nodes), and neither 6
/// nor 7 carries reports' configs (a reload waits until every node speaks 8).
pub const OLDEST: u8 = 6;
/// The operators' settings in a report (from version 7).
const ADMIN: usize = 24;
/// The report's config and staged config (from version 8).
const CONFIGS: usize = 16;
const HEADER: usize = 4 + 1 + 1 + 4 + 2 + 1 + 8 + 8 + 2;
const TAG: usize = 16;
/// The largest node id (node ids are 1..=MAX_NODES; reachability is a 64-bit set).
pub const MAX_NODES: u16 = 64;
/// The fixed part of a report; fence confirmations, moves, acknowledgements,
/// scores and acknowledged positions follow it.
const REPORT: usize = 2 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 24 + 16 + 1 + 1 + 1 + 1 + 1 + 1;
const FENCED: usize = 2 + 8;
const MOVE: usize = 1 + 2 + 4 + 1;
const ACK: usize = 2 + 8 + 8;
const SCORE: usize = 1 + 8 + 8;
const ECHO: usize = 2 + 4 + 2;
/// Report flags.
const QUORATE: u8 = 1;
const PENDING: u8 = 2;
const LEAVING: u8 = 4;
const WITNESS: u8 = 8;

/// A node's id in the cluster (1..=64).
pub type NodeId = u16;

/// The cluster key, as read from the key file.
#[derive(Clone)]
pub struct ClusterKey {
    key: Vec<u8>,
    cluster: u32,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClusterKey(cluster {:08x}, {} bytes)",
            self.cluster,
            self.key.len()
        )
    }
}

impl ClusterKey {
    /// A key for cluster `name`; the key must have at least 16 bytes.
    pub fn new(name: &str, key: &[u8]) -> Result<ClusterKey, String> {
        if key.len() < 16 {
            return Err(format!(
                "the cluster key has {} bytes; it needs at least 16 (create one with `head -c 32 /dev/urandom > KEYFILE`)",
                key.len()
            ));
        }
        let digest = Sha256::digest(name.as_bytes());
        Ok(ClusterKey {
            key: key.to_vec(),
            cluster: u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
        })
    }

    /// A check value of the key (HMAC-SHA256 of a fixed text, first 8 bytes,
    /// hex): equal on two nodes when their keys are equal, and it tells
    /// nothing about the key. `baton scenario validate` compares it.
    pub fn check(&self) -> String {
        let tag = self.mac(b"baton key check").finalize().into_bytes();
        tag[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, bytes: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(bytes);
        mac
    }
}

/// A fence agent confirmed `node`, as it ran in `incarnation`, is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fenced {
    /// The fenced node.
    pub node: NodeId,
    /// Its incarnation when it was fenced (any later one is a fresh boot).
    pub incarnation: u64,
}

/// An operator's move of a service, carried by the node that took the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// The service's index.
    pub service: u8,
    /// Where it goes.
    pub to: NodeId,
    /// How much longer the move holds, in ms; [`Move::UNTIL_CLEARED`] for no end.
    pub remaining_ms: u32,
    /// For a promotable service: promote there even if its replica is behind the
    /// acknowledged position (the operator accepts losing those writes).
    pub force: bool,
}

impl Move {
    /// `remaining_ms` of a move without `--for`: until cleared, or the target leaves.
    pub const UNTIL_CLEARED: u32 = u32::MAX;
}

/// The sender has seen `node`'s report of `incarnation` and `version` (or a newer
/// one of that incarnation): sent for nodes whose report says a claim is pending,
/// so the claimer knows every member has seen its claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The claiming node.
    pub node: NodeId,
    /// Its incarnation, as in the report seen.
    pub incarnation: u64,
    /// The version of its report seen.
    pub version: u64,
}

/// A promotable service's score on one node, or the acknowledged position a
/// node knows of (see `baton_plugin_api::Promotion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Score {
    /// The service's index.
    pub service: u8,
    /// Which history the data is on.
    pub generation: u64,
    /// How far along it.
    pub position: u64,
}

/// One node's view of whom it hears directly, and what it holds, versioned by the
/// node itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Whose report.
    pub node: NodeId,
    /// That node's incarnation (changes at every restart).
    pub incarnation: u64,
    /// That node's report counter within the incarnation.
    pub version: u64,
    /// Bit `i` set: the node heard node `i + 1` directly, on some link, recently.
    pub heard: u64,
    /// Bit `i` set: the node claims service `i` (starting, running or stopping it).
    pub claims: u64,
    /// Bit `i` set: service `i` failed here too often; placement avoids this node
    /// until the failures expire.
    pub banned: u64,
    /// Bit `i` set: an agent reported service `i` misconfigured here; it stays stopped
    /// on every node until an operator clears it.
    pub blocked: u64,
    /// Bit `i` set: stopping service `i` failed here, so it may still run; nobody else
    /// may start it until this node is fenced or an operator clears it.
    pub stop_failed: u64,
    /// Whether the node's own partition was quorate at its last tick (a member
    /// without quorum, e.g. cut off from the witness, is given no services).
    pub quorate: bool,
    /// Whether a claim of this node waits for every member's acknowledgement.
    pub pending: bool,
    /// The node is stopping cleanly (SIGTERM): it is given nothing, and its
    /// services move once its stops complete.
    pub leaving: bool,
    /// The node reached the witness's storage at its last try and passes its
    /// health checks: it may lead the witness lease for its partition.
    pub witness: bool,
    /// Nodes this node's fence agent confirmed off (until they boot again).
    pub fenced: Vec<Fenced>,
    /// Operator moves issued on this node.
    pub moves: Vec<Move>,
    /// The pending claims this node has seen: the newest report of each claimer.
    pub acks: Vec<Ack>,
    /// Bit `i` set: the replica of promotable service `i` runs here.
    pub replicas: u64,
    /// Bit `i` set: the node claims the promoted role of service `i` (promoting,
    /// promoted or demoting it).
    pub promoted: u64,
    /// The scores of the replicas running here, from their last monitor.
    pub scores: Vec<Score>,
    /// The highest acknowledged position this node knows of, per promotable service.
    pub acknowledged: Vec<Score>,
    /// The operators' settings as this node knows them.
    pub admin: Admin,
    /// The fingerprint of the config this report was made under: its service
    /// bits mean that config's services. (A packet older than version 8
    /// carries none: its sender's is taken.)
    pub config: u64,
    /// The fingerprint of the config this node has staged for a reload (0:
    /// none): the cluster switches to it once every member has staged it.
    pub staged: u64,
}

/// The operators' cluster-wide settings: nodes in standby and services in
/// maintenance. Every node carries the newest it knows in its report and
/// adopts a newer one it hears of (the last operator's change wins).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Admin {
    /// When the latest change was made: the issuing node's wall clock in ms,
    /// shifted left 6 bits, with the issuing node's id - 1 below (ties break
    /// by node). 0: never changed.
    pub generation: u64,
    /// Bit `i` set: node `i + 1` is in standby (it runs nothing).
    pub standby: u64,
    /// Bit `i` set: service `i` is in maintenance (baton neither monitors,
    /// starts nor stops it).
    pub maintenance: u64,
}

impl Admin {
    /// The generation of a change made at `unix_ms` on node `by`.
    pub fn generation_of(unix_ms: u64, by: NodeId) -> u64 {
        (unix_ms << 6) | u64::from(by.saturating_sub(1) & 63)
    }

    /// When the latest change was made (ms since the Unix epoch), if ever.
    pub fn changed_at_ms(&self) -> Option<u64> {
        (self.generation != 0).then_some(self.generation >> 6)
    }

    /// Whether node `n` is in standby.
    pub fn in_standby(&self, n: NodeId) -> bool {
        (1..=MAX_NODES).contains(&n) && self.standby & (1 << (n - 1)) != 0
    }

    /// Whether service `i` is in maintenance.
    pub fn in_maintenance(&self, i: usize) -> bool {
        i < 64 && self.maintenance & (1 << i) != 0
    }
}

impl Report {
    /// Whether this report is newer than `other` (same node).
    pub fn newer_than(&self, other: &Report) -> bool {
        (self.incarnation, self.version) > (other.incarnation, other.version)
    }
}

/// A decoded, authenticated heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender node id.
    pub sender: NodeId,
    /// The link (0-based index in the config) it was sent on.
    pub link: u8,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's packet sequence number on this link.
    pub seq: u64,
    /// The sender's membership epoch.
    pub epoch: u64,
    /// The fingerprint of the sender's cluster-wide config: a node is heard only
    /// by nodes that run the same config.
    pub config: u64,
    /// The sender's clock when it sent this, ms (wrapping).
    pub sent_ms: u32,
    /// For each peer heard on this link: the send time of its latest
    /// heartbeat and how long the sender held it, so the peer measures the
    /// round trip on its own clock.
    pub echoes: Vec<Echo>,
    /// Reachability reports the sender knows (its own first).
    pub reports: Vec<Report>,
}

/// The echo of a peer's heartbeat (see [`Heartbeat::echoes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    /// The peer whose heartbeat is echoed.
    pub node: NodeId,
    /// That heartbeat's `sent_ms`.
    pub sent_ms: u32,
    /// How long ago it arrived, ms (at most 65535).
    pub held_ms: u16,
}

/// Why a packet was dropped. Each is counted in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Shorter than a header and tag.
    Truncated,
    /// Not a baton packet.
    BadMagic,
    /// A baton packet of another wire version.
    UnsupportedVersion,
    /// From another cluster (different name).
    OtherCluster,
    /// The tag does not verify: forged, or a different key.
    BadTag,
    /// Lengths or fields inconsistent after the tag verified (a bug or a hostile key holder).
    Garbled,
    /// Sender or link out of range.
    UnknownSender,
    /// Already seen (same or older sequence number).
    Replay,
    /// From an older incarnation of the sender.
    Stale,
}

impl Drop {
    /// A short name for counters.
    pub fn name(self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::BadMagic => "bad-magic",
            Drop::UnsupportedVersion => "unsupported-version",
            Drop::OtherCluster => "other-cluster",
            Drop::BadTag => "bad-tag",
            Drop::Garbled => "garbled",
            Drop::UnknownSender => "unknown-sender",
            Drop::Replay => "replay",
            Drop::Stale => "stale",
        }
    }
}

/// Encode a heartbeat in this build's wire version.
pub fn encode(key: &ClusterKey, hb: &Heartbeat) -> Vec<u8> {
    encode_as(key, hb, VERSION)
}

/// Encode a heartbeat in wire `version` (`OLDEST..=VERSION`; anything else is
/// taken as `VERSION`).
pub fn encode_as(key: &ClusterKey, hb: &Heartbeat, version: u8) -> Vec<u8> {
    let version = if (OLDEST..=VERSION).contains(&version) {
        version
    } else {
        VERSION
    };
    let admin = if version >= 7 { ADMIN } else { 0 };
    let configs = if version >= 8 { CONFIGS } else { 0 };
    let reports = &hb.reports[..hb.reports.len().min(MAX_NODES as usize)];
    let echoes = &hb.echoes[..hb.echoes.len().min(MAX_NODES as usize)];
    let body_len = 8
        + 8
        + 4
        + 1
        + echoes.len() * ECHO
        + 1
        + reports
            .iter()
            .map(|r| {
                REPORT - ADMIN - CONFIGS
                    + admin
                    + configs
                    + r.fenced.len().min(255) * FENCED
                    + r.moves.len().min(255) * MOVE
                    + r.acks.len().min(255) * ACK
                    + (r.scores.len().min(255) + r.acknowledged.len().min(255)) * SCORE
            })
            .sum::<usize>();
    let mut out = Vec::with_capacity(HEADER + body_len + TAG);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(1); // kind: heartbeat
    out.extend_from_slice(&key.cluster.to_be_bytes());
    out.extend_from_slice(&hb.sender.to_be_bytes());
    out.push(hb.link);
    out.extend_from_slice(&hb.incarnation.to_be_bytes());
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.extend_from_slice(&(body_len as u16).to_be_bytes());
    out.extend_from_slice(&hb.epoch.to_be_bytes());
    out.extend_from_slice(&hb.config.to_be_bytes());
    out.extend_from_slice(&hb.sent_ms.to_be_bytes());
    out.push(echoes.len() as u8);
    for e in echoes {
        out.extend_from_slice(&e.node.to_be_bytes());
        out.extend_from_slice(&e.sent_ms.to_be_bytes());
        out.extend_from_slice(&e.held_ms.to_be_bytes());
    }
    out.push(reports.len() as u8);
    for r in reports {
        out.extend_from_slice(&r.node.to_be_bytes());
        out.extend_from_slice(&r.incarnation.to_be_bytes());
        out.extend_from_slice(&r.version.to_be_bytes());
        out.extend_from_slice(&r.heard.to_be_bytes());
        out.extend_from_slice(&r.claims.to_be_bytes());
        out.extend_from_slice(&r.banned.to_be_bytes());
        out.extend_from_slice(&r.blocked.to_be_bytes());
        out.extend_from_slice(&r.stop_failed.to_be_bytes());
        out.extend_from_slice(&r.replicas.to_be_bytes());
        out.extend_from_slice(&r.promoted.to_be_bytes());
        if admin > 0 {
            out.extend_from_slice(&r.admin.generation.to_be_bytes());
            out.extend_from_slice(&r.admin.standby.to_be_bytes());
            out.extend_from_slice(&r.admin.maintenance.to_be_bytes());
        }
        if configs > 0 {
            out.extend_from_slice(&r.config.to_be_bytes());
            out.extend_from_slice(&r.staged.to_be_bytes());
        }
        let flags = [
            (r.quorate, QUORATE),
            (r.pending, PENDING),
            (r.leaving, LEAVING),
            (r.witness, WITNESS),
        ];
        out.push(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |a, (_, f)| a | f),
        );
        let fenced = &r.fenced[..r.fenced.len().min(255)];
        let moves = &r.moves[..r.moves.len().min(255)];
        let acks = &r.acks[..r.acks.len().min(255)];
        let scores = &r.scores[..r.scores.len().min(255)];
        let acknowledged = &r.acknowledged[..r.acknowledged.len().min(255)];
        out.push(fenced.len() as u8);
        out.push(moves.len() as u8);
        out.push(acks.len() as u8);
        out.push(scores.len() as u8);
        out.push(acknowledged.len() as u8);
        for f in fenced {
            out.extend_from_slice(&f.node.to_be_bytes());
            out.extend_from_slice(&f.incarnation.to_be_bytes());
        }
        for m in moves {
            out.push(m.service);
            out.extend_from_slice(&m.to.to_be_bytes());
            out.extend_from_slice(&m.remaining_ms.to_be_bytes());
            out.push(u8::from(m.force));
        }
        for a in acks {
            out.extend_from_slice(&a.node.to_be_bytes());
            out.extend_from_slice(&a.incarnation.to_be_bytes());
            out.extend_from_slice(&a.version.to_be_bytes());
        }
        for sc in scores.iter().chain(acknowledged) {
            out.push(sc.service);
            out.extend_from_slice(&sc.generation.to_be_bytes());
            out.extend_from_slice(&sc.position.to_be_bytes());
        }
    }
    let tag = key.mac(&out).finalize().into_bytes();
    out.extend_from_slice(&tag[..TAG]);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Drop> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(Drop::Garbled)?;
        self.bytes = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, Drop> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Drop> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, Drop> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, Drop> {
        Ok(u64::from_be_bytes(self.take()?))
    }
}

/// Decode and authenticate a packet of any wire version this build speaks.
/// Never panics, whatever the bytes.
pub fn decode(key: &ClusterKey, bytes: &[u8]) -> Result<Heartbeat, Drop> {
    decode_upto(key, bytes, VERSION).map(|(hb, _)| hb)
}

/// A packet's wire version and the sender it claims, read without
/// authenticating it: for the message that names who speaks what.
pub fn peek(bytes: &[u8]) -> Option<(u8, NodeId)> {
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return None;
    }
    Some((bytes[4], u16::from_be_bytes([bytes[10], bytes[11]])))
}

/// Decode and authenticate a packet of wire version `OLDEST..=newest`; the
/// heartbeat and its version. Never panics, whatever the bytes.
pub fn decode_upto(key: &ClusterKey, bytes: &[u8], newest: u8) -> Result<(Heartbeat, u8), Drop> {
    if bytes.len() < HEADER + TAG {
        return Err(Drop::Truncated);
    }
    if &bytes[..4] != MAGIC {
        return Err(Drop::BadMagic);
    }
    let version = bytes[4];
    if !(OLDEST..=newest.min(VERSION)).contains(&version) {
        return Err(Drop::UnsupportedVersion);
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG);
    let mut r = Reader {
        bytes: &signed[5..],
    };
    let kind = r.u8()?;
    if r.u32()? != key.cluster {
        return Err(Drop::OtherCluster);
    }
    key.mac(signed)
        .verify_truncated_left(tag)
        .map_err(|_| Drop::BadTag)?;
    if kind != 1 {
        return Err(Drop::Garbled);
    }
    let sender = r.u16()?;
    let link = r.u8()?;
    let incarnation = r.u64()?;
    let seq = r.u64()?;
    let body_len = r.u16()? as usize;
    if body_len != r.bytes.len() {
        return Err(Drop::Garbled);
    }
    if sender == 0 || sender > MAX_NODES {
        return Err(Drop::UnknownSender);
    }
    let epoch = r.u64()?;
    let config = r.u64()?;
    let sent_ms = r.u32()?;
    let valid = |n: NodeId| (1..=MAX_NODES).contains(&n);
    let mut echoes = Vec::new();
    for _ in 0..r.u8()? {
        let echo = Echo {
            node: r.u16()?,
            sent_ms: r.u32()?,
            held_ms: r.u16()?,
        };
        if !valid(echo.node) {
            return Err(Drop::Garbled);
        }
        echoes.push(echo);
    }
    let count = r.u8()? as usize;
    let mut reports = Vec::with_capacity(count);
    for _ in 0..count {
        let mut report = Report {
            node: r.u16()?,
            incarnation: r.u64()?,
            version: r.u64()?,
            heard: r.u64()?,
            claims: r.u64()?,
            banned: r.u64()?,
            blocked: r.u64()?,
            stop_failed: r.u64()?,
            replicas: r.u64()?,
            promoted: r.u64()?,
            admin: if version >= 7 {
                Admin {
                    generation: r.u64()?,
                    standby: r.u64()?,
                    maintenance: r.u64()?,
                }
            } else {
                Admin::default()
            },
            ..Report::default()
        };
        (report.config, report.staged) = if version >= 8 {
            (r.u64()?, r.u64()?)
        } else {
            (config, 0)
        };
        let flags = r.u8()?;
        if flags & !(QUORATE | PENDING | LEAVING | WITNESS) != 0 {
            return Err(Drop::Garbled);
        }
        report.quorate = flags & QUORATE != 0;
        report.pending = flags & PENDING != 0;
        report.leaving = flags & LEAVING != 0;
        report.witness = flags & WITNESS != 0;
        let fenced = r.u8()?;
        let moves = r.u8()?;
        let acks = r.u8()?;
        let scores = r.u8()?;
        let acknowledged = r.u8()?;
        for _ in 0..fenced {
            report.fenced.push(Fenced {
                node: r.u16()?,
                incarnation: r.u64()?,
            });
        }
        for _ in 0..moves {
            report.moves.push(Move {
                service: r.u8()?,
                to: r.u16()?,
                remaining_ms: r.u32()?,
                force: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(Drop::Garbled),
                },
            });
        }
        for _ in 0..acks {
            report.acks.push(Ack {
                node: r.u16()?,
                incarnation: r.u64()?,
                version: r.u64()?,
            });
        }
        for k in 0..usize::from(scores) + usize::from(acknowledged) {
            let score = Score {
                service: r.u8()?,
                generation: r.u64()?,
                position: r.u64()?,
            };
            if score.service >= 64 {
                return Err(Drop::Garbled);
            }
            if k < usize::from(scores) {
                report.scores.push(score);
            } else {
                report.acknowledged.push(score);
            }
        }
        if !valid(report.node)
            || report.fenced.iter().any(|f| !valid(f.node))
            || report.acks.iter().any(|a| !valid(a.node))
            || report.moves.iter().any(|m| !valid(m.to) || m.service >= 64)
        {
            return Err(Drop::Garbled);
        }
        reports.push(report);
    }
    if !r.bytes.is_empty() {
        return Err(Drop::Garbled);
    }
    let hb = Heartbeat {
        sender,
        link,
        incarnation,
        seq,
        epoch,
        config,
        sent_ms,
        echoes,
        reports,
    };
    Ok((hb, version))
}

/// Drops packets that are not newer than the last accepted one from the same sender
/// on the same link.
#[derive(Default)]
pub struct ReplayGuard {
    last: HashMap<(NodeId, u8), (u64, u64)>,
}

impl ReplayGuard {
    /// Accept `hb` if it is newer; remember it.
    pub fn admit(&mut self, hb: &Heartbeat) -> Result<(), Drop> {
        let key = (hb.sender, hb.link);
        match self.last.get(&key) {
            Some(&(inc, _)) if hb.incarnation < inc => Err(Drop::Stale),
            Some(&(inc, seq)) if hb.incarnation == inc && hb.seq <= seq => Err(Drop::Replay),
            _ => {
                self.last.insert(key, (hb.incarnation, hb.seq));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::new("prod", b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn sample() -> Heartbeat {
        Heartbeat {
            sender: 2,
            link: 1,
            incarnation: 77,
            seq: 5,
            epoch: 9,
            config: 0x5be1_c0de_0000_0001,
            sent_ms: 0xfff0_0001,
            echoes: vec![
                Echo {
                    node: 1,
                    sent_ms: 4_000_000_000,
                    held_ms: 12,
                },
                Echo {
                    node: 3,
                    sent_ms: 7,
                    held_ms: 65535,
                },
            ],
            reports: vec![
                Report {
                    node: 2,
                    incarnation: 77,
                    version: 40,
                    heard: 0b101,
                    claims: 1,
                    quorate: true,
                    pending: true,
                    fenced: vec![Fenced {
                        node: 3,
                        incarnation: 5,
                    }],
                    moves: vec![Move {
                        service: 0,
                        to: 3,
                        remaining_ms: 60_000,
                        force: true,
                    }],
                    replicas: 1,
                    promoted: 1,
                    config: 0x5be1_c0de_0000_0001,
                    staged: 0x91c0_0000_0000_0002,
                    scores: vec![Score {
                        service: 0,
                        generation: 2,
                        position: 0x3000_0060,
                    }],
                    acknowledged: vec![Score {
                        service: 0,
                        generation: 2,
                        position: 0x3000_0028,
                    }],
                    ..Report::default()
                },
                Report {
                    node: 3,
                    incarnation: 12,
                    version: 8,
                    heard: 0b011,
                    banned: 2,
                    blocked: 4,
                    stop_failed: 1,
                    leaving: true,
                    witness: true,
                    admin: Admin {
                        generation: Admin::generation_of(1_796_626_867_677, 3),
                        standby: 0b100,
                        maintenance: 1,
                    },
                    acks: vec![Ack {
                        node: 2,
                        incarnation: 77,
                        version: 39,
                    }],
                    config: 0x5be1_c0de_0000_0001,
                    ..Report::default()
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&key(), &sample());
        assert_eq!(decode(&key(), &bytes).unwrap(), sample());
    }

    #[test]
    fn forged_truncated_and_foreign_packets_are_dropped() {
        let bytes = encode(&key(), &sample());
        let other_key = ClusterKey::new("prod", b"another key of 32 bytes.........").unwrap();
        assert_eq!(decode(&other_key, &bytes), Err(Drop::BadTag));
        let other_cluster = ClusterKey::new("test", b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(decode(&other_cluster, &bytes), Err(Drop::OtherCluster));
        assert_eq!(decode(&key(), &bytes[..bytes.len() - 1]), Err(Drop::BadTag));
        assert_eq!(decode(&key(), &bytes[..10]), Err(Drop::Truncated));
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(decode(&key(), &flipped), Err(Drop::BadTag));
        for version in [OLDEST - 1, VERSION + 1] {
            let mut other = bytes.clone();
            other[4] = version;
            assert_eq!(decode(&key(), &other), Err(Drop::UnsupportedVersion));
            assert_eq!(peek(&other), Some((version, sample().sender)));
        }
    }

    /// The oldest wire version, for a rolling upgrade: the same heartbeat
    /// without the operators' settings and the reports' configs (each taken
    /// as the sender's); a node held at it refuses newer ones.
    #[test]
    fn the_oldest_version_round_trips_without_the_operators_settings() {
        let hb = sample();
        let old = encode_as(&key(), &hb, OLDEST);
        assert_eq!(old[4], OLDEST);
        assert_eq!(
            encode(&key(), &hb).len() - old.len(),
            (ADMIN + CONFIGS) * hb.reports.len()
        );
        let (back, version) = decode_upto(&key(), &old, VERSION).unwrap();
        assert_eq!(version, OLDEST);
        let mut want = hb.clone();
        for r in &mut want.reports {
            r.admin = Admin::default();
            r.config = hb.config;
            r.staged = 0;
        }
        assert_eq!(back, want);
        let new = encode(&key(), &hb);
        assert_eq!(
            decode_upto(&key(), &new, OLDEST),
            Err(Drop::UnsupportedVersion)
        );
    }

    #[test]
    fn replays_and_old_incarnations_are_dropped() {
        let mut guard = ReplayGuard::default();
        let hb = sample();
        guard.admit(&hb).unwrap();
        assert_eq!(guard.admit(&hb), Err(Drop::Replay));
        let older = Heartbeat { seq: 4, ..sample() };
        assert_eq!(guard.admit(&older), Err(Drop::Replay));
        let restarted = Heartbeat {
            incarnation: 78,
            seq: 0,
            ..sample()
        };
        guard.admit(&restarted).unwrap();
        assert_eq!(guard.admit(&hb), Err(Drop::Stale));
        // Another link has its own sequence.
        guard
            .admit(&Heartbeat {
                link: 0,
                ..sample()
            })
            .unwrap();
    }

    #[test]
    fn short_keys_are_refused_with_the_fix() {
        let e = ClusterKey::new("c", b"short").unwrap_err();
        assert!(
            e.contains("at least 16") && e.contains("/dev/urandom"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_authenticate(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(decode(&key(), &bytes).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_rejected(bit in 0usize..(8 * 400)) {
            let mut bytes = encode(&key(), &sample());
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&key(), &bytes).is_err());
        }
    }
}
