//! NTS-KE's TLS, both sides of it: reading a message off the stream, and the keys a finished
//! session exports (the messages and cookies are the core's, `nts`).

use crate::nts::{EXPORTER_LABEL, KEY_LEN, SessionKeys};

/// Reads `stream` until `parse` makes a whole NTS-KE message (request or response, `what`) of
/// what came, refusing more than `limit` bytes or a connection that ends first.
pub async fn read_message<T>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    what: &str,
    limit: usize,
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> anyhow::Result<T> {
    use tokio::io::AsyncReadExt as _;
    let mut message = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            anyhow::bail!("the connection ended inside the {what}");
        }
        message.extend_from_slice(&buffer[..read]);
        if message.len() > limit {
            anyhow::bail!("a {what} longer than {limit} bytes");
        }
        if let Some(parsed) = parse(&message) {
            return Ok(parsed);
        }
    }
}

/// The keys a finished NTS-KE session exports (RFC 8915 5.1), on either side of it.
pub fn session_keys<Data>(
    tls: &rustls::ConnectionCommon<Data>,
) -> Result<SessionKeys, rustls::Error> {
    let export = |server_to_client| {
        let context = SessionKeys::exporter_context(server_to_client);
        tls.export_keying_material([0u8; KEY_LEN], EXPORTER_LABEL, Some(&context))
    };
    Ok(SessionKeys { c2s: export(false)?, s2c: export(true)? })
}
