//! `/metrics` over HTTP, served by ntpxd itself on the address `metricsaddress` names. In the
//! daemon rather than a separate exporter: the counters are per-CPU BPF maps only ntpxd holds
//! (an exporter would need ntpxd to read them for it at each scrape anyway, through its control
//! socket), and one scrape costs one map read between two ticks, never a request anything. The
//! HTTP side is kept too small to be a risk: one connection at a time, a request of at most
//! 4 KiB read within 2 s, `GET /metrics` answered and every other request refused.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;

use super::{Ask, ControlContext, server_stats_from, tracking};
use crate::{
    clock,
    metrics::{Format, Snapshot},
};

const MAX_REQUEST: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(2);

pub struct MetricsListener(TcpListener);

impl MetricsListener {
    pub fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .with_context(|| format!("binding the metrics address {address}"))?;
        Ok(Self(listener))
    }

    /// Answers scrapes on a thread of its own until the process ends.
    pub fn serve_in_background(&self, context: Arc<ControlContext>) -> anyhow::Result<()> {
        let listener = self.0.try_clone()?;
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = serve(stream, &context) {
                            tracing::debug!(error = format!("{error:#}"), "a metrics request");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "accepting a metrics connection"),
                }
            }
        })?;
        Ok(())
    }
}

fn serve(mut stream: TcpStream, context: &ControlContext) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > MAX_REQUEST {
            respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "")?;
            // Closing with the rest unread would reset the connection, and the client could
            // lose the answer: the rest is read (within the timeout, and a bound) first.
            stream.shutdown(std::net::Shutdown::Write)?;
            let _ = std::io::copy(&mut (&stream).take(1 << 20), &mut std::io::sink());
            return Ok(());
        }
        let read = stream.read(&mut buffer)?;
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
