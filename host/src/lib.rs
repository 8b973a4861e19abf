//! baton's host: the daemon and the CLI, in four parts with arrows one way:
//! the CLI uses the design tools, the node's shell and the agent host; the
//! design tools use the node's shell; the node's shell uses the agent host and
//! the cluster core; the labs build clusters of real daemons for the demo, the
//! tests and the benchmarks.

/// The cluster core, its own crate (`host/cluster`): pure decisions, no plugin host.
pub use baton_cluster as cluster;
pub mod agent;
pub mod cli;
pub mod config;
pub mod design;
pub mod lab;
pub mod node;

// Link the built-in agents so their inventory registrations are kept.
use baton_agents as _;
