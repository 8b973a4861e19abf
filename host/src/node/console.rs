//! The web console: one page (console/index.html) served on a node's `http`
//! address beside `/metrics` when `[cluster.console]` is configured, with every
//! node's status (what `baton status` shows; the serving node gathers the
//! others', see gather.rs) and its own event history, pushed to the page as
//! server-sent events when they change, and operator actions (move, clear,
//! standby, maintenance) that need a token from a root-only file and a
//! confirmation, and are recorded with the token's name.
//! `baton scenario view` (design/view.rs) writes the same page for a scenario
//! that does not run yet.

use crate::cluster::config::ConsoleSection;
use crate::node::control::{Asker, ControlReply, ControlRequest};
use crate::node::gather::Peers;
use anyhow::{Context, bail};
use axum::extract::{ConnectInfo, Json, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The page.
pub const PAGE: &str = include_str!("../../console/index.html");

/// What a token may do on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Look: the page, the status, the history, `/metrics`.
    Viewer,
    /// Look and act: moves, clears, standby, maintenance.
    Operator,
}

impl Role {
    /// The role by its name in a tokens file.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    /// Its name in a tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// The tokens file's line for `name`'s `token` with `role`: the token itself
/// is never stored, only its SHA-256.
pub fn token_line(name: &str, role: Role, token: &str) -> String {
    format!(
        "{name} {} sha256:{}",
        role.name(),
        hex::encode(Sha256::digest(token.trim().as_bytes()))
    )
}

/// `baton token add`: a new random token for `name` with `role`, its hash
/// appended to the tokens file at `path` (made, mode 0600, when missing); the
/// token, which is shown this once and kept nowhere.
pub fn add_token(path: &Path, name: &str, role: Role) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with('#') {
        bail!("NAME {name:?}: one word, not starting with #");
    }
    if path.exists() {
        let taken = Tokens::load(path)?.0.iter().any(|(n, _, _)| n == name);
        if taken {
            bail!(
                "{} already has a token for {name}; remove its line first to replace it",
                path.display()
            );
        }
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("cannot read /dev/urandom")?;
    let token = hex::encode(random);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{}", token_line(name, role, &token))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Operators' tokens: name, role and SHA-256 of the token.
pub struct Tokens(Vec<(String, Role, [u8; 32])>);

impl Tokens {
    /// Read `path`: `NAME ROLE sha256:HEX` per line (`baton token add` writes
    /// them), `#` comments; refused unless only its owner (root or this
    /// daemon's user) can read it.
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cluster.console.tokens_file {}: cannot read it; create it with `baton token add NAME --role operator --file {0}`",
                path.display()
            )
        })?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.mode() & 0o077 != 0 {
            bail!(
                "cluster.console.tokens_file {}: mode {:o} lets others read it; chmod 600 {0}",
                path.display(),
                meta.mode() & 0o777
            );
        }
        if meta.uid() != 0 && meta.uid() != me {
            bail!(
                "cluster.console.tokens_file {}: owned by uid {}; it must belong to root (chown root {0})",
                path.display(),
                meta.uid()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cluster.console.tokens_file {}", path.display()))?;
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || {
                format!(
                    "cluster.console.tokens_file {} line {}",
                    path.display(),
                    i + 1
                )
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, role, hash) = match words[..] {
                [name, role, hash] => (name, role, hash),
                [name, _] => bail!(
                    "{}: the token of {name} is kept in clear; keep its hash instead: replace the line by `{name} operator sha256:HASH` with HASH from `printf %s TOKEN | sha256sum`, or make a new token with `baton token add {name} --role operator`",
                    at()
                ),
                _ => bail!(
                    "{}: write NAME ROLE sha256:HASH (three words; `baton token add` writes them)",
                    at()
                ),
            };
            let role = Role::parse(role).with_context(|| {
                format!("{}: role {role:?} of {name}: use viewer or operator", at())
            })?;
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .with_context(|| {
                    format!(
                        "{}: the token of {name} is not sha256: and 64 hex digits; `baton token add` writes it",
                        at()
                    )
                })?;
            tokens.push((name.to_string(), role, digest));
        }
        if tokens.is_empty() {
            bail!(
                "cluster.console.tokens_file {}: no tokens; add one with `baton token add NAME --role operator --file {0}`",
                path.display()
            );
        }
        Ok(Tokens(tokens))
    }

    /// The name and role of the operator whose token `headers` carry.
    fn who(&self, headers: &HeaderMap) -> Option<(&str, Role)> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        self.0
            .iter()
            .find(|(_, _, d)| *d == digest)
            .map(|(n, r, _)| (n.as_str(), *r))
    }
}

/// The fence agent's monitor on this node.
pub type FenceCheck = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What a node tells `baton scenario validate` beyond its status.
pub struct Facts {
    /// The node's name.
    pub node: String,
    /// Its key's check value (`ClusterKey::check`).
    pub key: String,
    /// Each agent the config uses: what it is here, or why it is missing.
    pub agents: std::collections::BTreeMap<String, Result<String, String>>,
    /// The fence agent's name and its monitor, when fencing is configured.
    pub fence: Option<(String, FenceCheck)>,
}

/// Refused actions go to the history at most once per this many seconds (with
/// the count since), so unauthenticated requests cannot flush it.
const REFUSALS_EVERY_S: u64 = 10;

struct Console {
    /// `None`: no console; only validation is served, to anyone.
    tokens: Option<Tokens>,
    /// When a refusal was last recorded, and refusals not recorded since.
    refusals: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    open_view: bool,
    asker: Asker,
    history: PathBuf,
    facts: Facts,
    peers: Peers,
}

type Reply = (StatusCode, Json<Value>);

fn refuse(code: StatusCode, message: impl Into<String>) -> Reply {
    (code, Json(json!({"ok": false, "message": message.into()})))
}

impl Console {
    fn may_view(&self, headers: &HeaderMap) -> Result<(), Reply> {
        match &self.tokens {
            None => Ok(()),
            Some(t) if self.open_view || t.who(headers).is_some() => Ok(()),
            Some(_) => Err(unauthorized(headers)),
        }
    }
}

fn unauthorized(headers: &HeaderMap) -> Reply {
    let why = if headers.contains_key(axum::http::header::AUTHORIZATION) {
        "the token is not one of cluster.console.tokens_file's"
    } else {
        "no token: give an operator's token (Authorization: Bearer TOKEN)"
    };
    refuse(StatusCode::UNAUTHORIZED, why)
}

/// The node's HTTP routes: `/metrics` (`metrics`'s) and `/api/validate`
/// always, both behind the console's tokens when there is a console (unless
/// its `metrics` is open), and the console's page and API when `section`
/// configures it. Fails (and the daemon does not start) when the tokens file
/// is unsafe or malformed.
pub fn routes(
    section: Option<&ConsoleSection>,
    metrics: &Arc<crate::node::metrics::Metrics>,
    asker: Asker,
    history: PathBuf,
    facts: Facts,
    peers: Peers,
) -> anyhow::Result<axum::Router> {
    let console = Arc::new(Console {
        tokens: section.map(|s| Tokens::load(&s.tokens_file)).transpose()?,
        refusals: std::sync::Mutex::new((None, 0)),
        open_view: section.is_some_and(|s| s.view == "open"),
        asker,
        history,
        facts,
        peers,
    });
    let validate = axum::Router::new().route("/api/validate", get(validate));
    let metrics = crate::node::metrics::route(metrics);
    let Some(section) = section else {
        return Ok(validate.route("/metrics", metrics).with_state(console));
    };
    // /metrics under the console's rule (a viewer's token), unless opened.
    let metrics = match section.metrics.as_str() {
        "open" => metrics,
        _ => metrics.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            viewers_only,
        )),
    };
    Ok(validate
        .route("/metrics", metrics)
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/status", get(status))
        .route("/api/cluster", get(cluster))
        .route("/api/live", get(live))
        .route("/api/history", get(history_events))
        .route("/api/action", post(action))
        .with_state(console))
}

/// Let a request through only with a token (any role).
async fn viewers_only(
    State(c): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match c.tokens.as_ref().and_then(|t| t.who(request.headers())) {
        Some(_) => next.run(request).await,
        None => unauthorized(request.headers()).into_response(),
    }
}

/// What `baton scenario validate` reads of a node: its status, its key's
/// check value, its agents, and its fence agent's monitor run now.
async fn validate(State(c): State<Arc<Console>>, headers: HeaderMap) -> Reply {
    if let Err(r) = c.may_view(&headers) {
        return r;
    }
    let console = Arc::clone(&c);
    let answer = blocking(move || {
        let reply = console
            .asker
            .ask(ControlRequest::Status, "validation".into());
        let facts = &console.facts;
        let agents: serde_json::Map<String, Value> = facts
            .agents
            .iter()
            .map(|(name, id)| {
                let v = match id {
                    Ok(id) => json!({"ok": true, "identity": id}),
                    Err(e) => json!({"ok": false, "problem": e}),
                };
                (name.clone(), v)
            })
            .collect();
        let fence = facts.fence.as_ref().map(|(agent, check)| match check() {
            Ok(state) => json!({"agent": agent, "ok": true, "monitor": state}),
            Err(e) => json!({"agent": agent, "ok": false, "monitor": e}),
        });
        json!({
            "node": facts.node,
            "key": facts.key,
            "agents": agents,
            "fence": fence,
            "status": reply.status,
        })
    })
    .await;
    match answer {
        Some(v) => (StatusCode::OK, Json(v)),
        None => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the validation did not finish",
        ),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn status(State(c): State<Arc<Console>>, headers: HeaderMap) -> Reply {
    if let Err(r) = c.may_view(&headers) {
        return r;
    }
    let asker = c.asker.clone();
    match blocking(move || asker.ask(ControlRequest::Status, "the console".into())).await {
        Some(ControlReply {
            ok: true,
            status: Some(st),
            ..
        }) => (StatusCode::OK, Json(json!({"ok": true, "status": st}))),
        Some(r) => refuse(StatusCode::SERVICE_UNAVAILABLE, r.message),
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer"),
    }
}

async fn history_events(State(c): State<Arc<Console>>, headers: HeaderMap) -> Reply {
    if let Err(r) = c.may_view(&headers) {
        return r;
    }
    let console = Arc::clone(&c);
    match blocking(move || console.recent_events()).await {
        Some(Ok(events)) => (StatusCode::OK, Json(json!({"ok": true, "events": events}))),
        Some(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
        None => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the history cannot be read",
        ),
    }
}

/// The `Authorization` header, passed on to the other nodes' consoles.
fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Every node's status, gathered by this one: `{"served_by", "nodes": [...]}`.
async fn cluster(State(c): State<Arc<Console>>, headers: HeaderMap) -> Reply {
    if let Err(r) = c.may_view(&headers) {
        return r;
    }
    let auth = authorization(&headers);
    let console = Arc::clone(&c);
    match blocking(move || console.cluster_view(auth.as_deref())).await {
        Some(view) => (StatusCode::OK, Json(json!({"ok": true, "cluster": view}))),
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer"),
    }
}

/// How often the live stream looks for a change.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The page's live updates (server-sent events): an `update` event, whose data
/// is `{"cluster": ..., "events": [...]}`, when either changed (`events` only
/// when the history grew), looked at every LIVE_EVERY.
async fn live(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.may_view(&headers) {
        return r.into_response();
    }
    let auth = authorization(&headers);
    let start = (c, auth, String::new(), None::<u64>, true);
    let updates = futures_util::stream::unfold(start, |(c, auth, last, seen, first)| async move {
        let mut first = first;
        loop {
            if !first {
                tokio::time::sleep(LIVE_EVERY).await;
            }
            first = false;
            let console = Arc::clone(&c);
            let ask = auth.clone();
            let (view, events, size) = blocking(move || {
                let size = std::fs::metadata(&console.history).map(|m| m.len()).ok();
                let events = (size != seen)
                    .then(|| console.recent_events().ok())
                    .flatten();
                (console.cluster_view(ask.as_deref()), events, size)
            })
            .await?;
            let text = view.to_string();
            if text == last && events.is_none() {
                continue;
            }
            let data = json!({"cluster": view, "events": events}).to_string();
            let event = Event::default().event("update").data(data);
            return Some((event, (c, auth, text, size, false)));
        }
    });
    Sse::new(updates.map(Ok::<_, std::convert::Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl Console {
    /// The last 200 events of the day in this node's history.
    fn recent_events(&self) -> Result<Vec<crate::node::history::Event>, String> {
        let since = crate::node::history::unix_ms().saturating_sub(24 * 3_600_000);
        let mut events = crate::node::history::read(&self.history, Some(since), None)
            .map_err(|e| e.to_string())?;
        let keep = events.len().saturating_sub(200);
        events.drain(..keep);
        Ok(events)
    }

    /// This node's status and every other node's, as their consoles give them
    /// to `auth`.
    fn cluster_view(&self, auth: Option<&str>) -> Value {
        let (own, others) = std::thread::scope(|scope| {
            let others = scope.spawn(|| self.peers.statuses(auth));
            let own = self.asker.ask(ControlRequest::Status, "the console".into());
            (own, others.join().unwrap_or_default())
        });
        let me = &self.facts.node;
        let mine = match own.status {
            Some(st) if own.ok => json!({"node": me, "status": st}),
            _ => json!({"node": me, "error": own.message}),
        };
        let mut nodes = vec![mine];
        nodes.extend(others);
        json!({"served_by": me, "nodes": nodes})
    }

    /// Record an unauthenticated action in the history, at most once per
    /// REFUSALS_EVERY_S, with the number left unrecorded since.
    async fn record_refusal(self: &Arc<Self>, peer: SocketAddr, why: String) {
        let suppressed = {
            let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if r.0
                .is_some_and(|t| now.duration_since(t).as_secs() < REFUSALS_EVERY_S)
            {
                r.1 += 1;
                return;
            }
            let suppressed = r.1;
            *r = (Some(now), 0);
            suppressed
        };
        let more = if suppressed > 0 {
            format!(" ({suppressed} more refused before it, not recorded)")
        } else {
            String::new()
        };
        let request = ControlRequest::Refused {
            why: format!("an action without a valid token: {why}{more}"),
        };
        let asker = self.asker.clone();
        let who = format!("the console from {peer}");
        blocking(move || asker.ask(request, who)).await;
    }
}

/// An operator action as the page sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    /// `move`, `unmove`, `clear`, `maintenance`, `release`, `standby` or
    /// `unstandby`.
    op: String,
    /// The service (all but standby and unstandby).
    service: Option<String>,
    /// The node put in or out of standby; for `clear`, the node whose
    /// failures are cleared (default: the serving node).
    node: Option<String>,
    /// The target node of a move.
    to: Option<String>,
    /// How long a move holds (`30m`); none: until cleared.
    #[serde(rename = "for")]
    for_: Option<String>,
    /// The subject again (the service's name, or the node's for standby): the
    /// operator confirmed this action.
    confirm: Option<String>,
}

const OPS: &str = "use move, unmove, clear, maintenance, release, standby or unstandby";

impl Action {
    /// The node a `clear` is for, when it is not `me`: it is sent there.
    fn elsewhere(&self, me: &str) -> Option<&str> {
        (self.op == "clear")
            .then_some(self.node.as_deref())
            .flatten()
            .filter(|n| *n != me)
    }

    fn request(self) -> Result<ControlRequest, String> {
        let standby = matches!(self.op.as_str(), "standby" | "unstandby");
        let subject = if standby {
            self.node.clone().ok_or("node: standby needs the node")?
        } else {
            self.service
                .clone()
                .ok_or_else(|| format!("service: {} needs the service", self.op))?
        };
        if self.confirm.as_deref() != Some(subject.as_str()) {
            return Err(format!(
                "confirm: an action needs the operator's confirmation (confirm = {subject:?})"
            ));
        }
        let service = subject.clone();
        match self.op.as_str() {
            "move" => {
                let to = self.to.ok_or("to: a move needs the target node")?;
                let for_ms = match self.for_.as_deref() {
                    None | Some("") => None,
                    Some(d) => Some(crate::node::control::parse_duration(d)?.as_millis() as u64),
                };
                Ok(ControlRequest::Move {
                    service,
                    to,
                    for_ms,
                })
            }
            "unmove" => Ok(ControlRequest::Unmove { service }),
            "clear" => Ok(ControlRequest::Clear { service }),
            "maintenance" | "release" => Ok(ControlRequest::Maintenance {
                service,
                on: self.op == "maintenance",
            }),
            "standby" | "unstandby" => Ok(ControlRequest::Standby {
                node: Some(subject),
                on: self.op == "standby",
            }),
            other => Err(format!("op: {other:?}; {OPS}")),
        }
    }
}

async fn action(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let Some((name, role)) = c.tokens.as_ref().and_then(|t| t.who(&headers)) else {
        let reply = unauthorized(&headers);
        let why = reply.1["message"].as_str().unwrap_or_default().to_string();
        tracing::warn!("console action from {peer} refused: {why}");
        c.record_refusal(peer, why).await;
        return reply;
    };
    if role != Role::Operator {
        tracing::warn!("console action from {peer} refused: {name} is a viewer");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{name} is a viewer: actions need an operator's token"),
        );
    }
    // Only JSON: a form or text/plain post is what a page of another site can
    // send without the browser asking first.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an action is JSON: send it with Content-Type: application/json",
        );
    }
    let parsed = serde_json::from_slice::<Action>(&body).map_err(|e| {
        format!(
            "not an action ({e}); send {{\"op\":\"move\",\"service\":S,\"to\":N,\"confirm\":S}}"
        )
    });
    if let Some(node) = parsed
        .as_ref()
        .ok()
        .and_then(|a| a.elsewhere(&c.facts.node))
    {
        return forward(&c, node.to_string(), authorization(&headers), body).await;
    }
    let request = match parsed.and_then(Action::request) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let who = format!("{name} on the console from {peer}");
    let asker = c.asker.clone();
    match blocking(move || asker.ask(request, who)).await {
        Some(r) if r.ok => (
            StatusCode::OK,
            Json(json!({"ok": true, "message": r.message})),
        ),
        Some(r) => refuse(StatusCode::CONFLICT, r.message),
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer"),
    }
}

/// An action for `node`'s own state, sent to its console with the operator's
/// token (which that console checks again); its answer, as it gave it.
async fn forward(
    c: &Arc<Console>,
    node: String,
    auth: Option<String>,
    body: axum::body::Bytes,
) -> Reply {
    let peers = c.peers.clone();
    let sent = blocking(move || peers.forward(&node, auth.as_deref(), &body)).await;
    match sent {
        Some(Ok((code, answer))) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(answer),
        ),
        Some(Err(why)) => refuse(StatusCode::BAD_GATEWAY, why),
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "the request was lost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("tokens");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_tokens_file_others_can_read_or_with_tokens_in_clear_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!(
            "# ops\n{}\n{}\n",
            token_line("alice", Role::Operator, "0123456789abcdef0"),
            token_line("bob", Role::Viewer, "fedcba98765432100")
        );
        let e = Tokens::load(&write(dir.path(), &good, 0o644))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("mode 644 lets others read it; chmod 600"),
            "{e}"
        );
        let e = Tokens::load(&write(dir.path(), "alice 0123456789abcdef0\n", 0o600))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("line 1: the token of alice is kept in clear"),
            "{e}"
        );
        let e = Tokens::load(&write(dir.path(), "alice root sha256:00\n", 0o600))
            .err()
            .unwrap();
        assert!(e.to_string().contains("use viewer or operator"), "{e}");
        let e = Tokens::load(&write(dir.path(), "alice viewer sha256:00\n", 0o600))
            .err()
            .unwrap();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let e = Tokens::load(&write(dir.path(), "alice\n", 0o600))
            .err()
            .unwrap();
        assert!(e.to_string().contains("line 1: write NAME ROLE"), "{e}");
        let e = Tokens::load(&dir.path().join("missing")).err().unwrap();
        assert!(e.to_string().contains("cannot read it"), "{e}");
        let tokens = Tokens::load(&write(dir.path(), &good, 0o600)).unwrap();
        assert_eq!(
            tokens.who(&bearer("fedcba98765432100")),
            Some(("bob", Role::Viewer))
        );
        assert_eq!(
            tokens.who(&bearer("0123456789abcdef0")),
            Some(("alice", Role::Operator))
        );
        assert_eq!(tokens.who(&bearer("fedcba98765432101")), None);
        assert_eq!(tokens.who(&HeaderMap::new()), None);
        // The file keeps no token.
        assert!(!good.contains("fedcba98765432100"));
    }

    #[test]
    fn an_action_needs_its_confirmation_and_good_fields() {
        let action = |json: &str| serde_json::from_str::<Action>(json).unwrap().request();
        assert_eq!(
            action(r#"{"op":"move","service":"web","to":"n2","for":"30m","confirm":"web"}"#),
            Ok(ControlRequest::Move {
                service: "web".into(),
                to: "n2".into(),
                for_ms: Some(1_800_000)
            })
        );
        let e = action(r#"{"op":"move","service":"web","to":"n2","confirm":"db"}"#).unwrap_err();
        assert!(
            e.starts_with("confirm: an action needs the operator's confirmation"),
            "{e}"
        );
        let e = action(r#"{"op":"move","service":"web","confirm":"web"}"#).unwrap_err();
        assert!(e.contains("to: a move needs the target node"), "{e}");
        let e = action(r#"{"op":"move","service":"web","to":"n2","for":"soon","confirm":"web"}"#)
            .unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = action(r#"{"op":"reboot","service":"web","confirm":"web"}"#).unwrap_err();
        assert!(e.contains("use move, unmove, clear, maintenance"), "{e}");
        // Standby is confirmed with the node's name; maintenance with the service's.
        assert_eq!(
            action(r#"{"op":"standby","node":"n2","confirm":"n2"}"#),
            Ok(ControlRequest::Standby {
                node: Some("n2".into()),
                on: true
            })
        );
        let e = action(r#"{"op":"unstandby","node":"n2","confirm":"web"}"#).unwrap_err();
        assert!(e.contains("confirm = \"n2\""), "{e}");
        assert_eq!(
            action(r#"{"op":"release","service":"web","confirm":"web"}"#),
            Ok(ControlRequest::Maintenance {
                service: "web".into(),
                on: false
            })
        );
        // A clear for another node is sent there; for this one, done here.
        let clear = |json: &str| serde_json::from_str::<Action>(json).unwrap();
        let there = clear(r#"{"op":"clear","service":"web","node":"n2","confirm":"web"}"#);
        assert_eq!(there.elsewhere("n1"), Some("n2"));
        assert_eq!(there.elsewhere("n2"), None);
        assert!(
            serde_json::from_str::<Action>(r#"{"op":"clear","service":"web","as":"root"}"#)
                .is_err()
        );
    }
}
