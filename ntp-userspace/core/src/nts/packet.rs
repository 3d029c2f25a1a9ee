//! NTS-protected NTP (RFC 8915 5), the server's side: a request's extension fields (unique
//! identifier, cookie, placeholders, authenticator last) are checked as chronyd checks them,
//! its cookie opened and its authenticator verified with the client's key; the reply echoes
//! the identifier and seals fresh cookies under the server-to-client key, padded to exactly
//! the request's length (never longer: fewer cookies rather than more bytes).

use aes_siv::{aead::KeyInit as _, siv::Aes128Siv};
use ntp_common::{
    extension::{
        self, Field,
        kind::{
            NTS_AUTHENTICATOR as AUTHENTICATOR, NTS_COOKIE as COOKIE,
            NTS_COOKIE_PLACEHOLDER as COOKIE_PLACEHOLDER,
            NTS_UNIQUE_IDENTIFIER as UNIQUE_IDENTIFIER,
        },
    },
    wire::HEADER_LEN,
};

use super::{
    COOKIES, SessionKeys,
    cookie::{COOKIE_LEN, KeyRing},
};
use crate::random;

const MIN_UNIQUE_ID: usize = 32;
/// The nonce ntpxd sends, and the least room a request's authenticator must leave for one.
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// An authenticated request.
#[derive(Debug)]
pub struct Request<'a> {
    pub unique_id: &'a [u8],
    keys: SessionKeys,
    /// Cookies asked for: one for the cookie used, one for each placeholder.
    cookies_wanted: usize,
}

/// Why a request is not answered as NTS.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected<'a> {
    /// No NTS fields (or extension fields that do not parse): not an NTS request.
    NotNts,
    /// NTS fields, but not as RFC 8915 has them: no reply.
    Malformed,
    /// A cookie this server cannot open (an old key, another server's), or an authenticator
    /// its key does not verify: an NTS NAK, echoing the identifier.
    Nak { unique_id: &'a [u8] },
}

/// The extension fields of `bytes` from `start`; None if they do not parse (RFC 7822's syntax:
/// a length of at least 4, a multiple of 4, within the datagram).
fn fields(bytes: &[u8], start: usize) -> Option<Vec<Field<'_>>> {
    extension::fields(bytes, start).collect::<Result<_, _>>().ok()
}

const fn padded(length: usize) -> usize {
    length.div_ceil(4) * 4
}

/// Checks an NTS request and opens it.
pub fn open<'a>(packet: &'a [u8], keys: &KeyRing) -> Result<Request<'a>, Rejected<'a>> {
    let fields = packet.get(HEADER_LEN..).and_then(|_| fields(packet, HEADER_LEN));
    let fields = fields.ok_or(Rejected::NotNts)?;
    if !fields.iter().any(Field::is_nts) {
        return Err(Rejected::NotNts);
    }
    let mut unique_id = None;
    let mut cookie: Option<&[u8]> = None;
    let mut cookie_len = None;
    let mut cookies_wanted = 0;
    let mut authenticator = None;
    for (index, field) in fields.iter().enumerate() {
        match field.kind {
            UNIQUE_IDENTIFIER => unique_id = Some(field.body),
            COOKIE | COOKIE_PLACEHOLDER => {
                if field.kind == COOKIE {
                    if cookie.is_some() {
                        return Err(Rejected::Malformed);
                    }
                    cookie = Some(field.body);
                }
                if cookie_len.is_some_and(|length| length != field.body.len()) {
                    return Err(Rejected::Malformed);
                }
                cookie_len = Some(field.body.len());
                cookies_wanted += 1;
            }
            AUTHENTICATOR if index + 1 == fields.len() => authenticator = Some(field),
            AUTHENTICATOR => return Err(Rejected::Malformed),
            _ => {}
        }
    }
    let (Some(unique_id), Some(cookie), Some(authenticator)) = (unique_id, cookie, authenticator)
    else {
        return Err(Rejected::Malformed);
    };
    if unique_id.len() < MIN_UNIQUE_ID {
        return Err(Rejected::Malformed);
    }
    let nak = Rejected::Nak { unique_id };
    let session = keys.open(cookie).ok_or(Rejected::Nak { unique_id })?;

    let body = authenticator.body;
    let header = body.get(..4).ok_or(Rejected::Malformed)?;
    let nonce_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let ciphertext_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if nonce_len == 0
        || ciphertext_len < TAG_LEN
        || body.len() < 4 + padded(nonce_len) + padded(ciphertext_len)
        || body.len() < 4 + NONCE_LEN + padded(ciphertext_len)
    {
        return Err(Rejected::Malformed);
    }
    let nonce = &body[4..4 + nonce_len];
    let ciphertext = &body[4 + padded(nonce_len)..4 + padded(nonce_len) + ciphertext_len];
    let associated = &packet[..authenticator.start];
    let mut cipher = Aes128Siv::new_from_slice(&session.c2s).expect("a 32-byte key");
    let plaintext = cipher.decrypt([associated, nonce], ciphertext).map_err(|_| nak)?;
    // Placeholders may also come encrypted.
    for field in fields_of_plaintext(&plaintext).ok_or(Rejected::Malformed)? {
        if field.kind == COOKIE_PLACEHOLDER {
            if Some(field.body.len()) != cookie_len {
                return Err(Rejected::Malformed);
            }
            cookies_wanted += 1;
        }
    }
    Ok(Request { unique_id, keys: session, cookies_wanted })
}

fn fields_of_plaintext(plaintext: &[u8]) -> Option<Vec<Field<'_>>> {
    fields(plaintext, 0)
}

/// Appends an extension field.
fn push_field(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((4 + padded(body.len())) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded(body.len()) - body.len(), 0);
}

/// The fresh cookies of a reply, as the extension fields to seal: made before the transmit
/// timestamp is read, so that only the authenticator's encryption comes between it and the
/// send (as chronyd does).
pub struct Cookies(Vec<u8>);

const COOKIE_FIELD: usize = 4 + padded(COOKIE_LEN);

/// The authenticator's length with `cookies` cookies and ntpxd's nonce, before padding.
const fn authenticator_len(cookies: usize) -> usize {
    4 + 4 + NONCE_LEN + padded(cookies * COOKIE_FIELD + TAG_LEN)
}

/// As many cookies as `request` asks for (at most eight) that fit a reply `request_len` long.
pub fn cookies_for(request: &Request, request_len: usize, keys: &KeyRing) -> Cookies {
    let before_authenticator = HEADER_LEN + 4 + padded(request.unique_id.len());
    let mut count = request.cookies_wanted.min(COOKIES);
    while count > 0 && before_authenticator + authenticator_len(count) > request_len {
        count -= 1;
    }
    let mut fields = Vec::with_capacity(count * COOKIE_FIELD);
    for _ in 0..count {
        push_field(&mut fields, COOKIE, &keys.seal(&request.keys));
    }
    Cookies(fields)
}

/// The reply to an authenticated request: `header` (the plain reply's) with the identifier
/// echoed and `cookies` sealed, exactly `request_len` bytes long.
pub fn seal_reply(
    header: &[u8; HEADER_LEN],
    request: &Request,
    cookies: Cookies,
    request_len: usize,
) -> Vec<u8> {
    let mut reply = Vec::with_capacity(request_len);
    reply.extend_from_slice(header);
    push_field(&mut reply, UNIQUE_IDENTIFIER, request.unique_id);
    let Cookies(plaintext) = cookies;
    let nonce: [u8; NONCE_LEN] = random::bytes();
    let mut cipher = Aes128Siv::new_from_slice(&request.keys.s2c).expect("a 32-byte key");
    let ciphertext = cipher.encrypt([&reply[..], &nonce[..]], &plaintext).expect("sealing");
    // What is left of the request's length is padding inside the authenticator.
    let unpadded = reply.len() + authenticator_len(plaintext.len() / COOKIE_FIELD);
    let padding = request_len.saturating_sub(unpadded);
    let mut body = Vec::with_capacity(4 + NONCE_LEN + padded(ciphertext.len()) + padding);
    body.extend_from_slice(&(NONCE_LEN as u16).to_be_bytes());
    body.extend_from_slice(&(ciphertext.len() as u16).to_be_bytes());
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&ciphertext);
    body.resize(padded(body.len()) + padding, 0);
    push_field(&mut reply, AUTHENTICATOR, &body);
    reply
}

/// A client's request, protected: `header`, a fresh identifier, `cookie`, `placeholders`
/// placeholders (to be given as many more cookies), and the authenticator under the
/// client-to-server key. Returns the datagram and its identifier.
pub fn protect(
    header: &[u8; HEADER_LEN],
    cookie: &[u8],
    placeholders: usize,
    keys: &SessionKeys,
) -> (Vec<u8>, [u8; MIN_UNIQUE_ID]) {
    let unique_id: [u8; MIN_UNIQUE_ID] = random::bytes();
    let mut packet = header.to_vec();
    push_field(&mut packet, UNIQUE_IDENTIFIER, &unique_id);
    push_field(&mut packet, COOKIE, cookie);
    for _ in 0..placeholders {
        push_field(&mut packet, COOKIE_PLACEHOLDER, &vec![0; cookie.len()]);
    }
    let nonce: [u8; NONCE_LEN] = random::bytes();
    let mut cipher = Aes128Siv::new_from_slice(&keys.c2s).expect("a 32-byte key");
    let tag = cipher.encrypt([&packet[..], &nonce[..]], &[]).expect("sealing");
    let mut body = Vec::with_capacity(4 + NONCE_LEN + TAG_LEN);
    body.extend_from_slice(&(NONCE_LEN as u16).to_be_bytes());
    body.extend_from_slice(&(tag.len() as u16).to_be_bytes());
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&tag);
    push_field(&mut packet, AUTHENTICATOR, &body);
    (packet, unique_id)
}

/// Why a client does not use a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// An NTS NAK: the server no longer opens these cookies; a new NTS-KE is needed.
    Nak,
    /// Not authentic, or not a reply to this request: as if it never came.
    Invalid,
}

/// Checks a reply to a protected request (identifier `unique_id`) with the server-to-client
/// key: the fresh cookies it brings.
pub fn verify_reply(
    reply: &[u8],
    unique_id: &[u8],
    keys: &SessionKeys,
) -> Result<Vec<Vec<u8>>, ReplyError> {
    let fields = fields(reply, HEADER_LEN).ok_or(ReplyError::Invalid)?;
    let echoed = fields.iter().any(|f| f.kind == UNIQUE_IDENTIFIER && f.body == unique_id);
    if !echoed {
        return Err(ReplyError::Invalid);
    }
    let kiss = &reply[12..16];
    if reply[1] == 0 && kiss == b"NTSN" {
        return Err(ReplyError::Nak);
    }
    let Some(authenticator) = fields.last().filter(|f| f.kind == AUTHENTICATOR) else {
        return Err(ReplyError::Invalid);
    };
    let body = authenticator.body;
    let header = body.get(..4).ok_or(ReplyError::Invalid)?;
    let nonce_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let ciphertext_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if ciphertext_len < TAG_LEN || body.len() < 4 + padded(nonce_len) + padded(ciphertext_len) {
        return Err(ReplyError::Invalid);
    }
    let nonce = &body[4..4 + nonce_len];
    let ciphertext = &body[4 + padded(nonce_len)..4 + padded(nonce_len) + ciphertext_len];
    let mut cipher = Aes128Siv::new_from_slice(&keys.s2c).expect("a 32-byte key");
    let plaintext = cipher
        .decrypt([&reply[..authenticator.start], nonce], ciphertext)
        .map_err(|_| ReplyError::Invalid)?;
    let cookies = fields_of_plaintext(&plaintext).ok_or(ReplyError::Invalid)?;
    Ok(cookies.iter().filter(|f| f.kind == COOKIE).map(|f| f.body.to_vec()).collect())
}

/// An NTS NAK's extension fields after its kiss-o'-death header: the identifier alone.
pub fn nak(header: &[u8; HEADER_LEN], unique_id: &[u8]) -> Vec<u8> {
    let mut reply = header.to_vec();
    push_field(&mut reply, UNIQUE_IDENTIFIER, unique_id);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nts::KEY_LEN;

    fn session() -> SessionKeys {
        SessionKeys { c2s: [3; KEY_LEN], s2c: [4; KEY_LEN] }
    }

    /// A request as chrony's client builds one: header, identifier, cookie, placeholders,
    /// authenticator (nonce 16, no encrypted fields).
    fn client_request(ring: &KeyRing, placeholders: usize) -> Vec<u8> {
        let mut packet = vec![0u8; HEADER_LEN];
        packet[0] = 0x23; // NTPv4, client
        push_field(&mut packet, UNIQUE_IDENTIFIER, &[9; 32]);
        let cookie = ring.seal(&session());
        push_field(&mut packet, COOKIE, &cookie);
        for _ in 0..placeholders {
            push_field(&mut packet, COOKIE_PLACEHOLDER, &[0; COOKIE_LEN]);
        }
        let nonce = [5u8; NONCE_LEN];
        let mut cipher = Aes128Siv::new_from_slice(&session().c2s).unwrap();
        let tag = cipher.encrypt([&packet[..], &nonce[..]], &[]).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&(NONCE_LEN as u16).to_be_bytes());
        body.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&tag);
        push_field(&mut packet, AUTHENTICATOR, &body);
        packet
    }

    /// What the client finds in a reply: the identifier and the cookies, after checking the
    /// authenticator with the server-to-client key.
    fn client_reads(reply: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let fields = fields(reply, HEADER_LEN).expect("fields");
        assert_eq!(fields.len(), 2);
        let auth = &fields[1];
        assert_eq!(auth.kind, AUTHENTICATOR);
        let nonce_len = usize::from(u16::from_be_bytes([auth.body[0], auth.body[1]]));
        let ct_len = usize::from(u16::from_be_bytes([auth.body[2], auth.body[3]]));
        let nonce = &auth.body[4..4 + nonce_len];
        let ct = &auth.body[4 + padded(nonce_len)..4 + padded(nonce_len) + ct_len];
        let mut cipher = Aes128Siv::new_from_slice(&session().s2c).unwrap();
        let plaintext = cipher.decrypt([&reply[..auth.start], nonce], ct).expect("authentic");
        let cookies = fields_of_plaintext(&plaintext)
            .unwrap()
            .iter()
            .map(|f| {
                assert_eq!(f.kind, COOKIE);
                f.body.to_vec()
            })
            .collect();
        (fields[0].body.to_vec(), cookies)
    }

    #[test]
    fn a_reply_is_as_long_as_its_request_and_brings_a_cookie_for_each_placeholder() {
        let ring = KeyRing::generate();
        for placeholders in [0, 1, 7] {
            let packet = client_request(&ring, placeholders);
            let request = open(&packet, &ring).expect("authentic");
            assert_eq!(request.cookies_wanted, placeholders + 1);
            let cookies = cookies_for(&request, packet.len(), &ring);
            let reply = seal_reply(&[1; HEADER_LEN], &request, cookies, packet.len());
            assert_eq!(reply.len(), packet.len());
            let (unique_id, cookies) = client_reads(&reply);
            assert_eq!(unique_id, [9; 32]);
            assert_eq!(cookies.len(), placeholders + 1);
            assert!(cookies.iter().all(|c| ring.open(c) == Some(session())));
        }
        // A request too short for the cookies it asks for gets fewer, never a longer reply.
        let packet = client_request(&ring, 3);
        let request = open(&packet, &ring).unwrap();
        let short = packet.len() - 200;
        let reply =
            seal_reply(&[1; HEADER_LEN], &request, cookies_for(&request, short, &ring), short);
        assert!(reply.len() <= short);
        assert_eq!(client_reads(&reply).1.len(), 2);
    }

    #[test]
    fn a_client_protects_its_requests_and_verifies_the_replies() {
        let ring = KeyRing::generate();
        let cookie = ring.seal(&session());
        let (packet, unique_id) = protect(&[0x23; HEADER_LEN], &cookie, 2, &session());
        let request = open(&packet, &ring).expect("the server accepts it");
        assert_eq!((request.unique_id, request.cookies_wanted), (&unique_id[..], 3));
        let cookies = cookies_for(&request, packet.len(), &ring);
        let reply = seal_reply(&[0x24; HEADER_LEN], &request, cookies, packet.len());
        let fresh = verify_reply(&reply, &unique_id, &session()).expect("authentic");
        assert_eq!(fresh.len(), 3);
        assert!(fresh.iter().all(|c| ring.open(c) == Some(session())));
        // Another request's reply, a changed byte, another key: not used.
        assert_eq!(verify_reply(&reply, &[0; 32], &session()), Err(ReplyError::Invalid));
        let mut tampered = reply.clone();
        tampered[40] ^= 1;
        assert_eq!(verify_reply(&tampered, &unique_id, &session()), Err(ReplyError::Invalid));
        let other = SessionKeys { c2s: [3; KEY_LEN], s2c: [9; KEY_LEN] };
        assert_eq!(verify_reply(&reply, &unique_id, &other), Err(ReplyError::Invalid));
        // A NAK for this request.
        let mut kiss = [0u8; HEADER_LEN];
        kiss[12..16].copy_from_slice(b"NTSN");
        assert_eq!(
            verify_reply(&nak(&kiss, &unique_id), &unique_id, &session()),
            Err(ReplyError::Nak)
        );
    }

    #[test]
    fn bad_requests_get_no_reply_or_a_nak() {
        let ring = KeyRing::generate();
        let packet = client_request(&ring, 1);
        let uid = &[9u8; 32][..];
        // The authenticator's tag, or anything before it, changed: a NAK.
        for at in [10, HEADER_LEN + 8, packet.len() - 1] {
            let mut tampered = packet.clone();
            tampered[at] ^= 1;
            assert!(matches!(open(&tampered, &ring), Err(Rejected::Nak { .. })), "byte {at}");
        }
        // A cookie of a key rotated out: a NAK with the identifier.
        let mut rotated = ring.clone();
        for _ in 0..crate::nts::cookie::KEPT {
            rotated.rotate();
        }
        assert_eq!(open(&packet, &rotated).unwrap_err(), Rejected::Nak { unique_id: uid });
        // Truncated in a field, or a field longer than the datagram: not NTS.
        assert_eq!(open(&packet[..packet.len() - 2], &ring).unwrap_err(), Rejected::NotNts);
        let mut oversized = packet.clone();
        oversized[HEADER_LEN + 3] = 0xfc;
        assert_eq!(open(&oversized, &ring).unwrap_err(), Rejected::NotNts);
        assert_eq!(open(&packet[..HEADER_LEN], &ring).unwrap_err(), Rejected::NotNts);
        // The authenticator not last, or missing: malformed.
        let mut trailing = packet.clone();
        push_field(&mut trailing, 0x2000, &[0; 12]);
        assert_eq!(open(&trailing, &ring).unwrap_err(), Rejected::Malformed);
        let auth_start = packet.len() - (4 + 4 + NONCE_LEN + TAG_LEN);
        assert_eq!(open(&packet[..auth_start], &ring).unwrap_err(), Rejected::Malformed);
        // A short identifier, or a placeholder of another length than the cookie: malformed.
        let mut short_uid = packet.clone();
        short_uid[HEADER_LEN + 3] = 4 + 28;
        assert!(open(&short_uid, &ring).is_err());
    }
}
