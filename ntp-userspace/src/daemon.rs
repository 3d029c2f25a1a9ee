//! ntpxd's I/O shell: the XDP program, the slow-path sockets, the control socket, the timer
//! that keeps the kernel's state fresh, and signals. Decisions live in `server` and `reference`.

use std::{
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    access::AccessTable,
    clock::{self, KernelClock},
    config::Config,
    control::{KernelCounters, Request, Response, ServerStats, XdpAttachment},
    dataplane::Dataplane,
    reference::{Reference, TaiReading},
    server::{PUBLISH_INTERVAL_NS, Server, Unanswered},
    socket::NtpSocket,
};

/// Command-line choices that are not configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `-x`: never adjust the system clock.
    pub no_clock_control: bool,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    let Options { no_clock_control } = options;
    let kernel_clock = KernelClock::read().context("reading the kernel clock (adjtimex)")?;
    let precision = clock::precision_log2();
    let access = AccessTable::from_rules(&config.access);
    let server = Arc::new(Server::new(
        Reference::new(config.local, precision),
        access.clone(),
        kernel_clock.tai_offset_s,
    ));
    let _pidfile = Pidfile::create(&config.pidfile)?;
    tracing::info!(
        port = config.port,
        no_clock_control,
        precision,
        local = ?config.local,
        "ntpxd starting"
    );

    let dataplane = Arc::new(Mutex::new(None::<Dataplane>));
    let mut sockets = Vec::new();
    if config.port == 0 {
        tracing::warn!("port 0: not serving NTP");
    } else {
        if !config.xdp.is_empty() {
            let loaded = start_dataplane(&config, &server, &access)?;
            *dataplane.lock().expect("dataplane lock") = Some(loaded);
        }
        for address in bind_addresses(&config) {
            let socket = NtpSocket::bind(address)
                .with_context(|| format!("binding the NTP socket to {address}"))?;
            sockets.push(Arc::new(socket));
        }
    }
    for socket in &sockets {
        tokio::spawn(serve_socket(socket.clone(), server.clone()));
    }
    let control = ControlSocket::bind(&config.command_socket)?;

    let mut ticker = tokio::time::interval(Duration::from_nanos(PUBLISH_INTERVAL_NS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut dataplane = dataplane.lock().expect("dataplane lock");
                if let Err(error) = refresh(&server, dataplane.as_mut(), &config) {
                    tracing::error!(error = format!("{error:#}"), "cannot refresh the kernel's state");
                }
            }
            connection = control.listener.accept() => match connection {
                Ok((stream, _)) => {
                    tokio::spawn(serve_control(stream, server.clone(), dataplane.clone()));
                }
                Err(error) => tracing::warn!(%error, "control socket"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP: reloading the configuration is not implemented yet; \
                    restart ntpxd to apply changes");
            }
        }
    }

    tracing::info!("ntpxd stopping");
    if let Some(dataplane) = dataplane.lock().expect("dataplane lock").as_mut() {
        dataplane.detach_all()?;
    }
    Ok(())
}

/// Loads the program, fills its maps, publishes the state, then attaches: the program never
/// runs on an interface before it has everything it needs.
fn start_dataplane(
    config: &Config,
    server: &Server,
    access: &AccessTable,
) -> anyhow::Result<Dataplane> {
    let mut dataplane = Dataplane::load(config.port)?;
    dataplane.set_access(access)?;
    refresh(server, Some(&mut dataplane), config)?;
    for xdp in &config.xdp {
        let mode = dataplane.attach(&xdp.interface, xdp.mode)?;
        tracing::info!(interface = xdp.interface, ?mode, "XDP attached");
    }
    Ok(dataplane)
}

/// Follows the kernel clock and, with XDP, publishes a fresh state and the local addresses.
fn refresh(
    server: &Server,
    dataplane: Option<&mut Dataplane>,
    config: &Config,
) -> anyhow::Result<()> {
    let kernel = KernelClock::read().context("adjtimex")?;
    let now = TaiReading { tai_ns: clock::tai_ns(), tai_offset_s: kernel.tai_offset_s };
    server.observe_clock(now);
    if let Some(dataplane) = dataplane {
        dataplane.publish(&server.state_to_publish(now));
        dataplane.set_local_addresses(&served_addresses(config)?);
    }
    Ok(())
}

/// The addresses the server answers for: the bind addresses, or all of this host's.
fn served_addresses(config: &Config) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .context("listing local addresses")?
        .filter_map(|interface| {
            let address = interface.address?;
            address
                .as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        })
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
/// requests where it is not attached).
async fn serve_socket(socket: Arc<NtpSocket>, server: Arc<Server>) {
    let mut buffer = [0u8; 1024];
    loop {
        let datagram = match socket.recv(&mut buffer).await {
            Ok(datagram) => datagram,
            Err(error) => {
                tracing::warn!(%error, "receiving on the NTP socket");
                continue;
            }
        };
        let received = datagram.received_realtime_ns.unwrap_or_else(clock::realtime_ns);
        let request = &buffer[..datagram.len];
        let destination = datagram.destination.map(|(address, _)| address);
        match server.handle_datagram(
            request,
            datagram.source.ip(),
            destination,
            received,
            clock::tai_ns,
        ) {
            Ok(reply) => {
                if let Err(error) = socket.send(&reply, datagram.source, datagram.destination).await
                {
                    tracing::debug!(%error, client = %datagram.source, "sending a reply");
                }
            }
            Err(Unanswered::Denied) => {
                tracing::debug!(client = %datagram.source, "denied by the access rules");
            }
            Err(reason) => tracing::debug!(client = %datagram.source, ?reason, "not answered"),
        }
    }
}

async fn serve_control(
    stream: tokio::net::UnixStream,
    server: Arc<Server>,
    dataplane: Arc<Mutex<Option<Dataplane>>>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line));
    if !matches!(read.await, Ok(Ok(n)) if n > 0) {
        return;
    }
    server.count_command();
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => respond(&request, &server, &dataplane),
        Err(error) => Response::Error { message: format!("bad request: {error}") },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    if let Err(error) = write.write_all(text.as_bytes()).await {
        tracing::debug!(%error, "writing a control response");
    }
}

fn respond(request: &Request, server: &Server, dataplane: &Mutex<Option<Dataplane>>) -> Response {
    match request {
        Request::ServerStats => {
            let mut dataplane = dataplane.lock().expect("dataplane lock");
            let (kernel, xdp) = match dataplane.as_mut() {
                Some(dataplane) => match dataplane.counters() {
                    Ok(counters) => (
                        KernelCounters::from_array(&counters),
                        dataplane
                            .attachments()
                            .map(|(interface, mode)| XdpAttachment {
                                interface: interface.to_owned(),
                                mode,
                            })
                            .collect(),
                    ),
                    Err(error) => return Response::Error { message: format!("{error:#}") },
                },
                None => (KernelCounters::default(), Vec::new()),
            };
            let slow_path = server.slow_path_counters();
            Response::ServerStats(ServerStats {
                ntp_packets_received: kernel.answered + slow_path.received,
                command_packets_received: server.commands(),
                kernel,
                slow_path,
                xdp,
                ..ServerStats::default()
            })
        }
    }
}

/// The control socket, removed when dropped.
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

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
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        Ok(Self { listener, path: path.to_owned() })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pidfile, removed when dropped.
struct Pidfile(PathBuf);

impl Pidfile {
    fn create(path: &Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse::<i32>()
            && pid != std::process::id() as i32
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            bail!("ntpxd is already running (pid {pid} in {})", path.display());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::File::create(path)
            .with_context(|| format!("writing the pidfile {}", path.display()))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "removing the pidfile");
        }
    }
}
