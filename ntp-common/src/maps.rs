//! The maps shared by the XDP program and the daemon: names, keys, values.

use bytemuck::{Pod, Zeroable};

use crate::{ratelimit::RateLimit, state::ServerState};

/// The XDP program's name in the object file.
pub const PROGRAM: &str = "ntpx";
/// A program that passes everything, for the peer of a veth (see ntp-ebpf).
pub const PASS_PROGRAM: &str = "ntpx_pass";

/// `Array<ServerPage>` of one entry, memory-mapped by the daemon (BPF_F_MMAPABLE): everything
/// the program reads for every request, in one page, so that a request arriving after a long
/// quiet spell touches as little cold memory as possible.
pub const SERVER: &str = "SERVER";

/// Most local addresses the program checks destinations against; a host with more serves
/// the others through the slow path.
pub const MAX_LOCAL_V4: usize = 64;
pub const MAX_LOCAL_V6: usize = 32;

/// What the daemon publishes, double-buffered, with a sequence counter.
///
/// The daemon makes `sequence` odd, writes the slot not in use, switches `active` to it, and
/// makes `sequence` even again. A program run reads the sequence, then the active slot, and
/// uses what it read only if the sequence is unchanged at the end of its reads: the slot it
/// reads can be rewritten only by a second switch during the run (two changes published back
/// to back), which changes the sequence. (x86 keeps loads and stores in order; on weakly
/// ordered CPUs the program would need barriers BPF does not offer.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerPage {
    /// Index of the slot in use.
    pub active: u32,
    /// Odd while the daemon writes the page.
    pub sequence: u32,
    pub slots: [Published; 2],
}

/// One published snapshot: the served states, the served port, the client log's settings, the
/// access tries in use, and this host's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Published {
    /// True UTC, leap seconds announced and made: served to every address not smeared.
    pub state: ServerState,
    /// Leap-smeared time (`leapsmear`), served to the addresses whose bit is set in
    /// `smeared_v4`/`smeared_v6`; zeroed (stale) when no address is smeared.
    pub smeared: ServerState,
    /// CLOCK_TAI instant the client log's timestamps count from.
    pub client_log_epoch_tai_ns: u64,
    pub limit: RateLimit,
    /// The served UDP port, host byte order; 0: nothing is served.
    pub port: u16,
    pub local_v4_count: u16,
    pub local_v6_count: u16,
    /// 1: log clients in [`CLIENTS`] (and limit their rates); 0: `noclientlog`.
    pub client_log: u8,
    pub reserved: u8,
    /// The access rules in use, counted from 1 at each change: their tries are the `_A` pair
    /// when even, the `_B` pair when odd. A client's record remembers the generation it was
    /// admitted under ([`crate::ratelimit::ClientRecord::access_generation`]).
    pub access_generation: u32,
    /// Bit i set: `local_v6[i]` is served [`Self::smeared`] time.
    pub smeared_v6: u32,
    /// Bit i set: `local_v4[i]` is served [`Self::smeared`] time.
    pub smeared_v4: u64,
    /// IPv4 addresses as their four bytes in a native u32 (`u32::from_ne_bytes(octets)`).
    pub local_v4: [u32; MAX_LOCAL_V4],
    /// IPv6 addresses as their sixteen bytes in two native u64.
    pub local_v6: [[u64; 2]; MAX_LOCAL_V6],
}

const _: () = assert!(
    size_of::<Published>() == 2 * 64 + 8 + 8 + 16 + 8 + 4 * MAX_LOCAL_V4 + 16 * MAX_LOCAL_V6
);
const _: () = assert!(MAX_LOCAL_V4 <= 64 && MAX_LOCAL_V6 <= 32, "one bit per address");
const _: () = assert!(size_of::<ServerPage>() <= 4096);

impl Published {
    /// Which pair of access tries the rules in use are in (see [`access_slot`]).
    #[inline(always)]
    pub const fn access_slot(&self) -> usize {
        access_slot(self.access_generation)
    }

    /// Whether `address` (its bytes in a native u32) is one of the local IPv4 addresses, and
    /// which time it is served.
    #[inline(always)]
    pub fn local_v4(&self, address: u32) -> Option<TimeModel> {
        let mut i = 0;
        while i < MAX_LOCAL_V4 && i < self.local_v4_count as usize {
            if self.local_v4[i] == address {
                return Some(TimeModel::of_bit(self.smeared_v4 >> i));
            }
            i += 1;
        }
        None
    }

    /// Whether `address` (its bytes in two native u64) is one of the local IPv6 addresses, and
    /// which time it is served.
    #[inline(always)]
    pub fn local_v6(&self, address: [u64; 2]) -> Option<TimeModel> {
        let mut i = 0;
        while i < MAX_LOCAL_V6 && i < self.local_v6_count as usize {
            if self.local_v6[i][0] == address[0] && self.local_v6[i][1] == address[1] {
                return Some(TimeModel::of_bit(u64::from(self.smeared_v6 >> i)));
            }
            i += 1;
        }
        None
    }

    /// The state served as `model`.
    #[inline(always)]
    pub const fn state_of(&self, model: TimeModel) -> &ServerState {
        match model {
            TimeModel::True => &self.state,
            TimeModel::Smeared => &self.smeared,
        }
    }
}

/// Which time a local address serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeModel {
    /// UTC, with leap seconds announced and made.
    True,
    /// UTC with leap seconds smeared (`leapsmear`).
    Smeared,
}

impl TimeModel {
    #[inline(always)]
    const fn of_bit(bits: u64) -> Self {
        if bits & 1 == 1 { Self::Smeared } else { Self::True }
    }
}

/// `LpmTrie<[u8; 4], u32>` and `LpmTrie<[u8; 16], u32>`, two of each: the access rules, value
/// [`ACCESS_ALLOW`] or [`ACCESS_DENY`]; an address no rule covers is denied. The daemon fills
/// the pair not in use, then publishes the next [`Published::access_generation`], so new rules
/// take effect at once for every address (and every admission a record remembers lapses).
pub const ACCESS_V4: [&str; 2] = ["ACCESS_V4_A", "ACCESS_V4_B"];
pub const ACCESS_V6: [&str; 2] = ["ACCESS_V6_A", "ACCESS_V6_B"];
/// Which pair of access tries the rules of `generation` are in: 0 the `_A` pair, 1 the `_B`.
#[inline(always)]
pub const fn access_slot(generation: u32) -> usize {
    (generation & 1) as usize
}

/// The generation after `generation`, in the other pair of tries; never 0, which no rules have.
pub const fn next_access_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 2,
        next => next,
    }
}

pub const ACCESS_DENY: u32 = 0;
pub const ACCESS_ALLOW: u32 = 1;
pub const MAX_ACCESS_RULES: u32 = 65_536;

/// `LruHashMap<[u8; 16], ClientRecord>`: the client log, keyed by address (IPv4 as IPv4-mapped
/// IPv6). The daemon sizes it at load time (`clientloglimit`, `clientlog entries`).
pub const CLIENTS: &str = "CLIENTS";

/// An address as a client log key: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
pub const fn client_key_v4(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// `PerCpuArray<u64>` of [`Counter::COUNT`] entries.
pub const COUNTERS: &str = "COUNTERS";

/// The data plane's per-CPU counters. Of UDP datagrams to the NTP port, each is `Received` and
/// then exactly one of `Answered` .. `DroppedRateLimit`; `ClientRecordsCreated` counts new
/// client log records (the daemon tells evictions from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// UDP datagrams to the NTP port.
    Received = 0,
    /// Answered in the kernel with XDP_TX.
    Answered,
    /// Answered with a RATE kiss-o'-death.
    AnsweredKissOfDeath,
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
    /// Passed: the daemon's published state is stale, or was republished while read.
    PassedStale,
    /// Dropped: the access rules deny the source.
    DroppedDenied,
    /// Dropped: over the client's rate limit.
    DroppedRateLimit,
    /// New client log records.
    ClientRecordsCreated,
}

impl Counter {
    pub const COUNT: u32 = 13;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Received,
        Self::Answered,
        Self::AnsweredKissOfDeath,
        Self::PassedMalformed,
        Self::PassedFragment,
        Self::PassedLength,
        Self::PassedNotRequest,
        Self::PassedAddress,
        Self::PassedChecksum,
        Self::PassedStale,
        Self::DroppedDenied,
        Self::DroppedRateLimit,
        Self::ClientRecordsCreated,
    ];
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
