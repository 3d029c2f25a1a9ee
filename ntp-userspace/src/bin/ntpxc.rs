//! ntpxc: reports from a running ntpxd and changes to its access rules, in chronyc's layouts.
#![deny(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use ntp_userspace::{
    access::Access,
    announce,
    cli::ntpxc::{Args, Command},
    control::{self, Request, Response},
    report, smoothing,
};

fn access_request(access: Access, rule: &[String]) -> Result<Request, String> {
    let (all, subnet) = match rule {
        [] => (false, None),
        [all] if all == "all" => (true, None),
        [all, subnet] if all == "all" => (true, Some(subnet.clone())),
        [subnet] => (false, Some(subnet.clone())),
        _ => return Err("usage: allow|deny [all] [SUBNET]".into()),
    };
    Ok(Request::Access { access, all, subnet })
}

/// `clients`, a page a request: ntpxd never holds a whole large client log's report, and text
/// and CSV are printed as they come (JSON once complete).
fn list_clients(args: &Args, min_requests: u32, top: Option<usize>, reset: bool) -> ExitCode {
    let mut after = None;
    let mut all = Vec::new();
    let mut out = std::io::stdout().lock();
    if !args.json && !args.csv {
        let _ = out.write_all(report::CLIENTS_HEADING.as_bytes());
    }
    loop {
        let request = Request::Clients { min_requests, top, reset, after };
        let (clients, next) = match control::call(&args.socket, &request) {
            Ok(Response::Clients { clients, next }) => (clients, next),
            Ok(Response::Error { message }) => return fail(&format!("ntpxd: {message}")),
            Ok(other) => return fail(&format!("unexpected response: {other:?}")),
            Err(error) => return fail(&format!("{error:#}")),
        };
        let written = match (args.json, args.csv) {
            (true, _) => {
                all.extend(clients);
                Ok(())
            }
            (false, true) => out.write_all(report::clients_csv(&clients).as_bytes()),
            (false, false) => out.write_all(report::clients_text(&clients).as_bytes()),
        };
        if written.is_err() {
            // stdout closed (`| head`): nothing more to say.
            return ExitCode::SUCCESS;
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if args.json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ntpxc: {message}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match &args.command {
        Command::Serverstats => Ok(Request::ServerStats),
        Command::Clients { min_requests, reset, top } => {
            return list_clients(&args, *min_requests, *top, *reset);
        }
        Command::Allow { rule } => access_request(Access::Allow, rule),
        Command::Deny { rule } => access_request(Access::Deny, rule),
        Command::Accheck { address } => Ok(Request::AccessCheck { address: address.clone() }),
        Command::Reload => Ok(Request::Reload),
        Command::Tracking => Ok(Request::Tracking),
        Command::Sources { .. } | Command::Sourcestats { .. } => Ok(Request::Sources),
        Command::Authdata => Ok(Request::AuthData),
        Command::Announcements => Ok(Request::Announcements),
        Command::Smoothing => Ok(Request::Smoothing),
        Command::Smoothtime { action } => {
            Ok(Request::SmoothTime { activate: action == "activate" })
        }
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => return fail(&message),
    };
    let response = match control::call(&args.socket, &request) {
        Ok(response) => response,
        Err(error) => return fail(&format!("{error:#}")),
    };
    if let Response::Error { message } = &response {
        return fail(&format!("ntpxd: {message}"));
    }
    let output = if args.json {
        let json = match &response {
            Response::ServerStats(stats) => serde_json::to_string_pretty(stats),
            Response::Tracking(tracking) => serde_json::to_string_pretty(tracking),
            Response::Sources { sources } => serde_json::to_string_pretty(sources),
            other => serde_json::to_string_pretty(other),
        };
        json.map(|j| j + "\n").unwrap_or_default()
    } else {
        match (&response, args.csv) {
            (Response::ServerStats(stats), true) => report::serverstats_csv(stats),
            (Response::ServerStats(stats), false) => report::serverstats_text(stats),
            (Response::Tracking(tracking), true) => report::tracking_csv(tracking),
            (Response::Tracking(tracking), false) => report::tracking_text(tracking),
            (Response::Sources { sources }, csv) => match (&args.command, csv) {
                (Command::Sourcestats { .. }, true) => report::sourcestats_csv(sources),
                (Command::Sourcestats { verbose }, false) => {
                    report::sourcestats_text(sources, *verbose)
                }
                (Command::Sources { .. }, true) => report::sources_csv(sources),
                (Command::Sources { verbose }, false) => report::sources_text(sources, *verbose),
                _ => unreachable!("only sources and sourcestats ask for sources"),
            },
            (Response::AuthData { sources }, _) => report::authdata_text(sources),
            (Response::Announcements { addresses }, true) => addresses
                .iter()
                .map(|a| {
                    let why_not = a.why_not.map(|reason| reason.to_string()).unwrap_or_default();
                    format!("{},{},{why_not}\n", a.address, a.announced)
                })
                .collect(),
            (Response::Announcements { addresses }, false) => {
                announce::announcements_text(addresses)
            }
            (Response::Smoothing(report), true) => format!(
                "{},{},{:.9},{:.6},{:.6},{:.1},{:.1}\n",
                if report.active { "Yes" } else { "No" },
                if report.leap_only { "(leap second only)" } else { "" },
                report.offset,
                report.frequency_ppm,
                report.wander_ppm,
                report.last_update_ago,
                report.remaining
            ),
            (Response::Smoothing(report), false) => smoothing::smoothing_text(report),
            (Response::AccessCheck { allowed: true }, _) => "208 Access allowed\n".into(),
            (Response::AccessCheck { allowed: false }, _) => "209 Access denied\n".into(),
            (Response::Ok, _) => "200 OK\n".into(),
            (Response::Error { .. }, _) => unreachable!("handled above"),
            (Response::Clients { .. }, _) => unreachable!("listed by list_clients"),
        }
    };
    print!("{output}");
    ExitCode::SUCCESS
}
