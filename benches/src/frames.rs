//! The load generator's requests and reply checks, host side: the generator program's settings
//! (whose sums make its frames valid), the frames it must produce, and the validation the counter
//! program applies, for the socket generator and as the programs' reference in tests.

use std::net::{Ipv4Addr, SocketAddrV4};

use ntp_common::{
    checksum::fold,
    wire::{HEADER_LEN, Mode, NtpHeader, NtpTimestamp, ReferenceId},
};
use ntpx_bench_ebpf::{CounterConfig, FRAME_LEN, GeneratorConfig};

/// Who sends to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub client_mac: [u8; 6],
    pub server_mac: [u8; 6],
    pub server: SocketAddrV4,
    /// Clients are `first_client + i` for `i < clients` (a power of two).
    pub first_client: Ipv4Addr,
    pub clients: u32,
}

/// A 16-bit word as it lies in the frame (network order read natively).
fn word(bytes: [u8; 2]) -> u16 {
    u16::from_ne_bytes(bytes)
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|pair| u32::from(word([pair[0], pair[1]]))).sum()
}

impl Flow {
    /// The client of request number `n` (as the generator numbers them).
    pub fn client(&self, n: u64) -> SocketAddrV4 {
        let index = (n as u32) & (self.clients - 1);
        let port = 1024 + ((n >> self.clients.trailing_zeros()) & 0x7fff) as u16;
        SocketAddrV4::new(Ipv4Addr::from(u32::from(self.first_client).wrapping_add(index)), port)
    }

    /// The request frame number `n`, sent at CLOCK_TAI `sent_tai_ns`: what the generator program
    /// writes.
    pub fn request(&self, n: u64, sent_tai_ns: u64) -> [u8; FRAME_LEN] {
        let client = self.client(n);
        let mut frame = [0u8; FRAME_LEN];
        frame[0..6].copy_from_slice(&self.server_mac);
        frame[6..12].copy_from_slice(&self.client_mac);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut frame[14..34];
        ip.copy_from_slice(&[0x45, 0, 0, 76, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ip[12..16].copy_from_slice(&client.ip().octets());
        ip[16..20].copy_from_slice(&self.server.ip().octets());
        let checksum = !fold(u64::from(sum_words(ip)));
        ip[10..12].copy_from_slice(&checksum.to_ne_bytes());
        let request = NtpHeader::client_request(4, 6, NtpTimestamp::from_fixed(sent_tai_ns));
        let udp = &mut frame[34..90];
        udp[0..2].copy_from_slice(&client.port().to_be_bytes());
        udp[2..4].copy_from_slice(&self.server.port().to_be_bytes());
        udp[4..6].copy_from_slice(&56u16.to_be_bytes());
        udp[8..].copy_from_slice(&request.to_bytes());
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&client.ip().octets());
        pseudo.extend_from_slice(&self.server.ip().octets());
        pseudo.extend_from_slice(&[0, 17, 0, 56]);
        let sum = u64::from(sum_words(&pseudo)) + u64::from(sum_words(udp));
        let checksum = match !fold(sum) {
            0 => 0xffff,
            checksum => checksum,
        };
        udp[6..8].copy_from_slice(&checksum.to_ne_bytes());
        frame
    }

    /// The flow's clients in `n` equal shares (`n` a power of two), one for each generator, as
    /// a NIC's receive hashing keeps a client on one queue.
    pub fn split(&self, n: u32) -> Vec<Flow> {
        let clients = self.clients / n;
        (0..n)
            .map(|i| Flow {
                first_client: Ipv4Addr::from(u32::from(self.first_client) + i * clients),
                clients,
                ..*self
            })
            .collect()
    }

    /// The generator program's settings: the constant parts of the frame's sums.
    pub fn generator_config(&self) -> GeneratorConfig {
        // A frame from address 0, port 0, sent at 0, without checksums: the sums of the rest.
        let mut base = self.request(0, 0);
        base[26..30].fill(0); // source address
        base[24..26].fill(0); // IP checksum
        base[34..36].fill(0); // source port
        base[40..42].fill(0); // UDP checksum
        base[82..90].fill(0); // transmit timestamp
        let macs: Vec<u16> = base[..12].chunks(2).map(|p| word([p[0], p[1]])).collect();
        let server = self.server.ip().octets();
        let pseudo = [self.server.ip().octets(), [0, 17, 0, 56]].concat();
        GeneratorConfig {
            macs: macs.try_into().expect("six words"),
            server_ip: [word([server[0], server[1]]), word([server[2], server[3]])],
            server_port: self.server.port(),
            reserved: 0,
            first_client: u32::from(self.first_client),
            clients: self.clients,
            ip_sum: sum_words(&base[14..34]),
            udp_sum: sum_words(&pseudo) + sum_words(&base[34..90]),
            interval_ns: 0,
            burst: 64,
            reserved_end: 0,
        }
    }

    /// The counter program's settings.
    pub fn counter_config(&self, utc_minus_tai_ns: i64, reflector: bool) -> CounterConfig {
        CounterConfig {
            utc_minus_tai_ns,
            first_client: u32::from(self.first_client),
            clients: self.clients,
            server_port: self.server.port(),
            reflector: u16::from(reflector),
            reserved: 0,
        }
    }
}

/// What a reply says, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A time reply: its latency and the NTP offset it gives, in ns.
    Time {
        latency_ns: u64,
        offset_ns: i64,
    },
    KissOfDeath,
}

/// Why a reply is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    Length,
    NotServerMode,
    /// The origin is not one of our send times.
    Origin,
    /// The server's receive or transmit instant outside the exchange, or transmit before
    /// receive.
    Timestamps,
}

/// Checks an NTP reply to a request the generator sent (its transmit timestamp holding the send
/// time, CLOCK_TAI ns), received at `received_tai_ns`: what the counter program checks after the
/// headers (the socket generator's kernel checked those).
pub fn check_reply(
    ntp: &[u8],
    received_tai_ns: u64,
    utc_minus_tai_ns: i64,
) -> Result<Reply, Invalid> {
    let ntp: &[u8; HEADER_LEN] = ntp.try_into().map_err(|_| Invalid::Length)?;
    let reply = NtpHeader::from_bytes(ntp);
    if reply.mode != Mode::Server || reply.version != 4 {
        return Err(Invalid::NotServerMode);
    }
    let sent = reply.origin_timestamp.to_fixed();
    if sent > received_tai_ns || received_tai_ns - sent > 5_000_000_000 {
        return Err(Invalid::Origin);
    }
    if reply.stratum == 0 && reply.reference_id == ReferenceId::KISS_RATE {
        return Ok(Reply::KissOfDeath);
    }
    let client_send = sent as i64 + utc_minus_tai_ns;
    let server_receive = reply.receive_timestamp.to_unix_nanos_near(client_send);
    let server_transmit = reply.transmit_timestamp.to_unix_nanos_near(client_send);
    let client_receive = received_tai_ns as i64 + utc_minus_tai_ns;
    // The server's instants lie within the exchange (1 us of slack for rounding).
    if server_transmit < server_receive
        || server_receive < client_send - 1_000
        || server_transmit > client_receive + 1_000
    {
        return Err(Invalid::Timestamps);
    }
    let offset_ns = ((server_receive - client_send) + (server_transmit - client_receive)) / 2;
    Ok(Reply::Time { latency_ns: received_tai_ns - sent, offset_ns })
}

#[cfg(test)]
mod tests {
    use ntp_common::{
        responder,
        state::{MAX_STATE_AGE_NS, ReplyHeader, ServerState, TimeAnchor},
        wire::{Leap, NtpShort},
    };

    use super::*;

    fn flow() -> Flow {
        Flow {
            client_mac: [2, 0, 0, 0, 0, 2],
            server_mac: [2, 0, 0, 0, 0, 1],
            server: "10.88.0.1:123".parse().unwrap(),
            first_client: Ipv4Addr::new(10, 88, 128, 0),
            clients: 1024,
        }
    }

    /// Verifies the IP and UDP checksums of a request frame the slow, obvious way.
    fn checksums_ok(frame: &[u8]) -> bool {
        let ip_ok = fold(
            frame[14..34].chunks(2).map(|p| u64::from(u16::from_be_bytes([p[0], p[1]]))).sum(),
        ) == 0xffff;
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 17, 0, 56]);
        pseudo.extend_from_slice(&frame[34..90]);
        let udp_ok =
            fold(pseudo.chunks(2).map(|p| u64::from(u16::from_be_bytes([p[0], p[1]]))).sum())
                == 0xffff;
        ip_ok && udp_ok
    }

    #[test]
    fn requests_are_valid_and_spread_over_clients_and_ports() {
        let flow = flow();
        for n in [0, 1, 1023, 1024, 99_999] {
            let frame = flow.request(n, 1_234_567_890 + n);
            assert!(checksums_ok(&frame), "request {n}");
            let ntp = NtpHeader::from_bytes(frame[42..90].try_into().unwrap());
            assert_eq!((ntp.mode, ntp.version), (Mode::Client, 4));
            assert_eq!(ntp.transmit_timestamp.to_fixed(), 1_234_567_890 + n);
        }
        assert_eq!(flow.client(0), "10.88.128.0:1024".parse().unwrap());
        assert_eq!(flow.client(1025), "10.88.128.1:1025".parse().unwrap());
        assert_ne!(flow.request(1, 5)[26..30], flow.request(2, 5)[26..30]);
    }

    #[test]
    fn the_generator_config_sums_what_the_frame_varies_around() {
        let flow = flow();
        let config = flow.generator_config();
        let frame = flow.request(7, 0);
        // The IP checksum the program computes from the config equals the builder's.
        let client = &frame[26..30];
        let sum = u64::from(config.ip_sum)
            + u64::from(word([client[0], client[1]]))
            + u64::from(word([client[2], client[3]]));
        assert_eq!((!fold(sum)).to_ne_bytes(), [frame[24], frame[25]]);
    }

    fn reply_to(
        request: &[u8; FRAME_LEN],
        state: &ServerState,
        receive: u64,
        transmit: u64,
    ) -> [u8; HEADER_LEN] {
        responder::respond(&request[42..90], state, receive, transmit, i8::MIN).unwrap()
    }

    #[test]
    fn replies_are_checked_and_give_the_offset() {
        let tai_offset = 37_000_000_000i64;
        let sent = 1_800_000_000_000_000_000u64;
        let header = ReplyHeader {
            leap: Leap::NoWarning,
            stratum: 2,
            precision: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            dispersion_rate: 0.0,
            reference_id: ReferenceId::LOCAL,
            reference_time: NtpTimestamp::ZERO,
        };
        // The server runs 3 us ahead of this clock.
        let anchor = TimeAnchor {
            tai_ns: sent,
            served_unix_ns: sent - tai_offset as u64 + 3_000,
            frequency: 0.0,
        };
        let state = ServerState::new(anchor, header, MAX_STATE_AGE_NS);
        let request = flow().request(3, sent);
        let reply = reply_to(&request, &state, sent + 10_000, sent + 11_000);
        let checked = check_reply(&reply, sent + 21_000, -tai_offset);
        let Ok(Reply::Time { latency_ns, offset_ns }) = checked else { panic!("{checked:?}") };
        assert_eq!(latency_ns, 21_000);
        assert!((offset_ns - 3_000).abs() <= 1, "offset {offset_ns}");

        let mut not_ours = reply;
        not_ours[24..32].copy_from_slice(&(sent + 60_000_000_000).to_be_bytes());
        assert_eq!(check_reply(&not_ours, sent + 21_000, -tai_offset), Err(Invalid::Origin));
        let mut backwards = reply;
        backwards[40..48].copy_from_slice(&reply[24..32]);
        assert_eq!(check_reply(&backwards, sent + 21_000, -tai_offset), Err(Invalid::Timestamps));
        assert_eq!(check_reply(&request[42..90], sent, 0), Err(Invalid::NotServerMode));
        let kod = responder::kiss_of_death(&request[42..90], 3).unwrap();
        assert_eq!(check_reply(&kod, sent + 1, -tai_offset), Ok(Reply::KissOfDeath));
        assert_eq!(check_reply(&reply[..47], sent, 0), Err(Invalid::Length));
    }
}
