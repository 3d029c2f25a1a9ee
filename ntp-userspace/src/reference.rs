//! What this server serves: the time and the reply header that go with it.
//!
//! Without upstream sources the server is either a `local` reference (the system clock, at the
//! configured stratum, as chrony's `local` directive) or unsynchronised (still answered, LI = 3).
//! Sans-IO: clock readings come in, a [`ServerState`] comes out.

use ntp_common::{
    state::{ReplyHeader, ServerState, TimeAnchor},
    wire::{Leap, NtpShort, NtpTimestamp, ReferenceId},
};

use crate::config::LocalReference;

/// A CLOCK_TAI reading and the kernel's TAI - UTC offset at that time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaiReading {
    pub tai_ns: u64,
    pub tai_offset_s: i32,
}

impl TaiReading {
    /// The system clock (UTC) at this instant, in Unix-epoch nanoseconds.
    pub fn system_time_ns(&self) -> u64 {
        self.tai_ns.saturating_add_signed(-i64::from(self.tai_offset_s) * 1_000_000_000)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    local: Option<LocalReference>,
    precision: i8,
}

impl Reference {
    pub fn new(local: Option<LocalReference>, precision: i8) -> Self {
        Self { local, precision }
    }

    pub fn precision(&self) -> i8 {
        self.precision
    }

    /// The reply header served now.
    pub fn header(&self, now: TaiReading) -> ReplyHeader {
        match self.local {
            // chrony serves its local reference with zero root delay and dispersion, and the
            // current time as the reference time.
            Some(local) => ReplyHeader {
                leap: Leap::NoWarning,
                stratum: local.stratum,
                precision: self.precision,
                root_delay: NtpShort::ZERO,
                root_dispersion: NtpShort::ZERO,
                dispersion_rate: 0.0,
                reference_id: ReferenceId::LOCAL,
                reference_time: NtpTimestamp::from_unix_nanos(now.system_time_ns()),
            },
            None => ReplyHeader { precision: self.precision, ..ReplyHeader::UNSYNCHRONISED },
        }
    }

    /// The state to serve from the instant `at` on, fresh for `fresh_for_ns`.
    pub fn state_at(&self, at: TaiReading, fresh_for_ns: u64) -> ServerState {
        let anchor =
            TimeAnchor { tai_ns: at.tai_ns, served_unix_ns: at.system_time_ns(), frequency: 0.0 };
        ServerState::new(anchor, self.header(at), fresh_for_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: TaiReading = TaiReading { tai_ns: 1_795_660_024_000_000_000, tai_offset_s: 37 };

    #[test]
    fn local_reference_serves_the_system_clock_at_its_stratum() {
        let local = LocalReference { stratum: 10, orphan: false, distance: 1.0 };
        let state = Reference::new(Some(local), -25).state_at(NOW, 3_000_000_000);
        let header = state.header();
        assert_eq!((header.stratum, header.leap), (10, Leap::NoWarning));
        assert_eq!(header.reference_id, ReferenceId::LOCAL);
        assert_eq!(header.precision, -25);
        let served = state.served_time(NOW.tai_ns + 1_000).unwrap().to_unix_nanos();
        assert_eq!(served, 1_795_660_024_000_000_000 - 37_000_000_000 + 1_000);
    }

    #[test]
    fn without_a_reference_the_server_is_unsynchronised() {
        let state = Reference::new(None, -25).state_at(NOW, 3_000_000_000);
        let header = state.header();
        assert_eq!((header.leap, header.stratum), (Leap::Unsynchronised, 0));
        assert_eq!(header.reference_id, ReferenceId::NONE);
        assert_eq!(header.root_dispersion, NtpShort::ONE_SECOND);
    }
}
