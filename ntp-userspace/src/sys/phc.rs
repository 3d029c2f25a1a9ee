//! A PTP hardware clock (`/dev/ptpN`): its time against the system clock's through the
//! PTP_SYS_OFFSET ioctls (precise cross-timestamps where the driver has them, else extended,
//! else basic readings), and pulses it time-stamps on an input pin (`extpps`).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _},
    mem::size_of,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::Path,
};

use tokio::io::{Interest, unix::AsyncFd};

use super::ioctl;

/// linux/ptp_clock.h's structures.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct PtpClockTime {
    sec: i64,
    nsec: u32,
    reserved: u32,
}

impl PtpClockTime {
    fn ns(self) -> i64 {
        self.sec * 1_000_000_000 + i64::from(self.nsec)
    }
}

const MAX_SAMPLES: usize = 25;

#[repr(C)]
struct PtpSysOffset {
    n_samples: u32,
    reserved: [u32; 3],
    /// System, PHC, system, PHC, ..., system.
    ts: [PtpClockTime; 2 * MAX_SAMPLES + 1],
}

#[repr(C)]
struct PtpSysOffsetExtended {
    n_samples: u32,
    reserved: [u32; 3],
    /// Each: system before, PHC, system after.
    ts: [[PtpClockTime; 3]; MAX_SAMPLES],
}

#[repr(C)]
#[derive(Default)]
struct PtpSysOffsetPrecise {
    device: PtpClockTime,
    sys_realtime: PtpClockTime,
    sys_monoraw: PtpClockTime,
    reserved: [u32; 4],
}

#[repr(C)]
#[derive(Default)]
struct PtpExttsRequest {
    index: u32,
    flags: u32,
    reserved: [u32; 2],
}

#[repr(C)]
struct PtpPinDesc {
    name: [u8; 64],
    index: u32,
    func: u32,
    chan: u32,
    reserved: [u32; 5],
}

/// What an external time-stamp event reads as.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpExttsEvent {
    t: PtpClockTime,
    index: u32,
    flags: u32,
    reserved: [u32; 2],
}

const PTP_EXTTS_REQUEST: libc::Ioctl = ioctl::write(b'=', 2, size_of::<PtpExttsRequest>());
const PTP_SYS_OFFSET: libc::Ioctl = ioctl::write(b'=', 5, size_of::<PtpSysOffset>());
const PTP_PIN_SETFUNC: libc::Ioctl = ioctl::write(b'=', 7, size_of::<PtpPinDesc>());
const PTP_SYS_OFFSET_PRECISE: libc::Ioctl =
    ioctl::read_write(b'=', 8, size_of::<PtpSysOffsetPrecise>());
const PTP_SYS_OFFSET_EXTENDED: libc::Ioctl =
    ioctl::read_write(b'=', 9, size_of::<PtpSysOffsetExtended>());
const PTP_ENABLE_FEATURE: u32 = 1 << 0;
const PTP_RISING_EDGE: u32 = 1 << 1;
const PTP_FALLING_EDGE: u32 = 1 << 2;
const PTP_PF_EXTTS: u32 = 1;

/// How a PHC is read: the best its driver offers, found by trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadingMethod {
    /// PTP_SYS_OFFSET_PRECISE: the hardware's own cross-timestamp.
    Precise,
    /// PTP_SYS_OFFSET_EXTENDED: system time read just before and after each PHC reading.
    Extended,
    /// PTP_SYS_OFFSET: PHC readings between system readings.
    Basic,
}

/// The PHC's time against the system clock's: both at one instant (Unix ns), and the error of
/// pairing them (half the shortest read window), ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhcReading {
    pub phc_ns: i64,
    pub system_ns: i64,
    pub error_ns: i64,
}

pub struct Phc {
    file: File,
    method: ReadingMethod,
}

impl Phc {
    /// Opens `path`, read-only unless pulses are to be time-stamped; `nocrossts` skips the
    /// precise cross-timestamps. The method is found by the first reading.
    pub fn open(path: &Path, external_pulses: bool, nocrossts: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(external_pulses)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let method = if nocrossts { ReadingMethod::Extended } else { ReadingMethod::Precise };
        let mut phc = Self { file, method };
        phc.read()?;
        Ok(phc)
    }

    pub fn method(&self) -> ReadingMethod {
        self.method
    }

    /// A reading by the best method the driver has: one that is not supported (EOPNOTSUPP,
    /// EINVAL on older kernels) falls back to the next, for good.
    pub fn read(&mut self) -> io::Result<PhcReading> {
        loop {
            let result = match self.method {
                ReadingMethod::Precise => self.read_precise(),
                ReadingMethod::Extended => self.read_extended(),
                ReadingMethod::Basic => self.read_basic(),
            };
            let unsupported = |error: &io::Error| {
                matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY))
            };
            match (result, self.method) {
                (Err(error), ReadingMethod::Precise) if unsupported(&error) => {
                    self.method = ReadingMethod::Extended;
                }
                (Err(error), ReadingMethod::Extended) if unsupported(&error) => {
                    self.method = ReadingMethod::Basic;
                }
                (result, _) => return result,
            }
        }
    }

    fn read_precise(&self) -> io::Result<PhcReading> {
        let mut offset = PtpSysOffsetPrecise::default();
        // SAFETY: the kernel fills the structure it is given.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), PTP_SYS_OFFSET_PRECISE, &raw mut offset) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(PhcReading {
            phc_ns: offset.device.ns(),
            system_ns: offset.sys_realtime.ns(),
            error_ns: 0,
        })
    }

    fn read_extended(&self) -> io::Result<PhcReading> {
        // SAFETY: all-zero is a valid value of the structure.
        let mut offset: PtpSysOffsetExtended = unsafe { std::mem::zeroed() };
        offset.n_samples = MAX_SAMPLES as u32;
        // SAFETY: as above.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), PTP_SYS_OFFSET_EXTENDED, &raw mut offset) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        let windows = offset.ts.iter().map(|[before, phc, after]| (*before, *phc, *after));
        best_window(windows)
    }

    fn read_basic(&self) -> io::Result<PhcReading> {
        // SAFETY: as above.
        let mut offset: PtpSysOffset = unsafe { std::mem::zeroed() };
        offset.n_samples = MAX_SAMPLES as u32;
        // SAFETY: as above.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), PTP_SYS_OFFSET, &raw mut offset) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let windows = (0..MAX_SAMPLES)
            .map(|i| (offset.ts[2 * i], offset.ts[2 * i + 1], offset.ts[2 * i + 2]));
        best_window(windows)
    }

    /// Asks the PHC to time-stamp the `rising` (or falling) edges of pulses on `pin`, as
    /// external time-stamp channel `channel`; `enable` false turns that off.
    pub fn external_pulses(
        &self,
        pin: u32,
        channel: u32,
        rising: bool,
        enable: bool,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let pin = PtpPinDesc {
            name: [0; 64],
            index: pin,
            func: if enable { PTP_PF_EXTTS } else { 0 },
            chan: channel,
            reserved: [0; 5],
        };
        // SAFETY: the kernel reads the structure it is given.
        if unsafe { libc::ioctl(fd, PTP_PIN_SETFUNC, &raw const pin) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let edge = if rising { PTP_RISING_EDGE } else { PTP_FALLING_EDGE };
        let request = PtpExttsRequest {
            index: channel,
            flags: if enable { PTP_ENABLE_FEATURE | edge } else { 0 },
            reserved: [0; 2],
        };
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, PTP_EXTTS_REQUEST, &raw const request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next external time-stamp waiting (PHC ns, and its channel); None when there is none
    /// (the descriptor does not block).
    pub fn external_pulse(&mut self) -> io::Result<Option<(i64, u32)>> {
        let mut bytes = [0u8; size_of::<PtpExttsEvent>()];
        match self.file.read(&mut bytes) {
            Ok(n) if n == bytes.len() => {
                // SAFETY: any bytes are a valid event (integers only).
                let event: PtpExttsEvent =
                    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                Ok(Some((event.t.ns(), event.index)))
            }
            Ok(_) => Ok(None),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// What waits for external time-stamps (in the runtime that calls this).
    pub fn pulse_waiter(&self) -> io::Result<PulseWaiter> {
        let fd = std::os::fd::AsFd::as_fd(&self.file).try_clone_to_owned()?;
        // SAFETY: the descriptor is the AsyncFd's own (a duplicate), open until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PulseWaiter(fd))
    }
}

/// Waits until a PHC has external time-stamps to read.
pub struct PulseWaiter(AsyncFd<OwnedFd>);

impl PulseWaiter {
    /// Returns when time-stamps may be waiting: read them all ([`Phc::external_pulse`]) before
    /// waiting again.
    pub async fn wait(&self) -> io::Result<()> {
        self.0.readable().await?.clear_ready();
        Ok(())
    }
}

/// Of PHC readings each between two system readings, the one read in the shortest window: the
/// PHC's time, the system's at the middle, and half the window as the error.
fn best_window(
    windows: impl Iterator<Item = (PtpClockTime, PtpClockTime, PtpClockTime)>,
) -> io::Result<PhcReading> {
    windows
        .map(|(before, phc, after)| (after.ns() - before.ns(), before.ns(), phc.ns()))
        .filter(|(window, _, _)| *window >= 0)
        .min_by_key(|(window, _, _)| *window)
        .map(|(window, before, phc)| PhcReading {
            phc_ns: phc,
            system_ns: before + window / 2,
            error_ns: window / 2,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no usable PHC reading"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(ns: i64) -> PtpClockTime {
        PtpClockTime { sec: ns / 1_000_000_000, nsec: (ns % 1_000_000_000) as u32, reserved: 0 }
    }

    #[test]
    fn the_shortest_window_is_taken_and_its_middle_is_the_system_time() {
        let readings = [
            (time(1_000), time(37_000_000_500), time(3_000)),
            (time(10_000), time(37_000_009_700), time(10_400)),
            // A window that runs backwards (the system clock stepped): not used.
            (time(20_000), time(37_000_019_000), time(19_000)),
        ];
        let reading = best_window(readings.into_iter()).unwrap();
        assert_eq!(
            reading,
            PhcReading { phc_ns: 37_000_009_700, system_ns: 10_200, error_ns: 200 }
        );
        assert!(best_window(std::iter::empty()).is_err());
    }

    #[test]
    fn the_structures_have_the_kernels_sizes() {
        assert_eq!(size_of::<PtpSysOffset>(), 832);
        assert_eq!(size_of::<PtpSysOffsetExtended>(), 1216);
        assert_eq!(size_of::<PtpSysOffsetPrecise>(), 64);
        assert_eq!(size_of::<PtpPinDesc>(), 96);
        assert_eq!(size_of::<PtpExttsEvent>(), 32);
    }
}
