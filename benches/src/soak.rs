//! The soak: ntpxd (XDP) under saturating load for minutes, with more distinct clients than its
//! client log holds cycling through it, while another thread reloads it, adds and removes
//! access rules every few seconds and lists its clients every minute, as operators do. It
//! reports what was answered, whether any reply was invalid, whether the daemon's memory and
//! descriptors grew past the first minute, and the longest time nothing was answered.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::unistd::Pid;
use ntp_userspace::control::{self, Response};
use ntpx_tests::peers;

use crate::bed::{Bed, Clients, ServerKind};

/// More than the generator can send: the load saturates the path.
const SATURATING_RATE: f64 = 5_000_000.0;
/// The load is offered and counted in steps this long (the gap's resolution).
const STEP: Duration = Duration::from_secs(1);
/// How often the control thread changes something.
const CHANGE_EVERY: Duration = Duration::from_secs(3);
const LIST_EVERY: Duration = Duration::from_secs(60);

/// ntpxd's resident memory and open descriptors.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Resources {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Resources {
    fn of(pid: Pid) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| {
                line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()
            })
            .context("VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(Self { rss_kib, fds })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub clients: u32,
    pub offered: u64,
    pub answered: u64,
    pub invalid: u64,
    /// Reloads, and `allow`/`deny` pairs, made during the load.
    pub reloads: u32,
    pub rule_changes: u32,
    /// `ntpxc clients` runs, and the longest one, s.
    pub listings: u32,
    pub longest_listing_s: f64,
    /// After the first minute, and at the end.
    pub after_first_minute: Resources,
    pub at_end: Resources,
    /// After each minute's client listing.
    pub each_minute: Vec<Resources>,
    /// Live records in the client log at the end, and its capacity.
    pub client_log_records: u64,
    pub client_log_capacity: u32,
    /// The longest run of steps with no valid reply, s (resolution: one step).
    pub longest_gap_s: f64,
}

impl SoakReport {
    /// What the soak requires: no invalid reply, no growth past the first minute (within
    /// 10 % of memory, for allocator noise), every control command answered.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.invalid > 0 {
            bail!("{} invalid replies", self.invalid);
        }
        if self.at_end.fds > self.after_first_minute.fds {
            bail!("descriptors grew from {} to {}", self.after_first_minute.fds, self.at_end.fds);
        }
        if self.at_end.rss_kib > self.after_first_minute.rss_kib * 11 / 10 {
            bail!(
                "memory grew from {} KiB to {} KiB",
                self.after_first_minute.rss_kib,
                self.at_end.rss_kib
            );
        }
        if self.answered == 0 {
            bail!("nothing was answered");
        }
        Ok(())
    }

    pub fn table(&self) -> String {
        format!(
            "soak: {:.0} min, {} distinct clients, client log {} of {} records at the end\n\
             offered {} requests, answered {} ({:.0}/s), invalid {}\n\
             {} reloads, {} allow/deny changes, {} client listings (longest {:.2} s)\n\
             ntpxd after the first minute: {} KiB resident, {} descriptors; at the end: {} KiB, {}\n\
             longest time with nothing answered: {:.1} s (1 s steps)\n",
            self.minutes,
            self.clients,
            self.client_log_records,
            self.client_log_capacity,
            self.offered,
            self.answered,
            self.answered as f64 / (self.minutes * 60.0),
            self.invalid,
            self.reloads,
            self.rule_changes,
            self.listings,
            self.longest_listing_s,
            self.after_first_minute.rss_kib,
            self.after_first_minute.fds,
            self.at_end.rss_kib,
            self.at_end.fds,
            self.longest_gap_s,
        ) + &format!(
            "ntpxd minute by minute (KiB resident, descriptors): {}\n",
            self.each_minute
                .iter()
                .map(|r| format!("{} {}", r.rss_kib, r.fds))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// What the control thread did.
#[derive(Default)]
struct Operations {
    reloads: u32,
    rule_changes: u32,
    listings: u32,
    longest_listing: Duration,
    each_minute: Vec<Resources>,
    failure: Option<String>,
}

/// Soaks ntpxd for `minutes`.
pub fn soak(minutes: f64) -> anyhow::Result<SoakReport> {
    let duration = Duration::from_secs_f64(minutes * 60.0);
    Bed::run_with(ServerKind::NtpxdXdp, Clients::SOAK, |bed| {
        let ntpxd = bed.ntpxd().context("the soak runs ntpxd")?;
        let (socket, pid) = (ntpxd.socket.clone(), ntpxd.process.pid());
        let running = AtomicBool::new(true);
        let operations = Mutex::new(Operations::default());
        let started = Instant::now();
        let (mut offered, mut answered, mut invalid) = (0, 0, 0);
        let (mut gap, mut longest_gap) = (Duration::ZERO, Duration::ZERO);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            scope.spawn(|| operate(&socket, pid, started, &running, &operations));
            while started.elapsed() < duration {
                let step = bed.step(SATURATING_RATE, STEP);
                let step = match step {
                    Ok(step) => step,
                    Err(error) => {
                        running.store(false, Ordering::Relaxed);
                        return Err(error);
                    }
                };
                offered += step.offered;
                answered += step.tally.valid + step.tally.kiss_of_death;
                invalid += step.tally.invalid;
                if step.tally.valid == 0 {
                    gap += STEP;
                    longest_gap = longest_gap.max(gap);
                } else {
                    gap = Duration::ZERO;
                }
            }
            running.store(false, Ordering::Relaxed);
            Ok(())
        })?;
        let operations = operations.into_inner().expect("operations");
        if let Some(failure) = operations.failure {
            bail!("a control command failed during the soak: {failure}");
        }
        let stats = match control::call(&socket, &control::Request::ServerStats)? {
            Response::ServerStats(stats) => stats,
            other => bail!("unexpected response {other:?}"),
        };
        let at_end = Resources::of(pid)?;
        Ok(SoakReport {
            minutes,
            clients: Clients::SOAK.count,
            offered,
            answered,
            invalid,
            reloads: operations.reloads,
            rule_changes: operations.rule_changes,
            listings: operations.listings,
            longest_listing_s: operations.longest_listing.as_secs_f64(),
            after_first_minute: operations.each_minute.first().copied().unwrap_or(at_end),
            at_end,
            each_minute: operations.each_minute,
            client_log_records: stats
                .kernel
                .client_records_created
                .saturating_sub(stats.client_log_records_dropped),
            client_log_capacity: stats.client_log_capacity,
            longest_gap_s: longest_gap.as_secs_f64(),
        })
    })
}

/// The operator's side: a reload or an access rule every few seconds, the client list every
/// minute, and the daemon's resources after the first minute.
fn operate(
    socket: &Path,
    pid: Pid,
    started: Instant,
    running: &AtomicBool,
    operations: &Mutex<Operations>,
) {
    let mut changes = 0u32;
    let mut next_listing = started + LIST_EVERY;
    let mut next_change = started + CHANGE_EVERY;
    while running.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut done = operations.lock().expect("operations");
        let outcome = if now >= next_listing {
            next_listing += LIST_EVERY;
            let listing = Instant::now();
            let outcome = ntpxc(socket, &["clients", "--top", "10"]);
            done.listings += 1;
            done.longest_listing = done.longest_listing.max(listing.elapsed());
            // After a minute of every operation, a listing of the full table (the largest
            // allocation) included.
            if let Ok(resources) = Resources::of(pid) {
                done.each_minute.push(resources);
            }
            outcome
        } else if now >= next_change {
            next_change += CHANGE_EVERY;
            changes += 1;
            // A subnet none of the load comes from: the rules change, the answers do not.
            match changes % 3 {
                0 => {
                    done.reloads += 1;
                    ntpxc(socket, &["reload"])
                }
                1 => ntpxc(socket, &["deny", "10.250.0.0/16"]),
                _ => {
                    done.rule_changes += 1;
                    ntpxc(socket, &["allow", "10.250.0.0/16"])
                }
            }
        } else {
            Ok(())
        };
        if let Err(error) = outcome {
            done.failure.get_or_insert(error);
        }
        drop(done);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ntpxc(socket: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new(peers::binary("ntpxc"))
        .arg("-h")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ntpxc {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr)))
    }
}

/// Writes the report beside the benchmark's.
pub fn write(report: &SoakReport, out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let path = out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)?;
    Ok(path)
}
