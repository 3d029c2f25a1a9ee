//! The pure NTP responder: request bytes, the published [`ServerState`] and the receive and
//! transmit instants in, reply bytes or the reason not to answer out.
//!
//! The daemon's socket path answers with it, and the tests use it as the oracle for the XDP
//! program, which implements the same rules on packet memory; the two must agree byte for byte.

use crate::{
    state::ServerState,
    wire::{self, HEADER_LEN, Leap, Mode, NtpTimestamp, ReferenceId, offset},
};

/// Why a request gets no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoReply {
    /// Not exactly a 48-byte header: truncated, or carrying extension fields or a MAC, which
    /// this server does not process (it never answers what it cannot answer completely).
    Length(usize),
    /// A version other than 1 to 4.
    Version(u8),
    /// Not a client request (mode 3).
    NotClientRequest(Mode),
    /// The state is stale at the receive instant.
    Stale,
}

/// Checks that `request` is a plain client request this server answers.
pub fn check_request(request: &[u8]) -> Result<&[u8; HEADER_LEN], NoReply> {
    let request: &[u8; HEADER_LEN] =
        request.try_into().map_err(|_| NoReply::Length(request.len()))?;
    let (_, version, mode) = wire::split_li_vn_mode(request[offset::LI_VN_MODE]);
    if !wire::is_served_version(version) {
        return Err(NoReply::Version(version));
    }
    if mode != Mode::Client {
        return Err(NoReply::NotClientRequest(mode));
    }
    Ok(request)
}

/// The poll field of a reply: the client's, raised to the rate limit's interval (chrony's
/// `ratelimit` tells clients the interval it expects). `min_poll` is `i8::MIN` without one.
pub const fn reply_poll(request_poll: u8, min_poll: i8) -> u8 {
    let poll = request_poll as i8;
    (if poll < min_poll { min_poll } else { poll }) as u8
}

/// Builds the reply to a plain client request.
///
/// `receive_tai_ns` and `transmit_tai_ns` are CLOCK_TAI instants; the state turns them into the
/// time served. The state must be fresh when the request is received. The reply is exactly as
/// long as the request.
pub fn respond(
    request: &[u8],
    state: &ServerState,
    receive_tai_ns: u64,
    transmit_tai_ns: u64,
    min_poll: i8,
) -> Result<[u8; HEADER_LEN], NoReply> {
    let request = check_request(request)?;
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
    let request = check_request(request)?;
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

    proptest! {
        #[test]
        fn never_answers_anything_but_exactly_48_bytes(
            packet in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let state = state(local_stratum_10());
            let result = respond(&packet, &state, BASE_TAI, BASE_TAI, i8::MIN);
            if packet.len() != HEADER_LEN {
                prop_assert_eq!(result, Err(NoReply::Length(packet.len())));
            } else if let Ok(reply) = result {
                let (_, version, mode) = wire::split_li_vn_mode(packet[0]);
                prop_assert!(mode == Mode::Client && (1..=4).contains(&version));
                prop_assert_eq!(&reply[24..32], &packet[40..48]);
                prop_assert_eq!(reply[2], packet[2]);
            }
        }
    }
}
