//! The kernel's view of interfaces, addresses and routes, through rtnetlink
//! (`netlink-packet-route` messages on a blocking `netlink-sys` socket).
//!
//! Synchronous on purpose: an agent call already runs on its own thread with a
//! host-owned deadline, and every receive here is bounded by `SO_RCVTIMEO`, so a
//! kernel that does not answer is an error, never a hang.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How long one netlink answer may take before the call is an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The lower layer is up (`IFF_LOWER_UP`): a cable, a peer, a carrier.
    pub carrier: bool,
    /// The hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    pub loopback: bool,
}

/// One address configured on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
    /// IPv6 duplicate address detection has not finished.
    pub tentative: bool,
    /// IPv6 duplicate address detection found another holder.
    pub dad_failed: bool,
}

/// An open rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on a socket we own with a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { socket, seq: 0 })
    }

    /// Send one request and collect the answers until the kernel's ACK or the end
    /// of a dump. A kernel error comes back as the `io::Error` it names.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answers = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full().map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the kernel did not answer netlink within {ANSWER_TIMEOUT:?}"),
                    )
                } else {
                    e
                }
            })?;
            let mut offset = 0;
            while offset < bytes.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                        NetlinkPayload::Error(e) => return Err(e.to_io()),
                        NetlinkPayload::InnerMessage(m) => answers.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.index == index))
    }

    /// Every address of `ip`'s family on every interface.
    pub fn addresses(&mut self, ip: IpAddr) -> io::Result<Vec<Address>> {
        let mut query = AddressMessage::default();
        query.header.family = family(ip);
        let answers = self.request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_from(a),
                _ => None,
            })
            .collect())
    }

    /// Where `ip` is configured here (any interface), if anywhere.
    pub fn find(&mut self, ip: IpAddr) -> io::Result<Option<Address>> {
        Ok(self.addresses(ip)?.into_iter().find(|a| a.ip == ip))
    }

    /// The interface the kernel would send to `ip` through (`ip route get`).
    pub fn route_interface(&mut self, ip: IpAddr) -> io::Result<Option<u32>> {
        let mut query = RouteMessage::default();
        query.header.address_family = family(ip);
        query.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        query
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        let answers = self.request(RouteNetlinkMessage::GetRoute(query), NLM_F_ACK)?;
        Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Add `ip/prefix` to interface `index`. `label` (IPv4 only) names it in
    /// `ip addr`; `nodad` skips IPv6 duplicate address detection.
    pub fn add(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        label: Option<&str>,
        nodad: bool,
    ) -> io::Result<()> {
        let mut msg = address_message(index, ip, prefix);
        msg.attributes.push(AddressAttribute::Local(ip));
        if let (Some(label), IpAddr::V4(_)) = (label, ip) {
            msg.attributes.push(AddressAttribute::Label(label.into()));
        }
        if nodad && ip.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Take interface `index` down (administratively).
    pub fn set_down(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Remove `ip/prefix` from interface `index`.
    pub fn delete(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut msg = address_message(index, ip, prefix);
        msg.attributes.push(AddressAttribute::Local(ip));
        self.request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)
            .map(drop)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(ip);
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

fn link_from(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        up: l.header.flags.contains(LinkFlags::Up),
        carrier: l.header.flags.contains(LinkFlags::LowerUp),
        mac: None,
        loopback: l.header.flags.contains(LinkFlags::Loopback),
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(bytes) => link.mac = bytes.try_into().ok(),
            _ => {}
        }
    }
    link
}

fn address_from(a: AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address (on point-to-point links IFA_ADDRESS
    // is the peer's); IPv6 sends only IFA_ADDRESS.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    let flags = a
        .attributes
        .iter()
        .find_map(|x| match x {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(a.header.flags.bits())));
    Some(Address {
        index: a.header.index,
        ip,
        prefix: a.header.prefix_len,
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
    })
}
