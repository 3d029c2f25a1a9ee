//! The NTS server keys' file: any text is a key ring or an error naming its line, never a
//! panic; a ring read back from its own text is the same ring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_userspace::nts::cookie::KeyRing;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match KeyRing::from_text(text) {
        Ok(ring) => assert_eq!(KeyRing::from_text(&ring.to_text()), Ok(ring)),
        Err(error) => assert!(error.starts_with("line ") || error.starts_with("no ")),
    }
});
