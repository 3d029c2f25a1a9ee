//! NTS-KE's TLS listener: TLS 1.3 alone, ALPN `ntske/1`, the certificate and key of
//! `ntsservercert` / `ntsserverkey`; at most `maxntsconnections` sessions at once, each given
//! [`SESSION_TIMEOUT`] to finish; the keys exported from the session sealed into eight
//! cookies with the server keys, which rotate every `ntsrotate` seconds and are kept in
//! `ntsdumpdir`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{DEFAULT_NTP_PORT, NtsServerConfig},
    files,
    nts::{
        self, ALPN, SessionKeys,
        cookie::KeyRing,
        ke::{self, Negotiation, NtpServer, Read},
    },
    server::Server,
    socket,
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
    keys: KeyRing,
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
        let keys = load_or_create_keys(config)?;
        Ok(Self { listeners, acceptor, config: config.clone(), keys })
    }

    /// Serves NTS-KE, and rotates the server keys, until the daemon stops; `ntp_port` is
    /// named to clients where it is not 123, as chronyd names it.
    pub fn serve(self, server: Arc<Server>, ntp_port: u16) -> anyhow::Result<()> {
        let Self { listeners, acceptor, config, mut keys } = self;
        server.set_nts_keys(keys.clone());
        let ntp_server = NtpServer {
            name: config.ntp_server.clone(),
            port: (ntp_port != DEFAULT_NTP_PORT).then_some(ntp_port),
        };
        let sessions = Arc::new(Semaphore::new(config.max_connections));
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let (acceptor, server, ntp_server, sessions) =
                (acceptor.clone(), server.clone(), ntp_server.clone(), sessions.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else { continue };
                    // Over the bound: closed at once, and counted as dropped.
                    let Ok(slot) = sessions.clone().try_acquire_owned() else {
                        server.count_nts_ke(false);
                        continue;
                    };
                    let (acceptor, server, ntp_server) =
                        (acceptor.clone(), server.clone(), ntp_server.clone());
                    tokio::spawn(async move {
                        let session = session(stream, &acceptor, &server, &ntp_server);
                        let outcome = tokio::time::timeout(SESSION_TIMEOUT, session).await;
                        let agreed = match outcome {
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
            });
        }
        if config.rotate_s > 0 {
            let period = Duration::from_secs(config.rotate_s);
            tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    ticks.tick().await;
                    keys.rotate();
                    if let Err(error) = save_keys(&config, &keys) {
                        tracing::warn!(error = format!("{error:#}"), "saving the NTS server keys");
                    }
                    server.set_nts_keys(keys.clone());
                    tracing::info!("NTS server keys rotated");
                }
            });
        }
        Ok(())
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
    let negotiation = nts::read_message(&mut tls, "request", ke::MAX_REQUEST, |request| {
        match ke::read_request(request) {
            Read::Complete(negotiation) => Some(negotiation),
            Read::Incomplete => None,
        }
    })
    .await?;
    let keys = if negotiation == Negotiation::Agreed {
        Some(SessionKeys::exported(tls.get_ref().1)?)
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
