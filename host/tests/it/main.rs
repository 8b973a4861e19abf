//! baton host integration tests: one binary, a module per feature.

mod cli;
mod native;
mod ocf;
mod store;
mod support;
mod wasm;
