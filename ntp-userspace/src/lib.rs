//! ntpxd and ntpxc: the daemon around ntpx's XDP program, and its control client.

pub mod access;
pub mod chronyc;
pub mod cli;
pub mod client_table;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod files;
pub mod metrics;
pub mod nic;
pub mod nts;
pub mod privileges;
pub mod random;
pub mod reference;
pub mod report;
pub mod server;
pub mod service;
pub mod socket;
pub mod sync;
pub mod upstream;
