//! `ntpx-bench`: what `cargo xtask bench` runs (`all`), and the socket generator against a
//! server elsewhere (`remote`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ntpx_bench::{
    bed::{Bed, ServerKind},
    cost,
    report::{Report, ServerReport, StepReport},
    soak, socket_load,
    sweep::Sweep,
};

#[derive(Parser)]
#[command(about = "ntpx's load benchmark")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sweeps ntpxd (XDP and slow path), chronyd and the reflector on this machine, in network
    /// namespaces, measures the XDP program's cost, and writes results.json and sweep.svg.
    All {
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 1.0)]
        step: f64,
    },
    /// ntpxd under saturating load for minutes, a million distinct clients cycling through its
    /// client log, reloaded and reconfigured as it serves; writes soak.json.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Sweeps a server elsewhere with the socket generator (sendmmsg/recvmmsg).
    Remote {
        /// The server's address and port, e.g. 192.0.2.1:123.
        server: SocketAddr,
        #[arg(long, default_value_t = 1000.0)]
        start_rate: f64,
        #[arg(long, default_value_t = 500_000.0)]
        ceiling: f64,
        #[arg(long, default_value_t = 1.0)]
        step: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::All { out, step } => all(&out, Duration::from_secs_f64(step)),
        Command::Soak { minutes, out } => {
            let report = soak::soak(minutes)?;
            print!("{}", report.table());
            println!("soak: wrote {}", soak::write(&report, &out)?.display());
            report.check()
        }
        Command::Remote { server, start_rate, ceiling, step } => {
            let sweep = Sweep {
                start_rate,
                ceiling,
                step: Duration::from_secs_f64(step),
                ..Sweep::default()
            };
            let label = server.to_string();
            let steps = sweep.run(
                |rate, duration| socket_load::step(server, rate, duration),
                |step| println!("{}", StepReport::of(step).line(&label)),
            )?;
            let report = Report {
                machine: machine(),
                costs: None,
                servers: vec![ServerReport::of(&label, &steps)],
            };
            print!("{}", report.table());
            Ok(())
        }
    }
}

fn all(out: &std::path::Path, step: Duration) -> anyhow::Result<()> {
    println!("bench: the XDP program's cost per request");
    let costs = cost::measure()?;
    println!("bench: {costs:?}");
    let sweep = Sweep { step, ..Sweep::default() };
    let mut servers = Vec::new();
    for kind in [
        ServerKind::Reflector,
        ServerKind::NtpxdXdp,
        ServerKind::NtpxdSlowPath,
        ServerKind::Chronyd,
    ] {
        println!("bench: sweeping {}", kind.label());
        let steps = Bed::run(kind, |bed| {
            sweep.run(
                |rate, duration| bed.step(rate, duration),
                |step| println!("{}", StepReport::of(step).line(kind.label())),
            )
        })
        .with_context(|| format!("sweeping {}", kind.label()))?;
        servers.push(ServerReport::of(kind.label(), &steps));
    }
    let report = Report { machine: machine(), costs: Some(costs), servers };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join("sweep.svg"), report.svg())?;
    println!("\n{}", report.table());
    println!("bench: wrote {0}/results.json and {0}/sweep.svg", out.display());
    Ok(())
}

/// A one-line description of this machine.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs, Linux {kernel}")
}
