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
//!
//! With `primary_host` set, the resource is one replica of a streaming-replication
//! cluster (a `promotable` service): `start` starts a standby that streams from
//! `primary_host` (rewinding a former primary with `pg_rewind` first), `promote`
//! is `pg_promote()`, `demote` restarts it as a standby, and the monitor reports
//! the promotion score: the timeline and log position, and on the primary the
//! position its synchronous standbys confirmed (see replication.rs).

mod params;
mod probe;
mod replication;
mod server;

use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Promotion, Request, ResourceAgent, service,
};
use params::Settings;

struct Postgresql;

impl ResourceAgent for Postgresql {
    fn metadata(&self) -> Metadata {
        use ParamType::{Boolean, Integer, String};
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
                       directory on the `filesystem` resource before this one. For \
                       streaming replication, set primary_host to the service address \
                       and use a promotable service: every node runs a standby, the \
                       most up-to-date one is promoted, a former primary rejoins with \
                       pg_rewind."
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
                    "passfile",
                    String,
                    false,
                    Some(""),
                    "libpq password file (HOST:PORT:DATABASE:USER:PASSWORD lines, mode 600, \
                     owned by user) for the connections to primary_host: the standbys' stream, \
                     pg_rewind, pg_basebackup and the history check (empty: none, e.g. trust)",
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
                    "Where the server's output goes; empty: PGDATA/baton-postgresql.log, \
                     or PGDATA.log beside it with primary_host (pg_rewind copies PGDATA)",
                ),
                ParamSpec::new(
                    "primary_host",
                    String,
                    false,
                    Some(""),
                    "Streaming replication: the address standbys stream from (the service \
                     address that follows the promoted instance); empty: one server",
                ),
                ParamSpec::new(
                    "replication_user",
                    String,
                    false,
                    Some("postgres"),
                    "Role standbys and pg_rewind connect to primary_host as",
                ),
                ParamSpec::new(
                    "rebuild_on_rewind_failure",
                    Boolean,
                    false,
                    Some("true"),
                    "When pg_rewind cannot rejoin this standby to the primary, empty pgdata \
                     and clone the primary with pg_basebackup (a standby holds nothing the \
                     primary lacks that was acknowledged)",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 10_000),
                ActionSpec::new(Action::Start, 120_000),
                ActionSpec::new(Action::Stop, 120_000),
                ActionSpec::monitor(20_000, 10_000),
                ActionSpec::new(Action::Promote, 60_000),
                ActionSpec::new(Action::Demote, 120_000),
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
        if settings.primary_host.is_some() {
            replication::finish_interrupted_clone(req, &settings, &install)?;
        }
        settings.check_data_directory(&install)?;
        if !service::processes(req).is_empty() {
            // Started before (start is idempotent): wait until it answers.
            return server::wait_until_ready(req, &settings, None);
        }
        if settings.primary_host.is_some() {
            replication::prepare_standby(req, &settings, &install)?;
        }
        server::start(req, &settings, &install)
    }

    fn promote(&self, req: &Request) -> Result<(), AgentError> {
        let settings = replication::settings(req, Action::Promote)?;
        replication::promote(req, &settings)
    }

    fn demote(&self, req: &Request) -> Result<(), AgentError> {
        let settings = replication::settings(req, Action::Demote)?;
        if replication::role(&settings, req.context.timeout()) == Some(probe::Role::Replica) {
            return Ok(());
        }
        // A primary restarts as a standby: a fast shutdown streams its last
        // records to the standbys, so it can follow whichever is promoted next.
        server::stop(req, &settings)?;
        let install = settings.check_installation()?;
        replication::prepare_standby(req, &settings, &install)?;
        server::start(req, &settings, &install)
    }

    fn promotion_score(&self, req: &Request) -> Result<Option<Promotion>, AgentError> {
        let settings = Settings::read(req)?;
        if settings.primary_host.is_none() {
            return Ok(None);
        }
        replication::score(&settings, req.context.timeout())
            .map(Some)
            .map_err(|e| AgentError::generic(format!("postgres runs but {e}")))
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
            probe::Role::Primary if settings.primary_host.is_some() => MonitorState::Promoted,
            probe::Role::Primary => MonitorState::Running,
            probe::Role::Replica => {
                if settings.primary_host.is_some() {
                    replication::check_following(req, &settings)?;
                }
                MonitorState::Running
            }
        })
    }
}

baton_agent_abi::export_agent!(Postgresql);
