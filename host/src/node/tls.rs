//! TLS on the nodes' HTTP addresses (`[cluster.tls]`): the server side for the
//! daemon, the client side for what asks a node (the console gathering the
//! others, `scenario validate`), the checks `run` and `config check` share, and
//! `baton tls init` (a cluster CA and a certificate per node, by rcgen).
//! rustls with ring throughout.

use crate::cluster::config::{ClusterConfig, TlsSection};
use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// ring, deliberately: it builds with a C compiler alone (aws-lc-rs, rustls'
/// default with post-quantum key exchange, needs cmake). The nodes talk over
/// their management network with classical key exchange.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("cluster.tls.{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "cluster.tls.{what} {}: no PEM certificate in it",
            path.display()
        );
    }
    Ok(certs)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cluster.tls.key_file {}: cannot read it", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "cluster.tls.key_file {}: mode {:o} lets others read it; chmod 600 {0}",
            path.display(),
            meta.mode() & 0o777
        );
    }
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("cluster.tls.key_file {}: {e}", path.display()))
}

fn required<'a>(field: &str, given: &'a Option<PathBuf>) -> anyhow::Result<&'a Path> {
    given
        .as_deref()
        .with_context(|| format!("cluster.tls.{field}: missing"))
}

/// `t` for node `node`: `{node}` in its paths stands for the node's name (one
/// config file for every node).
fn for_node(t: &TlsSection, node: &str) -> TlsSection {
    let each = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| PathBuf::from(p.to_string_lossy().replace("{node}", node)))
    };
    TlsSection {
        cert_file: each(&t.cert_file),
        key_file: each(&t.key_file),
        ca_file: each(&t.ca_file),
        plain: t.plain,
    }
}

/// The server side of node `node` for `tls` (`None`: plain HTTP, which the
/// config must ask for with `plain = true`), with its files checked (see
/// [`certified`]), and the slot its certificate is served from (a reload puts
/// a renewed one there).
pub fn server(
    tls: Option<&TlsSection>,
    node: &str,
    http: &str,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, Arc<CertSlot>)>> {
    let Some(served) = certified(tls, node, http)? else {
        return Ok(None);
    };
    let slot = Arc::new(CertSlot(std::sync::RwLock::new(served)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(slot.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((Arc::new(config), slot)))
}

/// A certificate and key as served, and when the certificate expires.
#[derive(Debug)]
pub struct Served {
    /// The chain and key.
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// The certificate file it came from.
    pub cert_file: PathBuf,
    /// When the certificate stops being valid, Unix seconds.
    pub not_after: i64,
}

/// Where the server takes its certificate from: replaced in place by a reload
/// (a renewed certificate is served from the next connection on).
#[derive(Debug)]
pub struct CertSlot(std::sync::RwLock<Served>);

impl CertSlot {
    /// Serve `served` from now on.
    pub fn replace(&self, served: Served) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = served;
    }

    /// The certificate file served, and when it expires (Unix seconds).
    pub fn expiry(&self) -> (PathBuf, i64) {
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        (s.cert_file.clone(), s.not_after)
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|e| e.into_inner()).key,
        ))
    }
}

/// Node `node`'s certificate and key under `tls`, checked: the key is
/// root-only and matches the certificate, and the certificate chains to
/// `ca_file` and names `http` (this node's address) today. `None`: plain HTTP
/// (which the config must ask for with `plain = true`).
pub fn certified(
    tls: Option<&TlsSection>,
    node: &str,
    http: &str,
) -> anyhow::Result<Option<Served>> {
    let Some(t) = tls else {
        bail!(
            "cluster.tls: node {node} serves HTTP on {http} but [cluster.tls] is missing: give cert_file, key_file and ca_file (`baton tls init` makes them), or plain = true for plain HTTP (a lab, a network trusted end to end)"
        );
    };
    if t.plain {
        return Ok(None);
    }
    let t = for_node(t, node);
    let t = &t;
    let cert_file = required("cert_file", &t.cert_file)?;
    let chain = certificates(cert_file, "cert_file")?;
    let key = private_key(required("key_file", &t.key_file)?)?;
    let roots = roots(required("ca_file", &t.ca_file)?)?;
    let ip: std::net::IpAddr = http
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .with_context(|| format!("http {http:?} is not ADDRESS:PORT"))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &chain[0],
        &chain[1..],
        &ServerName::IpAddress(ip.into()),
        &[],
        UnixTime::now(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cluster.tls.cert_file {}: not valid for this node's address {ip} under ca_file {}: {e}; make it with `baton tls init` (or renew it with `baton tls renew`)",
            cert_file.display(),
            t.ca_file.as_deref().unwrap_or(Path::new("?")).display()
        )
    })?;
    let not_after = not_after(cert_file, &chain[0])?;
    let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
        format!(
            "cluster.tls: key_file {} does not go with cert_file {}",
            t.key_file.as_deref().unwrap_or(Path::new("?")).display(),
            cert_file.display()
        )
    })?;
    Ok(Some(Served {
        key: Arc::new(key),
        cert_file: cert_file.to_path_buf(),
        not_after,
    }))
}

/// When certificate `cert` (read from `file`) stops being valid, Unix seconds.
fn not_after(file: &Path, cert: &CertificateDer<'_>) -> anyhow::Result<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| anyhow::anyhow!("cluster.tls.cert_file {}: {e}", file.display()))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Within this many days of its expiry a certificate is reported: `config
/// check`, `baton status` and `scenario validate` say so, with how to renew.
pub const RENEW_WITHIN_DAYS: i64 = 30;

/// What to say of a certificate in `file` that expires at `not_after` (Unix
/// seconds), at `now`: `None` while it has more than [`RENEW_WITHIN_DAYS`].
pub fn expiry_warning(file: &Path, not_after: i64, now: i64) -> Option<String> {
    let days = (not_after - now).div_euclid(86_400);
    (days < RENEW_WITHIN_DAYS).then(|| {
        format!(
            "cluster.tls.cert_file {}: {} on {}; renew it (`baton tls renew FILE --out DIR` with the cluster CA's directory, then `systemctl reload baton`)",
            file.display(),
            if days < 0 {
                "expired".to_string()
            } else {
                format!("expires in {days} day(s),")
            },
            date(not_after)
        )
    })
}

/// `unix_s` as a UTC date, `YYYY-MM-DD`.
pub fn date(unix_s: i64) -> String {
    let (y, m, d) = civil(unix_s.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn roots(ca_file: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_file, "ca_file")? {
        roots
            .add(cert)
            .with_context(|| format!("cluster.tls.ca_file {}", ca_file.display()))?;
    }
    Ok(roots)
}

/// How to ask other nodes' HTTP addresses: the scheme and a client trusting
/// the cluster CA (`ca_file`; `None`: plain HTTP), each request bounded by
/// `timeout`.
#[derive(Clone)]
pub struct Client {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The agent to ask with.
    pub agent: ureq::Agent,
}

impl Client {
    /// A client for `ca_file` (`None`: plain HTTP).
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<Client> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false);
        let scheme = match ca_file {
            None => "http",
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("CA file {}: cannot read it", ca.display()))?;
                let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    bail!("CA file {}: no PEM certificate in it", ca.display());
                }
                config = config.tls_config(
                    ureq::tls::TlsConfig::builder()
                        .provider(ureq::tls::TlsProvider::Rustls)
                        .unversioned_rustls_crypto_provider(provider())
                        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                        .build(),
                );
                "https"
            }
        };
        Ok(Client {
            scheme,
            agent: config.build().into(),
        })
    }

    /// The client `tls` calls for (plain HTTP without it or with `plain`).
    pub fn for_section(tls: Option<&TlsSection>, timeout: Duration) -> anyhow::Result<Client> {
        Client::new(
            tls.filter(|t| !t.plain).and_then(|t| t.ca_file.as_deref()),
            timeout,
        )
    }

    /// `scheme://addr/path`.
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}

/// The civil date (year, month, day) `days` days after 1970-01-01.
fn civil(days: i64) -> (i32, u8, u8) {
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// How long the certificates `baton tls init` makes are valid by default.
pub const VALID_DAYS: i64 = 5 * 365;

fn validity(params: &mut rcgen::CertificateParams, days: i64) {
    let today = (crate::node::history::unix_ms() / 86_400_000) as i64;
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `baton tls init`: a cluster CA (`ca.crt`, `ca.key`, valid [`VALID_DAYS`])
/// and, for every node of `cluster`, `NODE.crt` and `NODE.key` naming the
/// node and the address of its `http`, valid `days`, in `dir`; refused when
/// `dir` already has a CA (renew with [`renew`]). The files written.
pub fn init(cluster: &ClusterConfig, dir: &Path, days: i64) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        bail!(
            "{} exists: this directory has a CA already; `baton tls renew` issues new node certificates under it (or remove the directory to make a new CA: every node then needs the new ca.crt and its new certificate)",
            ca_key_path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("baton cluster {} CA", cluster.cluster.name),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, VALID_DAYS.max(days));
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut written = vec![dir.join("ca.crt"), ca_key_path.clone()];
    write(&written[0], &ca_cert.pem(), 0o644)?;
    write(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    written.extend(node_certificates(
        cluster,
        dir,
        &Issuer::new(ca, ca_key),
        days,
    )?);
    Ok(written)
}

/// `baton tls renew`: new certificates and keys for every node of `cluster`
/// (`NODE.crt`, `NODE.key`), signed by the CA already in `dir` (`ca.crt`,
/// `ca.key`, as `baton tls init` made them), so every node keeps trusting
/// them; also for a node added since. Valid `days`, or by default
/// [`VALID_DAYS`] but never beyond the CA. The files written.
pub fn renew(
    cluster: &ClusterConfig,
    dir: &Path,
    days: Option<i64>,
) -> anyhow::Result<Vec<PathBuf>> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "{}: cannot read it; renew in the directory `baton tls init --out DIR` made (it holds ca.crt and ca.key)",
                dir.join(name).display()
            )
        })
    };
    let (ca_pem, key_pem) = (read("ca.crt")?, read("ca.key")?);
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{}: not a PEM private key", dir.join("ca.key").display()))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).with_context(|| {
        format!(
            "{} and ca.key: not a CA certificate and its key",
            dir.join("ca.crt").display()
        )
    })?;
    let ca_expires = certificates(&dir.join("ca.crt"), "ca_file")
        .and_then(|c| not_after(&dir.join("ca.crt"), &c[0]))?;
    let today = (crate::node::history::unix_ms() / 86_400_000) as i64;
    // A node certificate is valid until midnight (UTC) starting its last day.
    let ca_days = ca_expires.div_euclid(86_400) - today;
    let days = match days {
        Some(d) if d > ca_days => bail!(
            "{}: the CA expires on {}, before certificates valid {d} days would; give --days {ca_days} or fewer, or make a new CA with `baton tls init` into another directory",
            dir.join("ca.crt").display(),
            date(ca_expires)
        ),
        Some(d) => d,
        None if ca_days < RENEW_WITHIN_DAYS => bail!(
            "{}: the CA itself expires on {}; make a new CA with `baton tls init` into another directory (every node then needs the new ca.crt)",
            dir.join("ca.crt").display(),
            date(ca_expires)
        ),
        None => VALID_DAYS.min(ca_days),
    };
    node_certificates(cluster, dir, &issuer, days)
}

/// A certificate and key per node of `cluster`, signed by `issuer`, valid
/// `days`, written to `dir`.
fn node_certificates<S: rcgen::SigningKey>(
    cluster: &ClusterConfig,
    dir: &Path,
    issuer: &rcgen::Issuer<'_, S>,
    days: i64,
) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let mut written = Vec::new();
    for node in &cluster.nodes {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![node.name.clone()])?;
        if let Some(ip) = node
            .http
            .as_deref()
            .and_then(|h| h.parse::<std::net::SocketAddr>().ok())
        {
            p.subject_alt_names.push(SanType::IpAddress(ip.ip()));
        }
        p.distinguished_name
            .push(DnType::CommonName, node.name.clone());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut p, days);
        let cert = p.signed_by(&key, issuer)?;
        let (crt, pem_key) = (
            dir.join(format!("{}.crt", node.name)),
            dir.join(format!("{}.key", node.name)),
        );
        write(&crt, &cert.pem(), 0o644)?;
        write(&pem_key, &key.serialize_pem(), 0o600)?;
        written.push(crt);
        written.push(pem_key);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `renew` issues node certificates under the CA `init` made (which stays
    /// as it was), for as long as asked, and refuses what it cannot do.
    #[test]
    fn renew_reissues_under_the_same_ca_and_refuses_what_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let cluster = ClusterConfig::parse(&format!(
            "[cluster]\nname = \"c\"\nkey_file = \"/k\"\ntls = {{ cert_file = \"{t}/{{node}}.crt\", key_file = \"{t}/{{node}}.key\", ca_file = \"{t}/ca.crt\" }}\n[[node]]\nname = \"n1\"\nid = 1\nlinks = [\"127.0.0.1:7000\"]\nhttp = \"127.0.0.1:9100\"\n[[service]]\nname = \"web\"\nstrategy = \"standby\"\n[[service.resource]]\nagent = \"process\"\n",
            t = tls.display()
        ))
        .unwrap()
        .unwrap();
        let err = renew(&cluster, &tls, Some(30)).unwrap_err();
        assert!(
            format!("{err:#}").contains("ca.crt: cannot read it"),
            "{err:#}"
        );
        init(&cluster, &tls, 10).unwrap();
        let now = (crate::node::history::unix_ms() / 1000) as i64;
        let expiry = || {
            certified(cluster.cluster.tls.as_ref(), "n1", "127.0.0.1:9100")
                .unwrap()
                .unwrap()
                .not_after
        };
        let short = expiry();
        assert_eq!((short - now) / 86_400, 9);
        let warned = expiry_warning(Path::new("n1.crt"), short, now).unwrap();
        assert!(
            warned.starts_with("cluster.tls.cert_file n1.crt: expires in 9 day(s), on "),
            "{warned}"
        );
        let ca = std::fs::read(tls.join("ca.crt")).unwrap();
        renew(&cluster, &tls, Some(400)).unwrap();
        assert_eq!(std::fs::read(tls.join("ca.crt")).unwrap(), ca);
        assert_eq!((expiry() - now) / 86_400, 399);
        assert_eq!(expiry_warning(Path::new("n1.crt"), expiry(), now), None);
        let err = renew(&cluster, &tls, Some(20 * 365)).unwrap_err();
        assert!(format!("{err:#}").contains("the CA expires on"), "{err:#}");
        // By default: as long as the CA allows, up to five years.
        renew(&cluster, &tls, None).unwrap();
        assert_eq!((expiry() - now) / 86_400, VALID_DAYS - 1);
        assert!(
            init(&cluster, &tls, 10).is_err(),
            "init over an existing CA"
        );
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_429), (2025, 12, 7));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
