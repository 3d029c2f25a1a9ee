//! A routed test bed for a fleet behind one anycast address: a router namespace running BIRD
//! with an eBGP session to each of two server namespaces (each with its own BIRD exporting the
//! service address from the loopback, as the README's configuration does), ECMP towards the
//! address, each server's upstream in the router's namespace, and a client namespace behind the
//! router with a poller that counts answers.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ntp_userspace::dataplane::VethPeerProgram;

use crate::{
    background::{Background, running},
    client,
    netns::Netns,
    peers::{Process, scratch_dir},
};

/// The fleet's service address.
pub const ANYCAST_V4: &str = "10.99.0.123";
/// The client's side of the router.
const CLIENT_V4: &str = "10.90.3.2";
const ROUTER_TO_CLIENT_V4: &str = "10.90.3.1";

/// One server's side: its namespace, its veth's name there, its address, and the router's
/// address on its link (where its upstream serves, too).
pub struct Member {
    pub ns: Netns,
    pub interface: &'static str,
    pub address: &'static str,
    pub router_address: &'static str,
    bird: Option<Bird>,
}

impl Member {
    /// The BGP session up, exporting what `protocol direct` finds on lo.
    pub fn bird(&self) -> Option<&Bird> {
        self.bird.as_ref()
    }
}

pub struct Fleet {
    pub router: Netns,
    pub client: Netns,
    pub members: [Member; 2],
    _router_bird: Option<Bird>,
    _programs: Vec<VethPeerProgram>,
}

impl Fleet {
    /// The namespaces, links and BIRDs; no ntpxd yet.
    pub fn new() -> Self {
        let router = Netns::new("router");
        let client = Netns::new("client");
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            router.run("sysctl", &["-q", "-w", sysctl]);
        }
        router.ip(&[
            "link",
            "add",
            "rtr-cli",
            "type",
            "veth",
            "peer",
            "name",
            "cli",
            "netns",
            client.name(),
        ]);
        router.ip(&["addr", "add", &format!("{ROUTER_TO_CLIENT_V4}/24"), "dev", "rtr-cli"]);
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", "cli"]);
        router.ip(&["link", "set", "rtr-cli", "up"]);
        client.ip(&["link", "set", "cli", "up"]);
        client.ip(&["route", "add", "default", "via", ROUTER_TO_CLIENT_V4]);
        client.run("ethtool", &["-K", "cli", "tx", "off"]);
        let member = |index: usize, interface: &'static str, address, router_address| {
            let ns = Netns::new(&format!("fleet{index}"));
            let peer = format!("rtr-{interface}");
            router.ip(&[
                "link",
                "add",
                &peer,
                "type",
                "veth",
                "peer",
                "name",
                interface,
                "netns",
                ns.name(),
            ]);
            router.ip(&["addr", "add", &format!("{router_address}/24"), "dev", &peer]);
            ns.ip(&["addr", "add", &format!("{address}/24"), "dev", interface]);
            router.ip(&["link", "set", &peer, "up"]);
            ns.ip(&["link", "set", interface, "up"]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["route", "add", "default", "via", router_address]);
            router.run("ethtool", &["-K", &peer, "tx", "off"]);
            Member { ns, interface, address, router_address, bird: None }
        };
        let members = [
            member(1, "srv1", "10.90.1.2", "10.90.1.1"),
            member(2, "srv2", "10.90.2.2", "10.90.2.1"),
        ];
        // XDP_TX frames reach a veth's peer at once only if the peer runs XDP too.
        let programs = members
            .iter()
            .map(|m| {
                let peer = format!("rtr-{}", m.interface);
                router.enter(|| VethPeerProgram::attach(&peer)).expect("the pass program")
            })
            .collect();
        let mut fleet = Self { router, client, members, _router_bird: None, _programs: programs };
        fleet._router_bird = Some(Bird::start(&fleet.router, &fleet.router_config()));
        for member in &mut fleet.members {
            member.bird = Some(Bird::start(&member.ns, &server_bird_config(member)));
        }
        fleet
    }

    fn router_config(&self) -> String {
        let mut config = String::from(
            "router id 10.90.0.1;\nprotocol device {}\n\
             protocol kernel { ipv4 { export all; }; merge paths yes; }\n",
        );
        for (index, member) in self.members.iter().enumerate() {
            config.push_str(&format!(
                "protocol bgp server{index} {{ local {} as 65000; neighbor {} as 65001; \
                 hold time 3; connect retry time 1; ipv4 {{ import all; export none; }}; }}\n",
                member.router_address, member.address
            ));
        }
        config
    }

    /// What the BIRDs say (protocols and routes), for a failing test's message.
    pub fn bird_state(&self) -> String {
        let birds = std::iter::once((&self.router, self._router_bird.as_ref()))
            .chain(self.members.iter().map(|m| (&m.ns, m.bird.as_ref())));
        let mut state = String::new();
        for (netns, bird) in birds {
            let Some(bird) = bird else { continue };
            for command in ["show protocols", "show route all"] {
                let output = netns.run("birdc", &["-s", bird.socket.to_str().unwrap(), command]);
                state.push_str(&format!(
                    "--- {} birdc {command}:\n{}",
                    netns.name(),
                    String::from_utf8_lossy(&output.stdout)
                ));
            }
        }
        state
    }

    /// The router's next hops for the anycast address (empty: no route).
    pub fn next_hops(&self) -> Vec<IpAddr> {
        let output = self.router.ip(&["-j", "route", "show", ANYCAST_V4]);
        let routes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let mut hops = Vec::new();
        for route in routes.as_array().into_iter().flatten() {
            if let Some(gateway) = route["gateway"].as_str() {
                hops.extend(gateway.parse::<IpAddr>().ok());
            }
            for nexthop in route["nexthops"].as_array().into_iter().flatten() {
                hops.extend(nexthop["gateway"].as_str().and_then(|g| g.parse::<IpAddr>().ok()));
            }
        }
        hops.sort();
        hops
    }

    /// Waits until the router's next hops are `addresses` (in any order); how long that took.
    pub fn wait_for_next_hops(&self, addresses: &[&str], timeout: Duration) -> Option<Duration> {
        let mut wanted: Vec<IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
        wanted.sort();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.next_hops() == wanted {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// A server's BIRD: the loopback's service address, and only it, to the router.
fn server_bird_config(member: &Member) -> String {
    format!(
        "router id {address};\nprotocol device {{ scan time 1; }}\n\
         protocol direct {{ ipv4; interface \"lo\"; }}\n\
         protocol bgp tor {{ local {address} as 65001; neighbor {router} as 65000; \
         hold time 3; connect retry time 1; \
         ipv4 {{ import none; export where net = {ANYCAST_V4}/32; }}; }}\n",
        address = member.address,
        router = member.router_address,
    )
}

/// BIRD 2 in a namespace, in the foreground with its own control socket.
pub struct Bird {
    pub process: Process,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bird {
    pub fn start(netns: &Netns, config: &str) -> Self {
        let dir = scratch_dir();
        let config_path = dir.path().join("bird.conf");
        fs::write(&config_path, config).expect("bird.conf");
        let socket = dir.path().join("bird.ctl");
        let process = Process::spawn(
            "bird",
            netns,
            Path::new("bird"),
            &["-f", "-c", config_path.to_str().unwrap(), "-s", socket.to_str().unwrap()],
            dir.path().join("bird.log"),
        );
        let started = crate::peers::wait_for(Duration::from_secs(10), || socket.exists());
        assert!(started, "bird did not start:\n{}", process.log());
        Self { process, socket, _dir: dir }
    }
}

/// Requests to the anycast address from the client, five a second, each with 150 ms to be
/// answered: when each was sent, and whether it was.
pub struct Poller {
    answers: Arc<Mutex<Vec<(Instant, bool)>>>,
    _worker: Background,
}

impl Poller {
    pub fn start(fleet: &Fleet) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let recorded = answers.clone();
        let path = fleet.client.path();
        let worker = Background::spawn(move |stop| {
            let file = fs::File::open(&path).expect("the client's namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let source = SocketAddr::new(CLIENT_V4.parse().unwrap(), 0);
            let server = SocketAddr::new(ANYCAST_V4.parse().unwrap(), 123);
            while running(stop) {
                let sent = Instant::now();
                let reply = client::query(source, server, Duration::from_millis(150));
                let answered =
                    reply.is_some_and(|r| r.leap != ntp_common::wire::Leap::Unsynchronised);
                recorded.lock().unwrap().push((sent, answered));
                std::thread::sleep(Duration::from_millis(200).saturating_sub(sent.elapsed()));
            }
        });
        Self { answers, _worker: worker }
    }

    /// Requests sent since `since`, and how many of them were answered.
    pub fn since(&self, since: Instant) -> (usize, usize) {
        let answers = self.answers.lock().unwrap();
        let recent: Vec<_> = answers.iter().filter(|(sent, _)| *sent >= since).collect();
        (recent.len(), recent.iter().filter(|(_, answered)| *answered).count())
    }

    /// Whether the last `count` requests were all answered (or, with false, none was).
    pub fn last_all(&self, count: usize, answered: bool) -> bool {
        let answers = self.answers.lock().unwrap();
        answers.len() >= count && answers.iter().rev().take(count).all(|(_, a)| *a == answered)
    }
}

/// The real Prometheus in the router's namespace, scraping the fleet's `/metrics` every second
/// with the shipped alerting rules.
pub struct Prometheus {
    pub process: Process,
    netns_path: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(fleet: &Fleet, targets: &[String]) -> Self {
        let dir = scratch_dir();
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../ntp-userspace/doc/examples");
        fs::copy(format!("{examples}/ntpx-alerts.yml"), dir.path().join("ntpx-alerts.yml"))
            .expect("the alerting rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - ntpx-alerts.yml\n\
             scrape_configs:\n  - job_name: ntpx\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let process = Process::spawn(
            "prometheus",
            &fleet.router,
            Path::new("prometheus"),
            &[
                &format!("--config.file={}", dir.path().join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                "--web.listen-address=127.0.0.1:9090",
            ],
            dir.path().join("prometheus.log"),
        );
        Self { process, netns_path: fleet.router.path(), _dir: dir }
    }

    /// The JSON of an instant query (`/api/v1/query`), empty if Prometheus is not answering.
    pub fn query(&self, expression: &str) -> String {
        let path = self.netns_path.clone();
        let expression: String = expression
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = fs::File::open(&path).expect("the router's namespace");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    use std::io::{Read as _, Write as _};
                    let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:9090") else {
                        return String::new();
                    };
                    let request = format!(
                        "GET /api/v1/query?query={expression} HTTP/1.0\r\nHost: localhost\r\n\r\n"
                    );
                    let mut response = String::new();
                    let _ = stream.write_all(request.as_bytes());
                    let _ = stream.read_to_string(&mut response);
                    response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
                })
                .join()
                .unwrap_or_default()
        })
    }
}
