//! Ethernet frames carrying NTP, built field by field, and the frame-level oracle: what the XDP
//! program must do with a frame, derived from the rules (not from the program's code), with the
//! pure responder of ntp-common for the NTP part.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ntp_common::{
    admission::{self, Addressing, WireAddress},
    maps::Counter,
    responder,
    state::ServerState,
    wire::{HEADER_LEN, NtpHeader, NtpTimestamp},
};
use ntp_userspace::access::AccessTable;

pub const ETH_HLEN: usize = 14;
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The UDP checksum a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksum {
    Correct,
    /// No checksum (allowed over IPv4 only).
    Zero,
    /// The correct value with one bit flipped.
    Wrong,
}

/// The network layer of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Raw option bytes (a multiple of 4, at most 40).
        options: Vec<u8>,
        more_fragments: bool,
        /// In 8-byte units.
        fragment_offset: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// The next header field; 17 (UDP) unless an extension header is simulated.
        next_header: u8,
    },
}

/// A frame carrying a UDP datagram, described by its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// An 802.1Q tag's TCI.
    pub vlan: Option<u16>,
    pub network: Network,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
    pub checksum: UdpChecksum,
}

/// A client's request as chrony or ntpdig would send it.
pub fn client_request(version: u8, transmit: u64) -> [u8; HEADER_LEN] {
    NtpHeader::client_request(version, 6, NtpTimestamp::from_fixed(transmit)).to_bytes()
}

impl Frame {
    /// A plain NTPv4 client request from `src` to `dst`, port 123.
    pub fn request(src: IpAddr, dst: IpAddr) -> Self {
        let network = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Network::V4 {
                src,
                dst,
                options: Vec::new(),
                more_fragments: false,
                fragment_offset: 0,
            },
            (IpAddr::V6(src), IpAddr::V6(dst)) => Network::V6 { src, dst, next_header: 17 },
            _ => panic!("mixed address families"),
        };
        Self {
            dst_mac: SERVER_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            network,
            src_port: 40_123,
            dst_port: 123,
            payload: client_request(4, 0xe000_0000_1234_5678).to_vec(),
            checksum: UdpChecksum::Correct,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        if let Some(tci) = self.vlan {
            frame.extend_from_slice(&0x8100u16.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let udp_len = (8 + self.payload.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&self.src_port.to_be_bytes());
        udp.extend_from_slice(&self.dst_port.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let (src, dst): (IpAddr, IpAddr) = match &self.network {
            Network::V4 { src, dst, .. } => ((*src).into(), (*dst).into()),
            Network::V6 { src, dst, .. } => ((*src).into(), (*dst).into()),
        };
        let checksum = match self.checksum {
            UdpChecksum::Zero => 0,
            UdpChecksum::Correct => udp_checksum(src, dst, &udp),
            UdpChecksum::Wrong => udp_checksum(src, dst, &udp) ^ 0x0100,
        };
        udp[6..8].copy_from_slice(&checksum.to_be_bytes());
        match &self.network {
            Network::V4 { src, dst, options, more_fragments, fragment_offset } => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let header_len = 20 + options.len();
                let flags = if *more_fragments { 0x2000 } else { 0 } | fragment_offset;
                let mut header = vec![0x40 | (header_len / 4) as u8, 0];
                header.extend_from_slice(&((header_len + udp.len()) as u16).to_be_bytes());
                header.extend_from_slice(&[0x12, 0x34]);
                header.extend_from_slice(&flags.to_be_bytes());
                header.extend_from_slice(&[57, 17, 0, 0]);
                header.extend_from_slice(&src.octets());
                header.extend_from_slice(&dst.octets());
                header.extend_from_slice(options);
                let checksum = !ones_complement_sum(&header);
                header[10..12].copy_from_slice(&checksum.to_be_bytes());
                frame.extend_from_slice(&header);
            }
            Network::V6 { src, dst, next_header } => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                frame.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
                frame.extend_from_slice(&udp_len.to_be_bytes());
                frame.extend_from_slice(&[*next_header, 57]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
            }
        }
        frame.extend_from_slice(&udp);
        frame
    }
}

/// RFC 1071 one's complement sum of big-endian 16-bit words, folded.
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_header(src: IpAddr, dst: IpAddr, udp_len: usize) -> Vec<u8> {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed address families"),
    }
    pseudo
}

/// The UDP checksum of `udp` (its checksum field zero), never 0 (RFC 768).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut bytes = pseudo_header(src, dst, udp.len());
    bytes.extend_from_slice(udp);
    match !ones_complement_sum(&bytes) {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// Whether `udp` (checksum field included) carries a correct checksum.
pub fn udp_checksum_is_valid(src: IpAddr, dst: IpAddr, udp: &[u8]) -> bool {
    let mut bytes = pseudo_header(src, dst, udp.len());
    bytes.extend_from_slice(udp);
    ones_complement_sum(&bytes) == 0xffff
}

/// What the program must do with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Not a UDP datagram to the NTP port: passed and not counted.
    Ignored,
    /// Counted as received, then passed (or dropped) with this counter.
    Refused(Counter),
    /// Answered with this frame (its receive and transmit timestamps and UDP checksum are those
    /// of the oracle's clock readings).
    Answered(Vec<u8>),
}

/// Everything the program's decision depends on besides the frame.
pub struct Environment<'a> {
    pub port: u16,
    pub access: &'a AccessTable,
    pub local_addresses: &'a [IpAddr],
    /// True time, served to every local address but the smeared ones.
    pub state: &'a ServerState,
    /// The local addresses served `smeared` time (`leapsmear`).
    pub smeared_addresses: &'a [IpAddr],
    pub smeared: &'a ServerState,
    /// The rate limit's interval, raising the reply's poll (`i8::MIN`: none). The oracle does
    /// not model rate limiting itself: tests that limit check it statistically.
    pub min_poll: i8,
    /// The frame came in on the loopback interface (as BPF_PROG_TEST_RUN runs a program unless
    /// told another interface).
    pub on_loopback: bool,
}

impl Environment<'_> {
    /// The state served to requests sent to `destination`.
    pub fn state_for(&self, destination: IpAddr) -> &ServerState {
        if self.smeared_addresses.contains(&destination) { self.smeared } else { self.state }
    }
}

/// The oracle: what the program must do with `frame` when it receives it at `receive_tai_ns`
/// and transmits at `transmit_tai_ns`.
pub fn expected(
    frame: &[u8],
    env: &Environment<'_>,
    receive_tai_ns: u64,
    transmit_tai_ns: u64,
) -> Expected {
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    if frame.len() < ETH_HLEN {
        return Expected::Ignored;
    }
    let (l3, ether_type) = match be16(12) {
        0x8100 if frame.len() >= 18 => (18, be16(16)),
        0x8100 => return Expected::Ignored,
        other => (ETH_HLEN, other),
    };
    let (src, dst, l4, datagram_len): (IpAddr, IpAddr, usize, usize) = match ether_type {
        0x0800 => {
            if frame.len() < l3 + 20 {
                return Expected::Ignored;
            }
            let header_len = usize::from(frame[l3] & 0x0f) * 4;
            let flags_fragment = be16(l3 + 6);
            if frame[l3] >> 4 != 4 || header_len < 20 || frame[l3 + 9] != 17 {
                return Expected::Ignored;
            }
            if flags_fragment & 0x1fff != 0 {
                return Expected::Ignored;
            }
            let l4 = l3 + header_len;
            if frame.len() < l4 + 8 || be16(l4 + 2) != env.port {
                return Expected::Ignored;
            }
            if flags_fragment & 0x2000 != 0 {
                return Expected::Refused(Counter::PassedFragment);
            }
            let total_len = usize::from(be16(l3 + 2));
            if total_len != frame.len() - l3 || ones_complement_sum(&frame[l3..l4]) != 0xffff {
                return Expected::Refused(Counter::PassedMalformed);
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 12..l3 + 16]).unwrap());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 16..l3 + 20]).unwrap());
            (src.into(), dst.into(), l4, total_len - header_len)
        }
        0x86dd => {
            if frame.len() < l3 + 40 || frame[l3] >> 4 != 6 || frame[l3 + 6] != 17 {
                return Expected::Ignored;
            }
            let l4 = l3 + 40;
            if frame.len() < l4 + 8 || be16(l4 + 2) != env.port {
                return Expected::Ignored;
            }
            let payload_len = usize::from(be16(l3 + 4));
            if payload_len != frame.len() - l4 {
                return Expected::Refused(Counter::PassedMalformed);
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 8..l3 + 24]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 24..l3 + 40]).unwrap());
            (src.into(), dst.into(), l4, payload_len)
        }
        _ => return Expected::Ignored,
    };
    let udp_len = usize::from(be16(l4 + 4));
    if udp_len != datagram_len || udp_len < 8 {
        return Expected::Refused(Counter::PassedMalformed);
    }
    if udp_len != 8 + HEADER_LEN {
        return Expected::Refused(Counter::PassedLength);
    }
    let request = &frame[l4 + 8..l4 + 8 + HEADER_LEN];
    let header = NtpHeader::from_bytes(request.try_into().unwrap());
    if header.mode != ntp_common::wire::Mode::Client || !(1..=4).contains(&header.version) {
        return Expected::Refused(Counter::PassedNotRequest);
    }
    let addressing = Addressing {
        source: src.into(),
        source_port: be16(l4),
        destination: dst.into(),
        on_loopback: env.on_loopback,
    };
    let is_local = |address: &WireAddress| {
        env.local_addresses.iter().any(|local| WireAddress::from(*local) == *address)
    };
    // The group bit of either MAC address: a multicast frame, or a source no frame may carry.
    let group_mac = (frame[0] | frame[6]) & 1 != 0;
    if group_mac || admission::check(&addressing, is_local).is_err() {
        return Expected::Refused(Counter::PassedAddress);
    }
    let checksum = be16(l4 + 6);
    let checksum_ok = match src {
        IpAddr::V4(_) if checksum == 0 => true,
        _ => checksum != 0 && udp_checksum_is_valid(src, dst, &frame[l4..l4 + udp_len]),
    };
    if !checksum_ok {
        return Expected::Refused(Counter::PassedChecksum);
    }
    if !env.access.is_allowed(src) {
        return Expected::Refused(Counter::DroppedDenied);
    }
    let Ok(ntp_reply) = responder::respond(
        request,
        env.state_for(dst),
        receive_tai_ns,
        transmit_tai_ns,
        env.min_poll,
    ) else {
        return Expected::Refused(Counter::PassedStale);
    };
    Expected::Answered(reply_frame(frame, l3, src, dst, l4, &ntp_reply))
}

/// The reply frame around `ntp_reply`: Ethernet addresses swapped (the tag kept), a fresh IP
/// header without options, ports swapped, checksums computed.
fn reply_frame(
    request: &[u8],
    l3: usize,
    src: IpAddr,
    dst: IpAddr,
    l4: usize,
    ntp_reply: &[u8],
) -> Vec<u8> {
    let mut reply = Vec::new();
    reply.extend_from_slice(&request[6..12]);
    reply.extend_from_slice(&request[0..6]);
    reply.extend_from_slice(&request[12..l3]);
    let mut udp = Vec::new();
    udp.extend_from_slice(&request[l4 + 2..l4 + 4]);
    udp.extend_from_slice(&request[l4..l4 + 2]);
    udp.extend_from_slice(&((8 + ntp_reply.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(ntp_reply);
    let checksum = udp_checksum(dst, src, &udp);
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut header = vec![0x45, 0];
            header.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            header.extend_from_slice(&dst.octets());
            header.extend_from_slice(&src.octets());
            let checksum = !ones_complement_sum(&header);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            reply.extend_from_slice(&header);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            reply.extend_from_slice(&[0x60, 0, 0, 0]);
            reply.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            reply.extend_from_slice(&[17, 64]);
            reply.extend_from_slice(&dst.octets());
            reply.extend_from_slice(&src.octets());
        }
        _ => unreachable!(),
    }
    reply.extend_from_slice(&udp);
    reply
}

/// Where the UDP datagram of a reply frame starts, and its addresses (source, destination).
pub fn reply_layout(frame: &[u8]) -> (usize, IpAddr, IpAddr) {
    let l3 = if frame[12..14] == [0x81, 0x00] { 18 } else { ETH_HLEN };
    if frame[l3] >> 4 == 4 {
        let l4 = l3 + usize::from(frame[l3] & 0x0f) * 4;
        let src = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 12..l3 + 16]).unwrap());
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 16..l3 + 20]).unwrap());
        (l4, src.into(), dst.into())
    } else {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 8..l3 + 24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 24..l3 + 40]).unwrap());
        (l3 + 40, src.into(), dst.into())
    }
}
