//! The control protocol between ntpxc and ntpxd: one JSON request line over the Unix socket,
//! one JSON response line back (the messages; the daemon's and ntpxc's sides do the I/O).

use std::net::IpAddr;

use ntp_common::maps::Counter;
use serde::{Deserialize, Serialize};

use crate::{
    access::Access,
    announce::AnnouncementReport,
    client_log::Cursor,
    smoothing::SmoothingReport,
    sync::{SourceReport, Tracking},
};

/// How the XDP program is attached to an interface (the `xdp IFACE [native|generic]`
/// directive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver; the fastest, where the driver supports it.
    Native,
    /// In the kernel's network stack, after the socket buffer is built; works everywhere.
    Generic,
}

impl AttachMode {
    /// The directive's word for it (and the metrics' label).
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    ServerStats,
    /// The client log: clients with at least `min_requests` requests. With `top`, the `top`
    /// most active, most active first; otherwise one page in the table's order, from `after`
    /// (a previous page's `next`; none: the start). `reset` zeroes every count after the last
    /// page.
    Clients {
        min_requests: u32,
        top: Option<usize>,
        reset: bool,
        #[serde(default)]
        after: Option<Cursor>,
    },
    /// A rule added at run time, as an `allow`/`deny` line after the configuration's.
    Access {
        access: Access,
        all: bool,
        subnet: Option<String>,
    },
    /// Whether the rules admit an address.
    AccessCheck {
        address: String,
    },
    /// Rereads the configuration file and applies its access rules and rate limit.
    Reload,
    /// The synchronisation as a whole (`tracking`).
    Tracking,
    /// Each source: state, reach, last sample and statistics (`sources`, `sourcestats`).
    Sources,
    /// Each source's authentication (`authdata`).
    AuthData,
    /// Each service address of `announce`: announced, or why not.
    Announcements,
    /// The state of `smoothtime` (chronyc's `smoothing`).
    Smoothing,
    /// `smoothtime reset` (false) or `smoothtime activate` (true).
    SmoothTime {
        activate: bool,
    },
}

impl Request {
    /// Whether the request changes ntpxd's state (only root and ntpxd's user may send those).
    pub fn changes_state(&self) -> bool {
        match self {
            Self::Clients { reset, .. } => *reset,
            Self::Access { .. } | Self::Reload | Self::SmoothTime { .. } => true,
            Self::Smoothing
            | Self::ServerStats
            | Self::AccessCheck { .. }
            | Self::Tracking
            | Self::Sources
            | Self::AuthData
            | Self::Announcements => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    ServerStats(Box<ServerStats>),
    /// `next`: where the next page starts; none after the last.
    Clients {
        clients: Vec<ClientReport>,
        next: Option<Cursor>,
    },
    Ok,
    AccessCheck {
        allowed: bool,
    },
    Tracking(Box<Tracking>),
    Sources {
        sources: Vec<SourceReport>,
    },
    AuthData {
        sources: Vec<AuthData>,
    },
    Announcements {
        addresses: Vec<AnnouncementReport>,
    },
    Smoothing(SmoothingReport),
    Error {
        message: String,
    },
}

/// One client of `clients`, as chronyc reports it (intervals in log2 s, 127 unknown; seconds
/// since the last request, `u32::MAX` never).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    pub address: IpAddr,
    pub ntp_requests: u32,
    pub ntp_drops: u32,
    pub ntp_kiss_of_death: u32,
    pub ntp_interval: i8,
    pub ntp_interval_limited: i8,
    pub last_ntp_ago: u32,
}

/// `serverstats`: chrony's counters, then this server's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Requests from admitted clients: answered in the kernel or received by the slow path.
    pub ntp_packets_received: u64,
    /// Requests dropped by rate limiting.
    pub ntp_packets_dropped: u64,
    pub command_packets_received: u64,
    pub command_packets_dropped: u64,
    pub client_log_records_dropped: u64,
    pub nts_ke_connections_accepted: u64,
    pub nts_ke_connections_dropped: u64,
    pub authenticated_ntp_packets: u64,
    pub interleaved_ntp_packets: u64,
    pub ntp_timestamps_held: u64,
    pub ntp_timestamp_span: u64,
    /// The XDP program's counters, summed over CPUs.
    pub kernel: KernelCounters,
    pub slow_path: SlowPathCounters,
    /// Interfaces the XDP program is attached to.
    pub xdp: Vec<XdpAttachment>,
    /// How many clients the client log holds at most (0: off), and its memory in the kernel.
    pub client_log_capacity: u32,
    pub client_log_bytes: u64,
    /// Times an accept loop (NTS-KE, metrics, ntpxc's socket) rested for want of descriptors
    /// or memory.
    #[serde(default)]
    pub accept_backoffs: u64,
}

/// One source's authentication, as `chronyc authdata` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthData {
    pub name: String,
    pub address: IpAddr,
    /// None: not authenticated.
    pub nts: Option<NtsAuthData>,
}

/// An NTS source's key exchanges and cookies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NtsAuthData {
    /// Key exchanges tried since the last that succeeded.
    pub attempts: u16,
    /// Seconds since the last key exchange (None: none yet).
    pub last_exchange_ago: Option<u32>,
    pub naks: u16,
    pub cookies: u16,
    pub cookie_length: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub mode: AttachMode,
}

/// The XDP program's counters (see [`Counter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    pub received: u64,
    pub answered: u64,
    pub answered_kiss_of_death: u64,
    pub passed_malformed: u64,
    pub passed_fragment: u64,
    pub passed_length: u64,
    pub passed_not_request: u64,
    pub passed_address: u64,
    pub passed_checksum: u64,
    pub passed_stale: u64,
    pub dropped_denied: u64,
    pub dropped_rate_limit: u64,
    pub client_records_created: u64,
}

impl KernelCounters {
    pub fn from_array(values: &[u64; Counter::COUNT as usize]) -> Self {
        let mut counters = Self::default();
        for counter in Counter::ALL {
            *counters.field(counter) = values[counter as usize];
        }
        counters
    }

    fn field(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Received => &mut self.received,
            Counter::Answered => &mut self.answered,
            Counter::AnsweredKissOfDeath => &mut self.answered_kiss_of_death,
            Counter::PassedMalformed => &mut self.passed_malformed,
            Counter::PassedFragment => &mut self.passed_fragment,
            Counter::PassedLength => &mut self.passed_length,
            Counter::PassedNotRequest => &mut self.passed_not_request,
            Counter::PassedAddress => &mut self.passed_address,
            Counter::PassedChecksum => &mut self.passed_checksum,
            Counter::PassedStale => &mut self.passed_stale,
            Counter::DroppedDenied => &mut self.dropped_denied,
            Counter::DroppedRateLimit => &mut self.dropped_rate_limit,
            Counter::ClientRecordsCreated => &mut self.client_records_created,
        }
    }
}

/// The daemon's socket path: what the kernel passed, or everything without XDP. Every
/// datagram is counted once under its outcome: `datagrams` is the sum of `answered`,
/// `kiss_of_death`, `nts_naks`, `rate_limited`, `denied` and the `unanswered` reasons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowPathCounters {
    /// Every datagram the socket took.
    #[serde(default)]
    pub datagrams: u64,
    /// Requests from admitted clients (logged in the client log, answered or not).
    pub received: u64,
    /// Answered with the time (NTS-authenticated ones included).
    pub answered: u64,
    pub kiss_of_death: u64,
    pub rate_limited: u64,
    /// Datagrams from clients the access rules deny.
    pub denied: u64,
    /// NTS: requests answered authenticated, and NAKs (cookies the server cannot open).
    #[serde(default)]
    pub authenticated: u64,
    #[serde(default)]
    pub nts_naks: u64,
    /// NTS-KE connections that got keys and cookies, and those that did not (TLS failed, a bad
    /// request, a timeout, too many at once).
    #[serde(default)]
    pub nts_ke_accepted: u64,
    #[serde(default)]
    pub nts_ke_dropped: u64,
    #[serde(default)]
    pub unanswered: UnansweredCounters,
}

/// Datagrams the slow path did not answer, besides the denied and the rate-limited, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnansweredCounters {
    /// Longer than the longest NTP datagram, or without a destination address.
    pub unreadable: u64,
    /// Not to one of the served addresses, or from an address no request comes from.
    pub address: u64,
    /// A bad length, or extension fields that do not parse.
    pub malformed: u64,
    /// A version other than 1 to 4.
    pub version: u64,
    /// Not a client request (mode 3).
    pub not_request: u64,
    /// A symmetric-key MAC, which ntpxd cannot check.
    pub mac: u64,
    /// NTS fields that are not an NTS request, or NTS while none is served.
    pub not_nts: u64,
    /// The time model too old to serve.
    pub stale: u64,
}

impl UnansweredCounters {
    pub fn total(&self) -> u64 {
        let Self { unreadable, address, malformed, version, not_request, mac, not_nts, stale } =
            *self;
        unreadable + address + malformed + version + not_request + mac + not_nts + stale
    }
}
