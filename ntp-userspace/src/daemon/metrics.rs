//! `/metrics` over HTTP, served by ntpxd itself on the address `metricsaddress` names. In the
//! daemon rather than a separate exporter: the counters are per-CPU BPF maps only ntpxd holds
//! (an exporter would need ntpxd to read them for it at each scrape anyway, through its control
//! socket), and one scrape costs one map read between two ticks, never a request anything.
//!
//! The HTTP side is kept too small to be a risk. Who may scrape is who may monitor the server
//! with chronyc: the loopback addresses and what `cmdallow` admits (chronyd's rule for its
//! command port); others are closed on at once, before a byte is read. At most
//! [`MAX_SCRAPES`] connections are served at once, each on a thread of its own, so a slow one
//! delays no other; each has [`DEADLINE`] for its whole request and as long for its answer; a
//! request is at most 4 KiB; `GET /metrics` is answered and every other request refused.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Ask, ControlContext, accept_rest, server_stats_from, tracking};
use crate::{
    access::AccessTable,
    clock,
    metrics::{Format, Snapshot},
};

const MAX_REQUEST: usize = 4096;
/// How long a connection has to send its whole request, and then to take the answer.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Scrapes served at once; connections beyond are closed at once.
pub const MAX_SCRAPES: usize = 4;

pub struct MetricsListener {
    listener: TcpListener,
    /// `cmdallow` / `cmddeny`: who besides loopback may scrape.
    access: Arc<AccessTable>,
}

impl MetricsListener {
    pub fn bind(address: SocketAddr, access: AccessTable) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .with_context(|| format!("binding the metrics address {address}"))?;
        Ok(Self { listener, access: Arc::new(access) })
    }

    /// Answers scrapes until the process ends.
    pub fn serve_in_background(&self, context: Arc<ControlContext>) -> anyhow::Result<()> {
        let listener = self.listener.try_clone()?;
        let access = self.access.clone();
        let serving = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            loop {
                let (stream, peer) = match listener.accept() {
                    Ok(connection) => connection,
                    Err(error) => {
                        std::thread::sleep(accept_rest(&error, &context.server, "metrics"));
                        continue;
                    }
                };
                if !may_scrape(peer.ip(), &access) {
                    tracing::debug!(%peer, "a metrics connection from an address not allowed");
                    continue;
                }
                if serving.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPES {
                    serving.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(%peer, "too many metrics connections: one refused");
                    continue;
                }
                let (context, serving) = (context.clone(), serving.clone());
                let spawned = std::thread::Builder::new().name("scrape".into()).spawn(move || {
                    if let Err(error) = serve(stream, &context) {
                        tracing::debug!(%peer, error = format!("{error:#}"), "a metrics request");
                    }
                    serving.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "no thread for a metrics request");
                }
            }
        })?;
        Ok(())
    }
}

/// Whether a scrape from `peer` is served (see the module's documentation).
pub fn may_scrape(peer: IpAddr, access: &AccessTable) -> bool {
    peer.to_canonical().is_loopback() || access.is_allowed(peer)
}

/// Reads from `stream` into `buffer` before `deadline`.
fn read_before(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    deadline: Instant,
) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buffer)
}

fn serve(mut stream: TcpStream, context: &ControlContext) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > MAX_REQUEST {
            respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "")?;
            // Closing with the rest unread would reset the connection, and the client could
            // lose the answer: the rest is read (before the deadline, and a bound) first.
            stream.shutdown(std::net::Shutdown::Write)?;
            while read_before(&mut stream, &mut buffer, deadline).is_ok_and(|read| read > 0) {}
            return Ok(());
        }
        let read = read_before(&mut stream, &mut buffer, deadline)?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let request = String::from_utf8_lossy(&request);
    let mut lines = request.split("\r\n");
    let mut words = lines.next().unwrap_or_default().split(' ');
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("accept").then_some(value)
    });
    match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some("/metrics"), Some("HTTP/1.0" | "HTTP/1.1")) => {
            let format = Format::accepted(accept);
            let body = snapshot(context)?.encode(format);
            respond(&mut stream, "200 OK", format.content_type(), &body)
        }
        (Some("GET"), Some(_), Some(_)) => {
            respond(&mut stream, "404 Not Found", "text/plain", "only /metrics is here\n")
        }
        (Some(_), Some(_), Some(_)) => {
            respond(&mut stream, "405 Method Not Allowed", "text/plain", "")
        }
        _ => respond(&mut stream, "400 Bad Request", "text/plain", ""),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> anyhow::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    Ok(())
}

fn snapshot(context: &ControlContext) -> anyhow::Result<Snapshot> {
    let view = context.ask(Ask::KernelView)??;
    let state_age =
        view.published_tai_ns.map(|published| (clock::tai_ns() as f64 - published as f64) / 1e9);
    Ok(Snapshot {
        stats: server_stats_from(context, view),
        tracking: tracking(&context.server, context.upstream.as_deref()),
        sources: context.sources(),
        state_age,
    })
}
