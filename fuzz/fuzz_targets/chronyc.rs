//! chronyc's protocol: any datagram is ignored or answered, and never with a reply longer
//! than itself (whatever reply its command gets, with every field filled).
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use ntp_userspace::chronyc::{
    ClientAccess, Command, Request, SourceData, SourceStats, Status, Tracking,
};

fuzz_target!(|data: &[u8]| {
    let Some(request) = Request::parse(data) else { return };
    let address = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let reply = match request.command {
        Err(status) => request.status(status),
        Ok(Command::Tracking) => request.tracking(&Tracking {
            reference_address: Some(address),
            reference_time: 4e9,
            current_correction: -1e-3,
            ..Tracking::default()
        }),
        Ok(Command::NumberOfSources) => request.number_of_sources(u32::MAX),
        Ok(Command::SourceData { .. }) => request.source_data(&SourceData {
            address,
            poll: -6,
            stratum: 15,
            state: 5,
            reach: 255,
            since_sample: u32::MAX,
            adjusted_offset: f64::NAN,
            measured_offset: -1e300,
            error: 1e-300,
        }),
        Ok(Command::SourceStats { .. }) => request.source_stats(&SourceStats {
            reference_id: u32::MAX,
            address,
            samples: 64,
            runs: 10,
            span_seconds: 1 << 20,
            std_dev: 1e-6,
            frequency_ppm: -500.0,
            skew_ppm: 0.1,
            offset: 1e-3,
            offset_error: 1e-6,
        }),
        Ok(Command::Activity) => request.activity(1, 2),
        Ok(Command::ServerStats) => request.server_stats([u32::MAX; 11]),
        Ok(Command::Clients { .. }) => {
            let client = ClientAccess {
                address,
                ntp_hits: u32::MAX,
                ntp_drops: 1,
                ntp_interval: -4,
                ntp_interval_limited: 127,
                last_ntp_ago: 0,
            };
            request.clients(u32::MAX, 16, &vec![client; 16])
        }
        Ok(Command::Unsupported(_)) => request.status(Status::NotEnabled),
    };
    assert!(reply.len() <= data.len(), "a {}-byte reply to {} bytes", reply.len(), data.len());
});
