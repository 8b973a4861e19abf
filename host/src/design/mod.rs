//! The design tools: `baton scenario` (templates, check, compile, simulate on
//! the cluster simulator), the design view (the console's page for a scenario
//! before it runs), and `validate` (the live site against its design). Uses
//! the node's status, loader and console page; nothing uses it but the CLI.

pub mod scenario;
pub mod validate;
pub mod view;
