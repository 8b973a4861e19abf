//! The witness lease: a delta lease, as sanlock's and as the `disk-lease` agent
//! keeps on a shared disk, in one small record every node can read and write (a
//! block of a shared disk, or a file on shared storage). No lock and no wall
//! clock: a node that froze while holding the lease is just a holder that
//! stopped renewing.
//!
//! - The holder renews the record by bumping its counter, every tick.
//! - Another node takes it when it is free: never written, released, left by a
//!   member of its own partition, left by a node it knows fenced (the record
//!   unchanged since before it knew), or watched *unchanged* for the lease time
//!   on its own monotonic clock. A taker writes its claim (a new random token),
//!   waits an eighth of the lease for a concurrent taker's write to land, and
//!   reads back: only the node whose claim survived holds the lease.
//! - A holder counts the witness for half the lease after it *asked* for each
//!   renewal (the driver keeps that rule), so it stops counting well before
//!   anyone else may take the lease. It renews its own record only within that
//!   half lease of its last confirmed renewal: a renewal written late (the
//!   node froze in the middle of writing) never lets it keep a lease another
//!   node may have taken meanwhile; it watches its own record like anyone's.
//! - A member that does not lead counts a holder only while it sees the record
//!   change (a change first seen within a quarter lease of the read before),
//!   so a holder that stopped renewing stops counting everywhere too; such a
//!   holder is reported *stalled*, and a partition that needs the witness may
//!   fence it (the confirmation frees the lease at once).
//!
//! The lease logic is a step machine ([`DeltaLease`]): it asks for a read, a
//! write or a wait and is told the outcome, so the daemon's witness worker
//! runs it on real storage and the simulator on its modelled storage.

use super::membership::Millis;
use super::wire::NodeId;
use std::collections::BTreeSet;

/// The lease record as the lease logic sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The node holding (or that last held) it.
    pub owner: NodeId,
    /// Random per acquisition: tells one holding apart from an earlier one.
    pub token: u64,
    /// Bumped by every write; an observer sees the holder alive by its change.
    pub counter: u64,
    /// The holder let it go.
    pub released: bool,
}

/// What the witness's storage holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never written.
    Empty,
    /// A lease record of this cluster's witness.
    Lease(LeaseRecord),
    /// A record that fails its checksum even after re-reads (identified by a
    /// hash of its bytes): held by nobody known, watched like a held lease.
    Damaged(u64),
    /// Something else (another cluster's record, data that is not a lease): never
    /// overwritten; the text says what and the fix.
    Foreign(String),
}

/// What a node asks of the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// Only read it.
    Look,
    /// Take or renew it for this node, leader of partition `view`. `fenced`:
    /// lost nodes confirmed fenced, each with when that was first known (on
    /// the same clock as the steps' `now`).
    Lead {
        /// The partition.
        view: BTreeSet<NodeId>,
        /// Nodes known fenced, and since when.
        fenced: Vec<(NodeId, Millis)>,
    },
    /// Let it go if this node holds it.
    Release,
}

/// What one operation saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sighting {
    /// Who holds a live lease (this node after a successful take or renewal).
    pub holder: Option<NodeId>,
    /// Who holds a lease that stopped changing.
    pub stalled: Option<NodeId>,
}

/// What the lease logic needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the storage; answer with [`Outcome::Read`].
    Read,
    /// Write this record (durably); answer with [`Outcome::Wrote`].
    Write(LeaseRecord),
    /// Wait this long; answer with [`Outcome::Waited`].
    Wait(Millis),
    /// The operation is over.
    Done(Result<Sighting, String>),
}

/// What the storage did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read, or why it failed.
    Read(Result<Slot, String>),
    /// A write, or why it failed.
    Wrote(Result<(), String>),
    /// The wait is over.
    Waited,
}

/// The slot as last read: since when it has read so, and when the read before
/// that was (a change happened between the two).
#[derive(Clone, Debug)]
struct Seen {
    slot: Slot,
    first: Millis,
    before: Option<Millis>,
    last: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Read,
    Renew,
    Claim(LeaseRecord),
    Settle(LeaseRecord),
    ReadBack(LeaseRecord),
    Release,
}

/// One node's side of the witness lease.
pub struct DeltaLease {
    me: NodeId,
    lease_ms: Millis,
    /// Our holding: its token, and when the renewal last confirmed was asked.
    mine: Option<(u64, Millis)>,
    seen: Option<Seen>,
    /// The operation under way: what, when it began, where it is.
    op: Option<(LeaseOp, Millis, Stage)>,
    tokens: u64,
}

impl DeltaLease {
    /// Node `me`'s side of a lease taken for `lease_ms`; `seed` makes its
    /// tokens (random in the daemon, from the seed in the simulator).
    pub fn new(me: NodeId, lease_ms: Millis, seed: u64) -> DeltaLease {
        DeltaLease {
            me,
            lease_ms,
            mine: None,
            seen: None,
            op: None,
            tokens: seed,
        }
    }

    /// Begin `op` at `now` (the time its answer counts from): the first step.
    pub fn begin(&mut self, op: LeaseOp, now: Millis) -> Step {
        self.op = Some((op, now, Stage::Read));
        Step::Read
    }

    /// The storage's answer to the last step, at `now`: the next step.
    pub fn step(&mut self, now: Millis, outcome: Outcome) -> Step {
        let Some((op, started, stage)) = self.op.take() else {
            return Step::Done(Err("no witness operation is under way".into()));
        };
        match (stage, outcome) {
            (Stage::Read, Outcome::Read(Ok(slot))) => self.decide(&op, started, now, slot),
            (Stage::ReadBack(claim), Outcome::Read(Ok(slot))) => {
                self.observe(now, slot.clone());
                if slot == Slot::Lease(claim) {
                    self.mine = Some((claim.token, started));
                    done(Some(self.me), None)
                } else {
                    self.mine = None;
                    Step::Done(Ok(self.sighting(now)))
                }
            }
            (Stage::Renew, Outcome::Wrote(Ok(()))) => {
                if let Some((token, _)) = self.mine {
                    self.mine = Some((token, started));
                }
                done(Some(self.me), None)
            }
            (Stage::Claim(claim), Outcome::Wrote(Ok(()))) => {
                self.op = Some((op, started, Stage::Settle(claim)));
                Step::Wait((self.lease_ms / 8).max(1))
            }
            (Stage::Settle(claim), Outcome::Waited) => {
                self.op = Some((op, started, Stage::ReadBack(claim)));
                Step::Read
            }
            (Stage::Release, Outcome::Wrote(Ok(()))) => {
                self.mine = None;
                done(None, None)
            }
            (_, Outcome::Read(Err(e)) | Outcome::Wrote(Err(e))) => {
                if matches!(stage, Stage::Claim(_) | Stage::ReadBack(_)) {
                    self.mine = None;
                }
                Step::Done(Err(e))
            }
            (stage, outcome) => Step::Done(Err(format!(
                "witness operation out of step: {outcome:?} at {stage:?}"
            ))),
        }
    }

    /// After the first read of an operation: answer, or write.
    fn decide(&mut self, op: &LeaseOp, started: Millis, now: Millis, slot: Slot) -> Step {
        self.observe(now, slot.clone());
        if let Slot::Foreign(why) = slot {
            return Step::Done(Err(why));
        }
        let record = match slot {
            Slot::Lease(r) => Some(r),
            _ => None,
        };
        let ours = record.filter(|r| {
            r.owner == self.me && !r.released && self.mine.is_some_and(|(t, _)| t == r.token)
        });
        match op {
            LeaseOp::Look => Step::Done(Ok(self.sighting(now))),
            LeaseOp::Release => match ours {
                Some(r) => self.write(
                    op,
                    started,
                    Stage::Release,
                    LeaseRecord {
                        released: true,
                        ..r
                    },
                ),
                None => {
                    self.mine = None;
                    Step::Done(Ok(self.sighting(now)))
                }
            },
            LeaseOp::Lead { view, fenced } => {
                let fresh = self.mine.is_some_and(|(_, confirmed)| {
                    started.saturating_sub(confirmed) <= self.lease_ms / 2
                });
                if let Some(r) = ours.filter(|_| fresh) {
                    let renewal = LeaseRecord {
                        counter: r.counter + 1,
                        ..r
                    };
                    return self.write(op, started, Stage::Renew, renewal);
                }
                if self.free(now, view, fenced) {
                    self.tokens = self
                        .tokens
                        .wrapping_mul(0x5851_F42D_4C95_7F2D)
                        .wrapping_add(0x1405_7B7E_F767_814F);
                    let claim = LeaseRecord {
                        owner: self.me,
                        token: self.tokens | 1,
                        counter: record.map_or(1, |r| r.counter + 1),
                        released: false,
                    };
                    return self.write(op, started, Stage::Claim(claim), claim);
                }
                Step::Done(Ok(self.sighting(now)))
            }
        }
    }

    fn write(&mut self, op: &LeaseOp, started: Millis, stage: Stage, record: LeaseRecord) -> Step {
        self.op = Some((op.clone(), started, stage));
        Step::Write(record)
    }

    fn observe(&mut self, now: Millis, slot: Slot) {
        match &mut self.seen {
            Some(seen) if seen.slot == slot => seen.last = now,
            seen => {
                let before = seen.as_ref().map(|s| s.last);
                *seen = Some(Seen {
                    slot,
                    first: now,
                    before,
                    last: now,
                });
            }
        }
    }

    /// Whether the leader of `view` may take the lease now.
    fn free(&self, now: Millis, view: &BTreeSet<NodeId>, fenced: &[(NodeId, Millis)]) -> bool {
        let Some(seen) = &self.seen else {
            return false;
        };
        let unchanged = now.saturating_sub(seen.first) >= self.lease_ms;
        match &seen.slot {
            Slot::Empty => true,
            Slot::Lease(r) if r.released => true,
            // Our own record that we cannot vouch for (a late write of ours,
            // or a previous run's): watched like anyone's.
            Slot::Lease(r) if r.owner == self.me => unchanged,
            Slot::Lease(r) if view.contains(&r.owner) => true,
            Slot::Lease(r) => {
                unchanged
                    || fenced
                        .iter()
                        .any(|(n, since)| *n == r.owner && seen.first <= *since)
            }
            Slot::Damaged(_) => unchanged,
            Slot::Foreign(_) => false,
        }
    }

    /// Who holds the lease as last read: live if the record changed since a
    /// read less than a quarter lease ago, stalled if it has read the same for a
    /// quarter lease; neither on a first sight.
    fn sighting(&self, now: Millis) -> Sighting {
        let Some(seen) = &self.seen else {
            return Sighting::default();
        };
        let Slot::Lease(r) = &seen.slot else {
            return Sighting::default();
        };
        if r.released {
            return Sighting::default();
        }
        let quarter = self.lease_ms / 4;
        if seen.before.is_some_and(|b| now.saturating_sub(b) < quarter) {
            Sighting {
                holder: Some(r.owner),
                stalled: None,
            }
        } else if now.saturating_sub(seen.first) >= quarter {
            Sighting {
                holder: None,
                stalled: Some(r.owner),
            }
        } else {
            Sighting::default()
        }
    }
}

fn done(holder: Option<NodeId>, stalled: Option<NodeId>) -> Step {
    Step::Done(Ok(Sighting { holder, stalled }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared slot and the nodes' lease logic, run step by step on a clock.
    struct Storage {
        slot: Slot,
    }

    impl Storage {
        /// Run `op` for `lease` at `now`, every step taking 1 ms; the answer and
        /// the time it ends.
        fn run(
            &mut self,
            lease: &mut DeltaLease,
            op: LeaseOp,
            mut now: Millis,
        ) -> (Result<Sighting, String>, Millis) {
            let mut step = lease.begin(op, now);
            loop {
                now += 1;
                step = match step {
                    Step::Read => lease.step(now, Outcome::Read(Ok(self.slot.clone()))),
                    Step::Write(r) => {
                        self.slot = Slot::Lease(r);
                        lease.step(now, Outcome::Wrote(Ok(())))
                    }
                    Step::Wait(ms) => {
                        now += ms;
                        lease.step(now, Outcome::Waited)
                    }
                    Step::Done(r) => return (r, now),
                };
            }
        }
    }

    fn view(n: &[NodeId]) -> BTreeSet<NodeId> {
        n.iter().copied().collect()
    }

    fn lead(n: &[NodeId]) -> LeaseOp {
        LeaseOp::Lead {
            view: view(n),
            fenced: Vec::new(),
        }
    }

    const LEASE: Millis = 200;

    #[test]
    fn a_free_lease_is_taken_renewed_and_held_against_another_partition() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        let (r, now) = s.run(&mut a, lead(&[1]), 0);
        assert_eq!(r.unwrap().holder, Some(1));
        // A first sight tells nothing about whether the holder renews.
        let (r, mut now) = s.run(&mut b, LeaseOp::Look, now);
        assert_eq!(r.unwrap(), Sighting::default());
        // Both renew / look every 20 ms: b sees a live holder and never takes it.
        for _ in 0..50 {
            let (r, t) = s.run(&mut a, lead(&[1]), now + 20);
            assert_eq!(r.unwrap().holder, Some(1));
            let (r, t) = s.run(&mut b, lead(&[2]), t);
            let r = r.unwrap();
            assert_eq!(r.holder, Some(1), "b sees a's renewals");
            now = t;
        }
    }

    #[test]
    fn a_holder_that_stops_renewing_is_stalled_then_its_lease_is_taken_after_a_lease_unchanged() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        let (_, mut now) = s.run(&mut a, lead(&[1]), 0);
        let (_, t) = s.run(&mut b, LeaseOp::Look, now);
        now = t;
        // a freezes. b reads every 20 ms: stalled after a quarter lease, taken
        // once it has seen the record unchanged for a whole lease.
        let frozen_at = now;
        let mut stalled_at = None;
        loop {
            now += 20;
            assert!(now < frozen_at + 2 * LEASE, "never taken");
            let (r, t) = s.run(&mut b, lead(&[2]), now);
            let r = r.unwrap();
            now = t;
            if r.stalled == Some(1) && stalled_at.is_none() {
                stalled_at = Some(now);
            }
            if r.holder == Some(2) {
                break;
            }
        }
        assert!(stalled_at.unwrap() - frozen_at <= LEASE / 4 + 25);
        assert!(
            now - frozen_at >= LEASE,
            "taken {} ms after the last renewal",
            now - frozen_at
        );
        // a resumes: its renewal is stale (more than half a lease after the
        // last one confirmed), so it does not take the lease back.
        let (r, _) = s.run(&mut a, lead(&[1]), now + 1);
        assert_ne!(r.unwrap().holder, Some(1));
        assert!(matches!(s.slot, Slot::Lease(r) if r.owner == 2));
    }

    #[test]
    fn a_late_write_of_a_frozen_holder_never_gives_it_the_lease_back() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        let (_, now) = s.run(&mut a, lead(&[1]), 0);
        // a begins a renewal and freezes after reading: its write lands late.
        assert_eq!(a.begin(lead(&[1]), now + 20), Step::Read);
        let step = a.step(now + 21, Outcome::Read(Ok(s.slot.clone())));
        let Step::Write(late) = step else {
            panic!("{step:?}")
        };
        // Meanwhile b watches it unchanged for a lease and takes it.
        let mut t = now + 21;
        loop {
            let (r, u) = s.run(&mut b, lead(&[2]), t + 20);
            t = u;
            if r.unwrap().holder == Some(2) {
                break;
            }
        }
        // a resumes: its write lands over b's record.
        s.slot = Slot::Lease(late);
        a.step(t + 1, Outcome::Wrote(Ok(())));
        // a's next renewal would be its own record, but it last confirmed a
        // renewal long ago: it watches the record like anyone's.
        let (r, _) = s.run(&mut a, lead(&[1]), t + 20);
        assert_ne!(r.unwrap().holder, Some(1), "a took its stale lease back");
    }

    #[test]
    fn a_fenced_holder_frees_the_lease_at_once_but_not_a_later_holding() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        let (_, now) = s.run(&mut a, lead(&[1]), 0);
        let (_, now) = s.run(&mut b, LeaseOp::Look, now + 1);
        // a is fenced at now + 10 (b saw its record before that): taken at once.
        let fenced = vec![(1, now + 10)];
        let op = LeaseOp::Lead {
            view: view(&[2]),
            fenced: fenced.clone(),
        };
        let (r, t) = s.run(&mut b, op, now + 20);
        assert_eq!(r.unwrap().holder, Some(2));
        assert!(t - now < LEASE / 2);
        // A record a writes after that (a new boot that took the lease in a
        // partition of its own) is not freed by the old fence.
        s.slot = Slot::Lease(LeaseRecord {
            owner: 1,
            token: 77,
            counter: 1,
            released: false,
        });
        let t = t + 1000;
        let op = LeaseOp::Lead {
            view: view(&[2]),
            fenced,
        };
        let (r, _) = s.run(&mut b, op, t + 1);
        assert_ne!(r.unwrap().holder, Some(2));
    }

    #[test]
    fn a_released_lease_is_free_and_a_foreign_slot_is_never_written() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        let (_, now) = s.run(&mut a, lead(&[1]), 0);
        let (r, now) = s.run(&mut a, LeaseOp::Release, now + 1);
        assert_eq!(r.unwrap().holder, None);
        let (r, _) = s.run(&mut b, lead(&[2]), now + 1);
        assert_eq!(r.unwrap().holder, Some(2));
        s.slot = Slot::Foreign("slot 0 holds data that is not a baton lease".into());
        let (r, _) = s.run(&mut b, lead(&[2]), now + 50);
        assert!(r.unwrap_err().contains("not a baton lease"));
        assert!(matches!(s.slot, Slot::Foreign(_)));
    }

    #[test]
    fn concurrent_claimers_end_with_one_holder() {
        let mut s = Storage { slot: Slot::Empty };
        let mut a = DeltaLease::new(1, LEASE, 1);
        let mut b = DeltaLease::new(2, LEASE, 2);
        // Both read the empty slot, both write; b's write lands last.
        let _ = a.begin(lead(&[1]), 0);
        let _ = b.begin(lead(&[2]), 0);
        let Step::Write(ca) = a.step(1, Outcome::Read(Ok(Slot::Empty))) else {
            panic!()
        };
        let Step::Write(cb) = b.step(1, Outcome::Read(Ok(Slot::Empty))) else {
            panic!()
        };
        s.slot = Slot::Lease(ca);
        s.slot = Slot::Lease(cb);
        let mut holders = Vec::new();
        for l in [&mut a, &mut b] {
            let Step::Wait(w) = l.step(2, Outcome::Wrote(Ok(()))) else {
                panic!()
            };
            assert_eq!(l.step(2 + w, Outcome::Waited), Step::Read);
            let Step::Done(Ok(sight)) = l.step(3 + w, Outcome::Read(Ok(s.slot.clone()))) else {
                panic!()
            };
            holders.push(sight.holder);
        }
        // Both agree on the one whose claim survived.
        assert_eq!(holders, [Some(2), Some(2)]);
        assert_eq!(a.mine, None);
    }
}
