//! The command lines of ntpxd and ntpxc, in one place for the binaries and their man pages.

pub mod ntpxd {
    use std::path::PathBuf;

    use clap::Parser;

    use crate::config::DEFAULT_CONFIG_FILE;

    #[derive(Parser, Debug)]
    #[command(
        version,
        about = "NTP server answering client requests in the kernel (XDP); \
        reads chrony.conf syntax"
    )]
    pub struct Args {
        /// Configuration file (chrony.conf syntax).
        #[arg(short = 'f', value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
        pub config: PathBuf,
        /// Do not detach from the terminal.
        #[arg(short = 'n')]
        pub no_detach: bool,
        /// Do not detach, and log to the terminal (twice: debug messages too).
        #[arg(short = 'd', action = clap::ArgAction::Count)]
        pub debug: u8,
        /// Never adjust the system clock.
        #[arg(short = 'x')]
        pub no_clock_control: bool,
        /// Minimum log severity: 0 informational, 1 warning, 2 error, 3 fatal.
        #[arg(
            short = 'L',
            value_name = "LEVEL",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        pub log_level: i8,
        /// Log to FILE instead of the terminal or syslog.
        #[arg(short = 'l', value_name = "FILE")]
        pub log_file: Option<PathBuf>,
        /// Print the effective configuration and exit (checks the file).
        #[arg(short = 'p')]
        pub print_config: bool,
    }
}

pub mod ntpxc {
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    use crate::config::DEFAULT_COMMAND_SOCKET;

    #[derive(Parser, Debug)]
    #[command(version, about = "Reports from ntpxd, like chronyc", disable_help_flag = true)]
    pub struct Args {
        /// ntpxd's control socket (chronyc's -h, for a Unix socket path).
        #[arg(short = 'h', value_name = "SOCKET", default_value = DEFAULT_COMMAND_SOCKET)]
        pub socket: PathBuf,
        /// Comma-separated values, as `chronyc -c`.
        #[arg(short = 'c')]
        pub csv: bool,
        /// JSON.
        #[arg(long, conflicts_with = "csv")]
        pub json: bool,
        #[arg(long, action = clap::ArgAction::Help)]
        pub help: Option<bool>,
        #[command(subcommand)]
        pub command: Command,
    }

    #[derive(Subcommand, Debug)]
    pub enum Command {
        /// Counters of NTP requests: chronyc's, then the kernel's and the slow path's.
        Serverstats,
        /// The client log: requests, drops, intervals and last request of each client.
        Clients {
            /// Only clients with at least this many requests.
            #[arg(short = 'p', value_name = "N", default_value_t = 0)]
            min_requests: u32,
            /// Zero the counts after reporting them.
            #[arg(short = 'r')]
            reset: bool,
            /// Only the N clients with the most requests.
            #[arg(long, value_name = "N")]
            top: Option<usize>,
        },
        /// Serve a subnet from now on (as an `allow` line after the configuration's).
        Allow {
            /// `[all] [SUBNET]`: all also drops the more specific rules given before.
            #[arg(num_args = 0..=2)]
            rule: Vec<String>,
        },
        /// Refuse a subnet from now on (as a `deny` line after the configuration's).
        Deny {
            #[arg(num_args = 0..=2)]
            rule: Vec<String>,
        },
        /// Whether an address is served.
        Accheck { address: String },
        /// Reread the configuration file (as SIGHUP): access rules, rate limit, local reference.
        Reload,
        /// The synchronisation: reference, stratum, offsets, frequency, root distance, leap status.
        Tracking,
        /// The upstream sources: state, stratum, poll, reach, last sample.
        Sources {
            /// With a legend of the columns.
            #[arg(short = 'v')]
            verbose: bool,
        },
        /// The upstream sources' statistics: samples, frequency, skew, offset, spread.
        Sourcestats {
            /// With a legend of the columns.
            #[arg(short = 'v')]
            verbose: bool,
        },
        /// The upstream sources' authentication: NTS key exchanges, NAKs, cookies.
        Authdata,
        /// The service addresses of `announce`: announced to the routing daemon, or why not.
        Announcements,
        /// The time smoothing of `smoothtime`: offset, frequency, wander, time remaining.
        Smoothing,
        /// Reset the time smoothing (serve true time from now on) or activate it now.
        Smoothtime {
            #[arg(value_parser = ["reset", "activate"])]
            action: String,
        },
    }
}
