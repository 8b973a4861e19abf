//! The deterministic simulation of the cluster state machine (`baton_cluster::sim`,
//! the simulator `baton scenario simulate` ships): 200 seeded random fault
//! schedules on a virtual clock, 3 to 5 nodes, two links, services of every
//! strategy. Even seeds run with a fence agent whose fences kill their target
//! after a delay (or fail, and are retried) and stops that may fail, which only
//! a fence resolves; seeds divisible by 3 add a witness worth N−1 votes and
//! faults that cut one node, or every node, off its storage.
//!
//! The simulator checks safety every millisecond (never two owners of a service
//! that runs once, never two promoted replicas, never a promotion below the
//! acknowledged position) and, after each fault and a quiet period, liveness (a
//! quorate partition runs everything it can, nodes without quorum hold nothing).
//! A failing seed is printed with its schedule; replay it with
//! `BATON_SIM_SEED=<seed> cargo test -p baton-cluster --test sim`.

use baton_cluster::membership::Timing;
use baton_cluster::node::{Bounds, ClusterSpec};
use baton_cluster::placement::{FailurePolicy, ServiceSpec, Strategy};
use baton_cluster::quorum::QuorumPolicy;
use baton_cluster::sim::{Sim, random_schedule};
use baton_cluster::wire::NodeId;
use std::collections::BTreeMap;
use std::time::Duration;

fn services() -> Vec<ServiceSpec> {
    let s = |name: &str, strategy, preferred: &[NodeId]| ServiceSpec {
        name: name.into(),
        strategy,
        preferred: preferred.to_vec(),
        // Short expiry: a ban from an injected failure ends within a quiet period.
        failures: FailurePolicy {
            max_restarts: 3,
            expiry: Duration::from_millis(1200),
        },
        keep_without_quorum: false,
    };
    vec![
        s("db", Strategy::Standby, &[1, 2]),
        s("web", Strategy::Rotating, &[2, 3]),
        s("mail", Strategy::Mutual, &[3, 1]),
        s("monitor", Strategy::Clone, &[]),
        ServiceSpec {
            keep_without_quorum: true,
            ..s("cache", Strategy::Clone, &[])
        },
        s("pg", Strategy::Promotable, &[1, 2]),
    ]
}

/// The cluster of seed `seed`: 3 to 5 nodes, fencing on even seeds, a witness
/// of N−1 votes on seeds divisible by 3, the fast timing.
fn spec(seed: u64) -> (ClusterSpec, BTreeMap<NodeId, String>) {
    spec_with(seed, Timing::FAST, 200, 15)
}

fn spec_with(
    seed: u64,
    timing: Timing,
    self_fence_ms: u64,
    max_delay_ms: u64,
) -> (ClusterSpec, BTreeMap<NodeId, String>) {
    let n = 3 + (seed % 3) as u16;
    let ids: Vec<NodeId> = (1..=n).collect();
    let spec = ClusterSpec {
        nodes: ids.clone(),
        links: 2,
        bounds: Bounds {
            membership: timing,
            self_fence: Duration::from_millis(self_fence_ms),
            max_delay: Duration::from_millis(max_delay_ms),
        },
        quorum: QuorumPolicy {
            witness_votes: if seed.is_multiple_of(3) {
                u32::from(n) - 1
            } else {
                0
            },
            ..QuorumPolicy::majority(&ids)
        },
        services: services(),
        fencing: seed.is_multiple_of(2),
        config: 7,
    };
    let names = ids.iter().map(|id| (*id, format!("n{id}"))).collect();
    (spec, names)
}

/// Run one seeded schedule of 12 faults; the number of promotions it made.
fn run_schedule(seed: u64, skip_claim_acks: bool) -> Result<u64, String> {
    run_spec(spec(seed), seed, skip_claim_acks)
}

fn run_spec(
    (spec, names): (ClusterSpec, BTreeMap<NodeId, String>),
    seed: u64,
    skip_claim_acks: bool,
) -> Result<u64, String> {
    let mut sim = if skip_claim_acks {
        Sim::without_claim_acks(&spec, names, seed)
    } else {
        Sim::new(&spec, names, seed, true)
    };
    random_schedule(&mut sim, 12).map(|s| s.promotions)
}

#[test]
fn never_two_owners_and_quorate_partitions_run_everything_under_200_random_fault_schedules() {
    let seeds: Vec<u64> = match std::env::var("BATON_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("BATON_SIM_SEED must be a number")],
        Err(_) => (1..=200).collect(),
    };
    let mut promotions = 0;
    for seed in &seeds {
        match run_schedule(*seed, false) {
            Ok(p) => promotions += p,
            Err(e) => panic!(
                "cluster simulation failed for seed {seed} (replay: BATON_SIM_SEED={seed}):\n{e}"
            ),
        }
    }
    // The promoted role moved: every schedule promotes at start, and faults move it.
    assert!(
        seeds.len() == 1 || promotions > 2 * seeds.len() as u64,
        "{promotions} promotions in {} schedules",
        seeds.len()
    );
}

/// The default timing (heartbeats every 100 ms, a 2 s self-fence bound): a
/// primary that stops slowly keeps writing until its stop completes, and the
/// replicas' last scores reach a claimer a heartbeat later. A claimer must
/// still give its claim up when a member's acknowledgement shows a better
/// replica (without that, seed 33 promoted a replica one write behind
/// another).
#[test]
fn the_default_timing_under_60_random_fault_schedules() {
    for seed in 1..=60 {
        let cluster = spec_with(seed, Timing::DEFAULT, 2000, 5);
        if let Err(e) = run_spec(cluster, seed, false) {
            panic!("default timing, seed {seed}:\n{e}");
        }
    }
}

/// The claim acknowledgement is what keeps simultaneous claims apart: with it
/// skipped (a node starts, or promotes, in the tick it claims, once lost nodes
/// are safe), seed 58's schedule has nodes 2 and 3 both start `db`, 16 s in;
/// with it, the schedule passes. (A change to the simulation reshuffles the
/// schedules: then take the first seed of 1..=200 that fails with it skipped.)
#[test]
fn skipping_the_claim_acknowledgement_gives_two_owners() {
    let seed = 58;
    let err = run_schedule(seed, true).expect_err("a failure without acknowledgements");
    assert!(err.contains("held by nodes"), "seed {seed}: {err}");
    if let Err(e) = run_schedule(seed, false) {
        panic!("seed {seed} with acknowledgements:\n{e}");
    }
}
