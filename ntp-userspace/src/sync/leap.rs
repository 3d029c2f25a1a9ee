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
                let ntp: i64 = expiry
                    .trim()
                    .parse()
                    .map_err(|_| format!("line {}: bad expiry", number + 1))?;
                table.expires = Some(ntp - UNIX_EPOCH_NTP_SECONDS as i64);
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
            let at: i64 = at.parse().map_err(|_| format!("line {}: bad time", number + 1))?;
            let offset: i32 =
                offset.parse().map_err(|_| format!("line {}: bad offset", number + 1))?;
            table.entries.push((at - UNIX_EPOCH_NTP_SECONDS as i64, offset));
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

/// The next UTC midnight after Unix time `t`, where a leap takes effect.
pub fn next_midnight(t: i64) -> i64 {
    (t.div_euclid(86_400) + 1) * 86_400
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
    fn the_installed_table_is_readable_where_there_is_one() {
        if let Ok(text) = std::fs::read_to_string(TZDATA_LEAP_SECONDS) {
            let table = LeapTable::parse(&text).unwrap();
            assert_eq!(table.tai_offset(1_795_660_000), Some(37));
        }
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(LeapTable::parse("2272060800\n").is_err());
        assert!(LeapTable::parse("3692217600 37\n2272060800 10\n").is_err());
    }
}
