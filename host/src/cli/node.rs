//! The commands that talk to a running node: `status`, `history`, `move`,
//! `promote`, `clear`.

use crate::node::control::ControlRequest;
use crate::node::status::{ServiceStatus, Status};
use anyhow::Context;
use std::process::ExitCode;

/// Send `req` to the daemon at `socket`; print its answer.
pub fn control_command(
    socket: &std::path::Path,
    req: &ControlRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reply = crate::node::control::ask(socket, req)?;
    control_reply(&reply, json)
}

/// Print a daemon's reply; exit 1 if it refused.
fn control_reply(
    reply: &crate::node::control::ControlReply,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(reply)?);
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

/// `baton drain [NODE]`: put the node in standby, then wait (up to `limit`)
/// until no service is held there, saying what it waits for.
pub fn drain(
    socket: &std::path::Path,
    node: Option<&str>,
    limit: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let standby = ControlRequest::Standby {
        node: node.map(str::to_owned),
        on: true,
    };
    let reply = crate::node::control::ask(socket, &standby)?;
    if !reply.ok {
        eprintln!("refused: {}", reply.message);
        return Ok(ExitCode::from(1));
    }
    if !json {
        println!("{}", reply.message);
    }
    let mut said = String::new();
    loop {
        let st = crate::node::control::ask(socket, &ControlRequest::Status)?
            .status
            .context("the daemon gave no status")?;
        let name = node.map_or_else(|| st.node.clone(), str::to_owned);
        let held: Vec<String> = st
            .services
            .iter()
            .filter(|s| s.holders.contains(&name))
            .map(|s| s.name.clone())
            .collect();
        let waited = start.elapsed();
        if held.is_empty() {
            if json {
                let done = serde_json::json!({"node": name, "drained": true, "waited_ms": waited.as_millis() as u64});
                println!("{done}");
            } else {
                println!(
                    "{name} holds nothing (after {:.1} s): it may be stopped or upgraded; `baton unstandby {name}` when it is back",
                    waited.as_secs_f64()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if waited >= limit {
            let text = format!(
                "{name} still holds {} after {} s; it stays in standby (see `baton status` for why)",
                held.join(", "),
                limit.as_secs()
            );
            if json {
                let left = serde_json::json!({"node": name, "drained": false, "holds": held, "message": text});
                println!("{left}");
            } else {
                eprintln!("{text}");
            }
            return Ok(ExitCode::from(1));
        }
        let now = format!("waiting for {name} to stop {}", held.join(", "));
        if now != said && !json {
            println!("{now}");
            said = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `baton reload [--dry-run] [--wait DURATION]`: stage the config file on
/// the daemon (or only show the plan); with `wait`, then wait (up to it) until
/// this node and every member run it, saying what it waits for.
pub fn reload(
    socket: &std::path::Path,
    dry_run: bool,
    wait: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reply = crate::node::control::ask(socket, &ControlRequest::Reload { dry_run })?;
    let staged = reply.ok && reply.plan.as_ref().is_some_and(|p| p["staged"] == true);
    let Some(limit) = wait.filter(|_| staged) else {
        return control_reply(&reply, json);
    };
    if !json {
        println!("{}", reply.message);
    }
    let want = reply
        .plan
        .as_ref()
        .map(|p| p["config"].clone())
        .unwrap_or_default();
    let start = std::time::Instant::now();
    let mut said = String::new();
    loop {
        let st = crate::node::control::ask(socket, &ControlRequest::Status)?
            .status
            .context("the daemon gave no status")?;
        let waited = start.elapsed();
        if want.as_str() == Some(st.config.as_str()) && st.reload.is_none() {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"plan": reply.plan, "switched": true, "waited_ms": waited.as_millis() as u64})
                );
            } else {
                println!(
                    "switched to config {} (after {:.1} s)",
                    st.config,
                    waited.as_secs_f64()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let now = st
            .reload
            .clone()
            .unwrap_or_else(|| format!("running config {}; the staged one was dropped", st.config));
        if waited >= limit || (st.reload.is_none() && want.as_str() != Some(st.config.as_str())) {
            let text = format!("not switched after {} s: {now}", waited.as_secs());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"plan": reply.plan, "switched": false, "message": text})
                );
            } else {
                eprintln!("{text}");
            }
            return Ok(ExitCode::from(1));
        }
        if now != said && !json {
            println!("{now}");
            said = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `baton status --status-file FILE`.
pub fn status_from_file(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
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

/// Print a node's status, for people or as JSON.
pub fn print_status(s: &Status, json: bool) -> anyhow::Result<ExitCode> {
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
    if !s.standby.is_empty() {
        println!(
            "standby (runs nothing until `baton unstandby NODE`): {}",
            s.standby.join(", ")
        );
    }
    if s.wire.cluster != 0 && s.wire.cluster < s.wire.newest {
        let peers: Vec<String> = s
            .wire
            .peers
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        println!(
            "wire: the cluster speaks version {} (this node {}; {}): an upgrade is under way",
            s.wire.cluster,
            s.wire.speaks,
            peers.join(", ")
        );
    }
    for refused in &s.wire.refused {
        println!("WARNING: {refused}");
    }
    for other in &s.other_configs {
        println!("WARNING: {other}");
    }
    if let Some(reload) = &s.reload {
        println!("reload: {reload}");
    }
    if let Some(tls) = &s.tls {
        match &tls.warning {
            Some(w) => println!("WARNING: {w}"),
            None => println!(
                "tls: {} valid until {}",
                tls.cert_file,
                crate::node::tls::date(tls.not_after)
            ),
        }
    }
    print_dropped(s);
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
            "WARNING: link {} to {} is {}",
            l.link,
            l.peer,
            down_for(s.uptime_ms, l.since_ms, crate::node::history::unix_ms())
        );
    }
}

/// How long a link has been down, from the daemon's clock (`since_ms` and
/// `uptime_ms` are both ms since it started), and since when on the wall clock:
/// "down for 25 s (since 2026-12-07 23:01:02.000)"; a link never up since the
/// daemon started says so.
fn down_for(uptime_ms: u64, since_ms: u64, now_unix_ms: u64) -> String {
    let for_ms = uptime_ms.saturating_sub(since_ms);
    let at = crate::node::history::local_time(now_unix_ms.saturating_sub(for_ms));
    if since_ms == 0 {
        format!(
            "down, never up since this daemon started {} s ago ({at})",
            for_ms / 1000
        )
    } else {
        format!("down for {} s (since {at})", for_ms / 1000)
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

/// Packets dropped, by cause, with what each cause usually means (a wrong
/// key or another cluster's packets look like a link down otherwise). Replays
/// and old incarnations are normal after a restart and are not warned of.
fn print_dropped(s: &Status) {
    for line in dropped_lines(s) {
        println!("{line}");
    }
}

/// A cause of drops is warned of while packets of it arrived in the last
/// minute; older ones are only mentioned (the problem was fixed, or went away).
const DROPS_RECENT_MS: u64 = 60_000;

fn dropped_lines(s: &Status) -> Vec<String> {
    let mut lines = Vec::new();
    for (cause, count) in &s.dropped {
        let means = match cause.as_str() {
            "bad-tag" => {
                "a node with another key_file, or forged packets: copy one key_file to every node"
            }
            "other-cluster" => "packets of another cluster (another cluster.name) on these links",
            "unsupported-version" => "a node running another wire version of baton",
            "unknown-sender" => "a node or link this config does not list",
            "replay" | "stale" => continue,
            _ => "packets that are not baton heartbeats",
        };
        let ago = s
            .dropped_last_ms
            .get(cause)
            .map(|at| s.uptime_ms.saturating_sub(*at));
        lines.push(match ago {
            Some(ago) if ago >= DROPS_RECENT_MS => format!(
                "{count} packets dropped ({cause}) since this daemon started, the last {} s ago: {means}",
                ago / 1000
            ),
            _ => format!("WARNING: {count} packets dropped ({cause}): {means}"),
        });
    }
    lines
}

fn print_service(svc: &ServiceStatus) {
    println!(
        "service {}: {} here; owner {}: {}",
        svc.name,
        svc.here,
        svc.owner.as_deref().unwrap_or("none"),
        svc.why
    );
    if svc.maintenance {
        println!(
            "  in maintenance: not monitored or managed until `baton maintenance {} --off`",
            svc.name
        );
    }
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
        println!(
            "  failures here: {}{}",
            svc.failures,
            svc.last_failure
                .as_deref()
                .map(|f| format!("; last: {f}"))
                .unwrap_or_default()
        );
    }
    for r in &svc.resources {
        println!("  {} ({}): {}", r.name, r.agent, r.state);
    }
}

/// `baton history`: the events of the history at `path`, as a table or JSON.
pub fn print_history(
    path: &std::path::Path,
    since: Option<&str>,
    service: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since_ms = since
        .map(crate::node::control::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since {e}"))?
        .map(|d| crate::node::history::unix_ms().saturating_sub(d.as_millis() as u64));
    let events = crate::node::history::read(path, since_ms, service)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &events {
        println!(
            "{} {} {:<10} {}{}",
            crate::node::history::local_time(e.at_ms),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_packets_say_what_they_usually_mean_and_replays_are_quiet() {
        let mut s = Status {
            dropped: [("bad-tag".to_string(), 12), ("replay".to_string(), 3)].into(),
            dropped_last_ms: [("bad-tag".to_string(), 100_000)].into(),
            uptime_ms: 130_000,
            ..Status::default()
        };
        assert_eq!(
            dropped_lines(&s),
            [
                "WARNING: 12 packets dropped (bad-tag): a node with another key_file, or forged packets: copy one key_file to every node"
            ]
        );
        // Fixed a while ago: mentioned, not warned of.
        s.uptime_ms = 200_000;
        assert_eq!(
            dropped_lines(&s),
            [
                "12 packets dropped (bad-tag) since this daemon started, the last 100 s ago: a node with another key_file, or forged packets: copy one key_file to every node"
            ]
        );
    }

    #[test]
    fn a_down_link_says_for_how_long_and_since_when() {
        let now = 1_796_619_000_000;
        let said = down_for(338_640, 313_640, now);
        assert!(said.starts_with("down for 25 s (since "), "{said}");
        assert!(
            said.contains(&crate::node::history::local_time(now - 25_000)),
            "{said}"
        );
        let never = down_for(4_000, 0, now);
        assert!(
            never.starts_with("down, never up since this daemon started 4 s ago"),
            "{never}"
        );
    }
}
