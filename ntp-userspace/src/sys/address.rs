//! Service addresses on the loopback interface (rtnetlink's RTM_NEWADDR and RTM_DELADDR), put
//! there with a lifetime: the kernel removes an address that is not renewed in time, so that a
//! daemon that dies (`kill -9`, a crash) stops attracting traffic on its own, and a routing
//! daemon exporting the loopback's addresses (BIRD's `protocol direct`) withdraws the route.

use std::{io, net::IpAddr, os::fd::AsRawFd as _};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// The loopback interface's index, the same in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
/// An IPv6 address usable at once, without duplicate address detection.
const IFA_F_NODAD: u32 = 0x02;

/// Puts `address` (a /32 or /128) on the loopback, or renews it, for `lifetime_s` seconds.
pub fn add_to_loopback(address: IpAddr, lifetime_s: u32) -> io::Result<()> {
    let mut attributes = Vec::new();
    let octets = octets(address);
    attribute(&mut attributes, IFA_LOCAL, &octets);
    attribute(&mut attributes, IFA_ADDRESS, &octets);
    // struct ifa_cacheinfo: preferred and valid lifetimes, then the kernel's timestamps.
    let mut cache_info = Vec::with_capacity(16);
    for value in [lifetime_s, lifetime_s, 0, 0] {
        cache_info.extend(value.to_ne_bytes());
    }
    attribute(&mut attributes, IFA_CACHEINFO, &cache_info);
    if address.is_ipv6() {
        attribute(&mut attributes, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, address, &attributes)
}

/// Takes `address` off the loopback; one that is not there is no error.
pub fn remove_from_loopback(address: IpAddr) -> io::Result<()> {
    let mut attributes = Vec::new();
    let octets = octets(address);
    attribute(&mut attributes, IFA_LOCAL, &octets);
    attribute(&mut attributes, IFA_ADDRESS, &octets);
    match request(RTM_DELADDR, 0, address, &attributes) {
        Err(error) if error.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        result => result,
    }
}

fn octets(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends a route attribute (`struct rtattr` and its payload, padded to 4 bytes).
fn attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = 4 + payload.len();
    message.extend((length as u16).to_ne_bytes());
    message.extend(kind.to_ne_bytes());
    message.extend(payload);
    message.resize(message.len().next_multiple_of(4), 0);
}

/// Sends one address request for `address` on the loopback and waits for the kernel's answer.
fn request(kind: u16, flags: u16, address: IpAddr, attributes: &[u8]) -> io::Result<()> {
    let (family, prefix) = match address {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128),
    };
    let mut message = Vec::with_capacity(64);
    let length = 16 + 8 + attributes.len();
    // struct nlmsghdr: length, type, flags, sequence number, port ID (the kernel fills it).
    message.extend((length as u32).to_ne_bytes());
    message.extend(kind.to_ne_bytes());
    message.extend((NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    message.extend(1u32.to_ne_bytes());
    message.extend(0u32.to_ne_bytes());
    // struct ifaddrmsg: family, prefix length, flags, scope (global), interface index.
    message.extend([family, prefix, 0, 0]);
    message.extend(LOOPBACK_INDEX.to_ne_bytes());
    message.extend(attributes);
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    sendto(socket.as_raw_fd(), &message, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    let mut answer = [0u8; 1024];
    let received = recv(socket.as_raw_fd(), &mut answer, MsgFlags::empty())?;
    // struct nlmsgerr after the header: 0, or a negated errno.
    let answer = &answer[..received];
    if answer.len() >= 20 && u16::from_ne_bytes([answer[4], answer[5]]) == NLMSG_ERROR {
        let error = i32::from_ne_bytes(answer[16..20].try_into().expect("4 bytes"));
        if error != 0 {
            return Err(io::Error::from_raw_os_error(-error));
        }
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no answer from rtnetlink"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut message = Vec::new();
        attribute(&mut message, IFA_FLAGS, &[1, 2, 3, 4, 5]);
        assert_eq!(message.len(), 12);
        assert_eq!(&message[..4], &[9, 0, 8, 0]);
    }
}
