//! chronyc's sockets: the reports of [`crate::chronyc`] answered from what ntpxc's control
//! connections read, each socket on a thread of its own (one datagram at a time, as chronyd
//! does). The Unix socket answers everything; the UDP port, as chronyd's, only what reads the
//! synchronisation, and only to loopback and `cmdallow`ed addresses.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};

use super::{
    context::{Ask, ControlContext, reload},
    reports::{client_report, server_stats, tracking},
};
use crate::{
    access::{Access, AccessRule, AccessTable, Subnet},
    chronyc::{CLIENTS_PER_REPLY, Command, MAX_REQUEST, Request, Status},
    client_log::Cursor,
    client_table::ClientTable,
    config::{self, ChronycConfig},
    control::ClientReport,
    sys::{clock, privileges, socket},
};

/// chronyc's sockets; the Unix socket's file is removed when dropped.
pub struct ChronycSockets {
    unix: Option<(UnixDatagram, PathBuf)>,
    udp: Vec<UdpSocket>,
    /// `cmdallow` / `cmddeny`, for the UDP port.
    access: Arc<AccessTable>,
}

impl ChronycSockets {
    /// Binds what `config` names; the Unix socket only in a directory that `owners` (root and
    /// ntpxd's user) own and others cannot enter. A socket that cannot be bound (a running
    /// chronyd holds it, an open directory) is left out with a warning: chronyc is a
    /// convenience, never a reason not to serve time.
    pub fn bind(config: &ChronycConfig, owners: &[u32]) -> Self {
        let unix = config.socket.as_deref().and_then(|path| {
            warn_unless_bound(
                bind_unix(path, owners).map(|socket| socket.map(|s| (s, path.to_owned()))),
            )
        });
        let addresses: [IpAddr; 2] = [config.bind_v4.into(), config.bind_v6.into()];
        let udp = match config.port {
            0 => Vec::new(),
            port => addresses
                .into_iter()
                .filter_map(|address| {
                    let address = SocketAddr::new(address, port);
                    warn_unless_bound(
                        socket::bind_udp(address, |_| Ok(()))
                            .map(Some)
                            .with_context(|| format!("binding chronyc's UDP port on {address}")),
                    )
                })
                .collect(),
        };
        Self { unix, udp, access: Arc::new(AccessTable::from_rules(&config.access)) }
    }

    /// Answers chronyc on a thread per socket until the process ends.
    pub fn serve_in_background(&self, context: Arc<ControlContext>) -> anyhow::Result<()> {
        if let Some((socket, _)) = &self.unix {
            let socket = socket.try_clone()?;
            let context = context.clone();
            spawn("chronyc", move || {
                let mut buffer = [0u8; MAX_REQUEST + 1];
                let mut walk = ClientsWalk::default();
                loop {
                    let Some(datagram) = received(socket::recv_local(&socket, &mut buffer)) else {
                        continue;
                    };
                    context.server.count_command();
                    let request = Request::parse(&buffer[..datagram.len]);
                    // Nothing is done for a sender that cannot be answered.
                    let reply_to = datagram.sender.filter(|path| can_send_to(path));
                    let (Some(request), Some(reply_to)) = (request, reply_to) else {
                        context.server.count_command_dropped();
                        continue;
                    };
                    let trust = if privileges::may_change_state(datagram.sender_uid) {
                        Trust::Everything
                    } else {
                        Trust::Reports
                    };
                    let reply = respond(&request, trust, &context, &mut walk);
                    if let Err(error) = socket::send_local_now(&socket, &reply, &reply_to) {
                        tracing::debug!(%error, "replying to chronyc");
                    }
                }
            })?;
        }
        for socket in &self.udp {
            let socket = socket.try_clone()?;
            let (context, access) = (context.clone(), self.access.clone());
            spawn("chronyc-udp", move || {
                let mut buffer = [0u8; MAX_REQUEST + 1];
                let mut walk = ClientsWalk::default();
                loop {
                    let Some((length, peer)) = received(socket.recv_from(&mut buffer)) else {
                        continue;
                    };
                    context.server.count_command();
                    // As chronyd: others than loopback and cmdallow'ed hosts hear nothing.
                    let allowed = is_loopback(peer.ip()) || access.is_allowed(peer.ip());
                    let request = Request::parse(&buffer[..length]).filter(|_| allowed);
                    let Some(request) = request else {
                        context.server.count_command_dropped();
                        continue;
                    };
                    let reply = respond(&request, Trust::Monitoring, &context, &mut walk);
                    if let Err(error) = socket.send_to(&reply, peer) {
                        tracing::debug!(%error, %peer, "replying to chronyc");
                    }
                }
            })?;
        }
        Ok(())
    }
}

impl Drop for ChronycSockets {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn warn_unless_bound<T>(bound: anyhow::Result<Option<T>>) -> Option<T> {
    bound.unwrap_or_else(|error| {
        tracing::warn!(error = format!("{error:#}"), "chronyc will not reach ntpxd there");
        None
    })
}

/// Binds `path` (as chronyd does, in a directory only root and ntpxd's user can enter); None
/// where a running chronyd holds it.
fn bind_unix(path: &Path, owners: &[u32]) -> anyhow::Result<Option<UnixDatagram>> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        check_closed_to_others(dir, owners)?;
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
    socket::pass_credentials(&socket)?;
    // The directory decides who may reach it, as with chronyd's; the sender's user decides
    // what it may ask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(Some(socket))
}

/// chronyd's rule for its socket's directory: owned by it (here root or ntpxd's user) and closed
/// to others, since who can enter it can reach the socket.
fn check_closed_to_others(dir: &Path, owners: &[u32]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = metadata.mode() & 0o777;
    if mode & 0o007 != 0 {
        bail!(
            "chronyc's socket directory {} is mode {mode:04o}: others can reach the socket \
             (chmod o-rwx it, as chronyd wants)",
            dir.display()
        );
    }
    if !owners.contains(&metadata.uid()) {
        bail!(
            "chronyc's socket directory {} belongs to user {}, neither root nor ntpxd's user",
            dir.display(),
            metadata.uid()
        );
    }
    Ok(())
}

/// Whether a reply can go to `path`: the sender's socket is bound there (a socket without a
/// name, or one gone, could never read what it asked for).
fn can_send_to(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

fn spawn(name: &str, serve: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    std::thread::Builder::new().name(name.into()).spawn(serve)?;
    Ok(())
}

fn received<T>(outcome: std::io::Result<T>) -> Option<T> {
    outcome.inspect_err(|error| tracing::warn!(%error, "receiving on chronyc's socket")).ok()
}

/// chronyd's "localhost": the loopback address of either family.
fn is_loopback(address: IpAddr) -> bool {
    address == IpAddr::V4(Ipv4Addr::LOCALHOST) || address == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// What a socket's peers may ask.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// The Unix socket, from root and ntpxd's user.
    Everything,
    /// The Unix socket, from other users (those the directory lets in): every report, no change.
    Reports,
    /// UDP: chronyd's open commands.
    Monitoring,
}

fn respond(
    request: &Request,
    trust: Trust,
    context: &ControlContext,
    walk: &mut ClientsWalk,
) -> Vec<u8> {
    let allowed = request.command.is_ok_and(|command| match trust {
        Trust::Everything => true,
        Trust::Reports => !command.changes_state(),
        Trust::Monitoring => command.is_open(),
    });
    if request.command.is_ok() && !allowed {
        return request.status(Status::Unauthorised);
    }
    answer(request, context, walk).unwrap_or_else(|error| {
        tracing::warn!(error = format!("{error:#}"), "answering chronyc");
        request.status(Status::Failed)
    })
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
    Ok(match command {
        Command::Null => request.status(Status::Success),
        Command::Tracking => {
            request.tracking(&tracking(&context.server, context.upstream.as_deref()))
        }
        Command::NumberOfSources => request.number_of_sources(context.sources().len() as u32),
        Command::SourceData { index } => match context.sources().get(index as usize) {
            Some(source) => request.source_data(source),
            None => request.status(Status::NoSuchSource),
        },
        Command::SourceStats { index } => match context.sources().get(index as usize) {
            Some(source) => request.source_stats(source),
            None => request.status(Status::NoSuchSource),
        },
        Command::Activity => request.activity(context.sources().len() as u32, 0),
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
        Command::NtpData { address } => {
            let data = address.and_then(|address| {
                context.upstream.as_ref()?.sync.lock().expect("sync lock").ntp_data(address)
            });
            match data {
                Some(data) => request.ntp_data(&data, local_address_towards(data.remote)),
                None => request.status(Status::NoSuchSource),
            }
        }
        Command::Access { allow, all, subnet } => {
            let subnet = match subnet {
                None => Subnet::Everything,
                Some((address, bits)) => match config::parse_subnet(&format!("{address}/{bits}")) {
                    Ok(subnet) => subnet,
                    Err(_) => return Ok(request.status(Status::BadSubnet)),
                },
            };
            let access = if allow { Access::Allow } else { Access::Deny };
            let rule = AccessRule { access, all, subnet };
            context.ask(|done| Ask::AddRule(rule, done))??;
            request.status(Status::Success)
        }
        Command::AccessCheck { address } => match address {
            Some(address) if context.server.is_allowed(address) => {
                request.status(Status::AccessAllowed)
            }
            Some(_) => request.status(Status::AccessDenied),
            None => request.status(Status::Invalid),
        },
        Command::Reload => {
            reload(context)?;
            request.status(Status::Success)
        }
        Command::SourceName { address } => {
            match context.sources().iter().find(|s| Some(s.address) == address) {
                Some(source) => request.source_name(&source.name),
                None => request.status(Status::NoSuchSource),
            }
        }
        Command::AuthData { address } => {
            match context.auth_data().into_iter().find(|s| Some(s.address) == address) {
                Some(source) => request.auth_data(source.nts),
                None => request.status(Status::NoSuchSource),
            }
        }
        Command::Smoothing => match context.server.smoothing_report(clock::tai_now()) {
            Some(report) => request.smoothing(&report),
            None => request.status(Status::NotEnabled),
        },
        Command::SmoothTime { activate } => {
            match context.server.smooth_time(activate, clock::tai_now()) {
                true => request.status(Status::Success),
                false => request.status(Status::NotEnabled),
            }
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

/// The address requests to `remote` leave from, as the routing table chooses it (connecting
/// a UDP socket sends nothing).
fn local_address_towards(remote: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = match remote {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}
