//! The configuration as ntpxd holds it: every setting with chrony's default, the errors and
//! warnings of reading it.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use crate::{
    access::AccessRule,
    announce::AnnounceSettings,
    smear::SmearSettings,
    smoothing::SmoothingSettings,
    sync::{discipline::MakeStep, refclock::ClockSettings, source::PollSettings},
};
use crate::{client_log::RateLimitConfig, control::AttachMode, reference::LocalReference};

/// Where ntpxd looks for its configuration by default.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ntpx/ntpx.conf";
pub const DEFAULT_COMMAND_SOCKET: &str = "/run/ntpx/ntpxd.sock";
/// Where Debian's chronyc looks for chronyd, and so for ntpxd.
pub const DEFAULT_CHRONYC_SOCKET: &str = "/run/chrony/chronyd.sock";
/// chronyd's command port.
pub const DEFAULT_CHRONYC_PORT: u16 = 323;
pub const DEFAULT_PIDFILE: &str = "/run/ntpx/ntpxd.pid";
pub const DEFAULT_NTP_PORT: u16 = 123;

/// A line of a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: Location,
    pub message: String,
}

/// A directive accepted but not acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// The size of the client log: `clientloglimit BYTES` (chrony's), `clientlog entries N`
/// (ntpxd's), or `noclientlog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientLogSize {
    Bytes(u64),
    Entries(u32),
    Disabled,
}

impl Default for ClientLogSize {
    /// chrony's default limit.
    fn default() -> Self {
        Self::Bytes(524_288)
    }
}

impl ClientLogSize {
    /// The kernel's memory for one client: the LRU hash element (48-byte header, 16-byte key,
    /// 28-byte record in 32) and its share of the bucket array (16-byte buckets, as many as
    /// entries rounded up to a power of two). Measured: 112,778,176 bytes for 1,000,000 entries.
    pub const BYTES_PER_CLIENT: u64 = 113;
    /// The most clients `clientloglimit` gives, as chrony caps it (2^24 records, about 1.7 GiB
    /// here); `clientlog entries` may ask for more explicitly.
    pub const MAX_ENTRIES_BY_LIMIT: u32 = 1 << 24;

    /// How many clients the log holds; 0 when disabled.
    pub fn entries(&self) -> u32 {
        match *self {
            Self::Bytes(bytes) => (bytes / Self::BYTES_PER_CLIENT)
                .clamp(1, u64::from(Self::MAX_ENTRIES_BY_LIMIT))
                as u32,
            Self::Entries(entries) => entries,
            Self::Disabled => 0,
        }
    }
}

/// `server` or `pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Server,
    /// A name that resolves to several servers, of which `max_sources` are used.
    Pool {
        max_sources: u8,
    },
}

impl SourceKind {
    /// How many servers the line stands for.
    pub fn max_sources(self) -> usize {
        match self {
            Self::Server => 1,
            Self::Pool { max_sources } => usize::from(max_sources),
        }
    }
}

/// A `server` or `pool` line.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// A host name or an IP address.
    pub name: String,
    pub port: u16,
    pub poll: PollSettings,
    /// `nts`: keys and cookies from NTS-KE on the name, and only authenticated replies used.
    pub nts: bool,
}

/// A reference clock's driver, with its options (`PARAMETER[:OPTION]...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefclockDriver {
    /// `SHM UNIT[:perm=MODE]`: the NTP shared-memory segment of key 0x4E545030 + unit that gpsd,
    /// ntpd's tools and phc2sys write, created with `perm` (octal, 0600) if it does not exist.
    Shm { unit: u32, perm: u32 },
    /// `SOCK PATH`: chrony's `sock_sample` datagrams on a Unix socket ntpxd creates.
    Sock { path: PathBuf },
    /// `PPS DEVICE[:clear]`: the Linux PPS API, the assert (or clear) edge.
    Pps { device: PathBuf, clear: bool },
    /// `PHC DEVICE[:nocrossts][:extpps][:pin=N][:channel=N][:clear]`: a PTP hardware clock.
    Phc { device: PathBuf, nocrossts: bool, extpps: Option<ExternalPulse> },
}

impl RefclockDriver {
    /// chrony's name of the driver.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shm { .. } => "SHM",
            Self::Sock { .. } => "SOCK",
            Self::Pps { .. } => "PPS",
            Self::Phc { .. } => "PHC",
        }
    }
}

/// A PHC's `extpps`: pulses time-stamped by the PHC on an input pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalPulse {
    pub pin: u32,
    pub channel: u32,
    /// The falling edge rather than the rising one.
    pub clear: bool,
}

/// `refclock DRIVER PARAMETER[:OPTION]... [OPTION]...`.
#[derive(Clone, Debug)]
pub struct RefclockConfig {
    pub driver: RefclockDriver,
    pub clock: ClockSettings,
    /// `prefer`, `noselect`, `trust`, `require`.
    pub selection: PollSettings,
    /// log2 of the interval the driver is read at, s (`dpoll`, 0; at most `poll`).
    pub dpoll: i8,
    /// `precision` as given (0: the system clock's).
    pub precision: f64,
    /// Where it was written, for errors met when the driver starts; not part of its meaning.
    pub location: Location,
}

impl PartialEq for RefclockConfig {
    fn eq(&self, other: &Self) -> bool {
        let Self { driver, clock, selection, dpoll, precision, location: _ } = self;
        (driver, clock, selection, dpoll, precision)
            == (&other.driver, &other.clock, &other.selection, &other.dpoll, &other.precision)
    }
}

/// Where leap seconds come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeapSecondSource {
    /// `leapsectz ZONE`: tzdata's table (ntpxd reads the leap-seconds.list tzdata installs).
    TimeZone(String),
    /// `leapseclist FILE`: a leap-seconds.list file.
    List(PathBuf),
}

/// The synchronisation settings of chrony.conf.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    pub sources: Vec<SourceConfig>,
    pub refclocks: Vec<RefclockConfig>,
    pub makestep: Option<MakeStep>,
    /// `maxdistance`, s.
    pub max_distance: f64,
    /// `maxclockerror`, ppm.
    pub max_clock_error_ppm: f64,
    pub driftfile: Option<PathBuf>,
    pub rtcsync: bool,
    pub leap_seconds: Option<LeapSecondSource>,
    /// `ntstrustedcerts`: CA certificates (PEM) NTS sources' certificates are checked against,
    /// beside the system's unless `nosystemcert`.
    pub nts_trusted_certs: Vec<PathBuf>,
    pub nts_system_certs: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            refclocks: Vec::new(),
            makestep: None,
            max_distance: 3.0,
            max_clock_error_ppm: 1.0,
            driftfile: None,
            rtcsync: false,
            leap_seconds: None,
            nts_trusted_certs: Vec::new(),
            nts_system_certs: true,
        }
    }
}

/// `xdp IFACE [native|generic]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpInterface {
    pub interface: String,
    pub mode: AttachMode,
}

/// Where chronyc's command protocol is answered, and to whom over UDP.
#[derive(Clone, Debug, PartialEq)]
pub struct ChronycConfig {
    /// `chronycsocket`: the Unix socket, which answers everything (None: none).
    pub socket: Option<PathBuf>,
    /// `cmdport`: the UDP port, which answers monitoring only (0: none).
    pub port: u16,
    /// `bindcmdaddress ADDR`: the UDP port's addresses, loopback unless given.
    pub bind_v4: Ipv4Addr,
    pub bind_v6: Ipv6Addr,
    /// `cmdallow` / `cmddeny` lines in order; the loopback addresses are always allowed.
    pub access: Vec<AccessRule>,
}

impl Default for ChronycConfig {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from(DEFAULT_CHRONYC_SOCKET)),
            port: DEFAULT_CHRONYC_PORT,
            bind_v4: Ipv4Addr::LOCALHOST,
            bind_v6: Ipv6Addr::LOCALHOST,
            access: Vec::new(),
        }
    }
}

/// `ntsmastersecret`: where the fleet's master secret is, and the keys' period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterSecret {
    pub path: PathBuf,
    /// Seconds a derived key seals cookies (a day by default).
    pub period_s: u64,
}

/// The period of the keys derived from a master secret unless `period` says otherwise.
pub const DEFAULT_MASTER_SECRET_PERIOD_S: u64 = 86_400;

/// NTS's server side: on when `ntsservercert` and `ntsserverkey` are given.
#[derive(Clone, Debug, PartialEq)]
pub struct NtsServerConfig {
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `ntsport`: NTS-KE's TCP port.
    pub port: u16,
    /// `ntsdumpdir`: where the server keys are kept (None: new keys at each start).
    pub dump_dir: Option<PathBuf>,
    /// `ntsrotate`: seconds between server keys (0: never rotated, as for a shared key file).
    pub rotate_s: u64,
    /// `ntsmastersecret FILE [period SECONDS]`: the fleet's keys, derived from the secret in
    /// FILE, one per period (instead of random keys, `ntsdumpdir`'s file and `ntsrotate`).
    pub master_secret: Option<MasterSecret>,
    /// `ntsntpserver`: the NTP server NTS-KE names to clients (None: this one).
    pub ntp_server: Option<String>,
    /// `maxntsconnections`: NTS-KE sessions at once.
    pub max_connections: usize,
    /// `ntsratelimit`: NTS-KE connections per client address (None: not limited).
    pub rate_limit: Option<RateLimitConfig>,
}

impl Default for NtsServerConfig {
    fn default() -> Self {
        Self {
            certificate: None,
            key: None,
            port: 4460,
            dump_dir: None,
            rotate_s: 604_800,
            master_secret: None,
            ntp_server: None,
            max_connections: 100,
            rate_limit: None,
        }
    }
}

impl NtsServerConfig {
    pub fn enabled(&self) -> bool {
        self.certificate.is_some() && self.key.is_some()
    }
}

/// The configuration ntpxd acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub local: Option<LocalReference>,
    /// `allow` / `deny` lines in order.
    pub access: Vec<AccessRule>,
    /// 0: no NTP server.
    pub port: u16,
    pub bind_v4: Option<Ipv4Addr>,
    pub bind_v6: Option<Ipv6Addr>,
    pub command_socket: PathBuf,
    pub chronyc: ChronycConfig,
    /// `metricsaddress`: where `/metrics` is served over HTTP (None: nowhere).
    pub metrics: Option<SocketAddr>,
    pub nts: NtsServerConfig,
    pub pidfile: PathBuf,
    /// `user`: whom ntpxd runs as once started (default `_ntpx` when it exists).
    pub user: Option<String>,
    pub xdp: Vec<XdpInterface>,
    /// `announce ADDRESS... [maxdistance S] [holddown S]`: service addresses offered to the
    /// fleet's routing daemon while this server is fit (ntpxd's directive).
    pub announce: Vec<AnnounceSettings>,
    /// `smoothtime MAX-FREQ MAX-WANDER [leaponly]`: every address serves smoothed time.
    pub smoothing: Option<SmoothingSettings>,
    /// `leapsmear ADDRESS... [linear|cosine] [window S]`: these addresses serve leap-smeared
    /// time (ntpxd's directive).
    pub leap_smear: Option<LeapSmearConfig>,
    pub rate_limit: Option<RateLimitConfig>,
    pub client_log: ClientLogSize,
    pub sync: SyncConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            local: None,
            access: Vec::new(),
            port: DEFAULT_NTP_PORT,
            bind_v4: None,
            bind_v6: None,
            command_socket: PathBuf::from(DEFAULT_COMMAND_SOCKET),
            chronyc: ChronycConfig::default(),
            metrics: None,
            nts: NtsServerConfig::default(),
            pidfile: PathBuf::from(DEFAULT_PIDFILE),
            user: None,
            xdp: Vec::new(),
            announce: Vec::new(),
            smoothing: None,
            leap_smear: None,
            rate_limit: None,
            client_log: ClientLogSize::default(),
            sync: SyncConfig::default(),
        }
    }
}

/// `leapsmear`: which local addresses serve smeared time, and how the leap is smeared.
#[derive(Clone, Debug, PartialEq)]
pub struct LeapSmearConfig {
    pub addresses: Vec<std::net::IpAddr>,
    pub settings: SmearSettings,
}

/// A parsed configuration and what was accepted without effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Warning>,
}
