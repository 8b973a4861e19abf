//! Seeded random fault schedules: the faults the suite's 200 schedules and
//! `baton scenario simulate --random` apply, each followed by a quiet period
//! and the checks.

use super::{Fault, Sim};
use crate::membership::Millis;
use baton_plugin_api::Recovery;

/// What one random schedule did.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Promotions made.
    pub promotions: u64,
    /// Faults applied.
    pub faults: usize,
}

impl Sim {
    /// One random fault or repair, as the suite's schedules make them. A
    /// whole-machine freeze only where a fence agent can end it (without one,
    /// a machine that stalls whole is what a hardware watchdog is for).
    pub fn random_fault(&mut self) -> String {
        let ids = self.world.ids.clone();
        let rng = &mut self.world.rng;
        let a = ids[rng.below(ids.len() as u64) as usize];
        let b = ids[rng.below(ids.len() as u64) as usize];
        let link = rng.below(self.spec.links as u64) as u8;
        let up = !self.world.down.contains(&a);
        let fault = match self.world.rng.below(16) {
            0 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: Some(link),
                both: true,
            },
            1 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: None,
                both: true,
            },
            2 if a != b => Fault::Cut {
                from: a,
                to: b,
                link: Some(link),
                both: false,
            },
            3 => Fault::Isolate(a),
            4 if up => Fault::Kill(a),
            5 if !up => Fault::Start(a),
            // The guardian ends a paused daemon's services, so any pause is safe.
            6 => Fault::Pause(a, 20 + self.world.rng.below(1500)),
            7 => {
                let max_delay = self.spec.bounds.max_delay.as_millis() as Millis;
                Fault::Weather(
                    self.world.rng.below(25),
                    self.world.rng.below(20),
                    1 + self.world.rng.below(max_delay.max(1)),
                )
            }
            9 if up => {
                let svc = self.world.rng.below(self.spec.services.len() as u64) as usize;
                let recovery = if self.world.rng.chance(50) {
                    Recovery::RestartHere
                } else {
                    Recovery::Move
                };
                Fault::Fail(svc, a, recovery)
            }
            10 if self.spec.quorum.witness_votes > 0 => {
                Fault::WitnessLost(self.world.rng.chance(50).then_some(a))
            }
            11 => Fault::Health(a, self.world.unhealthy.contains(&a)),
            12 if up => {
                // A clean stop; half the time the daemon is started again a
                // moment later (maybe within the fence wait).
                let text = self.apply(&Fault::Stop(a));
                if self.world.rng.chance(50) {
                    let pause = 300 + self.world.rng.below(3000);
                    self.run(pause);
                    return format!("{text}; {}", self.apply(&Fault::Start(a)));
                }
                return text;
            }
            13 if up && self.spec.fencing => Fault::Freeze(a, 50 + self.world.rng.below(2000)),
            14 if up => {
                let svc = self.world.rng.below(self.spec.services.len() as u64) as usize;
                Fault::Hang(svc, a, true)
            }
            _ => {
                let text = self.apply(&Fault::Heal);
                for id in self.world.down.clone() {
                    self.apply(&Fault::Start(id));
                }
                return text;
            }
        };
        self.apply(&fault)
    }
}

/// Run one seeded random schedule of `faults` faults (some overlapping), each
/// followed by a quiet period and [`Sim::check`]; the first violation with the
/// schedule that led to it.
pub fn random_schedule(sim: &mut Sim, faults: usize) -> Result<Schedule, String> {
    sim.run(sim.quiet_ms());
    sim.check().map_err(|e| format!("at start: {e}"))?;
    let mut applied = 0;
    for _ in 0..faults {
        sim.random_fault();
        applied += 1;
        // Some faults overlap (no quiet time in between), then the network holds
        // still.
        if sim.world.rng.chance(30) {
            sim.run(30);
            sim.random_fault();
            applied += 1;
        }
        sim.run(sim.quiet_ms());
        if let Some(v) = sim.violation() {
            return Err(format!("{v}\nschedule:\n  {}", sim.log.join("\n  ")));
        }
        // With loss, links may flap; check once loss is off again.
        if sim.lossy() {
            continue;
        }
        sim.check()
            .map_err(|e| format!("{e}\nschedule:\n  {}", sim.log.join("\n  ")))?;
    }
    Ok(Schedule {
        promotions: sim.promotions,
        faults: applied,
    })
}
