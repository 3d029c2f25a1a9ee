//! NTS-KE's records (RFC 8915 4), the server's side: a client's request is read until its End
//! of Message, judged as chronyd judges it, and answered with the protocol and algorithm
//! chosen, the NTP server and port where they are not the ones the client connected to, and
//! eight cookies; or with an Error record.

use super::{AEAD_AES_SIV_CMAC_256, COOKIES, NEXT_PROTOCOL_NTPV4, cookie::COOKIE_LEN};

const END_OF_MESSAGE: u16 = 0;
const NEXT_PROTOCOL: u16 = 1;
const ERROR: u16 = 2;
const WARNING: u16 = 3;
const AEAD_ALGORITHM: u16 = 4;
const NEW_COOKIE: u16 = 5;
const SERVER_NEGOTIATION: u16 = 6;
const PORT_NEGOTIATION: u16 = 7;
const CRITICAL: u16 = 0x8000;

/// The longest request read (chrony's clients send a few dozen bytes).
pub const MAX_REQUEST: usize = 1024;

/// Error record codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    UnrecognizedCriticalRecord = 0,
    BadRequest = 1,
}

/// What a complete request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// NTPv4 with AES-SIV-CMAC-256: keys and cookies.
    Agreed,
    /// No protocol ntpxd speaks.
    NoProtocol,
    /// NTPv4, but no algorithm ntpxd has.
    NoAlgorithm,
    Error(ErrorCode),
}

/// A request read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// More bytes are needed.
    Incomplete,
    /// The request up to its End of Message, judged.
    Complete(Negotiation),
}

/// Reads a request from the bytes received so far.
pub fn read_request(bytes: &[u8]) -> Read {
    let (mut protocol_records, mut protocols, mut ntpv4) = (0, 0, false);
    let (mut algorithm_records, mut algorithms, mut siv) = (0, 0, false);
    let mut error = None;
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 4) else { return Read::Incomplete };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some(body) = bytes.get(at + 4..at + 4 + length) else { return Read::Incomplete };
        at += 4 + length;
        let critical = kind & CRITICAL != 0;
        let values = || body.chunks_exact(2).map(|v| u16::from_be_bytes([v[0], v[1]]));
        match kind & !CRITICAL {
            END_OF_MESSAGE => break,
            _ if error.is_some() => {}
            NEXT_PROTOCOL if !critical || length < 2 || length % 2 != 0 => {
                error = Some(ErrorCode::BadRequest);
            }
            NEXT_PROTOCOL => {
                protocol_records += 1;
                protocols += length / 2;
                ntpv4 |= values().any(|p| p == NEXT_PROTOCOL_NTPV4);
            }
            AEAD_ALGORITHM if length < 2 || length % 2 != 0 => error = Some(ErrorCode::BadRequest),
            AEAD_ALGORITHM => {
                algorithm_records += 1;
                algorithms += length / 2;
                siv |= values().any(|a| a == AEAD_AES_SIV_CMAC_256);
            }
            ERROR | WARNING | NEW_COOKIE => error = Some(ErrorCode::BadRequest),
            _ if critical => error = Some(ErrorCode::UnrecognizedCriticalRecord),
            _ => {}
        }
    }
    let well_formed = protocol_records == 1
        && protocols >= 1
        && (!ntpv4 || (algorithm_records == 1 && algorithms >= 1));
    Read::Complete(match error {
        Some(code) => Negotiation::Error(code),
        None if !well_formed => Negotiation::Error(ErrorCode::BadRequest),
        None if !ntpv4 => Negotiation::NoProtocol,
        None if !siv => Negotiation::NoAlgorithm,
        None => Negotiation::Agreed,
    })
}

/// Where clients are to send their NTP requests, when not to the NTS-KE server's address and
/// port 123 (`ntsntpserver`, `port`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NtpServer {
    pub name: Option<String>,
    pub port: Option<u16>,
}

/// The response to a judged request; `cookie` makes each of the eight cookies.
pub fn response(
    negotiation: Negotiation,
    ntp_server: &NtpServer,
    mut cookie: impl FnMut() -> [u8; COOKIE_LEN],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + COOKIES * (4 + COOKIE_LEN));
    let mut record = |kind: u16, body: &[u8]| {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    };
    let ntpv4 = NEXT_PROTOCOL_NTPV4.to_be_bytes();
    match negotiation {
        Negotiation::Error(code) => record(CRITICAL | ERROR, &(code as u16).to_be_bytes()),
        Negotiation::NoProtocol => record(CRITICAL | NEXT_PROTOCOL, &[]),
        Negotiation::NoAlgorithm => {
            record(CRITICAL | NEXT_PROTOCOL, &ntpv4);
            record(CRITICAL | AEAD_ALGORITHM, &[]);
        }
        Negotiation::Agreed => {
            record(CRITICAL | NEXT_PROTOCOL, &ntpv4);
            record(CRITICAL | AEAD_ALGORITHM, &AEAD_AES_SIV_CMAC_256.to_be_bytes());
            if let Some(port) = ntp_server.port {
                record(CRITICAL | PORT_NEGOTIATION, &port.to_be_bytes());
            }
            if let Some(name) = &ntp_server.name {
                record(CRITICAL | SERVER_NEGOTIATION, name.as_bytes());
            }
            for _ in 0..COOKIES {
                record(NEW_COOKIE, &cookie());
            }
        }
    }
    record(CRITICAL | END_OF_MESSAGE, &[]);
    out
}

/// What a client asks: NTPv4 and AES-SIV-CMAC-256 (as chrony 4.3's client).
pub fn client_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let mut record = |kind: u16, body: &[u8]| {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    };
    record(CRITICAL | NEXT_PROTOCOL, &NEXT_PROTOCOL_NTPV4.to_be_bytes());
    record(CRITICAL | AEAD_ALGORITHM, &AEAD_AES_SIV_CMAC_256.to_be_bytes());
    record(CRITICAL | END_OF_MESSAGE, &[]);
    out
}

/// What a server's response gave a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    pub cookies: Vec<Vec<u8>>,
    pub ntp_server: NtpServer,
}

/// Reads a server's response from the bytes received so far: None while incomplete; an error
/// for a refusal or anything but NTPv4 with AES-SIV-CMAC-256 and at least one cookie.
pub fn read_response(bytes: &[u8]) -> Option<Result<Granted, String>> {
    let mut granted = Granted::default();
    let (mut protocol, mut algorithm) = (false, false);
    let mut at = 0;
    loop {
        let header = bytes.get(at..at + 4)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let body = bytes.get(at + 4..at + 4 + length)?;
        at += 4 + length;
        let value = || (length == 2).then(|| u16::from_be_bytes([body[0], body[1]]));
        match kind & !CRITICAL {
            END_OF_MESSAGE => break,
            NEXT_PROTOCOL => protocol = value() == Some(NEXT_PROTOCOL_NTPV4),
            AEAD_ALGORITHM => algorithm = value() == Some(AEAD_AES_SIV_CMAC_256),
            ERROR => return Some(Err(format!("the server refused: error {:?}", value()))),
            NEW_COOKIE => granted.cookies.push(body.to_vec()),
            SERVER_NEGOTIATION => {
                granted.ntp_server.name = Some(String::from_utf8_lossy(body).into_owned())
            }
            PORT_NEGOTIATION => granted.ntp_server.port = value(),
            WARNING => {}
            _ if kind & CRITICAL != 0 => {
                return Some(Err(format!("an unknown critical record {}", kind & !CRITICAL)));
            }
            _ => {}
        }
    }
    Some(match (protocol, algorithm, granted.cookies.is_empty()) {
        (false, _, _) => Err("the server does not speak NTPv4 over NTS".into()),
        (_, false, _) => Err("the server has no AES-SIV-CMAC-256".into()),
        (_, _, true) => Err("the server gave no cookies".into()),
        _ => Ok(granted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// What chrony 4.3's client sends: NTPv4, AES-SIV-CMAC-256, End of Message.
    fn chrony_request() -> Vec<u8> {
        [
            record(CRITICAL | NEXT_PROTOCOL, &[0, 0]),
            record(AEAD_ALGORITHM, &[0, 15]),
            record(CRITICAL | END_OF_MESSAGE, &[]),
        ]
        .concat()
    }

    #[test]
    fn a_request_is_read_to_its_end_and_judged_as_chronyd_judges_it() {
        let request = chrony_request();
        for cut in 0..request.len() {
            assert_eq!(read_request(&request[..cut]), Read::Incomplete, "{cut} bytes");
        }
        assert_eq!(read_request(&request), Read::Complete(Negotiation::Agreed));
        let with = |records: &[Vec<u8>]| {
            let mut bytes = records.concat();
            bytes.extend(record(CRITICAL | END_OF_MESSAGE, &[]));
            read_request(&bytes)
        };
        let ntpv4 = record(CRITICAL | NEXT_PROTOCOL, &[0, 0]);
        let gcm_only = record(AEAD_ALGORITHM, &[0, 30]);
        let siv = record(AEAD_ALGORITHM, &[0, 15]);
        let bad = Read::Complete(Negotiation::Error(ErrorCode::BadRequest));
        assert_eq!(with(&[ntpv4.clone(), gcm_only]), Read::Complete(Negotiation::NoAlgorithm));
        let other = record(CRITICAL | NEXT_PROTOCOL, &[0x80, 1]);
        assert_eq!(with(&[other, siv.clone()]), Read::Complete(Negotiation::NoProtocol));
        assert_eq!(with(std::slice::from_ref(&siv)), bad, "no next protocol");
        assert_eq!(with(std::slice::from_ref(&ntpv4)), bad, "NTPv4 without algorithms");
        assert_eq!(with(&[record(NEXT_PROTOCOL, &[0, 0]), siv.clone()]), bad, "not critical");
        assert_eq!(with(&[record(CRITICAL | NEXT_PROTOCOL, &[0]), siv.clone()]), bad, "odd length");
        assert_eq!(with(&[ntpv4.clone(), siv.clone(), record(NEW_COOKIE, &[1; 8])]), bad);
        assert_eq!(
            with(&[ntpv4.clone(), siv.clone(), record(CRITICAL | 0x4000, &[])]),
            Read::Complete(Negotiation::Error(ErrorCode::UnrecognizedCriticalRecord))
        );
        // An unknown record that is not critical is ignored.
        assert_eq!(
            with(&[ntpv4, siv, record(0x4000, &[1, 2])]),
            Read::Complete(Negotiation::Agreed)
        );
    }

    #[test]
    fn a_client_reads_what_the_server_grants_and_what_it_refuses() {
        assert_eq!(read_request(&client_request()), Read::Complete(Negotiation::Agreed));
        let server = NtpServer { name: None, port: Some(1123) };
        let granted = response(Negotiation::Agreed, &server, || [7; COOKIE_LEN]);
        for cut in 0..granted.len() {
            assert_eq!(read_response(&granted[..cut]), None, "{cut} bytes");
        }
        let read = read_response(&granted).unwrap().unwrap();
        assert_eq!((read.cookies.len(), read.ntp_server), (COOKIES, server.clone()));
        for refusal in [
            Negotiation::Error(ErrorCode::BadRequest),
            Negotiation::NoAlgorithm,
            Negotiation::NoProtocol,
        ] {
            let refused = response(refusal, &server, || [7; COOKIE_LEN]);
            assert!(read_response(&refused).unwrap().is_err(), "{refusal:?}");
        }
    }

    #[test]
    fn an_agreement_carries_eight_cookies_and_the_ntp_server_when_set() {
        let server = NtpServer { name: Some("ntp.example.net".into()), port: Some(1123) };
        let response = response(Negotiation::Agreed, &server, || [7; COOKIE_LEN]);
        let mut records = Vec::new();
        let mut at = 0;
        while at < response.len() {
            let kind = u16::from_be_bytes([response[at], response[at + 1]]);
            let length = usize::from(u16::from_be_bytes([response[at + 2], response[at + 3]]));
            records.push((kind, response[at + 4..at + 4 + length].to_vec()));
            at += 4 + length;
        }
        assert_eq!(records[0], (CRITICAL | NEXT_PROTOCOL, vec![0, 0]));
        assert_eq!(records[1], (CRITICAL | AEAD_ALGORITHM, vec![0, 15]));
        assert_eq!(records[2], (CRITICAL | PORT_NEGOTIATION, vec![4, 99]));
        assert_eq!(records[3], (CRITICAL | SERVER_NEGOTIATION, b"ntp.example.net".to_vec()));
        let cookies = records.iter().filter(|(kind, _)| *kind == NEW_COOKIE).count();
        assert_eq!(cookies, COOKIES);
        assert_eq!(records.last(), Some(&(CRITICAL | END_OF_MESSAGE, vec![])));
        let refused = super::response(Negotiation::Error(ErrorCode::BadRequest), &server, || {
            unreachable!("no cookies in a refusal")
        });
        assert_eq!(refused, [record(CRITICAL | ERROR, &[0, 1]), record(CRITICAL, &[])].concat());
    }
}
