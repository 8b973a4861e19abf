//! Telling the LAN where an address lives, and asking whether someone else has
//! it, with raw Ethernet frames on an `AF_PACKET` socket bound to one interface:
//! gratuitous ARP and ARP probes (RFC 5227) for IPv4, unsolicited neighbour
//! advertisements (RFC 4861 §7.2.6) for IPv6.
//!
//! The frame builders are pure functions (tested below); the socket part is thin.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
/// The Ethernet group of ff02::1 (all nodes).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An ARP request for `target` from (`sender_mac`, `sender_ip`), broadcast.
/// With `sender_ip == target` it is a gratuitous ARP (an announcement that every
/// neighbour with an entry for `target` updates to `sender_mac`); with
/// `sender_ip` unspecified it is a probe that the holder of `target` answers.
pub(crate) fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0); // minimum Ethernet frame without FCS
    f
}

/// The sender of an ARP frame (`(mac, ip)`), if `frame` is one.
pub(crate) fn arp_sender(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr)> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let mac = frame[22..28].try_into().ok()?;
    let ip = Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]);
    Some((mac, ip))
}

/// Whether `frame`, from another host than `mac`, shows that host holds or is
/// taking `ip`: a reply for `ip` (the holder answers every probe), or another
/// host's probe for `ip` (RFC 5227's simultaneous probe). An announcement or a
/// request merely sent *from* `ip` is not enough: a host that just gave the
/// address up can still send those, and a real holder answers our probe anyway.
pub(crate) fn shows_holder(frame: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let (from, sender) = arp_sender(frame)?;
    if from == mac {
        return None;
    }
    let op = u16::from_be_bytes([frame[20], frame[21]]);
    let target = Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]);
    let reply = op == 2 && sender == ip;
    let rival_probe = op == 1 && sender.is_unspecified() && target == ip;
    (reply || rival_probe).then_some(from)
}

/// An unsolicited neighbour advertisement for `target` (override flag set, with
/// the target link-layer address option) to all nodes.
pub(crate) fn neighbour_advertisement(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type NA, code 0, checksum later
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // override
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(target, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (required for ND)
    f.extend_from_slice(&target.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum over the IPv6 pseudo-header and `icmp` (RFC 8200 §8.1).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + icmp.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(icmp);
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw Ethernet socket bound to one interface and one EtherType.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    index: u32,
}

impl PacketSocket {
    fn open(index: u32, ethertype: u16) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ethertype.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(index, ethertype, [0; 6]);
        // SAFETY: bind with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, index })
    }

    /// A socket that receives ARP on interface `index` (and sends).
    pub fn arp(index: u32) -> io::Result<PacketSocket> {
        PacketSocket::open(index, ETH_P_ARP)
    }

    /// A socket that only sends on interface `index`. Protocol 0 registers no
    /// receive hook, so creating it costs no network-stack synchronisation.
    pub fn sender(index: u32) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PacketSocket { fd, index })
    }

    /// Close the socket on another thread: closing a packet socket waits for an
    /// RCU grace period (tens of milliseconds), which a start need not wait for.
    pub fn close_later(self) {
        std::thread::spawn(move || drop(self));
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dest: [u8; 6] = frame[..6].try_into().expect("an Ethernet frame");
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let addr = sockaddr_ll(self.index, ethertype, dest);
        // SAFETY: sendto with a valid buffer and a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame received before `deadline`, or `None` at the deadline.
    pub fn recv_until(&self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up: poll's milliseconds must not end the wait early.
        let ms = left.as_micros().div_ceil(1000).clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd that lives for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Some(Vec::new()))
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 1600];
        // SAFETY: recv into a buffer we own, bounded by its length.
        let got = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if got < 0 {
            return Ok(Some(Vec::new()));
        }
        buf.truncate(got as usize);
        Ok(Some(buf))
    }
}

fn sockaddr_ll(index: u32, ethertype: u16, dest: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr_bytes = [0u8; 8];
    addr_bytes[..6].copy_from_slice(&dest);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: index as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr_bytes,
    }
}

/// Ask the LAN on interface `index` whether another host holds `ip`: send ARP
/// probes (at the start and half-way) and listen for `wait`. Returns the MAC of a
/// host that answered for `ip`, if one did.
pub(crate) fn probe_v4(
    index: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    wait: Duration,
) -> io::Result<Option<[u8; 6]>> {
    let socket = PacketSocket::arp(index)?;
    let found = listen_for_holder(&socket, mac, ip, wait);
    socket.close_later();
    found
}

fn listen_for_holder(
    socket: &PacketSocket,
    mac: [u8; 6],
    ip: Ipv4Addr,
    wait: Duration,
) -> io::Result<Option<[u8; 6]>> {
    let probe = arp_request(mac, Ipv4Addr::UNSPECIFIED, ip);
    let start = Instant::now();
    let deadline = start + wait;
    let mut second = Some(start + wait / 2);
    socket.send(&probe)?;
    loop {
        let until = second.map_or(deadline, |s| s.min(deadline));
        match socket.recv_until(until)? {
            Some(frame) => {
                if let Some(holder) = shows_holder(&frame, mac, ip) {
                    return Ok(Some(holder));
                }
            }
            // The wait ended: at the half-way mark, the second probe; at the end, done.
            None if second.take().is_some() => socket.send(&probe)?,
            None => return Ok(None),
        }
    }
}

/// Send one announcement that `ip` is at `mac` on interface `index`.
pub(crate) fn announce(index: u32, mac: [u8; 6], ip: std::net::IpAddr) -> io::Result<()> {
    let frame = match ip {
        std::net::IpAddr::V4(v4) => arp_request(mac, v4, v4),
        std::net::IpAddr::V6(v6) => neighbour_advertisement(mac, v6),
    };
    let socket = PacketSocket::sender(index)?;
    let sent = socket.send(&frame);
    socket.close_later();
    sent
}

/// Who answers ARP for `ip` on the interface the kernel routes it through (an
/// ARP probe, listened to for `wait`): a health check that a LAN and a host on
/// it are reachable.
pub fn arp_answer(ip: Ipv4Addr, wait: Duration) -> Result<Option<[u8; 6]>, String> {
    let mut nl = crate::netlink::Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let index = nl
        .route_interface(ip.into())
        .map_err(|e| format!("no route to {ip}: {e}"))?
        .ok_or_else(|| format!("no route to {ip}"))?;
    let link = nl
        .link_by_index(index)
        .map_err(|e| format!("netlink: {e}"))?
        .ok_or_else(|| format!("the interface to {ip} vanished"))?;
    if !link.up || !link.carrier {
        return Err(format!("interface {} is down or has no carrier", link.name));
    }
    let mac = link
        .mac
        .ok_or_else(|| format!("interface {} has no MAC address", link.name))?;
    probe_v4(index, mac, ip, wait).map_err(|e| format!("ARP on {}: {e}", link.name))
}

/// The MAC address as people write it (`02:00:5e:10:00:01`).
pub(crate) fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0, 1];

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let ip = Ipv4Addr::new(198, 18, 2, 100);
        let f = arp_request(MAC, ip, ip);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &BROADCAST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[20..22], &[0, 1], "an ARP request");
        assert_eq!(arp_sender(&f), Some((MAC, ip)));
        assert_eq!(&f[38..42], &ip.octets());
    }

    #[test]
    fn a_probe_has_an_unspecified_sender() {
        let ip = Ipv4Addr::new(198, 18, 2, 100);
        let f = arp_request(MAC, Ipv4Addr::UNSPECIFIED, ip);
        assert_eq!(arp_sender(&f), Some((MAC, Ipv4Addr::UNSPECIFIED)));
        assert_eq!(&f[38..42], &ip.octets());
    }

    #[test]
    fn only_a_reply_or_a_rival_probe_shows_a_holder() {
        let ip = Ipv4Addr::new(198, 18, 2, 100);
        let other = [0x02, 0, 0, 0, 0, 2];
        // A stale announcement from a host that gave the address up: not a holder.
        assert_eq!(shows_holder(&arp_request(other, ip, ip), MAC, ip), None);
        // Another host probing for it at the same time: a rival.
        let probe = arp_request(other, Ipv4Addr::UNSPECIFIED, ip);
        assert_eq!(shows_holder(&probe, MAC, ip), Some(other));
        // The holder's reply to our probe.
        let mut reply = arp_request(other, ip, Ipv4Addr::UNSPECIFIED);
        reply[21] = 2;
        assert_eq!(shows_holder(&reply, MAC, ip), Some(other));
        // Our own frames never count.
        assert_eq!(
            shows_holder(&arp_request(MAC, Ipv4Addr::UNSPECIFIED, ip), MAC, ip),
            None
        );
    }

    #[test]
    fn frames_that_are_not_arp_have_no_sender() {
        let na = neighbour_advertisement(MAC, "2001:db8::1".parse().unwrap());
        assert_eq!(arp_sender(&na), None);
        assert_eq!(arp_sender(&[0u8; 20]), None);
    }

    #[test]
    fn a_neighbour_advertisement_checksums_to_zero_with_its_pseudo_header() {
        let target: Ipv6Addr = "2001:db8::64".parse().unwrap();
        let f = neighbour_advertisement(MAC, target);
        assert_eq!(&f[..6], &ALL_NODES_MAC);
        assert_eq!(f[14 + 7], 255, "hop limit 255");
        let icmp = &f[54..];
        assert_eq!(icmp.len(), 32);
        assert_eq!(icmp[0], 136);
        assert_eq!(&icmp[8..24], &target.octets());
        assert_eq!(&icmp[26..32], &MAC);
        assert_eq!(icmpv6_checksum(target, ALL_NODES, icmp), 0);
    }

    #[test]
    fn macs_are_written_with_colons() {
        assert_eq!(mac_text(MAC), "02:00:5e:10:00:01");
    }
}
