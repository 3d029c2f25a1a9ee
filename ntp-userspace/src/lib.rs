//! ntpxd and ntpxc: the daemon around ntpx's XDP program, and its control client.
//!
//! The rooms (ARCHITECTURE.md says what each may import): the core (`ntpx-core`, re-exported
//! here: everything decided without I/O), `config`, the kernel's side (`dataplane`,
//! `client_table`), the daemon's shell (`daemon`, `upstream`, `tls`, `control`'s client, `cli`),
//! and `sys`, the one room for system calls and unsafe code.
#![deny(unsafe_code)]

pub use ntpx_core::{
    access, announce, chronyc, client_log, metrics, nts, random, reference, report, server, smear,
    smoothing, sync,
};

pub mod cli;
pub mod client_table;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod refclock;
#[expect(unsafe_code, reason = "the one room for system calls and unsafe code")]
pub mod sys;
pub mod tls;
pub mod upstream;
