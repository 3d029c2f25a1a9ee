//! The NTP shared-memory segment (SysV IPC, key 0x4E545030 + unit) that gpsd, ntpd's tools and
//! phc2sys `-E ntpshm` write a time into, and a reader takes it out of.

use std::{io, mem::size_of, ptr};

/// The key of unit 0 ("NTP0").
pub const SHM_KEY_BASE: u32 = 0x4e54_5030;

/// The segment's layout (ntpd's `struct shmTime`), native types and alignment, as gpsd writes
/// it (and the test bed's writer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShmTime {
    /// 0: use the values if `valid`; 1: also only if `count` is the same after reading.
    pub mode: libc::c_int,
    pub count: libc::c_int,
    pub clock_sec: libc::time_t,
    pub clock_usec: libc::c_int,
    pub receive_sec: libc::time_t,
    pub receive_usec: libc::c_int,
    pub leap: libc::c_int,
    pub precision: libc::c_int,
    pub nsamples: libc::c_int,
    pub valid: libc::c_int,
    pub clock_nsec: libc::c_uint,
    pub receive_nsec: libc::c_uint,
    pub dummy: [libc::c_int; 8],
}

/// One time the writer left: the reference's time, the system time it was received at (both
/// Unix ns), and its leap field (0 none, 1 insert, 2 delete, 3 not synchronised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmSample {
    pub reference_ns: i128,
    pub received_ns: i128,
    pub leap: i32,
}

/// An attached segment.
pub struct ShmSegment {
    segment: ptr::NonNull<ShmTime>,
}

// The attachment is the process's, not a thread's; one task reads it.
// SAFETY: nothing here depends on the thread that attached it.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    /// Attaches the segment of `unit`, creating it with mode `perm` if it does not exist. A
    /// segment that others may write although `perm` allows no such thing (or that another
    /// user owns) is refused: whoever can write it sets this server's time.
    pub fn attach(unit: u32, perm: u32) -> io::Result<Self> {
        let key = SHM_KEY_BASE.wrapping_add(unit) as libc::key_t;
        // SAFETY: plain system calls; the size is the structure's.
        let id = unsafe {
            libc::shmget(key, size_of::<ShmTime>(), libc::IPC_CREAT | (perm & 0o777) as i32)
        };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid value of the structure, which the kernel then fills.
        let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut stat) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mode = u32::from(stat.shm_perm.mode) & 0o777;
        let owner = stat.shm_perm.uid;
        // SAFETY: always succeeds.
        let me = unsafe { libc::geteuid() };
        if perm & 0o022 == 0 && (mode & 0o022 != 0 || (owner != 0 && owner != me)) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "segment 0x{:08x} has mode {mode:04o} and owner uid {owner}: others could \
                     write the time (remove it with ipcrm -M 0x{:08x}, or allow it with perm=)",
                    key as u32, key as u32
                ),
            ));
        }
        // SAFETY: attaches the segment read-write at an address the kernel chooses.
        let address = unsafe { libc::shmat(id, ptr::null(), 0) };
        if address as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let segment = ptr::NonNull::new(address.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { segment })
    }

    /// The time the writer left since the last read, if a whole one is there; marks it read.
    pub fn read(&self) -> Option<ShmSample> {
        let segment = self.segment.as_ptr();
        // SAFETY: the segment is attached and as large as the structure; another process
        // writes it at any time, hence volatile reads and the writer's count to check against.
        let (time, count_after) = unsafe {
            let time = ptr::read_volatile(segment);
            (time, ptr::read_volatile(&raw const (*segment).count))
        };
        if time.valid == 0
            || !matches!(time.mode, 0 | 1)
            || (time.mode == 1 && time.count != count_after)
        {
            return None;
        }
        // SAFETY: as above.
        unsafe { ptr::write_volatile(&raw mut (*segment).valid, 0) };
        // Nanoseconds where the writer gave them (they agree with the microseconds).
        let nanoseconds = time.clock_nsec / 1000 == time.clock_usec as u32
            && time.receive_nsec / 1000 == time.receive_usec as u32;
        let ns = |sec: libc::time_t, usec: libc::c_int, nsec: libc::c_uint| {
            let fraction = if nanoseconds { i128::from(nsec) } else { i128::from(usec) * 1000 };
            i128::from(sec) * 1_000_000_000 + fraction
        };
        Some(ShmSample {
            reference_ns: ns(time.clock_sec, time.clock_usec, time.clock_nsec),
            received_ns: ns(time.receive_sec, time.receive_usec, time.receive_nsec),
            leap: time.leap,
        })
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: detaches what `attach` attached; nothing refers to it after.
        unsafe { libc::shmdt(self.segment.as_ptr().cast()) };
    }
}
