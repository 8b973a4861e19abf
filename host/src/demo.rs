//! `baton demo`.
use std::path::PathBuf;
use std::process::ExitCode;

/// `baton demo` flags.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Run the demo.
pub fn run(_args: DemoArgs, _config: crate::config::Config, _runner: PathBuf) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
