//! Cookies: a client's keys, sealed with a server key, so that the server keeps no state per
//! client. A cookie is the server key's ID (4 bytes), a random nonce (16) and the sealed keys
//! (AES-SIV-CMAC-256 over both keys, with the ID and nonce as associated data: 64 + 16 bytes),
//! 100 bytes in all.
//!
//! The server keys rotate (`ntsrotate`); the last [`KEPT`] are kept so that a client's cookies
//! outlive a rotation or two. They are kept in a file, so that a restart keeps clients working
//! and several servers behind one name can share them (with `ntsrotate 0`, where none of them
//! rotates). Or, in a fleet (`ntsmastersecret`), every server derives the same keys from one
//! master secret: a key per period, named by the period's number, rotating by the calendar
//! with no file to share and no coordination.

use std::{fmt::Write as _, time::SystemTime};

use aes_siv::{aead::KeyInit as _, siv::Aes128Siv};
use hkdf::Hkdf;
use sha2::Sha256;

use super::{KEY_LEN, SessionKeys};
use crate::random;

/// Server keys kept: the current one and two before it.
pub const KEPT: usize = 3;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// A cookie's length.
pub const COOKIE_LEN: usize = 4 + NONCE_LEN + 2 * KEY_LEN + TAG_LEN;

#[derive(Clone, PartialEq, Eq)]
struct ServerKey {
    id: u32,
    key: [u8; KEY_LEN],
}

impl ServerKey {
    fn generate() -> Self {
        Self { id: u32::from_be_bytes(random::bytes()), key: random::bytes() }
    }

    fn cipher(&self) -> Aes128Siv {
        Aes128Siv::new_from_slice(&self.key).expect("a 32-byte key")
    }
}

/// The server keys, newest first, and when the newest was made (Unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<ServerKey>,
    pub newest_since: u64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|k| format!("{:08x}", k.id)).collect();
        write!(f, "KeyRing({})", ids.join(", "))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KeyRing {
    /// One fresh key.
    pub fn generate() -> Self {
        Self { keys: vec![ServerKey::generate()], newest_since: unix_now() }
    }

    /// Seconds since the newest key was made.
    pub fn newest_age_s(&self) -> u64 {
        unix_now().saturating_sub(self.newest_since)
    }

    /// A fresh key in front; the oldest beyond [`KEPT`] forgotten (its cookies with it).
    pub fn rotate(&mut self) {
        self.keys.insert(0, ServerKey::generate());
        self.keys.truncate(KEPT);
        self.newest_since = unix_now();
    }

    /// A cookie carrying `keys`, sealed with the newest server key.
    pub fn seal(&self, keys: &SessionKeys) -> [u8; COOKIE_LEN] {
        let server_key = &self.keys[0];
        let id = server_key.id.to_be_bytes();
        let nonce: [u8; NONCE_LEN] = random::bytes();
        let mut plaintext = [0u8; 2 * KEY_LEN];
        plaintext[..KEY_LEN].copy_from_slice(&keys.c2s);
        plaintext[KEY_LEN..].copy_from_slice(&keys.s2c);
        let sealed =
            server_key.cipher().encrypt([&id[..], &nonce[..]], &plaintext).expect("sealing");
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[..4].copy_from_slice(&id);
        cookie[4..4 + NONCE_LEN].copy_from_slice(&nonce);
        cookie[4 + NONCE_LEN..].copy_from_slice(&sealed);
        cookie
    }

    /// The keys a cookie carries; None for a cookie of no key kept, or not sealed by it.
    pub fn open(&self, cookie: &[u8]) -> Option<SessionKeys> {
        if cookie.len() != COOKIE_LEN {
            return None;
        }
        let (id, rest) = cookie.split_at(4);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id_value = u32::from_be_bytes(id.try_into().expect("4 bytes"));
        let server_key = self.keys.iter().find(|k| k.id == id_value)?;
        let plaintext = server_key.cipher().decrypt([id, nonce], sealed).ok()?;
        let (c2s, s2c) = plaintext.split_at(KEY_LEN);
        Some(SessionKeys { c2s: c2s.try_into().ok()?, s2c: s2c.try_into().ok()? })
    }

    /// The key file's text: a comment, when the newest key was made, then one key a line
    /// (ID and key in hex), newest first.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# ntpxd's NTS server keys, newest first. Secret: whoever has them can read every \
             client's keys.\n",
        );
        writeln!(text, "since {}", self.newest_since).expect("a String");
        for key in &self.keys {
            let hex: String = key.key.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(text, "{:08x} {hex}", key.id).expect("a String");
        }
        text
    }

    /// Reads a key file's text (see [`KeyRing::to_text`]); an error names the line.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| !line.starts_with('#') && !line.is_empty());
        let (number, since) = lines.next().ok_or("no `since` line")?;
        let newest_since = since
            .strip_prefix("since ")
            .and_then(|since| since.trim().parse().ok())
            .ok_or(format!("line {number}: not `since SECONDS`"))?;
        let keys = lines
            .map(|(number, line)| {
                let key_line = || -> Result<ServerKey, String> {
                    let (id, key) = line.split_once(' ').ok_or("not an ID and a key")?;
                    let id = parse_hex::<4>(id).ok_or(format!("bad key ID {id:?}"))?;
                    let key = parse_hex::<KEY_LEN>(key.trim())
                        .ok_or(format!("the key is not {KEY_LEN} bytes of hex"))?;
                    Ok(ServerKey { id: u32::from_be_bytes(id), key })
                };
                key_line().map_err(|error| format!("line {number}: {error}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(Self { keys, newest_since })
    }
}

/// The shortest master secret taken: as long as the keys derived from it.
pub const MIN_MASTER_SECRET_LEN: usize = KEY_LEN;
/// Periods before the current one whose keys still open cookies (a client's cookies outlive
/// two rotations, as with a key file), and after it (a server whose clock is ahead of this
/// one's, or that rotated first, seals under the next period's key).
const PAST_PERIODS: u64 = 2;
const FUTURE_PERIODS: u64 = 1;

impl KeyRing {
    /// The fleet's keys at Unix time `now_s`: HKDF-SHA256 of the master secret, one key for
    /// each `period_s`-second period counted from the epoch (its number is the key's ID);
    /// cookies are sealed under the current period's and opened under the two before it, it,
    /// and the next one. Every server with the same secret and period derives the same ring.
    pub fn derived(master_secret: &[u8], period_s: u64, now_s: u64) -> Self {
        let period_s = period_s.max(1);
        let current = now_s / period_s;
        let hkdf = Hkdf::<Sha256>::new(Some(b"ntpx NTS cookie keys"), master_secret);
        let key = |period: u64| {
            let mut info = [0u8; 16];
            info[..8].copy_from_slice(&period_s.to_be_bytes());
            info[8..].copy_from_slice(&period.to_be_bytes());
            let mut key = [0u8; KEY_LEN];
            hkdf.expand(&info, &mut key).expect("32 bytes are a valid HKDF-SHA256 length");
            ServerKey { id: period as u32, key }
        };
        // The current period's key first: it seals.
        let periods = std::iter::once(current)
            .chain((1..=FUTURE_PERIODS).map(|ahead| current + ahead))
            .chain((1..=PAST_PERIODS).filter_map(|back| current.checked_sub(back)));
        Self { keys: periods.map(key).collect(), newest_since: current * period_s }
    }
}

/// `N` bytes written as exactly `2 * N` hex digits.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_servers_open_each_others_cookies_across_periods_and_nobody_elses() {
        let secret = [7u8; 32];
        const DAY: u64 = 86_400;
        let now = 1_796_000_000;
        let sealed = KeyRing::derived(&secret, DAY, now).seal(&keys());
        // Another server with the secret: the same day, a day or two later, and the day
        // before (its clock behind this one's across midnight).
        for later in [0, 1, DAY, 2 * DAY] {
            let ring = KeyRing::derived(&secret, DAY, now + later);
            assert_eq!(ring.open(&sealed).map(|k| k.c2s), Some(keys().c2s), "+{later} s");
        }
        let yesterday = KeyRing::derived(&secret, DAY, now - DAY);
        assert!(yesterday.open(&sealed).is_some(), "a server still on the previous day");
        // Three days on, or another secret, or another period: refused.
        assert!(KeyRing::derived(&secret, DAY, now + 3 * DAY).open(&sealed).is_none());
        assert!(KeyRing::derived(&[8u8; 32], DAY, now).open(&sealed).is_none());
        assert!(KeyRing::derived(&secret, DAY / 2, now).open(&sealed).is_none());
        // The key's ID is the day's number, and the ring starts at the day's start.
        let ring = KeyRing::derived(&secret, DAY, now);
        assert_eq!(&sealed[..4], &((now / DAY) as u32).to_be_bytes());
        assert_eq!(ring.newest_since, now / DAY * DAY);
    }

    fn keys() -> SessionKeys {
        SessionKeys { c2s: [1; KEY_LEN], s2c: [2; KEY_LEN] }
    }

    #[test]
    fn a_cookie_opens_with_its_key_until_that_key_is_rotated_out() {
        let mut ring = KeyRing::generate();
        let cookie = ring.seal(&keys());
        assert_eq!(ring.open(&cookie), Some(keys()));
        // Cookies differ (a fresh nonce each), and hide the keys.
        assert_ne!(ring.seal(&keys()), cookie);
        assert!(!cookie.windows(KEY_LEN).any(|w| w == [1; KEY_LEN]));
        for _ in 1..KEPT {
            ring.rotate();
            assert_eq!(ring.open(&cookie), Some(keys()));
        }
        ring.rotate();
        assert_eq!(ring.open(&cookie), None, "a key rotated out still opens cookies");
    }

    #[test]
    fn a_tampered_or_foreign_cookie_does_not_open() {
        let ring = KeyRing::generate();
        let cookie = ring.seal(&keys());
        for at in [0, 5, 30, COOKIE_LEN - 1] {
            let mut tampered = cookie;
            tampered[at] ^= 1;
            assert_eq!(ring.open(&tampered), None, "byte {at}");
        }
        assert_eq!(ring.open(&cookie[..COOKIE_LEN - 1]), None);
        assert_eq!(KeyRing::generate().open(&cookie), None);
    }

    #[test]
    fn the_key_file_gives_the_same_keys_back() {
        let mut ring = KeyRing::generate();
        ring.rotate();
        let text = ring.to_text();
        let read = KeyRing::from_text(&text).unwrap();
        assert_eq!(read, ring);
        // Another server reading the file opens this one's cookies.
        assert_eq!(read.open(&ring.seal(&keys())), Some(keys()));
        assert!(KeyRing::from_text("since 1\n").is_err());
    }

    #[test]
    fn a_bad_key_file_is_an_error_naming_the_line_never_a_panic() {
        let key = "00".repeat(KEY_LEN);
        let error = |text: &str| KeyRing::from_text(text).unwrap_err();
        assert_eq!(
            error("# keys\nsince 1\n\n0000000a 00\n"),
            "line 4: the key is not 32 bytes of hex"
        );
        // A non-ASCII character where a hex digit goes, the length in bytes right: no panic.
        let accented = format!("0é{}", &key[3..]);
        assert_eq!(accented.len(), 2 * KEY_LEN);
        assert_eq!(
            error(&format!("since 1\n0000000a {accented}\n")),
            "line 2: the key is not 32 bytes of hex"
        );
        assert_eq!(error(&format!("since 1\n0000000é {key}\n")), "line 2: bad key ID \"0000000é\"");
        assert_eq!(error("since x\n"), "line 1: not `since SECONDS`");
        assert_eq!(error(&format!("since 1\n0000000a{key}\n")), "line 2: not an ID and a key");
        assert!(KeyRing::from_text(&format!("since 1\n0000000a {key}\n")).is_ok());
    }
}
