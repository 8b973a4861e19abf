//! The administrator's config file (TOML). This module holds the `[agents]`
//! section: where installed agents live, the OCF root, sandbox limits, capability
//! grants and trusted native libraries.

use anyhow::Context;
use baton_plugin_api::Grant;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where `baton` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/baton/cluster.toml";

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Config {
    /// Agent settings.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// The cluster (nodes, services), when the file has a `[cluster]` section.
    #[serde(skip)]
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
}

/// `[agents]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// The agent store that `baton agent install` writes and the daemon reads.
    pub store: PathBuf,
    /// The OCF root (`OCF_ROOT`, where `lib/heartbeat/ocf-shellfuncs` is); agents
    /// are `OCF_ROOT/resource.d/PROVIDER/TYPE`.
    pub ocf_root: PathBuf,
    /// More directories holding `PROVIDER/TYPE` agents, searched after
    /// `OCF_ROOT/resource.d` (Pacemaker's `OCF_RA_PATH`); `OCF_ROOT` stays one.
    pub ocf_path: Vec<PathBuf>,
    /// This node's name as agents see it (default: the host name).
    pub node: Option<String>,
    /// Limits of the native runner.
    pub native: NativeConfig,
    /// Limits of the WebAssembly sandbox.
    pub wasm: WasmConfig,
    /// Capabilities granted per agent type: `name = ["exec:/usr/bin/pg_ctl", ...]`.
    pub grants: BTreeMap<String, Vec<Grant>>,
    /// Native agent types that run inside the host process (a crash there takes the
    /// node down; only for libraries you vouch for).
    pub trusted: Vec<String>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            store: PathBuf::from("/var/lib/baton/agents"),
            ocf_root: PathBuf::from("/usr/lib/ocf"),
            ocf_path: Vec::new(),
            node: None,
            native: NativeConfig::default(),
            wasm: WasmConfig::default(),
            grants: BTreeMap::new(),
            trusted: Vec::new(),
        }
    }
}

impl AgentsConfig {
    /// The directories OCF agents are searched in, in order: `OCF_ROOT/resource.d`,
    /// then `ocf_path`.
    pub fn ocf_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.ocf_root.join("resource.d"))
            .chain(self.ocf_path.iter().cloned())
            .collect()
    }
}

/// `[agents.native]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// Address-space limit of each runner process, MiB (0: none).
    pub memory_limit_mib: u64,
    /// Crashes within `crash_window_s` that quarantine a library.
    pub quarantine_after: usize,
    /// The window crashes are counted in, seconds.
    pub crash_window_s: u64,
    /// How long a quarantined library stays refused, seconds.
    pub quarantine_s: u64,
    /// Runner processes that may serve one agent type at once (its resources share them).
    pub runners: usize,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            memory_limit_mib: 1024,
            quarantine_after: 5,
            crash_window_s: 60,
            quarantine_s: 600,
            runners: 4,
        }
    }
}

/// `[agents.wasm]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// Linear memory per instance, MiB.
    pub memory_mib: usize,
    /// Wasm stack per call, KiB.
    pub stack_kib: usize,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            memory_mib: 64,
            stack_kib: 512,
        }
    }
}

impl Config {
    /// Read `path`; without a path, read [`DEFAULT_CONFIG`] if it exists, else use defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read config file {}", path.display()));
            }
        };
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// [`Config::load`] for the `agent` commands, which need only `[agents]`: a
    /// scenario file (`baton scenario new`) is accepted too, so agents are
    /// installed into, and tried with, the store its nodes' configs name.
    pub fn load_agents(path: Option<&Path>) -> anyhow::Result<Config> {
        if let Some(p) = path
            && let Ok(text) = std::fs::read_to_string(p)
            && let Ok(table) = toml::from_str::<toml::Table>(&text)
            && table.contains_key("scenario")
        {
            let agents = table
                .get("agents")
                .cloned()
                .unwrap_or_else(|| toml::Table::new().into());
            let mut only = toml::Table::new();
            only.insert("agents".into(), agents);
            return Config::parse(&toml::to_string(&only)?)
                .with_context(|| format!("scenario file {}, its [agents]", p.display()));
        }
        Config::load(path)
    }

    /// Parse config text; errors name the line, the key and what is expected.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        for key in table.keys() {
            if !["agents", "cluster", "node", "service"].contains(&key.as_str()) {
                anyhow::bail!(
                    "unknown section {key:?}; the config has [agents], [cluster], [[node]] and [[service]]"
                );
            }
        }
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        config.cluster = crate::cluster::config::ClusterConfig::parse(text)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for name in &config.agents.trusted {
            if name.starts_with("ocf:") {
                anyhow::bail!(
                    "agents.trusted: {name:?} is an OCF agent; only native libraries can be trusted"
                );
            }
        }
        if config.agents.wasm.memory_mib == 0 {
            anyhow::bail!("agents.wasm.memory_mib: must be at least 1");
        }
        Ok(config)
    }

    /// This node's name for agents.
    pub fn node_name(&self) -> String {
        self.agents.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_agents_section_parses() {
        let c = Config::parse(
            r#"
            [agents]
            store = "/tmp/store"
            trusted = ["fastlib"]
            [agents.grants]
            pg = ["exec:/usr/bin/pg_ctl", "read:/etc/postgresql"]
            [agents.wasm]
            memory_mib = 32
            "#,
        )
        .unwrap();
        assert_eq!(c.agents.store, PathBuf::from("/tmp/store"));
        assert_eq!(c.agents.grants["pg"].len(), 2);
        assert_eq!(c.agents.wasm.memory_mib, 32);
        assert_eq!(c.agents.native.memory_limit_mib, 1024);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = format!(
            "{:#}",
            Config::parse("[agents]\nstroe = \"/x\"\n").unwrap_err()
        );
        assert!(e.contains("stroe"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[agents.grants]\npg = [\"exec:pg_ctl\"]\n").unwrap_err()
        );
        assert!(e.contains("the path must be absolute"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[agents]\ntrusted = [\"ocf:heartbeat:IPaddr2\"]\n").unwrap_err()
        );
        assert!(e.contains("only native libraries can be trusted"), "{e}");
    }
}
