//! `dns-name`: the name clients look up follows the service — today's form of
//! the seed's WINS registration. RFC 2136 dynamic updates signed with TSIG
//! (RFC 8945), built and verified with hickory-proto, over UDP to the zone's
//! primary server.
//!
//! Which node registered the name is kept beside it, in a TXT record at
//! `_baton-owner.NAME` holding the node's name: with `address` (the service's
//! virtual address) every node would write the same A record, so the record
//! alone cannot tell whose it is.
//!
//! start: in one update, replace the name's A/AAAA records with the address
//! (the `address` parameter, or this node's own address on `interface`) and
//! the owner record with this node, and check the server's signed answer.
//! stop: remove the owner record if it still names this node (a prerequisite
//! of the update) and leave the address record for the next owner's start to
//! replace, so clients never see the name vanish in a switchover; a server it
//! cannot reach is no failed stop (nothing of a name stays on this node, and
//! the next owner's start replaces the record). monitor: ask the server;
//! `running` when the name points here and the owner record names this node,
//! `not-running` otherwise, `degraded` when the server does not answer (a probe:
//! `not-running`, as nothing here would need stopping).

use crate::reading::{millis, required, text, whole};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

inventory::submit! {
    crate::BuiltinAgent { name: "dns-name", build: || Box::new(DnsNameAgent) }
}

/// The `dns-name` agent.
pub struct DnsNameAgent;

/// A TSIG key as `tsig-keygen` writes it: `key "NAME" { algorithm A; secret "B64"; };`
#[derive(Debug, PartialEq, Eq)]
struct Key {
    name: String,
    algorithm: String,
    secret: Vec<u8>,
}

fn parse_key(text: &str) -> Result<Key, String> {
    let quoted_after = |word: &str| -> Option<String> {
        let at = text.find(word)? + word.len();
        let rest = &text[at..];
        let start = rest.find('"')? + 1;
        let end = start + rest[start..].find('"')?;
        Some(rest[start..end].to_string())
    };
    let name = quoted_after("key").ok_or("no `key \"NAME\"` clause")?;
    let algorithm = text
        .find("algorithm")
        .map(|at| {
            text[at + "algorithm".len()..]
                .trim_start()
                .split(|c: char| c == ';' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .ok_or("no `algorithm` line")?;
    let secret = quoted_after("secret").ok_or("no `secret \"...\"` line")?;
    let secret = data_encoding::BASE64
        .decode(secret.as_bytes())
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    Ok(Key {
        name,
        algorithm,
        secret,
    })
}

/// The checked parameters.
struct Settings {
    server: SocketAddr,
    zone: Name,
    name: Name,
    ttl: u32,
    key: Key,
    timeout: Duration,
}

fn name_param(raw: &str, what: &str) -> Result<Name, AgentError> {
    let mut n = Name::from_ascii(raw.trim()).map_err(|e| {
        AgentError::misconfigured(format!("{what}: {raw:?} is not a DNS name: {e}"))
    })?;
    n.set_fqdn(true);
    Ok(n)
}

impl DnsNameAgent {
    fn settings(&self, req: &Request) -> Result<Settings, AgentError> {
        let meta = self.metadata();
        let raw = required(&meta, req, "server")?;
        let server = raw
            .parse::<SocketAddr>()
            .or_else(|_| raw.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| {
                AgentError::misconfigured(format!(
                    "server: {raw:?} is not ADDRESS or ADDRESS:PORT of the zone's primary"
                ))
            })?;
        let zone = name_param(required(&meta, req, "zone")?, "zone")?;
        let name = name_param(required(&meta, req, "name")?, "name")?;
        if !zone.zone_of(&name) {
            return Err(AgentError::misconfigured(format!(
                "name: {name} is not in zone {zone}"
            )));
        }
        if text(&meta, req, "address").is_none() && text(&meta, req, "interface").is_none() {
            return Err(AgentError::misconfigured(
                "give address (the address the name points to) or interface (this node's own address on it)",
            ));
        }
        let ttl = whole(&meta, req, "ttl", Some(u64::from(u32::MAX)))? as u32;
        let key_file = required(&meta, req, "key_file")?;
        let key_text = std::fs::read_to_string(key_file)
            .map_err(|e| AgentError::invalid_args(format!("key_file {key_file}: {e}")))?;
        let key = parse_key(&key_text).map_err(|e| {
            AgentError::misconfigured(format!(
                "key_file {key_file}: {e}; write it with `tsig-keygen -a hmac-sha256 NAME`"
            ))
        })?;

        Ok(Settings {
            server,
            zone,
            name,
            ttl,
            key,
            // Within the call's deadline, so "no answer" is the agent's verdict,
            // not the host's timeout.
            timeout: millis(&meta, req, "timeout_ms")?.min(req.context.timeout().mul_f64(0.8)),
        })
    }

    /// The address the name should point to on this node.
    fn address(&self, req: &Request) -> Result<IpAddr, AgentError> {
        let meta = self.metadata();
        if let Some(raw) = text(&meta, req, "address") {
            return raw.trim().parse().map_err(|_| {
                AgentError::misconfigured(format!("address: {raw} is not an IPv4 or IPv6 address"))
            });
        }
        let ifname = required(&meta, req, "interface")?;
        let mut nl = crate::netlink::Netlink::open()
            .map_err(|e| AgentError::generic(format!("netlink: {e}")))?;
        let link = nl
            .link_by_name(ifname)
            .map_err(|e| AgentError::generic(format!("netlink: {e}")))?
            .ok_or_else(|| {
                AgentError::invalid_args(format!(
                    "interface: no interface {ifname} on node {}",
                    req.context.node
                ))
            })?;
        nl.addresses(IpAddr::from([0u8; 4]))
            .map_err(|e| AgentError::generic(format!("netlink: {e}")))?
            .into_iter()
            .find(|a| a.index == link.index)
            .map(|a| a.ip)
            .ok_or_else(|| {
                AgentError::invalid_args(format!(
                    "interface {ifname} has no IPv4 address on node {}",
                    req.context.node
                ))
            })
    }

    fn signer(s: &Settings) -> Result<TSigner, AgentError> {
        // Matched by its relative name: "hmac-sha256", not "hmac-sha256.".
        let algorithm =
            TsigAlgorithm::from_name(Name::from_ascii(&s.key.algorithm).map_err(|e| {
                AgentError::misconfigured(format!(
                    "key {}: algorithm {:?}: {e}",
                    s.key.name, s.key.algorithm
                ))
            })?);
        TSigner::new(
            s.key.secret.clone(),
            algorithm,
            name_param(&s.key.name, "key name")?,
            300,
        )
        .map_err(|e| {
            AgentError::misconfigured(format!(
                "key {}: algorithm {} cannot sign ({e}); use hmac-sha256, hmac-sha384 or hmac-sha512",
                s.key.name, s.key.algorithm
            ))
        })
    }

    /// Send `message`, signed, and return the server's verified answer (any
    /// response code: the caller decides which ones are success).
    fn exchange(s: &Settings, mut message: Message) -> Result<Message, Failure> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut verifier = message
            .finalize(&Self::signer(s)?, now)
            .map_err(|e| AgentError::generic(format!("signing the update: {e}")))?;
        let bytes = message
            .to_vec()
            .map_err(|e| AgentError::generic(format!("encoding the update: {e}")))?;
        let reply = udp_exchange(s.server, &bytes, message.metadata.id, s.timeout)?;
        let response = match verifier.as_mut() {
            Some(v) => match v.verify(&reply) {
                Ok(r) => (*r).clone(),
                Err(e) => {
                    // An unsigned refusal (BADKEY, BADSIG) says more than "bad signature".
                    let plain = Message::from_vec(&reply).ok();
                    return Err(refusal(s, plain.as_ref(), &e.to_string()).into());
                }
            },
            None => Message::from_vec(&reply)
                .map_err(|e| AgentError::generic(format!("answer from {}: {e}", s.server)))?,
        };
        Ok(response)
    }

    /// [`DnsNameAgent::exchange`], succeeding on `accept` response codes only.
    fn update(s: &Settings, message: Message, accept: &[ResponseCode]) -> Result<(), Failure> {
        let answer = Self::exchange(s, message)?;
        if accept.contains(&answer.metadata.response_code) {
            Ok(())
        } else {
            Err(refusal(s, Some(&answer), "").into())
        }
    }

    fn update_message(s: &Settings) -> Message {
        let mut zone = Query::new();
        zone.set_name(s.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Update;
        m.metadata.recursion_desired = false;
        m.add_zone(zone);
        m
    }

    fn record(s: &Settings, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(s.name.clone(), s.ttl, data)
    }

    /// The name that holds the owner record: `_baton-owner.NAME`.
    fn owner_name(s: &Settings) -> Result<Name, AgentError> {
        Name::from_ascii("_baton-owner")
            .and_then(|label| label.append_name(&s.name))
            .map_err(|e| {
                AgentError::misconfigured(format!(
                    "name: {} has no room for _baton-owner: {e}",
                    s.name
                ))
            })
    }

    /// The owner record naming `node`.
    fn owner_record(s: &Settings, node: &str) -> Result<Record, AgentError> {
        Ok(Record::from_rdata(
            Self::owner_name(s)?,
            s.ttl,
            RData::TXT(TXT::new(vec![node.to_string()])),
        ))
    }

    /// The records of `kind` the server has at `name`.
    fn query(s: &Settings, name: &Name, kind: RecordType) -> Result<Vec<RData>, Failure> {
        let mut m = Message::query();
        m.metadata.recursion_desired = false;
        m.add_query(Query::query(name.clone(), kind));
        let bytes = m
            .to_vec()
            .map_err(|e| AgentError::generic(format!("encoding the query: {e}")))?;
        let reply = udp_exchange(s.server, &bytes, m.metadata.id, s.timeout)?;
        let answer = Message::from_vec(&reply)
            .map_err(|e| AgentError::generic(format!("answer from {}: {e}", s.server)))?;
        match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                return Err(AgentError::generic(format!(
                    "server {} answered {code} for {name}",
                    s.server
                ))
                .into());
            }
        }
        Ok(answer.answers.iter().map(|r| r.data.clone()).collect())
    }

    /// Whether the server has the name pointing to `ip` and this node as its owner.
    fn registered_here(s: &Settings, ip: IpAddr, node: &str) -> Result<bool, Failure> {
        let kind = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let points_here = Self::query(s, &s.name, kind)?.iter().any(|d| match d {
            RData::A(a) => IpAddr::V4(a.0) == ip,
            RData::AAAA(a) => IpAddr::V6(a.0) == ip,
            _ => false,
        });
        if !points_here {
            return Ok(false);
        }
        let owners = Self::query(s, &Self::owner_name(s)?, RecordType::TXT)?;
        Ok(owners.iter().any(|d| match d {
            RData::TXT(t) => t
                .txt_data
                .iter()
                .any(|part| part.as_ref() == node.as_bytes()),
            _ => false,
        }))
    }
}

/// The addresses (A and AAAA) `server` has for `name`, asked as a client would:
/// for tests and tools.
pub fn lookup(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let name = name_param(name, "name").map_err(|e| e.reason)?;
    let mut found = Vec::new();
    for kind in [RecordType::A, RecordType::AAAA] {
        let mut m = Message::query();
        m.add_query(Query::query(name.clone(), kind));
        let bytes = m.to_vec().map_err(|e| e.to_string())?;
        let reply = udp_exchange(server, &bytes, m.metadata.id, timeout)
            .map_err(|e| AgentError::from(e).reason)?;
        let answer = Message::from_vec(&reply).map_err(|e| e.to_string())?;
        found.extend(answer.answers.iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }));
    }
    Ok(found)
}

fn refusal(s: &Settings, answer: Option<&Message>, detail: &str) -> AgentError {
    let code = answer.map(|m| m.metadata.response_code.to_string());
    let tsig_error = answer
        .and_then(|m| m.signature())
        .map(|sig| format!(", TSIG error {:?}", sig.data.error));
    let reason = format!(
        "server {} refused the update of {} signed with key {}: {}{}{}",
        s.server,
        s.name,
        s.key.name,
        code.unwrap_or_else(|| "no valid answer".into()),
        tsig_error.unwrap_or_default(),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        }
    );
    match answer.map(|m| m.metadata.response_code) {
        // The key or the zone's policy is wrong: the same on every node.
        Some(ResponseCode::NotAuth | ResponseCode::Refused) => AgentError::misconfigured(format!(
            "{reason}; check the key's name and secret and the zone's allow-update"
        )),
        _ => AgentError::generic(reason),
    }
}

/// Why a call failed: the server could not be reached (no route, no
/// answer in time), or it answered and the answer is the failure.
enum Failure {
    Unreachable(String),
    Answered(AgentError),
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Failure {
        Failure::Answered(e)
    }
}

impl From<Failure> for AgentError {
    fn from(f: Failure) -> AgentError {
        match f {
            Failure::Unreachable(why) => AgentError::generic(why),
            Failure::Answered(e) => e,
        }
    }
}

/// One UDP request and its answer (matched by ID), within `timeout`.
fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let io = |e: std::io::Error| Failure::Unreachable(format!("server {server}: {e}"));
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let socket = UdpSocket::bind(bind).map_err(io)?;
    socket.connect(server).map_err(io)?;
    socket.send(bytes).map_err(io)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Failure::Unreachable(format!(
                "server {server} did not answer within {} ms",
                timeout.as_millis()
            )));
        }
        socket.set_read_timeout(Some(left)).map_err(io)?;
        match socket.recv(&mut buf) {
            Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                return Ok(buf[..n].to_vec());
            }
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(io(e)),
        }
    }
}

impl ResourceAgent for DnsNameAgent {
    fn metadata(&self) -> Metadata {
        let p = ParamSpec::new;
        Metadata {
            name: "dns-name".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "A DNS name that points to wherever the service runs".into(),
            longdesc: "RFC 2136 dynamic updates signed with TSIG (hmac-sha256) to the zone's \
                       primary: start replaces the name's records with the address and marks \
                       this node the owner (a TXT record at _baton-owner.NAME), stop gives the \
                       ownership up and leaves the address for the next owner, monitor asks \
                       the server."
                .into(),
            parameters: vec![
                p(
                    "server",
                    ParamType::String,
                    true,
                    None,
                    "The zone's primary server: ADDRESS or ADDRESS:PORT",
                ),
                p(
                    "zone",
                    ParamType::String,
                    true,
                    None,
                    "The zone the name is in (example.com)",
                ),
                p(
                    "name",
                    ParamType::String,
                    true,
                    None,
                    "The name clients look up (db.example.com)",
                ),
                p(
                    "address",
                    ParamType::String,
                    false,
                    None,
                    "The address it points to (the service's virtual address)",
                ),
                p(
                    "interface",
                    ParamType::String,
                    false,
                    None,
                    "Instead of address: this node's own IPv4 address on this interface",
                ),
                p(
                    "ttl",
                    ParamType::Integer,
                    false,
                    Some("30"),
                    "TTL of the record, seconds",
                ),
                p(
                    "key_file",
                    ParamType::String,
                    true,
                    None,
                    "The TSIG key, as `tsig-keygen -a hmac-sha256 NAME` writes it",
                ),
                p(
                    "timeout_ms",
                    ParamType::Integer,
                    false,
                    Some("2000"),
                    "How long to wait for the server",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 10_000),
                ActionSpec::new(Action::Stop, 10_000),
                ActionSpec::monitor(5_000, 10_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        Self::signer(&s)?;
        if req.depth > 0 {
            self.address(req)?;
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        let ip = self.address(req)?;
        let mut m = Self::update_message(&s);
        // Replace: delete every record of the type, then add ours, and the same
        // for the owner record, in one update.
        let kind = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let owner = Self::owner_record(&s, &req.context.node)?;
        for (name, kind) in [
            (s.name.clone(), kind),
            (owner.name.clone(), RecordType::TXT),
        ] {
            let mut delete = Record::update0(name, 0, kind);
            delete.dns_class = DNSClass::ANY;
            m.add_update(delete);
        }
        m.add_update(Self::record(&s, ip));
        m.add_update(owner);
        Ok(Self::update(&s, m, &[ResponseCode::NoError])?)
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        let mut m = Self::update_message(&s);
        // Prerequisite: this node is still the owner (RFC 2136 2.4.2, value-dependent).
        let mut ours = Self::owner_record(&s, &req.context.node)?;
        ours.ttl = 0;
        m.add_pre_requisite(ours.clone());
        let mut delete = ours;
        delete.dns_class = DNSClass::NONE;
        m.add_update(delete);
        // NXRRSET: another node registered it since, or it was given up already.
        match Self::update(&s, m, &[ResponseCode::NoError, ResponseCode::NXRRSet]) {
            Err(Failure::Unreachable(why)) => {
                // The next owner's start replaces the record: not a failed stop.
                eprintln!(
                    "dns-name: {why}; the owner record of {} is left for the next owner to replace",
                    s.name
                );
                Ok(())
            }
            r => Ok(r?),
        }
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let s = self.settings(req)?;
        let ip = self.address(req)?;
        match Self::registered_here(&s, ip, &req.context.node) {
            Ok(true) => Ok(MonitorState::Running),
            Ok(false) => Ok(MonitorState::NotRunning),
            // Nothing of a name would need stopping here.
            Err(Failure::Unreachable(_)) if req.probe => Ok(MonitorState::NotRunning),
            Err(Failure::Unreachable(why)) => {
                eprintln!("dns-name: {why}: the name of {} is not checked", s.name);
                Ok(MonitorState::Degraded)
            }
            Err(Failure::Answered(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_tsig_keygen_writes_them() {
        let k = parse_key(
            "key \"baton-lab\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0IGtleSBieXRlcw==\";\n};\n",
        )
        .unwrap();
        assert_eq!(k.name, "baton-lab");
        assert_eq!(k.algorithm, "hmac-sha256");
        assert_eq!(k.secret, b"secret key bytes");
        assert!(
            parse_key("key \"x\" { algorithm hmac-sha256; };")
                .unwrap_err()
                .contains("secret")
        );
        assert!(
            parse_key("key \"x\" { algorithm hmac-sha256; secret \"!!\"; };")
                .unwrap_err()
                .contains("base64")
        );
    }
}
