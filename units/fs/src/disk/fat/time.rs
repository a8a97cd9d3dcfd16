//! FAT's dates and times (local time, here taken as UTC) and the clock
//! that stamps them.

/// A FAT date and time: `date = (year − 1980) << 9 | month << 5 | day`,
/// `time = hour << 11 | minute << 5 | second / 2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The date word.
    pub date: u16,
    /// The time word.
    pub time: u16,
}

/// 1980-01-01 00:00:00, FAT's first moment.
pub const EPOCH: Stamp = Stamp { date: (1 << 5) | 1, time: 0 };

static CLOCK: spin::Once<fn() -> Option<u64>> = spin::Once::new();

/// Give FAT a wall clock (seconds since the Unix epoch) for the times it
/// stamps; without one, files get [`EPOCH`].
pub fn set_clock(f: fn() -> Option<u64>) {
    CLOCK.call_once(|| f);
}

/// Now, as FAT stamps it.
pub fn now() -> Stamp {
    CLOCK.get().and_then(|f| f()).map_or(EPOCH, to_fat)
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// Seconds since the Unix epoch → FAT (FAT's range is 1980–2107).
pub fn to_fat(secs: u64) -> Stamp {
    let (y, m, d) = civil((secs / 86_400) as i64);
    if !(1980..=2107).contains(&y) {
        return EPOCH;
    }
    let rem = secs % 86_400;
    Stamp {
        date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
        time: (((rem / 3600) as u16) << 11) | ((((rem / 60) % 60) as u16) << 5) | ((rem % 60) / 2) as u16,
    }
}

/// FAT → seconds since the Unix epoch (`None` for a date that is not one).
pub fn from_fat(t: Stamp) -> Option<u64> {
    let (y, m, d) = (1980 + i64::from(t.date >> 9), i64::from((t.date >> 5) & 15), i64::from(t.date & 31));
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let (hh, mm, ss) = (i64::from(t.time >> 11), i64::from((t.time >> 5) & 63), i64::from(t.time & 31) * 2);
    if hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    u64::try_from(days(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        for secs in [315_532_800u64, 1_700_000_000, 1_800_000_002, 4_354_819_198] {
            assert_eq!(from_fat(to_fat(secs)), Some(secs), "{secs}");
        }
        assert_eq!(to_fat(0), EPOCH, "before 1980");
        assert_eq!(from_fat(EPOCH), Some(315_532_800));
        assert_eq!(from_fat(Stamp { date: 0, time: 0 }), None);
        assert_eq!(from_fat(Stamp { date: EPOCH.date, time: 0xffff }), None);
    }
}
