//! chrony's time smoothing (`smoothtime MAX-FREQ MAX-WANDER [leaponly]`), for every address:
//! served time is true time plus a smoothing offset that absorbs each change of the time model
//! (with `leaponly`, only leap seconds) and is then taken out along a three-stage frequency
//! profile: the frequency ramps at most at MAX-WANDER towards at most MAX-FREQ, holds, and
//! ramps back to zero as the offset reaches zero. The behaviour is chrony's `smooth.c`, learned
//! from its sources and written anew here.

use crate::{
    reference::TaiReading,
    smear::{LeapInstant, follow_announcement},
    sync::Served,
};

/// `smoothtime`'s settings, as written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothingSettings {
    /// The greatest frequency of served time against true time, ppm.
    pub max_frequency_ppm: f64,
    /// The greatest change of that frequency, ppm per second.
    pub max_wander_ppm: f64,
    /// Only leap seconds are smoothed.
    pub leap_only: bool,
}

impl SmoothingSettings {
    /// s/s.
    fn max_frequency(&self) -> f64 {
        self.max_frequency_ppm * 1e-6
    }

    /// s/s².
    fn max_wander(&self) -> f64 {
        self.max_wander_ppm * 1e-6
    }
}

/// chrony activates smoothing once the estimated skew is under this many times the wander.
const ACTIVATION_SKEW_PER_WANDER: f64 = 10_000.0;

/// How long after its instant a leap absorbed is remembered: through an inserted second the
/// system clock reads the leap day's last second again, and the leap is announced again.
const ABSORBED_LEAP_REMEMBERED_NS: u64 = 2_000_000_000;

/// One stage of the profile: the frequency changes by `wander` per second for `length` s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Stage {
    wander: f64,
    length: f64,
}

/// The smoothing's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Smoothing {
    settings: SmoothingSettings,
    /// Before activation the offset stays zero and changes are served at once.
    active: bool,
    /// Served minus true time, s, at `last_update_tai_ns`.
    offset: f64,
    /// How fast the offset shrinks there, s/s.
    frequency: f64,
    last_update_tai_ns: u64,
    stages: [Stage; 3],
    /// A leap announced and not yet absorbed.
    leap: Option<LeapInstant>,
    /// The leap last absorbed, for `ABSORBED_LEAP_REMEMBERED_NS` after its instant.
    absorbed: Option<LeapInstant>,
}

/// chronyc's `smoothing` report.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothingReport {
    pub active: bool,
    pub leap_only: bool,
    /// Served minus true time, s.
    pub offset: f64,
    /// ppm; negative: served time runs slow.
    pub frequency_ppm: f64,
    /// ppm per second.
    pub wander_ppm: f64,
    pub last_update_ago: f64,
    pub remaining: f64,
}

/// The smoothing at an instant: offset, frequency (shrinking), wander.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Smoothed {
    offset: f64,
    frequency: f64,
    wander: f64,
}

impl Smoothing {
    pub fn new(settings: SmoothingSettings) -> Self {
        Self {
            settings,
            active: false,
            offset: 0.0,
            frequency: 0.0,
            last_update_tai_ns: 0,
            stages: [Stage::default(); 3],
            leap: None,
            absorbed: None,
        }
    }

    pub fn settings(&self) -> SmoothingSettings {
        self.settings
    }

    /// Served minus true time at `tai_ns` (s), and its rate (s/s).
    pub fn offset_at(&self, tai_ns: u64) -> (f64, f64) {
        let smoothed = self.smoothed(tai_ns);
        // A leap made since the last update is absorbed at its instant (once active).
        let leap = self.leap.filter(|leap| self.active && tai_ns >= leap.midnight_tai_ns);
        (smoothed.offset + leap.map_or(0.0, |leap| leap.seconds), -smoothed.frequency)
    }

    /// Follows the synchronisation's word at `now`: the time model's change at that instant
    /// (`jump`, s, and `frequency_change`, s/s, of true time), its leaps, and its skew.
    pub fn update(&mut self, now: TaiReading, served: &Served, jump: f64, frequency_change: f64) {
        if let Some(leap) = self.leap.filter(|leap| now.tai_ns >= leap.midnight_tai_ns) {
            // True time went back an inserted second: served time keeps going.
            self.absorb(leap.midnight_tai_ns, leap.seconds, 0.0);
            self.leap = None;
            self.absorbed = Some(leap);
        }
        let just_absorbed = self.absorbed.is_some_and(|leap| {
            now.tai_ns < leap.midnight_tai_ns.saturating_add(ABSORBED_LEAP_REMEMBERED_NS)
        });
        if !just_absorbed {
            self.absorbed = None;
            self.leap = follow_announcement(self.leap, now, served);
        }
        if !self.settings.leap_only {
            self.absorb(now.tai_ns, -jump, frequency_change);
        }
        let settled = served.header.is_some()
            && (self.settings.leap_only
                || served.skew < ACTIVATION_SKEW_PER_WANDER * self.settings.max_wander());
        if !self.active && settled {
            self.activate(now.tai_ns);
        }
    }

    /// `smoothtime activate`: starts smoothing now; false if it was active already.
    pub fn activate(&mut self, tai_ns: u64) -> bool {
        let was_active = self.active;
        if !was_active {
            tracing::info!(leap_only = self.settings.leap_only, "time smoothing activated");
            self.active = true;
            self.last_update_tai_ns = tai_ns;
        }
        !was_active
    }

    /// `smoothtime reset`, and every step of the clock: served time is true time from now on.
    pub fn reset(&mut self, tai_ns: u64) {
        self.offset = 0.0;
        self.frequency = 0.0;
        self.stages = [Stage::default(); 3];
        self.last_update_tai_ns = tai_ns;
    }

    pub fn report(&self, tai_ns: u64) -> SmoothingReport {
        let smoothed = self.smoothed(tai_ns);
        let since = seconds_between(self.last_update_tai_ns, tai_ns);
        let (last_update_ago, remaining) = if self.active && since >= 0.0 {
            let length: f64 = self.stages.iter().map(|s| s.length).sum();
            (since, (length - since).max(0.0))
        } else {
            (0.0, 0.0)
        };
        SmoothingReport {
            active: self.active,
            leap_only: self.settings.leap_only,
            offset: smoothed.offset,
            frequency_ppm: -smoothed.frequency * 1e6,
            wander_ppm: -smoothed.wander * 1e6,
            last_update_ago,
            remaining,
        }
    }

    /// Adds `offset` (served minus true time) and `frequency` (of the offset's shrinking) at
    /// `tai_ns`, and plans the profile that takes them out. Ignored before activation.
    fn absorb(&mut self, tai_ns: u64, offset: f64, frequency: f64) {
        if !self.active {
            return;
        }
        let now = self.smoothed(tai_ns);
        self.offset = now.offset + offset;
        self.frequency = now.frequency + frequency;
        self.last_update_tai_ns = tai_ns;
        self.plan();
    }

    /// The offset, frequency and wander at `tai_ns`, along the planned stages.
    fn smoothed(&self, tai_ns: u64) -> Smoothed {
        let mut elapsed = seconds_between(self.last_update_tai_ns, tai_ns);
        let (mut offset, mut frequency, mut wander) = (self.offset, self.frequency, 0.0);
        for stage in self.stages {
            if elapsed <= 0.0 {
                break;
            }
            let length = stage.length.min(elapsed);
            wander = stage.wander;
            offset -= length * (2.0 * frequency + wander * length) / 2.0;
            frequency += wander * length;
            elapsed -= length;
        }
        if elapsed > 0.0 {
            wander = 0.0;
            offset -= elapsed * frequency;
        }
        if !self.active {
            return Smoothed { offset: 0.0, frequency: 0.0, wander: 0.0 };
        }
        Smoothed { offset, frequency, wander }
    }

    /// Plans the three stages (ramp, hold, ramp) that bring the offset and the frequency to
    /// zero together, the frequency never changing faster than the greatest wander nor (when
    /// that can be kept) exceeding the greatest frequency.
    fn plan(&mut self) {
        let wander = self.settings.max_wander();
        let max_frequency = self.settings.max_frequency();
        let (offset, frequency) = (self.offset, self.frequency);
        let s1 = offset / wander;
        let s2 = frequency * frequency / (2.0 * wander * wander);
        // The direction whose profile fits with the smaller error (ties: +1).
        let plan = |direction: f64| {
            let mut error = 0.0;
            let mut s = direction * s1 + s2;
            if s < 0.0 {
                error -= s;
                s = 0.0;
            }
            let l3 = s.sqrt();
            let mut l1 = l3 - direction * frequency / wander;
            if l1 < 0.0 {
                error += l1 * l1;
                l1 = 0.0;
            }
            (error, direction, l1, l3)
        };
        let (up, down) = (plan(1.0), plan(-1.0));
        let (_, direction, mut l1, mut l3) = if down.0 < up.0 { down } else { up };
        let mut l2 = 0.0;
        let excess = direction * frequency + l1 * wander - max_frequency;
        if excess > 0.0 {
            let mut cut = excess / wander;
            let plateau = if cut > l1 {
                cut = l1;
                direction * frequency
            } else {
                max_frequency
            };
            l2 = cut * (2.0 + excess / plateau);
            l1 -= cut;
            l3 -= cut;
        }
        self.stages = [
            Stage { wander: direction * wander, length: l1 },
            Stage { wander: 0.0, length: l2 },
            Stage { wander: -direction * wander, length: l3 },
        ];
    }
}

/// chronyc's `smoothing` text.
pub fn smoothing_text(r: &SmoothingReport) -> String {
    let active = if r.active { "Yes" } else { "No" };
    // chronyc prints the space before the note also without it.
    let leap_only = if r.leap_only { "(leap second only)" } else { "" };
    format!(
        "Active         : {active} {leap_only}\n\
         Offset         : {:+.9} seconds\n\
         Frequency      : {:+.6} ppm\n\
         Wander         : {:+.6} ppm per second\n\
         Last update    : {:.1} seconds ago\n\
         Remaining time : {:.1} seconds\n",
        r.offset, r.frequency_ppm, r.wander_ppm, r.last_update_ago, r.remaining
    )
}

fn seconds_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as i64 - from_ns as i64) as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use ntp_common::wire::Leap;

    use super::*;
    use crate::smear::tests::header;

    const START: u64 = 1_000_000_000_000_000_000;

    fn synchronised() -> Served {
        Served {
            correction: 0.0,
            frequency: 0.0,
            header: Some(header(Leap::NoWarning)),
            leap_at_ns: None,
            correction_after_leap: 0.0,
            skew: 1e-9,
            leap_made: None,
        }
    }

    fn at(seconds: f64) -> TaiReading {
        TaiReading { tai_ns: START + (seconds * 1e9) as u64, tai_offset_s: 37 }
    }

    fn leap_only(max_ppm: f64, wander_ppm: f64) -> Smoothing {
        Smoothing::new(SmoothingSettings {
            max_frequency_ppm: max_ppm,
            max_wander_ppm: wander_ppm,
            leap_only: true,
        })
    }

    #[test]
    fn an_inserted_leap_is_smoothed_out_in_chronys_time() {
        // chrony's recommended leap smear: `smoothtime 400 0.001024 leaponly`, 62500 s in all.
        let mut smoothing = leap_only(400.0, 0.001024);
        smoothing.update(at(0.0), &synchronised(), 0.0, 0.0);
        assert!(smoothing.report(at(0.0).tai_ns).active);
        let midnight = at(100.0).tai_ns;
        let announcing = Served {
            header: Some(header(Leap::InsertSecond)),
            leap_at_ns: Some((midnight - START) as i64 + (START - 37_000_000_000) as i64),
            ..synchronised()
        };
        smoothing.update(at(50.0), &announcing, 0.0, 0.0);
        assert_eq!(smoothing.offset_at(at(99.0).tai_ns).0, 0.0);
        // The leap is absorbed at its instant: served time a second ahead of true time.
        assert!((smoothing.offset_at(at(100.0).tai_ns).0 - 1.0).abs() < 1e-9);
        smoothing.update(at(101.0), &synchronised(), 0.0, 0.0);
        let report = smoothing.report(at(100.0 + 31_250.0).tai_ns);
        assert!((report.offset - 0.5).abs() < 1e-3, "{report:?}");
        assert!((report.frequency_ppm + 32.0).abs() < 0.01, "peak {report:?}");
        assert!((report.remaining - 31_250.0).abs() < 1.0);
        assert!(smoothing.offset_at(at(100.0 + 62_500.0).tai_ns).0.abs() < 1e-6);
        assert_eq!(smoothing.report(at(100.0 + 70_000.0).tai_ns).remaining, 0.0);
    }

    #[test]
    fn an_inserted_leap_announced_again_through_its_second_is_absorbed_once() {
        let mut smoothing = leap_only(400.0, 0.001024);
        smoothing.update(at(0.0), &synchronised(), 0.0, 0.0);
        // Midnight is at(100.0); through the inserted second the kernel's TAI offset is 38 and
        // the system clock reads 23:59:59 again, still on the leap day.
        let midnight_system_ns = (at(100.0).tai_ns - 37_000_000_000) as i64;
        let announcing = Served {
            header: Some(header(Leap::InsertSecond)),
            leap_at_ns: Some(midnight_system_ns),
            ..synchronised()
        };
        smoothing.update(at(50.0), &announcing, 0.0, 0.0);
        let in_the_leap = |s: f64| TaiReading { tai_ns: at(s).tai_ns, tai_offset_s: 38 };
        smoothing.update(in_the_leap(100.2), &announcing, 0.0, 0.0);
        smoothing.update(in_the_leap(100.9), &announcing, 0.0, 0.0);
        smoothing.update(in_the_leap(101.5), &synchronised(), 0.0, 0.0);
        let (offset, _) = smoothing.offset_at(at(102.0).tai_ns);
        assert!((offset - 1.0).abs() < 1e-3, "absorbed once: {offset}");
    }

    #[test]
    fn before_activation_a_leap_is_the_kernels_alone() {
        let mut smoothing = leap_only(400.0, 0.001024);
        smoothing.leap = Some(LeapInstant { midnight_tai_ns: at(100.0).tai_ns, seconds: 1.0 });
        assert!(!smoothing.report(at(0.0).tai_ns).active);
        assert_eq!(smoothing.offset_at(at(100.5).tai_ns).0, 0.0);
    }

    #[test]
    fn offsets_are_smoothed_within_the_limits() {
        let mut smoothing = Smoothing::new(SmoothingSettings {
            max_frequency_ppm: 20.0,
            max_wander_ppm: 0.01,
            leap_only: false,
        });
        smoothing.update(at(0.0), &synchronised(), 0.0, 0.0);
        // True time jumps 10 ms ahead: served time does not, then catches up.
        smoothing.update(at(1.0), &synchronised(), 0.01, 0.0);
        assert!((smoothing.offset_at(at(1.0).tai_ns).0 + 0.01).abs() < 1e-12);
        let mut previous = smoothing.offset_at(at(1.0).tai_ns).0;
        let mut frequency: f64 = 0.0;
        for second in 2..20_000 {
            let (offset, rate) = smoothing.offset_at(at(second as f64).tai_ns);
            assert!(rate.abs() <= 20e-6 + 1e-12);
            assert!((offset - previous).abs() <= 20e-6 + 1e-12);
            frequency = frequency.max(rate.abs());
            previous = offset;
        }
        assert!(previous.abs() < 1e-6, "smoothed out: {previous}");
        assert!(frequency > 5e-6);
    }

    #[test]
    fn leap_only_ignores_ordinary_corrections_and_reset_clears() {
        let mut smoothing = leap_only(400.0, 0.001);
        smoothing.update(at(0.0), &synchronised(), 0.0, 0.0);
        smoothing.update(at(1.0), &synchronised(), 0.01, 1e-6);
        assert_eq!(smoothing.offset_at(at(2.0).tai_ns), (0.0, 0.0));
        let mut smoothing = Smoothing::new(SmoothingSettings {
            leap_only: false,
            ..leap_only(400.0, 0.001).settings()
        });
        smoothing.update(at(0.0), &synchronised(), 0.0, 0.0);
        smoothing.update(at(1.0), &synchronised(), 0.01, 0.0);
        smoothing.reset(at(2.0).tai_ns);
        assert_eq!(smoothing.offset_at(at(3.0).tai_ns), (0.0, 0.0));
    }

    #[test]
    fn it_waits_to_be_activated() {
        let mut smoothing = Smoothing::new(SmoothingSettings {
            leap_only: false,
            ..leap_only(400.0, 0.001).settings()
        });
        let unsettled = Served { skew: 1e-3, ..synchronised() };
        smoothing.update(at(0.0), &unsettled, 0.0, 0.0);
        smoothing.update(at(1.0), &unsettled, 0.5, 0.0);
        assert!(!smoothing.report(at(1.0).tai_ns).active);
        assert_eq!(smoothing.offset_at(at(1.0).tai_ns).0, 0.0, "served at once");
        assert!(smoothing.activate(at(2.0).tai_ns));
        assert!(!smoothing.activate(at(3.0).tai_ns));
    }

    #[test]
    fn the_report_reads_as_chronycs() {
        let report = SmoothingReport {
            active: true,
            leap_only: false,
            offset: -0.25,
            frequency_ppm: 12.5,
            wander_ppm: -0.001,
            last_update_ago: 3.0,
            remaining: 4000.0,
        };
        assert_eq!(
            smoothing_text(&report),
            "Active         : Yes \n\
             Offset         : -0.250000000 seconds\n\
             Frequency      : +12.500000 ppm\n\
             Wander         : -0.001000 ppm per second\n\
             Last update    : 3.0 seconds ago\n\
             Remaining time : 4000.0 seconds\n"
        );
    }
}
