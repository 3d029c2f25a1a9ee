//! ntpxc's reports, in chronyc's layouts: text, `-c` CSV, and JSON.

use crate::control::ServerStats;

/// The lines of `serverstats`: chrony's eleven, then this server's own.
fn serverstats_lines(stats: &ServerStats) -> Vec<(&'static str, u64)> {
    let ServerStats {
        ntp_packets_received,
        ntp_packets_dropped,
        command_packets_received,
        command_packets_dropped,
        client_log_records_dropped,
        nts_ke_connections_accepted,
        nts_ke_connections_dropped,
        authenticated_ntp_packets,
        interleaved_ntp_packets,
        ntp_timestamps_held,
        ntp_timestamp_span,
        kernel,
        slow_path,
        xdp: _,
    } = stats;
    vec![
        ("NTP packets received", *ntp_packets_received),
        ("NTP packets dropped", *ntp_packets_dropped),
        ("Command packets received", *command_packets_received),
        ("Command packets dropped", *command_packets_dropped),
        ("Client log records dropped", *client_log_records_dropped),
        ("NTS-KE connections accepted", *nts_ke_connections_accepted),
        ("NTS-KE connections dropped", *nts_ke_connections_dropped),
        ("Authenticated NTP packets", *authenticated_ntp_packets),
        ("Interleaved NTP packets", *interleaved_ntp_packets),
        ("NTP timestamps held", *ntp_timestamps_held),
        ("NTP timestamp span", *ntp_timestamp_span),
        ("NTP answered in kernel", kernel.answered),
        ("NTP answered in slow path", slow_path.answered),
        ("XDP received", kernel.received),
        ("XDP passed, malformed", kernel.passed_malformed),
        ("XDP passed, fragment", kernel.passed_fragment),
        ("XDP passed, length", kernel.passed_length),
        ("XDP passed, not a request", kernel.passed_not_request),
        ("XDP passed, address", kernel.passed_address),
        ("XDP passed, bad checksum", kernel.passed_checksum),
        ("XDP passed, stale state", kernel.passed_stale),
        ("XDP dropped, denied", kernel.dropped_denied),
        ("Slow path received", slow_path.received),
        ("Slow path denied", slow_path.denied),
    ]
}

/// chronyc's layout: the label padded to 27 columns, then ": value".
pub fn serverstats_text(stats: &ServerStats) -> String {
    let mut text: String = serverstats_lines(stats)
        .iter()
        .map(|(label, value)| format!("{label:<27}: {value}\n"))
        .collect();
    for attachment in &stats.xdp {
        let mode = format!("{:?}", attachment.mode).to_lowercase();
        text.push_str(&format!("{:<27}: {} ({mode})\n", "XDP attached to", attachment.interface));
    }
    text
}

/// chronyc -c: the values on one line, comma-separated, in the text report's order.
pub fn serverstats_csv(stats: &ServerStats) -> String {
    let values: Vec<String> = serverstats_lines(stats).iter().map(|(_, v)| v.to_string()).collect();
    format!("{}\n", values.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::KernelCounters;

    #[test]
    fn serverstats_follows_chronycs_layout() {
        let stats = ServerStats {
            ntp_packets_received: 1598,
            ntp_packets_dropped: 8,
            command_packets_received: 19,
            nts_ke_connections_accepted: 3,
            kernel: KernelCounters { answered: 1500, ..KernelCounters::default() },
            ..ServerStats::default()
        };
        let text = serverstats_text(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NTP packets received       : 1598");
        assert_eq!(lines[1], "NTP packets dropped        : 8");
        assert_eq!(lines[5], "NTS-KE connections accepted: 3");
        assert_eq!(lines[11], "NTP answered in kernel     : 1500");
        assert!(serverstats_csv(&stats).starts_with("1598,8,19,0,0,3,0,0,0,0,0,1500,"));
    }
}
