//! ntpxd's I/O shell: the XDP program, the slow-path sockets, the control socket, the timer
//! that keeps the kernel's state fresh, and signals. Decisions live in `server` and `reference`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use caps::{Capability, CapsHashSet};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, mpsc, oneshot},
};

use ntp_common::ratelimit::{self, RateLimit};

mod chronyc;
mod metrics;
mod nts_ke;

use crate::{
    access::{AccessRule, AccessTable, Subnet},
    client_log::{ClientLog, ClientLogSettings, NoClientLog},
    client_table::{Client, ClientTable},
    config::{self, ClientLogSize, Config},
    control::{
        AuthData, ClientReport, KernelCounters, Request, Response, ServerStats, XdpAttachment,
    },
    dataplane::Dataplane,
    reference::{Reference, TaiReading},
    server::{PUBLISH_INTERVAL_NS, Server},
    sync::{LeapStatus, SourceReport, Tracking},
    sys::{
        clock::{self, KernelClock},
        files::Pidfile,
        nic, privileges, service,
        socket::{self, Batch, Datagram, NtpSocket},
    },
    upstream::{self, Upstream},
};

/// Command-line choices that are not configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `-x`: never adjust the system clock.
    pub no_clock_control: bool,
}

/// The kernel's published state and the rules behind it, owned by the daemon's main loop alone:
/// it republishes on its tick and answers [`Ask`]s between ticks, one at a time, so that no
/// lock is shared with the slow path or the control connections, and every change is one
/// switch of the page.
struct Owner {
    dataplane: Option<Dataplane>,
    config: Config,
    /// The configuration's access rules and those added at run time, in order.
    rules: Vec<AccessRule>,
}

/// What control connections and SIGHUP ask of the [`Owner`], each with where its answer goes.
/// Whatever takes time (reading the file, resolving names) is done before it is asked.
enum Ask {
    AddRule(AccessRule, oneshot::Sender<anyhow::Result<()>>),
    Reload(Box<config::Loaded>, oneshot::Sender<anyhow::Result<()>>),
    /// The kernel's counters and attachments, for `serverstats` and metrics.
    KernelView(oneshot::Sender<anyhow::Result<KernelView>>),
}

/// What the owner reads of the kernel for a report.
#[derive(Default)]
struct KernelView {
    counters: KernelCounters,
    attachments: Vec<XdpAttachment>,
    /// The CLOCK_TAI instant the state the program serves was computed for (None: no program).
    published_tai_ns: Option<u64>,
}

/// What a control connection works with; the owner is reached through `owner`.
struct ControlContext {
    server: Arc<Server>,
    /// The synchronisation, when there are `server` or `pool` lines.
    upstream: Option<Arc<Upstream>>,
    /// The client log, when the program is loaded.
    clients: Option<Arc<ClientTable>>,
    config_file: PathBuf,
    owner: mpsc::Sender<Ask>,
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
    ntp_sockets: Vec<std::net::UdpSocket>,
    control: ControlSocket,
    chronyc: chronyc::ChronycSockets,
    metrics: Option<metrics::MetricsListener>,
    nts_ke: Option<nts_ke::NtsKeListener>,
    created_directories: Vec<PathBuf>,
}

impl Prepared {
    /// The capabilities ntpxd uses from now on: CAP_SYS_TIME while it adjusts the system
    /// clock, and CAP_BPF where the kernel refuses map operations without it.
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
    let server =
        Arc::new(Server::new(Reference::new(config.local, precision), access.clone(), client_log));
    let upstream = if config.sync.sources.is_empty() {
        None
    } else {
        Some(Arc::new(Upstream::new(&config.sync, precision, no_clock_control)?))
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        config_file,
        config,
        pidfile: _pidfile,
        server,
        dataplane,
        upstream,
        ntp_sockets,
        control,
        chronyc,
        metrics,
        nts_ke,
        created_directories: _,
    } = prepared;
    if let Some(upstream) = &upstream {
        tokio::spawn(upstream::poll_sources(upstream.clone(), config.sync.sources.clone()));
    }
    for socket in ntp_sockets {
        let socket = Arc::new(NtpSocket::from_std(socket)?);
        tokio::spawn(serve_socket(socket, server.clone()));
    }
    let (owner_sender, mut asked) = mpsc::channel(MAX_CONTROL_CONNECTIONS);
    let context = Arc::new(ControlContext {
        server: server.clone(),
        upstream: upstream.clone(),
        clients: dataplane.as_ref().map(Dataplane::clients),
        config_file,
        owner: owner_sender,
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
                if owner.republish(&server, upstream.as_deref()) {
                    service::notify(service::State::Alive);
                }
                if let Some(dataplane) = &owner.dataplane {
                    dataplane.clients().expire();
                }
            }
            // At once: the state in the kernel is anchored to the clock before the step.
            _ = clock_stepped(&upstream) => {
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
    if let Some(upstream) = &upstream {
        upstream.save_drift(true);
    }
    if let Some(dataplane) = owner.dataplane.as_mut() {
        dataplane.detach_all()?;
    }
    Ok(())
}

impl Owner {
    /// Refreshes the kernel's state; false if it could not.
    fn republish(&mut self, server: &Server, upstream: Option<&Upstream>) -> bool {
        match refresh(server, self.dataplane.as_mut(), upstream, &self.config) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot refresh the kernel's state");
                false
            }
        }
    }

    fn answer(&mut self, ask: Ask, server: &Server) {
        // A requester that gave up (its connection closed) does not need the outcome.
        match ask {
            Ask::AddRule(rule, done) => {
                let _ = done.send(self.add_rule(rule, server));
            }
            Ask::Reload(loaded, done) => {
                let _ = done.send(self.reload(*loaded, server));
            }
            Ask::KernelView(done) => {
                let _ = done.send(self.kernel_view());
            }
        }
    }

    fn add_rule(&mut self, rule: AccessRule, server: &Server) -> anyhow::Result<()> {
        let mut rules = self.rules.clone();
        rules.push(rule);
        let table = AccessTable::from_rules(&rules);
        if let Some(dataplane) = self.dataplane.as_mut() {
            dataplane.set_access(&table)?;
        }
        self.rules = rules;
        server.set_access(table);
        tracing::info!(access = ?rule.access, all = rule.all, subnet = %rule.subnet, "access rule added");
        Ok(())
    }

    /// Applies what can change while running: the access rules (run-time changes are dropped,
    /// as chrony drops them on restart), the rate limit and the local reference.
    fn reload(&mut self, loaded: config::Loaded, server: &Server) -> anyhow::Result<()> {
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let (new, needs_restart) = reloadable(&self.config, loaded.config);
        for what in needs_restart {
            tracing::warn!("{what} changed: it needs a restart, and keeps its running value");
        }
        let access = AccessTable::from_rules(&new.access);
        if let Some(dataplane) = self.dataplane.as_mut() {
            let epoch = dataplane.clients().settings().epoch_tai_ns;
            dataplane.reconfigure(&access, client_log_settings(&new, epoch))?;
        }
        server.set_access(access);
        server.set_local(new.local);
        self.rules = new.access.clone();
        self.config = new;
        Ok(())
    }

    fn kernel_view(&mut self) -> anyhow::Result<KernelView> {
        let Some(dataplane) = self.dataplane.as_mut() else {
            return Ok(KernelView::default());
        };
        let counters = KernelCounters::from_array(&dataplane.counters()?);
        let attachments = dataplane
            .attachments()
            .map(|(interface, mode)| XdpAttachment { interface: interface.to_owned(), mode })
            .collect();
        let published_tai_ns = Some(dataplane.published().state.base_tai_ns);
        Ok(KernelView { counters, attachments, published_tai_ns })
    }
}

/// Resolves when the synchronisation steps the system clock (never without one).
async fn clock_stepped(upstream: &Option<Arc<Upstream>>) {
    match upstream {
        Some(upstream) => upstream.clock_stepped.notified().await,
        None => std::future::pending().await,
    }
}

/// Fills the program's maps and publishes the state, then attaches: the program never runs on
/// an interface before it has everything it needs.
fn start_dataplane(
    dataplane: &mut Dataplane,
    config: &Config,
    server: &Server,
    upstream: Option<&Upstream>,
    access: &AccessTable,
) -> anyhow::Result<()> {
    dataplane.reconfigure(access, client_log_settings(config, clock::tai_ns()))?;
    refresh(server, Some(dataplane), upstream, config)?;
    for xdp in &config.xdp {
        let mode = dataplane.attach(&xdp.interface, xdp.mode)?;
        tracing::info!(interface = xdp.interface, ?mode, "XDP attached");
    }
    Ok(())
}

fn client_log_settings(config: &Config, epoch_tai_ns: u64) -> ClientLogSettings {
    ClientLogSettings {
        enabled: config.client_log != ClientLogSize::Disabled,
        limit: config.rate_limit.map_or(RateLimit::DISABLED, |limit| limit.bucket()),
        epoch_tai_ns,
    }
}

/// Follows the kernel clock and the synchronisation and, with the program loaded, publishes a
/// fresh state and the local addresses.
fn refresh(
    server: &Server,
    dataplane: Option<&mut Dataplane>,
    upstream: Option<&Upstream>,
    config: &Config,
) -> anyhow::Result<()> {
    if let Some(upstream) = upstream {
        // First: the synchronisation keeps the kernel's clock state (and TAI offset) fresh.
        let now = clock::realtime_ns();
        let served = upstream.sync.lock().expect("sync lock").served(now as i64);
        server.set_served(served, now);
        upstream.save_drift(false);
    }
    // A kernel clock that answers is part of a healthy refresh (the watchdog hears of it).
    KernelClock::read().context("adjtimex")?;
    let now = clock::tai_now();
    let addresses = served_addresses(config)?;
    server.set_local_addresses(&addresses);
    if let Some(dataplane) = dataplane {
        dataplane.set_local_addresses(&addresses);
        dataplane.publish(&server.state_to_publish(now));
    }
    Ok(())
}

/// Rereads the configuration file (host names resolved here, off the owner) and has the owner
/// apply it. A file with an error changes nothing. Blocks: call it off the runtime's workers.
fn reload(context: &ControlContext) -> anyhow::Result<()> {
    let loaded = config::load(&context.config_file)?;
    context.ask(|done| Ask::Reload(Box::new(loaded), done))??;
    tracing::info!(file = %context.config_file.display(), "configuration reloaded");
    Ok(())
}

impl ControlContext {
    /// `authdata`'s rows: each source, and its NTS association if it has one.
    fn auth_data(&self) -> Vec<AuthData> {
        let associations = self.upstream.as_ref().map(|u| u.nts.lock().expect("NTS lock"));
        self.sources()
            .into_iter()
            .map(|source| {
                let nts = associations.as_ref().and_then(|associations| {
                    let (_, association) =
                        associations.iter().find(|(a, _)| a.ip() == source.address)?;
                    Some(association.report())
                });
                AuthData { name: source.name, address: source.address, nts }
            })
            .collect()
    }

    /// `sources` and `sourcestats`' rows (none without upstream sources).
    fn sources(&self) -> Vec<SourceReport> {
        match &self.upstream {
            Some(upstream) => {
                upstream.sync.lock().expect("sync lock").sources(clock::realtime_ns() as i64)
            }
            None => Vec::new(),
        }
    }

    /// Asks the owner and waits for its answer. Blocks: call it off the runtime's workers.
    fn ask<T>(&self, ask: impl FnOnce(oneshot::Sender<T>) -> Ask) -> anyhow::Result<T> {
        let (done, outcome) = oneshot::channel();
        self.owner.blocking_send(ask(done)).map_err(|_| anyhow::anyhow!("ntpxd is stopping"))?;
        outcome.blocking_recv().map_err(|_| anyhow::anyhow!("ntpxd is stopping"))
    }
}

/// What a reload applies: `new`, except for what only a restart can change, which keeps its
/// running value from `old` (so that the configuration kept always describes what runs); and
/// the names of those parts that changed.
fn reloadable(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    fn keep<T: PartialEq + Clone>(what: &'static str, new: &mut T, old: &T, kept: &mut Vec<&str>) {
        if new != old {
            kept.push(what);
            new.clone_from(old);
        }
    }
    let mut kept = Vec::new();
    keep("port", &mut new.port, &old.port, &mut kept);
    keep("bindaddress", &mut new.bind_v4, &old.bind_v4, &mut kept);
    keep("bindaddress", &mut new.bind_v6, &old.bind_v6, &mut kept);
    keep("bindcmdaddress", &mut new.command_socket, &old.command_socket, &mut kept);
    keep(
        "chronyc's sockets (chronycsocket, cmdport, bindcmdaddress, cmdallow, cmddeny)",
        &mut new.chronyc,
        &old.chronyc,
        &mut kept,
    );
    keep("metricsaddress", &mut new.metrics, &old.metrics, &mut kept);
    keep(
        "NTS (ntsservercert, ntsserverkey, ntsport, ntsdumpdir, ...)",
        &mut new.nts,
        &old.nts,
        &mut kept,
    );
    keep("pidfile", &mut new.pidfile, &old.pidfile, &mut kept);
    keep("user", &mut new.user, &old.user, &mut kept);
    keep("xdp", &mut new.xdp, &old.xdp, &mut kept);
    keep("the sources or the clock discipline", &mut new.sync, &old.sync, &mut kept);
    // The kernel's table is sized at start (one entry under noclientlog), and rate limits live
    // in it: limits on a table sized for no clients would limit everybody.
    if new.client_log.entries() != old.client_log.entries() {
        kept.push("the client log (with its rate limits)");
        (new.client_log, new.rate_limit) = (old.client_log, old.rate_limit);
    }
    kept.dedup();
    (new, kept)
}

/// The addresses the server answers for: the bind addresses, or all of this host's.
fn served_addresses(config: &Config) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = nic::local_addresses()
        .context("listing local addresses")?
        .into_iter()
        .filter(|address| match address {
            IpAddr::V4(a) => config.bind_v4.is_none_or(|bound| bound == *a),
            IpAddr::V6(a) => config.bind_v6.is_none_or(|bound| bound == *a),
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

fn bind_addresses(config: &Config) -> [SocketAddr; 2] {
    [
        SocketAddr::new(config.bind_v4.unwrap_or(Ipv4Addr::UNSPECIFIED).into(), config.port),
        SocketAddr::new(config.bind_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).into(), config.port),
    ]
}

/// The slow path: answers what reaches the socket (everything the XDP program passes, or all
/// requests where it is not attached), taking the datagrams waiting a batch at a time.
async fn serve_socket(socket: Arc<NtpSocket>, server: Arc<Server>) {
    let mut batch = Batch::default();
    loop {
        if let Err(error) = socket.recv_batch(&mut batch).await {
            tracing::warn!(%error, "receiving on the NTP socket");
            continue;
        }
        for (datagram, request) in batch.datagrams() {
            answer(&socket, &server, datagram, request).await;
        }
    }
}

/// Answers one datagram of the slow path, if it gets an answer (`request` is None for one too
/// long to be read whole).
async fn answer(socket: &NtpSocket, server: &Server, datagram: &Datagram, request: Option<&[u8]>) {
    // IP_PKTINFO is on: the kernel always says where a datagram went.
    let (Some(request), Some(destination)) = (request, datagram.destination) else {
        tracing::debug!(client = %datagram.source, len = datagram.len, "unreadable: not answered");
        server.count_unreadable();
        return;
    };
    let received_ns = datagram.received_realtime_ns.unwrap_or_else(clock::realtime_ns);
    // TAI - UTC as the kernel has it now: it changes at a leap second, at once.
    let received = TaiReading::from_system_time(received_ns, clock::tai_offset_s());
    match server.handle_datagram(request, datagram.source, destination, received, clock::tai_ns) {
        Ok(reply) => {
            let reply = reply.bytes();
            if let Err(error) = socket.send(reply, datagram.source, Some(destination)).await {
                tracing::debug!(%error, client = %datagram.source, "sending a reply");
            }
        }
        Err(reason) => tracing::debug!(client = %datagram.source, ?reason, "not answered"),
    }
}

/// Takes ntpxc's connections until the daemon stops, up to [`MAX_CONTROL_CONNECTIONS`] at once.
async fn accept_control(
    listener: UnixListener,
    connections: Arc<Semaphore>,
    context: Arc<ControlContext>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                rest_after_accept(&error, &context.server, "control").await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closed at once: the connection is dropped here.
            tracing::warn!("too many control connections: one refused");
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            serve_control(stream, context).await;
            drop(permit);
        });
    }
}

/// Rests an accept loop on `door` after `error`: a shortage of descriptors or memory is counted,
/// logged and waited out (see [`socket::accept_backoff`]); other errors concern one connection,
/// and the loop goes on at once.
async fn rest_after_accept(error: &std::io::Error, server: &Server, door: &str) {
    match socket::accept_backoff(error) {
        Some(rest) => {
            server.count_accept_backoff();
            tracing::warn!(%error, door, "cannot accept connections for now; resting {rest:?}");
            tokio::time::sleep(rest).await;
        }
        None => tracing::debug!(%error, door, "accepting a connection"),
    }
}

async fn serve_control(stream: tokio::net::UnixStream, context: Arc<ControlContext>) {
    let peer_uid = stream.peer_cred().ok().map(|credentials| credentials.uid());
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_LEN);
    let read = tokio::time::timeout(CONTROL_DEADLINE, reader.read_until(b'\n', &mut line));
    if !matches!(read.await, Ok(Ok(n)) if n > 0) {
        return;
    }
    context.server.count_command();
    let response = match serde_json::from_slice::<Request>(&line) {
        _ if !line.ends_with(b"\n") => Response::Error {
            message: format!("bad request: longer than {MAX_REQUEST_LEN} bytes, or unfinished"),
        },
        Ok(request) if request.changes_state() && !privileges::may_change_state(peer_uid) => {
            Response::Error {
                message: "not permitted: only root and ntpxd's user may change its state".into(),
            }
        }
        // Reports can read a large client table, and changes wait for the owner: off the
        // runtime's worker threads.
        Ok(request) => tokio::task::spawn_blocking(move || {
            respond(&request, &context)
                .unwrap_or_else(|error| Response::Error { message: format!("{error:#}") })
        })
        .await
        .unwrap_or_else(|error| Response::Error { message: error.to_string() }),
        Err(error) => Response::Error { message: format!("bad request: {error}") },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    // A peer that never reads gives its connection's slot back after the deadline.
    match tokio::time::timeout(CONTROL_DEADLINE, write.write_all(text.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "writing a control response"),
        Err(_) => tracing::debug!("a control peer did not read its response in time"),
    }
}

/// Answers a control request: reports from what the control side holds (the client table is
/// walked here, never by the owner), changes through the owner.
fn respond(request: &Request, context: &ControlContext) -> anyhow::Result<Response> {
    let server = &context.server;
    Ok(match request {
        Request::ServerStats => Response::ServerStats(Box::new(server_stats(context)?)),
        Request::Clients { min_requests, top, reset, after } => {
            let Some(table) = &context.clients else {
                return Ok(Response::Clients { clients: Vec::new(), next: None });
            };
            let now = table.settings().timestamp(clock::tai_ns());
            let wanted = |client: &Client| client.record.hits >= *min_requests;
            let (clients, next) = match top {
                Some(top) => {
                    // No more than the table holds, however many are asked for.
                    let mut busiest = Busiest::new((*top).min(table.capacity() as usize));
                    table.visit(|client| {
                        if wanted(&client) {
                            busiest.push(client_report(&client, now));
                        }
                    })?;
                    (busiest.finish(), None)
                }
                None => {
                    let mut page = Vec::new();
                    let next = table.page(*after, |client| {
                        if wanted(&client) {
                            page.push(client_report(&client, now));
                        }
                    })?;
                    (page, next)
                }
            };
            if *reset && next.is_none() {
                table.reset_counts()?;
            }
            Response::Clients { clients, next }
        }
        Request::Access { access, all, subnet } => {
            let subnet = match subnet {
                Some(text) => config::parse_subnet(text).map_err(anyhow::Error::msg)?,
                None => Subnet::Everything,
            };
            let rule = AccessRule { access: *access, all: *all, subnet };
            context.ask(|done| Ask::AddRule(rule, done))??;
            Response::Ok
        }
        Request::AccessCheck { address } => {
            let address: IpAddr =
                address.parse().with_context(|| format!("{address:?} is not an IP address"))?;
            Response::AccessCheck { allowed: server.is_allowed(address) }
        }
        Request::Reload => {
            reload(context)?;
            Response::Ok
        }
        Request::Tracking => {
            Response::Tracking(Box::new(tracking(server, context.upstream.as_deref())))
        }
        Request::Sources => Response::Sources { sources: context.sources() },
        Request::AuthData => Response::AuthData { sources: context.auth_data() },
    })
}

/// `tracking`: the synchronisation's, or what the server serves without one.
fn tracking(server: &Server, upstream: Option<&Upstream>) -> Tracking {
    if let Some(upstream) = upstream {
        return upstream.sync.lock().expect("sync lock").tracking(clock::realtime_ns() as i64);
    }
    let header = server.state_to_publish(clock::tai_now()).header();
    let synchronised = header.leap != ntp_common::wire::Leap::Unsynchronised;
    Tracking {
        reference_id: u32::from_be_bytes(header.reference_id.to_bits()),
        stratum: header.stratum,
        reference_time: header.reference_time.to_unix_nanos_near(clock::realtime_ns() as i64)
            as f64
            * 1e-9,
        root_delay: header.root_delay.to_seconds(),
        root_dispersion: header.root_dispersion.to_seconds(),
        leap: LeapStatus::of(synchronised.then_some(header.leap)),
        synchronised,
        ..Tracking::default()
    }
}

/// `clients --top N`: the most requests first, ties by address; at most `top` of them, and at
/// most twice that many reports held at once, however large the table.
struct Busiest {
    top: usize,
    clients: Vec<ClientReport>,
}

impl Busiest {
    fn new(top: usize) -> Self {
        Self { top, clients: Vec::new() }
    }

    fn order(a: &ClientReport, b: &ClientReport) -> std::cmp::Ordering {
        b.ntp_requests.cmp(&a.ntp_requests).then(a.address.cmp(&b.address))
    }

    fn push(&mut self, client: ClientReport) {
        self.clients.push(client);
        if self.clients.len() >= self.top.max(1).saturating_mul(2) {
            self.clients.select_nth_unstable_by(self.top.max(1) - 1, Self::order);
            self.clients.truncate(self.top);
        }
    }

    fn finish(mut self) -> Vec<ClientReport> {
        self.clients.sort_by(Self::order);
        self.clients.truncate(self.top);
        self.clients
    }
}

fn client_report(client: &Client, now: u32) -> ClientReport {
    let record = &client.record;
    ClientReport {
        address: client.address,
        ntp_requests: record.hits,
        ntp_drops: record.drops,
        ntp_kiss_of_death: record.kods,
        ntp_interval: ratelimit::interval_log2(record.rate),
        ntp_interval_limited: ratelimit::interval_log2(record.timeout_rate),
        last_ntp_ago: ratelimit::seconds_since(now, record.last_hit).unwrap_or(u32::MAX),
    }
}

fn server_stats(context: &ControlContext) -> anyhow::Result<ServerStats> {
    Ok(server_stats_from(context, context.ask(Ask::KernelView)??))
}

fn server_stats_from(context: &ControlContext, view: KernelView) -> ServerStats {
    let slow_path = context.server.slow_path_counters();
    let KernelView { counters: kernel, attachments: xdp, .. } = view;
    let mut stats = ServerStats {
        command_packets_received: context.server.commands(),
        command_packets_dropped: context.server.commands_dropped(),
        accept_backoffs: context.server.accept_backoffs(),
        slow_path,
        kernel,
        xdp,
        ..ServerStats::default()
    };
    if let Some(table) = context.clients.as_ref().filter(|table| table.settings().enabled) {
        // From counters, never a walk of the table (a scrape must cost little). The kernel does
        // not count its LRU evictions, but a record created beyond the capacity replaced one;
        // the LRU can also evict a little early (up to 128 free records wait on each CPU's
        // list), which this does not see.
        stats.client_log_records_dropped =
            stats.kernel.client_records_created.saturating_sub(u64::from(table.capacity()));
        stats.client_log_capacity = table.capacity();
        stats.client_log_bytes = table.memory().unwrap_or(0);
    }
    let kernel = &stats.kernel;
    // As chrony counts: every request logged, answered or not.
    stats.ntp_packets_received = kernel.answered
        + kernel.answered_kiss_of_death
        + kernel.dropped_rate_limit
        + slow_path.received;
    stats.ntp_packets_dropped = kernel.dropped_rate_limit + slow_path.rate_limited;
    stats.authenticated_ntp_packets = slow_path.authenticated;
    stats.nts_ke_connections_accepted = slow_path.nts_ke_accepted;
    stats.nts_ke_connections_dropped = slow_path.nts_ke_dropped;
    stats
}

/// The control socket, removed when dropped.
struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    connections: Arc<Semaphore>,
    path: PathBuf,
}

/// The longest control request, bytes (a request is a line of JSON).
const MAX_REQUEST_LEN: u64 = 4096;
/// At most this many control connections are served at once; more are closed at once.
const MAX_CONTROL_CONNECTIONS: usize = 16;
/// How long a control peer has to send its request, and then to read the response.
const CONTROL_DEADLINE: Duration = Duration::from_secs(5);

impl ControlSocket {
    fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use: is another ntpxd running?", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        let connections = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
        Ok(Self { listener, path: path.to_owned(), connections })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        config::parse(Path::new("test.conf"), text).unwrap().config
    }

    #[test]
    fn the_busiest_clients_come_first_and_only_top_are_kept() {
        let report = |i: u32| ClientReport {
            address: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            ntp_requests: (i * 7919) % 101,
            ntp_drops: 0,
            ntp_kiss_of_death: 0,
            ntp_interval: 0,
            ntp_interval_limited: 0,
            last_ntp_ago: 0,
        };
        let mut all: Vec<ClientReport> = (0..1000).map(report).collect();
        all.sort_by(Busiest::order);
        for top in [0, 1, 7, 1000, 2000, usize::MAX] {
            let mut busiest = Busiest::new(top);
            for i in 0..1000 {
                busiest.push(report(i));
                assert!(busiest.clients.len() < top.max(1).saturating_mul(2));
            }
            let expected = &all[..top.min(1000)];
            assert_eq!(busiest.finish(), expected, "top {top}");
        }
    }

    #[test]
    fn a_reload_that_turns_the_client_log_on_keeps_it_off_until_a_restart() {
        let old = config("allow\nnoclientlog\n");
        let new = config("allow\nratelimit interval 1 burst 4\nclientlog entries 1000\n");
        let (applied, needs_restart) = reloadable(&old, new);
        assert_eq!(needs_restart, ["the client log (with its rate limits)"]);
        let settings = client_log_settings(&applied, 0);
        assert!(!settings.enabled);
        assert_eq!(settings.limit, RateLimit::DISABLED);
    }

    #[test]
    fn a_reload_applies_the_rules_and_keeps_what_needs_a_restart() {
        let old = config("allow 10.0.0.0/8\nport 123\nratelimit interval 1\n");
        let new = config("deny 10.0.0.0/8\nport 1123\nratelimit interval 3\n");
        let (applied, needs_restart) = reloadable(&old, new.clone());
        assert_eq!(needs_restart, ["port"]);
        assert_eq!(applied.port, 123);
        assert_eq!(applied.access, new.access);
        assert_eq!(applied.rate_limit, new.rate_limit);
        let (unchanged, nothing) = reloadable(&old, old.clone());
        assert!(nothing.is_empty());
        assert_eq!(unchanged, old);
    }
}
