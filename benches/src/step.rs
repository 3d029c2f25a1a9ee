//! One step of a sweep: what was offered and what came back, and its report (rates, loss,
//! latency and time error percentiles).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::programs::Tally;

/// One step of a sweep: what was offered and what came back.
#[derive(Clone, Debug)]
pub struct Step {
    pub target_rate: f64,
    pub offered: u64,
    pub seconds: f64,
    pub tally: Tally,
}

impl Step {
    pub fn offered_rate(&self) -> f64 {
        self.offered as f64 / self.seconds
    }

    pub fn answered_rate(&self) -> f64 {
        (self.tally.valid + self.tally.kiss_of_death) as f64 / self.seconds
    }

    pub fn loss(&self) -> f64 {
        if self.offered == 0 {
            return 0.0;
        }
        1.0 - (self.tally.valid + self.tally.kiss_of_death) as f64 / self.offered as f64
    }
}

/// Latency or time error percentiles: p50, p99, p99.9.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Percentiles {
    /// None for a histogram with nothing in it (what was not measured).
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
        })
    }

    pub fn latency(percentiles: Option<Self>) -> String {
        percentiles.map_or("-".into(), |p| {
            format!(
                "{:.1} / {:.1} / {:.1} us",
                p.p50 as f64 / 1e3,
                p.p99 as f64 / 1e3,
                p.p999 as f64 / 1e3
            )
        })
    }

    pub fn time_error(percentiles: Option<Self>) -> String {
        percentiles.map_or("-".into(), |p| format!("{} / {} ns", p.p50, p.p99))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub target_rate: f64,
    pub offered_rate: f64,
    pub answered_rate: f64,
    pub loss: f64,
    pub invalid: u64,
    pub kiss_of_death: u64,
    /// None where not measured (the NTS rows).
    pub latency_ns: Option<Percentiles>,
    /// |NTP offset| of the replies: the served time's error.
    pub time_error_ns: Option<Percentiles>,
}

impl StepReport {
    pub fn of(step: &Step) -> Self {
        Self {
            target_rate: step.target_rate,
            offered_rate: step.offered_rate(),
            answered_rate: step.answered_rate(),
            loss: step.loss(),
            invalid: step.tally.invalid,
            kiss_of_death: step.tally.kiss_of_death,
            latency_ns: Percentiles::of(&step.tally.latency),
            time_error_ns: Percentiles::of(&step.tally.offset),
        }
    }

    /// One progress line.
    pub fn line(&self, server: &str) -> String {
        format!(
            "{server:<18} offered {:>10.0}/s answered {:>10.0}/s loss {:>6.2}% invalid {} \
             latency p50/p99/p99.9 {}  time error p50/p99 {}",
            self.offered_rate,
            self.answered_rate,
            self.loss * 100.0,
            self.invalid,
            Percentiles::latency(self.latency_ns),
            Percentiles::time_error(self.time_error_ns),
        )
    }
}
