//! PostgreSQL's binary `numeric`: base-10000 digit groups with a weight,
//! a sign and a display scale, to and from ferry's exact decimal text.

use bytes::{BufMut, BytesMut};

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// PostgreSQL's limits: digits before and after the decimal point.
pub(crate) const MAX_INTEGER_DIGITS: usize = 131_072;
pub(crate) const MAX_FRACTION_DIGITS: usize = 16_383;

fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

/// Decodes a binary numeric into its canonical text (`-12.50`, `NaN`).
pub(crate) fn decode(raw: &[u8]) -> Option<String> {
    let mut b = raw;
    // The digit count is unsigned: a value may have up to 131,072 digits
    // before the point and 16,383 after, more than 32,767 groups.
    let ndigits = u16::from_be_bytes(take(&mut b)?) as usize;
    let weight = i16::from_be_bytes(take(&mut b)?) as i32;
    let sign = u16::from_be_bytes(take(&mut b)?);
    let dscale = u16::from_be_bytes(take(&mut b)?) as usize;
    match sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        _ => {}
    }
    if b.len() < 2 * ndigits {
        return None;
    }
    let digit = |pos: i32| -> u16 {
        // Group `pos` counts down from `weight` (the first group).
        let idx = weight - pos;
        if idx >= 0 && (idx as usize) < ndigits {
            u16::from_be_bytes([b[2 * idx as usize], b[2 * idx as usize + 1]])
        } else {
            0
        }
    };
    let push4 = |out: &mut String, d: u16| {
        for div in [1000, 100, 10, 1] {
            out.push((b'0' + ((d / div) % 10) as u8) as char);
        }
    };
    let mut out = String::with_capacity(8 + 4 * (weight.max(0) as usize) + dscale);
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        let first = digit(weight);
        let mut tmp = String::with_capacity(4);
        push4(&mut tmp, first);
        out.push_str(tmp.trim_start_matches('0'));
        if first == 0 {
            out.push('0');
        }
        for pos in (0..weight).rev() {
            push4(&mut out, digit(pos));
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale;
        let mut pos = -1;
        while out.len() < end {
            push4(&mut out, digit(pos));
            pos -= 1;
        }
        out.truncate(end);
    }
    if out.starts_with('-') && out[1..].bytes().all(|c| c == b'0' || c == b'.') {
        out.remove(0);
    }
    Some(out)
}

/// Encodes decimal text (`-1.5`, `1e3`, `NaN`, `Infinity`) as a binary numeric.
pub(crate) fn encode(s: &str, out: &mut BytesMut) -> Option<()> {
    let special = match s {
        "NaN" => Some(NUMERIC_NAN),
        "Infinity" | "+Infinity" => Some(NUMERIC_PINF),
        "-Infinity" => Some(NUMERIC_NINF),
        _ => None,
    };
    if let Some(sign) = special {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
        return Some(());
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    // Scientific notation (from float text) is expanded first.
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|c| c - b'0')
        .collect();
    // Digits before the decimal point; beyond PostgreSQL's limits nothing
    // is expanded (an exponent of a billion would be a gigabyte of zeros).
    let mut point = (int_part.len() as i32).checked_add(exp)?;
    if !(-(MAX_FRACTION_DIGITS as i32)..=MAX_INTEGER_DIGITS as i32).contains(&point) {
        return None;
    }
    let dscale = u16::try_from((frac_part.len() as i32 - exp).max(0)).ok()?;
    if point < 0 {
        let mut z = vec![0u8; (-point) as usize];
        z.extend(digits);
        digits = z;
        point = 0;
    }
    while (digits.len() as i32) < point {
        digits.push(0);
    }
    // Pad so the integer part and the fraction are whole base-10000 groups.
    let lead = (4 - point.rem_euclid(4)) % 4;
    let mut padded = vec![0u8; lead as usize];
    padded.extend(digits);
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    let mut groups: Vec<u16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |a, d| a * 10 + *d as u16))
        .collect();
    let mut weight = (point + lead) / 4 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    // Beyond PostgreSQL's own limits (131,072 digits before the point,
    // 16,383 after) a value cannot be encoded.
    let ndigits = u16::try_from(groups.len()).ok()?;
    let weight = i16::try_from(weight).ok()?;
    if dscale as usize > MAX_FRACTION_DIGITS {
        return None;
    }
    out.put_u16(ndigits);
    out.put_i16(weight);
    out.put_u16(if neg && !groups.is_empty() {
        NUMERIC_NEG
    } else {
        0
    });
    out.put_u16(dscale);
    for g in groups {
        out.put_u16(g);
    }
    Some(())
}
