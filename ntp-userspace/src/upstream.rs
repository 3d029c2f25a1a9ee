//! The synchronisation's I/O shell: name lookups (pools looked up again when their servers are
//! lost), one UDP socket per request (a fresh random source port each time) with the kernel's
//! transmit and receive timestamps, the poll timer, the kernel clock and the driftfile. Decisions live in
//! `sync`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::AsyncWriteExt as _,
    sync::{Notify, mpsc},
};

use crate::{
    config::{LeapSecondSource, SourceConfig, SourceKind, SyncConfig},
    control::NtsAuthData,
    nts::{
        ALPN, COOKIES, SessionKeys,
        ke::{self, Granted},
        packet::{self, ReplyError},
    },
    sync::{
        SourceId, SyncSettings, Synchroniser,
        discipline::{Action, ClockControl, Discipline},
        leap::{LeapTable, TZDATA_LEAP_SECONDS},
        source::Request,
    },
    sys::{
        clock::{self, KernelClockControl},
        files,
        socket::NtpSocket,
    },
};

/// How often the driftfile is written (and at exit), as chrony does.
const DRIFT_WRITE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often unresolved names and pools short of servers are looked up again.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(60);
/// The longest the poll timer sleeps: new sources are noticed within it.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);
/// NTS-KE's port, and how long a key exchange may take.
const NTS_KE_PORT: u16 = 4460;
const NTS_KE_TIMEOUT: Duration = Duration::from_secs(5);
const NTS_KE_MAX_BACKOFF: Duration = Duration::from_secs(1024);
/// Where Debian keeps the system's CA certificates.
const SYSTEM_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The synchroniser, shared by the polling task, the publishing tick and the control socket.
pub struct Upstream {
    pub sync: Mutex<Synchroniser>,
    /// Told when the system clock was stepped: the published state is wrong until replaced.
    pub clock_stepped: Notify,
    driftfile: Option<PathBuf>,
    drift_written: Mutex<Instant>,
    /// NTS-KE's TLS, when a source has `nts`.
    nts_tls: Option<Arc<rustls::ClientConfig>>,
    /// The NTS sources' associations, by address (for `chronyc authdata` too).
    pub nts: Mutex<HashMap<SocketAddr, NtsAssociation>>,
}

impl Upstream {
    /// Sets up the synchronisation: the discipline (none with `-x`), the driftfile's frequency,
    /// the leap second table.
    pub fn new(config: &SyncConfig, precision: i8, no_clock_control: bool) -> anyhow::Result<Self> {
        let control: Option<Box<dyn ClockControl>> = if no_clock_control {
            None
        } else {
            let mut kernel = KernelClockControl;
            if let Some(path) = &config.driftfile
                && let Some(ppm) = read_driftfile(path)?
            {
                kernel.set_frequency(ppm).context("setting the frequency from the driftfile")?;
                tracing::info!(ppm, file = %path.display(), "frequency from the driftfile");
            }
            Some(Box::new(kernel))
        };
        let now = clock::realtime_ns() as i64;
        let discipline = Discipline::new(control, config.makestep, now)
            .context("reading the kernel clock's frequency")?;
        let leap_table = match &config.leap_seconds {
            None => None,
            Some(source) => {
                let path = match source {
                    LeapSecondSource::TimeZone(_) => Path::new(TZDATA_LEAP_SECONDS),
                    LeapSecondSource::List(path) => path.as_path(),
                };
                match read_leap_table(path) {
                    Ok(table) => Some(table),
                    Err(error) => {
                        tracing::warn!("{error:#}: leap seconds come from the sources only");
                        None
                    }
                }
            }
        };
        let settings = SyncSettings {
            max_distance: config.max_distance,
            clock_error: config.max_clock_error_ppm * 1e-6,
            rtcsync: config.rtcsync,
            precision,
        };
        let nts_tls = config
            .sources
            .iter()
            .any(|source| source.nts)
            .then(|| nts_client_tls(&config.nts_trusted_certs, config.nts_system_certs))
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            sync: Mutex::new(Synchroniser::new(settings, discipline, leap_table, now)),
            clock_stepped: Notify::new(),
            driftfile: config.driftfile.clone(),
            drift_written: Mutex::new(Instant::now()),
            nts_tls,
            nts: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the synchronisation adjusts the system clock (not under `-x`).
    pub fn controls_clock(&self) -> bool {
        self.sync.lock().expect("sync lock").controls_clock()
    }

    /// Writes the driftfile if an hour has passed since it was last written (or `now`).
    pub fn save_drift(&self, force: bool) {
        let Some(path) = &self.driftfile else { return };
        let mut written = self.drift_written.lock().expect("drift lock");
        if !force && written.elapsed() < DRIFT_WRITE_INTERVAL {
            return;
        }
        let (frequency, skew) = self.sync.lock().expect("sync lock").drift();
        if let Err(error) = write_driftfile(path, frequency, skew) {
            tracing::warn!(file = %path.display(), %error, "cannot write the driftfile");
        }
        *written = Instant::now();
    }
}

/// NTS-KE's TLS as a client: TLS 1.3, ALPN `ntske/1`, the server's certificate checked
/// against `trusted` (`ntstrustedcerts`) and, with `system` (no `nosystemcert`), the system's
/// CAs.
pub fn nts_client_tls(trusted: &[PathBuf], system: bool) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let system = system.then(|| PathBuf::from(SYSTEM_CERTIFICATES));
    for path in trusted.iter().cloned().chain(system) {
        let certificates = CertificateDer::pem_file_iter(&path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading the CA certificates in {}", path.display()))?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            bail!("no CA certificate in {}", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

fn read_leap_table(path: &Path) -> anyhow::Result<LeapTable> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    LeapTable::parse(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", path.display()))
}

/// The frequency a driftfile holds, ppm (chrony's format: frequency and skew in ppm).
fn read_driftfile(path: &Path) -> anyhow::Result<Option<f64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    match text.split_whitespace().next().map(str::parse::<f64>) {
        Some(Ok(ppm)) if ppm.abs() <= 500.0 => Ok(Some(ppm)),
        _ => {
            tracing::warn!(file = %path.display(), "driftfile not understood; ignored");
            Ok(None)
        }
    }
}

fn write_driftfile(path: &Path, frequency_ppm: f64, skew_ppm: f64) -> io::Result<()> {
    files::write_atomically(path, format!("{frequency_ppm:.6} {skew_ppm:.6}\n").as_bytes())
}

/// What the polling task hears from its helpers.
enum Event {
    /// The outcome of one request: when it left and, if one came, the reply; for an NTS
    /// source, the keys and identifier that protected it.
    Exchange {
        source: SourceId,
        request: Request,
        protection: Option<Protection>,
        sent_ns: i64,
        reply: Option<Reply>,
    },
    /// A lookup of configured source `index`.
    Resolved { index: usize, addresses: Vec<SocketAddr> },
    /// The outcome of an NTS-KE for the source at `address`: the keys, what was granted, and
    /// where the NTP requests go.
    KeyExchange { address: SocketAddr, outcome: anyhow::Result<(SessionKeys, Granted, SocketAddr)> },
}

/// What protected an NTS request, to check its reply with.
struct Protection {
    keys: SessionKeys,
    unique_id: [u8; 32],
}

/// An NTS source's association: the keys and cookies NTS-KE gave (and replies renewed).
#[derive(Default)]
pub struct NtsAssociation {
    keys: Option<SessionKeys>,
    cookies: VecDeque<Vec<u8>>,
    exchanging_keys: bool,
    /// Key exchanges tried since the last that succeeded, and when that was.
    attempts: u16,
    last_exchange: Option<Instant>,
    /// After a failed key exchange, none before this (doubling, up to [`NTS_KE_MAX_BACKOFF`]).
    retry_at: Option<Instant>,
    naks: u16,
    /// The NTP server the key exchange named (its Server and Port records), where requests go;
    /// None: the source's own address.
    ntp_address: Option<SocketAddr>,
}

impl NtsAssociation {
    pub fn report(&self) -> NtsAuthData {
        NtsAuthData {
            attempts: self.attempts,
            last_exchange_ago: self.last_exchange.map(|at| at.elapsed().as_secs() as u32),
            naks: self.naks,
            cookies: self.cookies.len() as u16,
            cookie_length: self.cookies.front().map_or(0, |c| c.len() as u16),
        }
    }
}

struct Reply {
    bytes: Vec<u8>,
    from: SocketAddr,
    received_ns: i64,
}

/// Polls the configured sources until the daemon stops.
pub async fn poll_sources(upstream: Arc<Upstream>, sources: Vec<SourceConfig>) {
    let (events_tx, mut events) = mpsc::channel(256);
    // Which configured line each server came from (reference clocks are sources too).
    let mut origins: Origins = BTreeMap::new();
    let mut looking_up = vec![false; sources.len()];
    let mut lookups = tokio::time::interval(LOOKUP_INTERVAL);
    loop {
        let wait = {
            let sync = upstream.sync.lock().expect("sync lock");
            let now = clock::realtime_ns() as i64;
            sync.next_poll_ns().map_or(MAX_TIMER_SLEEP, |next| {
                Duration::from_nanos((next - now).max(0) as u64).min(MAX_TIMER_SLEEP)
            })
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let exchanges: Vec<_> = {
                    let mut sync = upstream.sync.lock().expect("sync lock");
                    let requests = sync.poll(clock::realtime_ns() as i64, random_u64);
                    // A reply is awaited for the poll interval, within 1 to 8 s.
                    requests.into_iter().map(|(source, request)| {
                        let interval = 2f64.powi(sync.source(source).poll.into());
                        (source, request, Duration::from_secs_f64(interval.clamp(1.0, 8.0)))
                    }).collect()
                };
                for (source, request, timeout) in exchanges {
                    let config = &sources[origins[&source]];
                    let (Some(tls), true) = (&upstream.nts_tls, config.nts) else {
                        let wire = request.bytes.to_vec();
                        let sent = Sent { source, destination: request.to, request, protection: None };
                        tokio::spawn(exchange(sent, wire, timeout, events_tx.clone()));
                        continue;
                    };
                    let mut associations = upstream.nts.lock().expect("NTS lock");
                    let association = associations.entry(request.to).or_default();
                    // Without keys and a cookie, no request: a key exchange first.
                    let (Some(keys), Some(cookie)) =
                        (association.keys.clone(), association.cookies.pop_front())
                    else {
                        let waiting = association.retry_at.is_some_and(|at| Instant::now() < at);
                        if !association.exchanging_keys && !waiting {
                            association.exchanging_keys = true;
                            association.attempts = association.attempts.saturating_add(1);
                            let (name, tls) = (config.name.clone(), tls.clone());
                            tokio::spawn(key_exchange(request.to, name, tls, events_tx.clone()));
                        }
                        continue;
                    };
                    // As many placeholders as bring the cookies back to eight.
                    let placeholders = COOKIES.saturating_sub(association.cookies.len() + 1);
                    let (wire, unique_id) =
                        packet::protect(&request.bytes, &cookie, placeholders, &keys);
                    let destination = association.ntp_address.unwrap_or(request.to);
                    let protection = Some(Protection { keys, unique_id });
                    drop(associations);
                    let sent = Sent { source, request, destination, protection };
                    tokio::spawn(exchange(sent, wire, timeout, events_tx.clone()));
                }
            }
            _ = lookups.tick() => {
                let sync = upstream.sync.lock().expect("sync lock");
                for (index, source) in sources.iter().enumerate() {
                    let members = members_of(&origins, index);
                    let lost = members.iter().any(|&id| sync.source(id).is_unreachable());
                    let short = members.len() < source.kind.max_sources();
                    let replaceable = matches!(source.kind, SourceKind::Pool { .. }) && lost;
                    if (short || replaceable) && !looking_up[index] {
                        looking_up[index] = true;
                        tokio::spawn(look_up(index, source.clone(), events_tx.clone()));
                    }
                }
            }
            Some(event) = events.recv() => match event {
                Event::Exchange { source, request, protection, sent_ns, reply } => {
                    let reply = match (reply, protection) {
                        (Some(reply), Some(protection)) => {
                            let mut associations = upstream.nts.lock().expect("NTS lock");
                            let association = associations.entry(request.to).or_default();
                            authenticated(reply, &protection, association)
                        }
                        (reply, _) => reply,
                    };
                    let mut sync = upstream.sync.lock().expect("sync lock");
                    sync.transmitted(source, &request, sent_ns);
                    if let Some(Reply { bytes, from, received_ns }) = reply
                        && let Some(Action::Stepped(_)) = sync.receive(source, &bytes, from, received_ns)
                    {
                        upstream.clock_stepped.notify_one();
                    }
                }
                Event::KeyExchange { address, outcome } => {
                    let mut associations = upstream.nts.lock().expect("NTS lock");
                    let association = associations.entry(address).or_default();
                    association.exchanging_keys = false;
                    let name = address.ip().to_string();
                    match outcome {
                        Ok((keys, granted, ntp_address)) => {
                            tracing::info!(name, cookies = granted.cookies.len(), %ntp_address, "NTS-KE done");
                            association.ntp_address = Some(ntp_address);
                            association.keys = Some(keys);
                            association.cookies = granted.cookies.into();
                            association.attempts = 0;
                            association.last_exchange = Some(Instant::now());
                            association.retry_at = None;
                        }
                        Err(error) => {
                            let backoff = Duration::from_secs(1 << association.attempts.min(10))
                                .min(NTS_KE_MAX_BACKOFF);
                            association.retry_at = Some(Instant::now() + backoff);
                            tracing::warn!(name, error = format!("{error:#}"), ?backoff, "NTS-KE failed; trying again later");
                        }
                    }
                }
                Event::Resolved { index, addresses } => {
                    looking_up[index] = false;
                    let mut sync = upstream.sync.lock().expect("sync lock");
                    add_resolved(&mut sync, &mut origins, index, &sources[index], &addresses);
                }
            },
        }
    }
}

/// Adds what a lookup found: a server's first address; for a pool, new addresses in place of
/// unreachable members, then up to `maxsources`.
fn add_resolved(
    sync: &mut Synchroniser,
    origins: &mut Origins,
    index: usize,
    source: &SourceConfig,
    addresses: &[SocketAddr],
) {
    let now = clock::realtime_ns() as i64;
    let in_use = |sync: &Synchroniser, address: &SocketAddr| {
        (0..sync.source_count()).any(|id| sync.source(id).address == *address)
    };
    let mut fresh =
        addresses.iter().filter(|a| !in_use(sync, a)).copied().collect::<Vec<_>>().into_iter();
    let members = members_of(origins, index);
    // A server keeps its configured name; a pool's members are known by their addresses.
    let name_of = |address: &SocketAddr| match source.kind {
        SourceKind::Server => source.name.clone(),
        SourceKind::Pool { .. } => address.ip().to_string(),
    };
    if matches!(source.kind, SourceKind::Pool { .. }) {
        for &id in &members {
            if sync.source(id).is_unreachable()
                && let Some(address) = fresh.next()
            {
                tracing::info!(pool = source.name, old = %sync.source(id).address, new = %address, "replacing an unreachable pool server");
                sync.replace_source(id, name_of(&address), address, now);
            }
        }
    }
    for address in fresh.take(source.kind.max_sources().saturating_sub(members.len())) {
        tracing::info!(name = source.name, %address, "new source");
        let id = sync.add_source(name_of(&address), address, source.poll, now);
        origins.insert(id, index);
    }
}

/// The configured server or pool line each source came from.
type Origins = BTreeMap<SourceId, usize>;

/// The sources that came from configured line `index`.
fn members_of(origins: &Origins, index: usize) -> Vec<SourceId> {
    origins.iter().filter(|(_, line)| **line == index).map(|(id, _)| *id).collect()
}

async fn look_up(index: usize, source: SourceConfig, events: mpsc::Sender<Event>) {
    let addresses = match tokio::net::lookup_host((source.name.as_str(), source.port)).await {
        Ok(addresses) => addresses.collect(),
        Err(error) => {
            tracing::warn!(name = source.name, %error, "cannot resolve; trying again later");
            Vec::new()
        }
    };
    let _ = events.send(Event::Resolved { index, addresses }).await;
}

/// An NTS reply's header if its authenticator checks out (its cookies kept); None if not, as
/// if it never came. A NAK ends the association: the next poll exchanges keys again.
fn authenticated(
    reply: Reply,
    protection: &Protection,
    association: &mut NtsAssociation,
) -> Option<Reply> {
    match packet::verify_reply(&reply.bytes, &protection.unique_id, &protection.keys) {
        Ok(cookies) => {
            association.cookies.extend(cookies);
            association.cookies.truncate(COOKIES);
            Some(Reply { bytes: reply.bytes[..ntp_common::wire::HEADER_LEN].to_vec(), ..reply })
        }
        Err(ReplyError::Nak) => {
            tracing::info!(from = %reply.from, "NTS NAK: keys and cookies dropped");
            association.keys = None;
            association.cookies.clear();
            association.naks = association.naks.saturating_add(1);
            None
        }
        Err(ReplyError::Invalid) => {
            tracing::debug!(from = %reply.from, "an NTS reply that is not authentic: not used");
            None
        }
    }
}

/// NTS-KE with `name` (port 4460) for the source at `address`: the keys exported from the
/// session, what it granted, and the NTP server to poll with them.
async fn key_exchange(
    address: SocketAddr,
    name: String,
    tls: Arc<rustls::ClientConfig>,
    events: mpsc::Sender<Event>,
) {
    let exchange = async {
        let (keys, granted) = nts_key_exchange(address, &name, tls).await?;
        let ntp_address = ntp_server_of(address, &granted.ntp_server).await?;
        Ok((keys, granted, ntp_address))
    };
    let outcome = tokio::time::timeout(NTS_KE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    let _ = events.send(Event::KeyExchange { address, outcome }).await;
}

/// Where NTS's NTP requests go (RFC 8915 4.1.7, 4.1.8): the server and port an NTS-KE
/// response names, each defaulting to the source's own (the NTS-KE server's address, the
/// configured port); a name is looked up, an address of the source's family preferred.
async fn ntp_server_of(source: SocketAddr, named: &ke::NtpServer) -> anyhow::Result<SocketAddr> {
    let port = named.port.unwrap_or(source.port());
    let Some(name) = &named.name else {
        return Ok(SocketAddr::new(source.ip(), port));
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .with_context(|| format!("looking up the NTP server {name} that NTS-KE named"))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4() == source.is_ipv4())
        .or(addresses.first())
        .copied()
        .with_context(|| format!("the NTP server {name} that NTS-KE named has no address"))
}

/// One NTS-KE with the server at `address` (port 4460), whose certificate must name `name`
/// (a pool's members are all checked against the pool's name, as chronyd checks them): the
/// keys exported from the session and what the server granted.
pub async fn nts_key_exchange(
    address: SocketAddr,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(SessionKeys, Granted)> {
    let ke_address = SocketAddr::new(address.ip(), NTS_KE_PORT);
    let stream = tokio::net::TcpStream::connect(ke_address)
        .await
        .with_context(|| format!("connecting to {ke_address}"))?;
    let server_name = ServerName::try_from(name.to_owned())?;
    let mut session =
        tokio_rustls::TlsConnector::from(tls).connect(server_name, stream).await.context("TLS")?;
    if session.get_ref().1.alpn_protocol() != Some(ALPN) {
        bail!("the server did not agree to ntske/1");
    }
    session.write_all(&ke::client_request()).await?;
    let granted = crate::tls::read_message(&mut session, "response", 64 * 1024, ke::read_response)
        .await?
        .map_err(anyhow::Error::msg)?;
    Ok((crate::tls::session_keys(session.get_ref().1)?, granted))
}

/// A request on its way: to `destination` (the source's address, or the NTP server an NTS-KE
/// named), and what protected it.
struct Sent {
    source: SourceId,
    request: Request,
    destination: SocketAddr,
    protection: Option<Protection>,
}

/// Sends one request (`wire`: its bytes, NTS fields included) from a new socket (a random
/// source port) and waits for its reply, which is handed on as the source's.
async fn exchange(sent: Sent, wire: Vec<u8>, timeout: Duration, events: mpsc::Sender<Event>) {
    let Sent { source, request, destination, protection } = sent;
    let unspecified: SocketAddr = match destination {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match NtpSocket::bind(unspecified) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(%error, "cannot open a socket for a request");
            return;
        }
    };
    if let Err(error) = socket.enable_transmit_timestamps() {
        tracing::debug!(%error, "no kernel transmit timestamps: the send time is read before");
    }
    let sent_ns = match socket.send_now(&wire, destination).await {
        Ok(sent) => sent as i64,
        Err(error) => {
            tracing::debug!(to = %request.to, %error, "sending a request");
            return;
        }
    };
    let mut buffer = [0u8; 2048];
    let receive = async {
        loop {
            match socket.recv(&mut buffer).await {
                // Anything else on this port (from elsewhere, or a forgery without the
                // request's transmit timestamp) is ignored: the reply may still come.
                Ok(datagram)
                    if datagram.source == destination
                        && request.is_answered_by(&buffer[..datagram.len], request.to) =>
                {
                    return Some(datagram);
                }
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%error, "receiving a reply");
                    return None;
                }
            }
        }
    };
    let received = tokio::time::timeout(timeout, receive).await;
    // The reply came after the request left: its kernel timestamp is queued by now.
    let sent_ns = socket.transmit_timestamp().map_or(sent_ns, |sent| sent as i64);
    let reply = match received {
        // From the destination: the source's reply, wherever the source sent it from.
        Ok(Some(datagram)) => Some(Reply {
            bytes: buffer[..datagram.len].to_vec(),
            from: request.to,
            received_ns: datagram.received_realtime_ns.unwrap_or_else(clock::realtime_ns) as i64,
        }),
        _ => None,
    };
    let _ = events.send(Event::Exchange { source, request, protection, sent_ns, reply }).await;
}

/// 64 unpredictable bits for a request's transmit timestamp.
fn random_u64() -> u64 {
    u64::from_ne_bytes(crate::random::bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driftfile_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drift");
        assert_eq!(read_driftfile(&path).unwrap(), None);
        write_driftfile(&path, -12.345_678, 0.0123).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "-12.345678 0.012300\n");
        assert_eq!(read_driftfile(&path).unwrap(), Some(-12.345_678));
        std::fs::write(&path, "nonsense\n").unwrap();
        assert_eq!(read_driftfile(&path).unwrap(), None);
    }

    #[test]
    fn a_pool_replaces_its_unreachable_servers() {
        let now = clock::realtime_ns() as i64;
        let discipline = Discipline::new(None, None, now).unwrap();
        let mut sync = Synchroniser::new(SyncSettings::default(), discipline, None, now);
        let pool = SourceConfig {
            kind: SourceKind::Pool { max_sources: 2 },
            name: "pool.example".into(),
            port: 123,
            poll: Default::default(),
            nts: false,
        };
        let [a, b, c]: [SocketAddr; 3] =
            ["192.0.2.1:123", "192.0.2.2:123", "192.0.2.3:123"].map(|a| a.parse().unwrap());
        let mut origins = Origins::new();
        add_resolved(&mut sync, &mut origins, 0, &pool, &[a, b, c]);
        let addresses = |sync: &Synchroniser| {
            (0..sync.source_count()).map(|id| sync.source(id).address).collect::<Vec<_>>()
        };
        assert_eq!(addresses(&sync), [a, b], "maxsources 2");
        // Eight polls without a reply: both unreachable; the lookup gives one new address.
        for poll in 1..=8 {
            sync.poll(now + poll * 3_600_000_000_000, || 0);
        }
        add_resolved(&mut sync, &mut origins, 0, &pool, &[a, b, c]);
        assert_eq!(addresses(&sync), [c, b]);
        assert_eq!(sync.source(0).name, "192.0.2.3");
    }

    #[test]
    fn random_transmit_timestamps_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
