//! The PostgreSQL adapter: a baton native agent that runs one PostgreSQL server
//! on a data directory and watches it through a real client connection.
//!
//! - `start` checks the installation and the data directory, removes a lock file
//!   left by a server that died with its node, starts `postgres` as the
//!   configured user, detached and tagged with the resource
//!   (`service::start_detached`), and returns once it answers a query.
//! - `stop` is `pg_ctl stop`'s escalation: a fast shutdown (SIGINT to the
//!   postmaster), then an immediate one (SIGQUIT) when half the stop's time is
//!   gone, then SIGKILL to whatever of the resource is left.
//! - `monitor` connects and queries (`pg_is_in_recovery()`); at depth 1 it also
//!   writes (a row in `baton_monitor`) on a primary, so a full disk or a broken WAL
//!   shows as a failure.

mod params;
mod probe;
mod server;

use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent, service,
};
use params::Settings;

struct Postgresql;

impl ResourceAgent for Postgresql {
    fn metadata(&self) -> Metadata {
        use ParamType::{Integer, String};
        Metadata {
            name: "postgresql".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "A PostgreSQL server on a data directory".into(),
            longdesc: "Runs `postgres` on `pgdata` as `user`, detached from the agent and \
                       tagged with the resource. Start returns once the server answers a \
                       query; stop is a fast shutdown, then an immediate one, then SIGKILL; \
                       monitor connects and queries (depth 1 also writes a row in \
                       `baton_monitor` on a primary). For a shared disk, put the data \
                       directory on the `filesystem` resource before this one."
                .into(),
            parameters: vec![
                ParamSpec::new(
                    "pgdata",
                    String,
                    true,
                    None,
                    "The data directory (absolute path)",
                ),
                ParamSpec::new(
                    "bindir",
                    String,
                    false,
                    Some(""),
                    "Directory with `postgres`; empty: the newest /usr/lib/postgresql/*/bin",
                ),
                ParamSpec::new(
                    "port",
                    Integer,
                    false,
                    Some("5432"),
                    "TCP port (and socket name)",
                ),
                ParamSpec::new(
                    "socket_dir",
                    String,
                    false,
                    Some("/var/run/postgresql"),
                    "Directory of the server's unix socket (the monitor connects there)",
                ),
                ParamSpec::new(
                    "listen_addresses",
                    String,
                    false,
                    Some("*"),
                    "`listen_addresses` of the server",
                ),
                ParamSpec::new(
                    "user",
                    String,
                    false,
                    Some("postgres"),
                    "OS user the server runs as",
                ),
                ParamSpec::new(
                    "monitor_user",
                    String,
                    false,
                    Some("postgres"),
                    "Database role the monitor connects as",
                ),
                ParamSpec::new(
                    "dbname",
                    String,
                    false,
                    Some("postgres"),
                    "Database the monitor uses",
                ),
                ParamSpec::new(
                    "password_file",
                    String,
                    false,
                    Some(""),
                    "File holding the monitor role's password (empty: none, e.g. peer or trust)",
                ),
                ParamSpec::new(
                    "options",
                    String,
                    false,
                    Some(""),
                    "Extra server settings, NAME=VALUE separated by spaces (`-c` each)",
                ),
                ParamSpec::new(
                    "log_file",
                    String,
                    false,
                    Some(""),
                    "Where the server's output goes; empty: PGDATA/baton-postgresql.log",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 10_000),
                ActionSpec::new(Action::Start, 120_000),
                ActionSpec::new(Action::Stop, 120_000),
                ActionSpec::monitor(20_000, 10_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let settings = Settings::read(req)?;
        if req.depth > 0 {
            settings.check_installation()?;
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let settings = Settings::read(req)?;
        let install = settings.check_installation()?;
        settings.check_data_directory(&install)?;
        if !service::processes(req).is_empty() {
            // Started before (start is idempotent): wait until it answers.
            return server::wait_until_ready(req, &settings, None);
        }
        server::start(req, &settings, &install)
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let settings = Settings::read(req)?;
        server::stop(req, &settings)
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let settings = Settings::read(req)?;
        if service::processes(req).is_empty() {
            return Ok(MonitorState::NotRunning);
        }
        let role = probe::check(&settings, req.context.timeout(), req.depth > 0)
            .map_err(|e| AgentError::generic(format!("postgres runs but {e}")))?;
        Ok(match role {
            probe::Role::Primary | probe::Role::Replica => MonitorState::Running,
        })
    }
}

baton_agent_abi::export_agent!(Postgresql);
