//! Network namespaces joined by veth pairs, created and removed by the tests themselves.

use ntp_userspace::dataplane::VethPeerProgram;
use std::{
    net::IpAddr,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace of this test process, deleted on drop (with everything in it: its veth
/// ends, and so their peers, and the XDP programs attached to them).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("ntpx-{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args` inside the namespace and panics if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The `/etc/hosts` of programs started in the namespace (`ip netns exec` mounts
    /// `/etc/netns/NAME/hosts` over it), for names that resolve without a network.
    pub fn set_hosts(&self, hosts: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        std::fs::write(format!("{dir}/hosts"), hosts)
            .unwrap_or_else(|e| panic!("{dir}/hosts: {e}"));
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens stay there).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// One end of a veth pair.
pub struct Endpoint {
    pub interface: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    pub mac: [u8; 6],
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses, ready for XDP_TX
/// replies: the client end runs a pass-everything XDP program (a veth flushes XDP_TX frames at
/// once only to a peer running XDP) and has transmit checksum offload off, so that its UDP
/// checksums are complete on the wire, as from a real NIC.
pub struct Link {
    _client_program: Option<VethPeerProgram>,
    pub server_ns: Netns,
    pub client_ns: Netns,
    pub server: Endpoint,
    pub client: Endpoint,
}

pub const SERVER_V4: &str = "10.77.0.1";
pub const CLIENT_V4: &str = "10.77.0.2";
pub const SERVER_V6: &str = "fd77::1";
pub const CLIENT_V6: &str = "fd77::2";

impl Link {
    pub fn new() -> Self {
        let mut link = Self::without_client_program();
        let program = link
            .client_ns
            .enter(|| VethPeerProgram::attach("veth-cli"))
            .expect("attaching the pass program to the client's veth");
        link._client_program = Some(program);
        link
    }

    /// A link whose client end runs no XDP program yet: the caller attaches its own (which it
    /// must, for XDP_TX replies to arrive at once).
    pub fn without_client_program() -> Self {
        Self::without_client_program_with_queues(1)
    }

    /// As [`Link::without_client_program`], with `queues` receive and transmit queues on each
    /// end: a veth delivers a frame sent on CPU c to queue c mod `queues`, whose NAPI runs on c,
    /// so that senders on different CPUs are served by XDP on their own CPUs.
    pub fn without_client_program_with_queues(queues: usize) -> Self {
        let server_ns = Netns::new("server");
        let client_ns = Netns::new("client");
        let queues = queues.to_string();
        server_ns.ip(&[
            "link",
            "add",
            "veth-srv",
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            "veth-cli",
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            client_ns.name(),
        ]);
        server_ns.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", "veth-srv"]);
        server_ns.ip(&["addr", "add", &format!("{SERVER_V6}/64"), "dev", "veth-srv", "nodad"]);
        client_ns.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", "veth-cli"]);
        client_ns.ip(&["addr", "add", &format!("{CLIENT_V6}/64"), "dev", "veth-cli", "nodad"]);
        server_ns.ip(&["link", "set", "veth-srv", "up"]);
        client_ns.ip(&["link", "set", "veth-cli", "up"]);
        client_ns.run("ethtool", &["-K", "veth-cli", "tx", "off"]);
        let server = Endpoint {
            interface: "veth-srv".into(),
            v4: SERVER_V4.parse().unwrap(),
            v6: SERVER_V6.parse().unwrap(),
            mac: mac_of(&server_ns, "veth-srv"),
        };
        let client = Endpoint {
            interface: "veth-cli".into(),
            v4: CLIENT_V4.parse().unwrap(),
            v6: CLIENT_V6.parse().unwrap(),
            mac: mac_of(&client_ns, "veth-cli"),
        };
        Self { _client_program: None, server_ns, client_ns, server, client }
    }
}

impl Link {
    /// A second pair of addresses on the server's end (10.77.0.3, fd77::3).
    pub fn second_server_address(&self) -> (&'static str, &'static str) {
        let (other, other_v6) = ("10.77.0.3", "fd77::3");
        self.server_ns.ip(&["addr", "add", &format!("{other}/24"), "dev", "veth-srv"]);
        self.server_ns.ip(&["addr", "add", &format!("{other_v6}/64"), "dev", "veth-srv", "nodad"]);
        (other, other_v6)
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

fn mac_of(netns: &Netns, interface: &str) -> [u8; 6] {
    let output = netns.ip(&["-j", "link", "show", interface]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip -j output");
    let text = json[0]["address"].as_str().expect("a MAC address");
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

pub const UPSTREAM_SIDE_V4: &str = "10.78.0.1";
/// The upstream namespace's addresses, one per server run there.
pub const UPSTREAM_V4: [&str; 2] = ["10.78.0.11", "10.78.0.12"];

/// A namespace of upstream servers, joined to `server_ns` by its own veth pair (no XDP on it):
/// the server's sources, apart from the link its clients use.
pub struct Upstreams {
    pub ns: Netns,
}

impl Upstreams {
    pub fn new(server_ns: &Netns) -> Self {
        let ns = Netns::new("upstream");
        server_ns.ip(&[
            "link",
            "add",
            "veth-ntpx",
            "type",
            "veth",
            "peer",
            "name",
            "veth-up",
            "netns",
            ns.name(),
        ]);
        server_ns.ip(&["addr", "add", &format!("{UPSTREAM_SIDE_V4}/24"), "dev", "veth-ntpx"]);
        for address in UPSTREAM_V4 {
            ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "veth-up"]);
        }
        server_ns.ip(&["link", "set", "veth-ntpx", "up"]);
        ns.ip(&["link", "set", "veth-up", "up"]);
        Self { ns }
    }
}
