//! Reading parameters the same way in every built-in agent: the value the
//! administrator set, else the default the meta-data advertises.

use baton_plugin_api::{AgentError, Metadata, Request};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn text<'a>(meta: &'a Metadata, req: &'a Request, name: &str) -> Option<&'a str> {
    req.params
        .get(name)
        .map(String::as_str)
        .or_else(|| meta.parameter(name).and_then(|p| p.default.as_deref()))
        .filter(|v| !v.is_empty())
}

pub(crate) fn required<'a>(
    meta: &'a Metadata,
    req: &'a Request,
    name: &str,
) -> Result<&'a str, AgentError> {
    text(meta, req, name).ok_or_else(|| {
        AgentError::misconfigured(format!(
            "parameter {name} is required by agent {}",
            meta.name
        ))
    })
}

/// A whole-number parameter, at most `max` when given.
pub(crate) fn whole(
    meta: &Metadata,
    req: &Request,
    name: &str,
    max: Option<u64>,
) -> Result<u64, AgentError> {
    let raw = required(meta, req, name)?;
    match (raw.trim().parse::<u64>(), max) {
        (Ok(n), Some(max)) if n <= max => Ok(n),
        (Ok(n), None) => Ok(n),
        (_, Some(max)) => Err(AgentError::misconfigured(format!(
            "{name}: {raw:?} is not a number from 0 to {max}"
        ))),
        (_, None) => Err(AgentError::misconfigured(format!(
            "{name}: {raw:?} is not a whole number"
        ))),
    }
}

pub(crate) fn millis(meta: &Metadata, req: &Request, name: &str) -> Result<Duration, AgentError> {
    let raw = required(meta, req, name)?;
    raw.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| {
            AgentError::misconfigured(format!(
                "parameter {name}: {raw:?} is not a number of milliseconds"
            ))
        })
}

/// Where an agent keeps its per-resource state file (`<state_dir>/<node>.<resource>.<ext>`).
/// The node is part of the name because several nodes may share a filesystem (a
/// lab on one machine, containers).
pub(crate) fn state_file(meta: &Metadata, req: &Request, ext: &str) -> Result<PathBuf, AgentError> {
    let dir = PathBuf::from(required(meta, req, "state_dir")?);
    let safe: String = format!("{}.{}", req.context.node, req.context.resource)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(dir.join(format!("{safe}.{ext}")))
}

pub(crate) fn ensure_dir(path: &std::path::Path) -> Result<(), AgentError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            AgentError::permission(format!(
                "cannot create state directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}
