//! Whether this server offers its service addresses to the fleet (`announce`): only while it is
//! fit to serve (synchronised, within the distance bound, its published state fresh, the
//! program attached). A server that turns unfit withdraws at its next check (a second); one
//! that is fit again announces only after it has stayed fit for the hold-down time, so that a
//! flapping source cannot flap the route faster than once a hold-down.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One `announce` line.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnounceSettings {
    pub addresses: Vec<IpAddr>,
    /// The server's root distance above which it is unfit, s.
    pub max_distance: f64,
    /// How long it must have been fit before it announces, s.
    pub hold_down: f64,
}

/// The defaults: a root distance under 100 ms, fit for 10 s.
pub const DEFAULT_MAX_DISTANCE: f64 = 0.1;
pub const DEFAULT_HOLD_DOWN: f64 = 10.0;

/// What the server knows of itself at a check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Health {
    pub synchronised: bool,
    /// Root distance of the time served, s (infinite when unsynchronised).
    pub root_distance: f64,
    /// The kernel's published state was refreshed recently.
    pub state_fresh: bool,
    /// The XDP program is attached where the configuration says (true without `xdp`).
    pub attached: bool,
}

/// Why a service address is not announced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum NotAnnounced {
    NotSynchronised,
    /// The root distance is over the bound.
    TooFar {
        distance: f64,
        limit: f64,
    },
    /// The kernel's state was not refreshed (the daemon is wedged).
    StateStale,
    NotAttached,
    /// Fit, but not yet for the hold-down time.
    HoldDown {
        remaining: f64,
    },
    /// The daemon is stopping.
    Stopping,
}

impl std::fmt::Display for NotAnnounced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotSynchronised => write!(f, "not synchronised"),
            Self::TooFar { distance, limit } => {
                write!(f, "root distance {distance:.6} s over {limit} s")
            }
            Self::StateStale => write!(f, "the kernel's state is stale"),
            Self::NotAttached => write!(f, "the XDP program is not attached"),
            Self::HoldDown { remaining } => write!(f, "fit, announced in {remaining:.0} s"),
            Self::Stopping => write!(f, "stopping"),
        }
    }
}

/// One `announce` line's state.
#[derive(Clone, Debug)]
pub struct Announcement {
    pub settings: AnnounceSettings,
    /// Fit since this time (ns), if fit.
    fit_since_ns: Option<i64>,
    /// Announced now, or why not.
    pub status: Result<(), NotAnnounced>,
}

/// A change of an announcement, to apply and to log once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    Announce,
    Withdraw(NotAnnounced),
}

impl Announcement {
    pub fn new(settings: AnnounceSettings) -> Self {
        Self { settings, fit_since_ns: None, status: Err(NotAnnounced::NotSynchronised) }
    }

    pub fn is_announced(&self) -> bool {
        self.status.is_ok()
    }

    /// The check at `now_ns`: the status, and the change to make if it changed between
    /// announced and not.
    pub fn check(&mut self, health: &Health, now_ns: i64) -> Option<Change> {
        let was = self.is_announced();
        self.status = match self.unfit(health) {
            Some(reason) => {
                self.fit_since_ns = None;
                Err(reason)
            }
            None => {
                let since = *self.fit_since_ns.get_or_insert(now_ns);
                let fit_for = (now_ns - since) as f64 * 1e-9;
                if was || fit_for >= self.settings.hold_down {
                    Ok(())
                } else {
                    Err(NotAnnounced::HoldDown { remaining: self.settings.hold_down - fit_for })
                }
            }
        };
        match (was, self.status) {
            (false, Ok(())) => Some(Change::Announce),
            (true, Err(reason)) => Some(Change::Withdraw(reason)),
            _ => None,
        }
    }

    /// The daemon stops: withdrawn before it stops answering.
    pub fn stop(&mut self) -> Option<Change> {
        let was = self.is_announced();
        self.status = Err(NotAnnounced::Stopping);
        self.fit_since_ns = None;
        was.then_some(Change::Withdraw(NotAnnounced::Stopping))
    }

    fn unfit(&self, health: &Health) -> Option<NotAnnounced> {
        if !health.synchronised {
            Some(NotAnnounced::NotSynchronised)
        } else if health.root_distance > self.settings.max_distance {
            Some(NotAnnounced::TooFar {
                distance: health.root_distance,
                limit: self.settings.max_distance,
            })
        } else if !health.state_fresh {
            Some(NotAnnounced::StateStale)
        } else if !health.attached {
            Some(NotAnnounced::NotAttached)
        } else {
            None
        }
    }
}

/// `ntpxc announcements`' rows: each service address, announced or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnouncementReport {
    pub address: IpAddr,
    pub announced: bool,
    pub why_not: Option<NotAnnounced>,
}

impl Announcement {
    pub fn report(&self) -> impl Iterator<Item = AnnouncementReport> + '_ {
        self.settings.addresses.iter().map(|address| AnnouncementReport {
            address: *address,
            announced: self.is_announced(),
            why_not: self.status.err(),
        })
    }
}

/// `ntpxc announcements`' text.
pub fn announcements_text(rows: &[AnnouncementReport]) -> String {
    let mut text = String::from("Service address                          Announced\n");
    text.push_str("===================================================================\n");
    for row in rows {
        let state = match row.why_not {
            None => "yes".to_owned(),
            Some(reason) => format!("no: {reason}"),
        };
        text.push_str(&format!("{:<40} {state}\n", row.address));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn announcement() -> Announcement {
        Announcement::new(AnnounceSettings {
            addresses: vec!["192.0.2.123".parse().unwrap()],
            max_distance: 0.1,
            hold_down: 10.0,
        })
    }

    const FIT: Health =
        Health { synchronised: true, root_distance: 0.001, state_fresh: true, attached: true };

    #[test]
    fn announced_after_the_hold_down_and_withdrawn_at_once() {
        let mut a = announcement();
        assert_eq!(a.check(&FIT, 0), None);
        assert_eq!(a.status, Err(NotAnnounced::HoldDown { remaining: 10.0 }));
        assert_eq!(a.check(&FIT, 9 * S), None);
        assert_eq!(a.check(&FIT, 10 * S), Some(Change::Announce));
        assert_eq!(a.check(&FIT, 11 * S), None);
        let far = Health { root_distance: 0.2, ..FIT };
        assert_eq!(
            a.check(&far, 12 * S),
            Some(Change::Withdraw(NotAnnounced::TooFar { distance: 0.2, limit: 0.1 }))
        );
        for (unfit, reason) in [
            (Health { synchronised: false, ..FIT }, NotAnnounced::NotSynchronised),
            (Health { state_fresh: false, ..FIT }, NotAnnounced::StateStale),
            (Health { attached: false, ..FIT }, NotAnnounced::NotAttached),
        ] {
            let mut a = announcement();
            a.check(&FIT, 0);
            a.check(&FIT, 10 * S);
            assert_eq!(a.check(&unfit, 11 * S), Some(Change::Withdraw(reason)));
        }
    }

    #[test]
    fn a_flapping_server_is_not_announced_until_it_stays_fit() {
        let mut a = announcement();
        // Fit for 5 s, unfit for 1, over and over: never announced.
        let unfit = Health { synchronised: false, ..FIT };
        for second in 0..60 {
            let health = if second % 6 == 5 { unfit } else { FIT };
            assert_eq!(a.check(&health, second * S), None, "at {second} s");
        }
        for second in 60..=70 {
            a.check(&FIT, second * S);
        }
        assert!(a.is_announced());
    }

    #[test]
    fn a_stop_withdraws_and_the_report_says_why() {
        let mut a = announcement();
        a.check(&FIT, 0);
        a.check(&FIT, 10 * S);
        assert_eq!(a.stop(), Some(Change::Withdraw(NotAnnounced::Stopping)));
        assert_eq!(a.stop(), None);
        let rows: Vec<_> = a.report().collect();
        assert_eq!(rows[0].why_not, Some(NotAnnounced::Stopping));
        let text = announcements_text(&rows);
        assert!(text.contains("192.0.2.123") && text.contains("no: stopping"), "{text}");
    }
}
