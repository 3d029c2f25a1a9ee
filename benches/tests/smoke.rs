//! The benchmark's parts, checked: the generator program writes the requests the host builder
//! describes, the counter program tells valid replies from invalid ones, and a short run against
//! ntpxd in namespaces gets a valid reply to every request.

use std::time::Duration;

use ntp_common::{
    responder,
    state::{MAX_STATE_AGE_NS, ReplyHeader, ServerState, TimeAnchor},
};
use ntp_userspace::sys::clock;
use ntpx_bench::{
    bed::{Bed, ServerKind},
    frames::Flow,
    programs::{Counter, Generator},
};
use ntpx_tests::require_root;

const XDP_DROP: u32 = 1;

fn flow() -> Flow {
    Flow {
        client_mac: [2, 0, 0, 0, 0, 2],
        server_mac: [2, 0, 0, 0, 0, 1],
        server: "10.88.0.1:123".parse().unwrap(),
        first_client: "10.88.128.0".parse().unwrap(),
        clients: 256,
    }
}

#[test]
#[ignore = "needs root"]
fn the_generator_writes_the_requests_the_builder_describes() {
    require_root();
    let flow = flow();
    let mut generator = Generator::new(&flow.generator_config(), [0xa5; 90], 1).unwrap();
    for n in 1..=3u64 {
        let frame = generator.render().unwrap();
        let sent = u64::from_be_bytes(frame[82..90].try_into().unwrap());
        assert_eq!(frame, flow.request(n, sent), "request {n}");
    }
}

#[test]
#[ignore = "needs root"]
fn the_counter_tells_valid_replies_from_invalid_ones() {
    require_root();
    let flow = flow();
    let utc_minus_tai_ns = -i64::from(clock::tai_offset_s()) * 1_000_000_000;
    let mut counter = Counter::detached(&flow.counter_config(utc_minus_tai_ns, false)).unwrap();
    let sent = clock::tai_ns();
    let request = flow.request(5, sent);
    let anchor = TimeAnchor {
        tai_ns: sent,
        served_unix_ns: (sent as i64 + utc_minus_tai_ns) as u64,
        frequency: 0.0,
    };
    let state = ServerState::new(anchor, ReplyHeader::UNSYNCHRONISED, MAX_STATE_AGE_NS);
    let ntp =
        responder::respond(&request[42..], &state, sent + 1_000, sent + 2_000, i8::MIN).unwrap();
    // The reply frame: addresses and ports swapped around the server's reply, checksums fixed.
    let mut reply = request;
    reply[0..6].copy_from_slice(&request[6..12]);
    reply[6..12].copy_from_slice(&request[0..6]);
    reply[26..30].copy_from_slice(&request[30..34]);
    reply[30..34].copy_from_slice(&request[26..30]);
    reply[34..36].copy_from_slice(&request[36..38]);
    reply[36..38].copy_from_slice(&request[34..36]);
    reply[42..].copy_from_slice(&ntp);
    reply[40..42].fill(0);
    let udp = ntpx_tests::frame::udp_checksum(
        std::net::IpAddr::from([10, 88, 0, 1]),
        std::net::IpAddr::from(<[u8; 4]>::try_from(&reply[30..34]).unwrap()),
        &reply[34..],
    );
    reply[40..42].copy_from_slice(&udp.to_be_bytes());
    let mut corrupted = reply;
    corrupted[60] ^= 1;
    assert_eq!(counter.test_run(&reply).unwrap(), XDP_DROP);
    assert_eq!(counter.test_run(&corrupted).unwrap(), XDP_DROP);
    let tally = counter.tally().unwrap();
    assert_eq!((tally.valid, tally.invalid), (1, 1));
    assert_eq!(tally.latency.len(), 1);
}

#[test]
#[ignore = "needs root"]
fn a_short_run_against_ntpxd_gets_a_valid_reply_to_every_request() {
    require_root();
    let step = Bed::run(ServerKind::NtpxdXdp, |bed| bed.step(10_000.0, Duration::from_millis(500)))
        .unwrap();
    assert!(step.offered > 2_000, "offered only {}", step.offered);
    assert_eq!(step.tally.invalid, 0);
    assert_eq!(
        step.tally.valid,
        step.offered,
        "lost {} of {}",
        step.offered - step.tally.valid,
        step.offered
    );
}
