//! baton host integration tests: one binary, a module per feature.

mod builtin;
mod cli;
mod console;
mod containment;
mod daemons;
mod db_lab;
mod disk;
mod dns;
mod domino;
mod ipaddr;
mod lab;
mod mariadb;
mod native;
mod ocf;
mod oracle;
mod package;
mod postgresql;
mod scenario;
mod shared_devices;
mod sqlserver;
mod store;
mod support;
mod wasm;
