//! Calendar arithmetic for ferry's microsecond time values (proleptic
//! Gregorian, no leap seconds), so connectors agree on one text form.

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 → (year, month, day). Algorithm by Howard Hinnant.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD`; a year before 0 (1 BC is year 0) as `-YYYY`, a year
/// after 9999 with all its digits (ISO 8601's expanded years).
pub fn format_date(days: i32) -> String {
    let mut out = String::with_capacity(10);
    push_date(&mut out, days);
    out
}

/// `HH:MM:SS[.ffffff]`: the fraction only when not zero.
pub fn format_time(micros: i64) -> String {
    let mut out = String::with_capacity(15);
    push_time(&mut out, micros);
    out
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`
pub fn format_timestamp(micros: i64) -> String {
    let mut out = String::with_capacity(26);
    push_timestamp(&mut out, micros);
    out
}

/// Appends [`format_date`]'s text to `out` without allocating (once `out`
/// has room): snapshot loads format every date they write.
pub fn push_date(out: &mut String, days: i32) {
    let (y, m, d) = civil_from_days(days as i64);
    if y < 0 {
        out.push_str(&format!("-{:04}-{m:02}-{d:02}", -y));
        return;
    }
    if y > 9999 {
        out.push_str(&format!("{y}-{m:02}-{d:02}"));
        return;
    }
    let mut b = *b"0000-00-00";
    put_digits(&mut b[0..4], y as u64);
    put_digits(&mut b[5..7], u64::from(m));
    put_digits(&mut b[8..10], u64::from(d));
    push_ascii(out, &b);
}

/// Appends [`format_time`]'s text to `out`.
pub fn push_time(out: &mut String, micros: i64) {
    if !(0..360_000_000_000).contains(&micros) {
        // Negative, or 100 hours and more: not the fixed-width shape.
        out.push_str(&format_time_general(micros));
        return;
    }
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let mut b = *b"00:00:00.000000";
    put_digits(&mut b[0..2], (secs / 3600) as u64);
    put_digits(&mut b[3..5], (secs / 60 % 60) as u64);
    put_digits(&mut b[6..8], (secs % 60) as u64);
    if frac == 0 {
        push_ascii(out, &b[..8]);
    } else {
        put_digits(&mut b[9..15], frac as u64);
        push_ascii(out, &b);
    }
}

/// Appends [`format_timestamp`]'s text to `out`.
pub fn push_timestamp(out: &mut String, micros: i64) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let time = micros.rem_euclid(MICROS_PER_DAY);
    // Same truncation of the day number as `format_date(days as i32)`.
    let (y, m, d) = civil_from_days(i64::from(days as i32));
    if !(0..=9999).contains(&y) {
        push_date(out, days as i32);
        out.push(' ');
        push_time(out, time);
        return;
    }
    // The whole text in one buffer, one copy into `out`.
    let (secs, frac) = (time / 1_000_000, time % 1_000_000);
    let mut b = *b"0000-00-00 00:00:00.000000";
    put_digits(&mut b[0..4], y as u64);
    put_digits(&mut b[5..7], u64::from(m));
    put_digits(&mut b[8..10], u64::from(d));
    put_digits(&mut b[11..13], (secs / 3600) as u64);
    put_digits(&mut b[14..16], (secs / 60 % 60) as u64);
    put_digits(&mut b[17..19], (secs % 60) as u64);
    if frac == 0 {
        push_ascii(out, &b[..19]);
    } else {
        put_digits(&mut b[20..26], frac as u64);
        push_ascii(out, &b);
    }
}

/// Writes `n` as exactly `buf.len()` decimal digits (the caller knows it fits).
#[inline]
fn put_digits(buf: &mut [u8], mut n: u64) {
    for b in buf.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[inline]
fn push_ascii(out: &mut String, bytes: &[u8]) {
    out.push_str(std::str::from_utf8(bytes).expect("digits and separators are ASCII"));
}

/// The general formatter: any value, including the shapes the fixed-width
/// path leaves to it.
fn format_time_general(micros: i64) -> String {
    // A negative time (a MySQL TIME is a signed duration) is its size
    // with a sign: `-838:59:59`.
    let sign = if micros < 0 { "-" } else { "" };
    let micros = micros.unsigned_abs();
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let base = format!(
        "{sign}{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<i32> {
    match canonical_date(s.as_bytes()) {
        Some(Some(days)) => Some(days),
        Some(None) => None,
        None => parse_date_general(s),
    }
}

/// Parses `HH:MM[:SS[.ffffff]]`.
pub fn parse_time(s: &str) -> Option<i64> {
    canonical_time(s.as_bytes()).or_else(|| parse_time_general(s))
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM]]` into UTC microseconds.
/// A timestamp without offset is taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() >= 19
        && matches!(b[10], b' ' | b'T')
        && let (Some(date), Some(time)) = (canonical_date(&b[..10]), canonical_time(&b[11..]))
    {
        return date.map(|days| days as i64 * MICROS_PER_DAY + time);
    }
    parse_timestamp_general(s)
}

// The fast paths below accept only the exact shapes ferry and SQLite write
// (`YYYY-MM-DD`, `HH:MM:SS[.f{1,6}]`), where every byte position is known,
// and give the same result as the general parsers; anything else goes to
// those. The general parsers search for separators and parse each field
// as a string, about ten times the work on the hot path of a snapshot.

/// Two ASCII digits at `b[i..i + 2]`.
fn two_digits(b: &[u8], i: usize) -> Option<u32> {
    let (hi, lo) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
    (hi < 10 && lo < 10).then_some(u32::from(hi) * 10 + u32::from(lo))
}

/// `YYYY-MM-DD`, exactly: `None` when `b` has another shape (the general
/// parser decides), `Some(None)` for a month or day out of range (which
/// the general parser rejects too), else the day number.
fn canonical_date(b: &[u8]) -> Option<Option<i32>> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let (m, d) = (two_digits(b, 5)?, two_digits(b, 8)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Some(None);
    }
    // A four-digit year is always within i32 days.
    Some(Some(days_from_civil(i64::from(y), m, d) as i32))
}

/// `HH:MM:SS` or `HH:MM:SS.f` with 1 to 6 fraction digits, exactly.
/// Like the general parser, hours, minutes and seconds are not range
/// checked.
fn canonical_time(b: &[u8]) -> Option<i64> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, sec) = (two_digits(b, 0)?, two_digits(b, 3)?, two_digits(b, 6)?);
    let frac = match b.len() {
        8 => 0,
        10..=15 if b[8] == b'.' => {
            let digits = &b[9..];
            let mut f: i64 = 0;
            for &c in digits {
                let v = c.wrapping_sub(b'0');
                if v >= 10 {
                    return None;
                }
                f = f * 10 + i64::from(v);
            }
            f * 10i64.pow(6 - digits.len() as u32)
        }
        _ => return None,
    };
    Some(((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(sec)) * 1_000_000 + frac)
}

fn parse_date_general(s: &str) -> Option<i32> {
    let s = s.trim();
    let (sign, s) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s),
    };
    let mut it = s.splitn(3, '-');
    let y: i64 = sign * it.next()?.parse::<i64>().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

fn parse_time_general(s: &str) -> Option<i64> {
    if let Some(size) = s.trim().strip_prefix('-') {
        return parse_time_general(size).map(|m| -m);
    }
    let mut it = s.trim().splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let mi: i64 = it.next()?.parse().ok()?;
    let (sec, frac) = match it.next() {
        None => (0, 0),
        Some(rest) => match rest.split_once('.') {
            None => (rest.parse().ok()?, 0),
            Some((s, f)) => {
                let digits: String = f.chars().take(6).collect();
                // Parsed first: then `digits` is ASCII, at most 6 bytes.
                let frac = digits.parse::<i64>().ok()?;
                (s.parse().ok()?, frac * 10i64.pow(6 - digits.len() as u32))
            }
        },
    };
    // Checked: fields are not range checked, so long ones could overflow.
    h.checked_mul(60)?
        .checked_add(mi)?
        .checked_mul(60)?
        .checked_add(sec)?
        .checked_mul(1_000_000)?
        .checked_add(frac)
}

fn parse_timestamp_general(s: &str) -> Option<i64> {
    let s = s.trim();
    // `[-]Y…Y-MM-DD`: ten characters for years 0 to 9999, more before and
    // after them.
    let neg = usize::from(s.starts_with('-'));
    let date_len = neg + s[neg..].bytes().take_while(u8::is_ascii_digit).count() + 6;
    if s.len() == date_len {
        return (parse_date(s)? as i64).checked_mul(MICROS_PER_DAY);
    }
    let (date, rest) = s.split_at_checked(date_len)?;
    let days = parse_date(date)? as i64;
    let rest = rest.strip_prefix([' ', 'T'])?;
    // Split off a zone suffix.
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(pos) = rest.rfind(['+', '-']).filter(|p| *p >= 5) {
        let (t, z) = rest.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = &z[1..];
        let (hh, mm) = match z.split_once(':') {
            Some((h, m)) => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?),
            None if z.len() == 4 => (z.get(..2)?.parse().ok()?, z.get(2..)?.parse().ok()?),
            None => (z.parse().ok()?, 0),
        };
        let secs = hh.checked_mul(3600)?.checked_add(mm.checked_mul(60)?)?;
        (t, secs.checked_mul(sign)?)
    } else {
        (rest, 0)
    };
    days.checked_mul(MICROS_PER_DAY)?
        .checked_add(parse_time(time)?)?
        .checked_sub(offset_secs.checked_mul(1_000_000)?)
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `P<months>M<days>DT<seconds>[.ffffff]S`, each part signed: an ISO 8601
/// duration that keeps ferry's three interval fields apart: how targets
/// without an interval type (SQLite, MySQL) store one.
pub fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let (secs, frac) = (abs / 1_000_000, abs % 1_000_000);
    if frac == 0 {
        format!("P{months}M{days}DT{sign}{secs}S")
    } else {
        format!("P{months}M{days}DT{sign}{secs}.{frac:06}S")
    }
}

/// The interval [`format_interval`] wrote.
pub fn parse_interval(s: &str) -> Option<crate::value::Value> {
    let rest = s.strip_prefix('P')?;
    let (months, rest) = rest.split_once('M')?;
    let (days, rest) = rest.split_once("DT")?;
    let secs = rest.strip_suffix('S')?;
    let (neg, secs) = match secs.strip_prefix('-') {
        Some(s) => (true, s),
        None => (false, secs),
    };
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: i64 = format!("{frac:0<6}").parse().ok()?;
    let micros = whole.parse::<i64>().ok()?.checked_mul(1_000_000)? + frac;
    Some(crate::value::Value::Interval {
        months: months.parse().ok()?,
        days: days.parse().ok()?,
        micros: if neg { -micros } else { micros },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_times_and_times_beyond_a_day_round_trip() {
        for (micros, text) in [
            (-3_020_399_000_000, "-838:59:59"),
            (-500_000, "-00:00:00.500000"),
            (3_020_399_999_999, "838:59:59.999999"),
        ] {
            assert_eq!(format_time(micros), text);
            assert_eq!(parse_time(text), Some(micros));
        }
    }

    #[test]
    fn days_round_trip() {
        for d in [-719_468i64, -1, 0, 1, 10_957, 19_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2000-02-29"), Some(11_016));
    }

    /// Years before 1 AD (PostgreSQL's BC dates; 1 BC is year 0) and
    /// after 9999 read back as written.
    #[test]
    fn far_years_round_trip() {
        let bc_44 = days_from_civil(-43, 3, 15) as i32;
        assert_eq!(format_date(bc_44), "-0043-03-15");
        assert_eq!(parse_date("-0043-03-15"), Some(bc_44));
        let year_0 = days_from_civil(0, 1, 1) as i32;
        assert_eq!(format_date(year_0), "0000-01-01");
        let t = bc_44 as i64 * MICROS_PER_DAY + 3_600_000_001;
        assert_eq!(format_timestamp(t), "-0043-03-15 01:00:00.000001");
        assert_eq!(parse_timestamp("-0043-03-15 01:00:00.000001"), Some(t));
        assert_eq!(
            parse_timestamp("-0043-03-15 02:00:00.000001+01:00"),
            Some(t)
        );
        assert_eq!(
            parse_timestamp("-0043-03-15"),
            Some(bc_44 as i64 * MICROS_PER_DAY)
        );
        let far = days_from_civil(294_276, 12, 31) as i32;
        assert_eq!(format_date(far), "294276-12-31");
        assert_eq!(parse_date("294276-12-31"), Some(far));
        let t = days_from_civil(200_000, 6, 1) * MICROS_PER_DAY + 1;
        assert_eq!(format_timestamp(t), "200000-06-01 00:00:00.000001");
        assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        assert_eq!(parse_timestamp("2024-03-01x12:00"), None);
    }

    #[test]
    fn timestamps_parse_with_zones() {
        let t = parse_timestamp("2024-03-01 12:00:00.5+02:00").unwrap();
        assert_eq!(format_timestamp(t), "2024-03-01 10:00:00.500000");
        assert_eq!(parse_timestamp("2024-03-01T10:00:00.5Z"), Some(t));
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999999");
    }

    /// The formatters and parsers as they were before the fast paths, as
    /// the reference the fast paths must match: verbatim, except where they
    /// panicked or overflowed, which now return `None`: a timestamp shorter
    /// than 10 bytes, non-ASCII text where a fraction or a four-character
    /// zone is, and fields so long that the arithmetic overflowed (a panic
    /// in debug builds, a wrapped value in release builds).
    mod reference {
        use super::super::{MICROS_PER_DAY, civil_from_days, days_from_civil};

        pub fn format_date(days: i32) -> String {
            let (y, m, d) = civil_from_days(days as i64);
            if y < 0 {
                return format!("-{:04}-{m:02}-{d:02}", -y);
            }
            format!("{y:04}-{m:02}-{d:02}")
        }

        pub fn format_time(micros: i64) -> String {
            // A negative time is its size with a sign.
            let sign = if micros < 0 { "-" } else { "" };
            let micros = micros.unsigned_abs();
            let secs = micros / 1_000_000;
            let frac = micros % 1_000_000;
            let base = format!(
                "{sign}{:02}:{:02}:{:02}",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60
            );
            if frac == 0 {
                base
            } else {
                format!("{base}.{frac:06}")
            }
        }

        pub fn format_timestamp(micros: i64) -> String {
            let days = micros.div_euclid(MICROS_PER_DAY);
            let rest = micros.rem_euclid(MICROS_PER_DAY);
            format!("{} {}", format_date(days as i32), format_time(rest))
        }

        pub fn parse_date(s: &str) -> Option<i32> {
            let s = s.trim();
            let (sign, s) = match s.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, s),
            };
            let mut it = s.splitn(3, '-');
            let y: i64 = sign * it.next()?.parse::<i64>().ok()?;
            let m: u32 = it.next()?.parse().ok()?;
            let d: u32 = it.next()?.get(..2)?.parse().ok()?;
            if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                return None;
            }
            i32::try_from(days_from_civil(y, m, d)).ok()
        }

        pub fn parse_time(s: &str) -> Option<i64> {
            if let Some(size) = s.trim().strip_prefix('-') {
                return parse_time(size).map(|m| -m);
            }
            let mut it = s.trim().splitn(3, ':');
            let h: i64 = it.next()?.parse().ok()?;
            let mi: i64 = it.next()?.parse().ok()?;
            let (sec, frac) = match it.next() {
                None => (0, 0),
                Some(rest) => match rest.split_once('.') {
                    None => (rest.parse().ok()?, 0),
                    Some((s, f)) => {
                        let digits: String = f.chars().take(6).collect();
                        let frac = digits.parse::<i64>().ok()?;
                        (s.parse().ok()?, frac * 10i64.pow(6 - digits.len() as u32))
                    }
                },
            };
            // Checked: fields are not range checked, so long ones could overflow.
            h.checked_mul(60)?
                .checked_add(mi)?
                .checked_mul(60)?
                .checked_add(sec)?
                .checked_mul(1_000_000)?
                .checked_add(frac)
        }

        pub fn parse_timestamp(s: &str) -> Option<i64> {
            let s = s.trim();
            // `[-]Y…Y-MM-DD`: ten characters for years 0 to 9999, more before and
            // after them.
            let neg = usize::from(s.starts_with('-'));
            let date_len = neg + s[neg..].bytes().take_while(u8::is_ascii_digit).count() + 6;
            if s.len() == date_len {
                return (parse_date(s)? as i64).checked_mul(MICROS_PER_DAY);
            }
            let (date, rest) = s.split_at_checked(date_len)?;
            let days = parse_date(date)? as i64;
            let rest = rest.strip_prefix([' ', 'T'])?;
            let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z') {
                (t, 0)
            } else if let Some(pos) = rest.rfind(['+', '-']).filter(|p| *p >= 5) {
                let (t, z) = rest.split_at(pos);
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let z = &z[1..];
                let (hh, mm) = match z.split_once(':') {
                    Some((h, m)) => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?),
                    None if z.len() == 4 => (z.get(..2)?.parse().ok()?, z.get(2..)?.parse().ok()?),
                    None => (z.parse().ok()?, 0),
                };
                let secs = hh.checked_mul(3600)?.checked_add(mm.checked_mul(60)?)?;
                (t, secs.checked_mul(sign)?)
            } else {
                (rest, 0)
            };
            days.checked_mul(MICROS_PER_DAY)?
                .checked_add(parse_time(time)?)?
                .checked_sub(offset_secs.checked_mul(1_000_000)?)
        }
    }

    /// SplitMix64, for reproducible test values.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn check_parsers(s: &str) {
        assert_eq!(parse_date(s), reference::parse_date(s), "parse_date({s:?})");
        assert_eq!(parse_time(s), reference::parse_time(s), "parse_time({s:?})");
        assert_eq!(
            parse_timestamp(s),
            reference::parse_timestamp(s),
            "parse_timestamp({s:?})"
        );
    }

    #[test]
    fn fast_parsers_match_the_reference_on_systematic_shapes() {
        let years = [
            "0000", "0001", "0099", "1969", "1970", "2000", "2024", "9999",
        ];
        let months = (0..=13).chain([19, 99]);
        let days: Vec<u32> = (0..=32).chain([39, 99]).collect();
        let times = [
            "00:00:00", "23:59:59", "12:34:56", "24:00:00", "99:99:99", "07:08:60",
        ];
        let fractions = [
            "", ".", ".5", ".05", ".123", ".999999", ".000001", ".1234567", ".12a", ".-1",
        ];
        let zones = ["", "Z", "+02:00", "-05:30", "+0530", "-08", " ", "+", "z"];
        let mut n = 0;
        for y in years {
            for m in months.clone() {
                for &d in &days {
                    let date = format!("{y}-{m:02}-{d:02}");
                    check_parsers(&date);
                    if d % 7 != 0 && m % 3 != 0 {
                        continue;
                    }
                    for sep in [" ", "T", "_", "  "] {
                        for t in times {
                            for f in fractions {
                                for z in zones {
                                    check_parsers(&format!("{date}{sep}{t}{f}{z}"));
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        for t in times
            .iter()
            .chain(&["1:2:3", "12:00", "12", "", ":::", "1a:00:00"])
        {
            for f in fractions {
                check_parsers(&format!("{t}{f}"));
                check_parsers(&format!(" {t}{f} "));
            }
        }
        assert!(n > 100_000, "{n} timestamps checked");
    }

    #[test]
    fn fast_parsers_match_the_reference_on_mutated_values() {
        const BYTES: &[&str] = &[
            "0", "1", "5", "9", "-", ":", ".", " ", "T", "Z", "+", "a", "\u{e9}", "",
        ];
        let mut rng = Rng(7);
        for _ in 0..300_000 {
            let micros = rng.next() as i64 % 400_000_000_000_000_000;
            let mut s = format_timestamp(micros);
            if rng.below(3) == 0 {
                s = s[..10].to_owned();
            } else if rng.below(3) == 0 {
                s = s[11..].to_owned();
            }
            // Replace, insert or remove a character or two.
            for _ in 0..=rng.below(2) {
                let chars: Vec<char> = s.chars().collect();
                let at = rng.below(chars.len() as u64 + 1) as usize;
                let with = BYTES[rng.below(BYTES.len() as u64) as usize];
                let (before, after) = chars.split_at(at);
                let skip = usize::from(rng.below(2) == 0 && !after.is_empty());
                s = before.iter().collect::<String>()
                    + with
                    + &after[skip..].iter().collect::<String>();
            }
            check_parsers(&s);
        }
    }

    #[test]
    fn fast_formatters_match_the_reference() {
        let mut rng = Rng(11);
        let edges = [
            i64::MIN,
            i64::MIN + 1,
            -62_167_219_200_000_001,
            -62_167_219_200_000_000,
            -1,
            0,
            1,
            999_999,
            1_000_000,
            86_399_999_999,
            86_400_000_000,
            1_700_000_000_123_456,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            i64::MAX,
        ];
        let random = (0..200_000).map(|i| match i % 3 {
            0 => rng.next() as i64,
            1 => rng.next() as i64 % 400_000_000_000_000_000,
            _ => (rng.next() as i64 % 400_000_000_000) * 1_000_000,
        });
        for m in edges.into_iter().chain(random) {
            assert_eq!(format_timestamp(m), reference::format_timestamp(m), "{m}");
            assert_eq!(format_time(m), reference::format_time(m), "{m}");
            let d = m as i32;
            assert_eq!(format_date(d), reference::format_date(d), "{d}");
            // Round trip through the fast parser where the text is canonical.
            let text = format_timestamp(m);
            if !text.starts_with('-') && text.as_bytes()[4] == b'-' {
                assert_eq!(parse_timestamp(&text), Some(m), "{text}");
            }
        }
        for t in [-5, 0, 1, 3_600_000_000, 359_999_999_999, 360_000_000_000] {
            assert_eq!(format_time(t), reference::format_time(t), "{t}");
        }
        let mut out = String::from("x");
        push_timestamp(&mut out, 1);
        assert_eq!(out, "x1970-01-01 00:00:00.000001");
    }

    #[test]
    fn short_or_odd_timestamps_are_rejected_not_panics() {
        for s in [
            "",
            "2024",
            "2024-03-0",
            "2024-03-01 12:00:00.\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            "2024-03-01 12:00:00+1\u{e9}1",
            "2024-03-01\u{e9}12:00:00",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s:?}");
        }
    }

    #[test]
    fn uuid_round_trip() {
        let s = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(format_uuid(&parse_uuid(s).unwrap()), s);
    }
}
