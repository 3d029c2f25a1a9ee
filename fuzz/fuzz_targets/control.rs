//! The control protocol: any request line decodes to a request or an error, and a decoded
//! request encodes back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_userspace::control::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Request>(data) else { return };
    let _ = request.changes_state();
    let encoded = serde_json::to_string(&request).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&encoded).unwrap(), request);
});
