//! The OCF bridge: any existing OCF resource agent (`ocf:PROVIDER:TYPE`, an executable
//! under `OCF_ROOT/resource.d/PROVIDER/TYPE`) run unchanged behind the contract.
//!
//! Each call is a fork/exec in a new process group with the full OCF environment,
//! stdin closed, output captured up to a bound, SIGKILL to the group at the deadline,
//! the `ocf-exit-reason:` line parsed, and the exit code mapped to a typed result
//! (docs/agents.md, "OCF agents through the bridge").

use crate::agent::host::{AgentKind, Backend, Failure, FailureCause};
use baton_plugin_api::process::{self, describe_status};
use baton_plugin_api::{
    Action, ActionSpec, ContractVersion, ErrorClass, Metadata, MonitorState, Outcome, ParamSpec,
    ParamType, Request, service,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Captured output per stream is cut at this size.
const OUTPUT_LIMIT: usize = 64 << 10;
/// Time allowed for `meta-data`.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of `ocf:PROVIDER:TYPE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfName {
    /// The provider directory (`heartbeat`).
    pub provider: String,
    /// The agent file (`Dummy`).
    pub kind: String,
}

impl OcfName {
    /// Parse `ocf:PROVIDER:TYPE`.
    pub fn parse(name: &str) -> Option<OcfName> {
        let rest = name.strip_prefix("ocf:")?;
        let (provider, kind) = rest.split_once(':')?;
        let ok = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/');
        (ok(provider) && ok(kind)).then(|| OcfName {
            provider: provider.into(),
            kind: kind.into(),
        })
    }
}

/// An OCF agent behind the bridge.
pub struct OcfBackend {
    path: PathBuf,
    ocf_root: PathBuf,
    name: OcfName,
    metadata: Metadata,
    monitor_interval_ms: u64,
}

impl OcfBackend {
    /// Find `ocf:PROVIDER:TYPE` in the first of `dirs` that has `PROVIDER/TYPE`
    /// and read its meta-data; it runs with `OCF_ROOT=ocf_root`.
    pub fn load(full_name: &str, ocf_root: &Path, dirs: &[PathBuf]) -> Result<OcfBackend, String> {
        let name = OcfName::parse(full_name)
            .ok_or_else(|| format!("{full_name:?} is not an OCF agent name; write ocf:PROVIDER:TYPE, e.g. ocf:heartbeat:Dummy"))?;
        let candidates: Vec<PathBuf> = dirs
            .iter()
            .map(|d| d.join(&name.provider).join(&name.kind))
            .collect();
        let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            return Err(format!(
                "OCF agent {full_name} not found: no file {} (is the package that ships it, e.g. \
                 resource-agents, installed? are agents.ocf_root and agents.ocf_path right?)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        };
        OcfBackend::load_at(full_name, name, path, ocf_root)
    }

    /// An OCF agent given by its file (a vendor's script before it is packaged):
    /// provider `local`, type the file name, run with `OCF_ROOT=ocf_root` so it
    /// finds the standard shell helpers.
    pub fn load_file(path: &Path, ocf_root: &Path) -> Result<OcfBackend, String> {
        let kind = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = OcfName {
            provider: "local".into(),
            kind: kind.clone(),
        };
        let path = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        OcfBackend::load_at(&format!("ocf:local:{kind}"), name, path, ocf_root)
    }

    fn load_at(
        full_name: &str,
        name: OcfName,
        path: PathBuf,
        ocf_root: &Path,
    ) -> Result<OcfBackend, String> {
        let mut backend = OcfBackend {
            path,
            ocf_root: ocf_root.to_owned(),
            name,
            metadata: Metadata {
                name: full_name.into(),
                version: String::new(),
                contract: ContractVersion::new(1, 0),
                shortdesc: String::new(),
                longdesc: String::new(),
                parameters: vec![],
                actions: vec![],
                capabilities: vec![],
            },
            monitor_interval_ms: 10_000,
        };
        let finished = backend
            .exec(
                "meta-data",
                &Request::new(Action::MetaData, Default::default()),
                METADATA_TIMEOUT,
            )
            .map_err(|e| format!("{full_name}: cannot run {}: {e}", backend.path.display()))?;
        if finished.timed_out {
            return Err(format!(
                "{full_name}: meta-data did not finish within {} s",
                METADATA_TIMEOUT.as_secs()
            ));
        }
        if finished.status.and_then(|s| s.code()) != Some(0) {
            let stderr = String::from_utf8_lossy(&finished.stderr);
            let said: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(format!(
                "{full_name}: meta-data failed ({}){}; an OCF agent must print its meta-data and exit 0",
                finished.status.map(describe_status).unwrap_or_default(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it said: {}",
                        said[said.len().saturating_sub(5)..].join(" | ")
                    )
                }
            ));
        }
        let xml = String::from_utf8_lossy(&finished.stdout);
        let mut meta = parse_metadata(&xml)
            .map_err(|e| format!("{full_name}: meta-data is not valid OCF XML: {e}"))?;
        meta.name = full_name.into();
        if let Err(problems) = meta.check() {
            return Err(format!(
                "{full_name}: unusable meta-data: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        backend.monitor_interval_ms = meta
            .action(Action::Monitor)
            .map(|a| a.interval_ms)
            .filter(|i| *i > 0)
            .unwrap_or(10_000);
        backend.metadata = meta;
        Ok(backend)
    }

    fn exec(
        &self,
        action: &str,
        req: &Request,
        timeout: Duration,
    ) -> std::io::Result<process::Finished> {
        let mut cmd = Command::new(&self.path);
        cmd.arg(action).env_clear();
        for (k, v) in self.environment(action, req, timeout) {
            cmd.env(k, v);
        }
        process::run(cmd, timeout, OUTPUT_LIMIT)
    }

    /// The environment Pacemaker's executor gives an OCF agent (docs/agents.md, "OCF agents through the bridge").
    fn environment(&self, action: &str, req: &Request, timeout: Duration) -> Vec<(String, String)> {
        let meta = |k: &str, v: String| (format!("OCF_RESKEY_CRM_meta_{}", k.replace('-', "_")), v);
        let interval = if req.action == Action::Monitor && !req.probe {
            self.monitor_interval_ms
        } else {
            0
        };
        let mut env = vec![
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
            ("OCF_RA_VERSION_MINOR".into(), "1".into()),
            ("OCF_ROOT".into(), self.ocf_root.display().to_string()),
            (
                "OCF_FUNCTIONS_DIR".into(),
                self.ocf_root.join("lib/heartbeat").display().to_string(),
            ),
            ("OCF_RESOURCE_INSTANCE".into(), req.context.resource.clone()),
            (service::HOST_VAR.into(), service::host_id()),
            (service::RESOURCE_VAR.into(), req.context.resource.clone()),
            ("OCF_RESOURCE_TYPE".into(), self.name.kind.clone()),
            ("OCF_RESOURCE_PROVIDER".into(), self.name.provider.clone()),
            ("OCF_EXIT_REASON_PREFIX".into(), "ocf-exit-reason:".into()),
            ("OCF_CHECK_LEVEL".into(), req.depth.to_string()),
            meta("timeout", timeout.as_millis().to_string()),
            meta("interval", interval.to_string()),
            meta("name", action.to_string()),
            meta("on_node", req.context.node.clone()),
            meta("on_node_uuid", req.context.node.clone()),
        ];
        for (k, v) in &req.params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        if let Some(n) = &req.notification {
            let op = n
                .operation
                .map(|a| a.name().to_string())
                .unwrap_or_default();
            env.push(meta(
                "notify_type",
                if n.pre { "pre" } else { "post" }.into(),
            ));
            env.push(meta("notify_operation", op.clone()));
            let names = n.nodes.join(" ");
            env.push(meta(&format!("notify_{op}_uname"), names.clone()));
            env.push(meta(
                &format!("notify_{op}_resource"),
                n.nodes
                    .iter()
                    .map(|_| req.context.resource.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
            env.push(meta("notify_active_uname", n.active.join(" ")));
        }
        env
    }
}

/// The text after the last `ocf-exit-reason:` on stderr.
fn exit_reason(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter_map(|l| {
            l.split_once("ocf-exit-reason:")
                .map(|(_, r)| r.trim().to_string())
        })
        .next_back()
        .filter(|r| !r.is_empty())
}

/// Map an OCF exit code to a typed result (the table in docs/agents.md, "OCF agents through the bridge").
pub fn map_exit(
    action: Action,
    probe: bool,
    code: i32,
    reason: Option<String>,
) -> Result<Outcome, Failure> {
    let class = match code {
        0 => {
            return Ok(if action == Action::Monitor {
                Outcome::State(MonitorState::Running)
            } else {
                Outcome::Done
            });
        }
        7 if action == Action::Monitor => return Ok(Outcome::State(MonitorState::NotRunning)),
        // A stop that finds nothing running has succeeded.
        7 if action == Action::Stop => return Ok(Outcome::Done),
        // A probe on a node without the software: it certainly does not run here.
        5 if action == Action::Monitor && probe => {
            return Ok(Outcome::State(MonitorState::NotRunning));
        }
        8 if action == Action::Monitor => return Ok(Outcome::State(MonitorState::Promoted)),
        8 if action == Action::Promote => return Ok(Outcome::Done),
        9 if action == Action::Monitor => return Ok(Outcome::State(MonitorState::FailedPromoted)),
        190 if action == Action::Monitor => return Ok(Outcome::State(MonitorState::Degraded)),
        191 if action == Action::Monitor => {
            return Ok(Outcome::State(MonitorState::DegradedPromoted));
        }
        190 | 191 => return Ok(Outcome::Done),
        1 | 7 | 8 | 9 => ErrorClass::Generic,
        2 => ErrorClass::InvalidArgs,
        3 => ErrorClass::Unimplemented,
        4 => ErrorClass::Permission,
        5 => ErrorClass::NotInstalled,
        6 => ErrorClass::Misconfigured,
        other => {
            return Err(Failure::host(
                FailureCause::BadReply,
                ErrorClass::Generic,
                format!(
                    "{action} exited with {other}, which is not an OCF exit code (0-9, 190, 191){}",
                    reason.map(|r| format!("; reason: {r}")).unwrap_or_default()
                ),
            ));
        }
    };
    let what = match code {
        7 => " (not running)".to_string(),
        8 => " (running promoted)".to_string(),
        9 => " (failed promoted)".to_string(),
        _ => String::new(),
    };
    Err(Failure {
        class,
        reason: reason.unwrap_or_else(|| format!("{action} exited with OCF code {code}{what}")),
        cause: FailureCause::Agent,
    })
}

impl Backend for OcfBackend {
    fn kind(&self) -> AgentKind {
        AgentKind::Ocf
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn call(&self, req: &Request) -> Result<Outcome, Failure> {
        if req.action == Action::MetaData {
            return Ok(Outcome::Metadata(Box::new(self.metadata.clone())));
        }
        let action = match req.action {
            Action::Validate => "validate-all",
            other => other.name(),
        };
        let timeout = req.context.timeout();
        let finished = self.exec(action, req, timeout).map_err(|e| {
            Failure::host(
                FailureCause::Crash,
                ErrorClass::NotInstalled,
                format!("cannot run {}: {e}", self.path.display()),
            )
        })?;
        let reason = exit_reason(&finished.stderr).or_else(|| {
            let text = String::from_utf8_lossy(&finished.stderr);
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(2)
                .collect();
            (!tail.is_empty()).then(|| tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        });
        if finished.timed_out {
            return Err(Failure::host(
                FailureCause::Timeout,
                ErrorClass::Generic,
                format!(
                    "{action} of {} ran past its {} ms deadline; its process group was killed",
                    self.metadata.name,
                    timeout.as_millis()
                ),
            ));
        }
        let status = finished.status.ok_or_else(|| {
            Failure::host(
                FailureCause::Crash,
                ErrorClass::Generic,
                format!("{action} of {} vanished", self.metadata.name),
            )
        })?;
        match status.code() {
            Some(code) => map_exit(req.action, req.probe, code, reason),
            None => Err(Failure::host(
                FailureCause::Crash,
                ErrorClass::Generic,
                format!(
                    "{action} of {} was {}",
                    self.metadata.name,
                    describe_status(status)
                ),
            )),
        }
    }

    fn health(&self) -> Vec<(String, String)> {
        vec![("path".into(), self.path.display().to_string())]
    }
}

/// An OCF duration (`20s`, `20`, `1m`, `500ms`, `2h`) in milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| t.split_at(i))
        .unwrap_or((t, ""));
    let n: u64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1000,
        "ms" | "msec" => 1,
        "m" | "min" | "mins" => 60_000,
        "h" | "hr" | "hrs" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n * factor)
}

/// OCF meta-data starts with a DOCTYPE naming ra-api-1.dtd; allow it (never fetched).
pub const XML_OPTIONS: roxmltree::ParsingOptions = roxmltree::ParsingOptions {
    allow_dtd: true,
    nodes_limit: 1_000_000,
};

/// Parse OCF resource-agent meta-data XML (docs/agents.md, "OCF agents through the bridge").
pub fn parse_metadata(xml: &str) -> Result<Metadata, String> {
    let doc = roxmltree::Document::parse_with_options(xml, crate::agent::backend::ocf::XML_OPTIONS)
        .map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "resource-agent" {
        return Err(format!(
            "the root element is <{}>, expected <resource-agent>",
            root.tag_name().name()
        ));
    }
    fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        node.children().find(|c| c.has_tag_name(tag))
    }
    let text = |node: Option<roxmltree::Node<'_, '_>>| {
        node.and_then(|n| n.text())
            .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let mut parameters = Vec::new();
    if let Some(params) = child(root, "parameters") {
        for p in params.children().filter(|c| c.has_tag_name("parameter")) {
            let name = p
                .attribute("name")
                .ok_or("a <parameter> has no name")?
                .to_string();
            let content = child(p, "content");
            let kind = match content
                .and_then(|c| c.attribute("type"))
                .unwrap_or("string")
            {
                "integer" => ParamType::Integer,
                "boolean" => ParamType::Boolean,
                "select" => ParamType::Select(
                    content
                        .map(|c| {
                            c.children()
                                .filter(|o| o.has_tag_name("option"))
                                .filter_map(|o| o.attribute("value"))
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => ParamType::String,
            };
            // Agents' defaults are often not of their declared type (e.g. "" for an
            // integer); keep them as documentation only when they check.
            let default = content
                .and_then(|c| c.attribute("default"))
                .map(String::from)
                .filter(|d| kind.check(d).is_ok());
            let kind = match kind {
                ParamType::Select(o) if o.is_empty() => ParamType::String,
                k => k,
            };
            parameters.push(ParamSpec {
                required: p.attribute("required") == Some("1"),
                unique: p.attribute("unique") == Some("1") || p.attribute("unique-group").is_some(),
                default,
                description: text(child(p, "shortdesc")),
                kind,
                name,
            });
        }
    }
    if !parameters.iter().any(|p| p.name == "trace_ra") {
        parameters.push(ParamSpec {
            name: "trace_ra".into(),
            kind: ParamType::Boolean,
            required: false,
            unique: false,
            default: None,
            description: "resource-agents: trace this resource's actions to a file".into(),
        });
    }
    let mut actions: Vec<ActionSpec> = Vec::new();
    if let Some(list) = child(root, "actions") {
        for a in list.children().filter(|c| c.has_tag_name("action")) {
            let Some(action) = a.attribute("name").and_then(Action::parse) else {
                continue;
            };
            if action == Action::Recover
                || action == Action::MetaData
                || actions.iter().any(|x| x.action == action)
            {
                continue;
            }
            actions.push(ActionSpec {
                action,
                timeout_ms: a
                    .attribute("timeout")
                    .and_then(parse_duration_ms)
                    .filter(|t| *t > 0)
                    .unwrap_or(20_000),
                interval_ms: a
                    .attribute("interval")
                    .and_then(parse_duration_ms)
                    .unwrap_or(0),
                depth: a
                    .attribute("depth")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0),
            });
        }
    }
    // Old agents omit validate-all from their meta-data; calling it then answers
    // "unimplemented", which is what the contract expects.
    for required in [
        Action::Validate,
        Action::Start,
        Action::Stop,
        Action::Monitor,
    ] {
        if !actions.iter().any(|a| a.action == required) {
            if required == Action::Validate {
                actions.push(ActionSpec::new(Action::Validate, 20_000));
            } else {
                return Err(format!(
                    "the required action {required} is not listed in <actions>"
                ));
            }
        }
    }
    Ok(Metadata {
        name: root.attribute("name").unwrap_or_default().to_string(),
        version: root
            .attribute("version")
            .map(String::from)
            .unwrap_or_else(|| text(child(root, "version"))),
        contract: ContractVersion::new(1, 0),
        shortdesc: text(child(root, "shortdesc")),
        longdesc: text(child(root, "longdesc")),
        parameters,
        actions,
        capabilities: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_typed_results() {
        let ok = |a, code| map_exit(a, false, code, None).unwrap();
        assert_eq!(
            ok(Action::Monitor, 0),
            Outcome::State(MonitorState::Running)
        );
        assert_eq!(
            ok(Action::Monitor, 7),
            Outcome::State(MonitorState::NotRunning)
        );
        assert_eq!(
            ok(Action::Monitor, 8),
            Outcome::State(MonitorState::Promoted)
        );
        assert_eq!(
            ok(Action::Monitor, 9),
            Outcome::State(MonitorState::FailedPromoted)
        );
        assert_eq!(
            ok(Action::Monitor, 190),
            Outcome::State(MonitorState::Degraded)
        );
        assert_eq!(ok(Action::Stop, 7), Outcome::Done);
        assert_eq!(
            map_exit(Action::Monitor, true, 5, None).unwrap(),
            Outcome::State(MonitorState::NotRunning)
        );
        let err = |a, code| map_exit(a, false, code, Some("why".into())).unwrap_err();
        assert_eq!(err(Action::Start, 7).class, ErrorClass::Generic);
        assert_eq!(err(Action::Monitor, 5).class, ErrorClass::NotInstalled);
        assert_eq!(err(Action::Start, 6).class, ErrorClass::Misconfigured);
        assert_eq!(err(Action::Start, 2).reason, "why");
        let unknown = err(Action::Monitor, 42);
        assert_eq!(unknown.cause, FailureCause::BadReply);
        assert!(
            unknown.reason.contains("42, which is not an OCF exit code"),
            "{}",
            unknown.reason
        );
    }

    #[test]
    fn the_last_exit_reason_wins() {
        assert_eq!(
            exit_reason(b"noise\nocf-exit-reason:first\nocf-exit-reason: second \n"),
            Some("second".into())
        );
        assert_eq!(exit_reason(b"nothing here"), None);
    }

    #[test]
    fn durations_in_ocf_spellings() {
        assert_eq!(parse_duration_ms("20s"), Some(20_000));
        assert_eq!(parse_duration_ms("20"), Some(20_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn names_must_be_ocf_provider_type() {
        assert_eq!(OcfName::parse("ocf:heartbeat:Dummy").unwrap().kind, "Dummy");
        assert!(OcfName::parse("ocf:heartbeat").is_none());
        assert!(OcfName::parse("ocf:../x:y").is_none());
        assert!(OcfName::parse("lsb:foo:bar").is_none());
    }

    #[test]
    fn parses_ocf_meta_data_and_round_trips_through_our_renderer() {
        let original = Metadata {
            name: "web".into(),
            version: "1.0".into(),
            contract: ContractVersion::new(1, 0),
            shortdesc: "Web".into(),
            longdesc: "A web server".into(),
            parameters: vec![ParamSpec {
                name: "port".into(),
                kind: ParamType::Integer,
                required: true,
                unique: true,
                default: Some("80".into()),
                description: "TCP port".into(),
            }],
            actions: vec![
                ActionSpec::new(Action::Validate, 5000),
                ActionSpec::new(Action::Start, 20000),
                ActionSpec::new(Action::Stop, 20000),
                ActionSpec::monitor(10000, 10000),
            ],
            capabilities: vec![],
        };
        let parsed = parse_metadata(&original.to_ocf_xml()).unwrap();
        assert_eq!(parsed.parameters[0], original.parameters[0]);
        assert_eq!(parsed.actions, original.actions);
        assert_eq!(parsed.longdesc, "A web server");
    }

    #[test]
    fn garbage_is_not_meta_data() {
        assert!(parse_metadata("hello, I am not XML").is_err());
        assert!(
            parse_metadata("<other/>")
                .unwrap_err()
                .contains("expected <resource-agent>")
        );
    }
}
