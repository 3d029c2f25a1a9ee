//! The configuration's tests: reading, checking, printing, reloading.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::*;
use crate::{
    access::{Access, AccessRule, Subnet},
    sync::{discipline::MakeStep, source::PollSettings},
};

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
    assert_eq!(error_of("local stratum 10\nbogus 1\n"), "test.conf:2: unknown directive `bogus`");
    assert!(error_of("allow 1.2.3.4/33").starts_with("test.conf:1: prefix length 33"));
    assert!(error_of("allow 256.1").starts_with("test.conf:1:"));
    assert!(error_of("allow 1.2.3.4 5.6.7.8").starts_with("test.conf:1: usage"));
    assert!(error_of("\n\nport 70000").starts_with("test.conf:3: \"70000\" is not a UDP port"));
    assert!(error_of("local stratum 16").contains("1 to 15"));
    assert!(error_of("local speed 3").contains("unknown local option"));
    assert!(error_of("xdp eth0 fast").contains("native or generic"));
    assert!(
        error_of("xdp eth0\nxdp eth0 generic").starts_with("test.conf:2: xdp eth0 is given twice")
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
        "test.conf:3: rate limiting (test.conf:1) needs the client log, which noclientlog \
         (test.conf:3) turns off"
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
        [Subnet::V4(Ipv4Addr::new(10, 1, 0, 0), 16), Subnet::V4(Ipv4Addr::new(10, 3, 0, 0), 16),]
    );
}

#[test]
fn the_printed_configuration_reads_back_the_same() {
    let text = "local stratum 8 distance 0.25\nallow\ndeny all 192.0.2.128/25\nallow 2001:db8::/32\n\
        port 1123\nbindaddress 192.0.2.1\nbindaddress ::1\nuser _ntpx\nxdp eth0\nxdp eth1 generic\n\
        ratelimit interval 2 kod 1\nclientlog entries 77\n\
        announce 192.0.2.123 2001:db8::123 maxdistance 0.05 holddown 3\nannounce 192.0.2.124\n\
        leapsmear 192.0.2.125 2001:db8::125 cosine window 7200\n\
        server 192.0.2.1 iburst minpoll 2 trust\npool p.example maxsources 2 noselect require\n\
        refclock SHM 0:perm=0644 refid NMEA offset 0.2 delay 0.1 noselect\n\
        refclock PPS /dev/pps0:clear lock NMEA rate 2 prefer precision 1e-7\n\
        refclock PHC /dev/ptp0:nocrossts:extpps:pin=1 poll 0 dpoll -2 tai stratum 1\n\
        refclock SOCK /run/ntpx/gps.sock maxdispersion 0.01 filter 8 trust require\n\
        makestep 1 3\nmaxdistance 2\ndriftfile /tmp/drift\nrtcsync\nleapsectz right/UTC\n\
        bindcmdaddress 0.0.0.0\ncmdport 1323\ncmdallow 192.0.2.0/24\ncmddeny all 192.0.2.7\n\
        chronycsocket none\nmetricsaddress [::1]:9975\nntsservercert /c.pem\nntsserverkey /k.pem\n\
        ntsport 4461\nntsdumpdir /var/lib/ntpx\nntsrotate 0\nntsntpserver ntp.example\n\
        ntsmastersecret /etc/ntpx/nts-master period 3600\n\
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
            trust: false,
            require: false,
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

#[test]
fn reads_refclocks_with_chronys_defaults_and_options() {
    use ntp_common::wire::ReferenceId;
    let config = parse_text(
        "refclock SHM 0 refid GPS\n\
         refclock SHM 1:perm=0644 offset 0.2 delay 0.2\n\
         refclock PPS /dev/pps0 lock GPS refid PPS prefer\n\
         refclock PHC /dev/ptp0 poll 0 dpoll -2 tai\n\
         refclock SOCK /run/ntpx/ttyS0.sock\n\
         leapsectz right/UTC\n",
    )
    .unwrap()
    .config;
    let [gps, shm1, pps, phc, sock] = &config.sync.refclocks[..] else { panic!("five refclocks") };
    assert_eq!(gps.driver, RefclockDriver::Shm { unit: 0, perm: 0o600 });
    assert_eq!(gps.clock.reference_id, ReferenceId::from_bits(*b"GPS\0"));
    assert_eq!((gps.clock.poll, gps.dpoll, gps.clock.filter, gps.clock.rate), (4, 0, 64, 1));
    assert_eq!((gps.clock.delay, gps.clock.stratum, gps.clock.max_lock_age), (1e-9, 0, 2));
    // Unnamed, a refclock is called by its driver and its place, as chrony calls it.
    assert_eq!(shm1.clock.reference_id, ReferenceId::from_bits(*b"SHM1"));
    assert_eq!(shm1.driver, RefclockDriver::Shm { unit: 1, perm: 0o644 });
    assert_eq!((shm1.clock.offset, shm1.clock.delay), (0.2, 0.2));
    assert!(pps.clock.pulses_only && pps.selection.prefer);
    assert_eq!(pps.clock.lock, Some(ReferenceId::from_bits(*b"GPS\0")));
    assert_eq!((phc.clock.poll, phc.dpoll, phc.clock.tai), (0, -2, true));
    assert_eq!(phc.clock.reference_id, ReferenceId::from_bits(*b"PHC3"));
    assert_eq!(sock.driver, RefclockDriver::Sock { path: "/run/ntpx/ttyS0.sock".into() });
    assert_eq!(sock.clock.reference_id, ReferenceId::from_bits(*b"SOC4"));
    assert_eq!(gps.location.line, 1);
    assert_eq!(sock.location.line, 5);
}

#[test]
fn bad_refclock_lines_are_errors_with_file_and_line() {
    for (text, message) in [
        ("refclock GPS 0", "test.conf:1: unknown refclock driver `GPS`"),
        ("refclock SHM", "test.conf:1: usage: refclock DRIVER"),
        ("refclock SHM zero", "not a shared memory unit"),
        ("refclock SHM 0:perm=999", "perm=999 is not a number"),
        ("refclock SHM 0:mode=600", "refclock SHM has no driver option `mode`"),
        ("refclock PPS pps0", "refclock PPS needs a path"),
        ("refclock PHC /dev/ptp0:pin", "option pin needs =VALUE"),
        ("refclock SHM 0 poll", "poll needs a poll exponent"),
        ("refclock SHM 0 poll 40", "poll exponent is -6 to 12"),
        ("refclock SHM 0 refid TOOLONG", "1 to 4 ASCII characters"),
        ("refclock SHM 0 frobnicate", "unknown refclock option `frobnicate`"),
        ("refclock SHM 0 rate 0", "rate must be at least 1"),
        ("refclock SHM 0 local", "not supported"),
        ("refclock RTC /dev/rtc0", "RTC reference clock driver is not supported"),
        ("refclock SHM 0 refid GPS\nrefclock SHM 1 refid GPS", "test.conf:2: refid GPS is given"),
        ("\nrefclock PHC /dev/ptp0 tai", "test.conf:2: refclock tai needs leapsectz"),
        ("refclock PPS /dev/pps0 lock NMEA", "test.conf:1: lock NMEA names no other refclock"),
        ("refclock PPS /dev/pps0 refid PPS lock PPS", "lock PPS names no other refclock"),
    ] {
        let error = error_of(text);
        assert!(error.contains(message), "{text}: {error}");
    }
    // chrony's options ntpxd does not act on are warnings.
    let loaded = parse_text("refclock SHM 0 width 0.1 minsamples 4").unwrap();
    assert_eq!(loaded.warnings.len(), 2);
}

#[test]
fn announce_lines_name_service_addresses_and_their_health_bounds() {
    let config = parse_text("announce 192.0.2.123 2001:db8::123 maxdistance 0.05 holddown 3\n")
        .unwrap()
        .config;
    let announce = &config.announce[0];
    assert_eq!(announce.addresses.len(), 2);
    assert_eq!((announce.max_distance, announce.hold_down), (0.05, 3.0));
    for (text, message) in [
        ("announce", "usage: announce ADDRESS"),
        ("announce ntp.example", "needs IP addresses"),
        ("announce 127.0.0.1", "cannot be a service address"),
        ("announce 192.0.2.1 holddown", "holddown needs seconds"),
        ("announce 192.0.2.1 holddown -1", "holddown is 0 to 86400 s"),
    ] {
        let error = error_of(text);
        assert!(error.contains(message) && error.contains("test.conf:1:"), "{text}: {error}");
    }
}

#[test]
fn smoothtime_and_leapsmear_lines() {
    let config = parse_text("smoothtime 400 0.001024 leaponly\n").unwrap().config;
    let smoothing = config.smoothing.unwrap();
    assert_eq!((smoothing.max_frequency_ppm, smoothing.max_wander_ppm), (400.0, 0.001024));
    assert!(smoothing.leap_only);
    let printed = config.to_string();
    assert!(printed.contains("smoothtime 400 0.001024 leaponly\n"), "{printed}");
    assert_eq!(parse_text(&printed).unwrap().config, config);
    let config = parse_text("leapsmear 192.0.2.2 2001:db8::2 cosine window 7200\n").unwrap().config;
    let smear = config.leap_smear.unwrap();
    assert_eq!(smear.addresses.len(), 2);
    assert_eq!(smear.settings.shape, crate::smear::SmearShape::Cosine);
    assert_eq!(smear.settings.window, 7200.0);
    let default = parse_text("leapsmear 192.0.2.2\n").unwrap().config.leap_smear.unwrap();
    assert_eq!(default.settings.shape, crate::smear::SmearShape::Linear);
    assert_eq!(default.settings.window, 86_400.0);
    for (line, error) in [
        ("smoothtime 400", "usage: smoothtime"),
        ("smoothtime 400 0.001 always", "usage: smoothtime"),
        ("smoothtime 0 0.001", "MAX-FREQ"),
        ("smoothtime 400 -1", "MAX-WANDER"),
        ("leapsmear", "usage: leapsmear"),
        ("leapsmear ntp.example", "needs IP addresses"),
        ("leapsmear 192.0.2.2 192.0.2.2", "given twice"),
        ("leapsmear 192.0.2.2 window 10", "window is 60 to 172800 s"),
        ("leapsmear 192.0.2.2 window 172801", "window is 60 to 172800 s"),
        ("leapsmear 192.0.2.2\nleapsmear 192.0.2.3", "leapsmear is given twice"),
        ("leapsmear 192.0.2.2\nsmoothtime 400 0.001", "cannot be combined"),
    ] {
        let message = parse_text(&format!("{line}\n")).unwrap_err().to_string();
        assert!(message.contains(error), "{line}: {message}");
        assert!(message.starts_with("test.conf:"), "{line}: {message}");
    }
}
