//! ntpxd and ntpxc: the daemon around ntpx's XDP program, and its control client.
//!
//! The rooms (ARCHITECTURE.md says what each may import): the core's sans-IO modules (`sync`,
//! `nts`, `reference`, `server`, `access`, the report encoders `report`, `chronyc`, `metrics`
//! and the `control` protocol), `config`, the kernel's side (`dataplane`, `client_table`), the
//! daemon's shell (`daemon`, `upstream`, `cli`), and `sys`, the one room for system calls and
//! unsafe code.
#![deny(unsafe_code)]

pub mod access;
pub mod chronyc;
pub mod cli;
pub mod client_table;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod nts;
pub mod random;
pub mod reference;
pub mod report;
pub mod server;
pub mod sync;
#[expect(unsafe_code, reason = "the one room for system calls and unsafe code")]
pub mod sys;
pub mod upstream;
