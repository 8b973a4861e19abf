//! The web console in headless Chromium (Debian's chromium, driven through
//! chromedriver): the page renders the three-node loopback cluster, an operator
//! with a token clicks a move through its confirmation and the service moves,
//! and actions without a token, with a wrong one or without the confirmation
//! are refused with nothing moved. With `BATON_SCREENSHOTS=DIR` the test keeps
//! its screenshots there (docs/console-*.png come from it).

use crate::daemons::{Cluster, free_tcp_port};
use fantoccini::{Client, ClientBuilder, Locator};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "alice-0123456789abcdef";
/// bob's token: a viewer's.
const VIEWER: &str = "bob-0123456789abcdef0";

/// chromedriver in a process group of its own with the browsers it starts,
/// all stopped (by the group's PID) when dropped, also when a test fails.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// chromedriver, its browsers trusting the cluster CA `ca`: Chromium on Linux
/// reads the NSS database under $HOME/.pki/nssdb, made here for a HOME of
/// the browser's own (certutil from Debian's libnss3-tools).
fn start_driver(ca: &std::path::Path) -> (Driver, u16) {
    let home = ca.parent().unwrap().join("browser-home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    for args in [
        vec!["-N", "--empty-password", "-d", &db],
        vec![
            "-A",
            "-d",
            &db,
            "-n",
            "baton-cluster-ca",
            "-t",
            "C,,",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("certutil")
            .args(&args)
            .output()
            .expect("certutil (Debian's libnss3-tools, installed by scripts/setup)");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            crate::support::output_text(&out)
        );
    }
    let port = free_tcp_port("127.0.0.1");
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .env("HOME", &home)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver, installed by scripts/setup)");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (driver, port)
}

async fn browser(driver_port: u16, profile: &std::path::Path) -> Client {
    browser_sized(driver_port, profile, "1400,900").await
}

/// A browser whose window is `size` ("WIDTH,HEIGHT").
async fn browser_sized(driver_port: u16, profile: &std::path::Path, size: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", format!("--window-size={size}"),
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a chromium session")
}

/// Wait until `script` (a JavaScript expression) is true on the page.
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if v == serde_json::Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let body = client
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap();
            panic!("timed out waiting for {what}; the page reads:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Click the element at `at`; found again if the page replaced it between
/// finding and clicking (bounded).
async fn click(client: &Client, at: Locator<'_>) {
    for _ in 0..20 {
        match client.find(at).await.unwrap().click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("click {at:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("click {at:?}: the element was replaced 20 times in a row");
}

async fn type_in(client: &Client, at: Locator<'_>, text: &str) {
    client
        .find(at)
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn screenshot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("BATON_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

/// An action POSTed from the page's context with `token`; its HTTP status.
async fn post_action(client: &Client, token: &str, body: serde_json::Value) -> u64 {
    post_as(client, token, body, "application/json").await
}

/// [`post_action`] with the body sent as `content_type`.
async fn post_as(client: &Client, token: &str, body: serde_json::Value, content_type: &str) -> u64 {
    client
        .execute_async(
            "const [token, body, type, done] = arguments; \
             const headers = {'Content-Type': type}; \
             if (token) headers['Authorization'] = 'Bearer ' + token; \
             fetch('api/action', {method: 'POST', headers, body: JSON.stringify(body)}) \
               .then(r => done(r.status), e => done(String(e)));",
            vec![token.into(), body, content_type.into()],
        )
        .await
        .unwrap()
        .as_u64()
        .expect("an HTTP status")
}

/// Restart the cluster with an HTTP address on every node (the ports, by
/// node) and a console whose tokens file (0600) holds the hashes of alice's
/// token (an operator) and bob's (a viewer); and a file with alice's token
/// alone (what `scenario validate --token-file` reads); HTTPS on every node
/// with certificates `baton tls init` made under the cluster's CA (returned).
pub(crate) fn with_console(c: &mut Cluster) -> (Vec<u16>, std::path::PathBuf, std::path::PathBuf) {
    use baton::node::console::{Role, token_line};
    let ports: Vec<u16> = (1..=3)
        .map(|n| free_tcp_port(&format!("127.0.0.{}", 10 + n)))
        .collect();
    let tokens = c.dir.path().join("console.tokens");
    std::fs::write(
        &tokens,
        format!(
            "# operators\n{}\n{}\n",
            token_line("alice", Role::Operator, TOKEN),
            token_line("bob", Role::Viewer, VIEWER)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let alice = c.dir.path().join("alice.token");
    std::fs::write(&alice, format!("{TOKEN}\n")).unwrap();
    // Certificates by `baton tls init`, named per node with {node}.
    let tls = c.dir.path().join("tls");
    let dir = c.dir.path().to_owned();
    c.reconfigure(|mut text| {
        for (i, port) in ports.iter().enumerate() {
            let n = i + 1;
            text = text.replacen(
                &format!("id = {n}\n"),
                &format!("id = {n}\nhttp = \"127.0.0.{}:{port}\"\n", 10 + n),
                1,
            );
        }
        let draft = dir.join("draft.toml");
        std::fs::write(&draft, &text).unwrap();
        let _ = std::fs::remove_dir_all(&tls);
        let out = Command::new(crate::support::baton_exe())
            .args(["tls", "init"])
            .arg(&draft)
            .arg("--out")
            .arg(&tls)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", crate::support::output_text(&out));
        let t = tls.display().to_string();
        text.replacen(
            "[cluster]\n",
            &format!(
                "[cluster]\nconsole = {{ tokens_file = {:?} }}\n\
                 tls = {{ cert_file = \"{t}/{{node}}.crt\", key_file = \"{t}/{{node}}.key\", ca_file = \"{t}/ca.crt\" }}\n",
                tokens.display().to_string()
            ),
            1,
        )
    });
    (ports, alice, c.dir.path().join("tls/ca.crt"))
}

/// A client that trusts the test cluster's CA.
fn https(ca: &std::path::Path) -> baton::node::tls::Client {
    baton::node::tls::Client::new(Some(ca), Duration::from_secs(10)).unwrap()
}

/// A loopback cluster with a console on every node, n1 running the service,
/// chromedriver trusting its CA, and a runtime to drive the browser: the
/// console's port on node `n`, the CA, the driver, its port, the runtime.
fn console_cluster(
    n: usize,
) -> (
    Cluster,
    u16,
    std::path::PathBuf,
    Driver,
    u16,
    tokio::runtime::Runtime,
) {
    let mut c = Cluster::new("standby");
    let (ports, _, ca) = with_console(&mut c);
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let (driver, driver_port) = start_driver(&ca);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (c, ports[n - 1], ca, driver, driver_port, runtime)
}

#[test]
fn the_console_shows_the_cluster_and_moves_a_service_for_an_operator_with_a_token() {
    let (c, port, ca, _driver, driver_port, runtime) = console_cluster(1);
    let profile = c.dir.path().join("chromium");
    runtime.block_on(async {
        let client = browser(driver_port, &profile).await;
        client
            .goto(&format!("https://127.0.0.11:{port}/"))
            .await
            .unwrap();
        // Viewing needs a token too (the default): the page says so.
        until(
            &client,
            "the refusal",
            "document.getElementById('message').textContent.includes('no token')",
        )
        .await;
        type_in(&client, Locator::Id("token"), TOKEN).await;
        click(&client, Locator::Id("token-save")).await;
        until(
            &client,
            "web on n1 in the grid",
            "document.querySelector(\"tr[data-service='web'] td.owner[data-node='n1']\")",
        )
        .await;
        until(
            &client,
            "three members",
            "document.querySelectorAll('#links .badge.ok').length === 4",
        )
        .await;
        screenshot(&client, "console-cluster.png").await;

        // Refused, nothing moved: no token, a wrong token, no confirmation.
        let move_to_n3 =
            serde_json::json!({"op": "move", "service": "web", "to": "n3", "confirm": "web"});
        assert_eq!(post_action(&client, "", move_to_n3.clone()).await, 401);
        assert_eq!(
            post_action(&client, "mallory-0123456789abcdef", move_to_n3).await,
            401
        );
        let unconfirmed = serde_json::json!({"op": "move", "service": "web", "to": "n3"});
        assert_eq!(post_action(&client, TOKEN, unconfirmed).await, 400);
        // A text/plain post (what another site's page may send unasked) is
        // refused, even with a valid token and the confirmation.
        let confirmed =
            serde_json::json!({"op": "move", "service": "web", "to": "n3", "confirm": "web"});
        assert_eq!(post_as(&client, TOKEN, confirmed.clone(), "text/plain").await, 415);
        // A viewer may look, not act.
        assert_eq!(post_action(&client, VIEWER, confirmed).await, 403);
        assert_eq!(c.owners(), [1], "a refused action moved the service");
        // /metrics is under the console's rule: a token, a viewer's will do.
        let scraper = https(&ca);
        let metrics = |token: Option<&str>| {
            let mut req = scraper
                .agent
                .get(scraper.url(&format!("127.0.0.11:{port}"), "/metrics"));
            if let Some(t) = token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            req.call().unwrap().status().as_u16()
        };
        assert_eq!(metrics(None), 401);
        assert_eq!(metrics(Some("mallory-0123456789abcdef")), 401);
        assert_eq!(metrics(Some(VIEWER)), 200);

        // The move, clicked through its confirmation.
        click(&client, Locator::Css("button.move[data-service='web']")).await;
        until(
            &client,
            "the dialog",
            "document.getElementById('dialog').open",
        )
        .await;
        client
            .find(Locator::Id("move-to"))
            .await
            .unwrap()
            .select_by_value("n2")
            .await
            .unwrap();
        type_in(&client, Locator::Id("move-for"), "10m").await;
        screenshot(&client, "console-move.png").await;
        click(&client, Locator::Id("dialog-confirm")).await;
        until(
            &client,
            "the answer",
            "document.getElementById('message').textContent.includes('moving web to n2')",
        )
        .await;
        until(
            &client,
            "web on n2 in the grid",
            "document.querySelector(\"tr[data-service='web'] td.owner.running[data-node='n2']\")",
        )
        .await;
        until(
            &client,
            "the move in the history",
            "document.getElementById('history').textContent.includes('alice on the console')",
        )
        .await;
        // The move in effect is credited to the operator, not to a node.
        until(
            &client,
            "the operator on the move",
            "document.getElementById('moves').textContent.includes('by alice on the console')",
        )
        .await;
        // Every time in the history has its date and zone.
        until(
            &client,
            "dated times",
            "[...document.querySelectorAll('#history li .muted')].every(t => /^\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}:\\d{2}\\.\\d{3} UTC$/.test(t.textContent))",
        )
        .await;
        screenshot(&client, "console-moved.png").await;
        client.close().await.unwrap();
    });
    c.wait_for("n2 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    let history = std::fs::read_to_string(c.dir.path().join("n1.history")).unwrap();
    assert!(
        history.contains("by alice on the console from 127.0.0.1")
            && history.contains("moving web to n2 for 600 s"),
        "{history}"
    );
    // The unauthenticated attempt is in the history too (at most one per 10 s).
    assert!(
        history.contains("refused for the console from 127.0.0.1")
            && history.contains("an action without a valid token: no token"),
        "{history}"
    );
}

/// The whole cluster on the page of one node (n2's here): every node's own
/// state, pushed live; a node put in standby and taken out, a service put in
/// maintenance and released, and a failure on n1 cleared from n2's page (the
/// clear is sent on to n1), each through its confirmation.
#[test]
fn one_page_shows_every_node_and_puts_nodes_in_standby_and_services_in_maintenance() {
    let (c, port, _, _driver, driver_port, runtime) = console_cluster(2);
    let profile = c.dir.path().join("chromium");
    runtime.block_on(async {
        let client = browser(driver_port, &profile).await;
        client
            .goto(&format!("https://127.0.0.12:{port}/"))
            .await
            .unwrap();
        type_in(&client, Locator::Id("token"), TOKEN).await;
        click(&client, Locator::Id("token-save")).await;
        // Each node's own word on the service: n1 runs it, n2 and n3 do not;
        // each node answered the page's node with its view.
        let cell = |n: &str| format!("document.querySelector(\"tr[data-service='web'] td[data-node='{n}']\")");
        until(
            &client,
            "every node's own state",
            &format!(
                "{0} && {0}.textContent.startsWith('running') && {1}.textContent.startsWith('stopped') && {2}.textContent.startsWith('stopped')",
                cell("n1"),
                cell("n2"),
                cell("n3")
            ),
        )
        .await;
        until(
            &client,
            "three answers",
            "[...document.querySelectorAll('#nodes tr[data-node]')].every(r => r.textContent.includes('quorate'))",
        )
        .await;
        until(&client, "live updates", "document.body.dataset.live === 'streaming'").await;
        screenshot(&client, "console-whole-cluster.png").await;

        // n1 in standby: web moves to n2 and the page says so.
        confirm(&client, "#nodes button.standby[data-node='n1']").await;
        until(
            &client,
            "web on n2, n1 in standby",
            "document.querySelector(\"tr[data-service='web'] td.owner.running[data-node='n2']\") \
             && document.querySelector(\"th[data-node='n1'] .badge\").textContent === 'standby'",
        )
        .await;
        screenshot(&client, "console-standby.png").await;
        confirm(&client, "#nodes button.unstandby[data-node='n1']").await;
        until(
            &client,
            "web back on n1",
            "document.querySelector(\"tr[data-service='web'] td.owner.running[data-node='n1']\") \
             && !document.querySelector(\"th[data-node='n1'] .badge\")",
        )
        .await;

        // web in maintenance, then released.
        confirm(&client, "button.maintenance[data-service='web']").await;
        until(
            &client,
            "web in maintenance",
            "document.querySelector(\"tr[data-service='web'] td .badge\")?.textContent === 'maintenance' \
             && document.querySelector(\"button.release[data-service='web']\")",
        )
        .await;
        screenshot(&client, "console-maintenance.png").await;
        confirm(&client, "button.release[data-service='web']").await;
        until(
            &client,
            "web released",
            "document.querySelector(\"button.maintenance[data-service='web']\")",
        )
        .await;
        for n in 1..=3 {
            assert_eq!(c.status(n).unwrap()["services"][0]["maintenance"], false);
        }

        // A failure on n1, counted in n1's cell and cleared from n2's page.
        until(
            &client,
            "web running on n1",
            &format!("{} && {0}.textContent.startsWith('running')", cell("n1")),
        )
        .await;
        let pid = c.service_pid(1).unwrap();
        // SAFETY: killing the process group our daemon started for this test.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        until(
            &client,
            "n1's failure",
            "document.querySelector(\"td[data-node='n1'] .failures\")?.textContent.includes('1 failure')",
        )
        .await;
        screenshot(&client, "console-failures.png").await;
        confirm(&client, "button.clear[data-service='web'][data-node='n1']").await;
        until(
            &client,
            "the failure cleared",
            "document.querySelector(\"tr[data-service='web'] td[data-node='n1']\") \
             && !document.querySelector(\"td[data-node='n1'] .failures\")",
        )
        .await;
        client.close().await.unwrap();
    });
    c.wait_for("n1's failures cleared", Duration::from_secs(20), |c| {
        c.status(1)
            .is_some_and(|s| s["services"][0]["failures"] == 0)
    });
    let history = std::fs::read_to_string(c.dir.path().join("n1.history")).unwrap();
    assert!(history.contains("alice on the console"), "{history}");
    let history = std::fs::read_to_string(c.dir.path().join("n2.history")).unwrap();
    for done in ["standby", "maintenance"] {
        assert!(history.contains(done), "{done}: {history}");
    }
}

/// Click the button at `css` and confirm its dialog.
async fn confirm(client: &Client, css: &str) {
    until(client, css, &format!("document.querySelector(\"{css}\")")).await;
    click(client, Locator::Css(css)).await;
    until(
        client,
        "the dialog",
        "document.getElementById('dialog').open",
    )
    .await;
    click(client, Locator::Id("dialog-confirm")).await;
    until(
        client,
        "the answer",
        "!document.getElementById('dialog').open && document.getElementById('message').className === 'ok'",
    )
    .await;
}

/// Prometheus (Debian's, unpacked by scripts/setup) in a process group of its
/// own, stopped by the group's PID when dropped.
struct Prometheus {
    child: Child,
    address: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrape `targets` every second over HTTPS (trusting `ca`) with bob's
    /// viewer token, its data under `dir`.
    fn start(dir: &std::path::Path, targets: &[String], ca: &std::path::Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: baton\n    scheme: https\n    tls_config: {{ca_file: '{}'}}\n    \
                 authorization: {{credentials: {VIEWER}}}\n    static_configs:\n      - targets: [{}]\n",
                ca.display(),
                list.join(", ")
            ),
        )
        .unwrap();
        let port = free_tcp_port("127.0.0.1");
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(crate::support::promtool().with_file_name("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's, unpacked into target/tools by scripts/setup)");
        Prometheus { child, address }
    }

    /// The answer's `data.result` to a PromQL `query` (at `range`: start,
    /// end; an instant query without), or why there is none.
    fn query(
        &self,
        query: &str,
        range: Option<(f64, f64)>,
    ) -> Result<Vec<serde_json::Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = match range {
            Some(_) => agent.get(format!("http://{}/api/v1/query_range", self.address)),
            None => agent.get(format!("http://{}/api/v1/query", self.address)),
        };
        req = req.query("query", query);
        if let Some((start, end)) = range {
            req = req
                .query("start", format!("{start:.3}"))
                .query("end", format!("{end:.3}"))
                .query("step", "1");
        }
        let mut resp = req.call().map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(
            &resp
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("{query}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Wait (bounded) until the instant `query` returns something.
    fn until(&self, what: &str, query: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.query(query, None).map_or(true, |r| r.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({query})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// docs/monitoring/baton-dashboard.json against a real Prometheus scraping
/// the three nodes across a failover (kill -9 of the owner's daemon): every
/// panel's query is valid PromQL, the panels show the service leave n1 for n2
/// and the move counted as `node-lost`, and the panels are drawn from the
/// answers (BATON_SCREENSHOTS keeps docs/img/dashboard-failover.png).
#[test]
fn the_dashboard_shows_a_failover_from_a_real_prometheus() {
    let mut c = Cluster::new("standby");
    let (ports, _, ca) = with_console(&mut c);
    c.wait_for("n1 to run the service", Duration::from_secs(20), |c| {
        c.owners() == [1]
    });
    let targets: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.{}:{}", 11 + i, ports[i]))
        .collect();
    let prom = Prometheus::start(c.dir.path(), &targets, &ca);
    prom.until("every node scraped", "sum(up{job=\"baton\"}) == 3");
    let start = unix_s();
    prom.until(
        "five scrapes of every node",
        "min(count_over_time(baton_quorate[1m])) >= 5",
    );
    let killed = unix_s();
    c.kill_node(1);
    c.wait_for("n2 to take over", Duration::from_secs(20), |c| {
        c.owners() == [2]
    });
    prom.until(
        "the move counted",
        "sum(baton_service_moves_total{reason=\"node-lost\"}) > 0",
    );
    let n2 = &targets[1];
    prom.until(
        "five more scrapes of n2",
        &format!(
            "timestamp(baton_quorate{{instance=\"{n2}\"}}) > {}",
            unix_s() + 5.0
        ),
    );
    let end = unix_s();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::support::repo().join("docs/monitoring/baton-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut panels = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let mut series = Vec::new();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "4s");
            let result = prom
                .query(&expr, Some((start, end)))
                .unwrap_or_else(|e| panic!("panel {}: {e}", p["title"]));
            for r in result {
                let mut name = t["legendFormat"].as_str().unwrap_or_default().to_string();
                for (k, v) in r["metric"].as_object().unwrap() {
                    name = name.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or_default());
                }
                let points: Vec<(f64, f64)> = r["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| {
                        (
                            v[0].as_f64().unwrap(),
                            v[1].as_str().unwrap().parse().unwrap_or(0.0),
                        )
                    })
                    .collect();
                series.push(
                    serde_json::json!({"name": name, "labels": r["metric"], "points": points}),
                );
            }
        }
        panels.push(serde_json::json!({
            "title": p["title"], "type": p["type"], "gridPos": p["gridPos"],
            "series": series, "empty": "nothing of this kind happened in the run",
        }));
    }
    let panel = |title: &str| {
        panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))["series"]
            .as_array()
            .unwrap()
            .clone()
    };
    // Where it runs: on n1 before the kill, on n2 at the end.
    let runs = panel("Where each service runs");
    let on = |node: &str, when: &dyn Fn(f64) -> bool| {
        runs.iter().any(|s| {
            s["labels"]["node"] == node
                && s["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| when(p[0].as_f64().unwrap()) && p[1].as_f64().unwrap() > 0.0)
        })
    };
    assert!(on("n1", &|t| t < killed), "{runs:?}");
    assert!(on("n2", &|t| t > end - 2.0), "{runs:?}");
    let moves = panel("Service moves by reason");
    // Counted from zero, so the panel's increase() shows the move.
    assert!(
        moves.iter().any(|s| s["labels"]["reason"] == "node-lost"
            && s["points"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p[1].as_f64().unwrap() > 0.0)),
        "{moves:?}"
    );
    for title in [
        "Quorum",
        "Members in each node's view",
        "Links up",
        "Heartbeat round trip",
        "Agent calls",
        "Agent call time, p90",
    ] {
        assert!(!panel(title).is_empty(), "panel {title} has no data");
    }

    // Drawn in Chromium.
    let data = serde_json::json!({
        "title": dashboard["title"],
        "subtitle": "three nodes on loopback, scraped every second by Prometheus; web on n1, whose daemon is killed (kill -9)",
        "start": start, "end": end, "step": 1.0,
        "fault": {"at": killed, "label": "kill -9 n1"},
        "panels": panels,
    });
    let page = include_str!("dashboard.html").replace(
        "/*DASHBOARD_DATA*/null",
        &data.to_string().replace("</", "<\\/"),
    );
    let file = c.dir.path().join("dashboard.html");
    std::fs::write(&file, page).unwrap();
    let (_driver, driver_port) = start_driver(&ca);
    let profile = c.dir.path().join("chromium");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = browser_sized(driver_port, &profile, "1400,1700").await;
        client
            .goto(&format!("file://{}", file.display()))
            .await
            .unwrap();
        until(
            &client,
            "the panels drawn",
            "document.body.dataset.drawn === 'yes'",
        )
        .await;
        screenshot(&client, "dashboard-failover.png").await;
        client.close().await.unwrap();
    });
}
