//! What may follow the 48-byte header (RFC 7822): extension fields and a MAC, read as chronyd
//! 4.3 reads a request, so that a server answers exactly what chronyd answers.
//!
//! - A datagram is at least a header, a multiple of 4 bytes, and at most [`MAX_PACKET_LEN`].
//! - Before NTPv4 there are no extension fields: anything after the header is a MAC.
//! - In NTPv4, a remainder of 20 to 24 bytes is a MAC (so a last field must be at least 28
//!   bytes long to be told from one), and 4 zero bytes a crypto-NAK, which is a MAC too.
//!   Anything else is a field: a type, a length of at least 16 that is a multiple of 4 and
//!   stays within the datagram, and a body. What follows the fields is nothing, or a MAC of at
//!   least 20 bytes.
//! - Fields of unknown types are skipped: the request is answered as if they were not there.

use crate::wire::HEADER_LEN;

/// The NTS fields (RFC 8915 5.7).
pub mod kind {
    pub const NTS_UNIQUE_IDENTIFIER: u16 = 0x0104;
    pub const NTS_COOKIE: u16 = 0x0204;
    pub const NTS_COOKIE_PLACEHOLDER: u16 = 0x0304;
    pub const NTS_AUTHENTICATOR: u16 = 0x0404;
}

/// The shortest extension field (RFC 7822 7.5).
pub const MIN_FIELD_LEN: usize = 16;
/// The shortest MAC: a key identifier and a 128-bit digest.
pub const MIN_MAC_LEN: usize = 4 + 16;
/// The longest MAC of NTPv4, which keeps fields and MAC apart (RFC 7822 7.5).
pub const MAX_V4_MAC_LEN: usize = 4 + 20;
/// The longest datagram a server reads: a header, 1024 bytes of fields and the longest MAC
/// of any hash (chronyd's limit; longer datagrams are not NTP to it).
pub const MAX_PACKET_LEN: usize = HEADER_LEN + 1024 + 4 + 64;

/// One extension field: its type, its body, and where it starts in the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub kind: u16,
    pub body: &'a [u8],
    pub start: usize,
}

impl Field<'_> {
    /// Where the next field (or the MAC) starts.
    pub fn end(&self) -> usize {
        self.start + 4 + self.body.len()
    }

    pub fn is_nts(&self) -> bool {
        matches!(
            self.kind,
            kind::NTS_UNIQUE_IDENTIFIER
                | kind::NTS_COOKIE
                | kind::NTS_COOKIE_PLACEHOLDER
                | kind::NTS_AUTHENTICATOR
        )
    }
}

/// The field at `start` of `bytes` by RFC 7822's syntax alone: a 4-byte header whose length
/// counts itself, is a multiple of 4 and stays within `bytes`. None if there is none.
pub fn field_at(bytes: &[u8], start: usize) -> Option<Field<'_>> {
    let header = bytes.get(start..start.checked_add(4)?)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if length < 4 || !length.is_multiple_of(4) {
        return None;
    }
    let body = bytes.get(start + 4..start + length)?;
    Some(Field { kind, body, start })
}

/// Consecutive fields from a start to the end of a buffer, by RFC 7822's syntax alone (see
/// [`field_at`]): an NTS reply's fields, or those inside an NTS authenticator. Yields `Err`
/// once, where the bytes stop being fields.
pub fn fields(bytes: &[u8], start: usize) -> impl Iterator<Item = Result<Field<'_>, ()>> {
    let mut at = Some(start);
    core::iter::from_fn(move || {
        let start = at.filter(|&start| start < bytes.len())?;
        let field = field_at(bytes, start);
        at = field.map(|field| field.end());
        Some(field.ok_or(()))
    })
}

/// How a request is authenticated, by what follows its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Nothing, or only fields this server does not need to understand.
    None,
    /// A symmetric-key MAC (or a crypto-NAK).
    Mac,
    /// NTS fields.
    Nts,
}

/// Why the bytes after a header are not a request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a header, not a multiple of 4 bytes, or longer than [`MAX_PACKET_LEN`].
    Length(usize),
    /// An NTPv4 extension field that does not parse, or a remainder too short for a MAC.
    Field,
}

/// What follows a request's header, for a request of `version` (1 to 4): its authentication
/// and how many extension fields it has.
pub fn parse_request(packet: &[u8], version: u8) -> Result<(Authentication, usize), Malformed> {
    let length = packet.len();
    if !(HEADER_LEN..=MAX_PACKET_LEN).contains(&length) || !length.is_multiple_of(4) {
        return Err(Malformed::Length(length));
    }
    if length == HEADER_LEN {
        return Ok((Authentication::None, 0));
    }
    let crypto_nak = length == HEADER_LEN + 4 && packet[HEADER_LEN..] == [0; 4];
    if version < 4 || crypto_nak {
        return Ok((Authentication::Mac, 0));
    }
    let mut authentication = Authentication::None;
    let mut count = 0;
    let mut at = HEADER_LEN;
    while at < length {
        let remainder = length - at;
        // MAC-sized: the rest is a MAC, never a field.
        if (MIN_MAC_LEN..=MAX_V4_MAC_LEN).contains(&remainder) {
            return Ok((Authentication::Mac, count));
        }
        let field = field_at(packet, at)
            .filter(|field| remainder > MAX_V4_MAC_LEN && field.end() - at >= MIN_FIELD_LEN)
            .ok_or(Malformed::Field)?;
        if field.is_nts() {
            authentication = Authentication::Nts;
        }
        count += 1;
        at = field.end();
    }
    Ok((authentication, count))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A version-`version` request with fields of `lengths` (type 0x2005, unknown) and a
    /// trailer of `mac` bytes.
    fn request(version: u8, lengths: &[usize], mac: usize) -> Vec<u8> {
        let mut packet = vec![0u8; HEADER_LEN];
        packet[0] = (version << 3) | 3;
        for &length in lengths {
            packet.extend_from_slice(&0x2005u16.to_be_bytes());
            packet.extend_from_slice(&(length as u16).to_be_bytes());
            packet.resize(packet.len() + length - 4, 0xaa);
        }
        packet.extend((0..mac).map(|i| i as u8 + 1));
        packet
    }

    #[test]
    fn a_plain_header_has_nothing_after_it() {
        assert_eq!(parse_request(&request(4, &[], 0), 4), Ok((Authentication::None, 0)));
    }

    #[test]
    fn unknown_fields_of_at_least_28_bytes_last_are_skipped() {
        assert_eq!(parse_request(&request(4, &[28], 0), 4), Ok((Authentication::None, 1)));
        assert_eq!(parse_request(&request(4, &[900], 0), 4), Ok((Authentication::None, 1)));
        assert_eq!(parse_request(&request(4, &[16, 28], 0), 4), Ok((Authentication::None, 2)));
    }

    #[test]
    fn a_short_last_field_is_a_mac_or_nothing() {
        assert_eq!(parse_request(&request(4, &[20], 0), 4), Ok((Authentication::Mac, 0)));
        assert_eq!(parse_request(&request(4, &[24], 0), 4), Ok((Authentication::Mac, 0)));
        assert_eq!(parse_request(&request(4, &[16], 0), 4), Err(Malformed::Field));
        assert_eq!(parse_request(&request(4, &[28, 16], 0), 4), Err(Malformed::Field));
    }

    #[test]
    fn fields_before_a_mac() {
        assert_eq!(parse_request(&request(4, &[28], 20), 4), Ok((Authentication::Mac, 1)));
        assert_eq!(parse_request(&request(4, &[28], 24), 4), Ok((Authentication::Mac, 1)));
        assert_eq!(parse_request(&request(4, &[16], 24), 4), Ok((Authentication::Mac, 1)));
    }

    #[test]
    fn bad_lengths_are_malformed() {
        let mut zero = request(4, &[28], 0);
        zero[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&[0, 0]);
        assert_eq!(parse_request(&zero, 4), Err(Malformed::Field));
        let mut past = request(4, &[28], 0);
        past[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&32u16.to_be_bytes());
        assert_eq!(parse_request(&past, 4), Err(Malformed::Field));
        let mut unaligned = request(4, &[32], 0);
        unaligned[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(parse_request(&unaligned, 4), Err(Malformed::Field));
        assert_eq!(parse_request(&request(4, &[], 3), 4), Err(Malformed::Length(51)));
        assert_eq!(parse_request(&[0; 44], 4), Err(Malformed::Length(44)));
        let longest = request(4, &[MAX_PACKET_LEN - HEADER_LEN], 0);
        assert_eq!(parse_request(&longest, 4), Ok((Authentication::None, 1)));
        let too_long = request(4, &[MAX_PACKET_LEN - HEADER_LEN + 4], 0);
        assert_eq!(parse_request(&too_long, 4), Err(Malformed::Length(MAX_PACKET_LEN + 4)));
    }

    #[test]
    fn before_ntpv4_anything_after_the_header_is_a_mac() {
        for version in 1..=3 {
            assert_eq!(
                parse_request(&request(version, &[28], 0), version),
                Ok((Authentication::Mac, 0))
            );
        }
    }

    #[test]
    fn four_zero_bytes_are_a_crypto_nak_and_four_others_nothing() {
        let mut nak = request(4, &[], 0);
        nak.extend_from_slice(&[0; 4]);
        assert_eq!(parse_request(&nak, 4), Ok((Authentication::Mac, 0)));
        assert_eq!(parse_request(&request(4, &[], 4), 4), Err(Malformed::Field));
    }

    #[test]
    fn nts_fields_make_an_nts_request() {
        let mut packet = request(4, &[36, 104], 0);
        packet[HEADER_LEN..HEADER_LEN + 2]
            .copy_from_slice(&kind::NTS_UNIQUE_IDENTIFIER.to_be_bytes());
        assert_eq!(parse_request(&packet, 4), Ok((Authentication::Nts, 2)));
    }

    #[test]
    fn fields_stop_where_the_syntax_does() {
        let packet = request(4, &[16, 28], 0);
        let kinds: Vec<_> = fields(&packet, HEADER_LEN).map(|f| f.map(|f| f.body.len())).collect();
        assert_eq!(kinds, [Ok(12), Ok(24)]);
        let mut broken = packet.clone();
        broken[HEADER_LEN + 18] = 0xff;
        let kinds: Vec<_> = fields(&broken, HEADER_LEN).map(|f| f.map(|f| f.body.len())).collect();
        assert_eq!(kinds, [Ok(12), Err(())]);
    }

    /// The outcome a request built of fields of `lengths` and a `mac`-byte trailer must get,
    /// from how it was built rather than by parsing it.
    fn expected(
        version: u8,
        lengths: &[usize],
        mac: usize,
    ) -> Result<(Authentication, usize), Malformed> {
        let total = HEADER_LEN + lengths.iter().sum::<usize>() + mac;
        if total > MAX_PACKET_LEN || !total.is_multiple_of(4) {
            return Err(Malformed::Length(total));
        }
        if total == HEADER_LEN {
            return Ok((Authentication::None, 0));
        }
        if version < 4 {
            return Ok((Authentication::Mac, 0));
        }
        let is_mac_sized = |left| (MIN_MAC_LEN..=MAX_V4_MAC_LEN).contains(&left);
        // Fields are read until what is left is MAC-sized; each one read must be a field (at
        // least 16 bytes, starting with more than a MAC's worth left).
        let mut left = total - HEADER_LEN;
        for (read, &length) in lengths.iter().enumerate() {
            if is_mac_sized(left) {
                return Ok((Authentication::Mac, read));
            }
            if left <= MAX_V4_MAC_LEN || length < MIN_FIELD_LEN {
                return Err(Malformed::Field);
            }
            left -= length;
        }
        // The trailer's bytes (1, 2, 3, ...) never make a field: it is a MAC if MAC-sized.
        match left {
            0 => Ok((Authentication::None, lengths.len())),
            left if is_mac_sized(left) => Ok((Authentication::Mac, lengths.len())),
            _ => Err(Malformed::Field),
        }
    }

    proptest! {
        #[test]
        fn requests_get_the_outcome_their_layout_gives(
            version in 1u8..=4,
            lengths in proptest::collection::vec((1usize..80).prop_map(|n| n * 4), 0..4),
            mac in prop_oneof![Just(0usize), Just(4), Just(16), Just(20), Just(24), Just(68)],
        ) {
            let packet = request(version, &lengths, mac);
            prop_assert_eq!(parse_request(&packet, version), expected(version, &lengths, mac));
        }

        #[test]
        fn never_panics_and_never_reads_past_the_datagram(
            packet in proptest::collection::vec(any::<u8>(), 0..1200),
            version in 0u8..8,
        ) {
            let _ = parse_request(&packet, version);
        }
    }
}
