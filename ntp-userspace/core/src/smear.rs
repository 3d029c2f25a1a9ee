//! Leap smearing per service address (`leapsmear`): the time served to the smeared addresses
//! spreads a leap second over a window centred on it, so that their clients never see the leap
//! announced or made, while every other address serves true UTC with the leap.
//!
//! The smear follows the same decision that sets the kernel's leap flag (the synchronisation's
//! [`Served`]: the leap table or the sources, while synchronised), so it starts only on a leap
//! day that decision announces. Its progress is measured on CLOCK_TAI, which does not leap, as
//! the share of the leap already smeared (`smeared`, seconds, +1 in all for an inserted second,
//! -1 for a deleted one). The smeared time is true UTC minus that share before the leap, and
//! plus the rest of it after. If the announcement is withdrawn before midnight, or the server
//! is unsynchronised (the kernel is then not told to make the leap), the smear unwinds at its own
//! greatest rate, so the smeared addresses never step.

use std::f64::consts::PI;

use ntp_common::wire::Leap;

use crate::{reference::TaiReading, sync::Served};

/// How the leap is spread over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmearShape {
    /// At a constant rate (Google's and AWS's smear: 1/86400 over 24 hours).
    Linear,
    /// Raised cosine: the rate starts and ends at zero, peaking at π/2 times the linear rate.
    Cosine,
}

impl SmearShape {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
        }
    }

    /// The share of the leap smeared at `position` (0 to 1) through the window.
    fn share(self, position: f64) -> f64 {
        match self {
            Self::Linear => position,
            Self::Cosine => (1.0 - (PI * position).cos()) / 2.0,
        }
    }

    /// d share / d position.
    fn slope(self, position: f64) -> f64 {
        match self {
            Self::Linear => 1.0,
            Self::Cosine => PI / 2.0 * (PI * position).sin(),
        }
    }

    const fn max_slope(self) -> f64 {
        match self {
            Self::Linear => 1.0,
            Self::Cosine => PI / 2.0,
        }
    }
}

/// `leapsmear`'s shape and window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmearSettings {
    pub shape: SmearShape,
    /// The window's length, s, centred on the leap (from noon to noon UTC by default).
    pub window: f64,
}

impl SmearSettings {
    pub const DEFAULT_WINDOW: f64 = 86_400.0;
}

/// A leap second announced by the synchronisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LeapInstant {
    /// The CLOCK_TAI instant true time makes the leap.
    pub(crate) midnight_tai_ns: u64,
    /// +1 for an inserted second (true time goes back a second), -1 for a deleted one.
    pub(crate) seconds: f64,
}

/// The leap to expect after the synchronisation's word at `now`, `current` the one expected
/// before it: the one announced while synchronised, and none before it is made once withdrawn
/// or unsynchronised (the kernel's leap flag follows the same word). A leap made stays.
pub(crate) fn follow_announcement(
    current: Option<LeapInstant>,
    now: TaiReading,
    served: &Served,
) -> Option<LeapInstant> {
    let made = current.filter(|leap| now.tai_ns >= leap.midnight_tai_ns);
    // During an inserted second the system clock reads the leap day again: not a new leap.
    if made.is_some() {
        return current;
    }
    match (served.header.map(|h| h.leap), served.leap_at_ns) {
        (Some(leap @ (Leap::InsertSecond | Leap::DeleteSecond)), Some(leap_at)) => {
            Some(LeapInstant {
                midnight_tai_ns: TaiReading::from_system_time(
                    leap_at.max(0) as u64,
                    now.tai_offset_s,
                )
                .tai_ns,
                seconds: if leap == Leap::InsertSecond { 1.0 } else { -1.0 },
            })
        }
        _ => None,
    }
}

/// The share of the leap smeared at a TAI instant, and how fast it grows there.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Progress {
    tai_ns: u64,
    smeared: f64,
    rate: f64,
}

/// The smear's state, updated about once a second with what the synchronisation serves.
#[derive(Clone, Debug, PartialEq)]
pub struct LeapSmear {
    settings: SmearSettings,
    /// The leap being smeared.
    leap: Option<LeapInstant>,
    progress: Option<Progress>,
}

/// `tracking`'s line for a smeared address.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmearReport {
    pub address: std::net::IpAddr,
    /// Smeared minus true time, s.
    pub offset: f64,
}

/// A smear at an instant: smeared time minus true time, and its rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmearOffset {
    /// s; negative while an inserted second is being smeared before midnight.
    pub offset: f64,
    /// s/s.
    pub rate: f64,
}

impl LeapSmear {
    pub fn new(settings: SmearSettings) -> Self {
        Self { settings, leap: None, progress: None }
    }

    /// Follows the synchronisation's word at `now`: a leap announced, or withdrawn (also by
    /// losing synchronisation before it is made).
    pub fn update(&mut self, now: TaiReading, served: &Served) {
        // Nothing is smeared before the first synchronisation: from it on, the smear starts
        // where it stands (a restart within the window resumes it).
        if self.progress.is_none() && served.header.is_none() {
            return;
        }
        self.leap = follow_announcement(self.leap, now, served);
        // Started after a leap, within its window: the smear resumes where it is.
        if self.progress.is_none()
            && let Some((ago, leap)) = served.leap_made
            && ago < self.settings.window / 2.0
        {
            self.leap = Some(LeapInstant {
                midnight_tai_ns: now.tai_ns.saturating_sub((ago * 1e9) as u64),
                seconds: if leap == Leap::InsertSecond { 1.0 } else { -1.0 },
            });
        }
        let (target, target_rate) = self.target(now.tai_ns);
        let progress = match self.progress {
            // From the start (or a restart within the window): where the smear is by now.
            None => Progress { tai_ns: now.tai_ns, smeared: target, rate: target_rate },
            Some(last) => {
                let max_rate = self.settings.shape.max_slope() / self.settings.window;
                let max_step = max_rate * seconds_between(last.tai_ns, now.tai_ns).max(0.0);
                let smeared = last.smeared + (target - last.smeared).clamp(-max_step, max_step);
                let behind = target - smeared;
                let rate =
                    if behind.abs() < 1e-9 { target_rate } else { max_rate * behind.signum() };
                Progress { tai_ns: now.tai_ns, smeared, rate }
            }
        };
        self.progress = Some(progress);
        // Over: true and smeared time agree again.
        if let Some(leap) = self.leap
            && now.tai_ns >= self.window_end(leap)
            && (progress.smeared - leap.seconds).abs() < 1e-9
        {
            self.leap = None;
            self.progress = Some(Progress { tai_ns: now.tai_ns, smeared: 0.0, rate: 0.0 });
        }
    }

    /// Smeared time minus true time at the TAI instant `tai_ns`.
    pub fn offset_at(&self, tai_ns: u64) -> SmearOffset {
        let Some(progress) = self.progress else {
            return SmearOffset { offset: 0.0, rate: 0.0 };
        };
        let smeared = progress.smeared + progress.rate * seconds_between(progress.tai_ns, tai_ns);
        let made = self.leap.filter(|leap| tai_ns >= leap.midnight_tai_ns);
        // Before the leap smeared time lags true time by the share smeared; after it, true time
        // has made the whole leap, and smeared time leads it by the share still to smear.
        SmearOffset {
            offset: made.map_or(0.0, |leap| leap.seconds) - smeared,
            rate: -progress.rate,
        }
    }

    /// Whether a leap is being smeared (announced, or made and not yet fully smeared).
    pub fn is_smearing(&self) -> bool {
        self.leap.is_some() || self.progress.is_some_and(|p| p.smeared != 0.0)
    }

    /// Where the smear should be at `tai_ns`, and its rate there.
    fn target(&self, tai_ns: u64) -> (f64, f64) {
        let Some(leap) = self.leap else { return (0.0, 0.0) };
        let window = self.settings.window;
        let start = leap.midnight_tai_ns as f64 * 1e-9 - window / 2.0;
        let position = (tai_ns as f64 * 1e-9 - start) / window;
        match position {
            p if p <= 0.0 => (0.0, 0.0),
            p if p >= 1.0 => (leap.seconds, 0.0),
            p => (
                leap.seconds * self.settings.shape.share(p),
                leap.seconds * self.settings.shape.slope(p) / window,
            ),
        }
    }

    fn window_end(&self, leap: LeapInstant) -> u64 {
        leap.midnight_tai_ns + (self.settings.window / 2.0 * 1e9) as u64
    }
}

fn seconds_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as i64 - from_ns as i64) as f64 * 1e-9
}

#[cfg(test)]
pub(crate) mod tests {
    use ntp_common::{
        state::ReplyHeader,
        wire::{NtpShort, NtpTimestamp, ReferenceId},
    };

    use super::*;

    const TAI_OFFSET: i32 = 37;
    /// 2026-12-31 00:00:00 UTC and the midnight after it.
    const LEAP_DAY: i64 = 1_798_675_200;
    const MIDNIGHT: i64 = LEAP_DAY + 86_400;

    /// A synchronised server's header announcing `leap` (the smoothing's tests use it too).
    pub(crate) fn header(leap: Leap) -> ReplyHeader {
        ReplyHeader {
            leap,
            stratum: 2,
            precision: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            dispersion_rate: 0.0,
            reference_id: ReferenceId::from_bits([192, 0, 2, 1]),
            reference_time: NtpTimestamp::ZERO,
        }
    }

    /// The system time (s) a leap is made at: an inserted second starts at midnight, a deleted
    /// one is 23:59:59.
    fn leap_at(leap: Leap) -> i64 {
        if leap == Leap::DeleteSecond { MIDNIGHT - 1 } else { MIDNIGHT }
    }

    /// A synchronisation that announces `leap` (until it is made).
    fn served(leap: Leap, system_s: f64) -> Served {
        let announced = leap != Leap::NoWarning && system_s < leap_at(leap) as f64;
        Served {
            correction: 0.0,
            frequency: 0.0,
            header: Some(header(if announced { leap } else { Leap::NoWarning })),
            leap_at_ns: announced.then_some(leap_at(leap) * 1_000_000_000),
            correction_after_leap: 0.0,
            skew: 0.0,
            leap_made: None,
        }
    }

    /// TAI at system time `system_s`; the kernel's offset grows by `leap_seconds` at the leap.
    fn tai(system_s: f64, leap_seconds: i32) -> TaiReading {
        let leap = if leap_seconds < 0 { Leap::DeleteSecond } else { Leap::InsertSecond };
        let made = system_s >= leap_at(leap) as f64;
        let offset = if made { TAI_OFFSET + leap_seconds } else { TAI_OFFSET };
        TaiReading::from_system_time((system_s * 1e9) as u64, offset)
    }

    /// Runs a smear of `leap` from `from` to `to` (system seconds) at one update a second; the
    /// offsets at each update.
    fn run(smear: &mut LeapSmear, leap: Leap, from: i64, to: i64) -> Vec<(i64, f64)> {
        let seconds = if leap == Leap::InsertSecond { 1 } else { -1 };
        (from..=to)
            .map(|t| {
                let now = tai(t as f64, seconds);
                smear.update(now, &served(leap, t as f64));
                (t, smear.offset_at(now.tai_ns).offset)
            })
            .collect()
    }

    fn linear() -> LeapSmear {
        LeapSmear::new(SmearSettings { shape: SmearShape::Linear, window: 86_400.0 })
    }

    #[test]
    fn an_inserted_second_is_smeared_linearly_from_noon_to_noon() {
        let mut smear = linear();
        let noon = MIDNIGHT - 43_200;
        let offsets = run(&mut smear, Leap::InsertSecond, noon - 10, noon + 60);
        assert!(offsets.iter().take(11).all(|(_, o)| *o == 0.0), "nothing before noon");
        let after_minute = offsets.last().unwrap().1;
        assert!((after_minute + 60.0 / 86_400.0).abs() < 1e-9, "{after_minute}");
        assert!(
            (smear.offset_at(tai(noon as f64 + 60.0, 1).tai_ns).rate + 1.0 / 86_400.0).abs()
                < 1e-12
        );
        // Up to midnight: half a second behind true time; then half a second ahead of it.
        run(&mut smear, Leap::InsertSecond, noon + 61, MIDNIGHT - 1);
        let before = smear.offset_at(tai(MIDNIGHT as f64 - 1e-6, 1).tai_ns).offset;
        assert!((before + 0.5).abs() < 1e-6, "{before}");
        let after = run(&mut smear, Leap::InsertSecond, MIDNIGHT, MIDNIGHT)[0].1;
        assert!((after - 0.5).abs() < 1e-4, "{after}");
        // Smeared time itself is continuous: true time went back a second.
        assert!(((after - 1.0) - before).abs() < 1e-4);
        let end = run(&mut smear, Leap::InsertSecond, MIDNIGHT + 1, MIDNIGHT + 43_205);
        assert!(end.iter().rev().take(5).all(|(_, o)| *o == 0.0), "over at noon");
        assert!(!smear.is_smearing());
    }

    #[test]
    fn a_deleted_second_is_smeared_the_other_way() {
        let mut smear = linear();
        // The system clock skips 23:59:59.
        run(&mut smear, Leap::DeleteSecond, MIDNIGHT - 43_300, MIDNIGHT - 2);
        let before = smear.offset_at(tai(MIDNIGHT as f64 - 1.0 - 1e-6, -1).tai_ns).offset;
        assert!((before - 0.5).abs() < 1e-4, "ahead before the deleted second: {before}");
        let after = run(&mut smear, Leap::DeleteSecond, MIDNIGHT, MIDNIGHT)[0].1;
        assert!((after + 0.5).abs() < 1e-4, "{after}");
        assert!(((after + 1.0) - before).abs() < 1e-4, "smeared time is continuous");
        let end = run(&mut smear, Leap::DeleteSecond, MIDNIGHT + 1, MIDNIGHT + 43_205);
        assert_eq!(end.last().unwrap().1, 0.0);
    }

    #[test]
    fn the_cosine_smear_starts_and_ends_gently() {
        let mut smear =
            LeapSmear::new(SmearSettings { shape: SmearShape::Cosine, window: 86_400.0 });
        let offsets = run(&mut smear, Leap::InsertSecond, MIDNIGHT - 43_200, MIDNIGHT - 1);
        // (1 - cos(π 60/86400)) / 2 after a minute: 1.2 us, where the linear smear is 694 us.
        assert!(offsets[60].1.abs() < 2e-6, "slow at first: {}", offsets[60].1);
        assert!((offsets.last().unwrap().1 + 0.5).abs() < 1e-4);
    }

    #[test]
    fn a_withdrawn_announcement_unwinds_without_a_step() {
        let mut smear = linear();
        let offsets = run(&mut smear, Leap::InsertSecond, MIDNIGHT - 43_200, MIDNIGHT - 21_600);
        let reached = offsets.last().unwrap().1;
        assert!((reached + 0.25).abs() < 1e-3);
        // No leap after all: back to true time at the smear's own rate.
        let unwinding = run(&mut smear, Leap::NoWarning, MIDNIGHT - 21_599, MIDNIGHT + 30_000);
        let steps = unwinding.windows(2).map(|w| (w[1].1 - w[0].1).abs()).fold(0.0, f64::max);
        assert!(steps <= 1.0 / 86_400.0 + 1e-12, "a step of {steps} s");
        let back = unwinding.iter().find(|(_, o)| *o == 0.0).expect("back to true time").0;
        assert!((back - (MIDNIGHT - 21_600 + 21_600)).abs() <= 2, "{back}");
        assert!(!smear.is_smearing());
    }

    #[test]
    fn no_announcement_no_smear() {
        let mut smear = linear();
        let offsets = run(&mut smear, Leap::NoWarning, MIDNIGHT - 43_200, MIDNIGHT + 100);
        assert!(offsets.iter().all(|(_, o)| *o == 0.0));
    }

    #[test]
    fn unsynchronised_before_the_leap_it_unwinds_and_after_it_carries_on() {
        let lost = Served { header: None, leap_at_ns: None, ..served(Leap::NoWarning, 0.0) };
        // The kernel is not told to leap while unsynchronised: the smear goes back, smoothly.
        let mut smear = linear();
        run(&mut smear, Leap::InsertSecond, MIDNIGHT - 600, MIDNIGHT - 500);
        let before = smear.offset_at(tai((MIDNIGHT - 500) as f64, 0).tai_ns).offset;
        let now = tai((MIDNIGHT - 400) as f64, 0);
        smear.update(now, &lost);
        let offset = smear.offset_at(now.tai_ns).offset;
        assert!((offset - (before + 100.0 / 86_400.0)).abs() < 1e-9, "{before} -> {offset}");
        let later = tai((MIDNIGHT + 100) as f64, 0);
        smear.update(later, &lost);
        assert!(smear.offset_at(later.tai_ns).offset > offset, "still unwinding, no leap");

        // A leap made stays made: the smear runs on.
        let mut smear = linear();
        run(&mut smear, Leap::InsertSecond, MIDNIGHT - 10, MIDNIGHT + 100);
        let now = tai((MIDNIGHT + 400) as f64, 1);
        smear.update(now, &lost);
        let offset = smear.offset_at(now.tai_ns).offset;
        assert!((offset - (0.5 - 401.0 / 86_400.0)).abs() < 1e-6, "{offset}");
    }

    #[test]
    fn a_restart_within_the_window_resumes_where_the_smear_is() {
        let mut smear = linear();
        // Unsynchronised at first: nothing smeared, nothing started.
        let unsynchronised =
            Served { header: None, leap_at_ns: None, ..served(Leap::NoWarning, 0.0) };
        smear.update(tai((MIDNIGHT - 3_700) as f64, 1), &unsynchronised);
        let offsets = run(&mut smear, Leap::InsertSecond, MIDNIGHT - 3_600, MIDNIGHT - 3_600);
        assert!((offsets[0].1 + (43_200.0 - 3_600.0) / 86_400.0).abs() < 1e-6);
    }

    #[test]
    fn a_restart_after_the_leap_resumes_from_the_leap_table() {
        let mut smear = linear();
        let now = tai((MIDNIGHT + 3_600) as f64, 1);
        // An hour after an inserted second: 3601 s of real time.
        smear.update(
            now,
            &Served {
                leap_made: Some((3_601.0, Leap::InsertSecond)),
                ..served(Leap::NoWarning, 0.0)
            },
        );
        let offset = smear.offset_at(now.tai_ns).offset;
        assert!((offset - (0.5 - 3_601.0 / 86_400.0)).abs() < 1e-9, "{offset}");
        // Once running, the table's word changes nothing.
        smear.update(tai((MIDNIGHT + 3_601) as f64, 1), &served(Leap::NoWarning, 0.0));
        assert!(smear.is_smearing());
    }

    #[test]
    fn between_updates_the_offset_follows_its_rate() {
        let mut smear = linear();
        run(&mut smear, Leap::InsertSecond, MIDNIGHT - 40_000, MIDNIGHT - 40_000);
        let at = |s: f64| smear.offset_at(tai((MIDNIGHT - 40_000) as f64 + s, 1).tai_ns).offset;
        assert!(((at(3.0) - at(0.0)) + 3.0 / 86_400.0).abs() < 1e-12);
    }
}
