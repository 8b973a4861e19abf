//! Health checks that take part in quorum. Quorum says a partition may run
//! services; it cannot say whether clients can reach them. A node cut off from
//! its service LAN still reaches the witness's storage, and without this it
//! would keep the witness and the service where no client reaches it. Each
//! node checks what its clients need (the service LAN's gateway by ARP, a
//! backend by TCP) on a thread of its own; a node that fails `fail_after`
//! rounds in a row is unhealthy until it passes `recover_after` rounds in a row
//! (so a flapping check changes state slowly), and an unhealthy node has no
//! quorum of its own (see `ClusterNode::set_healthy`).

use crate::cluster::config::{Check, HealthSection};
use crate::node::status::{CheckStatus, HealthStatus};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Run one check within `timeout`.
fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    match check {
        Check::Tcp(target) => {
            let addr: SocketAddr = target
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("resolves to nothing")?;
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Check::Arp(ip) => match baton_agents::arp_answer(*ip, timeout) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("no ARP answer within {} ms", timeout.as_millis())),
            Err(e) => Err(e),
        },
    }
}

/// The node's health, for the daemon's loop and status.
#[derive(Clone, Debug)]
pub struct Health {
    /// Whether the node counts as healthy (after hysteresis).
    pub healthy: bool,
    /// Each check's latest result.
    pub checks: Vec<CheckStatus>,
    /// When the last round in which every check passed began.
    pub last_pass: Option<std::time::Instant>,
}

impl Health {
    /// What status shows of it.
    pub fn status(&self) -> HealthStatus {
        HealthStatus {
            healthy: self.healthy,
            checks: self.checks.clone(),
        }
    }
}

/// Start the checks of `section` on a thread; the returned state is updated
/// after every round.
pub fn start(section: &HealthSection) -> Arc<Mutex<Health>> {
    let checks: Vec<(String, Check)> = section
        .checks
        .iter()
        .filter_map(|c| Check::parse(c).ok().map(|k| (c.clone(), k)))
        .collect();
    let state = Arc::new(Mutex::new(Health {
        healthy: true,
        checks: Vec::new(),
        last_pass: None,
    }));
    let shared = Arc::clone(&state);
    let (interval, timeout) = (
        Duration::from_millis(section.interval_ms),
        Duration::from_millis(section.timeout_ms),
    );
    let (fail_after, recover_after) = (section.fail_after, section.recover_after);
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let (mut failed, mut passed) = (0u32, 0u32);
            let mut healthy = true;
            let mut last_pass = None;
            loop {
                let round = std::time::Instant::now();
                let results: Vec<CheckStatus> = checks
                    .iter()
                    .map(|(text, c)| {
                        let r = run(c, timeout);
                        CheckStatus {
                            check: text.clone(),
                            ok: r.is_ok(),
                            detail: r.err(),
                        }
                    })
                    .collect();
                if results.iter().all(|r| r.ok) {
                    (failed, passed) = (0, passed + 1);
                    last_pass = Some(round);
                } else {
                    (failed, passed) = (failed + 1, 0);
                }
                let was = healthy;
                healthy = if healthy {
                    failed < fail_after
                } else {
                    passed >= recover_after
                };
                if was != healthy {
                    let why: Vec<String> = results
                        .iter()
                        .filter_map(|r| r.detail.as_ref().map(|d| format!("{}: {d}", r.check)))
                        .collect();
                    if healthy {
                        tracing::info!("health checks pass again: this node may hold services");
                    } else {
                        tracing::warn!(
                            "health checks fail ({}): this node gives up its services and the witness",
                            why.join("; ")
                        );
                    }
                }
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Health {
                    healthy,
                    checks: results,
                    last_pass,
                };
                std::thread::sleep(interval);
            }
        })
        .expect("spawning the health thread");
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_or_say_how_to_write_them() {
        assert_eq!(
            Check::parse("arp:198.18.2.1").unwrap(),
            Check::Arp([198, 18, 2, 1].into())
        );
        assert_eq!(
            Check::parse("tcp:198.18.2.1:80").unwrap(),
            Check::Tcp("198.18.2.1:80".into())
        );
        assert!(
            Check::parse("tcp:198.18.2.1")
                .unwrap_err()
                .contains("tcp:HOST:PORT")
        );
        assert!(
            Check::parse("arp:gateway")
                .unwrap_err()
                .contains("arp:IPV4")
        );
        assert!(
            Check::parse("ping:x")
                .unwrap_err()
                .contains("tcp:HOST:PORT or arp:IPV4")
        );
    }
}
