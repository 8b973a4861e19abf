//! Operators' requests (`baton move`, `promote`, `clear`, and the console's
//! actions) carried out on a node's driver: what was done, in words, or why
//! not.

use crate::cluster::config::ClusterConfig;
use crate::cluster::driver::{Driver, NodeIo};
use crate::node::control::ControlRequest;
use crate::node::daemon::service_index;

/// Carry out `req` on `driver`: a message saying what was done, or why not.
pub fn carry_out(
    driver: &mut Driver,
    io: &mut impl NodeIo,
    req: &ControlRequest,
    cluster: &ClusterConfig,
) -> Result<String, String> {
    let now = io.now();
    let node_id = |name: &str| {
        cluster
            .node(name)
            .map(|n| n.id)
            .ok_or_else(|| format!("no node is named {name:?}"))
    };
    match req {
        ControlRequest::Status => Ok(String::new()),
        ControlRequest::Reload { .. } => Err("a reload is the daemon's own".into()),
        ControlRequest::Move {
            service,
            to,
            for_ms,
        } => {
            let i = service_index(cluster, service)?;
            driver.move_service(i, node_id(to)?, for_ms.map(|d| now + d), false)?;
            Ok(match for_ms {
                Some(d) => format!(
                    "moving {service} to {to} for {} s; it returns to normal placement after that",
                    d / 1000
                ),
                None => format!(
                    "moving {service} to {to} until `baton move {service} --clear` or {to} leaves"
                ),
            })
        }
        ControlRequest::Promote { service, on, force } => {
            let i = service_index(cluster, service)?;
            if cluster.services[i].strategy != "promotable" {
                return Err(format!(
                    "{service} is not promotable (strategy {}); use `baton move {service} --to {on}`",
                    cluster.services[i].strategy
                ));
            }
            driver.move_service(i, node_id(on)?, None, *force)?;
            Ok(if *force {
                format!(
                    "promoting {service} on {on}, forced: writes acknowledged beyond its replica's position are lost"
                )
            } else {
                format!(
                    "promoting {service} on {on} once its replica holds every acknowledged write; `baton status` shows why it waits"
                )
            })
        }
        ControlRequest::Unmove { service } => {
            let i = service_index(cluster, service)?;
            let moves = driver.node().active_moves(now);
            let me = driver.node().membership().me();
            match moves.iter().find(|m| m.service == i) {
                Some(m) if m.issuer == me => {
                    driver.clear_move(i);
                    Ok(format!("{service}: move cleared"))
                }
                Some(m) => Err(format!(
                    "the move of {service} was taken on {}; clear it there",
                    cluster
                        .nodes
                        .iter()
                        .find(|n| n.id == m.issuer)
                        .map_or("?", |n| n.name.as_str())
                )),
                None => Err(format!("{service} has no move in effect")),
            }
        }
        ControlRequest::Clear { service } => {
            let i = service_index(cluster, service)?;
            driver.clear(io, i);
            Ok(format!(
                "{service}: failures, ban and block on this node cleared"
            ))
        }
        ControlRequest::Standby { node, on } => {
            let me = driver.node().membership().me();
            let id = match node {
                Some(name) => node_id(name)?,
                None => me,
            };
            let name = crate::cluster::changes::name_of(
                &cluster
                    .nodes
                    .iter()
                    .map(|n| (n.id, n.name.clone()))
                    .collect(),
                id,
            );
            let bit = 1u64 << (id - 1);
            let already = driver.node().admin().in_standby(id) == *on;
            driver.change_admin(crate::node::history::unix_ms(), |a| {
                a.standby = if *on {
                    a.standby | bit
                } else {
                    a.standby & !bit
                }
            });
            Ok(match (on, already) {
                (true, false) => format!(
                    "{name} in standby: its services move off and it runs nothing until `baton unstandby {name}`"
                ),
                (true, true) => format!("{name} was in standby already"),
                (false, false) => {
                    format!("{name} out of standby: it runs services again as placement says")
                }
                (false, true) => format!("{name} was not in standby"),
            })
        }
        ControlRequest::Maintenance { service, on } => {
            let i = service_index(cluster, service)?;
            let bit = 1u64 << i;
            driver.change_admin(crate::node::history::unix_ms(), |a| {
                a.maintenance = if *on {
                    a.maintenance | bit
                } else {
                    a.maintenance & !bit
                }
            });
            Ok(if *on {
                format!(
                    "{service} in maintenance on every node: baton neither monitors, starts nor stops it until `baton maintenance {service} --off`"
                )
            } else {
                format!(
                    "{service} released: the nodes that do not run it stop it once (ending anything started there by hand), the one that does monitors it again"
                )
            })
        }
        ControlRequest::Refused { why } => Err(why.clone()),
    }
}
