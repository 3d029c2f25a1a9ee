//! The Internet checksum (RFC 1071): the one's complement sum of 16-bit words, shared by the
//! XDP program, the benchmark's frame generator and its host side.

/// Folds an unfolded one's complement sum (of up to 2^32 words) to 16 bits. Unrolled, so
/// that the BPF verifier sees no loop.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_every_carry_back_in() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        // The sum of the words of RFC 1071's example, 0001 f203 f4f5 f6f7: ddf2 folded.
        assert_eq!(fold(0x0001 + 0xf203 + 0xf4f5 + 0xf6f7), 0xddf2);
    }
}
