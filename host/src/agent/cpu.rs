//! Where a handed-off agent call runs: on the caller's CPU.
//!
//! A call to a built-in or trusted agent (on a worker thread) or to a native
//! runner (another process) wakes the other side and then waits to be woken back.
//! When the other side sleeps on another CPU, each wake-up is an inter-processor
//! interrupt, and on a virtual machine an idle vCPU must be woken by the
//! hypervisor first: the 2-vCPU machine of docs/benchmarks.md measured about 28 µs
//! per wake-up that way, against under 2 µs when both sides share a CPU (the caller
//! sleeps as soon as it has handed off, so the CPU is free for the callee). So,
//! before each hand-off, the callee is moved to the CPU the caller runs on.
//!
//! Rationale: a call is a strict ping-pong (the caller blocks until the answer),
//! so the two never want to run at the same time; sharing a CPU costs nothing and
//! saves both wake-ups. Only `monitor` calls are placed so (the frequent ones,
//! one per resource per interval): a child process inherits its parent's CPU
//! set, so a callee is set free again ([`release`]) before any other action,
//! which may start a long-lived server, and when it overruns its deadline.

/// The id of the calling thread (for [`follow_caller`] from another thread).
pub fn thread_id() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Move thread or process `tid` to the CPU the calling thread runs on now. Best
/// effort: a CPU the callee may not use (cpusets) leaves it where it is.
pub fn follow_caller(tid: libc::pid_t) {
    // SAFETY: sched_getcpu has no preconditions; the set is a plain value.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Let thread or process `tid` run on every CPU this process may use again.
pub fn release(tid: libc::pid_t) {
    // SAFETY: as above; the mask is this process's own, read first.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}
