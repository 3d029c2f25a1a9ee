//! ntpxc: reports from a running ntpxd and changes to its access rules, in chronyc's layouts.

use std::process::ExitCode;

use clap::Parser as _;
use ntp_userspace::{
    access::Access,
    cli::ntpxc::{Args, Command},
    control::{self, Request, Response},
    report,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match &args.command {
        Command::Serverstats => Ok(Request::ServerStats),
        Command::Clients { min_requests, reset, top } => {
            Ok(Request::Clients { min_requests: *min_requests, top: *top, reset: *reset })
        }
        Command::Allow { rule } => access_request(Access::Allow, rule),
        Command::Deny { rule } => access_request(Access::Deny, rule),
        Command::Accheck { address } => Ok(Request::AccessCheck { address: address.clone() }),
        Command::Reload => Ok(Request::Reload),
        Command::Tracking => Ok(Request::Tracking),
        Command::Sources { .. } | Command::Sourcestats { .. } => Ok(Request::Sources),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => {
            eprintln!("ntpxc: {message}");
            return ExitCode::FAILURE;
        }
    };
    let response = match control::call(&args.socket, &request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!("ntpxc: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Response::Error { message } = &response {
        eprintln!("ntpxc: ntpxd: {message}");
        return ExitCode::FAILURE;
    }
    let output = if args.json {
        let json = match &response {
            Response::ServerStats(stats) => serde_json::to_string_pretty(stats),
            Response::Clients { clients } => serde_json::to_string_pretty(clients),
            Response::Tracking(tracking) => serde_json::to_string_pretty(tracking),
            Response::Sources { sources } => serde_json::to_string_pretty(sources),
            other => serde_json::to_string_pretty(other),
        };
        json.map(|j| j + "\n").unwrap_or_default()
    } else {
        match (&response, args.csv) {
            (Response::ServerStats(stats), true) => report::serverstats_csv(stats),
            (Response::ServerStats(stats), false) => report::serverstats_text(stats),
            (Response::Clients { clients }, true) => report::clients_csv(clients),
            (Response::Clients { clients }, false) => report::clients_text(clients),
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
            (Response::AccessCheck { allowed: true }, _) => "208 Access allowed\n".into(),
            (Response::AccessCheck { allowed: false }, _) => "209 Access denied\n".into(),
            (Response::Ok, _) => "200 OK\n".into(),
            (Response::Error { .. }, _) => unreachable!("handled above"),
        }
    };
    print!("{output}");
    ExitCode::SUCCESS
}
