//! Prometheus metrics of a node, served over HTTP at `/metrics` when its
//! `[[node]]` has `http = "ADDRESS:PORT"` (off otherwise). The daemon updates
//! the gauges from the state machine after each tick; agent calls are counted
//! and timed where the daemon judges them. The server is axum on a
//! current-thread tokio runtime of its own thread, so the daemon's loop never
//! waits for a client.
//!
//! The exposition is negotiated as Prometheus's client libraries do:
//! OpenMetrics when the scraper asks for `application/openmetrics-text`, else
//! the Prometheus text format 0.0.4 (counters named with `_total` in their HELP
//! and TYPE lines, as `promtool check metrics` expects).
//!
//! Names (all prefixed `baton_`): `node_info{node,version,config}` (1),
//! `members`, `quorate`, `witness_held`,
//! `link_up{peer,link}`, `link_rtt_seconds{peer,link}` (only while the link is up),
//! `service_here{service,phase}` (1 for this node's phase),
//! `service_owner{service,node}` (1 where placement puts it),
//! `service_promoted{service,node}`, `service_failures{service}` (unexpired, here),
//! `fence_waiting`, `tls_certificate_expiry_timestamp_seconds{file}` (when the
//! certificate this node serves expires; alert on it minus `time()`),
//! `agent_calls_total{agent,action,result}` (result: ok or the
//! error class), `agent_call_seconds{agent,action}` (histogram),
//! `decisions_total{kind}`, `membership_epoch`, `dropped_packets_total{cause}`,
//! `config_mismatch` (peers heard running another config), `moves_in_effect`
//! (operators' moves), `service_moves_total{service,reason}` (the owner, or
//! for a promotable service the promoted node, changed: `node-lost`,
//! `operator`, `failure` or `placement`: a failback, a clean stop, a preference).

use crate::cluster::node::ClusterNode;
use crate::cluster::wire::NodeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Link {
    peer: String,
    link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServicePhase {
    service: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceNode {
    service: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertFile {
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    agent: String,
    action: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallTime {
    agent: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceMove {
    service: String,
    reason: String,
}

/// Why a service moved, as `service_moves_total` counts it.
const MOVE_REASONS: [&str; 4] = ["node-lost", "operator", "failure", "placement"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Info {
    node: String,
    version: String,
    config: String,
}

const PHASES: [&str; 7] = [
    "stopped",
    "claiming",
    "starting",
    "running",
    "stopping",
    "stop-failed",
    "restarting",
];

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    node_info: Family<Info, Gauge>,
    members: Gauge,
    quorate: Gauge,
    witness_held: Gauge,
    link_up: Family<Link, Gauge>,
    link_rtt: Family<Link, Gauge<f64, std::sync::atomic::AtomicU64>>,
    service_here: Family<ServicePhase, Gauge>,
    service_owner: Family<ServiceNode, Gauge>,
    service_promoted: Family<ServiceNode, Gauge>,
    service_failures: Family<Service, Gauge>,
    fence_waiting: Gauge,
    certificate_expiry: Family<CertFile, Gauge>,
    agent_calls: Family<Call, Counter>,
    agent_call_seconds: Family<CallTime, Histogram>,
    decisions: Family<Kind, Counter>,
    epoch: Gauge,
    dropped: Family<Cause, Counter>,
    config_mismatch: Gauge,
    moves_in_effect: Gauge,
    service_moves: Family<ServiceMove, Counter>,
    /// Each service's owner (or promoted node) at the last observation.
    owners: Mutex<Vec<Option<NodeId>>>,
}

/// The daemon's metrics, once it serves them (agent calls are counted from
/// wherever the daemon judges them).
static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("baton"),
            node_info: Family::default(),
            members: Gauge::default(),
            quorate: Gauge::default(),
            witness_held: Gauge::default(),
            link_up: Family::default(),
            link_rtt: Family::default(),
            service_here: Family::default(),
            service_owner: Family::default(),
            service_promoted: Family::default(),
            service_failures: Family::default(),
            fence_waiting: Gauge::default(),
            certificate_expiry: Family::default(),
            agent_calls: Family::default(),
            agent_call_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
            decisions: Family::default(),
            epoch: Gauge::default(),
            dropped: Family::default(),
            config_mismatch: Gauge::default(),
            moves_in_effect: Gauge::default(),
            service_moves: Family::default(),
            owners: Mutex::default(),
        };
        let r = &mut m.registry;
        r.register(
            "node_info",
            "1, labelled with this node's name, baton's version and the config fingerprint",
            m.node_info.clone(),
        );
        r.register("members", "Members of this node's view", m.members.clone());
        r.register(
            "quorate",
            "1 when this node's partition is quorate",
            m.quorate.clone(),
        );
        r.register(
            "witness_held",
            "1 when this partition holds the witness",
            m.witness_held.clone(),
        );
        r.register(
            "link_up",
            "1 when heartbeats arrive from the peer on the link",
            m.link_up.clone(),
        );
        r.register(
            "link_rtt_seconds",
            "Smoothed round trip of heartbeats to the peer on the link",
            m.link_rtt.clone(),
        );
        r.register(
            "service_here",
            "1 for the service's phase on this node",
            m.service_here.clone(),
        );
        r.register(
            "service_owner",
            "1 for the node placement puts the service on",
            m.service_owner.clone(),
        );
        r.register(
            "service_promoted",
            "1 for the node a promotable service should be promoted on",
            m.service_promoted.clone(),
        );
        r.register(
            "service_failures",
            "Unexpired failures of the service on this node",
            m.service_failures.clone(),
        );
        r.register(
            "fence_waiting",
            "Lost nodes not yet known safe (fence wait or fence pending)",
            m.fence_waiting.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate this node serves over HTTPS expires (Unix time; absent with plain HTTP)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "agent_calls",
            "Agent calls by agent, action and result (ok or error class)",
            m.agent_calls.clone(),
        );
        r.register(
            "agent_call_seconds",
            "Agent call durations",
            m.agent_call_seconds.clone(),
        );
        r.register(
            "decisions",
            "Decisions recorded in the history, by kind",
            m.decisions.clone(),
        );
        r.register(
            "membership_epoch",
            "Epoch of this node's view (it grows with every membership change)",
            m.epoch.clone(),
        );
        r.register(
            "dropped_packets",
            "Heartbeat packets dropped, by cause (a wrong key, another cluster, a replay, ...)",
            m.dropped.clone(),
        );
        r.register(
            "config_mismatch",
            "Peers heard running another config (fingerprint) than this node",
            m.config_mismatch.clone(),
        );
        r.register(
            "moves_in_effect",
            "Operators' moves in effect",
            m.moves_in_effect.clone(),
        );
        r.register(
            "service_moves",
            "Times a service's owner (a promotable service's promoted node) changed, by reason",
            m.service_moves.clone(),
        );
        m
    }

    /// Say which node, baton version and config (fingerprint) these are.
    pub fn set_info(&self, node: &str, config: &str) {
        self.node_info
            .get_or_create(&Info {
                node: node.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                config: config.into(),
            })
            .set(1);
    }

    /// Count the packets dropped so far, by cause (the daemon's totals).
    pub fn dropped(&self, totals: &BTreeMap<&'static str, u64>) {
        for (cause, total) in totals {
            let counter = self.dropped.get_or_create(&Cause {
                cause: (*cause).into(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Count the services whose owner (or promoted node) changed since the
    /// last observation, with why.
    fn count_moves(&self, node: &ClusterNode, now: u64) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.is_empty() {
            // Every series from zero: a counter that appears at 1 shows no
            // increase() for its first move.
            for s in node.services() {
                for reason in MOVE_REASONS {
                    self.service_moves
                        .get_or_create(&ServiceMove {
                            service: s.spec().name.clone(),
                            reason: reason.into(),
                        })
                        .inc_by(0);
                }
            }
        }
        owners.resize(node.services().len(), None);
        let view = node.membership().view().1;
        let me = node.membership().me();
        let moves = node.active_moves(now);
        for (i, s) in node.services().iter().enumerate() {
            let owner = if s.spec().strategy == crate::cluster::placement::Strategy::Promotable {
                s.promotion().owner
            } else {
                s.placement().owner
            };
            let (Some(from), Some(to)) = (owners[i], owner) else {
                owners[i] = owners[i].or(owner);
                continue;
            };
            owners[i] = Some(to);
            if from == to {
                continue;
            }
            let failed = if from == me {
                s.failures(now) > 0
            } else {
                node.membership()
                    .banned_of(from)
                    .is_some_and(|b| b & (1 << i) != 0)
            };
            let reason = if !view.contains(&from) {
                "node-lost"
            } else if moves.iter().any(|m| m.service == i && m.to == to) {
                "operator"
            } else if failed {
                "failure"
            } else {
                "placement"
            };
            self.service_moves
                .get_or_create(&ServiceMove {
                    service: s.spec().name.clone(),
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// Set the gauges from the state machine at `now` (its clock).
    pub fn observe(&self, node: &ClusterNode, names: &BTreeMap<NodeId, String>, now: u64) {
        let name = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        self.members.set(node.membership().view().1.len() as i64);
        self.epoch.set(node.membership().view().0 as i64);
        self.config_mismatch
            .set(node.foreign_configs(now).len() as i64);
        self.moves_in_effect
            .set(node.active_moves(now).len() as i64);
        self.count_moves(node, now);
        let q = node.quorum();
        self.quorate.set(i64::from(q.is_some_and(|q| q.quorate)));
        self.witness_held
            .set(i64::from(q.is_some_and(|q| q.witness_held)));
        for ((peer, link), s) in node.membership().links() {
            self.link_up
                .get_or_create(&Link {
                    peer: name(peer),
                    link: link.to_string(),
                })
                .set(i64::from(s.up));
            let key = Link {
                peer: name(peer),
                link: link.to_string(),
            };
            match node.membership().rtt(*peer, *link).filter(|_| s.up) {
                Some(ms) => {
                    self.link_rtt.get_or_create(&key).set(ms / 1000.0);
                }
                // A down link has no round trip: its last one is not kept.
                None => {
                    self.link_rtt.remove(&key);
                }
            }
        }
        for s in node.services() {
            let spec = s.spec();
            let here = s.phase();
            for phase in PHASES {
                self.service_here
                    .get_or_create(&ServicePhase {
                        service: spec.name.clone(),
                        phase: phase.into(),
                    })
                    .set(i64::from(here.name() == phase));
            }
            for (family, owner) in [
                (&self.service_owner, s.placement().owner),
                (&self.service_promoted, s.promotion().owner),
            ] {
                for id in names.keys() {
                    family
                        .get_or_create(&ServiceNode {
                            service: spec.name.clone(),
                            node: name(id),
                        })
                        .set(i64::from(owner == Some(*id)));
                }
            }
            self.service_failures
                .get_or_create(&Service {
                    service: spec.name.clone(),
                })
                .set(s.failures(now) as i64);
        }
        self.fence_waiting
            .set(node.fence_state(now).waiting.len() as i64);
    }

    /// The certificate this node serves, from `file`, expires at `not_after`
    /// (Unix seconds).
    pub fn certificate_expiry(&self, file: &Path, not_after: i64) {
        let key = CertFile {
            file: file.display().to_string(),
        };
        if self.certificate_expiry.get(&key).is_none() {
            self.certificate_expiry.clear();
        }
        self.certificate_expiry.get_or_create(&key).set(not_after);
    }

    /// A reload's switch renumbered the services (`continues[i]`: the index
    /// service `i` had) and removed `gone` (with the `nodes`' names): the
    /// owners seen follow the services, and the removed services' series are
    /// no longer exposed (a removed service is not "stopped" forever).
    pub fn reloaded(&self, continues: &[Option<usize>], gone: &[String], nodes: &[String]) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        *owners = continues
            .iter()
            .map(|from| from.and_then(|o| owners.get(o).copied().flatten()))
            .collect();
        for service in gone {
            for phase in PHASES {
                self.service_here.remove(&ServicePhase {
                    service: service.clone(),
                    phase: phase.into(),
                });
            }
            for node in nodes {
                let key = ServiceNode {
                    service: service.clone(),
                    node: node.clone(),
                };
                self.service_owner.remove(&key);
                self.service_promoted.remove(&key);
            }
            self.service_failures.remove(&Service {
                service: service.clone(),
            });
            for reason in MOVE_REASONS {
                self.service_moves.remove(&ServiceMove {
                    service: service.clone(),
                    reason: reason.into(),
                });
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition for a scraper that sent `accept`, and its content type.
    pub fn negotiate(&self, accept: &str) -> (&'static str, String) {
        if accept.contains("application/openmetrics-text") {
            (OPENMETRICS, self.encode())
        } else {
            (PROMETHEUS_TEXT, prometheus_text(&self.encode()))
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's HELP and
/// TYPE lines name it with `_total` (its samples already do), and there is no
/// `# EOF` or `# UNIT`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Count and time one agent call, when the daemon serves metrics.
pub fn agent_call(agent: &str, action: &str, result: &str, seconds: f64) {
    if let Some(m) = METRICS.get() {
        m.agent_calls
            .get_or_create(&Call {
                agent: agent.into(),
                action: action.into(),
                result: result.into(),
            })
            .inc();
        m.agent_call_seconds
            .get_or_create(&CallTime {
                agent: agent.into(),
                action: action.into(),
            })
            .observe(seconds);
    }
}

/// Count one recorded decision, when the daemon serves metrics.
pub fn decision(kind: &str) {
    if let Some(m) = METRICS.get() {
        m.decisions.get_or_create(&Kind { kind: kind.into() }).inc();
    }
}

/// The metrics this process updates (made on first use).
pub fn global() -> Arc<Metrics> {
    Arc::clone(METRICS.get_or_init(|| Arc::new(Metrics::new())))
}

/// `GET /metrics`: the exposition of `m`, in the format the scraper asks for.
pub fn route<S: Clone + Send + Sync + 'static>(m: &Arc<Metrics>) -> axum::routing::MethodRouter<S> {
    let served = Arc::clone(m);
    axum::routing::get(move |headers: axum::http::HeaderMap| {
        let m = Arc::clone(&served);
        async move {
            let accept = headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (kind, body) = m.negotiate(accept);
            ([(axum::http::header::CONTENT_TYPE, kind)], body)
        }
    })
}

/// Serve `app` (the metrics, the console's and validation's routes) on
/// `addr` from a thread of its own, over TLS with `tls`. Fails when the
/// address cannot be bound (the daemon refuses to start then).
pub fn serve(
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            // Time: the console's live stream waits between looks.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("the HTTP server cannot start: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("the HTTP server cannot listen: {e}"),
                };
                match tls {
                    Some(config) => serve_tls(listener, app, config).await,
                    None => {
                        let app = app.into_make_service_with_connect_info::<SocketAddr>();
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!("the HTTP server stopped: {e}");
                        }
                    }
                }
            });
        })?;
    Ok(())
}

/// HTTPS: each connection's TLS handshake and requests on a task of its own
/// (a slow or bad client holds only its own), the peer's address given to the
/// routes as axum's `ConnectInfo`.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("HTTPS accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => return tracing::debug!("TLS handshake with {peer} timed out"),
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("HTTPS connection with {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a reload removed a service, none of its series is exposed (it
    /// would read "stopped here, owned by nobody" forever); the services
    /// that continue keep theirs.
    #[test]
    fn a_service_a_reload_removed_leaves_the_metrics() {
        let config = crate::cluster::config::ClusterConfig::parse(
            "[cluster]\nname = \"m\"\nkey_file = \"/k\"\n\n[[node]]\nname = \"n1\"\nid = 1\nlinks = [\"198.18.0.1:7000\"]\n\n[[service]]\nname = \"web\"\nstrategy = \"standby\"\n[[service.resource]]\nagent = \"process\"\n\n[[service]]\nname = \"gone\"\nstrategy = \"standby\"\n[[service.resource]]\nagent = \"process\"\n",
        )
        .unwrap()
        .unwrap();
        let node = ClusterNode::new(&config.spec(), 1, 1, 0);
        let names = BTreeMap::from([(1, "n1".to_string())]);
        let m = Metrics::new();
        m.observe(&node, &names, 0);
        assert!(m.encode().contains("service=\"gone\""));
        m.reloaded(&[Some(0)], &["gone".into()], &["n1".into()]);
        let text = m.encode();
        assert!(!text.contains("service=\"gone\""), "{text}");
        assert!(
            text.contains("baton_service_here{service=\"web\",phase=\"stopped\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_prometheus_text_names_counters_with_total_and_has_no_eof() {
        let m = Metrics::new();
        m.set_info("n1", "5be1c0ffee");
        m.decisions
            .get_or_create(&Kind {
                kind: "fence".into(),
            })
            .inc();
        let (kind, text) = m.negotiate("text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
        assert_eq!(kind, PROMETHEUS_TEXT);
        assert!(
            text.contains("# HELP baton_decisions_total Decisions recorded"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE baton_decisions_total counter"),
            "{text}"
        );
        assert!(
            text.contains("baton_decisions_total{kind=\"fence\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("baton_node_info{node=\"n1\",version=\"")
                && text.contains("config=\"5be1c0ffee\"} 1"),
            "{text}"
        );
        // Every sample has its HELP and TYPE under its own name.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no HELP for {name}: {text}"
            );
        }
        let (kind, open) = m.negotiate("application/openmetrics-text;version=1.0.0");
        assert_eq!(kind, OPENMETRICS);
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
    }
}
