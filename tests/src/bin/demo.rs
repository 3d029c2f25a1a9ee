//! `cargo xtask demo`: ntpxd serving a subnet across a veth pair with native XDP, a chronyd -x
//! client synchronising to it, and what both sides report.

use std::time::Duration;

use ntp_userspace::report;
use ntpx_tests::{
    netns::{self, Link},
    peers::{self, Chronyd, Ntpxd},
};

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "the demo needs root (XDP and network namespaces)");
    println!("demo: two network namespaces joined by a veth pair");
    let link = Link::new();
    println!(
        "  server {} {} on {}, client {} {} on {}",
        netns::SERVER_V4,
        netns::SERVER_V6,
        link.server.interface,
        netns::CLIENT_V4,
        netns::CLIENT_V6,
        link.client.interface
    );
    let config = format!(
        "local stratum 10\nallow 10.77.0.0/24\nallow fd77::/64\nxdp {} native\n",
        link.server.interface
    );
    println!("demo: ntpxd -x with this configuration:\n{}", indent(&config));
    let ntpxd = Ntpxd::start(&link.server_ns, &config);
    let client_config = format!("server {} iburst minpoll 0 maxpoll 0\n", netns::SERVER_V4);
    println!("demo: chronyd -x as the client:\n{}", indent(&client_config));
    let chronyd = Chronyd::start(&link.client_ns, &client_config);
    let selected = peers::wait_for(Duration::from_secs(30), || chronyd.selects(netns::SERVER_V4));
    println!("demo: chronyd {} ntpxd", if selected { "selected" } else { "did NOT select" });
    std::thread::sleep(Duration::from_secs(4));
    println!("\n$ chronyc sources\n{}", chronyd.chronyc(&["sources"]));
    println!("$ chronyc tracking\n{}", chronyd.chronyc(&["tracking"]));
    let ntpdata = chronyd.chronyc(&["ntpdata", netns::SERVER_V4]);
    let line =
        |label: &str| ntpdata.lines().find(|l| l.starts_with(label)).unwrap_or_default().to_owned();
    println!(
        "$ chronyc ntpdata {} (excerpt)\n{}\n{}\n{}\n",
        netns::SERVER_V4,
        line("Offset"),
        line("Peer delay"),
        line("Response time")
    );
    println!("$ ntpxc serverstats\n{}", report::serverstats_text(&ntpxd.serverstats()));
    println!("demo: done; the namespaces and processes are removed");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
