//! Finding the artifacts the tests load, and building catalogs and requests.

use baton::agent::catalog::AgentCatalog;
use baton::agent::host::{AgentHandle, CallReport};
use baton::config::Config;
use baton_plugin_api::{Action, Params, Request};
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The cargo profile directory the test binary lives in (target/debug).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// A native fixture or sample library built by `cargo build --workspace`.
pub fn native_lib(crate_name: &str) -> PathBuf {
    let path = profile_dir().join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        path.display()
    );
    path
}

/// A component built by scripts/build-wasm-agents.
pub fn wasm(name: &str) -> PathBuf {
    let candidates = [
        repo()
            .join("host/tests/fixtures/wasm/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm")),
        repo()
            .join("wasm-agents/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm")),
        repo()
            .join("samples/wasm-agent/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm")),
        repo()
            .join("samples/python-agent/target")
            .join(format!("{name}.wasm")),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name}.wasm is missing: run scripts/build-wasm-agents first (scripts/test does)"
            )
        })
}

/// The `baton` binary.
pub fn baton_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// Run `baton --config CONFIG ARGS` with `env` set, as a user at a shell.
pub fn baton_with(config: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(baton_exe())
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// An agents-only config in `dir` (its store there, node `n1`); its path.
pub fn agents_config(dir: &Path) -> PathBuf {
    let path = dir.join("baton.toml");
    std::fs::write(
        &path,
        format!(
            "[agents]\nstore = {:?}\nnode = \"n1\"\n{}",
            dir.join("store").display().to_string(),
            sample_wasm_grants(dir).0
        ),
    )
    .unwrap();
    path
}

/// A directory below `dir` where the sample WebAssembly agent (whose programs
/// run as `nobody`) can keep its marker files, and the `[agents.grants]` section
/// it needs for it. Pass the directory as its `dir` parameter.
pub fn sample_wasm_grants(dir: &Path) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let markers = dir.join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let grants = format!(
        "[agents.grants]\nsample-wasm = [\"exec:/usr/bin/touch\", \"exec:/usr/bin/rm\", \"read:{}\"]\n",
        markers.display()
    );
    (grants, markers)
}

/// Run `baton ARGS --socket SOCKET` (an operator command to one daemon).
pub fn baton_at(socket: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(baton_exe())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// A catalog with its own store, the test fixtures' OCF root if asked, and `config` TOML.
pub fn catalog(store: &Path, extra_config: &str) -> AgentCatalog {
    let text = format!(
        "[agents]\nstore = {:?}\nnode = \"testnode\"\n{extra_config}",
        store.display().to_string()
    );
    let config = Config::parse(&text).unwrap();
    AgentCatalog::new(config, baton_exe())
}

/// A request for `action` on resource `resource` with `params` and a deadline.
pub fn request(
    action: Action,
    resource: &str,
    params: &[(&str, &str)],
    timeout_ms: u64,
) -> Request {
    let params: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut req = Request::new(action, params);
    req.context.resource = resource.into();
    req.context.node = "testnode".into();
    req.context.timeout_ms = timeout_ms;
    req
}

/// Call and return the report.
pub fn call(
    agent: &AgentHandle,
    action: Action,
    resource: &str,
    params: &[(&str, &str)],
    timeout_ms: u64,
) -> CallReport {
    agent.call(&request(action, resource, params, timeout_ms))
}

/// Whether a process exists (signal 0).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Wait (bounded) until `pid` is gone; true if it went.
pub fn gone_within(pid: i32, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// A command's stdout and stderr, as one text for assertions and messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The steps of a conformance run that failed.
pub fn failed_steps(
    report: &baton::agent::conformance::Report,
) -> Vec<&baton::agent::conformance::Step> {
    report.steps.iter().filter(|s| !s.passed).collect()
}

/// Scripted stand-ins of a product's tools (`host/tests/fixtures/NAME/bin/*`,
/// for products that cannot be installed here) copied into a directory of
/// their own, with their state directory `standin/` owned by `nobody` (the
/// user granted programs run as), and a free TCP port.
pub struct StandIns {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl StandIns {
    pub fn new(fixture: &str) -> StandIns {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        let tools = repo().join("host/tests/fixtures").join(fixture).join("bin");
        for tool in std::fs::read_dir(&tools).unwrap().flatten() {
            std::fs::copy(tool.path(), d.join("bin").join(tool.file_name())).unwrap();
        }
        std::fs::create_dir(d.join("standin")).unwrap();
        std::os::unix::fs::chown(d.join("standin"), Some(65534), Some(65534)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        StandIns { dir, port }
    }

    /// The directory, as a parameter value.
    pub fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Make the stand-ins misbehave (`standin/mode`).
    pub fn mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("standin/mode"), mode).unwrap();
    }

    /// The calls the stand-ins recorded since the last look.
    pub fn calls(&self) -> Vec<String> {
        let path = self.dir.path().join("standin/calls");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_owned).collect()
    }
}

/// What of `resource` still runs once its processes have had the conformance
/// test's 2 s to exit (a server that closed its port may take a moment more).
pub fn left_after_exit(resource: &str) -> Vec<baton_plugin_api::service::Tagged> {
    use baton_plugin_api::service;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut left = service::tagged(&service::host_id(), Some(resource));
    while !left.is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = service::tagged(&service::host_id(), Some(resource));
    }
    left
}

/// An agent loaded for one resource with its parameters, for the adapter
/// tests; every process of the resource is ended when it is dropped.
pub struct Subject {
    pub agent: baton::agent::host::AgentHandle,
    pub resource: String,
    pub params: Vec<(String, String)>,
}

impl Subject {
    /// `action` with the resource's parameters.
    pub fn call(&self, action: Action, timeout_ms: u64) -> baton::agent::host::CallReport {
        self.call_with(action, 0, &[], timeout_ms)
    }

    /// `action` at `depth`, with `extra` parameters in place of the resource's.
    pub fn call_with(
        &self,
        action: Action,
        depth: u32,
        extra: &[(&str, &str)],
        timeout_ms: u64,
    ) -> baton::agent::host::CallReport {
        let mut params: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        params.extend_from_slice(extra);
        let mut req = request(action, &self.resource, &params, timeout_ms);
        req.depth = depth;
        self.agent.call(&req)
    }

    /// `baton agent test` of the resource with its parameters.
    pub fn conformance(&self) -> baton::agent::conformance::Report {
        let params: Params = self.params.iter().cloned().collect();
        baton::agent::conformance::run(&self.agent, params, &self.resource, "testnode", None)
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        use baton_plugin_api::service;
        let _ = service::end(
            &service::host_id(),
            Some(&self.resource),
            Default::default(),
        );
    }
}

/// An adapter loaded against stand-ins of its product's tools.
pub struct WithTools {
    pub tools: StandIns,
    pub subject: Subject,
}

impl std::ops::Deref for WithTools {
    type Target = Subject;
    fn deref(&self) -> &Subject {
        &self.subject
    }
}

impl WithTools {
    /// Load the agent at `path` (with `grants`, an `[agents.grants]` section)
    /// for `resource` with `params`.
    pub fn load(
        tools: StandIns,
        path: &Path,
        grants: &str,
        resource: &str,
        params: Vec<(String, String)>,
    ) -> WithTools {
        let agent = catalog(&tools.dir.path().join("store"), grants)
            .load(path.to_str().unwrap())
            .unwrap();
        WithTools {
            tools,
            subject: Subject {
                agent,
                resource: resource.into(),
                params,
            },
        }
    }
}

/// Two resources of one agent: `bad`'s monitor never answers. For `rounds`
/// rounds it fails at its `timeout_ms` deadline as a timeout, while `good`'s
/// monitor answers running; then both stop cleanly (`bad` with `bad_stop`).
pub fn a_hung_monitor_fails_alone(
    agent: &AgentHandle,
    good: &[(&str, &str)],
    bad: &[(&str, &str)],
    bad_stop: &[(&str, &str)],
    timeout_ms: u64,
    rounds: usize,
) {
    use baton::agent::host::FailureCause;
    use baton_plugin_api::{Action, MonitorState, Outcome};
    for (resource, params) in [("good", good), ("bad", bad)] {
        let start = call(agent, Action::Start, resource, params, 3000);
        assert!(start.result.is_ok(), "{resource}: {:?}", start.result);
    }
    for round in 0..rounds {
        let f = call(agent, Action::Monitor, "bad", bad, timeout_ms)
            .result
            .unwrap_err();
        assert_eq!(f.cause, FailureCause::Timeout, "round {round}: {f}");
        let ok = call(agent, Action::Monitor, "good", good, 3000);
        assert_eq!(
            ok.result.unwrap(),
            Outcome::State(MonitorState::Running),
            "round {round}"
        );
    }
    for (resource, params) in [("good", good), ("bad", bad_stop)] {
        let stop = call(agent, Action::Stop, resource, params, 3000);
        assert!(stop.result.is_ok(), "{resource}: {:?}", stop.result);
    }
}

/// promtool, unpacked from Debian's prometheus package by scripts/setup.
pub fn promtool() -> PathBuf {
    let path = repo().join("target/tools/prometheus/usr/bin/promtool");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (scripts/test does)",
        path.display()
    );
    path
}

/// `promtool check metrics` of an HTTP answer's body (its headers skipped):
/// every metric has its help, counters end in `_total`, names are valid.
pub fn promtool_check_metrics(answer: &str) {
    use std::io::Write;
    let body = answer.split_once("\r\n\r\n").map_or(answer, |(_, b)| b);
    let mut check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `baton_*` metric names `text` (a dashboard, a rules file) mentions.
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("baton_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A word of its own (not part of "xbaton_…").
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}
