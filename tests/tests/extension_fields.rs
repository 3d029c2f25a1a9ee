//! Requests with extension fields (RFC 7822) and MACs, answered as chronyd 4.3 answers them:
//! the same hand-made requests go to ntpxd (XDP attached; the program passes them to the slow
//! path) and to a chronyd server beside it, and each gets the same outcome from both. A chronyd
//! client that sends chrony's experimental field selects ntpxd.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ntp_common::{
    extension, responder,
    wire::{HEADER_LEN, Mode, NtpHeader, NtpTimestamp},
};
use ntpx_tests::{
    netns::{CLIENT_V4, Link, SERVER_V4},
    peers::{self, Chronyd, Ntpxd},
    require_root,
};

const NTPXD_CONFIG: &str = "local stratum 10\nallow 10.77.0.0/24\nxdp veth-srv native\n";
/// chronyd beside ntpxd in the server's namespace, on a port the XDP program does not serve.
const CHRONYD_PORT: u16 = 11123;

/// chrony's experimental extension field (F323) as its client sends it: a magic number, then
/// 20 zero bytes (root delay, root dispersion, monotonic receive time and epoch, a server's).
fn chrony_exp1() -> Vec<u8> {
    let mut field = field(0xf323, 28);
    field[4..8].copy_from_slice(&0xf5be_dd9au32.to_be_bytes());
    field[8..].fill(0);
    field
}

/// An extension field of `kind` whose length field says `length` and whose body fills it.
fn field(kind: u16, length: usize) -> Vec<u8> {
    let mut field = kind.to_be_bytes().to_vec();
    field.extend_from_slice(&(length as u16).to_be_bytes());
    field.resize(length.max(4), 0x5a);
    field
}

/// A MAC: a key identifier (1) and a digest, `length` bytes in all.
fn mac(length: usize) -> Vec<u8> {
    let mut mac = 1u32.to_be_bytes().to_vec();
    mac.resize(length, 0xa5);
    mac
}

/// A version-`version` client request whose transmit timestamp is `id`, followed by `trailer`.
fn request(version: u8, id: u64, trailer: &[u8]) -> Vec<u8> {
    let mut packet =
        NtpHeader::client_request(version, 6, NtpTimestamp::from_fixed(id)).to_bytes().to_vec();
    packet.extend_from_slice(trailer);
    packet
}

/// The hand-made cases: a name and what follows the header (of NTPv4 unless said).
fn cases() -> Vec<(&'static str, u8, Vec<u8>)> {
    let concat = |parts: &[Vec<u8>]| parts.concat();
    let mut past_the_datagram = field(0x2005, 28);
    past_the_datagram[2..4].copy_from_slice(&32u16.to_be_bytes());
    vec![
        ("no fields", 4, vec![]),
        ("chrony's experimental field (F323)", 4, chrony_exp1()),
        ("an unknown 16-byte field", 4, field(0x2005, 16)),
        ("an unknown 28-byte field", 4, field(0x2005, 28)),
        ("an unknown 900-byte field", 4, field(0x2005, 900)),
        ("two fields, 16 and 28 bytes", 4, concat(&[field(0x2005, 16), field(0x2006, 28)])),
        ("a field and a 20-byte MAC", 4, concat(&[field(0x2005, 28), mac(20)])),
        ("a field and a 24-byte MAC", 4, concat(&[field(0x2005, 28), mac(24)])),
        ("a field whose length runs past the datagram", 4, past_the_datagram),
        ("a field of length 0", 4, field(0x2005, 0)[..4].iter().copied().chain([0; 24]).collect()),
        ("a 20-byte MAC alone", 4, mac(20)),
        ("four zero bytes (a crypto-NAK)", 4, vec![0; 4]),
        ("one byte more than a header", 4, vec![0]),
        ("NTPv3 with 28 bytes after its header", 3, field(0x2005, 28)),
        ("NTPv2 with no fields", 2, vec![]),
        ("a 1200-byte datagram", 4, field(0x2005, 1200 - HEADER_LEN)),
    ]
}

/// What became of a request: the reply's length, or None.
type Outcome = Option<usize>;

/// Sends every case to `server` from sockets of its own, and returns what each got. Waits for
/// each reply until `deadline`, after `processed` says the server has taken every request.
fn send_cases(
    server: SocketAddr,
    cases: &[(&'static str, u8, Vec<u8>)],
    processed: impl Fn() -> bool,
) -> Vec<Outcome> {
    let sent: Vec<(UdpSocket, Vec<u8>)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, version, trailer))| {
            let socket = UdpSocket::bind((CLIENT_V4, 0)).expect("a client socket");
            let packet = request(*version, 0x0123_4567_0000_0000 + i as u64, trailer);
            socket.send_to(&packet, server).expect("sending a request");
            (socket, packet)
        })
        .collect();
    assert!(peers::wait_for(Duration::from_secs(10), processed), "the requests were not all taken");
    let deadline = Instant::now() + Duration::from_secs(1);
    sent.iter()
        .map(|(socket, packet)| {
            let left = deadline.saturating_duration_since(Instant::now());
            socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut buffer = [0u8; 2048];
            let (length, from) = socket.recv_from(&mut buffer).ok()?;
            assert_eq!(from, server);
            let reply = NtpHeader::from_bytes(buffer[..HEADER_LEN].try_into().unwrap());
            let asked = NtpHeader::from_bytes(packet[..HEADER_LEN].try_into().unwrap());
            assert_eq!(reply.mode, Mode::Server);
            assert_eq!(reply.origin_timestamp, asked.transmit_timestamp);
            Some(length)
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn requests_with_extension_fields_get_chronyds_outcome_and_are_counted() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, NTPXD_CONFIG);
    let _chronyd = Chronyd::start(
        &link.server_ns,
        &format!("local stratum 10\nallow 10.77.0.0/24\nport {CHRONYD_PORT}\n"),
    );
    let cases = cases();
    let chronyd_server = SocketAddr::new(SERVER_V4.parse().unwrap(), CHRONYD_PORT);
    let ntpxd_server = SocketAddr::new(SERVER_V4.parse().unwrap(), 123);
    let chronyds = link.client_ns.enter(|| send_cases(chronyd_server, &cases, || true));
    let before = ntpxd.serverstats();
    // The program answers the plain requests and passes the rest to the slow path.
    let plain = cases.iter().filter(|(_, _, trailer)| trailer.is_empty()).count() as u64;
    let slow = cases.len() as u64 - plain;
    let ntpxds = link.client_ns.enter(|| {
        send_cases(ntpxd_server, &cases, || {
            ntpxd.serverstats().slow_path.datagrams >= before.slow_path.datagrams + slow
        })
    });
    let after = ntpxd.serverstats();

    eprintln!("{:<45} {:>10} {:>10} {:>10}", "request", "length", "chronyd", "ntpxd");
    let show = |outcome: Outcome| outcome.map_or("-".to_owned(), |length| length.to_string());
    for (((name, version, trailer), chronyd), ntpxd) in cases.iter().zip(&chronyds).zip(&ntpxds) {
        let length = HEADER_LEN + trailer.len();
        eprintln!("{name:<45} {length:>10} {:>10} {:>10}", show(*chronyd), show(*ntpxd));
        assert_eq!(
            chronyd.is_some(),
            ntpxd.is_some(),
            "{name}: chronyd {chronyd:?}, ntpxd {ntpxd:?}"
        );
        if let Some(reply) = ntpxd {
            assert_eq!(*reply, HEADER_LEN, "{name}: the plain reply");
            assert!(*reply <= length, "{name}: a reply longer than the request");
        }
        // The oracle decides as both servers did.
        let oracle = responder::check_request(&request(*version, 1, trailer))
            .is_ok_and(|r| r.authentication == extension::Authentication::None);
        assert_eq!(oracle, ntpxd.is_some(), "{name}: the oracle says {oracle}");
    }
    let answered = ntpxds.iter().filter(|outcome| outcome.is_some()).count() as u64;
    assert!(answered >= 5, "the cases that chronyd answers: {answered}");

    // Each datagram counted once, in the kernel and in the slow path, under its outcome.
    let (kernel, slow_path) = (after.kernel, after.slow_path);
    let kernel_before = before.kernel;
    assert_eq!(kernel.passed_length - kernel_before.passed_length, slow, "{kernel:?}");
    assert_eq!(kernel.answered - kernel_before.answered, plain);
    let delta = |f: fn(&ntp_userspace::control::SlowPathCounters) -> u64| {
        f(&slow_path) - f(&before.slow_path)
    };
    assert_eq!(delta(|s| s.datagrams), slow);
    assert_eq!(delta(|s| s.answered), answered - plain);
    let unanswered =
        delta(|s| s.unanswered.total()) + delta(|s| s.denied) + delta(|s| s.rate_limited);
    assert_eq!(unanswered, slow - (answered - plain), "{slow_path:?}");
    assert_eq!(delta(|s| s.unanswered.mac), 5, "MACs: after a field, alone, a NAK, NTPv3's");
    assert_eq!(
        delta(|s| s.unanswered.malformed),
        4,
        "16 bytes, past the end, 0, 49: {slow_path:?}"
    );
    assert_eq!(delta(|s| s.unanswered.unreadable), 1, "1200 bytes: {slow_path:?}");
    // chronyd logs every request it parses, MACs included: "NTP packets received".
    assert_eq!(
        after.ntp_packets_received - before.ntp_packets_received,
        answered + delta(|s| s.unanswered.mac)
    );
}

#[test]
#[ignore = "needs root"]
fn a_chronyd_client_sending_chronys_experimental_field_selects_ntpxd() {
    require_root();
    let link = Link::new();
    let ntpxd = Ntpxd::start(&link.server_ns, NTPXD_CONFIG);
    let chronyd = Chronyd::start(
        &link.client_ns,
        &format!("server {SERVER_V4} iburst extfield F323 minpoll 0 maxpoll 0\n"),
    );
    let selected = peers::wait_for(Duration::from_secs(30), || chronyd.selects(SERVER_V4));
    assert!(selected, "chronyd did not select ntpxd:\n{}", chronyd.chronyc(&["sources"]));
    let stats = ntpxd.serverstats();
    // Its requests carry the field, so the program passes them and the slow path answers.
    assert!(stats.slow_path.answered >= 3, "{stats:?}");
    assert_eq!(stats.kernel.passed_length, stats.slow_path.datagrams, "{stats:?}");
    assert_eq!(stats.slow_path.answered, stats.slow_path.datagrams, "{stats:?}");
}
