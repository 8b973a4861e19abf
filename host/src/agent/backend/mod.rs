//! The four kinds of agent, each behind [`crate::agent::host::Backend`].

pub mod builtin;
pub mod native;
pub mod ocf;
pub mod wasm;
