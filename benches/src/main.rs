//! `ntpx-bench`: what `cargo xtask bench` runs (`all`), and the socket generator against a
//! server elsewhere (`remote`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ntpx_bench::{
    bed::{Bed, ServerKind},
    cost,
    nts_load::{NtsBed, NtsServer},
    report::{Report, ServerReport},
    response::ResponseTimes,
    scaling, soak, socket_load,
    step::StepReport,
    sweep::{self, Sweep},
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
    /// Only the XDP program's cost per request and its stages' costs.
    Costs,
    /// Sweeps one server of `all`.
    Sweep {
        server: ServerKind,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 1.0)]
        step: f64,
    },
    /// Only the response times a chronyd client sees from ntpxd (XDP) and chronyd, idle and
    /// under a load.
    Response {
        /// Requests per second offered while loaded.
        #[arg(long, default_value_t = 20_000.0)]
        load: f64,
    },
    /// Only the scaling table of `all`: the XDP servers with the load on 1, 2, 4, ... CPUs.
    Scaling {
        /// Seconds per rate step.
        #[arg(long, default_value_t = 1.0)]
        step: f64,
    },
    /// Only the NTS rows of `all`: ntpxd and chronyd serving NTS, authenticated requests.
    Nts {
        /// Seconds per rate step.
        #[arg(long, default_value_t = 1.0)]
        step: f64,
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
        Command::Sweep { server, step } => {
            let sweep = Sweep { step: Duration::from_secs_f64(step), ..Sweep::default() };
            let steps = Bed::run(server, |bed| bed.sweep(&sweep, server.label()))?;
            let report =
                Report::of_servers(machine(), vec![ServerReport::of(server.label(), &steps)]);
            print!("{}", report.table());
            Ok(())
        }
        Command::Costs => {
            let costs = cost::measure()?;
            print!(
                "answered {:.0} ns, passed {:.0} ns, denied {:.0} ns, responder {:.0} ns\n{}",
                costs.answered_ns,
                costs.passed_ns,
                costs.denied_ns,
                costs.responder_ns,
                costs.stage_table()
            );
            Ok(())
        }
        Command::Response { load } => {
            let times = [ServerKind::NtpxdXdp, ServerKind::Chronyd]
                .map(|kind| Bed::run(kind, |bed| ResponseTimes::measure(bed, load)));
            print!(
                "{}",
                ResponseTimes::table(&times.into_iter().collect::<anyhow::Result<Vec<_>>>()?)
            );
            Ok(())
        }
        Command::Scaling { step } => {
            let rows = scaling::measure(Sweep {
                step: Duration::from_secs_f64(step),
                ..Sweep::default()
            })?;
            print!("{}", scaling::table(&rows));
            Ok(())
        }
        Command::Nts { step } => {
            let sweep = Sweep { step: Duration::from_secs_f64(step), ..Sweep::default() };
            let report = Report::of_servers(machine(), nts_rows(sweep)?);
            print!("{}", report.table());
            Ok(())
        }
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
            let report = Report::of_servers(machine(), vec![ServerReport::of(&label, &steps)]);
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
    let mut response_times = Vec::new();
    for kind in [
        ServerKind::Reflector,
        ServerKind::NtpxdXdp,
        ServerKind::NtpxdSlowPath,
        ServerKind::Chronyd,
    ] {
        println!("bench: sweeping {}", kind.label());
        let (steps, response) = Bed::run(kind, |bed| {
            let steps = bed.sweep(&sweep, kind.label())?;
            // A real client's view of the server, under half the load it carries.
            let response = match (kind, sweep::max_rate(&steps, 0.01)) {
                (ServerKind::NtpxdXdp | ServerKind::Chronyd, Some(best)) => {
                    println!("bench: a chronyd client's response times from {}", kind.label());
                    Some(ResponseTimes::measure(bed, best.answered_rate() / 2.0)?)
                }
                _ => None,
            };
            Ok((steps, response))
        })
        .with_context(|| format!("sweeping {}", kind.label()))?;
        servers.push(ServerReport::of(kind.label(), &steps));
        response_times.extend(response);
    }
    servers.extend(nts_rows(sweep)?);
    let scaling = scaling::measure(sweep)?;
    let report =
        Report { machine: machine(), costs: Some(costs), servers, response_times, scaling };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join("sweep.svg"), report.svg())?;
    println!("\n{}", report.table());
    println!("bench: wrote {0}/results.json and {0}/sweep.svg", out.display());
    Ok(())
}

/// ntpxd's and chronyd's NTS rows (from a lower start: NTS is answered by the slow path).
fn nts_rows(sweep: Sweep) -> anyhow::Result<Vec<ServerReport>> {
    let sweep = Sweep { start_rate: 2_000.0, ..sweep };
    let mut rows = Vec::new();
    for kind in [NtsServer::Ntpxd, NtsServer::Chronyd] {
        println!("bench: sweeping {}", kind.label());
        let steps = NtsBed::run(kind, |bed| {
            sweep.run(
                |rate, duration| bed.step(rate, duration),
                |step| println!("{}", StepReport::of(step).line(kind.label())),
            )
        })
        .with_context(|| format!("sweeping {}", kind.label()))?;
        rows.push(ServerReport::of(kind.label(), &steps));
    }
    Ok(rows)
}

/// A one-line description of this machine.
fn machine() -> String {
    let cpus = ntpx_bench::bed::online_cpus();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs, Linux {kernel}")
}
