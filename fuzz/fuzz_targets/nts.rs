//! NTS's extension fields: any datagram is refused, NAKed or answered, never with a reply
//! longer than itself, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_userspace::nts::{
    cookie::KeyRing,
    packet::{self, Rejected},
};

const KEYS: &str = "since 0\n0000002a 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

fuzz_target!(|data: &[u8]| {
    let keys = KeyRing::from_text(KEYS).expect("the fixed key");
    let reply = match packet::open(data, &keys) {
        Ok(request) => {
            let cookies = packet::cookies_for(&request, data.len(), &keys);
            packet::seal_reply(&[0; 48], &request, cookies, data.len())
        }
        Err(Rejected::Nak { unique_id }) => packet::nak(&[0; 48], unique_id),
        Err(Rejected::NotNts | Rejected::Malformed) => return,
    };
    assert!(reply.len() <= data.len(), "a {}-byte reply to {} bytes", reply.len(), data.len());
});
