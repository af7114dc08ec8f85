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

pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn format_time(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let base = format!(
        "{:02}:{:02}:{:02}",
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

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rest = micros.rem_euclid(MICROS_PER_DAY);
    format!("{} {}", format_date(days as i32), format_time(rest))
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

/// Parses `HH:MM[:SS[.ffffff]]`.
pub fn parse_time(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, ':');
    let h: i64 = it.next()?.parse().ok()?;
    let mi: i64 = it.next()?.parse().ok()?;
    let (sec, frac) = match it.next() {
        None => (0, 0),
        Some(rest) => match rest.split_once('.') {
            None => (rest.parse().ok()?, 0),
            Some((s, f)) => {
                let digits: String = f.chars().take(6).collect();
                let scale = 10i64.pow(6 - digits.len() as u32);
                (s.parse().ok()?, digits.parse::<i64>().ok()? * scale)
            }
        },
    };
    Some(((h * 60 + mi) * 60 + sec) * 1_000_000 + frac)
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM]]` into UTC microseconds.
/// A timestamp without offset is taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 10 {
        return Some(parse_date(s)? as i64 * MICROS_PER_DAY);
    }
    let (date, rest) = s.split_at(10);
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
            None if z.len() == 4 => (z[..2].parse().ok()?, z[2..].parse().ok()?),
            None => (z.parse().ok()?, 0),
        };
        (t, sign * (hh * 3600 + mm * 60))
    } else {
        (rest, 0)
    };
    Some(days * MICROS_PER_DAY + parse_time(time)? - offset_secs * 1_000_000)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        for d in [-719_468i64, -1, 0, 1, 10_957, 19_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2000-02-29"), Some(11_016));
    }

    #[test]
    fn timestamps_parse_with_zones() {
        let t = parse_timestamp("2024-03-01 12:00:00.5+02:00").unwrap();
        assert_eq!(format_timestamp(t), "2024-03-01 10:00:00.500000");
        assert_eq!(parse_timestamp("2024-03-01T10:00:00.5Z"), Some(t));
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn uuid_round_trip() {
        let s = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(format_uuid(&parse_uuid(s).unwrap()), s);
    }
}
