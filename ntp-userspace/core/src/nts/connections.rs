//! NTS-KE's rate limit (`ntsratelimit`): chrony's token bucket per client address, the one the
//! client log keeps for NTP requests ([`ntp_common::ratelimit`]), spent by connections. Kept
//! by the daemon, apart from the kernel's client table: the XDP program never sees NTS-KE's
//! TCP, and a few connections a second need no shared memory. Sans-IO: instants come in.

use std::{collections::HashMap, net::IpAddr};

use ntp_common::ratelimit::{self, ClientRecord, Limit, RateLimit};

/// The most addresses remembered, whatever the client log's size (about 4 MB).
const MAX_ADDRESSES: usize = 1 << 16;

/// Recent NTS-KE clients and their buckets.
pub struct ConnectionLog {
    limit: RateLimit,
    capacity: usize,
    records: HashMap<IpAddr, ClientRecord>,
}

impl ConnectionLog {
    /// A log of up to `capacity` addresses (the client log's size; 0, as `noclientlog`, limits
    /// nothing, as in chronyd).
    pub fn new(limit: RateLimit, capacity: usize) -> Self {
        Self { limit, capacity: capacity.min(MAX_ADDRESSES), records: HashMap::new() }
    }

    /// Logs a connection from `address`, `elapsed_ns` after the log's start: whether it may
    /// go on. `random` gives the bits that let 1 in 2^leak limited connections through.
    pub fn admit(&mut self, address: IpAddr, elapsed_ns: u64, random: impl FnMut() -> u32) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let now = ratelimit::timestamp(elapsed_ns);
        if self.records.len() >= self.capacity && !self.records.contains_key(&address) {
            self.forget_the_least_recent(now);
        }
        let record = self.records.entry(address).or_insert_with(|| ClientRecord::new(&self.limit));
        record.log(now, &self.limit);
        record.limit(&self.limit, random) == Limit::Answer
    }

    /// Makes room for a new address: the one heard from longest ago goes (the log is full only
    /// under a flood from many addresses, and a scan costs less than the TLS it saves).
    fn forget_the_least_recent(&mut self, now: u32) {
        let oldest = self
            .records
            .iter()
            .max_by_key(|(_, record)| now.wrapping_sub(record.last_hit))
            .map(|(address, _)| *address);
        if let Some(address) = oldest {
            self.records.remove(&address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_log::RateLimitConfig;

    const SECOND: u64 = 1_000_000_000;

    fn log(capacity: usize) -> ConnectionLog {
        ConnectionLog::new(RateLimitConfig::NTS_KE.bucket(), capacity)
    }

    /// Random bits that never let a limited connection through.
    fn no_leak() -> u32 {
        1
    }

    #[test]
    fn an_address_gets_its_burst_then_one_connection_per_interval() {
        let mut log = log(16);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..20).filter(|&i| log.admit(client, i * SECOND / 10, no_leak)).count();
        assert_eq!(admitted, 8, "the burst");
        assert!(!log.admit(client, 10 * SECOND, no_leak), "within the 64 s interval");
        assert!(log.admit(client, 80 * SECOND, no_leak), "a token back after 64 s");
        // Another address has its own bucket.
        assert!(log.admit("192.0.2.2".parse().unwrap(), 10 * SECOND, no_leak));
    }

    #[test]
    fn one_in_two_to_the_leak_limited_connections_goes_through() {
        let mut log = log(16);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..8 {
            assert!(log.admit(client, i, no_leak));
        }
        // leak 2: through when the two low bits are zero.
        assert!(log.admit(client, 9, || 4));
    }

    #[test]
    fn a_full_log_forgets_the_least_recent_address_and_noclientlog_limits_nothing() {
        let mut log = log(2);
        let [a, b, c]: [IpAddr; 3] =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(|a| a.parse().unwrap());
        for i in 0..8 {
            assert!(log.admit(a, i, no_leak));
        }
        assert!(log.admit(b, 10 * SECOND, no_leak));
        assert!(log.admit(c, 11 * SECOND, no_leak), "a's record makes room");
        assert_eq!(log.records.len(), 2);
        assert!(log.admit(a, 12 * SECOND, no_leak), "a is new again");
        let mut off = ConnectionLog::new(RateLimitConfig::NTS_KE.bucket(), 0);
        assert!((0..100).all(|i| off.admit(a, i, no_leak)));
    }
}
