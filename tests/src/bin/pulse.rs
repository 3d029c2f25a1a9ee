//! A pulse-per-second signal for the guest VM, on its emulated parallel port: each write of
//! the control register with interrupts enabled and STROBE low makes qemu's port raise its
//! interrupt, as a receiver's PPS output on the ACK line would. With pps_parport bound to the
//! port, the kernel time-stamps each interrupt and /dev/ppsN reports it: a real PPS device,
//! whose pulses mark the guest clock's own seconds (they come from this program).
//!
//! Usage: ntpx-pulse [BASE] (the port's I/O base, 0x378 by default)

use std::{fs::OpenOptions, os::unix::fs::FileExt as _, time::Duration};

/// Control register bits: SELECT, INIT (not reset), interrupts enabled; STROBE low.
const CONTROL_PULSE: u8 = 0x08 | 0x04 | 0x10;

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(|base| u64::from_str_radix(base.trim_start_matches("0x"), 16).expect("a hex port"))
        .unwrap_or(0x378);
    // /dev/port: a byte written at offset N is an `outb` to I/O port N.
    let ports = OpenOptions::new().write(true).open("/dev/port").expect("/dev/port");
    loop {
        let now = ntp_userspace::sys::clock::realtime_ns();
        let next_second = (now / 1_000_000_000 + 1) * 1_000_000_000;
        std::thread::sleep(Duration::from_nanos(next_second - now));
        ports.write_all_at(&[CONTROL_PULSE], base + 2).expect("writing the control register");
    }
}
