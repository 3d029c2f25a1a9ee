//! The NTP header: any 48 bytes parse, and serialise back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_common::wire::{HEADER_LEN, NtpHeader};

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..HEADER_LEN) else { return };
    let bytes: &[u8; HEADER_LEN] = bytes.try_into().unwrap();
    let header = NtpHeader::from_bytes(bytes);
    assert_eq!(&header.to_bytes(), bytes);
    assert_eq!(NtpHeader::from_bytes(&header.to_bytes()), header);
});
