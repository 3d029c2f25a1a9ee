//! Two ntpxd behind one anycast address on real BIRDs (tests/src/fleet.rs): each announces the
//! address only while fit, a client behind the router is answered by whichever is, and nothing
//! keeps announcing a server that lost its time, stopped or was killed. Everything with `-x`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ntpx_tests::{
    fleet::{ANYCAST_V4, Fleet, Member, Poller, Prometheus},
    peers::{self, Chronyd, Ntpxd},
    require_root,
    upstream::OffsetServer,
};

/// A fleet member's ntpxd: its upstream on the router, the service address announced once
/// fit for 2 s, unfit past 20 ms of root distance (5 ms/s of error growth: 4 s of holdover);
/// run as `nobody` with only the capabilities it keeps (CAP_NET_ADMIN for the addresses).
fn config(member: &Member) -> String {
    format!(
        "server {router} iburst minpoll 0 maxpoll 0\nallow\nxdp {} native\nmaxclockerror 5000\n\
         announce {ANYCAST_V4} maxdistance 0.02 holddown 2\n\
         metricsaddress {}:9975\ncmdallow {router}\nuser nobody\n",
        member.interface,
        member.address,
        router = member.router_address,
    )
}

fn upstream(fleet: &Fleet, member: &Member) -> OffsetServer {
    let address = SocketAddr::new(member.router_address.parse().unwrap(), 123);
    OffsetServer::start(&fleet.router, address, 0)
}

fn running(server: &Option<Ntpxd>) -> &Ntpxd {
    server.as_ref().expect("a running ntpxd")
}

fn announced(ntpxd: &Ntpxd) -> bool {
    ntpxd.ntpxc(&["-c", "announcements"]).is_ok_and(|rows| rows.contains(",true,"))
}

#[test]
#[ignore = "needs root"]
fn a_fleet_behind_one_address_announces_only_what_is_fit_to_serve() {
    require_root();
    let fleet = Fleet::new();
    let [first, second] = &fleet.members;
    let mut upstreams = [Some(upstream(&fleet, first)), Some(upstream(&fleet, second))];
    let mut servers = [
        Some(Ntpxd::start(&first.ns, &config(first))),
        Some(Ntpxd::start(&second.ns, &config(second))),
    ];
    let poller = Poller::start(&fleet);
    let targets = [first, second].map(|m| format!("{}:9975", m.address));
    let prometheus = Prometheus::start(&fleet, &targets);

    // Both synchronise, announce, and the router spreads the address over both.
    let started = Instant::now();
    let both = fleet.wait_for_next_hops(&[first.address, second.address], Duration::from_secs(60));
    assert!(
        both.is_some(),
        "not both announced: {:?}\n{}\n{}\n{}",
        fleet.next_hops(),
        fleet.bird_state(),
        running(&servers[0]).ntpxc(&["announcements"]).unwrap_or_default(),
        running(&servers[1]).ntpxc(&["announcements"]).unwrap_or_default()
    );
    eprintln!("both announced {:.1} s after start", started.elapsed().as_secs_f64());
    assert!(peers::wait_for(Duration::from_secs(10), || poller.last_all(10, true)));
    let report = running(&servers[0]).ntpxc(&["announcements"]).unwrap();
    assert!(report.contains(ANYCAST_V4) && report.contains("yes"), "{report}");
    // A chronyd client behind the router synchronises to the service address.
    let chronyd =
        Chronyd::start(&fleet.client, &format!("server {ANYCAST_V4} iburst minpoll 0 maxpoll 0\n"));
    let selected = peers::wait_for(Duration::from_secs(30), || chronyd.selects(ANYCAST_V4));
    assert!(selected, "chronyd did not select the fleet:\n{}", chronyd.chronyc(&["sources"]));
    // Prometheus scrapes both, and sees both announcing.
    let scraped = peers::wait_for(Duration::from_secs(30), || {
        let up = prometheus.query("sum(up) == 2 and sum(ntpx_announced) == 2");
        up.contains("\"result\":[{")
    });
    assert!(scraped, "Prometheus: {}\n{}", prometheus.query("up"), prometheus.process.log());
    assert!(
        running(&servers[0]).serverstats().kernel.answered > 0
            || running(&servers[1]).serverstats().kernel.answered > 0
    );

    // The first loses its upstream: withdrawn once its distance passes the bound, the client
    // answered by the second throughout.
    let lost = Instant::now();
    upstreams[0] = None;
    let withdrawn = fleet.wait_for_next_hops(&[second.address], Duration::from_secs(30));
    let withdrawn = withdrawn.expect("the first server was never withdrawn");
    eprintln!("upstream lost: withdrawn after {:.1} s", withdrawn.as_secs_f64());
    let why = running(&servers[0]).ntpxc(&["announcements"]).unwrap();
    assert!(why.contains("root distance") || why.contains("not synchronised"), "{why}");
    std::thread::sleep(Duration::from_secs(2));
    let (sent, answered) = poller.since(lost);
    eprintln!("upstream lost: {answered} of {sent} polls answered");
    assert!(sent - answered <= 2, "{answered} of {sent} answered");
    // Its upstream back: announced again only after the hold-down.
    upstreams[0] = Some(upstream(&fleet, first));
    let back = fleet.wait_for_next_hops(&[first.address, second.address], Duration::from_secs(30));
    eprintln!(
        "upstream back: announced again after {:.1} s",
        back.expect("not back").as_secs_f64()
    );

    // SIGTERM: withdrawn before it stops answering.
    let stopping = Instant::now();
    servers[0].as_mut().unwrap().process.stop();
    let withdrawn = fleet.wait_for_next_hops(&[second.address], Duration::from_secs(2));
    assert!(withdrawn.is_some(), "still announced after a clean stop: {:?}", fleet.next_hops());
    std::thread::sleep(Duration::from_secs(2));
    let (sent, answered) = poller.since(stopping);
    eprintln!("SIGTERM: {answered} of {sent} polls answered");
    assert_eq!(sent, answered, "polls lost in a clean stop");

    // Started again: announced only once synchronised and fit for the hold-down.
    let restarted = Instant::now();
    servers[0] = Some(Ntpxd::start(&first.ns, &config(first)));
    assert!(!announced(running(&servers[0])), "announced before it was synchronised");
    let back = fleet.wait_for_next_hops(&[first.address, second.address], Duration::from_secs(30));
    let back = back.expect("the restarted server was not announced again");
    eprintln!("restart: announced {:.1} s after start", restarted.elapsed().as_secs_f64());
    assert!(back >= Duration::from_secs(2), "announced within the hold-down");

    // kill -9 of the second: nothing renews its address, which the kernel drops.
    let killed = Instant::now();
    servers[1].as_mut().unwrap().crash();
    let gone = fleet.wait_for_next_hops(&[first.address], Duration::from_secs(10));
    let gone = gone.expect("a killed server stayed announced");
    eprintln!("kill -9: withdrawn after {:.1} s", gone.as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));
    let (sent, answered) = poller.since(killed);
    eprintln!("kill -9: {answered} of {sent} polls answered");
    assert!(peers::wait_for(Duration::from_secs(5), || poller.last_all(5, true)));

    // Both unfit: nothing announced, and the client hears nothing rather than bad time.
    upstreams = [None, None];
    let none = fleet.wait_for_next_hops(&[], Duration::from_secs(30));
    assert!(none.is_some(), "still announced: {:?}", fleet.next_hops());
    assert!(peers::wait_for(Duration::from_secs(5), || poller.last_all(5, false)));
    drop(upstreams);
}

#[test]
#[ignore = "needs bird2 (cargo xtask setup)"]
fn the_shipped_bird_configuration_parses() {
    let config =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../ntp-userspace/doc/examples/bird-fleet.conf");
    let output =
        std::process::Command::new("bird").args(["-p", "-c", config]).output().expect("bird");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
#[ignore = "needs prometheus (cargo xtask setup)"]
fn the_shipped_prometheus_configuration_and_rules_pass_promtool() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../ntp-userspace/doc/examples");
    for args in [
        vec!["check", "config", "prometheus-fleet.yml"],
        vec!["test", "rules", "ntpx-alerts.test.yml"],
    ] {
        let output = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(examples)
            .output()
            .expect("promtool");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool {args:?}:\n{text}");
    }
}
