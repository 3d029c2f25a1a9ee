//! ntpxd serving real clients across a veth pair between two network namespaces, with the XDP
//! program attached in native mode to the server's end.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use ntp_common::wire::{Leap, Mode};
use ntp_userspace::control::AttachMode;
use ntpx_tests::{
    client::{self, BackgroundLoad, PacketSocket},
    frame::{self, Frame},
    netns::{self, Link},
    peers::{self, Chronyd, Ntpxd},
    require_root,
};

/// The server's configuration: the test subnets allowed, except the top half of the IPv4 one.
fn ntpxd_config(xdp: bool) -> String {
    let xdp = if xdp { "xdp veth-srv native\n" } else { "" };
    format!("local stratum 10\nallow 10.77.0.0/24\ndeny 10.77.0.128/25\nallow fd77::/64\n{xdp}")
}

fn ntp_port(address: IpAddr) -> SocketAddr {
    SocketAddr::new(address, 123)
}

#[test]
#[ignore = "needs root"]
fn chronyd_selects_ntpxd_and_sees_the_kernels_response_times() {
    require_root();
    let link = Link::new();
    link.client_ns.ip(&["addr", "add", "10.77.0.3/24", "dev", "veth-cli"]);
    // The fast path alone: the client log's lookup of the client's record, cold as any client's
    // once a second, adds 1 to 2 us on this VM (the benchmark measures with it on).
    let config = format!("{}noclientlog\n", ntpxd_config(true));
    let ntpxd = Ntpxd::start(&link.server_ns, &config);
    let chronyd = Chronyd::start(
        &link.client_ns,
        &format!("server {} iburst minpoll 0 maxpoll 0\n", netns::SERVER_V4),
    );
    let selected = peers::wait_for(Duration::from_secs(30), || chronyd.selects(netns::SERVER_V4));
    assert!(selected, "chronyd did not select ntpxd:\n{}", chronyd.chronyc(&["sources"]));
    // A few more exchanges at the 1 s poll, so that the filter holds settled samples.
    chronyd.wait_for_replies(netns::SERVER_V4, 3, Duration::from_secs(10));
    let idle = chronyd.chronyc(&["ntpdata", netns::SERVER_V4]);
    // One reply's figures can carry a stall of this shared VM (one idle offset of over 10 us
    // failed a run): the medians of five are the server's.
    let idle_offset = chronyd.median_offset(netns::SERVER_V4, 5);
    // A public server is never idle: with other clients' requests keeping its packet path in
    // the CPU's caches, chronyd sees the program's own processing time.
    let load = BackgroundLoad::start(
        &link.client_ns.path(),
        "10.77.0.3".parse().unwrap(),
        ntp_port(link.server.v4),
        2_000,
    );
    chronyd.wait_for_replies(netns::SERVER_V4, 3, Duration::from_secs(10));
    let busy = chronyd.chronyc(&["ntpdata", netns::SERVER_V4]);
    // The same under load (32 us once, between the program's two clock reads).
    let busy_offset = chronyd.median_of(netns::SERVER_V4, "Offset", 5);
    let busy_response = chronyd.median_of(netns::SERVER_V4, "Response time", 5);
    let load_replies = load.stop();
    let seconds = |report: &str, label: &str| peers::report_seconds(report, label).expect(label);
    eprintln!(
        "chronyd's view of ntpxd: idle: median offset {idle_offset:+.9} s, response time \
         {:.9} s; busy ({load_replies} other replies): median offset {busy_offset:+.9} s, \
         median response time {busy_response:.9} s",
        seconds(&idle, "Response time"),
    );
    assert!(load_replies > 1000, "the background load got only {load_replies} replies");
    assert!(idle_offset.abs() < 10e-6, "median offset {idle_offset}:\n{idle}");
    assert!(busy_offset.abs() < 10e-6, "median offset {busy_offset}:\n{busy}");
    // Answered in the kernel: microseconds, where the socket path takes tens (chronyd 30-100).
    // How far under a microsecond is the benchmark's to say (`cargo xtask bench`): on this
    // shared VM the median has measured 0.7 to 1.01 us from one run to the next.
    assert!(busy_response < 5e-6, "median response time {busy_response}:\n{busy}");
    assert_eq!(seconds(&busy, "Stratum"), 10.0);
    let stats = ntpxd.serverstats();
    assert!(
        stats.kernel.answered > load_replies,
        "answered in the kernel: {}",
        stats.kernel.answered
    );
    assert_eq!(stats.slow_path.answered, 0, "nothing should reach the slow path: {stats:?}");
}

#[test]
#[ignore = "needs root"]
fn ntpdig_is_answered_over_ipv4_and_ipv6() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(true));
    for server in [netns::SERVER_V4, netns::SERVER_V6] {
        let output = link.client_ns.run("ntpdig", &["-t", "2", server]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(server) && text.contains("s10"), "ntpdig {server}: {text}");
    }
    let stats = ntpxd.serverstats();
    assert_eq!(stats.kernel.answered, 2, "{stats:?}");
    assert_eq!(stats.ntp_packets_received, 2);
    // ntpxc reads the same counters in chronyc's layout.
    let report = ntpxd.ntpxc(&["serverstats"]).expect("ntpxc serverstats");
    assert!(report.contains("NTP packets received       : 2\n"), "{report}");
    assert!(report.contains("NTP answered in kernel     : 2\n"), "{report}");
}

#[test]
#[ignore = "needs root"]
fn a_client_on_a_vlan_is_answered_with_its_tag() {
    require_root();
    let link = Link::new();
    let rx_vlan_offload = || {
        let features = link.server_ns.run("ethtool", &["-k", "veth-srv"]).stdout;
        String::from_utf8(features).unwrap().lines().any(|line| line == "rx-vlan-offload: on")
    };
    assert!(rx_vlan_offload(), "a veth starts with rx-vlan-offload on");
    let ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(true));
    // Off where the program attaches, so that a NIC leaves the tag in the frame. (A veth's
    // peer passes the tag beside the frame whatever this setting: tagged frames are written
    // here through a packet socket, with the tag in the frame, as such a NIC receives them.)
    assert!(!rx_vlan_offload(), "ntpxd left rx-vlan-offload on");
    let log = ntpxd.process.log();
    assert!(log.contains("turned rx-vlan-offload off"), "{log}");
    let mut request = Frame::request(link.client.v4, link.server.v4);
    request.src_mac = link.client.mac;
    request.dst_mac = link.server.mac;
    request.vlan = Some(0x2064); // priority 1, VLAN 100
    let bytes = request.build();
    let reply = link.client_ns.enter(|| {
        let socket = PacketSocket::open(&link.client.interface);
        socket.send(&bytes);
        socket.receive(Duration::from_secs(2), |frame| {
            let b = &frame.bytes;
            b.len() > 42
                && b[0..6] == link.client.mac
                && b[12..14] == [8, 0]
                && b[34..36] == [0, 123]
        })
    });
    let reply = reply.expect("no reply to the tagged request");
    assert_eq!(reply.vlan_tci, Some(0x2064), "the reply must carry the request's tag");
    // The kernel has taken the tag off: an untagged IPv4 frame remains.
    let ntp = &reply.bytes[14 + 20 + 8..];
    let header = ntp_common::wire::NtpHeader::from_bytes(ntp[..48].try_into().unwrap());
    assert_eq!((header.mode, header.stratum), (Mode::Server, 10));
    assert_eq!(header.origin_timestamp.to_fixed(), 0xe000_0000_1234_5678);
    assert!(frame::udp_checksum_is_valid(link.server.v4, link.client.v4, &reply.bytes[34..]));
    assert_eq!(ntpxd.serverstats().kernel.answered, 1);
}

#[test]
#[ignore = "needs root"]
fn a_denied_source_gets_nothing() {
    require_root();
    let link = Link::new();
    link.client_ns.ip(&["addr", "add", "10.77.0.200/24", "dev", "veth-cli"]);
    let ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(true));
    let server = ntp_port(link.server.v4);
    let (allowed, denied) = link.client_ns.enter(|| {
        let allowed = client::query("10.77.0.2:0".parse().unwrap(), server, Duration::from_secs(2));
        let denied =
            client::query("10.77.0.200:0".parse().unwrap(), server, Duration::from_secs(2));
        (allowed, denied)
    });
    assert!(allowed.is_some(), "the allowed source got no reply");
    assert!(denied.is_none(), "the denied source got a reply");
    let stats = ntpxd.serverstats();
    assert_eq!((stats.kernel.answered, stats.kernel.dropped_denied), (1, 1), "{stats:?}");
    assert_eq!(stats.slow_path.received + stats.slow_path.denied, 0);
}

#[test]
#[ignore = "needs root"]
fn the_slow_path_serves_without_xdp() {
    require_root();
    let link = Link::new();
    link.client_ns.ip(&["addr", "add", "10.77.0.201/24", "dev", "veth-cli"]);
    let ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(false));
    let (v4, v6, denied) = link.client_ns.enter(|| {
        (
            client::query(
                SocketAddr::new(link.client.v4, 0),
                ntp_port(link.server.v4),
                Duration::from_secs(2),
            ),
            client::query(
                SocketAddr::new(link.client.v6, 0),
                ntp_port(link.server.v6),
                Duration::from_secs(2),
            ),
            client::query(
                "10.77.0.201:0".parse().unwrap(),
                ntp_port(link.server.v4),
                Duration::from_secs(2),
            ),
        )
    });
    for reply in [v4.expect("no IPv4 reply"), v6.expect("no IPv6 reply")] {
        assert_eq!((reply.mode, reply.stratum, reply.leap), (Mode::Server, 10, Leap::NoWarning));
    }
    assert!(denied.is_none(), "the slow path answered a denied source");
    let stats = ntpxd.serverstats();
    assert_eq!(
        (stats.slow_path.answered, stats.slow_path.denied, stats.kernel.answered),
        (2, 1, 0),
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_stale_state_sends_requests_to_the_slow_path() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(true));
    // A stopped daemon stops refreshing the kernel's state; after its freshness deadline the
    // program passes requests on, and they wait in the socket until the daemon runs again.
    ntpxd.process.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let probe = |timeout| {
        link.client_ns.enter(|| {
            client::query_waiting(
                SocketAddr::new(link.client.v4, 0),
                ntp_port(link.server.v4),
                timeout,
                || ntpxd.process.signal(Signal::SIGCONT),
            )
        })
    };
    // Answered from XDP until the deadline (about 3 s); the first request past it waits for
    // the slow path, which answers once ntpxd runs again.
    let mut answered_in_kernel = 0;
    let reply = loop {
        assert!(stopped.elapsed() < Duration::from_secs(10), "the state never went stale");
        match probe(Duration::from_millis(300)) {
            (reply, false) => {
                reply.expect("answered from XDP");
                answered_in_kernel += 1;
            }
            (reply, true) => break reply,
        }
    };
    let reply = reply.expect("the slow path did not answer");
    assert_eq!(reply.stratum, 10);
    let stats = ntpxd.serverstats();
    assert_eq!(stats.kernel.passed_stale, 1, "{stats:?}");
    assert_eq!(stats.slow_path.answered, 1, "{stats:?}");
    assert_eq!(stats.kernel.answered, answered_in_kernel, "{stats:?}");
}

#[test]
#[ignore = "needs root"]
fn native_xdp_falls_back_to_generic_and_a_missing_interface_is_an_error() {
    require_root();
    let netns = netns::Netns::new("attach");
    // A bridge has no native XDP support.
    netns.ip(&["link", "add", "br-ntpx", "type", "bridge"]);
    netns.ip(&["link", "set", "br-ntpx", "up"]);
    let ntpxd = Ntpxd::start(&netns, "local stratum 10\nallow\nxdp br-ntpx native\n");
    let stats = ntpxd.serverstats();
    assert_eq!(stats.xdp.len(), 1);
    assert_eq!(stats.xdp[0].mode, AttachMode::Generic, "{stats:?}");
    assert!(ntpxd.process.log().contains("native XDP is not available"), "{}", ntpxd.process.log());
    drop(ntpxd);
    let (status, log) =
        Ntpxd::start_expecting_failure(&netns, "local stratum 10\nallow\nxdp no-such0\n");
    assert!(!status.success());
    assert!(log.contains("cannot attach XDP to no-such0: there is no such interface"), "{log}");
}

#[test]
#[ignore = "needs root"]
fn a_client_log_the_kernel_cannot_allocate_is_refused_at_start_with_the_reason() {
    require_root();
    let netns = netns::Netns::new("biglog");
    // 4 * 10^9 clients would take about 400 GiB of kernel memory.
    let (status, log) = Ntpxd::start_expecting_failure(
        &netns,
        "local stratum 10\nallow\nclientlog entries 4000000000\n",
    );
    assert!(!status.success());
    assert!(log.contains("the kernel cannot allocate a client log of 4000000000 clients"), "{log}");
}

#[test]
#[ignore = "needs root"]
fn started_as_root_ntpxd_serves_as_its_user_with_only_the_capabilities_it_uses() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, &format!("{}user nobody\n", ntpxd_config(true)));
    // As installed, the configuration is readable by all (a reload rereads it as nobody).
    let dir = ntpxd.config_file.parent().unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", ntpxd.process.pid())).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|line| line.strip_prefix(name)).map(str::trim).unwrap_or("")
    };
    assert!(field("Uid:").split_whitespace().all(|id| id == "65534"), "{status}");
    assert!(field("Gid:").split_whitespace().all(|id| id == "65534"), "{status}");
    // Under -x it adjusts no clock: at most CAP_BPF (39), where the kernel wants it for map
    // operations (before 6.5 with unprivileged BPF disabled).
    let allowed = 1u64 << 39;
    for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        let value = u64::from_str_radix(field(set), 16).expect(set);
        assert_eq!(value & !allowed, 0, "{set} in\n{status}");
    }
    let source = SocketAddr::new(link.client.v4, 0);
    let answered = || {
        link.client_ns
            .enter(|| client::query(source, ntp_port(link.server.v4), Duration::from_secs(1)))
            .is_some()
    };
    // Serving from XDP, run-time rules, reports and a reload all still work.
    assert!(answered(), "no answer");
    ntpxd.ntpxc(&["deny", &link.client.v4.to_string()]).unwrap();
    assert!(!answered(), "the run-time deny was not applied");
    ntpxd.rewrite_config(&format!("{}user nobody\n", ntpxd_config(true)));
    assert_eq!(ntpxd.ntpxc(&["reload"]).unwrap(), "200 OK\n");
    assert!(answered(), "the reload did not restore the configured rules");
    let clients = ntpxd.ntpxc(&["clients"]).unwrap();
    assert!(clients.contains(&link.client.v4.to_string()), "{clients}");
    let stats = ntpxd.serverstats();
    assert!(stats.kernel.answered >= 2, "{stats:?}");
    let log = ntpxd.process.log();
    let dropped = log.lines().find(|line| line.contains("privileges dropped"));
    eprintln!("{}", dropped.expect("no 'privileges dropped' in the log"));
}

#[test]
#[ignore = "needs root"]
fn after_a_crash_nothing_stale_is_served_and_a_restart_serves_within_2_s() {
    require_root();
    let link = Link::new();
    let mut ntpxd = Ntpxd::start(&link.server_ns, &ntpxd_config(true));
    let source = SocketAddr::new(link.client.v4, 0);
    let query = || {
        link.client_ns
            .enter(|| client::query(source, ntp_port(link.server.v4), Duration::from_millis(300)))
    };
    let xdp_attached = || {
        let details = link.server_ns.ip(&["-details", "link", "show", "veth-srv"]).stdout;
        String::from_utf8_lossy(&details).contains("prog/xdp")
    };
    assert!(query().is_some(), "no answer before the crash");
    assert!(xdp_attached());
    ntpxd.crash();
    // The program's attachment was the process's (a BPF link, not pinned): it went with it, so
    // no state it published can be served, however fresh its deadline.
    assert!(!xdp_attached(), "XDP still attached after the crash");
    assert!(query().is_none(), "answered with nothing serving");
    // A new ntpxd takes over the pidfile and the control socket the dead one left.
    let restarted = Instant::now();
    ntpxd.restart(&link.server_ns, "ntpxd-restarted.log");
    assert!(
        peers::wait_for(Duration::from_secs(2), || query().is_some()),
        "not serving 2 s after the restart:\n{}",
        ntpxd.process.log()
    );
    eprintln!("serving {:?} after the restart", restarted.elapsed());
    assert!(restarted.elapsed() < Duration::from_secs(2));
    assert!(ntpxd.serverstats().kernel.answered > 0, "not answered from XDP after the restart");
}
