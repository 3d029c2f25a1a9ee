//! The client log and rate limiting of chrony's `ratelimit` directive, shared by the XDP program
//! and the slow path so that both limit a client alike.
//!
//! Behaviour (chrony's clientlog): each client has a token bucket. A request spends
//! `tokens_per_hit`; tokens come back at one per 1/16 s (scaled by `token_shift`) up to
//! `burst` requests' worth. Without enough tokens a request is dropped, except that 1 in 2^leak
//! is still answered (so a spoofed flood cannot cut a client off), and with `kod` 1 in 2^kod of
//! the limited ones gets a RATE kiss-o'-death instead. The record also estimates the client's
//! request interval (`rate`, log2 seconds scaled by 4) and, separately, the interval while it is
//! being dropped (`timeout_rate`): a client that speeds up when not answered is answered instead,
//! to cut the traffic it causes.
//!
//! Time is counted in 1/16 s from an epoch the daemon sets, as 32-bit values that wrap.

use bytemuck::{Pod, Zeroable};

/// Fraction bits of record timestamps: they count 1/16 s.
pub const TIMESTAMP_FRACTION_BITS: i32 = 4;
/// Rates are log2 intervals scaled by 4.
const RATE_SCALE: i32 = 4;
const MIN_RATE: i32 = -14 * RATE_SCALE;
/// A rate not yet estimated.
pub const INVALID_RATE: i8 = -128;
/// A timestamp not yet set.
pub const INVALID_TIMESTAMP: u32 = 0;

const MIN_INTERVAL: i32 = -15 - TIMESTAMP_FRACTION_BITS;
const MAX_INTERVAL: i32 = 12;
const MAX_BURST: i32 = 255;
const MAX_LEAK: i32 = 4;
const MAX_KOD: i32 = 4;

/// The `ratelimit` parameters as token bucket constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RateLimit {
    pub max_tokens: u16,
    /// 0: no rate limiting (requests are still logged).
    pub tokens_per_hit: u16,
    /// Tokens are added per 2^token_shift timestamp units (negative: coarse limiting).
    pub token_shift: i8,
    /// 1 in 2^leak limited requests is answered anyway.
    pub leak: u8,
    /// 1 in 2^kod limited requests gets a RATE kiss-o'-death; 0: none.
    pub kod: u8,
    /// The configured minimum interval, log2 s: replies carry at least this poll.
    pub interval: i8,
}

const _: () = assert!(size_of::<RateLimit>() == 8);

impl RateLimit {
    pub const DISABLED: Self = Self {
        max_tokens: 0,
        tokens_per_hit: 0,
        token_shift: 0,
        leak: 0,
        kod: 0,
        interval: MIN_INTERVAL as i8,
    };

    /// The bucket for `ratelimit interval L burst B leak K kod K`, values clamped as chrony
    /// clamps them.
    pub const fn new(interval: i32, burst: i32, leak: i32, kod: i32) -> Self {
        let interval = clamp(interval, MIN_INTERVAL, MAX_INTERVAL);
        let mut burst = clamp(burst, 1, MAX_BURST);
        let mut shift = 0;
        if interval >= -TIMESTAMP_FRACTION_BITS {
            // The smallest shift with which the bucket fits in 16 bits.
            while shift < interval + TIMESTAMP_FRACTION_BITS {
                if burst << (TIMESTAMP_FRACTION_BITS + interval - shift) < 1 << 16 {
                    break;
                }
                shift += 1;
            }
        } else {
            // Intervals below 1/16 s: several tokens per timestamp unit.
            shift = interval + TIMESTAMP_FRACTION_BITS;
            if burst < 1 << -shift {
                burst = 1 << -shift;
            }
        }
        let tokens_per_hit = 1 << (TIMESTAMP_FRACTION_BITS + interval - shift);
        Self {
            max_tokens: (tokens_per_hit * burst) as u16,
            tokens_per_hit: tokens_per_hit as u16,
            token_shift: shift as i8,
            leak: clamp(leak, 1, MAX_LEAK) as u8,
            kod: clamp(kod, 0, MAX_KOD) as u8,
            interval: interval as i8,
        }
    }

    pub const fn is_enabled(&self) -> bool {
        self.tokens_per_hit != 0
    }

    /// The least poll replies carry: the interval when limiting (as chrony), else none.
    pub const fn min_poll(&self) -> i8 {
        if self.is_enabled() { self.interval } else { i8::MIN }
    }
}

const fn clamp(value: i32, min: i32, max: i32) -> i32 {
    if value < min {
        min
    } else if value > max {
        max
    } else {
        value
    }
}

/// What to do with a logged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Answer,
    Drop,
    /// Answer with a RATE kiss-o'-death.
    KissOfDeath,
}

/// One client's record in the client log (the kernel's LRU table, keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientRecord {
    /// Timestamp of the last request.
    pub last_hit: u32,
    /// Requests logged.
    pub hits: u32,
    /// Requests dropped by rate limiting.
    pub drops: u32,
    /// Kiss-o'-death replies sent.
    pub kods: u32,
    pub tokens: u16,
    /// Estimated request interval (log2 s × 4) while answered.
    pub rate: i8,
    /// Estimated request interval (log2 s × 4) while dropped.
    pub timeout_rate: i8,
    /// Whether the previous request was dropped (1) or not (0).
    pub dropped_last: u32,
    /// The access rules' generation ([`crate::maps::Published::access_generation`]) under
    /// which the XDP program last admitted this client: while it is the one in use, the
    /// program skips the access trie. 0: never (a record the slow path made).
    pub access_generation: u32,
}

const _: () = assert!(size_of::<ClientRecord>() == 28);

impl ClientRecord {
    /// A client seen for the first time: a full bucket, nothing estimated yet.
    pub const fn new(limit: &RateLimit) -> Self {
        Self {
            last_hit: INVALID_TIMESTAMP,
            hits: 0,
            drops: 0,
            kods: 0,
            tokens: limit.max_tokens,
            rate: INVALID_RATE,
            timeout_rate: INVALID_RATE,
            dropped_last: 0,
            access_generation: 0,
        }
    }

    /// Logs a request at `now` (a record timestamp): refills the bucket and updates the
    /// estimated interval.
    #[inline(always)]
    pub fn log(&mut self, now: u32, limit: &RateLimit) {
        let previous = self.last_hit;
        self.last_hit = now;
        self.hits = self.hits.wrapping_add(1);
        let interval = now.wrapping_sub(previous);
        if previous == INVALID_TIMESTAMP || (interval as i32) < 0 {
            return;
        }

        let max_tokens = u32::from(limit.max_tokens);
        let added = if limit.token_shift >= 0 {
            let shift = limit.token_shift as u32;
            (now >> shift).wrapping_sub(previous >> shift)
        } else if interval > max_tokens {
            max_tokens
        } else {
            interval << (-limit.token_shift) as u32
        };
        let tokens = u32::from(self.tokens).saturating_add(added);
        self.tokens = if tokens > max_tokens { max_tokens as u16 } else { tokens as u16 };

        // The interval as a scaled, rounded log2.
        let log_interval = if interval == 0 {
            -RATE_SCALE * (TIMESTAMP_FRACTION_BITS + 1)
        } else {
            let mut remaining = interval + (interval >> 1);
            let mut log_interval = -RATE_SCALE * TIMESTAMP_FRACTION_BITS;
            while log_interval < -MIN_RATE {
                if remaining <= 1 {
                    break;
                }
                remaining >>= 1;
                log_interval += RATE_SCALE;
            }
            log_interval
        };

        // A rough exponential moving average, of the answered or the dropped requests.
        let rate = if self.dropped_last != 0 { &mut self.timeout_rate } else { &mut self.rate };
        let target = -log_interval;
        let current = i32::from(*rate);
        *rate = if *rate == INVALID_RATE {
            target as i8
        } else if current < target {
            (current + 1) as i8
        } else if current > target {
            if current > RATE_SCALE * 5 / 2 + target {
                (RATE_SCALE * 5 / 2 + target) as i8
            } else {
                ((current + target - 1) / 2) as i8
            }
        } else {
            *rate
        };
    }

    /// Decides a logged request's fate. `random` gives random bits when the bucket is short.
    #[inline(always)]
    pub fn limit(&mut self, limit: &RateLimit, mut random: impl FnMut() -> u32) -> Limit {
        if !limit.is_enabled() {
            return Limit::Answer;
        }
        self.dropped_last = 0;
        if self.tokens >= limit.tokens_per_hit {
            self.tokens -= limit.tokens_per_hit;
            return Limit::Answer;
        }
        let mut drop = random() & ((1 << limit.leak) - 1) != 0;
        // A client sending faster while dropped than while answered gets answers instead.
        if self.timeout_rate != INVALID_RATE
            && i32::from(self.timeout_rate) > i32::from(self.rate) + RATE_SCALE
        {
            drop = !drop;
        }
        if !drop {
            self.tokens = 0;
            return Limit::Answer;
        }
        if limit.kod > 0 && random() & ((1 << limit.kod) - 1) == 0 {
            self.kods = self.kods.wrapping_add(1);
            return Limit::KissOfDeath;
        }
        self.dropped_last = 1;
        self.drops = self.drops.wrapping_add(1);
        Limit::Drop
    }
}

/// A record timestamp (1/16 s units, never [`INVALID_TIMESTAMP`]) for `elapsed_ns` since the
/// client log's epoch. Exact to 1e-5 relative for about 8 years.
#[inline(always)]
pub const fn timestamp(elapsed_ns: u64) -> u32 {
    // (elapsed / 64) * (16 * 64 / 1e9 * 2^32) / 2^32
    let units = ((elapsed_ns >> 6).wrapping_mul(4398) >> 32) as u32;
    if units == INVALID_TIMESTAMP { 1 } else { units }
}

/// The record timestamp of the CLOCK_TAI instant `tai_ns`, for a client log whose timestamps
/// count from `epoch_tai_ns` (the XDP program and the daemon share the epoch).
#[inline(always)]
pub const fn timestamp_since(tai_ns: u64, epoch_tai_ns: u64) -> u32 {
    timestamp(tai_ns.wrapping_sub(epoch_tai_ns))
}

/// chronyc's interval column for a rate: log2 seconds, or 127 when unknown.
pub const fn interval_log2(rate: i8) -> i8 {
    if rate == INVALID_RATE {
        return 127;
    }
    let rate = rate as i32;
    let rounded = if rate > 0 { rate + RATE_SCALE / 2 } else { rate - RATE_SCALE / 2 };
    (rounded / -RATE_SCALE) as i8
}

/// Seconds since a timestamp, or `None` if it is unset or in the future.
pub const fn seconds_since(now: u32, then: u32) -> Option<u32> {
    if then == INVALID_TIMESTAMP || (now.wrapping_sub(then) as i32) < 0 {
        None
    } else {
        Some(now.wrapping_sub(then) >> TIMESTAMP_FRACTION_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u32 = 16;

    /// A client sending `count` requests every `step` units from `start`, the random bits
    /// drawn from `random`; what it got.
    fn run(
        limit: &RateLimit,
        record: &mut ClientRecord,
        start: u32,
        step: u32,
        count: u32,
        random: &mut impl FnMut() -> u32,
    ) -> (u32, u32, u32) {
        let (mut answered, mut dropped, mut kods) = (0, 0, 0);
        for i in 0..count {
            record.log(start + i * step, limit);
            match record.limit(limit, &mut *random) {
                Limit::Answer => answered += 1,
                Limit::Drop => dropped += 1,
                Limit::KissOfDeath => kods += 1,
            }
        }
        (answered, dropped, kods)
    }

    fn xorshift(mut state: u32) -> impl FnMut() -> u32 {
        move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        }
    }

    #[test]
    fn buckets_are_chronys() {
        // chrony's default: interval 3 (8 s), burst 8.
        let limit = RateLimit::new(3, 8, 2, 0);
        assert_eq!((limit.tokens_per_hit, limit.max_tokens, limit.token_shift), (128, 1024, 0));
        // A 16-bit overflow is avoided with a shift.
        let limit = RateLimit::new(12, 255, 2, 0);
        assert_eq!(limit.token_shift, 8);
        assert_eq!(limit.tokens_per_hit, 256);
        // Intervals below 1/16 s count several tokens per unit.
        let limit = RateLimit::new(-6, 1, 2, 0);
        assert_eq!((limit.tokens_per_hit, limit.token_shift, limit.max_tokens), (1, -2, 4));
        // Out-of-range values are clamped.
        assert_eq!(RateLimit::new(1, 1000, 9, 9), RateLimit::new(1, 255, 4, 4));
    }

    #[test]
    fn a_burst_is_answered_then_requests_are_limited() {
        let limit = RateLimit::new(1, 4, 4, 0);
        let mut record = ClientRecord::new(&limit);
        let mut never_leak = || 1; // low bits never all zero
        let (answered, dropped, _) = run(&limit, &mut record, 100, 0, 10, &mut never_leak);
        assert_eq!((answered, dropped), (4, 6));
        assert_eq!((record.hits, record.drops), (10, 6));
    }

    #[test]
    fn requests_at_the_interval_are_all_answered() {
        let limit = RateLimit::new(1, 1, 2, 0);
        let mut record = ClientRecord::new(&limit);
        let (answered, dropped, _) = run(&limit, &mut record, 100, 2 * SECOND, 50, &mut || 1);
        assert_eq!((answered, dropped), (50, 0));
        assert_eq!(interval_log2(record.rate), 1, "a 2 s interval is log2 1");
    }

    #[test]
    fn the_leak_answers_one_in_2_to_the_leak_of_limited_requests() {
        let limit = RateLimit::new(4, 1, 2, 0);
        let mut record = ClientRecord::new(&limit);
        // Four requests per second against a 16 s interval: nearly all are limited, but the
        // client is answered no slower than it is dropped, so the leak is not inverted.
        let mut random = xorshift(7);
        let (answered, dropped, _) = run(&limit, &mut record, 100, SECOND / 4, 4000, &mut random);
        let share = f64::from(answered) / f64::from(answered + dropped);
        assert!((0.22..0.28).contains(&share), "answered share {share}");
    }

    #[test]
    fn kod_goes_to_one_in_2_to_the_kod_of_the_limited_ones() {
        let limit = RateLimit::new(4, 1, 4, 1);
        let mut record = ClientRecord::new(&limit);
        let mut random = xorshift(11);
        let (answered, dropped, kods) =
            run(&limit, &mut record, 100, SECOND / 4, 8000, &mut random);
        let limited = f64::from(dropped + kods);
        assert!(
            (0.45..0.55).contains(&(f64::from(kods) / limited)),
            "kod share of {answered}/{dropped}/{kods}"
        );
        assert_eq!(record.kods, kods);
    }

    #[test]
    fn a_client_that_speeds_up_when_dropped_is_answered_until_its_rate_catches_up() {
        let limit = RateLimit::new(3, 1, 4, 0);
        let mut record = ClientRecord::new(&limit);
        // Every 8 s: answered, the rate settles at log2 3.
        run(&limit, &mut record, 100, 8 * SECOND, 20, &mut || 1);
        assert_eq!(interval_log2(record.rate), 3);
        // Then every 1/16 s: once dropped, its timeout rate is far above its answered rate, so
        // it is answered, until the answered rate has climbed to within 2x of it (one step per
        // answer); without the leak that is about 20 answers, against one for a plain bucket.
        let (answered, dropped, _) =
            run(&limit, &mut record, 100 + 20 * 8 * SECOND, 1, 100, &mut || 1);
        assert!((15..40).contains(&answered), "answered {answered}, dropped {dropped}");
        let (answered, _, _) =
            run(&limit, &mut record, 100 + 20 * 8 * SECOND + 100, 1, 100, &mut || 1);
        assert!(answered < 5, "later: answered {answered}");
    }

    #[test]
    fn timestamps_count_sixteenths_of_a_second() {
        assert_eq!(timestamp(0), 1, "never the invalid timestamp");
        assert_eq!(timestamp(1_001_000_000), 16);
        assert_eq!(timestamp(999_000_000), 15);
        assert!((57_598..=57_600).contains(&timestamp(3_600_000_000_000)), "an hour");
        assert_eq!(seconds_since(16 * 100, 16 * 40), Some(60));
        assert_eq!(seconds_since(16, INVALID_TIMESTAMP), None);
        assert_eq!(seconds_since(16, 32), None);
    }

    #[test]
    fn intervals_print_as_chronyc_prints_them() {
        assert_eq!(interval_log2(INVALID_RATE), 127);
        assert_eq!(interval_log2(-24), 6);
        assert_eq!(interval_log2(4), -1);
        assert_eq!(interval_log2(-2), 1, "rounded half away from zero");
    }
}
