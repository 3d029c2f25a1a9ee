//! ntpxc: reports from a running ntpxd, in chronyc's layouts.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ntp_userspace::{
    config::DEFAULT_COMMAND_SOCKET,
    control::{self, Request, Response},
    report,
};

#[derive(Parser, Debug)]
#[command(version, about = "Reports from ntpxd, like chronyc", disable_help_flag = true)]
struct Args {
    /// ntpxd's control socket (chronyc's -h, for a Unix socket path).
    #[arg(short = 'h', value_name = "SOCKET", default_value = DEFAULT_COMMAND_SOCKET)]
    socket: PathBuf,
    /// Comma-separated values, as `chronyc -c`.
    #[arg(short = 'c')]
    csv: bool,
    /// JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Counters of NTP requests: chronyc's, then the kernel's and the slow path's.
    Serverstats,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match args.command {
        Command::Serverstats => Request::ServerStats,
    };
    let response = match control::call(&args.socket, &request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!("ntpxc: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let output = match (&response, args.json, args.csv) {
        (Response::Error { message }, _, _) => {
            eprintln!("ntpxc: ntpxd: {message}");
            return ExitCode::FAILURE;
        }
        (Response::ServerStats(stats), true, _) => {
            serde_json::to_string_pretty(stats).map(|j| j + "\n").unwrap_or_default()
        }
        (Response::ServerStats(stats), _, true) => report::serverstats_csv(stats),
        (Response::ServerStats(stats), _, _) => report::serverstats_text(stats),
    };
    print!("{output}");
    ExitCode::SUCCESS
}
