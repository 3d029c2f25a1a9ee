//! Leap smearing per service address, end to end: ntpxd (`-x`) synchronised to a test upstream
//! shifted to the days around a leap second, which it announces and makes; ntpxd's leap table
//! says the same. XDP serves true UTC (the leap announced and made) on the server's first
//! address and smeared time on its second (`leapsmear`), to this test's client and to chronyd
//! 4.3 clients. The smear each exchange sees is checked against the formula: a linear smear
//! from noon to noon, centred on the leap.
//!
//! Three moments of each leap run at once, each in its own namespaces with its own ntpxd: the
//! smear's start at noon on the leap day, the leap at midnight, and the smear's end at noon
//! the day after (ntpxd started after the leap, resuming the smear from its table). A fourth
//! serves chrony's leap smear (`smoothtime ... leaponly`) on every address across midnight.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ntp_common::wire::Leap;
use ntp_userspace::sys::clock;
use ntpx_tests::{
    client::{self, Exchange},
    netns::{self, Link, UPSTREAM_V4, Upstreams},
    peers::{self, Chronyd, Ntpxd},
    require_root,
    upstream::{OffsetServer, UpstreamLeap},
};

/// 2027-01-01 00:00:00 UTC: the leap second of these tests ends 2026-12-31.
const MIDNIGHT: i64 = 1_798_761_600;
const WINDOW: f64 = 86_400.0;
/// The smear's error a client may see beyond what its exchanges' delays allow (an exchange's
/// offset is within half its delay of the server's).
const TOLERANCE: f64 = 50e-6;

/// The leap seconds list ntpxd reads: TAI - UTC 37 since 2017, then 38 (or 36) from 2027.
fn leap_list(inserted: bool) -> String {
    let after = if inserted { 38 } else { 36 };
    format!(
        "3692217600\t37\t# 1 Jan 2017\n4007750400\t{after}\t# 1 Jan 2027 (a test's)\n#@\t4102444800\n"
    )
}

/// Where the leap is made on the continuous timescale (no leap): an inserted second at
/// midnight, a deleted one at 23:59:59.
fn leap_at(inserted: bool) -> f64 {
    (MIDNIGHT - if inserted { 0 } else { 1 }) as f64
}

/// Smeared minus true time at continuous time `u` (s): the share of the leap smeared by then,
/// behind true time before the leap, ahead of it after.
fn expected_smear(u: f64, inserted: bool) -> f64 {
    let leap = leap_at(inserted);
    let seconds = if inserted { 1.0 } else { -1.0 };
    let share = ((u - (leap - WINDOW / 2.0)) / WINDOW).clamp(0.0, 1.0);
    if u < leap { -seconds * share } else { seconds * (1.0 - share) }
}

/// One exchange on each address, and where the upstream's continuous time stood.
struct Pair {
    /// The upstream's continuous time (s) when the first request left.
    u: f64,
    true_time: Exchange,
    smeared: Exchange,
    /// The same pair through the slow path (a request with an extension field).
    slow: Option<(Exchange, Exchange)>,
}

impl Pair {
    /// Smeared minus true time, s: the two offsets' difference (the path is the same).
    fn smear(&self) -> f64 {
        self.smeared.offset - self.true_time.offset
    }

    /// How far the measured smear may be from the server's: half of each exchange's delay.
    fn uncertainty(&self) -> f64 {
        TOLERANCE + (self.true_time.delay + self.smeared.delay) / 2.0
    }
}

/// An upstream shifted to a leap's days, and ntpxd serving true and smeared time.
struct World {
    link: Link,
    smeared_address: &'static str,
    ntpxd: Ntpxd,
    /// Upstream's continuous time minus this machine's clock, ns.
    shift_ns: i64,
    inserted: bool,
    _upstream: OffsetServer,
    _upstreams: Upstreams,
    _dir: tempfile::TempDir,
}

impl World {
    /// The upstream's continuous time set to `u_now` (Unix s) now; ntpxd synchronised to it,
    /// smearing on its second address.
    fn start(u_now: f64, inserted: bool) -> Self {
        Self::start_with(u_now, inserted, |smeared, smeared_v6| {
            format!("leapsmear {smeared} {smeared_v6}")
        })
    }

    /// As [`World::start`], with `departure` (given the second addresses) for `leapsmear`.
    fn start_with(
        u_now: f64,
        inserted: bool,
        departure: impl FnOnce(&str, &str) -> String,
    ) -> Self {
        let link = Link::new();
        let (smeared_address, smeared_v6) = link.second_server_address();
        let upstreams = Upstreams::new(&link.server_ns);
        let upstream_address = SocketAddr::new(UPSTREAM_V4[0].parse().unwrap(), 123);
        let shift_ns = (u_now * 1e9) as i64 - clock::realtime_ns() as i64;
        let leap = UpstreamLeap { midnight: MIDNIGHT, inserted };
        let upstream =
            OffsetServer::start_with_leap(&upstreams.ns, upstream_address, shift_ns, leap);
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("leap-seconds.list");
        std::fs::write(&list, leap_list(inserted)).unwrap();
        let ntpxd = Ntpxd::start(
            &link.server_ns,
            &format!(
                "server {} iburst minpoll -1 maxpoll -1\nleapseclist {}\n{}\n\
                 allow 10.77.0.0/24\nxdp veth-srv native\n",
                UPSTREAM_V4[0],
                list.display(),
                departure(smeared_address, smeared_v6),
            ),
        );
        let synchronised = peers::wait_for(Duration::from_secs(30), || {
            ntpxd.ntpxc(&["tracking"]).is_ok_and(|t| {
                peers::report_value(&t, "Leap status") != Some("Not synchronised")
                    && peers::report_seconds(&t, "System time").is_some_and(|s| s > 1e6)
            })
        });
        assert!(
            synchronised,
            "ntpxd did not synchronise:\n{}",
            ntpxd.ntpxc(&["tracking"]).unwrap()
        );
        let world = Self {
            link,
            smeared_address,
            ntpxd,
            shift_ns,
            inserted,
            _upstream: upstream,
            _upstreams: upstreams,
            _dir: dir,
        };
        // ntpxd's first estimate carries the upstream's whole shift: wait until its time
        // agrees with the upstream's within a millisecond.
        let settled = peers::wait_for(Duration::from_secs(30), || {
            world.pair(false).is_some_and(|p| world.true_error(&p).abs() < 1e-3)
        });
        assert!(settled, "ntpxd's time did not settle on the upstream's");
        world
    }

    /// The upstream's continuous time now, s.
    fn u_now(&self) -> f64 {
        (clock::realtime_ns() as i64 + self.shift_ns) as f64 * 1e-9
    }

    fn address(&self, address: &str) -> SocketAddr {
        SocketAddr::new(address.parse().unwrap(), 123)
    }

    /// An exchange with each address (through XDP), and with `slow_path` one through the
    /// slow path too.
    fn pair(&self, slow_path: bool) -> Option<Pair> {
        let source = SocketAddr::new(self.link.client.v4, 0);
        let (plain, smeared) = (self.address(netns::SERVER_V4), self.address(self.smeared_address));
        // chrony's experimental field: a request XDP passes and the slow path answers plainly.
        let mut field = vec![0xf3, 0x23, 0, 28];
        field.extend_from_slice(&[0; 24]);
        self.link.client_ns.enter(|| {
            let timeout = Duration::from_secs(1);
            let u = (clock::realtime_ns() as i64 + self.shift_ns) as f64 * 1e-9;
            let true_time = client::exchange(source, plain, timeout)?;
            let smeared_time = client::exchange(source, smeared, timeout)?;
            let slow = match slow_path {
                true => Some((
                    client::exchange_with(source, plain, &field, timeout)?,
                    client::exchange_with(source, smeared, &field, timeout)?,
                )),
                false => None,
            };
            Some(Pair { u, true_time, smeared: smeared_time, slow })
        })
    }

    /// ntpxd's true time minus the upstream's (which makes the same leap), s.
    fn true_error(&self, pair: &Pair) -> f64 {
        let leap = if self.inserted { -1.0 } else { 1.0 };
        let made = if pair.u >= leap_at(self.inserted) { leap } else { 0.0 };
        pair.true_time.offset - self.shift_ns as f64 * 1e-9 - made
    }

    /// Pairs of exchanges until the continuous time passes `until`.
    fn observe_until(&self, until: f64, slow_path: bool) -> Vec<Pair> {
        let mut pairs = Vec::new();
        while self.u_now() < until {
            if let Some(pair) = self.pair(slow_path) {
                pairs.push(pair);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        pairs
    }

    fn waits_until(&self, u: f64) {
        let seconds = u - self.u_now();
        if seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
    }

    /// Checks every pair against the formula and the leap indicators; the figures are printed
    /// (the closing note's curve).
    fn check(&self, label: &str, pairs: &[Pair]) {
        assert!(pairs.len() > 20, "{label}: only {} exchanges", pairs.len());
        let announced = if self.inserted { Leap::InsertSecond } else { Leap::DeleteSecond };
        let leap = leap_at(self.inserted);
        for pair in pairs {
            let (smear, expected) = (pair.smear(), expected_smear(pair.u, self.inserted));
            eprintln!(
                "{label}: {:+10.3} s from midnight: smear {smear:+.6} s, formula {expected:+.6} s, \
                 LI {:?}/{:?}",
                pair.u - MIDNIGHT as f64,
                pair.true_time.reply.leap,
                pair.smeared.reply.leap,
            );
            assert_eq!(pair.smeared.reply.leap, Leap::NoWarning, "{label}: the smeared LI");
            // Within a second of the leap, which side of it each exchange was is not certain.
            if (pair.u - leap).abs() < 1.0 {
                continue;
            }
            assert!(
                (smear - expected).abs() < pair.uncertainty(),
                "{label}: at {:+.3} s the smear is {smear:+.6} s, the formula {expected:+.6} s",
                pair.u - MIDNIGHT as f64
            );
            let announced_now = if pair.u < leap { announced } else { Leap::NoWarning };
            assert_eq!(pair.true_time.reply.leap, announced_now, "{label}: true time's LI");
            if let Some((true_slow, smeared_slow)) = &pair.slow {
                let slow = smeared_slow.offset - true_slow.offset;
                let uncertainty = TOLERANCE + (true_slow.delay + smeared_slow.delay) / 2.0;
                assert!(
                    (slow - expected).abs() < uncertainty,
                    "{label}: the slow path's smear {slow:+.6} s, the formula {expected:+.6} s"
                );
                assert_eq!(smeared_slow.reply.leap, Leap::NoWarning, "{label}: slow path's LI");
                assert_eq!(true_slow.reply.leap, announced_now, "{label}: slow path's true LI");
            }
        }
        let stats = self.ntpxd.serverstats();
        assert!(
            stats.kernel.answered as usize >= 2 * pairs.len(),
            "{label}: XDP answered {stats:?}"
        );
    }
}

/// The smear's start: from noon of the leap day, smeared time falls behind at 1/86400.
fn at_noon_before(inserted: bool) {
    let noon = (MIDNIGHT - 43_200) as f64 - if inserted { 0.0 } else { 1.0 };
    let world = World::start(noon - 40.0, inserted);
    world.waits_until(noon - 5.0);
    let pairs = world.observe_until(noon + 62.0, false);
    world.check("noon before", &pairs);
    let last = pairs.last().unwrap();
    eprintln!(
        "noon before: {:.1} s into the smear: {:+.1} us (formula {:+.1} us)",
        last.u - noon,
        last.smear() * 1e6,
        expected_smear(last.u, inserted) * 1e6
    );
    let tracking = world.ntpxd.ntpxc(&["tracking"]).unwrap();
    let reported = tracking
        .lines()
        .find(|line| line.starts_with("Leap smear") && line.ends_with(world.smeared_address))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no smear in tracking:\n{tracking}"));
    let expected = expected_smear(world.u_now(), inserted);
    assert!((reported - expected).abs() < TOLERANCE, "tracking's smear {reported}, not {expected}");
    // No `smoothtime` here: Debian's chronyc hears chronyd's answer for that.
    let (smoothing, _) = world.ntpxd.chronyc(&["smoothing"]);
    assert!(smoothing.contains("505 Facility not enabled in daemon"), "{smoothing}");
}

/// What a chronyd client's `ntpdata` said of its server's last reply.
#[derive(Debug)]
struct ChronydView {
    leap: Option<String>,
    offset: Option<f64>,
}

/// Both chronyd clients' views at the upstream's continuous time `u`.
#[derive(Debug)]
struct ChronydViews {
    u: f64,
    true_server: ChronydView,
    smeared_server: ChronydView,
}

/// Across the leap: the true address announces and makes it, the smeared one moves on
/// without a step, as chronyd clients of each see.
fn across_midnight(inserted: bool) {
    let leap = leap_at(inserted);
    let world = World::start(leap - 60.0, inserted);
    let chronyd = |address: &str| {
        Chronyd::start(
            &world.link.client_ns,
            &format!("server {address} iburst minpoll 0 maxpoll 0 noselect\nport 0\n"),
        )
    };
    let (true_client, smeared_client) = (chronyd(netns::SERVER_V4), chronyd(world.smeared_address));
    world.waits_until(leap - 30.0);
    // chronyd's view, sampled alongside: the leap status and offset of each last reply.
    let sample = |client: &Chronyd, address: &str| {
        let ntpdata = client.chronyc(&["-n", "ntpdata", address]);
        ChronydView {
            leap: peers::report_value(&ntpdata, "Leap status").map(str::to_owned),
            offset: peers::report_seconds(&ntpdata, "Offset"),
        }
    };
    let mut chronyd_views = Vec::new();
    let mut pairs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while world.u_now() < leap + 30.0 && Instant::now() < deadline {
        // Through the slow path too: there the smear is half a second, far beyond its delays.
        if let Some(pair) = world.pair(true) {
            chronyd_views.push(ChronydViews {
                u: pair.u,
                true_server: sample(&true_client, netns::SERVER_V4),
                smeared_server: sample(&smeared_client, world.smeared_address),
            });
            pairs.push(pair);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    world.check("midnight", &pairs);
    // Our client: smeared time never steps; true time steps once, by the leap.
    let steps = |offsets: Vec<f64>| -> Vec<f64> {
        offsets.windows(2).map(|w| w[1] - w[0]).filter(|d| d.abs() > 0.01).collect()
    };
    let smeared_steps = steps(pairs.iter().map(|p| p.smeared.offset).collect());
    assert_eq!(smeared_steps, Vec::<f64>::new(), "the smeared address stepped");
    let true_steps = steps(pairs.iter().map(|p| p.true_time.offset).collect());
    let leap_step = if inserted { -1.0 } else { 1.0 };
    assert!(
        true_steps.len() == 1 && (true_steps[0] - leap_step).abs() < 0.01,
        "true time's steps: {true_steps:?}"
    );
    // chronyd: the true server's replies announce the leap, the smeared one's never do; the
    // smeared server's offsets never jump, the true one's jump by the leap.
    let announced = if inserted { "Insert second" } else { "Delete second" };
    let true_announced = chronyd_views
        .iter()
        .any(|v| v.u < leap_at(inserted) - 2.0 && v.true_server.leap.as_deref() == Some(announced));
    assert!(true_announced, "chronyd never saw the leap announced: {chronyd_views:?}");
    assert!(
        chronyd_views.iter().all(|v| v
            .smeared_server
            .leap
            .as_deref()
            .is_none_or(|l| l == "Normal")),
        "chronyd saw a leap announced by the smeared address: {chronyd_views:?}"
    );
    let chronyd_steps = |pick: fn(&ChronydViews) -> Option<f64>| {
        let mut offsets: Vec<f64> = chronyd_views.iter().filter_map(pick).collect();
        offsets.dedup();
        steps(offsets)
    };
    let smeared_jumps = chronyd_steps(|v| v.smeared_server.offset);
    assert_eq!(smeared_jumps, Vec::<f64>::new(), "chronyd saw the smeared server step");
    let true_jumps = chronyd_steps(|v| v.true_server.offset);
    assert!(
        true_jumps.len() == 1 && (true_jumps[0] - leap_step).abs() < 0.01,
        "chronyd's offsets to the true server jumped by {true_jumps:?}"
    );
}

/// The smear's end, with ntpxd started after the leap: it resumes from its table, and at noon
/// the two addresses agree again.
fn at_noon_after(inserted: bool) {
    let end = leap_at(inserted) + 43_200.0;
    let world = World::start(end - 60.0, inserted);
    world.waits_until(end - 30.0);
    let pairs = world.observe_until(end + 30.0, false);
    world.check("noon after", &pairs);
    let first = pairs.first().unwrap();
    assert!(first.smear().abs() > 200e-6, "no smear left to end: {:+.6} s", first.smear());
}

/// chrony's leap smear on every address (`smoothtime 400 0.001024 leaponly`): no leap
/// announced, no step; at the leap, served time keeps going, a second ahead of true time, and
/// then catches up over 62500 s. Debian's chronyc reports it.
fn smoothed_across_midnight(inserted: bool) {
    let leap = leap_at(inserted);
    let world =
        World::start_with(leap - 40.0, inserted, |_, _| "smoothtime 400 0.001024 leaponly".into());
    let (smoothing, ok) = world.ntpxd.chronyc(&["smoothing"]);
    assert!(
        ok && smoothing.starts_with("Active         : Yes (leap second only)\n"),
        "{smoothing}"
    );
    world.waits_until(leap - 20.0);
    let pairs = world.observe_until(leap + 20.0, false);
    let seconds = if inserted { 1.0 } else { -1.0 };
    for pair in &pairs {
        // Served (smoothed) minus true time; true time made the leap.
        let made = if pair.u >= leap { -seconds } else { 0.0 };
        let smoothed = pair.true_time.offset - world.shift_ns as f64 * 1e-9 - made;
        let expected = if pair.u >= leap { seconds } else { 0.0 };
        eprintln!(
            "smoothed: {:+8.3} s from midnight: served minus true {smoothed:+.6} s, LI {:?}",
            pair.u - MIDNIGHT as f64,
            pair.true_time.reply.leap
        );
        assert_eq!(pair.true_time.reply.leap, Leap::NoWarning, "a smoothed leap is not announced");
        if (pair.u - leap).abs() > 1.0 {
            assert!(
                (smoothed - expected).abs() < 1e-3 + pair.true_time.delay,
                "at {:+.3} s served minus true time is {smoothed:+.6} s",
                pair.u - MIDNIGHT as f64
            );
        }
    }
    let steps: Vec<f64> = pairs
        .windows(2)
        .map(|w| w[1].true_time.offset - w[0].true_time.offset)
        .filter(|d| d.abs() > 0.01)
        .collect();
    assert_eq!(steps, Vec::<f64>::new(), "smoothed time stepped");
    let (smoothing, ok) = world.ntpxd.chronyc(&["smoothing"]);
    let offset = peers::report_seconds(&smoothing, "Offset").unwrap_or_default();
    assert!(
        ok && (offset - seconds).abs() < 1e-3,
        "chronyc smoothing after the leap:\n{smoothing}"
    );
    let tracking = world.ntpxd.ntpxc(&["tracking"]).unwrap();
    let reported = peers::report_seconds(&tracking, "Smoothing").unwrap_or_default();
    assert!((reported - seconds).abs() < 1e-3, "{tracking}");
    // Reset: true time at once (chrony's `smoothtime reset`).
    let (reset, ok) = world.ntpxd.chronyc(&["smoothtime", "reset"]);
    assert!(ok && reset.contains("200 OK"), "{reset}");
    let (smoothing, _) = world.ntpxd.chronyc(&["smoothing"]);
    assert_eq!(peers::report_seconds(&smoothing, "Offset"), Some(0.0), "{smoothing}");
}

fn the_moments(inserted: bool) {
    std::thread::scope(|scope| {
        let moments: [fn(bool); 4] =
            [at_noon_before, across_midnight, at_noon_after, smoothed_across_midnight];
        let runs: Vec<_> =
            moments.into_iter().map(|moment| scope.spawn(move || moment(inserted))).collect();
        for run in runs {
            if let Err(panic) = run.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

#[test]
#[ignore = "needs root"]
fn an_inserted_second_is_smeared_on_one_address_and_made_on_the_other() {
    require_root();
    the_moments(true);
}

#[test]
#[ignore = "needs root"]
fn a_deleted_second_is_smeared_on_one_address_and_made_on_the_other() {
    require_root();
    the_moments(false);
}
