//! ntpxd as a stratum 1 server: reference clocks read from the real gpsd's shared memory, from
//! chrony's SOCK datagrams and from a shared-memory writer of the test's own, combined with a
//! network source, served to a chronyd client from XDP; held over when the device stops, and
//! start-up errors that name the line. Everything runs with `-x`. The shared-memory segments
//! are the machine's (SysV IPC is not per network namespace): gpsd's units (0 to 7) belong to
//! one test, and the test's own writers use units from 15 on, one each.

use std::{net::SocketAddr, time::Duration};

use ntp_common::wire::{Leap, NtpHeader};
use ntpx_tests::{
    client,
    gnss::{Gpsd, NmeaServer, ShmWriter, SockWriter, give_segment, remove_shm},
    netns::{self, Link, UPSTREAM_V4, Upstreams},
    peers::{self, Chronyd, Ntpxd, scratch_dir},
    require_root,
    upstream::OffsetServer,
};

/// `ntpxc -c sources`: (mode, state, name) of each source.
fn sources(ntpxd: &Ntpxd) -> Vec<(String, String, String)> {
    ntpxd
        .ntpxc(&["-c", "sources"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let field = |i: usize| fields.get(i).map(|f| (*f).to_owned());
            Some((field(0)?, field(1)?, field(2)?))
        })
        .collect()
}

fn has_state(ntpxd: &Ntpxd, state: &str, name: &str) -> bool {
    sources(ntpxd).iter().any(|(_, s, n)| s == state && n == name)
}

fn query(link: &Link) -> Option<NtpHeader> {
    let (source, server) =
        (SocketAddr::new(link.client.v4, 0), SocketAddr::new(link.server.v4, 123));
    link.client_ns.enter(|| client::query(source, server, Duration::from_secs(1)))
}

/// ntpxd's time minus this machine's clock, s: the median of `count` exchanges from the
/// client's namespace.
fn served_offset(link: &Link, count: usize) -> f64 {
    let (source, server) =
        (SocketAddr::new(link.client.v4, 0), SocketAddr::new(link.server.v4, 123));
    let mut offsets: Vec<f64> = (0..count)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            link.client_ns.enter(|| client::exchange(source, server, Duration::from_secs(1)))
        })
        .map(|exchange| exchange.offset)
        .collect();
    assert!(!offsets.is_empty(), "no replies");
    offsets.sort_by(f64::total_cmp);
    offsets[offsets.len() / 2]
}

/// gpsd's NMEA sentences arrive 20 ms after their second; gpsd's segment says so.
const NMEA_LAG: Duration = Duration::from_millis(20);

fn gps_config(offset: f64) -> String {
    // A clock error bound of 5 ms/s against a maximum distance of 50 ms: about 10 s of
    // holdover once the receiver is gone.
    format!(
        "refclock SHM 0 refid GPS poll 1 offset {offset}\nallow 10.77.0.0/24\n\
         xdp veth-srv native\nmaxdistance 0.05\nmaxclockerror 5000\n"
    )
}

#[test]
#[ignore = "needs root"]
fn gpsd_makes_ntpxd_a_stratum_1_server_that_holds_over_and_resynchronises() {
    require_root();
    remove_shm(0);
    remove_shm(1);
    let link = Link::new();
    let receiver = NmeaServer::start(&link.server_ns, NMEA_LAG);
    let mut gpsd = Gpsd::start(&link.server_ns, receiver.address);
    let started = std::time::Instant::now();
    let mut ntpxd = Ntpxd::start(&link.server_ns, &gps_config(0.0));
    let selected = peers::wait_for(Duration::from_secs(60), || has_state(&ntpxd, "*", "GPS"));
    assert!(
        selected,
        "ntpxd did not select gpsd's clock:\n{}\ngpsd:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default(),
        gpsd.process.log()
    );
    eprintln!("stratum 1 after {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(sources(&ntpxd)[0].0, "#", "a reference clock's mode");
    let tracking = ntpxd.ntpxc(&["tracking"]).unwrap();
    assert_eq!(peers::report_value(&tracking, "Stratum"), Some("1"), "{tracking}");
    assert_eq!(peers::report_value(&tracking, "Reference ID"), Some("47505300 (GPS)"));
    // Debian's chronyc, unmodified, sees it as chronyd's reference clock.
    let (chronyc_sources, ok) = ntpxd.chronyc(&["sources"]);
    assert!(ok && chronyc_sources.lines().any(|l| l.starts_with("#* GPS")), "{chronyc_sources}");

    let client = Chronyd::start(
        &link.client_ns,
        &format!("server {} iburst minpoll 0 maxpoll 0\n", netns::SERVER_V4),
    );
    assert!(
        peers::wait_for(Duration::from_secs(30), || client.selects(netns::SERVER_V4)),
        "the client did not select ntpxd:\n{}",
        client.chronyc(&["sources"])
    );
    let ntpdata = client.chronyc(&["ntpdata", netns::SERVER_V4]);
    assert_eq!(peers::report_value(&ntpdata, "Stratum"), Some("1"), "{ntpdata}");
    assert_eq!(peers::report_value(&ntpdata, "Reference ID"), Some("47505300 (GPS)"));
    assert!(ntpxd.serverstats().kernel.answered > 0, "the client was not answered from XDP");

    // The served time is gpsd's: the sentences' lag behind this machine's clock.
    let lagging = served_offset(&link, 9);
    eprintln!("served offset with gpsd's segment: {lagging:+.6} s");
    assert!((-0.060..-0.015).contains(&lagging), "served offset {lagging}");

    // Stopped: held over, then unsynchronised.
    gpsd.process.stop();
    let holding = query(&link).expect("a reply in holdover");
    assert_eq!((holding.leap, holding.stratum), (Leap::NoWarning, 1), "holdover ended at once");
    let stopped = std::time::Instant::now();
    let unsynchronised = peers::wait_for(Duration::from_secs(40), || {
        query(&link).is_some_and(|reply| reply.leap == Leap::Unsynchronised)
    });
    assert!(unsynchronised, "never unsynchronised:\n{}", ntpxd.ntpxc(&["tracking"]).unwrap());
    eprintln!("held over for {:.1} s", stopped.elapsed().as_secs_f64());
    assert!(stopped.elapsed() > Duration::from_secs(3), "no holdover");

    // Started again: synchronised again.
    let gpsd = Gpsd::start(&link.server_ns, receiver.address);
    let resynchronised = peers::wait_for(Duration::from_secs(40), || {
        query(&link).is_some_and(|reply| reply.leap == Leap::NoWarning && reply.stratum == 1)
    });
    assert!(
        resynchronised,
        "not synchronised again:\n{}\ngpsd:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap(),
        gpsd.process.log()
    );

    // `offset` moves the served time by itself.
    ntpxd.process.stop();
    let ntpxd = Ntpxd::start(&link.server_ns, &gps_config(0.25));
    assert!(
        peers::wait_for(Duration::from_secs(60), || has_state(&ntpxd, "*", "GPS")),
        "not selected with the offset:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    // Past the first poll's samples.
    std::thread::sleep(Duration::from_secs(4));
    let moved = served_offset(&link, 9);
    eprintln!("served offset with offset 0.25: {moved:+.6} s");
    // Within what gpsd's scheduling on a loaded machine adds to either measurement.
    assert!((moved - lagging - 0.25).abs() < 0.02, "moved by {} s", moved - lagging);
}

#[test]
#[ignore = "needs root"]
fn sock_samples_lead_a_server_source_and_a_clock_100_ms_off_is_a_falseticker() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let upstream = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
    let _upstream = OffsetServer::start(&upstreams.ns, upstream, 0);
    let dir = scratch_dir();
    let socket = dir.path().join("gnss.sock");
    let _sock = SockWriter::start(socket.clone(), 0.0);
    let _bad = ShmWriter::start(15, 0o600, Duration::from_millis(100));
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "refclock SOCK {} refid SOCK poll 1\nrefclock SHM 15 refid BAD poll 1\n\
             server {} iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\nxdp veth-srv native\n",
            socket.display(),
            UPSTREAM_V4[0]
        ),
    );
    let settled = peers::wait_for(Duration::from_secs(60), || {
        has_state(&ntpxd, "*", "SOCK") && has_state(&ntpxd, "x", "BAD")
    });
    assert!(settled, "not as expected:\n{}", ntpxd.ntpxc(&["sources"]).unwrap_or_default());
    let listed = sources(&ntpxd);
    eprintln!("{}", ntpxd.ntpxc(&["sources"]).unwrap());
    let server = listed.iter().find(|(_, _, name)| name == UPSTREAM_V4[0]).expect("the server");
    assert_eq!(server.0, "^");
    // Not the peer, not a falseticker (its jitter, next to a clock's, may count as too variable).
    assert!(matches!(server.1.as_str(), "+" | "-" | "~"), "the server is {}", server.1);
    let reply = query(&link).expect("a reply");
    assert_eq!((reply.stratum, reply.reference_id.to_bits()), (1, *b"SOCK"));
    let offset = served_offset(&link, 5);
    assert!(offset.abs() < 0.002, "served offset {offset}");
    let (sourcestats, ok) = ntpxd.chronyc(&["sourcestats"]);
    assert!(ok && sourcestats.lines().any(|l| l.starts_with("BAD ")), "{sourcestats}");
    remove_shm(15);
}

/// chrony's SOCK sample: time (seconds, microseconds), offset, pulse, leap, magic; the rest
/// left zero.
fn sock_datagram(seconds: i64, microseconds: i64, offset: f64, leap: i32, magic: i32) -> Vec<u8> {
    let mut sample = Vec::with_capacity(40);
    sample.extend(seconds.to_ne_bytes());
    sample.extend(microseconds.to_ne_bytes());
    sample.extend(offset.to_ne_bytes());
    for field in [0i32, leap, 0, magic] {
        sample.extend(field.to_ne_bytes());
    }
    sample
}

#[test]
#[ignore = "needs root"]
fn garbage_on_the_sock_socket_never_becomes_a_sample_and_good_samples_still_do() {
    require_root();
    const MAGIC: i32 = 0x534f_434b;
    let link = Link::new();
    let dir = scratch_dir();
    let socket = dir.path().join("gnss.sock");
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!("refclock SOCK {} refid SOCK poll 0\nallow 10.77.0.0/24\n", socket.display()),
    );
    let now = || ntp_userspace::sys::clock::realtime_ns() as i64;
    let good = || {
        let now = now();
        sock_datagram(now / 1_000_000_000, now % 1_000_000_000 / 1000, 0.0, 0, MAGIC)
    };
    let mut long = good();
    long.resize(1000, 0);
    // Each kind of garbage, and how to make one (some carry the current time).
    type Garbage<'a> = (&'static str, Box<dyn Fn() -> Vec<u8> + 'a>);
    let cases: Vec<Garbage<'_>> = vec![
        ("empty", Box::new(Vec::new)),
        ("one byte", Box::new(|| vec![0])),
        ("39 bytes", Box::new(move || good()[..39].to_vec())),
        ("41 bytes", Box::new(move || [good(), vec![0]].concat())),
        ("a good sample and more", Box::new(move || long.clone())),
        (
            "wrong magic",
            Box::new(move || {
                let mut d = good();
                d[36] ^= 1;
                d
            }),
        ),
        (
            "NaN offset",
            Box::new(move || sock_datagram(now() / 1_000_000_000, 0, f64::NAN, 0, MAGIC)),
        ),
        (
            "infinite offset",
            Box::new(move || sock_datagram(now() / 1_000_000_000, 0, f64::INFINITY, 0, MAGIC)),
        ),
        (
            "1e12 s offset",
            Box::new(move || sock_datagram(now() / 1_000_000_000, 0, 1e12, 0, MAGIC)),
        ),
        (
            "a million microseconds",
            Box::new(move || sock_datagram(now() / 1_000_000_000, 1_000_000, 0.0, 0, MAGIC)),
        ),
        (
            "negative microseconds",
            Box::new(move || sock_datagram(now() / 1_000_000_000, -1, 0.0, 0, MAGIC)),
        ),
        ("leap 7", Box::new(move || sock_datagram(now() / 1_000_000_000, 0, 0.0, 7, MAGIC))),
        (
            "not synchronised",
            Box::new(move || sock_datagram(now() / 1_000_000_000, 0, 0.0, 3, MAGIC)),
        ),
        ("seconds overflow", Box::new(move || sock_datagram(i64::MAX, 0, 0.0, 0, MAGIC))),
        ("seconds underflow", Box::new(move || sock_datagram(i64::MIN, 0, 0.0, 0, MAGIC))),
        (
            "an hour old",
            Box::new(move || sock_datagram(now() / 1_000_000_000 - 3600, 0, 0.0, 0, MAGIC)),
        ),
        (
            "an hour ahead",
            Box::new(move || sock_datagram(now() / 1_000_000_000 + 3600, 0, 0.0, 0, MAGIC)),
        ),
    ];
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    // Every kind, over and over, for five polls of the clock (1 s each).
    for _ in 0..10 {
        for (label, datagram) in &cases {
            sender.send_to(&datagram(), &socket).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The readings that parse (stale, unsynchronised) count in the reach register, as a
    // device that delivers; none is a sample: the clock has none and is unusable.
    let samples = |ntpxd: &Ntpxd| {
        let stats = ntpxd.ntpxc(&["-c", "sourcestats"]).unwrap_or_default();
        stats
            .lines()
            .find(|line| line.starts_with("SOCK,"))
            .and_then(|line| line.split(',').nth(1)?.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no SOCK in {stats}"))
    };
    assert_eq!(samples(&ntpxd), 0, "a garbage datagram was taken as a sample");
    assert!(has_state(&ntpxd, "?", "SOCK"), "{}", ntpxd.ntpxc(&["sources"]).unwrap_or_default());
    // ntpxd carries on, and a good sample is taken at once.
    let _writer = SockWriter::start(socket.clone(), 0.0);
    let taken = peers::wait_for(Duration::from_secs(30), || has_state(&ntpxd, "*", "SOCK"));
    assert!(
        taken,
        "good samples after garbage:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    assert!(samples(&ntpxd) > 0);
}

#[test]
#[ignore = "needs root"]
fn a_reference_clock_that_cannot_be_opened_stops_the_start_with_its_line() {
    require_root();
    let link = Link::new();
    let dir = scratch_dir();
    let not_a_socket = dir.path().join("file");
    std::fs::write(&not_a_socket, "").unwrap();
    // A segment anyone may write, and one another user owns: either could set the time.
    let open_segment = ShmWriter::start(16, 0o666, Duration::ZERO);
    let foreign_segment = ShmWriter::start(17, 0o600, Duration::ZERO);
    give_segment(17, 65534);
    let cases = [
        ("refclock PPS /dev/pps9", "refclock PPS (PPS0): opening /dev/pps9"),
        ("refclock PHC /dev/ptp9", "refclock PHC (PHC0): reading /dev/ptp9"),
        (&format!("refclock SOCK {}", not_a_socket.display()), "exists and is not a socket"),
        ("refclock SHM 16", "has mode 0666"),
        ("refclock SHM 17", "owner uid 65534"),
        ("refclock GPS 0", "unknown refclock driver `GPS`"),
    ];
    for (line, message) in cases {
        let (status, log) = Ntpxd::start_expecting_failure(&link.server_ns, &format!("{line}\n"));
        assert!(!status.success(), "{line}: started");
        assert!(log.contains("ntpxd.conf:1:") && log.contains(message), "{line}:\n{log}");
    }
    // perm= says others may write: taken.
    let ntpxd = Ntpxd::start(&link.server_ns, "refclock SHM 16:perm=0666 refid OPEN poll 0\n");
    assert!(
        peers::wait_for(Duration::from_secs(20), || has_state(&ntpxd, "*", "OPEN")),
        "{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    // A reload with a bad refclock line is refused; the clock carries on.
    ntpxd.rewrite_config("refclock SHM 16:perm=0666 refid OPEN poll 0 frobnicate\n");
    let refused = ntpxd.ntpxc(&["reload"]);
    assert!(refused.as_ref().is_err_and(|e| e.contains("frobnicate")), "{refused:?}");
    assert!(has_state(&ntpxd, "*", "OPEN"));
    drop((open_segment, foreign_segment));
    remove_shm(16);
    remove_shm(17);
}
