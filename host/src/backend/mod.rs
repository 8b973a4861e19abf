//! The four kinds of agent, each behind [`crate::agent_host::Backend`].

pub mod builtin;
pub mod native;
pub mod ocf;
pub mod wasm;
