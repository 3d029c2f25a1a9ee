//! ntpxd synchronised to upstream servers in their own namespace, serving a chronyd client
//! from XDP: stratum, reference ID, source states, losing sources, holdover, and the corrected
//! time. Everything runs with `-x`: no clock of this machine is touched.

use std::{net::SocketAddr, time::Duration};

use ntp_common::wire::{Leap, NtpHeader};
use ntpx_tests::{
    client,
    netns::{self, Link, UPSTREAM_V4, Upstreams},
    peers::{self, Chronyd, Ntpxd},
    require_root,
    upstream::OffsetServer,
};

fn chronyd_client(link: &Link) -> Chronyd {
    Chronyd::start(
        &link.client_ns,
        &format!("server {} iburst minpoll 0 maxpoll 0\n", netns::SERVER_V4),
    )
}

/// `ntpxc -c sources`: (state, address) of each source.
fn source_states(ntpxd: &Ntpxd) -> Vec<(String, String)> {
    ntpxd
        .ntpxc(&["-c", "sources"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            Some(((*fields.get(1)?).to_owned(), (*fields.get(2)?).to_owned()))
        })
        .collect()
}

fn has_state(ntpxd: &Ntpxd, state: &str, address: &str) -> bool {
    source_states(ntpxd).iter().any(|(s, a)| s == state && a == address)
}

/// A request from the client's namespace, and when it left (Unix ns).
fn query_at(link: &Link) -> (u64, Option<NtpHeader>) {
    let (source, server) =
        (SocketAddr::new(link.client.v4, 0), SocketAddr::new(link.server.v4, 123));
    link.client_ns.enter(|| {
        let sent = ntp_userspace::sys::clock::realtime_ns();
        (sent, client::query(source, server, Duration::from_secs(1)))
    })
}

fn query(link: &Link) -> Option<NtpHeader> {
    query_at(link).1
}

#[test]
#[ignore = "needs root"]
fn ntpxd_follows_a_pool_of_two_chronyds_holds_over_and_then_serves_unsynchronised() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let mut first = Chronyd::start(
        &upstreams.ns,
        &format!("local stratum 1\nallow\nbindaddress {}\n", UPSTREAM_V4[0]),
    );
    let mut second = Chronyd::start(
        &upstreams.ns,
        &format!("local stratum 1\nallow\nbindaddress {}\n", UPSTREAM_V4[1]),
    );
    // Both upstreams under one pool name, resolved from the namespace's hosts file.
    link.server_ns.set_hosts(&format!(
        "{} upstreams.test\n{} upstreams.test\n",
        UPSTREAM_V4[0], UPSTREAM_V4[1]
    ));
    // A clock error bound of 5 ms/s against a maximum distance of 50 ms: about 10 s of
    // holdover once every source is gone.
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        "pool upstreams.test maxsources 2 iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\n\
         xdp veth-srv native\nmaxdistance 0.05\nmaxclockerror 5000\n",
    );
    let both = peers::wait_for(Duration::from_secs(30), || {
        let states = source_states(&ntpxd);
        let mut symbols: Vec<&str> = states.iter().map(|(s, _)| s.as_str()).collect();
        symbols.sort();
        symbols == ["*", "+"]
    });
    assert!(
        both,
        "ntpxd did not select and combine both:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    let tracking = ntpxd.ntpxc(&["tracking"]).unwrap();
    assert_eq!(peers::report_value(&tracking, "Stratum"), Some("2"), "{tracking}");
    assert_eq!(peers::report_value(&tracking, "Leap status"), Some("Normal"), "{tracking}");

    let client = chronyd_client(&link);
    assert!(
        peers::wait_for(Duration::from_secs(30), || client.selects(netns::SERVER_V4)),
        "the client did not select ntpxd:\n{}",
        client.chronyc(&["sources"])
    );
    let ntpdata = client.chronyc(&["ntpdata", netns::SERVER_V4]);
    eprintln!("the client's view of ntpxd:\n{ntpdata}");
    assert_eq!(peers::report_value(&ntpdata, "Stratum"), Some("2"), "{ntpdata}");
    let reference_ids: Vec<String> = UPSTREAM_V4
        .iter()
        .map(|a| format!("{:08X}", u32::from(a.parse::<std::net::Ipv4Addr>().unwrap())))
        .collect();
    let reference_id = peers::report_value(&ntpdata, "Reference ID").unwrap_or_default();
    assert!(
        reference_ids.iter().any(|id| reference_id.starts_with(id.as_str())),
        "refid {reference_id}, not an upstream's"
    );
    assert!(ntpxd.serverstats().kernel.answered > 0, "the client was not answered from XDP");

    // One upstream gone: the other carries on as the system peer.
    first.process.stop();
    let switched = peers::wait_for(Duration::from_secs(30), || {
        has_state(&ntpxd, "*", UPSTREAM_V4[1]) && has_state(&ntpxd, "?", UPSTREAM_V4[0])
    });
    assert!(
        switched,
        "ntpxd did not carry on with the second upstream:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    let reply = query(&link).expect("a reply with one upstream left");
    assert_eq!((reply.leap, reply.stratum), (Leap::NoWarning, 2));

    // Both gone: holdover, then unsynchronised.
    second.process.stop();
    let holding = query(&link).expect("a reply in holdover");
    assert_eq!((holding.leap, holding.stratum), (Leap::NoWarning, 2), "holdover ended at once");
    let unsynchronised = peers::wait_for(Duration::from_secs(40), || {
        query(&link).is_some_and(|reply| reply.leap == Leap::Unsynchronised && reply.stratum == 0)
    });
    assert!(
        unsynchronised,
        "clients never got LI=3:\n{}",
        ntpxd.ntpxc(&["tracking"]).unwrap_or_default()
    );
    let tracking = ntpxd.ntpxc(&["tracking"]).unwrap();
    assert_eq!(
        peers::report_value(&tracking, "Leap status"),
        Some("Not synchronised"),
        "{tracking}"
    );
}

#[test]
#[ignore = "needs root"]
fn an_upstream_20_ms_ahead_makes_xdp_serve_time_20_ms_ahead() {
    require_root();
    const AHEAD_NS: i64 = 20_000_000;
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let upstream_address = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
    let _upstream = OffsetServer::start(&upstreams.ns, upstream_address, AHEAD_NS);
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!(
            "server {} iburst minpoll 0 maxpoll 0\nallow 10.77.0.0/24\nxdp veth-srv native\n",
            UPSTREAM_V4[0]
        ),
    );
    assert!(
        peers::wait_for(Duration::from_secs(30), || has_state(&ntpxd, "*", UPSTREAM_V4[0])),
        "ntpxd did not select the upstream:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
    // `noselect`: a chronyd that synchronised to ntpxd would absorb the offset into its own
    // time (with -x too), and measure zero from then on.
    let client = Chronyd::start(
        &link.client_ns,
        &format!("server {} iburst minpoll 0 maxpoll 0 noselect\n", netns::SERVER_V4),
    );
    let measured =
        peers::wait_for(Duration::from_secs(30), || client.valid_replies(netns::SERVER_V4) >= 8);
    assert!(measured, "the client got no replies:\n{}", client.chronyc(&["ntpdata"]));
    let offset = client.median_offset(netns::SERVER_V4, 5);
    eprintln!(
        "the client measures ntpxd at {offset:+.9} s\n{}",
        ntpxd.ntpxc(&["tracking"]).unwrap()
    );
    assert!((offset.abs() - 0.020).abs() < 50e-6, "offset {offset:+.9} s, not 20 ms within 50 us");
    // The sign, from a plain exchange: ntpxd's time is ahead of this machine's clock.
    let (sent, reply) = query_at(&link);
    let transmit = reply.expect("a reply").transmit_timestamp;
    let ahead = transmit.to_unix_nanos_near(sent as i64) - sent as i64;
    assert!((19_000_000..25_000_000).contains(&ahead), "ntpxd's time is {ahead} ns from the clock");
    let stats = ntpxd.serverstats();
    assert!(stats.kernel.answered > 0, "nothing answered from XDP");
    assert_eq!(stats.slow_path.answered, 0, "the slow path answered: {stats:?}");
}

#[test]
#[ignore = "needs root"]
fn a_forged_datagram_before_each_reply_does_not_stop_ntpxd_from_synchronising() {
    require_root();
    let link = Link::new();
    let upstreams = Upstreams::new(&link.server_ns);
    let upstream_address = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
    let _upstream = OffsetServer::start_with_forgeries(&upstreams.ns, upstream_address, 0);
    let ntpxd = Ntpxd::start(
        &link.server_ns,
        &format!("server {} iburst minpoll 0 maxpoll 0\n", UPSTREAM_V4[0]),
    );
    assert!(
        peers::wait_for(Duration::from_secs(30), || has_state(&ntpxd, "*", UPSTREAM_V4[0])),
        "ntpxd did not select the upstream:\n{}",
        ntpxd.ntpxc(&["sources"]).unwrap_or_default()
    );
}
