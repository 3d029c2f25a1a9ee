//! The configuration parser: any text is a configuration or an error with a line, never a
//! panic; a configuration printed (`ntpxd -p`) reads back as the same configuration.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ntp_userspace::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Directives that read other files or resolve names are not followed here.
    if text.contains("include") || text.contains("confdir") || text.contains("sourcedir") {
        return;
    }
    let Ok(loaded) = config::parse(Path::new("fuzz.conf"), text) else { return };
    let printed = loaded.config.to_string();
    let reread = config::parse(Path::new("printed.conf"), &printed).unwrap_or_else(|error| {
        panic!("the printed configuration does not parse: {error}\n{printed}")
    });
    assert_eq!(reread.config, loaded.config, "{printed}");
});
