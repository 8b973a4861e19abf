//! Real `baton run` daemons on loopback (three nodes, two links each, UDP): the
//! service fails over when its node is killed with kill -9, a returning node
//! does not take a rotating service back, and a stalled witness stalls no
//! daemon. Cut links and isolation are tested in the namespace lab (`lab.rs`).

use crate::support::{baton_at, baton_exe};
use baton::lab::{ServiceSpec, write_cluster_config};
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    daemons: Vec<Option<Child>>,
}

/// A TCP port free on `ip` just now.
pub(crate) fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub(crate) fn new(strategy: &str) -> Cluster {
        Cluster::with(strategy, "")
    }

    fn with(strategy: &str, service_extra: &str) -> Cluster {
        Cluster::with_params(strategy, service_extra, "command = \"sleep 600\"")
    }

    fn with_params(strategy: &str, service_extra: &str, params: &str) -> Cluster {
        Cluster::build(strategy, service_extra, params, "self_fence_ms = 300")
    }

    /// A cluster with `cluster_extra` lines in `[cluster]` (`RUN_DIR` is the
    /// cluster's run directory).
    fn build(strategy: &str, service_extra: &str, params: &str, cluster_extra: &str) -> Cluster {
        Cluster::build_timed("fast", strategy, service_extra, params, cluster_extra)
    }

    /// [`Cluster::build`] with the timing profile `timing`.
    fn build_timed(
        timing: &str,
        strategy: &str,
        service_extra: &str,
        params: &str,
        cluster_extra: &str,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let links: Vec<[String; 2]> = (1..=3)
            .map(|n| {
                let (a, b) = (format!("127.0.0.{}", 10 + n), format!("127.0.1.{}", 10 + n));
                [
                    format!("{a}:{}", free_port(&a)),
                    format!("{b}:{}", free_port(&b)),
                ]
            })
            .collect();
        let config = write_cluster_config(
            dir.path(),
            &links,
            timing,
            cluster_extra,
            &ServiceSpec {
                strategy,
                extra: service_extra,
                process_params: params,
                before_process: "",
                after_process: "",
            },
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            config,
            daemons: vec![None, None, None],
        };
        for n in 1..=3 {
            c.start(n);
        }
        c
    }

    fn status_file(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("n{n}.json"))
    }

    pub(crate) fn start(&mut self, n: usize) {
        let config = self.config.clone();
        self.start_with_config(n, &config);
    }

    /// The arguments `baton` runs node `n` with, on `config`.
    pub(crate) fn node_args(&self, n: usize, config: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--config".into(), config.into()];
        for a in ["run", "--node", &format!("n{n}"), "--status-file"] {
            args.push(a.into());
        }
        args.push(self.status_file(n).into());
        args.push("--socket".into());
        args.push(self.dir.path().join(format!("n{n}.sock")).into());
        args
    }

    /// Start node `n` with its own config file.
    pub(crate) fn start_with_config(&mut self, n: usize, config: &std::path::Path) {
        let child = Command::new(baton_exe())
            .args(self.node_args(n, config))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemons[n - 1] = Some(child);
    }

    pub(crate) fn status(&self, n: usize) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.status_file(n)).ok()?).ok()
    }

    /// The nodes whose status says the service runs there.
    pub(crate) fn owners(&self) -> Vec<usize> {
        (1..=3)
            .filter(|n| self.daemons[n - 1].is_some())
            .filter(|n| {
                self.status(*n)
                    .is_some_and(|s| s["services"][0]["here"] == "running")
            })
            .collect()
    }

    /// PID of the service's process started by node `n` (its process group leader).
    pub(crate) fn service_pid(&self, n: usize) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("run/n{n}.web-0.pid"))).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    pub(crate) fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restart every daemon with the config `edit` makes of the current one.
    pub(crate) fn reconfigure(&mut self, edit: impl Fn(String) -> String) {
        for n in 1..=3 {
            self.kill_node(n);
        }
        let text = edit(std::fs::read_to_string(&self.config).unwrap());
        std::fs::write(&self.config, text).unwrap();
        for n in 1..=3 {
            self.start(n);
        }
    }

    /// kill -9 the node's daemon and its service's process group.
    pub(crate) fn kill_node(&mut self, n: usize) {
        if let Some(mut child) = self.daemons[n - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.service_pid(n) {
            // SAFETY: signalling the process group this test's daemon created.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 1..=3 {
            self.kill_node(n);
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn members(c: &Cluster, n: usize) -> usize {
    c.status(n)
        .and_then(|s| s["members"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[test]
fn kill_9_of_the_owner_moves_the_service_to_exactly_one_other_node() {
    let mut c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let first = c.service_pid(1).unwrap();
    assert!(alive(first));
    c.kill_node(1);
    c.wait_for(
        "another node to run the service",
        Duration::from_secs(20),
        |c| !c.owners().is_empty(),
    );
    assert_eq!(
        c.owners(),
        [2],
        "standby: the next preferred node takes over"
    );
    let s = c.status(2).unwrap();
    assert_eq!(
        s["services"][0]["why"],
        "on node 2 because node 1 is not a member"
    );
    let second = c.service_pid(2).unwrap();
    assert!(alive(second));
    assert!(
        crate::support::gone_within(first, Duration::from_secs(5)),
        "the killed node's service survived"
    );
    // n3 did not start it too.
    assert!(c.service_pid(3).is_none_or(|p| !alive(p)));
}

#[test]
fn a_returning_node_does_not_take_a_rotating_service_back() {
    let mut c = Cluster::new("rotating");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    c.kill_node(1);
    c.wait_for("n2 to take over", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    c.start(1);
    c.wait_for("n1 to rejoin", Duration::from_secs(20), |c| {
        members(c, 1) == 3 && members(c, 2) == 3
    });
    // n1 is a member again; give it the time a takeover would need, then check it did not.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        assert_eq!(
            c.owners(),
            [2],
            "the service moved back to the returning node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let why = c.status(1).unwrap()["services"][0]["why"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("no failback"), "{why}");
}

#[test]
fn a_failed_service_restarts_in_place_and_the_failure_is_counted() {
    let c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let first = c.service_pid(1).unwrap();
    // The service dies behind baton's back; the daemon stays.
    // SAFETY: killing the process group our daemon started for this test.
    unsafe {
        libc::kill(-first, libc::SIGKILL);
    }
    // The status file is rewritten every heartbeat; wait until it reports the restart.
    c.wait_for("a restart on n1", Duration::from_secs(20), |c| {
        c.service_pid(1).is_some_and(|p| p != first && alive(p))
            && c.owners() == [1]
            && c.status(1)
                .is_some_and(|s| s["services"][0]["failures"] == 1)
    });
    assert!(c.service_pid(2).is_none_or(|p| !alive(p)));
}

#[test]
fn at_the_restart_limit_the_service_moves_and_the_node_is_avoided() {
    let c = Cluster::with("standby", "max_restarts = 1");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let first = c.service_pid(1).unwrap();
    // SAFETY: killing the process group our daemon started for this test.
    unsafe {
        libc::kill(-first, libc::SIGKILL);
    }
    c.wait_for("n2 to take over", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    let s = c.status(2).unwrap();
    assert_eq!(
        s["services"][0]["why"], "on node 2 because node 1 is excluded after failures",
        "{s}"
    );
    assert_eq!(c.status(1).unwrap()["services"][0]["failures"], 1);
}

#[test]
fn a_misconfigured_resource_stops_the_service_everywhere_until_cleared() {
    // The process agent reports a ready_tcp that is not HOST:PORT as misconfigured:
    // wrong on every node, so no node may try it (no restarts, no moves).
    let c = Cluster::with_params(
        "standby",
        "",
        "command = \"sleep 600\", ready_tcp = \"nonsense\"",
    );
    c.wait_for(
        "every node to report the service stopped everywhere",
        Duration::from_secs(20),
        |c| {
            (1..=3).all(|n| {
                c.status(n).is_some_and(|s| {
                    s["services"][0]["why"].as_str().is_some_and(|w| {
                        w.contains("stopped everywhere") && w.contains("on node 1")
                    })
                })
            })
        },
    );
    // Well past a restart or a takeover: still nobody runs it, and n1 tried once.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(c.owners().is_empty());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.status(1).unwrap()["services"][0]["failures"], 1);
    let failure = c.status(1).unwrap()["services"][0]["last_failure"].clone();
    assert!(
        failure.as_str().unwrap().contains("web-0: start failed")
            && failure.as_str().unwrap().contains("not HOST:PORT"),
        "{failure}"
    );
    // `baton clear` on n1 lifts the block (the config is still wrong, so it blocks again).
    let out = baton_at(&c.dir.path().join("n1.sock"), &["clear", "web", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn status_and_refusals_over_the_control_socket() {
    let c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let sock = c.dir.path().join("n2.sock");
    let out = baton_at(&sock, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["node"], "n2");
    assert_eq!(s["services"][0]["owner"], "n1");
    assert_eq!(s["services"][0]["resources"][1]["agent"], "ledger");
    // Only root or the daemon's user may talk to it: the socket is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second daemon for the same node refuses to start on the same socket.
    let out = Command::new(baton_exe())
        .arg("--config")
        .arg(&c.config)
        .args(["run", "--node", "n2", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot bind") || err.contains("another baton daemon"),
        "{err}"
    );
    // Bad requests are refused with the fix.
    for (args, want) in [
        (
            vec!["move", "nosuch", "--to", "n2"],
            "no service is named \"nosuch\"",
        ),
        (
            vec!["move", "web", "--to", "n2", "--for", "soon"],
            "e.g. 90s",
        ),
        (vec!["move", "web", "--clear"], "web has no move in effect"),
    ] {
        let out = baton_at(&sock, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_restarted_daemon_stops_what_its_killed_predecessor_left_running() {
    let mut c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let orphan = c.service_pid(1).unwrap();
    // Only the daemon dies; its service keeps running, unknown to the next daemon.
    if let Some(mut child) = c.daemons[0].take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(alive(orphan));
    c.start(1);
    // The new daemon probes before joining and stops the leftover.
    assert!(
        crate::support::gone_within(orphan, Duration::from_secs(10)),
        "the restarted daemon left its predecessor's service running"
    );
    c.wait_for("one owner again", Duration::from_secs(20), |c| {
        c.owners().len() == 1
    });
    // Its history says how the previous run ended.
    let history = c.dir.path().join("n1.history");
    let events = baton::node::history::read(&history, None, None).unwrap();
    let starts: Vec<&str> = events
        .iter()
        .filter(|e| e.node == "n1" && e.text.starts_with("started"))
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(starts[0], "started");
    assert!(
        starts[1].starts_with("started; the previous run ended without a clean stop"),
        "{starts:?}"
    );
}

#[test]
fn a_watchdog_device_that_is_not_a_watchdog_is_refused_at_start() {
    // /dev/null takes the open and refuses the watchdog ioctl; no real watchdog is
    // ever opened on a test machine.
    let dir = tempfile::tempdir().unwrap();
    let a = format!("127.0.0.31:{}", free_port("127.0.0.31"));
    let b = format!("127.0.1.31:{}", free_port("127.0.1.31"));
    let config = write_cluster_config(
        dir.path(),
        &[[a, b]],
        "fast",
        "self_fence_ms = 300\n[cluster.watchdog]\ndevice = \"/dev/null\"\ntimeout_s = 5",
        &ServiceSpec {
            strategy: "standby",
            extra: "",
            process_params: "command = \"sleep 600\"",
            before_process: "",
            after_process: "",
        },
    )
    .unwrap();
    let out = Command::new(baton_exe())
        .arg("--config")
        .arg(&config)
        .args(["run", "--node", "n1", "--socket"])
        .arg(dir.path().join("n1.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.watchdog.device /dev/null: not a watchdog device"),
        "{err}"
    );
}

/// `baton status --json` on node `n`'s socket, or `None` when it does not answer
/// within `limit` (the client is killed then).
fn status_answer(c: &Cluster, n: usize, limit: Duration) -> Option<serde_json::Value> {
    let mut child = Command::new(baton_exe())
        .args(["status", "--json", "--socket"])
        .arg(c.dir.path().join(format!("n{n}.sock")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn a_stalled_witness_stalls_no_daemon() {
    // The default timing: this is about a loop that would block on the
    // witness, not about 100 ms detection on a busy machine.
    let c = Cluster::build_timed(
        "default",
        "standby",
        "",
        "command = \"sleep 600\"",
        "self_fence_ms = 300\nwitness = { file = \"RUN_DIR/witness\", votes = 1 }",
    );
    c.wait_for(
        "n1 to hold the service and the witness",
        Duration::from_secs(20),
        |c| c.owners() == [1] && c.status(1).is_some_and(|s| s["witness_held"] == true),
    );
    let epoch = c.status(2).unwrap()["epoch"].clone();
    // The storage stalls: the lease file becomes a FIFO with no writer, so
    // every read of it blocks (as a hung NFS server or a SAN path failover
    // does), and a write cannot replace it (each daemon's temporary name,
    // `witness.tmpPID`, is taken by a directory).
    let witness = c.dir.path().join("run/witness");
    let tmps: Vec<_> = c
        .daemons
        .iter()
        .flatten()
        .map(|d| c.dir.path().join(format!("run/witness.tmp{}", d.id())))
        .collect();
    for tmp in &tmps {
        // A write under way has the name for a moment (it is renamed over
        // the lease file): take it once the rename freed it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = std::fs::create_dir(tmp) {
            assert!(
                e.kind() == std::io::ErrorKind::AlreadyExists && Instant::now() < deadline,
                "cannot take {}: {e}",
                tmp.display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let saved = c.dir.path().join("run/witness.saved");
    let fifo = c.dir.path().join("run/witness.fifo");
    let cpath = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path in the test's directory.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    std::fs::rename(&witness, &saved).unwrap();
    std::fs::hard_link(&fifo, &witness).unwrap();
    let uptime = |n: usize| {
        c.status(n)
            .and_then(|s| s["uptime_ms"].as_u64())
            .unwrap_or(0)
    };
    let (from1, from2) = (uptime(1), uptime(2));
    // Both daemons keep running their loops (status rewritten, 2 s of uptime
    // later) and answer operators while the lock is held; a blocked loop would
    // never get there.
    c.wait_for(
        "both daemons to run on for 2 s",
        Duration::from_secs(20),
        |_| uptime(1) > from1 + 2_000 && uptime(2) > from2 + 2_000,
    );
    let answers: Vec<_> = [1, 2]
        .map(|n| {
            status_answer(&c, n, Duration::from_secs(5)).unwrap_or_else(|| {
                panic!("n{n} does not answer status while the witness is stalled")
            })
        })
        .into();
    // n1 leads the partition and renews the lease: it says why it cannot.
    assert!(
        answers[0]["witness_problem"]
            .as_str()
            .is_some_and(|p| p.contains("witness")),
        "n1 does not say the witness is stalled: {}",
        answers[0]
    );
    assert_eq!(answers[0]["witness_held"], false);
    // And in words, for the operator.
    let text = baton_at(&c.dir.path().join("n1.sock"), &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("WARNING: witness not counted"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // Three nodes are a majority without the witness: nothing moved.
    assert_eq!(c.status(2).unwrap()["epoch"], epoch);
    assert_eq!(c.owners(), [1]);
    // The storage answers again: the lease file is back, and a writer that
    // opens the FIFO (without blocking: only while a reader waits) and closes it
    // lets the blocked reads end.
    for tmp in &tmps {
        std::fs::remove_dir(tmp).unwrap();
    }
    std::fs::rename(&saved, &witness).unwrap();
    for _ in 0..20 {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        if opened.is_err() {
            break; // ENXIO: nobody waits on it any more
        }
    }
    c.wait_for("the witness to count again", Duration::from_secs(20), |c| {
        c.status(1)
            .is_some_and(|s| s["witness_held"] == true && s["witness_problem"].is_null())
    });
}

/// `/metrics` on the address in a node's `http`: membership, quorum, where the
/// service runs and why it is there, and the agent calls, counted and timed.
#[test]
fn a_node_serves_prometheus_metrics_on_its_http_address() {
    let mut c = Cluster::new("standby");
    // The same config on every node, with n1's HTTP address in its [[node]].
    let port = free_tcp_port("127.0.0.11");
    // Plain HTTP, as the config says (TLS: the console's tests).
    c.reconfigure(|text| {
        text.replacen(
            "id = 1\n",
            &format!("id = 1\nhttp = \"127.0.0.11:{port}\"\n"),
            1,
        )
        .replacen("[cluster]\n", "[cluster]\ntls = { plain = true }\n", 1)
    });
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let get = || -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.11", port)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: n1\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = get();
    while !(body.contains("baton_members 3") && body.contains("action=\"monitor\"")) {
        assert!(Instant::now() < deadline, "no complete metrics:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
        body = get();
    }
    for line in [
        " 200 OK",
        "baton_quorate 1",
        "baton_service_here{service=\"web\",phase=\"running\"} 1",
        "baton_service_here{service=\"web\",phase=\"stopped\"} 0",
        "baton_service_owner{service=\"web\",node=\"n1\"} 1",
        "baton_service_owner{service=\"web\",node=\"n2\"} 0",
        "baton_link_up{peer=\"n2\",link=\"0\"} 1",
        "baton_link_rtt_seconds{peer=\"n2\",link=\"0\"} ",
        "baton_agent_calls_total{agent=\"process\",action=\"start\",result=\"ok\"} 1",
        "baton_agent_call_seconds_count{agent=\"process\",action=\"start\"} 1",
        "baton_decisions_total{kind=\"membership\"}",
        "baton_node_info{node=\"n1\",version=\"",
        // Without an Accept header: the Prometheus text format.
        "text/plain; version=0.0.4",
        "# TYPE baton_agent_calls_total counter",
    ] {
        assert!(body.contains(line), "missing {line:?} in:\n{body}");
    }
    assert!(!body.contains("# EOF"), "{body}");
    crate::support::promtool_check_metrics(&body);

    // An operator's move: in effect, and counted as a move of the service
    // for that reason.
    let out = baton_at(
        &c.dir.path().join("n1.sock"),
        &["move", "web", "--to", "n2"],
    );
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
    c.wait_for("web to run on n2", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = get();
    while !body.contains("baton_service_moves_total{service=\"web\",reason=\"operator\"} 1") {
        assert!(
            Instant::now() < deadline,
            "the move was not counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
        body = get();
    }
    for line in [
        "baton_moves_in_effect 1",
        "baton_config_mismatch 0",
        "# TYPE baton_membership_epoch gauge",
        "# HELP baton_service_moves_total ",
    ] {
        assert!(body.contains(line), "missing {line:?} in:\n{body}");
    }
    crate::support::promtool_check_metrics(&body);
    // Every metric the shipped dashboard and alerting rules query is one a
    // node serves.
    let served: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let docs = crate::support::repo().join("docs/monitoring");
    for file in ["baton-dashboard.json", "baton-alerts.yml"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        let named = crate::support::metric_names(&text);
        assert!(named.len() >= 8, "{file} names only {named:?}");
        for name in named {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            // Served with HTTPS only (this node is plain): see
            // an_expiring_certificate_is_reported_and_a_reload_serves_the_renewed_one.
            let tls_only = name == "baton_tls_certificate_expiry_timestamp_seconds";
            assert!(
                tls_only || served.contains(base) || served.contains(name.as_str()),
                "{file} queries {name}, which no node serves; served: {served:?}"
            );
        }
    }
}

/// The shipped alerting rules load in Prometheus and fire as their unit tests
/// say (`promtool check rules`, `promtool test rules`).
#[test]
fn the_alerting_rules_pass_promtool() {
    let docs = crate::support::repo().join("docs/monitoring");
    for args in [
        ["check", "rules", "baton-alerts.yml"],
        ["test", "rules", "baton-alerts.test.yml"],
    ] {
        let out = Command::new(crate::support::promtool())
            .args(args)
            .current_dir(&docs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            crate::support::output_text(&out)
        );
    }
}

/// The guardian reads a renewal and the goodbye that arrive in one write (a
/// clean stop right after a renewal) and stands down: the daemon waiting for it
/// to exit is not left hanging.
#[test]
fn the_guardian_stands_down_on_a_goodbye_that_arrives_with_a_renewal() {
    use std::io::Write;
    let mut guardian = Command::new(baton_exe())
        .args(["guardian", "--lease-ms", "60000", "--daemon-pid"])
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let renewal = r#"{"groups":[],"addresses":[],"holds":true}"#;
    let bye = r#"{"groups":[],"addresses":[],"bye":true}"#;
    let mut stdin = guardian.stdin.take().unwrap();
    stdin
        .write_all(format!("{renewal}\n{bye}\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = guardian.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() >= deadline {
            let _ = guardian.kill();
            panic!("the guardian did not stand down");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    drop(stdin);
}

/// The settled owner of the service in every running node's status, once all
/// of them agree on it.
fn agreed_owner(c: &Cluster) -> Option<String> {
    let owners: Vec<Option<String>> = (1..=3)
        .filter(|n| c.daemons[n - 1].is_some())
        .map(|n| {
            c.status(n)
                .and_then(|s| s["services"][0]["owner"].as_str().map(str::to_owned))
        })
        .collect();
    owners
        .windows(2)
        .all(|w| w[0] == w[1])
        .then(|| owners[0].clone())?
}

/// `baton drain n1` (standby, then wait), asked of another node: the service
/// moves off n1 and stays off, across a restart of n1's daemon too, until
/// `baton unstandby n1` (the standby strategy then fails it back to its
/// preferred node).
#[test]
fn a_node_in_standby_runs_nothing_until_it_is_taken_out() {
    let mut c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let sock2 = c.dir.path().join("n2.sock");
    // Drained: standby, and back only once n1 holds nothing.
    let out = baton_at(&sock2, &["drain", "n1", "--timeout", "60s"]);
    let text = crate::support::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("n1 holds nothing"), "{text}");
    c.wait_for("the service to move to n2", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    let s = c.status(1).unwrap();
    assert_eq!(s["standby"], serde_json::json!(["n1"]), "{s}");
    let why = s["services"][0]["why"].as_str().unwrap().to_string();
    assert!(why.contains("standby"), "{why}");
    // The text status names it and the way out.
    let text = crate::support::output_text(&baton_at(&sock2, &["status"]));
    assert!(
        text.contains("standby (runs nothing until `baton unstandby NODE`): n1"),
        "{text}"
    );
    // A restarted n1 stays in standby: the service stays on n2.
    c.kill_node(1);
    c.start(1);
    c.wait_for("n1 to rejoin in standby", Duration::from_secs(20), |c| {
        members(c, 1) == 3
            && c.status(1).is_some_and(|s| {
                s["standby"] == serde_json::json!(["n1"]) && s["services"][0]["owner"] == "n2"
            })
    });
    assert_eq!(c.owners(), [2]);
    // So does a restart of the whole cluster: each node kept the setting.
    for n in 1..=3 {
        c.kill_node(n);
        let _ = std::fs::remove_file(c.status_file(n));
    }
    for n in 1..=3 {
        c.start(n);
    }
    c.wait_for(
        "the cluster to restart on n2",
        Duration::from_secs(20),
        |c| {
            c.owners() == [2]
                && agreed_owner(c).as_deref() == Some("n2")
                && (1..=3).all(|n| members(c, n) == 3)
        },
    );
    assert_eq!(c.status(1).unwrap()["standby"], serde_json::json!(["n1"]));
    let out = baton_at(&c.dir.path().join("n3.sock"), &["unstandby", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
    c.wait_for(
        "the service to fail back to n1",
        Duration::from_secs(20),
        |c| c.owners() == [1] && agreed_owner(c).as_deref() == Some("n1"),
    );
    assert_eq!(c.status(2).unwrap()["standby"], serde_json::json!([]));
}

/// `baton maintenance web`: its process dies and baton neither notices nor
/// restarts it, nor moves it; `--off` hands it back, and the owner's monitor
/// finds it stopped and starts it again.
#[test]
fn a_service_in_maintenance_is_left_alone_until_released() {
    let c = Cluster::new("standby");
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let sock1 = c.dir.path().join("n1.sock");
    let out = baton_at(&sock1, &["maintenance", "web"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
    c.wait_for(
        "every node to hold it in maintenance",
        Duration::from_secs(20),
        |c| {
            (1..=3).all(|n| {
                c.status(n)
                    .is_some_and(|s| s["services"][0]["maintenance"] == true)
            })
        },
    );
    let text = crate::support::output_text(&baton_at(&sock1, &["status"]));
    assert!(text.contains("baton maintenance web --off"), "{text}");
    let first = c.service_pid(1).unwrap();
    // SAFETY: killing the process group our daemon started for this test.
    unsafe {
        libc::kill(-first, libc::SIGKILL);
    }
    // Many monitor intervals of the fast timing: nothing is restarted,
    // counted or moved.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let s = c.status(1).unwrap();
        assert_eq!(s["services"][0]["failures"], 0, "{s}");
        assert_eq!(c.service_pid(1), Some(first), "restarted in maintenance");
        assert!(c.service_pid(2).is_none() && c.service_pid(3).is_none());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = baton_at(
        &c.dir.path().join("n2.sock"),
        &["maintenance", "web", "--off"],
    );
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
    c.wait_for("n1 to start it again", Duration::from_secs(20), |c| {
        c.service_pid(1).is_some_and(|p| p != first && alive(p)) && c.owners() == [1]
    });
    assert!(c.service_pid(2).is_none_or(|p| !alive(p)));
}

/// When the certificate `addr` serves over TLS (trusting `ca`) expires, Unix
/// seconds: read from the handshake itself (with ring, as the daemon).
#[allow(deprecated)]
fn served_not_after(addr: &str, ca: &std::path::Path) -> i64 {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let at: std::net::SocketAddr = addr.parse().unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(at.ip().into());
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(at).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    let der = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.validity().not_after.timestamp()
}

/// A node certificate that expires within 30 days is reported where an
/// administrator looks (status, `config check`, the metric to alert on) with
/// how to renew it; `baton tls renew` under the same CA and SIGHUP (what
/// `systemctl reload baton` sends) serve the renewed certificate without a
/// restart, on the wire, while the service keeps running.
#[test]
fn an_expiring_certificate_is_reported_and_a_reload_serves_the_renewed_one() {
    let mut c = Cluster::new("standby");
    let port = free_tcp_port("127.0.0.11");
    let addr = format!("127.0.0.11:{port}");
    let tls = c.dir.path().join("tls");
    for n in 1..=3 {
        c.kill_node(n);
    }
    let text = std::fs::read_to_string(&c.config)
        .unwrap()
        .replacen("id = 1\n", &format!("id = 1\nhttp = \"{addr}\"\n"), 1)
        .replacen(
            "[cluster]\n",
            &format!(
                "[cluster]\ntls = {{ cert_file = \"{t}/{{node}}.crt\", key_file = \"{t}/{{node}}.key\", ca_file = \"{t}/ca.crt\" }}\n",
                t = tls.display()
            ),
            1,
        );
    std::fs::write(&c.config, text).unwrap();
    let config = c.config.clone();
    let tool = |args: &[&str]| {
        let o = Command::new(baton_exe())
            .args(args)
            .arg(&config)
            .arg("--out")
            .arg(&tls)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", crate::support::output_text(&o));
    };
    tool(&["tls", "init", "--days", "10"]);
    for n in 1..=3 {
        c.start(n);
    }
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let warning = |c: &Cluster| c.status(1).map(|s| s["tls"]["warning"].clone());
    c.wait_for(
        "n1's status to show its certificate",
        Duration::from_secs(10),
        |c| c.status(1).is_some_and(|s| s["tls"]["not_after"].is_i64()),
    );
    let said = warning(&c).unwrap();
    let said = said.as_str().unwrap_or_default();
    assert!(
        said.contains("n1.crt: expires in 9 day(s), on ") && said.contains("baton tls renew"),
        "{said}"
    );
    let short = c.status(1).unwrap()["tls"]["not_after"].as_i64().unwrap();
    assert_eq!(served_not_after(&addr, &tls.join("ca.crt")), short);
    let check = Command::new(baton_exe())
        .args(["config", "check"])
        .arg(&c.config)
        .output()
        .unwrap();
    let text = crate::support::output_text(&check);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("WARNING: cluster.tls.cert_file ") && text.contains("expires in 9 day(s)"),
        "{text}"
    );
    let metrics =
        baton::node::tls::Client::new(Some(&tls.join("ca.crt")), Duration::from_secs(10)).unwrap();
    let body = metrics
        .agent
        .get(metrics.url(&addr, "/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let line = format!(
        "baton_tls_certificate_expiry_timestamp_seconds{{file=\"{}\"}} {short}",
        tls.join("n1.crt").display()
    );
    assert!(body.contains(&line), "missing {line:?} in:\n{body}");

    // Renewed under the same CA, and served after SIGHUP.
    let ca = std::fs::read(tls.join("ca.crt")).unwrap();
    let web = c.service_pid(1);
    tool(&["tls", "renew"]);
    assert_eq!(
        std::fs::read(tls.join("ca.crt")).unwrap(),
        ca,
        "renew changed the CA"
    );
    let pid = c.daemons[0].as_ref().unwrap().id();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    c.wait_for(
        "n1 to serve the renewed certificate",
        Duration::from_secs(20),
        |c| {
            c.status(1).is_some_and(|s| {
                s["tls"]["not_after"]
                    .as_i64()
                    .is_some_and(|t| t > short + 4 * 365 * 86_400)
            })
        },
    );
    assert!(warning(&c).unwrap().is_null());
    let renewed = c.status(1).unwrap()["tls"]["not_after"].as_i64().unwrap();
    assert_eq!(served_not_after(&addr, &tls.join("ca.crt")), renewed);
    assert_eq!(c.service_pid(1), web, "the reload restarted the service");
    assert_eq!(c.owners(), [1]);
}
