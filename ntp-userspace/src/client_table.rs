//! The client log seen from the daemon: the kernel's LRU table of client records, which the slow
//! path also writes (so that a client is limited alike whichever path serves it), and which the
//! reports read in bulk.
//!
//! The slow path keeps the records of the clients it serves in the daemon and writes them to the
//! kernel's table in batches (and every tick, and before a report reads the table): while a
//! client keeps sending, its requests cost the slow path no system call. A client the slow path
//! has not logged for a tick is forgotten, and on its next request read back from the kernel's
//! table, where the XDP program may have logged it meanwhile (a client served by both paths
//! within one tick has the program's updates of that tick written over).

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Mutex, RwLock},
};

use anyhow::Context as _;
use aya::maps::{HashMap, IterableMap as _, MapData};
use ntp_common::ratelimit::{ClientRecord, Limit};

use crate::{
    client_log::{ClientLog, ClientLogSettings, Cursor, address_of, key_of},
    random,
    sys::bpf::{lookup_batch, update_batch},
};

/// Records read with one system call: a page of `clients`.
const BATCH: usize = 8192;

/// The kernel's client table.
pub struct ClientTable {
    /// The slow path's clients, a client always in the same shard: the slow path's threads log
    /// different clients at once, and one client's read-modify-write is never interleaved with
    /// another thread's.
    shards: Vec<Mutex<Shard>>,
    /// How many clients a shard keeps before it writes them back and forgets them.
    shard_capacity: usize,
    settings: RwLock<ClientLogSettings>,
    capacity: u32,
}

/// A part of the slow path's clients, with its own handle of the kernel's table.
struct Shard {
    table: HashMap<MapData, [u8; 16], ClientRecord>,
    clients: StdHashMap<[u8; 16], SlowPathClient>,
    /// The clients logged since their records were last written to the kernel's table.
    pending: Vec<[u8; 16]>,
}

struct SlowPathClient {
    record: ClientRecord,
    /// In the shard's `pending`.
    pending: bool,
    /// Logged since the last tick.
    recent: bool,
}

/// How many clients' records a shard writes to the kernel's table at once: often enough that
/// a write costs the request that makes it little, seldom enough that each costs a request
/// next to nothing.
const WRITE_BACK_BATCH: usize = 128;

impl Shard {
    fn new(table: HashMap<MapData, [u8; 16], ClientRecord>) -> Self {
        Self { table, clients: StdHashMap::new(), pending: Vec::with_capacity(WRITE_BACK_BATCH) }
    }

    /// Logs `key`'s request and decides its fate.
    fn log(&mut self, key: [u8; 16], settings: &ClientLogSettings, timestamp: u32) -> Limit {
        let Self { table, clients, pending } = self;
        let client = clients.entry(key).or_insert_with(|| SlowPathClient {
            record: table.get(&key, 0).unwrap_or_else(|_| ClientRecord::new(&settings.limit)),
            pending: false,
            recent: false,
        });
        client.recent = true;
        client.record.log(timestamp, &settings.limit);
        let limit = client.record.limit(&settings.limit, random::next_u32);
        if !client.pending {
            client.pending = true;
            pending.push(key);
        }
        if pending.len() >= WRITE_BACK_BATCH {
            self.write_back();
        }
        limit
    }

    /// Writes the records logged since the last write to the kernel's table, in one system call.
    fn write_back(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(self.pending.len());
        for key in &self.pending {
            let client = self.clients.get_mut(key).expect("a pending client is kept");
            client.pending = false;
            records.push(client.record);
        }
        if let Err(error) = update_batch(map_fd(&self.table), &self.pending, &records) {
            tracing::warn!(%error, clients = records.len(), "cannot update the client log");
        }
        self.pending.clear();
    }

    /// Writes back, and forgets the clients not logged since the last call.
    fn expire(&mut self) {
        self.write_back();
        self.clients.retain(|_, client| std::mem::take(&mut client.recent));
    }
}

/// A client and its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub address: IpAddr,
    pub record: ClientRecord,
}

impl ClientTable {
    /// The table `map`, which holds `capacity` clients.
    pub fn new(map: MapData, settings: ClientLogSettings, capacity: u32) -> anyhow::Result<Self> {
        let shard = |map: MapData| {
            let table = HashMap::try_from(aya::maps::Map::LruHashMap(map))
                .context("the client table has an unexpected type")?;
            anyhow::Ok(Mutex::new(Shard::new(table)))
        };
        // One part a CPU, as the slow path has threads: they seldom wait for each other. (16
        // parts on this 2-CPU machine lost 2% of requests at 100k/s where 2 lost under 1%.)
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let mut shards = Vec::with_capacity(count);
        for _ in 1..count {
            let fd = map.fd().as_fd().try_clone_to_owned().context("duplicating the table's fd")?;
            shards.push(shard(MapData::from_fd(fd)?)?);
        }
        shards.insert(0, shard(map)?);
        let shard_capacity = (capacity as usize).div_ceil(count);
        Ok(Self { shards, shard_capacity, settings: RwLock::new(settings), capacity })
    }

    /// The shard of `key`'s client.
    fn shard(&self, key: &[u8; 16]) -> &Mutex<Shard> {
        let hash = key.iter().fold(0usize, |hash, &byte| hash.wrapping_mul(31) ^ usize::from(byte));
        &self.shards[hash % self.shards.len()]
    }

    /// Writes what the slow path logged since the last time to the kernel's table (the reports
    /// before they read).
    pub fn write_back(&self) {
        for shard in &self.shards {
            shard.lock().expect("client shard lock").write_back();
        }
    }

    /// Writes back, and forgets the slow path's clients not logged since the last call (the
    /// daemon's tick).
    pub fn expire(&self) {
        for shard in &self.shards {
            shard.lock().expect("client shard lock").expire();
        }
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
            records.iter_mut().for_each(reset_counts);
            update_batch(fd, keys, records).context("resetting client records")
        })?;
        for shard in &self.shards {
            let mut shard = shard.lock().expect("client shard lock");
            shard.clients.values_mut().for_each(|client| reset_counts(&mut client.record));
        }
        Ok(())
    }

    /// Calls `f` with one page of clients, from `after` on (None: the table's start); where
    /// the next page starts, None after the last. Clients come in the table's order; one logged
    /// between two pages may be missed, as in any walk of a live table.
    pub fn page(
        &self,
        after: Option<Cursor>,
        mut f: impl FnMut(Client),
    ) -> anyhow::Result<Option<Cursor>> {
        if after.is_none() {
            self.write_back();
        }
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
        self.write_back();
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
        map_fd(&self.shards[0].lock().expect("client shard lock").table)
    }

    /// The kernel's own account of the table's memory (its `memlock`), in bytes.
    pub fn memory(&self) -> Option<u64> {
        let fd = self.fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
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
        let mut shard = self.shard(&key).lock().expect("client shard lock");
        if shard.clients.len() >= self.shard_capacity && !shard.clients.contains_key(&key) {
            // Full: the records are in the kernel's table after this, and read back from it.
            shard.write_back();
            shard.clients.clear();
        }
        shard.log(key, &settings, settings.timestamp(received_tai_ns))
    }

    fn min_poll(&self) -> i8 {
        self.settings().limit.min_poll()
    }
}

fn reset_counts(record: &mut ClientRecord) {
    record.hits = 0;
    record.drops = 0;
    record.kods = 0;
}

fn map_fd(map: &HashMap<MapData, [u8; 16], ClientRecord>) -> i32 {
    map.map().fd().as_fd().as_raw_fd()
}
