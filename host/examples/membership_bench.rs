//! Simulated membership at scale (virtual clock, lossless network, 1 ms delay), for
//! docs/benchmarks.md:
//!
//! ```text
//! cargo run --release --example membership_bench
//! ```
//!
//! For 3, 32 and 64 nodes with two links and the fast and default timing: virtual
//! time from a cold start until every node has the full view, time until every
//! survivor has dropped a crashed node, heartbeat packets per second per node, and
//! the packet size.

use baton::cluster::membership::{Membership, Millis, Timing};
use baton::cluster::wire::{ClusterKey, NodeId, encode};
use std::time::Instant;

fn run(n: u16, timing: Timing, name: &str) {
    let ids: Vec<NodeId> = (1..=n).collect();
    let mut nodes: Vec<Membership> = ids
        .iter()
        .map(|&i| Membership::new(i, 1, &ids, 2, timing))
        .collect();
    let key = ClusterKey::new("bench", b"a bench key of thirty-two bytes!").unwrap();
    let interval = timing.interval.as_millis() as Millis;
    let mut down: Option<usize> = None;
    let (mut converged, mut dropped) = (None, None);
    let mut packets = 0u64;
    let mut size = 0usize;
    let wall = Instant::now();
    let mut now: Millis = 0;
    let mut in_flight: Vec<(usize, baton::cluster::wire::Heartbeat)> = Vec::new();
    while now < 20_000 && dropped.is_none() {
        now += 1;
        for (to, hb) in in_flight.drain(..) {
            nodes[to].on_heartbeat(now, &hb);
        }
        for (i, m) in nodes.iter_mut().enumerate() {
            if Some(i) == down || !(now + i as Millis).is_multiple_of(interval) {
                continue;
            }
            for hb in m.tick(now) {
                size = size.max(encode(&key, &hb).len());
                for to in 0..n as usize {
                    if to != i && Some(to) != down {
                        packets += 1;
                        in_flight.push((to, hb.clone()));
                    }
                }
            }
        }
        let live = || nodes.iter().enumerate().filter(|(i, _)| Some(*i) != down);
        if converged.is_none() && live().all(|(_, m)| m.view().1.len() == n as usize) {
            converged = Some(now);
            down = Some(n as usize - 1);
        } else if let (Some(c), Some(d)) = (converged, down)
            && live().all(|(_, m)| !m.view().1.contains(&(d as u16 + 1)))
        {
            dropped = Some(now - c);
        }
    }
    let seconds = now as f64 / 1000.0;
    println!(
        "| {n} | {name} | {} | {} | {:.0} | {} | {:.1} |",
        converged.map(|c| c.to_string()).unwrap_or("-".into()),
        dropped.map(|d| d.to_string()).unwrap_or("-".into()),
        packets as f64 / seconds / n as f64,
        size,
        wall.elapsed().as_secs_f64()
    );
}

fn main() {
    println!(
        "| nodes | timing | full view after cold start, ms | crashed node dropped by all, ms | packets/s sent per node | packet bytes | wall s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in [3u16, 32, 64] {
        run(n, Timing::FAST, "fast");
        run(n, Timing::DEFAULT, "default");
    }
}
