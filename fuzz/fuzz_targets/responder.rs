//! The responder: whatever a client sends, a reply is a server-mode answer to that request,
//! never longer than it, or no reply; extension fields and MACs are read as chronyd reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_common::{
    extension::{self, Authentication},
    responder,
    state::{MAX_STATE_AGE_NS, ReplyHeader, ServerState, TimeAnchor},
    wire::{HEADER_LEN, Leap, Mode, NtpHeader, NtpShort, NtpTimestamp, ReferenceId},
};

const TAI_NS: u64 = 1_795_660_037_000_000_000;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the clock's offset into the state's life; the rest is the request.
    let Some((when, request)) = data.split_first_chunk::<8>() else { return };
    let header = ReplyHeader {
        leap: Leap::NoWarning,
        stratum: 2,
        precision: -24,
        root_delay: NtpShort::from_seconds(0.001),
        root_dispersion: NtpShort::from_seconds(0.001),
        dispersion_rate: 15e-6,
        reference_id: ReferenceId::from_bits([192, 0, 2, 1]),
        reference_time: NtpTimestamp::from_unix_nanos(1_795_660_000_000_000_000),
    };
    let anchor =
        TimeAnchor { tai_ns: TAI_NS, served_unix_ns: 1_795_660_000_000_000_000, frequency: 1e-5 };
    let state = ServerState::new(anchor, header, MAX_STATE_AGE_NS);
    let received = TAI_NS.wrapping_add(u64::from_le_bytes(*when) % (2 * MAX_STATE_AGE_NS));
    let transmit = received.wrapping_add(20_000);
    let checked = responder::check_request(request);
    match responder::respond(request, &state, received, transmit, i8::MIN) {
        Ok(reply) => {
            assert!(reply.len() <= request.len(), "a reply longer than its request");
            assert!(request.len() % 4 == 0 && request.len() <= extension::MAX_PACKET_LEN);
            let checked = checked.expect("answered, so checked");
            assert_eq!(checked.authentication, Authentication::None);
            // Every field skipped is a whole field by RFC 7822's syntax, the last at least 28
            // bytes long (shorter trailers are MACs or nothing).
            let fields: Vec<_> = extension::fields(request, HEADER_LEN).collect();
            assert!(fields.iter().all(|field| field.is_ok()), "{fields:?}");
            if let Some(Ok(last)) = fields.last() {
                assert!(last.end() - last.start >= 28);
            }
            let (reply, request) = (NtpHeader::from_bytes(&reply), NtpHeader::from_bytes(checked.header));
            assert_eq!(reply.mode, Mode::Server);
            assert_eq!(reply.origin_timestamp, request.transmit_timestamp);
        }
        Err(_) => assert!(
            checked.is_err()
                || checked.is_ok_and(|c| c.authentication != Authentication::None)
                || received >= state.fresh_until_tai_ns
                || received < TAI_NS
        ),
    }
});
