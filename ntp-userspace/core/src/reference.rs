//! What this server serves: the time and the reply header that go with it.
//!
//! Synchronised to upstream sources, the server serves the synchronisation's estimate of true
//! time and its header. Otherwise it is a `local` reference (at the configured stratum, as
//! chrony's `local` directive) or unsynchronised (still answered, LI = 3); either way the time is
//! the best estimate there is. Sans-IO: clock readings come in, a [`ServerState`] comes out.

use ntp_common::{
    state::{ReplyHeader, ServerState, TimeAnchor},
    wire::{Leap, NtpShort, NtpTimestamp, ReferenceId},
};

use crate::sync::Served;

/// `local [stratum N] [distance D]`: serve the local clock when nothing better: when
/// unsynchronised, or synchronised with a root distance over D (default 1 s), as chrony does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalReference {
    pub stratum: u8,
    pub distance: f64,
}

/// A CLOCK_TAI reading and the kernel's TAI - UTC offset at that time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaiReading {
    pub tai_ns: u64,
    pub tai_offset_s: i32,
}

impl TaiReading {
    /// The instant the system clock (UTC) read `system_ns`, when TAI - UTC was `tai_offset_s`.
    pub fn from_system_time(system_ns: u64, tai_offset_s: i32) -> Self {
        let tai_ns = system_ns.saturating_add_signed(i64::from(tai_offset_s) * 1_000_000_000);
        Self { tai_ns, tai_offset_s }
    }

    /// The system clock (UTC) at this instant, in Unix-epoch nanoseconds.
    pub fn system_time_ns(&self) -> u64 {
        self.tai_ns.saturating_add_signed(-i64::from(self.tai_offset_s) * 1_000_000_000)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    local: Option<LocalReference>,
    precision: i8,
    /// The synchronisation's latest word, and the system time (Unix ns) it is for.
    served: Option<(Served, u64)>,
}

impl Reference {
    pub fn new(local: Option<LocalReference>, precision: i8) -> Self {
        Self { local, precision, served: None }
    }

    /// The same reference with another `local` setting (a reloaded configuration).
    pub fn with_local(&self, local: Option<LocalReference>) -> Self {
        Self { local, ..self.clone() }
    }

    /// What the synchronisation serves at system time `at_system_ns`.
    pub fn set_served(&mut self, served: Served, at_system_ns: u64) {
        self.served = Some((served, at_system_ns));
    }

    /// Seconds from the synchronisation's word to `now`.
    fn since_served(&self, now: TaiReading) -> f64 {
        self.served.map_or(0.0, |(_, at)| (now.system_time_ns() as i64 - at as i64) as f64 * 1e-9)
    }

    /// The reply header served now.
    pub fn header(&self, now: TaiReading) -> ReplyHeader {
        if let Some((Served { header: Some(header), .. }, _)) = self.served {
            // The root dispersion grows from the synchronisation's word on.
            let elapsed = self.since_served(now).max(0.0);
            let dispersion = header.root_dispersion.to_seconds() + header.dispersion_rate * elapsed;
            let root_distance = header.root_delay.to_seconds() / 2.0 + dispersion;
            // `local distance`: past it, the local reference serves instead (as chrony's does).
            if self.local.is_none_or(|local| root_distance <= local.distance) {
                return ReplyHeader {
                    root_dispersion: NtpShort::from_seconds(dispersion),
                    ..header
                };
            }
        }
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
                reference_time: NtpTimestamp::from_unix_nanos(self.served_unix_ns(now)),
            },
            None => ReplyHeader { precision: self.precision, ..ReplyHeader::UNSYNCHRONISED },
        }
    }

    /// The time served at `now`, Unix ns: the system clock plus the synchronisation's correction.
    fn served_unix_ns(&self, now: TaiReading) -> u64 {
        let correction = self.served.map_or(0.0, |(served, _)| {
            let leapt = served.leap_at_ns.is_some_and(|at| now.system_time_ns() as i64 >= at);
            let leap = if leapt { served.correction_after_leap } else { 0.0 };
            served.correction + served.frequency * self.since_served(now) + leap
        });
        now.system_time_ns().saturating_add_signed((correction * 1e9).round() as i64)
    }

    /// The state to serve from the instant `at` on, fresh for `fresh_for_ns` and never across a
    /// leap second (the system clock and its TAI offset change there).
    pub fn state_at(&self, at: TaiReading, fresh_for_ns: u64) -> ServerState {
        let frequency = self.served.map_or(0.0, |(served, _)| served.frequency);
        let to_leap = self
            .served
            .and_then(|(served, _)| served.leap_at_ns)
            .map(|leap_at| (leap_at - at.system_time_ns() as i64).max(0) as u64);
        let fresh_for_ns = match to_leap {
            Some(to_leap) if to_leap > 0 => fresh_for_ns.min(to_leap),
            _ => fresh_for_ns,
        };
        let anchor =
            TimeAnchor { tai_ns: at.tai_ns, served_unix_ns: self.served_unix_ns(at), frequency };
        ServerState::new(anchor, self.header(at), fresh_for_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: TaiReading = TaiReading { tai_ns: 1_795_660_024_000_000_000, tai_offset_s: 37 };
    /// The system clock at NOW, for resolving timestamps' era.
    const NOW_UNIX_NS: i64 = 1_795_660_024_000_000_000 - 37_000_000_000;

    #[test]
    fn local_reference_serves_the_system_clock_at_its_stratum() {
        let local = LocalReference { stratum: 10, distance: 1.0 };
        let state = Reference::new(Some(local), -25).state_at(NOW, 3_000_000_000);
        let header = state.header();
        assert_eq!((header.stratum, header.leap), (10, Leap::NoWarning));
        assert_eq!(header.reference_id, ReferenceId::LOCAL);
        assert_eq!(header.precision, -25);
        let served = state.served_time(NOW.tai_ns + 1_000).unwrap().to_unix_nanos_near(NOW_UNIX_NS);
        assert_eq!(served, 1_795_660_024_000_000_000 - 37_000_000_000 + 1_000);
    }

    fn synchronised(correction: f64, leap_at_ns: Option<i64>) -> Served {
        Served {
            correction,
            frequency: 1e-6,
            header: Some(ReplyHeader {
                leap: Leap::NoWarning,
                stratum: 2,
                precision: -25,
                root_delay: NtpShort::from_seconds(1e-3),
                root_dispersion: NtpShort::from_seconds(1e-3),
                dispersion_rate: 1e-3,
                reference_id: ReferenceId::from_bits([192, 0, 2, 1]),
                reference_time: NtpTimestamp::from_unix_nanos(1_795_660_000_000_000_000),
            }),
            leap_at_ns,
            correction_after_leap: -1.0,
        }
    }

    #[test]
    fn a_synchronised_server_serves_the_corrected_time_and_its_header() {
        let mut reference = Reference::new(None, -25);
        let system = NOW.system_time_ns();
        reference.set_served(synchronised(0.020, None), system - 1_000_000_000);
        let state = reference.state_at(NOW, 3_000_000_000);
        // 20 ms, plus 1 ppm over the second since the synchronisation's word.
        let served = state.served_time(NOW.tai_ns).unwrap().to_unix_nanos_near(NOW_UNIX_NS);
        assert_eq!(served, system as i64 + 20_001_000);
        let header = state.header();
        assert_eq!(
            (header.stratum, header.reference_id),
            (2, ReferenceId::from_bits([192, 0, 2, 1]))
        );
        // 1 ms at the word, plus 1 ms/s for a second.
        assert!((header.root_dispersion.to_seconds() - 2e-3).abs() < 1e-4);
        assert_eq!(state.fresh_until_tai_ns, NOW.tai_ns + 3_000_000_000);
    }

    #[test]
    fn the_served_state_expires_at_a_leap_second_and_the_time_after_it_leaps() {
        let mut reference = Reference::new(None, -25);
        let system = NOW.system_time_ns();
        let leap_at = system as i64 + 500_000_000;
        reference.set_served(synchronised(0.0, Some(leap_at)), system);
        let state = reference.state_at(NOW, 3_000_000_000);
        assert_eq!(state.fresh_until_tai_ns, NOW.tai_ns + 500_000_000);
        // Past the leap, before the synchronisation's next word: a second back (-x).
        let later = TaiReading { tai_ns: NOW.tai_ns + 600_000_000, ..NOW };
        let served = reference.state_at(later, 1_000_000_000).served_time(later.tai_ns).unwrap();
        assert_eq!(
            served.to_unix_nanos_near(NOW_UNIX_NS),
            system as i64 + 600_000_600 - 1_000_000_000
        );
    }

    #[test]
    fn unsynchronised_the_local_reference_takes_over_with_the_corrected_time() {
        let local = LocalReference { stratum: 10, distance: 1.0 };
        let mut reference = Reference::new(Some(local), -25);
        let system = NOW.system_time_ns();
        reference.set_served(Served { header: None, ..synchronised(-0.5, None) }, system);
        let state = reference.state_at(NOW, 3_000_000_000);
        assert_eq!(state.header().stratum, 10);
        let served = state.served_time(NOW.tai_ns).unwrap();
        assert_eq!(served.to_unix_nanos_near(NOW_UNIX_NS), system as i64 - 500_000_000);
        let unsynchronised = Reference::new(None, -25).state_at(NOW, 3_000_000_000);
        assert_eq!(unsynchronised.header().leap, Leap::Unsynchronised);
    }

    #[test]
    fn past_its_distance_the_local_reference_takes_over_from_a_distant_synchronisation() {
        let system = NOW.system_time_ns();
        // Root distance at the word: 0.5 ms + 1 ms, growing by 1 ms/s.
        for (distance, stratum) in [(1.0, 2), (0.001, 10)] {
            let local = LocalReference { stratum: 10, distance };
            let mut reference = Reference::new(Some(local), -25);
            reference.set_served(synchronised(0.0, None), system);
            let header = reference.state_at(NOW, 3_000_000_000).header();
            assert_eq!(header.stratum, stratum, "local distance {distance}");
        }
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
