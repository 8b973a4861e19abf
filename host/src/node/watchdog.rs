//! The opt-in hardware watchdog (`[cluster.watchdog]`). Production only: opening a
//! watchdog device arms it, and a machine whose watchdog is not petted resets. The
//! tests and the lab never configure it.
//!
//! The daemon pets it once per tick while the node is healthy: quorate, or holding
//! nothing, or within `self_fence` of losing quorum. A node that lost quorum and
//! still holds services after that bound, or whose daemon hangs, stops petting and
//! the hardware resets it within `timeout_s`, so the survivors' fence wait holds
//! even when a stop hangs in the kernel.

use anyhow::{Context, bail};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `_IOWR('W', 6, int)`: set the timeout in seconds.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// An armed watchdog.
pub struct Watchdog {
    file: File,
    device: PathBuf,
}

impl Watchdog {
    /// Open and arm `device` with `timeout_s`. Fails (naming the device) when it is not
    /// a watchdog; the device is then closed with the magic character, not armed.
    pub fn open(device: &Path, timeout_s: u32) -> anyhow::Result<Watchdog> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .with_context(|| format!("cluster.watchdog.device {}", device.display()))?;
        let mut dog = Watchdog {
            file,
            device: device.to_path_buf(),
        };
        let mut t: libc::c_int = timeout_s as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int we own.
        let r = unsafe { libc::ioctl(dog.file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            dog.disarm();
            bail!(
                "cluster.watchdog.device {}: not a watchdog device ({e}); give the watchdog device (e.g. /dev/watchdog0) or remove [cluster.watchdog]",
                device.display()
            );
        }
        Ok(dog)
    }

    /// Pet it (any write does).
    pub fn pet(&mut self) {
        if let Err(e) = self.file.write_all(b"\0") {
            tracing::error!(device = %self.device.display(), "watchdog pet failed: {e}");
        }
    }

    /// Disarm on a clean exit ("magic close": write 'V' before closing).
    pub fn disarm(&mut self) {
        let _ = self.file.write_all(b"V");
    }
}
