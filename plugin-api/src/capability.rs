use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

/// Something an agent asks to be allowed to do outside its sandbox.
///
/// Written as a string: `exec:/usr/bin/pg_ctl`, `net:127.0.0.1:5432`,
/// `read:/etc/myapp`. An agent *requests* capabilities in its meta-data and the
/// administrator *grants* them in the config ([`Grant`]); only a capability that is
/// both requested and granted is usable, and the host checks it on every call.
///
/// A request may name the resource's parameters in braces, `net:127.0.0.1:{port}`,
/// `read:{data_dir}`, `exec:{bindir}/pg_ctl`: it is expanded per resource from its
/// checked parameters (defaults included), and the expansion must fall inside a
/// grant ([`CapabilitySet::for_params`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Run this program (absolute path), with any arguments.
    Exec(String),
    /// Start this program (absolute path) as a long-lived service process,
    /// detached: a WebAssembly agent's `run` of it returns at once (since 1.1).
    Spawn(String),
    /// Open TCP connections to this `address:port`.
    Connect(String),
    /// Read files below this directory (absolute path).
    Read(String),
}

/// A capability or grant string that does not parse.
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
            "capability {:?}: {} (write exec:/abs/program, spawn:/abs/program, net:ADDRESS:PORT or read:/abs/dir)",
            self.text, self.problem
        )
    }
}

impl std::error::Error for CapabilityError {}

/// The `{name}` placeholders in `value`, or why they are malformed.
fn placeholders(value: &str) -> Result<Vec<&str>, &'static str> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a '}' without its '{'");
        }
        let close = rest[open..].find('}').ok_or("a '{' without its '}'")? + open;
        let name = &rest[open + 1..close];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("a placeholder must name a parameter: {name}");
        }
        names.push(name);
        rest = &rest[close + 1..];
    }
    Ok(names)
}

fn absolute(v: &str) -> bool {
    let p = Path::new(v);
    p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
}

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
        let template = !placeholders(value).map_err(err)?.is_empty();
        // A template is checked in shape here and in full once expanded.
        let path_ok =
            |v: &str| absolute(v) || (template && v.starts_with('{') && !v.contains("/../"));
        match kind {
            "exec" if path_ok(value) => Ok(Capability::Exec(value.into())),
            "spawn" if path_ok(value) => Ok(Capability::Spawn(value.into())),
            "read" if path_ok(value) => {
                let trimmed = value.trim_end_matches('/');
                Ok(Capability::Read(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                }))
            }
            "exec" | "spawn" | "read" => {
                Err(err("the path must be absolute and must not contain '..'"))
            }
            "net" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or_else(|| err("give ADDRESS:PORT"))?;
                let port_ok = port.parse::<u16>().is_ok() || (port.starts_with('{') && template);
                if host.is_empty() || !port_ok {
                    return Err(err("give ADDRESS:PORT with a numeric port"));
                }
                Ok(Capability::Connect(value.into()))
            }
            _ => Err(err("unknown kind")),
        }
    }
}

impl Capability {
    fn value(&self) -> &str {
        match self {
            Capability::Exec(v)
            | Capability::Spawn(v)
            | Capability::Connect(v)
            | Capability::Read(v) => v,
        }
    }

    /// The parameters this request names (`{port}` → `port`); empty for a fixed one.
    pub fn parameters(&self) -> Vec<&str> {
        placeholders(self.value()).unwrap_or_default()
    }

    /// This request with its parameters replaced by `params`' values. Fails, in
    /// words that name the parameter, when one is not set or its value does not
    /// make a valid capability (a relative path, `..`, a port that is not a number).
    pub fn expand(&self, params: &crate::Params) -> Result<Capability, String> {
        let mut text = self.to_string();
        for name in self.parameters() {
            let value = params
                .get(name)
                .ok_or_else(|| format!("{self} names parameter {name}, which is not set"))?;
            if value.contains(['{', '}']) {
                return Err(format!(
                    "parameter {name} = {value:?} may not contain braces (in {self})"
                ));
            }
            text = text.replace(&format!("{{{name}}}"), value);
        }
        text.parse::<Capability>()
            .map_err(|e| format!("{self} with these parameters is {text:?}: {}", e.problem))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Exec(p) => write!(f, "exec:{p}"),
            Capability::Spawn(p) => write!(f, "spawn:{p}"),
            Capability::Connect(a) => write!(f, "net:{a}"),
            Capability::Read(d) => write!(f, "read:{d}"),
        }
    }
}

/// What the administrator allows one agent type, in the config's
/// `[agents.grants]`:
///
/// - `exec:/usr/bin/myctl` one program, `exec:/usr/lib/postgresql/*` any program
///   below a directory; `as USER` after it names the user the program runs as
///   (`exec:/usr/bin/myctl as myapp`). Without `as`, programs run as `nobody`; root
///   only when granted `as root`. (A `baton` that does not run as root runs them
///   as its own user and refuses a grant for another.)
/// - `spawn:PATH` (same patterns and `as USER`): start the program as a detached
///   service process of the resource (a WebAssembly agent's `run` returns at once).
/// - `net:127.0.0.1:5432` one port, `net:127.0.0.1:5432-5439` a range,
///   `net:127.0.0.1:*` any port of that address.
/// - `read:/srv/db` any file below the directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grant {
    /// Run a program (exact path), or any program below a directory (`dir/*`).
    Exec {
        /// The path, or the directory followed by `/*`.
        program: String,
        /// The user the program runs as (`None`: nobody).
        user: Option<String>,
    },
    /// Start a program as a detached service process; written and matched as `Exec`.
    Spawn {
        /// The path, or the directory followed by `/*`.
        program: String,
        /// The user the program runs as (`None`: nobody).
        user: Option<String>,
    },
    /// Connect to ports `ports.0..=ports.1` of `host`.
    Connect {
        /// The address as the agent names it.
        host: String,
        /// The port range, inclusive.
        ports: (u16, u16),
    },
    /// Read below this directory.
    Read(String),
}

impl FromStr for Grant {
    type Err = CapabilityError;

    fn from_str(text: &str) -> Result<Grant, CapabilityError> {
        let err = |problem: &str| CapabilityError {
            text: text.into(),
            problem: problem.into(),
        };
        if text.contains(['{', '}']) {
            return Err(err(
                "a grant is a fixed path or pattern; parameters ({name}) belong in the agent's request",
            ));
        }
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| err("no kind before ':'"))?;
        match kind {
            "exec" | "spawn" => {
                let (program, user) = match value.split_once(" as ") {
                    Some((p, u)) if !u.trim().is_empty() && !u.trim().contains(' ') => {
                        (p.trim(), Some(u.trim().to_owned()))
                    }
                    Some(_) => return Err(err("give one user name after 'as'")),
                    None => (value.trim(), None),
                };
                let path = program.strip_suffix("/*").unwrap_or(program);
                if !absolute(path) || path.contains('*') || path.contains(char::is_whitespace) {
                    return Err(err(
                        "the path must be absolute, without '..' or spaces; a pattern is DIR/* (any program below DIR); a user follows as `as USER`",
                    ));
                }
                let program = program.into();
                Ok(if kind == "exec" {
                    Grant::Exec { program, user }
                } else {
                    Grant::Spawn { program, user }
                })
            }
            "read" => match text.parse::<Capability>()? {
                Capability::Read(dir) => Ok(Grant::Read(dir)),
                _ => unreachable!("a read: string parses as Capability::Read"),
            },
            "net" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or_else(|| err("give ADDRESS:PORT, ADDRESS:LOW-HIGH or ADDRESS:*"))?;
                let ports = match port.split_once('-') {
                    _ if port == "*" => Some((1, u16::MAX)),
                    Some((lo, hi)) => lo.parse().ok().zip(hi.parse().ok()),
                    None => port.parse().ok().map(|p| (p, p)),
                };
                match ports {
                    Some((lo, hi)) if !host.is_empty() && lo <= hi => Ok(Grant::Connect {
                        host: host.into(),
                        ports: (lo, hi),
                    }),
                    _ => Err(err(
                        "give ADDRESS:PORT, ADDRESS:LOW-HIGH (LOW <= HIGH) or ADDRESS:*",
                    )),
                }
            }
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Exec {
                program,
                user: Some(u),
            } => write!(f, "exec:{program} as {u}"),
            Grant::Exec { program, .. } => write!(f, "exec:{program}"),
            Grant::Spawn {
                program,
                user: Some(u),
            } => write!(f, "spawn:{program} as {u}"),
            Grant::Spawn { program, .. } => write!(f, "spawn:{program}"),
            Grant::Connect { host, ports } if *ports == (1, u16::MAX) => {
                write!(f, "net:{host}:*")
            }
            Grant::Connect { host, ports } if ports.0 == ports.1 => {
                write!(f, "net:{host}:{}", ports.0)
            }
            Grant::Connect { host, ports } => write!(f, "net:{host}:{}-{}", ports.0, ports.1),
            Grant::Read(dir) => write!(f, "read:{dir}"),
        }
    }
}

impl Grant {
    /// Whether `cap` (an expanded request) falls inside this grant.
    pub fn covers(&self, cap: &Capability) -> bool {
        match (self, cap) {
            (Grant::Exec { program, .. }, Capability::Exec(p))
            | (Grant::Spawn { program, .. }, Capability::Spawn(p)) => {
                match program.strip_suffix("/*") {
                    Some(dir) => Path::new(p).starts_with(dir) && p.len() > dir.len() + 1,
                    None => p == program,
                }
            }
            (Grant::Connect { host, ports }, Capability::Connect(a)) => a
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .is_some_and(|(h, p)| h == host && (ports.0..=ports.1).contains(&p)),
            (Grant::Read(dir), Capability::Read(d)) => Path::new(d).starts_with(dir),
            _ => false,
        }
    }

    fn same_kind(&self, cap: &Capability) -> bool {
        matches!(
            (self, cap),
            (Grant::Exec { .. }, Capability::Exec(_))
                | (Grant::Spawn { .. }, Capability::Spawn(_))
                | (Grant::Connect { .. }, Capability::Connect(_))
                | (Grant::Read(_), Capability::Read(_))
        )
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(Capability);
serde_as_string!(Grant);

/// The capabilities an agent may use: those it requested *and* the administrator
/// granted. Every sandboxed host call asks this object before acting.
///
/// Built in two steps: [`CapabilitySet::new`] per agent type (fixed requests are
/// decided; requests that name parameters wait), then
/// [`CapabilitySet::for_params`] per resource (they are expanded and must fall
/// inside a grant).
///
/// Rationale: keeping the policy in one small value (after zed's
/// `CapabilityGranter`) makes it testable on its own and impossible to bypass by a
/// host import that forgets one of the two checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySet {
    effective: Vec<Capability>,
    refused: Vec<Capability>,
    /// Requests that name parameters, not yet expanded.
    templates: Vec<Capability>,
    granted: Vec<Grant>,
    /// Why requests could not be expanded with the resource's parameters.
    problems: Vec<String>,
    /// The agent type, for the config line a refusal suggests.
    agent: String,
}

impl CapabilitySet {
    /// Intersect what the agent requested with what the administrator granted.
    /// Requests that name parameters are usable only after [`Self::for_params`].
    pub fn new(requested: &[Capability], granted: &[Grant]) -> CapabilitySet {
        let (templates, fixed): (Vec<_>, Vec<_>) = requested
            .iter()
            .cloned()
            .partition(|c| !c.parameters().is_empty());
        let (effective, refused) = fixed
            .into_iter()
            .partition(|c| granted.iter().any(|g| g.covers(c)));
        CapabilitySet {
            effective,
            refused,
            templates,
            granted: granted.to_vec(),
            problems: Vec::new(),
            agent: String::new(),
        }
    }

    /// Name the agent type, so a refusal can give the config line that grants it.
    pub fn for_agent(mut self, agent: &str) -> CapabilitySet {
        self.agent = agent.to_owned();
        self
    }

    /// This set for one resource: every request that names parameters expanded
    /// with `params` (checked, defaults filled in) and usable when it falls inside
    /// a grant. [`Self::problems`] says, by parameter, what did not expand or
    /// escapes every grant.
    pub fn for_params(&self, params: &crate::Params) -> CapabilitySet {
        let mut set = CapabilitySet {
            templates: Vec::new(),
            problems: Vec::new(),
            ..self.clone()
        };
        for t in &self.templates {
            match t.expand(params) {
                Err(why) => set.problems.push(why),
                Ok(c) if self.granted.iter().any(|g| g.covers(&c)) => set.effective.push(c),
                Ok(c) => {
                    let values: Vec<String> = t
                        .parameters()
                        .iter()
                        .map(|n| format!("{n} = {:?}", params.get(*n).map_or("", |v| v)))
                        .collect();
                    let grants: Vec<String> = self
                        .granted
                        .iter()
                        .filter(|g| g.same_kind(&c))
                        .map(|g| g.to_string())
                        .collect();
                    set.problems.push(format!(
                        "parameter {} makes {t} into {c}, which no grant for {} covers (granted: [{}])",
                        values.join(", "),
                        self.agent_name(),
                        grants.join(", ")
                    ));
                    set.refused.push(c);
                }
            }
        }
        set
    }

    /// Why requests could not be used with the resource's parameters (after
    /// [`Self::for_params`]): a parameter not set, or a value that escapes every
    /// grant. The host refuses such a resource at config check.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    fn agent_name(&self) -> &str {
        if self.agent.is_empty() {
            "AGENT"
        } else {
            &self.agent
        }
    }

    /// The `[agents.grants]` line that grants what the agent requested and was
    /// not granted (`None` when nothing is missing).
    pub fn grant_line(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let all: Vec<String> = self
            .granted
            .iter()
            .map(|g| g.to_string())
            .chain(self.refused.iter().map(|c| c.to_string()))
            .map(|s| format!("{s:?}"))
            .collect();
        Some(format!(
            "[agents.grants]\n{} = [{}]",
            self.agent_name(),
            all.join(", ")
        ))
    }

    /// Capabilities that are requested and granted (expanded ones included).
    pub fn effective(&self) -> &[Capability] {
        &self.effective
    }

    /// Capabilities that are requested and not granted (expanded ones included).
    pub fn refused(&self) -> &[Capability] {
        &self.refused
    }

    /// Each request that names parameters and that a grant of its kind may
    /// cover, with those grants (`read:{dir} within read:/tmp`): granted per
    /// resource whose parameters fall inside them.
    pub fn templates_within(&self) -> Vec<String> {
        self.templates
            .iter()
            .filter_map(|t| {
                let within: Vec<String> = self
                    .granted
                    .iter()
                    .filter(|g| g.same_kind(t))
                    .map(|g| g.to_string())
                    .collect();
                (!within.is_empty()).then(|| format!("{t} within {}", within.join(" or ")))
            })
            .collect()
    }

    /// Requests that name parameters and wait for [`Self::for_params`].
    pub fn templates(&self) -> &[Capability] {
        &self.templates
    }

    /// Capabilities the agent requested but the administrator did not grant.
    pub fn not_granted(&self) -> &[Capability] {
        &self.refused
    }

    /// May the agent run `program` (an absolute path)? Answers the user it runs
    /// as (`None`: the grant names none).
    pub fn check_exec(&self, program: &str) -> Result<Option<String>, String> {
        self.check_program(Capability::Exec(program.into()))
    }

    /// May the agent start `program` as a detached service process (a requested
    /// and granted `spawn:`)? Answers the user it runs as, like [`Self::check_exec`].
    pub fn check_spawn(&self, program: &str) -> Result<Option<String>, String> {
        self.check_program(Capability::Spawn(program.into()))
    }

    fn check_program(&self, cap: Capability) -> Result<Option<String>, String> {
        if self.effective.contains(&cap) {
            // The most specific grant decides the user: an exact path before a directory.
            let mut covering: Vec<&Grant> =
                self.granted.iter().filter(|g| g.covers(&cap)).collect();
            covering.sort_by_key(|g| std::cmp::Reverse(g.to_string().len()));
            Ok(covering.first().and_then(|g| match g {
                Grant::Exec { user, .. } | Grant::Spawn { user, .. } => user.clone(),
                _ => None,
            }))
        } else {
            Err(self.denied(&cap.to_string()))
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
        } else if !self.problems.is_empty() {
            format!(
                "capability denied: {wanted} is not usable: {} (usable now: [{usable}])",
                self.problems.join("; ")
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

    fn grants(list: &[&str]) -> Vec<Grant> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_requested_and_granted_capabilities_are_usable() {
        let set = CapabilitySet::new(
            &caps(&["exec:/bin/true", "exec:/bin/sh", "read:/etc/app"]),
            &grants(&["exec:/bin/true", "net:198.18.2.1:80", "read:/etc/app"]),
        );
        assert_eq!(set.check_exec("/bin/true"), Ok(None));
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

    #[test]
    fn grant_patterns_parse_print_and_cover() {
        for s in [
            "exec:/usr/bin/myctl",
            "exec:/usr/lib/postgresql/* as postgres",
            "net:127.0.0.1:5432",
            "net:127.0.0.1:5432-5439",
            "net:127.0.0.1:*",
            "read:/srv",
        ] {
            assert_eq!(s.parse::<Grant>().unwrap().to_string(), s);
        }
        for bad in [
            "exec:/usr/*/bin",
            "exec:/bin/x as",
            "exec:/bin/x as a b",
            "net:h:9-1",
            "net:h:x",
            "read:{dir}",
            "exec:bin",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
        let g = |s: &str| s.parse::<Grant>().unwrap();
        let c = |s: &str| s.parse::<Capability>().unwrap();
        assert!(
            g("exec:/usr/lib/postgresql/*").covers(&c("exec:/usr/lib/postgresql/15/bin/pg_ctl"))
        );
        assert!(!g("exec:/usr/lib/postgresql/*").covers(&c("exec:/usr/lib/postgresql")));
        assert!(!g("exec:/usr/lib/postgresql/*").covers(&c("exec:/usr/lib/postgresqlx/pg")));
        assert!(g("net:127.0.0.1:5432-5439").covers(&c("net:127.0.0.1:5439")));
        assert!(!g("net:127.0.0.1:5432-5439").covers(&c("net:127.0.0.1:5440")));
        assert!(!g("net:127.0.0.1:*").covers(&c("net:127.0.0.2:80")));
        assert!(g("read:/srv").covers(&c("read:/srv/db/a")));
        assert!(!g("read:/srv").covers(&c("read:/srvx")));
    }

    #[test]
    fn requests_that_name_parameters_are_expanded_per_resource_inside_the_grants() {
        let requested = caps(&[
            "net:127.0.0.1:{port}",
            "read:{data_dir}",
            "exec:{bindir}/pg_ctl",
        ]);
        let set = CapabilitySet::new(
            &requested,
            &grants(&[
                "net:127.0.0.1:5432-5439",
                "read:/srv/db",
                "exec:/usr/lib/postgresql/* as postgres",
            ]),
        )
        .for_agent("pg");
        assert!(set.effective().is_empty() && set.templates().len() == 3);
        let params = |port: &str, dir: &str| -> crate::Params {
            [
                ("port", port),
                ("data_dir", dir),
                ("bindir", "/usr/lib/postgresql/15/bin"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let ok = set.for_params(&params("5433", "/srv/db/main"));
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert!(ok.check_connect("127.0.0.1:5433").is_ok());
        assert!(ok.check_connect("127.0.0.1:5434").is_err());
        assert!(ok.check_read("/srv/db/main/PG_VERSION").is_ok());
        assert_eq!(
            ok.check_exec("/usr/lib/postgresql/15/bin/pg_ctl"),
            Ok(Some("postgres".into()))
        );
        // A value that escapes the grant is named with the parameter and the grant.
        let bad = set.for_params(&params("6000", "/etc"));
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
        assert!(
            bad.problems()[0].contains("parameter port = \"6000\"")
                && bad.problems()[0].contains("net:127.0.0.1:5432-5439"),
            "{:?}",
            bad.problems()
        );
        let e = bad.check_connect("127.0.0.1:6000").unwrap_err();
        assert!(e.contains("requested by the agent but not granted"), "{e}");
        // Values that would smuggle a path or another placeholder are refused.
        for (dir, why) in [
            ("relative", "absolute"),
            ("/srv/db/../../etc", "absolute"),
            ("{port}", "braces"),
        ] {
            let p = set.for_params(&params("5432", dir));
            assert!(
                p.problems().iter().any(|x| x.contains(why)),
                "{dir}: {:?}",
                p.problems()
            );
        }
        let missing = set.for_params(&crate::Params::new());
        assert!(
            missing.problems()[0].contains("port, which is not set"),
            "{:?}",
            missing.problems()
        );
        // Malformed templates do not parse.
        for bad in ["net:h:{}", "read:{dir", "read:dir}", "net:h:{p}x{"] {
            assert!(bad.parse::<Capability>().is_err(), "{bad}");
        }
    }
}
