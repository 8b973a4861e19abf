use crate::{Action, Capability, ContractVersion};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fmt::Write as _;

/// How an agent describes itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The agent type's name (`process`, `pgsql`, `ocf:heartbeat:Dummy`).
    pub name: String,
    /// The agent's own version (the vendor's release, free form).
    pub version: String,
    /// The contract version the agent was built for.
    pub contract: ContractVersion,
    /// One line: what the agent manages.
    pub shortdesc: String,
    /// A longer description (may be empty).
    #[serde(default)]
    pub longdesc: String,
    /// The parameters a resource of this type takes.
    #[serde(default)]
    pub parameters: Vec<ParamSpec>,
    /// The actions the agent implements, with advertised timeouts.
    pub actions: Vec<ActionSpec>,
    /// What the agent asks to be allowed to do (WebAssembly agents can do nothing else).
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

/// One parameter of an agent type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// The name, `[a-zA-Z0-9_]+` (it becomes `OCF_RESKEY_<name>` for shell agents).
    pub name: String,
    /// What values are accepted.
    #[serde(default)]
    pub kind: ParamType,
    /// Whether a resource must set it.
    #[serde(default)]
    pub required: bool,
    /// Whether two resources of this type must not share a value (an IP, a port).
    #[serde(default)]
    pub unique: bool,
    /// The value the agent uses when the parameter is unset.
    #[serde(default)]
    pub default: Option<String>,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

impl ParamSpec {
    /// A parameter (not `unique`; set the field for one that is).
    ///
    /// ```
    /// use baton_plugin_api::{ParamSpec, ParamType};
    /// let port = ParamSpec::new("port", ParamType::Integer, false, Some("5432"), "TCP port");
    /// assert_eq!(port.default.as_deref(), Some("5432"));
    /// ```
    pub fn new(
        name: &str,
        kind: ParamType,
        required: bool,
        default: Option<&str>,
        description: &str,
    ) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            kind,
            required,
            unique: false,
            default: default.map(Into::into),
            description: description.into(),
        }
    }
}

/// The values a parameter accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "options")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A decimal integer (may be negative).
    Integer,
    /// `true`/`false` (also `yes`/`no`, `1`/`0`, `on`/`off`).
    Boolean,
    /// One of the listed words.
    Select(Vec<String>),
}

impl ParamType {
    /// Check one value; the error says what was expected.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self {
            ParamType::String => Ok(()),
            ParamType::Integer => value
                .trim()
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| format!("not an integer: {value:?}")),
            ParamType::Boolean => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "false" | "yes" | "no" | "1" | "0" | "on" | "off" => Ok(()),
                _ => Err(format!("not a boolean (true/false): {value:?}")),
            },
            ParamType::Select(options) => {
                if options.iter().any(|o| o == value) {
                    Ok(())
                } else {
                    Err(format!("{value:?} is not one of {}", options.join(", ")))
                }
            }
        }
    }

    /// The OCF `content type` word.
    pub fn ocf_name(&self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::Select(_) => "select",
        }
    }
}

/// An implemented action and the timeout the agent advertises for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// Which action.
    pub action: Action,
    /// The minimum time the agent needs; the administrator's timeout must not be lower.
    pub timeout_ms: u64,
    /// For `monitor`: the suggested interval (0 for other actions).
    #[serde(default)]
    pub interval_ms: u64,
    /// For `monitor`: the check level this entry is for.
    #[serde(default)]
    pub depth: u32,
}

impl ActionSpec {
    /// An action with an advertised timeout.
    pub fn new(action: Action, timeout_ms: u64) -> ActionSpec {
        ActionSpec {
            action,
            timeout_ms,
            interval_ms: 0,
            depth: 0,
        }
    }

    /// A monitor entry with a suggested interval.
    pub fn monitor(timeout_ms: u64, interval_ms: u64) -> ActionSpec {
        ActionSpec {
            action: Action::Monitor,
            timeout_ms,
            interval_ms,
            depth: 0,
        }
    }
}

/// Why meta-data is unusable; names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataError {
    /// Which part of the meta-data (`parameters[2].name`, `actions`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "meta-data field {}: {}", self.field, self.problem)
    }
}

impl std::error::Error for MetadataError {}

fn is_word(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

impl Metadata {
    /// The advertised entry for `action`, if the agent implements it.
    pub fn action(&self, action: Action) -> Option<&ActionSpec> {
        self.actions.iter().find(|a| a.action == action)
    }

    /// Whether the agent lists `action` as implemented.
    pub fn implements(&self, action: Action) -> bool {
        self.action(action).is_some()
    }

    /// The parameter named `name`.
    pub fn parameter(&self, name: &str) -> Option<&ParamSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// Check that the meta-data is usable: names well formed, required actions
    /// present, no duplicate parameter, defaults of the right type, no action newer
    /// than the declared contract. Returns every problem, not only the first.
    pub fn check(&self) -> Result<(), Vec<MetadataError>> {
        let mut problems = Vec::new();
        let mut bad =
            |field: String, problem: String| problems.push(MetadataError { field, problem });
        if !is_word(&self.name, &['-', '.', ':']) {
            bad(
                "name".into(),
                format!(
                    "{:?} must be letters, digits, '_', '-', '.' or ':'",
                    self.name
                ),
            );
        }
        if self.version.trim().is_empty() {
            bad(
                "version".into(),
                "is empty; give the agent's release".into(),
            );
        }
        if self.shortdesc.trim().is_empty() {
            bad(
                "shortdesc".into(),
                "is empty; say in one line what the agent manages".into(),
            );
        }
        for (i, p) in self.parameters.iter().enumerate() {
            if !is_word(&p.name, &[]) {
                bad(
                    format!("parameters[{i}].name"),
                    format!("{:?} must be letters, digits or '_'", p.name),
                );
            }
            if self.parameters[..i].iter().any(|q| q.name == p.name) {
                bad(
                    format!("parameters[{i}].name"),
                    format!("{:?} is listed twice", p.name),
                );
            }
            if let Some(d) = &p.default
                && let Err(e) = p.kind.check(d)
            {
                bad(format!("parameters[{i}].default"), e);
            }
            if let ParamType::Select(options) = &p.kind
                && options.is_empty()
            {
                bad(
                    format!("parameters[{i}].kind"),
                    "select with no options".into(),
                );
            }
        }
        for (i, c) in self.capabilities.iter().enumerate() {
            for name in c.parameters() {
                if self.parameter(name).is_none() {
                    let known: Vec<&str> =
                        self.parameters.iter().map(|p| p.name.as_str()).collect();
                    bad(
                        format!("capabilities[{i}]"),
                        format!(
                            "{c} names {{{name}}}, which is not one of the agent's parameters ({})",
                            if known.is_empty() {
                                "it has none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        // meta-data itself is answered by every agent, so it need not be listed.
        for required in Action::ALL
            .into_iter()
            .filter(|a| a.is_required() && *a != Action::MetaData)
        {
            if !self.implements(required) {
                bad(
                    "actions".into(),
                    format!("the required action {required} is missing"),
                );
            }
        }
        for (i, a) in self.actions.iter().enumerate() {
            if a.action.since() > self.contract {
                bad(
                    format!("actions[{i}]"),
                    format!(
                        "{} exists since contract {} but the agent declares {}",
                        a.action,
                        a.action.since(),
                        self.contract
                    ),
                );
            }
            if a.timeout_ms == 0 {
                bad(
                    format!("actions[{i}].timeout_ms"),
                    "must be more than 0".into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Render as OCF 1.1 resource-agent meta-data XML (what `meta-data` prints for
    /// Pacemaker tools).
    pub fn to_ocf_xml(&self) -> String {
        let mut x = String::new();
        let e = xml_escape;
        let _ = writeln!(x, "<?xml version=\"1.0\"?>");
        let _ = writeln!(x, "<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">");
        let _ = writeln!(
            x,
            "<resource-agent name=\"{}\" version=\"{}\">",
            e(&self.name),
            e(&self.version)
        );
        let _ = writeln!(x, "  <version>1.1</version>");
        let long = if self.longdesc.is_empty() {
            &self.shortdesc
        } else {
            &self.longdesc
        };
        let _ = writeln!(x, "  <longdesc lang=\"en\">{}</longdesc>", e(long));
        let _ = writeln!(
            x,
            "  <shortdesc lang=\"en\">{}</shortdesc>",
            e(&self.shortdesc)
        );
        let _ = writeln!(x, "  <parameters>");
        for p in &self.parameters {
            let _ = write!(
                x,
                "    <parameter name=\"{}\" required=\"{}\"",
                e(&p.name),
                u8::from(p.required)
            );
            if p.unique {
                let _ = write!(x, " unique-group=\"{}\"", e(&p.name));
            }
            let _ = writeln!(x, ">");
            let _ = writeln!(
                x,
                "      <longdesc lang=\"en\">{}</longdesc>",
                e(&p.description)
            );
            let first = p.description.lines().next().unwrap_or("");
            let _ = writeln!(x, "      <shortdesc lang=\"en\">{}</shortdesc>", e(first));
            let _ = write!(x, "      <content type=\"{}\"", p.kind.ocf_name());
            if let Some(d) = &p.default {
                let _ = write!(x, " default=\"{}\"", e(d));
            }
            match &p.kind {
                ParamType::Select(options) => {
                    let _ = writeln!(x, ">");
                    for o in options {
                        let _ = writeln!(x, "        <option value=\"{}\"/>", e(o));
                    }
                    let _ = writeln!(x, "      </content>");
                }
                _ => {
                    let _ = writeln!(x, "/>");
                }
            }
            let _ = writeln!(x, "    </parameter>");
        }
        let _ = writeln!(x, "  </parameters>");
        let _ = writeln!(x, "  <actions>");
        for a in &self.actions {
            let name = match a.action {
                Action::Validate => "validate-all",
                other => other.name(),
            };
            let _ = write!(
                x,
                "    <action name=\"{name}\" timeout=\"{}\"",
                ocf_duration(a.timeout_ms)
            );
            if a.interval_ms > 0 {
                let _ = write!(x, " interval=\"{}\"", ocf_duration(a.interval_ms));
            }
            if a.action == Action::Monitor && a.depth > 0 {
                let _ = write!(x, " depth=\"{}\"", a.depth);
            }
            let _ = writeln!(x, "/>");
        }
        let _ = writeln!(x, "  </actions>");
        if !self.capabilities.is_empty() {
            let _ = writeln!(x, "  <special tag=\"baton\">");
            let _ = writeln!(x, "    <contract version=\"{}\"/>", self.contract);
            for c in &self.capabilities {
                let _ = writeln!(x, "    <capability value=\"{}\"/>", e(&c.to_string()));
            }
            let _ = writeln!(x, "  </special>");
        }
        let _ = writeln!(x, "</resource-agent>");
        x
    }
}

fn ocf_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::CONTRACT_VERSION;

    pub(crate) fn sample() -> Metadata {
        Metadata {
            name: "web".into(),
            version: "1.2.0".into(),
            contract: CONTRACT_VERSION,
            shortdesc: "A web server & friends".into(),
            longdesc: String::new(),
            parameters: vec![
                ParamSpec {
                    name: "port".into(),
                    kind: ParamType::Integer,
                    required: true,
                    unique: true,
                    default: None,
                    description: "TCP port".into(),
                },
                ParamSpec {
                    name: "mode".into(),
                    kind: ParamType::Select(vec!["fast".into(), "safe".into()]),
                    required: false,
                    unique: false,
                    default: Some("safe".into()),
                    description: "How".into(),
                },
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5000),
                ActionSpec::new(Action::Start, 20000),
                ActionSpec::new(Action::Stop, 20000),
                ActionSpec::monitor(10000, 10000),
            ],
            capabilities: vec![],
        }
    }

    #[test]
    fn good_metadata_passes() {
        sample().check().unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut m = sample();
        m.name = "bad name!".into();
        m.parameters[1].default = Some("turbo".into());
        m.parameters.push(m.parameters[0].clone());
        m.actions.retain(|a| a.action != Action::Stop);
        m.contract = ContractVersion::new(1, 0);
        m.actions.push(ActionSpec::new(Action::Recover, 1000));
        let problems = m.check().unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("meta-data field name:"), "{all}");
        assert!(
            all.contains("parameters[1].default: \"turbo\" is not one of fast, safe"),
            "{all}"
        );
        assert!(
            all.contains("parameters[2].name: \"port\" is listed twice"),
            "{all}"
        );
        assert!(all.contains("required action stop is missing"), "{all}");
        assert!(
            all.contains("recover exists since contract 1.1 but the agent declares 1.0"),
            "{all}"
        );
    }

    #[test]
    fn a_capability_that_names_no_parameter_is_refused() {
        let mut m = sample();
        m.capabilities = vec![
            "net:127.0.0.1:{port}".parse().unwrap(),
            "net:127.0.0.1:{prot}".parse().unwrap(),
        ];
        let problems = m.check().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "meta-data field capabilities[1]: net:127.0.0.1:{prot} names {prot}, which is not one of the agent's parameters (port, mode)"
        );
    }

    #[test]
    fn ocf_xml_has_escaped_text_parameters_and_actions() {
        let xml = sample().to_ocf_xml();
        assert!(xml.contains("<resource-agent name=\"web\" version=\"1.2.0\">"));
        assert!(xml.contains("<version>1.1</version>"));
        assert!(xml.contains("A web server &amp; friends"));
        assert!(xml.contains("<parameter name=\"port\" required=\"1\" unique-group=\"port\">"));
        assert!(xml.contains("<content type=\"select\" default=\"safe\">"));
        assert!(xml.contains("<action name=\"validate-all\" timeout=\"5s\"/>"));
        assert!(xml.contains("<action name=\"monitor\" timeout=\"10s\" interval=\"10s\"/>"));
    }

    #[test]
    fn parameter_types_check_values() {
        assert!(ParamType::Integer.check("-12").is_ok());
        assert!(ParamType::Integer.check("12a").is_err());
        assert!(ParamType::Boolean.check("Yes").is_ok());
        assert!(ParamType::Boolean.check("maybe").is_err());
    }
}
