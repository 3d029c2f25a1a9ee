//! The real XDP program, run by the kernel on crafted frames (BPF_PROG_TEST_RUN), compared with
//! the oracle: it answers exactly when the oracle does, with the same bytes apart from the two
//! server timestamps (and the UDP checksum that covers them), and those lie between clock
//! readings taken just before and after the run. Its counters move as the oracle says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ntp_common::{
    maps::Counter,
    ratelimit::RateLimit,
    state::{MAX_STATE_AGE_NS, ReplyHeader, ServerState, TimeAnchor},
    wire::{ERA_1_UNIX_NS, Leap, NtpShort, NtpTimestamp, ReferenceId, offset},
};
use ntp_userspace::{
    access::{Access, AccessRule, AccessTable, Subnet},
    client_log::ClientLogSettings,
    dataplane::Dataplane,
    reference::{Reference, TaiReading},
    smear::{SmearSettings, SmearShape},
    sync::Served,
    sys::clock,
};
use ntpx_tests::{
    frame::{self, Environment, Expected, Frame, Network, UdpChecksum},
    netns::Netns,
    require_root,
};

// The XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);
const UNLISTED_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xdead, 1);
/// Local addresses served leap-smeared time.
const SMEARED_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const SMEARED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);

struct Fixture {
    dataplane: Dataplane,
    access: AccessTable,
    local_addresses: Vec<IpAddr>,
    smeared_addresses: Vec<IpAddr>,
    state: ServerState,
    smeared: ServerState,
    /// The interface frames come in on (None: the loopback, as BPF_PROG_TEST_RUN has it).
    ingress_ifindex: Option<u32>,
}

fn synchronised_header(dispersion_rate: f64) -> ReplyHeader {
    ReplyHeader {
        leap: Leap::NoWarning,
        stratum: 3,
        precision: -24,
        root_delay: NtpShort::from_fixed(0x0000_1234),
        root_dispersion: NtpShort::from_fixed(0x0000_0567),
        dispersion_rate,
        reference_id: ReferenceId::from_bits([192, 0, 2, 7]),
        reference_time: NtpTimestamp::from_unix_nanos(clock::realtime_ns() - 3_000_000_000),
    }
}

/// The state a daemon would publish now, serving the system clock with a 250 ppm correction so
/// that the rate arithmetic is exercised.
fn current_state(header: ReplyHeader) -> ServerState {
    let tai_ns = clock::tai_ns();
    let tai_offset = i64::from(clock::tai_offset_s()) * 1_000_000_000;
    state_serving((tai_ns as i64 - tai_offset) as u64 + 1_000_000, header)
}

/// A state published now that serves `served_unix_ns` at once, running 250 ppm fast.
fn state_serving(served_unix_ns: u64, header: ReplyHeader) -> ServerState {
    let anchor = TimeAnchor { tai_ns: clock::tai_ns(), served_unix_ns, frequency: 250e-6 };
    ServerState::new(anchor, header, MAX_STATE_AGE_NS)
}

impl Fixture {
    fn new() -> Self {
        let mut dataplane = Dataplane::load(123, 1024).expect("loading the XDP program");
        // Clients are logged, none is limited: the oracle's rules apply unchanged.
        dataplane.set_client_log(ClientLogSettings {
            enabled: true,
            limit: RateLimit::DISABLED,
            epoch_tai_ns: clock::tai_ns(),
        });
        let rules = [
            AccessRule {
                access: Access::Allow,
                all: false,
                subnet: Subnet::V4(Ipv4Addr::new(10, 0, 0, 0), 24),
            },
            AccessRule {
                access: Access::Deny,
                all: false,
                subnet: Subnet::V4(Ipv4Addr::new(10, 0, 0, 128), 25),
            },
            AccessRule {
                access: Access::Allow,
                all: false,
                subnet: Subnet::V4(Ipv4Addr::new(224, 0, 0, 0), 4),
            },
            AccessRule {
                access: Access::Allow,
                all: false,
                subnet: Subnet::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 64),
            },
            AccessRule { access: Access::Deny, all: false, subnet: Subnet::V6(DENIED_V6, 112) },
        ];
        let access = AccessTable::from_rules(&rules);
        dataplane.set_access(&access).unwrap();
        // As the daemon publishes them: the loopback addresses are the host's too.
        let local_addresses = vec![
            SERVER_V4.into(),
            SMEARED_V4.into(),
            SERVER_V6.into(),
            SMEARED_V6.into(),
            Ipv4Addr::LOCALHOST.into(),
            Ipv6Addr::LOCALHOST.into(),
        ];
        let smeared_addresses = vec![SMEARED_V4.into(), SMEARED_V6.into()];
        dataplane.set_local_addresses(&local_addresses, &smeared_addresses);
        let state = current_state(synchronised_header(0.0));
        // Until a test smears: the same time on every address.
        let smeared = state;
        dataplane.publish(&state, Some(&smeared));
        Self {
            dataplane,
            access,
            local_addresses,
            smeared_addresses,
            state,
            smeared,
            ingress_ifindex: None,
        }
    }

    fn environment(&self) -> Environment<'_> {
        Environment {
            port: 123,
            access: &self.access,
            local_addresses: &self.local_addresses,
            state: &self.state,
            smeared_addresses: &self.smeared_addresses,
            smeared: &self.smeared,
            min_poll: i8::MIN,
            on_loopback: self.ingress_ifindex.is_none(),
        }
    }

    /// New access rules, for the program and the oracle.
    fn set_rules(&mut self, rules: &[AccessRule]) {
        self.access = AccessTable::from_rules(rules);
        self.dataplane.set_access(&self.access).unwrap();
    }

    /// Publishes `state` for every address.
    fn publish(&mut self, state: ServerState) {
        self.publish_both(state, state);
    }

    /// Publishes true time and smeared time.
    fn publish_both(&mut self, state: ServerState, smeared: ServerState) {
        self.dataplane.publish(&state, Some(&smeared));
        (self.state, self.smeared) = (state, smeared);
    }

    /// Runs the program on `frame` and checks it against the oracle.
    fn check(&mut self, label: &str, frame: &[u8]) {
        let counters_before = self.dataplane.counters().unwrap();
        let before = clock::tai_ns();
        let outcome = self
            .dataplane
            .test_run_on(frame, self.ingress_ifindex)
            .unwrap_or_else(|e| panic!("{label}: {e:#}"));
        let after = clock::tai_ns();
        let counters_after = self.dataplane.counters().unwrap();
        // The verdict counters; new client records are checked by the client log's tests.
        let moved: Vec<Counter> = Counter::ALL
            .into_iter()
            .filter(|c| *c != Counter::ClientRecordsCreated)
            .filter(|c| counters_after[*c as usize] != counters_before[*c as usize])
            .collect();
        for c in &moved {
            assert_eq!(
                counters_after[*c as usize] - counters_before[*c as usize],
                1,
                "{label}: {c:?}"
            );
        }
        match frame::expected(frame, &self.environment(), before, before) {
            Expected::Ignored => {
                assert_eq!(outcome.action, XDP_PASS, "{label}: should be passed");
                assert_eq!(outcome.frame, frame, "{label}: a passed frame is untouched");
                assert_eq!(moved, [], "{label}: not NTP, not counted");
            }
            Expected::Refused(counter) => {
                let action = if counter == Counter::DroppedDenied { XDP_DROP } else { XDP_PASS };
                assert_eq!(outcome.action, action, "{label}: expected {counter:?}");
                if action == XDP_PASS {
                    assert_eq!(outcome.frame, frame, "{label}: a passed frame is untouched");
                }
                assert_eq!(moved, [Counter::Received, counter], "{label}: counters");
            }
            Expected::Answered(expected) => {
                assert_eq!(outcome.action, XDP_TX, "{label}: should be answered");
                assert_eq!(moved, [Counter::Received, Counter::Answered], "{label}: counters");
                let state = *self.environment().state_for(frame::reply_layout(&outcome.frame).1);
                self.check_reply(label, &outcome.frame, &expected, &state, before, after);
                assert!(outcome.frame.len() <= frame.len(), "{label}: reply longer than request");
            }
        }
    }

    fn check_reply(
        &self,
        label: &str,
        reply: &[u8],
        expected: &[u8],
        state: &ServerState,
        before: u64,
        after: u64,
    ) {
        assert_eq!(reply.len(), expected.len(), "{label}: reply length");
        let (l4, src, dst) = frame::reply_layout(reply);
        let ntp = l4 + 8;
        let masked = |bytes: &[u8]| {
            let mut bytes = bytes.to_vec();
            bytes[l4 + 6..l4 + 8].fill(0);
            bytes[ntp + offset::RECEIVE_TIMESTAMP..ntp + offset::RECEIVE_TIMESTAMP + 16].fill(0);
            bytes
        };
        assert_eq!(masked(reply), masked(expected), "{label}: reply differs from the oracle's");
        assert!(frame::udp_checksum_is_valid(src, dst, &reply[l4..]), "{label}: bad UDP checksum");
        let timestamp =
            |at: usize| NtpTimestamp::from_bits(reply[ntp + at..ntp + at + 8].try_into().unwrap());
        let receive = timestamp(offset::RECEIVE_TIMESTAMP);
        let transmit = timestamp(offset::TRANSMIT_TIMESTAMP);
        let earliest = state.served_time(before).unwrap();
        let latest = state.served_time(after).unwrap();
        // Wrapping differences: right across an NTP era rollover too.
        let in_order = |a: NtpTimestamp, b: NtpTimestamp| b.nanos_since(a) >= 0;
        assert!(
            in_order(earliest, receive)
                && in_order(receive, transmit)
                && in_order(transmit, latest),
            "{label}: timestamps {receive:?} {transmit:?} outside [{earliest:?}, {latest:?}]"
        );
    }
}

fn v4(src: Ipv4Addr) -> Frame {
    Frame::request(src.into(), SERVER_V4.into())
}

fn v6(src: Ipv6Addr) -> Frame {
    Frame::request(src.into(), SERVER_V6.into())
}

fn with_payload(mut frame: Frame, payload: Vec<u8>) -> Frame {
    frame.payload = payload;
    frame
}

fn set_v4(mut frame: Frame, change: impl FnOnce(&mut Vec<u8>, &mut bool, &mut u16)) -> Frame {
    if let Network::V4 { options, more_fragments, fragment_offset, .. } = &mut frame.network {
        change(options, more_fragments, fragment_offset);
    }
    frame
}

/// Frames covering every rule of the fast path, each with a label.
fn corpus() -> Vec<(String, Frame)> {
    let mut frames = Vec::new();
    let mut add = |label: String, frame: Frame| frames.push((label, frame));
    for version in 0..8 {
        add(
            format!("v{version} IPv4"),
            with_payload(v4(CLIENT_V4), frame::client_request(version, 7).to_vec()),
        );
        add(
            format!("v{version} IPv6"),
            with_payload(v6(CLIENT_V6), frame::client_request(version, 7).to_vec()),
        );
    }
    for mode in 0..8u8 {
        let mut request = frame::client_request(4, 9);
        request[0] = (request[0] & !7) | mode;
        add(format!("mode {mode}"), with_payload(v4(CLIENT_V4), request.to_vec()));
    }
    for options in [vec![1, 1, 1, 0], vec![7, 7, 4, 0, 0, 0, 0, 0], vec![1; 40]] {
        let len = options.len();
        add(
            format!("IPv4 with {len} bytes of options"),
            set_v4(v4(CLIENT_V4), |o, _, _| *o = options),
        );
    }
    for (label, tci) in [("VLAN 100", 100u16), ("VLAN 4094 priority 5", 0xafffu16)] {
        let mut frame = v4(CLIENT_V4);
        frame.vlan = Some(tci);
        add(format!("{label} IPv4"), frame);
        let mut frame = v6(CLIENT_V6);
        frame.vlan = Some(tci);
        add(format!("{label} IPv6"), frame);
    }
    let mut tagged_with_options = set_v4(v4(CLIENT_V4), |o, _, _| *o = vec![1; 8]);
    tagged_with_options.vlan = Some(7);
    add("VLAN with IPv4 options".into(), tagged_with_options);
    for checksum in [UdpChecksum::Wrong, UdpChecksum::Zero] {
        let mut frame = v4(CLIENT_V4);
        frame.checksum = checksum;
        add(format!("IPv4 UDP checksum {checksum:?}"), frame);
        let mut frame = v6(CLIENT_V6);
        frame.checksum = checksum;
        add(format!("IPv6 UDP checksum {checksum:?}"), frame);
    }
    add("first fragment".into(), set_v4(v4(CLIENT_V4), |_, more, _| *more = true));
    add("later fragment".into(), set_v4(v4(CLIENT_V4), |_, _, offset| *offset = 7));
    add(
        "last fragment".into(),
        set_v4(v4(CLIENT_V4), |_, more, offset| {
            *more = false;
            *offset = 1
        }),
    );
    let request = frame::client_request(4, 11).to_vec();
    for (label, extra) in [
        ("MAC (key id + MD5)", 20),
        ("MAC (key id + SHA1)", 24),
        ("extension field 16", 16),
        ("extension field 28", 28),
        ("extension field + MAC", 48),
    ] {
        let mut payload = request.clone();
        payload.extend((0..extra).map(|i| i as u8));
        add(format!("IPv4 {label}"), with_payload(v4(CLIENT_V4), payload.clone()));
        add(format!("IPv6 {label}"), with_payload(v6(CLIENT_V6), payload));
    }
    add("short NTP payload".into(), with_payload(v4(CLIENT_V4), request[..47].to_vec()));
    add("empty UDP".into(), with_payload(v4(CLIENT_V4), Vec::new()));
    let mut frame = v4(CLIENT_V4);
    frame.dst_port = 124;
    add("other port".into(), frame);
    let mut frame = v4(CLIENT_V4);
    frame.src_port = 123;
    add("from port 123".into(), frame);
    add("denied IPv4".into(), v4(DENIED_V4));
    add("IPv4 without a rule".into(), v4(UNLISTED_V4));
    add("denied IPv6".into(), v6(DENIED_V6));
    add("IPv6 without a rule".into(), v6(Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1)));
    add(
        "to another host".into(),
        Frame::request(CLIENT_V4.into(), Ipv4Addr::new(10, 0, 0, 99).into()),
    );
    add(
        "to a broadcast address".into(),
        Frame::request(CLIENT_V4.into(), Ipv4Addr::new(10, 0, 0, 255).into()),
    );
    let mut frame = v4(CLIENT_V4);
    frame.dst_mac = [0xff; 6];
    add("to the broadcast MAC".into(), frame);
    add("from a multicast address".into(), v4(Ipv4Addr::new(224, 0, 0, 1)));
    add(
        "IPv6 to another host".into(),
        Frame::request(CLIENT_V6.into(), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).into()),
    );
    let mut frame = v6(CLIENT_V6);
    if let Network::V6 { next_header, .. } = &mut frame.network {
        *next_header = 0; // hop-by-hop options
    }
    add("IPv6 extension header".into(), frame);
    // What the kernel would drop as a martian on a NIC, or what no reply can go to.
    add("from 127.0.0.1".into(), v4(Ipv4Addr::LOCALHOST));
    add("from 127.1.2.3".into(), v4(Ipv4Addr::new(127, 1, 2, 3)));
    add("from ::1".into(), v6(Ipv6Addr::LOCALHOST));
    add("to 127.0.0.1".into(), Frame::request(CLIENT_V4.into(), Ipv4Addr::LOCALHOST.into()));
    add("to ::1".into(), Frame::request(CLIENT_V6.into(), Ipv6Addr::LOCALHOST.into()));
    add(
        "loopback to loopback".into(),
        Frame::request(Ipv4Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into()),
    );
    add("from the server's own address".into(), v4(SERVER_V4));
    add("from the server's own IPv6 address".into(), v6(SERVER_V6));
    add("from an IPv4-mapped address".into(), v6(CLIENT_V4.to_ipv6_mapped()));
    add("from 0.0.0.0".into(), v4(Ipv4Addr::UNSPECIFIED));
    add("from 255.255.255.255".into(), v4(Ipv4Addr::BROADCAST));
    let mut frame = v4(CLIENT_V4);
    frame.src_port = 0;
    add("from port 0".into(), frame);
    let mut frame = v6(CLIENT_V6);
    frame.src_port = 0;
    add("IPv6 from port 0".into(), frame);
    let mut frame = v4(CLIENT_V4);
    frame.src_mac[0] |= 1;
    add("from a group MAC address".into(), frame);
    frames
}

#[test]
#[ignore = "needs root"]
fn the_program_agrees_with_the_oracle_on_the_corpus() {
    require_root();
    let mut fixture = Fixture::new();
    let corpus = corpus();
    let mut answered = 0;
    for (label, frame) in &corpus {
        let bytes = frame.build();
        fixture.check(label, &bytes);
        answered += matches!(
            frame::expected(&bytes, &fixture.environment(), clock::tai_ns(), clock::tai_ns()),
            Expected::Answered(_)
        ) as usize;
    }
    assert!(answered >= 15, "the corpus answers only {answered} frames");
}

#[test]
#[ignore = "needs root"]
fn on_a_nic_the_program_passes_what_the_kernel_would_drop_as_the_admission_rules_say() {
    require_root();
    let netns = Netns::new("xdp-nic");
    netns.ip(&["link", "add", "nic0", "type", "veth", "peer", "name", "nic1"]);
    netns.ip(&["link", "set", "nic0", "up"]);
    netns.enter(|| {
        let mut fixture = Fixture::new();
        fixture.ingress_ifindex = Some(nix::net::if_::if_nametoindex("nic0").expect("nic0"));
        let mut refused_for_addresses = Vec::new();
        for (label, frame) in corpus() {
            let bytes = frame.build();
            fixture.check(&label, &bytes);
            let verdict = frame::expected(&bytes, &fixture.environment(), 0, 0);
            if verdict == Expected::Refused(Counter::PassedAddress) {
                refused_for_addresses.push(label);
            }
        }
        // On the loopback these are answered; on a NIC, never.
        for label in ["from 127.0.0.1", "to ::1", "from the server's own address"] {
            assert!(refused_for_addresses.iter().any(|l| l == label), "{label} answered on a NIC");
        }
    });
}

#[test]
#[ignore = "needs root"]
fn the_program_serves_across_the_2036_era_rollover() {
    require_root();
    let mut fixture = Fixture::new();
    let request = v4(CLIENT_V4).build();
    let seconds = |reply: &[u8]| {
        let (l4, _, _) = frame::reply_layout(reply);
        let at = l4 + 8 + offset::TRANSMIT_TIMESTAMP;
        u32::from_be_bytes(reply[at..at + 4].try_into().unwrap())
    };
    // Ten seconds before 2036-02-07 06:28:16 UTC, then a microsecond before: the run comes
    // after it. The oracle check resolves the timestamps with wrapping differences.
    for (label, before_rollover_ns, expected_seconds) in
        [("era 0's end", 10_000_000_000, 0xffff_fff6), ("era 1's start", 1_000, 0)]
    {
        let served = ERA_1_UNIX_NS - before_rollover_ns;
        fixture.publish(state_serving(served, synchronised_header(0.0)));
        fixture.check(label, &request);
        let outcome = fixture.dataplane.test_run(&request).unwrap();
        assert_eq!(outcome.action, XDP_TX, "{label}");
        assert_eq!(seconds(&outcome.frame), expected_seconds, "{label}: transmit seconds");
    }
}

/// The reply's leap indicator and transmit time, Unix ns.
fn leap_and_time(reply: &[u8]) -> (Leap, i64) {
    let (l4, _, _) = frame::reply_layout(reply);
    let header =
        ntp_common::wire::NtpHeader::from_bytes(reply[l4 + 8..l4 + 56].try_into().unwrap());
    (header.leap, header.transmit_timestamp.to_unix_nanos_near(clock::realtime_ns() as i64))
}

#[test]
#[ignore = "needs root"]
fn the_smeared_addresses_are_served_smeared_time_across_the_window() {
    require_root();
    let mut fixture = Fixture::new();
    let settings = SmearSettings { shape: SmearShape::Linear, window: 86_400.0 };
    // The leap (an inserted second) this far from now, s, and the smear expected now: smeared
    // minus true time (-x: true time itself makes the leap).
    let hour = 3_600;
    for (to_leap, expected_smear) in [
        (13 * hour, 0.0),
        (12 * hour - 60, -60.0 / 86_400.0),
        (6 * hour, -0.25),
        (1, -0.5 + 1.0 / 86_400.0),
        (-1, 0.5 - 1.0 / 86_400.0),
        (-6 * hour, 0.25),
        (-12 * hour - 60, 0.0),
    ] {
        let now = clock::tai_now();
        let leap_at = now.system_time_ns() as i64 + to_leap * 1_000_000_000;
        let synchronised = synchronised_header(0.0);
        let announcing = Served {
            correction: 0.0,
            frequency: 0.0,
            header: Some(ReplyHeader { leap: Leap::InsertSecond, ..synchronised }),
            leap_at_ns: Some(leap_at),
            correction_after_leap: -1.0,
            skew: 0.0,
            leap_made: None,
        };
        let mut reference = Reference::new(None, -24).leap_smeared(Some(settings));
        if to_leap > 0 {
            reference.set_served(announcing, now);
        } else {
            // Heard before the leap; now past it, true time has gone back a second.
            let earlier =
                TaiReading { tai_ns: now.tai_ns - (1 - to_leap) as u64 * 1_000_000_000, ..now };
            reference.set_served(announcing, earlier);
            let made = Served {
                correction: -1.0,
                header: Some(synchronised),
                leap_at_ns: None,
                ..announcing
            };
            reference.set_served(made, now);
        }
        let state = reference.state_at(now, MAX_STATE_AGE_NS);
        let smeared = reference.smeared_state_at(now, MAX_STATE_AGE_NS).unwrap();
        fixture.publish_both(state, smeared);
        let label = format!("{to_leap} s to the leap");
        let mut replies = Vec::new();
        for frame in [
            v4(CLIENT_V4),
            Frame::request(CLIENT_V4.into(), SMEARED_V4.into()),
            v6(CLIENT_V6),
            Frame::request(CLIENT_V6.into(), SMEARED_V6.into()),
        ] {
            let request = frame.build();
            fixture.check(&label, &request);
            let outcome = fixture.dataplane.test_run(&request).unwrap();
            assert_eq!(outcome.action, XDP_TX, "{label}");
            replies.push(leap_and_time(&outcome.frame));
        }
        let [(true_leap, true_time), (smeared_leap, smeared_time), v6_true, v6_smeared] =
            replies[..]
        else {
            unreachable!()
        };
        let announced = if to_leap > 0 { Leap::InsertSecond } else { Leap::NoWarning };
        assert_eq!((true_leap, v6_true.0), (announced, announced), "{label}: true time's LI");
        assert_eq!((smeared_leap, v6_smeared.0), (Leap::NoWarning, Leap::NoWarning), "{label}");
        // The runs are microseconds apart; the smear is what separates the two times.
        let smear = (smeared_time - true_time) as f64 * 1e-9;
        assert!(
            (smear - expected_smear).abs() < 1e-3,
            "{label}: smear {smear} s, not {expected_smear}"
        );
        let v6_smear = (v6_smeared.1 - v6_true.1) as f64 * 1e-9;
        assert!((v6_smear - expected_smear).abs() < 1e-3, "{label}: IPv6 smear {v6_smear} s");
    }
}

#[test]
#[ignore = "needs root"]
fn malformed_frames_are_passed_untouched() {
    require_root();
    let mut fixture = Fixture::new();
    let mut wrong_length = v4(CLIENT_V4).build();
    wrong_length.extend_from_slice(&[0; 6]);
    fixture.check("trailing bytes after the IP datagram", &wrong_length);
    let mut bad_ip_checksum = v4(CLIENT_V4).build();
    bad_ip_checksum[14 + 10] ^= 0x40;
    fixture.check("bad IPv4 header checksum", &bad_ip_checksum);
    let mut wrong_udp_length = v6(CLIENT_V6).build();
    wrong_udp_length[14 + 40 + 5] = 55;
    fixture.check("UDP length shorter than the IPv6 payload", &wrong_udp_length);
    let mut tiny_ihl = v4(CLIENT_V4).build();
    tiny_ihl[14] = 0x44;
    fixture.check("IHL below 5", &tiny_ihl);
}

#[test]
#[ignore = "needs root"]
fn truncated_frames_are_never_answered() {
    require_root();
    let mut fixture = Fixture::new();
    let mut tagged = v6(CLIENT_V6);
    tagged.vlan = Some(5);
    for (label, frame) in [
        ("IPv4", v4(CLIENT_V4)),
        ("IPv4 with options", set_v4(v4(CLIENT_V4), |o, _, _| *o = vec![1; 12])),
        ("tagged IPv6", tagged),
    ] {
        let bytes = frame.build();
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        for len in frame::ETH_HLEN..bytes.len() {
            fixture.check(&format!("{label} truncated to {len}"), &bytes[..len]);
        }
    }
}

#[test]
#[ignore = "needs root"]
fn mutated_requests_agree_with_the_oracle() {
    require_root();
    let mut fixture = Fixture::new();
    let mut tagged = v4(CLIENT_V4);
    tagged.vlan = Some(42);
    let seeds = [
        v4(CLIENT_V4).build(),
        v6(CLIENT_V6).build(),
        tagged.build(),
        set_v4(v4(CLIENT_V4), |o, _, _| *o = vec![1; 8]).build(),
    ];
    // xorshift64*, fixed seed: the same mutations on every run.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for round in 0..3000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (next() % 8);
        }
        fixture.check(&format!("mutation {round}: {bytes:02x?}"), &bytes);
    }
}

#[test]
#[ignore = "needs root"]
fn a_stale_state_is_passed_to_the_slow_path() {
    require_root();
    let mut fixture = Fixture::new();
    let anchor = TimeAnchor {
        tai_ns: clock::tai_ns() - 2_000_000_000,
        served_unix_ns: clock::realtime_ns(),
        frequency: 0.0,
    };
    fixture.publish(ServerState::new(anchor, synchronised_header(0.0), 1_000_000_000));
    fixture.check("stale state", &v4(CLIENT_V4).build());
    fixture.publish(current_state(synchronised_header(0.0)));
    fixture.check("fresh again", &v4(CLIENT_V4).build());
    fixture.publish(ServerState::default());
    fixture.check("never published", &v6(CLIENT_V6).build());
}

#[test]
#[ignore = "needs root"]
fn a_known_client_is_judged_by_the_rules_in_use_not_those_it_was_admitted_under() {
    require_root();
    let mut fixture = Fixture::new();
    let (v4_client, v6_client) = (v4(CLIENT_V4).build(), v6(CLIENT_V6).build());
    // Admitted, their records made; then admitted by their records (the trie skipped).
    for round in ["first", "again"] {
        fixture.check(&format!("v4 {round}"), &v4_client);
        fixture.check(&format!("v6 {round}"), &v6_client);
    }
    // New rules deny both: the admissions their records remember lapse with the old rules.
    let deny = [
        AccessRule { access: Access::Allow, all: false, subnet: Subnet::Everything },
        AccessRule { access: Access::Deny, all: false, subnet: Subnet::V4(CLIENT_V4, 32) },
        AccessRule { access: Access::Deny, all: false, subnet: Subnet::V6(CLIENT_V6, 128) },
    ];
    fixture.set_rules(&deny);
    for round in ["denied", "denied again"] {
        fixture.check(&format!("v4 {round}"), &v4_client);
        fixture.check(&format!("v6 {round}"), &v6_client);
    }
    // And admitted again when the rules allow them.
    fixture.set_rules(&deny[..1]);
    fixture.check("v4 readmitted", &v4_client);
    fixture.check("v6 readmitted", &v6_client);
}

#[test]
#[ignore = "needs root"]
fn an_unsynchronised_state_is_served_with_li_3() {
    require_root();
    let mut fixture = Fixture::new();
    fixture.publish(current_state(ReplyHeader::UNSYNCHRONISED));
    let bytes = v4(CLIENT_V4).build();
    fixture.check("unsynchronised", &bytes);
    let reply = fixture.dataplane.test_run(&bytes).unwrap().frame;
    assert_eq!(reply[14 + 20 + 8] >> 6, 3, "leap indicator");
    assert_eq!(reply[14 + 20 + 8 + 1], 0, "stratum");
}

#[test]
#[ignore = "needs root"]
fn root_dispersion_grows_between_updates() {
    require_root();
    let mut fixture = Fixture::new();
    let rate = 0.01; // exaggerated, so that the growth shows within the test
    let anchor_age = 500_000_000;
    let mut state = current_state(synchronised_header(rate));
    state.base_tai_ns -= anchor_age;
    fixture.publish(state);
    let before = clock::tai_ns();
    let reply = fixture.dataplane.test_run(&v4(CLIENT_V4).build()).unwrap().frame;
    let after = clock::tai_ns();
    let at = 14 + 20 + 8 + offset::ROOT_DISPERSION;
    let dispersion = NtpShort::from_bits(reply[at..at + 4].try_into().unwrap());
    let low = state.root_dispersion_after(before - state.base_tai_ns);
    let high = state.root_dispersion_after(after - state.base_tai_ns);
    assert!(low <= dispersion && dispersion <= high, "{dispersion:?} outside [{low:?}, {high:?}]");
    assert!(dispersion.to_fixed() >= 0x567 + 300, "5 ms of growth is missing: {dispersion:?}");
}

#[test]
#[ignore = "needs root"]
fn a_state_republished_in_a_tight_loop_is_never_served_torn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    let mut fixture = Fixture::new();
    // Two states a thousand seconds apart, anchored a millisecond apart: a reply mixing the
    // anchor of one with the time of the other is a thousand seconds off both.
    let header = synchronised_header(0.0);
    let tai_ns = clock::tai_ns();
    let now = clock::realtime_ns();
    let anchored = |tai_ns, served_unix_ns| {
        let anchor = TimeAnchor { tai_ns, served_unix_ns, frequency: 250e-6 };
        ServerState::new(anchor, header, MAX_STATE_AGE_NS)
    };
    let early = anchored(tai_ns, now);
    let late = anchored(tai_ns - 1_000_000, now + 1_000_000_000_000);
    let mut writer = fixture.dataplane.page_writer().unwrap();
    let mut published = [fixture.dataplane.published(); 2];
    published[0].state = early;
    published[1].state = late;
    // Both slots hold one of the two before the race begins.
    writer.publish(&published[0]);
    writer.publish(&published[1]);
    let request = v4(CLIENT_V4).build();
    let stop = AtomicBool::new(false);
    let (mut answered, mut passed, mut torn) = (0, 0, 0);
    /// Stops the writer when the reading side ends, by a panic too.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Back-to-back switches, as a tick followed at once by `ntpxc allow` would make,
            // each slot taking the two states in turn.
            while !stop.load(Ordering::Relaxed) {
                for state in [0, 0, 1, 1] {
                    writer.publish(&published[state]);
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        // Until the race has run both ways often enough: answers read between switches, and
        // requests passed because a switch came during the reads.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (answered < 200 || passed < 200) && std::time::Instant::now() < deadline {
            let before = clock::tai_ns();
            let outcome = fixture.dataplane.test_run(&request).unwrap();
            let after = clock::tai_ns();
            if outcome.action != XDP_TX {
                passed += 1;
                continue;
            }
            answered += 1;
            let (l4, _, _) = frame::reply_layout(&outcome.frame);
            let at = l4 + 8 + offset::TRANSMIT_TIMESTAMP;
            let transmit = NtpTimestamp::from_bits(outcome.frame[at..at + 8].try_into().unwrap());
            let within = |state: &ServerState| {
                let (earliest, latest) =
                    (state.served_time(before).unwrap(), state.served_time(after).unwrap());
                transmit.nanos_since(earliest) >= 0 && latest.nanos_since(transmit) >= 0
            };
            if !within(&early) && !within(&late) {
                torn += 1;
            }
        }
    });
    eprintln!("while republished in a loop: {answered} answered, {passed} passed, {torn} torn");
    assert_eq!(torn, 0, "{torn} of {answered} replies mixed two states");
    assert!(answered >= 200 && passed >= 200, "{answered} answered, {passed} passed in 60 s");
}
