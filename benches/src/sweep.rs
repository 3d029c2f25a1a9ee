//! Rate sweeps, as ntpperf runs them: from a start rate up by a factor each step, until more
//! than half is lost, the generator cannot offer more, or a ceiling.

use std::time::Duration;

use crate::step::Step;

#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    pub start_rate: f64,
    pub factor: f64,
    pub ceiling: f64,
    pub step: Duration,
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            start_rate: 20_000.0,
            factor: 1.5,
            ceiling: 20_000_000.0,
            step: Duration::from_secs(1),
        }
    }
}

impl Sweep {
    /// Runs `step(rate, duration)` at increasing rates; `progress` sees each result.
    pub fn run(
        &self,
        mut step: impl FnMut(f64, Duration) -> anyhow::Result<Step>,
        mut progress: impl FnMut(&Step),
    ) -> anyhow::Result<Vec<Step>> {
        let mut steps = Vec::new();
        let mut rate = self.start_rate;
        loop {
            let result = step(rate, self.step)?;
            progress(&result);
            let saturated = result.loss() > 0.5 || result.offered_rate() < 0.7 * rate;
            steps.push(result);
            rate *= self.factor;
            if saturated || rate > self.ceiling {
                return Ok(steps);
            }
        }
    }
}

/// The highest answered rate among steps losing less than `max_loss` and answering nothing
/// invalid, and that step.
pub fn max_rate(steps: &[Step], max_loss: f64) -> Option<&Step> {
    steps
        .iter()
        .filter(|s| s.loss() < max_loss && s.tally.invalid == 0)
        .max_by(|a, b| a.answered_rate().total_cmp(&b.answered_rate()))
}
