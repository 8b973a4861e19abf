//! `ipaddr`: a virtual address that clients connect to and that moves with its
//! service.
//!
//! start: find the interface (the `interface` parameter, else the one the kernel
//! routes the address through), refuse when another host already answers for the
//! address (ARP probe for IPv4, the kernel's duplicate address detection for
//! IPv6), add it through netlink, wait until the kernel reports it usable, then
//! announce it (gratuitous ARP / unsolicited neighbour advertisement) so clients
//! update their caches at once. An address added before a failure is removed
//! again. stop: remove it; succeed when it is absent. monitor: present on an
//! interface that is up with carrier; `not-running` only when the kernel says it
//! is on no interface.

use crate::announce::{self, mac_text};
use crate::netlink::{Address, Link, Netlink};
use crate::reading::{required, text, whole};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

inventory::submit! {
    crate::BuiltinAgent { name: "ipaddr", build: || Box::new(IpAddrAgent::default()) }
}

/// Probe rounds before an address is refused: a holder must answer every one.
const PROBE_ROUNDS: usize = 3;

/// The `ipaddr` agent.
#[derive(Default)]
pub struct IpAddrAgent {
    /// The running announcers, by address: stop cancels its address's, so an
    /// address that left this node is never announced from here again.
    announcers: Mutex<HashMap<IpAddr, Arc<AtomicBool>>>,
}

/// The checked parameters of one `ipaddr` resource.
#[derive(Debug)]
struct Settings {
    ip: IpAddr,
    prefix: u8,
    interface: Option<String>,
    label: Option<String>,
    arp_count: u32,
    arp_interval: Duration,
    probe: Duration,
}

/// Parse `ADDRESS/PREFIX` (IPv4 or IPv6).
fn parse_address(raw: &str) -> Result<(IpAddr, u8), AgentError> {
    let raw = raw.trim();
    let (ip, prefix) = match raw.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (raw, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        AgentError::misconfigured(format!(
            "address: {ip} is not an IPv4 or IPv6 address (write it as 198.18.2.100/24 or 2001:db8::64/64)"
        ))
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let Some(prefix) = prefix else {
        return Err(AgentError::misconfigured(format!(
            "address: {ip} has no prefix length; write it as {ip}/{} with the prefix of its subnet",
            if ip.is_ipv4() { 24 } else { 64 }
        )));
    };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Ok((ip, p)),
        _ => Err(AgentError::misconfigured(format!(
            "address: prefix length {prefix:?} of {ip} is not a number from 0 to {max}"
        ))),
    }
}

fn io_error(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> AgentError {
    move |e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            AgentError::permission(format!(
                "{what}: {e} (managing addresses needs CAP_NET_ADMIN and CAP_NET_RAW: run baton as root)"
            ))
        } else {
            AgentError::generic(format!("{what}: {e}"))
        }
    }
}

impl IpAddrAgent {
    fn settings(&self, req: &Request) -> Result<Settings, AgentError> {
        let meta = self.metadata();
        let (ip, prefix) = parse_address(required(&meta, req, "address")?)?;
        let interface = text(&meta, req, "interface").map(str::to_owned);
        if let Some(name) = &interface
            && (name.len() > 15 || name.contains(['/', ' ', ':']))
        {
            return Err(AgentError::misconfigured(format!(
                "interface: {name:?} is not an interface name (at most 15 characters, no '/', ':' or spaces)"
            )));
        }
        let label = text(&meta, req, "label").map(str::to_owned);
        if let Some(label) = &label {
            if ip.is_ipv6() {
                return Err(AgentError::misconfigured(format!(
                    "label: IPv6 addresses have no label in Linux; remove label = {label:?}"
                )));
            }
            if label.len() > 15 {
                return Err(AgentError::misconfigured(format!(
                    "label: {label:?} is longer than the kernel's 15 characters"
                )));
            }
        }
        Ok(Settings {
            ip,
            prefix,
            interface,
            label,
            arp_count: whole(&meta, req, "arp_count", Some(100))? as u32,
            arp_interval: Duration::from_millis(whole(
                &meta,
                req,
                "arp_interval_ms",
                Some(60_000),
            )?),
            probe: Duration::from_millis(whole(&meta, req, "probe_ms", Some(10_000))?),
        })
    }

    /// The interface the address belongs on here.
    fn interface(&self, nl: &mut Netlink, s: &Settings, req: &Request) -> Result<Link, AgentError> {
        let io = io_error("netlink");
        if let Some(name) = &s.interface {
            return nl.link_by_name(name).map_err(&io)?.ok_or_else(|| {
                let names: Vec<String> = nl
                    .links()
                    .map(|ls| ls.into_iter().map(|l| l.name).collect())
                    .unwrap_or_default();
                AgentError::invalid_args(format!(
                    "interface: no interface {name} on node {} (it has {}); set interface to one of them",
                    req.context.node,
                    names.join(", ")
                ))
            });
        }
        if let Some(here) = nl.find(s.ip).map_err(&io)?
            && let Some(link) = nl.link_by_index(here.index).map_err(&io)?
        {
            return Ok(link);
        }
        let index = nl.route_interface(s.ip).map_err(|e| {
            AgentError::invalid_args(format!(
                "address {}: no route to it on node {} ({e}); set interface",
                s.ip, req.context.node
            ))
        })?;
        let link = match index {
            Some(i) => nl.link_by_index(i).map_err(&io)?,
            None => None,
        };
        match link {
            Some(l) if !l.loopback => Ok(l),
            _ => Err(AgentError::invalid_args(format!(
                "address {}: no interface of node {} has a route to it; set interface",
                s.ip, req.context.node
            ))),
        }
    }

    /// The label as the kernel wants it: it must start with the interface name.
    fn label(s: &Settings, link: &Link) -> Option<String> {
        let label = s.label.as_deref()?;
        if label.starts_with(&link.name) {
            Some(label.to_owned())
        } else {
            let full = format!("{}:{label}", link.name);
            Some(full.chars().take(15).collect())
        }
    }

    fn usable(link: &Link) -> Result<(), AgentError> {
        if !link.up {
            return Err(AgentError::generic(format!(
                "interface {} is down (administratively)",
                link.name
            )));
        }
        if !link.carrier {
            return Err(AgentError::generic(format!(
                "interface {} has no carrier (cable, switch port or peer down)",
                link.name
            )));
        }
        Ok(())
    }

    /// Add the address and wait until the kernel reports it usable; on any
    /// failure after the add, remove it again.
    fn add(
        &self,
        nl: &mut Netlink,
        s: &Settings,
        link: &Link,
        deadline: Instant,
    ) -> Result<(), AgentError> {
        let label = Self::label(s, link);
        match nl.add(
            link.index,
            s.ip,
            s.prefix,
            label.as_deref(),
            s.probe.is_zero(),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => r.map_err(io_error(format!(
                "adding {}/{} to {}",
                s.ip, s.prefix, link.name
            )))?,
        }
        let settled = self.wait_settled(nl, s, link, deadline);
        if settled.is_err() {
            let _ = nl.delete(link.index, s.ip, s.prefix);
        }
        settled
    }

    fn wait_settled(
        &self,
        nl: &mut Netlink,
        s: &Settings,
        link: &Link,
        deadline: Instant,
    ) -> Result<(), AgentError> {
        loop {
            let found: Option<Address> = nl.find(s.ip).map_err(io_error("netlink"))?;
            match found {
                Some(a) if a.dad_failed => {
                    return Err(AgentError::generic(format!(
                        "{} is already used by another host on {} (IPv6 duplicate address detection failed); not adding it",
                        s.ip, link.name
                    )));
                }
                Some(a) if !a.tentative => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AgentError::generic(format!(
                    "the kernel did not report {} usable on {} before the start deadline",
                    s.ip, link.name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first announcement now; the rest from a background thread, so start
    /// returns as soon as clients can be told. The thread sends only while the
    /// address is still here and its resource was not stopped.
    fn announce(&self, s: &Settings, link: &Link) -> Result<(), AgentError> {
        let Some(mac) = link.mac else {
            return Ok(()); // no link layer to announce on (tun, loopback)
        };
        if s.arp_count == 0 {
            return Ok(());
        }
        announce::announce(link.index, mac, s.ip)
            .map_err(io_error(format!("announcing {} on {}", s.ip, link.name)))?;
        if s.arp_count == 1 {
            return Ok(());
        }
        let cancel = Arc::new(AtomicBool::new(false));
        if let Some(old) = self
            .announcers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s.ip, Arc::clone(&cancel))
        {
            old.store(true, Ordering::SeqCst);
        }
        let (index, ip, count, interval) = (link.index, s.ip, s.arp_count, s.arp_interval);
        std::thread::spawn(move || {
            for _ in 1..count {
                std::thread::sleep(interval);
                let here = Netlink::open()
                    .and_then(|mut nl| nl.find(ip))
                    .is_ok_and(|a| a.is_some_and(|a| a.index == index));
                if cancel.load(Ordering::SeqCst)
                    || !here
                    || announce::announce(index, mac, ip).is_err()
                {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Stop announcing `ip` (before it is removed).
    fn cancel_announcer(&self, ip: IpAddr) {
        if let Some(c) = self
            .announcers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip)
        {
            c.store(true, Ordering::SeqCst);
        }
    }
}

impl ResourceAgent for IpAddrAgent {
    fn metadata(&self) -> Metadata {
        let p = ParamSpec::new;
        Metadata {
            name: "ipaddr".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "A virtual IPv4 or IPv6 address that moves with its service".into(),
            longdesc: "Adds address to an interface through netlink after checking that no \
                       other host answers for it (ARP probe for IPv4, duplicate address \
                       detection for IPv6), then announces it with gratuitous ARP or \
                       unsolicited neighbour advertisements so clients follow at once. stop \
                       removes it. Needs CAP_NET_ADMIN and CAP_NET_RAW."
                .into(),
            parameters: vec![
                p(
                    "address",
                    ParamType::String,
                    true,
                    None,
                    "The address with its prefix length: 198.18.2.100/24 or 2001:db8::64/64",
                ),
                p(
                    "interface",
                    ParamType::String,
                    false,
                    None,
                    "Interface to add it to (default: the one the kernel routes the address through)",
                ),
                p(
                    "label",
                    ParamType::String,
                    false,
                    None,
                    "IPv4 label shown by `ip addr` (prefixed with the interface name when it is not)",
                ),
                p(
                    "arp_count",
                    ParamType::Integer,
                    false,
                    Some("5"),
                    "Announcements sent after start (gratuitous ARP / neighbour advertisements); 0 sends none",
                ),
                p(
                    "arp_interval_ms",
                    ParamType::Integer,
                    false,
                    Some("200"),
                    "Time between announcements; the first is sent before start returns",
                ),
                p(
                    "probe_ms",
                    ParamType::Integer,
                    false,
                    Some("20"),
                    "How long start listens for another holder of the address before adding it \
                     (an ARP reply on a LAN takes well under a millisecond); \
                     0 skips the check (and IPv6 duplicate address detection)",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 10_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 2_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        if req.depth > 0 {
            let mut nl = Netlink::open().map_err(io_error("netlink"))?;
            self.interface(&mut nl, &s, req)?;
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let deadline = Instant::now() + req.context.timeout();
        let s = self.settings(req)?;
        let mut nl = Netlink::open().map_err(io_error("netlink"))?;
        let link = self.interface(&mut nl, &s, req)?;
        if let Some(here) = nl.find(s.ip).map_err(io_error("netlink"))? {
            if here.index != link.index {
                return Err(AgentError::generic(format!(
                    "{} is already on another interface of this node (index {}), not on {}; remove it there",
                    s.ip, here.index, link.name
                )));
            }
            Self::usable(&link)?;
            return self.announce(&s, &link); // already here: start is idempotent
        }
        Self::usable(&link)?;
        if let (IpAddr::V4(v4), Some(mac)) = (s.ip, link.mac)
            && !s.probe.is_zero()
        {
            // A holder answers every probe. One that answered a round and then
            // stops answering (it was letting the address go) does not hold it:
            // refuse only when every round finds one.
            let mut holder = None;
            for _ in 0..PROBE_ROUNDS {
                holder = announce::probe_v4(link.index, mac, v4, s.probe)
                    .map_err(io_error(format!("ARP probe on {}", link.name)))?;
                if holder.is_none() || Instant::now() + s.probe >= deadline {
                    break;
                }
            }
            if let Some(other) = holder {
                return Err(AgentError::generic(format!(
                    "{} is already answered for by {} on {}: another host holds the address; not adding it",
                    s.ip,
                    mac_text(other),
                    link.name
                )));
            }
        }
        self.add(&mut nl, &s, &link, deadline)?;
        if let Err(e) = self.announce(&s, &link) {
            let _ = nl.delete(link.index, s.ip, s.prefix);
            return Err(e);
        }
        Ok(())
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        self.cancel_announcer(s.ip);
        let mut nl = Netlink::open().map_err(io_error("netlink"))?;
        let io = io_error("netlink");
        let Some(here) = nl.find(s.ip).map_err(&io)? else {
            return Ok(());
        };
        match nl.delete(here.index, s.ip, here.prefix) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            r => r.map_err(io_error(format!("removing {}", s.ip)))?,
        }
        match nl.find(s.ip).map_err(&io)? {
            None => Ok(()),
            Some(_) => Err(AgentError::generic(format!(
                "{} is still configured after removing it",
                s.ip
            ))),
        }
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let s = self.settings(req)?;
        let mut nl = Netlink::open().map_err(io_error("netlink"))?;
        let io = io_error("netlink");
        let Some(here) = nl.find(s.ip).map_err(&io)? else {
            return Ok(MonitorState::NotRunning);
        };
        let link = nl
            .link_by_index(here.index)
            .map_err(&io)?
            .ok_or_else(|| AgentError::generic(format!("{} is on a vanished interface", s.ip)))?;
        if let Some(want) = &s.interface
            && *want != link.name
        {
            return Err(AgentError::generic(format!(
                "{} is on {}, not on the configured interface {want}",
                s.ip, link.name
            )));
        }
        if here.dad_failed {
            return Err(AgentError::generic(format!(
                "{} failed duplicate address detection on {}: another host uses it",
                s.ip, link.name
            )));
        }
        Self::usable(&link)?;
        Ok(if here.tentative {
            MonitorState::Degraded
        } else {
            MonitorState::Running
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_valid_ip_and_prefix() {
        assert_eq!(
            parse_address("198.18.2.100/24").unwrap(),
            ("198.18.2.100".parse().unwrap(), 24)
        );
        assert_eq!(
            parse_address("2001:db8::64/64").unwrap(),
            ("2001:db8::64".parse().unwrap(), 64)
        );
        let bad = parse_address("198.18.2.300/24").unwrap_err();
        assert_eq!(
            bad.reason,
            "address: 198.18.2.300 is not an IPv4 or IPv6 address (write it as 198.18.2.100/24 or 2001:db8::64/64)"
        );
        assert!(
            parse_address("198.18.2.100")
                .unwrap_err()
                .reason
                .contains("198.18.2.100/24")
        );
        assert!(
            parse_address("198.18.2.100/33")
                .unwrap_err()
                .reason
                .contains("0 to 32")
        );
        assert!(parse_address("2001:db8::1/129").is_err());
    }

    #[test]
    fn labels_start_with_the_interface() {
        let s = Settings {
            ip: "198.18.2.100".parse().unwrap(),
            prefix: 24,
            interface: None,
            label: Some("web".into()),
            arp_count: 1,
            arp_interval: Duration::ZERO,
            probe: Duration::ZERO,
        };
        let link = Link {
            index: 2,
            name: "svc".into(),
            up: true,
            carrier: true,
            mac: None,
            loopback: false,
        };
        assert_eq!(IpAddrAgent::label(&s, &link).as_deref(), Some("svc:web"));
    }
}
