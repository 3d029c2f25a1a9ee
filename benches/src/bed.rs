//! One server under load: two network namespaces joined by a veth pair, the server in one, the
//! live-frames generator and the reply counter in the other.
//!
//! CPUs: the generator runs on the second CPU, and with it the packet path, which the kernel
//! runs where frames are sent: the XDP servers and the counter. A socket server's process runs
//! on the first CPU. This favours the socket servers, which get a core besides the path's.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ntp_userspace::sys::clock;
use ntpx_tests::{
    netns::{Link, Netns},
    peers::{Chronyd, Ntpxd, Process},
};

use crate::{
    frames::Flow,
    programs::{Attached, Counter, Generator},
    step::{Step, StepReport},
    sweep::Sweep,
};

/// The servers the benchmark compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum ServerKind {
    /// ntpxd answering in XDP, with the access list and the client log on.
    NtpxdXdp,
    /// The same with `noclientlog`.
    NtpxdXdpNoClientLog,
    /// ntpxd without XDP: its socket path only.
    NtpxdSlowPath,
    /// chronyd 4.3 from Debian.
    Chronyd,
    /// An XDP program that only swaps addresses: the ceiling of the path.
    Reflector,
}

impl ServerKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::NtpxdXdp => "ntpxd (XDP)",
            Self::NtpxdXdpNoClientLog => "ntpxd (XDP, noclientlog)",
            Self::NtpxdSlowPath => "ntpxd (slow path)",
            Self::Chronyd => "chronyd 4.3",
            Self::Reflector => "reflector (XDP)",
        }
    }
}

/// Simulated clients: `count` (a power of two) addresses from `first`, routed through the
/// client's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clients {
    pub first: Ipv4Addr,
    pub count: u32,
}

impl Clients {
    /// The benchmark's: a /16 next to the link's subnet.
    pub const BENCH: Self = Self { first: Ipv4Addr::new(10, 78, 0, 0), count: 1 << 16 };
    /// The soak's: a /12, more clients than a million-entry client log holds, so that they
    /// cycle through it.
    pub const SOAK: Self = Self { first: Ipv4Addr::new(10, 128, 0, 0), count: 1 << 20 };

    fn prefix(&self) -> String {
        format!("{}/{}", self.first, 32 - self.count.trailing_zeros())
    }
}

pub const SERVER_CPU: usize = 0;
pub const LOAD_CPU: usize = 1;

/// This machine's online CPUs (not the calling thread's share: the bench's threads are pinned).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(cpus).unwrap_or(1).max(1)
}

/// The CPUs `n` generators run on: the load CPU first, then the others from CPU 0.
pub fn load_cpus(n: usize) -> Vec<usize> {
    let cpus = online_cpus();
    let others = (0..cpus).filter(|&cpu| cpu != LOAD_CPU % cpus);
    std::iter::once(LOAD_CPU % cpus).chain(others).take(n).collect()
}

/// The server running, whatever it is.
enum Running {
    Ntpxd(Ntpxd),
    Chronyd(Chronyd),
    /// A program attached by the bench: the reflector.
    Program {
        _attached: Attached,
    },
}

pub struct Bed {
    // Dropped in order: the server, the client side, then the namespaces.
    pub kind: ServerKind,
    server: Running,
    _socket_front: Option<Attached>,
    /// One per load CPU, each with its share of the clients; the first runs on the bed's thread.
    generators: Vec<Generator>,
    load_cpus: Vec<usize>,
    counter: Counter,
    link: Link,
    flow: Flow,
}

impl Bed {
    /// Sets up `kind` on `link`, from a thread in the client's namespace (see [`Bed::run`]),
    /// with a generator for each of `load_cpus`.
    fn new(
        kind: ServerKind,
        clients: Clients,
        link: Link,
        load_cpus: Vec<usize>,
    ) -> anyhow::Result<Self> {
        let server_address = match link.server.v4 {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => bail!("the link's server has no IPv4 address"),
        };
        let flow = Flow {
            client_mac: link.client.mac,
            server_mac: link.server.mac,
            server: SocketAddrV4::new(server_address, 123),
            first_client: clients.first,
            clients: clients.count,
        };
        // Replies from socket servers reach the simulated clients through the real one, with
        // complete checksums (the counter checks them).
        link.server_ns.ip(&["route", "add", &clients.prefix(), "via", &link.client.v4.to_string()]);
        link.server_ns.run("ethtool", &["-K", "veth-srv", "tx", "off"]);
        let server = match kind {
            ServerKind::NtpxdXdp => Running::Ntpxd(Ntpxd::start(
                &link.server_ns,
                "local stratum 10\nallow 10.0.0.0/8\nclientlog entries 1000000\nxdp veth-srv native\n",
            )),
            ServerKind::NtpxdXdpNoClientLog => Running::Ntpxd(Ntpxd::start(
                &link.server_ns,
                "local stratum 10\nallow 10.0.0.0/8\nnoclientlog\nxdp veth-srv native\n",
            )),
            ServerKind::NtpxdSlowPath => Running::Ntpxd(Ntpxd::start(
                &link.server_ns,
                "local stratum 10\nallow 10.0.0.0/8\nclientlog entries 1000000\n",
            )),
            ServerKind::Chronyd => {
                Running::Chronyd(Chronyd::start(&link.server_ns, "local stratum 10\nallow\n"))
            }
            ServerKind::Reflector => Running::Program {
                _attached: in_netns(&link.server_ns, || Attached::reflector("veth-srv"))?,
            },
        };
        // Live frames reach a socket server only through a veth with NAPI, which XDP gives.
        let socket_front = match kind {
            ServerKind::NtpxdSlowPath | ServerKind::Chronyd => {
                Some(in_netns(&link.server_ns, || Attached::pass("veth-srv"))?)
            }
            _ => None,
        };
        let utc_minus_tai_ns = -i64::from(clock::tai_offset_s()) * 1_000_000_000;
        let counter_config = flow.counter_config(utc_minus_tai_ns, kind == ServerKind::Reflector);
        let counter = in_netns(&link.client_ns, || Counter::attach("veth-cli", &counter_config))?;
        let index = in_netns(&link.client_ns, || Ok(nix::net::if_::if_nametoindex("veth-cli")?))?;
        let generators = flow
            .split(load_cpus.len() as u32)
            .iter()
            .map(|share| Generator::new(&share.generator_config(), share.request(0, 0), index))
            .collect::<anyhow::Result<_>>()?;
        let bed = Self {
            kind,
            server,
            _socket_front: socket_front,
            generators,
            load_cpus,
            counter,
            link,
            flow,
        };
        bed.place_on_cpus()?;
        Ok(bed)
    }

    /// The server's process, all its threads, on the server CPU (the packet path runs where the
    /// generator sends).
    fn place_on_cpus(&self) -> anyhow::Result<()> {
        if let Some(process) = self.server_process() {
            let pid = process.pid().as_raw();
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                if let Ok(tid) = task?.file_name().to_string_lossy().parse() {
                    pin(tid, SERVER_CPU)?;
                }
            }
        }
        Ok(())
    }

    /// Offers `rate` requests a second for `duration`, and counts what came back (waiting a
    /// little for the last replies).
    pub fn step(&mut self, rate: f64, duration: Duration) -> anyhow::Result<Step> {
        let before = self.counter.tally()?;
        let sent_before = self.sent()?;
        let share = rate / self.generators.len() as f64;
        for generator in &mut self.generators {
            generator.set_rate(share)?;
        }
        let start = Instant::now();
        let (first, others) = self.generators.split_first_mut().expect("a generator");
        let client_ns = self.link.client_ns.path();
        std::thread::scope(|scope| {
            let others: Vec<_> = others
                .iter_mut()
                .zip(&self.load_cpus[1..])
                .map(|(generator, &cpu)| {
                    let client_ns = &client_ns;
                    scope.spawn(move || {
                        enter_on_cpu(client_ns, cpu)?;
                        generator.run_for(duration)
                    })
                })
                .collect();
            first.run_for(duration)?;
            others.into_iter().try_for_each(|other| {
                other.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))?
            })
        })?;
        let seconds = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200));
        let offered = self.sent()? - sent_before;
        let tally = self.counter.tally()?.since(&before)?;
        Ok(Step { target_rate: rate, offered, seconds, tally })
    }

    /// Runs `sweep` on this bed, printing each step under `label`.
    pub fn sweep(&mut self, sweep: &Sweep, label: &str) -> anyhow::Result<Vec<Step>> {
        sweep.run(
            |rate, duration| self.step(rate, duration),
            |step| println!("{}", StepReport::of(step).line(label)),
        )
    }

    fn sent(&self) -> anyhow::Result<u64> {
        self.generators.iter().map(Generator::sent).sum()
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The namespace of the generator and the counter, where the real client is.
    pub fn client_netns(&self) -> &Netns {
        &self.link.client_ns
    }

    /// Sets up `kind` and runs `work` on it, from a thread pinned to the load CPU inside the
    /// client's namespace (the generator sends from there).
    pub fn run<T: Send>(
        kind: ServerKind,
        work: impl FnOnce(&mut Bed) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        Self::run_with(kind, Clients::BENCH, work)
    }

    /// As `run`, with `clients` as the simulated clients.
    pub fn run_with<T: Send>(
        kind: ServerKind,
        clients: Clients,
        work: impl FnOnce(&mut Bed) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        Self::run_on(kind, clients, 1, work)
    }

    /// As `run_with`, with the load on `cpus` CPUs: a generator on each, and as many queues on
    /// the veth pair, so that each CPU's requests are answered on that CPU.
    pub fn run_on<T: Send>(
        kind: ServerKind,
        clients: Clients,
        cpus: usize,
        work: impl FnOnce(&mut Bed) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let _expedited = ExpeditedRcu::enable()?;
        let link = Link::without_client_program_with_queues(cpus);
        let path = link.client_ns.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_on_cpu(&path, LOAD_CPU)?;
                    let mut bed = Bed::new(kind, clients, link, load_cpus(cpus))?;
                    work(&mut bed)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
        })
    }

    /// The server process's log, for diagnosing a failed run.
    pub fn server_log(&self) -> String {
        match &self.server {
            Running::Ntpxd(ntpxd) => ntpxd.process.log(),
            Running::Chronyd(chronyd) => chronyd.process.log(),
            Running::Program { .. } => String::new(),
        }
    }

    /// The ntpxd under load, if that is the server.
    pub fn ntpxd(&self) -> Option<&Ntpxd> {
        match &self.server {
            Running::Ntpxd(ntpxd) => Some(ntpxd),
            _ => None,
        }
    }

    pub fn server_process(&self) -> Option<&Process> {
        match &self.server {
            Running::Ntpxd(ntpxd) => Some(&ntpxd.process),
            Running::Chronyd(chronyd) => Some(&chronyd.process),
            Running::Program { .. } => None,
        }
    }
}

/// Expedited RCU grace periods while a bed runs, the setting before restored after. Each
/// BPF_PROG_TEST_RUN call ends with synchronize_rcu; while another CPU runs its own test run,
/// a normal grace period takes tens to hundreds of milliseconds, in which that generator sends
/// nothing (with two generators each offered under half its share).
struct ExpeditedRcu {
    before: String,
}

impl ExpeditedRcu {
    const SETTING: &str = "/sys/kernel/rcu_expedited";

    fn enable() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(Self::SETTING)
            .with_context(|| format!("reading {}", Self::SETTING))?;
        std::fs::write(Self::SETTING, "1").with_context(|| format!("writing {}", Self::SETTING))?;
        Ok(Self { before })
    }
}

impl Drop for ExpeditedRcu {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(Self::SETTING, self.before.trim()) {
            eprintln!("bench: could not restore {}: {error}", Self::SETTING);
        }
    }
}

/// Runs `f` on a thread in `netns` (programs attach to the interfaces of the caller's
/// namespace).
fn in_netns<T: Send>(
    netns: &Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    netns.enter(f)
}

/// Moves the calling thread into the namespace at `netns` (where the generators send from)
/// and onto `cpu`.
fn enter_on_cpu(netns: &str, cpu: usize) -> anyhow::Result<()> {
    pin(0, cpu)?;
    let file = std::fs::File::open(netns).context("the client namespace")?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Pins a thread (0: the calling one) to one CPU.
pub fn pin(pid: i32, cpu: usize) -> anyhow::Result<()> {
    let cpus = online_cpus();
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu % cpus)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)
        .with_context(|| format!("pinning {pid} to CPU {cpu}"))?;
    Ok(())
}
