//! chrony.conf, read as ntpxd understands it.
//!
//! Every directive of chrony 4.3 is recognised. Those ntpxd implements are parsed and checked;
//! the others are accepted with a warning naming the file and line, so that an existing
//! chrony.conf works. An unknown word or a bad value is an error with file and line, and nothing
//! of the file is applied. New directives of ntpxd use the same syntax (`xdp IFACE [MODE]`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use crate::{
    access::{Access, AccessRule, Subnet},
    sync::{discipline::MakeStep, source::PollSettings},
};
pub use crate::{client_log::RateLimitConfig, control::AttachMode, reference::LocalReference};

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
            rate_limit: None,
            client_log: ClientLogSize::default(),
            sync: SyncConfig::default(),
        }
    }
}

/// The effective configuration in chrony.conf syntax (what `ntpxd -p` prints); parsing it
/// gives the same configuration back.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            local,
            access,
            port,
            bind_v4,
            bind_v6,
            command_socket,
            chronyc,
            metrics,
            nts,
            pidfile,
            user,
            xdp,
            rate_limit,
            client_log,
            sync,
        } = self;
        if let Some(LocalReference { stratum, distance }) = local {
            writeln!(f, "local stratum {stratum} distance {distance}")?;
        }
        fn write_rules(
            f: &mut fmt::Formatter<'_>,
            rules: &[AccessRule],
            prefix: &str,
        ) -> fmt::Result {
            for AccessRule { access, all, subnet } in rules {
                let directive = match access {
                    Access::Allow => "allow",
                    Access::Deny => "deny",
                };
                let all = if *all { " all" } else { "" };
                match subnet {
                    Subnet::Everything => writeln!(f, "{prefix}{directive}{all}")?,
                    subnet => writeln!(f, "{prefix}{directive}{all} {subnet}")?,
                }
            }
            Ok(())
        }
        write_rules(f, access, "")?;
        writeln!(f, "port {port}")?;
        if let Some(address) = bind_v4 {
            writeln!(f, "bindaddress {address}")?;
        }
        if let Some(address) = bind_v6 {
            writeln!(f, "bindaddress {address}")?;
        }
        writeln!(f, "bindcmdaddress {}", command_socket.display())?;
        let ChronycConfig { socket, port, bind_v4, bind_v6, access } = chronyc;
        match socket {
            Some(path) => writeln!(f, "chronycsocket {}", path.display())?,
            None => writeln!(f, "chronycsocket none")?,
        }
        writeln!(f, "cmdport {port}")?;
        writeln!(f, "bindcmdaddress {bind_v4}")?;
        writeln!(f, "bindcmdaddress {bind_v6}")?;
        write_rules(f, access, "cmd")?;
        match metrics {
            Some(address) => writeln!(f, "metricsaddress {address}")?,
            None => writeln!(f, "metricsaddress none")?,
        }
        let NtsServerConfig {
            certificate,
            key,
            port,
            dump_dir,
            rotate_s,
            ntp_server,
            max_connections,
            rate_limit: nts_rate_limit,
        } = nts;
        if let Some(path) = certificate {
            writeln!(f, "ntsservercert {}", path.display())?;
        }
        if let Some(path) = key {
            writeln!(f, "ntsserverkey {}", path.display())?;
        }
        writeln!(f, "ntsport {port}")?;
        if let Some(dir) = dump_dir {
            writeln!(f, "ntsdumpdir {}", dir.display())?;
        }
        writeln!(f, "ntsrotate {rotate_s}")?;
        if let Some(name) = ntp_server {
            writeln!(f, "ntsntpserver {name}")?;
        }
        writeln!(f, "maxntsconnections {max_connections}")?;
        if let Some(RateLimitConfig { interval, burst, leak, kod: _ }) = nts_rate_limit {
            writeln!(f, "ntsratelimit interval {interval} burst {burst} leak {leak}")?;
        }
        writeln!(f, "pidfile {}", pidfile.display())?;
        if let Some(user) = user {
            writeln!(f, "user {user}")?;
        }
        for XdpInterface { interface, mode } in xdp {
            let mode = mode.name();
            writeln!(f, "xdp {interface} {mode}")?;
        }
        if let Some(RateLimitConfig { interval, burst, leak, kod }) = rate_limit {
            writeln!(f, "ratelimit interval {interval} burst {burst} leak {leak} kod {kod}")?;
        }
        match client_log {
            ClientLogSize::Bytes(bytes) => writeln!(f, "clientloglimit {bytes}")?,
            ClientLogSize::Entries(entries) => writeln!(f, "clientlog entries {entries}")?,
            ClientLogSize::Disabled => writeln!(f, "noclientlog")?,
        }
        write!(f, "{sync}")
    }
}

impl fmt::Display for SyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            sources,
            makestep,
            max_distance,
            max_clock_error_ppm,
            driftfile,
            rtcsync,
            leap_seconds,
            nts_trusted_certs,
            nts_system_certs,
        } = self;
        for SourceConfig { kind, name, port, poll, nts } in sources {
            let PollSettings { minpoll, maxpoll, iburst, prefer, noselect, maxdelay } = poll;
            match kind {
                SourceKind::Server => write!(f, "server {name}")?,
                SourceKind::Pool { max_sources } => {
                    write!(f, "pool {name} maxsources {max_sources}")?
                }
            }
            write!(f, " port {port} minpoll {minpoll} maxpoll {maxpoll} maxdelay {maxdelay}")?;
            let flags =
                [("iburst", iburst), ("prefer", prefer), ("noselect", noselect), ("nts", nts)];
            for (flag, on) in flags {
                if *on {
                    write!(f, " {flag}")?;
                }
            }
            writeln!(f)?;
        }
        if let Some(MakeStep { threshold, limit }) = makestep {
            writeln!(f, "makestep {threshold} {limit}")?;
        }
        writeln!(f, "maxdistance {max_distance}")?;
        writeln!(f, "maxclockerror {max_clock_error_ppm}")?;
        if let Some(path) = driftfile {
            writeln!(f, "driftfile {}", path.display())?;
        }
        if *rtcsync {
            writeln!(f, "rtcsync")?;
        }
        match leap_seconds {
            Some(LeapSecondSource::TimeZone(zone)) => writeln!(f, "leapsectz {zone}")?,
            Some(LeapSecondSource::List(path)) => writeln!(f, "leapseclist {}", path.display())?,
            None => {}
        }
        for path in nts_trusted_certs {
            writeln!(f, "ntstrustedcerts {}", path.display())?;
        }
        if !nts_system_certs {
            writeln!(f, "nosystemcert")?;
        }
        Ok(())
    }
}

/// A parsed configuration and what was accepted without effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Warning>,
}

/// What ntpxd does with a chrony directive it does not implement.
enum Unsupported {
    /// Meaningful for ntpxd, not implemented yet.
    NotYet,
    /// Has no meaning for ntpxd.
    NoEffect(&'static str),
}

/// chrony 4.3's directives that ntpxd accepts without acting on them.
fn unsupported(directive: &str) -> Option<Unsupported> {
    use Unsupported::{NoEffect, NotYet};
    Some(match directive {
        "peer" | "refclock" | "leapsecmode" | "maxupdateskew" | "maxchange" | "maxdrift"
        | "maxslewrate" | "minsources" | "maxjitter" | "minsamples" | "maxsamples"
        | "combinelimit" | "reselectdist" | "stratumweight" | "initstepslew" | "fallbackdrift"
        | "corrtimeratio" | "sourcedir" | "authselectmode" | "smoothtime" | "tempcomp"
        | "clockprecision" | "hwtimestamp" | "hwtstimeout" | "acquisitionport"
        | "bindacqaddress" | "bindacqdevice" | "binddevice" | "broadcast" | "dscp" | "manual"
        | "refresh" | "cmdratelimit" => NotYet,
        "bindcmddevice" => NoEffect("bindcmdaddress names the addresses chronyc is answered on"),
        "ntsprocesses" => NotYet,
        "nocerttimecheck" | "ntsrefresh" => NotYet,
        "keyfile" | "ntpsigndsocket" | "ptpport" => NoEffect(
            "symmetric keys, MS-SNTP and PTP are not supported: such requests get no reply",
        ),
        "dumpdir" | "hwclockfile" | "lock_all" | "log" | "logbanner" | "logchange" | "logdir"
        | "mailonchange" | "rtcautotrim" | "rtcdevice" | "rtcfile" | "rtconutc"
        | "sched_priority" => NoEffect("ntpxd does not use it"),
        _ => return None,
    })
}

/// Reads `path` and the files it includes.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut parser = Parser::default();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        location: Location { file: path.to_owned(), line: 0 },
        message: format!("cannot read: {error}"),
    })?;
    parser.parse(path, &text, 0)?;
    parser.finish()
}

/// Parses `text` as if read from `file` (includes are read from disk).
pub fn parse(file: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let mut parser = Parser::default();
    parser.parse(file, text, 0)?;
    parser.finish()
}

#[derive(Default)]
struct Parser {
    config: Config,
    warnings: Vec<Warning>,
    /// Where `ratelimit` and `noclientlog` were given, to report their conflict.
    rate_limit_at: Option<Location>,
    no_client_log_at: Option<Location>,
    /// Where the last of `ntsservercert` and `ntsserverkey` was given.
    nts_at: Option<Location>,
}

/// Nesting limit for `include` and `confdir`, against include loops.
const MAX_INCLUDE_DEPTH: usize = 10;

impl Parser {
    /// Checks the configuration as a whole.
    fn finish(self) -> Result<Loaded, ConfigError> {
        if let Some(location) = &self.nts_at
            && !self.config.nts.enabled()
        {
            return Err(ConfigError {
                location: location.clone(),
                message: "NTS needs both ntsservercert and ntsserverkey".into(),
            });
        }
        if let (Some(rate_limit), Some(no_client_log)) =
            (&self.rate_limit_at, &self.no_client_log_at)
        {
            let later =
                if rate_limit.line > no_client_log.line { rate_limit } else { no_client_log };
            return Err(ConfigError {
                location: later.clone(),
                message: format!(
                    "rate limiting (line {}) needs the client log, which noclientlog (line {}) \
                     turns off",
                    rate_limit.line, no_client_log.line
                ),
            });
        }
        Ok(Loaded { config: self.config, warnings: self.warnings })
    }

    fn parse(&mut self, file: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        for (index, line) in text.lines().enumerate() {
            let location = Location { file: file.to_owned(), line: index + 1 };
            let line = line.trim();
            if line.is_empty() || line.starts_with(['!', ';', '#', '%']) {
                continue;
            }
            let mut words = line.split_whitespace();
            let directive = words.next().unwrap_or_default().to_ascii_lowercase();
            let args: Vec<&str> = words.collect();
            self.directive(&directive, &args, &location, depth)
                .map_err(|message| ConfigError { location: location.clone(), message })?;
        }
        Ok(())
    }

    fn directive(
        &mut self,
        directive: &str,
        args: &[&str],
        location: &Location,
        depth: usize,
    ) -> Result<(), String> {
        let config = &mut self.config;
        match directive {
            "allow" | "deny" => {
                let access = if directive == "allow" { Access::Allow } else { Access::Deny };
                config.access.push(parse_access(access, args)?);
            }
            "local" => config.local = Some(parse_local(args)?),
            "port" => config.port = parse_number(one(args)?, "a UDP port")?,
            "bindaddress" => match one(args)?.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => config.bind_v4 = Some(a),
                Ok(IpAddr::V6(a)) => config.bind_v6 = Some(a),
                Err(_) => {
                    return Err(format!("bindaddress needs an IP address, not {:?}", args[0]));
                }
            },
            "bindcmdaddress" => {
                let address = one(args)?;
                if address.starts_with('/') {
                    config.command_socket = PathBuf::from(address);
                } else if let Ok(address) = address.parse::<IpAddr>() {
                    match address {
                        IpAddr::V4(a) => config.chronyc.bind_v4 = a,
                        IpAddr::V6(a) => config.chronyc.bind_v6 = a,
                    }
                } else {
                    return Err(format!(
                        "bindcmdaddress needs a socket path or an IP address, not {address:?}"
                    ));
                }
            }
            "chronycsocket" => {
                config.chronyc.socket = match one(args)? {
                    "none" => None,
                    path if path.starts_with('/') => Some(PathBuf::from(path)),
                    other => {
                        return Err(format!(
                            "chronycsocket needs a socket path or none, not {other:?}"
                        ));
                    }
                }
            }
            "metricsaddress" => {
                config.metrics = match one(args)? {
                    "none" => None,
                    address => Some(address.parse().map_err(|_| {
                        format!(
                            "metricsaddress needs ADDRESS:PORT ([ADDRESS]:PORT for IPv6) or none, \
                             not {address:?}"
                        )
                    })?),
                }
            }
            "ntsservercert" => {
                config.nts.certificate = Some(PathBuf::from(one(args)?));
                self.nts_at = Some(location.clone());
            }
            "ntsserverkey" => {
                config.nts.key = Some(PathBuf::from(one(args)?));
                self.nts_at = Some(location.clone());
            }
            "ntstrustedcerts" => {
                config.sync.nts_trusted_certs.push(PathBuf::from(one(args)?));
            }
            "nosystemcert" => {
                if !args.is_empty() {
                    return Err("nosystemcert takes no value".into());
                }
                config.sync.nts_system_certs = false;
            }
            "ntsport" => config.nts.port = parse_number(one(args)?, "a TCP port")?,
            "ntsdumpdir" => config.nts.dump_dir = Some(PathBuf::from(one(args)?)),
            "ntsrotate" => config.nts.rotate_s = parse_number(one(args)?, "seconds")?,
            "ntsntpserver" => config.nts.ntp_server = Some(one(args)?.to_owned()),
            "maxntsconnections" => {
                config.nts.max_connections = parse_number(one(args)?, "a number of connections")?
            }
            "ntsratelimit" => {
                let limit = parse_rate_limit(directive, RateLimitConfig::NTS_KE, args)?;
                if limit.kod != 0 {
                    return Err(
                        "ntsratelimit has no kod option (NTS-KE has no kiss-o'-death)".into()
                    );
                }
                config.nts.rate_limit = Some(limit);
            }
            "cmdport" => config.chronyc.port = parse_number(one(args)?, "a UDP port")?,
            "cmdallow" | "cmddeny" => {
                let access = if directive == "cmdallow" { Access::Allow } else { Access::Deny };
                config.chronyc.access.push(parse_access(access, args)?);
            }
            "pidfile" => config.pidfile = PathBuf::from(one(args)?),
            "user" => config.user = Some(one(args)?.to_owned()),
            "xdp" => {
                let interface = match args {
                    [interface] | [interface, _] => (*interface).to_owned(),
                    _ => return Err("usage: xdp INTERFACE [native|generic]".into()),
                };
                let mode = match args.get(1).copied() {
                    None | Some("native") => AttachMode::Native,
                    Some("generic") => AttachMode::Generic,
                    Some(other) => {
                        return Err(format!("xdp mode must be native or generic, not {other:?}"));
                    }
                };
                if config.xdp.iter().any(|x| x.interface == interface) {
                    return Err(format!("xdp {interface} is given twice"));
                }
                config.xdp.push(XdpInterface { interface, mode });
            }
            "ratelimit" => {
                config.rate_limit =
                    Some(parse_rate_limit(directive, RateLimitConfig::default(), args)?);
                self.rate_limit_at = Some(location.clone());
            }
            "clientloglimit" => {
                config.client_log =
                    ClientLogSize::Bytes(parse_number(one(args)?, "a size in bytes")?)
            }
            "clientlog" => match args {
                ["entries", count] => {
                    let entries: u32 = parse_number(count, "a number of clients")?;
                    if entries == 0 {
                        return Err(
                            "clientlog entries must be at least 1 (noclientlog turns it off)"
                                .into(),
                        );
                    }
                    config.client_log = ClientLogSize::Entries(entries);
                }
                _ => return Err("usage: clientlog entries N".into()),
            },
            "noclientlog" => {
                if !args.is_empty() {
                    return Err("noclientlog takes no value".into());
                }
                config.client_log = ClientLogSize::Disabled;
                self.no_client_log_at = Some(location.clone());
            }
            "server" | "pool" => {
                let (source, ignored) = parse_source(directive, args)?;
                for option in ignored {
                    self.warn(
                        location,
                        &format!(
                            "{directive} option `{option}` is not implemented by ntpxd; ignored"
                        ),
                    );
                }
                self.config.sync.sources.push(source);
            }
            "makestep" => {
                let [threshold, limit] = args else {
                    return Err("usage: makestep THRESHOLD LIMIT".into());
                };
                let threshold = parse_positive(threshold, "a makestep threshold")?;
                config.sync.makestep = Some(MakeStep {
                    threshold,
                    limit: parse_number(limit, "a number of updates")?,
                });
            }
            "maxdistance" => {
                config.sync.max_distance = parse_positive(one(args)?, "a distance in seconds")?
            }
            "maxclockerror" => {
                config.sync.max_clock_error_ppm = parse_positive(one(args)?, "an error in ppm")?
            }
            "driftfile" => config.sync.driftfile = Some(PathBuf::from(one(args)?)),
            "rtcsync" => {
                if !args.is_empty() {
                    return Err("rtcsync takes no value".into());
                }
                config.sync.rtcsync = true;
            }
            "leapsectz" => {
                config.sync.leap_seconds = Some(LeapSecondSource::TimeZone(one(args)?.to_owned()))
            }
            "leapseclist" => {
                config.sync.leap_seconds = Some(LeapSecondSource::List(PathBuf::from(one(args)?)))
            }
            "include" => {
                for path in expand_glob(one(args)?)? {
                    self.include(&path, depth)?;
                }
            }
            "confdir" => {
                if args.is_empty() {
                    return Err("confdir needs at least one directory".into());
                }
                // chrony reads the *.conf files of all the directories in name order, a name
                // found in an earlier directory hiding the same name in later ones.
                let mut files = std::collections::BTreeMap::new();
                for dir in args {
                    for path in files_in(dir, "conf") {
                        let name = path.file_name().map(ToOwned::to_owned).unwrap_or_default();
                        files.entry(name).or_insert(path);
                    }
                }
                for path in files.values() {
                    self.include(path, depth)?;
                }
            }
            other => match unsupported(other) {
                Some(Unsupported::NotYet) => self
                    .warn(location, &format!("`{other}` is not implemented by ntpxd yet; ignored")),
                Some(Unsupported::NoEffect(why)) => {
                    self.warn(location, &format!("`{other}` has no effect: {why}"))
                }
                None => return Err(format!("unknown directive `{other}`")),
            },
        }
        Ok(())
    }

    fn include(&mut self, path: &Path, depth: usize) -> Result<(), String> {
        if depth >= MAX_INCLUDE_DEPTH {
            return Err("includes nested too deeply (a loop?)".into());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        self.parse(path, &text, depth + 1).map_err(|error| format!("in included file: {error}"))
    }

    fn warn(&mut self, location: &Location, message: &str) {
        self.warnings.push(Warning { location: location.clone(), message: message.to_owned() });
    }
}

fn one<'a>(args: &[&'a str]) -> Result<&'a str, String> {
    match args {
        [value] => Ok(value),
        [] => Err("a value is missing".into()),
        _ => Err(format!("one value expected, found {}", args.len())),
    }
}

fn parse_number<T: std::str::FromStr>(word: &str, what: &str) -> Result<T, String> {
    word.parse().map_err(|_| format!("{word:?} is not {what}"))
}

fn parse_positive(word: &str, what: &str) -> Result<f64, String> {
    match word.parse::<f64>() {
        Ok(value) if value > 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("expected {what} above zero, not {word:?}")),
    }
}

/// chrony's `server`/`pool` options that ntpxd accepts without acting on them; those that
/// would change what the source means (authentication) are errors instead.
const IGNORED_SOURCE_OPTIONS: &[(&str, bool)] = &[
    // (option, takes a value)
    ("burst", false),
    ("trust", false),
    ("require", false),
    ("offline", false),
    ("auto_offline", false),
    ("xleave", false),
    ("copy", false),
    ("maxdelayratio", true),
    ("maxdelaydevratio", true),
    ("mindelay", true),
    ("asymmetry", true),
    ("offset", true),
    ("minstratum", true),
    ("polltarget", true),
    ("presend", true),
    ("maxsamples", true),
    ("minsamples", true),
    ("filter", true),
    ("version", true),
    ("extfield", true),
];

/// `server|pool NAME [OPTION]...`; also returns the options accepted without effect.
fn parse_source(directive: &str, args: &[&str]) -> Result<(SourceConfig, Vec<String>), String> {
    let Some((name, mut options)) = args.split_first() else {
        return Err(format!("usage: {directive} NAME [OPTION]..."));
    };
    let mut poll = PollSettings::default();
    let mut port = DEFAULT_NTP_PORT;
    let mut max_sources = None;
    let mut nts = false;
    let mut ignored = Vec::new();
    while let Some((option, rest)) = options.split_first() {
        options = rest;
        let mut value = |what: &str| -> Result<&str, String> {
            let (value, rest) =
                options.split_first().ok_or_else(|| format!("{option} needs {what}"))?;
            options = rest;
            Ok(value)
        };
        match *option {
            "iburst" => poll.iburst = true,
            "prefer" => poll.prefer = true,
            "noselect" => poll.noselect = true,
            "minpoll" => poll.minpoll = parse_poll(value("a poll exponent")?)?,
            "maxpoll" => poll.maxpoll = parse_poll(value("a poll exponent")?)?,
            "maxdelay" => poll.maxdelay = parse_positive(value("a delay in seconds")?, "a delay")?,
            "port" => port = parse_number(value("a UDP port")?, "a UDP port")?,
            "maxsources" => {
                let count: u8 = parse_number(value("a number of sources")?, "a number")?;
                if !(1..=16).contains(&count) {
                    return Err("maxsources must be 1 to 16".into());
                }
                max_sources = Some(count);
            }
            "nts" => nts = true,
            "key" | "certset" => {
                return Err(format!(
                    "`{option}`: symmetric keys and certificate sets are not supported by ntpxd"
                ));
            }
            other => match IGNORED_SOURCE_OPTIONS.iter().find(|(name, _)| *name == other) {
                Some((_, takes_value)) => {
                    if *takes_value {
                        value("a value")?;
                    }
                    ignored.push(other.to_owned());
                }
                None => return Err(format!("unknown {directive} option `{other}`")),
            },
        }
    }
    if poll.maxpoll < poll.minpoll {
        poll.maxpoll = poll.minpoll;
    }
    let kind = match (directive, max_sources) {
        ("pool", max_sources) => SourceKind::Pool { max_sources: max_sources.unwrap_or(4) },
        (_, Some(_)) => return Err("maxsources is an option of pool".into()),
        _ => SourceKind::Server,
    };
    Ok((SourceConfig { kind, name: (*name).to_owned(), port, poll, nts }, ignored))
}

fn parse_poll(word: &str) -> Result<i8, String> {
    match word.parse::<i8>() {
        Ok(poll) if (-7..=24).contains(&poll) => Ok(poll),
        _ => Err(format!("a poll exponent is -7 to 24, not {word:?}")),
    }
}

/// `ratelimit`'s or `ntsratelimit`'s options over `defaults`.
fn parse_rate_limit(
    directive: &str,
    defaults: RateLimitConfig,
    args: &[&str],
) -> Result<RateLimitConfig, String> {
    let mut limit = defaults;
    let mut args = args.iter();
    while let Some(&option) = args.next() {
        let value = args.next().copied().ok_or(format!("{directive} {option} needs a value"))?;
        let value: i32 = parse_number(value, "a number")?;
        let (field, range) = match option.to_ascii_lowercase().as_str() {
            "interval" => (&mut limit.interval, -19..=12),
            "burst" => (&mut limit.burst, 1..=255),
            "leak" => (&mut limit.leak, 1..=4),
            "kod" => (&mut limit.kod, 0..=4),
            other => return Err(format!("unknown {directive} option `{other}`")),
        };
        if !range.contains(&value) {
            return Err(format!(
                "{directive} {option} must be {} to {}, not {value}",
                range.start(),
                range.end()
            ));
        }
        *field = value;
    }
    Ok(limit)
}

fn parse_local(args: &[&str]) -> Result<LocalReference, String> {
    let mut local = LocalReference { stratum: 10, distance: 1.0 };
    let mut args = args.iter();
    while let Some(&option) = args.next() {
        let mut value =
            |what: &str| args.next().copied().ok_or(format!("local {option} needs {what}"));
        match option.to_ascii_lowercase().as_str() {
            "stratum" => {
                local.stratum = parse_number(value("a stratum")?, "a stratum")?;
                if !(1..=15).contains(&local.stratum) {
                    return Err(format!("local stratum must be 1 to 15, not {}", local.stratum));
                }
            }
            "distance" => {
                local.distance = parse_number(value("a distance")?, "a distance in seconds")?
            }
            // Refused rather than accepted without effect: each changes when chrony serves.
            "orphan" => {
                return Err("local orphan is not supported: ntpxd has no orphan mode (servers \
                    that poll each other would synchronise to each other)"
                    .into());
            }
            "activate" | "waitsynced" | "waitunsynced" => {
                return Err(format!("local {option} is not supported by ntpxd"));
            }
            other => return Err(format!("unknown local option `{other}`")),
        }
    }
    Ok(local)
}

/// `allow|deny [all] [SUBNET]` with chrony's address forms: an address, ADDRESS/BITS, one to
/// three decimal numbers (a shortened IPv4 network, 8 bits each), or a host name.
fn parse_access(access: Access, args: &[&str]) -> Result<AccessRule, String> {
    let (all, subnet) = match args {
        [] => (false, None),
        ["all"] => (true, None),
        ["all", subnet] => (true, Some(*subnet)),
        [subnet] => (false, Some(*subnet)),
        _ => return Err("usage: allow|deny [all] [SUBNET]".into()),
    };
    let subnet = match subnet {
        None => Subnet::Everything,
        Some(text) => parse_subnet(text)?,
    };
    Ok(AccessRule { access, all, subnet })
}

pub fn parse_subnet(text: &str) -> Result<Subnet, String> {
    let (net, bits) = match text.split_once('/') {
        Some((net, bits)) => {
            let bits: u8 = parse_number(bits, "a prefix length")?;
            (net, Some(bits))
        }
        None => (text, None),
    };
    let too_long =
        |max: u8| format!("prefix length {} is longer than {max} bits", bits.unwrap_or(0));
    if let Ok(address) = net.parse::<IpAddr>() {
        return match address {
            IpAddr::V4(a) if bits.unwrap_or(32) <= 32 => Ok(Subnet::V4(a, bits.unwrap_or(32))),
            IpAddr::V6(a) if bits.unwrap_or(128) <= 128 => Ok(Subnet::V6(a, bits.unwrap_or(128))),
            IpAddr::V4(_) => Err(too_long(32)),
            IpAddr::V6(_) => Err(too_long(128)),
        };
    }
    let parts: Vec<&str> = net.split('.').collect();
    if (1..=3).contains(&parts.len())
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let mut octets = [0u8; 4];
        for (octet, part) in octets.iter_mut().zip(&parts) {
            *octet =
                part.parse().map_err(|_| format!("{text:?}: {part} is not a number 0 to 255"))?;
        }
        let bits = bits.unwrap_or(8 * parts.len() as u8);
        if bits > 32 {
            return Err(too_long(32));
        }
        return Ok(Subnet::V4(Ipv4Addr::from(octets), bits));
    }
    if bits.is_none()
        && !net.is_empty()
        && net.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        let address = (net, 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| format!("cannot resolve {net:?}"))?
            .ip();
        return Ok(match address {
            IpAddr::V4(a) => Subnet::V4(a, 32),
            IpAddr::V6(a) => Subnet::V6(a, 128),
        });
    }
    Err(format!("{text:?} is not an address, a subnet or a host name"))
}

/// `include` takes a glob pattern; only `*` in the file name is supported, as in chrony's
/// typical use (`include /etc/chrony/conf.d/*.conf`).
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return Ok(vec![path.to_owned()]);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.len() >= prefix.len() + suffix.len()
                            && n.starts_with(prefix)
                            && n.ends_with(suffix)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    matches.sort();
    Ok(matches)
}

/// The files of `dir` with the extension `ext`, sorted; none if the directory is missing.
fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// What a reload applies: `new`, except for what only a restart can change, which keeps its
/// running value from `old` (so that the configuration kept always describes what runs); and
/// the names of those parts that changed.
pub fn reloadable(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    fn keep<T: PartialEq + Clone>(what: &'static str, new: &mut T, old: &T, kept: &mut Vec<&str>) {
        if new != old {
            kept.push(what);
            new.clone_from(old);
        }
    }
    let mut kept = Vec::new();
    keep("port", &mut new.port, &old.port, &mut kept);
    keep("bindaddress", &mut new.bind_v4, &old.bind_v4, &mut kept);
    keep("bindaddress", &mut new.bind_v6, &old.bind_v6, &mut kept);
    keep("bindcmdaddress", &mut new.command_socket, &old.command_socket, &mut kept);
    keep(
        "chronyc's sockets (chronycsocket, cmdport, bindcmdaddress, cmdallow, cmddeny)",
        &mut new.chronyc,
        &old.chronyc,
        &mut kept,
    );
    keep("metricsaddress", &mut new.metrics, &old.metrics, &mut kept);
    keep(
        "NTS (ntsservercert, ntsserverkey, ntsport, ntsdumpdir, ...)",
        &mut new.nts,
        &old.nts,
        &mut kept,
    );
    keep("pidfile", &mut new.pidfile, &old.pidfile, &mut kept);
    keep("user", &mut new.user, &old.user, &mut kept);
    keep("xdp", &mut new.xdp, &old.xdp, &mut kept);
    keep("the sources or the clock discipline", &mut new.sync, &old.sync, &mut kept);
    // The kernel's table is sized at start (one entry under noclientlog), and rate limits live
    // in it: limits on a table sized for no clients would limit everybody.
    if new.client_log.entries() != old.client_log.entries() {
        kept.push("the client log (with its rate limits)");
        (new.client_log, new.rate_limit) = (old.client_log, old.rate_limit);
    }
    kept.dedup();
    (new, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Loaded, ConfigError> {
        parse(Path::new("test.conf"), text)
    }

    fn error_of(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_server_role_directives() {
        let loaded = parse_text(
            "# a comment\n\
             ! another\n\
             local stratum 8 distance 0.5\n\
             allow 192.0.2.0/24\n\
             deny all 192.0.2.128/25\n\
             Allow 2001:db8::/32\n\
             port 1123\n\
             bindaddress 192.0.2.1\n\
             bindaddress 2001:db8::1\n\
             bindcmdaddress /run/test/ntpxd.sock\n\
             pidfile /run/test/ntpxd.pid\n\
             xdp eth0\n\
             xdp eth1 generic\n",
        )
        .unwrap();
        let config = loaded.config;
        assert_eq!(config.local, Some(LocalReference { stratum: 8, distance: 0.5 }));
        assert_eq!(config.access.len(), 3);
        assert_eq!(
            config.access[1],
            AccessRule {
                access: Access::Deny,
                all: true,
                subnet: Subnet::V4(Ipv4Addr::new(192, 0, 2, 128), 25),
            }
        );
        assert_eq!(config.port, 1123);
        assert_eq!(config.bind_v4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(config.bind_v6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(config.command_socket, Path::new("/run/test/ntpxd.sock"));
        assert_eq!(config.pidfile, Path::new("/run/test/ntpxd.pid"));
        assert_eq!(
            config.xdp,
            [
                XdpInterface { interface: "eth0".into(), mode: AttachMode::Native },
                XdpInterface { interface: "eth1".into(), mode: AttachMode::Generic },
            ]
        );
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn accepts_every_address_form_of_chrony() {
        let cases = [
            ("1.2.3.4", Subnet::V4(Ipv4Addr::new(1, 2, 3, 4), 32)),
            ("3.4.5.0/24", Subnet::V4(Ipv4Addr::new(3, 4, 5, 0), 24)),
            ("3.4.5", Subnet::V4(Ipv4Addr::new(3, 4, 5, 0), 24)),
            ("10", Subnet::V4(Ipv4Addr::new(10, 0, 0, 0), 8)),
            ("10/12", Subnet::V4(Ipv4Addr::new(10, 0, 0, 0), 12)),
            ("0/0", Subnet::V4(Ipv4Addr::UNSPECIFIED, 0)),
            ("::/0", Subnet::V6(Ipv6Addr::UNSPECIFIED, 0)),
            ("2001:db8::/32", Subnet::V6("2001:db8::".parse().unwrap(), 32)),
            ("::1", Subnet::V6(Ipv6Addr::LOCALHOST, 128)),
            ("localhost", Subnet::V4(Ipv4Addr::LOCALHOST, 32)),
        ];
        for (text, subnet) in cases {
            assert_eq!(parse_subnet(text), Ok(subnet), "{text}");
        }
        let bare = parse_text("allow\ndeny all\n").unwrap().config.access;
        assert_eq!(bare[0].subnet, Subnet::Everything);
        assert!(bare[1].all && bare[1].subnet == Subnet::Everything);
    }

    #[test]
    fn bad_lines_are_errors_with_file_and_line() {
        assert_eq!(
            error_of("local stratum 10\nbogus 1\n"),
            "test.conf:2: unknown directive `bogus`"
        );
        assert!(error_of("allow 1.2.3.4/33").starts_with("test.conf:1: prefix length 33"));
        assert!(error_of("allow 256.1").starts_with("test.conf:1:"));
        assert!(error_of("allow 1.2.3.4 5.6.7.8").starts_with("test.conf:1: usage"));
        assert!(error_of("\n\nport 70000").starts_with("test.conf:3: \"70000\" is not a UDP port"));
        assert!(error_of("local stratum 16").contains("1 to 15"));
        assert!(error_of("local speed 3").contains("unknown local option"));
        assert!(error_of("xdp eth0 fast").contains("native or generic"));
        assert!(
            error_of("xdp eth0\nxdp eth0 generic")
                .starts_with("test.conf:2: xdp eth0 is given twice")
        );
        assert!(error_of("bindaddress somewhere").contains("IP address"));
        assert!(error_of("port").contains("missing"));
    }

    #[test]
    fn reads_rate_limiting_and_the_client_log() {
        let config = parse_text("ratelimit interval 1 burst 16 kod 3\nclientlog entries 1000000\n")
            .unwrap()
            .config;
        assert_eq!(
            config.rate_limit,
            Some(RateLimitConfig { interval: 1, burst: 16, leak: 2, kod: 3 })
        );
        assert_eq!(config.client_log.entries(), 1_000_000);
        let config = parse_text("ratelimit\nclientloglimit 1048576\n").unwrap().config;
        assert_eq!(config.rate_limit, Some(RateLimitConfig::default()));
        assert_eq!(config.client_log.entries(), 9279);
        assert_eq!(ClientLogSize::default().entries(), 4639, "chrony's default budget");
        let huge = parse_text("clientloglimit 10000000000000\n").unwrap().config;
        assert_eq!(huge.client_log.entries(), 1 << 24, "capped as chrony caps it");
        let explicit = parse_text("clientlog entries 20000000\n").unwrap().config;
        assert_eq!(explicit.client_log.entries(), 20_000_000);
        assert!(error_of("ratelimit leak 5").contains("leak must be 1 to 4"));
        assert!(error_of("ratelimit speed 5").contains("unknown ratelimit option"));
        assert!(error_of("ratelimit burst").contains("needs a value"));
        assert_eq!(
            error_of("ratelimit\nallow\nnoclientlog"),
            "test.conf:3: rate limiting (line 1) needs the client log, which noclientlog (line 3) \
             turns off"
        );
        assert!(error_of("clientlog entries 0").contains("at least 1"));
        assert_eq!(parse_text("noclientlog").unwrap().config.client_log, ClientLogSize::Disabled);
        // NTS-KE's: chrony's defaults (a connection per 64 s), and no kiss-o'-death.
        let nts = parse_text("ntsratelimit burst 3\n").unwrap();
        assert!(nts.warnings.is_empty(), "{:?}", nts.warnings);
        assert_eq!(
            nts.config.nts.rate_limit,
            Some(RateLimitConfig { interval: 6, burst: 3, leak: 2, kod: 0 })
        );
        assert!(error_of("ntsratelimit kod 1").contains("no kod option"));
        assert!(error_of("ntsratelimit speed 5").contains("unknown ntsratelimit option"));
    }

    #[test]
    fn directives_not_implemented_are_accepted_with_a_warning() {
        let loaded =
            parse_text("allow\npeer 192.0.2.1 iburst\nlogdir /var/log\nkeyfile /etc/k\n").unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 3);
        assert!(warnings[0].starts_with("test.conf:2: `peer` is not implemented"), "{warnings:?}");
        assert!(warnings[1].starts_with("test.conf:3: `logdir` has no effect"));
        assert!(warnings[2].starts_with("test.conf:4: `keyfile` has no effect"));
    }

    #[test]
    fn includes_and_confdirs_are_read_with_their_own_locations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a/10-x.conf"), "allow 10.1\n").unwrap();
        std::fs::write(dir.path().join("b/10-x.conf"), "allow 10.2\n").unwrap();
        std::fs::write(dir.path().join("b/20-y.conf"), "\nallow 10.3\nnonsense\n").unwrap();
        std::fs::write(dir.path().join("extra.conf"), "local stratum 5\n").unwrap();
        let main = format!(
            "include {}/extra*.conf\nconfdir {}/a {}/b\n",
            dir.path().display(),
            dir.path().display(),
            dir.path().display()
        );
        let error = parse_text(&main).unwrap_err().to_string();
        assert!(error.contains("b/20-y.conf:3: unknown directive `nonsense`"), "{error}");
        std::fs::write(dir.path().join("b/20-y.conf"), "allow 10.3\n").unwrap();
        let config = parse_text(&main).unwrap().config;
        assert_eq!(config.local.unwrap().stratum, 5);
        let subnets: Vec<Subnet> = config.access.iter().map(|r| r.subnet).collect();
        assert_eq!(
            subnets,
            [
                Subnet::V4(Ipv4Addr::new(10, 1, 0, 0), 16),
                Subnet::V4(Ipv4Addr::new(10, 3, 0, 0), 16),
            ]
        );
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let text = "local stratum 8 distance 0.25\nallow\ndeny all 192.0.2.128/25\nallow 2001:db8::/32\n\
            port 1123\nbindaddress 192.0.2.1\nbindaddress ::1\nuser _ntpx\nxdp eth0\nxdp eth1 generic\n\
            ratelimit interval 2 kod 1\nclientlog entries 77\n\
            server 192.0.2.1 iburst minpoll 2\npool p.example maxsources 2 noselect\n\
            makestep 1 3\nmaxdistance 2\ndriftfile /tmp/drift\nrtcsync\nleapsectz right/UTC\n\
            bindcmdaddress 0.0.0.0\ncmdport 1323\ncmdallow 192.0.2.0/24\ncmddeny all 192.0.2.7\n\
            chronycsocket none\nmetricsaddress [::1]:9975\nntsservercert /c.pem\nntsserverkey /k.pem\n\
            ntsport 4461\nntsdumpdir /var/lib/ntpx\nntsrotate 0\nntsntpserver ntp.example\n\
            maxntsconnections 7\nntsratelimit interval 3 burst 2\n";
        let config = parse_text(text).unwrap().config;
        assert!(config.nts.enabled() && config.chronyc.access.len() == 2);
        let printed = config.to_string();
        assert_eq!(parse_text(&printed).unwrap().config, config, "{printed}");
    }

    #[test]
    fn the_shipped_configurations_are_valid_and_complete() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(loaded.warnings.is_empty(), "{}: {:?}", path.display(), loaded.warnings);
            checked += 1;
        }
        assert!(checked > 0, "no configuration in {}", dir.display());
    }

    #[test]
    fn nts_needs_a_certificate_and_a_key() {
        let error = error_of("allow\nntsservercert /c.pem\n");
        assert_eq!(error, "test.conf:2: NTS needs both ntsservercert and ntsserverkey");
        let error = error_of("metricsaddress localhost\n");
        assert!(error.starts_with("test.conf:1: metricsaddress needs ADDRESS:PORT"), "{error}");
    }

    #[test]
    fn debians_chrony_conf_is_accepted() {
        let debian = "confdir /nonexistent/conf.d\n\
            pool 2.debian.pool.ntp.org iburst\n\
            sourcedir /run/chrony-dhcp\n\
            sourcedir /etc/chrony/sources.d\n\
            keyfile /etc/chrony/chrony.keys\n\
            driftfile /var/lib/chrony/chrony.drift\n\
            ntsdumpdir /var/lib/chrony\n\
            logdir /var/log/chrony\n\
            maxupdateskew 100.0\n\
            rtcsync\n\
            makestep 1 3\n\
            leapsectz right/UTC\n";
        let loaded = parse_text(debian).unwrap();
        // sourcedir twice, keyfile, logdir, maxupdateskew (ntsdumpdir is NTS's, used once
        // ntsservercert and ntsserverkey turn NTS on).
        assert_eq!(loaded.warnings.len(), 5, "{:?}", loaded.warnings);
        assert_eq!(loaded.config.nts.dump_dir, Some(PathBuf::from("/var/lib/chrony")));
        assert!(!loaded.config.nts.enabled());
        let sync = loaded.config.sync;
        assert_eq!(sync.sources[0].kind, SourceKind::Pool { max_sources: 4 });
        assert!(sync.sources[0].poll.iburst);
        assert_eq!(sync.makestep, Some(MakeStep { threshold: 1.0, limit: 3 }));
        assert!(sync.rtcsync);
        assert_eq!(sync.leap_seconds, Some(LeapSecondSource::TimeZone("right/UTC".into())));
    }

    #[test]
    fn reads_sources_and_the_discipline() {
        let loaded = parse_text(
            "server 192.0.2.1 iburst minpoll 2 maxpoll 4 prefer maxdelay 0.05\n\
             server ntp.example.net noselect port 1123 xleave\n\
             pool pool.example.net maxsources 6\n\
             makestep 0.1 -1\n\
             maxdistance 1.5\n\
             maxclockerror 10\n\
             driftfile /var/lib/ntpx/drift\n\
             leapseclist /usr/share/zoneinfo/leap-seconds.list\n",
        )
        .unwrap();
        let sync = loaded.config.sync;
        let first = &sync.sources[0];
        assert_eq!(
            (first.kind, first.name.as_str(), first.port),
            (SourceKind::Server, "192.0.2.1", 123)
        );
        assert_eq!(
            first.poll,
            PollSettings {
                minpoll: 2,
                maxpoll: 4,
                iburst: true,
                prefer: true,
                noselect: false,
                maxdelay: 0.05
            }
        );
        assert!(sync.sources[1].poll.noselect);
        assert_eq!(sync.sources[1].port, 1123);
        assert_eq!(sync.sources[2].kind, SourceKind::Pool { max_sources: 6 });
        assert_eq!(sync.makestep, Some(MakeStep { threshold: 0.1, limit: -1 }));
        assert_eq!((sync.max_distance, sync.max_clock_error_ppm), (1.5, 10.0));
        assert_eq!(sync.driftfile.as_deref(), Some(Path::new("/var/lib/ntpx/drift")));
        assert!(matches!(sync.leap_seconds, Some(LeapSecondSource::List(_))));
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            ["test.conf:2: server option `xleave` is not implemented by ntpxd; ignored"]
        );
    }

    #[test]
    fn bad_source_lines_are_errors() {
        for (line, message) in [
            ("server", "usage: server NAME"),
            ("server 192.0.2.1 minpoll 30", "a poll exponent is -7 to 24"),
            ("server 192.0.2.1 minpoll", "minpoll needs a poll exponent"),
            ("server 192.0.2.1 key 1", "symmetric keys and certificate sets are not supported"),
            ("server 192.0.2.1 maxsources 2", "maxsources is an option of pool"),
            ("pool p.example maxsources 17", "maxsources must be 1 to 16"),
            ("server 192.0.2.1 fast", "unknown server option `fast`"),
            ("makestep 1", "usage: makestep"),
            ("makestep 0 3", "a makestep threshold above zero"),
            ("maxdistance -1", "above zero"),
            ("local stratum 10 orphan", "local orphan is not supported"),
            ("local activate 0.1", "local activate is not supported"),
            ("local waitsynced 10", "local waitsynced is not supported"),
        ] {
            let error = error_of(line);
            assert!(error.starts_with("test.conf:1: "), "{error}");
            assert!(error.contains(message), "{line}: {error}");
        }
    }

    #[test]
    fn a_reload_applies_the_rules_and_keeps_what_needs_a_restart() {
        let old = parse_text("allow 10.0.0.0/8\nport 123\nratelimit interval 1\n").unwrap().config;
        let new = parse_text("deny 10.0.0.0/8\nport 1123\nratelimit interval 3\n").unwrap().config;
        let (applied, needs_restart) = reloadable(&old, new.clone());
        assert_eq!(needs_restart, ["port"]);
        assert_eq!(applied.port, 123);
        assert_eq!(applied.access, new.access);
        assert_eq!(applied.rate_limit, new.rate_limit);
        let (unchanged, nothing) = reloadable(&old, old.clone());
        assert!(nothing.is_empty());
        assert_eq!(unchanged, old);
    }
}
