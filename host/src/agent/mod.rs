//! The agent host: everything that loads and calls resource agents, whatever
//! their kind. [`catalog`] finds an agent by name and loads it through one of
//! the [`backend`]s; [`host::AgentHandle`] checks each call, owns its deadline
//! and maps its result to a recovery; [`conformance`] runs the ocf-tester
//! sequence over the same handle. Nothing here knows about the cluster.

pub mod backend;
pub mod catalog;
pub mod conformance;
pub mod cpu;
pub mod crew;
pub mod host;
pub mod runner;
pub mod scaffold;
pub mod store;
