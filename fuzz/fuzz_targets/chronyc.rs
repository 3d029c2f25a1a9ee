//! chronyc's protocol: any datagram is ignored or answered, and never with a reply longer
//! than itself (whatever reply its command gets, with every field filled).
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ntp_userspace::{
    chronyc::{Command, Request, Status},
    control::ClientReport,
    smoothing::SmoothingReport,
    sync::{
        LeapStatus, NtpData, SourceReport, Tracking,
        regression::Sample,
        source::{Exchanges, LastReply, SourceState},
    },
};
use ntp_common::wire::NtpHeader;

fuzz_target!(|data: &[u8]| {
    let Some(request) = Request::parse(data) else { return };
    let address = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let source = SourceReport {
        name: "a source".into(),
        address,
        // Both kinds: a server's report and a reference clock's (no address in sourcestats).
        reference_clock: data.len() % 2 == 1,
        state: SourceState::NotCombined,
        stratum: 15,
        poll: -6,
        reach: 255,
        last_rx: None,
        adjusted_offset: f64::NAN,
        measured_offset: -1e300,
        error: 1e-300,
        samples: 64,
        runs: 10,
        span: 1e7,
        frequency_ppm: -500.0,
        skew_ppm: 0.1,
        offset: 1e-3,
        std_dev: 1e-6,
    };
    let reply = match request.command {
        Err(status) => request.status(status),
        Ok(Command::Tracking) => request.tracking(&Tracking {
            reference_name: address.to_string(),
            reference_time: 4e9,
            system_time_offset: 1e-3,
            leap: LeapStatus::InsertSecond,
            ..Tracking::default()
        }),
        Ok(Command::NumberOfSources) => request.number_of_sources(u32::MAX),
        Ok(Command::SourceData { .. }) => request.source_data(&source),
        Ok(Command::SourceStats { .. }) => request.source_stats(&source),
        Ok(Command::Activity) => request.activity(1, 2),
        Ok(Command::ServerStats) => request.server_stats([u32::MAX; 11]),
        Ok(Command::Clients { .. }) => {
            let client = ClientReport {
                address,
                ntp_requests: u32::MAX,
                ntp_drops: 1,
                ntp_kiss_of_death: 0,
                ntp_interval: -4,
                ntp_interval_limited: 127,
                last_ntp_ago: 0,
            };
            request.clients(u32::MAX, 16, &vec![client; 16])
        }
        Ok(Command::NtpData { .. }) => {
            let data = NtpData {
                remote: SocketAddr::new(address, 123),
                exchanges: Exchanges { sent: u32::MAX, ..Exchanges::default() },
                last_reply: Some(LastReply {
                    header: NtpHeader::from_bytes(&[0xff; 48]),
                    response_time: 1e9,
                }),
                sample: Some(Sample { time_ns: i64::MIN, offset: -1e9, delay: 0.0, dispersion: 1.0 }),
            };
            request.ntp_data(&data, Some(address))
        }
        Ok(Command::Null | Command::Reload | Command::Access { .. }) => {
            request.status(Status::Success)
        }
        Ok(Command::AccessCheck { .. }) => request.status(Status::AccessDenied),
        Ok(Command::SourceName { .. }) => request.source_name(&"n".repeat(300)),
        Ok(Command::AuthData { .. }) => request.auth_data(Some(Default::default())),
        Ok(Command::Smoothing) => request.smoothing(&SmoothingReport {
            active: true,
            leap_only: true,
            offset: -1e9,
            frequency_ppm: 1e6,
            wander_ppm: -1e3,
            last_update_ago: 1e12,
            remaining: f64::MAX,
        }),
        Ok(Command::SmoothTime { .. }) => request.status(Status::Success),
        Ok(Command::Unsupported(_)) => request.status(Status::NotEnabled),
    };
    assert!(reply.len() <= data.len(), "a {}-byte reply to {} bytes", reply.len(), data.len());
});
