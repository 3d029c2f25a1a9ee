//! The reference clocks' I/O shell: each driver opened at start (while ntpxd is still root; an
//! error names the configuration line), read at its driver poll or when it sends, its readings
//! and polls handed to the synchroniser. A device's failures are logged when they start and
//! when they end, not per reading. What a reading means is the core's (`sync::refclock`).

use std::{
    io,
    os::unix::{fs::FileTypeExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ntp_common::wire::Leap;

use crate::{
    config::{ExternalPulse, RefclockConfig, RefclockDriver},
    sync::{
        SourceId,
        discipline::Action,
        refclock::{self, ClockSettings, Reading},
        reference_id_name,
    },
    sys::{
        clock,
        phc::{Phc, PhcReading, PulseWaiter},
        pps::PpsDevice,
        shm::{ShmSample, ShmSegment},
    },
    upstream::Upstream,
};

/// How long a driver whose events fail rests before it waits for them again.
const EVENT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What a permission error at start says to the packaged service's users.
const PACKAGED_SERVICE_HINT: &str = "not allowed: the packaged service opens reference clocks \
     with its drop-in, /usr/share/ntpx/ntpxd-refclock.conf (see README)";

/// A reference clock whose device is open, and the source it feeds.
pub struct OpenClock {
    source: SourceId,
    name: String,
    config: RefclockConfig,
    device: Device,
}

enum Device {
    Shm(ShmSegment),
    Sock { socket: UnixDatagram, path: PathBuf },
    Pps { device: PpsDevice, last_sequence: Option<u32> },
    Phc { phc: Phc, extpps: Option<ExternalPulse> },
}

/// Opens every configured reference clock and adds it to the synchroniser. `precision_log2`:
/// the system clock's, which no reading is better than.
pub fn open_all(
    configs: &[RefclockConfig],
    upstream: &Upstream,
    precision_log2: i8,
) -> anyhow::Result<Vec<OpenClock>> {
    let mut clocks = Vec::new();
    for config in configs {
        let name = reference_id_name(config.clock.reference_id);
        let driver = config.driver.name();
        let device = open(&config.driver)
            .map_err(|error| {
                let denied = error.chain().any(|cause| {
                    cause
                        .downcast_ref::<io::Error>()
                        .is_some_and(|e| e.kind() == io::ErrorKind::PermissionDenied)
                });
                // The packaged service opens devices only with its drop-in.
                if denied { error.context(PACKAGED_SERVICE_HINT) } else { error }
            })
            .with_context(|| format!("{}: refclock {driver} ({name})", config.location))?;
        let settings = ClockSettings {
            precision: config.precision.max(2f64.powi(precision_log2.into())),
            ..config.clock.clone()
        };
        let now = clock::realtime_ns() as i64;
        let source = upstream.sync.lock().expect("sync lock").add_reference_clock(
            settings,
            config.selection,
            now,
        );
        if let Device::Phc { phc, .. } = &device {
            tracing::info!(refid = name, driver, method = ?phc.method(), "reference clock");
        } else {
            tracing::info!(refid = name, driver, "reference clock");
        }
        clocks.push(OpenClock { source, name, config: config.clone(), device });
    }
    Ok(clocks)
}

fn open(driver: &RefclockDriver) -> anyhow::Result<Device> {
    Ok(match driver {
        RefclockDriver::Shm { unit, perm } => Device::Shm(
            ShmSegment::attach(*unit, *perm)
                .with_context(|| format!("attaching shared memory segment {unit}"))?,
        ),
        RefclockDriver::Sock { path } => {
            Device::Sock { socket: bind_sock(path)?, path: path.clone() }
        }
        RefclockDriver::Pps { device, clear } => Device::Pps {
            device: PpsDevice::open(device, *clear)
                .with_context(|| format!("opening {}", device.display()))?,
            last_sequence: None,
        },
        RefclockDriver::Phc { device, nocrossts, extpps } => {
            let phc = Phc::open(device, extpps.is_some(), *nocrossts)
                .with_context(|| format!("reading {}", device.display()))?;
            if let Some(ExternalPulse { pin, channel, clear }) = extpps {
                phc.external_pulses(*pin, *channel, !clear, true).with_context(|| {
                    format!("time-stamping pulses on pin {pin} of {}", device.display())
                })?;
            }
            Device::Phc { phc, extpps: *extpps }
        }
    })
}

/// The SOCK socket at `path`: an old socket there is replaced, anything else is an error.
fn bind_sock(path: &Path) -> anyhow::Result<UnixDatagram> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the old socket {}", path.display()))?,
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("checking {}", path.display())),
    }
    let socket = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Drop for OpenClock {
    fn drop(&mut self) {
        match &self.device {
            Device::Sock { path, .. } => {
                let _ = std::fs::remove_file(path);
            }
            Device::Phc { phc, extpps: Some(ExternalPulse { pin, channel, .. }) } => {
                let _ = phc.external_pulses(*pin, *channel, true, false);
            }
            _ => {}
        }
    }
}

/// Whether a device works, so that its failures are told once.
struct Health<'a> {
    name: &'a str,
    failing: bool,
}

impl Health<'_> {
    fn failed(&mut self, error: &io::Error) {
        if !self.failing {
            tracing::warn!(
                refid = self.name,
                %error,
                "reference clock read failed (not logged again until it works)"
            );
            self.failing = true;
        }
    }

    fn worked(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(refid = self.name, "reference clock read works again");
        }
    }
}

/// Reads `clock` and polls its filter until the daemon stops.
pub async fn run(mut clock: OpenClock, upstream: Arc<Upstream>) {
    let poll = clock.config.clock.poll;
    // A polled driver is read every 2^dpoll s; one that sends (SOCK) is only polled.
    let (read_log2, reads_per_poll) = match clock.device {
        Device::Sock { .. } => (poll, 1),
        _ => (clock.config.dpoll, 1u64 << (poll - clock.config.dpoll).clamp(0, 16)),
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(2f64.powi(read_log2.into())));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = Health { name: &clock.name, failing: false };
    let mut events = match Events::of(&clock.device) {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(refid = clock.name, %error, "cannot wait for the reference clock");
            return;
        }
    };
    let mut reads = 0u64;
    let mut reachable = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match read(&mut clock.device) {
                    Ok(reading) => {
                        health.worked();
                        if let Some(reading) = reading {
                            feed(&upstream, clock.source, &clock.name, reading);
                        }
                    }
                    Err(error) => health.failed(&error),
                }
                reads += 1;
                if reads.is_multiple_of(reads_per_poll) {
                    reachable = poll_filter(&upstream, &clock, reachable);
                }
            }
            readings = events.next(&mut clock.device) => match readings {
                Ok(readings) => {
                    health.worked();
                    for reading in readings {
                        feed(&upstream, clock.source, &clock.name, reading);
                    }
                }
                Err(error) => {
                    health.failed(&error);
                    // A socket or device that fails at once would otherwise spin.
                    tokio::time::sleep(EVENT_ERROR_PAUSE).await;
                }
            },
        }
    }
}

/// The clock's poll: its filtered sample into selection. Tells when the clock stops being
/// reachable and when it is again; returns whether it is.
fn poll_filter(upstream: &Upstream, clock: &OpenClock, was_reachable: bool) -> bool {
    let now = clock::realtime_ns() as i64;
    let mut sync = upstream.sync.lock().expect("sync lock");
    if let Some(Action::Stepped(_)) = sync.poll_reference_clock(clock.source, now) {
        upstream.clock_stepped.notify_one();
    }
    let reachable = sync.source(clock.source).reach != 0;
    match (was_reachable, reachable) {
        (true, false) => tracing::warn!(refid = clock.name, "reference clock unreachable"),
        (false, true) => tracing::info!(refid = clock.name, "reference clock reachable"),
        _ => {}
    }
    reachable
}

fn feed(upstream: &Upstream, source: SourceId, name: &str, reading: Reading) {
    let now = clock::realtime_ns() as i64;
    let outcome =
        upstream.sync.lock().expect("sync lock").reference_clock_reading(source, reading, now);
    if let Err(ignored) = outcome {
        tracing::debug!(refid = name, ?ignored, ?reading, "reference clock reading not used");
    }
}

/// A polled driver's reading now, if it has a new one.
fn read(device: &mut Device) -> io::Result<Option<Reading>> {
    match device {
        Device::Shm(segment) => Ok(segment.read().and_then(shm_reading)),
        Device::Sock { .. } | Device::Phc { extpps: Some(_), .. } => Ok(None),
        Device::Pps { device, last_sequence } => {
            let Some(pulse) = device.fetch()? else { return Ok(None) };
            if *last_sequence == Some(pulse.sequence) {
                return Ok(None);
            }
            *last_sequence = Some(pulse.sequence);
            let second = pulse.system_ns.rem_euclid(1_000_000_000) as f64 * 1e-9;
            Ok(Some(Reading::Pulse { system_ns: pulse.system_ns, second }))
        }
        Device::Phc { phc, extpps: None } => {
            let PhcReading { phc_ns, system_ns, .. } = phc.read()?;
            let offset = (phc_ns - system_ns) as f64 * 1e-9;
            Ok(Some(Reading::Time { system_ns, offset, leap: Leap::NoWarning }))
        }
    }
}

/// What gpsd (or ntpd's tools) left in the segment: the reference's time and the system's when
/// it was received.
fn shm_reading(sample: ShmSample) -> Option<Reading> {
    let leap = match sample.leap {
        0 => Leap::NoWarning,
        1 => Leap::InsertSecond,
        2 => Leap::DeleteSecond,
        3 => Leap::Unsynchronised,
        _ => return None,
    };
    let system_ns = i64::try_from(sample.received_ns).ok()?;
    let offset = (sample.reference_ns - sample.received_ns) as f64 * 1e-9;
    Some(Reading::Time { system_ns, offset, leap })
}

/// The readings a driver sends (SOCK datagrams, a PHC's time-stamped pulses).
enum Events {
    None,
    Sock(tokio::net::UnixDatagram),
    Pulses(PulseWaiter),
}

impl Events {
    fn of(device: &Device) -> io::Result<Self> {
        Ok(match device {
            Device::Sock { socket, .. } => {
                Self::Sock(tokio::net::UnixDatagram::from_std(socket.try_clone()?)?)
            }
            Device::Phc { phc, extpps: Some(_) } => Self::Pulses(phc.pulse_waiter()?),
            _ => Self::None,
        })
    }

    async fn next(&mut self, device: &mut Device) -> io::Result<Vec<Reading>> {
        match self {
            Self::None => std::future::pending().await,
            Self::Sock(socket) => {
                let mut datagram = [0; refclock::SOCK_SAMPLE_LEN + 16];
                let length = socket.recv(&mut datagram).await?;
                let reading = refclock::sock_sample(&datagram[..length]);
                if reading.is_none() {
                    tracing::debug!(length, "not a SOCK sample");
                }
                Ok(reading.into_iter().collect())
            }
            Self::Pulses(waiter) => {
                waiter.wait().await?;
                let Device::Phc { phc, extpps: Some(extpps) } = device else {
                    return Ok(Vec::new());
                };
                let mut readings = Vec::new();
                while let Some((pulse_phc_ns, channel)) = phc.external_pulse()? {
                    if channel != extpps.channel {
                        continue;
                    }
                    // The pulse in system time, through a fresh reading of the PHC against it.
                    let PhcReading { phc_ns, system_ns, .. } = phc.read()?;
                    let system_ns = pulse_phc_ns - (phc_ns - system_ns);
                    let second = system_ns.rem_euclid(1_000_000_000) as f64 * 1e-9;
                    readings.push(Reading::Pulse { system_ns, second });
                }
                Ok(readings)
            }
        }
    }
}
