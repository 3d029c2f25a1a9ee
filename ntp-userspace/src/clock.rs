//! The kernel's clocks, read only: CLOCK_TAI and CLOCK_REALTIME, and the kernel's clock state
//! through a read-only `adjtimex` (modes = 0, which changes nothing).

use std::io;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; both clocks always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    ts.tv_sec as u64 * NANOS_PER_SECOND + ts.tv_nsec as u64
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
        // SAFETY: timex is plain old data; zeroed means modes = 0, a pure read.
        let mut timex: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: `timex` is valid for the kernel to write.
        let state = unsafe { libc::adjtimex(&mut timex) };
        if state < 0 {
            return Err(io::Error::last_os_error());
        }
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
}
