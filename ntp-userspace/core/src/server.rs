//! The server's shared state and the slow path's decisions, without I/O: what the daemon
//! publishes to the kernel, and how a datagram that reached the socket is answered.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use ntp_common::{
    admission::{self, AddressRefusal, Addressing, WireAddress},
    extension::Authentication,
    ratelimit::Limit,
    responder::{self, NoReply},
    state::{MAX_STATE_AGE_NS, ServerState},
    wire::{HEADER_LEN, ReferenceId},
};

use crate::{
    access::AccessTable,
    client_log::ClientLog,
    control::{SlowPathCounters, UnansweredCounters},
    nts::{
        cookie::KeyRing,
        packet::{self, Rejected},
    },
    reference::{LocalReference, Reference, TaiReading},
    smear::SmearReport,
    smoothing::SmoothingReport,
    sync::Served,
};

/// How long a published state is served by the kernel. The daemon republishes every
/// [`PUBLISH_INTERVAL_NS`], so two missed refreshes are tolerated before requests fall back to
/// the slow path.
pub const STATE_FRESHNESS_NS: u64 = 3_000_000_000;
pub const PUBLISH_INTERVAL_NS: u64 = 1_000_000_000;
const _: () = assert!(STATE_FRESHNESS_NS <= MAX_STATE_AGE_NS);

/// Why the slow path did not answer a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Longer than the socket reads whole ([`ntp_common::extension::MAX_PACKET_LEN`]), or the
    /// kernel did not say where it was sent.
    Unreadable,
    /// Not for this server to answer by its addresses (see [`admission::check`]).
    Address(AddressRefusal),
    Denied,
    /// Not a request this server answers (see [`NoReply`]).
    NotServed(NoReply),
    /// Over the client's rate limit.
    RateLimited,
    /// NTS fields that are not a request RFC 8915 describes, or NTS while none is served.
    NotNts,
}

/// A reply of the slow path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The time, in a plain header.
    Time([u8; HEADER_LEN]),
    /// A RATE kiss-o'-death.
    KissOfDeath([u8; HEADER_LEN]),
    /// The time, with NTS's extension fields after the header.
    Authenticated(Vec<u8>),
    /// An NTS NAK: a kiss-o'-death with the request's identifier.
    NtsNak(Vec<u8>),
}

impl Reply {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Time(header) | Self::KissOfDeath(header) => header,
            Self::Authenticated(bytes) | Self::NtsNak(bytes) => bytes,
        }
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        self.bytes().first_chunk().expect("a reply starts with a header")
    }
}

/// The slow path's counters: every datagram the socket takes, and each one's outcome.
#[derive(Default)]
struct Counts {
    datagrams: AtomicU64,
    /// Requests logged in the client log, as chronyd counts "NTP packets received".
    received: AtomicU64,
    answered: AtomicU64,
    kiss_of_death: AtomicU64,
    authenticated: AtomicU64,
    nts_naks: AtomicU64,
    denied: AtomicU64,
    rate_limited: AtomicU64,
    unreadable: AtomicU64,
    address: AtomicU64,
    malformed: AtomicU64,
    version: AtomicU64,
    not_request: AtomicU64,
    mac: AtomicU64,
    not_nts: AtomicU64,
    stale: AtomicU64,
}

impl Counts {
    fn count(&self, outcome: &Result<Reply, Unanswered>) {
        let counter = match outcome {
            Ok(Reply::Time(_)) => &self.answered,
            Ok(Reply::KissOfDeath(_)) => &self.kiss_of_death,
            Ok(Reply::Authenticated(_)) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                &self.authenticated
            }
            Ok(Reply::NtsNak(_)) => &self.nts_naks,
            Err(Unanswered::Unreadable) => &self.unreadable,
            Err(Unanswered::Address(_)) => &self.address,
            Err(Unanswered::Denied) => &self.denied,
            Err(Unanswered::RateLimited) => &self.rate_limited,
            Err(Unanswered::NotNts | Unanswered::NotServed(NoReply::Nts)) => &self.not_nts,
            Err(Unanswered::NotServed(NoReply::Length(_) | NoReply::Malformed)) => &self.malformed,
            Err(Unanswered::NotServed(NoReply::Version(_))) => &self.version,
            Err(Unanswered::NotServed(NoReply::NotClientRequest(_))) => &self.not_request,
            Err(Unanswered::NotServed(NoReply::Mac)) => &self.mac,
            Err(Unanswered::NotServed(NoReply::Stale)) => &self.stale,
        };
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The state shared by the daemon's tasks.
pub struct Server {
    reference: RwLock<Reference>,
    access: RwLock<AccessTable>,
    /// The addresses served (those published to the kernel too).
    local_addresses: RwLock<Vec<WireAddress>>,
    /// The addresses served leap-smeared time (`leapsmear`).
    smeared_addresses: RwLock<Vec<IpAddr>>,
    client_log: Arc<dyn ClientLog>,
    counts: Counts,
    commands: AtomicU64,
    commands_dropped: AtomicU64,
    /// The NTS server keys, when NTS is served.
    nts_keys: RwLock<Option<KeyRing>>,
    nts_ke_accepted: AtomicU64,
    nts_ke_dropped: AtomicU64,
    accept_backoffs: AtomicU64,
}

impl Server {
    pub fn new(reference: Reference, access: AccessTable, client_log: Arc<dyn ClientLog>) -> Self {
        Self {
            reference: RwLock::new(reference),
            access: RwLock::new(access),
            local_addresses: RwLock::new(Vec::new()),
            smeared_addresses: RwLock::new(Vec::new()),
            client_log,
            counts: Counts::default(),
            commands: AtomicU64::new(0),
            commands_dropped: AtomicU64::new(0),
            nts_keys: RwLock::new(None),
            nts_ke_accepted: AtomicU64::new(0),
            nts_ke_dropped: AtomicU64::new(0),
            accept_backoffs: AtomicU64::new(0),
        }
    }

    /// The NTS server keys from now on (at start, and at each rotation).
    pub fn set_nts_keys(&self, keys: KeyRing) {
        *self.nts_keys.write().expect("NTS keys lock") = Some(keys);
    }

    pub fn nts_keys(&self) -> Option<KeyRing> {
        self.nts_keys.read().expect("NTS keys lock").clone()
    }

    /// An NTS-KE connection that got its keys and cookies, or one that did not.
    pub fn count_nts_ke(&self, accepted: bool) {
        let counter = if accepted { &self.nts_ke_accepted } else { &self.nts_ke_dropped };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An accept loop (NTS-KE, metrics, ntpxc's socket) that rested for want of descriptors
    /// or memory.
    pub fn count_accept_backoff(&self) {
        self.accept_backoffs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_backoffs(&self) -> u64 {
        self.accept_backoffs.load(Ordering::Relaxed)
    }

    /// A new `local` setting (a reloaded configuration).
    pub fn set_local(&self, local: Option<LocalReference>) {
        let mut reference = self.reference.write().expect("reference lock");
        *reference = reference.with_local(local);
    }

    /// What the synchronisation serves, as of `at`.
    pub fn set_served(&self, served: Served, at: TaiReading) {
        self.reference.write().expect("reference lock").set_served(served, at);
    }

    /// The clock was stepped at `at`.
    pub fn clock_stepped(&self, at: TaiReading) {
        self.reference.write().expect("reference lock").clock_stepped(at);
    }

    /// The states to publish to the kernel at `now`: true (or smoothed) time, and smeared
    /// time if any address is smeared.
    pub fn states_to_publish(&self, now: TaiReading) -> (ServerState, Option<ServerState>) {
        let reference = self.reference.read().expect("reference lock");
        (
            reference.state_at(now, STATE_FRESHNESS_NS),
            reference.smeared_state_at(now, STATE_FRESHNESS_NS),
        )
    }

    /// chronyc's `smoothing` at `now`, if `smoothtime` is configured.
    pub fn smoothing_report(&self, now: TaiReading) -> Option<SmoothingReport> {
        let reference = self.reference.read().expect("reference lock");
        reference.smoothing().map(|smoothing| smoothing.report(now.tai_ns))
    }

    /// `smoothtime activate` (or `reset`) at `now`; false if `smoothtime` is not configured.
    pub fn smooth_time(&self, activate: bool, now: TaiReading) -> bool {
        let mut reference = self.reference.write().expect("reference lock");
        let Some(smoothing) = reference.smoothing_mut() else { return false };
        if activate {
            smoothing.activate(now.tai_ns);
        } else {
            smoothing.reset(now.tai_ns);
        }
        true
    }

    /// The addresses served leap-smeared time.
    pub fn set_smeared_addresses(&self, addresses: &[IpAddr]) {
        *self.smeared_addresses.write().expect("addresses lock") = addresses.to_vec();
    }

    /// `tracking`'s lines of ntpxd's own at `now`: the smear on each smeared address, and the
    /// smoothing offset.
    pub fn departures(&self, now: TaiReading) -> (Vec<SmearReport>, Option<f64>) {
        let reference = self.reference.read().expect("reference lock");
        let smears = match reference.smear_offset(now) {
            Some(offset) => {
                let addresses = self.smeared_addresses.read().expect("addresses lock");
                addresses.iter().map(|&address| SmearReport { address, offset }).collect()
            }
            None => Vec::new(),
        };
        let smoothing = reference.smoothing().map(|smoothing| smoothing.offset_at(now.tai_ns).0);
        (smears, smoothing)
    }

    pub fn is_allowed(&self, address: IpAddr) -> bool {
        self.access.read().expect("access lock").is_allowed(address)
    }

    /// The addresses served, as published to the kernel.
    pub fn set_local_addresses(&self, addresses: &[IpAddr]) {
        *self.local_addresses.write().expect("addresses lock") =
            addresses.iter().map(|&address| address.into()).collect();
    }

    /// Serves new access rules (the kernel's are switched by the caller).
    pub fn set_access(&self, access: AccessTable) {
        *self.access.write().expect("access lock") = access;
    }

    /// Answers a datagram the socket received from `source`, sent to `destination`, at the
    /// CLOCK_REALTIME instant `received_realtime_ns`. `transmit_tai_ns` reads the clock just
    /// before the reply is built. Every datagram is counted under its outcome.
    pub fn handle_datagram(
        &self,
        request: &[u8],
        source: SocketAddr,
        destination: (IpAddr, u32),
        received: TaiReading,
        transmit_tai_ns: impl FnOnce() -> u64,
    ) -> Result<Reply, Unanswered> {
        let outcome = self.decide(request, source, destination, received, transmit_tai_ns);
        self.counts.count(&outcome);
        outcome
    }

    /// Counts a datagram the socket could not hand over whole (see [`Unanswered::Unreadable`]).
    pub fn count_unreadable(&self) {
        self.counts.count(&Err(Unanswered::Unreadable));
    }

    fn decide(
        &self,
        request: &[u8],
        source: SocketAddr,
        (destination, interface): (IpAddr, u32),
        received: TaiReading,
        transmit_tai_ns: impl FnOnce() -> u64,
    ) -> Result<Reply, Unanswered> {
        // The XDP program's rule, on the same addresses: what it passed for its addresses, the
        // slow path does not answer either.
        let addressing = Addressing {
            source: source.ip().into(),
            source_port: source.port(),
            destination: destination.into(),
            on_loopback: interface == admission::LOOPBACK_IFINDEX,
        };
        let local = self.local_addresses.read().expect("addresses lock");
        admission::check(&addressing, |address| local.contains(address))
            .map_err(Unanswered::Address)?;
        drop(local);
        let source = source.ip();
        if !self.is_allowed(source) {
            return Err(Unanswered::Denied);
        }
        let checked = responder::check_request(request).map_err(Unanswered::NotServed)?;
        // Logged before any authentication is checked, as chronyd logs: a flood of requests
        // that the rate limit drops costs no cryptography.
        self.counts.received.fetch_add(1, Ordering::Relaxed);
        let min_poll = self.client_log.min_poll();
        match self.client_log.log(source, received.tai_ns) {
            Limit::Answer => {}
            Limit::KissOfDeath if checked.authentication == Authentication::None => {
                return responder::kiss_of_death(request, min_poll)
                    .map(Reply::KissOfDeath)
                    .map_err(Unanswered::NotServed);
            }
            // A client that authenticates would not believe an unauthenticated kiss: dropped.
            Limit::Drop | Limit::KissOfDeath => return Err(Unanswered::RateLimited),
        }
        let nts = match checked.authentication {
            Authentication::None => None,
            Authentication::Mac => return Err(Unanswered::NotServed(NoReply::Mac)),
            Authentication::Nts => {
                let keys = self.nts_keys.read().expect("NTS keys lock");
                let keys = keys.as_ref().ok_or(Unanswered::NotNts)?;
                match packet::open(request, keys) {
                    // Sealed before the transmit timestamp is read.
                    Ok(authenticated) => {
                        let cookies = packet::cookies_for(&authenticated, request.len(), keys);
                        Some((authenticated, cookies))
                    }
                    Err(Rejected::Nak { unique_id }) => {
                        let kiss = responder::kiss(request, ReferenceId::KISS_NTS_NAK, min_poll)
                            .map_err(Unanswered::NotServed)?;
                        return Ok(Reply::NtsNak(packet::nak(&kiss, unique_id)));
                    }
                    Err(Rejected::NotNts | Rejected::Malformed) => return Err(Unanswered::NotNts),
                }
            }
        };
        // Anchored at the receive instant: however long the request waited in the socket, the
        // time model of the daemon, not the kernel's freshness window, decides.
        let smeared = self.smeared_addresses.read().expect("addresses lock").contains(&destination);
        let reference = self.reference.read().expect("reference lock");
        let smeared_state =
            if smeared { reference.smeared_state_at(received, MAX_STATE_AGE_NS) } else { None };
        let state = smeared_state.unwrap_or_else(|| reference.state_at(received, MAX_STATE_AGE_NS));
        drop(reference);
        let reply =
            responder::answer(checked.header, &state, received.tai_ns, transmit_tai_ns(), min_poll)
                .map_err(Unanswered::NotServed)?;
        Ok(match nts {
            Some((authenticated, cookies)) => Reply::Authenticated(packet::seal_reply(
                &reply,
                &authenticated,
                cookies,
                request.len(),
            )),
            None => Reply::Time(reply),
        })
    }

    /// A command datagram that got no reply: not a request, from a host not allowed, or from a
    /// sender that cannot be answered.
    pub fn count_command_dropped(&self) {
        self.commands_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn commands_dropped(&self) -> u64 {
        self.commands_dropped.load(Ordering::Relaxed)
    }

    pub fn count_command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub fn slow_path_counters(&self) -> SlowPathCounters {
        let Counts {
            datagrams,
            received,
            answered,
            kiss_of_death,
            authenticated,
            nts_naks,
            denied,
            rate_limited,
            unreadable,
            address,
            malformed,
            version,
            not_request,
            mac,
            not_nts,
            stale,
        } = &self.counts;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SlowPathCounters {
            datagrams: read(datagrams),
            received: read(received),
            answered: read(answered),
            kiss_of_death: read(kiss_of_death),
            rate_limited: read(rate_limited),
            denied: read(denied),
            authenticated: read(authenticated),
            nts_naks: read(nts_naks),
            nts_ke_accepted: self.nts_ke_accepted.load(Ordering::Relaxed),
            nts_ke_dropped: self.nts_ke_dropped.load(Ordering::Relaxed),
            unanswered: UnansweredCounters {
                unreadable: read(unreadable),
                address: read(address),
                malformed: read(malformed),
                version: read(version),
                not_request: read(not_request),
                mac: read(mac),
                not_nts: read(not_nts),
                stale: read(stale),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use ntp_common::wire::{NtpHeader, NtpTimestamp, ReferenceId};

    use super::*;
    use crate::access::{Access, AccessRule, Subnet};

    /// A client log that decides as told.
    struct FixedLog(Limit);

    impl ClientLog for FixedLog {
        fn log(&self, _: IpAddr, _: u64) -> Limit {
            self.0
        }

        fn min_poll(&self) -> i8 {
            i8::MIN
        }
    }

    fn server_limiting(limit: Limit) -> Server {
        let local = LocalReference { stratum: 7, distance: 1.0 };
        let access = AccessTable::from_rules(&[AccessRule {
            access: Access::Allow,
            all: false,
            subnet: Subnet::V4("192.0.2.0".parse().unwrap(), 24),
        }]);
        let server =
            Server::new(Reference::new(Some(local), -20), access, Arc::new(FixedLog(limit)));
        server.set_local_addresses(&[SERVER.parse().unwrap(), "127.0.0.1".parse().unwrap()]);
        server
    }

    fn server() -> Server {
        server_limiting(Limit::Answer)
    }

    const SERVER: &str = "192.0.2.1";
    /// An interface that is not the loopback.
    const NIC: u32 = 2;

    fn from_client() -> SocketAddr {
        SocketAddr::new(CLIENT.parse().unwrap(), 40_000)
    }

    fn to_server() -> (IpAddr, u32) {
        (SERVER.parse().unwrap(), NIC)
    }

    fn request() -> [u8; HEADER_LEN] {
        NtpHeader::client_request(4, 6, NtpTimestamp::from_fixed(42)).to_bytes()
    }

    const RECEIVED_UTC: u64 = 1_795_660_000_000_000_000;
    const RECEIVED_TAI: u64 = RECEIVED_UTC + 37_000_000_000;
    const RECEIVED: TaiReading = TaiReading { tai_ns: RECEIVED_TAI, tai_offset_s: 37 };
    const CLIENT: &str = "192.0.2.9";

    fn handle(
        server: &Server,
        request: &[u8],
        source: &str,
        destination: Option<&str>,
    ) -> Result<[u8; HEADER_LEN], Unanswered> {
        let source = SocketAddr::new(source.parse().unwrap(), 40_000);
        let destination = (destination.unwrap_or(SERVER).parse().unwrap(), NIC);
        server
            .handle_datagram(request, source, destination, RECEIVED, || RECEIVED_TAI + 20_000)
            .map(|reply| *reply.header())
    }

    #[test]
    fn answers_an_admitted_client_with_the_socket_timestamp() {
        let server = server();
        let reply = NtpHeader::from_bytes(&handle(&server, &request(), CLIENT, None).unwrap());
        assert_eq!(reply.stratum, 7);
        assert_eq!(
            reply.receive_timestamp.to_unix_nanos_near(RECEIVED_UTC as i64),
            RECEIVED_UTC as i64
        );
        assert_eq!(
            reply.transmit_timestamp.to_unix_nanos_near(RECEIVED_UTC as i64),
            RECEIVED_UTC as i64 + 20_000
        );
        let counters = server.slow_path_counters();
        assert_eq!((counters.received, counters.answered, counters.denied), (1, 1, 0));
    }

    #[test]
    fn a_request_that_waited_long_in_the_socket_is_still_answered() {
        let server = server();
        let ten_seconds_later = RECEIVED_TAI + 10_000_000_000;
        let reply =
            server.handle_datagram(&request(), from_client(), to_server(), RECEIVED, || {
                ten_seconds_later
            });
        assert!(reply.is_ok());
    }

    #[test]
    fn in_an_inserted_leap_second_the_repeated_second_is_served() {
        // The kernel has just inserted a second: the system clock repeats 23:59:59 and TAI -
        // UTC is 38 already, before the daemon's next look at the clock. Receive and transmit
        // timestamps stay 20 us apart, both in the repeated second.
        let server = server();
        let utc = RECEIVED_UTC;
        let received = TaiReading::from_system_time(utc, 38);
        let transmit = received.tai_ns + 20_000;
        let reply =
            server.handle_datagram(&request(), from_client(), to_server(), received, || transmit);
        let reply = NtpHeader::from_bytes(reply.unwrap().header());
        let served = |t: NtpTimestamp| t.to_unix_nanos_near(utc as i64) - utc as i64;
        assert_eq!(served(reply.receive_timestamp), 0);
        assert_eq!(served(reply.transmit_timestamp), 20_000);
    }

    #[test]
    fn denied_and_unanswerable_datagrams_are_counted_apart() {
        let server = server();
        assert_eq!(handle(&server, &request(), "198.51.100.1", None), Err(Unanswered::Denied));
        let broadcast = handle(&server, &request(), CLIENT, Some("255.255.255.255"));
        assert_eq!(broadcast, Err(Unanswered::Address(AddressRefusal::NotLocal)));
        // The XDP program's rule: a loopback source on a NIC is a martian, the server's own
        // address as a source too; on the loopback interface both are ordinary.
        let martian = handle(&server, &request(), "127.0.0.1", None);
        assert_eq!(martian, Err(Unanswered::Address(AddressRefusal::Loopback)));
        let own = handle(&server, &request(), SERVER, None);
        assert_eq!(own, Err(Unanswered::Address(AddressRefusal::SourceLocal)));
        let from_port_zero = server.handle_datagram(
            &request(),
            SocketAddr::new(CLIENT.parse().unwrap(), 0),
            to_server(),
            RECEIVED,
            || RECEIVED_TAI,
        );
        assert_eq!(from_port_zero, Err(Unanswered::Address(AddressRefusal::SourcePortZero)));
        let local_client = server.handle_datagram(
            &request(),
            "127.0.0.1:40000".parse().unwrap(),
            ("127.0.0.1".parse().unwrap(), 1),
            RECEIVED,
            || RECEIVED_TAI,
        );
        assert_eq!(local_client, Err(Unanswered::Denied), "past the address rules on lo");
        let counters = server.slow_path_counters();
        assert_eq!((counters.received, counters.answered, counters.denied), (0, 0, 2));
        assert_eq!(counters.unanswered.address, 4);
    }

    /// `request()` followed by `trailer`.
    fn request_with(trailer: &[u8]) -> Vec<u8> {
        let mut packet = request().to_vec();
        packet.extend_from_slice(trailer);
        packet
    }

    /// An extension field of type 0x7777 (unknown), `length` bytes long.
    fn unknown_field(length: usize) -> Vec<u8> {
        let mut field = vec![0x77, 0x77, 0, length as u8];
        field.resize(length, 0);
        field
    }

    #[test]
    fn unknown_extension_fields_are_answered_and_macs_are_logged_unanswered() {
        let server = server();
        let plain = handle(&server, &request(), CLIENT, None).unwrap();
        let f323 = handle(&server, &request_with(&unknown_field(28)), CLIENT, None);
        assert_eq!(f323, Ok(plain), "the plain reply to a request with an unknown field");
        let mac = handle(&server, &request_with(&[1; 20]), CLIENT, None);
        assert_eq!(mac, Err(Unanswered::NotServed(NoReply::Mac)));
        let short = handle(&server, &request_with(&unknown_field(16)), CLIENT, None);
        assert_eq!(short, Err(Unanswered::NotServed(NoReply::Malformed)));
        let counters = server.slow_path_counters();
        // Logged as chronyd logs them: the MAC's request too, which it then does not answer.
        assert_eq!((counters.datagrams, counters.received, counters.answered), (4, 3, 2));
        assert_eq!((counters.unanswered.mac, counters.unanswered.malformed), (1, 1));
    }

    #[test]
    fn every_datagram_is_counted_once_under_its_outcome() {
        let server = server_limiting(Limit::Answer);
        let mut not_request = request();
        not_request[0] = 0x24;
        let mut version_5 = request();
        version_5[0] = 0x2b;
        for (packet, source) in [
            (request().to_vec(), CLIENT),
            (request().to_vec(), "198.51.100.1"),
            (request().to_vec(), SERVER),
            (not_request.to_vec(), CLIENT),
            (version_5.to_vec(), CLIENT),
            (request()[..40].to_vec(), CLIENT),
            (request_with(&[1; 24]), CLIENT),
            (request_with(&unknown_field(36)[..32]), CLIENT),
        ] {
            let _ = handle(&server, &packet, source, None);
        }
        server.count_unreadable();
        let counters = server.slow_path_counters();
        let u = counters.unanswered;
        assert_eq!(
            (u.unreadable, u.address, u.version, u.not_request, u.mac, u.malformed),
            (1, 1, 1, 1, 1, 2)
        );
        assert_eq!(counters.datagrams, 9);
        let outcomes = counters.answered
            + counters.kiss_of_death
            + counters.nts_naks
            + counters.rate_limited
            + counters.denied
            + u.total();
        assert_eq!(outcomes, counters.datagrams, "{counters:?}");
    }

    #[test]
    fn the_client_log_drops_or_kisses_limited_clients() {
        let dropping = server_limiting(Limit::Drop);
        assert_eq!(handle(&dropping, &request(), CLIENT, None), Err(Unanswered::RateLimited));
        assert_eq!(dropping.slow_path_counters().rate_limited, 1);
        let kissing = server_limiting(Limit::KissOfDeath);
        let kod = NtpHeader::from_bytes(&handle(&kissing, &request(), CLIENT, None).unwrap());
        assert_eq!((kod.stratum, kod.reference_id), (0, ReferenceId::KISS_RATE));
        assert_eq!(kissing.slow_path_counters().kiss_of_death, 1);
    }

    #[test]
    fn a_smeared_address_gets_smeared_time_plain_and_over_nts() {
        use ntp_common::{
            state::ReplyHeader,
            wire::{Leap, NtpShort},
        };

        use crate::{
            nts::{KEY_LEN, SessionKeys, packet},
            smear::{SmearSettings, SmearShape},
        };
        let settings = SmearSettings { shape: SmearShape::Linear, window: 86_400.0 };
        let reference = Reference::new(None, -20).leap_smeared(Some(settings));
        let access = AccessTable::from_rules(&[AccessRule {
            access: Access::Allow,
            all: true,
            subnet: Subnet::Everything,
        }]);
        let server = Server::new(reference, access, Arc::new(FixedLog(Limit::Answer)));
        let smeared: IpAddr = "192.0.2.2".parse().unwrap();
        server.set_local_addresses(&[SERVER.parse().unwrap(), smeared]);
        server.set_smeared_addresses(&[smeared]);
        // An inserted second six hours from now: a quarter of it smeared.
        let header = ReplyHeader {
            leap: Leap::InsertSecond,
            stratum: 2,
            precision: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            dispersion_rate: 0.0,
            reference_id: ReferenceId::from_bits([192, 0, 2, 7]),
            reference_time: NtpTimestamp::from_unix_nanos(RECEIVED_UTC),
        };
        let served = Served {
            correction: 0.0,
            frequency: 0.0,
            header: Some(header),
            leap_at_ns: Some((RECEIVED_UTC + 6 * 3_600_000_000_000) as i64),
            correction_after_leap: -1.0,
            skew: 0.0,
            leap_made: None,
        };
        server.set_served(served, RECEIVED);
        let answer = |request: &[u8], to: IpAddr| {
            server.handle_datagram(request, from_client(), (to, NIC), RECEIVED, || RECEIVED_TAI)
        };
        let time = |reply: &Reply| {
            let header = NtpHeader::from_bytes(reply.header());
            (header.leap, header.receive_timestamp.to_unix_nanos_near(RECEIVED_UTC as i64))
        };
        let (true_leap, true_time) = time(&answer(&request(), SERVER.parse().unwrap()).unwrap());
        let (smeared_leap, smeared_time) = time(&answer(&request(), smeared).unwrap());
        assert_eq!((true_leap, smeared_leap), (Leap::InsertSecond, Leap::NoWarning));
        assert!(
            (true_time - smeared_time - 250_000_000).abs() < 1_000,
            "{}",
            true_time - smeared_time
        );
        // NTS: the same time, authenticated.
        let keys = SessionKeys { c2s: [1; KEY_LEN], s2c: [2; KEY_LEN] };
        let ring = KeyRing::generate();
        server.set_nts_keys(ring.clone());
        let (protected, unique_id) = packet::protect(&request(), &ring.seal(&keys), 0, &keys);
        let reply = answer(&protected, smeared).unwrap();
        packet::verify_reply(reply.bytes(), &unique_id, &keys).unwrap();
        assert_eq!(time(&reply), (Leap::NoWarning, smeared_time));
    }

    #[test]
    fn nts_requests_are_answered_authenticated_naked_or_dropped_never_kissed() {
        use crate::nts::{KEY_LEN, SessionKeys, packet};
        let keys = SessionKeys { c2s: [1; KEY_LEN], s2c: [2; KEY_LEN] };
        let ring = KeyRing::generate();
        let (protected, unique_id) = packet::protect(&request(), &ring.seal(&keys), 3, &keys);
        let server = server();
        // Without NTS keys, NTS requests are not answered.
        let unanswered = handle(&server, &protected, CLIENT, None);
        assert_eq!(unanswered, Err(Unanswered::NotNts));
        server.set_nts_keys(ring.clone());
        let reply = server
            .handle_datagram(&protected, from_client(), to_server(), RECEIVED, || RECEIVED_TAI)
            .unwrap();
        assert_eq!(reply.bytes().len(), protected.len());
        let cookies = packet::verify_reply(reply.bytes(), &unique_id, &keys).unwrap();
        assert_eq!(cookies.len(), 4);
        assert_eq!(NtpHeader::from_bytes(reply.header()).stratum, 7);
        // A cookie of other keys: a NAK, echoing the identifier.
        let (foreign, unique_id) =
            packet::protect(&request(), &KeyRing::generate().seal(&keys), 0, &keys);
        let nak = server
            .handle_datagram(&foreign, from_client(), to_server(), RECEIVED, || RECEIVED_TAI)
            .unwrap();
        assert_eq!(
            packet::verify_reply(nak.bytes(), &unique_id, &keys),
            Err(packet::ReplyError::Nak)
        );
        let counters = server.slow_path_counters();
        assert_eq!((counters.authenticated, counters.nts_naks), (1, 1));
        // Over the rate limit, an NTS request is dropped before its keys are touched (no
        // cryptography for a flood): it is decided while another thread holds the keys' lock.
        let limited = server_limiting(Limit::Drop);
        limited.set_nts_keys(KeyRing::generate());
        let (done, decided) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let keys = limited.nts_keys.write().unwrap();
            scope.spawn(|| done.send(handle(&limited, &protected, CLIENT, None)).unwrap());
            let outcome = decided.recv_timeout(std::time::Duration::from_secs(5));
            drop(keys);
            assert_eq!(outcome, Ok(Err(Unanswered::RateLimited)), "waited for the NTS keys");
        });
        // Over the rate limit with kiss-o'-death on: a plain request is kissed, NTS dropped.
        let limiting = server_limiting(Limit::KissOfDeath);
        limiting.set_nts_keys(ring);
        assert!(handle(&limiting, &request(), CLIENT, None).is_ok());
        assert_eq!(handle(&limiting, &protected, CLIENT, None), Err(Unanswered::RateLimited));
    }
}
