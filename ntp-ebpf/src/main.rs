//! ntpx's XDP program: answers plain NTP client requests in place with XDP_TX and passes
//! everything else to the kernel, where ntpxd's socket (the slow path) sees it.
//!
//! It answers only what it can answer completely and correctly: Ethernet with at most one
//! 802.1Q tag; IPv4 (options are stripped from the reply) or IPv6 without extension headers; UDP
//! to the served port with a valid checksum; exactly 48 bytes of NTP, mode 3, version 1-4; sent
//! from a unicast address the access rules admit to one of this host's addresses; while the
//! daemon's published state is fresh. A reply is never longer than its request. The time served
//! is chosen by the destination address, in the same walk that finds it local: true UTC, or
//! leap-smeared time for the addresses `leapsmear` names.
//!
//! The rules are those of `ntp_common::responder`, the oracle the tests compare this program
//! with. The code reads and writes packets in aligned 16-bit words, and everything it needs per
//! request sits in one memory-mapped page: a request after a quiet spell finds little in cache.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::{
        bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_tai_ns, bpf_xdp_adjust_head,
    },
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use core::ptr::read_volatile;

use ntp_common::{
    admission::{self, Addressing, WireAddress},
    checksum::fold,
    maps::{
        ACCESS_ALLOW, Counter, MAX_ACCESS_RULES, Published, ServerPage, TimeModel, client_key_v4,
    },
    ratelimit::{self, ClientRecord, Limit},
    responder,
    state::ServerState,
    wire::{self, Leap, Mode, ReferenceId},
};

#[map]
static SERVER: Array<ServerPage> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static ACCESS_V4_A: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
#[map]
static ACCESS_V4_B: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
#[map]
static ACCESS_V6_A: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
#[map]
static ACCESS_V6_B: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
/// Sized by the daemon at load time.
#[map]
static CLIENTS: LruHashMap<[u8; 16], ClientRecord> = LruHashMap::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Header sizes in 16-bit words.
const ETH_WORDS: usize = 7;
const VLAN_WORDS: usize = 2;
const IPV4_WORDS: usize = 10;
const IPV6_WORDS: usize = 20;
const UDP_WORDS: usize = 4;
const NTP_WORDS: usize = wire::HEADER_LEN / 2;
/// UDP header and a plain NTP header: the only datagram answered here.
const DATAGRAM_WORDS: usize = UDP_WORDS + NTP_WORDS;
const DATAGRAM_LEN: u16 = 2 * DATAGRAM_WORDS as u16;
const IPPROTO_UDP: u8 = 17;
/// Beyond every header this program reads (Ethernet, a tag, IPv4 with options, UDP, NTP).
const MAX_PACKET_OFFSET: usize = 512;
const REPLY_TTL: u8 = 64;

/// A 16-bit word as it lies in the packet (network byte order), read as a native integer.
/// Checksums are summed over such words (RFC 1071: the sum is byte-order independent).
const fn word(bytes: [u8; 2]) -> u16 {
    u16::from_ne_bytes(bytes)
}

const ETH_P_IP: u16 = word([0x08, 0x00]);
const ETH_P_IPV6: u16 = word([0x86, 0xdd]);
const ETH_P_8021Q: u16 = word([0x81, 0x00]);

/// Why a datagram to the NTP port is not answered: the counter to bump, which also decides
/// between passing it to the kernel and dropping it.
type Refusal = Counter;

#[xdp]
pub fn ntpx(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let receive_tai_ns = unsafe { bpf_ktime_get_tai_ns() };
    match try_ntpx(&ctx, receive_tai_ns) {
        Ok(action) => action,
        Err(()) => XDP_PASS,
    }
}

/// Passes every frame. A veth delivers XDP_TX frames to its peer at once only when the peer
/// runs an XDP program too; attached to the peer, this one makes ntpx's replies leave on time
/// (containers, test namespaces).
#[xdp]
pub fn ntpx_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Finds UDP datagrams to the NTP port; everything else is passed untouched and uncounted.
#[inline(always)]
fn try_ntpx(ctx: &XdpContext, receive_tai_ns: u64) -> Result<u32, ()> {
    let page = SERVER.get(0).ok_or(())?;
    // SAFETY: reads of the map's value, valid while the program runs.
    let (sequence, active) =
        unsafe { (read_volatile(&page.sequence), read_volatile(&page.active)) };
    let snapshot = Snapshot { page, published: &page.slots[(active & 1) as usize], sequence };
    let eth: *mut [u16; ETH_WORDS] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let mut ether_type = unsafe { (*eth)[6] };
    let mut l3 = 2 * ETH_WORDS;
    if ether_type == ETH_P_8021Q {
        let tag: *const [u16; VLAN_WORDS] = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds.
        ether_type = unsafe { (*tag)[1] };
        l3 += 2 * VLAN_WORDS;
    }
    let outcome = if ether_type == ETH_P_IP {
        ipv4(ctx, &snapshot, l3, receive_tai_ns)?
    } else if ether_type == ETH_P_IPV6 {
        ipv6(ctx, &snapshot, l3, receive_tai_ns)?
    } else {
        return Ok(XDP_PASS);
    };
    // An answer was counted before its transmit timestamp was taken (see write_reply).
    Ok(match outcome {
        Ok(()) => XDP_TX,
        Err(refusal) => {
            count(Counter::Received);
            count(refusal);
            match refusal {
                Counter::DroppedDenied | Counter::DroppedRateLimit => XDP_DROP,
                _ => XDP_PASS,
            }
        }
    })
}

/// `Err(())`: not a UDP datagram to the NTP port. `Ok(Ok(_))`: the reply is in place.
#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    snapshot: &Snapshot<'_>,
    l3: usize,
    receive_tai_ns: u64,
) -> Result<Result<(), Refusal>, ()> {
    let ip: *mut [u16; IPV4_WORDS] = ptr_at(ctx, l3)?;
    // SAFETY: ptr_at checked the bounds of the fixed header.
    let header = unsafe { *ip };
    let [version_ihl, _] = header[0].to_ne_bytes();
    let [_, protocol] = header[4].to_ne_bytes();
    let flags_fragment = u16::from_be(header[3]);
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 2 * IPV4_WORDS || protocol != IPPROTO_UDP {
        return Err(());
    }
    // A later fragment carries no UDP header, so it cannot be recognised as NTP.
    if flags_fragment & 0x1fff != 0 {
        return Err(());
    }
    let l4 = l3 + header_len;
    let udp: *mut [u16; UDP_WORDS] = ptr_at(ctx, l4)?;
    // SAFETY: ptr_at checked the bounds.
    if unsafe { (*udp)[1] } != snapshot.published.port.to_be() {
        return Err(());
    }
    Ok(serve_ipv4(ctx, snapshot, l3, &header, receive_tai_ns))
}

#[inline(always)]
fn serve_ipv4(
    ctx: &XdpContext,
    snapshot: &Snapshot<'_>,
    l3: usize,
    header: &[u16; IPV4_WORDS],
    receive_tai_ns: u64,
) -> Result<(), Refusal> {
    let published = snapshot.published;
    const MORE_FRAGMENTS: u16 = 0x2000;
    if u16::from_be(header[3]) & MORE_FRAGMENTS != 0 {
        return Err(Counter::PassedFragment);
    }
    let header_len = usize::from(header[0].to_ne_bytes()[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be(header[1]));
    if total_len != frame_len(ctx) - l3
        || fold(ipv4_header_sum(ctx, l3, header, header_len)) != 0xffff
    {
        return Err(Counter::PassedMalformed);
    }
    let l4 = l3 + header_len;
    let dgram = check_datagram(ctx, l4, total_len - header_len)?;
    let (src, dst) = ([header[6], header[7]], [header[8], header[9]]);
    let addressing = Addressing {
        source: WireAddress::V4(u32_of(src).to_ne_bytes()),
        // SAFETY: check_datagram checked the bounds of the whole datagram.
        source_port: u16::from_be(unsafe { (*dgram)[0] }),
        destination: WireAddress::V4(u32_of(dst).to_ne_bytes()),
        on_loopback: arrived_on_loopback(ctx),
    };
    let model = local_model(published, &addressing.destination).ok_or(Counter::PassedAddress)?;
    if admission::check_beyond_destination(&addressing, |a| local_model(published, a).is_some())
        .is_err()
        || !is_unicast_frame(ctx)?
    {
        return Err(Counter::PassedAddress);
    }
    let pseudo =
        sum(&src) + sum(&dst) + u64::from(word([0, IPPROTO_UDP])) + u64::from(DATAGRAM_LEN.to_be());
    // SAFETY: check_datagram checked the bounds of the whole datagram.
    let checksum = unsafe { (*dgram)[3] };
    // IPv4 allows a datagram without a checksum (zero).
    if checksum != 0 && !datagram_checksum_ok(dgram, pseudo) {
        return Err(Counter::PassedChecksum);
    }
    let src_bytes = u32_of(src).to_ne_bytes();
    let admitted_by_rules = || {
        let key = Key::new(32, src_bytes);
        let access = if published.access_slot() == 0 {
            ACCESS_V4_A.get(&key)
        } else {
            ACCESS_V4_B.get(&key)
        };
        access == Some(&ACCESS_ALLOW)
    };
    let (state, received, answer) = admit_and_log(
        published,
        model,
        &client_key_v4(src_bytes),
        receive_tai_ns,
        admitted_by_rules,
    )?;
    let min_poll = snapshot.last_reads()?;

    let l2 = read_l2(ctx, l3)?;
    let options_len = header_len - 2 * IPV4_WORDS;
    if options_len > 0 {
        // Strip the options: the reply's Ethernet and IP headers move up next to UDP.
        // SAFETY: shrinking the head by options_len (< total length) keeps the frame valid.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, options_len as i32) } != 0 {
            return Err(Counter::PassedMalformed);
        }
    }
    write_l2(ctx, &l2, l3)?;
    let ip: *mut [u16; IPV4_WORDS] = ptr_at(ctx, l3).map_err(|()| Counter::PassedMalformed)?;
    let mut reply = [
        word([0x45, 0]),
        (2 * IPV4_WORDS as u16 + DATAGRAM_LEN).to_be(),
        0,
        0x4000u16.to_be(), // don't fragment
        word([REPLY_TTL, IPPROTO_UDP]),
        0,
        dst[0],
        dst[1],
        src[0],
        src[1],
    ];
    reply[5] = !fold(sum(&reply));
    // SAFETY: ptr_at checked the bounds.
    unsafe { *ip = reply };
    let dgram: *mut [u16; DATAGRAM_WORDS] =
        ptr_at(ctx, l3 + 2 * IPV4_WORDS).map_err(|()| Counter::PassedMalformed)?;
    write_reply(dgram, pseudo, min_poll, &state, received, answer);
    Ok(())
}

/// `Err(())`: not a UDP datagram to the NTP port (extension headers are not followed).
#[inline(always)]
fn ipv6(
    ctx: &XdpContext,
    snapshot: &Snapshot<'_>,
    l3: usize,
    receive_tai_ns: u64,
) -> Result<Result<(), Refusal>, ()> {
    let ip: *mut [u16; IPV6_WORDS] = ptr_at(ctx, l3)?;
    // SAFETY: ptr_at checked the bounds.
    let (first, next_header) = unsafe { ((*ip)[0].to_ne_bytes()[0], (*ip)[3].to_ne_bytes()[0]) };
    if first >> 4 != 6 || next_header != IPPROTO_UDP {
        return Err(());
    }
    let udp: *mut [u16; UDP_WORDS] = ptr_at(ctx, l3 + 2 * IPV6_WORDS)?;
    // SAFETY: ptr_at checked the bounds.
    if unsafe { (*udp)[1] } != snapshot.published.port.to_be() {
        return Err(());
    }
    Ok(serve_ipv6(ctx, snapshot, l3, ip, receive_tai_ns))
}

#[inline(always)]
fn serve_ipv6(
    ctx: &XdpContext,
    snapshot: &Snapshot<'_>,
    l3: usize,
    ip: *mut [u16; IPV6_WORDS],
    receive_tai_ns: u64,
) -> Result<(), Refusal> {
    let published = snapshot.published;
    // SAFETY: the caller checked the bounds of the header.
    let header = unsafe { &mut *ip };
    let payload_len = usize::from(u16::from_be(header[2]));
    if payload_len != frame_len(ctx) - l3 - 2 * IPV6_WORDS {
        return Err(Counter::PassedMalformed);
    }
    let dgram = check_datagram(ctx, l3 + 2 * IPV6_WORDS, payload_len)?;
    let mut src = [0u16; 8];
    let mut dst = [0u16; 8];
    src.copy_from_slice(&header[4..12]);
    dst.copy_from_slice(&header[12..20]);
    let addressing = Addressing {
        source: WireAddress::V6(bytes16(&src)),
        // SAFETY: check_datagram checked the bounds of the whole datagram.
        source_port: u16::from_be(unsafe { (*dgram)[0] }),
        destination: WireAddress::V6(bytes16(&dst)),
        on_loopback: arrived_on_loopback(ctx),
    };
    let model = local_model(published, &addressing.destination).ok_or(Counter::PassedAddress)?;
    if admission::check_beyond_destination(&addressing, |a| local_model(published, a).is_some())
        .is_err()
        || !is_unicast_frame(ctx)?
    {
        return Err(Counter::PassedAddress);
    }
    let pseudo =
        sum(&src) + sum(&dst) + u64::from(word([0, IPPROTO_UDP])) + u64::from(DATAGRAM_LEN.to_be());
    // IPv6 requires the UDP checksum: zero is invalid.
    // SAFETY: check_datagram checked the bounds of the whole datagram.
    if unsafe { (*dgram)[3] } == 0 || !datagram_checksum_ok(dgram, pseudo) {
        return Err(Counter::PassedChecksum);
    }
    let src_bytes = bytes16(&src);
    let admitted_by_rules = || {
        let key = Key::new(128, src_bytes);
        let access = if published.access_slot() == 0 {
            ACCESS_V6_A.get(&key)
        } else {
            ACCESS_V6_B.get(&key)
        };
        access == Some(&ACCESS_ALLOW)
    };
    let (state, received, answer) =
        admit_and_log(published, model, &src_bytes, receive_tai_ns, admitted_by_rules)?;
    let min_poll = snapshot.last_reads()?;

    let l2 = read_l2(ctx, l3)?;
    write_l2(ctx, &l2, l3)?;
    header[0] = word([0x60, 0]);
    header[1] = 0;
    header[3] = word([IPPROTO_UDP, REPLY_TTL]);
    header[4..12].copy_from_slice(&dst);
    header[12..20].copy_from_slice(&src);
    write_reply(dgram, pseudo, min_poll, &state, received, answer);
    Ok(())
}

/// Checks that the `len` bytes at `l4` (as the IP header says) are a UDP datagram around exactly
/// an NTP client request of a served version, and returns it.
#[inline(always)]
fn check_datagram(
    ctx: &XdpContext,
    l4: usize,
    len: usize,
) -> Result<*mut [u16; DATAGRAM_WORDS], Refusal> {
    let udp: *const [u16; UDP_WORDS] = ptr_at(ctx, l4).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let udp_len = usize::from(u16::from_be(unsafe { (*udp)[2] }));
    if udp_len != len || udp_len < 2 * UDP_WORDS {
        return Err(Counter::PassedMalformed);
    }
    if udp_len != usize::from(DATAGRAM_LEN) {
        return Err(Counter::PassedLength);
    }
    let dgram: *mut [u16; DATAGRAM_WORDS] =
        ptr_at(ctx, l4).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds of the whole datagram.
    let first = unsafe { (*dgram)[UDP_WORDS] }.to_ne_bytes()[0];
    let (_, version, mode) = wire::split_li_vn_mode(first);
    if mode != Mode::Client || !wire::is_served_version(version) {
        return Err(Counter::PassedNotRequest);
    }
    Ok(dgram)
}

/// A frame sent to a group MAC address is not for this server alone to answer.
#[inline(always)]
fn is_unicast_frame(ctx: &XdpContext) -> Result<bool, Refusal> {
    let eth: *const [u16; ETH_WORDS] = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let (destination, source) = unsafe { ((*eth)[0], (*eth)[3]) };
    // The group bit: a multicast destination, or a source MAC no frame may carry.
    Ok((destination | source).to_ne_bytes()[0] & 1 == 0)
}

/// The published state of `model`, if fresh at the receive instant, and the time elapsed since
/// its anchor. A copy, read once: the reply is written from it after the page's sequence is
/// checked.
#[inline(always)]
fn fresh_state(
    published: &Published,
    model: TimeModel,
    receive_tai_ns: u64,
) -> Result<(ServerState, u64), Refusal> {
    // SAFETY: a read of the map's value, valid while the program runs.
    let state = unsafe { read_volatile(published.state_of(model)) };
    let received = state.elapsed_ns(receive_tai_ns).ok_or(Counter::PassedStale)?;
    Ok((state, received))
}

/// The page as this run found it: `published` is the slot that was active when `sequence` was
/// read.
struct Snapshot<'a> {
    page: &'a ServerPage,
    published: &'a Published,
    sequence: u32,
}

impl Snapshot<'_> {
    /// The last read from the page (the reply's minimum poll), then the check that the daemon
    /// did not republish since the run began: if it did, the slot read may have been rewritten
    /// under it (two switches), and the request goes to the slow path as if the state were
    /// stale. Reads are not reordered on x86; the volatile ones not by the compiler either.
    #[inline(always)]
    fn last_reads(&self) -> Result<i8, Refusal> {
        // SAFETY: reads of the map's value, valid while the program runs.
        let (limit, sequence) =
            unsafe { (read_volatile(&self.published.limit), read_volatile(&self.page.sequence)) };
        if sequence != self.sequence {
            return Err(Counter::PassedStale);
        }
        Ok(limit.min_poll())
    }
}

/// What a request is answered with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Time,
    KissOfDeath,
}

/// Admits the client (`key`) by the access rules, then logs it and applies its rate limit:
/// the state to answer with (`model`'s), the time since its anchor, and the answer. A client
/// whose record says it was admitted under the rules in use skips the trie
/// (`admitted_by_rules`); a new client is admitted before its record is made, so that denied
/// sources never fill the log.
/// A stale state passes the request on before it is logged: the slow path logs it.
#[inline(always)]
fn admit_and_log(
    published: &Published,
    model: TimeModel,
    key: &[u8; 16],
    receive_tai_ns: u64,
    admitted_by_rules: impl FnOnce() -> bool,
) -> Result<(ServerState, u64, Answer), Refusal> {
    let generation = published.access_generation;
    let record = if published.client_log != 0 { CLIENTS.get_ptr_mut(key) } else { None };
    // SAFETY: a map value, valid while the program runs.
    let known = record.is_some_and(|record| unsafe { (*record).access_generation } == generation);
    if !known && !admitted_by_rules() {
        return Err(Counter::DroppedDenied);
    }
    let (state, received) = fresh_state(published, model, receive_tai_ns)?;
    let answer = log_client(published, key, record, receive_tai_ns)?;
    Ok((state, received, answer))
}

/// Logs the admitted client (`key`, its record if it has one) and applies its rate limit;
/// `Err` when its request is to be dropped.
#[inline(always)]
fn log_client(
    published: &Published,
    key: &[u8; 16],
    record: Option<*mut ClientRecord>,
    receive_tai_ns: u64,
) -> Result<Answer, Refusal> {
    if published.client_log == 0 {
        return Ok(Answer::Time);
    }
    let limit = &published.limit;
    let now = ratelimit::timestamp_since(receive_tai_ns, published.client_log_epoch_tai_ns);
    let record = match record {
        Some(record) => record,
        None => {
            // Another CPU may insert the same client meanwhile: then this insert fails and the
            // lookup below finds that record.
            if CLIENTS.insert(key, ClientRecord::new(limit), u64::from(BPF_NOEXIST)).is_ok() {
                count(Counter::ClientRecordsCreated);
            }
            match CLIENTS.get_ptr_mut(key) {
                Some(record) => record,
                None => return Ok(Answer::Time),
            }
        }
    };
    // SAFETY: a map value, valid while the program runs. Another CPU serving the same client at
    // the same instant may interleave its update with this one; the worst is a lost count.
    let record = unsafe { &mut *record };
    record.access_generation = published.access_generation;
    record.log(now, limit);
    // SAFETY: a helper without arguments.
    match record.limit(limit, || unsafe { bpf_get_prandom_u32() }) {
        Limit::Answer => Ok(Answer::Time),
        Limit::KissOfDeath => Ok(Answer::KissOfDeath),
        Limit::Drop => Err(Counter::DroppedRateLimit),
    }
}

/// Whether `address` is one of the addresses the daemon published as the server's, and the
/// time served there.
#[inline(always)]
fn local_model(published: &Published, address: &WireAddress) -> Option<TimeModel> {
    match address {
        WireAddress::V4(bytes) => published.local_v4(u32::from_ne_bytes(*bytes)),
        WireAddress::V6(bytes) => {
            let half = |at: usize| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&bytes[at..at + 8]);
                u64::from_ne_bytes(word)
            };
            published.local_v6([half(0), half(8)])
        }
    }
}

/// Whether the frame came in on the loopback interface.
#[inline(always)]
fn arrived_on_loopback(ctx: &XdpContext) -> bool {
    // SAFETY: the context the kernel passed is valid for the program's run.
    unsafe { (*ctx.ctx).ingress_ifindex == admission::LOOPBACK_IFINDEX }
}

/// The Ethernet header (with the 802.1Q tag, if any) as words.
type L2 = [u16; ETH_WORDS + VLAN_WORDS];

#[inline(always)]
fn read_l2(ctx: &XdpContext, l3: usize) -> Result<L2, Refusal> {
    let mut l2 = [0u16; ETH_WORDS + VLAN_WORDS];
    let eth: *const [u16; ETH_WORDS] = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds of the Ethernet header, and of the tag when present.
    unsafe {
        l2[..ETH_WORDS].copy_from_slice(&*eth);
        if l3 > 2 * ETH_WORDS {
            let tag: *const [u16; VLAN_WORDS] =
                ptr_at(ctx, 2 * ETH_WORDS).map_err(|()| Counter::PassedMalformed)?;
            l2[ETH_WORDS..].copy_from_slice(&*tag);
        }
    }
    Ok(l2)
}

/// Writes the reply's Ethernet header, addresses swapped, at the start of the frame (which moves
/// when IPv4 options are stripped).
#[inline(always)]
fn write_l2(ctx: &XdpContext, l2: &L2, l3: usize) -> Result<(), Refusal> {
    let eth: *mut [u16; ETH_WORDS] = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds of the Ethernet header, and of the tag when present.
    unsafe {
        *eth = [l2[3], l2[4], l2[5], l2[0], l2[1], l2[2], l2[6]];
        if l3 > 2 * ETH_WORDS {
            let tag: *mut [u16; VLAN_WORDS] =
                ptr_at(ctx, 2 * ETH_WORDS).map_err(|()| Counter::PassedMalformed)?;
            *tag = [l2[7], l2[8]];
        }
    }
    Ok(())
}

/// Turns the request datagram into the reply in place and counts it; the transmit timestamp
/// is read last, so that the reply leaves right after the instant it states.
#[inline(always)]
fn write_reply(
    dgram: *mut [u16; DATAGRAM_WORDS],
    pseudo_header_sum: u64,
    min_poll: i8,
    state: &ServerState,
    received: u64,
    answer: Answer,
) {
    count(Counter::Received);
    count(if answer == Answer::KissOfDeath {
        Counter::AnsweredKissOfDeath
    } else {
        Counter::Answered
    });
    // SAFETY: the caller checked the bounds of the whole datagram.
    let d = unsafe { &mut *dgram };
    let (client_port, server_port) = (d[0], d[1]);
    let [first, _] = d[UDP_WORDS].to_ne_bytes();
    let [poll, _] = d[UDP_WORDS + 1].to_ne_bytes();
    let poll = responder::reply_poll(poll, min_poll);
    let (_, version, _) = wire::split_li_vn_mode(first);
    let mut origin = [0u16; 4];
    origin.copy_from_slice(&d[UDP_WORDS + 20..UDP_WORDS + 24]);

    d[0] = server_port;
    d[1] = client_port;
    // The reply's sum is taken from the words as they are written, not read back from the
    // packet: no helper call, and the words are in registers already. The length (d[2]) stays.
    let mut total = pseudo_header_sum + sum(&[server_port, client_port, d[2]]);
    let n = &mut d[UDP_WORDS..];
    if answer == Answer::KissOfDeath {
        // No time of this server: receive and transmit repeat the client's transmit.
        let kiss = ReferenceId::KISS_RATE.to_bits();
        let head = [
            word([wire::li_vn_mode(Leap::Unsynchronised, version, Mode::Server), 0]),
            word([poll, 0]),
            0,
            0,
            0,
            0,
            word([kiss[0], kiss[1]]),
            word([kiss[2], kiss[3]]),
            0,
            0,
            0,
            0,
        ];
        n[..12].copy_from_slice(&head);
        n[12..16].copy_from_slice(&origin);
        n[16..20].copy_from_slice(&origin);
        // The transmit timestamp (n[20..24]) is the request's, the origin's value too.
        d[3] = checksum(total + sum(&head) + 3 * sum(&origin));
        return;
    }
    let [delay_high, delay_low] = words32(state.root_delay);
    let [dispersion_high, dispersion_low] =
        words32(state.root_dispersion_after(received).to_fixed());
    let reference_time = words64(state.reference_time);
    let head = [
        word([wire::li_vn_mode(state.leap(), version, Mode::Server), state.stratum]),
        word([poll, state.precision as u8]),
        delay_high,
        delay_low,
        dispersion_high,
        dispersion_low,
        word([state.reference_id[0], state.reference_id[1]]),
        word([state.reference_id[2], state.reference_id[3]]),
        reference_time[0],
        reference_time[1],
        reference_time[2],
        reference_time[3],
    ];
    let receive = words64(state.served_time_after(received).to_fixed());
    n[..12].copy_from_slice(&head);
    n[12..16].copy_from_slice(&origin);
    n[16..20].copy_from_slice(&receive);
    total += sum(&head) + sum(&origin) + sum(&receive);

    // SAFETY: a helper without arguments.
    let transmit_tai_ns = unsafe { bpf_ktime_get_tai_ns() };
    let transmit = state.served_time_after(state.transmit_elapsed_ns(received, transmit_tai_ns));
    let transmit = words64(transmit.to_fixed());
    d[UDP_WORDS + 20..].copy_from_slice(&transmit);
    d[3] = checksum(total + sum(&transmit));
}

/// The UDP checksum of an unfolded sum: zero means "no checksum", so it is sent as 0xffff.
#[inline(always)]
fn checksum(total: u64) -> u16 {
    match !fold(total) {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// A host-order u32 as the two words of its big-endian bytes.
#[inline(always)]
fn words32(value: u32) -> [u16; 2] {
    let b = value.to_be_bytes();
    [word([b[0], b[1]]), word([b[2], b[3]])]
}

/// A host-order u64 as the four words of its big-endian bytes.
#[inline(always)]
fn words64(value: u64) -> [u16; 4] {
    let b = value.to_be_bytes();
    [word([b[0], b[1]]), word([b[2], b[3]]), word([b[4], b[5]]), word([b[6], b[7]])]
}

/// Two words as the native u32 of their four bytes (how local addresses are published).
#[inline(always)]
fn u32_of(words: [u16; 2]) -> u32 {
    let (a, b) = (words[0].to_ne_bytes(), words[1].to_ne_bytes());
    u32::from_ne_bytes([a[0], a[1], b[0], b[1]])
}

/// Eight words as the two native u64 of their sixteen bytes.
#[inline(always)]
fn u64_pair_of(words: &[u16; 8]) -> [u64; 2] {
    let half = |w: &[u16]| {
        let b: [[u8; 2]; 4] =
            [w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes()];
        u64::from_ne_bytes([b[0][0], b[0][1], b[1][0], b[1][1], b[2][0], b[2][1], b[3][0], b[3][1]])
    };
    [half(&words[..4]), half(&words[4..])]
}

#[inline(always)]
fn bytes16(words: &[u16; 8]) -> [u8; 16] {
    let [a, b] = u64_pair_of(words);
    let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The one's complement sum of words, not yet folded.
#[inline(always)]
fn sum(words: &[u16]) -> u64 {
    let mut total = 0u64;
    for w in words {
        total += u64::from(*w);
    }
    total
}

#[inline(always)]
fn datagram_checksum_ok(dgram: *mut [u16; DATAGRAM_WORDS], pseudo_header_sum: u64) -> bool {
    fold(sum_bytes(dgram.cast(), 2 * DATAGRAM_WORDS as u32, pseudo_header_sum)) == 0xffff
}

/// `seed` plus the unfolded sum of `len` (a multiple of 4) bytes at `at`, by the kernel's own
/// checksum routine (bpf_csum_diff): shorter code, and hot in the cache of any busy host.
#[inline(always)]
fn sum_bytes(at: *mut u32, len: u32, seed: u64) -> u64 {
    // SAFETY: the callers pass packet memory whose bounds they checked.
    let partial = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at, len, fold(seed).into()) };
    partial as u32 as u64
}

/// The IPv4 header's sum: the fixed part, and the options (rare) word by word.
#[inline(always)]
fn ipv4_header_sum(
    ctx: &XdpContext,
    l3: usize,
    header: &[u16; IPV4_WORDS],
    header_len: usize,
) -> u64 {
    let fixed = sum(header);
    if header_len == 2 * IPV4_WORDS { fixed } else { fixed + ipv4_options_sum(ctx, l3, header_len) }
}

/// Kept out of line: options are rare, and the common path's code stays short.
#[inline(never)]
fn ipv4_options_sum(ctx: &XdpContext, l3: usize, header_len: usize) -> u64 {
    const MAX_OPTION_WORDS: usize = 20;
    let mut total = 0;
    let mut i = 0;
    while i < MAX_OPTION_WORDS && 2 * (IPV4_WORDS + i) < header_len {
        match ptr_at::<u16>(ctx, l3 + 2 * (IPV4_WORDS + i)) {
            // SAFETY: ptr_at checked the bounds.
            Ok(option) => total += u64::from(unsafe { *option }),
            // Folds to zero, never 0xffff: the header is refused.
            Err(()) => return 0,
        }
        i += 1;
    }
    total
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU value, touched only by this CPU while the program runs.
        unsafe { *value += 1 };
    }
}

/// The only way to touch packet memory: a pointer to a `T` at `offset`, if the frame holds it.
///
/// Packets are accessed as 16-bit words at even offsets: frames start 2-byte aligned (after a
/// 256-byte headroom) and every header length here is even, so `T` is at least 2-aligned.
/// The end is read afresh (volatile) for every check: otherwise the compiler drops checks it
/// can prove redundant from earlier ones at variable offsets, which the verifier cannot follow.
///
/// The offset is bounded first, by a check on a value the compiler cannot reason away: older
/// verifiers (Linux 6.1) lose an offset's bounds across a spill to the stack and then refuse to
/// add it to the packet pointer.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    // SAFETY: a read of a local.
    let offset = unsafe { read_volatile(&offset) };
    if offset > MAX_PACKET_OFFSET {
        return Err(());
    }
    let start = ctx.data();
    // SAFETY: ctx.ctx points to the program's context for the whole run.
    let end = unsafe { read_volatile(&(*ctx.ctx).data_end) } as usize;
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
