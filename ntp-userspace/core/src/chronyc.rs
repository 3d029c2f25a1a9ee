//! chronyc's command protocol (chrony 4.3, protocol version 6), so that Debian's unmodified
//! `chronyc` reads ntpxd's reports: fixed binary requests and replies, big-endian, chrony's
//! 32-bit float encoding. Sans-IO: [`Request::parse`] judges a datagram, `Reply` writes one.
//!
//! The rules chronyd follows, followed here: a datagram too short for a reply's header, too
//! long for any request, or not a request is ignored; another protocol version gets
//! BADPKTVERSION; an unknown command INVALID; a request shorter than its command (with the
//! padding that makes it as long as its reply) BADPKTLENGTH. A reply is never longer than its
//! request, so the protocol cannot amplify traffic.

use std::net::IpAddr;

use crate::{
    control::{ClientReport, NtsAuthData},
    smoothing::SmoothingReport,
    sync::{NtpData, SourceReport, Tracking, source::SourceState},
};

pub const PROTO_VERSION: u8 = 6;
const PKT_TYPE_REQUEST: u8 = 1;
const PKT_TYPE_REPLY: u8 = 2;
/// A request's header: version, type, two reserved bytes, command, attempt, sequence and two
/// padding words.
const REQUEST_HEADER: usize = 20;
/// A reply's header: version, type, two reserved bytes, command, reply, status, three padding
/// half-words, sequence and two padding words.
const REPLY_HEADER: usize = 28;
/// chronyd's largest request (CLIENT_ACCESSES_BY_INDEX3 padded to its reply).
pub const MAX_REQUEST: usize = REPLY_HEADER + CLIENTS_PER_REPLY as usize * CLIENT_LEN + 12;
/// Commands chronyc 4.3 knows (`N_REQUEST_TYPES`).
const COMMANDS: u16 = 72;

/// Request codes.
const REQ_NULL: u16 = 0;
const REQ_N_SOURCES: u16 = 14;
const REQ_SOURCE_DATA: u16 = 15;
const REQ_ALLOW: u16 = 17;
const REQ_ALLOWALL: u16 = 18;
const REQ_DENY: u16 = 19;
const REQ_DENYALL: u16 = 20;
const REQ_ACCHECK: u16 = 25;
const REQ_TRACKING: u16 = 33;
const REQ_SOURCESTATS: u16 = 34;
const REQ_ACTIVITY: u16 = 44;
const REQ_SMOOTHING: u16 = 51;
const REQ_SMOOTHTIME: u16 = 52;
const REQ_SERVER_STATS: u16 = 54;
const REQ_NTP_DATA: u16 = 57;
const REQ_NTP_SOURCE_NAME: u16 = 65;
const REQ_AUTH_DATA: u16 = 67;
const REQ_CLIENT_ACCESSES_BY_INDEX3: u16 = 68;
const REQ_RELOAD_SOURCES: u16 = 70;

/// Reply codes.
const RPY_NULL: u16 = 1;
const RPY_N_SOURCES: u16 = 2;
const RPY_SOURCE_DATA: u16 = 3;
const RPY_TRACKING: u16 = 5;
const RPY_SOURCESTATS: u16 = 6;
const RPY_ACTIVITY: u16 = 12;
const RPY_SMOOTHING: u16 = 13;
const RPY_NTP_DATA: u16 = 16;
const RPY_NTP_SOURCE_NAME: u16 = 19;
const RPY_AUTH_DATA: u16 = 20;
const RPY_CLIENT_ACCESSES_BY_INDEX3: u16 = 21;
const RPY_SERVER_STATS3: u16 = 24;

/// Status codes (chronyc's text in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Success = 0,
    /// "500 Failure".
    Failed = 1,
    /// "501 Not authorised": a command that needs chronyc's Unix socket.
    Unauthorised = 2,
    /// "502 Invalid command".
    Invalid = 3,
    /// "503 No such source".
    NoSuchSource = 4,
    /// "505 Facility not enabled in daemon": what ntpxd does not implement.
    NotEnabled = 6,
    /// "507 Bad subnet".
    BadSubnet = 7,
    /// "208 Access allowed" / "209 Access denied": `accheck`'s answers.
    AccessAllowed = 8,
    AccessDenied = 9,
    /// "515 Client logging is not active in the daemon".
    Inactive = 15,
    BadPacketVersion = 18,
    BadPacketLength = 19,
}

/// Clients in one CLIENT_ACCESSES_BY_INDEX3 reply.
pub const CLIENTS_PER_REPLY: u32 = 8;
/// An IPAddr: 16 address bytes, family, padding.
const IP_LEN: usize = 20;
/// One client of CLIENT_ACCESSES_BY_INDEX3.
const CLIENT_LEN: usize = IP_LEN + 6 * 4 + 4 + 3 * 4;

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Nothing (chronyc's reachability probe).
    Null,
    Tracking,
    NumberOfSources,
    SourceData {
        index: u32,
    },
    SourceStats {
        index: u32,
    },
    Activity,
    ServerStats,
    Clients {
        first_index: u32,
        min_hits: u32,
        reset: bool,
    },
    /// `ntpdata ADDRESS` (None: an address of no family, which no source has).
    NtpData {
        address: Option<IpAddr>,
    },
    /// `allow`/`deny [all] [SUBNET]`: `subnet` None is every address.
    Access {
        allow: bool,
        all: bool,
        subnet: Option<(IpAddr, u32)>,
    },
    /// `accheck ADDRESS`.
    AccessCheck {
        address: Option<IpAddr>,
    },
    /// `reload sources`.
    Reload,
    /// A source's configured name (`-N`).
    SourceName {
        address: Option<IpAddr>,
    },
    /// `authdata`: a source's authentication.
    AuthData {
        address: Option<IpAddr>,
    },
    /// `smoothing`: the state of `smoothtime`.
    Smoothing,
    /// `smoothtime reset` (false) or `smoothtime activate` (true).
    SmoothTime {
        activate: bool,
    },
    /// A command ntpxd does not answer (`NotEnabled`).
    Unsupported(u16),
}

impl Command {
    /// The request's length without padding, and its reply's length.
    fn lengths(self) -> (usize, usize) {
        let null = REQUEST_HEADER;
        let null_reply = REPLY_HEADER;
        match self {
            Self::Null | Self::Reload | Self::Unsupported(_) => (null, null_reply),
            Self::Tracking => (null, REPLY_HEADER + 4 + IP_LEN + 4 + 12 + 9 * 4),
            Self::NumberOfSources => (null, REPLY_HEADER + 4),
            Self::SourceData { .. } => (null + 4, REPLY_HEADER + IP_LEN + 6 * 2 + 4 + 3 * 4),
            Self::SourceStats { .. } => (null + 4, REPLY_HEADER + 4 + IP_LEN + 3 * 4 + 5 * 4),
            Self::Activity => (null, REPLY_HEADER + 5 * 4),
            Self::Smoothing => (null, REPLY_HEADER + 6 * 4),
            Self::SmoothTime { .. } => (null + 4, null_reply),
            Self::ServerStats => (null, REPLY_HEADER + 11 * 4),
            Self::Clients { .. } => (null + 16, MAX_REQUEST),
            Self::NtpData { .. } => (null + IP_LEN, REPLY_HEADER + NTP_DATA_LEN),
            Self::Access { .. } => (null + IP_LEN + 4, null_reply),
            Self::AccessCheck { .. } => (null + IP_LEN, null_reply),
            Self::SourceName { .. } => (null + IP_LEN, REPLY_HEADER + SOURCE_NAME_LEN),
            Self::AuthData { .. } => (null + IP_LEN, REPLY_HEADER + AUTH_DATA_LEN),
        }
    }

    /// Whether it changes ntpxd's state (access rules, the configuration, the client log's
    /// counts), which only root and ntpxd's user may ask for.
    pub fn changes_state(self) -> bool {
        match self {
            Self::Access { .. } | Self::Reload | Self::SmoothTime { .. } => true,
            Self::Clients { reset, .. } => reset,
            Self::Smoothing
            | Self::Null
            | Self::Tracking
            | Self::NumberOfSources
            | Self::SourceData { .. }
            | Self::SourceStats { .. }
            | Self::Activity
            | Self::ServerStats
            | Self::NtpData { .. }
            | Self::AccessCheck { .. }
            | Self::SourceName { .. }
            | Self::AuthData { .. }
            | Self::Unsupported(_) => false,
        }
    }

    /// Whether chronyd answers it on its UDP port (PERMIT_OPEN): what only reads the
    /// synchronisation. Everything else needs its Unix socket, whose directory only root and
    /// its user can enter.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Null
                | Self::Tracking
                | Self::NumberOfSources
                | Self::SourceData { .. }
                | Self::SourceStats { .. }
                | Self::Activity
                | Self::SourceName { .. }
                | Self::Smoothing
        )
    }
}

/// RPY_NTPSourceName: a NUL-terminated name.
const SOURCE_NAME_LEN: usize = 256;
/// RPY_AuthData: mode, key type, key ID, key length, attempts, last exchange, cookies, cookie
/// length, NAKs, padding.
const AUTH_DATA_LEN: usize = 2 + 2 + 4 + 2 + 2 + 4 + 2 + 2 + 2 + 2;

/// RPY_NTPData: two IPAddrs, port, six bytes of header, two Floats, reference ID and time,
/// five Floats, flags, two timestamping characters, four counts, three reserved words.
const NTP_DATA_LEN: usize = 2 * IP_LEN + 2 + 6 + 2 * 4 + 4 + 12 + 5 * 4 + 4 + 4 * 4 + 3 * 4;

/// A request that deserves a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    command_code: u16,
    sequence: [u8; 4],
    /// The datagram's length: no reply may be longer.
    length: usize,
    /// The command, or the status of a request that is not one.
    pub command: Result<Command, Status>,
}

impl Request {
    /// Judges a datagram; None: ignore it (chronyd sends nothing back either).
    pub fn parse(datagram: &[u8]) -> Option<Self> {
        if datagram.len() < REPLY_HEADER
            || datagram.len() > MAX_REQUEST
            || datagram[1] != PKT_TYPE_REQUEST
            || datagram[2..4] != [0, 0]
        {
            return None;
        }
        let command_code = u16::from_be_bytes([datagram[4], datagram[5]]);
        let word = |at: usize| {
            datagram.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        };
        let data = REQUEST_HEADER;
        // An IPAddr, None for family 0 (unspecified), Err for a family chrony does not have.
        let ip = |at: usize| -> Result<Option<IpAddr>, ()> {
            let Some(field) = datagram.get(at..at + IP_LEN) else { return Ok(None) };
            match u16::from_be_bytes([field[16], field[17]]) {
                0 => Ok(None),
                1 => Ok(Some(IpAddr::from(<[u8; 4]>::try_from(&field[..4]).expect("4 bytes")))),
                2 => Ok(Some(IpAddr::from(<[u8; 16]>::try_from(&field[..16]).expect("16")))),
                _ => Err(()),
            }
        };
        let command = if datagram[0] != PROTO_VERSION {
            // chronyd answers versions it can still talk to, and ignores older ones.
            if datagram[0] < 5 {
                return None;
            }
            Err(Status::BadPacketVersion)
        } else if command_code >= COMMANDS {
            Err(Status::Invalid)
        } else {
            let command = match command_code {
                REQ_NULL => Command::Null,
                REQ_TRACKING => Command::Tracking,
                REQ_N_SOURCES => Command::NumberOfSources,
                REQ_SOURCE_DATA => Command::SourceData { index: word(data).unwrap_or(0) },
                REQ_SOURCESTATS => Command::SourceStats { index: word(data).unwrap_or(0) },
                REQ_ACTIVITY => Command::Activity,
                REQ_SERVER_STATS => Command::ServerStats,
                REQ_CLIENT_ACCESSES_BY_INDEX3 => Command::Clients {
                    first_index: word(data).unwrap_or(0),
                    min_hits: word(data + 8).unwrap_or(0),
                    reset: word(data + 12).unwrap_or(0) != 0,
                },
                REQ_NTP_DATA => Command::NtpData { address: ip(data).unwrap_or(None) },
                REQ_ALLOW | REQ_ALLOWALL | REQ_DENY | REQ_DENYALL => Command::Access {
                    allow: matches!(command_code, REQ_ALLOW | REQ_ALLOWALL),
                    all: matches!(command_code, REQ_ALLOWALL | REQ_DENYALL),
                    subnet: match ip(data) {
                        Ok(address) => address.map(|a| (a, word(data + IP_LEN).unwrap_or(0))),
                        // Never read as "every address".
                        Err(()) => return Some(Self::judged(datagram, Err(Status::BadSubnet))),
                    },
                },
                REQ_ACCHECK => Command::AccessCheck { address: ip(data).unwrap_or(None) },
                REQ_RELOAD_SOURCES => Command::Reload,
                REQ_NTP_SOURCE_NAME => Command::SourceName { address: ip(data).unwrap_or(None) },
                REQ_AUTH_DATA => Command::AuthData { address: ip(data).unwrap_or(None) },
                REQ_SMOOTHING => Command::Smoothing,
                REQ_SMOOTHTIME => match word(data) {
                    Some(0) => Command::SmoothTime { activate: false },
                    Some(1) => Command::SmoothTime { activate: true },
                    Some(_) => return Some(Self::judged(datagram, Err(Status::Invalid))),
                    None => Command::SmoothTime { activate: false },
                },
                other => Command::Unsupported(other),
            };
            let (request, reply) = command.lengths();
            if datagram.len() < request.max(reply) {
                Err(Status::BadPacketLength)
            } else {
                Ok(command)
            }
        };
        Some(Self::judged(datagram, command))
    }

    fn judged(datagram: &[u8], command: Result<Command, Status>) -> Self {
        let command_code = u16::from_be_bytes([datagram[4], datagram[5]]);
        let sequence = datagram[8..12].try_into().expect("4 bytes");
        Self { command_code, sequence, length: datagram.len(), command }
    }

    /// A reply with only a status.
    pub fn status(&self, status: Status) -> Vec<u8> {
        Reply::new(self, RPY_NULL, status).finish()
    }

    pub fn tracking(&self, t: &Tracking) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_TRACKING, Status::Success);
        reply.u32(t.reference_id);
        // An address, or none where the reference ID is a name (LOCL).
        reply.ip(t.reference_name.parse().ok());
        reply.u16(u16::from(t.stratum));
        reply.u16(t.leap as u16);
        reply.timespec(t.reference_time);
        for value in [
            // chrony's correction: positive when the system clock is slow.
            -t.system_time_offset,
            t.last_offset,
            t.rms_offset,
            t.frequency_ppm,
            t.residual_frequency_ppm,
            t.skew_ppm,
            t.root_delay,
            t.root_dispersion,
            t.update_interval,
        ] {
            reply.float(value);
        }
        reply.finish()
    }

    pub fn number_of_sources(&self, sources: u32) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_N_SOURCES, Status::Success);
        reply.u32(sources);
        reply.finish()
    }

    pub fn source_data(&self, s: &SourceReport) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_SOURCE_DATA, Status::Success);
        reply.ip(Some(s.address));
        reply.u16(i16::from(s.poll) as u16);
        reply.u16(u16::from(s.stratum));
        // chrony's RPY_SD_ST_*: 0 '*', 1 '?', 2 'x', 3 '~', 4 '+', 5 '-'.
        reply.u16(match s.state {
            SourceState::Selected => 0,
            SourceState::Unusable => 1,
            SourceState::Falseticker => 2,
            SourceState::TooVariable => 3,
            SourceState::Combined => 4,
            SourceState::NotCombined => 5,
        });
        // chrony's RPY_SD_MD_*: 0 a server we are a client of, 2 a reference clock.
        reply.u16(if s.reference_clock { 2 } else { 0 });
        reply.u16(0); // flags
        reply.u16(u16::from(s.reach));
        reply.u32(s.last_rx.map_or(u32::MAX, |seconds| seconds as u32));
        reply.float(s.measured_offset);
        reply.float(s.adjusted_offset);
        reply.float(s.error);
        reply.finish()
    }

    pub fn source_stats(&self, s: &SourceReport) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_SOURCESTATS, Status::Success);
        // An NTP source's reference ID: its IPv4 address (0 for IPv6, which chronyc then names).
        // A reference clock has no address: chronyc names it by its reference ID.
        reply.u32(match s.address {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        });
        reply.ip((!s.reference_clock).then_some(s.address));
        reply.u32(s.samples as u32);
        reply.u32(s.runs as u32);
        reply.u32(s.span as u32);
        for value in [s.std_dev, s.frequency_ppm, s.skew_ppm, s.offset, s.std_dev] {
            reply.float(value);
        }
        reply.finish()
    }

    /// `smoothing`: chrony's RPY_SMOOTHING.
    pub fn smoothing(&self, r: &SmoothingReport) -> Vec<u8> {
        const ACTIVE: u32 = 1;
        const LEAP_ONLY: u32 = 2;
        let mut reply = Reply::new(self, RPY_SMOOTHING, Status::Success);
        reply.u32(if r.active { ACTIVE } else { 0 } | if r.leap_only { LEAP_ONLY } else { 0 });
        for value in [r.offset, r.frequency_ppm, r.wander_ppm, r.last_update_ago, r.remaining] {
            reply.float(value);
        }
        reply.finish()
    }

    /// `activity`: sources online, offline, in a burst online or offline, unresolved.
    pub fn activity(&self, online: u32, unresolved: u32) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_ACTIVITY, Status::Success);
        for value in [online, 0, 0, 0, unresolved] {
            reply.u32(value);
        }
        reply.finish()
    }

    /// `serverstats`: chrony 4.3's eleven counters, in its order.
    pub fn server_stats(&self, counters: [u32; 11]) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_SERVER_STATS3, Status::Success);
        for value in counters {
            reply.u32(value);
        }
        reply.finish()
    }

    /// `ntpdata`: a source's last reply and counts; `local` the address its requests leave
    /// from.
    pub fn ntp_data(&self, data: &NtpData, local: Option<IpAddr>) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_NTP_DATA, Status::Success);
        reply.ip(Some(data.remote.ip()));
        reply.ip(local);
        reply.u16(data.remote.port());
        let header = data.last_reply.map(|last| last.header);
        let (leap, version, stratum, poll, precision) = header
            .map_or((3, 0, 0, 0, 0), |h| (h.leap as u8, h.version, h.stratum, h.poll, h.precision));
        const MODE_SERVER: u8 = 4;
        reply.bytes.extend_from_slice(&[
            leap,
            version,
            MODE_SERVER,
            stratum,
            poll as u8,
            precision as u8,
        ]);
        reply.float(header.map_or(0.0, |h| h.root_delay.to_seconds()));
        reply.float(header.map_or(0.0, |h| h.root_dispersion.to_seconds()));
        reply.u32(header.map_or(0, |h| u32::from_be_bytes(h.reference_id.to_bits())));
        // The reference time in the era of the measurement (both were set by one reply).
        let measured_at = data.sample.map_or(0, |sample| sample.time_ns);
        reply.timespec(
            header.map_or(0.0, |h| {
                h.reference_timestamp.to_unix_nanos_near(measured_at) as f64 / 1e9
            }),
        );
        let (offset, delay, dispersion) =
            data.sample.map_or((0.0, 0.0, 0.0), |s| (s.offset, s.delay, s.dispersion));
        reply.float(offset);
        reply.float(delay);
        reply.float(dispersion);
        reply.float(data.last_reply.map_or(0.0, |last| last.response_time));
        // The asymmetry of the path's jitter, which ntpxd does not estimate: chrony's
        // "none known".
        reply.float(0.0);
        reply.u16(data.exchanges.tests);
        // Timestamps from the kernel, both ways ('K').
        reply.bytes.extend_from_slice(b"KK");
        let counts = data.exchanges;
        for value in [counts.sent, counts.received, counts.valid, counts.good] {
            reply.u32(value);
        }
        // chronyd fills the reserved words with ones.
        for _ in 0..3 {
            reply.u32(u32::MAX);
        }
        reply.finish()
    }

    /// A source's name, cut to what the reply holds (NUL-terminated).
    pub fn source_name(&self, name: &str) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_NTP_SOURCE_NAME, Status::Success);
        let name = &name.as_bytes()[..name.len().min(SOURCE_NAME_LEN - 1)];
        reply.bytes.extend_from_slice(name);
        reply.zeroes(SOURCE_NAME_LEN - name.len());
        reply.finish()
    }

    /// `authdata`: NTS (AES-SIV-CMAC-256, 256-bit keys) or none.
    pub fn auth_data(&self, nts: Option<NtsAuthData>) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_AUTH_DATA, Status::Success);
        const MODE_NONE: u16 = 0;
        const MODE_NTS: u16 = 2;
        match nts {
            None => {
                reply.u16(MODE_NONE);
                reply.zeroes(AUTH_DATA_LEN - 2);
            }
            Some(auth) => {
                reply.u16(MODE_NTS);
                reply.u16(crate::nts::AEAD_AES_SIV_CMAC_256);
                reply.u32(0); // key ID: none for NTS
                reply.u16((crate::nts::KEY_LEN * 8) as u16);
                reply.u16(auth.attempts);
                reply.u32(auth.last_exchange_ago.unwrap_or(u32::MAX));
                reply.u16(auth.cookies);
                reply.u16(auth.cookie_length);
                reply.u16(auth.naks);
                reply.u16(0);
            }
        }
        reply.finish()
    }

    /// `clients`: up to [`CLIENTS_PER_REPLY`] clients from `first_index`; `next_index` is where
    /// the next request starts, `indices` how many there may be (the table's capacity).
    pub fn clients(&self, indices: u32, next_index: u32, clients: &[ClientReport]) -> Vec<u8> {
        let mut reply = Reply::new(self, RPY_CLIENT_ACCESSES_BY_INDEX3, Status::Success);
        let clients = &clients[..clients.len().min(CLIENTS_PER_REPLY as usize)];
        reply.u32(indices);
        reply.u32(next_index);
        reply.u32(clients.len() as u32);
        for slot in 0..CLIENTS_PER_REPLY as usize {
            let Some(c) = clients.get(slot) else {
                reply.zeroes(CLIENT_LEN);
                continue;
            };
            reply.ip(Some(c.address));
            for value in [c.ntp_requests, 0, 0, c.ntp_drops, 0, 0] {
                reply.u32(value);
            }
            // Intervals (log2 s; 127: unknown): NTP, NTS-KE, command, NTP limited.
            for value in [c.ntp_interval, 127, 127, c.ntp_interval_limited] {
                reply.bytes.push(value as u8);
            }
            for value in [c.last_ntp_ago, u32::MAX, u32::MAX] {
                reply.u32(value);
            }
        }
        reply.finish()
    }
}

/// A reply being written.
struct Reply {
    bytes: Vec<u8>,
    /// The request's length: the reply is never longer.
    limit: usize,
}

impl Reply {
    fn new(request: &Request, reply: u16, status: Status) -> Self {
        let mut bytes = Vec::with_capacity(MAX_REQUEST);
        bytes.extend_from_slice(&[PROTO_VERSION, PKT_TYPE_REPLY, 0, 0]);
        bytes.extend_from_slice(&request.command_code.to_be_bytes());
        // A status alone is a NULL reply.
        let reply = if status == Status::Success { reply } else { RPY_NULL };
        bytes.extend_from_slice(&reply.to_be_bytes());
        bytes.extend_from_slice(&(status as u16).to_be_bytes());
        bytes.extend_from_slice(&[0; 6]);
        bytes.extend_from_slice(&request.sequence);
        bytes.extend_from_slice(&[0; 8]);
        Self { bytes, limit: request.length }
    }

    fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    fn zeroes(&mut self, count: usize) {
        self.bytes.resize(self.bytes.len() + count, 0);
    }

    fn float(&mut self, value: f64) {
        self.u32(encode_float(value));
    }

    /// An IPAddr: family 0 (none), 1 (IPv4: the address in the first four bytes), 2 (IPv6).
    fn ip(&mut self, address: Option<IpAddr>) {
        let (bytes, family): ([u8; 16], u16) = match address {
            None => ([0; 16], 0),
            Some(IpAddr::V4(a)) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                (bytes, 1)
            }
            Some(IpAddr::V6(a)) => (a.octets(), 2),
        };
        self.bytes.extend_from_slice(&bytes);
        self.u16(family);
        self.u16(0);
    }

    /// A Timespec: seconds (high and low words) and nanoseconds.
    fn timespec(&mut self, unix_seconds: f64) {
        let seconds = unix_seconds.floor();
        let nanoseconds = ((unix_seconds - seconds) * 1e9) as u32;
        let seconds = seconds as i64;
        self.u32((seconds >> 32) as u32);
        self.u32(seconds as u32);
        self.u32(nanoseconds.min(999_999_999));
    }

    fn finish(self) -> Vec<u8> {
        // Every request's length was checked against its reply's, or a status reply fits.
        assert!(self.bytes.len() <= self.limit, "a reply longer than its request");
        self.bytes
    }
}

const FLOAT_EXP_BITS: u32 = 7;
const FLOAT_COEF_BITS: u32 = 32 - FLOAT_EXP_BITS;
const FLOAT_EXP_MIN: i32 = -(1 << (FLOAT_EXP_BITS - 1));
const FLOAT_EXP_MAX: i32 = -FLOAT_EXP_MIN - 1;
const FLOAT_COEF_MAX: i32 = (1 << (FLOAT_COEF_BITS - 1)) - 1;

/// chrony's Float: a 7-bit signed exponent and a 25-bit signed coefficient, the value being
/// coefficient x 2^(exponent - 25). NaN is sent as 0, magnitudes beyond the range as the
/// largest value.
pub fn encode_float(value: f64) -> u32 {
    let negative = value < 0.0;
    let x = if value.is_nan() { 0.0 } else { value.abs() };
    let limit = FLOAT_COEF_MAX + i32::from(negative);
    let (mut exp, mut coef): (i32, i32) = if x < 1e-100 {
        (0, 0)
    } else if x > 1e100 {
        (FLOAT_EXP_MAX, limit)
    } else {
        let mut exp = (x.log2() + 1.0) as i32;
        let mut coef = (x * 2f64.powi(FLOAT_COEF_BITS as i32 - exp) + 0.5) as i64;
        while coef > i64::from(limit) {
            coef >>= 1;
            exp += 1;
        }
        (exp, coef as i32)
    };
    if exp > FLOAT_EXP_MAX {
        (exp, coef) = (FLOAT_EXP_MAX, limit);
    } else if exp < FLOAT_EXP_MIN {
        if exp + FLOAT_COEF_BITS as i32 >= FLOAT_EXP_MIN {
            coef >>= FLOAT_EXP_MIN - exp;
            exp = FLOAT_EXP_MIN;
        } else {
            (exp, coef) = (0, 0);
        }
    }
    let coef_bits = if negative {
        (coef.wrapping_neg() as u32) << FLOAT_EXP_BITS >> FLOAT_EXP_BITS
    } else {
        coef as u32
    };
    ((exp as u32) << FLOAT_COEF_BITS) | coef_bits
}

/// The value of a chrony Float.
pub fn decode_float(bits: u32) -> f64 {
    let mut exp = (bits >> FLOAT_COEF_BITS) as i32;
    if exp >= 1 << (FLOAT_EXP_BITS - 1) {
        exp -= 1 << FLOAT_EXP_BITS;
    }
    let mut coef = (bits % (1 << FLOAT_COEF_BITS)) as i32;
    if coef >= 1 << (FLOAT_COEF_BITS - 1) {
        coef -= 1 << FLOAT_COEF_BITS;
    }
    f64::from(coef) * 2f64.powi(exp - FLOAT_COEF_BITS as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: u16, length: usize) -> Vec<u8> {
        let mut bytes = vec![0; length];
        bytes[..2].copy_from_slice(&[PROTO_VERSION, PKT_TYPE_REQUEST]);
        bytes[4..6].copy_from_slice(&command.to_be_bytes());
        bytes[8..12].copy_from_slice(&[1, 2, 3, 4]);
        bytes
    }

    #[test]
    fn floats_keep_25_significant_bits_and_saturate() {
        for value in [0.0, 1.0, -1.0, 0.5, 1e-9, -3.25e-6, 123.456, 1e9, -7.0e-20] {
            let decoded = decode_float(encode_float(value));
            assert!((decoded - value).abs() <= value.abs() * 2f64.powi(-23), "{value} {decoded}");
        }
        assert_eq!(encode_float(f64::NAN), 0);
        assert_eq!(decode_float(encode_float(1e300)), decode_float(encode_float(1e200)));
        assert!(decode_float(encode_float(-1e300)) < -1e18);
        // Far below the smallest step: zero.
        assert_eq!(decode_float(encode_float(1e-90)), 0.0);
    }

    #[test]
    fn requests_are_judged_as_chronyd_judges_them() {
        let tracking = request(REQ_TRACKING, 104);
        let parsed = Request::parse(&tracking).unwrap();
        assert_eq!(parsed.command, Ok(Command::Tracking));
        // Too short for the reply it asks for.
        assert_eq!(Request::parse(&tracking[..100]).unwrap().command, Err(Status::BadPacketLength));
        // Not answered at all: shorter than a reply's header, a reply, longer than any request,
        // reserved bytes set, an old version.
        assert_eq!(Request::parse(&tracking[..27]), None);
        let mut reply = tracking.clone();
        reply[1] = PKT_TYPE_REPLY;
        assert_eq!(Request::parse(&reply), None);
        assert_eq!(Request::parse(&request(REQ_TRACKING, MAX_REQUEST + 1)), None);
        let mut reserved = tracking.clone();
        reserved[3] = 1;
        assert_eq!(Request::parse(&reserved), None);
        let mut old = tracking.clone();
        old[0] = 4;
        assert_eq!(Request::parse(&old), None);
        old[0] = 5;
        assert_eq!(Request::parse(&old).unwrap().command, Err(Status::BadPacketVersion));
        assert_eq!(Request::parse(&request(COMMANDS, 104)).unwrap().command, Err(Status::Invalid));
        assert_eq!(Request::parse(&request(16, 28)).unwrap().command, Ok(Command::Unsupported(16)));
        let clients = request(REQ_CLIENT_ACCESSES_BY_INDEX3, MAX_REQUEST);
        assert_eq!(MAX_REQUEST, 520, "CLIENT_ACCESSES_BY_INDEX3's reply, as chronyd pads to");
        assert!(matches!(Request::parse(&clients).unwrap().command, Ok(Command::Clients { .. })));
    }

    #[test]
    fn smoothing_and_smoothtime_are_chronys_51_and_52() {
        let smoothing = Request::parse(&request(REQ_SMOOTHING, 52)).unwrap();
        assert_eq!(smoothing.command, Ok(Command::Smoothing));
        assert!(Command::Smoothing.is_open() && !Command::Smoothing.changes_state());
        let report = SmoothingReport {
            active: true,
            leap_only: true,
            offset: 0.5,
            frequency_ppm: -32.0,
            wander_ppm: 0.001024,
            last_update_ago: 10.0,
            remaining: 100.0,
        };
        let reply = smoothing.smoothing(&report);
        assert_eq!(reply.len(), 52);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), RPY_SMOOTHING);
        assert_eq!(reply[28..32], [0, 0, 0, 3], "active, leap only");
        let float =
            |at: usize| decode_float(u32::from_be_bytes(reply[at..at + 4].try_into().unwrap()));
        assert_eq!((float(32), float(36)), (0.5, -32.0));
        assert_eq!(float(48), 100.0);
        let mut smoothtime = request(REQ_SMOOTHTIME, 28);
        smoothtime[20..24].copy_from_slice(&1u32.to_be_bytes());
        let parsed = Request::parse(&smoothtime).unwrap();
        assert_eq!(parsed.command, Ok(Command::SmoothTime { activate: true }));
        assert!(Command::SmoothTime { activate: true }.changes_state());
        smoothtime[20..24].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(Request::parse(&smoothtime).unwrap().command, Err(Status::Invalid));
    }

    #[test]
    fn replies_echo_the_request_and_are_never_longer_than_it() {
        let tracking = Request::parse(&request(REQ_TRACKING, 104)).unwrap();
        let reply = tracking.tracking(&Tracking { stratum: 3, ..Tracking::default() });
        assert_eq!(reply.len(), 104);
        assert_eq!(&reply[..6], &[PROTO_VERSION, PKT_TYPE_REPLY, 0, 0, 0, REQ_TRACKING as u8]);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), RPY_TRACKING);
        assert_eq!(&reply[16..20], &[1, 2, 3, 4], "the sequence number");
        let clients = Request::parse(&request(REQ_CLIENT_ACCESSES_BY_INDEX3, 520)).unwrap();
        assert_eq!(clients.clients(8, 0, &[]).len(), 520);
        for command in [REQ_N_SOURCES, REQ_ACTIVITY, REQ_SERVER_STATS, 16] {
            let parsed = Request::parse(&request(command, REPLY_HEADER)).unwrap();
            assert!(parsed.status(Status::NotEnabled).len() <= REPLY_HEADER);
        }
    }

    /// A request carrying an IPAddr (as chronyc writes one) and a word after it.
    fn with_address(
        command: u16,
        length: usize,
        family: u16,
        address: &[u8],
        word: u32,
    ) -> Vec<u8> {
        let mut bytes = request(command, length);
        let at = REQUEST_HEADER;
        bytes[at..at + address.len()].copy_from_slice(address);
        bytes[at + 16..at + 18].copy_from_slice(&family.to_be_bytes());
        bytes[at + IP_LEN..at + IP_LEN + 4].copy_from_slice(&word.to_be_bytes());
        bytes
    }

    #[test]
    fn addresses_and_subnets_are_read_as_chronyc_writes_them() {
        let deny = with_address(REQ_DENY, 48, 1, &[10, 77, 0, 0], 24);
        assert_eq!(
            Request::parse(&deny).unwrap().command,
            Ok(Command::Access {
                allow: false,
                all: false,
                subnet: Some(("10.77.0.0".parse().unwrap(), 24))
            })
        );
        // `allow all` without a subnet: family 0, every address.
        let allow_all = with_address(REQ_ALLOWALL, 48, 0, &[], 0);
        assert_eq!(
            Request::parse(&allow_all).unwrap().command,
            Ok(Command::Access { allow: true, all: true, subnet: None })
        );
        // A family chrony does not have is never "every address".
        let strange = with_address(REQ_ALLOW, 48, 7, &[], 0);
        assert_eq!(Request::parse(&strange).unwrap().command, Err(Status::BadSubnet));
        let v6: Vec<u8> = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
        let check = with_address(REQ_ACCHECK, 48, 2, &v6, 0);
        assert_eq!(
            Request::parse(&check).unwrap().command,
            Ok(Command::AccessCheck { address: Some("fd00::1".parse().unwrap()) })
        );
        // ntpdata's reply is 152 bytes: a shorter request gets BADPKTLENGTH.
        let ntpdata = with_address(REQ_NTP_DATA, 152, 1, &[192, 0, 2, 1], 0);
        assert_eq!(
            Request::parse(&ntpdata).unwrap().command,
            Ok(Command::NtpData { address: Some("192.0.2.1".parse().unwrap()) })
        );
        assert_eq!(Request::parse(&ntpdata[..151]).unwrap().command, Err(Status::BadPacketLength));
    }

    #[test]
    fn only_what_reads_the_synchronisation_is_open_to_udp() {
        let open = [
            REQ_NULL,
            REQ_TRACKING,
            REQ_N_SOURCES,
            REQ_SOURCE_DATA,
            REQ_SOURCESTATS,
            REQ_NTP_SOURCE_NAME,
            REQ_SMOOTHING,
        ];
        for code in 0..COMMANDS {
            let Some(Ok(command)) = Request::parse(&request(code, MAX_REQUEST)).map(|r| r.command)
            else {
                panic!("command {code} not parsed");
            };
            let expected = open.contains(&code) || code == REQ_ACTIVITY;
            assert_eq!(command.is_open(), expected, "command {code}");
        }
    }
}
