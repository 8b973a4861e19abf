use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

/// Something an agent asks to be allowed to do outside its sandbox.
///
/// Written as a string: `exec:/usr/bin/pg_ctl`, `net:198.18.2.10:5432`,
/// `read:/etc/myapp`. An agent *requests* capabilities in its meta-data and the
/// administrator *grants* them in the config; only a capability that is both
/// requested and granted is usable, and the host checks it on every call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Run this program (absolute path), with any arguments.
    Exec(String),
    /// Open TCP connections to this `address:port`.
    Connect(String),
    /// Read files below this directory (absolute path).
    Read(String),
}

/// A capability string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capability {:?}: {} (write exec:/abs/program, net:ADDRESS:PORT or read:/abs/dir)",
            self.text, self.problem
        )
    }
}

impl std::error::Error for CapabilityError {}

impl FromStr for Capability {
    type Err = CapabilityError;

    fn from_str(text: &str) -> Result<Capability, CapabilityError> {
        let err = |problem: &str| CapabilityError {
            text: text.into(),
            problem: problem.into(),
        };
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| err("no kind before ':'"))?;
        let absolute = |v: &str| {
            let p = Path::new(v);
            p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
        };
        match kind {
            "exec" if absolute(value) => Ok(Capability::Exec(value.into())),
            "read" if absolute(value) => {
                let trimmed = value.trim_end_matches('/');
                Ok(Capability::Read(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                }))
            }
            "exec" | "read" => Err(err("the path must be absolute and must not contain '..'")),
            "net" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or_else(|| err("give ADDRESS:PORT"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(err("give ADDRESS:PORT with a numeric port"));
                }
                Ok(Capability::Connect(value.into()))
            }
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Exec(p) => write!(f, "exec:{p}"),
            Capability::Connect(a) => write!(f, "net:{a}"),
            Capability::Read(d) => write!(f, "read:{d}"),
        }
    }
}

impl Serialize for Capability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Capability, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The capabilities an agent may use: those it requested *and* the administrator
/// granted. Every sandboxed host call asks this object before acting.
///
/// Rationale: keeping the policy in one small value (after zed's
/// `CapabilityGranter`) makes it testable on its own and impossible to bypass by a
/// host import that forgets one of the two checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySet {
    effective: Vec<Capability>,
    refused: Vec<Capability>,
    /// The agent type, for the config line a refusal suggests.
    agent: String,
}

impl CapabilitySet {
    /// Intersect what the agent requested with what the administrator granted.
    pub fn new(requested: &[Capability], granted: &[Capability]) -> CapabilitySet {
        let (effective, refused) = requested.iter().cloned().partition(|c| granted.contains(c));
        CapabilitySet {
            effective,
            refused,
            agent: String::new(),
        }
    }

    /// Name the agent type, so a refusal can give the config line that grants it.
    pub fn for_agent(mut self, agent: &str) -> CapabilitySet {
        self.agent = agent.to_owned();
        self
    }

    /// The `[agents.grants]` line that grants what the agent requested and was
    /// not granted (`None` when nothing is missing).
    pub fn grant_line(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let all: Vec<String> = self
            .effective
            .iter()
            .chain(&self.refused)
            .map(|c| format!("{:?}", c.to_string()))
            .collect();
        let agent = if self.agent.is_empty() {
            "AGENT"
        } else {
            &self.agent
        };
        Some(format!("[agents.grants]\n{agent} = [{}]", all.join(", ")))
    }

    /// Capabilities that are requested and granted.
    pub fn effective(&self) -> &[Capability] {
        &self.effective
    }

    /// Capabilities the agent requested but the administrator did not grant.
    pub fn not_granted(&self) -> &[Capability] {
        &self.refused
    }

    /// May the agent run `program` (an absolute path)?
    pub fn check_exec(&self, program: &str) -> Result<(), String> {
        if self
            .effective
            .iter()
            .any(|c| matches!(c, Capability::Exec(p) if p == program))
        {
            Ok(())
        } else {
            Err(self.denied(&format!("exec:{program}")))
        }
    }

    /// May the agent connect to `address` (`host:port`)?
    pub fn check_connect(&self, address: &str) -> Result<(), String> {
        if self
            .effective
            .iter()
            .any(|c| matches!(c, Capability::Connect(a) if a == address))
        {
            Ok(())
        } else {
            Err(self.denied(&format!("net:{address}")))
        }
    }

    /// May the agent read `path`? It must be absolute, free of `..`, and below a
    /// granted directory.
    pub fn check_read(&self, path: &str) -> Result<(), String> {
        let p = Path::new(path);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!(
                "capability denied: {path:?} must be an absolute path without '..'"
            ));
        }
        let allowed = self.effective.iter().any(|c| match c {
            Capability::Read(dir) => p.starts_with(Path::new(dir)),
            _ => false,
        });
        if allowed {
            Ok(())
        } else {
            Err(self.denied(&format!("read:{path}")))
        }
    }

    /// Why `wanted` is refused, and which half to add: a capability the agent
    /// requested needs the administrator's grant (the config line is given);
    /// one it did not request needs its author to request it.
    fn denied(&self, wanted: &str) -> String {
        let usable = self
            .effective
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let requested = self.refused.iter().any(|c| {
            c.to_string() == wanted
                || matches!((c, wanted.strip_prefix("read:")), (Capability::Read(dir), Some(p)) if Path::new(p).starts_with(dir))
        });
        if requested {
            let line = self.grant_line().unwrap_or_default();
            format!(
                "capability denied: {wanted} is requested by the agent but not granted; to allow it, \
                 add to the config: {} (usable now: [{usable}])",
                line.replace('\n', " ")
            )
        } else {
            format!(
                "capability denied: {wanted} is not requested in the agent's meta-data, so no grant \
                 allows it; the agent's author must add it to `capabilities` (usable now: [{usable}])"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[&str]) -> Vec<Capability> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_and_prints_each_kind() {
        for s in [
            "exec:/bin/true",
            "net:198.18.2.1:80",
            "read:/etc/app",
            "read:/",
        ] {
            assert_eq!(s.parse::<Capability>().unwrap().to_string(), s);
        }
        assert_eq!(
            "read:/etc/app/".parse::<Capability>().unwrap().to_string(),
            "read:/etc/app"
        );
        for bad in [
            "exec:true",
            "read:/etc/../root",
            "net:host",
            "net:h:x",
            "disk:/dev/sda",
            "nothing",
        ] {
            let e = bad.parse::<Capability>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn only_requested_and_granted_capabilities_are_usable() {
        let set = CapabilitySet::new(
            &caps(&["exec:/bin/true", "exec:/bin/sh", "read:/etc/app"]),
            &caps(&["exec:/bin/true", "net:198.18.2.1:80", "read:/etc/app"]),
        );
        assert!(set.check_exec("/bin/true").is_ok());
        // requested, not granted
        assert!(
            set.check_exec("/bin/sh")
                .unwrap_err()
                .contains("capability denied: exec:/bin/sh")
        );
        // granted, not requested
        assert!(set.check_connect("198.18.2.1:80").is_err());
        assert!(set.check_read("/etc/app/conf").is_ok());
        assert!(set.check_read("/etc/app/../shadow").is_err());
        assert!(set.check_read("/etc/application").is_err());
        assert!(set.check_read("etc/app/x").is_err());
        assert_eq!(set.not_granted(), &caps(&["exec:/bin/sh"])[..]);
    }
}
