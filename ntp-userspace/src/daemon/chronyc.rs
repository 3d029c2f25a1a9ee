//! chronyc's socket: the reports of [`crate::chronyc`] answered from what ntpxc's control
//! connections read, on a thread of its own (one datagram at a time, as chronyd does).

use std::{
    collections::VecDeque,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;

use super::{ControlContext, client_report, server_stats, tracking};
use crate::{
    chronyc::{CLIENTS_PER_REPLY, Command, MAX_REQUEST, Request, Status},
    client_table::{ClientTable, Cursor},
    clock,
    control::ClientReport,
};

/// chronyc's socket, removed when dropped.
pub struct ChronycSocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl ChronycSocket {
    /// Binds `path` (as chronyd does, in a directory only root and ntpxd's user can enter);
    /// None, with a warning, where that cannot be done (a running chronyd holds it): chronyc
    /// is a convenience, never a reason not to serve time.
    pub fn bind(path: &Path) -> Option<Self> {
        match Self::try_bind(path) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "no socket for chronyc: chronyc will not reach ntpxd"
                );
                None
            }
        }
    }

    fn try_bind(path: &Path) -> anyhow::Result<Option<Self>> {
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        if path.exists() {
            if UnixDatagram::unbound()?.connect(path).is_ok() {
                tracing::warn!(
                    path = %path.display(),
                    "chronyc's socket is in use (a running chronyd?): chronyc will not reach ntpxd"
                );
                return Ok(None);
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        let socket = UnixDatagram::bind(path)
            .with_context(|| format!("binding chronyc's socket {}", path.display()))?;
        // The directory decides who may talk to it, as with chronyd's.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Some(Self { socket, path: path.to_owned() }))
    }

    /// Answers chronyc on a thread of its own until the process ends (the socket's file goes
    /// when `self` is dropped).
    pub fn serve_in_background(&self, context: Arc<ControlContext>) -> anyhow::Result<()> {
        let socket = self.socket.try_clone()?;
        std::thread::Builder::new()
            .name("chronyc".into())
            .spawn(move || serve(&socket, &context))?;
        Ok(())
    }
}

impl Drop for ChronycSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(socket: &UnixDatagram, context: &ControlContext) {
    let mut buffer = [0u8; MAX_REQUEST + 1];
    let mut walk = ClientsWalk::default();
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "receiving on chronyc's socket");
                continue;
            }
        };
        let Some(request) = Request::parse(&buffer[..length]) else {
            continue;
        };
        context.server.count_command();
        let reply = answer(&request, context, &mut walk).unwrap_or_else(|error| {
            tracing::warn!(error = format!("{error:#}"), "answering chronyc");
            request.status(Status::Failed)
        });
        let Some(peer) = peer.as_pathname() else {
            continue;
        };
        if let Err(error) = socket.send_to(&reply, peer) {
            tracing::debug!(%error, "replying to chronyc");
        }
    }
}

fn answer(
    request: &Request,
    context: &ControlContext,
    walk: &mut ClientsWalk,
) -> anyhow::Result<Vec<u8>> {
    let command = match request.command {
        Ok(command) => command,
        Err(status) => return Ok(request.status(status)),
    };
    let sources = || context.sources();
    Ok(match command {
        Command::Tracking => {
            request.tracking(&tracking(&context.server, context.upstream.as_deref()))
        }
        Command::NumberOfSources => request.number_of_sources(sources().len() as u32),
        Command::SourceData { index } => match sources().get(index as usize) {
            Some(source) => request.source_data(source),
            None => request.status(Status::NoSuchSource),
        },
        Command::SourceStats { index } => match sources().get(index as usize) {
            Some(source) => request.source_stats(source),
            None => request.status(Status::NoSuchSource),
        },
        Command::Activity => request.activity(sources().len() as u32, 0),
        Command::ServerStats => {
            let stats = server_stats(context)?;
            let counters = [
                stats.ntp_packets_received,
                stats.nts_ke_connections_accepted,
                stats.command_packets_received,
                stats.ntp_packets_dropped,
                stats.nts_ke_connections_dropped,
                stats.command_packets_dropped,
                stats.client_log_records_dropped,
                stats.authenticated_ntp_packets,
                stats.interleaved_ntp_packets,
                stats.ntp_timestamps_held,
                stats.ntp_timestamp_span,
            ];
            // chronyc's counters are 32 bits wide, as chronyd's.
            request.server_stats(counters.map(|count| count as u32))
        }
        Command::Clients { first_index, min_hits, reset } => {
            let Some(table) = &context.clients else {
                return Ok(request.status(Status::Inactive));
            };
            let clients = walk.take(table, first_index, min_hits)?;
            if reset && clients.len() < CLIENTS_PER_REPLY as usize {
                table.reset_counts()?;
            }
            let next_index = first_index + clients.len() as u32;
            request.clients(table.capacity(), next_index, &clients)
        }
        Command::Unsupported(_) => request.status(Status::NotEnabled),
    })
}

/// chronyc reads the client log eight clients a request, by index; the kernel's table is
/// walked a batch of thousands at a time. The walk of the last listing is kept, so that a
/// listing reads each batch once; a request for another index starts a walk afresh.
#[derive(Default)]
struct ClientsWalk {
    /// The index of the first client in `pending`.
    next_index: u32,
    min_hits: u32,
    pending: VecDeque<ClientReport>,
    /// Where the next batch starts; None once the table is read (or before the first batch).
    cursor: Option<Cursor>,
    done: bool,
}

impl ClientsWalk {
    fn take(
        &mut self,
        table: &ClientTable,
        first_index: u32,
        min_hits: u32,
    ) -> anyhow::Result<Vec<ClientReport>> {
        if first_index != self.next_index || min_hits != self.min_hits || first_index == 0 {
            *self = Self { min_hits, ..Self::default() };
        }
        let now = table.settings().timestamp(clock::tai_ns());
        let mut clients = Vec::new();
        while self.next_index < first_index + CLIENTS_PER_REPLY {
            if self.pending.is_empty() {
                if self.done {
                    break;
                }
                self.cursor = table.page(self.cursor, |client| {
                    if client.record.hits >= min_hits {
                        self.pending.push_back(client_report(&client, now));
                    }
                })?;
                self.done = self.cursor.is_none();
                continue;
            }
            let client = self.pending.pop_front().expect("not empty");
            if self.next_index >= first_index {
                clients.push(client);
            }
            self.next_index += 1;
        }
        Ok(clients)
    }
}
