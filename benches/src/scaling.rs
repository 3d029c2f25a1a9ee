//! Scaling with cores: the XDP servers swept with the load on 1, 2, 4, ... CPUs (a generator on
//! each, as many queues on the veth pair), each CPU's requests answered on that CPU, as a
//! multi-queue NIC spreads clients over its queues.

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    bed::{self, Bed, Clients, ServerKind},
    sweep::{self, Sweep},
};

/// The servers compared: the path's ceiling, and ntpxd with and without its client log (whose
/// shared LRU list is what CPUs could contend on).
pub const SERVERS: [ServerKind; 3] =
    [ServerKind::Reflector, ServerKind::NtpxdXdp, ServerKind::NtpxdXdpNoClientLog];

#[derive(Clone, Debug, Serialize)]
pub struct ScalingRow {
    pub server: String,
    pub cells: Vec<ScalingCell>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct ScalingCell {
    pub cpus: usize,
    /// Answered/s at the highest step under 1% loss.
    pub max_rate: Option<f64>,
    /// The sweep ended because the generators could not offer the next rate, not because the
    /// server lost half: the server's own limit is higher.
    pub generator_bound: bool,
}

/// The CPU counts measured: powers of two up to this machine's CPUs (the generators split the
/// clients evenly).
pub fn cpu_counts() -> Vec<usize> {
    let cpus = bed::online_cpus();
    (0..).map(|k| 1 << k).take_while(|&n| n <= cpus).collect()
}

pub fn measure(sweep: Sweep) -> anyhow::Result<Vec<ScalingRow>> {
    let sweep = Sweep { start_rate: 100_000.0, ..sweep };
    let mut rows = Vec::new();
    for kind in SERVERS {
        let mut cells = Vec::new();
        for cpus in cpu_counts() {
            let label = format!("{} on {cpus} CPU(s)", kind.label());
            println!("bench: sweeping {label}");
            let steps = Bed::run_on(kind, Clients::BENCH, cpus, |bed| {
                // Each generator sizes its test runs to its CPU's pace in its first second:
                // until then it offers too little for a sweep's first step.
                bed.step(sweep.start_rate, sweep.step)?;
                bed.sweep(&sweep, &label)
            })
            .with_context(|| format!("sweeping {label}"))?;
            let last = steps.last().context("a sweep without steps")?;
            cells.push(ScalingCell {
                cpus,
                max_rate: sweep::max_rate(&steps, 0.01).map(|s| s.answered_rate()),
                generator_bound: last.loss() <= 0.5,
            });
        }
        rows.push(ScalingRow { server: kind.label().to_owned(), cells });
    }
    Ok(rows)
}

/// One column per CPU count, and the largest count's rate over one CPU's. A rate the
/// generators bounded is marked "≥".
pub fn table(rows: &[ScalingRow]) -> String {
    let Some(first) = rows.first() else { return String::new() };
    let mut table = String::from("| server |");
    let mut rule = String::from("|---|");
    for cell in &first.cells {
        table += &format!(" {} CPU(s) |", cell.cpus);
        rule += "---:|";
    }
    table += " scaling |\n";
    table += &rule;
    table += "---:|\n";
    for row in rows {
        table += &format!("| {} |", row.server);
        for cell in &row.cells {
            let bound = if cell.generator_bound { "≥ " } else { "" };
            table += &cell.max_rate.map_or(" - |".into(), |r| format!(" {bound}{r:.0}/s |"));
        }
        // Each CPU runs a generator and the path its requests take: a sweep ends where they
        // share the CPU up, so that "≥" on every column is the method, not a flaw of a cell.
        let scaling = match (row.cells.first(), row.cells.last()) {
            (Some(one), Some(all)) => match (one.max_rate, all.max_rate) {
                (Some(one), Some(all)) if one > 0.0 => format!(" {:.2}x |", all / one),
                _ => " - |".into(),
            },
            _ => " - |".into(),
        };
        table += &scaling;
        table.push('\n');
    }
    table
}
