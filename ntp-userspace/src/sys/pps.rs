//! A PPS device (`/dev/ppsN`) through the Linux PPS API: the kernel time-stamps each pulse's
//! edge, and a reader fetches the newest.

use std::{
    fs::{File, OpenOptions},
    io,
    mem::size_of,
    os::fd::AsRawFd as _,
    path::Path,
};

use super::ioctl;

/// linux/pps.h's structures.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKTime {
    sec: i64,
    nsec: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKInfo {
    assert_sequence: u32,
    clear_sequence: u32,
    assert: PpsKTime,
    clear: PpsKTime,
    current_mode: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsFData {
    info: PpsKInfo,
    timeout: PpsKTime,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKParams {
    api_version: libc::c_int,
    mode: libc::c_int,
    assert_offset: PpsKTime,
    clear_offset: PpsKTime,
}

const CAPTURE_ASSERT: libc::c_int = 0x01;
const CAPTURE_CLEAR: libc::c_int = 0x02;
// The kernel's PPS requests are sized by a pointer, not by the structure (a quirk of pps.h).
const PPS_GETPARAMS: libc::Ioctl = ioctl::read(b'p', 0xa1, size_of::<usize>());
const PPS_SETPARAMS: libc::Ioctl = ioctl::write(b'p', 0xa2, size_of::<usize>());
const PPS_GETCAP: libc::Ioctl = ioctl::read(b'p', 0xa3, size_of::<usize>());
const PPS_FETCH: libc::Ioctl = ioctl::read_write(b'p', 0xa4, size_of::<usize>());

/// A pulse's edge: its sequence number and its system time, Unix ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pulse {
    pub sequence: u32,
    pub system_ns: i64,
}

pub struct PpsDevice {
    file: File,
    clear: bool,
}

impl PpsDevice {
    /// Opens `path` and asks it to time-stamp the assert edge (or, with `clear`, the clear
    /// edge) only.
    pub fn open(path: &Path, clear: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = file.as_raw_fd();
        let mut capabilities: libc::c_int = 0;
        // SAFETY: each request writes or reads the structure it is given.
        if unsafe { libc::ioctl(fd, PPS_GETCAP, &raw mut capabilities) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let (wanted, other) =
            if clear { (CAPTURE_CLEAR, CAPTURE_ASSERT) } else { (CAPTURE_ASSERT, CAPTURE_CLEAR) };
        if capabilities & wanted == 0 {
            let edge = if clear { "clear" } else { "assert" };
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the device cannot time-stamp the {edge} edge"),
            ));
        }
        let mut params = PpsKParams::default();
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, PPS_GETPARAMS, &raw mut params) } < 0 {
            return Err(io::Error::last_os_error());
        }
        params.mode = (params.mode | wanted) & !other;
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, PPS_SETPARAMS, &raw const params) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file, clear })
    }

    /// The newest pulse, without waiting (None before the first).
    pub fn fetch(&self) -> io::Result<Option<Pulse>> {
        // A zero timeout: the kernel answers at once.
        let mut data = PpsFData::default();
        // SAFETY: the kernel fills `data`.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), PPS_FETCH, &raw mut data) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let (sequence, time) = if self.clear {
            (data.info.clear_sequence, data.info.clear)
        } else {
            (data.info.assert_sequence, data.info.assert)
        };
        if time.sec == 0 && time.nsec == 0 {
            return Ok(None);
        }
        let system_ns = time.sec * 1_000_000_000 + i64::from(time.nsec);
        Ok(Some(Pulse { sequence, system_ns }))
    }
}
