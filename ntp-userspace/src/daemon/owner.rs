//! The owner of the kernel's published state: the main loop's [`Owner`] republishes it every
//! tick and carries out what control connections and SIGHUP ask, one at a time.

use std::{net::IpAddr, sync::Arc};

use anyhow::Context as _;
use ntp_common::ratelimit::RateLimit;

use super::context::{Ask, KernelView};
use crate::config::reloadable;
use crate::{
    access::{AccessRule, AccessTable},
    announce::Health,
    client_log::ClientLogSettings,
    config::{self, ClientLogSize, Config},
    control::{KernelCounters, XdpAttachment},
    dataplane::Dataplane,
    server::Server,
    sync::Served,
    sys::{
        clock::{self, KernelClock},
        nic,
    },
    upstream::Upstream,
};

/// The kernel's published state and the rules behind it, owned by the daemon's main loop alone:
/// it republishes on its tick and answers [`Ask`]s between ticks, one at a time, so that no
/// lock is shared with the slow path or the control connections, and every change is one
/// switch of the page.
pub(super) struct Owner {
    pub(super) dataplane: Option<Dataplane>,
    pub(super) config: Config,
    /// The configuration's access rules and those added at run time, in order.
    pub(super) rules: Vec<AccessRule>,
}

impl Owner {
    /// Refreshes the kernel's state; false if it could not.
    pub(super) fn republish(&mut self, server: &Server, upstream: Option<&Upstream>) -> bool {
        self.refresh(server, upstream).is_some()
    }

    /// Refreshes the kernel's state, and says how fit the server is to be announced.
    pub(super) fn republish_and_check(
        &mut self,
        server: &Server,
        upstream: Option<&Upstream>,
    ) -> Health {
        let refreshed = self.refresh(server, upstream);
        let header = refreshed.flatten().and_then(|served| served.header);
        let attached = self.dataplane.as_ref().map_or(0, |d| d.attachments().count());
        Health {
            synchronised: header.is_some(),
            root_distance: header.map_or(f64::INFINITY, |h| {
                h.root_delay.to_seconds() / 2.0 + h.root_dispersion.to_seconds()
            }),
            state_fresh: refreshed.is_some(),
            attached: attached >= self.config.xdp.len(),
        }
    }

    /// The synchronisation's served time, if refreshing worked (None inside without sources).
    fn refresh(&mut self, server: &Server, upstream: Option<&Upstream>) -> Option<Option<Served>> {
        match refresh(server, self.dataplane.as_mut(), upstream, &self.config) {
            Ok(served) => Some(served),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot refresh the kernel's state");
                None
            }
        }
    }

    pub(super) fn answer(&mut self, ask: Ask, server: &Server) {
        // A requester that gave up (its connection closed) does not need the outcome.
        match ask {
            Ask::AddRule(rule, done) => {
                let _ = done.send(self.add_rule(rule, server));
            }
            Ask::Reload(loaded, done) => {
                let _ = done.send(self.reload(*loaded, server));
            }
            Ask::KernelView(done) => {
                let _ = done.send(self.kernel_view());
            }
        }
    }

    fn add_rule(&mut self, rule: AccessRule, server: &Server) -> anyhow::Result<()> {
        let mut rules = self.rules.clone();
        rules.push(rule);
        let table = AccessTable::from_rules(&rules);
        if let Some(dataplane) = self.dataplane.as_mut() {
            dataplane.set_access(&table)?;
        }
        self.rules = rules;
        server.set_access(table);
        tracing::info!(access = ?rule.access, all = rule.all, subnet = %rule.subnet, "access rule added");
        Ok(())
    }

    /// Applies what can change while running: the access rules (run-time changes are dropped,
    /// as chrony drops them on restart), the rate limit and the local reference.
    pub(super) fn reload(&mut self, loaded: config::Loaded, server: &Server) -> anyhow::Result<()> {
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let (new, needs_restart) = reloadable(&self.config, loaded.config);
        for what in needs_restart {
            tracing::warn!("{what} changed: it needs a restart, and keeps its running value");
        }
        let access = AccessTable::from_rules(&new.access);
        if let Some(dataplane) = self.dataplane.as_mut() {
            let epoch = dataplane.clients().settings().epoch_tai_ns;
            dataplane.reconfigure(&access, client_log_settings(&new, epoch))?;
        }
        server.set_access(access);
        server.set_local(new.local);
        self.rules = new.access.clone();
        self.config = new;
        Ok(())
    }

    fn kernel_view(&mut self) -> anyhow::Result<KernelView> {
        let Some(dataplane) = self.dataplane.as_mut() else {
            return Ok(KernelView::default());
        };
        let counters = KernelCounters::from_array(&dataplane.counters()?);
        let attachments = dataplane
            .attachments()
            .map(|(interface, mode)| XdpAttachment { interface: interface.to_owned(), mode })
            .collect();
        let published_tai_ns = Some(dataplane.published().state.base_tai_ns);
        Ok(KernelView { counters, attachments, published_tai_ns })
    }
}

/// Resolves when the synchronisation steps the system clock (never without one).
pub(super) async fn clock_stepped(upstream: &Option<Arc<Upstream>>) {
    match upstream {
        Some(upstream) => upstream.clock_stepped.notified().await,
        None => std::future::pending().await,
    }
}

/// Fills the program's maps and publishes the state, then attaches: the program never runs on
/// an interface before it has everything it needs.
pub(super) fn start_dataplane(
    dataplane: &mut Dataplane,
    config: &Config,
    server: &Server,
    upstream: Option<&Upstream>,
    access: &AccessTable,
) -> anyhow::Result<()> {
    dataplane.reconfigure(access, client_log_settings(config, clock::tai_ns()))?;
    refresh(server, Some(dataplane), upstream, config)?;
    for xdp in &config.xdp {
        let mode = dataplane.attach(&xdp.interface, xdp.mode)?;
        tracing::info!(interface = xdp.interface, ?mode, "XDP attached");
    }
    Ok(())
}

fn client_log_settings(config: &Config, epoch_tai_ns: u64) -> ClientLogSettings {
    ClientLogSettings {
        enabled: config.client_log != ClientLogSize::Disabled,
        limit: config.rate_limit.map_or(RateLimit::DISABLED, |limit| limit.bucket()),
        epoch_tai_ns,
    }
}

/// Follows the kernel clock and the synchronisation and, with the program loaded, publishes a
/// fresh state and the local addresses; what the synchronisation serves, if there is one.
fn refresh(
    server: &Server,
    dataplane: Option<&mut Dataplane>,
    upstream: Option<&Upstream>,
    config: &Config,
) -> anyhow::Result<Option<Served>> {
    let mut synchronisation = None;
    if let Some(upstream) = upstream {
        // First: the synchronisation keeps the kernel's clock state (and TAI offset) fresh.
        let now = clock::tai_now();
        let served = upstream.sync.lock().expect("sync lock").served(now.system_time_ns() as i64);
        server.set_served(served, now);
        upstream.save_drift(false);
        synchronisation = Some(served);
    }
    // A kernel clock that answers is part of a healthy refresh (the watchdog hears of it).
    KernelClock::read().context("adjtimex")?;
    let now = clock::tai_now();
    let addresses = served_addresses(config)?;
    server.set_local_addresses(&addresses);
    if let Some(dataplane) = dataplane {
        let smeared = config.leap_smear.as_ref().map_or(&[][..], |smear| &smear.addresses);
        dataplane.set_local_addresses(&addresses, smeared);
        let (state, smeared) = server.states_to_publish(now);
        dataplane.publish(&state, smeared.as_ref());
    }
    Ok(synchronisation)
}

/// The addresses the server answers for: the bind addresses, or all of this host's.
fn served_addresses(config: &Config) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = nic::local_addresses()
        .context("listing local addresses")?
        .into_iter()
        .filter(|address| match address {
            IpAddr::V4(a) => config.bind_v4.is_none_or(|bound| bound == *a),
            IpAddr::V6(a) => config.bind_v6.is_none_or(|bound| bound == *a),
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        config::parse(Path::new("test.conf"), text).unwrap().config
    }

    #[test]
    fn a_reload_that_turns_the_client_log_on_keeps_it_off_until_a_restart() {
        let old = config("allow\nnoclientlog\n");
        let new = config("allow\nratelimit interval 1 burst 4\nclientlog entries 1000\n");
        let (applied, needs_restart) = reloadable(&old, new);
        assert_eq!(needs_restart, ["the client log (with its rate limits)"]);
        let settings = client_log_settings(&applied, 0);
        assert!(!settings.enabled);
        assert_eq!(settings.limit, RateLimit::DISABLED);
    }
}
