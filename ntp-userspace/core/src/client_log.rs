//! The client log's terms, shared by the kernel's table and the slow path: how it logs and
//! limits (`ratelimit`, and its settings as published), the slow path's view of it, clients'
//! keys, and a position in it between two pages of a report.

use std::net::{IpAddr, Ipv6Addr};

use ntp_common::{
    maps::client_key_v4,
    ratelimit::{self, Limit, RateLimit},
};

/// `ratelimit [interval L] [burst B] [leak K] [kod K]`, as written (chrony's defaults: 3, 8, 2,
/// and no kiss-o'-death).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub interval: i32,
    pub burst: i32,
    pub leak: i32,
    pub kod: i32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { interval: 3, burst: 8, leak: 2, kod: 0 }
    }
}

impl RateLimitConfig {
    /// `ntsratelimit`'s defaults: chrony's, one connection per 64 s (interval 6).
    pub const NTS_KE: Self = Self { interval: 6, burst: 8, leak: 2, kod: 0 };

    pub fn bucket(&self) -> RateLimit {
        RateLimit::new(self.interval, self.burst, self.leak, self.kod)
    }
}

/// How the client log logs and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLogSettings {
    pub enabled: bool,
    pub limit: RateLimit,
    /// CLOCK_TAI instant record timestamps count from.
    pub epoch_tai_ns: u64,
}

impl ClientLogSettings {
    /// The record timestamp of a CLOCK_TAI instant.
    pub fn timestamp(&self, tai_ns: u64) -> u32 {
        ratelimit::timestamp_since(tai_ns, self.epoch_tai_ns)
    }
}

/// Logs a client's request and decides its fate (the slow path's view of the client log).
pub trait ClientLog: Send + Sync {
    fn log(&self, client: IpAddr, received_tai_ns: u64) -> Limit;

    /// The least poll replies carry (see `RateLimit::min_poll`).
    fn min_poll(&self) -> i8;
}

/// No client log (`port 0`: nothing served, nothing logged).
pub struct NoClientLog;

impl ClientLog for NoClientLog {
    fn log(&self, _: IpAddr, _: u64) -> Limit {
        Limit::Answer
    }

    fn min_poll(&self) -> i8 {
        i8::MIN
    }
}

/// A position in the client table between two pages (the kernel's batch token).
pub type Cursor = u64;

/// A client's key: IPv4 as IPv4-mapped IPv6, as the XDP program keys it.
pub fn key_of(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(a) => client_key_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

pub fn address_of(key: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*key);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_clients_are_keyed_as_mapped_addresses() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(key_of(v4)[10..], [0xff, 0xff, 192, 0, 2, 7]);
        assert_eq!(address_of(&key_of(v4)), v4);
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(address_of(&key_of(v6)), v6);
    }
}
