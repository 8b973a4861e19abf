//! `baton agent new`: a standalone agent project, outside this repository, that
//! builds and passes `baton agent test` unchanged. The Rust and Python kinds are
//! the samples in `samples/` (compiled into baton, so a project is always the
//! current sample) with the agent's name and the SDK's location filled in.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// What kind of project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProjectKind {
    /// A Rust `cdylib` for the native ABI.
    Native,
    /// A Rust WebAssembly component (`wasm32-wasip2`).
    Wasm,
    /// A Python WebAssembly component (componentize-py).
    Python,
    /// An OCF shell agent.
    Ocf,
}

/// The Rust toolchain pinned for baton (`rust-toolchain.toml`).
const TOOLCHAIN: &str = "1.95.0";

const NATIVE_SAMPLE: &str = include_str!("../../../samples/native-agent/src/lib.rs");
const WASM_SAMPLE: &str = include_str!("../../../samples/wasm-agent/src/lib.rs");
const WASM_MANIFEST: &str = include_str!("../../../samples/wasm-agent/Cargo.toml");
const PYTHON_SAMPLE: &str = include_str!("../../../samples/python-agent/app.py");
const PYTHON_REQUIREMENTS: &str = include_str!("../../../samples/python-agent/requirements.txt");

/// The baton checkout this binary was built from (the SDK crates and the WIT
/// files are there until the crates are published).
fn built_from() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Write project `name` of `kind` into `dir` (which must not exist, or be
/// empty), depending on the SDK at `sdk` (default: the checkout baton was built
/// from). Returns the files written and the commands that build and test it.
pub fn create(
    name: &str,
    kind: ProjectKind,
    dir: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "agent name {name:?}: use lowercase letters, digits and '-', starting with a letter (e.g. kvd-agent)"
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and is not a directory", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty; give --dir a new directory", dir.display());
    }
    let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(built_from);
    if kind != ProjectKind::Ocf && !sdk.join("plugin-api/wit/v1.2").is_dir() {
        bail!(
            "no baton SDK at {} (plugin-api/wit/v1.2); give --sdk PATH to a baton checkout",
            sdk.display()
        );
    }
    let sdk = std::fs::canonicalize(&sdk).unwrap_or(sdk);
    // The toolchain baton itself is built and tested with.
    let toolchain = |targets: &str| {
        format!("[toolchain]\nchannel = \"{TOOLCHAIN}\"\nprofile = \"minimal\"\n{targets}")
    };
    let files = match kind {
        ProjectKind::Native => {
            let mut f = native(name, &sdk);
            f.push(("rust-toolchain.toml".into(), toolchain("")));
            f
        }
        ProjectKind::Wasm => {
            let mut f = wasm(name, &sdk);
            f.push((
                "rust-toolchain.toml".into(),
                toolchain("targets = [\"wasm32-wasip2\"]\n"),
            ));
            f
        }
        ProjectKind::Python => python(name, &sdk),
        ProjectKind::Ocf => vec![(name.to_string(), ocf(name))],
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(&rel);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    if matches!(kind, ProjectKind::Ocf | ProjectKind::Python) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::remove_dir(dir.join("src"))?;
        let script = if kind == ProjectKind::Ocf {
            dir.join(name)
        } else {
            dir.join("build.sh")
        };
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
    }
    let lib = name.replace('-', "_");
    let d = dir.display();
    let commands = match kind {
        ProjectKind::Native => vec![
            format!("cargo build --release --manifest-path {d}/Cargo.toml"),
            format!("baton agent test {d}/target/release/lib{lib}.so"),
        ],
        ProjectKind::Wasm => vec![
            "rustup target add wasm32-wasip2".to_string(),
            format!("cargo build --release --target wasm32-wasip2 --manifest-path {d}/Cargo.toml"),
            format!(
                "baton --config {d}/baton.toml agent test {d}/target/wasm32-wasip2/release/{lib}.wasm"
            ),
        ],
        ProjectKind::Python => vec![
            format!("{d}/build.sh"),
            format!("baton --config {d}/baton.toml agent test {d}/{lib}.wasm"),
        ],
        ProjectKind::Ocf => vec![format!(
            "baton agent test {d}/{name} -p state=/tmp/{name}.state"
        )],
    };
    Ok((written, commands))
}

fn native(name: &str, sdk: &Path) -> Vec<(String, String)> {
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\n\
         # From a baton checkout today; once published: baton-plugin-api = \"1.2\", baton-agent-abi = \"1.1\".\n\
         baton-plugin-api = {{ path = \"{sdk}/plugin-api\" }}\n\
         baton-agent-abi = {{ path = \"{sdk}/plugin-api/abi\" }}\n\n\
         # export_agent! turns a panic into an error only when panics unwind.\n\
         [profile.release]\npanic = \"unwind\"\n\n\
         [workspace]\n",
        sdk = sdk.display()
    );
    let source = NATIVE_SAMPLE.replace("\"sample-native\"", &format!("\"{name}\""));
    vec![
        ("Cargo.toml".into(), manifest),
        ("src/lib.rs".into(), source),
    ]
}

fn wasm(name: &str, sdk: &Path) -> Vec<(String, String)> {
    let manifest = WASM_MANIFEST
        .replace(
            "name = \"sample-wasm-agent\"",
            &format!("name = \"{name}\""),
        )
        .replace(
            "description = \"A minimal baton WebAssembly agent to copy.\"",
            &format!("description = \"The {name} baton agent.\""),
        );
    let source = WASM_SAMPLE
        .replace(
            "\"../../plugin-api/wit/v1.2\"",
            &format!("\"{}/plugin-api/wit/v1.2\"", sdk.display()),
        )
        .replace("\"sample-wasm\"", &format!("\"{name}\""));
    vec![
        ("Cargo.toml".into(), manifest),
        ("src/lib.rs".into(), source),
        ("baton.toml".into(), grants(name)),
    ]
}

fn python(name: &str, sdk: &Path) -> Vec<(String, String)> {
    let lib = name.replace('-', "_");
    let source = PYTHON_SAMPLE.replace("sample-python", name);
    // componentize-py from a virtualenv of the project's own (or the one
    // COMPONENTIZE_PY names), against the SDK's WIT files by absolute path.
    let build = format!(
        r#"#!/bin/sh
# Build {lib}.wasm from app.py with componentize-py (the version in requirements.txt).
set -e
cd "$(dirname "$0")"
tool="${{COMPONENTIZE_PY:-.venv/bin/componentize-py}}"
if [ ! -x "$tool" ]; then
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
"$tool" -d {sdk}/plugin-api/wit/v1.2 -w resource-agent componentize app -o {lib}.wasm
echo "built $(pwd)/{lib}.wasm"
"#,
        sdk = sdk.display()
    );
    vec![
        ("app.py".into(), source),
        ("requirements.txt".into(), PYTHON_REQUIREMENTS.into()),
        ("build.sh".into(), build),
        ("baton.toml".into(), grants(name)),
    ]
}

/// The grants the samples' capabilities need, for `agent test` (an
/// administrator puts the same line in the node's config).
fn grants(name: &str) -> String {
    format!(
        "# What the administrator grants {name}; requests are in its meta-data.\n\
         [agents.grants]\n\
         {name} = [\"exec:/usr/bin/touch\", \"exec:/usr/bin/rm\", \"read:/tmp\"]\n"
    )
}

fn ocf(name: &str) -> String {
    format!(
        r#"#!/bin/sh
# {name}: an OCF resource agent. Replace the state file with your resource:
# start brings it up and returns once it is usable, stop takes it down (and
# succeeds when it is already down), monitor reports it without changing it.

: "${{OCF_FUNCTIONS_DIR:=${{OCF_ROOT}}/lib/heartbeat}}"
. "${{OCF_FUNCTIONS_DIR}}/ocf-shellfuncs"

STATE="${{OCF_RESKEY_state:-${{HA_RSCTMP:-/run/resource-agents}}/{name}-${{OCF_RESOURCE_INSTANCE}}.state}}"

meta_data() {{
	cat <<END
<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="{name}" version="0.1.0">
<version>1.1</version>
<longdesc lang="en">The {name} resource (a state file until you replace it).</longdesc>
<shortdesc lang="en">{name}</shortdesc>
<parameters>
<parameter name="state" unique="1">
<longdesc lang="en">Where the resource's state file lives.</longdesc>
<shortdesc lang="en">State file</shortdesc>
<content type="string" />
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="stop" timeout="20s" />
<action name="monitor" timeout="20s" interval="10s" depth="0" />
<action name="validate-all" timeout="20s" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>
END
}}

case "$1" in
meta-data)	meta_data; exit $OCF_SUCCESS ;;
start)		touch "$STATE" || {{ ocf_exit_reason "cannot create $STATE"; exit $OCF_ERR_GENERIC; }}
		exit $OCF_SUCCESS ;;
stop)		rm -f "$STATE" || {{ ocf_exit_reason "cannot remove $STATE"; exit $OCF_ERR_GENERIC; }}
		exit $OCF_SUCCESS ;;
monitor)	[ -f "$STATE" ] && exit $OCF_SUCCESS; exit $OCF_NOT_RUNNING ;;
validate-all)	[ -d "$(dirname "$STATE")" ] || {{ ocf_exit_reason "no directory for $STATE"; exit $OCF_ERR_CONFIGURED; }}
		exit $OCF_SUCCESS ;;
*)		exit $OCF_ERR_UNIMPLEMENTED ;;
esac
"#
    )
}
