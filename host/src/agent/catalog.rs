//! Resolving an agent type name to a loaded agent, whatever its kind.
//!
//! Order: built-in agents, `ocf:PROVIDER:TYPE` through the bridge, a file path
//! (`./x.so`, `x.wasm`: loaded directly, for vendors testing before install), then
//! the agent store.

use crate::agent::backend::builtin::BuiltinBackend;
use crate::agent::backend::native::{RunnerBackend, RunnerPolicy, TrustedBackend};
use crate::agent::backend::ocf::OcfBackend;
use crate::agent::backend::wasm::{WasmBackend, WasmLimits, WasmRuntime};
use crate::agent::host::{AgentHandle, AgentKind};
use crate::agent::store::{AgentStore, StoredKind, sniff};
use crate::config::Config;
use anyhow::{Context, anyhow, bail};
use baton_plugin_api::{CapabilitySet, ContractVersion, Grant, Params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every way this node can get an agent.
pub struct AgentCatalog {
    config: Config,
    policy: RunnerPolicy,
    store: AgentStore,
    wasm: OnceLock<Arc<WasmRuntime>>,
    node: String,
}

/// One line of `baton agent list`.
#[derive(Clone, Debug, Serialize)]
pub struct AgentSummary {
    /// Type name.
    pub name: String,
    /// How it loads.
    pub kind: AgentKind,
    /// The agent's version ("" when unknown without loading it).
    pub version: String,
    /// For an OCF agent, the OCF API version its meta-data declares
    /// (`<version>1.1</version>`), when its script shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocf_api: Option<String>,
    /// Contract version.
    pub contract: Option<ContractVersion>,
    /// Where it comes from.
    pub source: String,
    /// Capabilities the agent requests.
    pub requested: Vec<String>,
    /// Of those, the ones the administrator granted.
    pub granted: Vec<String>,
    /// `ok`, or why the agent cannot be loaded.
    pub state: String,
}

impl AgentCatalog {
    /// A catalog for `config`; native runners are started as `runner_exe agent-runner`.
    pub fn new(config: Config, runner_exe: PathBuf) -> AgentCatalog {
        let native = &config.agents.native;
        let mut policy = RunnerPolicy::new(runner_exe);
        policy.memory_limit_mib = native.memory_limit_mib;
        policy.quarantine_after = native.quarantine_after.max(1);
        policy.crash_window = Duration::from_secs(native.crash_window_s);
        policy.quarantine_for = Duration::from_secs(native.quarantine_s);
        policy.runners = native.runners.max(1);
        let store = AgentStore::new(&config.agents.store);
        let node = config.node_name();
        AgentCatalog {
            config,
            policy,
            store,
            wasm: OnceLock::new(),
            node,
        }
    }

    /// The runner policy native agents get.
    pub fn runner_policy(&self) -> &RunnerPolicy {
        &self.policy
    }

    /// Replace the runner policy (tests shorten backoff and quarantine).
    pub fn set_runner_policy(&mut self, policy: RunnerPolicy) {
        self.policy = policy;
    }

    /// The node name agents are told.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The agent store.
    pub fn store(&self) -> &AgentStore {
        &self.store
    }

    /// The shared WebAssembly runtime (built on first use).
    pub fn wasm_runtime(&self) -> anyhow::Result<Arc<WasmRuntime>> {
        if let Some(rt) = self.wasm.get() {
            return Ok(Arc::clone(rt));
        }
        let w = &self.config.agents.wasm;
        let rt = WasmRuntime::new(WasmLimits {
            memory_bytes: w.memory_mib << 20,
            stack_bytes: w.stack_kib << 10,
        })?;
        Ok(Arc::clone(self.wasm.get_or_init(|| rt)))
    }

    /// What `meta`'s agent may use here: its requests intersected with the grants
    /// for its type name.
    pub fn capability_set(&self, meta: &baton_plugin_api::Metadata) -> CapabilitySet {
        CapabilitySet::new(&meta.capabilities, self.grants(&meta.name)).for_agent(&meta.name)
    }

    /// Every problem with a resource's `params` for agent `handle`, in words: the
    /// parameters against the meta-data, then each capability request that names
    /// a parameter, expanded with them (defaults included) against the grants.
    pub fn resource_problems(&self, handle: &AgentHandle, params: &Params) -> Vec<String> {
        let meta = handle.metadata();
        if let Err(problems) = baton_plugin_api::check_params(meta, params) {
            return problems.iter().map(|p| p.to_string()).collect();
        }
        if !enforces_capabilities(handle.kind()) {
            return Vec::new();
        }
        self.resource_capabilities(handle, params)
            .problems()
            .to_vec()
    }

    /// What agent `handle` may use for a resource with `params` (defaults filled
    /// in): fixed requests and those that name parameters, expanded.
    pub fn resource_capabilities(&self, handle: &AgentHandle, params: &Params) -> CapabilitySet {
        let meta = handle.metadata();
        let caps = self.capability_set(meta);
        if caps.templates().is_empty() {
            return caps;
        }
        let mut full = params.clone();
        for p in &meta.parameters {
            if let (Some(d), false) = (&p.default, full.contains_key(&p.name)) {
                full.insert(p.name.clone(), d.clone());
            }
        }
        caps.for_params(&full)
    }

    fn grants(&self, name: &str) -> &[Grant] {
        self.config
            .agents
            .grants
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn is_trusted(&self, name: &str) -> bool {
        self.config.agents.trusted.iter().any(|t| t == name)
    }

    /// Load the agent called `name` (a type name, `ocf:P:T`, or a file path).
    pub fn load(&self, name: &str) -> anyhow::Result<AgentHandle> {
        if let Some(registered) = baton_agents::builtin_agent(name) {
            return Ok(AgentHandle::new(
                Box::new(BuiltinBackend::new(registered)),
                "built-in",
            ));
        }
        if name.starts_with("ocf:") {
            let agents = &self.config.agents;
            let backend = OcfBackend::load(name, &agents.ocf_root, &agents.ocf_dirs())
                .map_err(anyhow::Error::msg)?;
            return Ok(AgentHandle::new(Box::new(backend), "ocf bridge"));
        }
        let as_path = Path::new(name);
        if name.contains('/') || name.ends_with(".so") || name.ends_with(".wasm") {
            if as_path.is_dir() {
                bail!(
                    "agent {name} is a directory; give the agent file: the .so (target/release/lib….so), \
                     the .wasm (target/wasm32-wasip2/release/….wasm) or, for OCF, the script"
                );
            }
            if !as_path.is_file() {
                bail!("agent file {name} does not exist");
            }
            return self.load_file(as_path);
        }
        if !self.store.contains(name) {
            bail!(
                "unknown agent type {name:?}. Built-in: {}; installed: {}; OCF agents are named ocf:PROVIDER:TYPE. \
                 Install a .so or .wasm with `baton agent install PATH`",
                baton_agents::builtin_agents()
                    .iter()
                    .map(|a| a.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                {
                    let names: Vec<String> = self
                        .store
                        .manifests()
                        .into_iter()
                        .flatten()
                        .map(|m| m.name)
                        .collect();
                    if names.is_empty() {
                        format!("none (store {})", self.store.root().display())
                    } else {
                        names.join(", ")
                    }
                }
            );
        }
        let manifest = self.store.manifest(name)?;
        let (file, precompiled) = self.store.verify(&manifest)?;
        let source = format!("store {}", file.display());
        match manifest.kind {
            StoredKind::Native if self.is_trusted(name) => {
                let b = TrustedBackend::load(&file).map_err(anyhow::Error::msg)?;
                Ok(AgentHandle::new(Box::new(b), source))
            }
            StoredKind::Native => {
                let b =
                    RunnerBackend::load(&file, self.policy.clone()).map_err(anyhow::Error::msg)?;
                Ok(AgentHandle::new(Box::new(b), source))
            }
            StoredKind::Wasm => {
                let rt = self.wasm_runtime()?;
                let pre = precompiled.ok_or_else(|| anyhow!("agent {name}: the store entry lacks its precompiled component; reinstall it"))?;
                // SAFETY: `verify` just checked the precompiled file's SHA-256 against the
                // manifest that `baton agent install` wrote with this file.
                let component = unsafe { rt.deserialize(&pre) }.map_err(anyhow::Error::msg)?;
                let b = WasmBackend::load(rt, &component, &file, self.grants(name), &self.node)
                    .map_err(anyhow::Error::msg)?;
                Ok(AgentHandle::new(Box::new(b), source))
            }
        }
    }

    /// What agent `name` is on this node, to compare between nodes: a
    /// built-in with baton's version, or the SHA-256 of the agent's file
    /// (installed library or component, OCF script, file path).
    pub fn identity(&self, name: &str) -> Result<String, String> {
        if baton_agents::builtin_agent(name).is_some() {
            return Ok(format!("built-in (baton {})", env!("CARGO_PKG_VERSION")));
        }
        let file = if let Some(rest) = name.strip_prefix("ocf:") {
            let rel = rest.replacen(':', "/", 1);
            self.config
                .agents
                .ocf_dirs()
                .into_iter()
                .map(|d| d.join(&rel))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{name}: no such OCF agent here"))?
        } else if name.contains('/') || name.ends_with(".so") || name.ends_with(".wasm") {
            PathBuf::from(name)
        } else {
            let m = self
                .store
                .manifest(name)
                .map_err(|e| format!("{name}: {e:#}"))?;
            return Ok(format!("sha256 {}", m.sha256));
        };
        crate::agent::store::sha256_file(&file)
            .map(|h| format!("sha256 {h}"))
            .map_err(|e| format!("{e:#}"))
    }

    fn load_file(&self, path: &Path) -> anyhow::Result<AgentHandle> {
        let source = format!("file {}", path.display());
        if is_script(path) {
            // An OCF agent before it is packaged: run through the bridge with the
            // configured OCF_ROOT, so it finds the standard shell helpers.
            let backend = OcfBackend::load_file(path, &self.config.agents.ocf_root)
                .map_err(anyhow::Error::msg)?;
            return Ok(AgentHandle::new(Box::new(backend), source));
        }
        match sniff(path)? {
            StoredKind::Native => {
                let b =
                    RunnerBackend::load(path, self.policy.clone()).map_err(anyhow::Error::msg)?;
                Ok(AgentHandle::new(Box::new(b), source))
            }
            StoredKind::Wasm => {
                let rt = self.wasm_runtime()?;
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let component = rt
                    .compile_cached(&bytes, path, component_cache().as_deref())
                    .map_err(anyhow::Error::msg)?;
                // Grants are by type name, which is only known after loading: read the
                // meta-data first, then load again with the grants for that name.
                let probe = WasmBackend::load(Arc::clone(&rt), &component, path, &[], &self.node)
                    .map_err(anyhow::Error::msg)?;
                let name = crate::agent::host::Backend::metadata(&probe).name.clone();
                drop(probe);
                let b = WasmBackend::load(rt, &component, path, self.grants(&name), &self.node)
                    .map_err(anyhow::Error::msg)?;
                Ok(AgentHandle::new(Box::new(b), source))
            }
        }
    }

    /// Install a `.so` or `.wasm` into the store.
    pub fn install(&self, path: &Path) -> anyhow::Result<crate::agent::store::Installed> {
        let rt = self.wasm_runtime()?;
        self.store.install(path, &self.policy, &rt, &|name| {
            baton_agents::builtin_agent(name).is_some()
        })
    }

    /// Every available agent, without starting any (installed entries are
    /// hash-checked; OCF agents are listed by name).
    pub fn list(&self) -> Vec<AgentSummary> {
        let mut out = Vec::new();
        for registered in baton_agents::builtin_agents() {
            let meta = (registered.build)().metadata();
            out.push(self.summary(
                &meta.name,
                AgentKind::Builtin,
                &meta,
                "built-in".into(),
                "ok".into(),
            ));
        }
        for entry in self.store.manifests() {
            match entry {
                Ok(m) => {
                    let state = match self.store.verify(&m) {
                        Ok(_) => "ok".to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    let kind = match m.kind {
                        StoredKind::Native if self.is_trusted(&m.name) => AgentKind::NativeTrusted,
                        StoredKind::Native => AgentKind::Native,
                        StoredKind::Wasm => AgentKind::Wasm,
                    };
                    out.push(self.summary(
                        &m.name,
                        kind,
                        &m.metadata,
                        format!("store ({})", m.source.display()),
                        state,
                    ));
                }
                Err(e) => out.push(AgentSummary {
                    name: "?".into(),
                    kind: AgentKind::Native,
                    version: String::new(),
                    ocf_api: None,
                    contract: None,
                    source: self.store.root().display().to_string(),
                    requested: vec![],
                    granted: vec![],
                    state: e,
                }),
            }
        }
        let mut names = Vec::new();
        for root in self.config.agents.ocf_dirs() {
            let Ok(providers) = std::fs::read_dir(&root) else {
                continue;
            };
            for p in providers.flatten() {
                let provider = p.file_name().to_string_lossy().into_owned();
                if provider.starts_with('.') {
                    continue;
                }
                if let Ok(agents) = std::fs::read_dir(p.path()) {
                    for a in agents.flatten() {
                        let kind = a.file_name().to_string_lossy().into_owned();
                        if !kind.starts_with('.') && a.path().is_file() {
                            names.push((format!("ocf:{provider}:{kind}"), a.path(), root.clone()));
                        }
                    }
                }
            }
        }
        // The first directory that has an agent is where it loads from.
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|(name, _, _)| seen.insert(name.clone()));
        names.sort();
        for (name, path, root) in names {
            // From the script's text, without running it (a fork per agent).
            let (version, ocf_api) = ocf_versions(&path);
            out.push(AgentSummary {
                name,
                kind: AgentKind::Ocf,
                version: version.unwrap_or_default(),
                ocf_api,
                contract: Some(ContractVersion::new(1, 0)),
                source: root.display().to_string(),
                requested: vec![],
                granted: vec![],
                state: "ok".into(),
            });
        }
        out
    }

    fn summary(
        &self,
        name: &str,
        kind: AgentKind,
        meta: &baton_plugin_api::Metadata,
        source: String,
        state: String,
    ) -> AgentSummary {
        let caps = CapabilitySet::new(&meta.capabilities, self.grants(name));
        let granted = if enforces_capabilities(kind) {
            caps.effective()
                .iter()
                .map(|c| c.to_string())
                .chain(caps.templates_within())
                .collect()
        } else {
            Vec::new()
        };
        AgentSummary {
            name: name.into(),
            kind,
            version: meta.version.clone(),
            ocf_api: None,
            contract: Some(meta.contract),
            source,
            requested: meta.capabilities.iter().map(|c| c.to_string()).collect(),
            granted,
            state,
        }
    }
}

/// Whether `path` is a script (`#!`): an OCF agent given by its file.
fn is_script(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// An OCF agent's own version (`<resource-agent … version="X">`) and the OCF API
/// version it declares (`<version>Y</version>`), as its meta-data appears in the
/// script's first 64 KiB (most agents print it from a here-document).
pub fn ocf_versions(script: &std::path::Path) -> (Option<String>, Option<String>) {
    let mut head = Vec::new();
    if let Ok(f) = std::fs::File::open(script) {
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 10), &mut head);
    }
    let text = String::from_utf8_lossy(&head);
    let agent = text.find("<resource-agent").and_then(|at| {
        let tag = &text[at..at + text[at..].find('>')?];
        let v = &tag[tag.find("version=\"")? + 9..];
        Some(v[..v.find('"')?].to_string())
    });
    let api = text.find("<version>").and_then(|at| {
        let v = &text[at + 9..];
        Some(v[..v.find("</version>")?].trim().to_string())
    });
    let plain = |v: String| (!v.is_empty() && v.len() <= 16 && !v.contains('$')).then_some(v);
    (agent.and_then(plain), api.and_then(plain))
}

/// Whether agents of `kind` are held to their capabilities. Only WebAssembly
/// components are: every host call they make is checked against what they
/// requested and were granted. Native code runs with the daemon's rights (its
/// requests are declarations to review, never refused or required), built-in
/// agents are baton's own, and OCF agents declare none.
pub fn enforces_capabilities(kind: AgentKind) -> bool {
    kind == AgentKind::Wasm
}

/// Where components loaded by path are kept compiled: `$XDG_CACHE_HOME/baton/
/// components`, else `~/.cache/baton/components`; `BATON_COMPONENT_CACHE`
/// overrides it (empty: no cache).
fn component_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("BATON_COMPONENT_CACHE") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("baton/components"))
}
