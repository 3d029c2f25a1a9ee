//! The synchronisation core against simulated clocks and networks: no socket, no real clock.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use ntp_common::wire::{
    ERA_1_UNIX_NS, Leap, Mode, NtpHeader, NtpShort, NtpTimestamp, ReferenceId,
    UNIX_EPOCH_NTP_SECONDS,
};

use super::{
    discipline::{
        Discipline, MakeStep,
        simulated::{Handle, SimulatedClock},
    },
    leap::LeapTable,
    source::{PollSettings, SourceState},
    *,
};

/// Unix time of the simulation's start, ns. Times in the simulation are seconds since then, so
/// that f64 keeps them to a fraction of a nanosecond.
const START_NS: i64 = 1_795_734_000_000_000_000;
/// An hour after the start: the end of a UTC day (2026-11-26), not one that may end in a leap.
const MIDNIGHT_NS: i64 = START_NS + 3_600_000_000_000;
/// 2027-01-01 00:00 UTC: the end of a day that may end in a leap second.
const NEW_YEAR_2027_NS: i64 = 1_798_761_600_000_000_000;
/// An hour before it.
const LEAP_EVE_NS: i64 = NEW_YEAR_2027_NS - 3_600_000_000_000;
const START: f64 = 0.0;

/// A deterministic random number generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A simulated upstream server.
struct Upstream {
    address: SocketAddr,
    /// Its time minus true time, s.
    error: f64,
    stratum: u8,
    leap: Leap,
    answering: bool,
}

/// A network with delays of `base + uniform(0, jitter)` each way, independently.
struct Network {
    base: f64,
    jitter: f64,
    rng: Rng,
}

impl Network {
    fn delay(&mut self) -> f64 {
        self.base + self.jitter * self.rng.uniform()
    }
}

/// The local clock: free-running (`-x`), or disciplined through a simulated kernel.
enum LocalClock {
    Free { frequency: f64, offset: f64 },
    Kernel(Handle),
}

impl LocalClock {
    fn system(&self, true_time: f64) -> f64 {
        match self {
            Self::Free { frequency, offset } => {
                true_time + offset + frequency * (true_time - START)
            }
            Self::Kernel(handle) => handle.0.lock().unwrap().system(true_time),
        }
    }

    fn advance(&self, true_time: f64) {
        if let Self::Kernel(handle) = self {
            handle.0.lock().unwrap().advance(true_time);
        }
    }
}

/// Unix ns of simulation time `seconds`, in a simulation started at `start_ns`.
fn unix_ns(start_ns: i64, seconds: f64) -> i64 {
    start_ns + (seconds * 1e9).round() as i64
}

fn reply_to(
    request: &[u8; 48],
    upstream: &Upstream,
    start_ns: i64,
    received: f64,
    sent: f64,
) -> [u8; 48] {
    let request = NtpHeader::from_bytes(request);
    let unix = |t: f64| NtpTimestamp::from_unix_nanos(unix_ns(start_ns, t + upstream.error) as u64);
    NtpHeader {
        leap: upstream.leap,
        version: 4,
        mode: Mode::Server,
        stratum: upstream.stratum,
        poll: request.poll,
        precision: -24,
        root_delay: NtpShort::ZERO,
        root_dispersion: NtpShort::from_seconds(10e-6),
        reference_id: ReferenceId::from_bits(*b"GPS\0"),
        reference_timestamp: unix(received - 1.0),
        origin_timestamp: request.transmit_timestamp,
        receive_timestamp: unix(received),
        transmit_timestamp: unix(sent),
    }
    .to_bytes()
}

/// A simulated reference clock's driver: it reads once a second.
struct Device {
    source: SourceId,
    /// Its time minus true time, s.
    error: f64,
    /// Pulses only (a PPS line), not a time of day.
    pulses: bool,
    reading: bool,
    poll: i8,
}

struct Simulation {
    /// Unix time of true time 0, ns.
    start_ns: i64,
    sync: Synchroniser,
    clock: LocalClock,
    upstreams: Vec<Upstream>,
    devices: Vec<Device>,
    network: Network,
    rng: Rng,
    in_flight: Vec<InFlight>,
    now: f64,
    updates: usize,
}

/// A reply on its way back.
struct InFlight {
    source: SourceId,
    bytes: [u8; 48],
    /// True time of its arrival, s.
    arrives: f64,
}

impl Simulation {
    fn new(
        clock: LocalClock,
        control: bool,
        makestep: Option<MakeStep>,
        settings: SyncSettings,
    ) -> Self {
        Self::starting_at(START_NS, clock, control, makestep, settings)
    }

    fn starting_at(
        start_ns: i64,
        clock: LocalClock,
        control: bool,
        makestep: Option<MakeStep>,
        settings: SyncSettings,
    ) -> Self {
        let system = unix_ns(start_ns, clock.system(START));
        let control: Option<Box<dyn discipline::ClockControl>> = match (&clock, control) {
            (LocalClock::Kernel(handle), true) => Some(Box::new(handle.clone())),
            _ => None,
        };
        let discipline = Discipline::new(control, makestep, system).unwrap();
        Self {
            start_ns,
            sync: Synchroniser::new(settings, discipline, None, system),
            clock,
            upstreams: Vec::new(),
            devices: Vec::new(),
            // Round trips of 100 to 200 us.
            network: Network { base: 50e-6, jitter: 50e-6, rng: Rng(7) },
            rng: Rng(11),
            in_flight: Vec::new(),
            now: START,
            updates: 0,
        }
    }

    /// Unix ns of simulation time `seconds`.
    fn ns(&self, seconds: f64) -> i64 {
        unix_ns(self.start_ns, seconds)
    }

    /// The system clock now, Unix ns.
    fn system_ns(&self) -> i64 {
        self.ns(self.clock.system(self.now))
    }

    fn add_upstream(&mut self, error: f64, poll: i8) {
        let address: SocketAddr =
            format!("192.0.2.{}:123", self.upstreams.len() + 1).parse().unwrap();
        self.upstreams.push(Upstream {
            address,
            error,
            stratum: 1,
            leap: Leap::NoWarning,
            answering: true,
        });
        let settings =
            PollSettings { minpoll: poll, maxpoll: poll, iburst: true, ..PollSettings::default() };
        let system = self.system_ns();
        self.sync.add_source(address.to_string(), address, settings, system);
    }

    /// A reference clock reading true time plus `error` (pulses: only its fraction of a
    /// second), polled every 2^`poll` s.
    fn add_device(&mut self, error: f64, pulses: bool, clock: ClockSettings) -> SourceId {
        let poll = clock.poll;
        let system = self.system_ns();
        let source = self.sync.add_reference_clock(clock, PollSettings::default(), system);
        // Keeps the upstreams indexed by source.
        self.upstreams.push(Upstream {
            address: "0.0.0.0:0".parse().unwrap(),
            error: 0.0,
            stratum: 0,
            leap: Leap::NoWarning,
            answering: false,
        });
        self.devices.push(Device { source, error, pulses, reading: true, poll });
        source
    }

    /// The devices read at each whole second and are polled at their poll.
    fn read_devices(&mut self) {
        if self.now.fract() != 0.0 {
            return;
        }
        let system = self.system_ns();
        let system_s = self.clock.system(self.now);
        for device in &self.devices {
            if device.reading {
                let offset = self.now + device.error - system_s;
                let reading = if device.pulses {
                    // The system clock's time past the device's second.
                    let second = (system_s - (self.now + device.error)).rem_euclid(1.0);
                    Reading::Pulse { system_ns: system, second }
                } else {
                    Reading::Time { system_ns: system, offset, leap: Leap::NoWarning }
                };
                let _ = self.sync.reference_clock_reading(device.source, reading, system);
            }
            if (self.now as i64) % (1 << device.poll) == 0
                && self.sync.poll_reference_clock(device.source, system).is_some()
            {
                self.updates += 1;
            }
        }
    }

    /// Runs for `seconds` of true time in 1/8 s steps, exchanging what is due. Replies are
    /// delivered in order of arrival, so that the clock is only ever advanced.
    fn run(&mut self, seconds: f64) {
        let end = self.now + seconds;
        while self.now < end {
            let next = self.now + 0.125;
            self.in_flight.sort_by(|a, b| a.arrives.total_cmp(&b.arrives));
            while self.in_flight.first().is_some_and(|reply| reply.arrives <= next) {
                let reply = self.in_flight.remove(0);
                self.clock.advance(reply.arrives);
                let received = self.ns(self.clock.system(reply.arrives));
                let from = self.upstreams[reply.source].address;
                if self.sync.receive(reply.source, &reply.bytes, from, received).is_some() {
                    self.updates += 1;
                }
            }
            self.now = next;
            self.clock.advance(self.now);
            self.read_devices();
            let system = self.system_ns();
            let rng = &mut self.rng;
            for (source, request) in self.sync.poll(system, || rng.next()) {
                let upstream = &self.upstreams[source];
                if !upstream.answering {
                    continue;
                }
                let at_server = self.now + self.network.delay();
                let leaves = at_server + 10e-6;
                let bytes = reply_to(&request.bytes, upstream, self.start_ns, at_server, leaves);
                self.in_flight.push(InFlight {
                    source,
                    bytes,
                    arrives: leaves + self.network.delay(),
                });
            }
            self.sync.served(system);
        }
    }

    /// Served time minus true time now, s.
    fn served_error(&mut self) -> f64 {
        let system = self.clock.system(self.now);
        let served = self.sync.served(self.ns(system));
        system - self.now + served.correction
    }

    /// How much faster served time runs than true time, s/s.
    fn served_frequency_error(&mut self) -> f64 {
        let rate = match &self.clock {
            LocalClock::Free { frequency, .. } => 1.0 + frequency,
            LocalClock::Kernel(handle) => 1.0 + handle.0.lock().unwrap().rate_error(),
        };
        let served = self.sync.served(self.system_ns());
        rate * (1.0 + served.frequency) - 1.0
    }
}

/// Runs until `updates` updates have been made.
fn run_until_updates(simulation: &mut Simulation, updates: usize) {
    while simulation.updates < updates {
        simulation.run(1.0);
    }
}

#[test]
fn a_clock_50_ppm_off_converges_below_a_microsecond_and_005_ppm() {
    // `-x`: the system clock runs 50 ppm fast from 3 ms ahead; the round trip jitters by
    // 100 us (each way 50 us plus up to 50 us more, independently), so a single exchange's
    // offset is off by 10 us (standard deviation). Polling every 16 s, the frequency is within
    // 0.05 ppm after 150 updates (40 minutes) and the served time within 1 us after 800
    // (3.6 hours): it takes that many samples to average the network's asymmetry away.
    let clock = LocalClock::Free { frequency: 50e-6, offset: 3e-3 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 4);
    for (updates, max_error) in [(150, 10e-6), (800, 1e-6)] {
        run_until_updates(&mut simulation, updates);
        let frequency = simulation.served_frequency_error();
        let error = simulation.served_error();
        eprintln!(
            "after {updates} updates: served time error {:+.3} us, frequency error {:+.4} ppm",
            error * 1e6,
            frequency * 1e6
        );
        assert!(frequency.abs() < 0.05e-6, "frequency error {frequency} after {updates}");
        assert!(error.abs() < max_error, "served time error {error} after {updates}");
    }
    let served = simulation.sync.served(simulation.system_ns());
    let header = served.header.expect("synchronised");
    assert_eq!((header.stratum, header.reference_id), (2, ReferenceId::from_bits([192, 0, 2, 1])));
}

#[test]
fn synchronisation_carries_on_across_the_2036_era_rollover() {
    // Two minutes before 2036-02-07 06:28:16 UTC, when NTP timestamps' seconds start again
    // from 0, to ten minutes after: a clock 20 ppm fast from 3 ms ahead keeps converging, and
    // the reports stay in 2036.
    let start_ns = ERA_1_UNIX_NS as i64 - 120_000_000_000;
    let clock = LocalClock::Free { frequency: 20e-6, offset: 3e-3 };
    let mut simulation =
        Simulation::starting_at(start_ns, clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 2);
    simulation.run(100.0);
    let before = simulation.served_error();
    assert!(before.abs() < 50e-6, "served time error {before} before the rollover");
    simulation.run(600.0);
    let after = simulation.served_error();
    assert!(after.abs() < 20e-6, "served time error {after} after the rollover");
    let tracking = simulation.sync.tracking(simulation.system_ns());
    let era_1 = ERA_1_UNIX_NS as f64 * 1e-9;
    assert!(tracking.reference_time > era_1, "reference time {}", tracking.reference_time);
    assert!(tracking.last_offset.abs() < 100e-6, "last offset {}", tracking.last_offset);
    assert_eq!((tracking.stratum, tracking.leap), (2, LeapStatus::Normal));
}

#[test]
fn a_falseticker_among_three_sources_is_marked_and_ignored() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 2);
    simulation.add_upstream(50e-3, 2);
    simulation.add_upstream(0.0, 2);
    simulation.run(120.0);
    let states: Vec<SourceState> =
        simulation.sync.sources(simulation.ns(0.0)).iter().map(|s| s.state).collect();
    assert_eq!(states[1], SourceState::Falseticker, "{states:?}");
    assert!(states.contains(&SourceState::Selected));
    assert!(simulation.served_error().abs() < 50e-6, "the falseticker pulled the time");
}

#[test]
fn losing_every_source_holds_over_then_becomes_unsynchronised() {
    // A clock error of 1000 ppm and a maximum distance of 10 ms make the holdover about 10 s.
    let settings =
        SyncSettings { max_distance: 10e-3, clock_error: 1e-3, ..SyncSettings::default() };
    let clock = LocalClock::Free { frequency: 20e-6, offset: 1e-3 };
    let mut simulation = Simulation::new(clock, false, None, settings);
    simulation.add_upstream(0.0, 0);
    simulation.run(60.0);
    let system = Simulation::system_ns;
    assert!(simulation.sync.served(system(&simulation)).header.is_some(), "synchronised");
    simulation.upstreams[0].answering = false;
    simulation.run(3.0);
    let holding = simulation.sync.served(system(&simulation));
    assert!(holding.header.is_some(), "holdover keeps serving as synchronised");
    assert!(simulation.served_error().abs() < 20e-6, "holdover keeps the estimate");
    simulation.run(20.0);
    let served = simulation.sync.served(system(&simulation));
    assert_eq!(served.header, None, "unsynchronised after holdover");
    assert!(simulation.served_error().abs() < 100e-6, "the time is still corrected");
    assert_eq!(simulation.sync.tracking(system(&simulation)).leap, LeapStatus::NotSynchronised);
}

#[test]
fn makestep_steps_only_within_its_limit() {
    let kernel = Handle(Arc::new(Mutex::new(SimulatedClock {
        error: 0.5,
        since: START,
        ..SimulatedClock::default()
    })));
    let makestep = MakeStep { threshold: 0.1, limit: 3 };
    let mut simulation = Simulation::new(
        LocalClock::Kernel(kernel.clone()),
        true,
        Some(makestep),
        SyncSettings::default(),
    );
    simulation.add_upstream(0.0, 0);
    simulation.run(4.0);
    assert_eq!(kernel.0.lock().unwrap().steps.len(), 1, "one step at the first update");
    assert!(kernel.0.lock().unwrap().error.abs() < 1e-3, "the step corrected the clock");
    simulation.run(30.0);
    // Past the limit, a new 0.5 s error is slewed, not stepped.
    kernel.0.lock().unwrap().error += 0.5;
    simulation.run(4.0);
    assert_eq!(kernel.0.lock().unwrap().steps.len(), 1, "no step past the limit");
    let rate = kernel.0.lock().unwrap().frequency_ppm;
    assert!(rate < -400.0, "slewing back at {rate} ppm");
}

#[test]
fn the_kernel_discipline_cancels_a_50_ppm_error() {
    let kernel = Handle(Arc::new(Mutex::new(SimulatedClock {
        intrinsic: 50e-6,
        error: 2e-3,
        since: START,
        ..SimulatedClock::default()
    })));
    let mut simulation =
        Simulation::new(LocalClock::Kernel(kernel.clone()), true, None, SyncSettings::default());
    simulation.add_upstream(0.0, 3);
    simulation.run(30.0 * 60.0);
    let clock = kernel.0.lock().unwrap();
    let system_error = clock.system(simulation.now) - simulation.now;
    eprintln!(
        "kernel: system clock error {:+.3} us, frequency {:.3} ppm",
        system_error * 1e6,
        clock.frequency_ppm
    );
    assert!((clock.frequency_ppm + 50.0).abs() < 0.1, "frequency {}", clock.frequency_ppm);
    assert!(system_error.abs() < 20e-6, "system clock error {system_error}");
    drop(clock);
    assert!(simulation.served_error().abs() < 2e-6, "served error {}", simulation.served_error());
    let status = kernel.0.lock().unwrap().status.expect("status kept fresh");
    assert!(status.synchronised && status.max_error < 0.1);
}

/// A leap table whose next leap inserts a second at `MIDNIGHT_NS` (TAI - UTC 37, then 38).
fn inserting_at_midnight() -> LeapTable {
    let ntp_seconds = |unix_ns: i64| unix_ns / 1_000_000_000 + UNIX_EPOCH_NTP_SECONDS as i64;
    let table = format!(
        "{} 37\n{} 38\n",
        ntp_seconds(MIDNIGHT_NS) - 86_400 * 100,
        ntp_seconds(MIDNIGHT_NS)
    );
    LeapTable::parse(&table).unwrap()
}

#[test]
fn under_x_a_leap_second_moves_the_served_time_back_at_midnight() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.sync.leap_table = Some(inserting_at_midnight());
    simulation.add_upstream(0.0, 4);
    simulation.run(3600.0 - 30.0);
    let system = Simulation::system_ns;
    let before = simulation.sync.served(system(&simulation));
    assert_eq!(before.header.map(|h| h.leap), Some(Leap::InsertSecond));
    assert_eq!(before.leap_at_ns, Some(MIDNIGHT_NS));
    // Past midnight (the upstream, which would leap too, is left out).
    simulation.upstreams[0].answering = false;
    simulation.run(60.0);
    let after = simulation.sync.served(system(&simulation));
    assert!((after.correction - (before.correction - 1.0)).abs() < 1e-3, "{before:?} -> {after:?}");
    assert_eq!(after.header.map(|h| h.leap), Some(Leap::NoWarning));
}

#[test]
fn around_a_leap_the_kernel_keeps_its_own_tai_offset_and_the_leap_made_is_known_after_it() {
    let kernel =
        Handle(Arc::new(Mutex::new(SimulatedClock { since: START, ..SimulatedClock::default() })));
    let mut simulation =
        Simulation::new(LocalClock::Kernel(kernel.clone()), true, None, SyncSettings::default());
    simulation.sync.leap_table = Some(inserting_at_midnight());
    simulation.add_upstream(0.0, 4);
    let tai_offset = |simulation: &mut Simulation| {
        simulation.sync.served(Simulation::system_ns(simulation));
        kernel.0.lock().unwrap().status.expect("a status").tai_offset
    };
    simulation.run(3600.0 - 30.0);
    assert_eq!(tai_offset(&mut simulation), Some(37));
    assert_eq!(simulation.sync.served(Simulation::system_ns(&simulation)).leap_made, None);
    // In the last seconds (and the inserted one, which reads as the last again): the kernel's.
    simulation.run(25.0);
    assert_eq!(tai_offset(&mut simulation), None);
    simulation.run(65.0);
    assert_eq!(tai_offset(&mut simulation), Some(38));
    let (ago, leap) = simulation.sync.served(Simulation::system_ns(&simulation)).leap_made.unwrap();
    assert_eq!(leap, Leap::InsertSecond);
    assert!((ago - 61.0).abs() < 1.0, "{ago}");
}

#[test]
fn reference_ids_are_ipv4_addresses_or_the_md5_of_ipv6_ones() {
    assert_eq!(
        reference_id_of("192.0.2.1".parse().unwrap()),
        ReferenceId::from_bits([192, 0, 2, 1])
    );
    // chronyd 4.3 synchronised to ::1 reports reference ID CF404DC8 (the reference page).
    assert_eq!(
        reference_id_of("::1".parse().unwrap()),
        ReferenceId::from_bits([0xCF, 0x40, 0x4D, 0xC8])
    );
}

/// Leap tests without a leap table: the upstream's LI bits decide. Under -x, synchronised
/// from an hour before the midnight `eve_ns + 1 h` until 30 s before it, to one upstream
/// announcing `leap`.
fn announced_leap(eve_ns: i64, clock_offset: f64, leap: Leap) -> Simulation {
    let clock = LocalClock::Free { frequency: 0.0, offset: clock_offset };
    let mut simulation =
        Simulation::starting_at(eve_ns, clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 4);
    simulation.upstreams[0].leap = leap;
    simulation.run(3600.0 - 30.0);
    simulation
}

#[test]
fn a_leap_announced_on_a_day_that_is_not_the_end_of_june_or_december_is_ignored() {
    let mut simulation = announced_leap(START_NS, 0.0, Leap::InsertSecond);
    let before = simulation.sync.served(simulation.system_ns());
    assert_eq!(before.header.map(|h| h.leap), Some(Leap::NoWarning));
    assert_eq!(before.leap_at_ns, None);
    simulation.run(60.0);
    let after = simulation.sync.served(simulation.system_ns());
    assert!((after.correction - before.correction).abs() < 1e-3, "{before:?} -> {after:?}");
}

#[test]
fn an_announcement_withdrawn_before_midnight_means_no_leap() {
    let mut simulation = announced_leap(LEAP_EVE_NS, 0.0, Leap::InsertSecond);
    let announced = simulation.sync.served(simulation.system_ns());
    assert_eq!(announced.header.map(|h| h.leap), Some(Leap::InsertSecond));
    assert_eq!(announced.leap_at_ns, Some(NEW_YEAR_2027_NS));
    simulation.upstreams[0].leap = Leap::NoWarning;
    simulation.run(20.0);
    let withdrawn = simulation.sync.served(simulation.system_ns());
    assert_eq!(withdrawn.header.map(|h| h.leap), Some(Leap::NoWarning));
    assert_eq!(withdrawn.leap_at_ns, None);
    simulation.run(60.0);
    let after = simulation.sync.served(simulation.system_ns());
    assert!((after.correction - announced.correction).abs() < 1e-3, "{announced:?} -> {after:?}");
}

#[test]
fn the_day_of_a_leap_is_judged_by_the_corrected_time_not_the_raw_clock() {
    // The system clock is 20 days and 5 hours behind (a wrong RTC, not stepped under -x): by
    // it, the leap would be on an ordinary day and at the wrong midnight.
    let behind = -(20.0 * 86_400.0 + 5.0 * 3600.0);
    let mut simulation = announced_leap(LEAP_EVE_NS, behind, Leap::InsertSecond);
    let before = simulation.sync.served(simulation.system_ns());
    assert_eq!(before.header.map(|h| h.leap), Some(Leap::InsertSecond));
    let expected_at = NEW_YEAR_2027_NS + (behind * 1e9) as i64;
    let at = before.leap_at_ns.expect("a leap is due");
    assert!((at - expected_at).abs() < 1_000_000, "leap at {at}, expected {expected_at}");
    simulation.run(30.0);
    // The upstream leapt with it.
    simulation.upstreams[0].error = -1.0;
    simulation.upstreams[0].leap = Leap::NoWarning;
    simulation.run(120.0);
    let after = simulation.sync.served(simulation.system_ns());
    assert!((after.correction - (before.correction - 1.0)).abs() < 1e-3, "{before:?} -> {after:?}");
    assert!(simulation.served_frequency_error().abs() < 1e-6);
}

#[test]
fn a_server_that_leaps_unannounced_moves_the_served_time_not_its_frequency() {
    let mut simulation = announced_leap(LEAP_EVE_NS, 0.0, Leap::NoWarning);
    assert!(simulation.served_error().abs() < 1e-4);
    simulation.run(30.0);
    // The upstream inserts a second at midnight: from now on it is a second behind true time.
    simulation.upstreams[0].error = -1.0;
    for _ in 0..60 {
        simulation.run(5.0);
        let frequency = simulation.served_frequency_error();
        assert!(frequency.abs() < 1e-6, "frequency error {} ppm", frequency * 1e6);
    }
    let error = simulation.served_error();
    assert!((error + 1.0).abs() < 1e-4, "served error {error} s");
}

#[test]
fn behind_a_stratum_15_upstream_ntpxd_is_unsynchronised() {
    for (upstream, served) in [(14, Some(15)), (15, None)] {
        let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
        let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
        simulation.add_upstream(0.0, 4);
        simulation.upstreams[0].stratum = upstream;
        simulation.run(120.0);
        let header = simulation.sync.served(simulation.system_ns()).header;
        assert_eq!(header.map(|h| h.stratum), served, "upstream at stratum {upstream}");
    }
}

#[test]
fn the_residual_frequency_is_the_reference_sources_estimate_against_the_one_in_use() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 3);
    simulation.run(600.0);
    let alone = simulation.sync.tracking(simulation.system_ns()).residual_frequency_ppm;
    assert!(alone.abs() < 1e-3, "one source: residual {alone} ppm");
    // A second source that gains 0.3 ppm on the first: combined, the frequency in use lies
    // between the two estimates.
    simulation.add_upstream(0.0, 3);
    for _ in 0..150 {
        simulation.run(4.0);
        simulation.upstreams[1].error += 0.3e-6 * 4.0;
    }
    let tracking = simulation.sync.tracking(simulation.system_ns());
    let combined = simulation.sync.sources(simulation.system_ns());
    let used = |s: &&SourceReport| matches!(s.state, SourceState::Selected | SourceState::Combined);
    assert_eq!(combined.iter().filter(used).count(), 2, "both sources combined: {combined:?}");
    let residual = tracking.residual_frequency_ppm;
    assert!((0.02..0.3).contains(&residual.abs()), "two sources: residual {residual} ppm");
}

fn gps() -> ClockSettings {
    ClockSettings { poll: 2, ..ClockSettings::new(ReferenceId::from_bits(*b"GPS\0")) }
}

#[test]
fn a_reference_clock_makes_the_server_stratum_1_with_its_reference_id() {
    // `-x`, the system clock 50 ppm fast from 10 ms ahead; a GPS read each second, polled
    // every 4 s.
    let clock = LocalClock::Free { frequency: 50e-6, offset: 10e-3 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_device(0.0, false, gps());
    simulation.run(120.0);
    let error = simulation.served_error();
    assert!(error.abs() < 5e-6, "served time error {error}");
    let header = simulation.sync.served(simulation.system_ns()).header.expect("synchronised");
    assert_eq!((header.stratum, header.reference_id), (1, ReferenceId::from_bits(*b"GPS\0")));
    let tracking = simulation.sync.tracking(simulation.system_ns());
    assert_eq!((tracking.reference_id, tracking.reference_name.as_str()), (0x4750_5300, "GPS"));
    let sources = simulation.sync.sources(simulation.system_ns());
    assert!(sources[0].reference_clock);
    assert_eq!(
        (sources[0].state, sources[0].reach, sources[0].poll),
        (SourceState::Selected, 0o377, 2)
    );
    assert_eq!(sources[0].address, IpAddr::from(*b"GPS\0"));
}

#[test]
fn the_offset_option_moves_the_served_time_by_it() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_device(0.0, false, ClockSettings { offset: 0.2, ..gps() });
    simulation.run(60.0);
    let error = simulation.served_error();
    assert!((error - 0.2).abs() < 5e-6, "served time error {error}");
}

#[test]
fn a_clock_100_ms_off_is_outvoted_by_a_server_and_another_clock() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 2);
    let good = simulation.add_device(0.0, false, gps());
    let bad = simulation.add_device(
        0.1,
        false,
        ClockSettings { reference_id: ReferenceId::from_bits(*b"BAD\0"), ..gps() },
    );
    simulation.run(120.0);
    let sources = simulation.sync.sources(simulation.system_ns());
    assert_eq!(sources[bad].state, SourceState::Falseticker);
    assert_eq!(sources[good].state, SourceState::Selected, "stratum 0 leads the stratum 1 server");
    assert!(simulation.served_error().abs() < 50e-6);
}

#[test]
fn a_stopped_clock_is_held_over_then_the_server_is_unsynchronised_then_it_recovers() {
    // maxdistance 10 ms and an error growing 100 us/s: about 100 s of holdover.
    let settings =
        SyncSettings { max_distance: 0.01, clock_error: 100e-6, ..SyncSettings::default() };
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, settings);
    simulation.add_device(0.0, false, gps());
    simulation.run(60.0);
    assert!(simulation.sync.served(simulation.system_ns()).header.is_some());
    simulation.devices[0].reading = false;
    simulation.run(40.0);
    // Eight polls without readings: unreachable, yet the time is served in holdover.
    let sources = simulation.sync.sources(simulation.system_ns());
    assert_eq!((sources[0].reach, sources[0].state), (0, SourceState::Unusable));
    assert!(simulation.sync.served(simulation.system_ns()).header.is_some(), "holdover");
    simulation.run(80.0);
    assert_eq!(simulation.sync.served(simulation.system_ns()).header, None);
    simulation.devices[0].reading = true;
    simulation.run(12.0);
    assert!(simulation.sync.served(simulation.system_ns()).header.is_some(), "resynchronised");
}

#[test]
fn pulses_locked_to_a_coarse_clock_give_the_time_to_microseconds() {
    // NMEA sentences arrive 123 ms late (as the lock, noselect); the PPS line is exact.
    let clock = LocalClock::Free { frequency: 20e-6, offset: 0.3 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    let nmea = ReferenceId::from_bits(*b"NMEA");
    let nmea_settings = ClockSettings { reference_id: nmea, ..gps() };
    simulation.add_device(-0.123, false, nmea_settings);
    let pps = ClockSettings {
        reference_id: ReferenceId::from_bits(*b"PPS\0"),
        lock: Some(nmea),
        ..gps()
    };
    let pps = simulation.add_device(0.0, true, pps);
    simulation.sync.sources[0].settings.noselect = true;
    simulation.run(120.0);
    let error = simulation.served_error();
    assert!(error.abs() < 5e-6, "served time error {error}");
    let header = simulation.sync.served(simulation.system_ns()).header.unwrap();
    assert_eq!(header.reference_id, ReferenceId::from_bits(*b"PPS\0"));
    assert_eq!(simulation.sync.sources(simulation.system_ns())[pps].state, SourceState::Selected);
}

#[test]
fn pulses_without_a_lock_wait_for_the_server_to_tell_the_second() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.3 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    simulation.add_upstream(0.0, 2);
    let pps = ClockSettings { reference_id: ReferenceId::from_bits(*b"PPS\0"), ..gps() };
    let pps = simulation.add_device(0.0, true, pps);
    // While the server does not answer, the pulses reach but are of no use.
    simulation.upstreams[0].answering = false;
    simulation.run(8.0);
    assert_eq!(simulation.sync.sources(simulation.system_ns())[pps].reach & 1, 1);
    assert_eq!(simulation.sync.source(pps).estimate, None);
    simulation.upstreams[0].answering = true;
    simulation.run(120.0);
    let sources = simulation.sync.sources(simulation.system_ns());
    assert_eq!(sources[pps].state, SourceState::Selected);
    assert!(simulation.served_error().abs() < 20e-6, "{}", simulation.served_error());
}

#[test]
fn a_tai_clock_is_read_as_utc_through_the_leap_second_table() {
    let clock = LocalClock::Free { frequency: 0.0, offset: 0.0 };
    let mut simulation = Simulation::new(clock, false, None, SyncSettings::default());
    // TAI - UTC = 37 s since 2017.
    simulation.sync.leap_table =
        Some(LeapTable::parse("3692217600 37 # 1 Jan 2017\n#@ 4000000000\n").unwrap());
    let phc = ClockSettings { tai: true, ..gps() };
    simulation.add_device(37.0, false, phc);
    simulation.run(60.0);
    let error = simulation.served_error();
    assert!(error.abs() < 5e-6, "served time error {error}");
    // Without the table, no sample is taken.
    let mut simulation = Simulation::new(
        LocalClock::Free { frequency: 0.0, offset: 0.0 },
        false,
        None,
        SyncSettings::default(),
    );
    let phc = simulation.add_device(37.0, false, ClockSettings { tai: true, ..gps() });
    simulation.run(20.0);
    assert_eq!(simulation.sync.served(simulation.system_ns()).header, None);
    assert_eq!(simulation.sync.source(phc).estimate, None);
}
