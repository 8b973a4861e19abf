//! Waking the daemon's loop from other threads.
//!
//! The loop sleeps in `poll` on its heartbeat sockets until the next heartbeat
//! is due. Agent completions, monitor rounds and operator requests arrive on
//! channels from other threads; each send also writes a byte to a pipe whose
//! read end is in the poll set, so the loop wakes for them at once instead of
//! polling every few milliseconds (which, idle, cost a node more CPU than a
//! thousand monitored resources). The witness worker rings it after each answer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// The write end: cheap to clone, safe to ring from any thread.
#[derive(Clone)]
pub struct Bell(Arc<OwnedFd>);

/// The read end, for the poll set.
pub struct Ear(OwnedFd);

/// A bell and the ear that hears it.
pub fn pair() -> std::io::Result<(Bell, Ear)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors that we own from here on.
    let (r, w) = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    Ok((Bell(Arc::new(w)), Ear(r)))
}

impl Bell {
    /// Wake the loop. A full pipe already holds a wake-up, so that write may fail.
    pub fn ring(&self) {
        // SAFETY: a one-byte write to a descriptor we own.
        unsafe {
            libc::write(self.0.as_raw_fd(), [1u8].as_ptr().cast(), 1);
        }
    }
}

impl Ear {
    /// The descriptor to poll for reading.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Forget the wake-ups heard so far (the loop is awake now).
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a local buffer from a non-blocking descriptor we own.
        while unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_from_another_thread_wakes_a_poll() {
        let (bell, ear) = pair().unwrap();
        let b = bell.clone();
        std::thread::spawn(move || b.ring());
        let mut pfd = libc::pollfd {
            fd: ear.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(n, 1);
        ear.drain();
        pfd.revents = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "drained");
        for _ in 0..100_000 {
            bell.ring(); // a full pipe does not block
        }
    }
}
