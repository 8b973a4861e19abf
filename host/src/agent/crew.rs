//! Threads that outlive their jobs: the daemon's monitor rounds run on them.
//!
//! A job is handed to an idle thread when there is one, else to a new thread;
//! a thread that finishes waits for the next job, and ends after a minute
//! without one. A job that never returns keeps its thread and nothing else: the
//! next job goes to another thread.
//!
//! Rationale: a thread per round (50 services monitored every second) spent
//! about a fifth of the daemon's CPU time creating and tearing down threads
//! (stack mappings, kernel stacks, the TLB flushes of unmapping them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for a job before it ends.
const IDLE_FOR: Duration = Duration::from_secs(60);

/// A set of reusable threads named `NAME`.
pub struct Crew {
    name: String,
    jobs: Sender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Threads waiting for a job, or about to.
    idle: Arc<AtomicUsize>,
}

impl Crew {
    /// An empty crew; threads are started as jobs need them.
    pub fn new(name: &str) -> Crew {
        let (jobs, queue) = channel();
        Crew {
            name: name.to_owned(),
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Run `f` on an idle thread of the crew, or on a new one when none is idle.
    /// Returns at once.
    pub fn launch(&self, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        // Claim an idle thread; if there is none, add one. A thread that
        // counted itself idle takes a job from the queue, so every job queued
        // has a thread that will take it.
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            self.hire()?;
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
        self.jobs
            .send(Box::new(f))
            .map_err(|_| std::io::Error::other("the crew's queue is closed"))
    }

    /// Start one more thread, counted idle.
    fn hire(&self) -> std::io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let idle = Arc::clone(&self.idle);
        self.idle.fetch_add(1, Ordering::SeqCst);
        let started = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                loop {
                    let job = queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .recv_timeout(IDLE_FOR);
                    match job {
                        Ok(job) => {
                            job();
                            idle.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            // Leave only if no job was promised to this thread.
                            if idle
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        if let Err(e) = started {
            self.idle.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn a_job_that_never_returns_does_not_hold_up_the_next() {
        let crew = Crew::new("test-crew");
        let (stuck_tx, stuck_rx) = sync_channel::<()>(0);
        crew.launch(move || {
            // Blocks until the test ends (the sender is dropped then).
            let _ = stuck_rx.recv();
        })
        .unwrap();
        let (done_tx, done_rx) = sync_channel(8);
        for i in 0..8 {
            let done = done_tx.clone();
            crew.launch(move || done.send(i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..8)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        drop(stuck_tx);
    }

    #[test]
    fn finished_threads_are_reused() {
        let crew = Crew::new("test-crew");
        let (tx, rx) = sync_channel(1);
        let mut threads = std::collections::HashSet::new();
        for _ in 0..20 {
            let tx = tx.clone();
            crew.launch(move || tx.send(std::thread::current().id()).unwrap())
                .unwrap();
            threads.insert(rx.recv_timeout(Duration::from_secs(10)).unwrap());
            // Until the thread counts itself idle again (bounded).
            for _ in 0..100_000 {
                if crew.idle.load(Ordering::SeqCst) == 1 {
                    break;
                }
                std::thread::yield_now();
            }
        }
        assert_eq!(threads.len(), 1, "one thread for 20 jobs one after another");
    }
}
