//! NTS-KE's TLS listener: TLS 1.3 alone, ALPN `ntske/1`, the certificate and key of
//! `ntsservercert` / `ntsserverkey`; connections from addresses the access rules deny or
//! `ntsratelimit` limits closed before TLS; at most `maxntsconnections` sessions at once, each
//! given [`SESSION_TIMEOUT`] to finish; the keys exported from the session sealed into eight
//! cookies with the server keys, which rotate every `ntsrotate` seconds and are kept in
//! `ntsdumpdir`, or, in a fleet, are derived from `ntsmastersecret` period by period.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{DEFAULT_NTP_PORT, MasterSecret, NtsServerConfig},
    nts::{
        ALPN,
        connections::ConnectionLog,
        cookie::{KeyRing, MIN_MASTER_SECRET_LEN},
        ke::{self, Negotiation, NtpServer, Read},
    },
    random,
    server::Server,
    sys::{clock, files, socket},
};

/// How long a session may take, handshake to the last byte (chrony gives 2 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// The server keys' file in `ntsdumpdir`.
const KEY_FILE: &str = "ntpx-nts-keys";

/// NTS-KE's sockets and TLS configuration, ready before privileges are dropped.
pub struct NtsKeListener {
    listeners: Vec<std::net::TcpListener>,
    acceptor: TlsAcceptor,
    config: NtsServerConfig,
    keys: ServerKeys,
}

/// Where the server keys come from.
enum ServerKeys {
    /// Random keys, rotated every `ntsrotate` seconds (and kept in `ntsdumpdir`'s file).
    Rotated(KeyRing),
    /// The fleet's master secret: keys derived from it for each period.
    Derived { secret: Vec<u8>, period_s: u64 },
}

impl NtsKeListener {
    /// Reads the certificate, key and server keys, and binds `addresses` (at `ntsport`).
    pub fn bind(config: &NtsServerConfig, addresses: &[SocketAddr]) -> anyhow::Result<Self> {
        let (Some(certificate), Some(key)) = (&config.certificate, &config.key) else {
            bail!("NTS needs both ntsservercert and ntsserverkey");
        };
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(certificate, key)?));
        let listeners = addresses
            .iter()
            .map(|&address| {
                socket::bind_tcp_listener(SocketAddr::new(address.ip(), config.port))
                    .with_context(|| format!("binding NTS-KE on port {}", config.port))
            })
            .collect::<anyhow::Result<_>>()?;
        let keys = match &config.master_secret {
            Some(MasterSecret { path, period_s }) => {
                let secret = files::read_secret(path).context("reading ntsmastersecret")?;
                if secret.len() < MIN_MASTER_SECRET_LEN {
                    bail!(
                        "{}: a master secret is at least {MIN_MASTER_SECRET_LEN} bytes \
                         (head -c 32 /dev/urandom > FILE)",
                        path.display()
                    );
                }
                ServerKeys::Derived { secret, period_s: *period_s }
            }
            None => ServerKeys::Rotated(load_or_create_keys(config)?),
        };
        Ok(Self { listeners, acceptor, config: config.clone(), keys })
    }

    /// Serves NTS-KE, and rotates the server keys, until the daemon stops; `ntp_port` is
    /// named to clients where it is not 123, as chronyd names it. `client_log_size` bounds
    /// the addresses `ntsratelimit` remembers.
    pub fn serve(
        self,
        server: Arc<Server>,
        ntp_port: u16,
        client_log_size: usize,
    ) -> anyhow::Result<()> {
        let Self { listeners, acceptor, config, keys } = self;
        let doors = Arc::new(Doors {
            acceptor,
            ntp_server: NtpServer {
                name: config.ntp_server.clone(),
                port: (ntp_port != DEFAULT_NTP_PORT).then_some(ntp_port),
            },
            sessions: Arc::new(Semaphore::new(config.max_connections)),
            connections: config
                .rate_limit
                .map(|limit| Mutex::new(ConnectionLog::new(limit.bucket(), client_log_size))),
            started: Instant::now(),
        });
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(accept(listener, doors.clone(), server.clone()));
        }
        match keys {
            ServerKeys::Rotated(keys) => {
                server.set_nts_keys(keys.clone());
                if config.rotate_s > 0 {
                    tokio::spawn(rotate(keys, config, server));
                }
            }
            ServerKeys::Derived { secret, period_s } => {
                server.set_nts_keys(derive(&secret, period_s));
                tokio::spawn(follow_the_periods(secret, period_s, server));
            }
        }
        Ok(())
    }
}

/// What every connection passes through.
struct Doors {
    acceptor: TlsAcceptor,
    ntp_server: NtpServer,
    sessions: Arc<Semaphore>,
    /// `ntsratelimit`'s buckets, when set.
    connections: Option<Mutex<ConnectionLog>>,
    started: Instant,
}

impl Doors {
    /// Whether a connection from `peer` may go on to TLS, as chronyd decides right after
    /// `accept`: the access rules (`allow`/`deny`), then `ntsratelimit`.
    fn admit(&self, peer: IpAddr, server: &Server) -> Result<(), &'static str> {
        if !server.is_allowed(peer) {
            return Err("access denied");
        }
        if let Some(connections) = &self.connections {
            let elapsed_ns = self.started.elapsed().as_nanos() as u64;
            let mut connections = connections.lock().expect("NTS-KE connection log");
            if !connections.admit(peer, elapsed_ns, random::next_u32) {
                return Err("rate limit");
            }
        }
        Ok(())
    }
}

/// Takes connections on `listener` until the daemon stops: each one admitted, within the bound
/// on sessions, gets a session of its own.
async fn accept(listener: tokio::net::TcpListener, doors: Arc<Doors>, server: Arc<Server>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                super::accept::rest_after_accept(&error, &server, "NTS-KE").await;
                continue;
            }
        };
        // Refused before any TLS, and closed at once (dropped here), as chronyd does.
        if let Err(reason) = doors.admit(peer.ip(), &server) {
            tracing::debug!(%peer, reason, "NTS-KE connection refused");
            server.count_nts_ke(false);
            continue;
        }
        // Over the bound: closed at once, and counted as dropped.
        let Ok(slot) = doors.sessions.clone().try_acquire_owned() else {
            server.count_nts_ke(false);
            continue;
        };
        let (doors, server) = (doors.clone(), server.clone());
        tokio::spawn(async move {
            let session = session(stream, &doors.acceptor, &server, &doors.ntp_server);
            let agreed = match tokio::time::timeout(SESSION_TIMEOUT, session).await {
                Ok(Ok(negotiation)) => negotiation == Negotiation::Agreed,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, error = format!("{error:#}"), "NTS-KE");
                    false
                }
                Err(_) => {
                    tracing::debug!(%peer, "NTS-KE session timed out");
                    false
                }
            };
            server.count_nts_ke(agreed);
            drop(slot);
        });
    }
}

/// Rotates the server keys every `ntsrotate` seconds, the first time when the newest key
/// loaded is that old (as chronyd times it from the key's age, so that a restart does not put
/// the next rotation off).
async fn rotate(mut keys: KeyRing, config: NtsServerConfig, server: Arc<Server>) {
    let period = Duration::from_secs(config.rotate_s);
    let first = period.saturating_sub(Duration::from_secs(keys.newest_age_s()));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    loop {
        ticks.tick().await;
        keys.rotate();
        if let Err(error) = save_keys(&config, &keys) {
            tracing::warn!(error = format!("{error:#}"), "saving the NTS server keys");
        }
        server.set_nts_keys(keys.clone());
        tracing::info!("NTS server keys rotated");
    }
}

/// The fleet's keys now.
fn derive(secret: &[u8], period_s: u64) -> KeyRing {
    KeyRing::derived(secret, period_s, clock::realtime_ns() / 1_000_000_000)
}

/// Derives the fleet's keys again at the start of each period (by the system clock, which the
/// fleet's servers share to far better than a period).
async fn follow_the_periods(secret: Vec<u8>, period_s: u64, server: Arc<Server>) {
    loop {
        let now_ns = clock::realtime_ns();
        let period_ns = period_s * 1_000_000_000;
        let next = (now_ns / period_ns + 1) * period_ns;
        tokio::time::sleep(Duration::from_nanos(next - now_ns)).await;
        let keys = derive(&secret, period_s);
        tracing::info!(?keys, "NTS server keys of the new period");
        server.set_nts_keys(keys);
    }
}

/// One NTS-KE session: the request read to its end, the response written.
async fn session(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    server: &Server,
    ntp_server: &NtpServer,
) -> anyhow::Result<Negotiation> {
    let mut tls = acceptor.accept(stream).await.context("TLS handshake")?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        bail!("the client did not ask for ntske/1");
    }
    let negotiation = crate::tls::read_message(&mut tls, "request", ke::MAX_REQUEST, |request| {
        match ke::read_request(request) {
            Read::Complete(negotiation) => Some(negotiation),
            Read::Incomplete => None,
        }
    })
    .await?;
    let keys = if negotiation == Negotiation::Agreed {
        Some(crate::tls::session_keys(tls.get_ref().1)?)
    } else {
        None
    };
    let ring = server.nts_keys().context("no NTS server keys")?;
    let response = ke::response(negotiation, ntp_server, || {
        ring.seal(keys.as_ref().expect("keys for an agreement"))
    });
    tls.write_all(&response).await?;
    tls.shutdown().await?;
    Ok(negotiation)
}

fn tls_config(certificate: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificates in {}", certificate.display()))?;
    if chain.is_empty() {
        bail!("no certificate in {}", certificate.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not go together")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn key_file(config: &NtsServerConfig) -> Option<PathBuf> {
    config.dump_dir.as_ref().map(|dir| dir.join(KEY_FILE))
}

/// The server keys of `ntsdumpdir` (rotated first if older than `ntsrotate`), or new ones.
fn load_or_create_keys(config: &NtsServerConfig) -> anyhow::Result<KeyRing> {
    let Some(path) = key_file(config) else {
        return Ok(KeyRing::generate());
    };
    let mut keys = match std::fs::read_to_string(&path) {
        Ok(text) => KeyRing::from_text(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("reading the NTS server keys in {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let keys = KeyRing::generate();
            save_keys(config, &keys)?;
            return Ok(keys);
        }
        Err(error) => return Err(error).context(format!("reading {}", path.display())),
    };
    if config.rotate_s > 0 && keys.newest_age_s() >= config.rotate_s {
        keys.rotate();
        save_keys(config, &keys)?;
    }
    Ok(keys)
}

fn save_keys(config: &NtsServerConfig, keys: &KeyRing) -> anyhow::Result<()> {
    if let Some(path) = key_file(config) {
        files::write_secret_atomically(&path, keys.to_text().as_bytes())
            .with_context(|| format!("writing the NTS server keys to {}", path.display()))?;
    }
    Ok(())
}
