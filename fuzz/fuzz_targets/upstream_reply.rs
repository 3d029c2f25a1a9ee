//! An upstream server's reply: any datagram arriving for a request in flight is a sample or a
//! rejection, never a panic, and a sample's figures are finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_common::wire::offset;
use ntp_userspace::sync::source::{PollSettings, Source};

const NOW_NS: i64 = 1_795_660_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let address = "192.0.2.1:123".parse().unwrap();
    let mut source = Source::new("upstream".into(), address, PollSettings::default(), NOW_NS);
    let Some(request) = source.poll(NOW_NS, 0x0123_4567_89ab_cdef) else { return };
    // Mostly replies that answer the request: its transmit timestamp as their origin.
    let mut reply = data.to_vec();
    let (origin, transmit) = (offset::ORIGIN_TIMESTAMP, offset::TRANSMIT_TIMESTAMP);
    if reply.len() >= origin + 8 && data[0] & 1 == 0 {
        reply[origin..origin + 8].copy_from_slice(&request.bytes[transmit..transmit + 8]);
    }
    let elapsed = i64::from(data.get(1).copied().unwrap_or(0)) * 1_000_000;
    if let Ok(sample) = source.receive(&reply, address, NOW_NS + elapsed, data.len() % 3 == 0) {
        assert!(sample.offset.is_finite() && sample.delay.is_finite());
        assert!(sample.delay >= 0.0);
    }
});
