//! `baton scenario validate`: a live site checked against its scenario, the
//! job of a cluster validation report. Every node is asked at its `http`
//! address (`/api/validate`: its status, its key's check value, what each
//! agent is there, its fence agent's monitor run now), and each check is
//! reported passed or failed with why: every node answers and runs the
//! scenario's config, the key is the same everywhere, every pair of nodes hears
//! each other on every link, every node is a member, every agent is the same
//! on every node, the fence agent's monitor passes, the witness's storage is
//! read.

use crate::design::scenario::Scenario;
use crate::node::tls::Client;
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// One check's outcome.
#[derive(Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why, in words.
    pub detail: String,
}

fn check(out: &mut Vec<Check>, check: String, ok: bool, detail: String) {
    out.push(Check { check, ok, detail });
}

/// The token in `file`: its first line that is not a comment (the token
/// `baton token add` printed, kept by whoever validates).
fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--token-file {}: cannot read it", file.display()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .with_context(|| format!("--token-file {}: no token in it", file.display()))?;
    if token.contains("sha256:") {
        anyhow::bail!(
            "--token-file {}: a tokens file (it keeps hashes); give a file with the token itself, as `baton token add` printed it",
            file.display()
        );
    }
    Ok(token)
}

/// Ask node at `addr`; its answer, or why there is none (over HTTPS, a
/// certificate that does not chain to the CA or name the address is a reason).
fn ask(client: &Client, addr: &str, token: Option<&str>) -> Result<Value, String> {
    let mut req = client.agent.get(client.url(addr, "/api/validate"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let code = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| format!("HTTP {code}: not baton's answer (is this a baton node?)"))?;
    if !code.is_success() {
        let why = value["message"].as_str().unwrap_or("refused").to_string();
        return Err(if code.as_u16() == 401 {
            format!("{why} (give --token-file)")
        } else {
            format!("HTTP {code}: {why}")
        });
    }
    if value["status"].is_null() {
        return Err("the daemon did not give its status".into());
    }
    Ok(value)
}

/// Validate the live site of `scenario`, asking with `client`: every check,
/// in order.
pub fn checks(scenario: &Scenario, token: Option<&str>, client: &Client) -> Vec<Check> {
    let cluster = scenario.cluster();
    let fp = format!("{:016x}", cluster.fingerprint);
    let mut out = Vec::new();
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    for n in &cluster.nodes {
        let Some(addr) = &n.http else {
            check(
                &mut out,
                format!("{} answers", n.name),
                false,
                "no http address in its [[node]]; add http = \"ADDRESS:PORT\" to validate it"
                    .into(),
            );
            continue;
        };
        match ask(client, addr, token) {
            Ok(v) => {
                let how = if client.scheme == "https" {
                    "over HTTPS, its certificate valid under the cluster CA"
                } else {
                    "over plain HTTP"
                };
                check(
                    &mut out,
                    format!("{} answers", n.name),
                    true,
                    format!("at {addr}, {how}"),
                );
                answers.insert(n.name.clone(), v);
            }
            Err(e) => check(
                &mut out,
                format!("{} answers", n.name),
                false,
                format!("at {addr}: {e}"),
            ),
        }
    }
    let now = (crate::node::history::unix_ms() / 1000) as i64;
    for (name, v) in &answers {
        let tls = &v["status"]["tls"];
        let (Some(file), Some(not_after)) = (tls["cert_file"].as_str(), tls["not_after"].as_i64())
        else {
            continue;
        };
        let warning = crate::node::tls::expiry_warning(std::path::Path::new(file), not_after, now);
        check(
            &mut out,
            format!(
                "{name}'s certificate is valid {} days more",
                crate::node::tls::RENEW_WITHIN_DAYS
            ),
            warning.is_none(),
            warning.unwrap_or_else(|| {
                format!("{file} valid until {}", crate::node::tls::date(not_after))
            }),
        );
    }
    for (name, v) in &answers {
        let runs = v["status"]["config"].as_str().unwrap_or("?");
        check(
            &mut out,
            format!("{name} runs the scenario's config"),
            runs == fp,
            if runs == fp {
                format!("config {fp}")
            } else {
                format!(
                    "it runs config {runs}, the scenario is {fp}; deploy the compiled config (baton scenario compile)"
                )
            },
        );
    }
    keys(&mut out, &answers);
    links(&mut out, scenario, &answers);
    for (name, v) in &answers {
        let members: Vec<&str> = v["status"]["members"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let all = members.len() == cluster.nodes.len();
        check(
            &mut out,
            format!("{name} sees every node as a member"),
            all,
            format!("members {}", members.join(", ")),
        );
    }
    agents(&mut out, &answers);
    for (name, v) in &answers {
        if let Some(f) = v["fence"].as_object() {
            check(
                &mut out,
                format!(
                    "fence agent {} on {name}",
                    f["agent"].as_str().unwrap_or("?")
                ),
                f["ok"] == true,
                format!("monitor: {}", f["monitor"].as_str().unwrap_or("?")),
            );
        }
        if cluster.cluster.witness.is_some() {
            let problem = v["status"]["witness_problem"].as_str();
            check(
                &mut out,
                format!("{name} reads the witness's storage"),
                problem.is_none(),
                problem.map_or_else(|| "the lease is read and renewed".into(), str::to_owned),
            );
        }
    }
    out
}

fn keys(out: &mut Vec<Check>, answers: &BTreeMap<String, Value>) {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, v) in answers {
        by_key
            .entry(v["key"].as_str().unwrap_or("?"))
            .or_default()
            .push(name);
    }
    let detail = by_key
        .iter()
        .map(|(k, nodes)| format!("{} with key check {k}", nodes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    // No pass without evidence: a comparison needs two nodes that answered.
    let ok = by_key.len() == 1 && answers.len() >= 2;
    check(
        out,
        "the key is the same on every node".into(),
        ok,
        if answers.len() < 2 {
            format!(
                "{} node(s) answered, nothing to compare ({}); see the checks above for why",
                answers.len(),
                if detail.is_empty() { "none" } else { &detail }
            )
        } else if ok {
            detail
        } else {
            format!("{detail}: copy one key_file to every node")
        },
    );
}

/// Whether `from`'s status has `peer`'s link `link` up; `None`: not answered.
fn link_up(answers: &BTreeMap<String, Value>, from: &str, peer: &str, link: u64) -> Option<bool> {
    let links = answers.get(from)?["status"]["links"].as_array()?;
    Some(
        links
            .iter()
            .any(|l| l["peer"] == peer && l["link"] == link && l["up"] == true),
    )
}

fn links(out: &mut Vec<Check>, scenario: &Scenario, answers: &BTreeMap<String, Value>) {
    let cluster = scenario.cluster();
    let count = cluster.spec().links as u64;
    for (i, a) in cluster.nodes.iter().enumerate() {
        for b in &cluster.nodes[i + 1..] {
            for l in 0..count {
                let ab = link_up(answers, &a.name, &b.name, l);
                let ba = link_up(answers, &b.name, &a.name, l);
                let ok = ab == Some(true) && ba == Some(true);
                let say = |from: &str, to: &str, up: Option<bool>| match up {
                    Some(true) => format!("{from} hears {to}"),
                    Some(false) => format!("{from} does not hear {to}"),
                    None => format!("{from} did not answer"),
                };
                let mut detail = format!(
                    "{}; {}",
                    say(&a.name, &b.name, ab),
                    say(&b.name, &a.name, ba)
                );
                if !ok {
                    detail += &format!(
                        " (addresses {} and {}: check the network, the firewall and the key)",
                        a.links.get(l as usize).map(String::as_str).unwrap_or("?"),
                        b.links.get(l as usize).map(String::as_str).unwrap_or("?")
                    );
                }
                check(
                    out,
                    format!("{} ⇄ {} on link {l}", a.name, b.name),
                    ok,
                    detail,
                );
            }
        }
    }
}

fn agents(out: &mut Vec<Check>, answers: &BTreeMap<String, Value>) {
    let mut names: Vec<String> = answers
        .values()
        .filter_map(|v| v["agents"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    for agent in names {
        let mut by_identity: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (node, v) in answers {
            let a = &v["agents"][&agent];
            let id = if a["ok"] == true {
                a["identity"].as_str().unwrap_or("?").to_string()
            } else {
                format!("missing: {}", a["problem"].as_str().unwrap_or("?"))
            };
            by_identity.entry(id).or_default().push(node);
        }
        let ok = by_identity.len() == 1 && !by_identity.keys().any(|k| k.starts_with("missing"));
        let detail = by_identity
            .iter()
            .map(|(id, nodes)| format!("{}: {id}", nodes.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        check(
            out,
            format!("agent {agent} is the same on every node"),
            ok,
            if ok {
                detail
            } else {
                format!("{detail}; install the same file on every node (baton agent install)")
            },
        );
    }
}

/// `baton scenario validate`: HTTPS trusting `ca_file`, else the scenario's
/// `[cluster.tls]` CA, else plain HTTP where the scenario says `plain`.
pub fn run(
    path: &Path,
    token_file: Option<&Path>,
    ca_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let scenario = crate::design::scenario::load(path)?;
    let token = token_file.map(read_token).transpose()?;
    let timeout = Duration::from_secs(30);
    let client = match ca_file {
        Some(ca) => Client::new(Some(ca), timeout),
        None => Client::for_section(scenario.cluster().cluster.tls.as_ref(), timeout),
    }
    .context("--ca-file (or the scenario's cluster.tls.ca_file)")?;
    let results = checks(&scenario, token.as_deref(), &client);
    let failed = results.iter().filter(|c| !c.ok).count();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": failed == 0, "checks": results})
        );
    } else {
        println!(
            "validate {}: {} nodes, against config {:016x}",
            path.display(),
            scenario.cluster().nodes.len(),
            scenario.cluster().fingerprint
        );
        for c in &results {
            println!(
                "  {}  {}: {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.check,
                c.detail
            );
        }
        println!("{} passed, {failed} failed", results.len() - failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_check_passes_without_two_nodes_that_answered() {
        let run = |answers: &BTreeMap<String, Value>| {
            let mut out = Vec::new();
            keys(&mut out, answers);
            out.remove(0)
        };
        let none = run(&BTreeMap::new());
        assert!(
            !none.ok && none.detail.starts_with("0 node(s) answered"),
            "{}",
            none.detail
        );
        let one: BTreeMap<String, Value> =
            [("n1".to_string(), serde_json::json!({"key": "ab12"}))].into();
        assert!(!run(&one).ok);
        let mut two = one.clone();
        two.insert("n2".into(), serde_json::json!({"key": "ab12"}));
        let same = run(&two);
        assert!(same.ok, "{}", same.detail);
        two.insert("n3".into(), serde_json::json!({"key": "cd34"}));
        let differ = run(&two);
        assert!(!differ.ok && differ.detail.ends_with("copy one key_file to every node"));
    }
}
