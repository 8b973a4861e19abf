//! Streaming replication: every node runs a standby that streams from
//! `primary_host` (the service address, which follows the promoted instance),
//! one is promoted with `pg_promote()`, and a former primary rejoins as a
//! standby after `pg_rewind` has cut off the records nobody acknowledged.
//!
//! The promotion score is the timeline (generation) and the log position a
//! server holds: on a standby the newest timeline it knows (its WAL receiver's,
//! its last checkpoint's, or the newest history file it fetched) and what it has
//! received and flushed; on the primary its timeline and what it has flushed. The primary also reports the acknowledged position: with
//! synchronous replication (`synchronous_standby_names` set and
//! `synchronous_commit` on, remote_write or remote_apply) the highest position its
//! synchronous standbys confirmed, the most a commit can have been acknowledged
//! at; with asynchronous replication its own flushed position, as every local
//! commit is acknowledged.

use crate::params::{Install, Settings};
use crate::probe::{self, Role, describe};
use baton_plugin_api::{Action, AgentError, Promotion, Request};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a standby may go without streaming, while `primary_host` runs as a
/// primary, before its monitor fails it (its restart rewinds it and reconnects).
const NOT_FOLLOWING_FOR: Duration = Duration::from_secs(20);

/// Since when each resource's standby has not been streaming.
static NOT_STREAMING: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// The file beside the data directory that says its standby stopped streaming
/// for good (the monitor failed it): the next start clones the primary instead
/// of rewinding, since a rewind that finds nothing to cut cannot bring back WAL
/// the primary no longer has. Beside it, not in it: it outlives the agent's
/// process, and a clone empties the data directory.
fn stuck_marker(settings: &Settings) -> std::path::PathBuf {
    beside_pgdata(settings, ".baton-not-streaming")
}

/// The file beside `pgdata` that says a clone of the primary into it began and
/// did not finish: the directory is empty or partial, and only another clone
/// makes it a standby.
pub fn cloning_marker(settings: &Settings) -> std::path::PathBuf {
    beside_pgdata(settings, ".baton-cloning")
}

fn beside_pgdata(settings: &Settings, suffix: &str) -> std::path::PathBuf {
    let mut name = settings.pgdata.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Finish a clone of the primary that an earlier start began (it ran past its
/// deadline, or its node died): clone again when the primary answers; else
/// fail without touching anything, saying so.
pub fn finish_interrupted_clone(
    req: &Request,
    settings: &Settings,
    install: &Install,
) -> Result<(), AgentError> {
    let marker = cloning_marker(settings);
    if !marker.exists() {
        return Ok(());
    }
    let host = settings.primary_host.as_deref().unwrap_or_default();
    eprintln!(
        "{}: a clone of the primary into {} did not finish ({} is there); cloning it again",
        req.context.resource,
        settings.pgdata.display(),
        marker.display()
    );
    rebuild(settings, install).map_err(|e| {
        AgentError::generic(format!(
            "{}; {} holds an unfinished clone of the primary at {host} and is cloned again once \
             a primary answers there",
            e.reason,
            settings.pgdata.display()
        ))
    })
}

/// The settings of a replicated resource; promote and demote need `primary_host`.
pub fn settings(req: &Request, action: Action) -> Result<Settings, AgentError> {
    let settings = Settings::read(req)?;
    if settings.primary_host.is_none() {
        return Err(AgentError::misconfigured(format!(
            "{action} needs streaming replication: set primary_host to the service address \
             and use strategy = \"promotable\" (a single server is never promoted)"
        )));
    }
    Ok(settings)
}

/// The `-c` settings a replicated server starts with: where to stream from, and
/// what pg_rewind and a quick reconnection after a failover need.
pub fn server_options(req: &Request, settings: &Settings) -> Vec<String> {
    let Some(host) = &settings.primary_host else {
        return Vec::new();
    };
    let passfile = settings.passfile.as_ref().map_or(String::new(), |f| {
        let quoted = f
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        format!(" passfile='{quoted}'")
    });
    vec![
        // TCP keepalives and a user timeout: a connection to a primary that
        // vanished (powered off, cut off) fails within seconds, not at the
        // kernel's retransmission limit.
        format!(
            "primary_conninfo=host={host} port={} user={} application_name={} connect_timeout=2 \
             keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=3 tcp_user_timeout=3000{passfile}",
            settings.port, settings.replication_user, req.context.node
        ),
        "wal_log_hints=on".into(),
        "hot_standby=on".into(),
        "wal_retrieve_retry_interval=1s".into(),
        "recovery_target_timeline=latest".into(),
        // After a failover the service address answers from the new primary,
        // which resets the old stream as soon as the standby sends on it: a
        // status every second (default 10 s) makes that within a second. A
        // primary that answers nothing is given up after 3 s (default 60 s);
        // the receiver pings it at half that, so an idle primary is not.
        "wal_receiver_status_interval=1s".into(),
        "wal_receiver_timeout=3s".into(),
    ]
}

/// The local server's role, if it answers.
pub fn role(settings: &Settings, timeout: Duration) -> Option<Role> {
    probe::check(settings, timeout, false).ok()
}

/// Make the data directory a standby's: when `primary_host` answers as a primary,
/// rewind this directory to its history first (a no-op unless this server wrote
/// records the primary does not have: a former primary that crashed or was cut
/// off); then `standby.signal`.
pub fn prepare_standby(
    req: &Request,
    settings: &Settings,
    install: &Install,
) -> Result<(), AgentError> {
    let signal = settings.pgdata.join("standby.signal");
    let host = settings.primary_host.as_deref().unwrap_or_default();
    // pg_rewind's crash recovery refuses a lock file left by a dead server.
    crate::server::remove_stale_lock(settings)?;
    let stuck = stuck_marker(settings);
    if primary_answers(settings, Duration::from_secs(3)) && settings.rebuild && stuck.exists() {
        eprintln!(
            "{}: this standby did not stream after its last start (the WAL it needs may be gone \
             from the primary: size wal_keep_size for it); cloning the primary at {host} \
             (rebuild_on_rewind_failure)",
            req.context.resource
        );
        let _ = std::fs::remove_file(&signal);
        rebuild(settings, install)?;
        let _ = std::fs::remove_file(&stuck);
    } else if primary_answers(settings, Duration::from_secs(3)) {
        // pg_rewind's crash recovery runs a single-user server, which refuses standby mode.
        let _ = std::fs::remove_file(&signal);
        match rewind(req, settings, install).and_then(|()| same_history(settings, install)) {
            Ok(()) => eprintln!(
                "{}: rewound from the primary at {host}",
                req.context.resource
            ),
            Err(e) if settings.rebuild => {
                eprintln!(
                    "{}: {}; cloning the primary at {host} instead (rebuild_on_rewind_failure)",
                    req.context.resource, e.reason
                );
                rebuild(settings, install)?;
            }
            Err(e) => return Err(e),
        }
    } else {
        eprintln!(
            "{}: no primary answers at {host}; starting as a standby without pg_rewind",
            req.context.resource
        );
    }
    std::fs::write(&signal, b"")
        .and_then(|()| std::os::unix::fs::chown(&signal, Some(install.uid), Some(install.gid)))
        .map_err(|e| AgentError::generic(format!("cannot write {}: {e}", signal.display())))
}

/// After pg_rewind: prove this data directory's history is the primary's by
/// its latest checkpoint record, byte for byte, in the primary's WAL. A copy
/// taken with `pg_basebackup` while the primary ran is recovered by pg_rewind
/// with records of its own on the primary's timeline, and pg_rewind then finds
/// "no rewind required": this catches it (a record the primary does not have,
/// or a checkpoint beyond what the primary flushed). When the primary no
/// longer has that WAL nothing is proven either way, and streaming decides.
fn same_history(settings: &Settings, install: &Install) -> Result<(), AgentError> {
    let (timeline, lsn, segment) = last_checkpoint(settings, install)?;
    let file = format!(
        "{timeline:08X}{:08X}{:08X}",
        lsn >> 32,
        (lsn & 0xFFFF_FFFF) / segment
    );
    let offset = lsn % segment;
    const LEN: u64 = 64;
    let mut local = vec![0u8; LEN as usize];
    let read = std::fs::File::open(settings.pgdata.join("pg_wal").join(&file))
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut local, offset));
    if read.is_err() {
        return Ok(());
    }
    let Some(mut client) = primary_client(settings, Duration::from_secs(5)) else {
        return Ok(());
    };
    let Ok(row) = client.query_one(
        "SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint,
                pg_read_binary_file('pg_wal/' || $1, $2, $3, true)",
        &[&file, &(offset as i64), &(LEN as i64)],
    ) else {
        return Ok(());
    };
    let flushed: i64 = row.try_get(0).unwrap_or(i64::MAX);
    let theirs: Option<Vec<u8>> = row.try_get(1).unwrap_or(None);
    let at = format!(
        "{:X}/{:X} (timeline {timeline})",
        lsn >> 32,
        lsn & 0xFFFF_FFFF
    );
    let why = if (flushed as u64) < lsn + LEN {
        format!("its latest checkpoint at {at} lies beyond what the primary has flushed")
    } else if theirs.as_deref().is_some_and(|t| t != local.as_slice()) {
        format!("its latest checkpoint record at {at} is not the primary's")
    } else {
        return Ok(());
    };
    Err(AgentError::generic(format!(
        "{} diverged from the primary: {why} (a copy recovered on its own, e.g. a plain \
         pg_basebackup started while the primary ran)",
        settings.pgdata.display()
    )))
}

/// The latest checkpoint's timeline and location and the WAL segment size, from
/// `pg_controldata`.
fn last_checkpoint(settings: &Settings, install: &Install) -> Result<(u32, u64, u64), AgentError> {
    let out = Command::new(install.bindir.join("pg_controldata"))
        .arg("-D")
        .arg(&settings.pgdata)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| AgentError::generic(format!("cannot run pg_controldata: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let lsn = field("Latest checkpoint location:").and_then(|v| {
        let (hi, lo) = v.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
    });
    let timeline = field("Latest checkpoint's TimeLineID:").and_then(|v| v.parse().ok());
    let segment = field("Bytes per WAL segment:").and_then(|v| v.parse().ok());
    match (timeline, lsn, segment) {
        (Some(t), Some(l), Some(s)) if s > 0 => Ok((t, l, s)),
        _ => Err(AgentError::generic(format!(
            "pg_controldata of {} gave no latest checkpoint: {}",
            settings.pgdata.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// A connection to `primary_host` as the replication user.
fn primary_client(settings: &Settings, timeout: Duration) -> Option<postgres::Client> {
    let host = settings.primary_host.as_ref()?;
    let mut config = postgres::Config::new();
    config
        .host(host)
        .port(settings.port)
        .user(&settings.replication_user)
        .dbname(&settings.dbname)
        .application_name("baton-monitor")
        .connect_timeout(timeout);
    if let Some(password) = settings.password_for(
        host,
        settings.port,
        &settings.dbname,
        &settings.replication_user,
    ) {
        config.password(password);
    }
    config.connect(postgres::NoTls).ok()
}

/// Whether `primary_host` accepts a connection and is not in recovery.
fn primary_answers(settings: &Settings, timeout: Duration) -> bool {
    let Some(mut client) = primary_client(settings, timeout) else {
        return false;
    };
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .and_then(|row| row.try_get::<_, bool>(0))
        .is_ok_and(|in_recovery| !in_recovery)
}

/// Run PostgreSQL tool `tool` (from `bindir`) on the data directory as the
/// server's user; its stderr on one line when it fails.
fn as_user(
    settings: &Settings,
    install: &Install,
    tool: &str,
    args: &[String],
) -> Result<Result<(), String>, AgentError> {
    let mut cmd = Command::new(install.bindir.join(tool));
    cmd.args(args)
        .current_dir(&settings.pgdata)
        .uid(install.uid)
        .gid(install.gid)
        .env("HOME", &settings.pgdata);
    if let Some(file) = &settings.passfile {
        cmd.env("PGPASSFILE", file);
    }
    let out = cmd.output().map_err(|e| {
        AgentError::not_installed(format!(
            "cannot run {}/{tool}: {e}",
            install.bindir.display()
        ))
    })?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(Err(format!(
        "{}: {}",
        out.status,
        text.trim()
            .lines()
            .filter(|l| !l.contains("Command was"))
            .collect::<Vec<_>>()
            .join(" | ")
    )))
}

/// `pg_rewind` from `primary_host`, as the server's user.
fn rewind(req: &Request, settings: &Settings, install: &Install) -> Result<(), AgentError> {
    let host = settings.primary_host.as_deref().unwrap_or_default();
    let args = [
        "-D".to_string(),
        settings.pgdata.display().to_string(),
        format!(
            "--source-server=host={host} port={} user={} dbname={} connect_timeout=5",
            settings.port, settings.replication_user, settings.dbname
        ),
    ];
    as_user(settings, install, "pg_rewind", &args)?.map_err(|e| {
        AgentError::generic(format!(
            "pg_rewind of {} from {host} failed ({e}); {} stays stopped until it can rejoin",
            settings.pgdata.display(),
            req.context.resource
        ))
    })
}

/// Empty the data directory and clone the primary into it with
/// `pg_basebackup`, as the server's user: for a standby pg_rewind cannot bring
/// back (its own WAL unreadable before the divergence, or the WAL it needs
/// already gone from the primary).
fn rebuild(settings: &Settings, install: &Install) -> Result<(), AgentError> {
    let host = settings.primary_host.as_deref().unwrap_or_default();
    // A primary that died since the rewind began must not cost this standby
    // its data: it may be the one to promote.
    if !primary_answers(settings, Duration::from_secs(3)) {
        return Err(AgentError::generic(format!(
            "no primary answers at {host} to clone {} from; it stays as it is",
            settings.pgdata.display()
        )));
    }
    let marker = cloning_marker(settings);
    std::fs::write(&marker, b"")
        .map_err(|e| AgentError::generic(format!("cannot write {}: {e}", marker.display())))?;
    let entries = std::fs::read_dir(&settings.pgdata).map_err(|e| {
        AgentError::generic(format!("cannot list {}: {e}", settings.pgdata.display()))
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| {
            AgentError::generic(format!("cannot empty {}: {e}", settings.pgdata.display()))
        })?;
    }
    let args: Vec<String> = [
        "-D",
        &settings.pgdata.display().to_string(),
        "-h",
        host,
        "-p",
        &settings.port.to_string(),
        "-U",
        &settings.replication_user,
        "-X",
        "stream",
        "-c",
        "fast",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    as_user(settings, install, "pg_basebackup", &args)?.map_err(|e| {
        AgentError::generic(format!(
            "pg_basebackup of {} from {host} failed ({e})",
            settings.pgdata.display()
        ))
    })?;
    std::fs::remove_file(&marker)
        .map_err(|e| AgentError::generic(format!("cannot remove {}: {e}", marker.display())))
}

/// `pg_promote()`, waiting up to the action's time.
pub fn promote(req: &Request, settings: &Settings) -> Result<(), AgentError> {
    let timeout = req.context.timeout();
    let mut client = probe::connect(settings, timeout)
        .map_err(|e| AgentError::generic(format!("cannot promote: postgres {e}")))?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .and_then(|row| row.try_get(0))
        .map_err(|e| AgentError::generic(format!("cannot promote: {}", describe(&e))))?;
    if !in_recovery {
        return Ok(());
    }
    let wait_s = (timeout.as_secs().saturating_sub(2)).max(1) as i32;
    let promoted: bool = client
        .query_one("SELECT pg_promote(true, $1)", &[&wait_s])
        .and_then(|row| row.try_get(0))
        .map_err(|e| AgentError::generic(format!("pg_promote() failed: {}", describe(&e))))?;
    if promoted {
        // A checkpoint puts the new timeline in the control file now, not when
        // the promotion's own (spread) checkpoint ends: pg_rewind of a former
        // primary reads it from here.
        client.batch_execute("CHECKPOINT").map_err(|e| {
            AgentError::generic(format!("CHECKPOINT after promotion: {}", describe(&e)))
        })
    } else {
        Err(AgentError::generic(format!(
            "pg_promote() did not finish within {wait_s} s; see {}",
            settings.log_file.display()
        )))
    }
}

/// The promotion score of the local server.
pub fn score(settings: &Settings, timeout: Duration) -> Result<Promotion, String> {
    let mut client = probe::connect(settings, timeout)?;
    let ask = |client: &mut postgres::Client, sql: &str| {
        client
            .query_one(sql, &[])
            .map_err(|e| format!("did not answer a replication query: {}", describe(&e)))
    };
    let in_recovery: bool = ask(&mut client, "SELECT pg_is_in_recovery()")?
        .try_get(0)
        .map_err(|e| e.to_string())?;
    let row = if in_recovery {
        ask(
            &mut client,
            "SELECT GREATEST((SELECT received_tli FROM pg_stat_wal_receiver),
                             (pg_control_checkpoint()).timeline_id,
                             (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int)
                                FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\\.history$'))::bigint,
                    (GREATEST(COALESCE(pg_last_wal_receive_lsn(), '0/0'),
                              COALESCE(pg_last_wal_replay_lsn(), '0/0')) - '0/0')::bigint,
                    NULL::bigint",
        )?
    } else {
        ask(
            &mut client,
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint,
                    (pg_current_wal_flush_lsn() - '0/0')::bigint,
                    CASE WHEN current_setting('synchronous_standby_names') = ''
                           OR current_setting('synchronous_commit') IN ('off', 'local')
                         THEN (pg_current_wal_flush_lsn() - '0/0')::bigint
                         ELSE (SELECT (max(CASE current_setting('synchronous_commit')
                                             WHEN 'remote_write' THEN write_lsn
                                             WHEN 'remote_apply' THEN replay_lsn
                                             ELSE flush_lsn END) - '0/0')::bigint
                               FROM pg_stat_replication
                               WHERE sync_state IN ('sync', 'quorum'))
                    END",
        )?
    };
    let get =
        |k: usize| -> Result<Option<i64>, String> { row.try_get(k).map_err(|e| e.to_string()) };
    Ok(Promotion {
        generation: get(0)?.unwrap_or(0) as u64,
        position: get(1)?.unwrap_or(0) as u64,
        acknowledged: get(2)?.map(|a| a as u64),
    })
}

/// A standby's monitor: fail it when it has not streamed for
/// [`NOT_FOLLOWING_FOR`] while `primary_host` runs as a primary (it diverged, or
/// the WAL it needs is gone); its restart clones the primary (or, without
/// `rebuild_on_rewind_failure`, rewinds it again).
pub fn check_following(req: &Request, settings: &Settings) -> Result<(), AgentError> {
    let streaming = probe::connect(settings, req.context.timeout())
        .ok()
        .and_then(|mut c| {
            c.query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                .ok()
        })
        .flatten()
        .is_some_and(|row| row.try_get::<_, String>(0).is_ok_and(|s| s == "streaming"));
    let mut since = NOT_STREAMING.lock().unwrap_or_else(|e| e.into_inner());
    let since = since.get_or_insert_with(HashMap::new);
    if streaming {
        since.remove(&req.context.resource);
        let _ = std::fs::remove_file(stuck_marker(settings));
        return Ok(());
    }
    let first = *since
        .entry(req.context.resource.clone())
        .or_insert_with(Instant::now);
    if first.elapsed() >= NOT_FOLLOWING_FOR && primary_answers(settings, Duration::from_secs(2)) {
        since.remove(&req.context.resource);
        // Its start rewound it already: the restart clones the primary.
        let _ = std::fs::write(stuck_marker(settings), b"");
        return Err(AgentError::generic(format!(
            "this standby has not streamed from {} for {} s while it runs as primary; \
             restarting it {}",
            settings.primary_host.as_deref().unwrap_or_default(),
            first.elapsed().as_secs(),
            if settings.rebuild {
                "clones the primary (pg_basebackup): the rewind at its start did not bring \
                 it back, so the WAL it needs may be gone from the primary"
            } else {
                "rewinds it (pg_rewind) and reconnects (rebuild_on_rewind_failure = false: \
                 it is never cloned)"
            }
        )));
    }
    Ok(())
}
