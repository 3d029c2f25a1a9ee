//! Debian's chronyc 4.3, unmodified, against ntpxd: its reports must say what ntpxc says,
//! field by field, and what ntpxd does not implement or cannot read gets chronyc's own
//! statuses.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
    time::Duration,
};

use ntpx_tests::{
    client,
    netns::{CLIENT_V4, Link, SERVER_V4, SERVER_V6, UPSTREAM_SIDE_V4, UPSTREAM_V4, Upstreams},
    peers::{self, Ntpxd},
    require_root,
    upstream::OffsetServer,
};

/// `label : value` lines of a chronyc-style report.
fn fields(report: &str) -> Vec<(String, String)> {
    report
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(label, value)| (label.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// The number a value starts with.
fn number(value: &str) -> f64 {
    value.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(f64::NAN)
}

/// chronyc carries values as 25-bit floats, and the state moves between two reports.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 + 1e-4 * a.abs().max(b.abs())
}

/// The rows of a table report (under its `===` line), split into columns.
fn rows(report: &str) -> Vec<Vec<String>> {
    report
        .lines()
        .skip_while(|line| !line.starts_with("==="))
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn chronyc_reads_what_ntpxc_reads() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let upstream = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
    let _upstream = OffsetServer::start(&upstreams.ns, upstream, 0);
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "server {} iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\nxdp veth-srv native\n\
             bindcmdaddress 0.0.0.0\ncmdallow {CLIENT_V4}\n",
            UPSTREAM_V4[0]
        ),
    );
    let selected = peers::wait_for(Duration::from_secs(30), || {
        ntpxd.ntpxc(&["sources"]).unwrap_or_default().contains(&format!("^* {}", UPSTREAM_V4[0]))
    });
    assert!(selected, "ntpxd did not select its upstream");
    link.client_ns.enter(|| {
        for _ in 0..3 {
            let server = SocketAddr::new(link.server.v4, 123);
            let source = SocketAddr::new(link.client.v4, 0);
            assert!(client::query(source, server, Duration::from_secs(2)).is_some());
        }
    });

    // tracking: the same lines, numbers equal within a float's precision.
    let (tracking, ok) = ntpxd.chronyc(&["tracking"]);
    assert!(ok, "{tracking}");
    let expected = fields(&ntpxd.ntpxc(&["tracking"]).unwrap());
    let got = fields(&tracking);
    assert_eq!(got.len(), 13, "{tracking}");
    for ((label, value), (expected_label, expected_value)) in got.iter().zip(&expected) {
        assert_eq!(label, expected_label);
        match label.as_str() {
            "Reference ID" | "Stratum" | "Ref time (UTC)" | "Leap status" => {
                assert_eq!(value, expected_value, "{label}")
            }
            _ => {
                assert!(
                    close(number(value), number(expected_value)),
                    "{label}: {value} vs {expected_value}"
                );
                // fast or slow, and the unit.
                let words = |v: &str| v.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
                if number(value) != 0.0 {
                    assert_eq!(words(value), words(expected_value), "{label}");
                }
            }
        }
    }
    // CSV: chronyc -c as ntpxc -c.
    let (csv, ok) = ntpxd.chronyc(&["-c", "tracking"]);
    assert!(ok, "{csv}");
    let got: Vec<String> = csv.trim().split(',').map(str::to_owned).collect();
    let expected_csv = ntpxd.ntpxc(&["-c", "tracking"]).unwrap();
    let expected: Vec<&str> = expected_csv.trim().split(',').collect();
    assert_eq!(got.len(), expected.len(), "{csv} vs {expected_csv}");
    for (index, (value, expected)) in got.iter().zip(&expected).enumerate() {
        match value.parse::<f64>() {
            Ok(number) if index > 2 && index < 13 => {
                assert!(
                    close(number, expected.parse().unwrap()),
                    "field {index}: {csv} vs {expected_csv}"
                )
            }
            _ => assert_eq!(value, expected, "field {index}: {csv} vs {expected_csv}"),
        }
    }

    // sources and sourcestats: mode, state, name, stratum, poll, reach; samples, runs.
    let (sources, ok) = ntpxd.chronyc(&["sources"]);
    assert!(ok, "{sources}");
    let ntpxc_sources = ntpxd.ntpxc(&["sources"]).unwrap();
    let columns = |rows: Vec<Vec<String>>, n: usize| -> Vec<Vec<String>> {
        rows.into_iter().map(|row| row.into_iter().take(n).collect()).collect()
    };
    assert_eq!(columns(rows(&sources), 5), columns(rows(&ntpxc_sources), 5), "{sources}");
    assert_eq!(rows(&sources).len(), 1, "{sources}");
    let (sourcestats, ok) = ntpxd.chronyc(&["sourcestats"]);
    assert!(ok, "{sourcestats}");
    let ntpxc_sourcestats = ntpxd.ntpxc(&["sourcestats"]).unwrap();
    assert_eq!(columns(rows(&sourcestats), 1), columns(rows(&ntpxc_sourcestats), 1));
    let (activity, ok) = ntpxd.chronyc(&["activity"]);
    assert!(ok && activity.contains("1 sources online"), "{activity}");

    // serverstats: chrony 4.3's eleven lines, as ntpxc prints them (the command count aside:
    // each report is a command).
    let (serverstats, ok) = ntpxd.chronyc(&["serverstats"]);
    assert!(ok, "{serverstats}");
    let got = fields(&serverstats);
    let expected = fields(&ntpxd.ntpxc(&["serverstats"]).unwrap());
    assert_eq!(got.len(), 11, "{serverstats}");
    for ((label, value), (expected_label, expected_value)) in got.iter().zip(&expected) {
        assert_eq!(label, expected_label);
        if label != "Command packets received" {
            assert_eq!(value, expected_value, "{label}");
        }
    }
    assert_eq!(got[0].1, "3", "{serverstats}");

    // clients: the kernel's client log.
    let (clients, ok) = ntpxd.chronyc(&["clients"]);
    assert!(ok, "{clients}");
    let got = columns(rows(&clients), 5);
    assert_eq!(got, columns(rows(&ntpxd.ntpxc(&["clients"]).unwrap()), 5), "{clients}");
    assert_eq!(got.len(), 1, "{clients}");
    assert_eq!(got[0][..3], [link.client.v4.to_string(), "3".into(), "0".into()], "{clients}");
    // -p: at least N requests; -c: CSV; -r: the counts zeroed after the listing.
    let (busy, ok) = ntpxd.chronyc(&["clients", "-p", "4"]);
    assert!(ok && rows(&busy).is_empty(), "{busy}");
    let (csv, ok) = ntpxd.chronyc(&["-c", "clients"]);
    let values: Vec<&str> = csv.trim().split(',').collect();
    assert!(ok && values[..3] == [CLIENT_V4, "3", "0"], "{csv}");
    let (reset, ok) = ntpxd.chronyc(&["clients", "-r"]);
    assert!(ok && rows(&reset)[0][1] == "3", "{reset}");
    let (after_reset, ok) = ntpxd.chronyc(&["clients"]);
    assert!(ok && rows(&after_reset)[0][1] == "0", "{after_reset}");

    // sources -v, sourcestats -v and CSV: the same rows as without.
    let (verbose, ok) = ntpxd.chronyc(&["sources", "-v"]);
    assert!(ok && verbose.contains("Source mode"), "{verbose}");
    assert_eq!(columns(rows(&verbose), 5), columns(rows(&sources), 5), "{verbose}");
    let (verbose, ok) = ntpxd.chronyc(&["sourcestats", "-v"]);
    assert!(ok && verbose.contains("Number of sample points"), "{verbose}");
    assert_eq!(columns(rows(&verbose), 1), columns(rows(&sourcestats), 1), "{verbose}");
    let (csv, ok) = ntpxd.chronyc(&["-c", "sources"]);
    let expected = ntpxd.ntpxc(&["-c", "sources"]).unwrap();
    let first = |csv: &str, n: usize| csv.split(',').take(n).collect::<Vec<_>>().join(",");
    assert!(ok && first(&csv, 6) == first(&expected, 6), "{csv} vs {expected}");

    // ntpdata: the upstream's last reply, as chronyd reports its sources'.
    let (ntpdata, ok) = ntpxd.chronyc(&["ntpdata"]);
    assert!(ok, "{ntpdata}");
    let data: HashMap<String, String> = fields(&ntpdata).into_iter().collect();
    let starts = |label: &str, prefix: &str| {
        assert!(data[label].starts_with(prefix), "{label}: {ntpdata}");
    };
    starts("Remote address", UPSTREAM_V4[0]);
    starts("Local address", UPSTREAM_SIDE_V4);
    for (label, value) in [
        ("Remote port", "123"),
        ("Leap status", "Normal"),
        ("Version", "4"),
        ("Mode", "Server"),
        ("Stratum", "1"),
        ("Reference ID", "54455354 (TEST)"),
        ("NTP tests", "111 111 1111"),
    ] {
        assert_eq!(data[label], value, "{label}: {ntpdata}");
    }
    starts("Precision", "-24");
    assert!(number(&data["Offset"]).abs() < 1e-3, "{ntpdata}");
    assert!((0.0..1e-3).contains(&number(&data["Response time"])), "{ntpdata}");
    let counts =
        ["Total TX", "Total RX", "Total valid RX", "Total good RX"].map(|l| number(&data[l]));
    assert!(counts[3] >= 1.0 && counts.windows(2).all(|w| w[0] >= w[1]), "{ntpdata}");
    let (by_address, ok) = ntpxd.chronyc(&["ntpdata", UPSTREAM_V4[0]]);
    assert!(ok && by_address.contains("Mode            : Server"), "{by_address}");
    let (unknown, ok) = ntpxd.chronyc(&["ntpdata", "192.0.2.99"]);
    assert!(!ok && unknown.contains("503 No such source"), "{unknown}");

    // waitsync: synchronised already.
    let (waitsync, ok) = ntpxd.chronyc(&["waitsync", "3"]);
    assert!(ok, "{waitsync}");

    // accheck, deny and allow: the same rules ntpxc and the kernel path see.
    let query = || {
        let server = SocketAddr::new(link.server.v4, 123);
        let source = SocketAddr::new(link.client.v4, 0);
        link.client_ns.enter(|| client::query(source, server, Duration::from_secs(1)).is_some())
    };
    let (accheck, ok) = ntpxd.chronyc(&["accheck", CLIENT_V4]);
    assert!(ok && accheck.contains("208 Access allowed"), "{accheck}");
    // (chronyc's exit status is 0 for either answer.)
    let (accheck, _) = ntpxd.chronyc(&["accheck", "192.0.2.1"]);
    assert!(accheck.contains("209 Access denied"), "{accheck}");
    let (deny, ok) = ntpxd.chronyc(&["deny", CLIENT_V4]);
    assert!(ok && deny.contains("200 OK"), "{deny}");
    assert_eq!(ntpxd.ntpxc(&["accheck", CLIENT_V4]).unwrap(), "209 Access denied\n");
    assert!(!query(), "a denied client was answered");
    // The more specific rule wins, as in chrony: a wider allow leaves the deny in force.
    let (allow, ok) = ntpxd.chronyc(&["allow", "10.77.0.0/24"]);
    assert!(ok && allow.contains("200 OK"), "{allow}");
    assert!(!query(), "a wider allow overrode a narrower deny");
    ntpxd.chronyc(&["allow", CLIENT_V4]);
    assert!(query(), "an allowed client was not answered");
    let (bad, ok) = ntpxd.chronyc(&["allow", "10.77.0.0/40"]);
    assert!(!ok && bad.contains("507 Bad subnet"), "{bad}");

    // reload sources: the configuration reread (as SIGHUP), which takes back the deny above.
    ntpxd.chronyc(&["deny", "all"]);
    assert!(!query(), "a client was answered under deny all");
    let (reload, ok) = ntpxd.chronyc(&["reload", "sources"]);
    assert!(ok && reload.contains("200 OK"), "{reload}");
    assert!(query(), "the configuration's allow did not come back");

    // What ntpxd does not implement: chronyc's "not enabled".
    for command in ["cyclelogs", "rekey"] {
        let (output, ok) = ntpxd.chronyc(&[command]);
        assert!(!ok && output.contains("505 Facility not enabled in daemon"), "{output}");
    }

    // Over UDP, from the cmdallow'ed client: monitoring is answered, the rest not authorised.
    let (tracking, ok) = peers::chronyc_over_udp(&link.client_ns, SERVER_V4, &["tracking"]);
    assert!(ok && tracking.contains("Stratum         : 2"), "{tracking}");
    let (sources, ok) = peers::chronyc_over_udp(&link.client_ns, SERVER_V4, &["sources"]);
    assert!(ok && sources.contains(&format!("^* {}", UPSTREAM_V4[0])), "{sources}");
    for command in [&["clients"][..], &["serverstats"], &["deny", "all"], &["ntpdata"]] {
        let (output, ok) = peers::chronyc_over_udp(&link.client_ns, SERVER_V4, command);
        assert!(!ok && output.contains("501 Not authorised"), "{command:?}: {output}");
    }
    assert!(query(), "a refused deny over UDP changed the rules");
}

#[test]
#[ignore = "needs root"]
fn malformed_chronyc_requests_get_chronyds_outcomes_and_never_a_longer_reply() {
    require_root();
    let link = Link::new();
    // Both wildcards: the IPv6 socket must not take IPv4's port too.
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        "local stratum 3\nallow\nbindcmdaddress 0.0.0.0\nbindcmdaddress ::\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let client = UnixDatagram::bind(dir.path().join("client.sock")).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let server = ntpxd.socket.with_file_name("chronyd.sock");
    let exchange = |request: &[u8]| -> Option<Vec<u8>> {
        client.send_to(request, &server).unwrap();
        let mut reply = [0u8; 1024];
        client.recv(&mut reply).ok().map(|n| reply[..n].to_vec())
    };
    let tracking = peers::chronyc_tracking_request();
    let status = |reply: &[u8]| u16::from_be_bytes([reply[8], reply[9]]);

    // Ignored: shorter than a reply's header, not a request, an old version.
    assert_eq!(exchange(&tracking[..20]), None);
    let mut not_a_request = tracking.clone();
    not_a_request[1] = 2;
    assert_eq!(exchange(&not_a_request), None);
    let mut old = tracking.clone();
    old[0] = 3;
    assert_eq!(exchange(&old), None);
    // Statuses: version 5, a command beyond chrony's, unpadded.
    old[0] = 5;
    let reply = exchange(&old).expect("a reply to version 5");
    assert_eq!((status(&reply), reply.len() <= old.len()), (18, true));
    let mut unknown = tracking.clone();
    unknown[4..6].copy_from_slice(&999u16.to_be_bytes());
    assert_eq!(status(&exchange(&unknown).expect("a reply")), 3);
    let reply = exchange(&tracking[..60]).expect("a reply to a short request");
    assert_eq!((status(&reply), reply.len()), (19, 28));
    // Still answering properly.
    let reply = exchange(&tracking).expect("a reply");
    assert_eq!((status(&reply), reply.len()), (0, 104));
    let (report, ok) = ntpxd.chronyc(&["tracking"]);
    assert!(ok && report.contains("Stratum         : 3"), "{report}");

    // UDP (on every address here, no cmdallow): loopback is answered, never with more than
    // it sent; another host hears nothing.
    let udp_exchange_with = |server: &str, source: &str, request: &[u8]| -> Option<Vec<u8>> {
        let socket = UdpSocket::bind((source, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        socket.send_to(request, (server, 323)).unwrap();
        let mut reply = [0u8; 1024];
        socket.recv(&mut reply).ok().map(|n| reply[..n].to_vec())
    };
    let udp_exchange = |source: &str, request: &[u8]| udp_exchange_with(SERVER_V4, source, request);
    let over_v6 = link.server_ns.enter(|| udp_exchange_with(SERVER_V6, "::1", &tracking));
    assert_eq!(over_v6.map(|r| (status(&r), r.len())), Some((0, 104)));
    let from_loopback = link.server_ns.enter(|| udp_exchange("127.0.0.1", &tracking));
    assert_eq!(from_loopback.map(|r| (status(&r), r.len())), Some((0, 104)));
    let short = link.server_ns.enter(|| udp_exchange("127.0.0.1", &tracking[..60]));
    assert_eq!(short.map(|r| (status(&r), r.len())), Some((19, 28)));
    assert_eq!(link.client_ns.enter(|| udp_exchange(CLIENT_V4, &tracking)), None);
}
