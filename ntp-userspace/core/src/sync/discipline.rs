//! Clock discipline: turning the estimate of true time into corrections of the system clock
//! (through the kernel) and of the served time (the part not yet applied).
//!
//! Samples are kept against the *raw* clock: the system clock minus every correction ntpxd has
//! applied to it. That keeps them on one straight line however the clock was slewed or stepped,
//! and the corrections are known exactly because ntpxd makes them all: frequency changes
//! (which slew) and steps. With `-x` nothing is applied and the raw clock is the system clock.

use std::io;

use ntp_common::wire::Leap;

use super::regression::seconds_between;

/// The kernel's clock controls (adjtimex), behind a trait so that the discipline can be tested
/// against a simulated clock.
pub trait ClockControl: Send {
    /// The frequency offset now set, ppm.
    fn frequency(&self) -> io::Result<f64>;
    fn set_frequency(&mut self, ppm: f64) -> io::Result<()>;
    /// Steps the clock by `seconds`.
    fn step(&mut self, seconds: f64) -> io::Result<()>;
    /// Keeps the kernel's error estimates fresh and its leap and synchronisation flags right.
    fn set_status(&mut self, status: KernelStatus) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelStatus {
    pub max_error: f64,
    pub est_error: f64,
    pub synchronised: bool,
    /// Clear STA_UNSYNC when synchronised (chrony does so only with `rtcsync`).
    pub rtcsync: bool,
    pub leap: Leap,
    /// TAI - UTC, from the leap second table, for CLOCK_TAI.
    pub tai_offset: Option<i32>,
}

/// Largest extra frequency used to slew an offset away, s/s (the kernel's limit is 500 ppm).
const MAX_SLEW: f64 = 500e-6;
/// The kernel's frequency range, ppm.
pub const MAX_FREQUENCY_PPM: f64 = 500.0;
/// An offset is slewed away over about this long (at most MAX_SLEW).
const SLEW_TIME: f64 = 16.0;

/// `makestep THRESHOLD LIMIT`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MakeStep {
    pub threshold: f64,
    /// Updates during which a step is allowed; negative: always.
    pub limit: i32,
}

/// What the discipline did with an update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Served time only (`-x`).
    None,
    Slewed,
    Stepped(f64),
}

pub struct Discipline {
    control: Option<Box<dyn ClockControl>>,
    /// The kernel frequency found at start, ppm: corrections are relative to it.
    base_ppm: f64,
    /// Applied correction (system - raw), s, at `applied_since_ns` (raw), and the extra
    /// frequency applied since, s/s.
    applied: f64,
    applied_since_ns: i64,
    applied_rate: f64,
    makestep: Option<MakeStep>,
    updates: u32,
    /// The kernel frequency that cancels the raw clock's drift, without the slew of the
    /// current offset, ppm: what the driftfile keeps.
    drift_ppm: f64,
}

impl Discipline {
    /// `control` is `None` with `-x`.
    pub fn new(
        control: Option<Box<dyn ClockControl>>,
        makestep: Option<MakeStep>,
        now_raw_ns: i64,
    ) -> io::Result<Self> {
        let base_ppm = match &control {
            Some(control) => control.frequency()?,
            None => 0.0,
        };
        Ok(Self {
            control,
            base_ppm,
            applied: 0.0,
            applied_since_ns: now_raw_ns,
            applied_rate: 0.0,
            makestep,
            updates: 0,
            drift_ppm: base_ppm,
        })
    }

    pub fn controls_clock(&self) -> bool {
        self.control.is_some()
    }

    /// The correction applied to the system clock at raw time `raw_ns` (system = raw + this).
    pub fn applied_at(&self, raw_ns: i64) -> f64 {
        self.applied + self.applied_rate * seconds_between(self.applied_since_ns, raw_ns)
    }

    /// Raw time of a system clock reading.
    pub fn raw_ns(&self, system_ns: i64) -> i64 {
        // system = raw + applied + rate * (raw - since), solved for raw.
        let system_since = (system_ns - self.applied_since_ns) as f64 - self.applied * 1e9;
        self.applied_since_ns + (system_since / (1.0 + self.applied_rate)).round() as i64
    }

    /// System time of a raw clock reading.
    pub fn system_ns(&self, raw_ns: i64) -> i64 {
        raw_ns + (self.applied_at(raw_ns) * 1e9).round() as i64
    }

    /// The extra frequency applied, s/s.
    pub fn applied_rate(&self) -> f64 {
        self.applied_rate
    }

    /// The kernel frequency that cancels the clock's drift, ppm: what the driftfile keeps. The
    /// kernel's frequency also carries the slew of the offset being corrected, which a restart
    /// must not inherit.
    pub fn drift_ppm(&self) -> f64 {
        self.drift_ppm
    }

    /// Applies an update: true time is raw time plus `offset + frequency * (t - now)`.
    pub fn update(&mut self, now_raw_ns: i64, offset: f64, frequency: f64) -> io::Result<Action> {
        self.updates += 1;
        let Some(control) = self.control.as_mut() else {
            return Ok(Action::None);
        };
        // Re-anchor the applied correction at now.
        self.applied += self.applied_rate * seconds_between(self.applied_since_ns, now_raw_ns);
        self.applied_since_ns = now_raw_ns;
        let residual = offset - self.applied;
        if let Some(MakeStep { threshold, limit }) = self.makestep
            && residual.abs() > threshold
            && (limit < 0 || self.updates <= limit as u32)
        {
            control.step(residual)?;
            self.applied += residual;
            return Ok(Action::Stepped(residual));
        }
        // Cancel the raw clock's drift, and slew the residual away, within the kernel's range.
        let slew = (residual / SLEW_TIME).clamp(-MAX_SLEW, MAX_SLEW);
        let in_range = |ppm: f64| ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        self.drift_ppm = in_range(self.base_ppm + frequency * 1e6);
        let kernel_ppm = in_range(self.base_ppm + (frequency + slew) * 1e6);
        control.set_frequency(kernel_ppm)?;
        // The kernel scales the clock's rate: relative to the raw clock (running at the base
        // frequency), system time gains this much per second.
        self.applied_rate = (kernel_ppm - self.base_ppm) * 1e-6 / (1.0 + self.base_ppm * 1e-6);
        Ok(Action::Slewed)
    }

    pub fn set_status(&mut self, status: KernelStatus) -> io::Result<()> {
        match self.control.as_mut() {
            Some(control) => control.set_status(status),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub mod simulated {
    //! A simulated kernel clock for the discipline's tests: it never touches the real one.
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Default)]
    pub struct SimulatedClock {
        /// The clock's own frequency error, s/s (before corrections).
        pub intrinsic: f64,
        /// The frequency correction set, ppm.
        pub frequency_ppm: f64,
        /// System time minus true time, s, at `since` (true time, s).
        pub error: f64,
        pub since: f64,
        pub steps: Vec<f64>,
        pub status: Option<KernelStatus>,
    }

    impl SimulatedClock {
        /// How much faster than true time the clock runs, s/s. The kernel's frequency scales
        /// the clock's own rate, so the two multiply.
        pub fn rate_error(&self) -> f64 {
            (1.0 + self.intrinsic) * (1.0 + self.frequency_ppm * 1e-6) - 1.0
        }

        /// Advances to true time `now`, accumulating error at the current rate.
        pub fn advance(&mut self, now: f64) {
            self.error += self.rate_error() * (now - self.since);
            self.since = now;
        }

        pub fn system(&self, now: f64) -> f64 {
            now + self.error + self.rate_error() * (now - self.since)
        }
    }

    /// A handle the discipline owns; the test keeps another to read and advance the clock.
    #[derive(Clone, Default)]
    pub struct Handle(pub Arc<Mutex<SimulatedClock>>);

    impl ClockControl for Handle {
        fn frequency(&self) -> io::Result<f64> {
            Ok(self.0.lock().unwrap().frequency_ppm)
        }

        fn set_frequency(&mut self, ppm: f64) -> io::Result<()> {
            let mut clock = self.0.lock().unwrap();
            let now = clock.since;
            clock.advance(now);
            clock.frequency_ppm = ppm.clamp(-500.0, 500.0);
            Ok(())
        }

        fn step(&mut self, seconds: f64) -> io::Result<()> {
            let mut clock = self.0.lock().unwrap();
            clock.error += seconds;
            clock.steps.push(seconds);
            Ok(())
        }

        fn set_status(&mut self, status: KernelStatus) -> io::Result<()> {
            self.0.lock().unwrap().status = Some(status);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{simulated::Handle, *};

    #[test]
    fn raw_and_system_time_convert_both_ways_after_steps_and_slews() {
        let t0 = 1_795_660_000_000_000_000;
        let makestep = Some(MakeStep { threshold: 0.1, limit: 1 });
        let mut discipline =
            Discipline::new(Some(Box::new(Handle::default())), makestep, t0).unwrap();
        assert_eq!(discipline.update(t0, 0.5, 20e-6).unwrap(), Action::Stepped(0.5));
        assert_eq!(discipline.update(t0 + 1_000_000_000, 0.501, 20e-6).unwrap(), Action::Slewed);
        for raw in [t0, t0 + 5_000_000_000, t0 + 86_400_000_000_000] {
            let system = discipline.system_ns(raw);
            assert!((discipline.raw_ns(system) - raw).abs() <= 1, "{raw}");
        }
        // 0.5 s stepped, and 20 ppm plus the slew of the remaining 1 ms since.
        let after_an_hour = t0 + 3_600_000_000_000;
        let applied = discipline.applied_at(after_an_hour);
        assert!((applied - 0.5 - 3599.0 * (20e-6 + 1e-3 / SLEW_TIME)).abs() < 1e-6, "{applied}");
    }

    #[test]
    fn the_drift_kept_is_the_frequency_without_the_slew_of_the_offset() {
        let clock = Handle::default();
        clock.0.lock().unwrap().frequency_ppm = 50.0;
        let mut discipline = Discipline::new(Some(Box::new(clock.clone())), None, 0).unwrap();
        // The raw clock runs 50 ppm fast: cancel it, and slew 1 ms away over SLEW_TIME.
        assert_eq!(discipline.update(1_000_000_000, 0.001, -50e-6).unwrap(), Action::Slewed);
        let kernel = clock.0.lock().unwrap().frequency_ppm;
        assert!((kernel - 0.001 / SLEW_TIME * 1e6).abs() < 1e-9, "kernel {kernel} ppm");
        assert!(discipline.drift_ppm().abs() < 1e-9, "drift {} ppm", discipline.drift_ppm());
    }
}
