//! The CMOS real-time clock (ports 0x70/0x71, through the gate): the time
//! of day on hosts that have one (QEMU pc and q35). Read once, to the
//! second; the process unit then counts from it with the TSC. Hosts
//! without one (Firecracker, QEMU microvm with `rtc=off`) read as all ones,
//! which fails the range checks.

use super::gate;

fn reg(r: u8) -> u8 {
    gate::outb(0x70, r);
    gate::inb(0x71)
}

fn bcd(v: u8) -> u8 {
    (v & 0x0f) + (v >> 4) * 10
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// Seconds since the Unix epoch, if an RTC answers with a valid date.
pub fn unix_seconds() -> Option<u64> {
    // Wait (boundedly) for an update in progress to end.
    let mut tries = 0;
    while reg(0x0a) & 0x80 != 0 {
        tries += 1;
        if tries > 1000 {
            return None;
        }
    }
    let status_b = reg(0x0b);
    let raw = [reg(0x00), reg(0x02), reg(0x04), reg(0x07), reg(0x08), reg(0x09), reg(0x32)];
    if raw.iter().all(|&v| v == 0xff) {
        return None;
    }
    let conv = |v: u8| if status_b & 0x04 == 0 { bcd(v) } else { v };
    let (sec, min, day, month, year) = (conv(raw[0]), conv(raw[1]), conv(raw[3]), conv(raw[4]), conv(raw[5]));
    let mut hour = conv(raw[2] & 0x7f);
    if status_b & 0x02 == 0 && raw[2] & 0x80 != 0 {
        hour = (hour % 12) + 12; // 12-hour clock, PM
    }
    let century = match conv(raw[6]) {
        c @ 19..=21 => i64::from(c),
        _ => 20,
    };
    if sec > 59
        || min > 59
        || hour > 23
        || !(1..=31).contains(&day)
        || !(1..=12).contains(&month)
        || year > 99
    {
        return None;
    }
    let days = days_from_civil(century * 100 + i64::from(year), i64::from(month), i64::from(day));
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
    u64::try_from(secs).ok()
}
