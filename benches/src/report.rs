//! The benchmark's results: a table, JSON, and a plot of answered against offered rates.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    cost::Costs,
    response::ResponseTimes,
    scaling::{self, ScalingRow},
    step::{Percentiles, Step, StepReport},
    sweep,
};

#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    pub server: String,
    /// The highest answered rate with less than 1% lost and nothing invalid.
    pub max_rate: Option<f64>,
    /// That step.
    pub at_max_rate: Option<StepReport>,
    /// The highest answered rate at any loss: what the server does flat out. Sporadic loss of
    /// this shared machine moves `max_rate` of a socket server a whole step; this moves less.
    pub most_answered: Option<f64>,
    pub invalid: u64,
    pub steps: Vec<StepReport>,
}

impl ServerReport {
    pub fn of(server: &str, steps: &[Step]) -> Self {
        let best = sweep::max_rate(steps, 0.01);
        Self {
            server: server.to_owned(),
            max_rate: best.map(Step::answered_rate),
            at_max_rate: best.map(StepReport::of),
            most_answered: steps.iter().map(Step::answered_rate).max_by(f64::total_cmp),
            invalid: steps.iter().map(|s| s.tally.invalid).sum(),
            steps: steps.iter().map(StepReport::of).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub costs: Option<Costs>,
    pub servers: Vec<ServerReport>,
    pub response_times: Vec<ResponseTimes>,
    pub scaling: Vec<ScalingRow>,
}

impl Report {
    /// A report of sweeps alone.
    pub fn of_servers(machine: String, servers: Vec<ServerReport>) -> Self {
        Self { machine, costs: None, servers, response_times: Vec::new(), scaling: Vec::new() }
    }

    fn rate_of(&self, server: &str) -> Option<f64> {
        self.servers.iter().find(|s| s.server.starts_with(server)).and_then(|s| s.max_rate)
    }

    /// The table: each server's maximum rate under 1% loss, its ratios to chrony and to the
    /// reflector, the most it answered at any loss and its ratio to chrony, and its latencies
    /// and time error at the first rate.
    pub fn table(&self) -> String {
        // NTS rows are compared with chronyd's NTS row, and with no reflector.
        let nts = |server: &ServerReport| server.server.ends_with("(NTS)");
        let chrony_nts = self.servers.iter().find(|s| s.server.starts_with("chronyd") && nts(s));
        let chrony_plain = self.servers.iter().find(|s| s.server.starts_with("chronyd") && !nts(s));
        let reflector = self.rate_of("reflector");
        let ratio = |rate: Option<f64>, base: Option<f64>| match (rate, base) {
            (Some(rate), Some(base)) if base > 0.0 => format!("{:.1}x", rate / base),
            _ => "-".into(),
        };
        let mut table = String::from(
            "| server | max rate, <1% loss | vs chrony | vs reflector | most answered, any loss | vs chrony | latency p50 / p99 / p99.9 | time error p50 / p99 | invalid |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for server in &self.servers {
            let (latency, error) = match &server.at_max_rate {
                Some(step) => (
                    Percentiles::latency(step.latency_ns),
                    Percentiles::time_error(step.time_error_ns),
                ),
                None => ("-".into(), "-".into()),
            };
            let chrony = if nts(server) { chrony_nts } else { chrony_plain };
            let rate = |rate: Option<f64>| rate.map_or("-".into(), |r| format!("{r:.0}/s"));
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                server.server,
                rate(server.max_rate),
                ratio(server.max_rate, chrony.and_then(|s| s.max_rate)),
                ratio(server.max_rate, if nts(server) { None } else { reflector }),
                rate(server.most_answered),
                ratio(server.most_answered, chrony.and_then(|s| s.most_answered)),
                latency,
                error,
                server.invalid
            );
        }
        if let Some(costs) = &self.costs {
            let _ = write!(
                table,
                "\nXDP program cost per request (BPF_PROG_TEST_RUN): answered {:.0} ns, passed {:.0} ns, \
                 denied {:.0} ns; userspace responder {:.0} ns.\n",
                costs.answered_ns, costs.passed_ns, costs.denied_ns, costs.responder_ns
            );
            table.push_str(&costs.stage_table());
        }
        if !self.scaling.is_empty() {
            table += "\nAnswered/s under 1% loss with the load on 1, 2, ... CPUs:\n\n";
            table += &scaling::table(&self.scaling);
        }
        if !self.response_times.is_empty() {
            table += "\nResponse time (T3 - T2) a chronyd client polling once a second sees:\n\n";
            table += &ResponseTimes::table(&self.response_times);
        }
        table
    }

    /// Answered against offered rate, one line per server, log-log.
    pub fn svg(&self) -> String {
        let (width, height, margin) = (760.0, 480.0, 70.0);
        let rates: Vec<f64> = self
            .servers
            .iter()
            .flat_map(|s| s.steps.iter().flat_map(|p| [p.offered_rate, p.answered_rate]))
            .filter(|r| *r > 0.0)
            .collect();
        let low = rates.iter().copied().fold(f64::MAX, f64::min).max(1.0).log10().floor();
        let high = rates.iter().copied().fold(1.0, f64::max).log10().ceil().max(low + 1.0);
        let x = |rate: f64| {
            margin + (rate.max(1.0).log10() - low) / (high - low) * (width - 2.0 * margin)
        };
        let y = |rate: f64| {
            height - margin - (rate.max(1.0).log10() - low) / (high - low) * (height - 2.0 * margin)
        };
        let colors = ["#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd"];
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Answered against offered requests per second ({})</text>\n",
            width / 2.0,
            self.machine
        );
        for decade in (low as i32)..=(high as i32) {
            let rate = 10f64.powi(decade);
            let _ = write!(
                svg,
                "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">1e{decade}</text>\n\
                 <line x1=\"{4}\" y1=\"{5}\" x2=\"{6}\" y2=\"{5}\" stroke=\"#ddd\"/><text x=\"{7}\" y=\"{8}\" text-anchor=\"end\">1e{decade}</text>\n",
                x(rate),
                margin,
                height - margin,
                height - margin + 18.0,
                margin,
                y(rate),
                width - margin,
                margin - 6.0,
                y(rate) + 4.0
            );
        }
        let _ = write!(
            svg,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4 4\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered per second</text>\n\
             <text x=\"18\" y=\"{}\" transform=\"rotate(-90 18 {})\" text-anchor=\"middle\">answered per second</text>\n",
            x(10f64.powf(low)),
            y(10f64.powf(low)),
            x(10f64.powf(high)),
            y(10f64.powf(high)),
            width / 2.0,
            height - 25.0,
            height / 2.0,
            height / 2.0
        );
        for (i, server) in self.servers.iter().enumerate() {
            let color = colors[i % colors.len()];
            let points: Vec<String> = server
                .steps
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.offered_rate), y(s.answered_rate)))
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
                 <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
                points.join(" "),
                margin + 10.0,
                margin + 10.0 + 18.0 * i as f64,
                margin + 28.0,
                margin + 21.0 + 18.0 * i as f64,
                server.server
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}
