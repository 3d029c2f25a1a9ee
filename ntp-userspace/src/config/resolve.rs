//! Host names in access rules, resolved when the configuration is read (the only lookups the
//! configuration makes).

use std::net::{IpAddr, ToSocketAddrs as _};

/// The first address `name` resolves to.
pub(super) fn host_address(name: &str) -> Option<IpAddr> {
    (name, 0).to_socket_addrs().ok()?.next().map(|address| address.ip())
}
