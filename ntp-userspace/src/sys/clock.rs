//! The kernel's clocks: CLOCK_TAI and CLOCK_REALTIME, the kernel's clock state through
//! `adjtimex` (read-only with modes = 0), and the clock controls the discipline uses.

use std::io;

use ntp_common::wire::Leap;

use crate::{
    reference::TaiReading,
    sync::discipline::{ClockControl, KernelStatus, MAX_FREQUENCY_PPM},
};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A timespec's seconds and nanoseconds as nanoseconds (of a clock that is past its epoch).
pub const fn timespec_ns(seconds: i64, nanos: i64) -> u64 {
    seconds as u64 * NANOS_PER_SECOND + nanos as u64
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; both clocks always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    timespec_ns(ts.tv_sec, ts.tv_nsec)
}

/// CLOCK_TAI, in ns: the clock the XDP program reads with `bpf_ktime_get_tai_ns()`.
pub fn tai_ns() -> u64 {
    read(libc::CLOCK_TAI)
}

/// CLOCK_REALTIME, in ns since the Unix epoch (UTC).
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// TAI - UTC now, in seconds, from the two clocks (the kernel changes it at a leap second).
pub fn tai_offset_s() -> i32 {
    let realtime = realtime_ns() as i64;
    let tai = tai_ns() as i64;
    ((tai - realtime) as f64 * 1e-9).round() as i32
}

/// CLOCK_TAI now, with TAI - UTC as the kernel has it.
pub fn tai_now() -> TaiReading {
    TaiReading { tai_ns: tai_ns(), tai_offset_s: tai_offset_s() }
}

/// `adjtimex` with `modes` and what `fill` sets: the kernel's clock state after the call, and
/// the clock's state (TIME_OK, TIME_INS, ...). Modes 0 only reads.
fn adjtimex(modes: u32, fill: impl FnOnce(&mut libc::timex)) -> io::Result<(libc::timex, i32)> {
    // SAFETY: timex is plain old data.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    timex.modes = modes;
    fill(&mut timex);
    // SAFETY: `timex` is valid for the kernel to read and write.
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((timex, state))
}

/// The kernel's clock state, as `adjtimex` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelClock {
    /// TAI - UTC in seconds (0 unless a daemon set it).
    pub tai_offset_s: i32,
    /// Maximum error in microseconds (timedatectl calls the clock synchronised below 16 s).
    pub max_error_us: i64,
    pub est_error_us: i64,
    /// STA_* flags.
    pub status: i32,
    /// Frequency offset in ppm with a 16-bit fraction.
    pub frequency: i64,
    /// TIME_OK, TIME_INS, ..., TIME_ERROR.
    pub state: i32,
}

impl KernelClock {
    pub const STA_UNSYNC: i32 = libc::STA_UNSYNC;

    /// Reads the state; `modes = 0` makes the call read-only.
    pub fn read() -> io::Result<Self> {
        let (timex, state) = adjtimex(0, |_| {})?;
        Ok(Self {
            tai_offset_s: timex.tai,
            max_error_us: timex.maxerror,
            est_error_us: timex.esterror,
            status: timex.status,
            frequency: timex.freq,
            state,
        })
    }
}

/// The real kernel clock, through `adjtimex`.
pub struct KernelClockControl;

/// The kernel's frequency unit: ppm scaled by 2^16.
const PPM_SCALE: f64 = 65_536.0;

impl ClockControl for KernelClockControl {
    fn frequency(&self) -> io::Result<f64> {
        Ok(adjtimex(0, |_| {})?.0.freq as f64 / PPM_SCALE)
    }

    fn set_frequency(&mut self, ppm: f64) -> io::Result<()> {
        let freq =
            (ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM) * PPM_SCALE).round() as libc::c_long;
        adjtimex(libc::ADJ_FREQUENCY, |t| t.freq = freq).map(drop)
    }

    fn step(&mut self, seconds: f64) -> io::Result<()> {
        let nanos = (seconds * 1e9).round() as i64;
        adjtimex(libc::ADJ_SETOFFSET | libc::ADJ_NANO, |t| {
            t.time.tv_sec = nanos.div_euclid(1_000_000_000);
            t.time.tv_usec = nanos.rem_euclid(1_000_000_000);
        })
        .map(drop)
    }

    fn set_status(&mut self, status: KernelStatus) -> io::Result<()> {
        let (current, _) = adjtimex(0, |_| {})?;
        let mut flags = current.status & !(libc::STA_INS | libc::STA_DEL | libc::STA_UNSYNC);
        match status.leap {
            Leap::InsertSecond => flags |= libc::STA_INS,
            Leap::DeleteSecond => flags |= libc::STA_DEL,
            _ => {}
        }
        if !(status.synchronised && status.rtcsync) {
            flags |= libc::STA_UNSYNC;
        }
        let max_error = (status.max_error * 1e6).min(16e6) as libc::c_long;
        let est_error = (status.est_error * 1e6).min(16e6) as libc::c_long;
        adjtimex(libc::ADJ_MAXERROR | libc::ADJ_ESTERROR | libc::ADJ_STATUS, |t| {
            t.maxerror = if status.synchronised { max_error } else { 16_000_000 };
            t.esterror = est_error;
            t.status = flags;
        })?;
        if let Some(offset) = status.tai_offset
            && offset != current.tai
        {
            adjtimex(libc::ADJ_TAI, |t| t.constant = libc::c_long::from(offset))?;
        }
        Ok(())
    }
}

/// log2 of the time it takes to read the clock, in seconds, as NTP's precision field wants it
/// (chrony measures it the same way: the smallest non-zero step between consecutive readings).
pub fn precision_log2() -> i8 {
    let mut smallest = u64::MAX;
    let mut previous = realtime_ns();
    for _ in 0..1000 {
        let now = realtime_ns();
        if now > previous {
            smallest = smallest.min(now - previous);
        }
        previous = now;
    }
    let seconds = smallest.max(1) as f64 / NANOS_PER_SECOND as f64;
    seconds.log2().ceil().clamp(-30.0, 0.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai_is_realtime_plus_the_kernel_tai_offset() {
        let offset = i64::from(KernelClock::read().unwrap().tai_offset_s) * 1_000_000_000;
        let realtime = realtime_ns() as i64;
        let tai = tai_ns() as i64;
        let difference = tai - realtime - offset;
        assert!((0..50_000_000).contains(&difference), "TAI - UTC - offset = {difference} ns");
        assert_eq!(tai_offset_s(), KernelClock::read().unwrap().tai_offset_s);
    }

    #[test]
    fn precision_is_that_of_a_nanosecond_clock() {
        let precision = precision_log2();
        assert!((-30..=-10).contains(&precision), "precision {precision}");
    }

    #[test]
    fn the_kernel_frequency_reads_without_writing() {
        // A read-only adjtimex (modes = 0): the discipline's starting point on a real kernel. Read
        // from a thread without CAP_SYS_TIME (capabilities are per thread), where any write would
        // fail with EPERM, so that a read that writes cannot pass.
        let frequency = std::thread::spawn(|| {
            caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_TIME).unwrap();
            assert!(
                !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_TIME)
                    .unwrap()
            );
            KernelClockControl.frequency()
        })
        .join()
        .unwrap()
        .expect("adjtimex without CAP_SYS_TIME");
        assert!((-500.0..=500.0).contains(&frequency), "{frequency} ppm");
    }
}
