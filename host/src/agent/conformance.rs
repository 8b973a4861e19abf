//! `baton agent test`: the ocf-tester sequence (docs/agents.md, "OCF agents through the bridge"), run on
//! any kind of agent through the same handle the failover engine uses.

use crate::agent::host::{AgentHandle, AgentKind, CallReport};
use baton_plugin_api::{Action, MonitorState, Outcome, Params, Request, service};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What a step expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The action completes.
    Done,
    /// Monitor answers running (or degraded).
    Running,
    /// Monitor answers promoted.
    Promoted,
    /// Monitor answers not running.
    NotRunning,
    /// The action completes or answers unimplemented.
    DoneOrUnimplemented,
}

/// One step of the run.
#[derive(Debug, Serialize)]
pub struct Step {
    /// What the step checks.
    pub name: String,
    /// The expectation.
    pub expect: Expect,
    /// What happened, in words.
    pub got: String,
    /// Whether it met the expectation.
    pub passed: bool,
    /// Time taken, microseconds.
    pub micros: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The agent type.
    pub agent: String,
    /// Its kind.
    pub kind: String,
    /// Every step in order.
    pub steps: Vec<Step>,
    /// Whether every step passed.
    pub passed: bool,
}

struct Tester<'a> {
    agent: &'a AgentHandle,
    params: Params,
    resource: String,
    node: String,
    timeout_override: Option<u64>,
    steps: Vec<Step>,
}

impl Tester<'_> {
    fn request(&self, action: Action) -> Request {
        let mut req = Request::new(action, self.params.clone());
        req.context.resource = self.resource.clone();
        req.context.node = self.node.clone();
        req.context.timeout_ms = self
            .timeout_override
            .or_else(|| self.agent.metadata().action(action).map(|a| a.timeout_ms))
            .unwrap_or(20_000);
        req
    }

    fn run(&mut self, name: &str, req: Request, expect: Expect) -> bool {
        let report: CallReport = self.agent.call(&req);
        let state = report.result.as_ref().ok().and_then(Outcome::state);
        let (passed, got) = match (&report.result, expect) {
            (Ok(Outcome::Done), Expect::Done | Expect::DoneOrUnimplemented) => {
                (true, "ok".to_string())
            }
            (Ok(outcome), Expect::Running) if state.is_some() => (
                matches!(state, Some(MonitorState::Running | MonitorState::Degraded)),
                outcome.to_string(),
            ),
            (Ok(outcome), Expect::Promoted) if state.is_some() => (
                matches!(
                    state,
                    Some(MonitorState::Promoted | MonitorState::DegradedPromoted)
                ),
                outcome.to_string(),
            ),
            (Ok(outcome), Expect::NotRunning) if state.is_some() => {
                (state == Some(MonitorState::NotRunning), outcome.to_string())
            }
            (Err(f), Expect::DoneOrUnimplemented)
                if f.class == baton_plugin_api::ErrorClass::Unimplemented =>
            {
                (true, "unimplemented".to_string())
            }
            (Ok(other), _) => (false, other.to_string()),
            (Err(f), _) => (false, f.to_string()),
        };
        self.steps.push(Step {
            name: name.to_string(),
            expect,
            got,
            passed,
            micros: report.elapsed.as_micros() as u64,
        });
        passed
    }

    /// Whether promote and demote apply to the resource with these parameters:
    /// an agent may implement them for one configuration (a replicated
    /// database) and refuse them as `misconfigured` for another (a single
    /// server). Both must then say so; the step records it, with the reason.
    fn promotion_applies(&mut self) -> bool {
        let refused = |t: &Self, action| {
            let report = t.agent.call(&t.request(action));
            match report.result {
                Err(f) if f.class == baton_plugin_api::ErrorClass::Misconfigured => Some(f.reason),
                _ => None,
            }
        };
        // Demote first: on a resource it applies to, that is the next step anyway.
        let Some(demote) = refused(self, Action::Demote) else {
            return true;
        };
        if refused(self, Action::Promote).is_none() {
            return true;
        }
        self.steps.push(Step {
            name: "promote and demote: not for these parameters".into(),
            expect: Expect::Done,
            got: format!("both refused as misconfigured: {demote}"),
            passed: true,
            micros: 0,
        });
        false
    }

    fn action(&mut self, name: &str, action: Action, expect: Expect) -> bool {
        let req = self.request(action);
        self.run(name, req, expect)
    }

    /// After a stop, no process of the resource may be left (found by the tags
    /// every process started for it carries, `plugin_api::service`). Processes
    /// that are still exiting get two seconds; what is left is reported, then
    /// killed so the test leaves nothing behind either.
    fn nothing_left(&mut self, name: &str) {
        let host = service::host_id();
        let started = Instant::now();
        let mut left = service::tagged(&host, Some(&self.resource));
        while !left.is_empty() && started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
            left = service::tagged(&host, Some(&self.resource));
        }
        let got = if left.is_empty() {
            "none".to_string()
        } else {
            let _ = service::end(&host, Some(&self.resource), Duration::ZERO);
            let names: Vec<String> = left
                .iter()
                .map(|t| format!("{} ({})", t.pid, t.name))
                .collect();
            format!(
                "{} left running (killed now): {}",
                left.len(),
                names.join(", ")
            )
        };
        self.steps.push(Step {
            name: name.to_string(),
            expect: Expect::NotRunning,
            passed: left.is_empty(),
            got,
            micros: started.elapsed().as_micros() as u64,
        });
    }

    fn monitor(&mut self, name: &str, probe: bool, expect: Expect) -> bool {
        let mut req = self.request(Action::Monitor);
        req.probe = probe;
        self.run(name, req, expect)
    }
}

/// Run the sequence. `params` are the resource parameters to test with.
pub fn run(
    agent: &AgentHandle,
    params: Params,
    resource: &str,
    node: &str,
    timeout_ms: Option<u64>,
) -> Report {
    let mut t = Tester {
        agent,
        params,
        resource: resource.to_string(),
        node: node.to_string(),
        timeout_override: timeout_ms,
        steps: Vec::new(),
    };
    let meta = agent.metadata().clone();
    let meta_ok = meta.check();
    t.steps.push(Step {
        name: "meta-data is complete and valid".into(),
        expect: Expect::Done,
        got: match &meta_ok {
            Ok(()) => format!(
                "{} {} (contract {})",
                meta.name, meta.version, meta.contract
            ),
            Err(p) => p
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        },
        passed: meta_ok.is_ok(),
        micros: 0,
    });
    let xml = meta.to_ocf_xml();
    let xml_ok =
        roxmltree::Document::parse_with_options(&xml, crate::agent::backend::ocf::XML_OPTIONS)
            .is_ok();
    t.steps.push(Step {
        name: "meta-data renders as OCF XML".into(),
        expect: Expect::Done,
        got: if xml_ok {
            format!("{} bytes", xml.len())
        } else {
            "not well-formed".into()
        },
        passed: xml_ok,
        micros: 0,
    });
    if !t.action("validate", Action::Validate, Expect::DoneOrUnimplemented) {
        return finish(t, &meta.name);
    }
    let mut deep = t.request(Action::Validate);
    deep.depth = 1;
    t.run(
        "validate at depth 1 (this node's environment)",
        deep,
        Expect::DoneOrUnimplemented,
    );
    // If the resource already runs here, stop it first (as ocf-tester does).
    let mut probe = t.request(Action::Monitor);
    probe.probe = true;
    if matches!(agent.call(&probe).result.ok().and_then(|o| o.state()), Some(s) if s.is_active()) {
        t.action(
            "stop a resource found running before the test",
            Action::Stop,
            Expect::Done,
        );
    }
    t.monitor("probe before start: not running", true, Expect::NotRunning);
    t.monitor(
        "monitor before start: not running",
        false,
        Expect::NotRunning,
    );
    let started = t.action("start", Action::Start, Expect::Done);
    if started {
        t.monitor("monitor after start: running", false, Expect::Running);
        t.monitor("probe after start: running", true, Expect::Running);
        // A resource outlives its agent's process: a native runner is ended here
        // as a crash or an upgrade would end it (a server started as a plain child
        // of the runner dies with it, and fails this step), and a WebAssembly
        // instance is replaced (state kept in its memory is lost).
        if agent.restart()
            && !t.monitor(
                "monitor after the agent's process restarted: running",
                false,
                Expect::Running,
            )
            && let Some(step) = t.steps.last_mut()
            && step.got.starts_with("not-running")
        {
            step.got.push_str(if agent.kind() == AgentKind::Wasm {
                " — likely cause: the agent keeps its resource in the instance's memory,                  which is replaced after a trap or a restart; check the real resource"
            } else {
                " — likely cause: the resource died with the agent's process (a server                  started as its plain child); start it with service::start_detached"
            });
        }
        if meta.implements(Action::Notify) {
            t.action("notify", Action::Notify, Expect::DoneOrUnimplemented);
        }
        if meta.implements(Action::Promote)
            && meta.implements(Action::Demote)
            && t.promotion_applies()
        {
            t.action("demote a started resource", Action::Demote, Expect::Done);
            t.action("promote", Action::Promote, Expect::Done);
            t.monitor("monitor after promote: promoted", false, Expect::Promoted);
            t.action("demote", Action::Demote, Expect::Done);
            t.action("demote again (idempotent)", Action::Demote, Expect::Done);
            t.monitor("monitor after demote: running", false, Expect::Running);
            t.action("promote", Action::Promote, Expect::Done);
            t.action("promote again (idempotent)", Action::Promote, Expect::Done);
            t.action("demote", Action::Demote, Expect::Done);
        }
        if meta.implements(Action::Reload) {
            t.action("reload", Action::Reload, Expect::DoneOrUnimplemented);
        }
    }
    t.action("stop", Action::Stop, Expect::Done);
    t.monitor("monitor after stop: not running", false, Expect::NotRunning);
    t.nothing_left("no process of the resource left after stop");
    t.action("start", Action::Start, Expect::Done);
    t.action("start again (idempotent)", Action::Start, Expect::Done);
    t.monitor(
        "monitor after double start: running",
        false,
        Expect::Running,
    );
    t.action("stop after double start", Action::Stop, Expect::Done);
    t.action("stop again (idempotent)", Action::Stop, Expect::Done);
    t.monitor(
        "monitor after double stop: not running",
        false,
        Expect::NotRunning,
    );
    t.nothing_left("no process of the resource left after the last stop");
    finish(t, &meta.name)
}

fn finish(t: Tester<'_>, name: &str) -> Report {
    let passed = t.steps.iter().all(|s| s.passed);
    Report {
        agent: name.to_string(),
        kind: t.agent.kind().to_string(),
        steps: t.steps,
        passed,
    }
}
