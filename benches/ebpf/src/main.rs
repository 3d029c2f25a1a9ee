//! The load benchmark's XDP programs.
//!
//! - `ntpx_gen` runs under BPF_PROG_TEST_RUN with live frames on the client's veth: it writes a
//!   whole, valid NTP request into every frame (pages are recycled, so a frame may hold a reply),
//!   from one of many client addresses and ports, with its send time (CLOCK_TAI ns, raw) as the
//!   transmit timestamp, and sends it with XDP_TX.
//! - `ntpx_count` on the same veth validates every reply (UDP checksum, mode 4, origin one of ours,
//!   sane server timestamps), records its latency and the NTP offset it gives (client and server
//!   share this machine's clock, so the offset is the served time's error), and drops it.
//! - `ntpx_reflect` on the server's veth only swaps addresses and ports and sends the frame back:
//!   the ceiling of the path.
//! - `ntpx_restore_and_call` restores a request in the frame, then tail-calls the program under
//!   measurement, so that every run of a repeated BPF_PROG_TEST_RUN sees a request.
//! - `ntpx_tx` answers XDP_TX at once: the baseline of the tail call.
//! - `stage_*` (in `stages`): one stage of ntpx's answer each, for the cost probe.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

mod stages;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_tai_ns},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use ntp_common::{checksum::fold, wire::UNIX_EPOCH_NTP_SECONDS};
use ntpx_bench_ebpf::{
    CounterConfig, GeneratorConfig, GeneratorState, HISTOGRAM_BUCKETS, bucket, count,
};

#[map]
static GEN_CONFIG: Array<GeneratorConfig> = Array::with_max_entries(1, 0);
#[map]
static GEN_STATE: PerCpuArray<GeneratorState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNT_CONFIG: Array<CounterConfig> = Array::with_max_entries(1, 0);
#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(count::COUNT, 0);
/// Reply latency (receive time minus the request's send time), ns.
#[map]
static LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(HISTOGRAM_BUCKETS, 0);
/// |NTP offset| of each reply, ns.
#[map]
static OFFSET: PerCpuArray<u64> = PerCpuArray::with_max_entries(HISTOGRAM_BUCKETS, 0);
/// The request `ntpx_restore_and_call` restores.
#[map]
static TEMPLATE: Array<[u16; FRAME_WORDS]> = Array::with_max_entries(1, 0);
#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// IPv4 request frame layout, in 16-bit words.
const FRAME_WORDS: usize = 45;
const IP: usize = 7;
const UDP: usize = IP + 10;
const NTP: usize = UDP + 4;

#[inline(always)]
fn frame(ctx: &XdpContext) -> Option<&'static mut [u16; FRAME_WORDS]> {
    let start = ctx.data();
    // SAFETY: ctx.ctx points to the program's context for the whole run.
    let end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    if start + size_of::<[u16; FRAME_WORDS]>() > end {
        return None;
    }
    // SAFETY: the bounds are checked; frames start 2-byte aligned.
    Some(unsafe { &mut *(start as *mut [u16; FRAME_WORDS]) })
}

#[inline(always)]
fn words(value: u32) -> [u16; 2] {
    let b = value.to_be_bytes();
    [u16::from_ne_bytes([b[0], b[1]]), u16::from_ne_bytes([b[2], b[3]])]
}

#[xdp]
pub fn ntpx_gen(ctx: XdpContext) -> u32 {
    let (Some(config), Some(state), Some(f)) =
        (GEN_CONFIG.get(0), GEN_STATE.get_ptr_mut(0), frame(&ctx))
    else {
        return XDP_ABORTED;
    };
    // SAFETY: a per-CPU value of this CPU.
    let state = unsafe { &mut *state };
    // SAFETY: a helper without arguments.
    let sent = unsafe { bpf_ktime_get_tai_ns() };
    if config.interval_ns != 0 {
        if sent < state.next_tai_ns {
            return XDP_DROP;
        }
        let earliest = sent.saturating_sub(config.burst * config.interval_ns);
        state.next_tai_ns = state.next_tai_ns.max(earliest) + config.interval_ns;
    }
    state.sequence += 1;
    state.sent += 1;
    let n = state.sequence;
    let client = config.first_client.wrapping_add((n as u32) & (config.clients - 1));
    let port = (1024 + ((n >> config.clients.trailing_zeros()) & 0x7fff) as u16).to_be();
    let client_words = words(client);
    let sent_words = [words((sent >> 32) as u32), words(sent as u32)];

    f[..6].copy_from_slice(&config.macs);
    f[6] = u16::from_ne_bytes([0x08, 0x00]);
    f[IP..IP + 10].copy_from_slice(&[
        u16::from_ne_bytes([0x45, 0]),
        76u16.to_be(),
        0,
        0x4000u16.to_be(),
        u16::from_ne_bytes([64, 17]),
        0,
        client_words[0],
        client_words[1],
        config.server_ip[0],
        config.server_ip[1],
    ]);
    let ip_sum = u64::from(config.ip_sum) + u64::from(client_words[0]) + u64::from(client_words[1]);
    f[IP + 5] = !fold(ip_sum);
    f[UDP..UDP + 4].copy_from_slice(&[port, config.server_port.to_be(), 56u16.to_be(), 0]);
    // A client request: LI 0, version 4, mode 3, poll 6; the rest zero but the transmit time.
    f[NTP] = u16::from_ne_bytes([0x23, 0]);
    f[NTP + 1] = u16::from_ne_bytes([6, 0]);
    f[NTP + 2..NTP + 20].copy_from_slice(&[0; 18]);
    f[NTP + 20..NTP + 22].copy_from_slice(&sent_words[0]);
    f[NTP + 22..NTP + 24].copy_from_slice(&sent_words[1]);
    let udp_sum = u64::from(config.udp_sum)
        + u64::from(client_words[0])
        + u64::from(client_words[1])
        + u64::from(port)
        + sent_words.iter().flatten().map(|w| u64::from(*w)).sum::<u64>();
    f[UDP + 3] = match !fold(udp_sum) {
        0 => 0xffff,
        checksum => checksum,
    };
    XDP_TX
}

/// An NTP 32.32 timestamp (four words of big-endian bytes) as Unix ns.
#[inline(always)]
fn ntp_to_unix_ns(w: &[u16]) -> i64 {
    let b = |i: usize| w[i].to_ne_bytes();
    let (b0, b1, b2, b3) = (b(0), b(1), b(2), b(3));
    let seconds = u32::from_be_bytes([b0[0], b0[1], b1[0], b1[1]]) as u64;
    let fraction = u32::from_be_bytes([b2[0], b2[1], b3[0], b3[1]]) as u64;
    let nanos = (fraction * 1_000_000_000) >> 32;
    (seconds.wrapping_sub(UNIX_EPOCH_NTP_SECONDS) * 1_000_000_000 + nanos) as i64
}

/// The raw 64-bit value of four words of big-endian bytes.
#[inline(always)]
fn raw64(w: &[u16]) -> u64 {
    let b = |i: usize| w[i].to_ne_bytes();
    let (b0, b1, b2, b3) = (b(0), b(1), b(2), b(3));
    u64::from_be_bytes([b0[0], b0[1], b1[0], b1[1], b2[0], b2[1], b3[0], b3[1]])
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(value) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU value of this CPU.
        unsafe { *value += 1 };
    }
}

#[xdp]
pub fn ntpx_count(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let received = unsafe { bpf_ktime_get_tai_ns() };
    let (Some(config), Some(f)) = (COUNT_CONFIG.get(0), frame(&ctx)) else {
        return XDP_PASS;
    };
    let client = u32::from_be_bytes({
        let (a, b) = (f[IP + 8].to_ne_bytes(), f[IP + 9].to_ne_bytes());
        [a[0], a[1], b[0], b[1]]
    });
    if f[6] != u16::from_ne_bytes([0x08, 0x00])
        || f[IP + 4].to_ne_bytes()[1] != 17
        || f[UDP] != config.server_port.to_be()
        || client.wrapping_sub(config.first_client) >= config.clients
    {
        return XDP_PASS;
    }
    match verdict(config, f, received) {
        Some(Reply::Time { latency, offset }) => {
            bump(&COUNTS, count::VALID);
            bump(&LATENCY, bucket(latency));
            if offset < 0 {
                bump(&COUNTS, count::NEGATIVE_OFFSET);
            }
            bump(&OFFSET, bucket(offset.unsigned_abs()));
        }
        Some(Reply::KissOfDeath) => bump(&COUNTS, count::KISS_OF_DEATH),
        None => bump(&COUNTS, count::INVALID),
    }
    XDP_DROP
}

enum Reply {
    Time { latency: u64, offset: i64 },
    KissOfDeath,
}

#[inline(always)]
fn verdict(config: &CounterConfig, f: &mut [u16; FRAME_WORDS], received: u64) -> Option<Reply> {
    if f[IP] != u16::from_ne_bytes([0x45, 0])
        || f[IP + 1] != 76u16.to_be()
        || f[UDP + 2] != 56u16.to_be()
    {
        return None;
    }
    let pseudo =
        [f[IP + 6], f[IP + 7], f[IP + 8], f[IP + 9], u16::from_ne_bytes([0, 17]), 56u16.to_be()];
    let pseudo_sum: u64 = pseudo.iter().map(|w| u64::from(*w)).sum();
    // SAFETY: the frame holds the 56-byte datagram (bounds checked by frame()).
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            f[UDP..].as_mut_ptr().cast(),
            56,
            fold(pseudo_sum).into(),
        )
    };
    if fold(sum as u32 as u64) != 0xffff {
        return None;
    }
    let [first, stratum] = f[NTP].to_ne_bytes();
    let (version, mode) = ((first >> 3) & 7, first & 7);
    if config.reflector != 0 {
        // The reflected request: its own transmit field holds the send time.
        let sent = raw64(&f[NTP + 20..NTP + 24]);
        return (mode == 3 && version == 4 && sent <= received && received - sent < 5_000_000_000)
            .then_some(Reply::Time { latency: received - sent, offset: 0 });
    }
    if mode != 4 || version != 4 {
        return None;
    }
    let sent = raw64(&f[NTP + 12..NTP + 16]);
    if sent > received || received - sent > 5_000_000_000 {
        return None;
    }
    if stratum == 0
        && f[NTP + 6] == u16::from_ne_bytes(*b"RA")
        && f[NTP + 7] == u16::from_ne_bytes(*b"TE")
    {
        return Some(Reply::KissOfDeath);
    }
    let server_receive = ntp_to_unix_ns(&f[NTP + 16..NTP + 20]);
    let server_transmit = ntp_to_unix_ns(&f[NTP + 20..NTP + 24]);
    let client_send = sent as i64 + config.utc_minus_tai_ns;
    let client_receive = received as i64 + config.utc_minus_tai_ns;
    // The server's instants lie within the exchange (1 us of slack for rounding).
    if server_transmit < server_receive
        || server_receive < client_send - 1_000
        || server_transmit > client_receive + 1_000
    {
        return None;
    }
    let offset = ((server_receive - client_send) + (server_transmit - client_receive)) / 2;
    Some(Reply::Time { latency: received - sent, offset })
}

#[xdp]
pub fn ntpx_reflect(ctx: XdpContext) -> u32 {
    let Some(f) = frame(&ctx) else {
        return XDP_PASS;
    };
    if f[6] != u16::from_ne_bytes([0x08, 0x00]) || f[IP + 4].to_ne_bytes()[1] != 17 {
        return XDP_PASS;
    }
    let macs = [f[3], f[4], f[5], f[0], f[1], f[2]];
    f[..6].copy_from_slice(&macs);
    let addresses = [f[IP + 8], f[IP + 9], f[IP + 6], f[IP + 7]];
    f[IP + 6..IP + 10].copy_from_slice(&addresses);
    let ports = [f[UDP + 1], f[UDP]];
    f[UDP..UDP + 2].copy_from_slice(&ports);
    XDP_TX
}

#[xdp]
pub fn ntpx_restore_and_call(ctx: XdpContext) -> u32 {
    let (Some(template), Some(f)) = (TEMPLATE.get(0), frame(&ctx)) else {
        return XDP_ABORTED;
    };
    *f = *template;
    // SAFETY: TARGET holds an XDP program; on failure the run is aborted.
    unsafe { TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

#[xdp]
pub fn ntpx_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[xdp]
pub fn ntpx_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
