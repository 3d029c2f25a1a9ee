//! `/metrics` over HTTP, served by ntpxd itself on the address `metricsaddress` names. In the
//! daemon rather than a separate exporter: the counters are per-CPU BPF maps only ntpxd holds
//! (an exporter would need ntpxd to read them for it at each scrape anyway, through its control
//! socket), and one scrape costs one map read between two ticks, never a request anything.
//!
//! The HTTP side is kept too small to be a risk. Who may scrape is who may monitor the server
//! with chronyc: the loopback addresses and what `cmdallow` admits (chronyd's rule for its
//! command port); others are closed on at once, before a byte is read. Connections are served
//! concurrently, up to [`MAX_SCRAPES`] at once (more are closed at once), so a slow one delays
//! no other; each has [`DEADLINE`] for its whole request and as long for its answer; a request
//! is at most 4 KiB; `GET /metrics` is answered and every other request refused.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
};

use super::{
    accept::rest_after_accept,
    context::{Ask, ControlContext},
    reports::{server_stats_from, tracking},
};
use crate::{
    access::AccessTable,
    metrics::{Format, Snapshot},
    sys::clock,
};

const MAX_REQUEST: usize = 4096;
/// How long a connection has to send its whole request, and then to take the answer.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once. Idle ones cost a little memory each,
/// so that holding them all takes a peer that may scrape over a hundred connections a second.
pub const MAX_SCRAPES: usize = 256;

pub struct MetricsListener {
    listener: std::net::TcpListener,
    /// `cmdallow` / `cmddeny`: who besides loopback may scrape.
    access: Arc<AccessTable>,
}

impl MetricsListener {
    pub fn bind(address: SocketAddr, access: AccessTable) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("binding the metrics address {address}"))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, access: Arc::new(access) })
    }

    /// Answers scrapes until the daemon stops.
    pub fn serve(&self, context: Arc<ControlContext>) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener.try_clone()?)?;
        tokio::spawn(accept(listener, self.access.clone(), context));
        Ok(())
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    access: Arc<AccessTable>,
    context: Arc<ControlContext>,
) {
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                rest_after_accept(&error, &context.server, "metrics").await;
                continue;
            }
        };
        // Closed at once (dropped here): not allowed, or too many at once.
        if !may_scrape(peer.ip(), &access) {
            tracing::debug!(%peer, "a metrics connection from an address not allowed");
            continue;
        }
        let Ok(slot) = scrapes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many metrics connections: one refused");
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(stream, context).await {
                tracing::debug!(%peer, error = format!("{error:#}"), "a metrics request");
            }
            drop(slot);
        });
    }
}

/// Whether a scrape from `peer` is served (see the module's documentation).
pub fn may_scrape(peer: std::net::IpAddr, access: &AccessTable) -> bool {
    peer.to_canonical().is_loopback() || access.is_allowed(peer)
}

async fn serve(mut stream: TcpStream, context: Arc<ControlContext>) -> anyhow::Result<()> {
    let read = tokio::time::timeout(DEADLINE, read_request(&mut stream)).await;
    let request = match read.context("no whole request in time")?? {
        Some(request) => request,
        None => {
            let answer = response("431 Request Header Fields Too Large", "text/plain", "");
            tokio::time::timeout(DEADLINE, stream.write_all(answer.as_bytes())).await??;
            // Closing with the rest unread would reset the connection, and the client could
            // lose the answer: the rest is read (until the deadline) first.
            stream.shutdown().await?;
            let mut sink = [0u8; 512];
            let drain = async { while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
            let _ = tokio::time::timeout(DEADLINE, drain).await;
            return Ok(());
        }
    };
    let answer = answer(&request, context).await?;
    tokio::time::timeout(DEADLINE, stream.write_all(answer.as_bytes()))
        .await
        .context("the answer not taken in time")??;
    Ok(())
}

/// A request's head, up to its blank line; None if it is longer than [`MAX_REQUEST`].
async fn read_request(stream: &mut TcpStream) -> anyhow::Result<Option<String>> {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > MAX_REQUEST {
            return Ok(None);
        }
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(read > 0, "the connection closed before its request ended");
        request.extend_from_slice(&buffer[..read]);
    }
    Ok(Some(String::from_utf8_lossy(&request).into_owned()))
}

/// The whole HTTP response to `request`.
async fn answer(request: &str, context: Arc<ControlContext>) -> anyhow::Result<String> {
    let mut lines = request.split("\r\n");
    let mut words = lines.next().unwrap_or_default().split(' ');
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("accept").then_some(value)
    });
    Ok(match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some("/metrics"), Some("HTTP/1.0" | "HTTP/1.1")) => {
            let format = Format::accepted(accept);
            // The snapshot waits for the daemon's owner: off the runtime's workers.
            let body = tokio::task::spawn_blocking(move || snapshot(&context)).await??;
            response("200 OK", format.content_type(), &body.encode(format))
        }
        (Some("GET"), Some(_), Some(_)) => {
            response("404 Not Found", "text/plain", "only /metrics is here\n")
        }
        (Some(_), Some(_), Some(_)) => response("405 Method Not Allowed", "text/plain", ""),
        _ => response("400 Bad Request", "text/plain", ""),
    })
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn snapshot(context: &ControlContext) -> anyhow::Result<Snapshot> {
    let view = context.ask(Ask::KernelView)??;
    let state_age =
        view.published_tai_ns.map(|published| (clock::tai_ns() as f64 - published as f64) / 1e9);
    Ok(Snapshot {
        stats: server_stats_from(context, view),
        tracking: tracking(&context.server, context.upstream.as_deref()),
        sources: context.sources(),
        announcements: context.announcements.lock().expect("announcements lock").clone(),
        state_age,
    })
}
