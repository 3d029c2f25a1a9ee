//! The reports' assembly from the server, the synchronisation and the kernel's view:
//! `tracking`, `serverstats`, `clients`.

use ntp_common::ratelimit::{self};

use super::context::{Ask, ControlContext, KernelView};
use crate::{
    client_table::Client,
    control::{ClientReport, ServerStats},
    reference::TaiReading,
    server::Server,
    sync::{LeapStatus, Tracking},
    sys::clock::{self},
    upstream::Upstream,
};

/// `tracking`: the synchronisation's, or what the server serves without one; with the smear
/// and the smoothing where configured.
pub(super) fn tracking(server: &Server, upstream: Option<&Upstream>) -> Tracking {
    let now = clock::tai_now();
    let mut tracking = match upstream {
        Some(upstream) => {
            upstream.sync.lock().expect("sync lock").tracking(now.system_time_ns() as i64)
        }
        None => unsynchronised_tracking(server, now),
    };
    (tracking.leap_smears, tracking.smoothing_offset) = server.departures(now);
    tracking
}

/// `tracking` without sources: the header served (a `local` reference, or unsynchronised).
fn unsynchronised_tracking(server: &Server, now: TaiReading) -> Tracking {
    let header = server.states_to_publish(now).0.header();
    let synchronised = header.leap != ntp_common::wire::Leap::Unsynchronised;
    Tracking {
        reference_id: u32::from_be_bytes(header.reference_id.to_bits()),
        stratum: header.stratum,
        reference_time: header.reference_time.to_unix_nanos_near(now.system_time_ns() as i64)
            as f64
            * 1e-9,
        root_delay: header.root_delay.to_seconds(),
        root_dispersion: header.root_dispersion.to_seconds(),
        leap: LeapStatus::of(synchronised.then_some(header.leap)),
        synchronised,
        ..Tracking::default()
    }
}

/// `clients --top N`: the most requests first, ties by address; at most `top` of them, and at
/// most twice that many reports held at once, however large the table.
pub(super) struct Busiest {
    pub(super) top: usize,
    pub(super) clients: Vec<ClientReport>,
}

impl Busiest {
    pub(super) fn new(top: usize) -> Self {
        Self { top, clients: Vec::new() }
    }

    pub(super) fn order(a: &ClientReport, b: &ClientReport) -> std::cmp::Ordering {
        b.ntp_requests.cmp(&a.ntp_requests).then(a.address.cmp(&b.address))
    }

    pub(super) fn push(&mut self, client: ClientReport) {
        self.clients.push(client);
        if self.clients.len() >= self.top.max(1).saturating_mul(2) {
            self.clients.select_nth_unstable_by(self.top.max(1) - 1, Self::order);
            self.clients.truncate(self.top);
        }
    }

    pub(super) fn finish(mut self) -> Vec<ClientReport> {
        self.clients.sort_by(Self::order);
        self.clients.truncate(self.top);
        self.clients
    }
}

pub(super) fn client_report(client: &Client, now: u32) -> ClientReport {
    let record = &client.record;
    ClientReport {
        address: client.address,
        ntp_requests: record.hits,
        ntp_drops: record.drops,
        ntp_kiss_of_death: record.kods,
        ntp_interval: ratelimit::interval_log2(record.rate),
        ntp_interval_limited: ratelimit::interval_log2(record.timeout_rate),
        last_ntp_ago: ratelimit::seconds_since(now, record.last_hit).unwrap_or(u32::MAX),
    }
}

pub(super) fn server_stats(context: &ControlContext) -> anyhow::Result<ServerStats> {
    Ok(server_stats_from(context, context.ask(Ask::KernelView)??))
}

pub(super) fn server_stats_from(context: &ControlContext, view: KernelView) -> ServerStats {
    let slow_path = context.server.slow_path_counters();
    let KernelView { counters: kernel, attachments: xdp, .. } = view;
    let mut stats = ServerStats {
        command_packets_received: context.server.commands(),
        command_packets_dropped: context.server.commands_dropped(),
        accept_backoffs: context.server.accept_backoffs(),
        slow_path,
        kernel,
        xdp,
        ..ServerStats::default()
    };
    if let Some(table) = context.clients.as_ref().filter(|table| table.settings().enabled) {
        // From counters, never a walk of the table (a scrape must cost little). The kernel does
        // not count its LRU evictions, but a record created beyond the capacity replaced one;
        // the LRU can also evict a little early (up to 128 free records wait on each CPU's
        // list), which this does not see.
        stats.client_log_records_dropped =
            stats.kernel.client_records_created.saturating_sub(u64::from(table.capacity()));
        stats.client_log_capacity = table.capacity();
        stats.client_log_bytes = table.memory().unwrap_or(0);
    }
    let kernel = &stats.kernel;
    // As chrony counts: every request logged, answered or not.
    stats.ntp_packets_received = kernel.answered
        + kernel.answered_kiss_of_death
        + kernel.dropped_rate_limit
        + slow_path.received;
    stats.ntp_packets_dropped = kernel.dropped_rate_limit + slow_path.rate_limited;
    stats.authenticated_ntp_packets = slow_path.authenticated;
    stats.nts_ke_connections_accepted = slow_path.nts_ke_accepted;
    stats.nts_ke_connections_dropped = slow_path.nts_ke_dropped;
    stats
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn the_busiest_clients_come_first_and_only_top_are_kept() {
        let report = |i: u32| ClientReport {
            address: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            ntp_requests: (i * 7919) % 101,
            ntp_drops: 0,
            ntp_kiss_of_death: 0,
            ntp_interval: 0,
            ntp_interval_limited: 0,
            last_ntp_ago: 0,
        };
        let mut all: Vec<ClientReport> = (0..1000).map(report).collect();
        all.sort_by(Busiest::order);
        for top in [0, 1, 7, 1000, 2000, usize::MAX] {
            let mut busiest = Busiest::new(top);
            for i in 0..1000 {
                busiest.push(report(i));
                assert!(busiest.clients.len() < top.max(1).saturating_mul(2));
            }
            let expected = &all[..top.min(1000)];
            assert_eq!(busiest.finish(), expected, "top {top}");
        }
    }
}
