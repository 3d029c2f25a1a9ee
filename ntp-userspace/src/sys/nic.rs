//! What the program needs from a network interface's settings: to see VLAN tags.
//!
//! A NIC with receive VLAN offload on (the default on i40e, ixgbe, mlx5, e1000 and most others)
//! takes a client's 802.1Q tag out of the frame before XDP runs and keeps it beside the frame.
//! The program would then see the request as untagged and answer it untagged, onto the wrong
//! VLAN. The tag can be read back with the `bpf_xdp_metadata_rx_vlan_tag` kfunc (Linux 6.8+),
//! but only from a device-bound program calling a kfunc, neither of which aya can load yet
//! (aya-rs/aya#432). So the offload is turned off where the program attaches, and the tag stays
//! in the frame, where the program reads it and writes it back into the reply.
//!
//! A veth is different: the tag its peer leaves beside the frame reaches XDP beside the frame
//! whatever the receiving end's offload setting, so only the kfunc would see it there.

use std::{ffi::CString, io, mem, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// `ETHTOOL_GFLAGS` / `ETHTOOL_SFLAGS` (linux/ethtool.h): the interface's offload flags, as
/// `ethtool -k` / `ethtool -K` read and set them.
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
/// `ETH_FLAG_RXVLAN`: receive VLAN offload (`rxvlan`, shown as rx-vlan-offload).
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns receive VLAN offload off on `interface`, so that XDP sees clients' VLAN tags; true if
/// it was on. An interface that keeps it on is an error: the program must not attach there.
pub fn keep_vlan_tags_in_frames(interface: &str) -> anyhow::Result<bool> {
    let flags = ethtool_flags(interface, ETHTOOL_GFLAGS, 0)
        .with_context(|| format!("reading {interface}'s offload settings"))?;
    if flags & ETH_FLAG_RXVLAN == 0 {
        return Ok(false);
    }
    if let Err(error) = ethtool_flags(interface, ETHTOOL_SFLAGS, flags & !ETH_FLAG_RXVLAN) {
        bail!(
            "{interface} takes VLAN tags out of frames before XDP sees them (rx-vlan-offload \
             on) and does not let it be turned off ({error}): the program would answer tagged \
             clients untagged, on the wrong VLAN"
        );
    }
    Ok(true)
}

/// One SIOCETHTOOL flags command; the flags it returns (GFLAGS) or was given (SFLAGS).
fn ethtool_flags(interface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let name = CString::new(interface).map_err(|_| io::ErrorKind::InvalidInput)?;
    let name = name.as_bytes_with_nul();
    // SAFETY: a plain C struct of integers and arrays; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    if name.len() > request.ifr_name.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = *from as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // Any socket will do: the ioctl names the interface.
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: `request` names the interface and points at `value`, both live for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Whether the host has an interface called `interface`.
pub fn interface_exists(interface: &str) -> bool {
    nix::net::if_::if_nametoindex(interface).is_ok()
}

/// The addresses of the host's interfaces, IPv4 and IPv6.
pub fn local_addresses() -> nix::Result<Vec<std::net::IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|interface| {
            let address = interface.address?;
            address
                .as_sockaddr_in()
                .map(|a| std::net::IpAddr::V4(a.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|a| std::net::IpAddr::V6(a.ip())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_that_does_not_exist_is_an_error_that_names_it() {
        let error = keep_vlan_tags_in_frames("ntpx-no-such0").unwrap_err();
        assert!(format!("{error:#}").contains("ntpx-no-such0"), "{error:#}");
    }
}
