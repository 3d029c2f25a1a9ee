//! The server state the daemon publishes and the XDP program serves: a time model and the reply
//! header, in one map value.
//!
//! The kernel offers `bpf_ktime_get_tai_ns()` but no realtime clock, and 64-bit division is slow
//! in BPF. So the daemon anchors the served time at a TAI reading (`base_tai_ns`, with the time it
//! means to serve at that instant, `base_time`) and gives the rate at which served time advances
//! per TAI nanosecond. This is DESIGN.md's formula
//! `served = tai - tai_offset + corr + (tai - base_tai) * slope` with `tai_offset` and `corr`
//! folded into `base_time` and `slope` into the rate, evaluated with one multiplication:
//! `served = base_time + elapsed * (4 + rate_excess_q32 / 2^32)` in 2^-32 s units, where
//! 2^32 / 10^9 * (1 + frequency) = 4.29... is the number of NTP fraction units per nanosecond.
//! `elapsed` is bounded by [`MAX_STATE_AGE_NS`] < 2^32, which keeps the products in 64 bits.

use bytemuck::{Pod, Zeroable};

use crate::wire::{Leap, NtpShort, NtpTimestamp, ReferenceId};

/// The longest a published state may be served after its anchor. Past its freshness deadline
/// (at most this long) the program passes requests to the daemon's socket instead.
pub const MAX_STATE_AGE_NS: u64 = 4_000_000_000;

/// The time model and reply header served by the XDP program and the slow path alike.
///
/// Integers are in host byte order; writers convert to the wire's big-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerState {
    /// CLOCK_TAI reading, in ns, at which `base_time` is the time to serve.
    pub base_tai_ns: u64,
    /// The time to serve at `base_tai_ns`, as an NTP 32.32 fixed-point value.
    pub base_time: u64,
    /// Served time per TAI nanosecond beyond 4 units of 2^-32 s, scaled by 2^32.
    pub rate_excess_q32: u64,
    /// CLOCK_TAI reading after which this state must not be served.
    pub fresh_until_tai_ns: u64,
    /// Reference timestamp (time of the last clock update), NTP 32.32.
    pub reference_time: u64,
    /// Root dispersion growth in 2^-16 s units per TAI nanosecond, scaled by 2^48.
    pub dispersion_rate_q48: u64,
    /// Root delay at `base_tai_ns`, NTP short format.
    pub root_delay: u32,
    /// Root dispersion at `base_tai_ns`, NTP short format.
    pub root_dispersion: u32,
    pub reference_id: [u8; 4],
    /// [`Leap`] as its two-bit value.
    pub leap: u8,
    pub stratum: u8,
    /// log2 of the clock's precision in seconds.
    pub precision: i8,
    pub reserved: u8,
}

const _: () = assert!(size_of::<ServerState>() == 64);
const _: () = assert!(MAX_STATE_AGE_NS < 1 << 32);

impl ServerState {
    /// Nanoseconds since the anchor, or `None` when `tai_ns` is outside the state's validity
    /// (not yet anchored, past the freshness deadline, or a clock step moved TAI backwards).
    #[inline(always)]
    pub const fn elapsed_ns(&self, tai_ns: u64) -> Option<u64> {
        if tai_ns < self.base_tai_ns || tai_ns > self.fresh_until_tai_ns {
            return None;
        }
        let elapsed = tai_ns - self.base_tai_ns;
        if elapsed > MAX_STATE_AGE_NS { None } else { Some(elapsed) }
    }

    /// The time to serve at the TAI instant `tai_ns`.
    #[inline(always)]
    pub const fn served_time(&self, tai_ns: u64) -> Option<NtpTimestamp> {
        match self.elapsed_ns(tai_ns) {
            Some(elapsed) => Some(self.served_time_after(elapsed)),
            None => None,
        }
    }

    /// The time to serve `elapsed` (< 2^32) TAI nanoseconds after the anchor.
    #[inline(always)]
    pub const fn served_time_after(&self, elapsed: u64) -> NtpTimestamp {
        let units = (elapsed << 2).wrapping_add(elapsed.wrapping_mul(self.rate_excess_q32) >> 32);
        NtpTimestamp::from_fixed(self.base_time.wrapping_add(units))
    }

    /// Time since the anchor at the transmit instant: not before the receive instant and within
    /// the state's bounds even if a clock step came between the two readings (the state may
    /// expire between them; the reply is still completed).
    #[inline(always)]
    pub const fn transmit_elapsed_ns(&self, received: u64, transmit_tai_ns: u64) -> u64 {
        if transmit_tai_ns < self.base_tai_ns {
            return received;
        }
        let elapsed = transmit_tai_ns - self.base_tai_ns;
        if elapsed < received || elapsed > MAX_STATE_AGE_NS { received } else { elapsed }
    }

    /// Root dispersion `elapsed` (< 2^32) TAI nanoseconds after the anchor, saturating.
    #[inline(always)]
    pub const fn root_dispersion_after(&self, elapsed: u64) -> NtpShort {
        let growth = elapsed.wrapping_mul(self.dispersion_rate_q48) >> 48;
        let total = self.root_dispersion as u64 + growth;
        NtpShort::from_fixed(if total > u32::MAX as u64 { u32::MAX } else { total as u32 })
    }

    pub const fn leap(&self) -> Leap {
        Leap::from_bits(self.leap)
    }
}

/// The reply header fields of a [`ServerState`], in their wire types.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplyHeader {
    pub leap: Leap,
    pub stratum: u8,
    pub precision: i8,
    pub root_delay: NtpShort,
    /// Root dispersion at the anchor.
    pub root_dispersion: NtpShort,
    /// Growth of the root dispersion, in seconds per second.
    pub dispersion_rate: f64,
    pub reference_id: ReferenceId,
    pub reference_time: NtpTimestamp,
}

impl ReplyHeader {
    /// What a server without a usable reference serves (RFC 5905 and chrony: still answered).
    pub const UNSYNCHRONISED: Self = Self {
        leap: Leap::Unsynchronised,
        stratum: 0,
        precision: 0,
        root_delay: NtpShort::ONE_SECOND,
        root_dispersion: NtpShort::ONE_SECOND,
        dispersion_rate: 0.0,
        reference_id: ReferenceId::NONE,
        reference_time: NtpTimestamp::ZERO,
    };
}

/// Where served time stands at one TAI instant, and how fast it runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeAnchor {
    /// A CLOCK_TAI reading, in ns.
    pub tai_ns: u64,
    /// The time to serve at that instant, as Unix-epoch nanoseconds (UTC).
    pub served_unix_ns: u64,
    /// How much faster served time runs than TAI (e.g. 1e-6: 1 ppm faster).
    pub frequency: f64,
}

/// Largest frequency correction and dispersion rate a state can carry (the integer arithmetic
/// above is exact within these bounds; real clocks stay far inside them).
#[cfg(feature = "std")]
const MAX_RATE: f64 = 0.01;

/// 2^64 / 10^9: NTP fraction units (2^-32 s) per nanosecond, scaled by 2^32; equally, 2^-16 s
/// units per nanosecond scaled by 2^48.
#[cfg(feature = "std")]
const UNITS_PER_NS_Q32: f64 = 18_446_744_073.709_553;

#[cfg(feature = "std")]
impl ServerState {
    /// Builds the state served from `anchor` until `fresh_for_ns` (at most
    /// [`MAX_STATE_AGE_NS`]) later.
    pub fn new(anchor: TimeAnchor, header: ReplyHeader, fresh_for_ns: u64) -> Self {
        let frequency = anchor.frequency.clamp(-MAX_RATE, MAX_RATE);
        let rate_excess = UNITS_PER_NS_Q32 * (1.0 + frequency) - (4u64 << 32) as f64;
        let dispersion_rate = header.dispersion_rate.clamp(0.0, MAX_RATE);
        Self {
            base_tai_ns: anchor.tai_ns,
            base_time: NtpTimestamp::from_unix_nanos(anchor.served_unix_ns).to_fixed(),
            rate_excess_q32: rate_excess.round() as u64,
            fresh_until_tai_ns: anchor.tai_ns + fresh_for_ns.min(MAX_STATE_AGE_NS),
            reference_time: header.reference_time.to_fixed(),
            dispersion_rate_q48: (dispersion_rate * UNITS_PER_NS_Q32).round() as u64,
            root_delay: header.root_delay.to_fixed(),
            root_dispersion: header.root_dispersion.to_fixed(),
            reference_id: header.reference_id.to_bits(),
            leap: header.leap as u8,
            stratum: header.stratum,
            precision: header.precision,
            reserved: 0,
        }
    }

    pub fn header(&self) -> ReplyHeader {
        ReplyHeader {
            leap: self.leap(),
            stratum: self.stratum,
            precision: self.precision,
            root_delay: NtpShort::from_fixed(self.root_delay),
            root_dispersion: NtpShort::from_fixed(self.root_dispersion),
            dispersion_rate: self.dispersion_rate_q48 as f64 / UNITS_PER_NS_Q32,
            reference_id: ReferenceId::from_bits(self.reference_id),
            reference_time: NtpTimestamp::from_fixed(self.reference_time),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SYNCED: ReplyHeader = ReplyHeader {
        leap: Leap::NoWarning,
        stratum: 2,
        precision: -24,
        root_delay: NtpShort::from_fixed(100),
        root_dispersion: NtpShort::from_fixed(200),
        dispersion_rate: 15e-6,
        reference_id: ReferenceId::from_bits([192, 0, 2, 1]),
        reference_time: NtpTimestamp::from_fixed(0xe000_0000_0000_0000),
    };

    fn state(frequency: f64) -> ServerState {
        let anchor = TimeAnchor {
            tai_ns: 1_000_000_000_000,
            served_unix_ns: 1_795_659_987_000_000_000,
            frequency,
        };
        ServerState::new(anchor, SYNCED, MAX_STATE_AGE_NS)
    }

    /// Served time computed the slow, obvious way in floating point.
    fn reference_served_ns(frequency: f64, elapsed: u64) -> f64 {
        elapsed as f64 * (1.0 + frequency)
    }

    #[test]
    fn is_not_served_outside_its_validity() {
        let s = state(0.0);
        assert_eq!(s.served_time(s.base_tai_ns - 1), None);
        assert_eq!(s.served_time(s.fresh_until_tai_ns + 1), None);
        assert!(s.served_time(s.fresh_until_tai_ns).is_some());
        assert_eq!(ServerState::zeroed().served_time(123), None, "an unpublished state is stale");
    }

    #[test]
    fn header_survives_the_round_trip() {
        let header = state(0.0).header();
        assert_eq!(header.reference_id, SYNCED.reference_id);
        assert_eq!(header.root_dispersion, SYNCED.root_dispersion);
        assert!((header.dispersion_rate - 15e-6).abs() < 1e-10, "one step of 2^-48 per ns");
    }

    #[test]
    fn dispersion_grows_at_its_rate() {
        let s = state(0.0);
        let after_one_second = s.root_dispersion_after(1_000_000_000).to_fixed() - 200;
        // 15 us in 2^-16 s units is 0.98.
        assert!(after_one_second <= 1);
        let after_four = s.root_dispersion_after(4_000_000_000).to_fixed() - 200;
        assert_eq!(after_four, (60e-6 * 65536.0) as u32);
    }

    proptest! {
        #[test]
        fn served_time_follows_the_anchor_and_rate(
            elapsed in 0..=MAX_STATE_AGE_NS,
            ppm in -500.0f64..500.0,
        ) {
            let frequency = ppm * 1e-6;
            let s = state(frequency);
            let served = s.served_time(s.base_tai_ns + elapsed).unwrap();
            let delta_units = served.to_fixed().wrapping_sub(s.base_time) as f64;
            let delta_ns = delta_units * 1e9 / 4_294_967_296.0;
            let expected = reference_served_ns(frequency, elapsed);
            prop_assert!((delta_ns - expected).abs() < 1.0, "{delta_ns} vs {expected}");
        }
    }
}
