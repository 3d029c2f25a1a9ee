//! ntpxd and ntpxc: the daemon around ntpx's XDP program, and its control client.

pub mod access;
pub mod clock;
pub mod dataplane;
