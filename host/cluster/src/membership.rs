//! Failure detection and membership: a pure state machine driven by heartbeats and
//! clock ticks (no I/O, no clock of its own), so the same code runs in the daemon
//! and in the deterministic simulation.
//!
//! Each node hears its peers directly on every link. Every tick it publishes a
//! [`Report`] — the set of peers it heard directly, on any link, within
//! `link_timeout` — and forwards the newest report it knows of every other node. Two
//! nodes are *connected* when both fresh reports say they hear each other; a node is
//! a **member** when a path of connected pairs leads to it from this node. So when A
//! and B cannot hear each other on any link but both are connected to C, C keeps B in
//! A's view and A in B's (the 1997 paper's relayed heartbeat), while a node that can
//! send but not receive is not a member anywhere (and, alone, loses quorum).
//!
//! The view is a function of the reports only, and reports are gossiped, so nodes
//! that can reach each other converge on the same view; the epoch is raised on every
//! change and the highest epoch seen wins, so they converge on the same epoch too.

use super::wire::{Echo, Heartbeat, MAX_NODES, NodeId, Report};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Time on the state machine's clock (the daemon passes a monotonic clock, the
/// simulation a virtual one).
pub type Millis = u64;

/// How fast failures are detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat period per link.
    pub interval: Duration,
    /// A link to a peer is down after this long without a heartbeat on it.
    pub link_timeout: Duration,
    /// A node's report is stale (and its edges ignored) after this long without a newer one.
    pub report_timeout: Duration,
}

impl Timing {
    /// For a LAN: heartbeats every 20 ms, a link down after 100 ms, a node gone after
    /// about 150–200 ms.
    pub const FAST: Timing = Timing {
        interval: Duration::from_millis(20),
        link_timeout: Duration::from_millis(100),
        report_timeout: Duration::from_millis(150),
    };

    /// The default: heartbeats every 100 ms, a link down after 800 ms, so a 200 ms
    /// stall of a process (or of the network) never changes membership.
    pub const DEFAULT: Timing = Timing {
        interval: Duration::from_millis(100),
        link_timeout: Duration::from_millis(800),
        report_timeout: Duration::from_millis(1000),
    };

    fn ms(d: Duration) -> Millis {
        d.as_millis() as Millis
    }
}

/// A peer's state on one link, as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Whether heartbeats arrive on it.
    pub up: bool,
    /// Since when (state machine clock) it has been in this state.
    pub since: Millis,
}

/// One node's membership state machine.
pub struct Membership {
    me: NodeId,
    incarnation: u64,
    peers: Vec<NodeId>,
    links: usize,
    timing: Timing,
    /// Last time a heartbeat arrived from (peer, link).
    heard: BTreeMap<(NodeId, u8), Millis>,
    link_state: BTreeMap<(NodeId, u8), LinkState>,
    /// The newest report of every node, with the time that version was first seen here.
    reports: BTreeMap<NodeId, (Report, Millis)>,
    version: u64,
    /// The peers heard directly at the last advance.
    heard_set: u64,
    seq: u64,
    epoch: u64,
    view: BTreeSet<NodeId>,
    /// Recent view changes (epoch, members), newest last, for status.
    history: VecDeque<(u64, Millis, BTreeSet<NodeId>)>,
    /// The latest heartbeat from (peer, link): its send time on the peer's
    /// clock, and when it arrived here (echoed back for the peer's round trip).
    echo: BTreeMap<(NodeId, u8), (u32, Millis)>,
    /// Smoothed round trip to (peer, link), ms.
    rtt: BTreeMap<(NodeId, u8), f64>,
    /// The clock at the last advance.
    now: Millis,
    /// A report whose reachability changed arrived since the last advance.
    news: bool,
}

fn bit(node: NodeId) -> u64 {
    1u64 << (node - 1)
}

impl Membership {
    /// A node `me` (restarted as `incarnation`) in a cluster of `nodes` with `links` links.
    pub fn new(
        me: NodeId,
        incarnation: u64,
        nodes: &[NodeId],
        links: usize,
        timing: Timing,
    ) -> Membership {
        assert!((1..=MAX_NODES).contains(&me), "node ids are 1..=64");
        let view: BTreeSet<NodeId> = [me].into();
        Membership {
            me,
            incarnation,
            peers: nodes.iter().copied().filter(|n| *n != me).collect(),
            links,
            timing,
            heard: BTreeMap::new(),
            link_state: BTreeMap::new(),
            reports: BTreeMap::new(),
            version: 0,
            heard_set: 0,
            seq: 0,
            epoch: 0,
            view: view.clone(),
            history: VecDeque::from([(0, 0, view)]),
            echo: BTreeMap::new(),
            rtt: BTreeMap::new(),
            now: 0,
            news: false,
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The version of the last report this node published (the next one is one higher).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The agreed view: its epoch and members.
    pub fn view(&self) -> (u64, &BTreeSet<NodeId>) {
        (self.epoch, &self.view)
    }

    /// Per (peer, link) state.
    pub fn links(&self) -> &BTreeMap<(NodeId, u8), LinkState> {
        &self.link_state
    }

    /// The smoothed round trip to `peer` on `link`, ms (the heartbeats' echoes
    /// on this node's clock; `None` until measured).
    pub fn rtt(&self, peer: NodeId, link: u8) -> Option<f64> {
        self.rtt.get(&(peer, link)).copied()
    }

    /// The services `node` claims, from its freshest report (`None` if not known).
    pub fn claims_of(&self, node: NodeId) -> Option<u64> {
        self.reports.get(&node).map(|(r, _)| r.claims)
    }

    /// The services `node` refuses, from its freshest report.
    pub fn banned_of(&self, node: NodeId) -> Option<u64> {
        self.reports.get(&node).map(|(r, _)| r.banned)
    }

    /// `node`'s freshest report and when that version was first seen here.
    pub fn report_of(&self, node: NodeId) -> Option<(&Report, Millis)> {
        self.reports.get(&node).map(|(r, seen)| (r, *seen))
    }

    /// Whether a report that changes who hears whom arrived since the last
    /// advance: the view may change now, not at the next heartbeat (a node
    /// that lost its link to a peer says so a tick before this one would).
    pub fn news(&self) -> bool {
        self.news
    }

    /// The earliest time a link that is up goes down, or a fresh report goes
    /// stale, if nothing arrives before: when the view may change next.
    pub fn next_expiry(&self) -> Option<Millis> {
        let link = Timing::ms(self.timing.link_timeout);
        let report = Timing::ms(self.timing.report_timeout);
        let links = self
            .heard
            .values()
            .map(|t| t + link + 1)
            .filter(|t| *t > self.now);
        let reports = self
            .reports
            .values()
            .map(|(_, seen)| seen + report + 1)
            .filter(|t| *t > self.now);
        links.chain(reports).min()
    }

    /// Recent view changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &(u64, Millis, BTreeSet<NodeId>)> {
        self.history.iter()
    }

    /// The echoes to send on `link`: each peer's latest heartbeat there that
    /// is still fresh (within the link timeout).
    fn echoes(&self, link: u8) -> Vec<Echo> {
        let fresh = Timing::ms(self.timing.link_timeout);
        self.echo
            .iter()
            .filter(|((_, l), (_, at))| *l == link && self.now.saturating_sub(*at) <= fresh)
            .map(|((peer, _), (sent, at))| Echo {
                node: *peer,
                sent_ms: *sent,
                held_ms: self.now.saturating_sub(*at).min(u64::from(u16::MAX - 1)) as u16,
            })
            .collect()
    }

    /// Take in an authenticated, non-replayed heartbeat received at `now`.
    pub fn on_heartbeat(&mut self, now: Millis, hb: &Heartbeat) {
        if hb.sender == self.me
            || !self.peers.contains(&hb.sender)
            || usize::from(hb.link) >= self.links
        {
            return;
        }
        self.heard.insert((hb.sender, hb.link), now);
        self.echo.insert((hb.sender, hb.link), (hb.sent_ms, now));
        if let Some(e) = hb.echoes.iter().find(|e| e.node == self.me) {
            let sample = (now as u32)
                .wrapping_sub(e.sent_ms)
                .wrapping_sub(u32::from(e.held_ms));
            // An echo of a heartbeat from before a restart, or held past the
            // u16 range, is no measurement.
            if sample < 60_000 && e.held_ms < u16::MAX {
                let rtt = self
                    .rtt
                    .entry((hb.sender, hb.link))
                    .or_insert(f64::from(sample));
                *rtt += (f64::from(sample) - *rtt) / 8.0;
            }
        }
        for r in &hb.reports {
            if r.node == self.me || !self.peers.contains(&r.node) {
                continue;
            }
            let newer = match self.reports.get(&r.node) {
                Some((known, _)) => r.newer_than(known),
                None => true,
            };
            if newer {
                let changed = self.reports.get(&r.node).is_none_or(|(known, _)| {
                    known.heard != r.heard || known.incarnation != r.incarnation
                });
                self.news |= changed;
                self.reports.insert(r.node, (r.clone(), now));
            }
        }
        self.epoch = self.epoch.max(hb.epoch);
    }

    /// Advance to `now`: update link states, publish a new report, recompute the view.
    /// Returns the heartbeat to send on each link (index = link).
    pub fn tick(&mut self, now: Millis) -> Vec<Heartbeat> {
        self.tick_with(now, Report::default())
    }

    /// [`Membership::tick`], publishing what `published` says this node holds:
    /// claims, bans, blocks, failed stops, fence confirmations and moves (its node,
    /// incarnation, version and heard fields are filled in here).
    pub fn tick_with(&mut self, now: Millis, published: Report) -> Vec<Heartbeat> {
        self.advance(now);
        self.publish(published)
    }

    /// The first half of a tick: update link states and recompute the view at
    /// `now`. [`Membership::publish`] then sends the report that follows from it.
    pub fn advance(&mut self, now: Millis) {
        self.now = now;
        self.news = false;
        let link_timeout = Timing::ms(self.timing.link_timeout);
        let mut heard_set = 0u64;
        for &peer in &self.peers {
            for link in 0..self.links as u8 {
                let up = self
                    .heard
                    .get(&(peer, link))
                    .is_some_and(|t| now.saturating_sub(*t) <= link_timeout);
                if up {
                    heard_set |= bit(peer);
                }
                let state = self
                    .link_state
                    .entry((peer, link))
                    .or_insert(LinkState { up, since: now });
                if state.up != up {
                    *state = LinkState { up, since: now };
                }
            }
        }
        self.heard_set = heard_set;
        self.recompute_view(now, heard_set);
    }

    /// The second half of a tick: this node's next report (`published`, with the
    /// peers heard at the last [`Membership::advance`]) and the newest of every
    /// other node's, as the heartbeat to send on each link (index = link).
    pub fn publish(&mut self, published: Report) -> Vec<Heartbeat> {
        self.version += 1;
        let mine = Report {
            node: self.me,
            incarnation: self.incarnation,
            version: self.version,
            heard: self.heard_set,
            ..published
        };
        let mut reports = vec![mine];
        reports.extend(self.reports.values().map(|(r, _)| r.clone()));
        self.seq += 1;
        (0..self.links as u8)
            .map(|link| Heartbeat {
                sender: self.me,
                link,
                incarnation: self.incarnation,
                seq: self.seq,
                epoch: self.epoch,
                config: 0,
                sent_ms: self.now as u32,
                echoes: self.echoes(link),
                reports: reports.clone(),
            })
            .collect()
    }

    fn recompute_view(&mut self, now: Millis, mine: u64) {
        let report_timeout = Timing::ms(self.timing.report_timeout);
        let fresh = |node: NodeId| -> Option<u64> {
            if node == self.me {
                return Some(mine);
            }
            self.reports
                .get(&node)
                .filter(|(_, seen)| now.saturating_sub(*seen) <= report_timeout)
                .map(|(r, _)| r.heard)
        };
        // An edge needs both ends to report hearing each other: a node that can send
        // but not receive (or the reverse) is not connected, so views are the
        // components of one symmetric graph and two views never overlap once stable.
        let all: Vec<NodeId> = std::iter::once(self.me)
            .chain(self.peers.iter().copied())
            .collect();
        let mut view: BTreeSet<NodeId> = [self.me].into();
        let mut queue = vec![self.me];
        while let Some(u) = queue.pop() {
            let Some(heard_by_u) = fresh(u) else { continue };
            for &v in &all {
                if v == u || heard_by_u & bit(v) == 0 {
                    continue;
                }
                let mutual = fresh(v).is_some_and(|heard_by_v| heard_by_v & bit(u) != 0);
                if mutual && view.insert(v) {
                    queue.push(v);
                }
            }
        }
        if view != self.view {
            self.epoch += 1;
            self.view = view.clone();
            self.history.push_back((self.epoch, now, view));
            while self.history.len() > 32 {
                self.history.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_measure_the_round_trip_on_each_link() {
        let ids = [1, 2];
        let mut a = Membership::new(1, 1, &ids, 2, Timing::FAST);
        let mut b = Membership::new(2, 1, &ids, 2, Timing::FAST);
        // a sends at 1000; link 0 takes 5 ms each way, link 1 takes 20 ms.
        let from_a = a.tick(1000);
        b.on_heartbeat(1005, &from_a[0]);
        b.on_heartbeat(1020, &from_a[1]);
        // b answers at 1030, having held a's heartbeats 25 and 10 ms.
        let from_b = b.tick(1030);
        assert_eq!(
            from_b[0].echoes,
            [Echo {
                node: 1,
                sent_ms: 1000,
                held_ms: 25
            }]
        );
        a.on_heartbeat(1035, &from_b[0]);
        a.on_heartbeat(1050, &from_b[1]);
        assert_eq!(a.rtt(2, 0), Some(10.0));
        assert_eq!(a.rtt(2, 1), Some(40.0));
        assert_eq!(b.rtt(1, 0), None, "b has no echo of its own yet");
        // Smoothed: a later sample of 18 ms moves the estimate by an eighth.
        let from_a = a.tick(2000);
        b.on_heartbeat(2009, &from_a[0]);
        let from_b = b.tick(2009);
        a.on_heartbeat(2018, &from_b[0]);
        assert_eq!(a.rtt(2, 0), Some(11.0));
    }

    /// Three nodes, two links, a virtual clock and a network where links can be cut.
    struct Net {
        nodes: Vec<Membership>,
        /// cut[(from, to, link)]
        cut: BTreeSet<(NodeId, NodeId, u8)>,
        down: BTreeSet<NodeId>,
        now: Millis,
    }

    impl Net {
        fn new(n: u16, timing: Timing) -> Net {
            let ids: Vec<NodeId> = (1..=n).collect();
            Net {
                nodes: ids
                    .iter()
                    .map(|&i| Membership::new(i, 1, &ids, 2, timing))
                    .collect(),
                cut: BTreeSet::new(),
                down: BTreeSet::new(),
                now: 0,
            }
        }

        fn run(&mut self, ms: Millis, step: Millis) {
            let end = self.now + ms;
            while self.now < end {
                self.now += step;
                let mut sent = Vec::new();
                for m in &mut self.nodes {
                    if !self.down.contains(&m.me()) {
                        sent.push(m.tick(self.now));
                    }
                }
                for packets in sent {
                    for hb in packets {
                        for m in &mut self.nodes {
                            let to = m.me();
                            if to != hb.sender
                                && !self.down.contains(&to)
                                && !self.cut.contains(&(hb.sender, to, hb.link))
                            {
                                m.on_heartbeat(self.now, &hb);
                            }
                        }
                    }
                }
            }
        }

        fn view(&self, node: NodeId) -> Vec<NodeId> {
            self.nodes[usize::from(node - 1)]
                .view()
                .1
                .iter()
                .copied()
                .collect()
        }

        fn cut_both_ways(&mut self, a: NodeId, b: NodeId, link: u8) {
            self.cut.insert((a, b, link));
            self.cut.insert((b, a, link));
        }
    }

    #[test]
    fn three_nodes_agree_on_one_view_and_epoch() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        for n in 1..=3 {
            assert_eq!(net.view(n), [1, 2, 3]);
        }
        let epochs: BTreeSet<u64> = net.nodes.iter().map(|m| m.view().0).collect();
        assert_eq!(epochs.len(), 1, "epochs differ: {epochs:?}");
    }

    #[test]
    fn losing_one_link_is_not_a_membership_change() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        let before = net.nodes[0].view().0;
        net.cut_both_ways(1, 2, 0);
        net.cut_both_ways(1, 3, 0);
        net.run(1000, 20);
        assert_eq!(net.view(1), [1, 2, 3]);
        assert_eq!(
            net.nodes[0].view().0,
            before,
            "a single link loss changed the epoch"
        );
        assert!(!net.nodes[0].links()[&(2, 0)].up);
        assert!(net.nodes[0].links()[&(2, 1)].up);
    }

    #[test]
    fn a_b_cut_on_every_link_keeps_both_members_through_c() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        for link in 0..2 {
            net.cut_both_ways(1, 2, link);
        }
        net.run(2000, 20);
        assert_eq!(net.view(1), [1, 2, 3]);
        assert_eq!(net.view(2), [1, 2, 3]);
    }

    #[test]
    fn reports_are_forwarded_along_a_chain() {
        // 1 - 2 - 3 - 4: node 1 learns about 4 only through 3's report, forwarded by 2.
        let mut net = Net::new(4, Timing::FAST);
        for (a, b) in [(1, 3), (1, 4), (2, 4)] {
            for link in 0..2 {
                net.cut_both_ways(a, b, link);
            }
        }
        net.run(1000, 20);
        for n in 1..=4 {
            assert_eq!(net.view(n), [1, 2, 3, 4], "node {n}");
        }
    }

    #[test]
    fn a_node_that_can_send_but_not_receive_is_alone() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        for from in [2, 3] {
            for link in 0..2 {
                net.cut.insert((from, 1, link));
            }
        }
        net.run(1000, 20);
        assert_eq!(net.view(1), [1]);
        assert_eq!(net.view(2), [2, 3]);
        assert_eq!(net.view(3), [2, 3]);
    }

    #[test]
    fn a_dead_node_leaves_every_view() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        net.down.insert(3);
        net.run(500, 20);
        assert_eq!(net.view(1), [1, 2]);
        assert_eq!(net.view(2), [1, 2]);
        assert_eq!(net.nodes[0].view().0, net.nodes[1].view().0);
    }

    #[test]
    fn an_isolated_node_sees_only_itself_and_the_rest_agree() {
        let mut net = Net::new(3, Timing::FAST);
        net.run(500, 20);
        for other in [2, 3] {
            for link in 0..2 {
                net.cut_both_ways(1, other, link);
            }
        }
        net.run(1000, 20);
        assert_eq!(net.view(1), [1]);
        assert_eq!(net.view(2), [2, 3]);
        assert_eq!(net.view(3), [2, 3]);
    }

    #[test]
    fn a_200ms_stall_does_not_change_membership_under_the_default_timing() {
        let mut net = Net::new(3, Timing::DEFAULT);
        net.run(3000, 100);
        let before = net.nodes[0].view().0;
        // Node 3 stops sending for 200 ms (a paused process), then resumes.
        net.down.insert(3);
        net.run(200, 100);
        net.down.remove(&3);
        net.run(2000, 100);
        assert_eq!(net.view(1), [1, 2, 3]);
        assert_eq!(net.nodes[0].view().0, before);
    }
}
