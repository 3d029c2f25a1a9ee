//! Shared by ntpx's XDP program (no_std, bpf) and its daemon (std, with the `user` feature):
//! the NTP wire format, the kernel/daemon map types, and the pure responder.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod admission;
pub mod checksum;
pub mod extension;
pub mod maps;
pub mod ratelimit;
pub mod responder;
pub mod state;
pub mod wire;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: ServerState is repr(C), has no padding (size asserted) and is bytemuck::Pod.
    unsafe impl aya::Pod for crate::state::ServerState {}
    // SAFETY: as above, for the page that holds it.
    unsafe impl aya::Pod for crate::maps::ServerPage {}
    // SAFETY: repr(C), no padding (size asserted), bytemuck::Pod.
    unsafe impl aya::Pod for crate::ratelimit::ClientRecord {}
}
