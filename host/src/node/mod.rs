//! The node's shell around the cluster core: the daemon (`baton run`) giving
//! the node driver its I/O, the services it runs through the agent host, and
//! what it serves and records — the control socket, the status, the event
//! history, metrics and the web console — plus the guardian, health checks,
//! the witness worker and the watchdog. Uses the agent host; the design tools
//! and the CLI use it.

pub mod console;
pub mod control;
pub mod daemon;
pub mod decisions;
pub mod gather;
pub mod guardian;
pub mod health;
pub mod history;
pub mod metrics;
pub mod operator;
pub mod reload;
pub mod services;
pub mod settings;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod versions;
pub mod wake;
pub mod watchdog;
pub mod witness_worker;
