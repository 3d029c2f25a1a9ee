//! ntpx's load benchmark: an XDP live-frames load generator and reply counter on one side of a
//! veth pair, ntpxd, chronyd or a reflector on the other, rate sweeps, and microbenchmarks of
//! the XDP program; a socket generator for servers elsewhere.

pub mod bed;
pub mod cost;
pub mod frames;
pub mod nts_load;
pub mod programs;
pub mod report;
pub mod response;
pub mod scaling;
pub mod soak;
pub mod socket_load;
pub mod step;
pub mod sweep;
