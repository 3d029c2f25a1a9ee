//! A reference clock's samples, sans-IO: a driver's readings in (a time of day, or a pulse that
//! marks only the second), chrony's median filter over a poll, one filtered sample per poll out.
//! The drivers (gpsd's shared memory, chrony's SOCK datagrams, the PPS API, a PHC) are the
//! daemon's shell; what a reading means and which are kept is decided here.

use std::collections::VecDeque;

use ntp_common::wire::{Leap, ReferenceId};

use super::regression::{Sample, seconds_between};

/// chrony's `refclock` options that shape the samples (the driver's own stay in the shell).
#[derive(Clone, Debug, PartialEq)]
pub struct ClockSettings {
    pub reference_id: ReferenceId,
    /// log2 of the interval at which the filter gives a sample, s (`poll`, 4).
    pub poll: i8,
    /// The median filter's length (`filter`, 64).
    pub filter: usize,
    /// Pulses per second (`rate`, 1).
    pub rate: u32,
    /// The clock that gives a pulse its second (`lock REFID`).
    pub lock: Option<ReferenceId>,
    /// How many pulses old the lock clock's sample may be (`maxlockage`, 2).
    pub max_lock_age: u32,
    /// Added to every sample, s (`offset`).
    pub offset: f64,
    /// The assumed round trip, s (`delay`, 1e-9).
    pub delay: f64,
    /// A reading's error, s (`precision`; at least the system clock's).
    pub precision: f64,
    /// A filtered sample more dispersed than this is dropped, s (`maxdispersion`; 0: no limit).
    pub max_dispersion: f64,
    /// The stratum the clock is taken to have (`stratum`, 0: the server is stratum 1).
    pub stratum: u8,
    /// The clock keeps TAI, converted to UTC by the leap-second table (`tai`).
    pub tai: bool,
    /// Readings are pulses whatever the driver says (`pps`, or the PPS driver).
    pub pulses_only: bool,
}

impl ClockSettings {
    /// chrony's defaults for a clock called `reference_id`.
    pub fn new(reference_id: ReferenceId) -> Self {
        Self {
            reference_id,
            poll: 4,
            filter: 64,
            rate: 1,
            lock: None,
            max_lock_age: 2,
            offset: 0.0,
            delay: 1e-9,
            precision: 1e-6,
            max_dispersion: 0.0,
            stratum: 0,
            tai: false,
            pulses_only: false,
        }
    }

    /// The pulse interval, s.
    fn pulse_interval(&self) -> f64 {
        1.0 / f64::from(self.rate.max(1))
    }
}

/// What a driver read, at a system clock time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// The reference's time minus the system's at `system_ns`, s, and its leap warning.
    Time { system_ns: i64, offset: f64, leap: Leap },
    /// A pulse at `system_ns` (system time): `second` is how far past the true second the
    /// system clock was then, s, known only modulo the pulse interval.
    Pulse { system_ns: i64, second: f64 },
}

impl Reading {
    pub fn system_ns(&self) -> i64 {
        match *self {
            Self::Time { system_ns, .. } | Self::Pulse { system_ns, .. } => system_ns,
        }
    }
}

/// The length of chrony's `struct sock_sample` on a 64-bit system: a timeval, the offset, the
/// pulse and leap fields, padding, and the magic number.
pub const SOCK_SAMPLE_LEN: usize = 40;
const SOCK_MAGIC: i32 = 0x534f_434b;

/// A datagram of chrony's SOCK protocol (native byte order, as gpsd and chrony's own tools
/// send it): None if it is not one.
pub fn sock_sample(datagram: &[u8]) -> Option<Reading> {
    let bytes: &[u8; SOCK_SAMPLE_LEN] = datagram.try_into().ok()?;
    let i64_at = |at: usize| i64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let i32_at = |at: usize| i32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if i32_at(36) != SOCK_MAGIC {
        return None;
    }
    let (seconds, microseconds) = (i64_at(0), i64_at(8));
    let offset = f64::from_ne_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if !(0..1_000_000).contains(&microseconds) || !offset.is_finite() || offset.abs() > 1e9 {
        return None;
    }
    let system_ns = seconds.checked_mul(1_000_000_000)?.checked_add(microseconds * 1000)?;
    let leap = match i32_at(28) {
        0 => Leap::NoWarning,
        1 => Leap::InsertSecond,
        2 => Leap::DeleteSecond,
        3 => Leap::Unsynchronised,
        _ => return None,
    };
    Some(if i32_at(24) != 0 {
        Reading::Pulse { system_ns, second: offset }
    } else {
        Reading::Time { system_ns, offset, leap }
    })
}

/// Why a reading was not kept (the shell counts them, and logs them at debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Older than two polls, or in the future.
    Stale,
    /// The clock's leap field says it is not synchronised.
    Unsynchronised,
    /// `tai` without a leap-second table that covers the reading.
    NoTaiOffset,
    /// A pulse with nothing to tell its second: the lock clock has no recent sample, or
    /// (without `lock`) the server is not synchronised well enough.
    NoSecond,
    /// A pulse too far from its lock clock's second.
    OutOfLock,
    /// Not later than the previous reading.
    NotNewer,
}

/// A clock's readings since the last poll, and what the next poll makes of them.
#[derive(Clone, Debug)]
pub struct ReferenceClock {
    pub settings: ClockSettings,
    filter: MedianFilter,
    /// Readings since the last poll, kept or not: the reach register's bit.
    readings: u32,
    /// The leap warning of the last reading.
    pub leap: Leap,
    /// Whether the last kept reading was a pulse.
    pub pulse: bool,
}

impl ReferenceClock {
    pub fn new(settings: ClockSettings) -> Self {
        let filter =
            MedianFilter::new(settings.filter, settings.max_dispersion, settings.precision);
        Self { settings, filter, readings: 0, leap: Leap::NoWarning, pulse: false }
    }

    /// The last sample kept (offset against raw time): what a pulse locked to this clock takes
    /// its second from.
    pub fn last_sample(&self) -> Option<Sample> {
        self.filter.last
    }

    /// Counts a reading for the reach register (a reading arrived, kept or not).
    pub(super) fn reached(&mut self) {
        self.readings += 1;
    }

    /// Keeps a sample, offset against raw time.
    pub(super) fn keep(&mut self, sample: Sample, leap: Leap, pulse: bool) -> Result<(), Ignored> {
        self.filter.push(sample)?;
        self.leap = leap;
        self.pulse = pulse;
        Ok(())
    }

    /// Drops the samples gathered (a pulse without its second spoils the poll).
    pub(super) fn drop_samples(&mut self) {
        self.filter.samples.clear();
    }

    /// At the poll: whether anything arrived since the last, and the filtered sample.
    pub(super) fn poll(&mut self) -> (bool, Option<Sample>) {
        let reached = std::mem::take(&mut self.readings) > 0;
        (reached, self.filter.filtered())
    }

    /// The raw timescale moved by `delta` s.
    pub(super) fn shift(&mut self, delta: f64) {
        for sample in self.filter.samples.iter_mut().chain(self.filter.last.as_mut()) {
            sample.offset += delta;
        }
    }

    /// Wraps a pulse's offset (against our estimate of true time) into the pulse interval
    /// around zero, [-interval/2, interval/2).
    pub(super) fn wrap_pulse(&self, offset: f64) -> f64 {
        let interval = self.settings.pulse_interval();
        offset - (offset / interval + 0.5).floor() * interval
    }

    /// A pulse locked to `lock`'s last sample (offsets against raw time): moved by whole pulse
    /// intervals to the lock's second, if the lock's sample is recent and close enough.
    pub(super) fn lock_pulse(&self, sample: Sample, lock: Option<Sample>) -> Result<f64, Ignored> {
        let interval = self.settings.pulse_interval();
        let lock = lock.ok_or(Ignored::NoSecond)?;
        let age = seconds_between(lock.time_ns, sample.time_ns).abs();
        if age >= f64::from(self.settings.max_lock_age) * interval {
            return Err(Ignored::NoSecond);
        }
        let offset = sample.offset + ((lock.offset - sample.offset) / interval).round() * interval;
        // Closer than 40 % of the interval, errors included, or the second may be the wrong one.
        if (lock.offset - offset).abs() + lock.dispersion + sample.dispersion > 0.4 * interval {
            return Err(Ignored::OutOfLock);
        }
        Ok(offset)
    }
}

/// chrony's median filter: of the samples of a poll, the steadiest, and of those the 60 %
/// nearest the median offset, averaged into one sample.
#[derive(Clone, Debug)]
struct MedianFilter {
    length: usize,
    max_dispersion: f64,
    samples: VecDeque<Sample>,
    /// The newest sample ever kept (it survives a poll, for a lock).
    last: Option<Sample>,
    /// A long-term average of the filtered samples' variance (a single sample has none).
    average_variance: f64,
    variance_weight: f64,
}

/// The share of a poll's samples, nearest the median, that are averaged.
const COMBINE_RATIO: f64 = 0.6;
/// Samples this much more dispersed than the least dispersed one are left out.
const DISPERSION_RATIO: f64 = 1.5;

impl MedianFilter {
    fn new(length: usize, max_dispersion: f64, precision: f64) -> Self {
        Self {
            length: length.clamp(1, 1024),
            max_dispersion,
            samples: VecDeque::new(),
            last: None,
            average_variance: precision * precision,
            variance_weight: 0.0,
        }
    }

    fn push(&mut self, sample: Sample) -> Result<(), Ignored> {
        if self.last.is_some_and(|last| sample.time_ns <= last.time_ns) {
            return Err(Ignored::NotNewer);
        }
        if self.samples.len() == self.length {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.last = Some(sample);
        Ok(())
    }

    fn filtered(&mut self) -> Option<Sample> {
        if self.samples.is_empty() {
            return None;
        }
        let mut chosen: Vec<Sample> = self.samples.drain(..).collect();
        if chosen.len() > 4 {
            let least = chosen.iter().map(|s| s.dispersion).fold(f64::INFINITY, f64::min);
            let steady: Vec<Sample> = chosen
                .iter()
                .copied()
                .filter(|s| s.dispersion <= DISPERSION_RATIO * least)
                .collect();
            if steady.len() >= 4 {
                chosen = steady;
            }
        }
        chosen.sort_by(|a, b| a.offset.total_cmp(&b.offset));
        let n = chosen.len();
        let cut = if n > 2 {
            ((n as f64 * (1.0 - COMBINE_RATIO) / 2.0) as usize).clamp(1, (n - 1) / 2)
        } else {
            0
        };
        let chosen = &chosen[cut..n - cut];
        self.combine(chosen)
    }

    /// The mean of `samples`, its dispersion the larger of their mean dispersion and the
    /// spread of the mean.
    fn combine(&mut self, samples: &[Sample]) -> Option<Sample> {
        let n = samples.len() as f64;
        let newest = samples.iter().map(|s| s.time_ns).max()?;
        let mean_x = samples.iter().map(|s| seconds_between(newest, s.time_ns)).sum::<f64>() / n;
        let mean_y = samples.iter().map(|s| s.offset).sum::<f64>() / n;
        let (variance, dispersion, freedom) = if samples.len() >= 4 {
            // The standard error of the mean of a line through them (they may drift in a poll).
            let x: Vec<f64> =
                samples.iter().map(|s| seconds_between(newest, s.time_ns) - mean_x).collect();
            let sxx: f64 = x.iter().map(|x| x * x).sum();
            let slope = if sxx > 0.0 {
                x.iter().zip(samples).map(|(x, s)| x * (s.offset - mean_y)).sum::<f64>() / sxx
            } else {
                0.0
            };
            let residuals: f64 =
                x.iter().zip(samples).map(|(x, s)| (s.offset - mean_y - slope * x).powi(2)).sum();
            let variance = residuals / (n - 2.0);
            (variance, (variance / n).sqrt(), n - 2.0)
        } else if samples.len() >= 2 {
            let variance =
                samples.iter().map(|s| (s.offset - mean_y).powi(2)).sum::<f64>() / (n - 1.0);
            (variance, variance.sqrt(), n - 1.0)
        } else {
            (self.average_variance, self.average_variance.sqrt(), 1.0)
        };
        let variance = variance.max(1e-20);
        if self.max_dispersion > 0.0 && variance > self.max_dispersion.powi(2) {
            return None;
        }
        self.average_variance = if self.variance_weight > 50.0 {
            self.average_variance + freedom / (freedom + 50.0) * (variance - self.average_variance)
        } else {
            (self.average_variance * self.variance_weight + variance * freedom)
                / (self.variance_weight + freedom)
        };
        self.variance_weight += freedom;
        let mean_dispersion = samples.iter().map(|s| s.dispersion).sum::<f64>() / n;
        let mean_delay = samples.iter().map(|s| s.delay).sum::<f64>() / n;
        Some(Sample {
            time_ns: newest + (mean_x * 1e9).round() as i64,
            offset: mean_y,
            delay: mean_delay,
            dispersion: dispersion.max(1e-10).max(mean_dispersion),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_660_000_000_000_000;

    fn sample(t_ms: i64, offset: f64) -> Sample {
        Sample { time_ns: T0 + t_ms * 1_000_000, offset, delay: 1e-9, dispersion: 1e-6 }
    }

    fn clock(settings: ClockSettings) -> ReferenceClock {
        ReferenceClock::new(settings)
    }

    fn settings() -> ClockSettings {
        ClockSettings::new(ReferenceId::from_bits(*b"GPS\0"))
    }

    #[test]
    fn the_filter_averages_the_samples_nearest_the_median() {
        let mut clock = clock(settings());
        // Sixteen samples near 1 ms, and two outliers the median filter must leave out.
        for i in 0..16 {
            let noise = if i % 2 == 0 { 1e-6 } else { -1e-6 };
            clock.keep(sample(i * 1000, 1e-3 + noise), Leap::NoWarning, false).unwrap();
        }
        clock.keep(sample(16_000, 0.5), Leap::NoWarning, false).unwrap();
        clock.keep(sample(17_000, -0.5), Leap::NoWarning, false).unwrap();
        clock.reached();
        let (reached, filtered) = clock.poll();
        let filtered = filtered.expect("a sample");
        assert!(reached);
        assert!((filtered.offset - 1e-3).abs() < 1e-6, "{}", filtered.offset);
        assert!(filtered.dispersion >= 1e-6 && filtered.dispersion < 1e-5);
        // The poll used them up; the last one stays for a lock.
        assert_eq!(clock.poll(), (false, None));
        assert_eq!(clock.last_sample().map(|s| s.offset), Some(-0.5));
    }

    fn sock_datagram(
        seconds: i64,
        microseconds: i64,
        offset: f64,
        pulse: i32,
        leap: i32,
    ) -> Vec<u8> {
        let mut datagram = Vec::new();
        datagram.extend(seconds.to_ne_bytes());
        datagram.extend(microseconds.to_ne_bytes());
        datagram.extend(offset.to_ne_bytes());
        for field in [pulse, leap, 0, SOCK_MAGIC] {
            datagram.extend(field.to_ne_bytes());
        }
        datagram
    }

    #[test]
    fn chronys_sock_samples_are_read_and_anything_else_is_not() {
        let time = sock_datagram(1_795_660_000, 250_000, -0.125, 0, 1);
        assert_eq!(
            sock_sample(&time),
            Some(Reading::Time {
                system_ns: 1_795_660_000_250_000_000,
                offset: -0.125,
                leap: Leap::InsertSecond
            })
        );
        let pulse = sock_datagram(1_795_660_000, 0, 0.000_2, 1, 0);
        assert_eq!(
            sock_sample(&pulse),
            Some(Reading::Pulse { system_ns: 1_795_660_000_000_000_000, second: 0.000_2 })
        );
        let mut wrong_magic = time.clone();
        wrong_magic[36] ^= 1;
        for bad in [
            &time[..39],
            &wrong_magic[..],
            &sock_datagram(1, 1_000_000, 0.0, 0, 0)[..],
            &sock_datagram(1, 0, f64::NAN, 0, 0)[..],
            &sock_datagram(1, 0, 0.0, 0, 4)[..],
            &sock_datagram(i64::MAX, 0, 0.0, 0, 0)[..],
        ] {
            assert_eq!(sock_sample(bad), None);
        }
    }

    #[test]
    fn readings_must_move_forward() {
        let mut clock = clock(settings());
        clock.keep(sample(1000, 0.0), Leap::NoWarning, false).unwrap();
        assert_eq!(clock.keep(sample(1000, 0.0), Leap::NoWarning, false), Err(Ignored::NotNewer));
        assert_eq!(clock.keep(sample(999, 0.0), Leap::NoWarning, false), Err(Ignored::NotNewer));
    }

    #[test]
    fn maxdispersion_drops_a_spread_poll() {
        let mut clock = clock(ClockSettings { max_dispersion: 1e-4, ..settings() });
        for (i, offset) in [0.0, 1e-3, -1e-3, 2e-3, -2e-3].into_iter().enumerate() {
            clock.keep(sample(i as i64 * 1000, offset), Leap::NoWarning, false).unwrap();
        }
        assert_eq!(clock.poll().1, None);
    }

    #[test]
    fn a_pulse_wraps_into_its_interval() {
        let clock = clock(settings());
        assert!((clock.wrap_pulse(0.2) - 0.2).abs() < 1e-12);
        assert!((clock.wrap_pulse(0.7) + 0.3).abs() < 1e-12);
        assert!((clock.wrap_pulse(-0.6) - 0.4).abs() < 1e-12);
        assert!((clock.wrap_pulse(0.5) + 0.5).abs() < 1e-12);
        let fast = ReferenceClock::new(ClockSettings { rate: 4, ..settings() });
        assert!((fast.wrap_pulse(0.3) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_pulse_takes_its_second_from_a_recent_lock_sample() {
        let clock = clock(settings());
        // The lock (NMEA) says true time is 37.2 s ahead of raw time; the pulse says 0.2005 past
        // a second: it is 37.2005.
        let lock = sample(0, 37.2);
        let pulse = sample(1000, 0.2005);
        let offset = clock.lock_pulse(pulse, Some(lock)).unwrap();
        assert!((offset - 37.2005).abs() < 1e-9, "{offset}");
        // Too old a lock sample, none, or one off by half a second: no second.
        assert_eq!(clock.lock_pulse(sample(2500, 0.2), Some(lock)), Err(Ignored::NoSecond));
        assert_eq!(clock.lock_pulse(pulse, None), Err(Ignored::NoSecond));
        assert_eq!(clock.lock_pulse(sample(1000, 0.7), Some(lock)), Err(Ignored::OutOfLock));
    }
}
