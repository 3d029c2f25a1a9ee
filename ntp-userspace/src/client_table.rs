//! The client log seen from the daemon: the kernel's LRU table of client records, which the slow
//! path also writes (so that a client is limited alike whichever path serves it), and which the
//! reports read in bulk.

use std::{
    io,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Mutex, RwLock},
};

use anyhow::Context as _;
use aya::maps::{HashMap, IterableMap as _, MapData};
use ntp_common::{
    maps::client_key_v4,
    ratelimit::{self, ClientRecord, Limit, RateLimit},
};

/// How the client log logs and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLogSettings {
    pub enabled: bool,
    pub limit: RateLimit,
    /// CLOCK_TAI instant record timestamps count from.
    pub epoch_tai_ns: u64,
}

impl ClientLogSettings {
    /// The record timestamp of a CLOCK_TAI instant.
    pub fn timestamp(&self, tai_ns: u64) -> u32 {
        ratelimit::timestamp(tai_ns.wrapping_sub(self.epoch_tai_ns))
    }
}

/// Logs a client's request and decides its fate (the slow path's view of the client log).
pub trait ClientLog: Send + Sync {
    fn log(&self, client: IpAddr, received_tai_ns: u64) -> Limit;

    /// The least poll replies carry (see `RateLimit::min_poll`).
    fn min_poll(&self) -> i8;
}

/// No client log (`port 0`: nothing served, nothing logged).
pub struct NoClientLog;

impl ClientLog for NoClientLog {
    fn log(&self, _: IpAddr, _: u64) -> Limit {
        Limit::Answer
    }

    fn min_poll(&self) -> i8 {
        i8::MIN
    }
}

/// Records read with one system call: a page of `clients`.
const BATCH: usize = 8192;

/// A position in the client table between two pages (the kernel's batch token).
pub type Cursor = u64;

/// The kernel's client table.
pub struct ClientTable {
    /// Handles of the one table (each its own descriptor), a client's updates always through
    /// the same one: the slow path's threads log different clients at once, and one client's
    /// read-modify-write is never interleaved with another thread's.
    stripes: Vec<Mutex<HashMap<MapData, [u8; 16], ClientRecord>>>,
    settings: RwLock<ClientLogSettings>,
    capacity: u32,
}

/// A client and its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub address: IpAddr,
    pub record: ClientRecord,
}

impl ClientTable {
    /// The table `map`, with `stripes` handles for the threads that log clients.
    pub fn new(
        map: MapData,
        settings: ClientLogSettings,
        capacity: u32,
        stripes: usize,
    ) -> anyhow::Result<Self> {
        let handle = |map: MapData| {
            HashMap::try_from(aya::maps::Map::LruHashMap(map))
                .map(Mutex::new)
                .context("the client table has an unexpected type")
        };
        let mut handles = Vec::with_capacity(stripes.max(1));
        for _ in 1..stripes.max(1) {
            let fd = map.fd().as_fd().try_clone_to_owned().context("duplicating the table's fd")?;
            handles.push(handle(MapData::from_fd(fd)?)?);
        }
        handles.insert(0, handle(map)?);
        Ok(Self { stripes: handles, settings: RwLock::new(settings), capacity })
    }

    /// The handle for `key`'s updates; the first for walks.
    fn stripe(&self, key: &[u8; 16]) -> &Mutex<HashMap<MapData, [u8; 16], ClientRecord>> {
        let hash = key.iter().fold(0usize, |hash, &byte| hash.wrapping_mul(31) ^ usize::from(byte));
        &self.stripes[hash % self.stripes.len()]
    }

    pub fn settings(&self) -> ClientLogSettings {
        *self.settings.read().expect("settings lock")
    }

    pub fn set_settings(&self, settings: ClientLogSettings) {
        *self.settings.write().expect("settings lock") = settings;
    }

    /// How many clients the table holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every record, read in batches of many entries a system call.
    pub fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::new();
        self.visit(|client| clients.push(client))?;
        Ok(clients)
    }

    /// Calls `f` with every client, walking the table a batch at a time (nothing is
    /// collected).
    pub fn visit(&self, mut f: impl FnMut(Client)) -> anyhow::Result<()> {
        self.for_each_batch(|keys, records| {
            for (key, record) in keys.iter().zip(records.iter()) {
                f(Client { address: address_of(key), record: *record });
            }
            Ok(())
        })
    }

    /// Zeroes the request, drop and kiss-o'-death counts of every client (`clients -r`), a
    /// batch of records a system call each way. A request logged between a batch's read and
    /// its write is forgotten (its count and its share of the rate estimate).
    pub fn reset_counts(&self) -> anyhow::Result<()> {
        let fd = self.fd();
        self.for_each_batch(|keys, records| {
            for record in records.iter_mut() {
                record.hits = 0;
                record.drops = 0;
                record.kods = 0;
            }
            update_batch(fd, keys, records).context("resetting client records")
        })
    }

    /// Calls `f` with one page of clients, from `after` on (None: the table's start); where
    /// the next page starts, None after the last. Clients come in the table's order; one logged
    /// between two pages may be missed, as in any walk of a live table.
    pub fn page(
        &self,
        after: Option<Cursor>,
        mut f: impl FnMut(Client),
    ) -> anyhow::Result<Option<Cursor>> {
        self.batch(after, |keys, records| {
            for (key, record) in keys.iter().zip(records.iter()) {
                f(Client { address: address_of(key), record: *record });
            }
            Ok(())
        })
    }

    /// Walks the table in batches of many entries a system call, holding no lock: the slow
    /// path logs clients meanwhile.
    fn for_each_batch(
        &self,
        mut f: impl FnMut(&[[u8; 16]], &mut [ClientRecord]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut cursor = None;
        loop {
            cursor = self.batch(cursor, &mut f)?;
            if cursor.is_none() {
                return Ok(());
            }
        }
    }

    /// Calls `f` with one batch of records from `after` on; where the next batch starts.
    fn batch(
        &self,
        after: Option<Cursor>,
        mut f: impl FnMut(&[[u8; 16]], &mut [ClientRecord]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<Cursor>> {
        let mut keys = vec![[0u8; 16]; BATCH];
        let mut values = vec![ClientRecord::default(); BATCH];
        let mut next = [0u8; 8];
        let (count, done) =
            lookup_batch(self.fd(), after.map(u64::to_ne_bytes), &mut next, &mut keys, &mut values)
                .context("reading the client table")?;
        f(&keys[..count], &mut values[..count])?;
        Ok((!done).then(|| u64::from_ne_bytes(next)))
    }

    /// The map's descriptor, valid as long as the table.
    fn fd(&self) -> i32 {
        map_fd(&self.stripes[0].lock().expect("client table lock"))
    }

    /// The kernel's own account of the table's memory (its `memlock`), in bytes.
    pub fn memory(&self) -> Option<u64> {
        let map = self.stripes[0].lock().expect("client table lock");
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map_fd(&map))).ok()?;
        fdinfo.lines().find_map(|line| line.strip_prefix("memlock:")?.trim().parse().ok())
    }
}

impl ClientLog for ClientTable {
    fn log(&self, client: IpAddr, received_tai_ns: u64) -> Limit {
        let settings = self.settings();
        if !settings.enabled {
            return Limit::Answer;
        }
        let key = key_of(client);
        let mut map = self.stripe(&key).lock().expect("client table lock");
        let mut record = map.get(&key, 0).unwrap_or_else(|_| ClientRecord::new(&settings.limit));
        record.log(settings.timestamp(received_tai_ns), &settings.limit);
        let limit = record.limit(&settings.limit, rand_u32);
        if let Err(error) = map.insert(key, record, 0) {
            tracing::warn!(%error, %client, "cannot update the client log");
        }
        limit
    }

    fn min_poll(&self) -> i8 {
        self.settings().limit.min_poll()
    }
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // Rate limiting needs unpredictable, not cryptographic, bits; getrandom never fails for 4.
    // SAFETY: `bytes` is valid for writes of its length.
    let _ = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    u32::from_ne_bytes(bytes)
}

/// A client's key: IPv4 as IPv4-mapped IPv6, as the XDP program keys it.
pub fn key_of(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(a) => client_key_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn address_of(key: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*key);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn map_fd(map: &HashMap<MapData, [u8; 16], ClientRecord>) -> i32 {
    map.map().fd().as_fd().as_raw_fd()
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
fn lookup_batch(
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
fn update_batch(fd: i32, keys: &[[u8; 16]], values: &[ClientRecord]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_clients_are_keyed_as_mapped_addresses() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(key_of(v4)[10..], [0xff, 0xff, 192, 0, 2, 7]);
        assert_eq!(address_of(&key_of(v4)), v4);
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(address_of(&key_of(v6)), v6);
    }
}
