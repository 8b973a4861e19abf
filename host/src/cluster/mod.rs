//! The cluster core (in progress, issue 4): the heartbeat wire format and the
//! membership state machine. Pure code driven by packets and clock ticks, so the
//! daemon and the deterministic simulation run the same logic.

pub mod membership;
pub mod wire;
