//! The directives, read line by line: each recognised one parsed and checked, chrony's others
//! accepted with a warning, everything else an error with file and line.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::model::{
    ClientLogSize, Config, ConfigError, DEFAULT_MASTER_SECRET_PERIOD_S, LeapSecondSource, Loaded,
    Location, MasterSecret, Warning, XdpInterface,
};
use super::{
    include::{expand_glob, files_in},
    values::{
        one, parse_access, parse_announce, parse_leap_smear, parse_local, parse_number,
        parse_positive, parse_rate_limit, parse_refclock, parse_smoothtime, parse_source,
    },
};
use crate::{access::Access, sync::discipline::MakeStep};
use crate::{client_log::RateLimitConfig, control::AttachMode};

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
        "peer" | "leapsecmode" | "maxupdateskew" | "maxchange" | "maxdrift" | "maxslewrate"
        | "minsources" | "maxjitter" | "minsamples" | "maxsamples" | "combinelimit"
        | "reselectdist" | "stratumweight" | "initstepslew" | "fallbackdrift" | "corrtimeratio"
        | "sourcedir" | "authselectmode" | "tempcomp" | "clockprecision" | "hwtimestamp"
        | "hwtstimeout" | "acquisitionport" | "bindacqaddress" | "bindacqdevice" | "binddevice"
        | "broadcast" | "dscp" | "manual" | "refresh" | "cmdratelimit" => NotYet,
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
    /// Where `smoothtime` and `leapsmear` were given, to report their conflict.
    smoothing_at: Option<Location>,
    leap_smear_at: Option<Location>,
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
            return Err(ConfigError {
                location: later(rate_limit, no_client_log).clone(),
                message: format!(
                    "rate limiting ({rate_limit}) needs the client log, which noclientlog \
                     ({no_client_log}) turns off"
                ),
            });
        }
        if let (Some(smoothing), Some(smear)) = (&self.smoothing_at, &self.leap_smear_at) {
            return Err(ConfigError {
                location: later(smoothing, smear).clone(),
                message: format!(
                    "leapsmear ({smear}) and smoothtime ({smoothing}) cannot be combined: \
                     smoothtime smooths the time of every address"
                ),
            });
        }
        for refclock in &self.config.sync.refclocks {
            let error =
                |message: String| ConfigError { location: refclock.location.clone(), message };
            if refclock.clock.tai && self.config.sync.leap_seconds.is_none() {
                return Err(error("refclock tai needs leapsectz or leapseclist".into()));
            }
            if let Some(lock) = refclock.clock.lock {
                let lockable = self.config.sync.refclocks.iter().any(|other| {
                    other.clock.reference_id == lock
                        && other.clock.reference_id != refclock.clock.reference_id
                });
                if !lockable {
                    return Err(error(format!(
                        "lock {} names no other refclock",
                        crate::sync::reference_id_name(lock)
                    )));
                }
            }
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
            "ntsmastersecret" => {
                let period_s = match args {
                    [_] => DEFAULT_MASTER_SECRET_PERIOD_S,
                    [_, "period", seconds] => {
                        let period: u64 = parse_number(seconds, "seconds")?;
                        if period == 0 {
                            return Err("the period of the derived keys is at least 1 s".into());
                        }
                        period
                    }
                    _ => return Err("usage: ntsmastersecret FILE [period SECONDS]".into()),
                };
                config.nts.master_secret =
                    Some(MasterSecret { path: PathBuf::from(args[0]), period_s });
            }
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
            "announce" => config.announce.push(parse_announce(args)?),
            "smoothtime" => {
                config.smoothing = Some(parse_smoothtime(args)?);
                self.smoothing_at = Some(location.clone());
            }
            "leapsmear" => {
                if config.leap_smear.is_some() {
                    return Err("leapsmear is given twice: name every address on one line".into());
                }
                config.leap_smear = Some(parse_leap_smear(args)?);
                self.leap_smear_at = Some(location.clone());
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
            "refclock" => {
                let index = config.sync.refclocks.len();
                let (refclock, ignored) = parse_refclock(args, index, location)?;
                for option in ignored {
                    self.warn(
                        location,
                        &format!("refclock option `{option}` is not implemented by ntpxd; ignored"),
                    );
                }
                let id = refclock.clock.reference_id;
                if self.config.sync.refclocks.iter().any(|r| r.clock.reference_id == id) {
                    return Err(format!(
                        "refid {} is given to another refclock",
                        crate::sync::reference_id_name(id)
                    ));
                }
                self.config.sync.refclocks.push(refclock);
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

/// Where to report two directives that exclude each other (the message names both): at the
/// one further down when they share a file, else at `b`.
fn later<'a>(a: &'a Location, b: &'a Location) -> &'a Location {
    if a.file == b.file && a.line > b.line { a } else { b }
}
