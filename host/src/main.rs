use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = baton::cli::Cli::parse();
    if cli.quits_on_closed_stdout() {
        // SAFETY: restoring the default action of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Some(host) = cli.agent_run_host()
        && std::env::var_os(baton_plugin_api::service::HOST_VAR).is_none()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var(baton_plugin_api::service::HOST_VAR, host) };
    }
    // BATON_LOG=debug shows every agent call with its deadline and result. By
    // default only warnings, except that `agent run` and `agent test` show what
    // the agent itself logs at info, as a vendor trying it expects, and the
    // daemon logs its decisions.
    let default = if cli.tries_an_agent() {
        // What the agent logs; the calls' failures are in the command's report.
        "warn,baton::agent=info,baton::agent::host=warn,baton::agent::backend=error"
    } else if cli.is_daemon() {
        // Every decision, with its reason (what the event history records).
        "warn,baton=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match baton::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::from(2)
        }
    }
}
