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
/// config must ask for with `plain = true`), with its files checked: the key is root-only and matches the certificate, and the
/// certificate chains to `ca_file` and names `http` (this node's address)
/// today.
pub fn server(
    tls: Option<&TlsSection>,
    node: &str,
    http: &str,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
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
    let chain = certificates(required("cert_file", &t.cert_file)?, "cert_file")?;
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
            "cluster.tls.cert_file {}: not valid for this node's address {ip} under ca_file {}: {e}; make it with `baton tls init`",
            t.cert_file.as_deref().unwrap_or(Path::new("?")).display(),
            t.ca_file.as_deref().unwrap_or(Path::new("?")).display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "cluster.tls: key_file {} does not go with cert_file {}",
                t.key_file.as_deref().unwrap_or(Path::new("?")).display(),
                t.cert_file.as_deref().unwrap_or(Path::new("?")).display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
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

/// How long the certificates `baton tls init` makes are valid.
pub const VALID_DAYS: i64 = 5 * 365;

fn validity(params: &mut rcgen::CertificateParams) {
    let today = (crate::node::history::unix_ms() / 86_400_000) as i64;
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + VALID_DAYS);
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

/// `baton tls init`: a cluster CA (`ca.crt`, `ca.key`) and, for every node of
/// `cluster`, `NODE.crt` and `NODE.key` naming the node and the address of its
/// `http`, valid for [`VALID_DAYS`], in `dir`; refused when `dir` already has
/// a CA. The files written.
pub fn init(cluster: &ClusterConfig, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        bail!(
            "{} exists: this directory has a CA already; remove the directory to make a new one (every node then needs the new ca.crt and its new certificate)",
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
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut written = vec![dir.join("ca.crt"), ca_key_path.clone()];
    write(&written[0], &ca_cert.pem(), 0o644)?;
    write(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    let issuer = Issuer::new(ca, ca_key);
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
        validity(&mut p);
        let cert = p.signed_by(&key, &issuer)?;
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

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_429), (2025, 12, 7));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
