//! Stage probes: each does one stage of ntpx's answer as ntpx's program does it, on maps shaped
//! like its own, so that the cost probe can say where an answer's time goes. What the stages
//! do not cover (parsing, the header checks, writing the reply) is the answer's cost less
//! theirs.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_NOEXIST, xdp_action::XDP_TX},
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_tai_ns},
    macros::{map, xdp},
    maps::{LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use ntp_common::{
    maps::{MAX_ACCESS_RULES, client_key_v4},
    ratelimit::{ClientRecord, RateLimit},
};
use ntpx_bench_ebpf::stages::{CLIENT_LOG_CAPACITY, COUNTERS};

use crate::{IP, UDP, frame};

/// The access rules, filled by the host as the cost probe's ntpxd has them.
#[map]
static STAGE_ACCESS: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
/// A client log like ntpx's: a hash table with one LRU list for all CPUs.
#[map]
static STAGE_CLIENTS: LruHashMap<[u8; 16], ClientRecord> =
    LruHashMap::with_max_entries(CLIENT_LOG_CAPACITY, 0);
/// The same with an LRU list per CPU (BPF_F_NO_COMMON_LRU).
#[map]
static STAGE_CLIENTS_PER_CPU_LRU: LruHashMap<[u8; 16], ClientRecord> =
    LruHashMap::with_max_entries(CLIENT_LOG_CAPACITY, BPF_F_NO_COMMON_LRU);
/// Counters, and the sequence that numbers new clients.
#[map]
static STAGE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

const NEW_CLIENT_SEQUENCE: u32 = COUNTERS - 1;

/// The two CLOCK_TAI reads of an answer (receive first, transmit last).
#[xdp]
pub fn stage_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: helpers without arguments.
    let (receive, transmit) = unsafe { (bpf_ktime_get_tai_ns(), bpf_ktime_get_tai_ns()) };
    bump(0, transmit.wrapping_sub(receive));
    XDP_TX
}

/// The request's checksum check: one sum over the UDP datagram. (The reply's checksum is
/// summed from the words as they are written, a few additions, and has no stage of its own.)
#[xdp]
pub fn stage_checksum(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else { return XDP_TX };
    let datagram = f[UDP..].as_mut_ptr().cast::<u32>();
    let len = (2 * (f.len() - UDP)) as u32;
    // SAFETY: `datagram` is `len` bytes of the frame, whose bounds frame() checked.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, datagram, len, 0) };
    bump(0, sum as u64);
    XDP_TX
}

/// The access decision: the client's address looked up in the IPv4 trie.
#[xdp]
pub fn stage_access(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else { return XDP_TX };
    let decision = STAGE_ACCESS.get(Key::new(32, source(f))).copied().unwrap_or(0);
    bump(0, u64::from(decision));
    XDP_TX
}

/// A known client's record found and updated (the client log's lookup, as for a returning
/// client).
#[xdp]
pub fn stage_client_known(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else { return XDP_TX };
    if let Some(record) = STAGE_CLIENTS.get_ptr_mut(client_key_v4(source(f))) {
        // SAFETY: a map value, valid while the program runs.
        let record = unsafe { &mut *record };
        record.hits = record.hits.wrapping_add(1);
    }
    XDP_TX
}

/// A new client's record created in a full table (an eviction), with one LRU list for all CPUs.
#[xdp]
pub fn stage_client_new(_ctx: XdpContext) -> u32 {
    insert_new_client(&STAGE_CLIENTS);
    XDP_TX
}

/// As `stage_client_new`, with an LRU list per CPU.
#[xdp]
pub fn stage_client_new_per_cpu_lru(_ctx: XdpContext) -> u32 {
    insert_new_client(&STAGE_CLIENTS_PER_CPU_LRU);
    XDP_TX
}

/// The two counters an answer bumps.
#[xdp]
pub fn stage_counters(_ctx: XdpContext) -> u32 {
    bump(0, 1);
    bump(1, 1);
    XDP_TX
}

#[inline(always)]
fn insert_new_client(clients: &LruHashMap<[u8; 16], ClientRecord>) {
    let Some(sequence) = STAGE_COUNTERS.get_ptr_mut(NEW_CLIENT_SEQUENCE) else { return };
    // SAFETY: a per-CPU value, touched only by this CPU while the program runs.
    let n = unsafe {
        *sequence += 1;
        *sequence
    };
    let key = client_key_v4((n as u32).to_be_bytes());
    let _ = clients.insert(key, ClientRecord::new(&RateLimit::DISABLED), u64::from(BPF_NOEXIST));
}

/// The request's source address.
#[inline(always)]
fn source(f: &[u16; crate::FRAME_WORDS]) -> [u8; 4] {
    let (a, b) = (f[IP + 6].to_ne_bytes(), f[IP + 7].to_ne_bytes());
    [a[0], a[1], b[0], b[1]]
}

#[inline(always)]
fn bump(counter: u32, by: u64) {
    if let Some(value) = STAGE_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU value, touched only by this CPU while the program runs.
        unsafe { *value = (*value).wrapping_add(by) };
    }
}
