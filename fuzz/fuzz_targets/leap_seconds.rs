//! The leap-seconds list: any text is a table or an error; a table answers for any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_userspace::sync::leap::LeapTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = LeapTable::parse(text) else { return };
    // Times a clock can read: from 1900 to some thirty thousand years on.
    for t in [-2_208_988_800, -1, 0, 1_483_228_799, 1_798_761_599, 1 << 40] {
        let _ = table.tai_offset(t);
        let _ = table.leap_today(t);
        let _ = table.has_expired(t);
    }
});
