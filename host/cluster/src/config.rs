//! The cluster part of the config file: nodes and their links, the key, timing,
//! quorum and witness, fencing bound, and services with their resources. Every
//! problem is reported with its path (`service[0].resource[1].params.port`).

use super::membership::Timing;
use super::node::{Bounds, ClusterSpec};
use super::placement::{FailurePolicy, ServiceSpec, Strategy};
use super::quorum::QuorumPolicy;
use super::wire::NodeId;
use baton_plugin_api::Params;
use serde::Deserialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's name (packets of other clusters are dropped).
    pub name: String,
    /// File with the shared key (at least 16 bytes; `head -c 32 /dev/urandom`).
    pub key_file: PathBuf,
    /// `fast` or `default`.
    #[serde(default = "default_timing")]
    pub timing: String,
    /// The longest a node that lost quorum may take to stop its services, ms.
    #[serde(default = "default_self_fence")]
    pub self_fence_ms: u64,
    /// Refuse quorum after a cold start until every node was seen once.
    #[serde(default)]
    pub wait_for_all: bool,
    /// A witness lease file and its votes.
    #[serde(default)]
    pub witness: Option<WitnessSection>,
    /// The fence agent survivors use on lost nodes (none: survivors wait the fence wait).
    #[serde(default)]
    pub fencing: Option<FencingSection>,
    /// A hardware watchdog the daemon arms and pets (production only; opt-in).
    #[serde(default)]
    pub watchdog: Option<WatchdogSection>,
    /// Health checks that take part in quorum (a node that fails them runs nothing
    /// and does not hold the witness).
    #[serde(default)]
    pub health: Option<HealthSection>,
    /// The web console on each node's `http` address (off without this).
    #[serde(default)]
    pub console: Option<ConsoleSection>,
    /// TLS on the node's `http` address (or plain HTTP, said explicitly).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The newest wire version this node speaks (per node): hold it at the
    /// previous release's during an upgrade, or stand in for that release in
    /// a test. Default: this build's newest.
    #[serde(default)]
    pub wire_version: Option<u8>,
}

/// `[cluster.tls]` (per node): the certificate and key this node serves its
/// `http` address with, and the cluster CA it checks the others' with (`{node}`
/// in a path stands for the node's name); or `plain = true` for plain HTTP (a
/// lab, a network trusted end to end).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM: this node's certificate (then its CA's, if any).
    pub cert_file: Option<PathBuf>,
    /// PEM: its private key (root-only, mode 0600).
    pub key_file: Option<PathBuf>,
    /// PEM: the cluster CA's certificate; the others' certificates must chain to it.
    pub ca_file: Option<PathBuf>,
    /// Serve and ask plain HTTP instead.
    #[serde(default)]
    pub plain: bool,
}

/// `[cluster.console]`: the web console, served on a node's `http` address.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Operators' tokens, one `NAME ROLE sha256:HASH` per line (`baton token
    /// add` writes them; ROLE `viewer` or `operator`); root-only (mode 0600).
    /// NAME is recorded with each action.
    pub tokens_file: PathBuf,
    /// `token` (the default): viewing needs a token too; `open`: anyone who
    /// reaches the address may view, actions still need a token.
    #[serde(default = "default_console_view")]
    pub view: String,
    /// `token` (the default): `/metrics` needs a token (a viewer's will do),
    /// as the console does; `open`: anyone who reaches the address may scrape.
    #[serde(default = "default_console_view")]
    pub metrics: String,
}

fn default_console_view() -> String {
    "token".into()
}

/// `[cluster.health]`: checks every node runs; failing them (`fail_after` rounds
/// in a row) takes this node's quorum away until they pass `recover_after` rounds
/// in a row.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `tcp:HOST:PORT` (connects) or `arp:IPV4` (someone answers ARP for it on the
    /// interface that routes to it), e.g. the service LAN's gateway.
    pub checks: Vec<String>,
    /// How often the checks run, ms.
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    /// One check's deadline, ms.
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Failed rounds in a row that make the node unhealthy.
    #[serde(default = "default_fail_after")]
    pub fail_after: u32,
    /// Passed rounds in a row that make it healthy again.
    #[serde(default = "default_recover_after")]
    pub recover_after: u32,
}

/// One health check (`[cluster.health] checks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection to HOST:PORT succeeds.
    Tcp(String),
    /// Someone answers ARP for the address on the interface that routes to it.
    Arp(std::net::Ipv4Addr),
}

impl Check {
    /// Parse `tcp:HOST:PORT` or `arp:IPV4`.
    pub fn parse(text: &str) -> Result<Check, String> {
        if let Some(target) = text.strip_prefix("tcp:") {
            let port_ok = target
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            return if port_ok {
                Ok(Check::Tcp(target.to_string()))
            } else {
                Err(format!("{text:?}: write tcp:HOST:PORT"))
            };
        }
        if let Some(ip) = text.strip_prefix("arp:") {
            return ip
                .parse()
                .map(Check::Arp)
                .map_err(|_| format!("{text:?}: write arp:IPV4 (an IPv4 address on a local LAN)"));
        }
        Err(format!("{text:?}: a check is tcp:HOST:PORT or arp:IPV4"))
    }
}

fn default_health_interval() -> u64 {
    500
}
fn default_health_timeout() -> u64 {
    300
}
fn default_fail_after() -> u32 {
    2
}
fn default_recover_after() -> u32 {
    3
}

/// `[cluster.fencing]`: a fence agent, loaded like a resource agent. Its `start`
/// with `target=NODE` must return only once the node is confirmed off.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FencingSection {
    /// The agent (`lab-fence`, an installed name, `ocf:vendor:fence-ipmi`).
    pub agent: String,
    /// Its parameters (besides `target`, which the daemon sets per fence).
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Deadline of one fence, ms.
    #[serde(default = "default_fence_timeout")]
    pub timeout_ms: u64,
}

fn default_fence_timeout() -> u64 {
    20_000
}

/// `[cluster.watchdog]`: opt-in. The daemon opens the device, sets its timeout and
/// pets it every tick while it is healthy (quorate, or holding nothing); a node
/// that lost quorum and cannot stop its services is reset by the hardware.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSection {
    /// The device, e.g. `/dev/watchdog0`.
    pub device: PathBuf,
    /// Seconds without a pet before the hardware resets the machine.
    #[serde(default = "default_watchdog_timeout")]
    pub timeout_s: u32,
}

fn default_watchdog_timeout() -> u32 {
    10
}

fn default_timing() -> String {
    "default".into()
}

fn default_self_fence() -> u64 {
    2000
}

/// `[cluster.witness]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// A lease file on storage every node reaches (a network filesystem).
    pub file: Option<PathBuf>,
    /// Or a shared block device: the lease is one 4 KiB block of it.
    pub disk: Option<PathBuf>,
    /// Which block of `disk` (default 0; resource leases need other slots).
    #[serde(default)]
    pub slot: u64,
    /// Its votes (N−1 lets the last survivor of N run).
    pub votes: u32,
}

/// `[[node]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name.
    pub name: String,
    /// Its id, 1..=64, unique.
    pub id: NodeId,
    /// Its address on each link (`ADDRESS:PORT`), in link order.
    pub links: Vec<String>,
    /// Its votes.
    #[serde(default = "one")]
    pub votes: u32,
    /// Where its daemon serves HTTP (`/metrics`), `ADDRESS:PORT`; none: off.
    #[serde(default)]
    pub http: Option<String>,
    /// Site data of this node: `{KEY}` in a parameter value becomes this
    /// node's value of KEY (its interface name, its data directory); `{node}`
    /// is its name.
    #[serde(default)]
    pub site: BTreeMap<String, toml::Value>,
}

impl NodeSection {
    /// A resource's parameters on this node: `{node}` in a value becomes the
    /// node's name, `{KEY}` its site value of KEY.
    pub fn params(&self, params: &BTreeMap<String, toml::Value>) -> Params {
        ClusterConfig::params(params)
            .into_iter()
            .map(|(k, v)| (k, self.resolve(&v)))
            .collect()
    }

    fn resolve(&self, value: &str) -> String {
        let mut out = value.replace("{node}", &self.name);
        for (key, v) in &self.site {
            if let Some(text) = param_text(v) {
                out = out.replace(&format!("{{{key}}}"), &text);
            }
        }
        out
    }
}

/// The `{KEY}` references in a parameter value.
fn references(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let key = &after[..close];
        if !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            out.push(key);
        }
        rest = &after[close + 1..];
    }
    out
}

/// Problems with `{KEY}` in the parameter `path` = `value`: every node must
/// have KEY in its site data.
fn site_problems(path: &str, value: &toml::Value, nodes: &[NodeSection]) -> Vec<String> {
    let Some(text) = param_text(value) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in references(&text) {
        if key == "node" {
            continue;
        }
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.site.contains_key(key))
            .map(|n| n.name.as_str())
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{path}: {{{key}}} is not in the site data of {}; add {key} = \"...\" to their [node.site] (or write the value itself)",
                missing.join(", ")
            ));
        }
    }
    out
}

fn one() -> u32 {
    1
}

/// `[[service]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Its name.
    pub name: String,
    /// `standby`, `mutual`, `n-to-1`, `rotating` or `clone`.
    pub strategy: String,
    /// Node names in order of preference.
    #[serde(default)]
    pub preferred: Vec<String>,
    /// Resources, started in order and stopped in reverse.
    #[serde(default, rename = "resource")]
    pub resources: Vec<ResourceSection>,
    /// Failures on one node restarted in place; at this many (unexpired) the service moves.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// A failure stops counting after this many seconds.
    #[serde(default = "default_failure_expiry")]
    pub failure_expiry_s: u64,
    /// The wait before the second restart in a row on a node, ms (the first is
    /// at once); it doubles with every further failure.
    #[serde(default = "default_restart_backoff")]
    pub restart_backoff_ms: u64,
    /// The longest wait before a restart, ms.
    #[serde(default = "default_restart_backoff_max")]
    pub restart_backoff_max_ms: u64,
    /// What a node that loses quorum does with it: `stop` (the default, and the
    /// only choice for a service that runs on one node) or `keep` (a clone that
    /// shares nothing, such as a server behind a virtual address).
    #[serde(default = "default_without_quorum")]
    pub without_quorum: String,
}

fn default_without_quorum() -> String {
    "stop".into()
}

fn default_max_restarts() -> u32 {
    3
}

fn default_failure_expiry() -> u64 {
    600
}

fn default_restart_backoff() -> u64 {
    1000
}

fn default_restart_backoff_max() -> u64 {
    60_000
}

/// A call's deadline when neither the config nor the agent gives one, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;

/// `[[service.resource]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    /// The agent type (`process`, an installed name, `ocf:heartbeat:IPaddr2`).
    pub agent: String,
    /// Its parameters.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Monitor interval, ms (0: no recurring monitor).
    #[serde(default = "default_monitor")]
    pub monitor_ms: u64,
    /// Deadline of each call, ms (default: the agent's advertised timeout).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_monitor() -> u64 {
    5000
}

/// The cluster config, checked.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[[node]]`, in file order.
    pub nodes: Vec<NodeSection>,
    /// `[[service]]`, in file order.
    pub services: Vec<ServiceSection>,
    /// Parsed link addresses per node id.
    pub addresses: BTreeMap<NodeId, Vec<SocketAddr>>,
    /// The timing profile.
    pub timing: Timing,
    /// The fingerprint of the cluster-wide config: every table but `[agents]`,
    /// less what may differ per node (`key_file`'s path, `watchdog`, `health`, `console`,
    /// the witness's `file` and `disk` paths), in canonical form, SHA-256,
    /// first 8 bytes. Heartbeats carry it; nodes of different fingerprints do
    /// not form one membership.
    pub fingerprint: u64,
    /// The file's tables but `[agents]`, as parsed (what a reload compares).
    pub table: toml::Table,
}

#[derive(Deserialize)]
struct Raw {
    cluster: Option<ClusterSection>,
    #[serde(default)]
    node: Vec<NodeSection>,
    #[serde(default)]
    service: Vec<ServiceSection>,
}

/// Every problem found, each with its path.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The `[cluster]` keys that may differ per node (not in the fingerprint).
pub(crate) const LOCAL_KEYS: [&str; 6] = [
    "key_file",
    "watchdog",
    "health",
    "console",
    "tls",
    "wire_version",
];

/// The cluster-wide part of a config's tables: without what may differ per node.
fn cluster_wide(table: &toml::Table) -> toml::Table {
    let mut wide = table.clone();
    if let Some(toml::Value::Table(cluster)) = wide.get_mut("cluster") {
        for local in LOCAL_KEYS {
            cluster.remove(local);
        }
        if let Some(toml::Value::Table(witness)) = cluster.get_mut("witness") {
            witness.remove("file");
            witness.remove("disk");
        }
    }
    wide
}

/// See [`ClusterConfig::fingerprint`].
fn fingerprint_of(table: &toml::Table) -> u64 {
    let wide = cluster_wide(table);
    let canonical = toml::to_string(&wide).unwrap_or_default();
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

fn strategy(name: &str) -> Option<Strategy> {
    Some(match name {
        "standby" => Strategy::Standby,
        "mutual" => Strategy::Mutual,
        "n-to-1" => Strategy::NToOne,
        "rotating" => Strategy::Rotating,
        "clone" => Strategy::Clone,
        "promotable" => Strategy::Promotable,
        _ => return None,
    })
}

/// A parameter value as the agent sees it: strings as they are, numbers and
/// booleans in their TOML spelling.
pub fn param_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl ClusterConfig {
    /// Parse the cluster sections of a config file's text. `Ok(None)` when the file
    /// has no `[cluster]` (an agents-only config).
    pub fn parse(text: &str) -> Result<Option<ClusterConfig>, ConfigErrors> {
        let mut fingerprint = 0;
        let mut parsed = toml::Table::new();
        let raw: Raw = toml::from_str::<toml::Table>(text)
            .map_err(|e| ConfigErrors(vec![e.to_string().trim_end().to_string()]))
            .and_then(|mut table| {
                table.remove("agents");
                fingerprint = fingerprint_of(&table);
                parsed = table.clone();
                toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        ConfigErrors(vec![e.to_string().trim_end().to_string()])
                    })
            })?;
        let Some(cluster) = raw.cluster else {
            if raw.node.is_empty() && raw.service.is_empty() {
                return Ok(None);
            }
            return Err(ConfigErrors(vec![
                "cluster: missing; add a [cluster] section with name and key_file".into(),
            ]));
        };
        let mut errors = Vec::new();
        let timing = match cluster.timing.as_str() {
            "fast" => Timing::FAST,
            "default" => Timing::DEFAULT,
            other => {
                errors.push(format!(
                    "cluster.timing: {other:?} is not a profile; use \"fast\" or \"default\""
                ));
                Timing::DEFAULT
            }
        };
        if raw.node.is_empty() {
            errors
                .push("node: no [[node]] sections; list every node with name, id and links".into());
        }
        let link_count = raw.node.first().map(|n| n.links.len()).unwrap_or(0);
        let mut addresses = BTreeMap::new();
        for (i, n) in raw.node.iter().enumerate() {
            if n.id == 0 || n.id > super::wire::MAX_NODES {
                errors.push(format!(
                    "node[{i}].id: {} is out of range; use 1..=64",
                    n.id
                ));
            }
            if raw.node[..i].iter().any(|m| m.id == n.id) {
                errors.push(format!("node[{i}].id: {} is used by another node", n.id));
            }
            if raw.node[..i].iter().any(|m| m.name == n.name) {
                errors.push(format!(
                    "node[{i}].name: {:?} is used by another node",
                    n.name
                ));
            }
            if n.links.is_empty() {
                errors.push(format!(
                    "node[{i}].links: empty; give ADDRESS:PORT for each link"
                ));
            }
            if n.links.len() != link_count {
                errors.push(format!(
                    "node[{i}].links: {} links, but node[0] has {link_count}; every node needs the same links",
                    n.links.len()
                ));
            }
            let mut parsed = Vec::new();
            for (j, l) in n.links.iter().enumerate() {
                match l.parse::<SocketAddr>() {
                    Ok(a) => parsed.push(a),
                    Err(_) => {
                        errors.push(format!("node[{i}].links[{j}]: {l:?} is not ADDRESS:PORT"))
                    }
                }
            }
            addresses.insert(n.id, parsed);
            for (k, v) in &n.site {
                if param_text(v).is_none() {
                    errors.push(format!(
                        "node[{i}].site.{k}: arrays and tables are not site values; write a string"
                    ));
                }
            }
            if let Some(http) = &n.http
                && http.parse::<SocketAddr>().is_err()
            {
                errors.push(format!(
                    "node[{i}].http: {http:?} is not ADDRESS:PORT (where this node serves /metrics)"
                ));
            }
        }
        let names: Vec<&str> = raw.node.iter().map(|n| n.name.as_str()).collect();
        for (i, s) in raw.service.iter().enumerate() {
            if strategy(&s.strategy).is_none() {
                errors.push(format!(
                    "service[{i}].strategy: {:?} is not a strategy; use standby, mutual, n-to-1, rotating, clone or promotable",
                    s.strategy
                ));
            }
            match (s.without_quorum.as_str(), strategy(&s.strategy)) {
                ("stop", _) | ("keep", Some(Strategy::Clone)) => {}
                ("keep", Some(Strategy::Promotable)) => errors.push(format!(
                    "service[{i}].without_quorum: keep is only for clones; {} is promotable, and a node without quorum must give up its promoted role, so it stops (remove the line)",
                    s.name
                )),
                ("keep", _) => errors.push(format!(
                    "service[{i}].without_quorum: keep is only for clones; {} runs on one node at a time, so it stops where quorum is lost (remove the line)",
                    s.name
                )),
                (other, _) => errors.push(format!(
                    "service[{i}].without_quorum: {other:?}; use stop (the default) or keep (clones only)"
                )),
            }
            for (j, p) in s.preferred.iter().enumerate() {
                if !names.contains(&p.as_str()) {
                    errors.push(format!(
                        "service[{i}].preferred[{j}]: no node is named {p:?} (nodes: {})",
                        names.join(", ")
                    ));
                }
            }
            if raw.service[..i].iter().any(|o| o.name == s.name) {
                errors.push(format!(
                    "service[{i}].name: {:?} is used by another service",
                    s.name
                ));
            }
            if s.resources.is_empty() {
                errors.push(format!(
                    "service[{i}].resource: none; add [[service.resource]] with agent and params"
                ));
            }
            for (j, r) in s.resources.iter().enumerate() {
                for (k, v) in &r.params {
                    if param_text(v).is_none() {
                        errors.push(format!(
                            "service[{i}].resource[{j}].params.{k}: arrays and tables are not parameter values; write a string"
                        ));
                    }
                    errors.extend(site_problems(
                        &format!("service[{i}].resource[{j}].params.{k}"),
                        v,
                        &raw.node,
                    ));
                }
            }
        }
        if raw.service.len() > 64 {
            errors.push("service: at most 64 services".into());
        }
        if let Some(f) = &cluster.fencing {
            for (k, v) in &f.params {
                if k == "target" {
                    errors.push("cluster.fencing.params.target: set by the daemon for each fence; remove it".into());
                } else if param_text(v).is_none() {
                    errors.push(format!(
                        "cluster.fencing.params.{k}: arrays and tables are not parameter values; write a string"
                    ));
                } else {
                    errors.extend(site_problems(
                        &format!("cluster.fencing.params.{k}"),
                        v,
                        &raw.node,
                    ));
                }
            }
        }
        if let Some(w) = &cluster.watchdog {
            if !w.device.starts_with("/dev") {
                errors.push(format!(
                    "cluster.watchdog.device: {} is not a device; give the watchdog device, e.g. /dev/watchdog0",
                    w.device.display()
                ));
            }
            if w.timeout_s == 0 || w.timeout_s > 600 {
                errors.push(format!(
                    "cluster.watchdog.timeout_s: {} is out of range; use 1..=600 (longer than self_fence_ms)",
                    w.timeout_s
                ));
            } else if u64::from(w.timeout_s) * 1000 <= cluster.self_fence_ms {
                errors.push(format!(
                    "cluster.watchdog.timeout_s: {} s is not longer than self_fence_ms ({} ms); a stop that is on time would reset the machine",
                    w.timeout_s, cluster.self_fence_ms
                ));
            }
        }
        if let Some(h) = &cluster.health {
            for (i, c) in h.checks.iter().enumerate() {
                if let Err(e) = Check::parse(c) {
                    errors.push(format!("cluster.health.checks[{i}]: {e}"));
                }
            }
            if h.checks.is_empty() {
                errors.push("cluster.health.checks: empty; give e.g. [\"arp:198.18.2.1\"] (the service LAN's gateway) or remove [cluster.health]".into());
            }
            if h.fail_after == 0 || h.recover_after == 0 {
                errors
                    .push("cluster.health: fail_after and recover_after must be at least 1".into());
            }
            if h.timeout_ms >= h.interval_ms {
                errors.push(format!(
                    "cluster.health.timeout_ms: {} is not shorter than interval_ms ({})",
                    h.timeout_ms, h.interval_ms
                ));
            }
        }
        if let Some(v) = cluster.wire_version
            && !(crate::wire::OLDEST..=crate::wire::VERSION).contains(&v)
        {
            errors.push(format!(
                "cluster.wire_version: {v}; this build speaks {}–{}",
                crate::wire::OLDEST,
                crate::wire::VERSION
            ));
        }
        match &cluster.tls {
            Some(t) if t.plain && (t.cert_file.is_some() || t.key_file.is_some()) => errors
                .push("cluster.tls: plain = true with cert_file or key_file; choose one".into()),
            Some(t) if !t.plain => {
                for (field, given) in [
                    ("cert_file", &t.cert_file),
                    ("key_file", &t.key_file),
                    ("ca_file", &t.ca_file),
                ] {
                    if given.is_none() {
                        errors.push(format!(
                            "cluster.tls.{field}: missing (`baton tls init` makes the files), or plain = true for plain HTTP"
                        ));
                    }
                }
            }
            _ => {}
        }
        if let Some(c) = &cluster.console {
            for (field, value, what) in [
                ("view", &c.view, "view"),
                ("metrics", &c.metrics, "scrape /metrics"),
            ] {
                if value != "token" && value != "open" {
                    errors.push(format!(
                        "cluster.console.{field}: {value:?}; use \"token\" (it needs a token) or \"open\" (anyone who reaches the address may {what})"
                    ));
                }
            }
        }
        if let Some(w) = &cluster.witness {
            if w.votes == 0 {
                errors.push("cluster.witness.votes: 0; give the witness at least one vote (N-1 lets the last survivor run)".into());
            }
            match (&w.file, &w.disk) {
                (None, None) => errors.push(
                    "cluster.witness: no storage; give file = \"/shared/baton/witness\" or disk = \"/dev/...\"".into(),
                ),
                (Some(_), Some(_)) => errors.push(
                    "cluster.witness: both file and disk; a witness lives in one place, keep one".into(),
                ),
                _ => {}
            }
            if w.file.is_some() && w.slot != 0 {
                errors.push("cluster.witness.slot: only for a disk witness; remove it".into());
            }
        }
        if errors.is_empty() {
            Ok(Some(ClusterConfig {
                cluster,
                nodes: raw.node,
                services: raw.service,
                addresses,
                timing,
                fingerprint,
                table: parsed,
            }))
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSection> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node named `name` for `baton run --node`, or why there is none.
    pub fn this_node(&self, name: &str) -> Result<&NodeSection, String> {
        self.node(name).ok_or_else(|| {
            format!(
                "--node {name}: no [[node]] is named {name:?} (nodes: {})",
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The pure cluster description every node's state machine gets.
    pub fn spec(&self) -> ClusterSpec {
        let id_of = |name: &str| self.node(name).map(|n| n.id);
        ClusterSpec {
            nodes: self.nodes.iter().map(|n| n.id).collect(),
            links: self.nodes.first().map(|n| n.links.len()).unwrap_or(0),
            bounds: Bounds {
                membership: self.timing,
                self_fence: Duration::from_millis(self.cluster.self_fence_ms),
                max_delay: Duration::from_millis(5),
            },
            quorum: QuorumPolicy {
                votes: self.nodes.iter().map(|n| (n.id, n.votes)).collect(),
                witness_votes: self.cluster.witness.as_ref().map(|w| w.votes).unwrap_or(0),
                wait_for_all: self.cluster.wait_for_all,
            },
            services: self
                .services
                .iter()
                .map(|s| ServiceSpec {
                    name: s.name.clone(),
                    strategy: strategy(&s.strategy).unwrap_or(Strategy::Standby),
                    preferred: s.preferred.iter().filter_map(|p| id_of(p)).collect(),
                    failures: FailurePolicy {
                        max_restarts: s.max_restarts.max(1),
                        expiry: Duration::from_secs(s.failure_expiry_s),
                        backoff: Duration::from_millis(s.restart_backoff_ms),
                        backoff_max: Duration::from_millis(
                            s.restart_backoff_max_ms.max(s.restart_backoff_ms),
                        ),
                    },
                    keep_without_quorum: s.without_quorum == "keep",
                    // The agents' own start deadlines replace this once loaded
                    // (the daemon sets it from them).
                    start_timeout: Duration::from_millis(
                        s.resources
                            .iter()
                            .map(|r| r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
                            .sum(),
                    ),
                })
                .collect(),
            fencing: self.cluster.fencing.is_some(),
            config: self.fingerprint,
        }
    }

    /// How the node driver monitors each service, from the config alone (the
    /// daemon uses its agents' advertised deadlines where the config gives none).
    pub fn shells(&self) -> Vec<crate::driver::ServiceShell> {
        self.services
            .iter()
            .map(|s| crate::driver::ServiceShell {
                monitor_every: s
                    .resources
                    .iter()
                    .map(|r| r.monitor_ms)
                    .filter(|m| *m > 0)
                    .min()
                    .unwrap_or(0),
                monitor_budget: s
                    .resources
                    .iter()
                    .map(|r| r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
                    .sum(),
            })
            .collect()
    }

    /// A resource's parameters as text.
    pub fn params(params: &BTreeMap<String, toml::Value>) -> Params {
        params
            .iter()
            .filter_map(|(k, v)| param_text(v).map(|t| (k.clone(), t)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agents]
store = "/tmp/x"

[cluster]
name = "lab"
key_file = "/etc/baton/key"
timing = "fast"

[[node]]
name = "n1"
id = 1
links = ["198.18.1.11:5405", "198.18.2.11:5405"]

[[node]]
name = "n2"
id = 2
links = ["198.18.1.12:5405", "198.18.2.12:5405"]

[[service]]
name = "web"
strategy = "standby"
preferred = ["n1", "n2"]
[[service.resource]]
agent = "process"
params = { command = "sleep 100", stop_grace_ms = 500 }
"#;

    #[test]
    fn a_node_http_address_that_is_not_one_is_an_error_by_path() {
        let bad = GOOD.replace("id = 2\n", "id = 2\nhttp = \"port 9100\"\n");
        let e = ClusterConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("node[1].http: \"port 9100\" is not ADDRESS:PORT"),
            "{e}"
        );
        let serves = GOOD.replace("id = 2\n", "id = 2\nhttp = \"198.18.1.12:9100\"\n");
        let half = serves.replace("[cluster]\n", "[cluster]\ntls = { cert_file = \"/c\" }\n");
        let e = ClusterConfig::parse(&half).unwrap_err().to_string();
        assert!(e.contains("cluster.tls.key_file: missing"), "{e}");
        assert!(e.contains("cluster.tls.ca_file: missing"), "{e}");
        let good = serves.replace("[cluster]\n", "[cluster]\ntls = { plain = true }\n");
        let c = ClusterConfig::parse(&good).unwrap().unwrap();
        assert_eq!(c.nodes[1].http.as_deref(), Some("198.18.1.12:9100"));
    }

    #[test]
    fn the_fingerprint_covers_the_cluster_wide_part_only() {
        let fp = |text: &str| ClusterConfig::parse(text).unwrap().unwrap().fingerprint;
        let base = fp(GOOD);
        assert_eq!(
            base,
            ClusterConfig::parse(GOOD).unwrap().unwrap().spec().config
        );
        // Per-node parts: the agents' table, the key file's path, comments, order.
        let local = GOOD
            .replace("store = \"/tmp/x\"", "store = \"/var/lib/other\"")
            .replace("/etc/baton/key", "/srv/keys/lab.key")
            .replace("timing = \"fast\"", "# the lab\ntiming = \"fast\"");
        assert_eq!(fp(&local), base);
        // Cluster-wide parts: a resource parameter, the timing, a node.
        assert_ne!(fp(&GOOD.replace("sleep 100", "sleep 200")), base);
        assert_ne!(fp(&GOOD.replace("\"fast\"", "\"default\"")), base);
        assert_ne!(fp(&GOOD.replace("198.18.2.12", "198.18.2.13")), base);
    }

    #[test]
    fn a_good_config_becomes_a_cluster_spec() {
        let c = ClusterConfig::parse(GOOD).unwrap().unwrap();
        let spec = c.spec();
        assert_eq!(spec.nodes, [1, 2]);
        assert_eq!(spec.links, 2);
        assert_eq!(spec.services[0].preferred, [1, 2]);
        assert_eq!(
            ClusterConfig::params(&c.services[0].resources[0].params)["stop_grace_ms"],
            "500"
        );
    }

    #[test]
    fn site_data_fills_in_each_nodes_parameters() {
        let text = GOOD
            .replace(
                "id = 1\n",
                "id = 1\nsite = { dir = \"/srv/a\", port = 5432 }\n",
            )
            .replace(
                "id = 2\n",
                "id = 2\nsite = { dir = \"/srv/b\", port = 5433 }\n",
            )
            .replace(
                "sleep 100",
                "server --data {dir}/{node} --port {port} {not a key}",
            );
        let c = ClusterConfig::parse(&text).unwrap().unwrap();
        let params = &c.services[0].resources[0].params;
        assert_eq!(
            c.nodes[0].params(params)["command"],
            "server --data /srv/a/n1 --port 5432 {not a key}"
        );
        assert_eq!(
            c.nodes[1].params(params)["command"],
            "server --data /srv/b/n2 --port 5433 {not a key}"
        );
        let partial = text.replace(", port = 5433", "");
        let e = ClusterConfig::parse(&partial).unwrap_err().to_string();
        assert!(
            e.contains(
                "service[0].resource[0].params.command: {port} is not in the site data of n2"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_agents_only_config_has_no_cluster() {
        assert!(
            ClusterConfig::parse("[agents]\nstore = \"/x\"\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_error_names_its_path() {
        let bad = GOOD
            .replace("id = 2", "id = 1")
            .replace("\"198.18.2.12:5405\"", "\"nowhere\"")
            .replace("strategy = \"standby\"", "strategy = \"active\"")
            .replace(
                "preferred = [\"n1\", \"n2\"]",
                "preferred = [\"n1\", \"n9\"]",
            )
            .replace("timing = \"fast\"", "timing = \"warp\"")
            .replace("stop_grace_ms = 500", "stop_grace_ms = [1]");
        let e = ClusterConfig::parse(&bad).unwrap_err().to_string();
        for wanted in [
            "cluster.timing: \"warp\" is not a profile",
            "node[1].id: 1 is used by another node",
            "node[1].links[1]: \"nowhere\" is not ADDRESS:PORT",
            "service[0].strategy: \"active\" is not a strategy",
            "service[0].preferred[1]: no node is named \"n9\"",
            "service[0].resource[0].params.stop_grace_ms: arrays and tables are not parameter values",
        ] {
            assert!(e.contains(wanted), "missing {wanted:?} in:\n{e}");
        }
    }

    #[test]
    fn only_a_clone_may_keep_running_without_quorum() {
        let with = |strategy: &str, keep: &str| {
            GOOD.replace(
                "strategy = \"standby\"",
                &format!("strategy = \"{strategy}\"\nwithout_quorum = \"{keep}\""),
            )
        };
        let c = ClusterConfig::parse(&with("clone", "keep"))
            .unwrap()
            .unwrap();
        assert!(c.spec().services[0].keep_without_quorum);
        let e = ClusterConfig::parse(&with("standby", "keep"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("service[0].without_quorum: keep is only for clones"),
            "{e}"
        );
        let e = ClusterConfig::parse(&with("clone", "run"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("service[0].without_quorum: \"run\"; use stop (the default) or keep"),
            "{e}"
        );
    }

    #[test]
    fn fencing_and_watchdog_sections_are_checked() {
        let with = |extra: &str| {
            GOOD.replace(
                "timing = \"fast\"\n",
                &format!("timing = \"fast\"\nself_fence_ms = 3000\n{extra}\n"),
            )
        };
        let good = with(
            "[cluster.fencing]\nagent = \"lab-fence\"\nparams = { state_dir = \"/run/x\" }\n\
             [cluster.watchdog]\ndevice = \"/dev/watchdog0\"\ntimeout_s = 10",
        );
        let c = ClusterConfig::parse(&good).unwrap().unwrap();
        assert!(c.spec().fencing);
        assert_eq!(c.cluster.fencing.unwrap().timeout_ms, 20_000);
        let bad = with(
            "[cluster.fencing]\nagent = \"lab-fence\"\nparams = { target = \"n1\", ports = [1] }\n\
             [cluster.watchdog]\ndevice = \"/tmp/dog\"\ntimeout_s = 2",
        );
        let e = ClusterConfig::parse(&bad).unwrap_err().to_string();
        for wanted in [
            "cluster.fencing.params.target: set by the daemon for each fence; remove it",
            "cluster.fencing.params.ports: arrays and tables are not parameter values",
            "cluster.watchdog.device: /tmp/dog is not a device",
            "cluster.watchdog.timeout_s: 2 s is not longer than self_fence_ms (3000 ms)",
        ] {
            assert!(e.contains(wanted), "missing {wanted:?} in:\n{e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = ClusterConfig::parse(&GOOD.replace("timing = \"fast\"", "timming = \"fast\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timming"), "{e}");
    }
}
