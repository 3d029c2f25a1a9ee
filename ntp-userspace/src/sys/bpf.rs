//! The BPF system calls aya does not make: the batch lookups and updates of the client table
//! (BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH), and the server page mapped into memory.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic,
};

use anyhow::{Context as _, anyhow};
use aya::maps::MapData;
use ntp_common::{
    maps::{Published, ServerPage},
    ratelimit::ClientRecord,
};

/// Whether a map could not be created for want of memory (the kernel preallocates a hash map's
/// elements, and refuses sizes it cannot).
pub fn is_allocation_failure(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOMEM | libc::E2BIG))
}

/// BPF_MAP_LOOKUP_BATCH's attributes (linux/bpf.h, `batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// One BPF_MAP_LOOKUP_BATCH call: fills `keys` and `values` from where `token` left off (the
/// start when `None`); returns how many it read and whether the map is exhausted.
pub fn lookup_batch(
    fd: i32,
    token: Option<[u8; 8]>,
    next_token: &mut [u8; 8],
    keys: &mut [[u8; 16]],
    values: &mut [ClientRecord],
) -> io::Result<(usize, bool)> {
    let in_token = token.unwrap_or_default();
    let mut attr = BatchAttr {
        in_batch: if token.is_some() { in_token.as_ptr() as u64 } else { 0 },
        out_batch: next_token.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the attribute points at buffers that hold `count` keys and values and an 8-byte
    // token (the kernel writes 4 for hash maps), all alive for the call.
    match unsafe { batch(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(()) => Ok((attr.count as usize, false)),
        // The last batch: `count` says how many it holds.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count as usize, true)),
        Err(error) => Err(error),
    }
}

/// One BPF_MAP_UPDATE_BATCH call: writes `values` under `keys`.
pub fn update_batch(fd: i32, keys: &[[u8; 16]], values: &[ClientRecord]) -> io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the attribute points at `count` keys and values, alive for the call; the kernel
    // only reads them.
    unsafe { batch(BPF_MAP_UPDATE_BATCH, &mut attr) }
}

/// The bpf(2) batch `command` with `attr`.
///
/// # Safety
/// Every pointer in `attr` is valid for what `command` reads and writes, for `count` entries.
unsafe fn batch(command: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the caller vouches for the attribute's pointers; its size is the kernel's.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, command, std::ptr::from_mut(attr), size_of::<BatchAttr>())
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The SERVER map's page, memory-mapped: publishing is two writes to memory, no system call,
/// and the program never sees a slot being written (see [`ServerPage`]).
pub struct MappedPage {
    page: NonNull<ServerPage>,
    len: usize,
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
}

impl MappedPage {
    pub fn new(map: MapData) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = size_of::<ServerPage>().div_ceil(page_size) * page_size;
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd shared, read-write, from offset 0 as
        // the kernel documents; the result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mapping the server page");
        }
        let page = NonNull::new(address.cast::<ServerPage>())
            .ok_or_else(|| anyhow!("mmap returned null"))?;
        Ok(Self { page, len, _map: map })
    }

    /// Another mapping of the same page, for a second writer (the tests race one against the
    /// program).
    pub fn try_clone(&self) -> anyhow::Result<Self> {
        let fd = self._map.fd().as_fd().try_clone_to_owned()?;
        Self::new(MapData::from_fd(fd)?)
    }

    /// Writes `published` into the slot not in use and switches to it, the sequence odd
    /// meanwhile (see [`ServerPage`]).
    pub fn publish(&mut self, published: &Published) {
        let page = self.page.as_ptr();
        // SAFETY: `page` maps a live ServerPage for as long as self exists; the program only
        // reads it.
        unsafe {
            let sequence = std::ptr::read_volatile(&raw const (*page).sequence);
            std::ptr::write_volatile(&raw mut (*page).sequence, sequence.wrapping_add(1));
            atomic::fence(atomic::Ordering::Release);
            let next = ((*page).active + 1) & 1;
            std::ptr::write_volatile(&raw mut (*page).slots[next as usize], *published);
            atomic::fence(atomic::Ordering::Release);
            std::ptr::write_volatile(&raw mut (*page).active, next);
            atomic::fence(atomic::Ordering::Release);
            std::ptr::write_volatile(&raw mut (*page).sequence, sequence.wrapping_add(2));
        }
    }
}

impl Drop for MappedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is owned by the MappedPage and only written through &mut self.
unsafe impl Send for MappedPage {}
