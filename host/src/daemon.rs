//! `baton run`: the node daemon. Thin I/O around [`ClusterNode`]: UDP sockets (one
//! per link), the clock, agent calls on worker threads, the witness lease, and a
//! status file. Every decision is made by the pure state machine.

use crate::agent_host::AgentHandle;
use crate::catalog::AgentCatalog;
use crate::cluster::config::{ClusterConfig, ServiceSection};
use crate::cluster::node::{ClusterNode, Command, Phase};
use crate::cluster::wire::{ClusterKey, Drop, NodeId, ReplayGuard, decode, encode};
use crate::cluster::witness::{FileWitness, Lease};
use crate::config::Config;
use anyhow::{Context, bail};
use baton_plugin_api::{Action, Request};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

/// How often the status file is rewritten, at most.
const STATUS_EVERY_MS: u64 = 100;

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A service's resources, loaded.
struct LoadedService {
    name: String,
    resources: Vec<(Arc<AgentHandle>, Request)>,
    /// How often to monitor the running service (the shortest resource interval; 0: never).
    monitor_every: u64,
}

enum Done {
    Started(usize, bool),
    Stopped(usize),
    /// A monitor round of a service: healthy or not.
    Monitored(usize, bool),
}

/// What `baton status` reads.
#[derive(Serialize)]
struct Status<'a> {
    node: &'a str,
    id: NodeId,
    epoch: u64,
    members: Vec<&'a str>,
    quorate: bool,
    quorum: String,
    witness_held: bool,
    links: Vec<LinkStatus<'a>>,
    services: Vec<ServiceStatus<'a>>,
    dropped: BTreeMap<&'static str, u64>,
    uptime_ms: u64,
}

#[derive(Serialize)]
struct LinkStatus<'a> {
    peer: &'a str,
    link: u8,
    up: bool,
    since_ms: u64,
}

#[derive(Serialize)]
struct ServiceStatus<'a> {
    name: &'a str,
    here: &'static str,
    owner: Option<&'a str>,
    why: String,
    /// Unexpired failures on this node.
    failures: usize,
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Stopped => "stopped",
        Phase::Claiming { .. } => "claiming",
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
    }
}

fn load_services(
    cluster: &ClusterConfig,
    catalog: &AgentCatalog,
    node: &str,
) -> anyhow::Result<Vec<LoadedService>> {
    let mut out = Vec::new();
    for (i, s) in cluster.services.iter().enumerate() {
        out.push(load_service(i, s, catalog, node)?);
    }
    Ok(out)
}

fn load_service(
    i: usize,
    s: &ServiceSection,
    catalog: &AgentCatalog,
    node: &str,
) -> anyhow::Result<LoadedService> {
    let mut resources = Vec::new();
    for (j, r) in s.resources.iter().enumerate() {
        let handle = catalog
            .load(&r.agent)
            .with_context(|| format!("service[{i}].resource[{j}].agent ({})", s.name))?;
        let params = ClusterConfig::params(r);
        if let Err(problems) = baton_plugin_api::check_params(handle.metadata(), &params) {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            bail!(
                "service[{i}].resource[{j}].params ({}): {}",
                s.name,
                text.join("; ")
            );
        }
        let mut req = Request::new(Action::Start, params);
        req.context.node = node.to_string();
        req.context.resource = format!("{}-{j}", s.name);
        req.context.timeout_ms = r
            .timeout_ms
            .or_else(|| {
                handle
                    .metadata()
                    .action(Action::Start)
                    .map(|a| a.timeout_ms)
            })
            .unwrap_or(20_000);
        resources.push((Arc::new(handle), req));
    }
    let monitor_every = s
        .resources
        .iter()
        .map(|r| r.monitor_ms)
        .filter(|m| *m > 0)
        .min()
        .unwrap_or(0);
    Ok(LoadedService {
        name: s.name.clone(),
        resources,
        monitor_every,
    })
}

fn call(handle: &AgentHandle, base: &Request, action: Action) -> bool {
    let mut req = base.clone();
    req.action = action;
    let report = handle.call(&req);
    match &report.result {
        Ok(_) => true,
        Err(f) => {
            tracing::error!(resource = %req.context.resource, action = %action, "{f}");
            false
        }
    }
}

fn start_service(svc: &LoadedService) -> bool {
    for (k, (handle, req)) in svc.resources.iter().enumerate() {
        if !call(handle, req, Action::Start) {
            for (h, r) in svc.resources[..k].iter().rev() {
                call(h, r, Action::Stop);
            }
            return false;
        }
    }
    tracing::info!(service = %svc.name, "started");
    true
}

/// Monitor every resource; healthy when each answers running, degraded or promoted.
fn monitor_service(svc: &LoadedService) -> bool {
    svc.resources.iter().all(|(h, base)| {
        let mut req = base.clone();
        req.action = Action::Monitor;
        let report = h.call(&req);
        match &report.result {
            Ok(baton_plugin_api::Outcome::State(s)) if s.is_active() && *s != baton_plugin_api::MonitorState::FailedPromoted => true,
            Ok(other) => {
                tracing::warn!(service = %svc.name, resource = %req.context.resource, "monitor: {other}; recovery {}", report.recovery);
                false
            }
            Err(f) => {
                tracing::warn!(service = %svc.name, resource = %req.context.resource, "monitor failed: {f}; recovery {}", report.recovery);
                false
            }
        }
    })
}

fn stop_service(svc: &LoadedService) {
    for (h, r) in svc.resources.iter().rev() {
        call(h, r, Action::Stop);
    }
    tracing::info!(service = %svc.name, "stopped");
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Run node `node_name` until SIGTERM/SIGINT; then stop its services and exit.
pub fn run(
    config: Config,
    node_name: &str,
    runner_exe: PathBuf,
    status_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cluster = config
        .cluster
        .clone()
        .context("the config has no [cluster] section; `baton run` needs nodes and services")?;
    let me = cluster
        .node(node_name)
        .with_context(|| {
            format!(
                "--node {node_name}: no [[node]] is named so (nodes: {})",
                cluster
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
        .clone();
    let key_bytes = std::fs::read(&cluster.cluster.key_file)
        .with_context(|| format!("cluster.key_file {}", cluster.cluster.key_file.display()))?;
    let key = ClusterKey::new(&cluster.cluster.name, &key_bytes).map_err(|e| {
        anyhow::anyhow!(
            "cluster.key_file {}: {e}",
            cluster.cluster.key_file.display()
        )
    })?;
    let mut sockets = Vec::new();
    for (i, addr) in cluster.addresses[&me.id].iter().enumerate() {
        let s = UdpSocket::bind(addr)
            .with_context(|| format!("node {node_name} link {i}: cannot bind {addr}"))?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    let mut agent_config = config.clone();
    agent_config.agents.node = Some(node_name.to_string());
    let catalog = AgentCatalog::new(agent_config, runner_exe);
    let services: Arc<Vec<LoadedService>> = Arc::new(load_services(&cluster, &catalog, node_name)?);
    let spec = cluster.spec();
    let names: BTreeMap<NodeId, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let peers: Vec<(NodeId, Vec<SocketAddr>)> = cluster
        .addresses
        .iter()
        .filter(|(id, _)| **id != me.id)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let witness = cluster
        .cluster
        .witness
        .as_ref()
        .map(|w| FileWitness::new(&w.file));
    let lease_ms = (spec.bounds.membership.link_timeout * 2).as_millis() as u64;

    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let incarnation = unix_ms();
    let mut node = ClusterNode::new(&spec, me.id, incarnation, 0);
    let mut guard = ReplayGuard::default();
    let mut dropped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let interval = spec.bounds.membership.interval.as_millis() as u64;
    let mut next_tick = 0u64;
    let mut next_status = 0u64;
    let mut next_monitor = vec![0u64; services.len()];
    let mut monitoring = vec![false; services.len()];
    let mut buf = [0u8; 65536];
    tracing::info!(
        node = node_name,
        id = me.id,
        incarnation,
        "baton node running"
    );
    let run_command = |c: Command, tx: &mpsc::Sender<Done>| {
        let services = Arc::clone(&services);
        let tx = tx.clone();
        std::thread::spawn(move || match c {
            Command::Start(i) => {
                let ok = start_service(&services[i]);
                let _ = tx.send(Done::Started(i, ok));
            }
            Command::Stop(i) => {
                stop_service(&services[i]);
                let _ = tx.send(Done::Stopped(i));
            }
        });
    };
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        // Packets.
        for s in &sockets {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        match decode(&key, &buf[..n]).and_then(|hb| guard.admit(&hb).map(|()| hb)) {
                            Ok(hb) => node.on_heartbeat(now_ms(), &hb),
                            Err(d) => *dropped.entry(Drop::name(d)).or_default() += 1,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        // Agent completions.
        while let Ok(d) = done_rx.try_recv() {
            let now = now_ms();
            let commands = match d {
                Done::Started(i, ok) => {
                    next_monitor[i] = now + services[i].monitor_every;
                    node.start_done(i, ok, now)
                }
                Done::Stopped(i) => node.stop_done(i),
                Done::Monitored(i, ok) => {
                    monitoring[i] = false;
                    next_monitor[i] = now + services[i].monitor_every;
                    if !ok && node.phases()[i] == Phase::Running {
                        tracing::warn!(service = %services[i].name, "service failed here");
                        node.service_failed(i, now)
                    } else {
                        Vec::new()
                    }
                }
            };
            for c in commands {
                run_command(c, &done_tx);
            }
        }
        // Recurring monitors of services running here, one round at a time per service.
        let now = now_ms();
        for (i, svc) in services.iter().enumerate() {
            if svc.monitor_every > 0
                && node.phases()[i] == Phase::Running
                && !monitoring[i]
                && now >= next_monitor[i]
            {
                monitoring[i] = true;
                let services = Arc::clone(&services);
                let tx = done_tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(Done::Monitored(i, monitor_service(&services[i])));
                });
            }
        }
        let now = now_ms();
        if now >= next_tick {
            next_tick = now + interval;
            if let Some(w) = &witness {
                // The partition's leader takes or renews the lease; the others read it.
                let view = node.membership().view().1.clone();
                let lease = if view.iter().next() == Some(&me.id) {
                    w.acquire(me.id, &view, unix_ms(), lease_ms)
                        .ok()
                        .map(|l| match l {
                            Lease::Held(rec) | Lease::HeldByOther(rec) => rec,
                        })
                } else {
                    w.read()
                        .ok()
                        .flatten()
                        .filter(|rec| unix_ms() < rec.expires_ms)
                };
                node.set_witness_holder(lease.map(|rec| rec.holder));
            }
            let (packets, commands) = node.tick(now);
            for hb in packets {
                let bytes = encode(&key, &hb);
                let link = usize::from(hb.link);
                for (_, addrs) in &peers {
                    if let (Some(sock), Some(to)) = (sockets.get(link), addrs.get(link)) {
                        let _ = sock.send_to(&bytes, to);
                    }
                }
            }
            for c in commands {
                run_command(c, &done_tx);
            }
            // Status is for people and scripts: at most every STATUS_EVERY_MS, not every
            // heartbeat (50 a second on the fast profile).
            if let Some(path) = status_file.as_ref().filter(|_| now >= next_status) {
                next_status = now + STATUS_EVERY_MS;
                let status = status(&node, node_name, &names, &cluster, &dropped, now);
                if let Ok(json) = serde_json::to_vec_pretty(&status) {
                    let _ = write_atomic(path, &json);
                }
            }
        }
        // Sleep until a packet arrives or the next tick is due.
        let wait = next_tick.saturating_sub(now_ms()).clamp(1, 5) as i32;
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds for sockets we own.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait);
        }
    }
    tracing::info!("stopping: stopping every service held here");
    for (i, p) in node.phases().iter().enumerate() {
        if p.holds() {
            stop_service(&services[i]);
        }
    }
    Ok(())
}

fn status<'a>(
    node: &ClusterNode,
    name: &'a str,
    names: &'a BTreeMap<NodeId, String>,
    cluster: &'a ClusterConfig,
    dropped: &BTreeMap<&'static str, u64>,
    now: u64,
) -> Status<'a> {
    let (epoch, view) = node.membership().view();
    let n = |id: &NodeId| names.get(id).map(String::as_str).unwrap_or("?");
    let quorum = node.quorum();
    Status {
        node: name,
        id: node.membership().me(),
        epoch,
        members: view.iter().map(n).collect(),
        quorate: quorum.is_some_and(|q| q.quorate),
        quorum: quorum.map(|q| q.reason.clone()).unwrap_or_default(),
        witness_held: quorum.is_some_and(|q| q.witness_held),
        links: node
            .membership()
            .links()
            .iter()
            .map(|((peer, link), s)| LinkStatus {
                peer: n(peer),
                link: *link,
                up: s.up,
                since_ms: s.since,
            })
            .collect(),
        services: cluster
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ServiceStatus {
                name: &s.name,
                here: phase_name(node.phases()[i]),
                owner: node.placements()[i].owner.as_ref().map(n),
                why: node.placements()[i].why.clone(),
                failures: node.failure_counts(now)[i],
            })
            .collect(),
        dropped: dropped.clone(),
        uptime_ms: now,
    }
}
