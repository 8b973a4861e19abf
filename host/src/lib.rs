//! baton's host: the daemon and CLI.
//!
//! The agent side reads as one line: [`catalog`] finds an agent by name and loads
//! it through one of the [`backend`]s; [`agent_host::AgentHandle`] checks each
//! call, owns its deadline and maps its result to a recovery; [`conformance`] runs
//! the ocf-tester sequence over the same handle.

/// The cluster core, its own crate (`host/cluster`): pure decisions, no plugin host.
pub use baton_cluster as cluster;
pub mod agent_host;
pub mod backend;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod console;
pub mod control;
pub mod cpu;
pub mod crew;
pub mod daemon;
pub mod decisions;
pub mod demo;
pub mod disk_lab;
pub mod guardian;
pub mod health;
pub mod history;
pub mod lab;
pub mod metrics;
pub mod operator;
pub mod runner;
pub mod scaffold;
pub mod scenario;
pub mod services;
pub mod status;
pub mod store;
pub mod validate;
pub mod wake;
pub mod watchdog;
pub mod witness_worker;

// Link the built-in agents so their inventory registrations are kept.
use baton_agents as _;
