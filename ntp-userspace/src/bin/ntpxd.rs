//! ntpxd: an NTP server that answers in the kernel (XDP), configured and run like chronyd.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use ntp_userspace::{
    cli::ntpxd::Args,
    config,
    daemon::{self, Options},
    sys::{files, privileges, service, syslog},
};
use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match config::load(&args.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("ntpxd: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.print_config {
        for warning in &loaded.warnings {
            eprintln!("ntpxd: warning: {warning}");
        }
        print!("{}", loaded.config);
        return ExitCode::SUCCESS;
    }
    let foreground = args.no_detach || args.debug > 0;
    if !foreground && let Err(error) = service::detach() {
        eprintln!("ntpxd: cannot detach: {error}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = init_logging(&args, foreground) {
        eprintln!("ntpxd: {error:#}");
        return ExitCode::FAILURE;
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let options = Options { no_clock_control: args.no_clock_control };
    let user = loaded.config.user.clone();
    let started = daemon::prepare(args.config.clone(), loaded.config, options)
        .and_then(|mut prepared| {
            let user = privileges::target_user(user.as_deref())?;
            if let Some(user) = privileges::switching_to(user.as_ref()) {
                prepared.hand_over_to(user)?;
            }
            privileges::drop_privileges(user.as_ref(), || prepared.needed_capabilities())?;
            Ok(prepared)
        })
        .and_then(|prepared| {
            // Only now, with privileges dropped, the runtime's threads.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(daemon::slow_path_threads())
                .enable_all()
                .build()?;
            runtime.block_on(daemon::serve(prepared))
        });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            if foreground {
                eprintln!("ntpxd: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args, foreground: bool) -> anyhow::Result<()> {
    let level = match (args.debug, args.log_level) {
        (2.., _) | (_, ..=-1) => LevelFilter::DEBUG,
        (_, 0) => LevelFilter::INFO,
        (_, 1) => LevelFilter::WARN,
        _ => LevelFilter::ERROR,
    };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false);
    if let Some(path) = &args.log_file {
        let file = files::open_log(path)
            .map_err(|error| anyhow::anyhow!("opening the log file {}: {error}", path.display()))?;
        builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd: the journal stamps each line itself and shows no colours.
        builder.with_ansi(false).without_time().with_writer(std::io::stderr).init();
    } else if foreground {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.with_ansi(false).without_time().with_writer(syslog::Writer::open).init();
    }
    Ok(())
}
