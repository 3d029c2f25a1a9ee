//! Synchronisation to upstream sources, sans-IO: requests and replies with their local
//! timestamps in, requests out, and the estimate of true time that the server serves and the
//! discipline applies. The daemon's shell does the sockets, timers and name lookups.

pub mod discipline;
pub mod leap;
pub mod refclock;
pub mod regression;
pub mod selection;
pub mod source;

use std::net::{IpAddr, SocketAddr};

use ntp_common::{
    state::ReplyHeader,
    wire::{Leap, NtpShort, NtpTimestamp, ReferenceId},
};
use serde::{Deserialize, Serialize};

use self::{
    discipline::{Action, Discipline, KernelStatus},
    leap::LeapTable,
    refclock::{ClockSettings, Ignored, Reading, ReferenceClock},
    regression::{Sample, seconds_between},
    selection::{Candidate, Combined, select},
    source::{Exchanges, LastReply, PHI, PollSettings, Request, Source, SourceState},
};

/// Index of a source.
pub type SourceId = usize;

/// Settings of the synchronisation as a whole.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncSettings {
    /// Sources further than this (root distance, s) are not used, and the server becomes
    /// unsynchronised when its own distance passes it (`maxdistance`).
    pub max_distance: f64,
    /// How fast the error bound grows without updates (`maxclockerror`, s/s).
    pub clock_error: f64,
    /// Clear STA_UNSYNC when synchronised (`rtcsync`).
    pub rtcsync: bool,
    pub precision: i8,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self { max_distance: 3.0, clock_error: PHI, rtcsync: false, precision: -20 }
    }
}

/// The reference: what the server's time is based on at the last update.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reference {
    peer: SourceId,
    stratum: u8,
    reference_id: ReferenceId,
    /// Raw time of the update, ns.
    time_raw_ns: i64,
    root_delay: f64,
    /// At the update.
    root_dispersion: f64,
    leap: Leap,
}

/// How long before a leap the kernel's TAI offset is left to the kernel.
const LEAVE_TAI_OFFSET_BEFORE_LEAP_NS: i64 = 10_000_000_000;

/// The served time and header at a moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Served {
    /// Served time minus system time, s.
    pub correction: f64,
    /// How much faster served time runs than the system clock, s/s.
    pub frequency: f64,
    /// The header, or `None` when unsynchronised.
    pub header: Option<ReplyHeader>,
    /// A leap second takes effect at this system time (ns): served state must not be used past
    /// it without recomputing.
    pub leap_at_ns: Option<i64>,
    /// How the correction changes at the leap: -1 s for an inserted second under -x (the
    /// system clock does not leap, the served time must), 0 when the kernel leaps the clock.
    pub correction_after_leap: f64,
    /// The estimated frequency's error bound, s/s (chrony's skew).
    pub skew: f64,
    /// A leap second the leap table says was made at the start of today (UTC), and how long
    /// ago, s: what a smear restarted after it resumes from.
    pub leap_made: Option<(f64, Leap)>,
}

/// `tracking`, as chronyc shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    pub reference_id: u32,
    pub reference_name: String,
    pub stratum: u8,
    /// Unix seconds of the last update (0: never).
    pub reference_time: f64,
    /// System time minus served time, s (positive: the system clock is fast).
    pub system_time_offset: f64,
    pub last_offset: f64,
    pub rms_offset: f64,
    /// ppm; positive: the system clock is fast.
    pub frequency_ppm: f64,
    pub residual_frequency_ppm: f64,
    pub skew_ppm: f64,
    pub root_delay: f64,
    pub root_dispersion: f64,
    pub update_interval: f64,
    pub leap: LeapStatus,
    pub synchronised: bool,
    /// `leapsmear`: smeared minus true time now, for each smeared address (ntpxd's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leap_smears: Vec<crate::smear::SmearReport>,
    /// `smoothtime`: served minus true time now (ntpxd's own; chronyc's `smoothing` has more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing_offset: Option<f64>,
}

/// One row of `sources` and `sourcestats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    /// A server's address; a reference clock's reference ID as an IPv4 address.
    pub address: IpAddr,
    /// A reference clock (chronyc's mode `#`), not a server (`^`).
    #[serde(default)]
    pub reference_clock: bool,
    pub state: SourceState,
    pub stratum: u8,
    pub poll: i8,
    pub reach: u8,
    /// Seconds since the last good reply (`None`: never).
    pub last_rx: Option<f64>,
    /// The last sample: offset adjusted for corrections since, measured offset, error bound.
    pub adjusted_offset: f64,
    pub measured_offset: f64,
    pub error: f64,
    pub samples: usize,
    pub runs: usize,
    pub span: f64,
    pub frequency_ppm: f64,
    pub skew_ppm: f64,
    pub offset: f64,
    pub std_dev: f64,
}

/// `ntpdata`: one source's exchanges and last reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NtpData {
    pub remote: SocketAddr,
    pub exchanges: Exchanges,
    pub last_reply: Option<LastReply>,
    /// The last measurement, its offset the source's time minus the system clock's then.
    pub sample: Option<Sample>,
}

/// A leap second the served time makes under -x: at `at_raw_ns`, the UTC `midnight`, true time
/// moves by `delta` s against the raw clock.
#[derive(Clone, Copy, Debug)]
struct PendingLeap {
    at_raw_ns: i64,
    delta: f64,
    midnight: i64,
}

pub struct Synchroniser {
    settings: SyncSettings,
    sources: Vec<Source>,
    discipline: Discipline,
    leap_table: Option<LeapTable>,
    reference: Option<Reference>,
    /// Served time = raw time + `offset + frequency * (t - since)` (raw ns).
    offset: f64,
    frequency: f64,
    since_raw_ns: i64,
    skew: f64,
    /// A leap second under -x, due at a raw time.
    pending_leap: Option<PendingLeap>,
    /// The UTC midnight (Unix s) of the last leap made under -x: during the inserted second,
    /// true time reads the leap day again, and must not announce it twice.
    last_leap_midnight: Option<i64>,
    last_offsets: Vec<f64>,
    update_times: Vec<i64>,
}

impl Synchroniser {
    pub fn new(
        settings: SyncSettings,
        discipline: Discipline,
        leap_table: Option<LeapTable>,
        now_system_ns: i64,
    ) -> Self {
        let since_raw_ns = discipline.raw_ns(now_system_ns);
        Self {
            settings,
            sources: Vec::new(),
            discipline,
            leap_table,
            reference: None,
            offset: 0.0,
            frequency: 0.0,
            since_raw_ns,
            skew: 0.0,
            pending_leap: None,
            last_leap_midnight: None,
            last_offsets: Vec::new(),
            update_times: Vec::new(),
        }
    }

    pub fn add_source(
        &mut self,
        name: String,
        address: SocketAddr,
        settings: PollSettings,
        now_system_ns: i64,
    ) -> SourceId {
        let now = self.discipline.raw_ns(now_system_ns);
        self.sources.push(Source::new(name, address, settings, now));
        self.sources.len() - 1
    }

    /// Adds a reference clock (`refclock`), named by its reference ID in reports.
    pub fn add_reference_clock(
        &mut self,
        clock: ClockSettings,
        settings: PollSettings,
        now_system_ns: i64,
    ) -> SourceId {
        let now = self.discipline.raw_ns(now_system_ns);
        let name = reference_id_name(clock.reference_id);
        let clock = ReferenceClock::new(clock);
        self.sources.push(Source::reference_clock(name, clock, settings, now));
        self.sources.len() - 1
    }

    /// A reading of reference clock `id`'s driver, made at system time `now`. A time of day
    /// becomes a sample against the raw clock; a pulse takes its second from the clock it is
    /// locked to or, without `lock`, from the time served (which must then be good to well
    /// within half a pulse).
    pub fn reference_clock_reading(
        &mut self,
        id: SourceId,
        reading: Reading,
        now_system_ns: i64,
    ) -> Result<(), Ignored> {
        let now = self.discipline.raw_ns(now_system_ns);
        let time = self.discipline.raw_ns(reading.system_ns());
        let Some(settings) = self.sources.get(id).and_then(|s| s.reference_clock.as_ref()) else {
            // Not a reference clock: nothing to keep.
            return Err(Ignored::Stale);
        };
        let settings = settings.settings.clone();
        let age = seconds_between(time, now);
        let lock = settings.lock.and_then(|lock| {
            self.sources
                .iter()
                .filter_map(|s| s.reference_clock.as_ref())
                .find(|c| {
                    c.settings.reference_id == lock
                        && c.settings.reference_id != settings.reference_id
                })
                .map(|c| (c.last_sample(), c.leap))
        });
        // Good enough to tell a pulse's second: well within half a pulse interval.
        let tells_the_second = self.root_distance(now) < 0.5 / f64::from(settings.rate.max(1));
        let estimate_now = self.offset_at(time);
        let tai_offset = |true_s: i64| {
            let table = self.leap_table.as_ref()?;
            let approximate = table.tai_offset(true_s)?;
            table.tai_offset(true_s - i64::from(approximate))
        };
        let applied = self.discipline.applied_at(time);
        let clock = self.sources[id].reference_clock.as_mut().expect("a reference clock");
        clock.reached();
        // chrony's sanity check: not from the future, nor older than two polls.
        if !(0.0..=2f64.powi(i32::from(settings.poll) + 1)).contains(&age) {
            return Err(Ignored::Stale);
        }
        let dispersion = settings.precision;
        // chrony's `pps` option: a time of day used for its pulse only.
        let reading = match reading {
            Reading::Time { system_ns, offset, .. } if settings.pulses_only => {
                Reading::Pulse { system_ns, second: -offset }
            }
            reading => reading,
        };
        let (offset, leap) = match reading {
            Reading::Time { offset, leap, .. } => {
                if leap == Leap::Unsynchronised {
                    return Err(Ignored::Unsynchronised);
                }
                // Against the raw clock: the system clock was `applied` ahead of it.
                let mut offset = offset + applied + settings.offset;
                if settings.tai {
                    let true_s = (reading.system_ns() as f64 * 1e-9 + offset - applied) as i64;
                    offset -= f64::from(tai_offset(true_s).ok_or(Ignored::NoTaiOffset)?);
                }
                (offset, leap)
            }
            Reading::Pulse { second, .. } => {
                // Against our estimate of true time, wrapped into the pulse interval, then
                // against the raw clock.
                let served_correction = estimate_now - applied;
                let past = clock.wrap_pulse(-second + settings.offset - served_correction);
                let offset = estimate_now + past;
                match lock {
                    Some((last, leap)) => {
                        let sample = Sample { time_ns: time, offset, delay: 0.0, dispersion };
                        (clock.lock_pulse(sample, last)?, leap)
                    }
                    None if settings.lock.is_some() => return Err(Ignored::NoSecond),
                    None => {
                        if !tells_the_second {
                            clock.drop_samples();
                            return Err(Ignored::NoSecond);
                        }
                        (offset, self.reference.map_or(Leap::NoWarning, |r| r.leap))
                    }
                }
            }
        };
        let sample = Sample { time_ns: time, offset, delay: settings.delay, dispersion };
        clock.keep(sample, leap, matches!(reading, Reading::Pulse { .. }))
    }

    /// Reference clock `id`'s poll (every 2^poll s): its filtered sample, if any, goes into
    /// selection. Returns what the discipline did, if the sample brought a new estimate.
    pub fn poll_reference_clock(&mut self, id: SourceId, now_system_ns: i64) -> Option<Action> {
        let now = self.discipline.raw_ns(now_system_ns);
        self.apply_due_leap(now);
        let source = self.sources.get_mut(id)?;
        let (reached, sample) = source.reference_clock.as_mut()?.poll();
        let was_reachable = source.reach != 0;
        source.reference_clock_polled(reached, sample, now);
        if sample.is_some() {
            return Some(self.update(now));
        }
        if was_reachable && self.sources[id].reach == 0 {
            self.select_sources(now);
        }
        None
    }

    /// Puts a new server in the place of source `id` (a pool replacing an unreachable one).
    pub fn replace_source(
        &mut self,
        id: SourceId,
        name: String,
        address: SocketAddr,
        now_system_ns: i64,
    ) {
        let now = self.discipline.raw_ns(now_system_ns);
        let settings = self.sources[id].settings;
        self.sources[id] = Source::new(name, address, settings, now);
    }

    /// Whether the discipline adjusts the system clock (not under `-x`).
    pub fn controls_clock(&self) -> bool {
        self.discipline.controls_clock()
    }

    /// `request` to source `id` left at system time `sent_ns`.
    pub fn transmitted(&mut self, id: SourceId, request: &Request, sent_system_ns: i64) {
        let sent = self.discipline.raw_ns(sent_system_ns);
        if let Some(source) = self.sources.get_mut(id) {
            source.transmitted(request, sent);
        }
    }

    pub fn source(&self, id: SourceId) -> &Source {
        &self.sources[id]
    }

    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Requests due at `now`; `random` gives each its unguessable transmit timestamp.
    pub fn poll(
        &mut self,
        now_system_ns: i64,
        mut random: impl FnMut() -> u64,
    ) -> Vec<(SourceId, Request)> {
        let now = self.discipline.raw_ns(now_system_ns);
        let reachable = self.sources.iter().filter(|s| s.reach != 0).count();
        let requests = self
            .sources
            .iter_mut()
            .enumerate()
            .filter_map(|(id, s)| s.poll(now, random()).map(|r| (id, r)))
            .collect();
        // A source that just became unreachable leaves the selection now, not at the next
        // reply (there may be none); the time served stays as it is.
        if self.sources.iter().filter(|s| s.reach != 0).count() < reachable {
            self.select_sources(now);
        }
        requests
    }

    /// The earliest time (system ns) a source wants polling.
    pub fn next_poll_ns(&self) -> Option<i64> {
        let next = self
            .sources
            .iter()
            .filter(|s| !s.refused && s.reference_clock.is_none())
            .map(Source::next_poll_ns)
            .min()?;
        Some(self.discipline.system_ns(next))
    }

    /// A reply to source `id`, received at system time `received_ns`. Returns what the
    /// discipline did, if the reply brought a new estimate.
    pub fn receive(
        &mut self,
        id: SourceId,
        reply: &[u8],
        from: SocketAddr,
        received_system_ns: i64,
    ) -> Option<Action> {
        let received = self.discipline.raw_ns(received_system_ns);
        // A leap due before this reply has moved the samples' timescale already.
        self.apply_due_leap(received);
        let leap_possible = self.sources.get(id)?.samples.newest().is_some_and(|previous| {
            leap::leap_between(self.true_seconds(previous.time_ns), self.true_seconds(received))
        });
        let source = self.sources.get_mut(id)?;
        match source.receive(reply, from, received, leap_possible) {
            Ok(_) => Some(self.update(received)),
            Err(rejected) => {
                tracing::debug!(source = %source.address, ?rejected, "reply not used");
                None
            }
        }
    }

    /// Reselects and, when the selection gives an estimate, updates the served time and the
    /// clock.
    fn update(&mut self, now: i64) -> Action {
        self.apply_due_leap(now);
        let Some(combined) = self.select_sources(now) else {
            return Action::None;
        };
        let peer = &self.sources[combined.peer];
        let estimate = peer.estimate.expect("a selected source has an estimate");
        let previous = self.offset_at(now);
        self.offset = combined.offset;
        self.frequency = combined.frequency;
        self.since_raw_ns = now;
        self.skew = estimate.skew;
        let last_offset = combined.offset - previous;
        self.last_offsets.push(last_offset);
        if self.last_offsets.len() > 32 {
            self.last_offsets.remove(0);
        }
        self.update_times.push(now);
        if self.update_times.len() > 16 {
            self.update_times.remove(0);
        }
        let newest = peer.samples.newest().copied();
        self.reference = Some(Reference {
            peer: combined.peer,
            stratum: peer.stratum + 1,
            reference_id: reference_id_of(peer.address.ip()),
            time_raw_ns: now,
            root_delay: peer.root_delay + newest.map_or(0.0, |s| s.delay),
            root_dispersion: peer.root_dispersion
                + newest.map_or(0.0, |s| s.dispersion)
                + combined.jitter
                + estimate.offset_error,
            leap: self.leap_status(now, &combined_leap(&self.sources)),
        });
        match self.discipline.update(now, self.offset, self.frequency) {
            Ok(action) => {
                if let Action::Stepped(step) = action {
                    tracing::warn!(step, "system clock stepped");
                }
                action
            }
            Err(error) => {
                tracing::error!(%error, "cannot adjust the system clock");
                Action::None
            }
        }
    }

    /// Selects among the sources (setting their states), and combines the survivors.
    fn select_sources(&mut self, now: i64) -> Option<Combined> {
        let candidates: Vec<Option<Candidate>> = self
            .sources
            .iter()
            .map(|s| {
                let estimate = s.estimate.as_ref()?;
                let distance = s.root_distance(now);
                // Behind a stratum 15 server, this one would be at 16: unsynchronised.
                (s.is_selectable() && distance <= self.settings.max_distance && s.stratum < 15)
                    .then(|| Candidate {
                        offset: s.offset_at(now).unwrap_or(0.0),
                        distance,
                        jitter: estimate.std_dev.max(estimate.offset_error),
                        frequency: estimate.frequency,
                        stratum: s.stratum,
                        prefer: s.settings.prefer,
                        trust: s.settings.trust,
                    })
            })
            .collect();
        let required: Vec<bool> = self.sources.iter().map(|s| s.settings.require).collect();
        let selection = select(&candidates, &required);
        for (source, state) in self.sources.iter_mut().zip(&selection.states) {
            source.state = *state;
        }
        selection.combined
    }

    /// True time minus raw time at raw `now`, s.
    fn offset_at(&self, now_raw_ns: i64) -> f64 {
        let leap = match self.pending_leap {
            Some(PendingLeap { at_raw_ns, delta, .. }) if now_raw_ns >= at_raw_ns => delta,
            _ => 0.0,
        };
        self.offset + self.frequency * seconds_between(self.since_raw_ns, now_raw_ns) + leap
    }

    /// True time (Unix s) at raw `now`: what a day's date is judged by, not the raw clock,
    /// which may be weeks off before the first step.
    fn true_time(&self, now_raw_ns: i64) -> f64 {
        now_raw_ns as f64 / 1e9 + self.offset_at(now_raw_ns)
    }

    /// The whole second of `true_time`.
    fn true_seconds(&self, now_raw_ns: i64) -> i64 {
        self.true_time(now_raw_ns).floor() as i64
    }

    /// The leap the table says started today, and how long ago it was made (an inserted second
    /// is a second longer ago than true time says).
    fn leap_made(&self, now_raw_ns: i64) -> Option<(f64, Leap)> {
        let true_now = self.true_time(now_raw_ns);
        let start_of_day = true_now.div_euclid(86_400.0) * 86_400.0;
        let leap = self.leap_table.as_ref()?.leap_today(start_of_day as i64 - 1);
        let ago = true_now - start_of_day;
        match leap {
            Leap::InsertSecond => Some((ago + 1.0, leap)),
            Leap::DeleteSecond => Some((ago, leap)),
            _ => None,
        }
    }

    /// The leap status: the leap table's when there is one, else the sources' majority, taken
    /// only on the last day of June or December.
    fn leap_status(&self, now_raw_ns: i64, sources_leap: &Leap) -> Leap {
        let today = self.true_seconds(now_raw_ns);
        if self.last_leap_midnight == Some(leap::next_midnight(today)) {
            return Leap::NoWarning;
        }
        match &self.leap_table {
            Some(table) => table.leap_today(today),
            None if leap::is_leap_day(today) => *sources_leap,
            None => Leap::NoWarning,
        }
    }

    /// Under `-x` the system clock makes no leap: at the leap, true time moves against it, and
    /// every sample (relative to the raw clock) with it.
    fn apply_due_leap(&mut self, now_raw_ns: i64) {
        if let Some(PendingLeap { at_raw_ns, delta, midnight }) = self.pending_leap
            && now_raw_ns >= at_raw_ns
        {
            self.last_leap_midnight = Some(midnight);
            for source in &mut self.sources {
                source.shift(delta);
            }
            self.offset += delta;
            self.pending_leap = None;
        }
    }

    /// Root distance of the server now (infinite without a reference).
    fn root_distance(&self, now_raw_ns: i64) -> f64 {
        self.reference.map_or(f64::INFINITY, |r| {
            r.root_delay / 2.0
                + r.root_dispersion
                + self.settings.clock_error * seconds_between(r.time_raw_ns, now_raw_ns).max(0.0)
        })
    }

    /// What to serve at system time `now`: the correction and, while synchronised, the header.
    /// Also keeps the kernel's error estimates and leap flags fresh (call about once a second).
    pub fn served(&mut self, now_system_ns: i64) -> Served {
        let (served, status) = self.serving(now_system_ns);
        if let Err(error) = self.discipline.set_status(status) {
            tracing::warn!(%error, "cannot update the kernel's clock status");
        }
        served
    }

    /// What to serve at system time `now`, and the kernel clock status that goes with it.
    fn serving(&mut self, now_system_ns: i64) -> (Served, KernelStatus) {
        let now = self.discipline.raw_ns(now_system_ns);
        self.apply_due_leap(now);
        let distance = self.root_distance(now);
        let synchronised = distance <= self.settings.max_distance;
        let applied = self.discipline.applied_at(now);
        let mut leap_at_ns = None;
        let mut correction_after_leap = 0.0;
        // Recomputed at every call: an announcement withdrawn before midnight means no leap.
        self.pending_leap = None;
        let header = match self.reference {
            Some(reference) if synchronised => {
                let elapsed = seconds_between(reference.time_raw_ns, now).max(0.0);
                let leap = self.leap_status(now, &reference.leap);
                if matches!(leap, Leap::InsertSecond | Leap::DeleteSecond) {
                    // An inserted second starts at midnight; a deleted one is 23:59:59, which
                    // the clock skips.
                    let deleted = if leap == Leap::DeleteSecond { 1 } else { 0 };
                    if self.discipline.controls_clock() {
                        // The kernel leaps when the system clock reaches the leap.
                        let midnight = leap::next_midnight(now_system_ns.div_euclid(1_000_000_000));
                        leap_at_ns = Some((midnight - deleted) * 1_000_000_000);
                    } else {
                        // Under -x the served time leaps when true time reaches the leap.
                        let true_now = self.true_time(now);
                        let midnight = leap::next_midnight(self.true_seconds(now));
                        let leap_at = (midnight - deleted) as f64;
                        let at = now_system_ns + ((leap_at - true_now) * 1e9).round() as i64;
                        let delta = if leap == Leap::InsertSecond { -1.0 } else { 1.0 };
                        self.pending_leap = Some(PendingLeap {
                            at_raw_ns: self.discipline.raw_ns(at),
                            delta,
                            midnight,
                        });
                        leap_at_ns = Some(at);
                        correction_after_leap = delta;
                    }
                }
                let served_reference =
                    reference.time_raw_ns + (self.offset_at(reference.time_raw_ns) * 1e9) as i64;
                Some(ReplyHeader {
                    leap,
                    stratum: reference.stratum,
                    precision: self.settings.precision,
                    root_delay: NtpShort::from_seconds(reference.root_delay),
                    root_dispersion: NtpShort::from_seconds(
                        reference.root_dispersion + self.settings.clock_error * elapsed,
                    ),
                    dispersion_rate: self.settings.clock_error,
                    reference_id: reference.reference_id,
                    reference_time: NtpTimestamp::from_unix_nanos(served_reference.max(0) as u64),
                })
            }
            _ => None,
        };
        let status = KernelStatus {
            max_error: if distance.is_finite() { distance } else { 16.0 },
            est_error: self.reference.map_or(16.0, |r| r.root_dispersion),
            synchronised: header.is_some(),
            rtcsync: self.settings.rtcsync,
            leap: header.map_or(Leap::NoWarning, |h| h.leap),
            // Left to the kernel around a leap: it changes the offset itself as it makes the
            // leap, and through an inserted second the system clock reads the leap day's last
            // second again, for which the table would set the old offset (CLOCK_TAI would go
            // back a second).
            tai_offset: self
                .leap_table
                .as_ref()
                .filter(|_| {
                    leap_at_ns.is_none_or(|at| at - now_system_ns > LEAVE_TAI_OFFSET_BEFORE_LEAP_NS)
                })
                .and_then(|t| t.tai_offset(now.div_euclid(1_000_000_000))),
        };
        let served = Served {
            correction: self.offset_at(now) - applied,
            frequency: self.frequency - self.discipline.applied_rate(),
            header,
            leap_at_ns,
            correction_after_leap,
            skew: self.skew,
            leap_made: header.and_then(|_| self.leap_made(now)),
        };
        (served, status)
    }

    /// A report: it changes nothing in the kernel.
    pub fn tracking(&mut self, now_system_ns: i64) -> Tracking {
        let (served, _) = self.serving(now_system_ns);
        let rms = if self.last_offsets.is_empty() {
            0.0
        } else {
            (self.last_offsets.iter().map(|o| o * o).sum::<f64>() / self.last_offsets.len() as f64)
                .sqrt()
        };
        let interval = match (self.update_times.first(), self.update_times.last()) {
            (Some(first), Some(last)) if self.update_times.len() > 1 => {
                seconds_between(*first, *last) / (self.update_times.len() - 1) as f64
            }
            _ => 0.0,
        };
        let (reference_id, reference_name, stratum, reference_time) =
            match (self.reference, served.header) {
                (Some(reference), Some(header)) => (
                    u32::from_be_bytes(header.reference_id.to_bits()),
                    self.sources[reference.peer].name.clone(),
                    header.stratum,
                    header.reference_time.to_unix_nanos_near(now_system_ns) as f64 * 1e-9,
                ),
                _ => (0, String::new(), 0, 0.0),
            };
        let (root_delay, root_dispersion) = match served.header {
            Some(header) => (header.root_delay.to_seconds(), header.root_dispersion.to_seconds()),
            None => (1.0, 1.0),
        };
        Tracking {
            reference_id,
            reference_name,
            stratum,
            reference_time,
            system_time_offset: -served.correction,
            last_offset: self.last_offsets.last().copied().unwrap_or(0.0),
            rms_offset: rms,
            // The system clock runs fast when served time gains on it less than it should.
            frequency_ppm: -served.frequency * 1e6,
            residual_frequency_ppm: self.residual_frequency() * 1e6,
            skew_ppm: self.skew * 1e6,
            root_delay,
            root_dispersion,
            update_interval: interval,
            leap: LeapStatus::of(served.header.map(|h| h.leap)),
            synchronised: served.header.is_some(),
            leap_smears: Vec::new(),
            smoothing_offset: None,
        }
    }

    /// The reference source's latest frequency estimate minus the frequency in use (chrony's
    /// residual frequency): apart when several sources are combined.
    fn residual_frequency(&self) -> f64 {
        self.reference
            .and_then(|r| self.sources[r.peer].estimate)
            .map_or(0.0, |estimate| estimate.frequency - self.frequency)
    }

    pub fn sources(&self, now_system_ns: i64) -> Vec<SourceReport> {
        let now = self.discipline.raw_ns(now_system_ns);
        self.sources
            .iter()
            .map(|s| {
                let estimate = s.estimate.unwrap_or_default();
                let (measured, adjusted) = match s.last_sample {
                    // The sample relative to the system clock then, and to the served time now.
                    Some(sample) => (
                        sample.offset - self.discipline.applied_at(sample.time_ns),
                        sample.offset - self.offset_at(sample.time_ns),
                    ),
                    None => (0.0, 0.0),
                };
                SourceReport {
                    name: s.name.clone(),
                    address: s.address.ip(),
                    reference_clock: s.reference_clock.is_some(),
                    state: s.state,
                    stratum: s.stratum,
                    poll: s.poll,
                    reach: s.reach,
                    last_rx: s.last_rx_ns.map(|t| seconds_between(t, now)),
                    adjusted_offset: adjusted,
                    measured_offset: measured,
                    error: if s.estimate.is_some() { s.root_distance(now) } else { 0.0 },
                    samples: estimate.samples,
                    runs: estimate.runs,
                    span: estimate.span,
                    frequency_ppm: (estimate.frequency - self.frequency) * 1e6,
                    skew_ppm: estimate.skew * 1e6,
                    offset: s.offset_at(now).map_or(0.0, |o| o - self.offset_at(now)),
                    std_dev: estimate.std_dev,
                }
            })
            .collect()
    }

    /// The source polled at `address`, for `ntpdata`.
    pub fn ntp_data(&self, address: IpAddr) -> Option<NtpData> {
        let source = self
            .sources
            .iter()
            .find(|s| s.reference_clock.is_none() && s.address.ip() == address)?;
        Some(NtpData {
            remote: source.address,
            exchanges: source.exchanges,
            last_reply: source.last_reply,
            sample: source.last_sample.map(|sample| Sample {
                offset: sample.offset - self.discipline.applied_at(sample.time_ns),
                ..sample
            }),
        })
    }

    /// The kernel frequency to keep in the driftfile, ppm, and the skew.
    pub fn drift(&self) -> (f64, f64) {
        if self.discipline.controls_clock() {
            (self.discipline.drift_ppm(), self.skew * 1e6)
        } else {
            (self.frequency * 1e6, self.skew * 1e6)
        }
    }
}

/// chrony's leap status: what `tracking` prints by name, and chronyc's protocol and the
/// metrics carry as its number (the leap indicator, 3 when not synchronised).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeapStatus {
    #[serde(rename = "Normal")]
    Normal = 0,
    #[serde(rename = "Insert second")]
    InsertSecond = 1,
    #[serde(rename = "Delete second")]
    DeleteSecond = 2,
    #[default]
    #[serde(rename = "Not synchronised", other)]
    NotSynchronised = 3,
}

impl LeapStatus {
    /// The status of a served leap indicator (None: nothing served, not synchronised).
    pub fn of(leap: Option<Leap>) -> Self {
        match leap {
            Some(Leap::NoWarning) => Self::Normal,
            Some(Leap::InsertSecond) => Self::InsertSecond,
            Some(Leap::DeleteSecond) => Self::DeleteSecond,
            Some(Leap::Unsynchronised) | None => Self::NotSynchronised,
        }
    }

    /// chronyc's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::InsertSecond => "Insert second",
            Self::DeleteSecond => "Delete second",
            Self::NotSynchronised => "Not synchronised",
        }
    }
}

impl std::fmt::Display for LeapStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The majority leap announcement of the combined sources.
fn combined_leap(sources: &[Source]) -> Leap {
    let combined: Vec<Leap> = sources
        .iter()
        .filter(|s| matches!(s.state, SourceState::Selected | SourceState::Combined))
        .map(|s| s.leap)
        .collect();
    for leap in [Leap::InsertSecond, Leap::DeleteSecond] {
        if combined.iter().filter(|l| **l == leap).count() * 2 > combined.len() {
            return leap;
        }
    }
    Leap::NoWarning
}

/// A reference clock's name in reports: its reference ID as text ("GPS", "PPS0").
pub fn reference_id_name(reference_id: ReferenceId) -> String {
    reference_id
        .to_bits()
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| if b.is_ascii_graphic() { char::from(*b) } else { '?' })
        .collect()
}

/// The reference ID of an upstream server: its IPv4 address, or the first four bytes of the
/// MD5 hash of its IPv6 address (RFC 5905).
pub fn reference_id_of(address: IpAddr) -> ReferenceId {
    match address {
        IpAddr::V4(a) => ReferenceId::from_bits(a.octets()),
        IpAddr::V6(a) => {
            let digest = md5::compute(a.octets());
            ReferenceId::from_bits([digest[0], digest[1], digest[2], digest[3]])
        }
    }
}

#[cfg(test)]
mod tests;
