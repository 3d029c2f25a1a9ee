//! Leap seconds from the IETF/IERS leap-seconds.list file (the one tzdata ships beside
//! `right/UTC`): the TAI - UTC offset at any time, and the leap due at the end of today.

use ntp_common::wire::{Leap, UNIX_EPOCH_NTP_SECONDS};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeapTable {
    /// (Unix time a new offset starts, TAI - UTC from then), in order.
    entries: Vec<(i64, i32)>,
    /// Unix time after which the table says nothing more.
    expires: Option<i64>,
}

/// The file tzdata installs.
pub const TZDATA_LEAP_SECONDS: &str = "/usr/share/zoneinfo/leap-seconds.list";

impl LeapTable {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut table = Self::default();
        for (number, line) in text.lines().enumerate() {
            if let Some(expiry) = line.strip_prefix("#@") {
                let unix = unix_of_ntp_seconds(expiry.trim())
                    .ok_or_else(|| format!("line {}: bad expiry", number + 1))?;
                table.expires = Some(unix);
                continue;
            }
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(at), Some(offset)) = (fields.next(), fields.next()) else {
                return Err(format!("line {}: expected NTP seconds and an offset", number + 1));
            };
            let at =
                unix_of_ntp_seconds(at).ok_or_else(|| format!("line {}: bad time", number + 1))?;
            let offset: i32 =
                offset.parse().map_err(|_| format!("line {}: bad offset", number + 1))?;
            table.entries.push((at, offset));
        }
        if table.entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("entries out of order".into());
        }
        Ok(table)
    }

    /// TAI - UTC at Unix time `t` (seconds).
    pub fn tai_offset(&self, t: i64) -> Option<i32> {
        self.entries.iter().rev().find(|(at, _)| *at <= t).map(|(_, offset)| *offset)
    }

    /// The leap at the end of the UTC day containing `t`, if any: `InsertSecond` when the
    /// offset grows at the next midnight, `DeleteSecond` when it shrinks.
    pub fn leap_today(&self, t: i64) -> Leap {
        let midnight = (t.div_euclid(86_400) + 1) * 86_400;
        match (self.tai_offset(midnight - 1), self.tai_offset(midnight)) {
            (Some(before), Some(after)) if after > before => Leap::InsertSecond,
            (Some(before), Some(after)) if after < before => Leap::DeleteSecond,
            _ => Leap::NoWarning,
        }
    }

    pub fn has_expired(&self, t: i64) -> bool {
        self.expires.is_some_and(|expires| t > expires)
    }
}

/// Unix time of the file's NTP seconds (since 1900, never negative; at most 2^40, some
/// thirty thousand years, so that no arithmetic on it can overflow).
fn unix_of_ntp_seconds(text: &str) -> Option<i64> {
    let ntp: u64 = text.parse().ok().filter(|ntp| *ntp < 1 << 40)?;
    Some(ntp as i64 - UNIX_EPOCH_NTP_SECONDS as i64)
}

/// The next UTC midnight after Unix time `t`, where a leap takes effect.
pub fn next_midnight(t: i64) -> i64 {
    (t.div_euclid(86_400) + 1) * 86_400
}

/// Whether a leap second may end the UTC day containing Unix time `t`: the last day of June or
/// December. The standard allows any month's end, but only these have ever been used, and
/// chrony ignores an announcement on any other day, so a wrong LI bit cannot move the clock.
pub fn is_leap_day(t: i64) -> bool {
    let (_, month, day) = civil_date(t.div_euclid(86_400) + 1);
    day == 1 && (month == 1 || month == 7)
}

/// Whether a leap second could have happened between Unix times `from` and `to` (a midnight
/// ending a leap day lies in `(from, to]`).
pub fn leap_between(from: i64, to: i64) -> bool {
    let mut midnight = next_midnight(from);
    while midnight <= to {
        if is_leap_day(midnight - 1) {
            return true;
        }
        midnight += 86_400;
    }
    false
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01, in the proleptic Gregorian
/// calendar (computed in 400-year eras).
pub fn civil_date(days_since_epoch: i64) -> (i64, i64, i64) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "#\tsome comment\n#$\t3676924800\n#@\t3991593600\n\
        2272060800\t10\t# 1 Jan 1972\n\
        3644697600\t36\t# 1 Jul 2015\n\
        3692217600\t37\t# 1 Jan 2017\n";

    #[test]
    fn reads_the_offsets_and_the_leaps() {
        let table = LeapTable::parse(LIST).unwrap();
        // 2016-12-31 12:00 UTC: a leap at midnight, 36 s until then.
        let eve = 1_483_185_600;
        assert_eq!(table.tai_offset(eve), Some(36));
        assert_eq!(table.leap_today(eve), Leap::InsertSecond);
        assert_eq!(table.tai_offset(eve + 86_400), Some(37));
        assert_eq!(table.leap_today(eve + 86_400), Leap::NoWarning);
        assert_eq!(next_midnight(eve), 1_483_228_800);
        assert!(!table.has_expired(1_700_000_000));
        assert!(table.has_expired(1_900_000_000));
    }

    #[test]
    fn the_installed_table_is_readable() {
        let text = std::fs::read_to_string(TZDATA_LEAP_SECONDS)
            .expect("tzdata's leap-seconds.list (cargo xtask setup installs tzdata)");
        let table = LeapTable::parse(&text).unwrap();
        assert_eq!(table.tai_offset(1_795_660_000), Some(37));
    }

    #[test]
    fn leaps_are_taken_only_at_the_end_of_june_and_december() {
        const DAY: i64 = 86_400;
        let new_year_2027 = 1_798_761_600;
        assert_eq!(civil_date(new_year_2027 / DAY), (2027, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert!(is_leap_day(new_year_2027 - 1));
        assert!(is_leap_day(new_year_2027 - DAY));
        assert!(!is_leap_day(new_year_2027));
        assert!(!is_leap_day(new_year_2027 - DAY - 1));
        // 2026-06-30 is one, 2026-11-30 (a month's end) is not.
        assert!(is_leap_day(1_782_863_999));
        assert!(!is_leap_day(1_796_083_199));
        assert!(leap_between(new_year_2027 - 10, new_year_2027));
        assert!(!leap_between(new_year_2027, new_year_2027 + 10));
        assert!(leap_between(new_year_2027 - 3 * DAY, new_year_2027 + 3 * DAY));
        assert!(!leap_between(new_year_2027 + DAY, new_year_2027 + 100 * DAY));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(LeapTable::parse("2272060800\n").is_err());
        // Found by the fuzz target: times out of any range are errors, not overflows.
        assert!(LeapTable::parse("-9223372036854775808 10\n").is_err());
        assert!(LeapTable::parse("#@ 99999999999999999999\n").is_err());
        assert!(LeapTable::parse("3692217600 37\n2272060800 10\n").is_err());
    }
}
