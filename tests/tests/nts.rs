//! NTS against Debian's chronyd 4.3: it gets keys and cookies from ntpxd's NTS-KE, its
//! authenticated requests are answered from the slow path (the XDP program passes them), and
//! it synchronises; what NTS-KE must refuse, it refuses.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use ntpx_tests::{
    netns::{Link, SERVER_V4, SERVER_V6, UPSTREAM_V4, Upstreams},
    peers::{self, Chronyd, Ntpxd},
    pki, require_root,
};

fn make_certificates(dir: &Path) {
    pki::make_certificates(dir, SERVER_V4);
}

/// A second address for a second server, on the same link (both families: a server binds both).
/// `chronyc -N authdata`'s row for `address`: Mode KeyID Type KLen Last Atmp NAK Cook CLen.
fn authdata(chronyd: &Chronyd, address: &str) -> Vec<String> {
    let report = chronyd.chronyc(&["-n", "authdata"]);
    let row = report.lines().find(|line| line.starts_with(address));
    row.map(|row| row.split_whitespace().skip(1).map(str::to_owned).collect())
        .unwrap_or_else(|| panic!("no {address} in\n{report}"))
}

#[test]
#[ignore = "needs root"]
fn chronyd_synchronises_to_ntpxd_over_nts_with_its_cookies() {
    require_root();
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "local stratum 2\nallow\nxdp veth-srv native\nntsservercert {}\nntsserverkey {}\n\
             ntsdumpdir {}\n",
            path("server.pem"),
            path("server.key"),
            dir.path().display()
        ),
    );
    let chronyd = Chronyd::start(
        &link.client_ns,
        &format!(
            "server {SERVER_V4} iburst nts minpoll 0 maxpoll 0\nntstrustedcerts {}\n",
            path("ca.pem")
        ),
    );
    let selected = peers::wait_for(Duration::from_secs(60), || chronyd.selects(SERVER_V4));
    assert!(selected, "chronyd did not select ntpxd:\n{}", chronyd.chronyc(&["-n", "authdata"]));
    chronyd.wait_for_replies(SERVER_V4, 4, Duration::from_secs(30));

    // chronyd holds NTS keys and cookies (NTS, AES-SIV-CMAC-256, no NAK, eight 100-byte cookies
    // less the one in flight at most).
    let row = authdata(&chronyd, SERVER_V4);
    eprintln!("chronyc -n authdata: {row:?}");
    assert_eq!((row[0].as_str(), row[2].as_str()), ("NTS", "15"), "{row:?}");
    assert_eq!((row[6].as_str(), row[8].as_str()), ("0", "100"), "{row:?}");
    let cookies: u32 = row[7].parse().unwrap();
    assert!((7..=8).contains(&cookies), "{row:?}");
    let ntpdata = chronyd.chronyc(&["-n", "ntpdata", SERVER_V4]);
    assert_eq!(peers::report_value(&ntpdata, "Authenticated"), Some("Yes"), "{ntpdata}");
    // The same clock on both sides: the offset measured is the server's error, within 10 us.
    let offset = chronyd.median_offset(SERVER_V4, 5);
    assert!(offset.abs() < 10e-6, "median offset {offset} s:\n{ntpdata}");

    let stats = ntpxd.serverstats();
    assert!(stats.authenticated_ntp_packets >= 4, "{stats:?}");
    assert_eq!(stats.slow_path.nts_naks, 0, "{stats:?}");
    assert!(stats.nts_ke_connections_accepted >= 1, "{stats:?}");
    assert!(stats.kernel.passed_length >= 4, "the XDP program passed NTS requests on");
    // The server keys were kept, readable by their owner alone.
    let keys = dir.path().join("ntpx-nts-keys");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
#[ignore = "needs root"]
fn as_an_nts_client_ntpxd_polls_the_ntp_server_and_port_that_nts_ke_names() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let dir = tempfile::tempdir().unwrap();
    pki::make_certificates(dir.path(), UPSTREAM_V4[0]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    // chronyd 4.3 does NTS-KE at the first address and names another, by name, and its own
    // NTP port, which is not 123: nothing answers NTP at the first address's port 123.
    let chronyd = Chronyd::start(
        &upstreams.ns,
        &format!(
            "local stratum 1\nallow\nport 11123\nntsservercert {}\nntsserverkey {}\n\
             ntsntpserver ntp.example\n",
            path("server.pem"),
            path("server.key")
        ),
    );
    link.server_ns.set_hosts(&format!("{} ntp.example\n", UPSTREAM_V4[1]));
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "server {} iburst nts minpoll 0 maxpoll 0\nntstrustedcerts {}\nnosystemcert\n",
            UPSTREAM_V4[0],
            path("ca.pem")
        ),
    );
    let selected = peers::wait_for(Duration::from_secs(60), || {
        ntpxd.ntpxc(&["sources"]).unwrap_or_default().contains(&format!("^* {}", UPSTREAM_V4[0]))
    });
    let sources = ntpxd.ntpxc(&["sources"]).unwrap_or_default();
    assert!(selected, "not selected:\n{sources}\n{}", ntpxd.process.log());
    let log = ntpxd.process.log();
    let named = format!("{}:11123", UPSTREAM_V4[1]);
    assert!(log.contains(&named), "NTS-KE's server and port not followed:\n{log}");
    // The requests are NTS's (chronyd counts them authenticated), and keep coming.
    let authenticated = || -> u64 {
        let stats = chronyd.chronyc(&["serverstats"]);
        peers::report_value(&stats, "Authenticated NTP packets")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let polled = peers::wait_for(Duration::from_secs(30), || authenticated() >= 3);
    assert!(polled, "{}", chronyd.chronyc(&["serverstats"]));
}

#[test]
#[ignore = "needs root"]
fn as_an_nts_client_of_chronyd_ntpxd_selects_only_the_authenticated_server() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let dir = tempfile::tempdir().unwrap();
    pki::make_certificates(dir.path(), UPSTREAM_V4[0]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    // chronyd 4.3 serves NTS; a second chronyd serves the same, with a certificate from a CA
    // ntpxd does not trust.
    let serving = |address: &str, certificates: &Path| {
        format!(
            "local stratum 1\nallow\nbindaddress {address}\nport 123\nntsservercert {}\n\
             ntsserverkey {}\n",
            certificates.join("server.pem").display(),
            certificates.join("server.key").display()
        )
    };
    let untrusted = tempfile::tempdir().unwrap();
    pki::make_certificates(untrusted.path(), UPSTREAM_V4[1]);
    let trusted_server = Chronyd::start(&upstreams.ns, &serving(UPSTREAM_V4[0], dir.path()));
    let _untrusted_server =
        Chronyd::start(&upstreams.ns, &serving(UPSTREAM_V4[1], untrusted.path()));
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "server {} iburst nts minpoll 0 maxpoll 0\nserver {} iburst nts minpoll 0 maxpoll 0\n\
             ntstrustedcerts {}\nnosystemcert\n",
            UPSTREAM_V4[0],
            UPSTREAM_V4[1],
            path("ca.pem")
        ),
    );
    let selected = peers::wait_for(Duration::from_secs(60), || {
        ntpxd.ntpxc(&["sources"]).unwrap_or_default().contains(&format!("^* {}", UPSTREAM_V4[0]))
    });
    let sources = ntpxd.ntpxc(&["sources"]).unwrap_or_default();
    assert!(selected, "ntpxd did not select the NTS server:\n{sources}\n{}", ntpxd.process.log());
    // The untrusted one never got a request: its certificate failed NTS-KE.
    let untrusted_row = sources.lines().find(|l| l.contains(UPSTREAM_V4[1])).unwrap_or_default();
    assert!(untrusted_row.starts_with("^?"), "{sources}");
    assert!(ntpxd.process.log().contains("NTS-KE failed"), "{}", ntpxd.process.log());
    // chronyd counts NTS-KE and authenticated requests: ntpxd renews its cookies from the
    // replies (eight would be used up otherwise; one NTS-KE serves them all).
    let count = |label: &str| -> u64 {
        let stats = trusted_server.chronyc(&["serverstats"]);
        peers::report_value(&stats, label).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let renewed =
        peers::wait_for(Duration::from_secs(30), || count("Authenticated NTP packets") >= 12);
    let stats = trusted_server.chronyc(&["serverstats"]);
    eprintln!("chronyd's serverstats:\n{stats}");
    assert!(renewed, "{stats}");
    assert_eq!(count("NTS-KE connections accepted"), 1, "{stats}");

    // chronyc authdata against ntpxd: NTS for both; cookies for the trusted one, attempts and
    // none for the other.
    let (authdata, ok) = ntpxd.chronyc(&["authdata"]);
    let row = |address: &str| -> Vec<String> {
        let line = authdata.lines().find(|l| l.starts_with(address)).unwrap_or_default();
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    let (trusted, untrusted) = (row(UPSTREAM_V4[0]), row(UPSTREAM_V4[1]));
    assert!(ok && trusted.len() == 9 && untrusted.len() == 9, "{authdata}");
    assert_eq!(
        (trusted[0].as_str(), trusted[2].as_str(), trusted[3].as_str()),
        ("NTS", "15", "256")
    );
    assert!(trusted[7].parse::<u32>().unwrap() >= 1 && trusted[8] != "0", "{authdata}");
    assert_eq!((untrusted[0].as_str(), untrusted[7].as_str()), ("NTS", "0"), "{authdata}");
    assert!(untrusted[5].parse::<u32>().unwrap() >= 1, "attempts: {authdata}");
    // ntpxc authdata: the same rows (the Last column aside: a second may pass).
    let ours = ntpxd.ntpxc(&["authdata"]).unwrap();
    let without_last = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .skip(2)
            .map(|l| {
                l.split_whitespace()
                    .enumerate()
                    .filter(|(i, _)| *i != 5)
                    .map(|(_, w)| w.to_owned())
                    .collect()
            })
            .collect()
    };
    assert_eq!(without_last(&ours), without_last(&authdata), "{ours}\n{authdata}");
    // -N: the configured names.
    let (named, ok) = ntpxd.chronyc(&["-N", "sources"]);
    assert!(ok && named.contains(&format!("^* {}", UPSTREAM_V4[0])), "{named}");
}

#[test]
#[ignore = "needs root"]
fn a_server_sharing_the_key_file_answers_cookies_another_handed_out() {
    require_root();
    let link = Link::new();
    let (other, other_v6) = link.second_server_address();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    // Each on its own addresses (both families: a server binds both).
    let nts = |address: &str, v6: &str| {
        format!(
            "local stratum 2\nallow\nbindaddress {address}\nbindaddress {v6}\n\
             ntsservercert {}\nntsserverkey {}\nntsdumpdir {}\nntsrotate 0\n",
            path("server.pem"),
            path("server.key"),
            dir.path().display()
        )
    };
    // The first hands out cookies and sends clients to the second; the second has the same
    // key file (the first wrote it).
    let first = Ntpxd::start(
        &link.server_ns,
        &(nts(SERVER_V4, SERVER_V6) + &format!("ntsntpserver {other}\n")),
    );
    let second = Ntpxd::start(&link.server_ns, &nts(other, other_v6));
    let chronyd = Chronyd::start(
        &link.client_ns,
        &format!(
            "server {SERVER_V4} iburst nts minpoll 0 maxpoll 0\nntstrustedcerts {}\n",
            path("ca.pem")
        ),
    );
    let answered = peers::wait_for(Duration::from_secs(60), || {
        second.serverstats().authenticated_ntp_packets >= 3
    });
    let row = chronyd.chronyc(&["-n", "authdata"]);
    assert!(answered, "the second server answered no NTS requests:\n{row}");
    let (first, second) = (first.serverstats(), second.serverstats());
    assert!(first.nts_ke_connections_accepted >= 1, "{first:?}");
    assert_eq!(second.nts_ke_connections_accepted, 0, "{second:?}");
    assert_eq!(first.authenticated_ntp_packets, 0, "{first:?}");
    assert_eq!(second.slow_path.nts_naks, 0, "{second:?}");
}

/// A master secret of 32 random bytes at `path`, with `mode`.
fn write_secret(path: &Path, mode: u32) {
    let secret: [u8; 32] =
        std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ std::process::id() as u8);
    std::fs::write(path, secret).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_fleet_derives_its_cookie_keys_from_one_master_secret_across_key_changes() {
    require_root();
    let link = Link::new();
    let (other, other_v6) = link.second_server_address();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    write_secret(&dir.path().join("master"), 0o600);
    // Keys of 8 s: the test sees several key changes.
    let fleet = |address: &str, v6: &str, secret: &str| {
        format!(
            "local stratum 2\nallow\nbindaddress {address}\nbindaddress {v6}\n\
             ntsservercert {}\nntsserverkey {}\nntsmastersecret {} period 8\n",
            path("server.pem"),
            path("server.key"),
            path(secret)
        )
    };
    // A secret others may read is refused.
    write_secret(&dir.path().join("readable"), 0o644);
    let (status, log) =
        Ntpxd::start_expecting_failure(&link.server_ns, &fleet(other, other_v6, "readable"));
    assert!(!status.success() && log.contains("has mode 0644"), "{log}");

    // NTS-KE on the first, NTP to the second; neither has the other's key file, only the secret.
    let first = Ntpxd::start(
        &link.server_ns,
        &(fleet(SERVER_V4, SERVER_V6, "master") + &format!("ntsntpserver {other}\n")),
    );
    let mut second = Ntpxd::start(&link.server_ns, &fleet(other, other_v6, "master"));
    let chronyd = Chronyd::start(
        &link.client_ns,
        &format!(
            "server {SERVER_V4} iburst nts minpoll 0 maxpoll 0\nntstrustedcerts {}\n",
            path("ca.pem")
        ),
    );
    // chronyd names the source by the NTP server NTS-KE gave it.
    let selected = peers::wait_for(Duration::from_secs(60), || chronyd.selects(other));
    assert!(
        selected,
        "chronyd did not select the fleet:\n{}",
        chronyd.chronyc(&["-n", "authdata"])
    );
    // Past three key changes: every request answered, no cookie refused.
    let answered_before = second.serverstats().authenticated_ntp_packets;
    std::thread::sleep(Duration::from_secs(26));
    let row = authdata(&chronyd, other);
    eprintln!("chronyc -n authdata after three key changes: {row:?}");
    assert_eq!((row[0].as_str(), row[6].as_str()), ("NTS", "0"), "NAKs: {row:?}");
    let (first_stats, second_stats) = (first.serverstats(), second.serverstats());
    assert!(second_stats.authenticated_ntp_packets >= answered_before + 20, "{second_stats:?}");
    assert_eq!(second_stats.slow_path.nts_naks, 0, "{second_stats:?}");
    assert_eq!(first_stats.authenticated_ntp_packets, 0, "{first_stats:?}");
    let offset = chronyd.median_offset(other, 3);
    assert!(offset.abs() < 1e-3, "offset {offset}");

    // The second server with another secret: the cookies are refused with NTS NAKs.
    write_secret(&dir.path().join("stranger"), 0o600);
    std::fs::write(dir.path().join("stranger"), [9u8; 32]).unwrap();
    second.process.stop();
    second = Ntpxd::start(&link.server_ns, &fleet(other, other_v6, "stranger"));
    let refused =
        peers::wait_for(Duration::from_secs(30), || second.serverstats().slow_path.nts_naks >= 1);
    assert!(refused, "no NAK: {:?}", second.serverstats());
    let naks = peers::wait_for(Duration::from_secs(30), || {
        authdata(&chronyd, other)[6].parse::<u32>().unwrap_or(0) >= 1
    });
    assert!(naks, "chronyd saw no NAK: {:?}", authdata(&chronyd, other));
}

#[test]
#[ignore = "needs root"]
fn nts_ke_bounds_its_sessions_refuses_tls_12_and_drops_a_handshake_that_never_finishes() {
    require_root();
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "local stratum 2\nallow\nntsservercert {}\nntsserverkey {}\nmaxntsconnections 2\n",
            path("server.pem"),
            path("server.key")
        ),
    );
    let server = SocketAddr::new(IpAddr::V4(SERVER_V4.parse().unwrap()), 4460);
    // Two sessions at once: a third connection is closed at once (and counted), while the two
    // wait for their handshakes.
    let connect = || link.client_ns.enter(|| TcpStream::connect(server)).unwrap();
    let held = [connect(), connect()];
    std::thread::sleep(Duration::from_millis(100));
    let mut third = connect();
    third.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = std::time::Instant::now();
    let closed = third.read(&mut [0u8; 1]);
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
    assert!(started.elapsed() < Duration::from_millis(900), "not closed at once");
    drop(held);
    // Closed, the two sessions end (and count as dropped with the third): slots free again.
    let ended = peers::wait_for(Duration::from_secs(5), || {
        ntpxd.serverstats().nts_ke_connections_dropped >= 3
    });
    assert!(ended, "{:?}", ntpxd.serverstats());
    // A client that offers only TLS 1.2 gets no session.
    let tls12 = link
        .client_ns
        .command("openssl")
        .args(["s_client", "-tls1_2", "-alpn", "ntske/1", "-connect", &server.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tls12.stdout).into_owned()
        + &String::from_utf8_lossy(&tls12.stderr);
    assert!(!tls12.status.success(), "a TLS 1.2 session:\n{said}");
    assert!(said.contains("alert") || said.contains("error"), "{said}");
    // TLS 1.3 with the right ALPN gets a certificate (the session itself is chronyd's test).
    let tls13 = link
        .client_ns
        .command("openssl")
        .args(["s_client", "-tls1_3", "-alpn", "ntske/1", "-connect", &server.to_string()])
        .args(["-CAfile", &path("ca.pem"), "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tls13.stdout);
    assert!(said.contains("ALPN protocol: ntske/1"), "{said}");
    assert!(said.contains("Verify return code: 0 (ok)"), "{said}");

    // A connection that never sends its handshake is closed after the session timeout, and
    // counted as dropped.
    let dropped_before = ntpxd.serverstats().nts_ke_connections_dropped;
    let mut silent = link.client_ns.enter(|| TcpStream::connect(server)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let closed = silent.read(&mut byte);
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let dropped = peers::wait_for(Duration::from_secs(5), || {
        ntpxd.serverstats().nts_ke_connections_dropped > dropped_before
    });
    assert!(dropped);
    let _ = silent.write_all(b"late");

    // Not a TLS client at all: the session fails, the listener carries on.
    let mut garbage = link.client_ns.enter(|| TcpStream::connect(server)).unwrap();
    garbage.write_all(&[0x16, 3, 3, 0, 1, 0xff]).unwrap();
    let tls13_again = link
        .client_ns
        .command("openssl")
        .args(["s_client", "-tls1_3", "-alpn", "ntske/1", "-connect", &server.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&tls13_again.stdout).contains("ALPN protocol: ntske/1"));
}
