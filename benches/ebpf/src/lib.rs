//! Types shared by the benchmark's XDP programs and the host side that drives and reads them.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// The generator's settings (`Array` `GEN_CONFIG`, one entry). Words are as they lie in the
/// frame (network order read natively), sums are unfolded one's complement sums of such words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GeneratorConfig {
    /// Pacing: one request per `interval_ns` (0: as fast as possible); a run that comes early
    /// drops its frame instead of sending it.
    pub interval_ns: u64,
    /// How many requests may go at once after a pause.
    pub burst: u64,
    /// Destination and source MAC addresses.
    pub macs: [u16; 6],
    pub server_ip: [u16; 2],
    pub server_port: u16,
    pub reserved: u16,
    /// The first client address (host order); clients are `first_client + i`.
    pub first_client: u32,
    /// Number of simulated client addresses, a power of two.
    pub clients: u32,
    /// Sum of the IP header's words but the source address and the checksum.
    pub ip_sum: u32,
    /// Sum of the UDP pseudo header, header and NTP words but the client's address, port and
    /// transmit timestamp, and the checksum.
    pub udp_sum: u32,
    pub reserved_end: u32,
}

/// The generator's per-CPU state (`PerCpuArray` `GEN_STATE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GeneratorState {
    /// Requests numbered so far (they pick client addresses and ports).
    pub sequence: u64,
    /// CLOCK_TAI instant the next request is due.
    pub next_tai_ns: u64,
    /// Requests sent.
    pub sent: u64,
}

/// The reply counter's settings (`Array` `COUNT_CONFIG`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CounterConfig {
    /// UTC minus TAI, in ns (minus the kernel's TAI offset).
    pub utc_minus_tai_ns: i64,
    /// Replies go to `first_client .. first_client + clients` (host order).
    pub first_client: u32,
    pub clients: u32,
    pub server_port: u16,
    /// 1: count reflected requests (the reflector's "replies").
    pub reflector: u16,
    pub reserved: u32,
}

/// The counter's per-CPU counts (`PerCpuArray` `COUNTS`).
pub mod count {
    pub const VALID: u32 = 0;
    pub const INVALID: u32 = 1;
    pub const KISS_OF_DEATH: u32 = 2;
    /// Replies whose NTP offset was negative (the histogram holds magnitudes).
    pub const NEGATIVE_OFFSET: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The stage probes' maps.
pub mod stages {
    /// Entries of the probes' client logs (new clients evict from the first full table on).
    pub const CLIENT_LOG_CAPACITY: u32 = 1 << 16;
    /// `STAGE_COUNTERS` entries: results kept so that no stage is optimised away, and (the
    /// last) the sequence numbering new clients.
    pub const COUNTERS: u32 = 4;
}

/// An IPv4 NTP request frame: Ethernet, IPv4 without options, UDP, 48 bytes of NTP.
pub const FRAME_LEN: usize = 90;

/// Histogram buckets (log-linear: 16 per power of two; a few percent wide).
pub const HISTOGRAM_BUCKETS: u32 = 1024;
const SUB_BUCKET_BITS: u32 = 4;

/// The bucket of a value.
#[inline(always)]
pub fn bucket(value: u64) -> u32 {
    if value < 1 << SUB_BUCKET_BITS {
        return value as u32;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = ((value >> (exponent - SUB_BUCKET_BITS)) & ((1 << SUB_BUCKET_BITS) - 1)) as u32;
    (exponent - SUB_BUCKET_BITS + 1) * (1 << SUB_BUCKET_BITS) + mantissa
}

/// The lowest value of a bucket.
pub const fn bucket_low(bucket: u32) -> u64 {
    let per_octave = 1 << SUB_BUCKET_BITS;
    if bucket < per_octave {
        return bucket as u64;
    }
    let exponent = bucket / per_octave + SUB_BUCKET_BITS - 1;
    let mantissa = (bucket % per_octave) as u64;
    (per_octave as u64 + mantissa) << (exponent - SUB_BUCKET_BITS)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no padding (all fields are naturally aligned and fill the struct), and
    // bytemuck::Pod.
    unsafe impl aya::Pod for crate::GeneratorConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::CounterConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::GeneratorState {}
}
