//! The agent store: what `baton agent install` writes and the daemon loads.
//!
//! Layout: `STORE/NAME/manifest.json` plus the installed file (`agent.so` or
//! `agent.wasm`) and, for components, `agent.cwasm` (compiled at install, so
//! nothing is compiled on the failover path). The manifest records each file's
//! SHA-256; a file changed after install is refused at load.

use crate::agent::backend::native::{RunnerBackend, RunnerPolicy};
use crate::agent::backend::wasm::{WasmBackend, WasmRuntime};
use anyhow::{Context, bail};
use baton_plugin_api::{ContractVersion, Metadata};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which loader an installed agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoredKind {
    /// A native library.
    Native,
    /// A WebAssembly component.
    Wasm,
}

/// `manifest.json` of one installed agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The agent type name (from its meta-data).
    pub name: String,
    /// Native library or component.
    pub kind: StoredKind,
    /// The installed file, relative to the entry's directory.
    pub file: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// For components: the precompiled file and its SHA-256.
    pub precompiled: Option<(String, String)>,
    /// The contract version the agent was built for.
    pub contract: ContractVersion,
    /// The meta-data read at install.
    pub metadata: Metadata,
    /// Where it was installed from.
    pub source: PathBuf,
    /// The baton version that installed it (precompiled code is tied to it).
    pub installed_by: String,
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Which kind a file is, by its first bytes (not its name).
pub fn sniff(path: &Path) -> anyhow::Result<StoredKind> {
    let mut head = [0u8; 4];
    let n = std::io::Read::read(
        &mut std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?,
        &mut head,
    )?;
    match &head[..n] {
        b"\x7fELF" => Ok(StoredKind::Native),
        b"\0asm" => Ok(StoredKind::Wasm),
        _ if path.extension().is_some_and(|e| e == "py") => bail!(
            "{} is Python source, not an agent: build it into a WebAssembly component with \
             componentize-py (the python-agent sample's README and `baton agent new --kind python` \
             show how), then give the .wasm",
            path.display()
        ),
        _ => bail!(
            "{} is neither a native library (ELF) nor a WebAssembly component; give the .so built \
             with baton-agent-abi or the .wasm built for wasm32-wasip2",
            path.display()
        ),
    }
}

/// The store directory.
pub struct AgentStore {
    root: PathBuf,
}

/// What an install did.
#[derive(Debug, Serialize)]
pub struct Installed {
    /// The manifest written.
    pub manifest: Manifest,
    /// The version it replaced, if any.
    pub replaced: Option<String>,
}

impl AgentStore {
    /// The store at `root` (created on first install).
    pub fn new(root: &Path) -> AgentStore {
        AgentStore {
            root: root.to_owned(),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Every installed manifest (entries whose manifest cannot be read are reported as errors).
    pub fn manifests(&self) -> Vec<Result<Manifest, String>> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("manifest.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| self.manifest(&n).map_err(|e| format!("{e:#}")))
            .collect()
    }

    /// The manifest of `name`, if installed.
    pub fn manifest(&self, name: &str) -> anyhow::Result<Manifest> {
        let path = self.entry(name).join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; reinstall the agent with `baton agent install`",
                path.display()
            )
        })
    }

    /// Whether `name` is installed.
    pub fn contains(&self, name: &str) -> bool {
        self.entry(name).join("manifest.json").is_file()
    }

    /// Check an entry's files against the manifest's hashes; returns the paths.
    pub fn verify(&self, m: &Manifest) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        let dir = self.entry(&m.name);
        let check = |file: &str, expected: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            let actual = sha256_file(&path)?;
            if actual != expected {
                bail!(
                    "agent {}: {} changed after install (sha256 {actual}, installed {expected}); \
                     refusing to load it. Reinstall the agent with `baton agent install PATH` if the change is intended",
                    m.name,
                    path.display()
                );
            }
            Ok(path)
        };
        let file = check(&m.file, &m.sha256)?;
        let pre = match &m.precompiled {
            Some((f, h)) => Some(check(f, h)?),
            None => None,
        };
        Ok((file, pre))
    }

    /// Validate and install the agent at `path`. Native libraries are loaded in a
    /// runner process (never in this one); components are compiled and precompiled.
    pub fn install(
        &self,
        path: &Path,
        policy: &RunnerPolicy,
        runtime: &Arc<WasmRuntime>,
        reserved: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Installed> {
        let kind = sniff(path)?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (metadata, precompiled) = match kind {
            StoredKind::Native => {
                let backend =
                    RunnerBackend::load(path, policy.clone()).map_err(anyhow::Error::msg)?;
                (
                    crate::agent::host::Backend::metadata(&backend).clone(),
                    None,
                )
            }
            StoredKind::Wasm => {
                let component = runtime.compile(&bytes, path).map_err(anyhow::Error::msg)?;
                let backend =
                    WasmBackend::load(Arc::clone(runtime), &component, path, &[], "install")
                        .map_err(anyhow::Error::msg)?;
                let pre = runtime
                    .precompile(&bytes, path)
                    .map_err(anyhow::Error::msg)?;
                (
                    crate::agent::host::Backend::metadata(&backend).clone(),
                    Some(pre),
                )
            }
        };
        let name = metadata.name.clone();
        if reserved(&name) {
            bail!(
                "{}: agent type {name:?} is taken by a built-in agent; give the agent another name in its meta-data",
                path.display()
            );
        }
        if name.contains('/') || name.contains(':') || name.starts_with('.') {
            bail!(
                "{}: agent type {name:?} cannot be a store entry name (no '/', ':' or leading '.')",
                path.display()
            );
        }
        let replaced = self.manifest(&name).ok().map(|m| m.metadata.version);
        // Build the entry beside the old one, then swap: a failed install leaves the old one intact.
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create agent store {}", self.root.display()))?;
        let staging = self.root.join(format!(".{name}.installing"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        let file = match kind {
            StoredKind::Native => "agent.so",
            StoredKind::Wasm => "agent.wasm",
        };
        std::fs::write(staging.join(file), &bytes)?;
        let precompiled = match precompiled {
            Some(pre) => {
                std::fs::write(staging.join("agent.cwasm"), &pre)?;
                Some(("agent.cwasm".to_string(), hex::encode(Sha256::digest(&pre))))
            }
            None => None,
        };
        let manifest = Manifest {
            name: name.clone(),
            kind,
            file: file.into(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            precompiled,
            contract: metadata.contract,
            metadata,
            source: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            installed_by: env!("CARGO_PKG_VERSION").into(),
        };
        std::fs::write(
            staging.join("manifest.json"),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        let target = self.entry(&name);
        let old = self.root.join(format!(".{name}.old"));
        let _ = std::fs::remove_dir_all(&old);
        if target.exists() {
            std::fs::rename(&target, &old)?;
        }
        std::fs::rename(&staging, &target)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(Installed { manifest, replaced })
    }
}
