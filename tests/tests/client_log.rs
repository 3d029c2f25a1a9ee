//! The client log and rate limiting of the real XDP program, under BPF_PROG_TEST_RUN with many
//! source addresses: bursts, sustained rates, the leak and kiss-o'-death shares, the LRU table's
//! evictions, IPv4 and IPv6; and the table's memory for a million clients.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use ntp_common::{
    maps::Counter,
    ratelimit::{Limit, RateLimit},
    responder,
    state::MAX_STATE_AGE_NS,
    wire::{NtpHeader, ReferenceId},
};
use ntp_userspace::{
    access::{Access, AccessRule, AccessTable, Subnet},
    client_log::{ClientLog as _, ClientLogSettings},
    config::{ClientLogSize, LocalReference},
    dataplane::Dataplane,
    reference::{Reference, TaiReading},
    sys::clock,
};
use ntpx_tests::{
    frame::{self, Frame},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// The program serving everyone, logging clients in a table of `capacity` with `limit`.
fn dataplane(limit: RateLimit, capacity: u32) -> Dataplane {
    let mut dataplane = Dataplane::load(123, capacity).expect("loading the XDP program");
    let everyone = AccessRule { access: Access::Allow, all: false, subnet: Subnet::Everything };
    dataplane.set_access(&AccessTable::from_rules(&[everyone])).unwrap();
    dataplane.set_local_addresses(&[SERVER_V4.into(), SERVER_V6.into()], &[]);
    dataplane.set_client_log(ClientLogSettings {
        enabled: true,
        limit,
        epoch_tai_ns: clock::tai_ns(),
    });
    refresh(&mut dataplane);
    dataplane
}

/// Publishes a fresh state (tests running longer than its freshness refresh it).
fn refresh(dataplane: &mut Dataplane) {
    let local = LocalReference { stratum: 4, distance: 1.0 };
    let now = TaiReading { tai_ns: clock::tai_ns(), tai_offset_s: 0 };
    dataplane.publish(&Reference::new(Some(local), -24).state_at(now, MAX_STATE_AGE_NS), None);
}

fn request_from(client: IpAddr) -> Vec<u8> {
    let server: IpAddr = match client {
        IpAddr::V4(_) => SERVER_V4.into(),
        IpAddr::V6(_) => SERVER_V6.into(),
    };
    Frame::request(client, server).build()
}

/// What the program did with requests: (time answers, kisses of death, drops).
#[derive(Debug, Default, PartialEq)]
struct Tally {
    answered: u32,
    kiss_of_death: u32,
    dropped: u32,
}

fn send(dataplane: &mut Dataplane, client: IpAddr, count: u32, tally: &mut Tally) {
    let min_poll = dataplane.clients().settings().limit.min_poll();
    let request = request_from(client);
    for _ in 0..count {
        let outcome = dataplane.test_run(&request).unwrap();
        match outcome.action {
            XDP_TX => {
                let (l4, src, dst) = frame::reply_layout(&outcome.frame);
                let udp = &outcome.frame[l4..];
                assert!(frame::udp_checksum_is_valid(src, dst, udp), "bad UDP checksum");
                let ntp = &outcome.frame[l4 + 8..l4 + 56];
                let header = NtpHeader::from_bytes(ntp.try_into().unwrap());
                if header.stratum == 0 && header.reference_id == ReferenceId::KISS_RATE {
                    let request_ntp = &request[request.len() - 48..];
                    let kod = responder::kiss_of_death(request_ntp, min_poll).unwrap();
                    assert_eq!(ntp, kod, "the kiss-o'-death differs from the responder's");
                    tally.kiss_of_death += 1;
                } else {
                    tally.answered += 1;
                }
            }
            XDP_DROP => tally.dropped += 1,
            other => panic!("unexpected action {other}"),
        }
    }
}

fn record_of(dataplane: &Dataplane, client: IpAddr) -> ntp_common::ratelimit::ClientRecord {
    dataplane
        .clients()
        .clients()
        .unwrap()
        .into_iter()
        .find(|c| c.address == client)
        .unwrap_or_else(|| panic!("{client} is not in the client log"))
        .record
}

#[test]
#[ignore = "needs root"]
fn a_burst_is_answered_and_the_rest_dropped() {
    require_root();
    for client in ["192.0.2.10", "2001:db8:1::10"] {
        let client: IpAddr = client.parse().unwrap();
        let mut dataplane = dataplane(RateLimit::new(4, 8, 4, 0), 1024);
        let mut tally = Tally::default();
        send(&mut dataplane, client, 40, &mut tally);
        // 8 answered from the bucket; of the 32 others 1 in 16 leaks, at random: 2 expected,
        // more than 11 with a probability of 2e-6 (the bound used to be 4, which 5% of runs
        // pass, and one here did not).
        assert!((8..=19).contains(&tally.answered), "{client}: {tally:?}");
        assert_eq!(tally.kiss_of_death, 0);
        let record = record_of(&dataplane, client);
        assert_eq!((record.hits, record.drops), (40, tally.dropped), "{client}");
        let counters = dataplane.counters().unwrap();
        assert_eq!(counters[Counter::DroppedRateLimit as usize], u64::from(tally.dropped));
        assert_eq!(counters[Counter::ClientRecordsCreated as usize], 1);
    }
}

#[test]
#[ignore = "needs root"]
fn a_sustained_rate_gets_one_answer_per_interval() {
    require_root();
    // One answer per 250 ms, a burst of 1, 1 in 16 of the others leaks; 20 requests a second
    // for two seconds.
    let mut dataplane = dataplane(RateLimit::new(-2, 1, 4, 0), 1024);
    let client: IpAddr = "192.0.2.20".parse().unwrap();
    let mut tally = Tally::default();
    let start = Instant::now();
    for i in 1..=40 {
        send(&mut dataplane, client, 1, &mut tally);
        let next = start + Duration::from_millis(50 * i);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // 1 + 8 intervals, plus leaks (about 2 of the 31 others; more than 10 with a probability
    // of 1e-5).
    assert!((8..=19).contains(&tally.answered), "{tally:?}");
}

#[test]
#[ignore = "needs root"]
fn the_leak_answers_a_quarter_of_limited_requests_with_leak_2() {
    require_root();
    let mut dataplane = dataplane(RateLimit::new(4, 1, 2, 0), 1024);
    let mut tally = Tally::default();
    send(&mut dataplane, "198.51.100.7".parse().unwrap(), 2000, &mut tally);
    // 1 from the bucket, then 1 in 4 of 1999: 500 ± 5σ (σ ≈ 19; 3σ failed 1 run in 370).
    assert!((405..=595).contains(&tally.answered), "{tally:?}");
}

#[test]
#[ignore = "needs root"]
fn kod_answers_its_share_of_limited_requests_with_rate() {
    require_root();
    let mut dataplane = dataplane(RateLimit::new(4, 1, 4, 1), 1024);
    let client: IpAddr = "2001:db8:2::7".parse().unwrap();
    let mut tally = Tally::default();
    send(&mut dataplane, client, 2000, &mut tally);
    // Of the ~1874 not leaked, half get a kiss-o'-death: 937 ± 5σ (σ ≈ 22).
    assert!((827..=1047).contains(&tally.kiss_of_death), "{tally:?}");
    let counters = dataplane.counters().unwrap();
    assert_eq!(counters[Counter::AnsweredKissOfDeath as usize], u64::from(tally.kiss_of_death));
    let record = record_of(&dataplane, client);
    assert_eq!((record.kods, record.drops), (tally.kiss_of_death, tally.dropped));
}

#[test]
#[ignore = "needs root"]
fn the_slow_path_and_the_program_count_one_client_in_one_record() {
    require_root();
    let mut dataplane = dataplane(RateLimit::DISABLED, 1024);
    let client = IpAddr::from([10, 0, 3, 1]);
    let slow_path = dataplane.clients();
    let slow_path_logs = |n: u32| {
        for _ in 0..n {
            assert_eq!(slow_path.log(client, clock::tai_ns()), Limit::Answer);
        }
    };
    let mut tally = Tally::default();
    send(&mut dataplane, client, 3, &mut tally);
    // The slow path starts from the program's record, and reports see what it logged.
    slow_path_logs(1);
    assert_eq!(record_of(&dataplane, client).hits, 4);
    // Two ticks without a request: the slow path forgets the client, so what the program logs
    // meanwhile is not written over by the slow path's old copy.
    slow_path.expire();
    slow_path.expire();
    send(&mut dataplane, client, 2, &mut tally);
    slow_path_logs(1);
    assert_eq!(record_of(&dataplane, client).hits, 7);
    assert_eq!(tally.answered, 5);
}

#[test]
#[ignore = "needs root"]
fn a_full_table_evicts_the_least_recent_clients_and_counts_them() {
    require_root();
    let capacity = 256;
    let mut dataplane = dataplane(RateLimit::DISABLED, capacity);
    let mut tally = Tally::default();
    let clients: Vec<IpAddr> = (0..600u32)
        .map(|i| {
            if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_0000_0000_0000_0000_0001_0000u128 + u128::from(i),
                ))
            }
        })
        .collect();
    for client in &clients {
        send(&mut dataplane, *client, 1, &mut tally);
    }
    assert_eq!(tally.answered, 600, "every request is answered: logging limits nothing");
    let live = dataplane.clients().clients().unwrap();
    let created = dataplane.counters().unwrap()[Counter::ClientRecordsCreated as usize];
    assert_eq!(created, 600);
    assert!(
        live.len() <= capacity as usize && live.len() > capacity as usize / 2,
        "{} live",
        live.len()
    );
    // The most recent clients are kept.
    let last = clients.last().unwrap();
    assert!(live.iter().any(|c| c.address == *last), "the newest client was evicted");
    assert!(live.iter().all(|c| c.record.hits == 1));
}

#[test]
#[ignore = "needs root"]
fn a_million_clients_fit_in_128_mib() {
    require_root();
    let entries = ClientLogSize::Entries(1_000_000).entries();
    let dataplane = Dataplane::load(123, entries).expect("a table of a million clients");
    let table = dataplane.clients();
    let bytes = table.memory().expect("the kernel reports the table's memory");
    eprintln!(
        "client log: {entries} clients in {bytes} bytes ({:.1} bytes a client)",
        bytes as f64 / f64::from(entries)
    );
    assert!(bytes <= 128 << 20, "{bytes} bytes");
    assert!(
        bytes / u64::from(entries) <= ClientLogSize::BYTES_PER_CLIENT,
        "BYTES_PER_CLIENT understates the kernel's {bytes} bytes"
    );
}
