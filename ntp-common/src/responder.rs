//! The pure NTP responder: request bytes, the published [`ServerState`] and the receive and
//! transmit instants in, reply bytes or the reason not to answer out.
//!
//! The daemon's socket path answers with it, and the tests use it as the oracle for the XDP
//! program, which implements the same rules on packet memory; the two must agree byte for byte.

use crate::{
    extension::{self, Authentication, Malformed},
    state::ServerState,
    wire::{self, HEADER_LEN, Leap, Mode, NtpTimestamp, ReferenceId, offset},
};

/// Why a request gets no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoReply {
    /// Shorter than a header, not a multiple of 4 bytes, or longer than
    /// [`extension::MAX_PACKET_LEN`].
    Length(usize),
    /// Extension fields that do not parse (see [`extension`]).
    Malformed,
    /// A version other than 1 to 4.
    Version(u8),
    /// Not a client request (mode 3).
    NotClientRequest(Mode),
    /// A symmetric-key MAC: this server has no keys, so it cannot answer it (chronyd does not
    /// answer a MAC of a key it does not know).
    Mac,
    /// NTS fields: answered, if at all, by the NTS layer around this responder.
    Nts,
    /// The state is stale at the receive instant.
    Stale,
}

/// A client request, checked: its header, and how it is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: &'a [u8; HEADER_LEN],
    pub authentication: Authentication,
}

/// Checks that `request` is a client request (mode 3, version 1 to 4) whose extension fields
/// and MAC parse as chronyd parses them. Fields of unknown types are ignored.
pub fn check_request(request: &[u8]) -> Result<Request<'_>, NoReply> {
    let header: &[u8; HEADER_LEN] = request.first_chunk().ok_or(NoReply::Length(request.len()))?;
    let (_, version, mode) = wire::split_li_vn_mode(header[offset::LI_VN_MODE]);
    if !request.len().is_multiple_of(4) || request.len() > extension::MAX_PACKET_LEN {
        return Err(NoReply::Length(request.len()));
    }
    if !wire::is_served_version(version) {
        return Err(NoReply::Version(version));
    }
    let (authentication, _) =
        extension::parse_request(request, version).map_err(|error| match error {
            Malformed::Length(length) => NoReply::Length(length),
            Malformed::Field => NoReply::Malformed,
        })?;
    if mode != Mode::Client {
        return Err(NoReply::NotClientRequest(mode));
    }
    Ok(Request { header, authentication })
}

/// The poll field of a reply: the client's, raised to the rate limit's interval (chrony's
/// `ratelimit` tells clients the interval it expects). `min_poll` is `i8::MIN` without one.
pub const fn reply_poll(request_poll: u8, min_poll: i8) -> u8 {
    let poll = request_poll as i8;
    (if poll < min_poll { min_poll } else { poll }) as u8
}

/// Builds the reply to a client request without authentication: a plain header, whatever
/// fields of unknown types the request carries, so never longer than the request.
///
/// `receive_tai_ns` and `transmit_tai_ns` are CLOCK_TAI instants; the state turns them into the
/// time served. The state must be fresh when the request is received.
pub fn respond(
    request: &[u8],
    state: &ServerState,
    receive_tai_ns: u64,
    transmit_tai_ns: u64,
    min_poll: i8,
) -> Result<[u8; HEADER_LEN], NoReply> {
    let request = check_request(request)?;
    match request.authentication {
        Authentication::None => {
            answer(request.header, state, receive_tai_ns, transmit_tai_ns, min_poll)
        }
        Authentication::Mac => Err(NoReply::Mac),
        Authentication::Nts => Err(NoReply::Nts),
    }
}

/// The reply header to a request whose header is `request` and which [`check_request`]
/// accepted (and whose authentication, if any, the caller has verified).
pub fn answer(
    request: &[u8; HEADER_LEN],
    state: &ServerState,
    receive_tai_ns: u64,
    transmit_tai_ns: u64,
    min_poll: i8,
) -> Result<[u8; HEADER_LEN], NoReply> {
    let (_, version, _) = wire::split_li_vn_mode(request[offset::LI_VN_MODE]);
    let received = state.elapsed_ns(receive_tai_ns).ok_or(NoReply::Stale)?;
    let transmit = state.served_time_after(state.transmit_elapsed_ns(received, transmit_tai_ns));

    let mut reply = [0u8; HEADER_LEN];
    reply[offset::LI_VN_MODE] = wire::li_vn_mode(state.leap(), version, Mode::Server);
    reply[offset::STRATUM] = state.stratum;
    reply[offset::POLL] = reply_poll(request[offset::POLL], min_poll);
    reply[offset::PRECISION] = state.precision as u8;
    let mut put = |at: usize, bytes: &[u8]| reply[at..at + bytes.len()].copy_from_slice(bytes);
    put(offset::ROOT_DELAY, &state.root_delay.to_be_bytes());
    put(offset::ROOT_DISPERSION, &state.root_dispersion_after(received).to_bits());
    put(offset::REFERENCE_ID, &state.reference_id);
    put(offset::REFERENCE_TIMESTAMP, &state.reference_time.to_be_bytes());
    put(
        offset::ORIGIN_TIMESTAMP,
        &request[offset::TRANSMIT_TIMESTAMP..offset::TRANSMIT_TIMESTAMP + 8],
    );
    put(offset::RECEIVE_TIMESTAMP, &state.served_time_after(received).to_bits());
    put(offset::TRANSMIT_TIMESTAMP, &transmit.to_bits());
    Ok(reply)
}

/// The RATE kiss-o'-death for a rate-limited client request: LI 3, stratum 0, reference ID
/// "RATE", and no time of this server (receive and transmit repeat the client's transmit).
pub fn kiss_of_death(request: &[u8], min_poll: i8) -> Result<[u8; HEADER_LEN], NoReply> {
    kiss(request, ReferenceId::KISS_RATE, min_poll)
}

/// A kiss-o'-death with `code` as its reference ID, as [`kiss_of_death`] makes RATE's.
pub fn kiss(request: &[u8], code: ReferenceId, min_poll: i8) -> Result<[u8; HEADER_LEN], NoReply> {
    let request = check_request(request)?.header;
    let (_, version, _) = wire::split_li_vn_mode(request[offset::LI_VN_MODE]);
    let client_transmit = &request[offset::TRANSMIT_TIMESTAMP..offset::TRANSMIT_TIMESTAMP + 8];
    let mut reply = [0u8; HEADER_LEN];
    reply[offset::LI_VN_MODE] = wire::li_vn_mode(Leap::Unsynchronised, version, Mode::Server);
    reply[offset::POLL] = reply_poll(request[offset::POLL], min_poll);
    reply[offset::REFERENCE_ID..offset::REFERENCE_ID + 4].copy_from_slice(&code.to_bits());
    for at in [offset::ORIGIN_TIMESTAMP, offset::RECEIVE_TIMESTAMP, offset::TRANSMIT_TIMESTAMP] {
        reply[at..at + 8].copy_from_slice(client_transmit);
    }
    Ok(reply)
}

/// The served time in a reply: (receive, transmit).
pub fn server_timestamps(reply: &[u8; HEADER_LEN]) -> (NtpTimestamp, NtpTimestamp) {
    let header = wire::NtpHeader::from_bytes(reply);
    (header.receive_timestamp, header.transmit_timestamp)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        state::{MAX_STATE_AGE_NS, ReplyHeader, TimeAnchor},
        wire::{NtpHeader, NtpShort},
    };

    const BASE_TAI: u64 = 5_000_000_000_000;
    /// The time served at BASE_TAI.
    const ANCHOR_UNIX_NS: u64 = 1_795_659_987_123_456_789;

    fn state(header: ReplyHeader) -> ServerState {
        state_serving(header, ANCHOR_UNIX_NS)
    }

    fn state_serving(header: ReplyHeader, served_unix_ns: u64) -> ServerState {
        let anchor = TimeAnchor { tai_ns: BASE_TAI, served_unix_ns, frequency: 0.0 };
        ServerState::new(anchor, header, MAX_STATE_AGE_NS)
    }

    fn local_stratum_10() -> ReplyHeader {
        ReplyHeader {
            leap: Leap::NoWarning,
            stratum: 10,
            precision: -25,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::from_fixed(3),
            dispersion_rate: 0.0,
            reference_id: ReferenceId::LOCAL,
            reference_time: NtpTimestamp::from_unix_nanos(1_795_659_980_000_000_000),
        }
    }

    fn request(version: u8, poll: i8) -> [u8; HEADER_LEN] {
        NtpHeader::client_request(version, poll, NtpTimestamp::from_fixed(0x0123_4567_89ab_cdef))
            .to_bytes()
    }

    #[test]
    fn answers_a_client_request_with_the_published_header() {
        let state = state(local_stratum_10());
        let reply =
            respond(&request(4, 6), &state, BASE_TAI + 1_000, BASE_TAI + 1_100, i8::MIN).unwrap();
        let reply = NtpHeader::from_bytes(&reply);
        assert_eq!((reply.leap, reply.version, reply.mode), (Leap::NoWarning, 4, Mode::Server));
        assert_eq!((reply.stratum, reply.poll, reply.precision), (10, 6, -25));
        assert_eq!(reply.reference_id, ReferenceId::LOCAL);
        assert_eq!(reply.root_dispersion, NtpShort::from_fixed(3));
        assert_eq!(reply.origin_timestamp, NtpTimestamp::from_fixed(0x0123_4567_89ab_cdef));
        let anchor = ANCHOR_UNIX_NS as i64;
        let served_ns = |t: NtpTimestamp| t.to_unix_nanos_near(anchor) - anchor;
        assert_eq!(served_ns(reply.receive_timestamp), 1_000);
        assert_eq!(served_ns(reply.transmit_timestamp), 1_100);
    }

    #[test]
    fn serves_across_the_2036_era_rollover() {
        // Anchored 600 ns before 2036-02-07 06:28:16 UTC: received before it, sent after it.
        let anchor = wire::ERA_1_UNIX_NS - 600;
        let state = state_serving(local_stratum_10(), anchor);
        let reply =
            respond(&request(4, 6), &state, BASE_TAI + 500, BASE_TAI + 1_100, i8::MIN).unwrap();
        let reply = NtpHeader::from_bytes(&reply);
        assert_eq!(reply.receive_timestamp.to_fixed() >> 32, 0xffff_ffff, "era 0's last second");
        assert_eq!(reply.transmit_timestamp.to_fixed() >> 32, 0, "era 1's first second");
        let served_ns = |t: NtpTimestamp| t.to_unix_nanos_near(anchor as i64) - anchor as i64;
        assert_eq!(served_ns(reply.receive_timestamp), 500);
        assert_eq!(served_ns(reply.transmit_timestamp), 1_100);
    }

    #[test]
    fn echoes_versions_1_to_4_and_ignores_others() {
        let state = state(local_stratum_10());
        for version in 0..8 {
            let result = respond(&request(version, 3), &state, BASE_TAI, BASE_TAI, i8::MIN);
            match version {
                1..=4 => assert_eq!(NtpHeader::from_bytes(&result.unwrap()).version, version),
                _ => assert_eq!(result, Err(NoReply::Version(version))),
            }
        }
    }

    #[test]
    fn answers_only_client_mode() {
        let state = state(local_stratum_10());
        for mode in 0..8u8 {
            let mut packet = request(4, 0);
            packet[0] = (packet[0] & !0b111) | mode;
            let result = respond(&packet, &state, BASE_TAI, BASE_TAI, i8::MIN);
            assert_eq!(result.is_ok(), mode == 3, "mode {mode}");
        }
    }

    #[test]
    fn an_unsynchronised_server_still_answers_with_li_3() {
        let state = state(ReplyHeader::UNSYNCHRONISED);
        let reply = respond(&request(4, 0), &state, BASE_TAI, BASE_TAI, i8::MIN).unwrap();
        let reply = NtpHeader::from_bytes(&reply);
        assert_eq!((reply.leap, reply.stratum), (Leap::Unsynchronised, 0));
        assert_eq!(reply.root_delay, NtpShort::ONE_SECOND);
        assert_eq!(reply.reference_timestamp, NtpTimestamp::ZERO);
    }

    #[test]
    fn the_poll_is_raised_to_the_rate_limit_interval() {
        let state = state(local_stratum_10());
        let reply = respond(&request(4, 2), &state, BASE_TAI, BASE_TAI, 3).unwrap();
        assert_eq!(NtpHeader::from_bytes(&reply).poll, 3);
        let reply = respond(&request(4, 6), &state, BASE_TAI, BASE_TAI, 3).unwrap();
        assert_eq!(NtpHeader::from_bytes(&reply).poll, 6);
    }

    #[test]
    fn a_kiss_of_death_says_rate_and_gives_no_time() {
        let kod = NtpHeader::from_bytes(&kiss_of_death(&request(3, 0), 4).unwrap());
        assert_eq!(
            (kod.leap, kod.version, kod.mode, kod.stratum, kod.poll),
            (Leap::Unsynchronised, 3, Mode::Server, 0, 4)
        );
        assert_eq!(kod.reference_id, ReferenceId::KISS_RATE);
        let client = NtpTimestamp::from_fixed(0x0123_4567_89ab_cdef);
        assert_eq!(
            (kod.origin_timestamp, kod.receive_timestamp, kod.transmit_timestamp),
            (client, client, client)
        );
    }

    #[test]
    fn a_stale_state_is_not_served() {
        let state = state(local_stratum_10());
        let late = state.fresh_until_tai_ns + 1;
        assert_eq!(respond(&request(4, 0), &state, late, late, i8::MIN), Err(NoReply::Stale));
    }

    #[test]
    fn transmit_is_never_before_receive() {
        let state = state(local_stratum_10());
        for transmit in [BASE_TAI - 1, BASE_TAI + 10, state.fresh_until_tai_ns + 1_000_000_000] {
            let reply = respond(&request(4, 0), &state, BASE_TAI + 50, transmit, i8::MIN).unwrap();
            let (receive, transmit) = server_timestamps(&reply);
            assert_eq!(receive, transmit);
        }
    }

    /// `request` with a field of `length` bytes of type `kind` after it.
    fn with_field(request: &[u8], kind: u16, length: usize) -> Vec<u8> {
        let mut packet = request.to_vec();
        packet.extend_from_slice(&kind.to_be_bytes());
        packet.extend_from_slice(&(length as u16).to_be_bytes());
        packet.resize(packet.len() + length - 4, 0x5a);
        packet
    }

    #[test]
    fn unknown_extension_fields_get_the_plain_reply() {
        let state = state(local_stratum_10());
        let plain = respond(&request(4, 6), &state, BASE_TAI, BASE_TAI, i8::MIN).unwrap();
        // chrony's experimental field (F323) and a 900-byte one of no known type.
        for packet in
            [with_field(&request(4, 6), 0xf323, 28), with_field(&request(4, 6), 0x7777, 900)]
        {
            let reply = respond(&packet, &state, BASE_TAI, BASE_TAI, i8::MIN);
            assert_eq!(reply, Ok(plain), "{} bytes", packet.len());
        }
    }

    #[test]
    fn macs_nts_and_malformed_fields_get_no_plain_reply() {
        let state = state(local_stratum_10());
        let answer = |packet: &[u8]| respond(packet, &state, BASE_TAI, BASE_TAI, i8::MIN);
        let mut mac = request(4, 6).to_vec();
        mac.extend_from_slice(&[7; 20]);
        assert_eq!(answer(&mac), Err(NoReply::Mac));
        let nts = with_field(&request(4, 6), extension::kind::NTS_UNIQUE_IDENTIFIER, 36);
        assert_eq!(answer(&nts), Err(NoReply::Nts));
        assert_eq!(answer(&with_field(&request(4, 6), 0x7777, 16)), Err(NoReply::Malformed));
        // NTPv3 has no fields: what follows its header is a MAC.
        assert_eq!(answer(&with_field(&request(3, 6), 0x7777, 28)), Err(NoReply::Mac));
        assert_eq!(answer(&request(4, 6)[..47]), Err(NoReply::Length(47)));
        let mut odd = request(4, 6).to_vec();
        odd.push(0);
        assert_eq!(answer(&odd), Err(NoReply::Length(49)));
    }

    proptest! {
        #[test]
        fn a_reply_is_a_48_byte_answer_to_a_request_at_least_as_long(
            packet in proptest::collection::vec(any::<u8>(), 0..1200),
        ) {
            let state = state(local_stratum_10());
            if let Ok(reply) = respond(&packet, &state, BASE_TAI, BASE_TAI, i8::MIN) {
                prop_assert!(packet.len() >= HEADER_LEN && packet.len() % 4 == 0);
                prop_assert!(packet.len() <= extension::MAX_PACKET_LEN);
                let (_, version, mode) = wire::split_li_vn_mode(packet[0]);
                prop_assert!(mode == Mode::Client && (1..=4).contains(&version));
                prop_assert_eq!(&reply[24..32], &packet[40..48]);
                prop_assert_eq!(reply[2], packet[2]);
            }
        }

        #[test]
        fn a_request_with_unknown_fields_is_answered_as_its_header(
            lengths in proptest::collection::vec((4usize..60).prop_map(|n| n * 4), 1..4),
        ) {
            let state = state(local_stratum_10());
            let packet = lengths.iter().fold(request(4, 6).to_vec(), |packet, &length| {
                with_field(&packet, 0x7777, length)
            });
            let last_is_long = lengths.last().is_some_and(|&last| last >= 28);
            let reply = respond(&packet, &state, BASE_TAI, BASE_TAI, i8::MIN);
            if last_is_long {
                prop_assert_eq!(reply, respond(&request(4, 6), &state, BASE_TAI, BASE_TAI, i8::MIN));
            } else {
                prop_assert!(reply.is_err());
            }
        }
    }
}
