//! What control connections (ntpxc's, chronyc's, scrapes) work with, and how they reach the
//! owner.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    access::AccessRule,
    announce::AnnouncementReport,
    client_table::ClientTable,
    config::{self},
    control::{AuthData, KernelCounters, XdpAttachment},
    server::Server,
    sync::SourceReport,
    sys::clock::{self},
    upstream::Upstream,
};

/// What control connections and SIGHUP ask of the [`Owner`](super::owner::Owner), each with
/// where its answer goes. Whatever takes time (reading the file, resolving names) is done
/// before it is asked.
pub(super) enum Ask {
    AddRule(AccessRule, oneshot::Sender<anyhow::Result<()>>),
    Reload(Box<config::Loaded>, oneshot::Sender<anyhow::Result<()>>),
    /// The kernel's counters and attachments, for `serverstats` and metrics.
    KernelView(oneshot::Sender<anyhow::Result<KernelView>>),
}

/// What the owner reads of the kernel for a report.
#[derive(Default)]
pub(super) struct KernelView {
    pub(super) counters: KernelCounters,
    pub(super) attachments: Vec<XdpAttachment>,
    /// The CLOCK_TAI instant the state the program serves was computed for (None: no program).
    pub(super) published_tai_ns: Option<u64>,
}

/// What a control connection works with; the owner is reached through `owner`.
pub(super) struct ControlContext {
    pub(super) server: Arc<Server>,
    /// The synchronisation, when there are `server` or `pool` lines.
    pub(super) upstream: Option<Arc<Upstream>>,
    /// The client log, when the program is loaded.
    pub(super) clients: Option<Arc<ClientTable>>,
    pub(super) config_file: PathBuf,
    pub(super) owner: mpsc::Sender<Ask>,
    /// The service addresses' announcements, as the last tick left them.
    pub(super) announcements: Arc<Mutex<Vec<AnnouncementReport>>>,
}

impl ControlContext {
    /// `authdata`'s rows: each source, and its NTS association if it has one.
    pub(super) fn auth_data(&self) -> Vec<AuthData> {
        let associations = self.upstream.as_ref().map(|u| u.nts.lock().expect("NTS lock"));
        self.sources()
            .into_iter()
            .map(|source| {
                let nts = associations.as_ref().and_then(|associations| {
                    let (_, association) =
                        associations.iter().find(|(a, _)| a.ip() == source.address)?;
                    Some(association.report())
                });
                AuthData { name: source.name, address: source.address, nts }
            })
            .collect()
    }

    /// `sources` and `sourcestats`' rows (none without upstream sources).
    pub(super) fn sources(&self) -> Vec<SourceReport> {
        match &self.upstream {
            Some(upstream) => {
                upstream.sync.lock().expect("sync lock").sources(clock::realtime_ns() as i64)
            }
            None => Vec::new(),
        }
    }

    /// Asks the owner and waits for its answer. Blocks: call it off the runtime's workers.
    pub(super) fn ask<T>(&self, ask: impl FnOnce(oneshot::Sender<T>) -> Ask) -> anyhow::Result<T> {
        let (done, outcome) = oneshot::channel();
        self.owner.blocking_send(ask(done)).map_err(|_| anyhow::anyhow!("ntpxd is stopping"))?;
        outcome.blocking_recv().map_err(|_| anyhow::anyhow!("ntpxd is stopping"))
    }
}

/// Rereads the configuration file (host names resolved here, off the owner) and has the owner
/// apply it. A file with an error changes nothing. Blocks: call it off the runtime's workers.
pub(super) fn reload(context: &ControlContext) -> anyhow::Result<()> {
    let loaded = config::load(&context.config_file)?;
    context.ask(|done| Ask::Reload(Box::new(loaded), done))??;
    tracing::info!(file = %context.config_file.display(), "configuration reloaded");
    Ok(())
}
