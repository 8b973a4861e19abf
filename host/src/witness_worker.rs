//! The witness lease, off the daemon's loop. Storage can stall (a network
//! filesystem, a SAN path failover, a node frozen while it holds the lease lock);
//! the loop must keep heartbeating, answering status and fencing through any of
//! it. A worker thread owns the lease file and does one operation at a time; the
//! loop asks without waiting and counts the witness only while the latest answer
//! is fresh. An operation that does not finish in time is "witness not held",
//! never a stall.

use crate::cluster::wire::NodeId;
use crate::cluster::witness::{FileWitness, Lease, LeaseRecord};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// One lease operation: take or renew it for `me` leading `view`, or only read it.
struct Ask {
    acquire: Option<(NodeId, BTreeSet<NodeId>)>,
    /// The loop's monotonic clock when it asked.
    asked_ms: u64,
}

struct Answer {
    asked_ms: u64,
    result: Result<Option<LeaseRecord>, String>,
}

/// The loop's side of the witness worker.
pub struct WitnessWorker {
    asks: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
    in_flight: Option<u64>,
    /// The latest answer: when it was asked for, and the valid lease it showed.
    latest: Option<(u64, Option<LeaseRecord>)>,
    /// The latest failure, for status and logs.
    pub last_error: Option<String>,
    /// How long an answer counts (and how long one operation may take).
    fresh_ms: u64,
}

impl WitnessWorker {
    /// Start the worker for the lease file at `path`. Leases are taken for
    /// `lease_ms`; an answer counts for half of that after it was asked for, which
    /// leaves the other half as margin for the nodes' wall clocks before another
    /// partition may take an expired lease.
    pub fn start(path: &Path, lease_ms: u64, unix_ms: fn() -> u64) -> WitnessWorker {
        let (ask_tx, ask_rx) = mpsc::channel::<Ask>();
        let (answer_tx, answer_rx) = mpsc::channel::<Answer>();
        let witness = FileWitness::new(path);
        let fresh_ms = lease_ms / 2;
        let lock_wait = Duration::from_millis(fresh_ms);
        std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || {
                while let Ok(ask) = ask_rx.recv() {
                    let result = match &ask.acquire {
                        Some((me, view)) => witness
                            .acquire_within(*me, view, unix_ms(), lease_ms, lock_wait)
                            .map(|l| match l {
                                Lease::Held(rec) | Lease::HeldByOther(rec) => Some(rec),
                            }),
                        None => witness.read(),
                    };
                    let answer = Answer {
                        asked_ms: ask.asked_ms,
                        result: result
                            .map(|rec| rec.filter(|r| unix_ms() < r.expires_ms))
                            .map_err(|e| format!("witness {}: {e}", witness.path().display())),
                    };
                    if answer_tx.send(answer).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the witness thread");
        WitnessWorker {
            asks: ask_tx,
            answers: answer_rx,
            in_flight: None,
            latest: None,
            last_error: None,
            fresh_ms,
        }
    }

    /// Ask for the next operation unless one is still running (a stalled storage
    /// gets one request, not a queue). `acquire`: this node leads its partition.
    pub fn ask(&mut self, now_ms: u64, acquire: Option<(NodeId, BTreeSet<NodeId>)>) {
        self.collect();
        if self.in_flight.is_some() {
            return;
        }
        let ask = Ask {
            acquire,
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
        self.latest.as_ref()?.1.as_ref().map(|r| r.holder)
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
            w.ask(now, Some((1, [1, 2].into())));
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
        let mut w = WitnessWorker::start(&path, 400, unix_ms);
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
            w.ask(now, Some((1, [1, 2].into())));
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
