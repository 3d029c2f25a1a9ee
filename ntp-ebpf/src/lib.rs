//! Present so that ntp-userspace can depend on this crate (and be rebuilt when it changes); the
//! program itself is the `ntp-ebpf` binary, built for the BPF target by ntp-userspace's build.rs.
#![no_std]
