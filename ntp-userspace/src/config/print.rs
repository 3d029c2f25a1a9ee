//! The configuration printed back in chrony.conf's syntax (`ntpxd -p`): reading what it prints
//! gives the same configuration.

use std::fmt;

use super::model::{
    ChronycConfig, ClientLogSize, Config, ExternalPulse, LeapSecondSource, LeapSmearConfig,
    MasterSecret, NtsServerConfig, RefclockConfig, RefclockDriver, SourceConfig, SourceKind,
    SyncConfig, XdpInterface,
};
use crate::{
    access::{Access, AccessRule, Subnet},
    announce::AnnounceSettings,
    smoothing::SmoothingSettings,
    sync::{
        discipline::MakeStep, refclock::ClockSettings, reference_id_name, source::PollSettings,
    },
};
use crate::{client_log::RateLimitConfig, reference::LocalReference};

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
            announce,
            smoothing,
            leap_smear,
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
            master_secret,
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
        if let Some(MasterSecret { path, period_s }) = master_secret {
            writeln!(f, "ntsmastersecret {} period {period_s}", path.display())?;
        }
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
        for AnnounceSettings { addresses, max_distance, hold_down } in announce {
            write!(f, "announce")?;
            for address in addresses {
                write!(f, " {address}")?;
            }
            writeln!(f, " maxdistance {max_distance} holddown {hold_down}")?;
        }
        if let Some(SmoothingSettings { max_frequency_ppm, max_wander_ppm, leap_only }) = smoothing
        {
            let leap_only = if *leap_only { " leaponly" } else { "" };
            writeln!(f, "smoothtime {max_frequency_ppm} {max_wander_ppm}{leap_only}")?;
        }
        if let Some(LeapSmearConfig { addresses, settings }) = leap_smear {
            write!(f, "leapsmear")?;
            for address in addresses {
                write!(f, " {address}")?;
            }
            writeln!(f, " {} window {}", settings.shape.name(), settings.window)?;
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
            refclocks,
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
            let PollSettings {
                minpoll,
                maxpoll,
                iburst,
                prefer,
                noselect,
                trust,
                require,
                maxdelay,
            } = poll;
            match kind {
                SourceKind::Server => write!(f, "server {name}")?,
                SourceKind::Pool { max_sources } => {
                    write!(f, "pool {name} maxsources {max_sources}")?
                }
            }
            write!(f, " port {port} minpoll {minpoll} maxpoll {maxpoll} maxdelay {maxdelay}")?;
            let flags = [
                ("iburst", iburst),
                ("prefer", prefer),
                ("noselect", noselect),
                ("trust", trust),
                ("require", require),
                ("nts", nts),
            ];
            write_flags(f, &flags)?;
            writeln!(f)?;
        }
        for refclock in refclocks {
            writeln!(f, "{refclock}")?;
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

impl fmt::Display for RefclockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { driver, clock, selection, dpoll, precision, location: _ } = self;
        match driver {
            RefclockDriver::Shm { unit, perm } => write!(f, "refclock SHM {unit}:perm={perm:o}")?,
            RefclockDriver::Sock { path } => write!(f, "refclock SOCK {}", path.display())?,
            RefclockDriver::Pps { device, clear } => write!(
                f,
                "refclock PPS {}{}",
                device.display(),
                if *clear { ":clear" } else { "" }
            )?,
            RefclockDriver::Phc { device, nocrossts, extpps } => {
                write!(f, "refclock PHC {}", device.display())?;
                if *nocrossts {
                    write!(f, ":nocrossts")?;
                }
                if let Some(ExternalPulse { pin, channel, clear }) = extpps {
                    write!(f, ":extpps:pin={pin}:channel={channel}")?;
                    if *clear {
                        write!(f, ":clear")?;
                    }
                }
            }
        }
        let ClockSettings {
            reference_id,
            poll,
            filter,
            rate,
            lock,
            max_lock_age,
            offset,
            delay,
            precision: _,
            max_dispersion,
            stratum,
            tai,
            pulses_only,
        } = clock;
        write!(
            f,
            " refid {} poll {poll} dpoll {dpoll} filter {filter} rate {rate} maxlockage \
             {max_lock_age} offset {offset} delay {delay} stratum {stratum}",
            reference_id_name(*reference_id)
        )?;
        if let Some(lock) = lock {
            write!(f, " lock {}", reference_id_name(*lock))?;
        }
        if *precision > 0.0 {
            write!(f, " precision {precision}")?;
        }
        if *max_dispersion > 0.0 {
            write!(f, " maxdispersion {max_dispersion}")?;
        }
        let flags = [
            ("tai", tai),
            ("pps", pulses_only),
            ("prefer", &selection.prefer),
            ("noselect", &selection.noselect),
            ("trust", &selection.trust),
            ("require", &selection.require),
        ];
        write_flags(f, &flags)
    }
}

/// Each flag that is on, as a word after a space.
fn write_flags(f: &mut fmt::Formatter<'_>, flags: &[(&str, &bool)]) -> fmt::Result {
    for (flag, on) in flags {
        if **on {
            write!(f, " {flag}")?;
        }
    }
    Ok(())
}
