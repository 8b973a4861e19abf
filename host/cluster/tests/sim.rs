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
use baton_cluster::sim::{Sim, default_shells, random_schedule};
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
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
        },
        keep_without_quorum: false,
        start_timeout: Duration::from_millis(600),
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
/// on seeds divisible by 3 (of N−1 votes on even ones, of one vote on odd
/// ones), the fast timing.
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
            witness_votes: match (seed.is_multiple_of(3), seed.is_multiple_of(2)) {
                (true, true) => u32::from(n) - 1,
                (true, false) => 1,
                _ => 0,
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
    let shells = default_shells(&spec);
    let mut sim = if skip_claim_acks {
        Sim::without_claim_acks(&spec, shells, names, seed)
    } else {
        Sim::new(&spec, shells, names, seed, true)
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
/// are safe), some schedule among the first 200 seeds has two nodes start one
/// service at once (seed 31 did when this was written; a change to the
/// simulation reshuffles the schedules, so the test takes the first that
/// fails); with the acknowledgement, that schedule passes.
#[test]
fn skipping_the_claim_acknowledgement_gives_two_owners() {
    let seed = (1..=200)
        .find(|seed| run_schedule(*seed, true).is_err_and(|e| e.contains("held by nodes")))
        .expect("no schedule of the first 200 gives two owners without acknowledgements");
    if let Err(e) = run_schedule(seed, false) {
        panic!("seed {seed} with acknowledgements:\n{e}");
    }
}

/// The outages a partition could have served, each as its own scenario: a
/// cluster, a fault script, and what a user relies on afterwards.
mod outages {
    use baton_cluster::changes::Change;
    use baton_cluster::membership::{Millis, Timing};
    use baton_cluster::node::{Bounds, ClusterSpec, Phase, Role};
    use baton_cluster::placement::{FailurePolicy, ServiceSpec, Strategy};
    use baton_cluster::quorum::QuorumPolicy;
    use baton_cluster::script::{Names, parse};
    use baton_cluster::sim::{Event, Sim, default_shells};
    use baton_cluster::wire::NodeId;
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub(super) fn service(name: &str, strategy: Strategy, preferred: &[NodeId]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            strategy,
            preferred: preferred.to_vec(),
            failures: FailurePolicy::default(),
            keep_without_quorum: false,
            start_timeout: Duration::from_secs(2),
        }
    }

    fn cluster(
        nodes: u16,
        witness_votes: u32,
        fencing: bool,
        services: Vec<ServiceSpec>,
    ) -> ClusterSpec {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        ClusterSpec {
            nodes: ids.clone(),
            links: 2,
            bounds: Bounds {
                membership: Timing::FAST,
                self_fence: Duration::from_millis(300),
                max_delay: Duration::from_millis(5),
            },
            quorum: QuorumPolicy {
                witness_votes,
                ..QuorumPolicy::majority(&ids)
            },
            services,
            fencing,
            config: 1,
        }
    }

    /// Boot `spec` with `seed`, let it settle, run `script`; the simulation.
    fn run(spec: &ClusterSpec, seed: u64, script: &str) -> Sim {
        let names: BTreeMap<NodeId, String> = spec
            .nodes
            .iter()
            .map(|id| (*id, format!("n{id}")))
            .collect();
        let by_name = names.iter().map(|(id, n)| (n.clone(), *id)).collect();
        let services: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
        let faults = parse(
            script,
            &Names {
                nodes: &by_name,
                services: &services,
                links: spec.links,
            },
        )
        .unwrap();
        let mut sim = Sim::new(spec, default_shells(spec), names, seed, false);
        sim.record_timeline();
        sim.run(sim.quiet_ms());
        for f in &faults {
            sim.apply(f);
        }
        assert_eq!(sim.violation(), None, "seed {seed}");
        sim
    }

    /// When `node` first decided `text` about service `service`, after `from`.
    fn when(sim: &Sim, from: Millis, node: NodeId, service: usize, text: &str) -> Option<Millis> {
        sim.timeline()
            .iter()
            .find(|e| {
                e.at >= from
                    && e.node == Some(node)
                    && e.change.service == Some(service)
                    && e.change.text.contains(text)
            })
            .map(|e| e.at)
    }

    fn fault_at(sim: &Sim, text: &str) -> Millis {
        sim.timeline()
            .iter()
            .find(|e| e.change.kind == "fault" && e.change.text.contains(text))
            .map(|e| e.at)
            .unwrap_or_else(|| panic!("no fault {text:?}"))
    }

    fn events<'a>(sim: &'a Sim, kind: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        sim.timeline().iter().filter(move |e| e.change.kind == kind)
    }

    fn show(sim: &Sim) -> String {
        sim.timeline()
            .iter()
            .map(
                |Event {
                     at,
                     node,
                     change:
                         Change {
                             kind,
                             service,
                             text,
                         },
                 }| { format!("{at:>7} {node:?} {kind} {service:?} {text}") },
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Two nodes, a witness and a fence agent; the owner's whole machine
    /// freezes (as SIGSTOP of every process does, or a VM pause), at ten
    /// moments relative to its witness renewals. The survivor fences the
    /// frozen holder, whose lease stopped changing, takes the witness at once
    /// and serves: every time, within 250 ms (170–220 ms; waiting out the lease
    /// instead takes 280–330 ms).
    #[test]
    fn a_frozen_witness_holder_is_fenced_and_the_survivor_serves() {
        let mut server = service("server", Strategy::Clone, &[]);
        server.keep_without_quorum = true;
        let spec = cluster(
            2,
            1,
            true,
            vec![server, service("address", Strategy::Standby, &[1, 2])],
        );
        for seed in 1..=10 {
            let sim = run(&spec, seed, "freeze n1 5s; wait 2s");
            let frozen = fault_at(&sim, "freeze n1");
            let took = when(&sim, frozen, 2, 1, "running here").map(|t| t - frozen);
            assert!(
                took.is_some_and(|t| t < 250),
                "seed {seed}: n2 ran the address {took:?} ms after the freeze\n{}",
                show(&sim)
            );
            assert!(
                events(&sim, "fence")
                    .any(|e| e.node == Some(2) && e.change.text.contains("n1 fenced"))
            );
        }
    }

    /// Three nodes and a one-vote witness (a partition needs 3 of 4 votes):
    /// the isolated owner cannot be quorate even with the witness, so it lets
    /// the witness go and the other two take it and serve.
    #[test]
    fn a_lone_node_lets_the_witness_go_to_the_partition_it_makes_quorate() {
        let spec = cluster(
            3,
            1,
            false,
            vec![service("web", Strategy::Standby, &[1, 2, 3])],
        );
        let sim = run(&spec, 1, "isolate n1; wait 3s");
        if let Err(e) = sim.check() {
            panic!("{e}\n{}", show(&sim));
        }
        assert_eq!(sim.node(2).unwrap().service(0).phase(), Phase::Running);
    }

    /// A clean stop (SIGTERM) of the owner moves its service without a fence,
    /// and its daemon started again three seconds later (within the fence wait
    /// of the default timing, 4 s) is not fenced either.
    #[test]
    fn a_clean_stop_moves_services_without_a_fence_and_a_restart_is_not_fenced() {
        let mut spec = cluster(
            3,
            0,
            true,
            vec![service("db", Strategy::Standby, &[1, 2, 3])],
        );
        spec.bounds.membership = Timing::DEFAULT;
        spec.bounds.self_fence = Duration::from_secs(2);
        let sim = run(&spec, 1, "stop n1; wait 3s; start n1; wait 5s");
        let stopped = fault_at(&sim, "stop n1");
        assert!(
            when(&sim, stopped, 2, 0, "running here").is_some(),
            "db did not move\n{}",
            show(&sim)
        );
        assert_eq!(events(&sim, "fence").count(), 0, "{}", show(&sim));
        assert_eq!(events(&sim, "guardian").count(), 0, "{}", show(&sim));
        assert!(
            events(&sim, "daemon")
                .any(|e| e.node == Some(1)
                    && e.change.text.contains("left the cluster holding nothing")),
            "{}",
            show(&sim)
        );
        // Standby fails back to the restarted n1.
        assert_eq!(sim.node(1).unwrap().service(0).phase(), Phase::Running);
    }

    /// A clean stop ends a clone this node was excluded from after failures
    /// (a clone's exclusion does not keep it off; leaving does), and the node
    /// leaves: the settled-cluster check fails on a node still leaving.
    #[test]
    fn a_clean_stop_ends_a_clone_excluded_here_after_a_failure() {
        let spec = cluster(3, 0, true, vec![service("web", Strategy::Clone, &[])]);
        let sim = run(&spec, 1, "fail web on n3 move; wait 5s; stop n3; wait 5s");
        let stopped = fault_at(&sim, "stop n3");
        assert!(
            when(&sim, stopped, 3, 0, "stopped here").is_some(),
            "web did not stop on n3\n{}",
            show(&sim)
        );
        assert!(
            events(&sim, "daemon")
                .any(|e| e.node == Some(3)
                    && e.change.text.contains("left the cluster holding nothing")),
            "{}",
            show(&sim)
        );
        if let Err(e) = sim.check() {
            panic!("{e}\n{}", show(&sim));
        }
    }

    /// A replica whose start hangs again and again does not hold the promotion:
    /// once its start timeout has passed, the running replica that holds every
    /// acknowledged write is promoted.
    #[test]
    fn a_stuck_replica_does_not_hold_the_promotion_past_its_start_timeout() {
        let mut pg = service("pg", Strategy::Promotable, &[1, 2, 3]);
        pg.failures.max_restarts = 20;
        let spec = cluster(3, 0, true, vec![pg]);
        let sim = run(
            &spec,
            1,
            "hang pg on n2; kill n2; wait 1s; start n2; wait 500ms; kill n1; wait 5s",
        );
        let killed = fault_at(&sim, "kill n1");
        let promoted = when(&sim, killed, 3, 0, "promoted here");
        assert!(
            promoted.is_some_and(|t| t - killed < 2_500 + 1_000),
            "n3 promoted at {promoted:?}, n1 killed at {killed}\n{}",
            show(&sim)
        );
        assert_eq!(sim.node(3).unwrap().service(0).role(), Role::Promoted);
    }

    /// A node in standby runs nothing: the service it ran moves, a clone stops
    /// there, and its status says why and how it ends; out of standby, the
    /// service fails back to it (its first preferred node).
    #[test]
    fn a_node_in_standby_runs_nothing_until_it_is_taken_out() {
        let spec = cluster(
            3,
            0,
            false,
            vec![
                service("web", Strategy::Standby, &[1, 2, 3]),
                service("agent", Strategy::Clone, &[1, 2, 3]),
            ],
        );
        let sim = run(&spec, 1, "standby n1; wait 3s");
        if let Err(e) = sim.check() {
            panic!("{e}\n{}", show(&sim));
        }
        let n1 = sim.node(1).unwrap();
        assert_eq!(n1.service(0).phase(), Phase::Stopped, "{}", show(&sim));
        assert_eq!(n1.service(1).phase(), Phase::Stopped, "{}", show(&sim));
        assert_eq!(
            n1.service(1).placement().why,
            "not here: this node is in standby (`baton unstandby NODE` ends it)"
        );
        assert_eq!(sim.node(2).unwrap().service(0).phase(), Phase::Running);
        assert_eq!(sim.node(3).unwrap().service(1).phase(), Phase::Running);
        assert!(
            events(&sim, "operator")
                .any(|e| e.node == Some(3) && e.change.text.starts_with("n1 is in standby")),
            "{}",
            show(&sim)
        );
        let sim = run(&spec, 1, "standby n1; wait 3s; unstandby n1; wait 3s");
        let n1 = sim.node(1).unwrap();
        assert_eq!(n1.service(0).phase(), Phase::Running, "{}", show(&sim));
        assert_eq!(n1.service(1).phase(), Phase::Running, "{}", show(&sim));
    }

    /// A service in maintenance is neither monitored nor recovered: a failure
    /// meanwhile goes unnoticed; once released, the nodes that do not run it
    /// stop it once (ending anything started there by hand), the owner
    /// monitors it again and the failure is recovered.
    #[test]
    fn a_service_in_maintenance_is_left_alone_until_released() {
        let spec = cluster(
            3,
            0,
            false,
            vec![service("web", Strategy::Standby, &[1, 2, 3])],
        );
        let sim = run(
            &spec,
            1,
            "maintenance web; wait 1s; fail web on n1; wait 3s",
        );
        let n1 = sim.node(1).unwrap().service(0);
        assert_eq!(n1.phase(), Phase::Running, "{}", show(&sim));
        assert!(
            n1.placement()
                .why
                .starts_with("in maintenance: baton neither monitors"),
            "{}",
            n1.placement().why
        );
        assert_eq!(events(&sim, "failure").count(), 0, "{}", show(&sim));
        let sim = run(
            &spec,
            1,
            "maintenance web; wait 1s; fail web on n1; wait 3s; release web; wait 3s",
        );
        let released = fault_at(&sim, "release web");
        assert!(
            when(&sim, released, 2, 0, "stopped here").is_some(),
            "n2 did not stop web once after the release\n{}",
            show(&sim)
        );
        assert!(
            events(&sim, "failure").any(|e| e.node == Some(1) && e.at > released),
            "the failure was not found after the release\n{}",
            show(&sim)
        );
        assert_eq!(sim.node(1).unwrap().service(0).phase(), Phase::Running);
        if let Err(e) = sim.check() {
            panic!("{e}\n{}", show(&sim));
        }
    }

    /// The history explains the wait between a claim and its start: the lost
    /// owner is "not yet known safe" until its fence wait ends (no fence
    /// agent), then "known safe" and why; and with a witness, who holds it as
    /// each node reads it.
    #[test]
    fn the_history_says_why_a_takeover_waits_and_who_holds_the_witness() {
        let spec = cluster(
            2,
            1,
            false,
            vec![service("web", Strategy::Standby, &[1, 2])],
        );
        let sim = run(&spec, 1, "kill n1; wait 5s");
        let said = |text: &str| {
            events(&sim, "fence-wait")
                .chain(events(&sim, "witness"))
                .find(|e| e.node == Some(2) && e.change.text.contains(text))
                .map(|e| e.at)
        };
        let lost = said(
            "n1 is lost and not yet known safe: what it held starts elsewhere once a fence confirms it off, or when its fence wait ends in",
        );
        let safe = said("n1 is known safe: its fence wait has passed");
        let started = when(&sim, 0, 2, 0, "running here");
        assert!(
            lost.is_some() && lost < safe && safe <= started,
            "lost {lost:?}, safe {safe:?}, started {started:?}\n{}",
            show(&sim)
        );
        assert!(said("witness: held by n1").is_some(), "{}", show(&sim));
        assert!(said("witness: held by n2").is_some(), "{}", show(&sim));
    }

    /// A replica that fails again and again on n3: while it backs off, n3's
    /// status says how often it failed and when it restarts; once n3 is
    /// excluded, n3 says until when and the command that ends it, and the other
    /// members name n3 and why, instead of "a replica runs on every member".
    #[test]
    fn a_replica_that_keeps_failing_says_why_and_how_long_on_every_member() {
        let mut pg = service("pg", Strategy::Promotable, &[1, 2, 3]);
        pg.failures.backoff = Duration::from_secs(2);
        let spec = cluster(3, 0, true, vec![pg]);
        let sim = run(&spec, 1, "wait 2s; break pg on n3; fail pg on n3; wait 1s");
        let why = &sim.node(3).unwrap().service(0).placement().why;
        assert!(
            why.contains("here it failed 2 time(s) and restarts in"),
            "{why}\n{}",
            show(&sim)
        );
        let sim = run(&spec, 1, "wait 2s; break pg on n3; fail pg on n3; wait 10s");
        let why = &sim.node(3).unwrap().service(0).placement().why;
        assert!(
            why.starts_with("not here: this node is excluded after failures: 3 failure(s)")
                && why.contains("at once after `baton clear pg` on this node"),
            "{why}\n{}",
            show(&sim)
        );
        let why = &sim.node(1).unwrap().service(0).placement().why;
        assert_eq!(
            why,
            "promotable: a replica runs on every member but node 3 (is excluded after failures)",
            "{}",
            show(&sim)
        );
    }

    /// A service whose starts fail at once on every node: restarts on a node
    /// back off (here 1 s before the second), and once no member may run it
    /// its status names the command that recovers it.
    #[test]
    fn restarts_back_off_and_a_service_nobody_may_run_names_the_fix() {
        let spec = cluster(
            3,
            0,
            false,
            vec![service("web", Strategy::Standby, &[1, 2, 3])],
        );
        let sim = run(
            &spec,
            1,
            "break web on n1; break web on n2; break web on n3; fail web on n1; wait 10s",
        );
        let failures: Vec<Millis> = events(&sim, "failure")
            .filter(|e| e.node == Some(1) && e.change.text.contains("failed here"))
            .map(|e| e.at)
            .collect();
        assert!(failures.len() >= 3, "{failures:?}\n{}", show(&sim));
        assert!(
            failures[2] - failures[1] >= 1_000,
            "the second restart came {} ms after the failure before it\n{}",
            failures[2] - failures[1],
            show(&sim)
        );
        let why = &sim.node(2).unwrap().service(0).placement().why;
        assert!(
            why.contains("no member may run it") && why.contains("baton clear web"),
            "{why}"
        );
    }

    /// Three nodes and no fence device; the owner's daemon alone is frozen for
    /// 2.3 s. Its guardian ends the service; once the daemon resumes, its stop
    /// finds nothing left and completes, and the service runs on some node.
    #[test]
    fn after_a_daemon_freeze_the_service_runs_somewhere_and_nothing_is_blocked() {
        let spec = cluster(
            3,
            0,
            false,
            vec![service("web", Strategy::Standby, &[1, 2, 3])],
        );
        for seed in 1..=5 {
            let sim = run(&spec, seed, "pause n1 2300ms; wait 3s");
            if let Err(e) = sim.check() {
                panic!("seed {seed}: {e}\n{}", show(&sim));
            }
            let phases: Vec<Phase> = (1..=3)
                .map(|n| sim.node(n).unwrap().service(0).phase())
                .collect();
            assert!(phases.contains(&Phase::Running), "seed {seed}: {phases:?}");
            assert!(
                !phases.contains(&Phase::StopFailed),
                "seed {seed}: {phases:?}\n{}",
                show(&sim)
            );
        }
    }
}

/// A config reload: services added, removed, changed and updated in place,
/// switched to by every node without touching the services it leaves alone.
mod reload {
    use super::outages::service;
    use baton_cluster::membership::{Millis, Timing};
    use baton_cluster::node::{Bounds, ClusterNode, ClusterSpec, Phase};
    use baton_cluster::placement::Strategy;
    use baton_cluster::quorum::QuorumPolicy;
    use baton_cluster::sim::{Fault, Sim, default_shells};
    use baton_cluster::wire::NodeId;
    use std::time::Duration;

    /// `nodes` nodes; fencing if asked; the running config (1) or the
    /// reloaded one (2): "added" is new and comes first (every index moves),
    /// "tuned" prefers other nodes (updated in place), "changed" and the
    /// promotable "replica" restart, "gone" is removed, "keep", "spread" and
    /// the promotable "db" are untouched.
    fn cluster(nodes: u16, fencing: bool, reloaded: bool) -> ClusterSpec {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let services = if reloaded {
            vec![
                service("added", Strategy::Standby, &[2, 1]),
                service("keep", Strategy::Standby, &[1, 2]),
                service("changed", Strategy::Standby, &[3, 1]),
                service("tuned", Strategy::Standby, &[3, 2]),
                service("spread", Strategy::Clone, &[]),
                service("replica", Strategy::Promotable, &[3, 2]),
                service("db", Strategy::Promotable, &[1, 2]),
            ]
        } else {
            vec![
                service("keep", Strategy::Standby, &[1, 2]),
                service("tuned", Strategy::Standby, &[2, 3]),
                service("changed", Strategy::Standby, &[3, 1]),
                service("gone", Strategy::Mutual, &[1]),
                service("spread", Strategy::Clone, &[]),
                service("db", Strategy::Promotable, &[1, 2]),
                service("replica", Strategy::Promotable, &[2, 3]),
            ]
        };
        ClusterSpec {
            nodes: ids.clone(),
            links: 2,
            bounds: Bounds {
                membership: Timing::FAST,
                self_fence: Duration::from_millis(200),
                max_delay: Duration::from_millis(5),
            },
            quorum: QuorumPolicy::majority(&ids),
            services,
            fencing,
            config: if reloaded { 2 } else { 1 },
        }
    }

    /// With `chaos`, stops and fences fail now and then.
    fn sim(nodes: u16, fencing: bool, seed: u64, chaos: bool) -> Sim {
        let spec = cluster(nodes, fencing, false);
        let names = spec
            .nodes
            .iter()
            .map(|id| (*id, format!("n{id}")))
            .collect();
        Sim::new(&spec, default_shells(&spec), names, seed, chaos)
    }

    fn reload(sim: &mut Sim, nodes: u16, fencing: bool) {
        let next = cluster(nodes, fencing, true);
        sim.reload(&next, default_shells(&next), &["changed", "replica"]);
    }

    fn index(node: &ClusterNode, name: &str) -> Option<usize> {
        node.services().iter().position(|s| s.spec().name == name)
    }

    /// The nodes where service `name` runs (by each node's own config).
    fn running(sim: &Sim, name: &str) -> Vec<NodeId> {
        sim.live()
            .into_iter()
            .filter(|id| {
                let node = sim.node(*id).unwrap();
                index(node, name).is_some_and(|i| node.service(i).phase() == Phase::Running)
            })
            .collect()
    }

    /// The nodes where promotable service `name` is promoted.
    fn promoted(sim: &Sim, name: &str) -> Vec<NodeId> {
        sim.live()
            .into_iter()
            .filter(|id| {
                let node = sim.node(*id).unwrap();
                index(node, name)
                    .is_some_and(|i| node.service(i).role() == baton_cluster::node::Role::Promoted)
            })
            .collect()
    }

    /// Without faults: every node switches; "keep" runs on the same node
    /// every millisecond of it, "spread" on every node, and "db" stays
    /// promoted where it was; "gone" stops, "added" starts, "changed" and
    /// "replica" are stopped and started again.
    #[test]
    fn a_reload_applies_the_changes_and_leaves_the_rest_running() {
        for seed in 1..=10 {
            let mut sim = sim(3, seed % 2 == 0, seed, false);
            sim.record_timeline();
            sim.run(sim.quiet_ms());
            sim.check().unwrap();
            let keeper = running(&sim, "keep");
            assert_eq!(keeper.len(), 1, "seed {seed}");
            let primary = promoted(&sim, "db");
            assert_eq!(primary.len(), 1, "seed {seed}");
            reload(&mut sim, 3, seed % 2 == 0);
            let quiet = sim.quiet_ms();
            // Whether "changed" ran nowhere, and "replica" was promoted
            // nowhere, at some moment: they were restarted.
            let (mut changed_stopped, mut replica_stopped) = (false, false);
            for _ in 0..quiet {
                sim.run(1);
                changed_stopped |= running(&sim, "changed").is_empty();
                replica_stopped |= promoted(&sim, "replica").is_empty();
                assert_eq!(
                    running(&sim, "keep"),
                    keeper,
                    "seed {seed} at t={}",
                    sim.now()
                );
                assert_eq!(running(&sim, "spread"), vec![1, 2, 3], "seed {seed}");
                assert_eq!(
                    promoted(&sim, "db"),
                    primary,
                    "seed {seed} at t={}",
                    sim.now()
                );
            }
            assert_eq!(sim.violation(), None, "seed {seed}");
            sim.check()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{:?}", sim.log()));
            assert_eq!(running(&sim, "gone"), Vec::<NodeId>::new());
            assert_eq!(running(&sim, "added").len(), 1, "seed {seed}");
            assert_eq!(running(&sim, "changed").len(), 1, "seed {seed}");
            assert_eq!(promoted(&sim, "replica").len(), 1, "seed {seed}");
            assert!(
                changed_stopped && replica_stopped,
                "seed {seed}: not restarted"
            );
            let switched = sim
                .timeline()
                .iter()
                .filter(|e| e.change.kind == "reload" && e.change.text.starts_with("switched"))
                .count();
            assert_eq!(switched, 3, "seed {seed}: every node switched once");
        }
    }

    /// A reload amid crashes, isolation, cuts, pauses and clean stops (100
    /// seeded schedules, 3 to 5 nodes, fencing on even seeds, where stops and
    /// fences also fail now and then): never two
    /// owners of a service (by name: an old and a new instance of a changed
    /// one count as one), and once the faults are repaired every node runs
    /// the reloaded config and the checks of a settled cluster hold.
    #[test]
    fn a_reload_amid_faults_never_gives_two_owners_and_always_finishes() {
        let seeds: Vec<u64> = match std::env::var("BATON_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("BATON_SIM_SEED must be a number")],
            Err(_) => (1..=100).collect(),
        };
        for seed in seeds {
            let nodes = 3 + (seed % 3) as u16;
            let fencing = seed % 2 == 0;
            let mut sim = sim(nodes, fencing, seed, fencing);
            sim.record_timeline();
            sim.run(sim.quiet_ms());
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let faults_before = next(3);
            let faults_after = 1 + next(4);
            for k in 0..faults_before + faults_after {
                if k == faults_before {
                    reload(&mut sim, nodes, fencing);
                }
                let a = 1 + next(u64::from(nodes)) as NodeId;
                let b = 1 + next(u64::from(nodes)) as NodeId;
                let up = sim.live().contains(&a);
                let fault = match next(7) {
                    0 if up => Fault::Kill(a),
                    1 if up => Fault::Stop(a),
                    2 => Fault::Isolate(a),
                    3 if a != b => Fault::Cut {
                        from: a,
                        to: b,
                        link: None,
                        both: true,
                    },
                    4 => Fault::Pause(a, 20 + next(1500)),
                    5 if !up => Fault::Start(a),
                    _ => Fault::Heal,
                };
                sim.apply(&fault);
                sim.run(next(800) as Millis);
            }
            sim.apply(&Fault::Heal);
            for id in 1..=nodes {
                if !sim.live().contains(&id) {
                    sim.apply(&Fault::Start(id));
                }
            }
            sim.run(2 * sim.quiet_ms());
            let outcome = match sim.violation() {
                Some(v) => Err(v.to_string()),
                None => sim.check(),
            };
            if let Err(e) = outcome {
                let timeline = sim.timeline();
                let last: Vec<String> = timeline[timeline.len().saturating_sub(60)..]
                    .iter()
                    .map(|e| {
                        format!(
                            "{:>7} {:?} {} {:?} {}",
                            e.at, e.node, e.change.kind, e.change.service, e.change.text
                        )
                    })
                    .collect();
                panic!(
                    "reload simulation failed for seed {seed} (replay: BATON_SIM_SEED={seed} cargo test -p baton-cluster --test sim -- reload):\n{e}\n{}\nthe last decisions:\n{}",
                    sim.log().join("\n"),
                    last.join("\n")
                );
            }
        }
    }
}
