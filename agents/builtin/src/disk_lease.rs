//! `disk-lease`: exclusive access to a shared disk, by a delta lease in one
//! block of it (see `lease.rs`). Put it first in a service whose data lives on
//! the disk: the filesystem mounts only once this node holds the lease, so two
//! nodes never write the disk at once even when the cluster's own view is
//! wrong.
//!
//! start: take the lease (wait for a free one, or watch a held one unchanged for
//! its lease time, unless the cluster confirmed its holder fenced; give up at
//! the deadline), then renew it from a thread of
//! this process every quarter of the lease time. stop: stop renewing and mark
//! the lease released (so the next node need not wait). monitor: `running` while
//! renewals succeed; an error once one has not succeeded for half the lease time
//! or the lease was taken (the service must stop before another node's watch
//! ends); `not-running` when this process does not hold it.
//!
//! The lease lives in the process that took it: in the daemon, for the life of
//! the service. A one-shot `baton agent run disk-lease start` holds it until
//! that command exits, after which it expires.

use crate::lease::{Block, LeaseArea, Record};
use crate::reading::{required, text, whole};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

inventory::submit! {
    crate::BuiltinAgent { name: "disk-lease", build: || Box::new(DiskLeaseAgent::default()) }
}

/// The record name of a resource's lease (the witness's is `witness`).
const LEASE_NAME: &str = "lease";

/// The `disk-lease` agent.
#[derive(Default)]
pub struct DiskLeaseAgent {
    held: Mutex<HashMap<String, Arc<Holding>>>,
}

/// A lease this process holds and renews.
struct Holding {
    area: LeaseArea,
    record: Mutex<Record>,
    /// Monotonic ms (see [`mono_ms`]) of the last successful renewal.
    renewed_ms: AtomicU64,
    stop: AtomicBool,
    /// Why the lease is lost, once it is.
    lost: Mutex<Option<String>>,
}

/// Milliseconds on this process's monotonic clock.
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The checked parameters.
struct Settings {
    device: String,
    offset: u64,
    cluster: String,
    lease: Duration,
}

impl DiskLeaseAgent {
    fn settings(&self, req: &Request) -> Result<Settings, AgentError> {
        let meta = self.metadata();
        let device = required(&meta, req, "device")?.to_owned();
        let offset = match text(&meta, req, "offset") {
            Some(_) => whole(&meta, req, "offset", None)?,
            None => whole(&meta, req, "slot", Some(1 << 40))? * crate::lease::BLOCK as u64,
        };
        if !offset.is_multiple_of(crate::lease::BLOCK as u64) {
            return Err(AgentError::misconfigured(format!(
                "offset: {offset} is not a multiple of 4096; use slot = N for the N-th 4 KiB block"
            )));
        }
        let cluster = required(&meta, req, "cluster")?.to_owned();
        if !Record::fits(&cluster) || !Record::fits(&req.context.node) {
            return Err(AgentError::misconfigured(
                "cluster and node names in a lease are at most 64 bytes".to_string(),
            ));
        }
        let lease_ms = whole(&meta, req, "lease_ms", None)?;
        if lease_ms < 400 {
            return Err(AgentError::misconfigured(format!(
                "lease_ms: {lease_ms} is too short; at least 400 (renewals every quarter of it must reach the disk)"
            )));
        }
        Ok(Settings {
            device,
            offset,
            cluster,
            lease: Duration::from_millis(lease_ms),
        })
    }

    fn key(req: &Request) -> String {
        format!("{}/{}", req.context.node, req.context.resource)
    }

    fn open(s: &Settings) -> Result<LeaseArea, AgentError> {
        LeaseArea::open(Path::new(&s.device), s.offset).map_err(|e| {
            if e.contains("No such file") || e.contains("not a block device") {
                AgentError::invalid_args(e)
            } else if e.contains("ermission") {
                AgentError::permission(e)
            } else {
                AgentError::generic(e)
            }
        })
    }

    /// Take the lease for `node`, or fail at `deadline`.
    fn acquire(
        area: &LeaseArea,
        s: &Settings,
        node: &str,
        fenced: &[String],
        deadline: Instant,
    ) -> Result<Record, AgentError> {
        let io = |e: std::io::Error| AgentError::generic(format!("lease on {}: {e}", area.device));
        let mut seen = area.read().map_err(io)?;
        let mut unchanged_since = Instant::now();
        let base = loop {
            match &seen {
                Block::Foreign => {
                    return Err(AgentError::misconfigured(format!(
                        "{} at offset {} holds data that is not a baton lease; wrong device or slot? (not overwriting it)",
                        area.device, s.offset
                    )));
                }
                Block::Lease(r) if r.cluster != s.cluster => {
                    return Err(AgentError::misconfigured(format!(
                        "{} at offset {} holds a lease of cluster {:?}, not {:?}; give this cluster its own slot",
                        area.device, s.offset, r.cluster, s.cluster
                    )));
                }
                Block::Lease(r) if r.name != LEASE_NAME => {
                    return Err(AgentError::misconfigured(format!(
                        "{} at offset {} holds the cluster's {}, not a resource's lease; give this resource another slot",
                        area.device, s.offset, r.name
                    )));
                }
                Block::Empty => break None,
                Block::Lease(r) if r.released => break Some(r.clone()),
                // Its holder is off (a confirmed fence): it renews no more.
                Block::Lease(r) if fenced.contains(&r.owner) => {
                    eprintln!(
                        "disk-lease: the lease on {} is held by node {}, which the cluster fenced: taking it without waiting out its lease",
                        area.device, r.owner
                    );
                    break Some(r.clone());
                }
                // A held record is watched for its holder's lease time; one damaged
                // for good (nobody who renews would leave it so) for our own.
                Block::Damaged(_) | Block::Lease(_) => {
                    let (owner, lease_ms, base) = match &seen {
                        Block::Lease(r) => (r.owner.clone(), r.lease_ms, Some(r.clone())),
                        _ => (
                            "unknown (damaged record)".to_string(),
                            s.lease.as_millis() as u64,
                            None,
                        ),
                    };
                    let watch = Duration::from_millis(lease_ms);
                    if unchanged_since.elapsed() >= watch {
                        break base;
                    }
                    if Instant::now() + Duration::from_millis(50) >= deadline {
                        return Err(AgentError::generic(format!(
                            "the lease on {} is held by node {owner} and still renewed (watched {} ms of its {lease_ms} ms lease)",
                            area.device,
                            unchanged_since.elapsed().as_millis(),
                        )));
                    }
                    std::thread::sleep((watch / 8).min(deadline - Instant::now()));
                    let now = area.read().map_err(io)?;
                    if now != seen {
                        unchanged_since = Instant::now();
                        seen = now;
                    }
                }
            }
        };
        let mine = Record {
            cluster: s.cluster.clone(),
            name: LEASE_NAME.into(),
            owner: node.to_owned(),
            token: crate::lease::random_token(),
            counter: base.map_or(1, |r| r.counter + 1),
            released: false,
            lease_ms: s.lease.as_millis() as u64,
        };
        area.write(&mine).map_err(io)?;
        // Any node that read the lease free before our write writes its own claim
        // well within this; whoever wrote last wins, and everyone else sees it.
        std::thread::sleep(s.lease / 8);
        match area.read().map_err(io)? {
            Block::Lease(r) if r == mine => Ok(mine),
            Block::Lease(r) => Err(AgentError::generic(format!(
                "node {} took the lease on {} at the same moment; it holds it",
                r.owner, area.device
            ))),
            other => Err(AgentError::generic(format!(
                "the lease on {} changed under us to {other:?}",
                area.device
            ))),
        }
    }

    fn renew_forever(h: Arc<Holding>, every: Duration) {
        std::thread::spawn(move || {
            while !h.stop.load(Ordering::SeqCst) {
                std::thread::sleep(every);
                if h.stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut rec = h.record.lock().unwrap_or_else(|e| e.into_inner());
                match h.area.read() {
                    Ok(Block::Lease(r)) if r == *rec => {}
                    // Still damaged after re-reads: rewrite our record over it; a
                    // taker would have written a whole record of its own.
                    Ok(Block::Damaged(_)) => warn(&format!(
                        "lease on {}: damaged record read; rewriting ours",
                        h.area.device
                    )),
                    Ok(other) => {
                        let who = match other {
                            Block::Lease(r) => format!("node {}", r.owner),
                            _ => "something else".to_string(),
                        };
                        *h.lost.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("the lease on {} was taken by {who}", h.area.device));
                        return;
                    }
                    Err(e) => {
                        warn(&format!("lease on {}: {e}", h.area.device));
                        continue;
                    }
                }
                let next = Record {
                    counter: rec.counter + 1,
                    ..rec.clone()
                };
                match h.area.write(&next) {
                    Ok(()) => {
                        *rec = next;
                        h.renewed_ms.store(mono_ms(), Ordering::SeqCst);
                    }
                    Err(e) => warn(&format!("renewing {}: {e}", h.area.device)),
                }
            }
        });
    }
}

/// Built-in agents log to stderr, which ends up in the daemon's log.
fn warn(message: &str) {
    eprintln!("disk-lease: {message}");
}

impl ResourceAgent for DiskLeaseAgent {
    fn metadata(&self) -> Metadata {
        let p = ParamSpec::new;
        Metadata {
            name: "disk-lease".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Exclusive access to a shared disk by a lease in one of its blocks".into(),
            longdesc: "A delta lease (as sanlock's) in one 4 KiB block of a shared block device, \
                       written with O_DIRECT and O_DSYNC. A node takes a held lease only after \
                       watching it unchanged for its lease time on its own monotonic clock, so \
                       no clock synchronisation is needed; the holder renews it every quarter \
                       of the lease time; monitor fails once renewals stop for half of it. \
                       Records name the cluster and the node; another cluster's lease, or a \
                       block that is not a lease, is never overwritten."
                .into(),
            parameters: vec![
                p(
                    "device",
                    ParamType::String,
                    true,
                    None,
                    "The shared block device (a disk or partition every node sees)",
                ),
                p(
                    "slot",
                    ParamType::Integer,
                    false,
                    Some("0"),
                    "Which 4 KiB block holds this lease (one slot per lease)",
                ),
                p(
                    "offset",
                    ParamType::Integer,
                    false,
                    None,
                    "Byte offset of the lease block instead of slot (a multiple of 4096)",
                ),
                p(
                    "cluster",
                    ParamType::String,
                    true,
                    None,
                    "The cluster's name (the [cluster] name): a lease of another cluster is refused",
                ),
                p(
                    "lease_ms",
                    ParamType::Integer,
                    false,
                    Some("4000"),
                    "Lease time: how long a lost holder blocks a takeover; longer than a monitor interval plus a stop",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 30_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 1_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        if req.depth > 0 {
            Self::open(&s)?;
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let deadline = Instant::now() + req.context.timeout().mul_f64(0.9);
        let s = self.settings(req)?;
        let key = Self::key(req);
        if let Some(h) = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && h.lost.lock().unwrap_or_else(|e| e.into_inner()).is_none()
        {
            return Ok(());
        }
        let area = Self::open(&s)?;
        let record = Self::acquire(&area, &s, &req.context.node, &req.context.fenced, deadline)?;
        let holding = Arc::new(Holding {
            area,
            record: Mutex::new(record),
            renewed_ms: AtomicU64::new(mono_ms()),
            stop: AtomicBool::new(false),
            lost: Mutex::new(None),
        });
        Self::renew_forever(Arc::clone(&holding), s.lease / 4);
        if let Some(old) = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, holding)
        {
            old.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let Some(h) = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Self::key(req))
        else {
            return Ok(());
        };
        h.stop.store(true, Ordering::SeqCst);
        let rec = h.record.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Release only a lease that is still ours: a taken one belongs to its taker.
        match h.area.read() {
            Ok(Block::Lease(r)) if r == rec => {
                let released = Record {
                    counter: rec.counter + 1,
                    released: true,
                    ..rec
                };
                h.area.write(&released).map_err(|e| {
                    AgentError::generic(format!(
                        "cannot release the lease on {}: {e} (it expires by itself)",
                        h.area.device
                    ))
                })
            }
            _ => Ok(()),
        }
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let s = self.settings(req)?;
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = held.get(&Self::key(req)) else {
            return Ok(MonitorState::NotRunning);
        };
        if let Some(why) = h.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(AgentError::generic(why));
        }
        let age = mono_ms().saturating_sub(h.renewed_ms.load(Ordering::SeqCst));
        if age > s.lease.as_millis() as u64 / 2 {
            return Err(AgentError::generic(format!(
                "the lease on {} was last renewed {age} ms ago (lease {} ms): the disk does not answer in time",
                h.area.device,
                s.lease.as_millis()
            )));
        }
        Ok(MonitorState::Running)
    }
}
