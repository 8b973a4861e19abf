//! The witness lease on real storage, off the daemon's loop. Storage can stall
//! (a network filesystem, a SAN path failover, a frozen disk); the loop must
//! keep heartbeating, answering status and fencing through any of it. A
//! worker thread runs the lease logic (`cluster::witness::DeltaLease`, the
//! same the simulator runs) on a lease block — a block of a shared disk, or a
//! file — one operation at a time, and sends each answer back to the loop. The
//! node driver counts an answer only while it is fresh, so an operation that
//! does not finish in time is "witness not held", never a stall.

use crate::cluster::driver::WitnessAnswer;
use crate::cluster::membership::Millis;
use crate::cluster::wire::NodeId;
use crate::cluster::witness::{DeltaLease, LeaseOp, LeaseRecord, Outcome, Slot, Step};
use baton_agents::lease::{Block, LeaseArea, Record, decode};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What every witness record's name field holds: one slot never serves two
/// purposes (a `disk-lease` resource's records say `lease`).
const WITNESS_NAME: &str = "witness";

/// Where the witness lease lives: one record to read and write.
pub trait LeaseBlock: Send + 'static {
    /// The record as it stands.
    fn read(&mut self) -> io::Result<Block>;
    /// Replace it, durably.
    fn write(&mut self, record: &Record) -> io::Result<()>;
    /// The storage, for messages.
    fn describe(&self) -> String;
}

/// The lease in one block of a shared disk (read and written with O_DIRECT).
pub struct DiskBlock {
    device: PathBuf,
    offset: u64,
    area: Option<LeaseArea>,
}

impl DiskBlock {
    /// Block `slot` of `device`.
    pub fn new(device: &Path, slot: u64) -> DiskBlock {
        DiskBlock {
            device: device.to_owned(),
            offset: slot * baton_agents::lease::BLOCK as u64,
            area: None,
        }
    }

    fn area(&mut self) -> io::Result<&LeaseArea> {
        if self.area.is_none() {
            self.area = Some(LeaseArea::open(&self.device, self.offset).map_err(io::Error::other)?);
        }
        Ok(self.area.as_ref().expect("opened above"))
    }
}

impl LeaseBlock for DiskBlock {
    fn read(&mut self) -> io::Result<Block> {
        self.area()?.read()
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.area()?.write(record)
    }

    fn describe(&self) -> String {
        format!(
            "{} slot {}",
            self.device.display(),
            self.offset / baton_agents::lease::BLOCK as u64
        )
    }
}

/// The lease in a file on shared storage: the same record, replaced whole
/// (write, fsync, rename) so a reader never sees half of one.
pub struct FileBlock {
    path: PathBuf,
}

impl FileBlock {
    /// The lease file at `path` (created on first write).
    pub fn new(path: &Path) -> FileBlock {
        FileBlock {
            path: path.to_owned(),
        }
    }
}

impl LeaseBlock for FileBlock {
    fn read(&mut self) -> io::Result<Block> {
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes.is_empty() => Ok(Block::Empty),
            Ok(bytes) => Ok(decode(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Block::Empty),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        // A temporary file of this process's own: nodes writing at once must
        // not rename (or open) each other's.
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(name);
        std::fs::write(&tmp, record.encode())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The block as the lease logic sees it: this cluster's witness record, or
/// what else is there.
fn slot(block: Block, cluster: &str, storage: &str) -> Slot {
    match block {
        Block::Empty => Slot::Empty,
        Block::Damaged(crc) => Slot::Damaged(u64::from(crc)),
        Block::Foreign => Slot::Foreign(format!(
            "witness {storage}: it holds data that is not a baton lease; give the witness a free slot (a block before the first partition) or an empty file"
        )),
        Block::Lease(r) if r.cluster != cluster || r.name != WITNESS_NAME => {
            Slot::Foreign(format!(
                "witness {storage}: it holds the {} of cluster {:?}, not this cluster's witness; give the witness its own slot",
                r.name, r.cluster
            ))
        }
        Block::Lease(r) => match r.owner.parse::<NodeId>() {
            Ok(owner) => Slot::Lease(LeaseRecord {
                owner,
                token: r.token,
                counter: r.counter,
                released: r.released,
            }),
            Err(_) => Slot::Damaged(r.token),
        },
    }
}

/// Carry out one lease operation on `block` with the lease logic `lease`: its
/// answer. `now` is the daemon loop's clock; `asked` when the loop asked.
pub fn operate(
    lease: &mut DeltaLease,
    block: &mut impl LeaseBlock,
    op: LeaseOp,
    asked: Millis,
    cluster: &str,
    lease_ms: u64,
    now: &impl Fn() -> Millis,
) -> Result<crate::cluster::witness::Sighting, String> {
    let storage = block.describe();
    let fail = |e: io::Error| format!("witness {storage}: {e}");
    let mut step = lease.begin(op, asked);
    loop {
        let outcome = match step {
            Step::Read => Outcome::Read(
                block
                    .read()
                    .map(|b| slot(b, cluster, &storage))
                    .map_err(fail),
            ),
            Step::Write(r) => Outcome::Wrote(
                block
                    .write(&Record {
                        cluster: cluster.to_string(),
                        name: WITNESS_NAME.into(),
                        owner: r.owner.to_string(),
                        token: r.token,
                        counter: r.counter,
                        released: r.released,
                        lease_ms,
                    })
                    .map_err(fail),
            ),
            Step::Wait(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Outcome::Waited
            }
            Step::Done(result) => return result,
        };
        step = lease.step(now(), outcome);
    }
}

/// The loop's side of the witness worker.
pub struct WitnessWorker {
    asks: mpsc::Sender<(LeaseOp, Millis)>,
}

impl WitnessWorker {
    /// Start the worker for node `me` of `cluster` on `block`, leases taken for
    /// `lease_ms`, times on the clock that started at `epoch` (the loop's).
    /// Each answer goes to `answer`.
    pub fn start(
        mut block: impl LeaseBlock,
        me: NodeId,
        cluster: &str,
        lease_ms: u64,
        epoch: Instant,
        answer: impl Fn(WitnessAnswer) + Send + 'static,
    ) -> WitnessWorker {
        let (asks, rx) = mpsc::channel::<(LeaseOp, Millis)>();
        let cluster = cluster.to_string();
        let seed = baton_agents::lease::random_token();
        std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || {
                let now = || epoch.elapsed().as_millis() as Millis;
                let mut lease = DeltaLease::new(me, lease_ms, seed);
                let mut last_error: Option<String> = None;
                while let Ok((op, asked)) = rx.recv() {
                    let result =
                        operate(&mut lease, &mut block, op, asked, &cluster, lease_ms, &now);
                    if let Err(e) = &result
                        && last_error.as_ref() != Some(e)
                    {
                        tracing::warn!("{e}");
                    }
                    last_error = result.as_ref().err().cloned();
                    answer(WitnessAnswer { asked, result });
                }
            })
            .expect("spawning the witness thread");
        WitnessWorker { asks }
    }

    /// Ask for an operation (the driver asks for one at a time).
    pub fn ask(&self, op: LeaseOp, asked: Millis) {
        let _ = self.asks.send((op, asked));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(me: NodeId) -> LeaseOp {
        LeaseOp::Lead {
            view: [me].into(),
            fenced: Vec::new(),
        }
    }

    /// Two workers on one lease file: the first takes it; the second, in
    /// another partition, does not while the first renews; a record another
    /// cluster wrote is never overwritten.
    #[test]
    fn a_lease_file_is_held_by_one_partition_and_another_clusters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        let epoch = Instant::now();
        let now = move || epoch.elapsed().as_millis() as Millis;
        let (mut a, mut b) = (DeltaLease::new(1, 400, 1), DeltaLease::new(2, 400, 2));
        let (mut fa, mut fb) = (FileBlock::new(&path), FileBlock::new(&path));
        let run =
            |l: &mut DeltaLease, f: &mut FileBlock, op| operate(l, f, op, now(), "prod", 400, &now);
        assert_eq!(run(&mut a, &mut fa, lead(1)).unwrap().holder, Some(1));
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(run(&mut a, &mut fa, lead(1)).unwrap().holder, Some(1));
            assert_ne!(run(&mut b, &mut fb, lead(2)).unwrap().holder, Some(2));
        }
        let other = Record {
            cluster: "test".into(),
            name: WITNESS_NAME.into(),
            owner: "1".into(),
            token: 5,
            counter: 1,
            released: false,
            lease_ms: 400,
        };
        fa.write(&other).unwrap();
        let e = run(&mut b, &mut fb, lead(2)).unwrap_err();
        assert!(
            e.contains("of cluster \"test\"") && e.contains("its own slot"),
            "{e}"
        );
        assert_eq!(fa.read().unwrap(), Block::Lease(other));
    }
}
