//! Debian's chronyc 4.3, unmodified, against ntpxd: its reports must say what ntpxc says,
//! field by field, and what ntpxd does not implement or cannot read gets chronyc's own
//! statuses.

use std::{net::SocketAddr, os::unix::net::UnixDatagram, time::Duration};

use ntpx_tests::{
    client,
    netns::{Link, UPSTREAM_V4, Upstreams},
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
            "server {} iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\nxdp veth-srv native\n",
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
    eprintln!("chronyc tracking:\n{tracking}");
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
    eprintln!("chronyc sources, serverstats, clients:\n{sources}\n{serverstats}\n{clients}");
    let got = columns(rows(&clients), 5);
    assert_eq!(got, columns(rows(&ntpxd.ntpxc(&["clients"]).unwrap()), 5), "{clients}");
    assert_eq!(got.len(), 1, "{clients}");
    assert_eq!(got[0][..3], [link.client.v4.to_string(), "3".into(), "0".into()], "{clients}");

    // What ntpxd does not implement: chronyc's "not enabled".
    let (cyclelogs, ok) = ntpxd.chronyc(&["cyclelogs"]);
    assert!(!ok && cyclelogs.contains("505 Facility not enabled in daemon"), "{cyclelogs}");
}

#[test]
#[ignore = "needs root"]
fn malformed_chronyc_requests_get_chronyds_outcomes_and_never_a_longer_reply() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, "local stratum 3\nallow\n");
    let dir = tempfile::tempdir().unwrap();
    let client = UnixDatagram::bind(dir.path().join("client.sock")).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let server = ntpxd.socket.with_file_name("chronyd.sock");
    let exchange = |request: &[u8]| -> Option<Vec<u8>> {
        client.send_to(request, &server).unwrap();
        let mut reply = [0u8; 1024];
        client.recv(&mut reply).ok().map(|n| reply[..n].to_vec())
    };
    // A tracking request (command 33), padded to its reply's 104 bytes.
    let mut tracking = vec![0u8; 104];
    tracking[..2].copy_from_slice(&[6, 1]);
    tracking[4..6].copy_from_slice(&33u16.to_be_bytes());
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
}
