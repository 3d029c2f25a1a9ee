//! `/metrics` scraped during a load run: valid for Debian's promtool, counters monotonic across
//! scrapes and equal to what `ntpxc serverstats` reads, and every other HTTP request refused.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use ntpx_tests::{
    client::BackgroundLoad,
    netns::{Link, Netns, UPSTREAM_V4, Upstreams},
    peers::{self, Ntpxd},
    require_root,
    upstream::OffsetServer,
};

const METRICS: &str = "127.0.0.1:9975";

/// One HTTP exchange with ntpxd's metrics address, from inside `netns`: the status line and
/// the body.
fn http(netns: &Netns, request: &[u8]) -> (String, String) {
    netns.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connecting to /metrics");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(request).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reading the response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
    })
}

/// `/metrics` in OpenMetrics, as Prometheus asks for it.
fn scrape(netns: &Netns) -> String {
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: \
                   application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
    let (status, body) = http(netns, request.as_bytes());
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// `/metrics` as a scraper that asks for no format gets it: Prometheus' text format.
fn scrape_prometheus_text(netns: &Netns) -> String {
    let (status, body) = http(netns, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// Samples by name with labels (`name{labels}`), values parsed.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(key, value)| (key.to_owned(), value.parse().expect("a number")))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn metrics_pass_promtool_grow_monotonically_and_agree_with_serverstats() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let upstream = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
    let _upstream = OffsetServer::start(&upstreams.ns, upstream, 0);
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "server {} iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\nxdp veth-srv native\n\
             ratelimit interval -4 burst 8\nmetricsaddress {METRICS}\n",
            UPSTREAM_V4[0]
        ),
    );
    let selected = peers::wait_for(Duration::from_secs(30), || {
        ntpxd.ntpxc(&["sources"]).unwrap_or_default().contains(&format!("^* {}", UPSTREAM_V4[0]))
    });
    assert!(selected, "ntpxd did not select its upstream");

    let before = samples(&scrape(&link.server_ns));
    let load = BackgroundLoad::start(
        &link.client_ns.path(),
        link.client.v4,
        SocketAddr::new(link.server.v4, 123),
        2000,
    );
    let answered = r#"ntpx_kernel_packets_total{outcome="answered",reason="time"}"#;
    let limited = "ntp_server_rate_limited_packets_total";
    let mut during = String::new();
    let grew = peers::wait_for(Duration::from_secs(20), || {
        during = scrape(&link.server_ns);
        let now = samples(&during);
        now[answered] > before[answered] + 100.0 && now[limited] > before[limited]
    });
    assert!(grew, "the load did not show:\n{during}");
    let replies = load.stop();
    assert!(replies > 0);

    // promtool: the format, and Prometheus' naming rules. It reads Prometheus' text format
    // (its parser takes OpenMetrics' counter descriptors for samples without help), and the
    // same samples come in both.
    let text = scrape_prometheus_text(&link.server_ns);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask setup installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    eprintln!("/metrics during the load:\n{during}");
    let names = |text: &str| samples(text).into_keys().collect::<Vec<_>>();
    let (mut openmetrics, mut prometheus) = (names(&during), names(&text));
    openmetrics.sort();
    prometheus.sort();
    assert_eq!(openmetrics, prometheus);

    // Counters never go back, between any two scrapes.
    let during = samples(&during);
    let after = samples(&scrape(&link.server_ns));
    let counters: Vec<&String> = before.keys().filter(|k| k.contains("_total")).collect();
    assert!(counters.len() >= 20, "{counters:?}");
    for key in counters {
        assert!(before[key] <= during[key] && during[key] <= after[key], "{key} went back");
    }

    // The same figures as serverstats: read between two scrapes, each lies between them.
    let first = samples(&scrape(&link.server_ns));
    let stats = ntpxd.serverstats();
    let last = samples(&scrape(&link.server_ns));
    for (key, value) in [
        ("ntp_server_received_packets_total", stats.ntp_packets_received),
        (limited, stats.ntp_packets_dropped),
        (answered, stats.kernel.answered),
        ("ntpx_kernel_received_packets_total", stats.kernel.received),
        ("ntpx_client_log_records_created_total", stats.kernel.client_records_created),
    ] {
        let value = value as f64;
        assert!(first[key] <= value && value <= last[key], "{key}: {value} vs {first:?}");
    }
    assert!(last[answered] > 0.0 && last[limited] > 0.0);
    assert_eq!(last["ntpx_client_log_capacity"], f64::from(stats.client_log_capacity));
    assert_eq!(last["ntp_system_stratum"], 2.0);
    assert_eq!(last[r#"ntpx_xdp_attached{interface="veth-srv",mode="native"}"#], 1.0);
    let source = format!(r#"{{name="{0}",address="{0}"}}"#, UPSTREAM_V4[0]);
    assert_eq!(last[&format!("ntpx_source_selected{source}")], 1.0);
    assert!(last[&format!("ntp_source_offset_seconds{source}")].abs() < 1e-3);
    let age = last["ntpx_kernel_state_age_seconds"];
    assert!((0.0..3.0).contains(&age), "state age {age}");

    // Anything else is refused.
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"nonsense\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ] {
        assert_eq!(http(&link.server_ns, request).0, status);
    }
    let mut endless = b"GET /metrics HTTP/1.1\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 8192));
    assert_eq!(http(&link.server_ns, &endless).0, "HTTP/1.1 431 Request Header Fields Too Large");
    // Still serving.
    scrape(&link.server_ns);
}
