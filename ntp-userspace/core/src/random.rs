//! Unpredictable bytes from the kernel (getrandom(2)): request timestamps an off-path attacker
//! must not guess, NTS's keys and nonces.

pub fn bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the kernel's random numbers");
    bytes
}

/// 32 unpredictable bits: the draws that let 1 in 2^leak rate-limited requests through.
pub fn next_u32() -> u32 {
    u32::from_ne_bytes(bytes())
}
