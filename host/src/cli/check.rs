//! `baton config check` and `baton scenario`.

use super::{ScenarioCommand, runner_exe};
use crate::config::Config;
use anyhow::Context;
use std::process::ExitCode;

/// Carry out a `scenario` subcommand.
pub fn scenario(cmd: &ScenarioCommand) -> anyhow::Result<ExitCode> {
    use crate::design::scenario;
    match cmd {
        ScenarioCommand::New { template, file } => {
            let text = scenario::new_scenario(template)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file)
                .with_context(|| format!("cannot create {} (it must not exist)", file.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            println!(
                "wrote {}: fill in its site part, then: baton scenario check {0}",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Check { file, json } => scenario::check(file, *json),
        ScenarioCommand::Compile { file, out, json } => scenario::compile(file, out, *json),
        ScenarioCommand::Simulate {
            file,
            fault,
            random,
            seed,
            json,
        } => scenario::simulate(file, fault.as_deref(), *random, *seed, *json),
        ScenarioCommand::Validate {
            file,
            token_file,
            json,
        } => crate::design::validate::run(file, token_file.as_deref(), *json),
        ScenarioCommand::View { file, out, fault } => {
            crate::design::view::write_view(file, out, fault.as_deref())
        }
    }
}

/// `baton config check FILE`.
pub fn config_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(Some(file)) {
        Err(e) => {
            println!("{e:#}");
            Ok(ExitCode::from(1))
        }
        Ok(config) => {
            let problems = crate::node::services::resource_problems(&config, &runner_exe()?);
            if !problems.is_empty() {
                for p in &problems {
                    println!("{}: {p}", file.display());
                }
                return Ok(ExitCode::from(1));
            }
            match &config.cluster {
                None => println!("{}: ok (agents only; no [cluster] section)", file.display()),
                Some(c) => {
                    let b = c.spec().bounds;
                    println!(
                        "{}: ok — cluster {}, config {:016x}, {} nodes, {} links, {} services; timing {}: a link is down after {} ms, survivors take over a lost node's services after {} ms without a fence confirmation",
                        file.display(),
                        c.cluster.name,
                        c.fingerprint,
                        c.nodes.len(),
                        c.spec().links,
                        c.services.len(),
                        c.cluster.timing,
                        b.membership.link_timeout.as_millis(),
                        b.fence_wait().as_millis()
                    );
                    let arithmetic = c.spec().quorum.arithmetic();
                    for line in &arithmetic.lines {
                        println!("{line}");
                    }
                    for w in &arithmetic.warnings {
                        println!("WARNING: {w}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
