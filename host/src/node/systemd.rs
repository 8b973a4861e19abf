//! The daemon's side of the systemd unit (`Type=notify`, `WatchdogSec=`),
//! through the sd_notify protocol: `READY=1` once the node has formed its view
//! (it is quorate, or its peers have had the time to answer), `STATUS=` with
//! what it is and does whenever that changes, `WATCHDOG=1` from the event loop
//! at half the unit's watchdog interval (a hung loop is restarted by systemd,
//! beside the guardian), `STOPPING=1` when a clean stop begins. Without
//! `NOTIFY_SOCKET` (not started by systemd) it sends nothing.

use std::time::{Duration, Instant};

/// What the node tells systemd.
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    on: bool,
    ready: bool,
    /// Ready at the latest then, quorate or not: the node has formed its view.
    ready_by: Instant,
    /// How often to pet systemd's watchdog (half of `WATCHDOG_USEC`).
    pet_every: Option<Duration>,
    last_pet: Option<Instant>,
    status: String,
    stopping: bool,
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd ({states:?}): {e}");
    }
}

impl Notifier {
    /// From the environment systemd gives the unit; a node not quorate is
    /// ready after `view_within` (the time its peers have to be heard).
    pub fn from_env(view_within: Duration) -> Notifier {
        let mut usec = 0;
        let pet_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(10)));
        Notifier {
            on: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ready: false,
            ready_by: Instant::now() + view_within,
            pet_every,
            last_pet: None,
            status: String::new(),
            stopping: false,
        }
    }

    /// After each turn of the loop: ready when due, the status when it
    /// changed, the watchdog when due.
    pub fn turn(&mut self, quorate: bool, status: impl FnOnce() -> String) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        let text = status();
        if !self.ready && (quorate || now >= self.ready_by) {
            self.ready = true;
            self.status = text;
            send(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&self.status),
            ]);
        } else if self.ready && text != self.status {
            self.status = text;
            send(&[sd_notify::NotifyState::Status(&self.status)]);
        }
        if let Some(every) = self.pet_every
            && self.last_pet.is_none_or(|t| now >= t + every)
        {
            self.last_pet = Some(now);
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// A clean stop began (once).
    pub fn stopping(&mut self) {
        if self.on && !self.stopping {
            self.stopping = true;
            send(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("stopping: its services stop, then it leaves"),
            ]);
        }
    }
}
