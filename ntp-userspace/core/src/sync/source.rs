//! One source: an upstream server (when to poll it, its requests and the checks on their
//! replies, the clock filter) or a reference clock (its median filter is `refclock`'s); the
//! reachability register and the samples both have. Sans-IO: times and bytes in, requests and
//! samples out.

use std::net::SocketAddr;

use ntp_common::wire::{HEADER_LEN, Leap, Mode, NtpHeader, NtpTimestamp, ReferenceId, offset};

use super::{
    refclock::ReferenceClock,
    reference_id_of,
    regression::{Estimate, Sample, SampleSet, seconds_between},
};

/// What `server`, `pool` and `refclock` say about polling and selecting a source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PollSettings {
    pub minpoll: i8,
    pub maxpoll: i8,
    pub iburst: bool,
    pub prefer: bool,
    pub noselect: bool,
    /// Its time is taken as true: only another trusted source can outvote it (`trust`).
    pub trust: bool,
    /// The clock is updated only while one of the `require` sources is selectable.
    pub require: bool,
    /// Samples with a longer round trip are ignored, s.
    pub maxdelay: f64,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            minpoll: 6,
            maxpoll: 10,
            iburst: false,
            prefer: false,
            noselect: false,
            trust: false,
            require: false,
            maxdelay: 3.0,
        }
    }
}

/// Why a source is not used, or how it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// `*`: the system peer.
    Selected,
    /// `+`: combined with it.
    Combined,
    /// `-`: acceptable, not combined.
    NotCombined,
    /// `x`: may be in error (a falseticker).
    Falseticker,
    /// `~`: too variable.
    TooVariable,
    /// `?`: unusable (unreachable, no samples yet, denied, too far).
    #[default]
    Unusable,
}

impl SourceState {
    /// chronyc's state column.
    pub fn symbol(self) -> char {
        match self {
            Self::Selected => '*',
            Self::Combined => '+',
            Self::NotCombined => '-',
            Self::Falseticker => 'x',
            Self::TooVariable => '~',
            Self::Unusable => '?',
        }
    }
}

/// A request to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub to: SocketAddr,
    pub bytes: [u8; HEADER_LEN],
}

impl Request {
    /// Whether `datagram` from `from` claims to answer this request: it comes from the server's
    /// address and echoes the request's (unguessable) transmit timestamp as its origin. Anything
    /// else arriving on the request's port, a forgery included, is not its reply.
    pub fn is_answered_by(&self, datagram: &[u8], from: SocketAddr) -> bool {
        let origin = datagram.get(offset::ORIGIN_TIMESTAMP..offset::ORIGIN_TIMESTAMP + 8);
        let transmit = &self.bytes[offset::TRANSMIT_TIMESTAMP..offset::TRANSMIT_TIMESTAMP + 8];
        from == self.to && origin == Some(transmit)
    }
}

/// Why a reply was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    FromElsewhere,
    NotAwaited,
    Malformed,
    /// The server says it is not synchronised (LI 3 or stratum 0/16).
    Unsynchronised,
    /// Round trip over `maxdelay`, or negative.
    Delay,
    KissOfDeath(ReferenceId),
}

impl Rejected {
    /// The one of chrony's ten tests (as [`Exchanges::tests`] numbers them) such a reply fails.
    fn failed_test(self) -> u16 {
        match self {
            Self::FromElsewhere | Self::NotAwaited => 1 << 8,
            Self::Malformed => 1 << 7,
            Self::Unsynchronised | Self::KissOfDeath(_) => 1 << 5,
            Self::Delay => 1 << 3,
        }
    }
}

/// What chronyc's `ntpdata` reports of a source beside its last reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchanges {
    pub sent: u32,
    /// Replies from the source's address; of those, the ones that passed every test, and the
    /// ones the clock filter kept.
    pub received: u32,
    pub valid: u32,
    pub good: u32,
    /// chrony's ten tests of the last reply, a set bit for a test passed: bits 9-7 the
    /// packet's (duplicate, bogus, invalid), 6-4 the header's (authentication,
    /// synchronisation, distance), 3-0 the delay's.
    pub tests: u16,
}

/// All of [`Exchanges::tests`] passed.
pub const ALL_TESTS: u16 = 0x3ff;

/// The header of a source's last valid reply and how long the server held the request
/// (its transmit minus receive timestamp), s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastReply {
    pub header: NtpHeader,
    pub response_time: f64,
}

/// The number of requests an `iburst` start sends, two seconds apart.
const BURST: u8 = 4;
const BURST_INTERVAL_NS: i64 = 2_000_000_000;
/// Replies in a row at one poll before the poll doubles.
const STABLE_REPLIES: u32 = 8;
/// Replies the clock filter remembers, and how much slower than the quickest of them a sample
/// may be and still be used.
const FILTER_LENGTH: usize = 8;
const FILTER_DELAY_RATIO: f64 = 2.0;
/// How far from a whole second a jump across a possible leap may be and still be a leap, s.
const LEAP_JUMP_TOLERANCE: f64 = 0.1;
/// Maximum frequency error assumed of a clock (RFC 5905's PHI), s/s.
pub const PHI: f64 = 15e-6;

pub struct Source {
    pub name: String,
    /// The server's address; a reference clock's reference ID as an IPv4 address (as chronyc's
    /// protocol carries it), port 0.
    pub address: SocketAddr,
    /// A reference clock's filter and settings (None: a server).
    pub reference_clock: Option<ReferenceClock>,
    pub settings: PollSettings,
    /// log2 of the poll interval, s.
    pub poll: i8,
    pub reach: u8,
    /// Requests sent since the last good reply.
    pub polls_without_reply: u32,
    next_poll_ns: i64,
    burst_left: u8,
    /// The transmit timestamp of the request in flight (random) and when it left.
    awaiting: Option<(NtpTimestamp, i64)>,
    replies_in_a_row: u32,
    /// The round-trip delays of the last 8 replies: the clock filter's memory.
    recent_delays: Vec<f64>,
    pub samples: SampleSet,
    pub estimate: Option<Estimate>,
    pub last_rx_ns: Option<i64>,
    /// The server's header fields of its last good reply.
    pub stratum: u8,
    pub leap: Leap,
    pub root_delay: f64,
    pub root_dispersion: f64,
    pub reference_id: ReferenceId,
    /// The last raw sample (for `sources`: measured offset, error bound).
    pub last_sample: Option<Sample>,
    pub last_reply: Option<LastReply>,
    pub exchanges: Exchanges,
    /// DENY or RSTR: never used again.
    pub refused: bool,
    pub state: SourceState,
}

impl Source {
    pub fn new(name: String, address: SocketAddr, settings: PollSettings, now_ns: i64) -> Self {
        let first = now_ns;
        Self {
            name,
            address,
            reference_clock: None,
            settings,
            poll: settings.minpoll,
            reach: 0,
            polls_without_reply: 0,
            next_poll_ns: first,
            burst_left: if settings.iburst { BURST } else { 0 },
            awaiting: None,
            replies_in_a_row: 0,
            recent_delays: Vec::new(),
            samples: SampleSet::default(),
            estimate: None,
            last_rx_ns: None,
            stratum: 0,
            leap: Leap::Unsynchronised,
            root_delay: 0.0,
            root_dispersion: 0.0,
            reference_id: ReferenceId::NONE,
            last_sample: None,
            last_reply: None,
            exchanges: Exchanges::default(),
            refused: false,
            state: SourceState::Unusable,
        }
    }

    /// A reference clock, polled by its driver: it sends no requests.
    pub fn reference_clock(
        name: String,
        clock: ReferenceClock,
        settings: PollSettings,
        now_ns: i64,
    ) -> Self {
        let reference_id = clock.settings.reference_id;
        let address = SocketAddr::new(reference_id.to_bits().into(), 0);
        debug_assert_eq!(reference_id_of(address.ip()), reference_id);
        let poll = clock.settings.poll;
        let stratum = clock.settings.stratum;
        let settings = PollSettings { minpoll: poll, maxpoll: poll, iburst: false, ..settings };
        Self {
            reference_clock: Some(clock),
            stratum,
            reference_id,
            ..Self::new(name, address, settings, now_ns)
        }
    }

    /// A reference clock's poll, with what its filter gave (None: nothing usable): the reach
    /// register shifts in whether the driver read anything, and a sample is kept.
    pub fn reference_clock_polled(&mut self, reached: bool, sample: Option<Sample>, now_ns: i64) {
        self.reach = self.reach << 1 | u8::from(reached);
        let Some(clock) = &self.reference_clock else { return };
        let Some(sample) = sample else { return };
        self.leap = clock.leap;
        self.stratum = clock.settings.stratum;
        self.last_rx_ns = Some(now_ns);
        self.last_sample = Some(sample);
        self.samples.push(sample);
        self.estimate = self.samples.estimate();
        self.exchanges.good = self.exchanges.good.wrapping_add(1);
    }

    fn poll_interval_ns(&self) -> i64 {
        (2f64.powi(i32::from(self.poll)) * 1e9) as i64
    }

    /// When the next request is due.
    pub fn next_poll_ns(&self) -> i64 {
        self.next_poll_ns
    }

    /// A request if one is due at `now_ns`, with `random` as its transmit timestamp (so that a
    /// reply must echo something unguessable). The request in flight, if any, is abandoned.
    pub fn poll(&mut self, now_ns: i64, random: u64) -> Option<Request> {
        if self.refused || self.reference_clock.is_some() || now_ns < self.next_poll_ns {
            return None;
        }
        // A request without a reply: the register shifts in a zero.
        self.reach <<= 1;
        self.polls_without_reply += 1;
        if self.awaiting.is_some() {
            self.replies_in_a_row = 0;
        }
        let interval = if self.burst_left > 0 {
            self.burst_left -= 1;
            BURST_INTERVAL_NS.min(self.poll_interval_ns())
        } else {
            self.poll_interval_ns()
        };
        self.next_poll_ns = now_ns + interval;
        let transmit = NtpTimestamp::from_fixed(random);
        self.awaiting = Some((transmit, now_ns));
        self.exchanges.sent = self.exchanges.sent.wrapping_add(1);
        let request = NtpHeader::client_request(4, self.poll, transmit).to_bytes();
        Some(Request { to: self.address, bytes: request })
    }

    /// `request` actually left at `sent_ns` (the caller sends it after `poll`); ignored if it
    /// is no longer the request in flight.
    pub fn transmitted(&mut self, request: &Request, sent_ns: i64) {
        let transmit = NtpHeader::from_bytes(&request.bytes).transmit_timestamp;
        if let Some((awaited, sent)) = self.awaiting.as_mut()
            && *awaited == transmit
        {
            *sent = sent_ns;
        }
    }

    /// No reply to the last eight requests (or DENY / RSTR): a pool replaces such a source.
    pub fn is_unreachable(&self) -> bool {
        self.refused || self.polls_without_reply >= 8
    }

    /// A reply from `from` received at local raw time `received_ns` (the request left at the
    /// time `poll` was given). `leap_possible`: a leap second may have happened since the
    /// previous sample.
    pub fn receive(
        &mut self,
        reply: &[u8],
        from: SocketAddr,
        received_ns: i64,
        leap_possible: bool,
    ) -> Result<Sample, Rejected> {
        if from != self.address {
            return Err(Rejected::FromElsewhere);
        }
        let counts = &mut self.exchanges;
        counts.received = counts.received.wrapping_add(1);
        let outcome = self.measure(reply, received_ns, leap_possible);
        let counts = &mut self.exchanges;
        counts.tests = match outcome {
            Ok(_) => {
                counts.valid = counts.valid.wrapping_add(1);
                ALL_TESTS
            }
            Err(rejected) => ALL_TESTS & !rejected.failed_test(),
        };
        outcome
    }

    fn measure(
        &mut self,
        reply: &[u8],
        received_ns: i64,
        leap_possible: bool,
    ) -> Result<Sample, Rejected> {
        let reply: &[u8; HEADER_LEN] =
            reply.get(..HEADER_LEN).and_then(|r| r.try_into().ok()).ok_or(Rejected::Malformed)?;
        let header = NtpHeader::from_bytes(reply);
        let Some((transmit, sent_ns)) = self.awaiting else {
            return Err(Rejected::NotAwaited);
        };
        if header.origin_timestamp != transmit {
            return Err(Rejected::NotAwaited);
        }
        if header.mode != Mode::Server || !(1..=4).contains(&header.version) {
            return Err(Rejected::Malformed);
        }
        // One reply per request: a duplicate is not awaited.
        self.awaiting = None;
        if header.stratum == 0 && header.leap == Leap::Unsynchronised {
            let code = header.reference_id;
            if code == ReferenceId::from_bits(*b"DENY") || code == ReferenceId::from_bits(*b"RSTR")
            {
                self.refused = true;
            } else if code == ReferenceId::KISS_RATE {
                // Asked to slow down: poll less often from now on (up to maxpoll).
                self.poll = self.poll.saturating_add(1).min(self.settings.maxpoll.max(self.poll));
                self.next_poll_ns = received_ns + self.poll_interval_ns();
            }
            return Err(Rejected::KissOfDeath(code));
        }
        if header.leap == Leap::Unsynchronised || header.stratum == 0 || header.stratum >= 16 {
            return Err(Rejected::Unsynchronised);
        }
        // Server instants as ns since the Unix epoch, in the era of the local clock's send time
        // (a crafted timestamp lands within 68 years of it, so no difference overflows).
        let t2 = header.receive_timestamp.to_unix_nanos_near(sent_ns);
        let t3 = header.transmit_timestamp.to_unix_nanos_near(sent_ns);
        if t3 < t2
            || header.root_delay.to_seconds() > 16.0
            || header.root_dispersion.to_seconds() > 16.0
        {
            return Err(Rejected::Malformed);
        }
        let round_trip = seconds_between(sent_ns, received_ns);
        let in_server = seconds_between(t2, t3);
        let delay = round_trip - in_server;
        if !(-1e-6..=self.settings.maxdelay).contains(&delay) {
            return Err(Rejected::Delay);
        }
        let offset = (seconds_between(sent_ns, t2) + seconds_between(received_ns, t3)) / 2.0;
        let precision = 2f64.powi(i32::from(header.precision)) + 2e-9;
        let sample = Sample {
            time_ns: sent_ns + (received_ns - sent_ns) / 2,
            offset,
            delay: delay.max(0.0),
            dispersion: precision + PHI * round_trip,
        };
        self.reach |= 1;
        self.polls_without_reply = 0;
        self.last_rx_ns = Some(received_ns);
        self.stratum = header.stratum;
        self.leap = header.leap;
        self.root_delay = header.root_delay.to_seconds();
        self.root_dispersion = header.root_dispersion.to_seconds();
        self.reference_id = header.reference_id;
        self.last_sample = Some(sample);
        self.last_reply = Some(LastReply { header, response_time: in_server });
        if leap_possible {
            self.absorb_leap(&sample);
        }
        self.replies_in_a_row += 1;
        if self.burst_left == 0
            && self.replies_in_a_row >= STABLE_REPLIES
            && self.poll < self.settings.maxpoll
        {
            self.poll += 1;
            self.replies_in_a_row = 0;
        }
        if self.filter_sample(sample) {
            self.exchanges.good = self.exchanges.good.wrapping_add(1);
        }
        Ok(sample)
    }

    /// The clock filter: a sample whose round trip took much longer than the quickest of the
    /// last eight is dropped (queueing delay is what corrupts an offset, and it is rarely
    /// symmetric). The rest go on to the regression, which weighs them by their delay. True:
    /// kept.
    fn filter_sample(&mut self, sample: Sample) -> bool {
        if self.recent_delays.len() == FILTER_LENGTH {
            self.recent_delays.remove(0);
        }
        self.recent_delays.push(sample.delay);
        let quickest = self.recent_delays.iter().copied().fold(f64::INFINITY, f64::min);
        if sample.delay <= quickest * FILTER_DELAY_RATIO + sample.dispersion {
            self.samples.push(sample);
            self.estimate = self.samples.estimate();
            return true;
        }
        false
    }

    /// A server that leapt (announced or not) jumps by a whole second against its history. That
    /// is a leap: the history moves with it, so that the jump is a step in the offset and never
    /// a frequency error.
    fn absorb_leap(&mut self, sample: &Sample) {
        let Some(predicted) = self.offset_at(sample.time_ns) else { return };
        let jump = sample.offset - predicted;
        if (jump.abs() - 1.0).abs() < LEAP_JUMP_TOLERANCE {
            tracing::info!(source = %self.address, jump, "the server leapt");
            self.shift(jump.round());
        }
    }

    /// Whether the source can take part in selection.
    pub fn is_selectable(&self) -> bool {
        !self.refused && !self.settings.noselect && self.reach != 0 && self.estimate.is_some()
    }

    /// The source's root distance at `now_ns`: its error bound as a time source.
    pub fn root_distance(&self, now_ns: i64) -> f64 {
        let Some(estimate) = &self.estimate else { return f64::INFINITY };
        let newest = self.samples.newest().map_or(0.0, |s| s.delay / 2.0 + s.dispersion);
        let age = seconds_between(estimate.time_ns, now_ns).max(0.0);
        self.root_delay / 2.0
            + self.root_dispersion
            + newest
            + estimate.offset_error
            + estimate.std_dev
            + PHI * age
    }

    /// The source's offset (its time minus local raw time) at `now_ns`.
    pub fn offset_at(&self, now_ns: i64) -> Option<f64> {
        self.estimate.as_ref().map(|e| e.offset_at(now_ns))
    }

    /// Shifts the source's samples by `delta` (the local raw timescale moved).
    pub fn shift(&mut self, delta: f64) {
        if let Some(clock) = &mut self.reference_clock {
            clock.shift(delta);
        }
        self.samples.shift(delta);
        self.estimate = self.samples.estimate();
    }
}

#[cfg(test)]
mod tests {
    use ntp_common::wire::NtpShort;

    use super::*;

    const SERVER: &str = "192.0.2.1:123";
    const T0: i64 = 1_795_660_000_000_000_000;

    fn source(settings: PollSettings) -> Source {
        Source::new(SERVER.into(), SERVER.parse().unwrap(), settings, T0)
    }

    /// The server's reply to `request`, 1 ms ahead of the client, 50 us each way.
    fn reply(request: &Request, stratum: u8, leap: Leap, reference_id: ReferenceId) -> [u8; 48] {
        let request = NtpHeader::from_bytes(&request.bytes);
        let at = |ns: i64| NtpTimestamp::from_unix_nanos((ns + 1_000_000) as u64);
        NtpHeader {
            leap,
            version: 4,
            mode: Mode::Server,
            stratum,
            poll: request.poll,
            precision: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id,
            reference_timestamp: at(T0),
            origin_timestamp: request.transmit_timestamp,
            receive_timestamp: at(T0 + 50_000),
            transmit_timestamp: at(T0 + 60_000),
        }
        .to_bytes()
    }

    fn good(request: &Request) -> [u8; 48] {
        reply(request, 1, Leap::NoWarning, ReferenceId::from_bits(*b"GPS\0"))
    }

    const RECEIVED: i64 = T0 + 110_000;

    #[test]
    fn a_reply_gives_a_sample_and_fills_the_reach_register() {
        let mut source = source(PollSettings::default());
        let request = source.poll(T0, 42).expect("due at once");
        assert_eq!(
            NtpHeader::from_bytes(&request.bytes).transmit_timestamp,
            NtpTimestamp::from_fixed(42)
        );
        let sample = source.receive(&good(&request), request.to, RECEIVED, false).unwrap();
        assert!((sample.offset - 1e-3).abs() < 1e-9, "{}", sample.offset);
        assert!((sample.delay - 100e-6).abs() < 1e-9, "{}", sample.delay);
        assert_eq!((source.reach, source.stratum), (1, 1));
        // A duplicate of the reply is not awaited any more.
        assert_eq!(
            source.receive(&good(&request), request.to, RECEIVED, false),
            Err(Rejected::NotAwaited)
        );
    }

    #[test]
    fn ntpdata_counts_exchanges_and_says_which_test_the_last_reply_failed() {
        let mut source = source(PollSettings::default());
        let request = source.poll(T0, 42).unwrap();
        source.receive(&good(&request), request.to, RECEIVED, false).unwrap();
        let last = source.last_reply.expect("a valid reply");
        assert_eq!((last.header.stratum, last.header.precision), (1, -20));
        assert!((last.response_time - 10e-6).abs() < 1e-9, "{}", last.response_time);
        let expected = Exchanges { sent: 1, received: 1, valid: 1, good: 1, tests: ALL_TESTS };
        assert_eq!(source.exchanges, expected);
        // The duplicate: received, not valid, the bogus-packet test failed.
        let _ = source.receive(&good(&request), request.to, RECEIVED, false);
        let expected = Exchanges { received: 2, tests: ALL_TESTS & !(1 << 8), ..expected };
        assert_eq!(source.exchanges, expected);
        // An unsynchronised server fails the synchronisation test; the last valid reply stays.
        let request = source.poll(T0 + 64_000_000_000, 43).unwrap();
        let unsynchronised = reply(&request, 0, Leap::Unsynchronised, ReferenceId::NONE);
        let _ = source.receive(&unsynchronised, request.to, RECEIVED + 64_000_000_000, false);
        assert_eq!(source.exchanges.tests, ALL_TESTS & !(1 << 5));
        assert_eq!((source.exchanges.sent, source.exchanges.valid), (2, 1));
        assert_eq!(source.last_reply, Some(last));
        // From another address: not the source's reply, not counted.
        let elsewhere = "192.0.2.99:123".parse().unwrap();
        let _ = source.receive(&good(&request), elsewhere, RECEIVED, false);
        assert_eq!(source.exchanges.received, 3);
    }

    #[test]
    fn the_send_time_is_that_of_the_request_in_flight_only() {
        let earlier = T0 - 64_000_000_000;
        let mut source =
            Source::new(SERVER.into(), SERVER.parse().unwrap(), PollSettings::default(), earlier);
        let stale = source.poll(earlier, 1).unwrap();
        let request = source.poll(T0, 2).unwrap();
        // The stale request's send time does not move the one in flight; its own does.
        source.transmitted(&stale, T0 - 30_000);
        source.transmitted(&request, T0 + 10_000);
        let sample = source.receive(&good(&request), request.to, RECEIVED, false).unwrap();
        assert!((sample.delay - 90e-6).abs() < 1e-9, "{}", sample.delay);
    }

    #[test]
    fn replies_that_do_not_answer_the_request_are_rejected() {
        let mut source = source(PollSettings::default());
        let request = source.poll(T0, 42).unwrap();
        let elsewhere = "192.0.2.99:123".parse().unwrap();
        assert_eq!(
            source.receive(&good(&request), elsewhere, RECEIVED, false),
            Err(Rejected::FromElsewhere)
        );
        let mut wrong_origin = good(&request);
        wrong_origin[24] ^= 1;
        assert_eq!(
            source.receive(&wrong_origin, request.to, RECEIVED, false),
            Err(Rejected::NotAwaited)
        );
        assert_eq!(
            source.receive(&good(&request)[..40], request.to, RECEIVED, false),
            Err(Rejected::Malformed)
        );
        let unsynchronised = reply(&request, 3, Leap::Unsynchronised, ReferenceId::NONE);
        assert_eq!(
            source.receive(&unsynchronised, request.to, RECEIVED, false),
            Err(Rejected::Unsynchronised)
        );
        assert_eq!(source.reach, 0, "no rejected reply counts as reached");
    }

    #[test]
    fn a_request_is_answered_only_by_its_server_echoing_its_transmit_timestamp() {
        let mut source = source(PollSettings::default());
        let request = source.poll(T0, 42).unwrap();
        let reply = good(&request);
        assert!(request.is_answered_by(&reply, request.to));
        assert!(!request.is_answered_by(&reply, "192.0.2.9:123".parse().unwrap()));
        let mut forged = reply;
        forged[24] ^= 1;
        assert!(!request.is_answered_by(&forged, request.to));
        assert!(!request.is_answered_by(&reply[..31], request.to));
    }

    #[test]
    fn kiss_of_death_rate_slows_polling_and_deny_stops_it() {
        let mut source = source(PollSettings { minpoll: 4, maxpoll: 8, ..PollSettings::default() });
        let request = source.poll(T0, 1).unwrap();
        let rate = reply(&request, 0, Leap::Unsynchronised, ReferenceId::KISS_RATE);
        assert_eq!(
            source.receive(&rate, request.to, RECEIVED, false),
            Err(Rejected::KissOfDeath(ReferenceId::KISS_RATE))
        );
        assert_eq!(source.poll, 5);
        assert!(source.next_poll_ns() >= RECEIVED + 32_000_000_000);
        let request = source.poll(source.next_poll_ns(), 2).unwrap();
        let deny = reply(&request, 0, Leap::Unsynchronised, ReferenceId::from_bits(*b"DENY"));
        source.receive(&deny, request.to, RECEIVED, false).unwrap_err();
        assert!(source.refused && source.is_unreachable() && !source.is_selectable());
        assert_eq!(source.poll(i64::MAX, 3), None, "a refusing server is never asked again");
    }

    #[test]
    fn iburst_starts_with_requests_two_seconds_apart_then_polls_at_the_interval() {
        let mut source = source(PollSettings { iburst: true, ..PollSettings::default() });
        let mut times = Vec::new();
        let mut now = T0;
        while times.len() < 6 {
            if source.poll(now, 7).is_some() {
                times.push((now - T0) / 1_000_000_000);
            }
            now += 500_000_000;
        }
        assert_eq!(times, [0, 2, 4, 6, 8, 72]);
        // Eight requests without a reply: unreachable.
        assert_eq!(source.reach, 0);
        while source.polls_without_reply < 8 {
            now = source.next_poll_ns();
            source.poll(now, 7);
        }
        assert!(source.is_unreachable());
    }
}
