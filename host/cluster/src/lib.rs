//! The cluster core: the heartbeat wire format, the membership state machine,
//! quorum, the witness lease, placement and the service ownership protocol
//! ([`node::ClusterNode`]), and the node driver around it ([`driver::Driver`]),
//! which does all its I/O through a trait. Pure code driven by packets, clock
//! ticks and completions, so the daemon and the deterministic simulation run
//! the same logic.

pub mod changes;
pub mod config;
pub mod driver;
pub mod membership;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod reload;
pub mod script;
pub mod sim;
pub mod wire;
pub mod witness;
