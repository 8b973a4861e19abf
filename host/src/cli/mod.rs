//! The `baton` command line.

mod agent;
mod check;
mod node;

use crate::agent::catalog::AgentCatalog;
use crate::config::Config;
use crate::node::control::ControlRequest;
pub use agent::print_report;
use anyhow::{Context, bail};
use baton_plugin_api::Params;
use check::{config_check, scenario};
use clap::{Parser, Subcommand, ValueEnum};
use node::{control_command, print_history, print_status, status_from_file};
use std::path::PathBuf;
use std::process::ExitCode;

/// baton: a high-availability cluster host.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about)]
pub struct Cli {
    /// Config file (default /etc/baton/cluster.toml when it exists).
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

    /// The identity `agent run` tags the processes an agent starts with, unless
    /// `BATON_HOST` names one: the same for every `agent run` of this user, so
    /// one call finds (monitors, stops) what an earlier one started for the same
    /// `--resource`.
    pub fn agent_run_host(&self) -> Option<String> {
        if !matches!(self.command, Command::Agent(AgentCommand::Run { .. })) {
            return None;
        }
        // SAFETY: getuid has no preconditions.
        Some(format!("cli:uid{}", unsafe { libc::getuid() }))
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
        /// Which [[node]] of the config this is (default: this machine's host
        /// name, up to its first dot).
        #[arg(long)]
        node: Option<String>,
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
    /// Read the config file again and apply its services without a restart:
    /// added ones start, removed ones stop, changed ones restart, the rest is
    /// not touched. Run it on every node (or `systemctl reload baton`, which
    /// sends SIGHUP): the cluster switches once every node has staged the same
    /// config. Changes to nodes, links, quorum, the witness, fencing or the
    /// timing profile are refused: those are rolled out by restarts.
    Reload {
        /// Only show what it would stop, start, restart or update, and where.
        #[arg(long)]
        dry_run: bool,
        /// Then wait until the cluster has switched (exit 1 if not by then).
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a node in standby: its services move off and it runs nothing
    /// (clones and replicas included) until `baton unstandby`. Kept across
    /// restarts, on every node.
    Standby(NodeRequest),
    /// Put a node in standby and wait until it holds nothing (before stopping
    /// or upgrading it).
    Drain {
        #[command(flatten)]
        node: NodeRequest,
        /// Give up (exit 1, the node left in standby) after this long.
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: String,
    },
    /// Take a node out of standby.
    Unstandby(NodeRequest),
    /// Put a service in maintenance on every node: baton neither monitors,
    /// starts nor stops it until `--off` (a clean stop of a daemon still
    /// stops what it runs).
    Maintenance {
        /// The service.
        service: String,
        /// Release it: baton manages it again.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and explain every problem by its path.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The console's tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificates for the nodes' HTTPS.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (baton.1, baton-run.1, …) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
    /// A first look on this machine: runs every kind of agent and shows what baton does with them.
    Demo(crate::lab::demo::DemoArgs),
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
        /// The node's name (for its history).
        #[arg(long, default_value = "")]
        node: String,
        /// The node's event history, where its fences are recorded.
        #[arg(long)]
        history_file: Option<PathBuf>,
    },
}

/// A request about one node, asked of a daemon.
#[derive(clap::Args, Debug)]
pub struct NodeRequest {
    /// The node (default: the one whose daemon is asked).
    #[arg(value_name = "NODE")]
    target: Option<String>,
    #[command(flatten)]
    daemon: DaemonAddress,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
            (None, Some(n)) => Ok(crate::node::control::default_socket(n)),
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

/// `baton token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token for NAME: printed once, only its hash is kept (in FILE,
    /// made mode 0600 when missing). Daemons read the file when they start.
    Add {
        /// Who the token is for (recorded with each of their actions).
        name: String,
        /// viewer (look: the console, /metrics) or operator (look and act).
        #[arg(long, default_value = "operator")]
        role: String,
        /// The tokens file (`tokens_file` of [cluster.console]).
        #[arg(long, value_name = "FILE", default_value = "/etc/baton/console.tokens")]
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `baton tls ...`.
#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Make a cluster CA and a certificate and key for every node of FILE (a
    /// scenario or a config), naming the node and its http address, valid five
    /// years, into DIR: copy ca.crt, NODE.crt and NODE.key to each node and
    /// name them in its [cluster.tls].
    Init {
        /// The scenario or config whose nodes get certificates.
        file: PathBuf,
        /// Where to write them (ca.key stays here: keep it offline).
        #[arg(long, value_name = "DIR", default_value = "/etc/baton/tls")]
        out: PathBuf,
        /// How long the node certificates are valid, in days.
        #[arg(long, default_value_t = crate::node::tls::VALID_DAYS)]
        days: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue new certificates and keys for every node of FILE under the CA
    /// that `tls init` made in DIR (before they expire, or for a node added
    /// since): copy NODE.crt and NODE.key to each node, then `systemctl reload
    /// baton` there (the daemon serves the new one without a restart).
    Renew {
        /// The scenario or config whose nodes get certificates.
        file: PathBuf,
        /// The directory with the CA (ca.crt, ca.key); the certificates go there.
        #[arg(long, value_name = "DIR", default_value = "/etc/baton/tls")]
        out: PathBuf,
        /// How long the node certificates are valid, in days (default: five
        /// years, or until the CA expires if sooner).
        #[arg(long)]
        days: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
        /// A file with a token (when the nodes have a console; a viewer's will do).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The cluster CA's certificate (default: the scenario's cluster.tls.ca_file).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
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
        kind: crate::agent::scaffold::ProjectKind,
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
        crate::agent::runner::run(library)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Guardian {
        lease_ms,
        daemon_pid,
        node,
        history_file,
    } = &cli.command
    {
        let log = crate::node::guardian::Log {
            node: node.clone(),
            history: history_file.clone(),
        };
        crate::node::guardian::run(
            std::time::Duration::from_millis(*lease_ms),
            *daemon_pid,
            &log,
        )?;
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
                crate::node::daemon::default_history(node.as_deref().unwrap_or_default())
            });
            return print_history(&path, since.as_deref(), service.as_deref(), *json);
        }
        Command::Status { daemon, json, .. } => {
            let reply = crate::node::control::ask(&daemon.path()?, &ControlRequest::Status)?;
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
                    .map(crate::node::control::parse_duration)
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
        Command::Standby(r) | Command::Unstandby(r) => {
            let req = ControlRequest::Standby {
                node: r.target.clone(),
                on: matches!(cli.command, Command::Standby(_)),
            };
            return control_command(&r.daemon.path()?, &req, r.json);
        }
        Command::Maintenance {
            service,
            off,
            daemon,
            json,
        } => {
            let req = ControlRequest::Maintenance {
                service: service.clone(),
                on: !off,
            };
            return control_command(&daemon.path()?, &req, *json);
        }
        Command::Reload {
            dry_run,
            wait,
            daemon,
            json,
        } => {
            let wait = wait
                .as_deref()
                .map(crate::node::control::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--wait: {e}"))?;
            return node::reload(&daemon.path()?, *dry_run, wait, *json);
        }
        Command::Drain { node: r, timeout } => {
            let limit = crate::node::control::parse_duration(timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            return node::drain(&r.daemon.path()?, r.target.as_deref(), limit, r.json);
        }
        Command::Token(TokenCommand::Add {
            name,
            role,
            file,
            json,
        }) => {
            let role = crate::node::console::Role::parse(role)
                .with_context(|| format!("--role {role:?}: use viewer or operator"))?;
            let token = crate::node::console::add_token(file, name, role)?;
            if *json {
                let out = serde_json::json!({"name": name, "role": role.name(), "token": token, "file": file});
                println!("{out}");
            } else {
                eprintln!(
                    "{name} ({}): the token below is shown this once; {} keeps only its hash. Give it to {name}; restart the daemons that read this file.",
                    role.name(),
                    file.display()
                );
                println!("{token}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Tls(cmd) => {
            let (file, out, days, json) = match cmd {
                TlsCommand::Init {
                    file,
                    out,
                    days,
                    json,
                } => (file, out, Some(*days), json),
                TlsCommand::Renew {
                    file,
                    out,
                    days,
                    json,
                } => (file, out, *days, json),
            };
            if let Some(d) = days.filter(|d| *d <= 0) {
                anyhow::bail!("--days {d}: give a number of days above 0");
            }
            let cluster = match crate::design::scenario::load(file) {
                Ok(scenario) => scenario.cluster().clone(),
                Err(_) => Config::load(Some(file))?.cluster.with_context(|| {
                    format!(
                        "{}: no [cluster] section: no nodes to make certificates for",
                        file.display()
                    )
                })?,
            };
            let renewing = matches!(cmd, TlsCommand::Renew { .. });
            let written = if renewing {
                crate::node::tls::renew(&cluster, out, days)?
            } else {
                crate::node::tls::init(&cluster, out, days.unwrap_or(crate::node::tls::VALID_DAYS))?
            };
            if *json {
                println!(
                    "{}",
                    serde_json::json!({"dir": out, "files": written, "days": days})
                );
            } else {
                for f in &written {
                    println!("wrote {}", f.display());
                }
                if renewing {
                    println!(
                        "on each node: NODE.crt and NODE.key (mode 600) where its [cluster.tls] names them, then `systemctl reload baton` (or `baton reload`): it serves the new certificate without a restart; ca.crt is unchanged"
                    );
                } else {
                    println!(
                        "on each node: ca.crt, NODE.crt and NODE.key (mode 600) under /etc/baton/tls, and in its config\n  [cluster.tls]\n  cert_file = \"/etc/baton/tls/NODE.crt\"\n  key_file = \"/etc/baton/tls/NODE.key\"\n  ca_file = \"/etc/baton/tls/ca.crt\"\nkeep {} off the nodes",
                        out.join("ca.key").display()
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "baton", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Manpages { dir } => return manpages(dir),
        _ => {}
    }
    let config = if matches!(cli.command, Command::Agent(_)) {
        Config::load_agents(cli.config.as_deref())?
    } else {
        Config::load(cli.config.as_deref())?
    };
    match cli.command {
        Command::AgentRunner { .. }
        | Command::Guardian { .. }
        | Command::Config(_)
        | Command::Scenario(_)
        | Command::Completions { .. }
        | Command::Token(_)
        | Command::Tls(_)
        | Command::Manpages { .. } => {
            unreachable!("handled above")
        }
        Command::Demo(args) => crate::lab::demo::run(args, config, runner_exe()?),
        Command::Run {
            node,
            status_file,
            socket,
            pid_file,
            history_file,
        } => {
            let paths = crate::node::daemon::RunPaths {
                status_file,
                socket,
                pid_file,
                history_file,
                config_file: cli.config.clone(),
            };
            let node = node_name(node, &config)?;
            crate::node::daemon::run(config, &node, runner_exe()?, paths)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { .. }
        | Command::History { .. }
        | Command::Move { .. }
        | Command::Promote { .. }
        | Command::Clear { .. }
        | Command::Standby(_)
        | Command::Drain { .. }
        | Command::Reload { .. }
        | Command::Unstandby(_)
        | Command::Maintenance { .. } => {
            unreachable!("handled above")
        }
        Command::Agent(cmd) => agent::agent(cmd, AgentCatalog::new(config, runner_exe()?)),
    }
}

/// The node `run` runs: `--node`, else this machine's host name up to its
/// first dot, which the config must name.
fn node_name(given: Option<String>, config: &Config) -> anyhow::Result<String> {
    if let Some(n) = given {
        return Ok(n);
    }
    let host = host_name()?;
    let short = host.split('.').next().unwrap_or_default().to_string();
    if let Some(cluster) = &config.cluster
        && !cluster.nodes.iter().any(|n| n.name == short)
    {
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "this machine's host name is {host:?} and no [[node]] is named {short:?} (the config names {}); give --node NAME, or name the node after the host",
            names.join(", ")
        );
    }
    Ok(short)
}

fn host_name() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        bail!(
            "cannot read this machine's host name ({}); give --node NAME",
            std::io::Error::last_os_error()
        );
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// `baton manpages DIR`: baton.1 and one page per command (baton-run.1, …).
fn manpages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
