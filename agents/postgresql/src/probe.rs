//! The monitor's connection: a real client session over the server's unix
//! socket, a query, and at depth 1 a write.

use crate::params::Settings;
use std::time::Duration;

/// What the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// In recovery (a standby following a primary).
    Replica,
}

/// A session with the local server over its unix socket, as the monitor role,
/// with statements bounded by `timeout`.
pub fn connect(settings: &Settings, timeout: Duration) -> Result<postgres::Client, String> {
    let mut config = postgres::Config::new();
    config
        .host_path(&settings.socket_dir)
        .port(settings.port)
        .user(&settings.monitor_user)
        .dbname(&settings.dbname)
        .application_name("baton-monitor")
        .connect_timeout(timeout.mul_f64(0.5).max(Duration::from_millis(100)));
    if let Some(file) = &settings.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
        config.password(password.trim_end_matches(['\n', '\r']));
    }
    let mut client = config.connect(postgres::NoTls).map_err(|e| {
        format!(
            "does not accept a connection on {}/.s.PGSQL.{} as {}: {}",
            settings.socket_dir.display(),
            settings.port,
            settings.monitor_user,
            describe(&e)
        )
    })?;
    let ms = timeout.as_millis().max(1);
    client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .map_err(|e| format!("refused a setting: {}", describe(&e)))?;
    Ok(client)
}

/// Connect, ask whether the server is in recovery, and with `write` (on a
/// primary) update a row of `baton_monitor`. The error says what failed.
pub fn check(settings: &Settings, timeout: Duration, write: bool) -> Result<Role, String> {
    let mut client = connect(settings, timeout)?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .and_then(|row| row.try_get(0))
        .map_err(|e| format!("did not answer a query: {}", describe(&e)))?;
    if in_recovery {
        return Ok(Role::Replica);
    }
    if write {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS baton_monitor (id int PRIMARY KEY, at timestamptz NOT NULL);
                 INSERT INTO baton_monitor VALUES (1, now())
                   ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .map_err(|e| format!("failed a write (depth 1): {}", describe(&e)))?;
    }
    Ok(Role::Primary)
}

/// The server's own message when there is one (`FATAL: the database system is
/// starting up`), else the client's.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}
