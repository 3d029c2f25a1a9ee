//! The NTP packet format (RFC 5905): the 48-byte header and its field types.
//!
//! Everything here is a plain value type with `const fn` conversions from and to wire bytes, so
//! the same definitions serve the XDP program (no_std), the daemon and the tests.

/// Length of the NTP header, which is a whole plain client request.
pub const HEADER_LEN: usize = 48;

/// Seconds from the NTP era 0 epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const UNIX_EPOCH_NTP_SECONDS: u64 = 2_208_988_800;
/// Unix time of the first NTP era rollover, 2036-02-07 06:28:16 UTC, ns.
pub const ERA_1_UNIX_NS: u64 = ((1 << 32) - UNIX_EPOCH_NTP_SECONDS) * NANOS_PER_SECOND;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Byte offsets of the header fields.
pub mod offset {
    pub const LI_VN_MODE: usize = 0;
    pub const STRATUM: usize = 1;
    pub const POLL: usize = 2;
    pub const PRECISION: usize = 3;
    pub const ROOT_DELAY: usize = 4;
    pub const ROOT_DISPERSION: usize = 8;
    pub const REFERENCE_ID: usize = 12;
    pub const REFERENCE_TIMESTAMP: usize = 16;
    pub const ORIGIN_TIMESTAMP: usize = 24;
    pub const RECEIVE_TIMESTAMP: usize = 32;
    pub const TRANSMIT_TIMESTAMP: usize = 40;
}

/// An NTP timestamp: seconds since 1900 in the high 32 bits, the fraction in the low 32 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpTimestamp(u64);

impl NtpTimestamp {
    pub const ZERO: Self = Self(0);

    pub const fn from_bits(bytes: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(bytes))
    }

    pub const fn to_bits(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The 32.32 fixed-point value as an integer.
    pub const fn from_fixed(value: u64) -> Self {
        Self(value)
    }

    pub const fn to_fixed(self) -> u64 {
        self.0
    }

    /// Converts nanoseconds since the Unix epoch, rounding the fraction to the nearest 2^-32 s.
    /// The era is dropped, as on the wire: from 2036-02-07 06:28:16 UTC (era 1) the seconds
    /// start again from 0.
    pub const fn from_unix_nanos(unix_ns: u64) -> Self {
        let seconds = unix_ns / NANOS_PER_SECOND + UNIX_EPOCH_NTP_SECONDS;
        let nanos = unix_ns % NANOS_PER_SECOND;
        let fraction = ((nanos << 32) + NANOS_PER_SECOND / 2) / NANOS_PER_SECOND;
        Self((seconds << 32).wrapping_add(fraction))
    }

    /// Nanoseconds since the Unix epoch, rounded to the nearest nanosecond, in the era that
    /// puts this timestamp within 68 years of `reference_unix_ns` (a clock reading): a
    /// timestamp carries no era, so it is resolved against the local clock.
    pub const fn to_unix_nanos_near(self, reference_unix_ns: i64) -> i64 {
        let reference = Self::from_unix_nanos(reference_unix_ns as u64);
        reference_unix_ns + self.nanos_since(reference)
    }

    /// `self - earlier` in nanoseconds: the wrapping difference of the two, which is right
    /// across an era boundary for instants less than 68 years apart.
    pub const fn nanos_since(self, earlier: Self) -> i64 {
        // A signed 32.32 value; seconds and fraction apart, so that nothing overflows.
        let units = self.0.wrapping_sub(earlier.0) as i64;
        let seconds = units >> 32;
        let fraction = (units & 0xffff_ffff) as u64;
        seconds * NANOS_PER_SECOND as i64 + ((fraction * NANOS_PER_SECOND + (1 << 31)) >> 32) as i64
    }
}

/// The NTP short format: 16.16 fixed-point seconds (root delay, root dispersion).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpShort(u32);

impl NtpShort {
    pub const ZERO: Self = Self(0);
    /// 1.0 s: what an unsynchronised server reports as root delay and dispersion.
    pub const ONE_SECOND: Self = Self(1 << 16);

    pub const fn from_bits(bytes: [u8; 4]) -> Self {
        Self(u32::from_be_bytes(bytes))
    }

    pub const fn to_bits(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    pub const fn from_fixed(value: u32) -> Self {
        Self(value)
    }

    pub const fn to_fixed(self) -> u32 {
        self.0
    }

    /// Rounds up, so that an error bound never shrinks on the wire, and saturates.
    #[cfg(feature = "std")]
    pub fn from_seconds(seconds: f64) -> Self {
        let units = (seconds.max(0.0) * 65536.0).ceil();
        Self(if units >= f64::from(u32::MAX) { u32::MAX } else { units as u32 })
    }

    #[cfg(feature = "std")]
    pub fn to_seconds(self) -> f64 {
        f64::from(self.0) / 65536.0
    }
}

/// The leap indicator (the two high bits of the first byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Leap {
    #[default]
    NoWarning = 0,
    InsertSecond = 1,
    DeleteSecond = 2,
    Unsynchronised = 3,
}

impl Leap {
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Self::NoWarning,
            1 => Self::InsertSecond,
            2 => Self::DeleteSecond,
            _ => Self::Unsynchronised,
        }
    }
}

/// The association mode (the three low bits of the first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    Reserved = 0,
    SymmetricActive = 1,
    SymmetricPassive = 2,
    Client = 3,
    Server = 4,
    Broadcast = 5,
    Control = 6,
    Private = 7,
}

impl Mode {
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b111 {
            0 => Self::Reserved,
            1 => Self::SymmetricActive,
            2 => Self::SymmetricPassive,
            3 => Self::Client,
            4 => Self::Server,
            5 => Self::Broadcast,
            6 => Self::Control,
            _ => Self::Private,
        }
    }
}

/// The versions a server answers (RFC 5905 servers answer v1-v4 and echo the version).
pub const fn is_served_version(version: u8) -> bool {
    matches!(version, 1..=4)
}

/// Packs the first header byte.
pub const fn li_vn_mode(leap: Leap, version: u8, mode: Mode) -> u8 {
    ((leap as u8) << 6) | ((version & 0b111) << 3) | mode as u8
}

/// Splits the first header byte into leap indicator, version and mode.
pub const fn split_li_vn_mode(byte: u8) -> (Leap, u8, Mode) {
    (Leap::from_bits(byte >> 6), (byte >> 3) & 0b111, Mode::from_bits(byte))
}

/// The reference identifier: an IPv4 address, a hash of an IPv6 address, or four ASCII
/// characters (a reference clock's name or a kiss code).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReferenceId([u8; 4]);

impl ReferenceId {
    pub const NONE: Self = Self([0; 4]);
    /// chrony's identifier for the `local` reference (127.127.1.1).
    pub const LOCAL: Self = Self([0x7f, 0x7f, 0x01, 0x01]);
    /// Kiss-o'-death code asking the client to reduce its rate.
    pub const KISS_RATE: Self = Self(*b"RATE");
    /// NTS: the server cannot open the cookie or verify the request (RFC 8915 5.7).
    pub const KISS_NTS_NAK: Self = Self(*b"NTSN");

    pub const fn from_bits(bytes: [u8; 4]) -> Self {
        Self(bytes)
    }

    pub const fn to_bits(self) -> [u8; 4] {
        self.0
    }
}

/// An NTP header, decoded. The daemon and tests use it; the XDP program writes fields directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NtpHeader {
    pub leap: Leap,
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: ReferenceId,
    pub reference_timestamp: NtpTimestamp,
    pub origin_timestamp: NtpTimestamp,
    pub receive_timestamp: NtpTimestamp,
    pub transmit_timestamp: NtpTimestamp,
}

const fn array<const N: usize>(bytes: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[at + i];
        i += 1;
    }
    out
}

impl NtpHeader {
    pub const fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Self {
        let (leap, version, mode) = split_li_vn_mode(bytes[offset::LI_VN_MODE]);
        Self {
            leap,
            version,
            mode,
            stratum: bytes[offset::STRATUM],
            poll: bytes[offset::POLL] as i8,
            precision: bytes[offset::PRECISION] as i8,
            root_delay: NtpShort::from_bits(array(bytes, offset::ROOT_DELAY)),
            root_dispersion: NtpShort::from_bits(array(bytes, offset::ROOT_DISPERSION)),
            reference_id: ReferenceId::from_bits(array(bytes, offset::REFERENCE_ID)),
            reference_timestamp: NtpTimestamp::from_bits(array(bytes, offset::REFERENCE_TIMESTAMP)),
            origin_timestamp: NtpTimestamp::from_bits(array(bytes, offset::ORIGIN_TIMESTAMP)),
            receive_timestamp: NtpTimestamp::from_bits(array(bytes, offset::RECEIVE_TIMESTAMP)),
            transmit_timestamp: NtpTimestamp::from_bits(array(bytes, offset::TRANSMIT_TIMESTAMP)),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[offset::LI_VN_MODE] = li_vn_mode(self.leap, self.version, self.mode);
        out[offset::STRATUM] = self.stratum;
        out[offset::POLL] = self.poll as u8;
        out[offset::PRECISION] = self.precision as u8;
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset::ROOT_DELAY, &self.root_delay.to_bits());
        put(offset::ROOT_DISPERSION, &self.root_dispersion.to_bits());
        put(offset::REFERENCE_ID, &self.reference_id.to_bits());
        put(offset::REFERENCE_TIMESTAMP, &self.reference_timestamp.to_bits());
        put(offset::ORIGIN_TIMESTAMP, &self.origin_timestamp.to_bits());
        put(offset::RECEIVE_TIMESTAMP, &self.receive_timestamp.to_bits());
        put(offset::TRANSMIT_TIMESTAMP, &self.transmit_timestamp.to_bits());
        out
    }

    /// A plain client request as a client would send it.
    pub const fn client_request(version: u8, poll: i8, transmit_timestamp: NtpTimestamp) -> Self {
        Self {
            leap: Leap::NoWarning,
            version,
            mode: Mode::Client,
            stratum: 0,
            poll,
            precision: 0,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: ReferenceId::NONE,
            reference_timestamp: NtpTimestamp::ZERO,
            origin_timestamp: NtpTimestamp::ZERO,
            receive_timestamp: NtpTimestamp::ZERO,
            transmit_timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn unix_epoch_is_ntp_seconds_2208988800() {
        assert_eq!(NtpTimestamp::from_unix_nanos(0).to_fixed(), 2_208_988_800 << 32);
        assert_eq!(NtpTimestamp::from_unix_nanos(500_000_000).to_fixed() & 0xffff_ffff, 1 << 31);
    }

    #[test]
    fn the_era_rolls_over_in_2036_and_differences_carry_across_it() {
        assert_eq!(ERA_1_UNIX_NS, 2_085_978_496_000_000_000);
        let last_of_era_0 = NtpTimestamp::from_unix_nanos(ERA_1_UNIX_NS - 500_000_000);
        let first_of_era_1 = NtpTimestamp::from_unix_nanos(ERA_1_UNIX_NS + 250_000_000);
        assert_eq!(last_of_era_0.to_fixed() >> 32, 0xffff_ffff);
        assert_eq!(first_of_era_1.to_fixed() >> 32, 0);
        assert_eq!(first_of_era_1.nanos_since(last_of_era_0), 750_000_000);
        assert_eq!(last_of_era_0.nanos_since(first_of_era_1), -750_000_000);
        // Resolved against a clock on either side of the rollover.
        for reference in [ERA_1_UNIX_NS - 60_000_000_000, ERA_1_UNIX_NS + 60_000_000_000] {
            let reference = reference as i64;
            assert_eq!(
                first_of_era_1.to_unix_nanos_near(reference),
                ERA_1_UNIX_NS as i64 + 250_000_000
            );
            assert_eq!(
                last_of_era_0.to_unix_nanos_near(reference),
                ERA_1_UNIX_NS as i64 - 500_000_000
            );
        }
    }

    #[test]
    fn first_byte_packs_leap_version_mode() {
        assert_eq!(li_vn_mode(Leap::NoWarning, 4, Mode::Client), 0x23);
        assert_eq!(li_vn_mode(Leap::Unsynchronised, 4, Mode::Server), 0xe4);
        assert_eq!(split_li_vn_mode(0x1b), (Leap::NoWarning, 3, Mode::Client));
    }

    #[test]
    fn short_format_rounds_up() {
        assert_eq!(NtpShort::from_seconds(1.0), NtpShort::ONE_SECOND);
        assert_eq!(NtpShort::from_seconds(1e-9).to_fixed(), 1);
        assert_eq!(NtpShort::from_seconds(-3.0), NtpShort::ZERO);
        assert_eq!(NtpShort::from_seconds(1e9).to_fixed(), u32::MAX);
    }

    proptest! {
        #[test]
        fn header_round_trips(bytes in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform16(any::<u8>())) {
            let mut packet = [0u8; HEADER_LEN];
            packet[..32].copy_from_slice(&bytes);
            packet[32..].copy_from_slice(&tail);
            prop_assert_eq!(NtpHeader::from_bytes(&packet).to_bytes(), packet);
        }

        #[test]
        fn unix_nanos_round_trip_in_either_era_near_the_reference(
            ns in 0u64..4_000_000_000_000_000_000,
            reference_offset in -2_000_000_000_000_000_000i64..2_000_000_000_000_000_000,
        ) {
            let reference = (ns as i64 + reference_offset).max(0);
            let ntp = NtpTimestamp::from_unix_nanos(ns);
            prop_assert_eq!(ntp.to_unix_nanos_near(reference), ns as i64);
        }
    }
}
