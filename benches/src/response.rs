//! The response time a real client sees: chronyd in the client's namespace polls the server once
//! a second, and `chronyc ntpdata` gives the server's transmit minus receive timestamp of each
//! reply, first with no other traffic (caches cold between polls), then while the generator
//! offers a load.

use std::time::Duration;

use ntpx_tests::peers::{self, Chronyd};
use serde::Serialize;

use crate::bed::Bed;

/// Replies sampled in each condition.
const SAMPLES: usize = 8;

/// A server's response times, seconds.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseTimes {
    pub server: String,
    pub idle: Vec<f64>,
    /// The rate offered meanwhile, requests/s.
    pub load_rate: f64,
    pub loaded: Vec<f64>,
}

impl ResponseTimes {
    /// Measures idle, then under `load_rate` requests/s, on the bed's server.
    pub fn measure(bed: &mut Bed, load_rate: f64) -> anyhow::Result<Self> {
        let server = bed.flow().server.ip().to_string();
        let client = Chronyd::start(
            bed.client_netns(),
            &format!("server {server} iburst minpoll 0 maxpoll 0 noselect\n"),
        );
        client.wait_for_replies(&server, 2, Duration::from_secs(30));
        let idle = samples(&client, &server)?;
        // The generator runs on this thread; the samples are taken meanwhile on another.
        let loaded = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| samples(&client, &server));
            while !sampler.is_finished() {
                bed.step(load_rate, Duration::from_secs(1))?;
            }
            sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?
        })?;
        Ok(Self { server: bed.kind.label().to_owned(), idle, load_rate, loaded })
    }

    /// The table of `rows`: each server's median and largest, idle and loaded.
    pub fn table(rows: &[Self]) -> String {
        let mut table = String::from(Self::TABLE_HEAD);
        for times in rows {
            table += &times.row();
            table.push('\n');
        }
        table
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} / {} | {:.0}/s | {} / {} |",
            self.server,
            ns(median(&self.idle)),
            ns(largest(&self.idle)),
            self.load_rate,
            ns(median(&self.loaded)),
            ns(largest(&self.loaded)),
        )
    }

    const TABLE_HEAD: &str = "| server | response time idle, p50 / max | load | under load, p50 / max |\n\
                                  |---|---:|---:|---:|\n";
}

/// The response times of the client's next [`SAMPLES`] replies from `server`.
fn samples(client: &Chronyd, server: &str) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(SAMPLES);
    while times.len() < SAMPLES {
        client.wait_for_replies(server, 1, Duration::from_secs(30));
        let ntpdata = client.chronyc(&["-n", "ntpdata", server]);
        let time = peers::report_seconds(&ntpdata, "Response time")
            .ok_or_else(|| anyhow::anyhow!("no response time in:\n{ntpdata}"))?;
        times.push(time);
    }
    Ok(times)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn largest(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MIN, f64::max)
}

fn ns(seconds: f64) -> String {
    format!("{:.0} ns", seconds * 1e9)
}
