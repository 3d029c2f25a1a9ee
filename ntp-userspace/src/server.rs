//! The server's shared state and the slow path's decisions, without I/O: what the daemon
//! publishes to the kernel, and how a datagram that reached the socket is answered.

use std::{
    net::IpAddr,
    sync::{
        RwLock,
        atomic::{AtomicI32, AtomicU64, Ordering},
    },
};

use ntp_common::{
    responder::{self, NoReply},
    state::{MAX_STATE_AGE_NS, ServerState},
    wire::HEADER_LEN,
};

use crate::{
    access::AccessTable,
    control::SlowPathCounters,
    reference::{Reference, TaiReading},
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
    Denied,
    /// Not a request this server answers (see [`NoReply`]).
    NotServed(NoReply),
    /// Sent to a broadcast or multicast address: not for this server alone to answer.
    NotUnicast,
}

/// The state shared by the daemon's tasks.
pub struct Server {
    reference: RwLock<Reference>,
    access: RwLock<AccessTable>,
    /// The kernel's TAI - UTC offset, to turn socket timestamps (UTC) into TAI.
    tai_offset_s: AtomicI32,
    received: AtomicU64,
    answered: AtomicU64,
    denied: AtomicU64,
    commands: AtomicU64,
}

impl Server {
    pub fn new(reference: Reference, access: AccessTable, tai_offset_s: i32) -> Self {
        Self {
            reference: RwLock::new(reference),
            access: RwLock::new(access),
            tai_offset_s: AtomicI32::new(tai_offset_s),
            received: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            commands: AtomicU64::new(0),
        }
    }

    /// Follows the kernel's TAI offset (it changes at leap seconds).
    pub fn observe_clock(&self, now: TaiReading) {
        self.tai_offset_s.store(now.tai_offset_s, Ordering::Relaxed);
    }

    /// The state to publish to the kernel at `now`.
    pub fn state_to_publish(&self, now: TaiReading) -> ServerState {
        self.reference.read().expect("reference lock").state_at(now, STATE_FRESHNESS_NS)
    }

    pub fn access(&self) -> AccessTable {
        self.access.read().expect("access lock").clone()
    }

    /// Answers a datagram the socket received from `source`, sent to `destination`, at the
    /// CLOCK_REALTIME instant `received_realtime_ns`. `transmit_tai_ns` reads the clock just
    /// before the reply is built.
    pub fn handle_datagram(
        &self,
        request: &[u8],
        source: IpAddr,
        destination: Option<IpAddr>,
        received_realtime_ns: u64,
        transmit_tai_ns: impl FnOnce() -> u64,
    ) -> Result<[u8; HEADER_LEN], Unanswered> {
        if !self.access.read().expect("access lock").is_allowed(source) {
            self.denied.fetch_add(1, Ordering::Relaxed);
            return Err(Unanswered::Denied);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if destination.is_some_and(|d| !is_unicast(d)) {
            return Err(Unanswered::NotUnicast);
        }
        let tai_offset_s = self.tai_offset_s.load(Ordering::Relaxed);
        let received = TaiReading {
            tai_ns: received_realtime_ns
                .saturating_add_signed(i64::from(tai_offset_s) * 1_000_000_000),
            tai_offset_s,
        };
        // Anchored at the receive instant: however long the request waited in the socket, the
        // time model of the daemon, not the kernel's freshness window, decides.
        let state =
            self.reference.read().expect("reference lock").state_at(received, MAX_STATE_AGE_NS);
        let reply = responder::respond(request, &state, received.tai_ns, transmit_tai_ns())
            .map_err(Unanswered::NotServed)?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    pub fn count_command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub fn slow_path_counters(&self) -> SlowPathCounters {
        SlowPathCounters {
            received: self.received.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
        }
    }
}

fn is_unicast(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => !a.is_broadcast() && !a.is_multicast() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_multicast() && !a.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use ntp_common::wire::{NtpHeader, NtpTimestamp};

    use super::*;
    use crate::{
        access::{Access, AccessRule, Subnet},
        config::LocalReference,
    };

    fn server() -> Server {
        let local = LocalReference { stratum: 7, orphan: false, distance: 1.0 };
        let access = AccessTable::from_rules(&[AccessRule {
            access: Access::Allow,
            all: false,
            subnet: Subnet::V4("192.0.2.0".parse().unwrap(), 24),
        }]);
        Server::new(Reference::new(Some(local), -20), access, 37)
    }

    fn request() -> [u8; HEADER_LEN] {
        NtpHeader::client_request(4, 6, NtpTimestamp::from_fixed(42)).to_bytes()
    }

    const RECEIVED_UTC: u64 = 1_795_660_000_000_000_000;
    const RECEIVED_TAI: u64 = RECEIVED_UTC + 37_000_000_000;

    #[test]
    fn answers_an_admitted_client_with_the_socket_timestamp() {
        let server = server();
        let reply = server
            .handle_datagram(&request(), "192.0.2.9".parse().unwrap(), None, RECEIVED_UTC, || {
                RECEIVED_TAI + 20_000
            })
            .unwrap();
        let reply = NtpHeader::from_bytes(&reply);
        assert_eq!(reply.stratum, 7);
        assert_eq!(reply.receive_timestamp.to_unix_nanos(), RECEIVED_UTC);
        assert_eq!(reply.transmit_timestamp.to_unix_nanos(), RECEIVED_UTC + 20_000);
        assert_eq!(
            server.slow_path_counters(),
            SlowPathCounters { received: 1, answered: 1, denied: 0 }
        );
    }

    #[test]
    fn a_request_that_waited_long_in_the_socket_is_still_answered() {
        let server = server();
        let ten_seconds_later = RECEIVED_TAI + 10_000_000_000;
        let reply = server.handle_datagram(
            &request(),
            "192.0.2.9".parse().unwrap(),
            None,
            RECEIVED_UTC,
            || ten_seconds_later,
        );
        assert!(reply.is_ok());
    }

    #[test]
    fn denied_and_unanswerable_datagrams_are_counted_apart() {
        let server = server();
        let denied = server.handle_datagram(
            &request(),
            "198.51.100.1".parse().unwrap(),
            None,
            RECEIVED_UTC,
            || RECEIVED_TAI,
        );
        assert_eq!(denied, Err(Unanswered::Denied));
        let broadcast = server.handle_datagram(
            &request(),
            "192.0.2.9".parse().unwrap(),
            Some("255.255.255.255".parse().unwrap()),
            RECEIVED_UTC,
            || RECEIVED_TAI,
        );
        assert_eq!(broadcast, Err(Unanswered::NotUnicast));
        let mut with_extension = request().to_vec();
        with_extension.extend_from_slice(&[0; 20]);
        let mac = server.handle_datagram(
            &with_extension,
            "192.0.2.9".parse().unwrap(),
            None,
            RECEIVED_UTC,
            || RECEIVED_TAI,
        );
        assert_eq!(mac, Err(Unanswered::NotServed(NoReply::Length(68))));
        assert_eq!(
            server.slow_path_counters(),
            SlowPathCounters { received: 2, answered: 0, denied: 1 }
        );
    }
}
