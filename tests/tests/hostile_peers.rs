//! Every door ntpxd opens, attacked the way a careless or hostile peer would: NTS-KE, /metrics,
//! chronyc's sockets, ntpxc's socket and the descriptors they all need. For each, what the peer
//! tried, what it got, and what a legitimate client got at the same time (each test prints its
//! table). ntpxd serves across a veth pair between network namespaces, as in service.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixDatagram,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use ntp_userspace::{nts::ke, upstream};
use ntpx_tests::{
    client,
    netns::{CLIENT_V4, Link, SERVER_V4},
    peers::{self, Ntpxd},
    pki, require_root,
};

const NTS_KE_PORT: u16 = 4460;
/// A second and a third address of the client namespace: a denied host, and a flooding one.
const DENIED_V4: &str = "10.77.0.3";
const FLOODER_V4: &str = "10.77.0.4";

fn server_at(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V4.parse().unwrap(), port)
}

fn ip(address: &str) -> IpAddr {
    address.parse().unwrap()
}

/// One row of a door's table: what the peer tried, what it got, what a legitimate client got.
struct Row {
    tried: String,
    got: String,
    legitimate: String,
}

fn print_table(door: &str, rows: &[Row]) {
    eprintln!("\n{door}\n{:<58} | {:<40} | legitimate client", "peer tried", "peer got");
    for Row { tried, got, legitimate } in rows {
        eprintln!("{tried:<58} | {got:<40} | {legitimate}");
    }
}

/// A link whose client namespace also has the denied and the flooding addresses.
fn link_with_hostile_addresses() -> Link {
    let link = Link::new();
    for address in [DENIED_V4, FLOODER_V4] {
        link.client_ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "veth-cli"]);
    }
    link
}

/// What a connection that should be closed at once got: the bytes the server sent before
/// closing, or a timeout.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Result<usize, String> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut total = 0;
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(format!("still open after {timeout:?} ({e})")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NTS-KE

struct Nts {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    config: String,
}

fn nts(extra: &str) -> Nts {
    let dir = tempfile::tempdir().unwrap();
    pki::make_certificates(dir.path(), SERVER_V4);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let config = format!(
        "local stratum 2\nntsservercert {}\nntsserverkey {}\n{extra}",
        path("server.pem"),
        path("server.key")
    );
    Nts { ca: dir.path().join("ca.pem"), config, _dir: dir }
}

fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    Arc::new(upstream::nts_client_tls(&[ca.to_owned()], false).expect("the client's TLS"))
}

/// A legitimate NTS-KE from the client's main address: how long it took, or why it failed.
fn key_exchange(link: &Link, tls: &Arc<rustls::ClientConfig>) -> Result<Duration, String> {
    link.client_ns.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = Instant::now();
        let exchange = upstream::nts_key_exchange(server_at(123), SERVER_V4, tls.clone());
        let outcome = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), exchange).await });
        match outcome {
            Ok(Ok((_, granted))) if !granted.cookies.is_empty() => Ok(started.elapsed()),
            Ok(Ok(_)) => Err("no cookies".into()),
            Ok(Err(error)) => Err(format!("{error:#}")),
            Err(_) => Err("timed out".into()),
        }
    })
}

fn describe(outcome: &Result<Duration, String>) -> String {
    match outcome {
        Ok(took) => format!("key exchange done in {:.1} ms", took.as_secs_f64() * 1e3),
        Err(error) => format!("key exchange FAILED: {error}"),
    }
}

#[test]
#[ignore = "needs root"]
fn nts_ke_closes_on_denied_hosts_and_one_address_cannot_take_every_session() {
    require_root();
    let link = link_with_hostile_addresses();
    let nts = nts(&format!(
        "allow {CLIENT_V4}\nallow {FLOODER_V4}\nmaxntsconnections 100\nntsratelimit burst 12\n"
    ));
    let ntpxd = Ntpxd::start(&link.server_ns, &nts.config);
    let tls = client_tls(&nts.ca);
    let mut rows = Vec::new();

    // A host outside every allow: closed before any TLS, as chronyd closes it.
    let dropped_before = ntpxd.serverstats().nts_ke_connections_dropped;
    let got = link.client_ns.enter(|| {
        let mut stream = client::tcp_connect_from(ip(DENIED_V4), server_at(NTS_KE_PORT)).unwrap();
        let started = Instant::now();
        let sent = read_until_closed(&mut stream, Duration::from_secs(3));
        (sent, started.elapsed())
    });
    let legitimate = key_exchange(&link, &tls);
    assert_eq!(got.0, Ok(0), "the denied host got TLS bytes, or an open connection");
    assert!(got.1 < Duration::from_secs(1), "closed after {:?}", got.1);
    assert!(legitimate.is_ok(), "{legitimate:?}");
    let dropped = ntpxd.serverstats().nts_ke_connections_dropped - dropped_before;
    assert_eq!(dropped, 1, "the denied connection counted as dropped");
    rows.push(Row {
        tried: format!("connect from {DENIED_V4} (denied)"),
        got: format!("closed after {:.1} ms, 0 bytes", got.1.as_secs_f64() * 1e3),
        legitimate: describe(&legitimate),
    });

    // One address opening 60 idle connections a second for 4 s, each held open (without a rate
    // limit, 120 sessions for the 100 slots): ntsratelimit closes most at once, so the
    // sessions' bound is never reached. The legitimate client asks every 500 ms, within its
    // own burst.
    let flood = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            link.client_ns.enter(|| {
                let mut held = Vec::new();
                let started = Instant::now();
                let mut closed_at_once = 0;
                for i in 0..240u32 {
                    let due = Duration::from_millis(1000) * i / 60;
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                    let Ok(mut stream) =
                        client::tcp_connect_from(ip(FLOODER_V4), server_at(NTS_KE_PORT))
                    else {
                        continue;
                    };
                    let mut byte = [0u8; 1];
                    stream.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                    if matches!(stream.read(&mut byte), Ok(0)) {
                        closed_at_once += 1;
                    }
                    held.push(stream);
                }
                (held.len(), closed_at_once)
            })
        });
        let mut exchanges = Vec::new();
        while !flood.is_finished() {
            exchanges.push(key_exchange(&link, &tls));
            std::thread::sleep(Duration::from_millis(500));
        }
        (flood.join().unwrap(), exchanges)
    });
    let ((opened, closed_at_once), exchanges) = flood;
    let failed: Vec<_> = exchanges.iter().filter(|e| e.is_err()).collect();
    let slowest = exchanges.iter().filter_map(|e| e.as_ref().ok()).max().copied();
    rows.push(Row {
        tried: format!("{FLOODER_V4}: 240 idle connections at 60/s, all held"),
        got: format!("{closed_at_once} of {opened} closed at once"),
        legitimate: format!(
            "{} of {} key exchanges done, slowest {:.1} ms",
            exchanges.len() - failed.len(),
            exchanges.len(),
            slowest.unwrap_or_default().as_secs_f64() * 1e3
        ),
    });
    print_table("NTS-KE (allow, ntsratelimit burst 12, maxntsconnections 100)", &rows);
    assert!(exchanges.len() >= 6, "only {} key exchanges tried", exchanges.len());
    assert!(failed.is_empty(), "legitimate key exchanges failed: {failed:?}");
    assert!(closed_at_once > 100, "ntsratelimit closed only {closed_at_once} of {opened}");
}

/// A stream that writes one byte a call: TLS records reach the server split byte by byte.
struct ByteByByte(TcpStream);

impl std::io::Read for ByteByByte {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buffer)
    }
}

impl std::io::Write for ByteByByte {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(&bytes[..bytes.len().min(1)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// An NTS-KE over a blocking rustls client on `stream` (with `tls`, and `request` as the
/// NTS-KE request): the cookies granted, or why none.
fn sync_key_exchange(
    stream: impl std::io::Read + std::io::Write,
    tls: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Result<usize, String> {
    let name = rustls::pki_types::ServerName::try_from(SERVER_V4).unwrap().to_owned();
    let connection = rustls::ClientConnection::new(tls, name).map_err(|e| e.to_string())?;
    let mut tls_stream = rustls::StreamOwned::new(connection, stream);
    tls_stream.write_all(request).map_err(|e| format!("handshake or request: {e}"))?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(read) = ke::read_response(&response) {
            return read.map(|granted| granted.cookies.len());
        }
        match tls_stream.read(&mut buffer) {
            Ok(0) => return Err("closed before a whole response".into()),
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

#[test]
#[ignore = "needs root"]
fn nts_ke_shrugs_off_broken_tls_and_still_serves_its_clients() {
    require_root();
    let link = Link::new();
    let nts = nts("allow\n");
    let ntpxd = Ntpxd::start(&link.server_ns, &nts.config);
    let tls = client_tls(&nts.ca);
    let connect = || link.client_ns.enter(|| TcpStream::connect(server_at(NTS_KE_PORT))).unwrap();
    let mut rows = Vec::new();
    let mut check = |tried: &str, got: String, ok: bool| {
        let legitimate = key_exchange(&link, &tls);
        rows.push(Row { tried: tried.into(), got: got.clone(), legitimate: describe(&legitimate) });
        assert!(ok, "{tried}: {got}");
        assert!(legitimate.is_ok(), "after {tried}: {legitimate:?}");
    };

    // A whole key exchange whose TLS records come one byte a segment: served all the same.
    let split = link.client_ns.enter(|| {
        let stream = TcpStream::connect(server_at(NTS_KE_PORT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sync_key_exchange(ByteByByte(stream), tls.clone(), &ke::client_request())
    });
    check("TLS records split byte by byte", format!("{split:?} cookies"), split == Ok(8));

    // Not TLS at all, and a record longer than TLS allows: closed, with an alert at most.
    for (tried, bytes) in [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a 64 KiB TLS record header, then 32 KiB", {
            let mut record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
            record.resize(5 + 32 * 1024, 0x42);
            record
        }),
    ] {
        let mut stream = connect();
        let started = Instant::now();
        let _ = stream.write_all(&bytes);
        let got = read_until_closed(&mut stream, Duration::from_secs(3));
        let took = started.elapsed();
        let closed = got.as_ref().is_ok_and(|&sent| sent < 64) && took < Duration::from_secs(1);
        check(tried, format!("{got:?} bytes, closed after {took:.1?}"), closed);
    }

    // TLS with another ALPN protocol, and an NTS-KE request longer than any: no cookies.
    let mut http = (*tls).clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    let wrong_alpn = link.client_ns.enter(|| {
        let stream = TcpStream::connect(server_at(NTS_KE_PORT)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sync_key_exchange(stream, Arc::new(http), &ke::client_request())
    });
    check("TLS 1.3 with ALPN http/1.1", format!("{wrong_alpn:?}"), wrong_alpn.is_err());
    let mut endless = Vec::new();
    while endless.len() < 8 * ke::MAX_REQUEST {
        // Records of an unknown, non-critical type: never the end of the message.
        endless.extend_from_slice(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    }
    let overlong = link.client_ns.enter(|| {
        let stream = TcpStream::connect(server_at(NTS_KE_PORT)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sync_key_exchange(stream, tls.clone(), &endless)
    });
    check("an NTS-KE request of 8 KiB, never ended", format!("{overlong:?}"), overlong.is_err());

    // TLS 1.2 only: refused (openssl's own client).
    let tls12 = link
        .client_ns
        .command("openssl")
        .args(["s_client", "-tls1_2", "-connect", &server_at(NTS_KE_PORT).to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tls12.stderr).into_owned();
    let alert = said.lines().find(|l| l.contains("alert")).unwrap_or("no alert").to_owned();
    check("TLS 1.2 only (openssl s_client -tls1_2)", alert, !tls12.status.success());

    print_table("NTS-KE, broken TLS (allow)", &rows);
    let stats = ntpxd.serverstats();
    assert!(stats.nts_ke_connections_dropped >= 5, "{stats:?}");
}

#[test]
#[ignore = "needs root"]
fn nts_server_keys_rotate_when_their_age_says_and_a_bad_key_file_is_an_error() {
    use ntp_userspace::nts::cookie::KeyRing;
    require_root();
    let link = Link::new();
    let dump = peers::scratch_dir();
    let key_file = dump.path().join("ntpx-nts-keys");
    // A key made 7 s before a 10 s rotation period: due 3 s after ntpxd starts, not 10.
    let mut keys = KeyRing::generate();
    keys.newest_since -= 7;
    std::fs::write(&key_file, keys.to_text()).unwrap();
    let nts = nts(&format!("allow\nntsdumpdir {}\nntsrotate 10\n", dump.path().display()));
    let started = Instant::now();
    let ntpxd = Ntpxd::start(&link.server_ns, &nts.config);
    let rotated = peers::wait_for(Duration::from_secs(7), || {
        let text = std::fs::read_to_string(&key_file).unwrap_or_default();
        KeyRing::from_text(&text).is_ok_and(|read| read.newest_since != keys.newest_since)
    });
    let took = started.elapsed();
    eprintln!("a key 7 s old with ntsrotate 10 was rotated {took:.1?} after start");
    assert!(rotated, "not rotated within 7 s of start: the timer restarted at start");
    assert!(took > Duration::from_secs(2), "rotated at once, {took:?}");
    drop(ntpxd);

    // A non-ASCII character in a key: an error naming the file and the line, not a panic.
    let bad = format!("since 1\n0000000a 0é{}\n", &"00".repeat(31)[1..]);
    std::fs::write(&key_file, &bad).unwrap();
    let (status, log) = Ntpxd::start_expecting_failure(&link.server_ns, &nts.config);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains(&key_file.display().to_string()) && log.contains("line 2"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// Scrapes /metrics from `source`: the answer's status line and how long it took.
fn scrape_from(link: &Link, source: &str) -> (String, Duration) {
    link.client_ns.enter(|| {
        let started = Instant::now();
        let mut stream = client::tcp_connect_from(ip(source), server_at(9975)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ntpx\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.lines().next().unwrap_or("nothing").to_owned();
        let complete = answer.contains("ntp_server_received_packets");
        (if complete { status } else { format!("{status} (incomplete)") }, started.elapsed())
    })
}

#[test]
#[ignore = "needs root"]
fn metrics_answer_scrapes_while_slow_and_idle_peers_hold_connections() {
    require_root();
    let link = link_with_hostile_addresses();
    let config = format!(
        "local stratum 2\nallow\nmetricsaddress {SERVER_V4}:9975\ncmdallow {CLIENT_V4}\n\
         cmdallow {FLOODER_V4}\n"
    );
    let _ntpxd = Ntpxd::start(&link.server_ns, &config);
    let mut rows = Vec::new();
    let (status, took) = scrape_from(&link, CLIENT_V4);
    assert_eq!(status, "HTTP/1.1 200 OK");
    rows.push(Row {
        tried: "nothing".into(),
        got: "-".into(),
        legitimate: format!("{status} in {took:.1?}"),
    });

    // Not allowed: closed at once, nothing read.
    let (refused, refused_took) = scrape_from(&link, DENIED_V4);
    assert_eq!(refused, "nothing (incomplete)");
    rows.push(Row {
        tried: format!("scrape from {DENIED_V4} (not cmdallow'ed)"),
        got: format!("closed after {refused_took:.1?}, nothing"),
        legitimate: "-".into(),
    });

    // A byte a second, and 30 idle connections, from an allowed host, all at once.
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            link.client_ns.enter(|| {
                let mut stream = client::tcp_connect_from(ip(FLOODER_V4), server_at(9975)).unwrap();
                let started = Instant::now();
                for byte in b"GET /metrics HTTP/1.1\r\nHost: slowly\r\n\r\n" {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    // Closed by the server: the next write fails, or the read ends.
                    stream.set_nonblocking(true).unwrap();
                    if matches!(stream.read(&mut [0u8; 64]), Ok(0)) {
                        break;
                    }
                    stream.set_nonblocking(false).unwrap();
                }
                started.elapsed()
            })
        });
        let idle: Vec<TcpStream> = link.client_ns.enter(|| {
            (0..30)
                .map(|_| client::tcp_connect_from(ip(FLOODER_V4), server_at(9975)).unwrap())
                .collect()
        });
        std::thread::sleep(Duration::from_millis(300));
        let (status, took) = scrape_from(&link, CLIENT_V4);
        let slow_held = slow.join().unwrap();
        drop(idle);
        rows.push(Row {
            tried: format!("{FLOODER_V4}: a byte a second, and 30 idle connections"),
            got: format!("the slow one closed after {slow_held:.1?}"),
            legitimate: format!("{status} in {took:.1?}"),
        });
        print_table("/metrics (cmdallow)", &rows);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
        assert!(slow_held < Duration::from_secs(4), "the slow peer held on {slow_held:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// chronyc's sockets

/// Debian's chronyc run as `user` (uid and gid; `groups` beside), against the socket at `path`.
fn chronyc_as(
    netns: &ntpx_tests::netns::Netns,
    ids: Option<(u32, &str)>,
    socket: &Path,
    args: &[&str],
) -> String {
    let mut command = match ids {
        Some((uid, groups)) => {
            let mut command = netns.command("setpriv");
            command.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                format!("--groups={groups}"),
                "chronyc".into(),
            ]);
            command
        }
        None => netns.command("chronyc"),
    };
    let output = command.arg("-h").arg(socket).arg("-n").args(args).output().expect("chronyc");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
#[ignore = "needs root"]
fn chronycs_socket_trusts_its_senders_user_and_only_a_closed_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let link = Link::new();
    // The socket's directory as chronyd makes its own: 0770, root's group may enter.
    let dir = peers::scratch_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let socket = dir.path().join("chronyd.sock");
    let config = "local stratum 2\nallow\ncmdport 0\n";
    let ntpxd =
        Ntpxd::start(&link.server_ns, &format!("{config}chronycsocket {}\n", socket.display()));
    let mut rows = Vec::new();
    let allowed = || ntpxd.ntpxc(&["accheck", CLIENT_V4]).unwrap() == "208 Access allowed\n";

    // nobody, a member of ntpxd's group (root's here): reports, but no changes.
    let nobody = Some((65534, "0"));
    let tracking = chronyc_as(&link.server_ns, nobody, &socket, &["tracking"]);
    assert!(tracking.contains("Stratum         : 2"), "{tracking}");
    let deny = chronyc_as(&link.server_ns, nobody, &socket, &["deny", "all"]);
    assert!(deny.contains("501 Not authorised"), "{deny}");
    assert!(allowed(), "nobody's deny all was carried out");
    rows.push(Row {
        tried: "nobody (group root): chronyc tracking; deny all".into(),
        got: "the report; 501 Not authorised".into(),
        legitimate: "still allowed".into(),
    });
    let deny = chronyc_as(&link.server_ns, None, &socket, &["deny", CLIENT_V4]);
    assert!(deny.contains("200 OK") && !allowed(), "root's deny: {deny}");
    chronyc_as(&link.server_ns, None, &socket, &["allow", CLIENT_V4]);
    assert!(allowed());

    // A deny from a socket without a name (no reply can reach it): nothing done.
    let deny_subnet =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/chronyc/deny-subnet"))
            .unwrap();
    let unnamed = UnixDatagram::unbound().unwrap();
    unnamed.send_to(&deny_subnet, &socket).unwrap();
    let dropped = peers::wait_for(Duration::from_secs(5), || {
        ntpxd.serverstats().command_packets_dropped >= 1
    });
    assert!(dropped && allowed(), "a deny from an unnamed socket was carried out");
    rows.push(Row {
        tried: "deny 10.77.0.0/24 from a socket without a name".into(),
        got: "nothing (counted as a dropped command)".into(),
        legitimate: "still allowed".into(),
    });

    // A peer that sends and never reads: ntpxd's replies are dropped, chronyc still answered.
    let flooder = UnixDatagram::bind(dir.path().join("flooder.sock")).unwrap();
    let tracking_request = peers::chronyc_tracking_request();
    flooder.set_nonblocking(true).unwrap();
    let mut sent = 0;
    for _ in 0..2000 {
        if flooder.send_to(&tracking_request, &socket).is_ok() {
            sent += 1;
        }
    }
    let started = Instant::now();
    let tracking = chronyc_as(&link.server_ns, None, &socket, &["tracking"]);
    let took = started.elapsed();
    assert!(tracking.contains("Stratum         : 2"), "{tracking}");
    assert!(took < Duration::from_secs(2), "chronyc took {took:?}");
    rows.push(Row {
        tried: format!("{sent} tracking requests, never reading a reply"),
        got: "its queue filled; the rest not sent".into(),
        legitimate: format!("chronyc tracking answered in {took:.1?}"),
    });
    drop(flooder);
    drop(ntpxd);

    // A directory others can enter: no socket there, and a warning naming it and its mode.
    let open = peers::scratch_dir();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open_socket = open.path().join("chronyd.sock");
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!("{config}chronycsocket {}\n", open_socket.display()),
    );
    let log = ntpxd.process.log();
    assert!(!open_socket.exists(), "a socket in a directory others can enter");
    let named = format!("{} is mode 0755", open.path().display());
    assert!(log.contains(&named), "{log}");
    rows.push(Row {
        tried: "chronycsocket in a directory of mode 0755".into(),
        got: format!("no socket: \"{named}: others can reach the socket\""),
        legitimate: "-".into(),
    });
    print_table("chronyc's Unix socket", &rows);
}

#[test]
#[ignore = "needs root"]
fn chronycs_udp_port_and_ntp_answer_denied_hosts_and_garbage_with_nothing() {
    require_root();
    let link = link_with_hostile_addresses();
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "local stratum 2\nallow {CLIENT_V4}\nxdp veth-srv native\nbindcmdaddress {SERVER_V4}\n\
             cmdallow {CLIENT_V4}\n"
        ),
    );
    let tracking = peers::chronyc_tracking_request();
    let udp = |source: &str, port: u16, bytes: &[u8]| -> Option<usize> {
        link.client_ns.enter(|| {
            let socket = UdpSocket::bind((source, 0)).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            socket.send_to(bytes, server_at(port)).unwrap();
            socket.recv(&mut [0u8; 2048]).ok()
        })
    };
    let mut rows = Vec::new();
    let before = ntpxd.serverstats();
    let cases: [(&str, &str, u16, Vec<u8>, bool); 5] = [
        ("chronyc tracking over UDP", CLIENT_V4, 323, tracking.clone(), true),
        ("chronyc tracking over UDP", DENIED_V4, 323, tracking.clone(), false),
        ("1400 bytes of garbage to port 323", CLIENT_V4, 323, vec![0xa5; 1400], false),
        ("chronyc tracking, 12 bytes of it", CLIENT_V4, 323, tracking[..12].to_vec(), false),
        (
            "an NTP request",
            DENIED_V4,
            123,
            {
                let request = ntp_common::wire::NtpHeader::client_request(
                    4,
                    6,
                    ntp_common::wire::NtpTimestamp::from_fixed(7),
                );
                request.to_bytes().to_vec()
            },
            false,
        ),
    ];
    for (tried, source, port, bytes, answered) in cases {
        let got = udp(source, port, &bytes);
        rows.push(Row {
            tried: format!("{tried} from {source}"),
            got: got.map_or("nothing".into(), |n| format!("{n} bytes")),
            legitimate: "-".into(),
        });
        assert_eq!(got.is_some(), answered, "{tried} from {source}");
        if let Some(length) = got {
            assert!(length <= bytes.len(), "a reply longer than the request");
        }
    }
    let stats = ntpxd.serverstats();
    print_table("chronyc's UDP port and NTP, from denied hosts", &rows);
    // The four datagrams, and the control request that read these counts.
    assert_eq!(stats.command_packets_received - before.command_packets_received, 4 + 1);
    assert_eq!(stats.command_packets_dropped - before.command_packets_dropped, 3);
    assert_eq!(stats.kernel.dropped_denied - before.kernel.dropped_denied, 1);
}

// ---------------------------------------------------------------------------------------------
// Descriptors and ntpxc's socket

/// The CPU time ntpxd (process `pid`) has used, user and system.
fn cpu_time(pid: nix::unistd::Pid) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

fn open_descriptors(pid: nix::unistd::Pid) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

#[test]
#[ignore = "needs root"]
fn out_of_descriptors_the_doors_rest_instead_of_spinning_and_ntp_is_still_served() {
    require_root();
    let link = Link::new();
    let nts = nts("allow\nxdp veth-srv native\n");
    // Started with a soft limit of 64 under a hard one of 4096: ntpxd raises it.
    let ntpxd = Ntpxd::start_under(&link.server_ns, &nts.config, &["prlimit", "--nofile=64:4096"]);
    let pid = ntpxd.process.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    assert!(open_files.split_whitespace().nth(3) == Some("4096"), "{open_files}");
    assert!(ntpxd.process.log().contains("descriptors"), "{}", ntpxd.process.log());

    // Then only 4 more than it has open: NTS-KE connections exhaust them.
    let limit = open_descriptors(pid) + 4;
    let nofile = format!("--nofile={limit}:{limit}");
    ntpx_tests::netns::run("prlimit", &["--pid", &pid.to_string(), &nofile]);
    let flood: Vec<TcpStream> = link
        .client_ns
        .enter(|| (0..20).map(|_| TcpStream::connect(server_at(NTS_KE_PORT)).unwrap()).collect());
    let rested =
        peers::wait_for(Duration::from_secs(5), || ntpxd.serverstats().accept_backoffs > 0);
    assert!(rested, "no accept loop rested: {:?}", ntpxd.serverstats());
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let mut answered = 0;
    for _ in 0..10 {
        let source = SocketAddr::new(ip(CLIENT_V4), 0);
        let reply =
            link.client_ns.enter(|| client::query(source, server_at(123), Duration::from_secs(1)));
        answered += usize::from(reply.is_some());
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy = (cpu_time(pid) - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    let backoffs = ntpxd.serverstats().accept_backoffs;
    drop(flood);
    // The flood's sessions end (at most 2 s each), and key exchanges work again.
    let tls = client_tls(&nts.ca);
    let recovered = peers::wait_for(Duration::from_secs(10), || key_exchange(&link, &tls).is_ok());
    print_table(
        &format!("descriptors (limit {limit}, 4 above those open)"),
        &[Row {
            tried: "20 NTS-KE connections, held".into(),
            got: format!(
                "{backoffs} back-offs; ntpxd used {:.0}% of a core meanwhile",
                busy * 100.0
            ),
            legitimate: format!(
                "{answered} of 10 NTP requests answered; NTS-KE again: {recovered}"
            ),
        }],
    );
    assert!(busy < 0.3, "ntpxd used {:.0}% of a core while out of descriptors", busy * 100.0);
    assert_eq!(answered, 10, "NTP requests went unanswered");
    assert!(recovered, "no key exchange once the flood was gone");
}

#[test]
#[ignore = "needs root"]
fn ntpxc_peers_that_never_read_give_their_slots_back() {
    use std::os::unix::net::UnixStream;
    require_root();
    const CLIENTS: u32 = 20_000;
    let link = Link::new();
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!("local stratum 2\nallow\nclientlog entries {CLIENTS}\n"),
    );
    ntpxd.fill_client_table(CLIENTS);
    // Sixteen connections (every slot), each asking for a page of 8192 clients (over 1 MB of
    // JSON) and never reading it.
    let held: Vec<UnixStream> = (0..16)
        .map(|_| {
            let mut stream = UnixStream::connect(&ntpxd.socket).unwrap();
            stream
                .write_all(
                    b"{\"command\":\"clients\",\"min_requests\":0,\"top\":null,\"reset\":false}\n",
                )
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = ntpxd.ntpxc(&["tracking"]);
    let started = Instant::now();
    let back = peers::wait_for(Duration::from_secs(15), || ntpxd.ntpxc(&["tracking"]).is_ok());
    let took = started.elapsed();
    print_table(
        "ntpxc's socket",
        &[Row {
            tried: "16 connections asking for 1 MB each, never reading".into(),
            got: format!("their slots back after {took:.1?}"),
            legitimate: format!(
                "ntpxc tracking refused at first ({}), then answered",
                refused.is_err()
            ),
        }],
    );
    assert!(back, "the slots were never given back");
    for stream in held {
        let _ = stream.shutdown(Shutdown::Both);
    }
    // Any --top, however large: the table's clients at most.
    let top = ntpxd.ntpxc(&["-c", "clients", "--top", "18446744073709551615"]).unwrap();
    // All but the few the LRU may evict early.
    assert!(top.lines().count() > CLIENTS as usize * 99 / 100, "{} listed", top.lines().count());
}
