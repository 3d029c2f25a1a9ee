//! Network Time Security (RFC 8915), the server's side: NTS-KE hands a client keys and cookies
//! over TLS ([`ke`]); the cookies carry the keys, sealed with a server key only the server
//! holds ([`cookie`]); the client's NTP requests bring a cookie and are authenticated with the
//! keys it carries, and so are the replies ([`packet`]). Sans-IO: the daemon does the TLS (and
//! reads NTS-KE's messages from it) and the sockets.
//!
//! One AEAD algorithm, AEAD_AES_SIV_CMAC_256 (the one chrony 4.3 asks for), from RustCrypto's
//! `aes-siv`; one next protocol, NTPv4.

pub mod connections;
pub mod cookie;
pub mod ke;
pub mod packet;

/// The AEAD algorithm (IANA's number): AES-SIV-CMAC with two 128-bit keys.
pub const AEAD_AES_SIV_CMAC_256: u16 = 15;
/// The only next protocol: NTPv4.
pub const NEXT_PROTOCOL_NTPV4: u16 = 0;
/// Bytes of one AES-SIV-CMAC-256 key.
pub const KEY_LEN: usize = 32;
/// Cookies a client is given at once (and at most in one reply).
pub const COOKIES: usize = 8;
/// NTS-KE's ALPN protocol ID and the TLS exporter's label for the keys.
pub const ALPN: &[u8] = b"ntske/1";
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";

/// The keys of one client's association: client to server and server to client.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub c2s: [u8; KEY_LEN],
    pub s2c: [u8; KEY_LEN],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// The TLS exporter's context for one direction: the next protocol, the AEAD algorithm,
    /// and 0 for client to server, 1 for server to client.
    pub fn exporter_context(server_to_client: bool) -> [u8; 5] {
        let [p0, p1] = NEXT_PROTOCOL_NTPV4.to_be_bytes();
        let [a0, a1] = AEAD_AES_SIV_CMAC_256.to_be_bytes();
        [p0, p1, a0, a1, u8::from(server_to_client)]
    }
}
