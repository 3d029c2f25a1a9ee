//! The values directives take: numbers, polls, sources' options, rate limits, `local`, access
//! rules and chrony's address forms.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use ntp_common::wire::ReferenceId;

use super::model::{
    DEFAULT_NTP_PORT, ExternalPulse, LeapSmearConfig, Location, RefclockConfig, RefclockDriver,
    SourceConfig, SourceKind,
};
use super::resolve;
use crate::{
    access::{Access, AccessRule, Subnet},
    announce::{self, AnnounceSettings},
    smear::{SmearSettings, SmearShape},
    smoothing::SmoothingSettings,
    sync::{refclock::ClockSettings, source::PollSettings},
};
use crate::{client_log::RateLimitConfig, reference::LocalReference};

pub(super) fn one<'a>(args: &[&'a str]) -> Result<&'a str, String> {
    match args {
        [value] => Ok(value),
        [] => Err("a value is missing".into()),
        _ => Err(format!("one value expected, found {}", args.len())),
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(word: &str, what: &str) -> Result<T, String> {
    word.parse().map_err(|_| format!("{word:?} is not {what}"))
}

pub(super) fn parse_positive(word: &str, what: &str) -> Result<f64, String> {
    match word.parse::<f64>() {
        Ok(value) if value > 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("expected {what} above zero, not {word:?}")),
    }
}

/// chrony's `server`/`pool` options that ntpxd accepts without acting on them; those that
/// would change what the source means (authentication) are errors instead.
pub(super) const IGNORED_SOURCE_OPTIONS: &[(&str, bool)] = &[
    // (option, takes a value)
    ("burst", false),
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
pub(super) fn parse_source(
    directive: &str,
    args: &[&str],
) -> Result<(SourceConfig, Vec<String>), String> {
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
            "trust" => poll.trust = true,
            "require" => poll.require = true,
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

/// chrony's `refclock` options that ntpxd accepts without acting on them (all take a value).
const IGNORED_REFCLOCK_OPTIONS: &[&str] = &["minsamples", "maxsamples", "maxunreach", "width"];

/// `refclock DRIVER PARAMETER[:OPTION]... [OPTION]...`, the `index`th refclock (which names it
/// by default, as chrony does: "SHM0", "SOC1", "PPS2"); and the options ignored.
pub(super) fn parse_refclock(
    args: &[&str],
    index: usize,
    location: &Location,
) -> Result<(RefclockConfig, Vec<String>), String> {
    let [driver, parameter, options @ ..] = args else {
        return Err("usage: refclock DRIVER PARAMETER[:OPTION]... [OPTION]...".into());
    };
    let driver_name = driver.to_ascii_uppercase();
    let driver = parse_refclock_driver(&driver_name, parameter)?;
    let mut default_id = [0u8; 4];
    for (byte, name) in default_id.iter_mut().zip(driver_name.bytes().take(3)) {
        *byte = name;
    }
    default_id[3] = b'0' + (index % 10) as u8;
    if index >= 10 {
        default_id[2] = b'0' + (index / 10 % 10) as u8;
    }
    let mut clock = ClockSettings::new(ReferenceId::from_bits(default_id));
    clock.pulses_only = matches!(driver, RefclockDriver::Pps { .. });
    let mut selection = PollSettings::default();
    let (mut dpoll, mut precision) = (0, 0.0);
    let mut ignored = Vec::new();
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value =
            |what: &str| options.next().copied().ok_or_else(|| format!("{option} needs {what}"));
        match option.to_ascii_lowercase().as_str() {
            "refid" => clock.reference_id = parse_reference_id(value("a reference ID")?)?,
            "lock" => clock.lock = Some(parse_reference_id(value("a reference ID")?)?),
            "poll" => clock.poll = parse_refclock_poll(value("a poll exponent")?)?,
            "dpoll" => dpoll = parse_refclock_poll(value("a poll exponent")?)?,
            "filter" => clock.filter = parse_number(value("a length")?, "a filter length")?,
            "rate" => {
                clock.rate = parse_number(value("pulses per second")?, "a pulse rate")?;
                if clock.rate == 0 {
                    return Err("rate must be at least 1".into());
                }
            }
            "maxlockage" => {
                clock.max_lock_age = parse_number(value("a number of pulses")?, "a number")?
            }
            "offset" => clock.offset = parse_seconds(value("seconds")?)?,
            "delay" => clock.delay = parse_positive(value("seconds")?, "a delay")?,
            "precision" => precision = parse_positive(value("seconds")?, "a precision")?,
            "maxdispersion" => {
                clock.max_dispersion = parse_positive(value("seconds")?, "a dispersion")?
            }
            "stratum" => {
                clock.stratum = parse_number(value("a stratum")?, "a stratum")?;
                if clock.stratum > 15 {
                    return Err("a reference clock's stratum is 0 to 15".into());
                }
            }
            "tai" => clock.tai = true,
            "pps" => clock.pulses_only = true,
            "prefer" => selection.prefer = true,
            "noselect" => selection.noselect = true,
            "trust" => selection.trust = true,
            "require" => selection.require = true,
            "local" => {
                return Err(
                    "`local` (a free-running reference clock) is not supported by ntpxd".into()
                );
            }
            other if IGNORED_REFCLOCK_OPTIONS.contains(&other) => {
                value("a value")?;
                ignored.push(other.to_owned());
            }
            other => return Err(format!("unknown refclock option `{other}`")),
        }
    }
    // chrony reads a polled driver no less often than it polls the filter.
    dpoll = dpoll.min(clock.poll);
    let refclock =
        RefclockConfig { driver, clock, selection, dpoll, precision, location: location.clone() };
    Ok((refclock, ignored))
}

fn parse_refclock_driver(name: &str, parameter: &str) -> Result<RefclockDriver, String> {
    let mut parts = parameter.split(':');
    let parameter = parts.next().unwrap_or_default();
    let options: Vec<(&str, Option<&str>)> = parts
        .map(|option| match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        })
        .collect();
    let known = |allowed: &[&str]| -> Result<(), String> {
        match options.iter().find(|(option, _)| !allowed.contains(option)) {
            Some((option, _)) => Err(format!("refclock {name} has no driver option `{option}`")),
            None => Ok(()),
        }
    };
    let flag = |wanted: &str| options.iter().any(|(option, _)| *option == wanted);
    let number = |wanted: &str, radix: u32| -> Result<Option<u32>, String> {
        match options.iter().find(|(option, _)| *option == wanted) {
            None => Ok(None),
            Some((_, Some(value))) => u32::from_str_radix(value, radix)
                .map(Some)
                .map_err(|_| format!("refclock {name} option {wanted}={value} is not a number")),
            Some((_, None)) => Err(format!("refclock {name} option {wanted} needs =VALUE")),
        }
    };
    let device = || -> Result<PathBuf, String> {
        if parameter.starts_with('/') {
            Ok(PathBuf::from(parameter))
        } else {
            Err(format!("refclock {name} needs a path, not {parameter:?}"))
        }
    };
    Ok(match name {
        "SHM" => {
            known(&["perm"])?;
            let unit = parse_number(parameter, "a shared memory unit (0, 1, ...)")?;
            let perm = number("perm", 8)?.unwrap_or(0o600);
            if perm > 0o777 {
                return Err(format!("refclock SHM perm={perm:o} is not a file mode"));
            }
            RefclockDriver::Shm { unit, perm }
        }
        "SOCK" => {
            known(&[])?;
            RefclockDriver::Sock { path: device()? }
        }
        "PPS" => {
            known(&["clear"])?;
            RefclockDriver::Pps { device: device()?, clear: flag("clear") }
        }
        "PHC" => {
            known(&["nocrossts", "extpps", "pin", "channel", "clear"])?;
            let extpps = flag("extpps").then_some(ExternalPulse {
                pin: number("pin", 10)?.unwrap_or(0),
                channel: number("channel", 10)?.unwrap_or(0),
                clear: flag("clear"),
            });
            RefclockDriver::Phc { device: device()?, nocrossts: flag("nocrossts"), extpps }
        }
        "RTC" => return Err("the RTC reference clock driver is not supported by ntpxd".into()),
        other => {
            return Err(format!("unknown refclock driver `{other}` (SHM, SOCK, PPS or PHC)"));
        }
    })
}

/// A reference ID: one to four printable ASCII characters ("GPS", "PPS1").
fn parse_reference_id(word: &str) -> Result<ReferenceId, String> {
    if word.is_empty() || word.len() > 4 || !word.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("a reference ID is 1 to 4 ASCII characters, not {word:?}"));
    }
    let mut bits = [0; 4];
    bits[..word.len()].copy_from_slice(word.as_bytes());
    Ok(ReferenceId::from_bits(bits))
}

fn parse_refclock_poll(word: &str) -> Result<i8, String> {
    match word.parse::<i8>() {
        Ok(poll) if (-6..=12).contains(&poll) => Ok(poll),
        _ => Err(format!("a reference clock's poll exponent is -6 to 12, not {word:?}")),
    }
}

fn parse_seconds(word: &str) -> Result<f64, String> {
    match word.parse::<f64>() {
        Ok(value) if value.is_finite() && value.abs() < 1e6 => Ok(value),
        _ => Err(format!("expected seconds, not {word:?}")),
    }
}

/// `announce ADDRESS... [maxdistance SECONDS] [holddown SECONDS]`: service addresses (host
/// addresses, IPv4 or IPv6) and the health rule's bounds.
pub(super) fn parse_announce(args: &[&str]) -> Result<AnnounceSettings, String> {
    let mut settings = AnnounceSettings {
        addresses: Vec::new(),
        max_distance: announce::DEFAULT_MAX_DISTANCE,
        hold_down: announce::DEFAULT_HOLD_DOWN,
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let mut value =
            |what: &str| words.next().copied().ok_or_else(|| format!("{word} needs {what}"));
        match *word {
            "maxdistance" => {
                settings.max_distance = parse_positive(value("seconds")?, "a distance")?
            }
            "holddown" => {
                let seconds: f64 = parse_number(value("seconds")?, "seconds")?;
                if !(0.0..=86_400.0).contains(&seconds) {
                    return Err(format!("holddown is 0 to 86400 s, not {seconds}"));
                }
                settings.hold_down = seconds;
            }
            address => {
                let address: IpAddr = address
                    .parse()
                    .map_err(|_| format!("announce needs IP addresses, not {address:?}"))?;
                if address.is_loopback() || address.is_unspecified() || address.is_multicast() {
                    return Err(format!("{address} cannot be a service address"));
                }
                settings.addresses.push(address);
            }
        }
    }
    if settings.addresses.is_empty() {
        return Err("usage: announce ADDRESS... [maxdistance SECONDS] [holddown SECONDS]".into());
    }
    Ok(settings)
}

/// `smoothtime MAX-FREQ MAX-WANDER [leaponly]`, in ppm and ppm per second (chrony's).
pub(super) fn parse_smoothtime(args: &[&str]) -> Result<SmoothingSettings, String> {
    let usage = || "usage: smoothtime MAX-FREQ MAX-WANDER [leaponly]".to_string();
    let (max_frequency, max_wander, leap_only) = match args {
        [frequency, wander] => (frequency, wander, false),
        [frequency, wander, option] if option.eq_ignore_ascii_case("leaponly") => {
            (frequency, wander, true)
        }
        _ => return Err(usage()),
    };
    let ppm = |word: &str, what: &str| match word.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1e6 => Ok(value),
        _ => Err(format!("smoothtime's {what} is over 0 and at most 1e6 ppm, not {word:?}")),
    };
    Ok(SmoothingSettings {
        max_frequency_ppm: ppm(max_frequency, "MAX-FREQ")?,
        max_wander_ppm: ppm(max_wander, "MAX-WANDER")?,
        leap_only,
    })
}

/// `leapsmear ADDRESS... [linear|cosine] [window SECONDS]`: local addresses served smeared time.
pub(super) fn parse_leap_smear(args: &[&str]) -> Result<LeapSmearConfig, String> {
    let mut config = LeapSmearConfig {
        addresses: Vec::new(),
        settings: SmearSettings {
            shape: SmearShape::Linear,
            window: SmearSettings::DEFAULT_WINDOW,
        },
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match *word {
            "linear" => config.settings.shape = SmearShape::Linear,
            "cosine" => config.settings.shape = SmearShape::Cosine,
            "window" => {
                let seconds = words.next().ok_or("window needs seconds")?;
                let seconds: f64 = parse_number(seconds, "seconds")?;
                // At least a minute, at most two days: a leap is announced only on its day, so
                // a longer window would start before it is known.
                if !(60.0..=172_800.0).contains(&seconds) {
                    return Err(format!("window is 60 to 172800 s, not {seconds}"));
                }
                config.settings.window = seconds;
            }
            address => {
                let address: IpAddr = address.parse().map_err(|_| {
                    format!("leapsmear needs IP addresses of this host, not {address:?}")
                })?;
                if address.is_unspecified() || address.is_multicast() {
                    return Err(format!("{address} cannot be a service address"));
                }
                if config.addresses.contains(&address) {
                    return Err(format!("{address} is given twice"));
                }
                config.addresses.push(address);
            }
        }
    }
    if config.addresses.is_empty() {
        return Err("usage: leapsmear ADDRESS... [linear|cosine] [window SECONDS]".into());
    }
    Ok(config)
}

pub(super) fn parse_poll(word: &str) -> Result<i8, String> {
    match word.parse::<i8>() {
        Ok(poll) if (-7..=24).contains(&poll) => Ok(poll),
        _ => Err(format!("a poll exponent is -7 to 24, not {word:?}")),
    }
}

/// `ratelimit`'s or `ntsratelimit`'s options over `defaults`.
pub(super) fn parse_rate_limit(
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

pub(super) fn parse_local(args: &[&str]) -> Result<LocalReference, String> {
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
pub(super) fn parse_access(access: Access, args: &[&str]) -> Result<AccessRule, String> {
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
        let address =
            resolve::host_address(net).ok_or_else(|| format!("cannot resolve {net:?}"))?;
        return Ok(match address {
            IpAddr::V4(a) => Subnet::V4(a, 32),
            IpAddr::V6(a) => Subnet::V6(a, 128),
        });
    }
    Err(format!("{text:?} is not an address, a subnet or a host name"))
}
