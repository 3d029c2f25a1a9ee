//! The client log, live access control, reloading, and rate limiting side by side with chronyd,
//! with ntpxd serving across a veth pair between network namespaces.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ntp_common::wire::{HEADER_LEN, NtpHeader, NtpTimestamp};
use ntpx_tests::{
    client,
    netns::{Link, SERVER_V4},
    peers::{self, Chronyd, Ntpxd},
    require_root,
};

const CONFIG: &str = "local stratum 10\nallow 10.77.0.0/24\nxdp veth-srv native\n";
/// The same served by the slow path alone (which keeps its clients' records in the daemon and
/// writes them to the kernel's table in batches).
const SLOW_PATH_CONFIG: &str = "local stratum 10\nallow 10.77.0.0/24\n";

fn server() -> SocketAddr {
    SocketAddr::new(SERVER_V4.parse().unwrap(), 123)
}

/// Adds `addresses` to the client's interface in one `ip -batch`.
fn add_client_addresses(link: &Link, addresses: &[IpAddr]) {
    let dir = peers::scratch_dir();
    let batch = dir.path().join("addresses");
    let lines: String =
        addresses.iter().map(|a| format!("address add {a}/24 dev veth-cli\n")).collect();
    std::fs::write(&batch, lines).unwrap();
    link.client_ns.ip(&["-batch", batch.to_str().unwrap()]);
}

/// Whether `source` (an address of the client namespace) gets an answer.
fn answered(link: &Link, source: &str) -> bool {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    link.client_ns.enter(|| client::query(source, server(), Duration::from_millis(700))).is_some()
}

#[test]
#[ignore = "needs root"]
fn clients_are_listed_with_their_counts() {
    clients_are_listed_with_their_counts_by(CONFIG);
}

#[test]
#[ignore = "needs root"]
fn clients_of_the_slow_path_are_listed_with_their_counts() {
    clients_are_listed_with_their_counts_by(SLOW_PATH_CONFIG);
}

fn clients_are_listed_with_their_counts_by(config: &str) {
    require_root();
    let link = Link::new();
    let addresses: Vec<IpAddr> = (100..200u8).map(|i| IpAddr::from([10, 77, 0, i])).collect();
    add_client_addresses(&link, &addresses);
    let ntpxd = Ntpxd::start(&link.server_ns, config);
    let expected = |i: usize| 1 + i % 3;
    link.client_ns.enter(|| {
        for (i, address) in addresses.iter().enumerate() {
            for _ in 0..expected(i) {
                let reply =
                    client::query(SocketAddr::new(*address, 0), server(), Duration::from_secs(2));
                assert!(reply.is_some(), "{address} got no reply");
            }
        }
    });
    let report = ntpxd.ntpxc(&["clients"]).expect("ntpxc clients");
    let rows: Vec<Vec<&str>> =
        report.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 100, "{report}");
    for (i, address) in addresses.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r[0] == address.to_string())
            .unwrap_or_else(|| panic!("{address} missing:\n{report}"));
        assert_eq!(row[1], expected(i).to_string(), "requests of {address}");
        assert_eq!(row[2], "0", "drops of {address}");
    }
    // The most active first with --top; filters; CSV.
    let busiest = ntpxd.ntpxc(&["clients", "--top", "1"]).unwrap();
    assert_eq!(busiest.lines().nth(2).unwrap().split_whitespace().nth(1), Some("3"), "{busiest}");
    let busy = ntpxd.ntpxc(&["clients", "-p", "3"]).unwrap();
    assert_eq!(
        busy.lines().count() - 2,
        addresses.iter().enumerate().filter(|(i, _)| expected(*i) == 3).count()
    );
    assert_eq!(ntpxd.ntpxc(&["clients", "--top", "5"]).unwrap().lines().count(), 7);
    let csv = ntpxd.ntpxc(&["-c", "clients"]).unwrap();
    assert!(csv.lines().all(|l| l.split(',').count() == 10), "{csv}");
    // -r zeroes the counts after reporting them.
    ntpxd.ntpxc(&["clients", "-r"]).unwrap();
    let after = ntpxd.ntpxc(&["-c", "clients", "-p", "1"]).unwrap();
    assert_eq!(after, "", "counts not reset:\n{after}");
    let stats = ntpxd.serverstats();
    let total: usize = (0..addresses.len()).map(expected).sum();
    assert_eq!(stats.ntp_packets_received, total as u64);
    assert_eq!(stats.client_log_records_dropped, 0);
}

#[test]
#[ignore = "needs root"]
fn deny_and_allow_take_effect_at_once() {
    require_root();
    let link = Link::new();
    add_client_addresses(&link, &["10.77.0.100".parse().unwrap(), "10.77.0.150".parse().unwrap()]);
    let ntpxd = Ntpxd::start(&link.server_ns, CONFIG);
    assert!(answered(&link, "10.77.0.150"));
    assert_eq!(ntpxd.ntpxc(&["deny", "10.77.0.128/25"]).unwrap(), "200 OK\n");
    assert!(!answered(&link, "10.77.0.150"), "denied, yet answered");
    assert!(answered(&link, "10.77.0.100"), "the rest of the subnet is still served");
    assert_eq!(ntpxd.ntpxc(&["accheck", "10.77.0.150"]).unwrap(), "209 Access denied\n");
    assert_eq!(ntpxd.ntpxc(&["accheck", "10.77.0.100"]).unwrap(), "208 Access allowed\n");
    assert_eq!(ntpxd.ntpxc(&["allow", "10.77.0.128/25"]).unwrap(), "200 OK\n");
    assert!(answered(&link, "10.77.0.150"), "allowed again, yet not answered");
    // `deny all` of the whole subnet clears the more specific allow before it.
    ntpxd.ntpxc(&["deny", "all", "10.77.0.0/24"]).unwrap();
    assert!(!answered(&link, "10.77.0.150") && !answered(&link, "10.77.0.100"));
    assert!(ntpxd.ntpxc(&["allow", "10.77.0.0/33"]).unwrap_err().contains("prefix length 33"));
    assert!(ntpxd.serverstats().kernel.dropped_denied >= 3);
}

#[test]
#[ignore = "needs root"]
fn a_broken_configuration_on_reload_keeps_the_old_rules() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, CONFIG);
    assert!(answered(&link, "10.77.0.2"));
    // A file that would deny the client, but has an error: nothing of it is applied.
    ntpxd.rewrite_config(&format!("{CONFIG}deny 10.77.0.2\nallow 10.77.0.0/99\n"));
    ntpxd.process.signal(Signal::SIGHUP);
    let logged = peers::wait_for(Duration::from_secs(5), || {
        ntpxd.process.log().contains("the running configuration is kept")
    });
    assert!(logged, "no error logged:\n{}", ntpxd.process.log());
    assert!(
        ntpxd.process.log().contains("ntpxd.conf:5: prefix length 99"),
        "{}",
        ntpxd.process.log()
    );
    assert!(answered(&link, "10.77.0.2"), "the old rules must stay");
    let error = ntpxd.ntpxc(&["reload"]).unwrap_err();
    assert!(error.contains("ntpxd.conf:5:"), "{error}");
    // Fixed, the file applies at once.
    ntpxd.rewrite_config(&format!("{CONFIG}deny 10.77.0.2\n"));
    assert_eq!(ntpxd.ntpxc(&["reload"]).unwrap(), "200 OK\n");
    assert!(!answered(&link, "10.77.0.2"), "the reloaded rules deny the client");
}

/// Sends `count` requests with poll `poll`, one every `spacing`, and collects the replies:
/// (time replies, the polls they carried).
fn send_pattern(count: u32, spacing: Duration, poll: i8) -> (u32, Vec<i8>) {
    let socket = UdpSocket::bind("10.77.0.2:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut replies = 0;
    let mut polls = Vec::new();
    let mut buffer = [0u8; 512];
    let mut drain = |replies: &mut u32, polls: &mut Vec<i8>| {
        while let Ok((len, _)) = socket.recv_from(&mut buffer) {
            if len == HEADER_LEN {
                let reply = NtpHeader::from_bytes(buffer[..HEADER_LEN].try_into().unwrap());
                *replies += 1;
                polls.push(reply.poll);
            }
        }
    };
    for i in 0..count {
        let transmit = NtpTimestamp::from_fixed(0x1000 + u64::from(i));
        let request = NtpHeader::client_request(4, poll, transmit).to_bytes();
        socket.send_to(&request, server()).unwrap();
        drain(&mut replies, &mut polls);
        std::thread::sleep((start + spacing * (i + 1)).saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(&mut replies, &mut polls);
    (replies, polls)
}

#[test]
#[ignore = "needs root"]
fn rate_limiting_matches_chronyd() {
    rate_limiting_matches_chronyd_by(CONFIG);
}

#[test]
#[ignore = "needs root"]
fn rate_limiting_on_the_slow_path_matches_chronyd() {
    rate_limiting_matches_chronyd_by(SLOW_PATH_CONFIG);
}

fn rate_limiting_matches_chronyd_by(config: &str) {
    require_root();
    // chrony 4.3 has no `kod` option: the kiss-o'-death share is tested against the
    // program alone (client_log.rs).
    let ratelimit = "ratelimit interval -1 burst 4 leak 3";
    let (count, spacing) = (300, Duration::from_millis(10));
    let chrony_link = Link::new();
    let chronyd =
        Chronyd::start(&chrony_link.server_ns, &format!("local stratum 10\nallow\n{ratelimit}\n"));
    let (chrony_replies, chrony_polls) =
        chrony_link.client_ns.enter(|| send_pattern(count, spacing, -3));
    drop(chronyd);
    let ntpx_link = Link::new();
    let ntpxd = Ntpxd::start(&ntpx_link.server_ns, &format!("{config}{ratelimit}\n"));
    let (ntpx_replies, ntpx_polls) = ntpx_link.client_ns.enter(|| send_pattern(count, spacing, -3));
    // 4 from the burst, one per 0.5 s for 3 s, and 1 in 8 of the other ~290: about 46 each.
    // The leak is random: allow 3 standard deviations of the difference of two such counts
    // (σ ≈ 8), and 4 for timing.
    eprintln!(
        "rate limiting, {count} requests every {spacing:?}: chronyd answered {chrony_replies}, ntpxd {ntpx_replies}"
    );
    assert!((20..=80).contains(&chrony_replies), "chronyd answered {chrony_replies}");
    assert!(
        chrony_replies.abs_diff(ntpx_replies) <= 28,
        "chronyd {chrony_replies}, ntpxd {ntpx_replies}"
    );
    // Both raise the poll to the limit's interval.
    assert!(chrony_polls.iter().all(|p| *p == -1), "{chrony_polls:?}");
    assert!(ntpx_polls.iter().all(|p| *p == -1), "{ntpx_polls:?}");
    let stats = ntpxd.serverstats();
    assert_eq!(u64::from(count), stats.ntp_packets_received, "{stats:?}");
    assert_eq!(stats.ntp_packets_dropped, u64::from(count - ntpx_replies));
}

#[test]
#[ignore = "needs root"]
fn the_control_socket_lets_only_root_and_ntpxds_user_change_state_and_bounds_its_requests() {
    use std::{
        io::{Read as _, Write as _},
        os::unix::{fs::PermissionsExt as _, net::UnixStream},
    };
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, CONFIG);
    // Opened to everyone, so that an unprivileged user reaches the socket at all (ntpxd's
    // own directory and mode keep others out in a real installation).
    let open = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(ntpxd.socket.parent().unwrap(), 0o755);
    open(&ntpxd.socket, 0o666);
    let as_nobody = |args: &[&str]| {
        let output = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(peers::binary("ntpxc"))
            .arg("-h")
            .arg(&ntpxd.socket)
            .args(args)
            .output()
            .expect("setpriv");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    for report in [&["tracking"][..], &["clients"], &["serverstats"], &["accheck", "10.77.0.2"]] {
        let (ok, stderr) = as_nobody(report);
        assert!(ok, "{report:?} refused to an unprivileged user: {stderr}");
    }
    for change in [&["allow", "10.0.0.0/8"][..], &["deny", "all"], &["reload"], &["clients", "-r"]]
    {
        let (ok, stderr) = as_nobody(change);
        assert!(!ok && stderr.contains("not permitted"), "{change:?} by nobody: {stderr}");
    }
    assert!(answered(&link, "10.77.0.2"), "nobody's deny all was applied");
    ntpxd.ntpxc(&["deny", "10.77.0.2"]).expect("root may change the rules");
    assert!(!answered(&link, "10.77.0.2"));

    // Bad requests get an error reply, and the daemon goes on.
    let exchange = |request: &[u8]| {
        let mut stream = UnixStream::connect(&ntpxd.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // ntpxd may answer and close before an oversized request is all written (EPIPE here):
        // its reply is still there to read.
        let _ = stream.write_all(request);
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    };
    let long = [b'x'; 5000];
    for bad in [&long[..], b"{not json\n", b"\xff\xfe\n", b"{\"command\":\"clients\"}\n"] {
        let reply = exchange(bad);
        assert!(
            reply.contains("\"response\":\"error\"") && reply.contains("bad request"),
            "{reply}"
        );
    }
    // Connections beyond the bound are closed unanswered while the others are held open.
    let held: Vec<UnixStream> =
        (0..16).map(|_| UnixStream::connect(&ntpxd.socket).unwrap()).collect();
    assert_eq!(exchange(b"{\"command\":\"tracking\"}\n"), "", "a 17th connection was served");
    drop(held);
    assert!(
        peers::wait_for(Duration::from_secs(10), || ntpxd.ntpxc(&["tracking"]).is_ok()),
        "ntpxd no longer answers on its control socket"
    );
}

#[test]
#[ignore = "needs root"]
fn resetting_a_million_clients_leaves_serving_and_republishing_alone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    const CLIENTS: u32 = 1_000_000;
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, &format!("{CONFIG}clientlog entries {CLIENTS}\n"));
    ntpxd.fill_client_table(CLIENTS);
    let stale_before = ntpxd.serverstats().kernel.passed_stale;
    let resetting = AtomicBool::new(true);
    let (polls, unanswered, took) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let (mut polls, mut unanswered) = (0, 0);
            while resetting.load(Ordering::Relaxed) {
                polls += 1;
                unanswered += usize::from(!answered(&link, "10.77.0.2"));
                std::thread::sleep(Duration::from_millis(50));
            }
            (polls, unanswered)
        });
        let started = Instant::now();
        let reset = ntpxd.ntpxc(&["clients", "-r", "--top", "3"]);
        let took = started.elapsed();
        resetting.store(false, Ordering::Relaxed);
        reset.expect("clients -r");
        let (polls, unanswered) = poller.join().unwrap();
        (polls, unanswered, took)
    });
    eprintln!(
        "clients -r on {CLIENTS} clients took {took:?}; {unanswered} of {polls} polls unanswered"
    );
    assert_eq!(unanswered, 0, "requests went unanswered during the reset");
    let stats = ntpxd.serverstats();
    assert_eq!(stats.kernel.passed_stale, stale_before, "the state went stale: {stats:?}");
    assert!(stats.client_log_capacity >= CLIENTS);

    // The whole log, a page a request: every client once, and ntpxd never holds the whole
    // report (a million clients' report is over 100 MB of JSON).
    let peak = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", ntpxd.process.pid()));
        let line = status.unwrap().lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let peak_before = peak();
    let listing = ntpxd.ntpxc(&["-c", "clients"]).expect("clients");
    let addresses: std::collections::HashSet<&str> =
        listing.lines().map(|line| line.split(',').next().unwrap()).collect();
    assert_eq!(addresses.len(), listing.lines().count(), "a client listed twice");
    // All but what the LRU evicted when the poller's address came in.
    assert!(addresses.len() > CLIENTS as usize * 99 / 100, "{} listed", addresses.len());
    let growth = peak().saturating_sub(peak_before);
    eprintln!(
        "listing {} clients raised ntpxd's peak memory ({peak_before} bytes) by {growth}",
        addresses.len()
    );
    assert!(growth < 32 << 20, "ntpxd's peak memory grew by {growth} bytes");
}
