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

use crate::{
    smear::{LeapSmear, SmearSettings},
    smoothing::{Smoothing, SmoothingSettings},
    sync::Served,
};

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
    /// `smoothtime`: every address serves smoothed time.
    smoothing: Option<Smoothing>,
    /// `leapsmear`: the smeared addresses serve leap-smeared time.
    smear: Option<LeapSmear>,
}

/// chrony's reference ID for smoothed time (127.127.1.255), while the smoothing offset is
/// over the clock's precision.
const REFERENCE_ID_SMOOTHED: ReferenceId = ReferenceId::from_bits([127, 127, 1, 255]);

impl Reference {
    pub fn new(local: Option<LocalReference>, precision: i8) -> Self {
        Self { local, precision, served: None, smoothing: None, smear: None }
    }

    /// The same reference, serving smoothed time (`smoothtime`).
    pub fn smoothed(self, settings: Option<SmoothingSettings>) -> Self {
        Self { smoothing: settings.map(Smoothing::new), ..self }
    }

    /// The same reference, with a leap-smeared time for the smeared addresses (`leapsmear`).
    pub fn leap_smeared(self, settings: Option<SmearSettings>) -> Self {
        Self { smear: settings.map(LeapSmear::new), ..self }
    }

    /// The same reference with another `local` setting (a reloaded configuration).
    pub fn with_local(&self, local: Option<LocalReference>) -> Self {
        Self { local, ..self.clone() }
    }

    /// What the synchronisation serves at `at`; the smoothing and the smear follow it.
    pub fn set_served(&mut self, served: Served, at: TaiReading) {
        if let Some(smoothing) = &mut self.smoothing {
            // How the new word moves true time at this instant, against the last one's.
            let (jump, frequency_change) = match self.served {
                Some((old, _)) => {
                    let before = true_time_ns(self.served, at) as i64;
                    let after = true_time_ns(Some((served, at.system_time_ns())), at) as i64;
                    ((after - before) as f64 * 1e-9, served.frequency - old.frequency)
                }
                None => (0.0, 0.0),
            };
            smoothing.update(at, &served, jump, frequency_change);
        }
        if let Some(smear) = &mut self.smear {
            smear.update(at, &served);
        }
        self.served = Some((served, at.system_time_ns()));
    }

    /// The clock was stepped: smoothing serves true time from now on (as chrony's does).
    pub fn clock_stepped(&mut self, at: TaiReading) {
        if let Some(smoothing) = &mut self.smoothing {
            smoothing.reset(at.tai_ns);
        }
    }

    pub fn smoothing(&self) -> Option<&Smoothing> {
        self.smoothing.as_ref()
    }

    pub fn smoothing_mut(&mut self) -> Option<&mut Smoothing> {
        self.smoothing.as_mut()
    }

    /// Smeared minus true time at `at`, with `leapsmear`.
    pub fn smear_offset(&self, at: TaiReading) -> Option<f64> {
        self.smear.as_ref().map(|smear| smear.offset_at(at.tai_ns).offset)
    }

    /// Seconds from the synchronisation's word to `now`.
    fn since_served(&self, now: TaiReading) -> f64 {
        self.served.map_or(0.0, |(_, at)| (now.system_time_ns() as i64 - at as i64) as f64 * 1e-9)
    }

    /// The reply header served now (true time's).
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
                reference_time: NtpTimestamp::from_unix_nanos(true_time_ns(self.served, now)),
            },
            None => ReplyHeader { precision: self.precision, ..ReplyHeader::UNSYNCHRONISED },
        }
    }

    /// The state to serve to every address not smeared from the instant `at` on, fresh for
    /// `fresh_for_ns` and never across a leap second (the system clock and its TAI offset
    /// change there): true time, or with `smoothtime`, smoothed time.
    pub fn state_at(&self, at: TaiReading, fresh_for_ns: u64) -> ServerState {
        let to_leap = self
            .served
            .and_then(|(served, _)| served.leap_at_ns)
            .map(|leap_at| (leap_at - at.system_time_ns() as i64).max(0) as u64);
        let fresh_for_ns = match to_leap {
            Some(to_leap) if to_leap > 0 => fresh_for_ns.min(to_leap),
            _ => fresh_for_ns,
        };
        let header = self.header(at);
        match &self.smoothing {
            Some(smoothing) => {
                let (offset, rate) = smoothing.offset_at(at.tai_ns);
                let mut header = without_leap_warning(header);
                if offset.abs() > 2f64.powi(self.precision.into()) && header.stratum != 0 {
                    header.reference_id = REFERENCE_ID_SMOOTHED;
                }
                self.anchored(at, fresh_for_ns, offset, rate, header)
            }
            None => self.anchored(at, fresh_for_ns, 0.0, 0.0, header),
        }
    }

    /// With `leapsmear`, the state to serve to the smeared addresses from the instant `at` on:
    /// smeared time, which makes no leap, and no leap announced.
    pub fn smeared_state_at(&self, at: TaiReading, fresh_for_ns: u64) -> Option<ServerState> {
        let smear = self.smear.as_ref()?.offset_at(at.tai_ns);
        let header = without_leap_warning(self.header(at));
        Some(self.anchored(at, fresh_for_ns, smear.offset, smear.rate, header))
    }

    /// True time at `at` plus `offset` (s), running `rate` (s/s) faster than it.
    fn anchored(
        &self,
        at: TaiReading,
        fresh_for_ns: u64,
        offset: f64,
        rate: f64,
        header: ReplyHeader,
    ) -> ServerState {
        let frequency = self.served.map_or(0.0, |(served, _)| served.frequency) + rate;
        let served_unix_ns =
            true_time_ns(self.served, at).saturating_add_signed((offset * 1e9).round() as i64);
        ServerState::new(
            TimeAnchor { tai_ns: at.tai_ns, served_unix_ns, frequency },
            header,
            fresh_for_ns,
        )
    }
}

/// True time at `now`, Unix ns: the system clock plus the synchronisation's correction (and,
/// under -x, the leap it makes).
fn true_time_ns(served: Option<(Served, u64)>, now: TaiReading) -> u64 {
    let correction = served.map_or(0.0, |(served, at)| {
        let leapt = served.leap_at_ns.is_some_and(|at| now.system_time_ns() as i64 >= at);
        let leap = if leapt { served.correction_after_leap } else { 0.0 };
        let since = (now.system_time_ns() as i64 - at as i64) as f64 * 1e-9;
        served.correction + served.frequency * since + leap
    });
    now.system_time_ns().saturating_add_signed((correction * 1e9).round() as i64)
}

/// A leap second is smoothed or smeared, not announced.
fn without_leap_warning(header: ReplyHeader) -> ReplyHeader {
    match header.leap {
        Leap::InsertSecond | Leap::DeleteSecond => ReplyHeader { leap: Leap::NoWarning, ..header },
        _ => header,
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
            skew: 0.0,
            leap_made: None,
        }
    }

    #[test]
    fn a_synchronised_server_serves_the_corrected_time_and_its_header() {
        let mut reference = Reference::new(None, -25);
        let system = NOW.system_time_ns();
        let earlier = TaiReading { tai_ns: NOW.tai_ns - 1_000_000_000, ..NOW };
        reference.set_served(synchronised(0.020, None), earlier);
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
        reference.set_served(synchronised(0.0, Some(leap_at)), NOW);
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
        reference.set_served(Served { header: None, ..synchronised(-0.5, None) }, NOW);
        let state = reference.state_at(NOW, 3_000_000_000);
        assert_eq!(state.header().stratum, 10);
        let served = state.served_time(NOW.tai_ns).unwrap();
        assert_eq!(served.to_unix_nanos_near(NOW_UNIX_NS), system as i64 - 500_000_000);
        let unsynchronised = Reference::new(None, -25).state_at(NOW, 3_000_000_000);
        assert_eq!(unsynchronised.header().leap, Leap::Unsynchronised);
    }

    #[test]
    fn past_its_distance_the_local_reference_takes_over_from_a_distant_synchronisation() {
        // Root distance at the word: 0.5 ms + 1 ms, growing by 1 ms/s.
        for (distance, stratum) in [(1.0, 2), (0.001, 10)] {
            let local = LocalReference { stratum: 10, distance };
            let mut reference = Reference::new(Some(local), -25);
            reference.set_served(synchronised(0.0, None), NOW);
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

    #[test]
    fn a_smeared_state_beside_the_true_one_across_an_inserted_second() {
        use crate::smear::{SmearSettings, SmearShape};
        let settings = SmearSettings { shape: SmearShape::Linear, window: 86_400.0 };
        let mut reference = Reference::new(None, -25).leap_smeared(Some(settings));
        assert!(Reference::new(None, -25).smeared_state_at(NOW, 1).is_none());
        // Six hours before an inserted second (-x: true time leaps, the system clock does not).
        let midnight = NOW.system_time_ns() as i64 + 6 * 3_600_000_000_000;
        let announcing = |at: TaiReading| Served {
            header: synchronised(0.0, None)
                .header
                .map(|h| ReplyHeader { leap: Leap::InsertSecond, ..h }),
            frequency: 0.0,
            ..synchronised(0.0, (at.system_time_ns() < midnight as u64).then_some(midnight))
        };
        reference.set_served(announcing(NOW), NOW);
        let served = |state: ServerState, at: TaiReading| {
            state.served_time(at.tai_ns).unwrap().to_unix_nanos_near(NOW_UNIX_NS)
        };
        let true_state = reference.state_at(NOW, 3_000_000_000);
        let smeared = reference.smeared_state_at(NOW, 3_000_000_000).unwrap();
        assert_eq!(true_state.header().leap, Leap::InsertSecond);
        assert_eq!(smeared.header().leap, Leap::NoWarning);
        // A quarter of the second smeared by now, and 1/86400 more each second.
        let lag = served(true_state, NOW) - served(smeared, NOW);
        assert!((lag - 250_000_000).abs() < 1_000, "{lag}");
        let later = TaiReading { tai_ns: NOW.tai_ns + 3_000_000_000, ..NOW };
        let lag_later = served(true_state, later) - served(smeared, later);
        assert!((lag_later - lag - 34_722).abs() < 10, "{}", lag_later - lag);
        assert_eq!(smeared.fresh_until_tai_ns, NOW.tai_ns + 3_000_000_000);

        // A second past midnight, true time has gone back a second; smeared time has not.
        let after =
            TaiReading { tai_ns: NOW.tai_ns + 6 * 3_600_000_000_000 + 1_000_000_000, ..NOW };
        reference.set_served(announcing(after), after);
        let true_after = served(reference.state_at(after, 1), after);
        let smeared_after = served(reference.smeared_state_at(after, 1).unwrap(), after);
        assert!((smeared_after - true_after - 500_000_000).abs() < 100_000);
        let smear = reference.smear_offset(after).unwrap();
        assert!((smear - 0.5).abs() < 1e-4, "{smear}");
    }

    #[test]
    fn smoothtime_absorbs_a_correction_and_says_so_in_its_reference_id() {
        let settings =
            SmoothingSettings { max_frequency_ppm: 400.0, max_wander_ppm: 0.01, leap_only: false };
        let mut reference = Reference::new(None, -25).smoothed(Some(settings));
        let steady = Served { frequency: 0.0, ..synchronised(0.0, None) };
        reference.set_served(steady, NOW);
        // True time moves 10 ms ahead; served time does not jump.
        let later = TaiReading { tai_ns: NOW.tai_ns + 1_000_000_000, ..NOW };
        reference.set_served(Served { correction: 0.010, ..steady }, later);
        let state = reference.state_at(later, 3_000_000_000);
        let served = state.served_time(later.tai_ns).unwrap().to_unix_nanos_near(NOW_UNIX_NS);
        assert!((served - later.system_time_ns() as i64).abs() < 1_000, "{served}");
        assert_eq!(state.header().reference_id, REFERENCE_ID_SMOOTHED);
        let (offset, _) = reference.smoothing().unwrap().offset_at(later.tai_ns);
        assert!((offset + 0.010).abs() < 1e-9);
    }
}
