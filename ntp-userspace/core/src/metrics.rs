//! What `/metrics` serves: ntpxd's figures in the OpenMetrics text format (or Prometheus' older
//! text format, for a scraper that does not ask for OpenMetrics), encoded by the Prometheus
//! project's client library (names, units, escaping, `# EOF`). Names are ntpd-rs's where the
//! meaning is the same (`ntp_system_*`, `ntp_source_*`, `ntp_server_*`), `ntpx_*` for the
//! kernel path, the slow path and the client log. Sans-IO: a [`Snapshot`] in, text out.

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric as _,
        prometheus_text, text,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    announce::AnnouncementReport,
    control::ServerStats,
    sync::{SourceReport, Tracking, source::SourceState},
};

/// Everything one scrape reports, read at once.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: ServerStats,
    pub tracking: Tracking,
    pub sources: Vec<SourceReport>,
    /// The service addresses of `announce`.
    pub announcements: Vec<AnnouncementReport>,
    /// Seconds since the state the kernel serves was computed (None: no program loaded).
    pub state_age: Option<f64>,
}

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus' text format 0.0.4 (what a scraper that asks for nothing gets, as from the
    /// Prometheus project's Go client; what `promtool check metrics` reads).
    PrometheusText,
}

impl Format {
    /// The format an HTTP Accept header asks for.
    pub fn accepted(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Snapshot {
    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        match format {
            Format::OpenMetrics => text::encode(&mut out, &registry),
            Format::PrometheusText => prometheus_text::encode(&mut out, &registry),
        }
        .expect("writing to a String");
        out
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family being written.
struct Family<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

impl Family<'_, '_> {
    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        values: impl IntoIterator<Item = (Labels, impl EncodeGaugeValue)>,
    ) -> std::fmt::Result {
        let mut metric =
            self.encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for (labels, value) in values {
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (Labels, impl EncodeCounterValue)>,
    ) -> std::fmt::Result {
        let mut metric = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in values {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A value without labels.
fn one<T>(value: T) -> [(Labels, T); 1] {
    [(Vec::new(), value)]
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut family = Family { encoder: &mut encoder };
        let f = &mut family;
        let Self { stats, tracking: t, sources, announcements, state_age } = self;
        let seconds = || Some(Unit::Seconds);

        f.gauge(
            "ntp_system_stratum",
            "Stratum of the time served",
            None,
            one(i64::from(t.stratum)),
        )?;
        f.gauge(
            "ntp_system_leap_indicator",
            "Leap indicator served (3: unsynchronised)",
            None,
            one(t.leap as i64),
        )?;
        f.gauge("ntp_system_root_delay", "Root delay served", seconds(), one(t.root_delay))?;
        f.gauge(
            "ntp_system_root_dispersion",
            "Root dispersion served",
            seconds(),
            one(t.root_dispersion),
        )?;
        f.gauge(
            "ntpx_system_synchronised",
            "Whether the time served is synchronised to a source or a local reference",
            None,
            one(i64::from(t.synchronised)),
        )?;
        f.gauge(
            "ntpx_system_offset",
            "System clock minus the time served (chronyc tracking's System time; positive: fast)",
            seconds(),
            one(t.system_time_offset),
        )?;
        f.gauge(
            "ntpx_system_last_offset",
            "Offset of the last clock update",
            seconds(),
            one(t.last_offset),
        )?;
        f.gauge(
            "ntpx_system_frequency",
            "Frequency error of the system clock, ppm (positive: fast)",
            Some(Unit::Other("ppm".into())),
            one(t.frequency_ppm),
        )?;

        // A reference clock has no address: its reference ID stands in, as in chronyc -c.
        let source = |s: &SourceReport| {
            let address = if s.reference_clock { s.name.clone() } else { s.address.to_string() };
            vec![("name", s.name.clone()), ("address", address)]
        };
        let per_source =
            |value: fn(&SourceReport) -> f64| sources.iter().map(move |s| (source(s), value(s)));
        f.gauge(
            "ntp_source_offset",
            "Offset between the upstream source and system time (positive: the source is ahead)",
            seconds(),
            per_source(|s| s.measured_offset),
        )?;
        f.gauge(
            "ntp_source_uncertainty",
            "Error bound of the source's last sample (its root distance)",
            seconds(),
            per_source(|s| s.error),
        )?;
        f.gauge(
            "ntp_source_poll_interval",
            "Time between polls of the source",
            seconds(),
            per_source(|s| 2f64.powi(s.poll.into())),
        )?;
        f.gauge(
            "ntpx_source_reach",
            "The source's reach register (the last eight polls, one bit each)",
            None,
            per_source(|s| f64::from(s.reach)),
        )?;
        f.gauge(
            "ntpx_source_selected",
            "Whether the source is the one synchronised to",
            None,
            per_source(|s| f64::from(u8::from(s.state == SourceState::Selected))),
        )?;

        let kernel = &stats.kernel;
        let slow = &stats.slow_path;
        f.counter(
            "ntp_server_received_packets",
            "Requests from admitted clients, answered or rate limited (chronyc serverstats' NTP packets received)",
            one(stats.ntp_packets_received),
        )?;
        f.counter(
            "ntp_server_rate_limited_packets",
            "Requests dropped by rate limiting",
            one(stats.ntp_packets_dropped),
        )?;
        f.counter(
            "ntp_server_denied_packets",
            "Requests from clients the access rules deny",
            one(kernel.dropped_denied + slow.denied),
        )?;
        f.counter(
            "ntpx_kernel_received_packets",
            "UDP datagrams to the NTP port seen by the XDP program",
            one(kernel.received),
        )?;
        let outcome = |outcome: &str, reason: &str, count: u64| {
            (vec![("outcome", outcome.to_owned()), ("reason", reason.to_owned())], count)
        };
        f.counter(
            "ntpx_kernel_packets",
            "What the XDP program did with datagrams to the NTP port, by outcome and reason",
            [
                outcome("answered", "time", kernel.answered),
                outcome("answered", "kiss_of_death", kernel.answered_kiss_of_death),
                outcome("passed", "malformed", kernel.passed_malformed),
                outcome("passed", "fragment", kernel.passed_fragment),
                outcome("passed", "length", kernel.passed_length),
                outcome("passed", "not_request", kernel.passed_not_request),
                outcome("passed", "address", kernel.passed_address),
                outcome("passed", "checksum", kernel.passed_checksum),
                outcome("passed", "stale_state", kernel.passed_stale),
                outcome("dropped", "denied", kernel.dropped_denied),
                outcome("dropped", "rate_limit", kernel.dropped_rate_limit),
            ],
        )?;
        let unanswered = &slow.unanswered;
        f.counter(
            "ntpx_slow_path_packets",
            "Datagrams the slow path (ntpxd's socket) received, those from admitted clients, and what became of them",
            [
                outcome("received", "any", slow.datagrams),
                outcome("received", "admitted", slow.received),
                outcome("answered", "time", slow.answered),
                outcome("answered", "kiss_of_death", slow.kiss_of_death),
                outcome("answered", "nts_nak", slow.nts_naks),
                outcome("dropped", "rate_limit", slow.rate_limited),
                outcome("dropped", "denied", slow.denied),
                outcome("dropped", "unreadable", unanswered.unreadable),
                outcome("dropped", "address", unanswered.address),
                outcome("dropped", "malformed", unanswered.malformed),
                outcome("dropped", "version", unanswered.version),
                outcome("dropped", "not_request", unanswered.not_request),
                outcome("dropped", "mac", unanswered.mac),
                outcome("dropped", "not_nts", unanswered.not_nts),
                outcome("dropped", "stale_state", unanswered.stale),
            ],
        )?;
        f.counter(
            "ntpx_nts_packets",
            "NTS requests answered authenticated, and NAKed (a cookie or authenticator the server cannot verify)",
            [
                (vec![("outcome", "authenticated".to_owned())], slow.authenticated),
                (vec![("outcome", "nak".to_owned())], slow.nts_naks),
            ],
        )?;
        f.counter(
            "ntpx_nts_ke_sessions",
            "NTS-KE sessions that handed out cookies (accepted), and the rest (dropped)",
            [
                (vec![("outcome", "accepted".to_owned())], slow.nts_ke_accepted),
                (vec![("outcome", "dropped".to_owned())], slow.nts_ke_dropped),
            ],
        )?;
        f.counter(
            "ntpx_accept_backoffs",
            "Times an accept loop (NTS-KE, metrics, ntpxc's socket) rested for want of descriptors or memory",
            one(stats.accept_backoffs),
        )?;
        f.counter(
            "ntpx_command_packets",
            "Requests on ntpxc's and chronyc's sockets",
            one(stats.command_packets_received),
        )?;

        f.gauge(
            "ntpx_client_log_capacity",
            "Clients the client log holds at most (0: no client log)",
            None,
            one(i64::from(stats.client_log_capacity)),
        )?;
        f.gauge(
            "ntpx_client_log_memory",
            "The client log's memory in the kernel",
            Some(Unit::Bytes),
            one(stats.client_log_bytes),
        )?;
        f.gauge(
            "ntpx_client_log_records",
            "Clients in the client log, from counters (records created, up to the capacity)",
            None,
            one(kernel.client_records_created.min(u64::from(stats.client_log_capacity))),
        )?;
        f.counter(
            "ntpx_client_log_records_created",
            "Client log records created",
            one(kernel.client_records_created),
        )?;
        f.counter(
            "ntpx_client_log_evictions",
            "Client log records evicted for new clients (records created beyond the capacity)",
            one(stats.client_log_records_dropped),
        )?;

        if let Some(age) = state_age {
            f.gauge(
                "ntpx_kernel_state_age",
                "Time since the state the XDP program serves was computed (republished every second)",
                seconds(),
                one(*age),
            )?;
        }
        f.gauge(
            "ntpx_leap_smear_offset",
            "Smeared minus true time served on the address (leapsmear)",
            seconds(),
            t.leap_smears.iter().map(|s| (vec![("address", s.address.to_string())], s.offset)),
        )?;
        if let Some(offset) = t.smoothing_offset {
            f.gauge(
                "ntpx_smoothing_offset",
                "Served minus true time (smoothtime)",
                seconds(),
                one(offset),
            )?;
        }
        f.gauge(
            "ntpx_announced",
            "Whether the service address is announced to the routing daemon (announce)",
            None,
            announcements
                .iter()
                .map(|a| (vec![("address", a.address.to_string())], i64::from(a.announced))),
        )?;
        f.gauge(
            "ntpx_xdp_attached",
            "Interfaces the XDP program is attached to, and how",
            None,
            stats.xdp.iter().map(|x| {
                (vec![("interface", x.interface.clone()), ("mode", x.mode.name().to_owned())], 1)
            }),
        )?;
        f.gauge(
            "ntpx_build_info",
            "ntpxd's version",
            None,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::control::{AttachMode, KernelCounters, XdpAttachment};

    #[test]
    fn counters_get_total_units_get_their_suffix_and_labels_are_escaped() {
        let source = SourceReport {
            name: "a \"quoted\" name".into(),
            address: IpAddr::from([192, 0, 2, 1]),
            reference_clock: false,
            state: SourceState::Selected,
            stratum: 1,
            poll: 6,
            reach: 255,
            last_rx: Some(3.0),
            adjusted_offset: 0.0,
            measured_offset: -2.5e-6,
            error: 1e-3,
            samples: 8,
            runs: 4,
            span: 300.0,
            frequency_ppm: 0.0,
            skew_ppm: 0.0,
            offset: 0.0,
            std_dev: 0.0,
        };
        let snapshot = Snapshot {
            stats: ServerStats {
                kernel: KernelCounters { answered: 7, passed_length: 2, ..Default::default() },
                xdp: vec![XdpAttachment { interface: "eth1".into(), mode: AttachMode::Native }],
                ..ServerStats::default()
            },
            tracking: Tracking {
                stratum: 2,
                leap: crate::sync::LeapStatus::Normal,
                leap_smears: vec![crate::smear::SmearReport {
                    address: IpAddr::from([10, 1, 0, 123]),
                    offset: -0.25,
                }],
                ..Tracking::default()
            },
            announcements: vec![AnnouncementReport {
                address: IpAddr::from([192, 0, 2, 123]),
                announced: true,
                why_not: None,
            }],
            sources: vec![
                source.clone(),
                SourceReport {
                    name: "GPS".into(),
                    address: IpAddr::from(*b"GPS\0"),
                    reference_clock: true,
                    ..source
                },
            ],
            state_age: Some(0.25),
        };
        let prometheus = snapshot.clone().encode(Format::PrometheusText);
        assert!(prometheus.contains("# TYPE ntpx_kernel_packets_total counter\n"), "{prometheus}");
        assert!(!prometheus.contains("# EOF"), "{prometheus}");
        let text = snapshot.encode(Format::OpenMetrics);
        assert!(text.contains("# TYPE ntpx_kernel_packets counter\n"), "{text}");
        for line in [
            "# TYPE ntp_system_stratum gauge",
            "ntp_system_stratum 2",
            "# UNIT ntp_source_offset_seconds seconds",
            r#"ntp_source_offset_seconds{name="a \"quoted\" name",address="192.0.2.1"} -0.0000025"#,
            r#"ntp_source_poll_interval_seconds{name="a \"quoted\" name",address="192.0.2.1"} 64.0"#,
            r#"ntpx_source_reach{name="GPS",address="GPS"} 255.0"#,
            r#"ntpx_announced{address="192.0.2.123"} 1"#,
            r#"ntpx_kernel_packets_total{outcome="answered",reason="time"} 7"#,
            r#"ntpx_kernel_packets_total{outcome="passed",reason="length"} 2"#,
            r#"ntpx_xdp_attached{interface="eth1",mode="native"} 1"#,
            "ntpx_kernel_state_age_seconds 0.25",
            r#"ntpx_leap_smear_offset_seconds{address="10.1.0.123"} -0.25"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("ntpx_smoothing_offset"), "no smoothtime, no smoothing metric");
    }
}
