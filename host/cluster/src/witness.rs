//! The witness: a lease in a file on storage every node can reach (a shared disk or
//! a network filesystem in production; a file on this machine in the lab). At most
//! one partition holds it at a time, and holding it adds the witness's votes.
//!
//! The lease record names the holder (the partition's leader), the partition and an
//! expiry. Under an exclusive lock on `FILE.lock`, a node takes or renews the lease
//! when it is free, expired, or held by its own partition; otherwise it learns who
//! holds it. The record is replaced atomically (write + rename), so a crash mid-write
//! never leaves a half record.
//!
//! Safety contract for the caller: a partition that cannot renew must count the
//! witness only until its own
//! (monotonic) deadline, `duration − skew_margin` after its last renewal, so it stops
//! counting before any other partition can take the lease at `expires`, as long as
//! the nodes' wall clocks differ by less than the margin.

use super::wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the lease file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The node that took or last renewed it.
    pub holder: NodeId,
    /// The holder's partition at that time.
    pub partition: BTreeSet<NodeId>,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Incremented at every change of holder.
    pub generation: u64,
}

/// The outcome of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    /// This partition holds the lease until `expires_ms`.
    Held(LeaseRecord),
    /// Another partition holds it.
    HeldByOther(LeaseRecord),
}

/// A witness lease in a file.
pub struct FileWitness {
    path: PathBuf,
}

struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl FileWitness {
    /// The lease at `path` (created on first use).
    pub fn new(path: &Path) -> FileWitness {
        FileWitness {
            path: path.to_owned(),
        }
    }

    /// The lease file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The exclusive lock on `FILE.lock`, or an error once `wait` has passed (a
    /// holder frozen inside its update keeps the lock; a dead one releases it).
    fn lock(&self, wait: Duration) -> io::Result<Locked> {
        let lock_path = self.path.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own; never blocks (LOCK_NB).
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Locked(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} stayed locked by another node for {wait:?}",
                        lock_path.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The current record, if any (a damaged file reads as none).
    pub fn read(&self) -> io::Result<Option<LeaseRecord>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Take or renew the lease for `me`, leader of partition `view`, at wall time
    /// `now_ms`, for `duration_ms`.
    pub fn acquire(
        &self,
        me: NodeId,
        view: &BTreeSet<NodeId>,
        now_ms: u64,
        duration_ms: u64,
    ) -> io::Result<Lease> {
        self.acquire_within(me, view, now_ms, duration_ms, Duration::from_secs(10))
    }

    /// [`FileWitness::acquire`], giving up when the lock is not ours within
    /// `lock_wait`.
    pub fn acquire_within(
        &self,
        me: NodeId,
        view: &BTreeSet<NodeId>,
        now_ms: u64,
        duration_ms: u64,
        lock_wait: Duration,
    ) -> io::Result<Lease> {
        let _lock = self.lock(lock_wait)?;
        let current = self.read()?;
        if let Some(rec) = &current
            && now_ms < rec.expires_ms
            && !view.contains(&rec.holder)
        {
            return Ok(Lease::HeldByOther(rec.clone()));
        }
        let generation = match &current {
            Some(rec) if view.contains(&rec.holder) => rec.generation,
            Some(rec) => rec.generation + 1,
            None => 1,
        };
        let record = LeaseRecord {
            holder: me,
            partition: view.clone(),
            expires_ms: now_ms + duration_ms,
            generation,
        };
        self.write(&record)?;
        Ok(Lease::Held(record))
    }

    /// Let the lease go at wall time `now_ms` if `me` holds it (it expires at
    /// once, so another partition may take it without waiting); the record as
    /// it stands afterwards. Only for a leader alone in its partition: a member
    /// reading the lease could still count an expiry it read before.
    pub fn release_within(
        &self,
        me: NodeId,
        now_ms: u64,
        lock_wait: Duration,
    ) -> io::Result<Option<LeaseRecord>> {
        let _lock = self.lock(lock_wait)?;
        let Some(mut record) = self.read()? else {
            return Ok(None);
        };
        if record.holder == me && now_ms < record.expires_ms {
            record.expires_ms = now_ms;
            self.write(&record)?;
        }
        Ok(Some(record))
    }

    /// Replace the record atomically (write, fsync, rename).
    fn write(&self, record: &LeaseRecord) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(record).map_err(io::Error::other)?)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    #[test]
    fn one_partition_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWitness::new(&dir.path().join("witness"));
        assert!(matches!(
            w.acquire(1, &set(&[1, 2]), 1000, 500).unwrap(),
            Lease::Held(_)
        ));
        // The other side of a split cannot take it before it expires...
        match w.acquire(3, &set(&[3, 4]), 1400, 500).unwrap() {
            Lease::HeldByOther(rec) => assert_eq!((rec.holder, rec.expires_ms), (1, 1500)),
            other => panic!("{other:?}"),
        }
        // ...the holder's partition renews it (any member may)...
        assert!(matches!(
            w.acquire(2, &set(&[1, 2]), 1450, 500).unwrap(),
            Lease::Held(_)
        ));
        assert!(matches!(
            w.acquire(3, &set(&[3, 4]), 1900, 500).unwrap(),
            Lease::HeldByOther(_)
        ));
        // ...and once nobody renews, the other side takes it, with a new generation.
        match w.acquire(3, &set(&[3, 4]), 1950, 500).unwrap() {
            Lease::Held(rec) => assert_eq!((rec.holder, rec.generation), (3, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_only_the_holder_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWitness::new(&dir.path().join("witness"));
        let wait = Duration::from_secs(1);
        w.acquire(1, &set(&[1]), 1000, 500).unwrap();
        // Another node cannot release it.
        w.release_within(2, 1100, wait).unwrap();
        assert!(matches!(
            w.acquire(2, &set(&[2]), 1200, 500).unwrap(),
            Lease::HeldByOther(_)
        ));
        let rec = w.release_within(1, 1200, wait).unwrap().unwrap();
        assert_eq!(rec.expires_ms, 1200);
        match w.acquire(2, &set(&[2]), 1201, 500).unwrap() {
            Lease::Held(rec) => assert_eq!((rec.holder, rec.generation), (2, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_damaged_record_reads_as_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        std::fs::write(&path, b"{ not json").unwrap();
        let w = FileWitness::new(&path);
        assert_eq!(w.read().unwrap(), None);
        assert!(matches!(
            w.acquire(1, &set(&[1]), 10, 100).unwrap(),
            Lease::Held(_)
        ));
    }

    #[test]
    fn concurrent_contenders_never_both_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        let handles: Vec<_> = [1u16, 3]
            .into_iter()
            .map(|me| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let w = FileWitness::new(&path);
                    let partition = if me == 1 { set(&[1, 2]) } else { set(&[3, 4]) };
                    (0..200u64)
                        .filter(|i| {
                            matches!(
                                w.acquire(me, &partition, 1000 + i, 10_000).unwrap(),
                                Lease::Held(_)
                            )
                        })
                        .count()
                })
            })
            .collect();
        let wins: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            wins.contains(&0) && wins.contains(&200),
            "both partitions held the lease: {wins:?}"
        );
    }
}
