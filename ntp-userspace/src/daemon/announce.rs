//! The service addresses (`announce`): checked every tick against the server's health (the
//! core's `announce` decides), put on the loopback while announced (renewed with a lifetime,
//! so that a dead daemon's addresses go by themselves) and taken off when not, for the routing
//! daemon that exports the loopback's addresses. Each change is logged once.

use std::sync::{Arc, Mutex};

use crate::{
    announce::{AnnounceSettings, Announcement, AnnouncementReport, Change, Health},
    sys::{address, clock},
};

/// How long an address stays on the loopback unless renewed, s: a daemon that dies stops
/// attracting clients within this (the tick renews it every second).
pub const ADDRESS_LIFETIME_S: u32 = 3;

pub(super) struct Announcer {
    lines: Vec<Announcement>,
    /// What `ntpxc announcements` and the metrics read.
    pub(super) reports: Arc<Mutex<Vec<AnnouncementReport>>>,
}

impl Announcer {
    pub(super) fn new(settings: &[AnnounceSettings]) -> Self {
        let lines: Vec<Announcement> = settings.iter().cloned().map(Announcement::new).collect();
        let reports = Arc::new(Mutex::new(lines.iter().flat_map(Announcement::report).collect()));
        let announcer = Self { lines, reports };
        // Whatever a previous run left there is not announced yet.
        for line in &announcer.lines {
            withdraw(line);
        }
        announcer
    }

    /// The tick's check: addresses announced, renewed or withdrawn as the health says.
    pub(super) fn check(&mut self, health: &Health) {
        let now = clock::realtime_ns() as i64;
        for line in &mut self.lines {
            match line.check(health, now) {
                Some(Change::Announce) => {
                    tracing::info!(addresses = ?line.settings.addresses, "announced");
                }
                Some(Change::Withdraw(reason)) => {
                    tracing::warn!(addresses = ?line.settings.addresses, %reason, "withdrawn");
                    withdraw(line);
                }
                None => {}
            }
            if line.is_announced() {
                for &address in &line.settings.addresses {
                    if let Err(error) = address::add_to_loopback(address, ADDRESS_LIFETIME_S) {
                        tracing::error!(%address, %error, "cannot put the address on lo");
                    }
                }
            }
        }
        self.report();
    }

    /// The daemon stops: every address withdrawn (before it stops answering).
    pub(super) fn stop(&mut self) {
        for line in &mut self.lines {
            if line.stop().is_some() {
                tracing::info!(addresses = ?line.settings.addresses, "withdrawn: stopping");
            }
            withdraw(line);
        }
        self.report();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn report(&self) {
        *self.reports.lock().expect("announcements lock") =
            self.lines.iter().flat_map(Announcement::report).collect();
    }
}

fn withdraw(line: &Announcement) {
    for &address in &line.settings.addresses {
        if let Err(error) = address::remove_from_loopback(address) {
            tracing::error!(%address, %error, "cannot take the address off lo");
        }
    }
}
