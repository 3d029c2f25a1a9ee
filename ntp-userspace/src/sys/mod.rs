//! The system: every system call ntpxd makes, and every `unsafe` block of userspace, in one
//! room. The clock and `adjtimex`, sockets and their control messages, the BPF system calls
//! aya does not make, the NIC's offloads, the reference clocks' devices (shared memory, PPS,
//! PHC), files, privileges and limits, the service manager and syslog. The rest of the crate denies unsafe code and calls what is here.

pub mod address;
pub mod bpf;
pub mod clock;
pub mod files;
mod ioctl;
pub mod nic;
pub mod phc;
pub mod pps;
pub mod privileges;
pub mod service;
pub mod shm;
pub mod socket;
pub mod syslog;
