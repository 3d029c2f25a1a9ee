//! ntpx's XDP program: answers plain NTP client requests in place with XDP_TX and passes
//! everything else to the kernel, where ntpxd's socket (the slow path) sees it.
//!
//! It answers only what it can answer completely and correctly: Ethernet with at most one
//! 802.1Q tag; IPv4 (options are stripped from the reply) or IPv6 without extension headers; UDP
//! to the served port with a valid checksum; exactly 48 bytes of NTP, mode 3, version 1-4; sent
//! from a unicast address the access rules admit to one of this host's addresses; while the
//! daemon's published state is fresh. A reply is never longer than its request.
//!
//! The rules are those of `ntp_common::responder`, the oracle the tests compare this program with.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_ktime_get_tai_ns, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use ntp_common::{
    maps::{
        ACCESS_ALLOW, Counter, MAX_ACCESS_RULES, MAX_LOCAL_ADDRESSES, STATE_SLOTS,
    },
    state::ServerState,
    wire::{self, HEADER_LEN, Mode, offset},
};

/// The served UDP port, host byte order; set by the loader.
#[unsafe(no_mangle)]
static NTP_PORT: u16 = 123;

#[map]
static SERVER_STATE: Array<ServerState> = Array::with_max_entries(STATE_SLOTS, 0);
#[map]
static ACTIVE_STATE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static ACCESS_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
#[map]
static ACCESS_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_ACCESS_RULES, 0);
#[map]
static LOCAL_V4: HashMap<[u8; 4], u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRESSES, 0);
#[map]
static LOCAL_V6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRESSES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();
const ETH_P_8021Q: [u8; 2] = 0x8100u16.to_be_bytes();
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
/// UDP header and a plain NTP header: the only datagram answered here.
const UDP_NTP_LEN: usize = UDP_HLEN + HEADER_LEN;
const REPLY_TTL: u8 = 64;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

#[repr(C)]
struct VlanTag {
    tci: [u8; 2],
    inner_type: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    flags_fragment: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct UdpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    len: [u8; 2],
    checksum: [u8; 2],
}

/// A UDP datagram carrying exactly an NTP header, as the program reads and rewrites it.
#[repr(C)]
struct UdpNtp {
    udp: UdpHdr,
    ntp: [u8; HEADER_LEN],
}

const _: () = assert!(size_of::<UdpNtp>() == UDP_NTP_LEN);

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
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        let tag: *const VlanTag = ptr_at(ctx, ETH_HLEN)?;
        // SAFETY: ptr_at checked the bounds.
        ether_type = unsafe { (*tag).inner_type };
        l3 += VLAN_HLEN;
    }
    let outcome = if ether_type == ETH_P_IP {
        ipv4(ctx, l3, receive_tai_ns)?
    } else if ether_type == ETH_P_IPV6 {
        ipv6(ctx, l3, receive_tai_ns)?
    } else {
        return Ok(XDP_PASS);
    };
    count(Counter::Received);
    Ok(match outcome {
        Ok(()) => {
            count(Counter::Answered);
            XDP_TX
        }
        Err(Counter::DroppedDenied) => {
            count(Counter::DroppedDenied);
            XDP_DROP
        }
        Err(refusal) => {
            count(refusal);
            XDP_PASS
        }
    })
}

/// `Err(())`: not a UDP datagram to the NTP port. `Ok(Ok(()))`: the reply is in place.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize, receive_tai_ns: u64) -> Result<Result<(), Refusal>, ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: ptr_at checked the bounds of the fixed header.
    let (version_ihl, protocol, flags_fragment) =
        unsafe { ((*ip).version_ihl, (*ip).protocol, u16::from_be_bytes((*ip).flags_fragment)) };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    // A later fragment carries no UDP header, so it cannot be recognised as NTP.
    if version_ihl >> 4 != 4 || header_len < IPV4_HLEN || protocol != IPPROTO_UDP {
        return Err(());
    }
    if flags_fragment & 0x1fff != 0 {
        return Err(());
    }
    let l4 = l3 + header_len;
    if !is_ntp_port(ptr_at::<UdpHdr>(ctx, l4)?) {
        return Err(());
    }
    Ok(serve_ipv4(ctx, l3, header_len, flags_fragment, receive_tai_ns))
}

#[inline(always)]
fn serve_ipv4(
    ctx: &XdpContext,
    l3: usize,
    header_len: usize,
    flags_fragment: u16,
    receive_tai_ns: u64,
) -> Result<(), Refusal> {
    const MORE_FRAGMENTS: u16 = 0x2000;
    if flags_fragment & MORE_FRAGMENTS != 0 {
        return Err(Counter::PassedFragment);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let (total_len, src, dst) =
        unsafe { (usize::from(u16::from_be_bytes((*ip).total_len)), (*ip).src, (*ip).dst) };
    if total_len != ctx.data_end() - ctx.data() - l3 || !ipv4_header_checksum_ok(ctx, l3, header_len)
    {
        return Err(Counter::PassedMalformed);
    }
    let l4 = l3 + header_len;
    let datagram_len = total_len - header_len;
    let dgram = check_datagram_shape(ctx, l4, datagram_len)?;
    check_destination(ctx)?;
    // SAFETY: LOCAL_V4 is only read here.
    if unsafe { LOCAL_V4.get(&dst) }.is_none() || !is_ipv4_unicast_source(src) {
        return Err(Counter::PassedAddress);
    }
    let pseudo = ipv4_pseudo_header_sum(src, dst);
    // SAFETY: check_datagram_shape checked the bounds of the whole datagram.
    let checksum = unsafe { (*dgram).udp.checksum };
    // IPv4 allows a datagram without a checksum (zero).
    if checksum != [0, 0] && !udp_checksum_ok(dgram, pseudo) {
        return Err(Counter::PassedChecksum);
    }
    match ACCESS_V4.get(Key::new(32, src)) {
        Some(&ACCESS_ALLOW) => {}
        _ => return Err(Counter::DroppedDenied),
    }
    let (state, received) = fresh_state(receive_tai_ns)?;

    // Everything the reply needs from the request's headers, before they move.
    let l2 = read_l2(ctx, l3)?;
    let options_len = header_len - IPV4_HLEN;
    if options_len > 0 {
        // Strip the options: the reply's Ethernet and IP headers move up next to UDP.
        // SAFETY: shrinking the head by options_len (< total length) keeps the frame valid.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, options_len as i32) } != 0 {
            return Err(Counter::PassedMalformed);
        }
    }
    write_l2(ctx, &l2)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).map_err(|()| Counter::PassedMalformed)?;
    let reply_len = (IPV4_HLEN + UDP_NTP_LEN) as u16;
    let reply_header = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        total_len: reply_len.to_be_bytes(),
        id: [0, 0],
        flags_fragment: 0x4000u16.to_be_bytes(), // don't fragment
        ttl: REPLY_TTL,
        protocol: IPPROTO_UDP,
        checksum: [0, 0],
        src: dst,
        dst: src,
    };
    // SAFETY: ptr_at checked the bounds; the header is byte-aligned.
    unsafe {
        ip.write(reply_header);
        (*ip).checksum = ipv4_reply_checksum(src, dst, reply_len).to_be_bytes();
    }
    let dgram: *mut UdpNtp =
        ptr_at(ctx, l3 + IPV4_HLEN).map_err(|()| Counter::PassedMalformed)?;
    write_reply(dgram, pseudo, state, received);
    Ok(())
}

/// `Err(())`: not a UDP datagram to the NTP port (extension headers are not followed).
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, receive_tai_ns: u64) -> Result<Result<(), Refusal>, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: ptr_at checked the bounds.
    let (version, next_header) = unsafe { ((*ip).version_class_flow[0] >> 4, (*ip).next_header) };
    if version != 6 || next_header != IPPROTO_UDP {
        return Err(());
    }
    if !is_ntp_port(ptr_at::<UdpHdr>(ctx, l3 + IPV6_HLEN)?) {
        return Err(());
    }
    Ok(serve_ipv6(ctx, l3, receive_tai_ns))
}

#[inline(always)]
fn serve_ipv6(ctx: &XdpContext, l3: usize, receive_tai_ns: u64) -> Result<(), Refusal> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let (payload_len, src, dst) =
        unsafe { (usize::from(u16::from_be_bytes((*ip).payload_len)), (*ip).src, (*ip).dst) };
    if payload_len + IPV6_HLEN != ctx.data_end() - ctx.data() - l3 {
        return Err(Counter::PassedMalformed);
    }
    let dgram = check_datagram_shape(ctx, l3 + IPV6_HLEN, payload_len)?;
    check_destination(ctx)?;
    // SAFETY: LOCAL_V6 is only read here.
    if unsafe { LOCAL_V6.get(&dst) }.is_none() || !is_ipv6_unicast_source(&src) {
        return Err(Counter::PassedAddress);
    }
    let pseudo = ipv6_pseudo_header_sum(&src, &dst);
    // IPv6 requires the UDP checksum: zero is invalid.
    // SAFETY: check_datagram_shape checked the bounds of the whole datagram.
    if unsafe { (*dgram).udp.checksum } == [0, 0] || !udp_checksum_ok(dgram, pseudo) {
        return Err(Counter::PassedChecksum);
    }
    match ACCESS_V6.get(Key::new(128, src)) {
        Some(&ACCESS_ALLOW) => {}
        _ => return Err(Counter::DroppedDenied),
    }
    let (state, received) = fresh_state(receive_tai_ns)?;

    let l2 = read_l2(ctx, l3)?;
    write_l2(ctx, &l2)?;
    // SAFETY: ptr_at checked the bounds of the header, which stays in place.
    unsafe {
        (*ip).version_class_flow = [0x60, 0, 0, 0];
        (*ip).hop_limit = REPLY_TTL;
        (*ip).src = dst;
        (*ip).dst = src;
    }
    write_reply(dgram, pseudo, state, received);
    Ok(())
}

/// Checks that the datagram at `l4` of `len` bytes (from the IP header) is UDP around exactly an
/// NTP client request of a served version, and returns it.
#[inline(always)]
fn check_datagram_shape(ctx: &XdpContext, l4: usize, len: usize) -> Result<*mut UdpNtp, Refusal> {
    let udp: *const UdpHdr = ptr_at(ctx, l4).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let udp_len = usize::from(u16::from_be_bytes(unsafe { (*udp).len }));
    if udp_len != len || udp_len < UDP_HLEN {
        return Err(Counter::PassedMalformed);
    }
    if udp_len != UDP_NTP_LEN {
        return Err(Counter::PassedLength);
    }
    let dgram: *mut UdpNtp = ptr_at(ctx, l4).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds of the whole datagram.
    let first = unsafe { (*dgram).ntp[offset::LI_VN_MODE] };
    let (_, version, mode) = wire::split_li_vn_mode(first);
    if mode != Mode::Client || !wire::is_served_version(version) {
        return Err(Counter::PassedNotRequest);
    }
    Ok(dgram)
}

/// A frame sent to a group MAC address is not for this server alone to answer.
#[inline(always)]
fn check_destination(ctx: &XdpContext) -> Result<(), Refusal> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    if unsafe { (*eth).dst[0] } & 1 != 0 {
        return Err(Counter::PassedAddress);
    }
    Ok(())
}

/// The published state, if fresh at the receive instant, and the time elapsed since its anchor.
#[inline(always)]
fn fresh_state(receive_tai_ns: u64) -> Result<(&'static ServerState, u64), Refusal> {
    let slot = ACTIVE_STATE.get(0).copied().unwrap_or(0);
    let state = SERVER_STATE.get(slot & (STATE_SLOTS - 1)).ok_or(Counter::PassedStale)?;
    let received = state.elapsed_ns(receive_tai_ns).ok_or(Counter::PassedStale)?;
    Ok((state, received))
}

#[inline(always)]
fn is_ntp_port(udp: *const UdpHdr) -> bool {
    // SAFETY: NTP_PORT is written only by the loader, before the program runs.
    let port = unsafe { core::ptr::read_volatile(&NTP_PORT) };
    // SAFETY: the caller checked the bounds of the header.
    unsafe { (*udp).dst_port == port.to_be_bytes() }
}

/// Sources a reply cannot go to: unspecified (0/8), multicast (224/4), reserved and the
/// limited broadcast (240/4).
#[inline(always)]
fn is_ipv4_unicast_source(src: [u8; 4]) -> bool {
    src[0] != 0 && src[0] < 224
}

/// Sources a reply cannot go to: unspecified (::) and multicast (ff00::/8).
#[inline(always)]
fn is_ipv6_unicast_source(src: &[u8; 16]) -> bool {
    src[0] != 0xff && *src != [0; 16]
}

/// The Ethernet header of a request: its addresses, and the ether type with the 802.1Q tag
/// before it, if any (bytes 12..14, or 12..18 when tagged).
struct L2 {
    dst: [u8; 6],
    src: [u8; 6],
    type_and_tag: [u8; 6],
    tagged: bool,
}

#[inline(always)]
fn read_l2(ctx: &XdpContext, l3: usize) -> Result<L2, Refusal> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    let tagged = l3 != ETH_HLEN;
    let mut type_and_tag = [0u8; 6];
    // SAFETY: ptr_at checked the bounds of the Ethernet header and of the tag.
    unsafe {
        if tagged {
            let tag: *const [u8; 6] = ptr_at(ctx, ETH_HLEN - 2).map_err(|()| Counter::PassedMalformed)?;
            type_and_tag = *tag;
        } else {
            type_and_tag[..2].copy_from_slice(&(*eth).ether_type);
        }
        Ok(L2 { dst: (*eth).dst, src: (*eth).src, type_and_tag, tagged })
    }
}

/// Writes the reply's Ethernet header at the start of the frame, which moves when IPv4
/// options are stripped.
#[inline(always)]
fn write_l2(ctx: &XdpContext, l2: &L2) -> Result<(), Refusal> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|()| Counter::PassedMalformed)?;
    // SAFETY: ptr_at checked the bounds of the Ethernet header and of the tag.
    unsafe {
        (*eth).dst = l2.src;
        (*eth).src = l2.dst;
        if l2.tagged {
            let tag: *mut [u8; 6] = ptr_at(ctx, ETH_HLEN - 2).map_err(|()| Counter::PassedMalformed)?;
            *tag = l2.type_and_tag;
        } else {
            (*eth).ether_type = [l2.type_and_tag[0], l2.type_and_tag[1]];
        }
    }
    Ok(())
}

/// Turns the request datagram into the reply in place; the transmit timestamp is read last.
#[inline(always)]
fn write_reply(dgram: *mut UdpNtp, pseudo_header_sum: u64, state: &ServerState, received: u64) {
    // SAFETY: the caller checked the bounds of the whole datagram. Words are accessed at even
    // offsets from an even address (frames start 2-byte aligned; all header lengths are even).
    unsafe {
        let udp = &mut (*dgram).udp;
        let ports = (udp.src_port, udp.dst_port);
        udp.src_port = ports.1;
        udp.dst_port = ports.0;
        udp.checksum = [0, 0];
        let ntp = (*dgram).ntp.as_mut_ptr();
        let first = *ntp.add(offset::LI_VN_MODE);
        let (_, version, _) = wire::split_li_vn_mode(first);
        let first = wire::li_vn_mode(state.leap(), version, Mode::Server);
        *ntp.add(offset::LI_VN_MODE) = first;
        *ntp.add(offset::STRATUM) = state.stratum;
        *ntp.add(offset::PRECISION) = state.precision as u8;
        let origin: [u8; 8] = *(ntp.add(offset::TRANSMIT_TIMESTAMP) as *const [u8; 8]);
        store(ntp, offset::ROOT_DELAY, &state.root_delay.to_be_bytes());
        store(ntp, offset::ROOT_DISPERSION, &state.root_dispersion_after(received).to_bits());
        store(ntp, offset::REFERENCE_ID, &state.reference_id);
        store(ntp, offset::REFERENCE_TIMESTAMP, &state.reference_time.to_be_bytes());
        store(ntp, offset::ORIGIN_TIMESTAMP, &origin);
        store(ntp, offset::RECEIVE_TIMESTAMP, &state.served_time_after(received).to_bits());

        // All but the transmit timestamp: the checksum is completed after it is taken.
        let mut sum = pseudo_header_sum;
        sum += sum_words(dgram as *const u8, UDP_HLEN + offset::TRANSMIT_TIMESTAMP);

        let transmit_tai_ns = bpf_ktime_get_tai_ns();
        let transmit = state.served_time_after(state.transmit_elapsed_ns(received, transmit_tai_ns));
        store(ntp, offset::TRANSMIT_TIMESTAMP, &transmit.to_bits());
        sum += sum_words(ntp.add(offset::TRANSMIT_TIMESTAMP), 8);
        let checksum = match !fold(sum) {
            0 => 0xffff, // zero means "no checksum" in UDP
            checksum => checksum,
        };
        // The sum was taken over native-order words, so it is stored in native order.
        (*dgram).udp.checksum = checksum.to_ne_bytes();
    }
}

/// Copies `bytes` to `base + at`, which the caller has bounds-checked.
#[inline(always)]
unsafe fn store<const N: usize>(base: *mut u8, at: usize, bytes: &[u8; N]) {
    // SAFETY: the caller guarantees `base + at .. base + at + N` is writable packet memory.
    unsafe { *(base.add(at) as *mut [u8; N]) = *bytes };
}

/// One's complement sum (unfolded) of `len` (even) bytes at an even address, as native-order
/// 16-bit words. RFC 1071: the folded sum of native words is the native form of the sum of
/// network-order words, so it is compared and stored without byte swapping.
#[inline(always)]
unsafe fn sum_words(at: *const u8, len: usize) -> u64 {
    let words = at as *const u16;
    let mut sum = 0u64;
    let mut i = 0;
    while i < len / 2 {
        // SAFETY: the caller guarantees the bounds and alignment.
        sum += u64::from(unsafe { *words.add(i) });
        i += 1;
    }
    sum
}

#[inline(always)]
fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn native_word(bytes: [u8; 2]) -> u64 {
    u64::from(u16::from_ne_bytes(bytes))
}

/// The pseudo-header sum (RFC 768) of a 56-byte UDP datagram over IPv4, native words.
#[inline(always)]
fn ipv4_pseudo_header_sum(src: [u8; 4], dst: [u8; 4]) -> u64 {
    native_word([src[0], src[1]])
        + native_word([src[2], src[3]])
        + native_word([dst[0], dst[1]])
        + native_word([dst[2], dst[3]])
        + native_word([0, IPPROTO_UDP])
        + native_word((UDP_NTP_LEN as u16).to_be_bytes())
}

/// The pseudo-header sum (RFC 8200) of a 56-byte UDP datagram over IPv6, native words.
#[inline(always)]
fn ipv6_pseudo_header_sum(src: &[u8; 16], dst: &[u8; 16]) -> u64 {
    let mut sum = native_word([0, IPPROTO_UDP]) + native_word((UDP_NTP_LEN as u16).to_be_bytes());
    let mut i = 0;
    while i < 16 {
        sum += native_word([src[i], src[i + 1]]) + native_word([dst[i], dst[i + 1]]);
        i += 2;
    }
    sum
}

#[inline(always)]
fn udp_checksum_ok(dgram: *const UdpNtp, pseudo_header_sum: u64) -> bool {
    // SAFETY: the caller checked the bounds of the whole datagram; it starts at an even offset.
    let sum = pseudo_header_sum + unsafe { sum_words(dgram as *const u8, UDP_NTP_LEN) };
    fold(sum) == 0xffff
}

/// Verifies the IPv4 header checksum over the `header_len` bytes at `l3`, options included.
#[inline(always)]
fn ipv4_header_checksum_ok(ctx: &XdpContext, l3: usize, header_len: usize) -> bool {
    const MAX_HEADER_WORDS: usize = 30;
    let mut sum = 0u64;
    let mut i = 0;
    while i < MAX_HEADER_WORDS {
        if i * 2 >= header_len {
            break;
        }
        match ptr_at::<u16>(ctx, l3 + i * 2) {
            // SAFETY: ptr_at checked the bounds; l3 is even.
            Ok(word) => sum += u64::from(unsafe { *word }),
            Err(()) => return false,
        }
        i += 1;
    }
    fold(sum) == 0xffff
}

/// The reply's IPv4 header checksum, in host order.
#[inline(always)]
fn ipv4_reply_checksum(src: [u8; 4], dst: [u8; 4], total_len: u16) -> u16 {
    let word = |b: [u8; 2]| u64::from(u16::from_be_bytes(b));
    let sum = 0x4500
        + u64::from(total_len)
        + 0x4000
        + u64::from(u16::from_be_bytes([REPLY_TTL, IPPROTO_UDP]))
        + word([src[0], src[1]])
        + word([src[2], src[3]])
        + word([dst[0], dst[1]])
        + word([dst[2], dst[3]]);
    !fold(sum)
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
/// The end is read afresh (volatile) for every check: otherwise the compiler drops checks it
/// can prove redundant from earlier ones at variable offsets, which the verifier cannot follow.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    // SAFETY: ctx.ctx points to the program's context for the whole run.
    let end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
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
