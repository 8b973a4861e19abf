//! The witness lease, off the daemon's loop. Storage can stall (a network
//! filesystem, a SAN path failover, a node frozen while it holds the lease lock);
//! the loop must keep heartbeating, answering status and fencing through any of
//! it. A worker thread owns the lease (a file, or a block of a shared disk) and
//! does one operation at a time; the loop asks without waiting and counts the
//! witness only while the latest answer is fresh. An operation that does not
//! finish in time is "witness not held", never a stall.

use crate::cluster::wire::NodeId;
use crate::cluster::witness::{FileWitness, Lease};
use baton_agents::lease::{Block, LeaseArea, Record};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Who holds the witness, as one operation saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The holder.
    pub holder: NodeId,
    /// Wall-clock expiry (ms since the epoch) when the storage keeps one (the
    /// file witness); checked whenever the answer is used.
    pub expires_ms: Option<u64>,
}

/// Where the witness lease lives.
pub trait WitnessStore: Send + 'static {
    /// Take or renew the lease for `me`, the leader of partition `view`; who
    /// holds it afterwards.
    fn lead(&mut self, me: NodeId, view: &BTreeSet<NodeId>) -> io::Result<Option<Sighting>>;
    /// Who holds it (for a member that does not lead).
    fn look(&mut self) -> io::Result<Option<Sighting>>;
    /// Let the lease go if `me` holds it (a leader alone in its partition that
    /// fails its health checks), so a healthy partition need not wait for it to
    /// expire; who holds it afterwards.
    fn release(&mut self, me: NodeId) -> io::Result<Option<Sighting>>;
    /// The storage, for messages.
    fn describe(&self) -> String;
}

/// The lease in a file (see `cluster/witness.rs`).
pub struct FileStore {
    witness: FileWitness,
    lease_ms: u64,
    unix_ms: fn() -> u64,
}

impl FileStore {
    /// The lease file at `path`, taken for `lease_ms`.
    pub fn new(path: &Path, lease_ms: u64, unix_ms: fn() -> u64) -> FileStore {
        FileStore {
            witness: FileWitness::new(path),
            lease_ms,
            unix_ms,
        }
    }
}

impl WitnessStore for FileStore {
    fn lead(&mut self, me: NodeId, view: &BTreeSet<NodeId>) -> io::Result<Option<Sighting>> {
        let lock_wait = Duration::from_millis(self.lease_ms / 2);
        let lease =
            self.witness
                .acquire_within(me, view, (self.unix_ms)(), self.lease_ms, lock_wait)?;
        let (Lease::Held(rec) | Lease::HeldByOther(rec)) = lease;
        Ok(Some(Sighting {
            holder: rec.holder,
            expires_ms: Some(rec.expires_ms),
        }))
    }

    fn look(&mut self) -> io::Result<Option<Sighting>> {
        Ok(self.witness.read()?.map(|rec| Sighting {
            holder: rec.holder,
            expires_ms: Some(rec.expires_ms),
        }))
    }

    fn release(&mut self, me: NodeId) -> io::Result<Option<Sighting>> {
        let lock_wait = Duration::from_millis(self.lease_ms / 2);
        let record = self
            .witness
            .release_within(me, (self.unix_ms)(), lock_wait)?;
        Ok(record.map(|rec| Sighting {
            holder: rec.holder,
            expires_ms: Some(rec.expires_ms),
        }))
    }

    fn describe(&self) -> String {
        self.witness.path().display().to_string()
    }
}

/// The lease in one block of a shared disk: the same delta lease as the
/// `disk-lease` agent, named `witness`, owned by the partition's leader (its
/// node id). The leader renews it every tick; it takes it at once when free or
/// left by a member of its own partition, and takes another partition's only
/// after watching it unchanged for its lease time on its own clock. A member
/// that does not lead counts the holder only while it sees the record change
/// (within a quarter lease), so a holder that stopped renewing stops counting
/// everywhere well before another partition may take the lease.
pub struct DiskStore {
    device: PathBuf,
    offset: u64,
    cluster: String,
    lease_ms: u64,
    area: Option<LeaseArea>,
    /// Our current holding's token.
    token: Option<u64>,
    /// The record last seen and since when (this clock) it has not changed.
    seen: Option<(Record, Instant)>,
}

const WITNESS_NAME: &str = "witness";

impl DiskStore {
    /// The lease block `slot` of `device` for `cluster`, taken for `lease_ms`.
    pub fn new(device: &Path, slot: u64, cluster: &str, lease_ms: u64) -> DiskStore {
        DiskStore {
            device: device.to_owned(),
            offset: slot * baton_agents::lease::BLOCK as u64,
            cluster: cluster.to_owned(),
            lease_ms,
            area: None,
            token: None,
            seen: None,
        }
    }

    fn area(&mut self) -> io::Result<&LeaseArea> {
        if self.area.is_none() {
            self.area = Some(LeaseArea::open(&self.device, self.offset).map_err(io::Error::other)?);
        }
        Ok(self.area.as_ref().expect("opened above"))
    }

    /// The current record, checked to be this cluster's witness; tracks since
    /// when it has not changed.
    fn read(&mut self) -> io::Result<Option<(Record, Duration)>> {
        let block = self.area()?.read()?;
        let record = match block {
            Block::Empty => None,
            Block::Foreign => {
                return Err(io::Error::other(format!(
                    "{} slot {} holds data that is not a baton lease; give the witness a free slot",
                    self.device.display(),
                    self.offset / baton_agents::lease::BLOCK as u64
                )));
            }
            Block::Lease(r) if r.cluster != self.cluster || r.name != WITNESS_NAME => {
                return Err(io::Error::other(format!(
                    "{} slot {} holds the {} of cluster {:?}, not this cluster's witness; give the witness its own slot",
                    self.device.display(),
                    self.offset / baton_agents::lease::BLOCK as u64,
                    r.name,
                    r.cluster
                )));
            }
            Block::Lease(r) => Some(r),
            // Damaged even after re-reads: held by nobody known; watched like a
            // held lease (its CRC tells one damaged block from another).
            Block::Damaged(crc) => Some(Record {
                cluster: self.cluster.clone(),
                name: WITNESS_NAME.into(),
                owner: String::new(),
                token: u64::from(crc),
                counter: 0,
                released: false,
                lease_ms: self.lease_ms,
            }),
        };
        let Some(record) = record else {
            self.seen = None;
            return Ok(None);
        };
        let since = match &self.seen {
            Some((old, since)) if *old == record => *since,
            _ => Instant::now(),
        };
        self.seen = Some((record.clone(), since));
        Ok(Some((record, since.elapsed())))
    }

    fn claim(&mut self, me: NodeId, counter: u64) -> io::Result<Option<Sighting>> {
        let mine = Record {
            cluster: self.cluster.clone(),
            name: WITNESS_NAME.into(),
            owner: me.to_string(),
            token: baton_agents::lease::random_token(),
            counter,
            released: false,
            lease_ms: self.lease_ms,
        };
        self.area()?.write(&mine)?;
        // A concurrent claimer's write lands within this; the last one wins.
        std::thread::sleep(Duration::from_millis(self.lease_ms / 8));
        match self.read()? {
            Some((r, _)) if r == mine => {
                self.token = Some(mine.token);
                Ok(Some(Sighting {
                    holder: me,
                    expires_ms: None,
                }))
            }
            other => {
                self.token = None;
                Ok(other.and_then(|(r, _)| sighting(&r)))
            }
        }
    }
}

fn sighting(r: &Record) -> Option<Sighting> {
    (!r.released).then_some(())?;
    Some(Sighting {
        holder: r.owner.parse().ok()?,
        expires_ms: None,
    })
}

impl WitnessStore for DiskStore {
    fn lead(&mut self, me: NodeId, view: &BTreeSet<NodeId>) -> io::Result<Option<Sighting>> {
        let Some((r, unchanged)) = self.read()? else {
            return self.claim(me, 1);
        };
        let owner: Option<NodeId> = r.owner.parse().ok();
        let ours = owner == Some(me) && self.token == Some(r.token);
        if ours {
            let next = Record {
                counter: r.counter + 1,
                ..r
            };
            self.area()?.write(&next)?;
            self.seen = Some((next, Instant::now()));
            return Ok(Some(Sighting {
                holder: me,
                expires_ms: None,
            }));
        }
        // Free: released, or left by a member of this partition. A record of a
        // node outside it (or of nobody known) must first stay unchanged a lease.
        let free = r.released || owner.is_some_and(|o| view.contains(&o));
        if free || unchanged >= Duration::from_millis(r.lease_ms) {
            return self.claim(me, r.counter + 1);
        }
        Ok(sighting(&r))
    }

    fn release(&mut self, me: NodeId) -> io::Result<Option<Sighting>> {
        if let Some((r, _)) = self.read()?
            && r.owner == me.to_string()
            && self.token == Some(r.token)
            && !r.released
        {
            self.area()?.write(&Record {
                released: true,
                ..r
            })?;
        }
        self.token = None;
        Ok(None)
    }

    fn look(&mut self) -> io::Result<Option<Sighting>> {
        self.token = None;
        Ok(match self.read()? {
            Some((r, unchanged)) if unchanged < Duration::from_millis(self.lease_ms / 4) => {
                sighting(&r)
            }
            _ => None,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} slot {}",
            self.device.display(),
            self.offset / baton_agents::lease::BLOCK as u64
        )
    }
}

/// What the loop asks of the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Only read it.
    Look,
    /// Take or renew it for `me`, leading partition `view`.
    Lead(NodeId, BTreeSet<NodeId>),
    /// Let it go if `me` holds it.
    Release(NodeId),
}

/// One lease operation.
struct Ask {
    op: Op,
    /// The loop's monotonic clock when it asked.
    asked_ms: u64,
}

struct Answer {
    asked_ms: u64,
    result: Result<Option<Sighting>, String>,
}

/// Carry out `ask` on `store`; when the lease a leader asks for is held by
/// another partition and expires within a quarter lease, wait for the expiry
/// and try again then, so a lost partition's lease passes on at once rather
/// than at the next heartbeat. The answer's time is when its operation began.
fn operate(
    store: &mut impl WitnessStore,
    ask: &Ask,
    lease_ms: u64,
    unix_ms: fn() -> u64,
) -> (u64, io::Result<Option<Sighting>>) {
    match &ask.op {
        Op::Look => (ask.asked_ms, store.look()),
        Op::Release(me) => (ask.asked_ms, store.release(*me)),
        Op::Lead(me, view) => {
            let started = Instant::now();
            let result = store.lead(*me, view);
            let expiry = match &result {
                Ok(Some(s)) if s.holder != *me => s.expires_ms,
                _ => None,
            };
            match expiry.map(|e| e.saturating_sub(unix_ms())) {
                Some(left) if left <= lease_ms / 4 => {
                    std::thread::sleep(Duration::from_millis(left + 1));
                    let began = ask.asked_ms + started.elapsed().as_millis() as u64;
                    (began, store.lead(*me, view))
                }
                _ => (ask.asked_ms, result),
            }
        }
    }
}

/// The loop's side of the witness worker.
pub struct WitnessWorker {
    asks: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
    in_flight: Option<u64>,
    /// The latest answer: when it was asked for, and who held the lease.
    latest: Option<(u64, Option<Sighting>)>,
    /// The latest failure, for status and logs.
    pub last_error: Option<String>,
    /// How long an answer counts (and how long one operation may take).
    fresh_ms: u64,
    unix_ms: fn() -> u64,
}

impl WitnessWorker {
    /// Start the worker for `store`. Leases are taken for `lease_ms`; an answer
    /// counts for half of that after it was asked for, which leaves the other
    /// half as margin before another partition may take a lease nobody renews.
    /// `answered` runs after each answer is sent (the daemon rings its loop's bell).
    pub fn start(
        mut store: impl WitnessStore,
        lease_ms: u64,
        unix_ms: fn() -> u64,
        answered: impl Fn() + Send + 'static,
    ) -> WitnessWorker {
        let (ask_tx, ask_rx) = mpsc::channel::<Ask>();
        let (answer_tx, answer_rx) = mpsc::channel::<Answer>();
        std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || {
                while let Ok(ask) = ask_rx.recv() {
                    let (asked_ms, result) = operate(&mut store, &ask, lease_ms, unix_ms);
                    let answer = Answer {
                        asked_ms,
                        result: result.map_err(|e| format!("witness {}: {e}", store.describe())),
                    };
                    if answer_tx.send(answer).is_err() {
                        return;
                    }
                    answered();
                }
            })
            .expect("spawning the witness thread");
        WitnessWorker {
            asks: ask_tx,
            answers: answer_rx,
            in_flight: None,
            latest: None,
            last_error: None,
            fresh_ms: lease_ms / 2,
            unix_ms,
        }
    }

    /// Ask for the next operation unless one is still running (a stalled storage
    /// gets one request, not a queue).
    pub fn ask(&mut self, now_ms: u64, op: Op) {
        self.collect();
        if self.in_flight.is_some() {
            return;
        }
        let ask = Ask {
            op,
            asked_ms: now_ms,
        };
        if self.asks.send(ask).is_ok() {
            self.in_flight = Some(now_ms);
        }
    }

    fn collect(&mut self) {
        while let Ok(a) = self.answers.try_recv() {
            self.in_flight = None;
            match a.result {
                Ok(rec) => {
                    self.latest = Some((a.asked_ms, rec));
                    self.last_error = None;
                }
                Err(e) => {
                    if self.last_error.as_ref() != Some(&e) {
                        tracing::warn!("{e}");
                    }
                    self.last_error = Some(e);
                    self.latest = None;
                }
            }
        }
    }

    /// Who holds a valid lease, by the latest answer that is still fresh at
    /// `now_ms` (`None` when the worker is stuck or failing).
    pub fn holder(&mut self, now_ms: u64) -> Option<NodeId> {
        self.collect();
        let asked = self.latest.as_ref().map(|(asked, _)| *asked);
        let stale = asked.is_none_or(|a| now_ms.saturating_sub(a) > self.fresh_ms);
        let waiting = self
            .in_flight
            .is_some_and(|f| asked.is_some() || now_ms.saturating_sub(f) > self.fresh_ms);
        if stale && waiting && self.last_error.is_none() {
            let e = format!(
                "the witness storage has not answered for more than {} ms; counting the witness as not held",
                self.fresh_ms
            );
            tracing::warn!("{e}");
            self.last_error = Some(e);
        }
        if stale {
            return None;
        }
        let sighting = self.latest.as_ref()?.1.as_ref()?;
        let unexpired = sighting.expires_ms.is_none_or(|e| (self.unix_ms)() < e);
        unexpired.then_some(sighting.holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    fn unix_ms() -> u64 {
        crate::daemon::unix_ms()
    }

    fn wait_holder(w: &mut WitnessWorker, started: Instant, want: Option<NodeId>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let now = started.elapsed().as_millis() as u64;
            w.ask(now, Op::Lead(1, [1, 2].into()));
            if w.holder(now) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_lock_held_from_outside_is_witness_not_held_and_never_a_stall() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        let started = Instant::now();
        let mut w = WitnessWorker::start(FileStore::new(&path, 400, unix_ms), 400, unix_ms, || {});
        assert!(wait_holder(&mut w, started, Some(1)), "never held");

        // Someone else takes the lock and keeps it: the calls keep returning (this
        // loop ends while the lock is still held), and the witness stops counting
        // once the last answer is stale.
        let lock = std::fs::File::create(path.with_extension("lock")).unwrap();
        // SAFETY: flock on a file we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = started.elapsed().as_millis() as u64;
            w.ask(now, Op::Lead(1, [1, 2].into()));
            if w.holder(now).is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "still counted as held");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(w.last_error.is_some());
        drop(lock);
        assert!(wait_holder(&mut w, started, Some(1)), "not held again");
        assert_eq!(w.last_error, None);
    }
}
