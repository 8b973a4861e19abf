//! The resource's parameters, read and checked, and the checks of this node's
//! installation and data directory.

use baton_plugin_api::{AgentError, Request, service};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The parameters of one resource, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub pgdata: PathBuf,
    pub bindir: Option<PathBuf>,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    pub user: String,
    pub monitor_user: String,
    pub dbname: String,
    pub password_file: Option<PathBuf>,
    /// `NAME=VALUE` server settings.
    pub options: Vec<String>,
    pub log_file: PathBuf,
    /// Streaming replication: the address replicas stream from (the promoted
    /// instance's service address); `None`: a single server (shared disk).
    pub primary_host: Option<String>,
    /// The role replicas connect as (REPLICATION, and for pg_rewind a superuser).
    pub replication_user: String,
    /// libpq password file for the connections to `primary_host`.
    pub passfile: Option<PathBuf>,
    /// When pg_rewind cannot rejoin a standby, clone it afresh from the primary.
    pub rebuild: bool,
}

/// This node's PostgreSQL installation.
#[derive(Clone, Debug)]
pub struct Install {
    /// Where `postgres` is.
    pub bindir: PathBuf,
    /// Its major version (`15`).
    pub major: String,
    /// The OS user's uid and gid.
    pub uid: u32,
    pub gid: u32,
}

fn text<'a>(req: &'a Request, name: &str) -> &'a str {
    // Parameters with a default always arrive (the host fills them in).
    req.params.get(name).map(String::as_str).unwrap_or_default()
}

fn absolute(name: &str, value: &str) -> Result<PathBuf, AgentError> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(AgentError::misconfigured(format!(
            "parameter {name} = {value:?} must be an absolute path"
        )))
    }
}

impl Settings {
    /// Read and check the parameters (no look at this node).
    pub fn read(req: &Request) -> Result<Settings, AgentError> {
        let pgdata = absolute("pgdata", text(req, "pgdata"))?;
        let port: u16 = text(req, "port")
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                AgentError::misconfigured(format!(
                    "parameter port = {:?} is not a TCP port (1-65535)",
                    text(req, "port")
                ))
            })?;
        let optional_path = |name: &str| match text(req, name) {
            "" => Ok(None),
            v => absolute(name, v).map(Some),
        };
        let options: Vec<String> = text(req, "options")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if let Some(bad) = options.iter().find(|o| !o.contains('=')) {
            return Err(AgentError::misconfigured(format!(
                "parameter options: {bad:?} is not NAME=VALUE (e.g. synchronous_commit=on)"
            )));
        }
        let user = text(req, "user").to_owned();
        if user.is_empty() || user == "root" {
            return Err(AgentError::misconfigured(
                "parameter user: give the OS user the server runs as (PostgreSQL refuses root), e.g. postgres",
            ));
        }
        let primary_host = Some(text(req, "primary_host").trim())
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        // pg_rewind copies every file of the source's data directory: a
        // replica's log lives beside its data directory, not in it.
        let default_log = if primary_host.is_some() {
            pgdata.with_extension("log")
        } else {
            pgdata.join("baton-postgresql.log")
        };
        Ok(Settings {
            log_file: optional_path("log_file")?.unwrap_or(default_log),
            bindir: optional_path("bindir")?,
            socket_dir: absolute("socket_dir", text(req, "socket_dir"))?,
            listen_addresses: text(req, "listen_addresses").to_owned(),
            monitor_user: text(req, "monitor_user").to_owned(),
            dbname: text(req, "dbname").to_owned(),
            password_file: optional_path("password_file")?,
            primary_host,
            replication_user: text(req, "replication_user").to_owned(),
            passfile: optional_path("passfile")?,
            rebuild: match text(req, "rebuild_on_rewind_failure") {
                "" | "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    return Err(AgentError::misconfigured(format!(
                        "parameter rebuild_on_rewind_failure = {other:?}: use true or false"
                    )));
                }
            },
            pgdata,
            port,
            user,
            options,
        })
    }

    /// The server binaries and the OS user on this node.
    pub fn check_installation(&self) -> Result<Install, AgentError> {
        let bindir = match &self.bindir {
            Some(dir) => dir.clone(),
            None => newest_bindir().ok_or_else(|| {
                AgentError::not_installed(
                    "no PostgreSQL server under /usr/lib/postgresql/*/bin on this node; \
                     install it (Debian: apt-get install postgresql) or set bindir",
                )
            })?,
        };
        let postgres = bindir.join("postgres");
        if !postgres.is_file() {
            return Err(AgentError::not_installed(format!(
                "{} is not installed on this node; install PostgreSQL or fix bindir",
                postgres.display()
            )));
        }
        let major = server_major(&postgres)?;
        let (uid, gid) = user_ids(&self.user)?;
        Ok(Install {
            bindir,
            major,
            uid,
            gid,
        })
    }

    /// The data directory is a cluster of this version, owned by the user.
    pub fn check_data_directory(&self, install: &Install) -> Result<(), AgentError> {
        let version_file = self.pgdata.join("PG_VERSION");
        // Node-local (the filesystem is not mounted here, the directory not
        // made on this node): the service may still run elsewhere.
        let version = std::fs::read_to_string(&version_file).map_err(|_| {
            AgentError::not_installed(format!(
                "pgdata {} is not a PostgreSQL cluster (no PG_VERSION); create it with initdb, \
                 or mount its filesystem first (put the filesystem resource before this one)",
                self.pgdata.display()
            ))
        })?;
        let version = version.trim();
        if version != install.major {
            return Err(AgentError::misconfigured(format!(
                "pgdata {} holds a PostgreSQL {version} cluster but {} is PostgreSQL {}; \
                 set bindir to a {version} installation or upgrade the cluster",
                self.pgdata.display(),
                install.bindir.display(),
                install.major
            )));
        }
        let meta = std::fs::metadata(&self.pgdata).map_err(|e| {
            AgentError::misconfigured(format!("pgdata {}: {e}", self.pgdata.display()))
        })?;
        if meta.uid() != install.uid {
            return Err(AgentError::misconfigured(format!(
                "pgdata {} is owned by uid {}, not by user {} (uid {}); \
                 chown -R {} {}",
                self.pgdata.display(),
                meta.uid(),
                self.user,
                install.uid,
                self.user,
                self.pgdata.display()
            )));
        }
        self.check_passfile(install)
    }

    /// The password file, when set, is one libpq reads as the server's user:
    /// owned by it, and neither group nor others may read it (libpq ignores
    /// such a file, and the standby's stream would fail to authenticate).
    fn check_passfile(&self, install: &Install) -> Result<(), AgentError> {
        let Some(file) = &self.passfile else {
            return Ok(());
        };
        let meta = std::fs::metadata(file).map_err(|e| {
            AgentError::misconfigured(format!(
                "parameter passfile: {}: {e}; write it as HOST:PORT:DATABASE:USER:PASSWORD lines \
                 (e.g. *:*:*:{}:secret)",
                file.display(),
                self.replication_user
            ))
        })?;
        if meta.uid() != install.uid || meta.mode() & 0o077 != 0 {
            return Err(AgentError::misconfigured(format!(
                "parameter passfile: {} must belong to {} and be private to it \
                 (libpq ignores it otherwise); chown {} {1} && chmod 600 {1}",
                file.display(),
                self.user,
                self.user
            )));
        }
        Ok(())
    }

    /// The password for `user` at `host`:`port`, database `db`, from the
    /// password file (libpq's `.pgpass` format: `*` matches anything, `\`
    /// escapes `:` and `\`; the first matching line wins).
    pub fn password_for(&self, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.passfile.as_ref()?).ok()?;
        pgpass_lookup(&text, host, port, db, user)
    }
}

/// The password in `text` (a `.pgpass` file) for `user` at `host`:`port`,
/// database `db`.
fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(pgpass_fields)
        .find(|f| {
            f.len() == 5
                && [host, port.as_str(), db, user]
                    .iter()
                    .zip(f)
                    .all(|(want, got)| got == "*" || got == want)
        })
        .map(|mut f| f.remove(4))
}

/// The fields of one `.pgpass` line, unescaped.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// The newest `/usr/lib/postgresql/N/bin` with a `postgres` in it.
fn newest_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The major version `postgres --version` reports ("postgres (PostgreSQL) 15.18 …").
fn server_major(postgres: &Path) -> Result<String, AgentError> {
    let out = Command::new(postgres)
        .arg("--version")
        .output()
        .map_err(|e| {
            AgentError::not_installed(format!("cannot run {}: {e}", postgres.display()))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| {
            let major = w.split('.').next()?;
            (w.contains('.') && major.parse::<u32>().is_ok()).then(|| major.to_owned())
        })
        .ok_or_else(|| {
            AgentError::not_installed(format!(
                "{} --version printed {text:?}, not a PostgreSQL version",
                postgres.display()
            ))
        })
}

/// uid and gid of an OS user.
fn user_ids(user: &str) -> Result<(u32, u32), AgentError> {
    service::user(user).map(|u| (u.uid, u.gid)).ok_or_else(|| {
        AgentError::misconfigured(format!(
            "parameter user: no OS user {user:?} on this node; create it or name the user that owns pgdata"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::pgpass_lookup;

    #[test]
    fn a_password_file_is_read_as_libpq_reads_it() {
        let file = "# the cluster's roles\n\
                    198.18.2.100:5432:postgres:monitor:m0n\n\
                    *:*:*:postgres:s\\:e\\\\cret\n\
                    *:*:*:postgres:second\n";
        let find = |host, port, user| pgpass_lookup(file, host, port, "postgres", user);
        assert_eq!(
            find("198.18.2.100", 5432, "monitor").as_deref(),
            Some("m0n")
        );
        assert_eq!(find("198.18.2.101", 5432, "monitor"), None);
        // Escaped ':' and '\\'; the first matching line wins.
        assert_eq!(
            find("198.18.2.100", 5433, "postgres").as_deref(),
            Some("s:e\\cret")
        );
    }
}
