//! Fault scripts for the simulator (`baton scenario simulate --fault`): steps
//! separated by `;` or new lines, each naming nodes and services by name.
//!
//! ```text
//! kill n1; wait 5s; start n1; stop n2; wait 3s; start n2; cut n2 link 0;
//! cut n1 n3; cut n1->n2 link 1; isolate n3; heal; pause n2 300ms;
//! freeze n3 2s; fail web on n1 move; hang web on n2; break web on n3;
//! unhealthy n2;
//! healthy n2; witness lost n1; witness lost; witness back;
//! move web to n2 for 10m; standby n1; unstandby n1; maintenance web;
//! release web; weather loss 5% dup 1% delay 10ms
//! ```

use super::membership::Millis;
use super::sim::Fault;
use super::wire::NodeId;
use baton_plugin_api::Recovery;
use std::collections::BTreeMap;
use std::time::Duration;

/// Every step a script may use, for error messages.
pub const STEPS: &str = "kill N, stop N, start N, isolate N, cut N link L, cut A B [link L], cut A->B [link L], heal, pause N DURATION, freeze N DURATION, fail SERVICE on N [restart|move|stop-everywhere|fence], hang SERVICE on N [once], break SERVICE on N, unhealthy N, healthy N, witness lost [N], witness back, move SERVICE to N [for DURATION], standby N, unstandby N, maintenance SERVICE, release SERVICE, weather loss P% dup P% delay DURATION, wait DURATION";

/// Parse a duration: `90s`, `10m`, `2h`, `500ms`, `1d` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 90s, 10m, 2h or 500ms"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(ms)
        .filter(|v| *v < u64::from(u32::MAX))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long; at most 49 days"))
}

/// Names of the cluster's nodes and services, for parsing.
pub struct Names<'a> {
    /// Node name → id.
    pub nodes: &'a BTreeMap<String, NodeId>,
    /// Service names in index order.
    pub services: &'a [String],
    /// Links per node.
    pub links: usize,
}

impl Names<'_> {
    fn node(&self, word: &str) -> Result<NodeId, String> {
        self.nodes.get(word).copied().ok_or_else(|| {
            format!(
                "{word:?} is not a node (nodes: {})",
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn service(&self, word: &str) -> Result<usize, String> {
        self.services.iter().position(|s| s == word).ok_or_else(|| {
            format!(
                "{word:?} is not a service (services: {})",
                self.services.join(", ")
            )
        })
    }

    fn link(&self, word: &str) -> Result<u8, String> {
        word.parse::<u8>()
            .ok()
            .filter(|l| usize::from(*l) < self.links)
            .ok_or_else(|| {
                format!(
                    "link {word:?}: the links are numbered 0 to {}",
                    self.links.saturating_sub(1)
                )
            })
    }
}

fn ms(text: &str) -> Result<Millis, String> {
    parse_duration(text).map(|d| d.as_millis() as Millis)
}

fn percent(text: &str) -> Result<u64, String> {
    text.strip_suffix('%')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= 100)
        .ok_or_else(|| format!("{text:?} is not a percentage; write e.g. 5%"))
}

/// A script's steps as written: split at `;` and new lines, trimmed, without
/// empty steps and `#` comments.
pub fn steps(script: &str) -> impl Iterator<Item = &str> {
    script
        .split([';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
}

/// Parse a whole script; an error names the step by number and text, what is
/// wrong, and the steps there are.
pub fn parse(script: &str, names: &Names) -> Result<Vec<Fault>, String> {
    steps(script)
        .enumerate()
        .map(|(i, step)| {
            parse_step(step, names)
                .map_err(|e| format!("fault script, step {} ({step:?}): {e}", i + 1))
        })
        .collect()
}

fn parse_step(step: &str, names: &Names) -> Result<Fault, String> {
    let words: Vec<&str> = step.split_whitespace().collect();
    let fault = match words.as_slice() {
        ["kill", n] => Fault::Kill(names.node(n)?),
        ["stop", n] => Fault::Stop(names.node(n)?),
        ["start", n] => Fault::Start(names.node(n)?),
        ["isolate", n] => Fault::Isolate(names.node(n)?),
        ["cut", pair, rest @ ..] if pair.contains("->") => {
            let (a, b) = pair.split_once("->").unwrap_or_default();
            Fault::Cut {
                from: names.node(a)?,
                to: names.node(b)?,
                link: link_suffix(rest, names)?,
                both: false,
            }
        }
        ["cut", n, "link", l] => Fault::CutLink(names.node(n)?, names.link(l)?),
        ["cut", a, b, rest @ ..] => Fault::Cut {
            from: names.node(a)?,
            to: names.node(b)?,
            link: link_suffix(rest, names)?,
            both: true,
        },
        ["heal"] => Fault::Heal,
        ["pause", n, d] => Fault::Pause(names.node(n)?, ms(d)?),
        ["freeze", n, d] => Fault::Freeze(names.node(n)?, ms(d)?),
        ["hang", s, "on", n] => Fault::Hang(names.service(s)?, names.node(n)?, false),
        ["hang", s, "on", n, "once"] => Fault::Hang(names.service(s)?, names.node(n)?, true),
        ["break", s, "on", n] => Fault::Break(names.service(s)?, names.node(n)?),
        ["fail", s, "on", n, rest @ ..] => {
            let recovery = match rest {
                [] | ["restart"] => Recovery::RestartHere,
                ["move"] => Recovery::Move,
                ["stop-everywhere"] => Recovery::StopEverywhere,
                ["fence"] => Recovery::Fence,
                _ => {
                    return Err(
                        "the recovery is restart (the default), move, stop-everywhere or fence"
                            .into(),
                    );
                }
            };
            Fault::Fail(names.service(s)?, names.node(n)?, recovery)
        }
        ["unhealthy", n] => Fault::Health(names.node(n)?, false),
        ["healthy", n] => Fault::Health(names.node(n)?, true),
        ["witness", "lost"] => Fault::WitnessLost(None),
        ["witness", "lost", n] => Fault::WitnessLost(Some(names.node(n)?)),
        ["witness", "back"] => Fault::WitnessBack,
        ["standby", n] => Fault::Standby(names.node(n)?, true),
        ["unstandby", n] => Fault::Standby(names.node(n)?, false),
        ["maintenance", s] => Fault::Maintenance(names.service(s)?, true),
        ["release", s] => Fault::Maintenance(names.service(s)?, false),
        ["move", s, "to", n] => Fault::Move(names.service(s)?, names.node(n)?, None),
        ["move", s, "to", n, "for", d] => {
            Fault::Move(names.service(s)?, names.node(n)?, Some(ms(d)?))
        }
        ["weather", "loss", l, "dup", d, "delay", t] => {
            Fault::Weather(percent(l)?, percent(d)?, ms(t)?)
        }
        ["wait", d] => Fault::Wait(ms(d)?),
        _ => return Err(format!("not a step; the steps are: {STEPS}")),
    };
    if let Fault::Cut { from, to, .. } = fault
        && from == to
    {
        return Err("a node cannot be cut from itself; name two nodes".into());
    }
    Ok(fault)
}

fn link_suffix(rest: &[&str], names: &Names) -> Result<Option<u8>, String> {
    match rest {
        [] => Ok(None),
        ["link", l] => names.link(l).map(Some),
        _ => Err("after the nodes comes nothing (every link) or `link L`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (BTreeMap<String, NodeId>, Vec<String>) {
        (
            [
                ("n1".to_string(), 1),
                ("n2".to_string(), 2),
                ("n3".to_string(), 3),
            ]
            .into(),
            vec!["web".to_string(), "db".to_string()],
        )
    }

    #[test]
    fn every_step_parses() {
        let (nodes, services) = names();
        let n = Names {
            nodes: &nodes,
            services: &services,
            links: 2,
        };
        let script = "kill n1; wait 5s\nstart n1; cut n2 link 0; cut n1 n3; cut n1->n2 link 1;\
             isolate n3; heal; pause n2 300ms; fail db on n1 move; unhealthy n2; healthy n2;\
             witness lost n1; witness lost; witness back; move web to n2 for 10m;\
             weather loss 5% dup 1% delay 10ms; stop n3; freeze n1 2s; hang web on n2;\
             break db on n1 # a comment";
        let faults = parse(&script.replace(" # a comment", ""), &n).unwrap();
        assert_eq!(faults.len(), 21);
        assert_eq!(faults[0], Fault::Kill(1));
        assert_eq!(faults[1], Fault::Wait(5000));
        assert_eq!(faults[3], Fault::CutLink(2, 0));
        assert_eq!(
            faults[5],
            Fault::Cut {
                from: 1,
                to: 2,
                link: Some(1),
                both: false
            }
        );
        assert_eq!(faults[9], Fault::Fail(1, 1, Recovery::Move));
        assert_eq!(faults[15], Fault::Move(0, 2, Some(600_000)));
        assert_eq!(faults[17], Fault::Stop(3));
        assert_eq!(faults[18], Fault::Freeze(1, 2000));
        assert_eq!(faults[19], Fault::Hang(0, 2, false));
        assert_eq!(faults[20], Fault::Break(1, 1));
    }

    #[test]
    fn a_typo_names_the_step_and_the_fix() {
        let (nodes, services) = names();
        let n = Names {
            nodes: &nodes,
            services: &services,
            links: 2,
        };
        let e = parse("kill n1; cut n2 lnk 0", &n).unwrap_err();
        assert!(
            e.starts_with("fault script, step 2 (\"cut n2 lnk 0\"): "),
            "{e}"
        );
        assert!(e.contains("\"lnk\" is not a node"), "{e}");
        let e = parse("kil n1", &n).unwrap_err();
        assert!(e.contains("not a step; the steps are: kill N"), "{e}");
        let e = parse("cut n1 link 2", &n).unwrap_err();
        assert!(e.contains("numbered 0 to 1"), "{e}");
        let e = parse("fail mail on n1", &n).unwrap_err();
        assert!(
            e.contains("\"mail\" is not a service (services: web, db)"),
            "{e}"
        );
        let e = parse("wait soon", &n).unwrap_err();
        assert!(e.contains("e.g. 90s"), "{e}");
    }
}
