//! The `baton` command line.

use crate::agent_host::{CallReport, FailureCause};
use crate::catalog::AgentCatalog;
use crate::config::Config;
use crate::conformance;
use crate::control::ControlRequest;
use crate::status::Status;
use anyhow::{Context, bail};
use baton_plugin_api::{Action, Outcome, Params};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// baton: a high-availability cluster host.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about)]
pub struct Cli {
    /// Config file (default /etc/baton/baton.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether this is `agent run` or `agent test`: a vendor trying an agent,
    /// who wants to see what the agent logs.
    pub fn tries_an_agent(&self) -> bool {
        matches!(
            self.command,
            Command::Agent(AgentCommand::Run { .. } | AgentCommand::Test { .. })
        )
    }

    /// Whether this is the daemon (`run`).
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run { .. })
    }

    /// Whether this command only prints and exits, so a closed stdout (`baton
    /// agent list | head`) should end it quietly, as it ends other tools. Not
    /// the daemon, its guardian and runners (their sockets and pipes close
    /// routinely), nor the demo (it must tear its lab down).
    pub fn quits_on_closed_stdout(&self) -> bool {
        !matches!(
            self.command,
            Command::Run { .. }
                | Command::Guardian { .. }
                | Command::AgentRunner { .. }
                | Command::Demo(_)
        )
    }
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Work with resource agents: list, inspect, run, test, install.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Design a cluster: write a scenario from a strategy template, check it,
    /// simulate faults on it, view it, compile each node's config.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Run this node of the cluster (the daemon).
    Run {
        /// Which [[node]] of the config this is.
        #[arg(long)]
        node: String,
        /// Write the node's status (JSON) here, every 100 ms at most.
        #[arg(long, value_name = "FILE")]
        status_file: Option<PathBuf>,
        /// The control socket (default /run/baton/NODE.sock; root-only).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Write `PID START_TIME` here (what the lab fence agent reads).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// The event history (default: beside --socket as SOCKET.history, else
        /// /var/lib/baton/NODE.history).
        #[arg(long, value_name = "FILE")]
        history_file: Option<PathBuf>,
    },
    /// The node's event history: every membership, quorum, link, fencing and
    /// placement decision, start, stop, failure, promotion and operator request,
    /// with its time and reason.
    History {
        /// Only events since this long ago (90s, 10m, 2h, 3d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only events of this service.
        #[arg(long)]
        service: Option<String>,
        /// The history file (default /var/lib/baton/NODE.history with --node).
        #[arg(long, value_name = "FILE", required_unless_present = "node")]
        file: Option<PathBuf>,
        /// The node whose default history file to read.
        #[arg(long)]
        node: Option<String>,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
    },
    /// Show a node's status: members, links, quorum, fencing, services and why they are where they are.
    Status {
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Read a status file `baton run --status-file` writes, instead of the socket.
        #[arg(long, value_name = "FILE", conflicts_with = "socket")]
        status_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch a service over to another node (stop, then start there), for a while
    /// (`--for 30m`) or until `--clear`; status shows the move and when it ends.
    Move {
        /// The service.
        service: String,
        /// The node to move it to.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        to: Option<String>,
        /// How long the move holds (90s, 10m, 2h); without it, until --clear or the node leaves.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "clear")]
        for_: Option<String>,
        /// End a move taken on this node.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote a promotable service's replica on a node (the current one is
    /// demoted first). Refused while that replica lacks acknowledged writes,
    /// unless `--force`: then the writes it lacks are lost.
    Promote {
        /// The service.
        service: String,
        /// The node whose replica to promote.
        #[arg(long)]
        on: String,
        /// Promote it even if it is behind the acknowledged position.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a service's failures, ban and block on this node; retry a failed stop.
    Clear {
        /// The service.
        service: String,
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and explain every problem by its path.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A first look on this machine: runs every kind of agent and shows what baton does with them.
    Demo(crate::demo::DemoArgs),
    /// (internal) Run a native agent library for the host, speaking framed JSON on stdin/stdout.
    #[command(hide = true)]
    AgentRunner {
        /// The library to load.
        library: PathBuf,
    },
    /// (internal) The node's guardian: fences this node's services when its daemon dies or hangs.
    #[command(hide = true)]
    Guardian {
        /// Fence after this long without a renewal.
        #[arg(long)]
        lease_ms: u64,
        /// The daemon it guards (for messages).
        #[arg(long)]
        daemon_pid: u32,
    },
}

/// Which local daemon to talk to.
#[derive(clap::Args, Debug)]
pub struct DaemonAddress {
    /// The daemon's control socket (default /run/baton/NODE.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The node whose default socket to use (needed when --socket is not given).
    #[arg(long)]
    pub node: Option<String>,
}

impl DaemonAddress {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.socket, &self.node) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(n)) => Ok(crate::control::default_socket(n)),
            (None, None) => {
                let found: Vec<PathBuf> = std::fs::read_dir("/run/baton")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                    .collect();
                match &found[..] {
                    [one] => Ok(one.clone()),
                    [] => bail!(
                        "no daemon socket under /run/baton; give --socket PATH or --node NAME"
                    ),
                    many => bail!(
                        "several daemons run here ({}); give --node NAME or --socket PATH",
                        many.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
    }
}

/// `baton scenario ...`.
#[derive(Subcommand, Debug)]
pub enum ScenarioCommand {
    /// Write a commented scenario from a template: the strategy part, and a site
    /// part (nodes, links, addresses, witness, fencing) to fill in.
    New {
        /// standby, mutual, n-to-1, rotating, clone or promotable.
        #[arg(long)]
        template: String,
        /// The file to write (it must not exist).
        file: PathBuf,
    },
    /// Every problem `baton run` would refuse the scenario's config for, on any
    /// node, by path.
    Check {
        /// The scenario.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write each node's config (NODE.toml) and the cluster-wide fingerprint.
    Compile {
        /// The scenario.
        file: PathBuf,
        /// The directory to write into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the cluster's real state machines on a virtual clock under a fault
    /// script, or seeded random faults, and print every decision with its reason.
    Simulate {
        /// The scenario.
        file: PathBuf,
        /// Steps separated by ';': kill n1; wait 5s; cut n2 link 0; heal; start n1; ...
        #[arg(long, value_name = "SCRIPT", conflicts_with = "random")]
        fault: Option<String>,
        /// Run this many random fault schedules and check the invariants.
        #[arg(long, value_name = "N")]
        random: Option<u32>,
        /// The first schedule's seed (the others follow it).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the live site against the scenario: every node answers and runs its
    /// config, one key, every link between every pair of nodes, agents the same
    /// everywhere, the fence agent's monitor, the witness's storage.
    Validate {
        /// The scenario.
        file: PathBuf,
        /// A file with an operator's token (when the nodes have a console).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the console's screen for the scenario, before it runs: the layout,
    /// and the simulated timeline of a fault script to step through.
    View {
        /// The scenario.
        file: PathBuf,
        /// The HTML file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A fault script to simulate (see simulate).
        #[arg(long, value_name = "SCRIPT")]
        fault: Option<String>,
    },
}

/// `baton config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate FILE: syntax, every key, nodes, links, services, strategies.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

/// `baton agent ...`.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// List every available agent: built-in, installed, OCF.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an agent's meta-data.
    Info {
        /// Agent type (`process`, an installed name, `ocf:heartbeat:Dummy`, or a file).
        agent: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: InfoFormat,
    },
    /// Run one action and print the typed result.
    Run {
        /// Agent type.
        agent: String,
        /// Action: validate, start, stop, monitor, promote, demote, notify, reload, recover, meta-data.
        action: String,
        /// A resource parameter, KEY=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Deadline for the call in milliseconds (default: the agent's advertised timeout).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// The resource instance name the agent sees.
        #[arg(long, default_value = "cli")]
        resource: String,
        /// Monitor/validate depth (0, 10, 20).
        #[arg(long, default_value_t = 0)]
        depth: u32,
        /// Run monitor as a probe.
        #[arg(long)]
        probe: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a standalone agent project (outside this repository) that builds and
    /// passes `baton agent test` unchanged.
    New {
        /// The agent's type name (lowercase letters, digits, '-').
        name: String,
        /// native (a Rust cdylib), wasm (a Rust component) or ocf (a shell agent).
        #[arg(long, value_enum)]
        kind: crate::scaffold::ProjectKind,
        /// Where to create it (default: ./NAME); must be new or empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The baton checkout with the SDK crates and WIT files (default: the one
        /// this baton was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Run the conformance sequence (ocf-tester style) and report pass/fail.
    Test {
        /// Agent type.
        agent: String,
        /// A resource parameter, KEY=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The resource instance name the agent sees.
        #[arg(long, default_value = "conformance")]
        resource: String,
        /// Deadline per call in milliseconds (default: each action's advertised timeout).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a .so or .wasm and put it in the agent store.
    Install {
        /// The agent file.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `baton agent info --format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InfoFormat {
    /// For people.
    Text,
    /// The meta-data as JSON.
    Json,
    /// OCF 1.1 resource-agent XML.
    OcfXml,
}

/// Parse `KEY=VALUE` flags; the error names the flag.
pub fn parse_params(list: &[String]) -> anyhow::Result<Params> {
    let mut params = Params::new();
    for item in list {
        let Some((k, v)) = item.split_once('=') else {
            bail!("-p {item:?}: write KEY=VALUE");
        };
        if k.is_empty() {
            bail!("-p {item:?}: the key is empty; write KEY=VALUE");
        }
        if params.insert(k.to_string(), v.to_string()).is_some() {
            bail!("-p {k}: given twice");
        }
    }
    Ok(params)
}

fn runner_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the baton executable for the native agent runner")
}

/// Run the CLI; returns the process exit code.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::AgentRunner { library } = &cli.command {
        crate::runner::run(library)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Guardian {
        lease_ms,
        daemon_pid,
    } = &cli.command
    {
        crate::guardian::run(std::time::Duration::from_millis(*lease_ms), *daemon_pid)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        return config_check(file);
    }
    if let Command::Scenario(cmd) = &cli.command {
        return scenario(cmd);
    }
    match &cli.command {
        Command::Status {
            status_file: Some(file),
            json,
            ..
        } => return status_from_file(file, *json),
        Command::History {
            since,
            service,
            file,
            node,
            json,
        } => {
            let path = file.clone().unwrap_or_else(|| {
                crate::daemon::default_history(node.as_deref().unwrap_or_default())
            });
            return print_history(&path, since.as_deref(), service.as_deref(), *json);
        }
        Command::Status { daemon, json, .. } => {
            let reply = crate::control::ask(&daemon.path()?, &ControlRequest::Status)?;
            let status = reply
                .status
                .context("the daemon answered without a status")?;
            return print_status(&status, *json);
        }
        Command::Move {
            service,
            to,
            for_,
            clear,
            daemon,
            json,
        } => {
            let req = if *clear {
                ControlRequest::Unmove {
                    service: service.clone(),
                }
            } else {
                let for_ms = for_
                    .as_deref()
                    .map(crate::control::parse_duration)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--for {e}"))?
                    .map(|d| d.as_millis() as u64);
                ControlRequest::Move {
                    service: service.clone(),
                    to: to.clone().unwrap_or_default(),
                    for_ms,
                }
            };
            return control_command(&daemon.path()?, &req, *json);
        }
        Command::Promote {
            service,
            on,
            force,
            daemon,
            json,
        } => {
            let req = ControlRequest::Promote {
                service: service.clone(),
                on: on.clone(),
                force: *force,
            };
            return control_command(&daemon.path()?, &req, *json);
        }
        Command::Clear {
            service,
            daemon,
            json,
        } => {
            let req = ControlRequest::Clear {
                service: service.clone(),
            };
            return control_command(&daemon.path()?, &req, *json);
        }
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::AgentRunner { .. }
        | Command::Guardian { .. }
        | Command::Config(_)
        | Command::Scenario(_) => {
            unreachable!("handled above")
        }
        Command::Demo(args) => crate::demo::run(args, config, runner_exe()?),
        Command::Run {
            node,
            status_file,
            socket,
            pid_file,
            history_file,
        } => {
            let paths = crate::daemon::RunPaths {
                status_file,
                socket,
                pid_file,
                history_file,
            };
            crate::daemon::run(config, &node, runner_exe()?, paths)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { .. }
        | Command::History { .. }
        | Command::Move { .. }
        | Command::Promote { .. }
        | Command::Clear { .. } => {
            unreachable!("handled above")
        }
        Command::Agent(cmd) => agent(cmd, AgentCatalog::new(config, runner_exe()?)),
    }
}

/// Before anything else, on stderr (stdout may be JSON): how many capabilities
/// the agent requests and how many are granted, with the config line that
/// grants the rest.
fn capability_header(
    catalog: &AgentCatalog,
    handle: &crate::agent_host::AgentHandle,
    params: &baton_plugin_api::Params,
) {
    let meta = handle.metadata();
    if meta.capabilities.is_empty() {
        return;
    }
    let set = catalog.resource_capabilities(handle, params);
    eprintln!(
        "{} capabilities requested, {} granted{}",
        meta.capabilities.len(),
        set.effective().len(),
        set.grant_line()
            .map(|line| format!("; to grant the rest, add to the config:\n{line}"))
            .unwrap_or_default()
    );
    for problem in set.problems() {
        eprintln!("capability not usable: {problem}");
    }
}

fn control_command(
    socket: &std::path::Path,
    req: &ControlRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reply = crate::control::ask(socket, req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else if reply.ok {
        println!("{}", reply.message);
    } else {
        eprintln!("refused: {}", reply.message);
    }
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn status_from_file(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read status file {} (is `baton run --status-file` running?)",
            file.display()
        )
    })?;
    let s: Status = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status file", file.display()))?;
    print_status(&s, json)
}

fn print_status(s: &Status, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "node {} (id {}), epoch {}, members: {}",
        s.node,
        s.id,
        s.epoch,
        s.members.join(", ")
    );
    println!(
        "quorum: {} — {}{}",
        if s.quorate { "yes" } else { "NO" },
        s.quorum,
        if s.witness_held {
            " (witness held)"
        } else {
            ""
        }
    );
    if let Some(problem) = &s.witness_problem {
        println!("WARNING: witness not counted: {problem}");
    }
    if let Some(h) = &s.health {
        let checks: Vec<String> = h
            .checks
            .iter()
            .map(|c| match &c.detail {
                Some(d) => format!("{}: FAILED ({d})", c.check),
                None => format!("{}: ok", c.check),
            })
            .collect();
        println!(
            "health: {} — {}",
            if h.healthy {
                "ok"
            } else {
                "FAILING: this node runs nothing and holds no witness"
            },
            checks.join("; ")
        );
    }
    print_links(s);
    print_fencing(s);
    if let Some(w) = &s.watchdog {
        println!("watchdog: {w} armed");
    }
    for svc in &s.services {
        print_service(svc);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_links(s: &Status) {
    let links: Vec<String> = s
        .links
        .iter()
        .map(|l| {
            let state = match (l.up, l.rtt_ms) {
                (true, Some(rtt)) => format!("{rtt:.2} ms"),
                (true, None) => "up".into(),
                _ => "down".into(),
            };
            format!("{}/{} {state}", l.peer, l.link)
        })
        .collect();
    if !links.is_empty() {
        println!("links (peer/link round trip): {}", links.join(", "));
    }
    for l in s.links.iter().filter(|l| !l.up) {
        println!(
            "WARNING: link {} to {} is down since {} ms",
            l.link, l.peer, l.since_ms
        );
    }
}

fn print_fencing(s: &Status) {
    let f = &s.fencing;
    println!(
        "fencing: {}; fence wait {} ms{}{}",
        f.agent
            .as_ref()
            .map(|a| format!("agent {a}"))
            .unwrap_or_else(|| "no agent (survivors wait the fence wait)".into()),
        f.fence_wait_ms,
        Some(f.confirmed.join(", "))
            .filter(|t| !t.is_empty())
            .map(|t| format!("; fenced: {t}"))
            .unwrap_or_default(),
        Some(&f.waiting)
            .filter(|w| !w.is_empty())
            .map(|w| format!(
                "; waiting for: {}",
                w.iter()
                    .map(|(k, v)| format!("{k} ({v} ms left)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .unwrap_or_default()
    );
}

fn print_service(svc: &crate::status::ServiceStatus) {
    println!(
        "service {}: {} here; owner {}: {}",
        svc.name,
        svc.here,
        svc.owner.as_deref().unwrap_or("none"),
        svc.why
    );
    if let Some(m) = &svc.moving {
        println!(
            "  move to {} (by {}) {}",
            m.to,
            m.by,
            m.ends_in_ms
                .map(|ms| format!("ends in {} s", ms.div_ceil(1000)))
                .unwrap_or_else(|| "until cleared".into())
        );
    }
    if let Some(p) = &svc.promotion {
        println!(
            "  {} here; promoted {}: {}",
            p.here,
            p.promoted.as_deref().unwrap_or("nowhere"),
            p.why
        );
        let scores: Vec<String> = p.scores.iter().map(|(n, sc)| format!("{n} {sc}")).collect();
        println!(
            "  scores: {}; acknowledged {}",
            if scores.is_empty() {
                "none".into()
            } else {
                scores.join(", ")
            },
            p.acknowledged.as_deref().unwrap_or("unknown")
        );
    }
    if svc.failures > 0 {
        println!("  failures here: {}", svc.failures);
    }
    for r in &svc.resources {
        println!("  {} ({}): {}", r.name, r.agent, r.state);
    }
}

/// `baton history`: the events of the history at `path`, as a table or JSON.
fn print_history(
    path: &std::path::Path,
    since: Option<&str>,
    service: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since_ms = since
        .map(crate::control::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since {e}"))?
        .map(|d| crate::daemon::unix_ms().saturating_sub(d.as_millis() as u64));
    let events = crate::history::read(path, since_ms, service)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &events {
        println!(
            "{} {} {:<10} {}{}",
            crate::history::local_time(e.at_ms),
            e.node,
            e.kind,
            e.service
                .as_deref()
                .map(|s| format!("{s}: "))
                .unwrap_or_default(),
            e.text
        );
    }
    if events.is_empty() {
        eprintln!(
            "no events{}",
            since
                .map(|s| format!(" in the last {s}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every problem `run` would refuse the config for, on any of its nodes
/// (`{node}` in parameter values differs per node), by path, each once.
pub(crate) fn resource_problems(config: &Config) -> anyhow::Result<Vec<String>> {
    let Some(cluster) = &config.cluster else {
        return Ok(Vec::new());
    };
    let catalog = AgentCatalog::new(config.clone(), runner_exe()?);
    let mut problems: Vec<String> = Vec::new();
    for node in &cluster.nodes {
        if let Err(found) = crate::services::load_all(cluster, &catalog, &node.name) {
            for p in found {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
    }
    Ok(problems)
}

fn scenario(cmd: &ScenarioCommand) -> anyhow::Result<ExitCode> {
    use crate::scenario;
    match cmd {
        ScenarioCommand::New { template, file } => {
            let text = scenario::new_scenario(template)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(file)
                .with_context(|| format!("cannot create {} (it must not exist)", file.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            println!(
                "wrote {}: fill in its site part, then: baton scenario check {0}",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Check { file, json } => scenario::check(file, *json),
        ScenarioCommand::Compile { file, out, json } => scenario::compile(file, out, *json),
        ScenarioCommand::Simulate {
            file,
            fault,
            random,
            seed,
            json,
        } => scenario::simulate(file, fault.as_deref(), *random, *seed, *json),
        ScenarioCommand::Validate {
            file,
            token_file,
            json,
        } => crate::validate::run(file, token_file.as_deref(), *json),
        ScenarioCommand::View { file, out, fault } => {
            crate::console::write_view(file, out, fault.as_deref())
        }
    }
}

fn config_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(Some(file)) {
        Err(e) => {
            println!("{e:#}");
            Ok(ExitCode::from(1))
        }
        Ok(config) => {
            let problems = resource_problems(&config)?;
            if !problems.is_empty() {
                for p in &problems {
                    println!("{}: {p}", file.display());
                }
                return Ok(ExitCode::from(1));
            }
            match &config.cluster {
                None => println!("{}: ok (agents only; no [cluster] section)", file.display()),
                Some(c) => {
                    let b = c.spec().bounds;
                    println!(
                        "{}: ok — cluster {}, config {:016x}, {} nodes, {} links, {} services; timing {}: a link is down after {} ms, survivors take over a lost node's services after {} ms without a fence confirmation",
                        file.display(),
                        c.cluster.name,
                        c.fingerprint,
                        c.nodes.len(),
                        c.spec().links,
                        c.services.len(),
                        c.cluster.timing,
                        b.membership.link_timeout.as_millis(),
                        b.fence_wait().as_millis()
                    );
                    let arithmetic = c.spec().quorum.arithmetic();
                    for line in &arithmetic.lines {
                        println!("{line}");
                    }
                    for w in &arithmetic.warnings {
                        println!("WARNING: {w}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn agent(cmd: AgentCommand, catalog: AgentCatalog) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::List { json } => {
            let list = catalog.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<28} {:<15} {:<10} {:<9} CAPABILITIES (requested / granted)",
                    "TYPE", "KIND", "VERSION", "CONTRACT"
                );
                for a in &list {
                    let caps = if a.requested.is_empty() {
                        "-".to_string()
                    } else {
                        format!(
                            "{} / {}",
                            a.requested.join(","),
                            if a.granted.is_empty() {
                                "none".into()
                            } else {
                                a.granted.join(",")
                            }
                        )
                    };
                    println!(
                        "{:<28} {:<15} {:<10} {:<9} {caps}{}",
                        a.name,
                        a.kind.name(),
                        if a.version.is_empty() {
                            "-"
                        } else {
                            &a.version
                        },
                        match (&a.ocf_api, a.contract) {
                            (Some(api), _) => format!("ocf {api}"),
                            (None, Some(c)) => c.to_string(),
                            (None, None) => "-".into(),
                        },
                        if a.state == "ok" {
                            String::new()
                        } else {
                            format!("  [{}]", a.state)
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Info { agent, format } => {
            let handle = catalog.load(&agent)?;
            let meta = handle.metadata();
            match format {
                InfoFormat::Json => println!("{}", serde_json::to_string_pretty(meta)?),
                InfoFormat::OcfXml => print!("{}", meta.to_ocf_xml()),
                InfoFormat::Text => {
                    println!("{} {} — {}", meta.name, meta.version, meta.shortdesc);
                    println!(
                        "kind: {}   contract: {}   source: {}",
                        handle.kind(),
                        meta.contract,
                        handle.source()
                    );
                    if !meta.longdesc.is_empty() {
                        println!("\n{}", meta.longdesc);
                    }
                    println!("\nparameters:");
                    for p in &meta.parameters {
                        println!(
                            "  {:<16} {:<8} {}{}{} {}",
                            p.name,
                            p.kind.ocf_name(),
                            if p.required { "required " } else { "" },
                            if p.unique { "unique " } else { "" },
                            p.default
                                .as_ref()
                                .map(|d| {
                                    if d.is_empty() {
                                        "default=\"\"".to_string()
                                    } else {
                                        format!("default={d}")
                                    }
                                })
                                .unwrap_or_default(),
                            p.description
                        );
                    }
                    println!("\nactions:");
                    for a in &meta.actions {
                        let interval = if a.interval_ms > 0 {
                            format!(" every {} ms", a.interval_ms)
                        } else {
                            String::new()
                        };
                        println!("  {:<10} timeout {} ms{interval}", a.action, a.timeout_ms);
                    }
                    if !meta.capabilities.is_empty() {
                        println!(
                            "\ncapabilities requested: {}",
                            meta.capabilities
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    for (k, v) in handle.health() {
                        println!("{k}: {v}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Run {
            agent,
            action,
            params,
            timeout,
            resource,
            depth,
            probe,
            json,
        } => {
            let action = Action::parse(&action).with_context(|| {
                format!(
                    "unknown action {action:?}; use one of {}",
                    Action::ALL
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let params = parse_params(&params)?;
            let handle = catalog.load(&agent)?;
            capability_header(&catalog, &handle, &params);
            let mut req = baton_plugin_api::Request::new(action, params);
            req.depth = depth;
            req.probe = probe;
            req.context.resource = resource;
            req.context.node = catalog.node().to_string();
            req.context.timeout_ms = timeout
                .or_else(|| handle.metadata().action(action).map(|a| a.timeout_ms))
                .unwrap_or(20_000);
            let report = handle.call(&req);
            print_report(&report, json)?;
            // 2: the host refused the input (parameters, action) before the agent
            // ran; 1: the agent ran and failed.
            Ok(match &report.result {
                Ok(_) => ExitCode::SUCCESS,
                Err(f) if f.cause == FailureCause::Refused => ExitCode::from(2),
                Err(_) => ExitCode::from(1),
            })
        }
        AgentCommand::Test {
            agent,
            params,
            resource,
            timeout,
            json,
        } => {
            let params = parse_params(&params)?;
            let handle = catalog.load(&agent)?;
            capability_header(&catalog, &handle, &params);
            let report = conformance::run(&handle, params, &resource, catalog.node(), timeout);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("conformance test of {} ({})", report.agent, report.kind);
                for s in &report.steps {
                    println!(
                        "  {} {:<45} {} ({} µs)",
                        if s.passed { "PASS" } else { "FAIL" },
                        s.name,
                        s.got,
                        s.micros
                    );
                }
                let failed = report.steps.iter().filter(|s| !s.passed).count();
                println!(
                    "{}: {} passed, {} failed",
                    if report.passed { "PASS" } else { "FAIL" },
                    report.steps.len() - failed,
                    failed
                );
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AgentCommand::New {
            name,
            kind,
            dir,
            sdk,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let (files, commands) = crate::scaffold::create(&name, kind, &dir, sdk.as_deref())?;
            let kind_name = clap::ValueEnum::to_possible_value(&kind)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            println!("created {name} ({kind_name}) in {}:", dir.display());
            for f in files {
                println!("  {}", f.display());
            }
            println!("build and test it:");
            for c in commands {
                println!("  {c}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Install { path, json } => {
            let installed = catalog.install(&path)?;
            let m = &installed.manifest;
            if json {
                println!("{}", serde_json::to_string_pretty(&installed)?);
            } else {
                println!(
                    "installed {} {} ({:?}, contract {}) into {}",
                    m.name,
                    m.metadata.version,
                    m.kind,
                    m.contract,
                    catalog.store().root().join(&m.name).display()
                );
                if let Some(old) = &installed.replaced {
                    println!("replaced version {old}");
                }
                println!("sha256 {}", m.sha256);
                if !m.metadata.capabilities.is_empty() {
                    println!(
                        "requests capabilities: {} — grant them under [agents.grants] {} = [...] in the config",
                        m.metadata
                            .capabilities
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        m.name
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Print one call's result for people or as JSON.
pub fn print_report(report: &CallReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    match &report.result {
        Ok(Outcome::Metadata(m)) => println!("{}", serde_json::to_string_pretty(m)?),
        Ok(outcome) => println!(
            "{} {}: {outcome} ({} µs)",
            report.agent,
            report.action,
            report.elapsed.as_micros()
        ),
        Err(f) => println!(
            "{} {}: FAILED {f}\nrecovery: {} ({} µs)",
            report.agent,
            report.action,
            report.recovery,
            report.elapsed.as_micros()
        ),
    }
    Ok(())
}
