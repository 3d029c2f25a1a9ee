//! A source's samples and the line through them: offset against local time, by weighted least
//! squares, as chrony estimates a source's offset and frequency (its `sourcestats`).

use std::collections::VecDeque;

/// Most samples kept per source. Many, so that a stable clock's line averages a noisy network
/// away; when the clock wanders, the runs test drops the samples that no longer fit.
pub const MAX_SAMPLES: usize = 1024;
/// Fewest samples for a frequency estimate.
pub const MIN_SAMPLES_FOR_FREQUENCY: usize = 3;

/// The error a sample is assumed to have at the least (timestamping, scheduling), s.
const MIN_SAMPLE_ERROR: f64 = 1e-6;

/// One measurement after the clock filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Local (raw) time of the measurement, ns.
    pub time_ns: i64,
    /// The source's time minus local raw time, s.
    pub offset: f64,
    /// Round-trip delay, s.
    pub delay: f64,
    /// The measurement's own error bound (precisions, clock drift during the exchange), s.
    pub dispersion: f64,
}

/// The fitted line at the newest sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Offset at `time_ns`, s.
    pub offset: f64,
    /// Local time of the estimate (the newest sample), ns.
    pub time_ns: i64,
    /// d(offset)/dt: how much faster the source runs than the local raw clock.
    pub frequency: f64,
    /// Standard errors of the offset and the frequency.
    pub offset_error: f64,
    pub skew: f64,
    /// Standard deviation of the samples about the line, s.
    pub std_dev: f64,
    pub samples: usize,
    /// Runs of residuals of the same sign (few runs: the line does not fit).
    pub runs: usize,
    /// Time from the oldest to the newest sample, s.
    pub span: f64,
}

impl Estimate {
    /// The fitted offset at local time `time_ns`.
    pub fn offset_at(&self, time_ns: i64) -> f64 {
        self.offset + self.frequency * seconds_between(self.time_ns, time_ns)
    }
}

pub fn seconds_between(from_ns: i64, to_ns: i64) -> f64 {
    (to_ns - from_ns) as f64 * 1e-9
}

#[derive(Clone, Debug, Default)]
pub struct SampleSet {
    samples: VecDeque<Sample>,
}

impl SampleSet {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Shifts every sample's offset by `delta` (a step of the local raw timescale).
    pub fn shift(&mut self, delta: f64) {
        for sample in &mut self.samples {
            sample.offset += delta;
        }
    }

    pub fn newest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Fits the samples, weighted by their error bounds so that the quickest exchanges count
    /// most; when the residuals show the line does not fit (too few runs of signs), the
    /// oldest half is dropped, as chrony drops samples the clock has moved away from.
    pub fn estimate(&mut self) -> Option<Estimate> {
        loop {
            let estimate = self.fit()?;
            let enough_runs = estimate.samples < 8 || estimate.runs * 3 >= estimate.samples / 2;
            if enough_runs {
                return Some(estimate);
            }
            let keep = estimate.samples / 2;
            while self.samples.len() > keep {
                self.samples.pop_front();
            }
        }
    }

    fn fit(&self) -> Option<Estimate> {
        let newest = *self.samples.back()?;
        let n = self.samples.len();
        // A sample's offset is off by at most half its delay beyond the quickest exchange's
        // (the part of the round trip that may be one-sided), plus its own dispersion.
        let quickest = self.samples.iter().map(|s| s.delay).fold(f64::INFINITY, f64::min);
        let weight = |s: &Sample| {
            let width = (s.delay - quickest) / 2.0 + s.dispersion + MIN_SAMPLE_ERROR;
            1.0 / (width * width)
        };
        let x = |s: &Sample| seconds_between(newest.time_ns, s.time_ns);
        if n < MIN_SAMPLES_FOR_FREQUENCY {
            // Too few for a slope: the weighted mean offset.
            let total: f64 = self.samples.iter().map(weight).sum();
            let offset = self.samples.iter().map(|s| weight(s) * s.offset).sum::<f64>() / total;
            let spread = self.samples.iter().map(|s| (s.offset - offset).abs()).fold(0.0, f64::max);
            return Some(Estimate {
                offset,
                time_ns: newest.time_ns,
                frequency: 0.0,
                offset_error: spread.max(newest.dispersion),
                skew: 1e-3,
                std_dev: spread,
                samples: n,
                runs: n,
                span: -x(self.samples.front()?),
            });
        }
        let total: f64 = self.samples.iter().map(weight).sum();
        let mean_x = self.samples.iter().map(|s| weight(s) * x(s)).sum::<f64>() / total;
        let mean_y = self.samples.iter().map(|s| weight(s) * s.offset).sum::<f64>() / total;
        let sxx: f64 = self.samples.iter().map(|s| weight(s) * (x(s) - mean_x).powi(2)).sum();
        let sxy: f64 =
            self.samples.iter().map(|s| weight(s) * (x(s) - mean_x) * (s.offset - mean_y)).sum();
        let frequency = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let offset = mean_y - frequency * mean_x;
        let residuals: Vec<f64> =
            self.samples.iter().map(|s| s.offset - (offset + frequency * x(s))).collect();
        let variance =
            self.samples.iter().zip(&residuals).map(|(s, r)| weight(s) * r * r).sum::<f64>()
                / total
                * n as f64
                / (n - 2).max(1) as f64;
        let std_dev = variance.sqrt();
        let runs = 1 + residuals.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        // Standard errors of the intercept (at the newest sample) and of the slope, from the
        // weighted spread; the effective count keeps them honest with uneven weights.
        let effective_n =
            total * total / self.samples.iter().map(|s| weight(s).powi(2)).sum::<f64>();
        let offset_error =
            (variance * (1.0 / effective_n + mean_x * mean_x * total / sxx / effective_n)).sqrt();
        let skew = if sxx > 0.0 { (variance * total / sxx / effective_n).sqrt() } else { 1e-3 };
        Some(Estimate {
            offset,
            time_ns: newest.time_ns,
            frequency,
            offset_error,
            skew,
            std_dev,
            samples: n,
            runs,
            span: -x(self.samples.front()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, offset: f64) -> Sample {
        Sample { time_ns: (t_s * 1e9) as i64, offset, delay: 1e-4, dispersion: 1e-6 }
    }

    #[test]
    fn a_line_is_fitted_exactly() {
        let mut set = SampleSet::default();
        for i in 0..10 {
            set.push(sample(f64::from(i) * 16.0, 1e-3 + 50e-6 * f64::from(i) * 16.0));
        }
        let estimate = set.estimate().unwrap();
        assert!((estimate.frequency - 50e-6).abs() < 1e-12);
        assert!((estimate.offset - (1e-3 + 50e-6 * 144.0)).abs() < 1e-12);
        assert_eq!(estimate.samples, 10);
        assert!(
            (estimate.offset_at(estimate.time_ns + 1_000_000_000) - estimate.offset - 50e-6).abs()
                < 1e-12
        );
    }

    #[test]
    fn too_few_samples_give_their_mean() {
        let mut set = SampleSet::default();
        set.push(sample(0.0, 1e-3));
        set.push(sample(1.0, 3e-3));
        let estimate = set.estimate().unwrap();
        assert!((estimate.offset - 2e-3).abs() < 1e-12);
        assert_eq!(estimate.frequency, 0.0);
    }

    #[test]
    fn a_change_of_slope_drops_the_old_samples() {
        let mut set = SampleSet::default();
        for i in 0..32 {
            set.push(sample(f64::from(i), 0.0));
        }
        for i in 32..64 {
            set.push(sample(f64::from(i), 1e-4 * f64::from(i - 32)));
        }
        let estimate = set.estimate().unwrap();
        assert!(estimate.samples <= 32, "{} samples kept", estimate.samples);
        assert!((estimate.frequency - 1e-4).abs() < 2e-5, "{}", estimate.frequency);
    }
}
