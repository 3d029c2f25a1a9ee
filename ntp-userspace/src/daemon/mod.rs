//! ntpxd's I/O shell: the XDP program, the slow-path sockets, the control socket, the timer
//! that keeps the kernel's state fresh, and signals. Decisions live in `server` and `reference`.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use caps::{Capability, CapsHashSet};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    context::{ControlContext, reload},
    ntpxc::{ControlSocket, MAX_CONTROL_CONNECTIONS, accept_control},
    owner::{Owner, clock_stepped, start_dataplane},
    slow_path::serve_socket,
};
use crate::{
    access::AccessTable,
    client_log::{ClientLog, NoClientLog},
    config::Config,
    dataplane::Dataplane,
    refclock,
    reference::Reference,
    server::{PUBLISH_INTERVAL_NS, Server},
    sys::{
        clock::{self, KernelClock},
        files::Pidfile,
        nic, privileges, service,
        socket::NtpSocket,
    },
    upstream::{self, Upstream},
};

mod accept;
mod announce;
mod chronyc;
mod context;
mod metrics;
mod ntpxc;
mod nts_ke;
mod owner;
mod reports;
mod slow_path;

/// Command-line choices that are not configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `-x`: never adjust the system clock.
    pub no_clock_control: bool,
}

/// What needs privileges, done: the program loaded and attached, the sockets bound, the pidfile
/// locked. No thread is started yet, so that dropping privileges then applies to the whole
/// process (capabilities belong to threads).
pub struct Prepared {
    config_file: PathBuf,
    config: Config,
    pidfile: Pidfile,
    server: Arc<Server>,
    dataplane: Option<Dataplane>,
    upstream: Option<Arc<Upstream>>,
    refclocks: Vec<refclock::OpenClock>,
    ntp_sockets: Vec<std::net::UdpSocket>,
    control: ControlSocket,
    chronyc: chronyc::ChronycSockets,
    metrics: Option<metrics::MetricsListener>,
    nts_ke: Option<nts_ke::NtsKeListener>,
    created_directories: Vec<PathBuf>,
}

impl Prepared {
    /// The capabilities ntpxd uses from now on: CAP_SYS_TIME while it adjusts the system
    /// clock, CAP_BPF where the kernel refuses map operations without it, and CAP_NET_ADMIN
    /// to announce service addresses.
    pub fn needed_capabilities(&mut self) -> anyhow::Result<CapsHashSet> {
        let mut needed = CapsHashSet::new();
        if self.upstream.as_ref().is_some_and(|upstream| upstream.controls_clock()) {
            needed.insert(Capability::CAP_SYS_TIME);
        }
        if let Some(dataplane) = self.dataplane.as_mut()
            && !privileges::works_without_bpf_capability(|| dataplane.counters().is_ok())?
        {
            needed.insert(Capability::CAP_BPF);
        }
        // Service addresses go on and off the loopback for as long as ntpxd runs.
        if !self.config.announce.is_empty() {
            needed.insert(Capability::CAP_NET_ADMIN);
        }
        Ok(needed)
    }

    /// Hands to `user` the control socket (its group may then use it, as chronyd's) and the
    /// directories ntpxd created for it and the pidfile (such as /run/ntpx): `user` removes
    /// those files at exit.
    pub fn hand_over_to(&self, user: &privileges::User) -> anyhow::Result<()> {
        for path in self.created_directories.iter().chain([&self.control.path]) {
            privileges::give_to(path, user)
                .with_context(|| format!("handing {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }
}

/// The privileged part of starting: everything that needs root or capabilities. `config` was
/// read from `config_file`, which SIGHUP and `ntpxc reload` read again.
pub fn prepare(config_file: PathBuf, config: Config, options: Options) -> anyhow::Result<Prepared> {
    let Options { no_clock_control } = options;
    // Fails early where adjtimex is not allowed (a system call filter, a container).
    KernelClock::read().context("reading the kernel clock (adjtimex)")?;
    let precision = clock::precision_log2();
    let created_directories: Vec<PathBuf> = [&config.pidfile, &config.command_socket]
        .into_iter()
        .filter_map(|path| path.parent().filter(|dir| !dir.exists()).map(Path::to_owned))
        .collect();
    let pidfile = Pidfile::create(&config.pidfile)?;
    let descriptor_limit =
        privileges::raise_open_files_limit().context("raising the limit on open descriptors")?;
    tracing::info!(
        port = config.port,
        no_clock_control,
        precision,
        local = ?config.local,
        "ntpxd starting"
    );

    let access = AccessTable::from_rules(&config.access);
    let mut dataplane = None;
    let client_log: Arc<dyn ClientLog> = if config.port == 0 {
        tracing::warn!("port 0: not serving NTP");
        Arc::new(NoClientLog)
    } else {
        // Loaded even without XDP: the client log lives in the kernel's table.
        let loaded = Dataplane::load(config.port, config.client_log.entries())?;
        let clients = loaded.clients();
        dataplane = Some(loaded);
        clients
    };
    let reference = Reference::new(config.local, precision)
        .smoothed(config.smoothing)
        .leap_smeared(config.leap_smear.as_ref().map(|smear| smear.settings));
    let server = Arc::new(Server::new(reference, access.clone(), client_log));
    if let Some(smear) = &config.leap_smear {
        server.set_smeared_addresses(&smear.addresses);
        let local = nic::local_addresses().unwrap_or_default();
        for address in smear.addresses.iter().filter(|a| !local.contains(a)) {
            tracing::warn!(
                %address,
                "leapsmear: not an address of this host (yet); smeared once it is added"
            );
        }
    }
    let upstream = if config.sync.sources.is_empty() && config.sync.refclocks.is_empty() {
        None
    } else {
        Some(Arc::new(Upstream::new(&config.sync, precision, no_clock_control)?))
    };
    // Devices are opened with the privileges of the start (root, or the unit's CAP_DAC_OVERRIDE
    // and CAP_IPC_OWNER): /dev/pps* and /dev/ptp* are root's, and so is gpsd's segment.
    let refclocks = match &upstream {
        Some(upstream) => refclock::open_all(&config.sync.refclocks, upstream, precision)?,
        None => Vec::new(),
    };
    if let Some(dataplane) = dataplane.as_mut() {
        start_dataplane(dataplane, &config, &server, upstream.as_deref(), &access)?;
    }
    let mut ntp_sockets = Vec::new();
    if config.port != 0 {
        // A socket per CPU and address: what the program passes on (NTS above all) is answered
        // on every core.
        for address in bind_addresses(&config) {
            for _ in 0..slow_path_threads() {
                let socket = NtpSocket::bind_std(address)
                    .with_context(|| format!("binding the NTP socket to {address}"))?;
                ntp_sockets.push(socket);
            }
        }
    }
    let control = ControlSocket::bind(&config.command_socket)?;
    // chronyc's socket directory may belong to root or to the user ntpxd becomes.
    let target_user = privileges::target_user(config.user.as_deref())?;
    let owners: Vec<u32> =
        [0].into_iter().chain(target_user.map(|user| user.uid.as_raw())).collect();
    let chronyc = chronyc::ChronycSockets::bind(&config.chronyc, &owners);
    let metrics = config
        .metrics
        .map(|address| {
            let scrapers = AccessTable::from_rules(&config.chronyc.access);
            metrics::MetricsListener::bind(address, scrapers)
        })
        .transpose()?;
    let nts_ke = config
        .nts
        .enabled()
        .then(|| nts_ke::NtsKeListener::bind(&config.nts, &bind_addresses(&config)))
        .transpose()?;
    let open = privileges::open_descriptors().context("counting open descriptors")?;
    let needed = open + descriptors_for_connections(&config);
    if needed > descriptor_limit {
        tracing::warn!(
            open,
            needed,
            limit = descriptor_limit,
            "too few descriptors for every connection the configuration allows at once: \
             raise LimitNOFILE (or ulimit -n)"
        );
    } else {
        tracing::info!(open, needed, limit = descriptor_limit, "descriptors");
    }
    Ok(Prepared {
        config_file,
        config,
        pidfile,
        server,
        dataplane,
        upstream,
        refclocks,
        ntp_sockets,
        control,
        chronyc,
        metrics,
        nts_ke,
        created_directories,
    })
}

/// Descriptors that connections may take at once besides those open at start: ntpxc's,
/// scrapes, NTS-KE sessions, and a socket and a key exchange per source.
fn descriptors_for_connections(config: &Config) -> u64 {
    let nts_ke = if config.nts.enabled() { config.nts.max_connections } else { 0 };
    let scrapes = if config.metrics.is_some() { metrics::MAX_SCRAPES } else { 0 };
    let sources = 2 * config.sync.sources.len();
    (MAX_CONTROL_CONNECTIONS + nts_ke + scrapes + sources) as u64
}

/// The slow path's threads, and the runtime's: one a CPU, at least two.
pub fn slow_path_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// How long a stopping ntpxd goes on answering after it withdrew its service addresses: the
/// routing daemons move the route in milliseconds, a client's next request goes elsewhere.
const WITHDRAWAL_GRACE: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        config_file,
        config,
        pidfile: _pidfile,
        server,
        dataplane,
        upstream,
        refclocks,
        ntp_sockets,
        control,
        chronyc,
        metrics,
        nts_ke,
        created_directories: _,
    } = prepared;
    if let Some(upstream) = &upstream {
        tokio::spawn(upstream::poll_sources(upstream.clone(), config.sync.sources.clone()));
        for clock in refclocks {
            tokio::spawn(refclock::run(clock, upstream.clone()));
        }
    }
    for socket in ntp_sockets {
        let socket = Arc::new(NtpSocket::from_std(socket)?);
        tokio::spawn(serve_socket(socket, server.clone()));
    }
    let mut announcer = announce::Announcer::new(&config.announce);
    let (owner_sender, mut asked) = mpsc::channel(MAX_CONTROL_CONNECTIONS);
    let context = Arc::new(ControlContext {
        server: server.clone(),
        upstream: upstream.clone(),
        clients: dataplane.as_ref().map(Dataplane::clients),
        config_file,
        owner: owner_sender,
        announcements: announcer.reports.clone(),
    });
    tokio::spawn(accept_control(
        UnixListener::from_std(control.listener.try_clone()?)?,
        control.connections.clone(),
        context.clone(),
    ));
    chronyc.serve_in_background(context.clone())?;
    if let Some(metrics) = &metrics {
        metrics.serve(context.clone())?;
    }
    if let Some(nts_ke) = nts_ke {
        let client_log_size = config.client_log.entries() as usize;
        nts_ke.serve(server.clone(), config.port, client_log_size)?;
    }
    let rules = config.access.clone();
    let mut owner = Owner { dataplane, config, rules };

    let mut ticker = tokio::time::interval(Duration::from_nanos(PUBLISH_INTERVAL_NS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Attached, the first state published, every socket open.
    service::notify(service::State::Ready);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                // The watchdog hears from the loop that keeps the kernel's state fresh, and
                // only when it did: a daemon that cannot publish is restarted.
                let health = owner.republish_and_check(&server, upstream.as_deref());
                if health.state_fresh {
                    service::notify(service::State::Alive);
                }
                announcer.check(&health);
                if let Some(dataplane) = &owner.dataplane {
                    dataplane.clients().expire();
                }
            }
            // At once: the state in the kernel is anchored to the clock before the step.
            _ = clock_stepped(&upstream) => {
                server.clock_stepped(clock::tai_now());
                owner.republish(&server, upstream.as_deref());
            }
            Some(ask) = asked.recv() => owner.answer(ask, &server),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                // Read off the loop; applied by it like `ntpxc reload`.
                let context = context.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(error) = reload(&context) {
                        tracing::error!("SIGHUP: {error:#}; the running configuration is kept");
                    }
                });
            }
        }
    }

    tracing::info!("ntpxd stopping");
    service::notify(service::State::Stopping);
    // Withdrawn first, still answering while the routers move the service address elsewhere
    // (the program keeps the state and the addresses it was given).
    if !announcer.is_empty() {
        announcer.stop();
        tokio::time::sleep(WITHDRAWAL_GRACE).await;
    }
    if let Some(upstream) = &upstream {
        upstream.save_drift(true);
    }
    if let Some(dataplane) = owner.dataplane.as_mut() {
        dataplane.detach_all()?;
    }
    Ok(())
}

fn bind_addresses(config: &Config) -> [SocketAddr; 2] {
    [
        SocketAddr::new(config.bind_v4.unwrap_or(Ipv4Addr::UNSPECIFIED).into(), config.port),
        SocketAddr::new(config.bind_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).into(), config.port),
    ]
}
