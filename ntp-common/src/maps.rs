//! The maps and globals shared by the XDP program and the daemon: names, keys, values.

/// The XDP program's name in the object file.
pub const PROGRAM: &str = "ntpx";
/// A program that passes everything, for the peer of a veth (see ntp-ebpf).
pub const PASS_PROGRAM: &str = "ntpx_pass";

/// Global (read-only after load) holding the UDP port served, in host byte order.
pub const GLOBAL_NTP_PORT: &str = "NTP_PORT";

/// `Array<ServerState>` of [`STATE_SLOTS`] entries: the published state, double-buffered.
pub const SERVER_STATE: &str = "SERVER_STATE";
/// `Array<u32>` of one entry: the index of the [`SERVER_STATE`] slot in use.
///
/// The daemon writes the other slot, then switches this index, so the program never reads a
/// slot while it is being written: the slot it might still be reading is rewritten only a whole
/// refresh period later, and a program run takes microseconds, without preemption.
pub const ACTIVE_STATE: &str = "ACTIVE_STATE";
pub const STATE_SLOTS: u32 = 2;

/// `LpmTrie<[u8; 4], u32>` and `LpmTrie<[u8; 16], u32>`: the access rules, value [`ACCESS_ALLOW`]
/// or [`ACCESS_DENY`]; an address no rule covers is denied.
pub const ACCESS_V4: &str = "ACCESS_V4";
pub const ACCESS_V6: &str = "ACCESS_V6";
pub const ACCESS_DENY: u32 = 0;
pub const ACCESS_ALLOW: u32 = 1;
pub const MAX_ACCESS_RULES: u32 = 65_536;

/// `HashMap<[u8; 4], u32>` and `HashMap<[u8; 16], u32>`: the addresses this server answers for
/// (a router's XDP program must not answer NTP traffic it forwards to others).
pub const LOCAL_V4: &str = "LOCAL_V4";
pub const LOCAL_V6: &str = "LOCAL_V6";
pub const MAX_LOCAL_ADDRESSES: u32 = 1024;

/// `PerCpuArray<u64>` of [`Counter::COUNT`] entries.
pub const COUNTERS: &str = "COUNTERS";

/// The data plane's per-CPU counters. Only UDP datagrams to the NTP port are counted: each is
/// `Received` and then exactly one of the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// UDP datagrams to the NTP port.
    Received = 0,
    /// Answered in the kernel with XDP_TX.
    Answered,
    /// Passed: headers inconsistent with the frame (lengths, IP header checksum).
    PassedMalformed,
    /// Passed: an IPv4 fragment.
    PassedFragment,
    /// Passed: not exactly 48 bytes of NTP (extension fields, a MAC, or truncated).
    PassedLength,
    /// Passed: not a client request of version 1 to 4.
    PassedNotRequest,
    /// Passed: not addressed to one of this server's own unicast addresses, or from an address
    /// that cannot be answered (broadcast, multicast, unspecified).
    PassedAddress,
    /// Passed: a bad UDP checksum (the kernel drops it).
    PassedChecksum,
    /// Passed: the daemon's published state is stale.
    PassedStale,
    /// Dropped: the access rules deny the source.
    DroppedDenied,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Received,
        Self::Answered,
        Self::PassedMalformed,
        Self::PassedFragment,
        Self::PassedLength,
        Self::PassedNotRequest,
        Self::PassedAddress,
        Self::PassedChecksum,
        Self::PassedStale,
        Self::DroppedDenied,
    ];

    /// A stable snake_case name, for reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Answered => "answered",
            Self::PassedMalformed => "passed_malformed",
            Self::PassedFragment => "passed_fragment",
            Self::PassedLength => "passed_length",
            Self::PassedNotRequest => "passed_not_request",
            Self::PassedAddress => "passed_address",
            Self::PassedChecksum => "passed_checksum",
            Self::PassedStale => "passed_stale",
            Self::DroppedDenied => "dropped_denied",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }
}
