//! ntpxc's control socket: one JSON request and one response a connection, at most
//! [`MAX_CONTROL_CONNECTIONS`] at once, changes only from root and ntpxd's user.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    sync::Semaphore,
};

use super::{
    accept::rest_after_accept,
    context::{Ask, ControlContext, reload},
    reports::{Busiest, client_report, server_stats, tracking},
};
use crate::{
    access::{AccessRule, Subnet},
    client_table::Client,
    config::{self},
    control::{Request, Response},
    sys::{
        clock::{self},
        privileges,
    },
};

/// The control socket, removed when dropped.
pub(super) struct ControlSocket {
    pub(super) listener: std::os::unix::net::UnixListener,
    pub(super) connections: Arc<Semaphore>,
    pub(super) path: PathBuf,
}

/// The longest control request, bytes (a request is a line of JSON).
const MAX_REQUEST_LEN: u64 = 4096;

/// At most this many control connections are served at once; more are closed at once.
pub(super) const MAX_CONTROL_CONNECTIONS: usize = 16;

/// How long a control peer has to send its request, and then to read the response.
const CONTROL_DEADLINE: Duration = Duration::from_secs(5);

impl ControlSocket {
    pub(super) fn bind(path: &Path) -> anyhow::Result<Self> {
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

/// Takes ntpxc's connections until the daemon stops, up to [`MAX_CONTROL_CONNECTIONS`] at once.
pub(super) async fn accept_control(
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
pub(super) fn respond(request: &Request, context: &ControlContext) -> anyhow::Result<Response> {
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
        Request::Smoothing => match server.smoothing_report(clock::tai_now()) {
            Some(report) => Response::Smoothing(report),
            None => not_smoothing(),
        },
        Request::SmoothTime { activate } => match server.smooth_time(*activate, clock::tai_now()) {
            true => Response::Ok,
            false => not_smoothing(),
        },
        Request::Announcements => Response::Announcements {
            addresses: context.announcements.lock().expect("announcements lock").clone(),
        },
    })
}

fn not_smoothing() -> Response {
    Response::Error { message: "time smoothing is not enabled (smoothtime)".into() }
}
