//! ntpxc's reports, in chronyc's layouts: text, `-c` CSV, and JSON.

use crate::control::{ClientReport, ServerStats};

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
        client_log_capacity,
        client_log_bytes,
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
        ("NTP rate kiss-o'-deaths", kernel.answered_kiss_of_death + slow_path.kiss_of_death),
        ("Client log capacity", u64::from(*client_log_capacity)),
        ("Client log memory (bytes)", *client_log_bytes),
        ("XDP received", kernel.received),
        ("XDP passed, malformed", kernel.passed_malformed),
        ("XDP passed, fragment", kernel.passed_fragment),
        ("XDP passed, length", kernel.passed_length),
        ("XDP passed, not a request", kernel.passed_not_request),
        ("XDP passed, address", kernel.passed_address),
        ("XDP passed, bad checksum", kernel.passed_checksum),
        ("XDP passed, stale state", kernel.passed_stale),
        ("XDP dropped, denied", kernel.dropped_denied),
        ("XDP dropped, rate limit", kernel.dropped_rate_limit),
        ("Slow path received", slow_path.received),
        ("Slow path denied", slow_path.denied),
        ("Slow path rate limited", slow_path.rate_limited),
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

/// chronyc's `clients` table. Names are shown as addresses (as `chronyc -n`); the command
/// columns are empty, there being no command packets over the network.
pub fn clients_text(clients: &[ClientReport]) -> String {
    let mut text = String::from(
        "Hostname                      NTP   Drop Int IntL Last     Cmd   Drop Int  Last\n\
         ===============================================================================\n",
    );
    for client in clients {
        text.push_str(&format!(
            "{:<25}  {:>6}  {:>5} {:>3} {:>3}  {:>4}  {:>6}  {:>5} {:>3}  {:>4}\n",
            client.address.to_string(),
            client.ntp_requests,
            client.ntp_drops,
            interval(client.ntp_interval),
            interval(client.ntp_interval_limited),
            ago(client.last_ntp_ago),
            0,
            0,
            "-",
            "-"
        ));
    }
    text
}

/// chronyc -c clients: address, NTP requests, drops, interval, limited interval, last; then
/// the command columns (127: unknown interval, 4294967295: never).
pub fn clients_csv(clients: &[ClientReport]) -> String {
    clients
        .iter()
        .map(|c| {
            format!(
                "{},{},{},{},{},{},0,0,127,4294967295\n",
                c.address,
                c.ntp_requests,
                c.ntp_drops,
                c.ntp_interval,
                c.ntp_interval_limited,
                c.last_ntp_ago
            )
        })
        .collect()
}

fn interval(log2: i8) -> String {
    if log2 == 127 { "-".into() } else { log2.to_string() }
}

/// Seconds as chronyc prints them: up to 1199 as is, then minutes, hours, days, years.
fn ago(seconds: u32) -> String {
    match seconds {
        u32::MAX => "-".into(),
        0..1200 => seconds.to_string(),
        1200..36_000 => format!("{}m", seconds / 60),
        36_000..345_600 => format!("{}h", seconds / 3600),
        _ if seconds / 86_400 > 999 => format!("{}y", seconds / 86_400 / 365),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::KernelCounters;

    #[test]
    fn clients_follow_chronycs_layout() {
        let clients = [
            ClientReport {
                address: "127.0.0.1".parse().unwrap(),
                ntp_requests: 24,
                ntp_drops: 16,
                ntp_kiss_of_death: 0,
                ntp_interval: -1,
                ntp_interval_limited: -2,
                last_ntp_ago: 0,
            },
            ClientReport {
                address: "192.168.111.150".parse().unwrap(),
                ntp_requests: 5,
                ntp_drops: 0,
                ntp_kiss_of_death: 0,
                ntp_interval: 4,
                ntp_interval_limited: 127,
                last_ntp_ago: 4000,
            },
        ];
        let text = clients_text(&clients);
        let lines: Vec<&str> = text.lines().collect();
        // chronyc 4.3's lines, with the address for the name.
        assert_eq!(
            lines[2],
            "127.0.0.1                      24     16  -1  -2     0       0      0   -     -"
        );
        assert_eq!(
            lines[3],
            "192.168.111.150                 5      0   4   -   66m       0      0   -     -"
        );
        assert_eq!(clients_csv(&clients[..1]), "127.0.0.1,24,16,-1,-2,0,0,0,127,4294967295\n");
    }

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
