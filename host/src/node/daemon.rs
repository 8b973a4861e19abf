//! `baton run`: the node daemon. The node driver (`cluster::driver`) decides
//! everything; the daemon gives it real I/O ([`DaemonIo`]: UDP sockets, agent
//! work on threads, the witness worker, health checks, the guardian, the
//! watchdog) and runs one loop: [`Daemon::next_event`] waits for whatever
//! happens next — a packet, finished agent work, a witness answer, an
//! operator's request, SIGTERM, or the driver's next deadline —,
//! [`Daemon::handle_event`] hands it to the driver, and the driver takes its
//! turn. Around that: the control socket, the event history, metrics and the
//! status file.

use crate::agent::catalog::AgentCatalog;
use crate::agent::crew::Crew;
use crate::cluster::config::ClusterConfig;
use crate::cluster::driver::{Done, Driver, Exit, Job, NodeIo, WitnessAnswer};
use crate::cluster::membership::Millis;
use crate::cluster::node::Phase;
use crate::cluster::wire::{
    ClusterKey, Drop, Heartbeat, NodeId, ReplayGuard, decode_upto, encode_as, peek,
};
use crate::cluster::witness::LeaseOp;
use crate::config::Config;
use crate::node::control::{ControlReply, ControlRequest, Pending};
use crate::node::guardian::{Charge, Guardian, descendant_groups};
use crate::node::services::{Fencer, LoadedService, Round, clean_up_leftovers, load_all};
use crate::node::status::Status;
use crate::node::wake::{Bell, Ear};
use crate::node::watchdog::Watchdog;
use crate::node::witness_worker::{DiskBlock, FileBlock, WitnessWorker};
use anyhow::Context;
use baton_plugin_api::service;
use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

/// How often the status file is rewritten, at most.
const STATUS_EVERY_MS: u64 = 100;

/// How often the status file is rewritten while nothing in it changes (its
/// timers and ages move on): with a thousand resources a rewrite is a few
/// hundred kilobytes of JSON.
const STATUS_STEADY_MS: u64 = 1000;

/// How often the guardian's list of process groups is refreshed while nothing
/// starts or stops (a walk of /proc, a few milliseconds of CPU). Processes newer
/// than the list are found by their resource tags when the guardian fences.
const GROUPS_EVERY_MS: u64 = 2000;

/// How often the metrics' gauges are set from the state machine.
const METRICS_EVERY_MS: u64 = 500;

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Write this process's PID, as a service manager (`PIDFile=`) and `kill $(cat
/// FILE)` read it.
fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("--pid-file {}", dir.display()))?;
    }
    write_atomic(path, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("--pid-file {}", path.display()))
}

/// Where `baton run` puts what it serves and records.
#[derive(Clone, Debug, Default)]
pub struct RunPaths {
    /// Status JSON, rewritten every 100 ms at most.
    pub status_file: Option<PathBuf>,
    /// The control socket (default `/run/baton/<node>.sock`).
    pub socket: Option<PathBuf>,
    /// `PID START_TIME` of the daemon, for a fence agent that kills it (the lab's).
    pub pid_file: Option<PathBuf>,
    /// The event history (default: beside the control socket when one is
    /// given, else [`default_history`]).
    pub history_file: Option<PathBuf>,
    /// The config file `run` read, read again by a reload (`None`: the
    /// default, /etc/baton/cluster.toml).
    pub config_file: Option<PathBuf>,
}

/// Where node `node` keeps its event history by default.
pub fn default_history(node: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/baton/{node}.history"))
}

/// Run node `node_name` until SIGTERM/SIGINT; then stop its services (they move
/// to the other nodes), tell the others it left holding nothing, and exit.
pub fn run(
    config: Config,
    node_name: &str,
    runner_exe: PathBuf,
    paths: RunPaths,
) -> anyhow::Result<()> {
    Daemon::start(config, node_name, runner_exe, paths)?.run()
}

/// Where work done off the loop reports back: a channel, and the loop's bell
/// (see wake.rs).
struct Reply<T> {
    tx: mpsc::Sender<T>,
    bell: Bell,
}

impl<T> Clone for Reply<T> {
    fn clone(&self) -> Self {
        Reply {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> Reply<T> {
    fn send(&self, value: T) {
        if self.tx.send(value).is_ok() {
            self.bell.ring();
        }
    }
}

/// Finished agent work: the driver's completion and, for a round, each
/// resource's state afterwards, in words.
struct Finished {
    done: Done,
    states: Option<(usize, Vec<String>)>,
    /// The services' generation the work was started under (a reload's
    /// switch renumbers them: older answers name the old indices).
    generation: u64,
}

impl Finished {
    fn round(i: usize, round: Round, done: impl FnOnce(Round) -> Done) -> Finished {
        let states = round.states.clone();
        Finished {
            done: done(round),
            states: Some((i, states)),
            generation: 0,
        }
    }

    fn of(self, generation: u64) -> Finished {
        Finished { generation, ..self }
    }
}

/// The guardian and what it was last told this node holds.
struct Guarded {
    guardian: Guardian,
    charge: Charge,
    /// When to walk /proc for the services' process groups again.
    next_scan: u64,
}

impl Guarded {
    /// Renew the guardian's lease with what the services in `phases` hold now.
    /// Process groups only while something is held (with nothing held a late
    /// renewal must not touch the agents' runners); while a start or a stop
    /// runs, processes come and go, so they are learnt every tick then.
    fn renew(&mut self, services: &[Arc<LoadedService>], phases: &[Phase], now: u64) {
        let holds = phases.iter().any(|p| p.holds());
        let changing = phases
            .iter()
            .any(|p| matches!(p, Phase::Starting | Phase::Stopping));
        if !holds {
            self.charge.groups.clear();
            self.next_scan = 0;
        } else if changing || now >= self.next_scan {
            self.next_scan = now + GROUPS_EVERY_MS;
            self.charge.groups = descendant_groups(std::process::id(), &[]);
        }
        self.charge.holds = holds;
        self.charge.addresses = held(services, phases, |s| &s.addresses);
        self.charge.mounts = held(services, phases, |s| &s.mounts);
        self.guardian.renew(&self.charge);
    }
}

/// What the services this node holds (or may hold) have of one kind
/// (addresses, mount points), for the guardian.
fn held<T: Ord + Clone>(
    services: &[Arc<LoadedService>],
    phases: &[Phase],
    of: impl Fn(&LoadedService) -> &Vec<T>,
) -> std::collections::BTreeSet<T> {
    services
        .iter()
        .zip(phases)
        .filter(|(_, p)| p.holds())
        .flat_map(|(s, _)| of(s).iter().cloned())
        .collect()
}

/// The daemon's I/O, for the node driver.
struct DaemonIo {
    epoch: Instant,
    key: ClusterKey,
    sockets: Vec<UdpSocket>,
    peers: Vec<(NodeId, Vec<SocketAddr>)>,
    names: BTreeMap<NodeId, String>,
    services: Arc<Vec<Arc<LoadedService>>>,
    fencer: Option<Arc<Fencer>>,
    finished: Reply<Finished>,
    crew: Crew,
    witness: Option<WitnessWorker>,
    health: Option<Arc<Mutex<crate::node::health::Health>>>,
    guardian: Option<Guarded>,
    watchdog: Option<Watchdog>,
    /// Each resource's state after its last call, in words, per service.
    states: Vec<Vec<String>>,
    /// The wire version each peer is sent, and refusals.
    wire: crate::node::versions::WireVersions,
    /// The services of the config staged for a reload (per staged service).
    staged: Vec<Arc<LoadedService>>,
    /// Bumped at each switch to a reloaded config.
    generation: u64,
    /// The latest switch, for the loop to follow: per service, the index it had.
    switched: Option<Vec<Option<usize>>>,
}

impl NodeIo for DaemonIo {
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn send(&mut self, packets: Vec<Heartbeat>) {
        for hb in packets {
            // Encoded once per version the peers are sent (one, but during an
            // upgrade).
            let mut encoded: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
            let link = usize::from(hb.link);
            let now = self.now();
            for (peer, addrs) in &self.peers {
                let version = self.wire.sending(*peer, now);
                let bytes = encoded
                    .entry(version)
                    .or_insert_with(|| encode_as(&self.key, &hb, version));
                if let (Some(sock), Some(to)) = (self.sockets.get(link), addrs.get(link)) {
                    let _ = sock.send_to(bytes, to);
                }
            }
        }
    }

    fn run(&mut self, job: Job) {
        let services = Arc::clone(&self.services);
        let reply = self.finished.clone();
        let generation = self.generation;
        if let Job::Monitor {
            service: i,
            round,
            promoted,
        } = job
        {
            // On a reused thread; the driver gives the round up at its deadline.
            let launched = self.crew.launch(move || {
                let f = Finished::round(i, services[i].monitor(promoted), |r| Done::Monitored {
                    service: i,
                    round,
                    result: r.result,
                    score: r.score,
                });
                reply.send(f.of(generation));
            });
            if let Err(e) = launched {
                tracing::error!(service = %self.services[i].name, "cannot start a monitor round: {e}");
            }
            return;
        }
        // A promotion or demotion changes some resources' states; it starts from the others'.
        let states = match job {
            Job::Promote(i) | Job::Demote(i) => self.states[i].clone(),
            _ => Vec::new(),
        };
        let fencer = self.fencer.clone();
        let names = self.names.clone();
        std::thread::spawn(move || {
            reply.send(work(job, &services, fencer.as_deref(), &names, states).of(generation))
        });
    }

    fn witness(&mut self, op: LeaseOp, asked: Millis) {
        if let Some(w) = &self.witness {
            w.ask(op, asked);
        }
    }

    fn health(&mut self) -> (bool, Option<Millis>) {
        let Some(h) = &self.health else {
            return (true, None);
        };
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        let pass = h
            .last_pass
            .map(|t| t.saturating_duration_since(self.epoch).as_millis() as Millis);
        (h.healthy, Some(pass.unwrap_or(0)))
    }

    fn guard(&mut self, phases: &[Phase]) {
        let now = self.now();
        if let Some(g) = self.guardian.as_mut() {
            g.renew(&self.services, phases, now);
        }
    }

    fn dismiss_guardian(&mut self) {
        if let Some(g) = self.guardian.take() {
            g.guardian.stand_down();
        }
    }

    fn end_processes(&mut self, service: usize) -> Result<usize, String> {
        self.services[service].end()
    }

    fn pet_watchdog(&mut self) {
        if let Some(dog) = self.watchdog.as_mut() {
            dog.pet();
        }
    }

    fn switched(&mut self, continues: &[Option<usize>]) {
        let services = std::mem::take(&mut self.staged);
        self.states = continues
            .iter()
            .zip(&services)
            .map(|(from, s)| match from {
                Some(o) => self.states[*o].clone(),
                None => vec!["stopped".to_string(); s.resources.len()],
            })
            .collect();
        self.services = Arc::new(services);
        self.generation += 1;
        self.switched = Some(continues.to_vec());
    }
}

/// Carry out one job (on a thread of its own).
fn work(
    job: Job,
    services: &[Arc<LoadedService>],
    fencer: Option<&Fencer>,
    names: &BTreeMap<NodeId, String>,
    states: Vec<String>,
) -> Finished {
    let name = |n: &NodeId| names.get(n).cloned().unwrap_or_else(|| n.to_string());
    match job {
        Job::Start(i, fenced) => {
            let fenced = fenced.iter().map(name).collect();
            Finished::round(i, services[i].start(fenced), |r| Done::Started(i, r.result))
        }
        Job::Stop { service: i, cap } => {
            let (ok, states) = services[i].stop(cap);
            Finished {
                done: Done::Stopped(i, ok),
                states: Some((i, states)),
                generation: 0,
            }
        }
        Job::Promote(i) => Finished::round(i, services[i].promote(states), |r| {
            Done::Promoted(i, r.result)
        }),
        Job::Demote(i) => {
            let (ok, states) = services[i].demote(states);
            Finished {
                done: Done::Demoted(i, ok),
                states: Some((i, states)),
                generation: 0,
            }
        }
        Job::Verify(i) => {
            let left = services[i].left_running();
            if !left.is_empty() {
                tracing::error!(service = %services[i].name, "after a failed stop, still there: {}", left.join("; "));
            }
            Finished {
                done: Done::Verified(i, left.is_empty()),
                states: None,
                generation: 0,
            }
        }
        Job::Fence { node, incarnation } => Finished {
            done: Done::Fenced(
                node,
                incarnation,
                fencer.is_some_and(|f| f.fence(&name(&node))),
            ),
            states: None,
            generation: 0,
        },
        Job::Monitor { .. } => unreachable!("monitor rounds run on the crew"),
    }
}

/// Everything that can happen to the daemon.
enum Event {
    /// SIGTERM or SIGINT: stop cleanly.
    Terminate,
    /// SIGHUP: reload the config.
    Reload,
    /// An authenticated, fresh heartbeat.
    Packet(Heartbeat),
    /// Agent or fence work finished.
    Finished(Finished),
    /// A witness operation answered.
    Witness(WitnessAnswer),
    /// An operator's request (control socket or console).
    Operator(Pending),
}

/// The status file: where, and what it last showed.
struct StatusFile {
    path: PathBuf,
    next: u64,
    /// Quorum and health as the file last showed them.
    shown: (bool, bool),
    /// What it last showed of the things that change it at once.
    key: Option<String>,
}

/// A running node.
pub struct Daemon {
    driver: Driver,
    io: DaemonIo,
    cluster: ClusterConfig,
    node_name: String,
    ear: Ear,
    finished: mpsc::Receiver<Finished>,
    answers: mpsc::Receiver<WitnessAnswer>,
    control: mpsc::Receiver<Pending>,
    events: VecDeque<Event>,
    replay: ReplayGuard,
    dropped: BTreeMap<&'static str, u64>,
    /// When the latest packet of each cause was dropped (the driver's clock).
    dropped_last: BTreeMap<&'static str, u64>,
    buf: Vec<u8>,
    decisions: crate::node::decisions::Decisions,
    metrics: Option<Arc<crate::node::metrics::Metrics>>,
    next_metrics: u64,
    status_file: Option<StatusFile>,
    socket_path: PathBuf,
    /// Bumped whenever a resource's state in words changes.
    local_changes: u64,
    /// The operators' settings: where they are kept, and what was saved last.
    settings: (PathBuf, crate::cluster::wire::Admin),
    /// Who asked for the latest move of each service taken here.
    movers: BTreeMap<usize, String>,
    /// Readiness, status and watchdog for a systemd unit.
    systemd: crate::node::systemd::Notifier,
    /// Where the config was read from, and the agent runner: for a reload.
    config_file: Option<PathBuf>,
    runner_exe: PathBuf,
    /// The config staged for a reload, adopted when the node switches to it.
    staged: Option<ClusterConfig>,
    /// Where the HTTPS server takes its certificate from (a reload renews it).
    tls: Option<Arc<crate::node::tls::CertSlot>>,
}

/// The node's cluster config and agents, loaded: everything `run` refuses to
/// start without.
struct Loaded {
    cluster: ClusterConfig,
    me: crate::cluster::config::NodeSection,
    key: ClusterKey,
    catalog: AgentCatalog,
    services: Vec<LoadedService>,
    fencer: Option<Arc<Fencer>>,
}

/// The cluster key from `key_file`, checked.
fn cluster_key(cluster: &ClusterConfig) -> anyhow::Result<ClusterKey> {
    let file = &cluster.cluster.key_file;
    let bytes = std::fs::read(file).with_context(|| {
        format!(
            "cluster.key_file {}: cannot read it; make one with head -c 32 /dev/urandom > {0} and copy it to every node",
            file.display()
        )
    })?;
    ClusterKey::new(&cluster.cluster.name, &bytes)
        .map_err(|e| anyhow::anyhow!("cluster.key_file {}: {e}", file.display()))
}

/// What `run` would refuse in the files the config names on this machine
/// (the key file, the console's tokens file), for `config check` to say first.
pub fn site_file_problems(cluster: &ClusterConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = cluster_key(cluster) {
        problems.push(format!("{e:#}"));
    }
    if let Some(c) = &cluster.cluster.console
        && let Err(e) = crate::node::console::Tokens::load(&c.tokens_file)
    {
        problems.push(format!("{e:#}"));
    }
    // The certificate is one node's: it must be valid for one node's address.
    let tls = cluster.cluster.tls.as_ref();
    let checked: Vec<anyhow::Result<_>> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((&n.name, n.http.as_deref()?)))
        .map(|(name, http)| crate::node::tls::certified(tls, name, http))
        .collect();
    if !checked.is_empty()
        && !checked.iter().any(Result::is_ok)
        && let Some(Err(e)) = checked.into_iter().next()
    {
        problems.push(format!("{e:#}"));
    }
    problems
}

/// What `config check` warns of in the files the config names on this
/// machine: a node certificate that expires within
/// [`crate::node::tls::RENEW_WITHIN_DAYS`].
pub fn site_file_warnings(cluster: &ClusterConfig) -> Vec<String> {
    let now = (crate::node::history::unix_ms() / 1000) as i64;
    let mut warnings: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((&n.name, n.http.as_deref()?)))
        .filter_map(|(name, http)| {
            crate::node::tls::certified(cluster.cluster.tls.as_ref(), name, http)
                .ok()
                .flatten()
        })
        .filter_map(|s| crate::node::tls::expiry_warning(&s.cert_file, s.not_after, now))
        .collect();
    warnings.dedup();
    warnings
}

fn load(config: Config, node_name: &str, runner_exe: PathBuf) -> anyhow::Result<Loaded> {
    let cluster = config
        .cluster
        .clone()
        .context("the config has no [cluster] section; `baton run` needs nodes and services")?;
    let me = cluster
        .this_node(node_name)
        .map_err(anyhow::Error::msg)?
        .clone();
    let key = cluster_key(&cluster)?;
    if let Some(c) = &cluster.cluster.console {
        crate::node::console::Tokens::load(&c.tokens_file)?;
    }
    let mut agent_config = config;
    agent_config.agents.node = Some(node_name.to_string());
    let mut catalog = AgentCatalog::new(agent_config, runner_exe);
    let mut policy = catalog.runner_policy().clone();
    policy.long_lived = true;
    catalog.set_runner_policy(policy);
    let (services, fencer) = load_all(&cluster, &catalog, node_name).map_err(|problems| {
        anyhow::anyhow!(
            "the config has {} problem(s); nothing was started:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    })?;
    Ok(Loaded {
        cluster,
        me,
        key,
        catalog,
        services,
        fencer: fencer.map(Arc::new),
    })
}

/// The witness worker for this node, answering to `reply`.
fn start_witness(
    cluster: &ClusterConfig,
    me: NodeId,
    epoch: Instant,
    reply: Reply<WitnessAnswer>,
) -> Option<WitnessWorker> {
    let w = cluster.cluster.witness.as_ref()?;
    let lease_ms = cluster.spec().bounds.witness_lease().as_millis() as u64;
    let name = &cluster.cluster.name;
    let answer = move |a| reply.send(a);
    Some(match (&w.disk, &w.file) {
        (Some(disk), _) => WitnessWorker::start(
            DiskBlock::new(disk, w.slot),
            me,
            name,
            lease_ms,
            epoch,
            answer,
        ),
        (None, file) => WitnessWorker::start(
            FileBlock::new(file.as_deref().unwrap_or(Path::new(""))),
            me,
            name,
            lease_ms,
            epoch,
            answer,
        ),
    })
}

/// What the node's HTTP server gives the loop: its metrics, and the slot its
/// TLS certificate is served from.
type Served = (
    Option<Arc<crate::node::metrics::Metrics>>,
    Option<Arc<crate::node::tls::CertSlot>>,
);

/// The node's HTTP server (metrics, console, validation), if it has `http`.
fn serve_http(
    loaded: &Loaded,
    asker: crate::node::control::Asker,
    history: &Path,
) -> anyhow::Result<Served> {
    let (cluster, me) = (&loaded.cluster, &loaded.me);
    let Some(addr) = &me.http else {
        return Ok((None, None));
    };
    let at: SocketAddr = addr
        .parse()
        .with_context(|| format!("node {}: http {addr}", me.name))?;
    let facts = crate::node::console::Facts {
        node: me.name.clone(),
        key: loaded.key.check(),
        agents: crate::node::services::agent_identities(cluster, &loaded.catalog),
        fence: loaded.fencer.clone().map(|f| {
            let target = me.name.clone();
            let agent = cluster
                .cluster
                .fencing
                .as_ref()
                .map(|c| c.agent.clone())
                .unwrap_or_default();
            let check: crate::node::console::FenceCheck = Box::new(move || f.check(&target));
            (agent, check)
        }),
    };
    let metrics = crate::node::metrics::global();
    let routes = crate::node::console::routes(
        cluster.cluster.console.as_ref(),
        &metrics,
        asker,
        history.to_path_buf(),
        facts,
        crate::node::gather::Peers {
            nodes: cluster
                .nodes
                .iter()
                .filter(|n| n.name != me.name)
                .map(|n| (n.name.clone(), n.http.clone()))
                .collect(),
            client: crate::node::tls::Client::for_section(
                cluster.cluster.tls.as_ref(),
                crate::node::gather::ASK_TIMEOUT,
            )?,
        },
    )?;
    let (tls, slot) = crate::node::tls::server(cluster.cluster.tls.as_ref(), &me.name, addr)?
        .map_or((None, None), |(config, slot)| (Some(config), Some(slot)));
    crate::node::metrics::serve(at, routes, tls)
        .map(|()| {
            metrics.set_info(&me.name, &format!("{:016x}", cluster.fingerprint));
            (Some(metrics), slot)
        })
        .with_context(|| {
            format!(
                "node {}: cannot serve HTTP on {addr} (http in its [[node]])",
                me.name
            )
        })
}

/// A socket for each of this node's links, bound.
fn bind_links(loaded: &Loaded) -> anyhow::Result<Vec<UdpSocket>> {
    let node = &loaded.me.name;
    let mut sockets = Vec::new();
    for (i, addr) in loaded.cluster.addresses[&loaded.me.id].iter().enumerate() {
        let s = UdpSocket::bind(addr)
            .with_context(|| format!("node {node} link {i}: cannot bind {addr}"))?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    Ok(sockets)
}

/// What this node's history says of its previous run, for the first record
/// of this one: a run that ended without a clean stop (a crash, kill -9, a
/// power failure, a fence) is said so, with its last record.
fn how_the_previous_run_ended(history: &Path, node: &str) -> String {
    let last = crate::node::history::read(history, None, None)
        .ok()
        .and_then(|events| events.into_iter().rev().find(|e| e.node == node));
    match last {
        None => "started".into(),
        Some(e)
            if e.kind == "daemon"
                && (e.text.starts_with("left the cluster holding nothing")
                    || e.text.starts_with("exiting with a failed stop")) =>
        {
            format!(
                "started; the previous run stopped cleanly at {}",
                crate::node::history::local_time(e.at_ms)
            )
        }
        Some(e) => format!(
            "started; the previous run ended without a clean stop (a crash, kill -9, power loss or a fence); its last record, at {}: {}",
            crate::node::history::local_time(e.at_ms),
            e.text
        ),
    }
}

/// The event history at `path`, or `None` (decisions are then only logged).
fn open_journal(path: &Path) -> Option<crate::node::history::Journal> {
    crate::node::history::Journal::open(path, crate::node::history::LIMIT)
        .map_err(|e| {
            tracing::error!(
                "the event history {} cannot be opened ({e}); decisions are only logged",
                path.display()
            )
        })
        .ok()
}

/// The node driver and its I/O, with the channels finished work and witness
/// answers come back on.
struct Shell {
    driver: Driver,
    io: DaemonIo,
    finished: mpsc::Receiver<Finished>,
    answers: mpsc::Receiver<WitnessAnswer>,
}

/// The node's [`Shell`]. Stops what a previous run left before anything else;
/// starts the witness worker, the guardian, the health checks and, last (an
/// armed watchdog resets the machine), the watchdog.
fn shell(
    loaded: Loaded,
    sockets: Vec<UdpSocket>,
    bell: Bell,
    (runner_exe, history): (&Path, &Path),
) -> anyhow::Result<Shell> {
    let Loaded {
        cluster,
        me,
        key,
        services,
        fencer,
        ..
    } = loaded;
    clean_up_leftovers(&services)?;
    let epoch = Instant::now();
    let (witness_tx, answers) = mpsc::channel();
    let witness = start_witness(
        &cluster,
        me.id,
        epoch,
        Reply {
            tx: witness_tx,
            bell: bell.clone(),
        },
    );
    let mut spec = cluster.spec();
    // The guardian fences this node's services if this process dies or hangs
    // for half the self-fence bound (see guardian.rs).
    let guardian = Guardian::spawn(
        runner_exe,
        spec.bounds.guardian_lease(),
        (&me.name, history),
    )
    .context("cannot start the guardian (baton guardian)")?;
    let health = cluster
        .cluster
        .health
        .as_ref()
        .map(crate::node::health::start);
    let watchdog = match &cluster.cluster.watchdog {
        Some(w) => Some(Watchdog::open(&w.device, w.timeout_s)?),
        None => None,
    };
    for (s, loaded) in spec.services.iter_mut().zip(&services) {
        s.start_timeout = loaded.start_budget();
    }
    let names: BTreeMap<NodeId, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let shells = services.iter().map(LoadedService::shell).collect();
    let incarnation = crate::node::history::unix_ms();
    let driver = Driver::new(&spec, me.id, incarnation, 0, shells, names.clone());
    let (finished_tx, finished) = mpsc::channel();
    let io = DaemonIo {
        epoch,
        key,
        peers: cluster
            .addresses
            .iter()
            .filter(|(id, _)| **id != me.id)
            .map(|(id, a)| (*id, a.clone()))
            .collect(),
        sockets,
        names,
        states: services
            .iter()
            .map(|s| vec!["stopped".to_string(); s.resources.len()])
            .collect(),
        wire: crate::node::versions::WireVersions::new(
            cluster
                .cluster
                .wire_version
                .unwrap_or(crate::cluster::wire::VERSION),
        ),
        services: Arc::new(services.into_iter().map(Arc::new).collect()),
        staged: Vec::new(),
        generation: 0,
        switched: None,
        fencer,
        finished: Reply {
            tx: finished_tx,
            bell,
        },
        crew: Crew::new("monitor"),
        witness,
        health,
        guardian: Some(Guarded {
            guardian,
            charge: Charge::default(),
            next_scan: 0,
        }),
        watchdog,
    };
    Ok(Shell {
        driver,
        io,
        finished,
        answers,
    })
}

impl Daemon {
    /// Load the config and agents, open every socket, stop what a previous run
    /// left, start the guardian: a node ready to run, or why not (nothing of
    /// this node's services has been started then).
    pub fn start(
        config: Config,
        node_name: &str,
        runner_exe: PathBuf,
        paths: RunPaths,
    ) -> anyhow::Result<Daemon> {
        let socket_path = paths
            .socket
            .clone()
            .unwrap_or_else(|| crate::node::control::default_socket(node_name));
        // Every process started for a resource carries this host's identity (see
        // plugin_api::service): the same node keeps it across restarts, and no other
        // daemon on this machine can share its control socket.
        let cluster_name = config.cluster.as_ref().map(|c| c.cluster.name.clone());
        let host = format!(
            "{}/{node_name}@{}",
            cluster_name.unwrap_or_default(),
            socket_path.display()
        );
        // SAFETY: no other thread exists yet (the agents, workers and sockets start below).
        unsafe { std::env::set_var(service::HOST_VAR, &host) };
        let loaded = load(config, node_name, runner_exe.clone())?;
        let sockets = bind_links(&loaded)?;
        let (bell, ear) =
            crate::node::wake::pair().context("cannot create the loop's wake-up pipe")?;
        let (asker, control) = crate::node::control::channel(bell.clone());
        crate::node::control::serve(&socket_path, asker.clone())?;
        if let Some(p) = &paths.pid_file {
            write_pid_file(p)?;
        }
        let history = paths
            .history_file
            .clone()
            .or_else(|| paths.socket.as_ref().map(|s| s.with_extension("history")))
            .unwrap_or_else(|| default_history(node_name));
        let (metrics, tls) = serve_http(&loaded, asker, &history)?;
        let previous = how_the_previous_run_ended(&history, node_name);
        let mut decisions = crate::node::decisions::Decisions::new(
            node_name,
            loaded
                .cluster
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            open_journal(&history),
        );
        decisions.record("daemon", None, previous);
        let settings_path = crate::node::settings::path_beside(&history);
        let saved = crate::node::settings::load(&settings_path)?;
        let cluster = loaded.cluster.clone();
        let systemd = crate::node::systemd::Notifier::from_env(cluster.timing.report_timeout * 2);
        let Shell {
            mut driver,
            io,
            finished,
            answers,
        } = shell(loaded, sockets, bell, (&runner_exe, &history))?;
        driver.adopt_admin(saved);
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
            libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t);
        }
        tracing::info!(
            node = node_name,
            id = driver.node().membership().me(),
            incarnation = driver.node().membership().incarnation(),
            socket = %socket_path.display(),
            "baton node running"
        );
        Ok(Daemon {
            driver,
            io,
            cluster,
            node_name: node_name.to_string(),
            ear,
            finished,
            answers,
            control,
            events: VecDeque::new(),
            replay: ReplayGuard::default(),
            dropped: BTreeMap::new(),
            dropped_last: BTreeMap::new(),
            buf: vec![0; 65536],
            decisions,
            metrics,
            next_metrics: 0,
            status_file: paths.status_file.map(|path| StatusFile {
                path,
                next: 0,
                shown: (false, true),
                key: None,
            }),
            socket_path,
            local_changes: 0,
            settings: (settings_path, saved),
            movers: BTreeMap::new(),
            systemd,
            config_file: paths.config_file.clone(),
            runner_exe,
            staged: None,
            tls,
        })
    }

    /// The loop: wait for the next event, hand it over, let the driver take
    /// its turn; until a clean stop is over.
    pub fn run(mut self) -> anyhow::Result<()> {
        loop {
            if let Some(event) = self.next_event() {
                self.handle_event(event);
            }
            self.driver.turn(&mut self.io);
            self.after_turn();
            if let Some(exit) = self.driver.exit() {
                return self.finish(exit);
            }
        }
    }

    /// What happened next; `None` when the driver's next deadline came first.
    fn next_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.gather();
        }
        if self.events.is_empty() {
            self.sleep_until(self.driver.next_wakeup());
            self.gather();
        }
        self.events.pop_front()
    }

    /// Take in whatever has arrived, without waiting.
    fn gather(&mut self) {
        if STOP.swap(false, Ordering::SeqCst) {
            self.events.push_back(Event::Terminate);
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            self.events.push_back(Event::Reload);
        }
        self.events
            .extend(self.finished.try_iter().map(Event::Finished));
        self.events
            .extend(self.answers.try_iter().map(Event::Witness));
        self.events
            .extend(self.control.try_iter().map(Event::Operator));
        for s in &self.io.sockets {
            while let Ok((n, _)) = s.recv_from(&mut self.buf) {
                let bytes = &self.buf[..n];
                match decode_upto(&self.io.key, bytes, self.io.wire.newest())
                    .and_then(|(hb, v)| self.replay.admit(&hb).map(|()| (hb, v)))
                {
                    Ok((hb, version)) => {
                        self.io.wire.heard(hb.sender, hb.incarnation, version);
                        self.events.push_back(Event::Packet(hb));
                    }
                    Err(d) => {
                        if d == Drop::UnsupportedVersion
                            && let Some((version, sender)) = peek(bytes)
                        {
                            self.io.wire.refused(sender, version, self.io.now());
                        }
                        *self.dropped.entry(Drop::name(d)).or_default() += 1;
                        self.dropped_last.insert(Drop::name(d), self.io.now());
                    }
                }
            }
        }
    }

    /// Sleep until `at` (the driver's clock) or until a packet, finished work, a
    /// witness answer, an operator's request (the bell) or a signal arrives.
    fn sleep_until(&mut self, at: Millis) {
        let interval = self.driver.node().bounds().membership.interval.as_millis() as u64;
        let wait = at.saturating_sub(self.io.now()).min(interval.max(1)) as i32;
        if wait == 0 {
            return;
        }
        let mut fds: Vec<libc::pollfd> = self
            .io
            .sockets
            .iter()
            .map(|s| s.as_raw_fd())
            .chain([self.ear.fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds for descriptors we own.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait);
        }
        self.ear.drain();
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Terminate => {
                self.systemd.stopping();
                self.driver.leave()
            }
            Event::Reload => {
                let reply = self.reload(false, "SIGHUP");
                if !reply.ok {
                    tracing::error!("reload (SIGHUP) refused: {}", reply.message);
                }
            }
            Event::Packet(hb) => self.driver.receive(self.io.now(), &hb),
            Event::Finished(f)
                if f.generation != self.io.generation && !matches!(f.done, Done::Fenced(..)) =>
            {
                // A monitor round under the services' numbering before a
                // reload's switch: the switch restarted their monitors.
            }
            Event::Finished(f) => {
                if let Some((i, states)) = f.states {
                    if self.io.states[i] != states {
                        self.local_changes += 1;
                    }
                    self.io.states[i] = states;
                }
                self.driver.done(&mut self.io, f.done);
            }
            Event::Witness(a) => self.driver.witness_answer(a),
            Event::Operator(p) => {
                let reply = self.operator(&p.request, &p.who);
                let _ = p.reply.send(reply);
            }
        }
    }

    /// Carry out an operator's request; it is recorded with who asked.
    fn operator(&mut self, req: &ControlRequest, who: &str) -> ControlReply {
        if let ControlRequest::Reload { dry_run } = req {
            return self.reload(*dry_run, who);
        }
        if *req == ControlRequest::Status {
            return ControlReply {
                ok: true,
                message: String::new(),
                status: Some(self.status()),
                plan: None,
            };
        }
        if let Some(refused) = self.needs_every_node_current(req) {
            return ControlReply {
                ok: false,
                message: refused,
                status: None,
                plan: None,
            };
        }
        let service = req
            .service()
            .and_then(|s| service_index(&self.cluster, s).ok());
        match crate::node::operator::carry_out(&mut self.driver, &mut self.io, req, &self.cluster) {
            Ok(message) => {
                if let (Some(i), ControlRequest::Move { .. } | ControlRequest::Promote { .. }) =
                    (service, req)
                {
                    self.movers.insert(i, who.to_string());
                }
                self.decisions
                    .record("operator", service, format!("by {who}: {message}"));
                ControlReply {
                    ok: true,
                    message,
                    status: None,
                    plan: None,
                }
            }
            Err(e) => {
                self.decisions
                    .record("operator", service, format!("refused for {who}: {e}"));
                ControlReply::refused(e)
            }
        }
    }

    /// Read the config file again and stage it (`dry_run`: only say what it
    /// would do). Refused, changing nothing, if the file does not load, the
    /// change is not a reload's (see `baton_cluster::reload`), or a member
    /// speaks a wire version without reports' configs.
    fn reload(&mut self, dry_run: bool, who: &str) -> ControlReply {
        let reply = self.try_reload(dry_run);
        let (ok, text) = match &reply {
            Ok((text, _)) => (true, text.clone()),
            Err(e) => (false, e.clone()),
        };
        if !dry_run {
            self.decisions.record(
                "reload",
                None,
                format!(
                    "{} by {who}: {text}",
                    if ok { "reload" } else { "reload refused" }
                ),
            );
        }
        match reply {
            Ok((message, plan)) => ControlReply {
                ok: true,
                message,
                status: None,
                plan: Some(plan),
            },
            Err(e) => ControlReply::refused(e),
        }
    }

    fn try_reload(&mut self, dry_run: bool) -> Result<(String, serde_json::Value), String> {
        let wire = self.wire_status();
        if wire.cluster < 8 {
            return Err(format!(
                "the cluster speaks wire version {}: nodes before version 8 do not say which config their reports are made under, so a reload cannot switch them safely; finish the upgrade first",
                wire.cluster
            ));
        }
        let prepared = crate::node::reload::prepare(
            self.config_file.as_deref(),
            &self.node_name,
            &self.runner_exe,
            &self.cluster,
            &self.io.services,
        )
        .map_err(|problems| {
            format!(
                "the config file cannot be reloaded; nothing changed:\n  {}",
                problems.join("\n  ")
            )
        })?;
        let tls = self.reload_tls(&prepared.cluster, dry_run)?;
        let mut prepared = prepared;
        if tls.is_some() {
            prepared
                .plan
                .restart_only
                .retain(|k| !k.starts_with("cluster.tls"));
        }
        let (mut text, mut plan) =
            crate::node::reload::describe(&prepared.plan, |name| self.runs_on(name));
        if let Some(line) = &tls {
            text = format!("{text}\n  {line}");
            plan["tls"] = line.clone().into();
        }
        Ok(self.stage(prepared, dry_run, text, plan))
    }

    /// Stage `prepared` (its plan in words `text` and as JSON `plan`) unless
    /// `dry_run`; a file whose cluster-wide part is the running config drops
    /// a reload staged before instead. The reply's message and plan.
    fn stage(
        &mut self,
        prepared: crate::node::reload::Prepared,
        dry_run: bool,
        text: String,
        mut plan: serde_json::Value,
    ) -> (String, serde_json::Value) {
        plan["staged"] = (!dry_run && prepared.plan.config != self.cluster.fingerprint).into();
        if prepared.plan.config == self.cluster.fingerprint {
            if dry_run {
                return (
                    format!(
                        "the file's cluster-wide part is the running config {:016x}: nothing to switch to (dry run)\n{text}",
                        self.cluster.fingerprint
                    ),
                    plan,
                );
            }
            self.io.staged.clear();
            self.staged = None;
            self.driver.unstage();
            return (
                format!(
                    "the file's cluster-wide part is the running config {:016x}: nothing to switch to (a reload staged before is dropped)\n{text}",
                    self.cluster.fingerprint
                ),
                plan,
            );
        }
        let head = format!(
            "config {:016x} -> {:016x}",
            self.cluster.fingerprint, prepared.plan.config
        );
        if dry_run {
            return (format!("{head} (dry run: nothing staged)\n{text}"), plan);
        }
        self.driver
            .stage(prepared.staged(), prepared.shells.clone());
        self.io.staged = prepared.services;
        self.staged = Some(prepared.cluster);
        (
            format!(
                "{head}\n{text}\nstaged on this node; {}",
                self.reload_progress().unwrap_or_default()
            ),
            plan,
        )
    }

    /// The HTTPS certificate of `next` for this node, checked as `run` checks
    /// it, served from now on (unless `dry_run`): the line the plan gets, or
    /// `None` without HTTPS (plain HTTP to HTTPS and back needs a restart).
    fn reload_tls(&self, next: &ClusterConfig, dry_run: bool) -> Result<Option<String>, String> {
        let (Some(slot), Some(http)) = (
            &self.tls,
            next.node(&self.node_name).and_then(|n| n.http.as_deref()),
        ) else {
            return Ok(None);
        };
        let served = crate::node::tls::certified(next.cluster.tls.as_ref(), &self.node_name, http)
            .map_err(|e| {
                format!("the config file cannot be reloaded; nothing changed:\n  {e:#}")
            })?;
        let Some(served) = served else {
            return Ok(None);
        };
        let line = format!(
            "TLS: {} {}, valid until {}",
            if dry_run { "would serve" } else { "serving" },
            served.cert_file.display(),
            crate::node::tls::date(served.not_after)
        );
        if !dry_run {
            slot.replace(served);
        }
        Ok(Some(line))
    }

    /// Where the service named `name` runs now, as this node knows it.
    fn runs_on(&self, name: &str) -> Vec<String> {
        let node = self.driver.node();
        let Ok(i) = service_index(&self.cluster, name) else {
            return Vec::new();
        };
        let me = node.membership().me();
        let mut on: Vec<NodeId> = node
            .membership()
            .view()
            .1
            .iter()
            .copied()
            .filter(|n| {
                *n != me
                    && node
                        .membership()
                        .claims_of(*n)
                        .is_some_and(|c| c & (1 << i) != 0)
            })
            .collect();
        if node.service(i).phase().holds() {
            on.push(me);
        }
        on.sort();
        on.iter()
            .map(|n| crate::cluster::changes::name_of(&self.io.names, *n))
            .collect()
    }

    /// Where a reload stands, in words (`None`: nothing staged, and every
    /// member runs this node's config).
    fn reload_progress(&self) -> Option<String> {
        let node = self.driver.node();
        let names = |ids: &[NodeId]| {
            ids.iter()
                .map(|n| crate::cluster::changes::name_of(&self.io.names, *n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(staged) = node.staged() else {
            let others = node.members_on_other_configs();
            return (!others.is_empty()).then(|| {
                format!(
                    "this node runs config {:016x}; waiting for {} to switch to it (nothing starts until then)",
                    node.config(),
                    names(&others)
                )
            });
        };
        let waits = node.switch_waits_for().unwrap_or_default();
        Some(if waits.is_empty() {
            format!(
                "config {:016x} is staged on every member: switching (what the change retires stops first)",
                staged.config
            )
        } else {
            format!(
                "config {:016x} is staged here; the cluster switches once every member has staged it (waiting for {}: deploy the same file there and run baton reload, or systemctl reload baton)",
                staged.config,
                names(&waits)
            )
        })
    }

    /// The node switched to the staged config: from now on it is the
    /// running one; what the daemon keeps per service follows the services.
    fn adopt_switch(&mut self, continues: &[Option<usize>]) {
        let Some(cluster) = self.staged.take() else {
            return;
        };
        self.movers = std::mem::take(&mut self.movers)
            .into_iter()
            .filter_map(|(o, who)| {
                continues
                    .iter()
                    .position(|c| *c == Some(o))
                    .map(|i| (i, who))
            })
            .collect();
        self.decisions
            .set_services(cluster.services.iter().map(|s| s.name.clone()).collect());
        if let Some(m) = &self.metrics {
            let gone: Vec<String> = self
                .cluster
                .services
                .iter()
                .filter(|old| !cluster.services.iter().any(|s| s.name == old.name))
                .map(|s| s.name.clone())
                .collect();
            let nodes: Vec<String> = self.io.names.values().cloned().collect();
            m.reloaded(continues, &gone, &nodes);
        }
        self.cluster = cluster;
        self.local_changes += 1;
    }

    /// This node's status now.
    /// Standby and maintenance travel in reports from wire version 7: while a
    /// member speaks an older one (an upgrade under way), they would hold on
    /// some nodes and not others, so they are refused, saying what to do.
    fn needs_every_node_current(&self, req: &ControlRequest) -> Option<String> {
        if !matches!(
            req,
            ControlRequest::Standby { .. } | ControlRequest::Maintenance { .. }
        ) {
            return None;
        }
        let wire = self.wire_status();
        let old: Vec<String> = wire
            .peers
            .iter()
            .filter(|(_, v)| **v < 7)
            .map(|(n, v)| format!("{n} ({v})"))
            .collect();
        (wire.cluster < 7).then(|| {
            format!(
                "the cluster speaks wire version {} ({} of an older release): standby and maintenance would not reach every node; finish the upgrade first, or stop a node cleanly (SIGTERM, systemctl stop baton: its services move)",
                wire.cluster,
                if old.is_empty() { "this node is held at an older version".to_string() } else { old.join(", ") }
            )
        })
    }

    /// Which wire versions this node and its members speak now.
    fn wire_status(&self) -> crate::node::versions::WireStatus {
        let node = self.driver.node();
        self.io.wire.status(
            node.membership().me(),
            node.membership().view().1,
            &self.io.names,
            self.io.now(),
        )
    }

    fn status(&self) -> Status {
        let now = self.io.now();
        let mut st = crate::node::status::status(
            self.driver.node(),
            &self.node_name,
            &self.io.names,
            &self.cluster,
            now,
            |i| crate::node::status::Local {
                states: &self.io.states[i],
                last_failure: self.driver.last_failure(i),
                mover: self.movers.get(&i).map(String::as_str),
            },
        );
        st.witness_problem = self.driver.witness_problem(now);
        st.reload = self.reload_progress();
        if let Some(slot) = &self.tls {
            let (file, not_after) = slot.expiry();
            let unix_now = (crate::node::history::unix_ms() / 1000) as i64;
            st.tls = Some(crate::node::status::TlsStatus {
                cert_file: file.display().to_string(),
                not_after,
                warning: crate::node::tls::expiry_warning(&file, not_after, unix_now),
            });
        }
        st.wire = self.wire_status();
        st.health = self
            .io
            .health
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).status());
        st.dropped = self
            .dropped
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        st.dropped_last_ms = self
            .dropped_last
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        st
    }

    /// After each turn: record what the driver decided, set the metrics' gauges,
    /// rewrite the status file when due.
    fn after_turn(&mut self) {
        if let Some(continues) = self.io.switched.take() {
            self.adopt_switch(&continues);
        }
        for change in self.driver.take_events() {
            self.decisions
                .record(change.kind, change.service, change.text);
        }
        let admin = self.driver.node().admin();
        if admin != self.settings.1 {
            match crate::node::settings::save(&self.settings.0, &admin) {
                Ok(()) => self.settings.1 = admin,
                Err(e) => {
                    tracing::error!(
                        "cannot save the operators' settings in {}: {e}; they hold until this daemon stops",
                        self.settings.0.display()
                    );
                    self.settings.1 = admin;
                }
            }
        }
        let now = self.io.now();
        if let Some(m) = self.metrics.as_ref().filter(|_| now >= self.next_metrics) {
            // Scrapers read every few seconds: the gauges follow the state
            // machine twice a second, not at every heartbeat.
            self.next_metrics = now + METRICS_EVERY_MS;
            m.observe(self.driver.node(), &self.io.names, now);
            m.dropped(&self.dropped);
            if let Some(slot) = &self.tls {
                let (file, not_after) = slot.expiry();
                m.certificate_expiry(&file, not_after);
            }
        }
        self.write_status_file(now);
        let node = self.driver.node();
        self.systemd.turn(node.quorate(), || {
            crate::node::status::summary(node, &self.io.names)
        });
    }

    /// Status is for people and scripts: at most every STATUS_EVERY_MS, and at
    /// once when quorum or health changes (a fence may end this node a moment
    /// later). While nothing in it changes, every STATUS_STEADY_MS.
    fn write_status_file(&mut self, now: u64) {
        let Some(file) = self.status_file.as_ref() else {
            return;
        };
        let node = self.driver.node();
        let shown = (node.quorate(), self.io.health().0);
        let key = Some(status_key(node, now, self.local_changes));
        let due = if key != file.key {
            file.next.saturating_sub(STATUS_STEADY_MS - STATUS_EVERY_MS)
        } else {
            file.next
        };
        if shown == file.shown && now < due {
            return;
        }
        let status = self.status();
        let file = self.status_file.as_mut().expect("checked above");
        file.shown = shown;
        file.key = key;
        file.next = now + STATUS_STEADY_MS;
        if let Ok(json) = serde_json::to_vec_pretty(&status) {
            let _ = write_atomic(&file.path, &json);
        }
    }

    /// A clean stop is over: disarm the watchdog and leave.
    fn finish(mut self, exit: Exit) -> anyhow::Result<()> {
        if let Some(dog) = self.io.watchdog.as_mut() {
            dog.disarm();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        match exit {
            Exit::Clean => Ok(()),
            Exit::StopFailed => anyhow::bail!(
                "stopped with a service whose stop failed: it may still run here; the other nodes fence this node"
            ),
        }
    }
}

/// Everything in the status file but its timers (ages, time left), so a change
/// is written within STATUS_EVERY_MS: phases, placements and their reasons, the
/// view, quorum, links, fencing, failure counts, moves, and the resources'
/// states (counted by `local_changes`).
fn status_key(node: &crate::cluster::node::ClusterNode, now: u64, local_changes: u64) -> String {
    let quorum = node
        .quorum()
        .map(|q| (q.quorate, q.witness_held, q.reason.clone()));
    let links: Vec<bool> = node.membership().links().values().map(|s| s.up).collect();
    let fence = node.fence_state(now);
    let waiting: Vec<NodeId> = fence.waiting.iter().map(|(n, _)| *n).collect();
    let moves: Vec<(usize, NodeId)> = node
        .active_moves(now)
        .iter()
        .map(|m| (m.service, m.to))
        .collect();
    let services: Vec<String> = node
        .services()
        .iter()
        .map(|s| {
            format!(
                "{:?}{:?}{:?}{:?}",
                s.phase(),
                s.role(),
                s.placement(),
                s.promotion()
            )
        })
        .collect();
    format!(
        "{services:?}{:?}{quorum:?}{links:?}{:?}{:?}{waiting:?}{:?}{moves:?}{local_changes}",
        node.membership().view(),
        fence.confirmed,
        fence.running,
        node.failure_counts(now),
    )
}

/// The index of the service named `name`, or why there is none.
pub(crate) fn service_index(cluster: &ClusterConfig, name: &str) -> Result<usize, String> {
    cluster
        .services
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            format!(
                "no service is named {name:?} (services: {})",
                cluster
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
