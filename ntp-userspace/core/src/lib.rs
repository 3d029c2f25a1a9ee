//! ntpx's core: everything the daemon decides, without I/O. The synchronisation to upstream
//! sources and the clock discipline (against an injected clock), NTS's messages, cookies and
//! packets, the reference served, the server's decisions on each datagram, the access rules,
//! the client log's terms, and the encoders of the reports (ntpxc's, chronyc's protocol, the
//! metrics). Bytes and instants in, decisions and bytes out: the daemon (`ntp-userspace`) does
//! the sockets, the clock and the kernel. Its dependencies hold no system-call crate, and it
//! holds no unsafe code.
#![forbid(unsafe_code)]

pub mod access;
pub mod announce;
pub mod chronyc;
pub mod client_log;
pub mod control;
pub mod metrics;
pub mod nts;
pub mod random;
pub mod reference;
pub mod report;
pub mod server;
pub mod smear;
pub mod smoothing;
pub mod sync;
