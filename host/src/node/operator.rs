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
        ControlRequest::Refused { why } => Err(why.clone()),
    }
}
