//! The modifiers of SQLite's date functions (`'+3 days'`, `'start of month'`,
//! `'weekday 1'`, `'unixepoch'`, `'auto'`, `'subsec'`, `'+01:30'`, `'-0001-02-03'` ...):
//! a port of `parseModifier` and `autoAdjustDate` in SQLite 3.50's `date.c`.
//!
//! A modifier SQLite does not know, or one that makes the value invalid, makes the
//! function return NULL, as in SQLite. `'localtime'` and `'utc'` are the exception: they
//! need the node's time zone rules, and an edgestore node has no time zone database (and
//! the same statement must give the same answer on every node), so they are refused with
//! [`SqlError::NoTimeZone`] instead of quietly treating local time as UTC. Every amount
//! is bounded by date.c's own limits (`'1e300 days'` is NULL); a chain of modifiers can
//! still push the julian day past i64, where date.c's C arithmetic wraps, and so does
//! this port's (`wrapping_add`): the value is invalid by then and the result NULL.

use super::number::{atof, is_space};
use super::parse::{at, digits, parse_hh_mm_ss, DateTime, UNIX_EPOCH_JD_MS};
use crate::sql::SqlError;

/// date.c's `aXformType`: unit name, largest magnitude accepted (a C `float`, so these
/// are the f32 roundings date.c compares with), and seconds per unit.
const UNITS: [(&[u8], f32, f64); 6] = [
    (b"second", 4.6427e+14, 1.0),
    (b"minute", 7.7379e+12, 60.0),
    (b"hour", 1.2897e+11, 3600.0),
    (b"day", 5373485.0, 86400.0),
    (b"month", 176546.0, 2592000.0),
    (b"year", 14713.0, 31536000.0),
];

/// Applies modifier `z` (the `index`th argument after the time value, from 1) to `p`.
/// `Ok(false)` means the result is NULL. `auto`, `julianday` and `unixepoch` say how to
/// read a raw number, so they are only valid right after the time value (`index == 1`).
pub(super) fn apply(z: &[u8], p: &mut DateTime, index: usize) -> Result<bool, SqlError> {
    let is = |name: &str| z.eq_ignore_ascii_case(name.as_bytes());
    Ok(match at(z, 0).to_ascii_lowercase() {
        b'a' if is("auto") => {
            index <= 1 && {
                auto_adjust(p);
                true
            }
        }
        b'c' if is("ceiling") => {
            p.compute_jd();
            p.clear_ymd_hms_tz();
            p.n_floor = 0;
            true
        }
        b'f' if is("floor") => {
            p.compute_jd();
            p.jd_ms = p.jd_ms.wrapping_sub(p.n_floor * 86_400_000);
            p.clear_ymd_hms_tz();
            true
        }
        b'j' if is("julianday") => {
            if index > 1 || !(p.valid_jd && p.raw_s) {
                return Ok(false);
            }
            p.raw_s = false;
            true
        }
        b'l' if is("localtime") => return Err(SqlError::NoTimeZone { modifier: "localtime".into() }),
        b'u' if is("utc") => return Err(SqlError::NoTimeZone { modifier: "utc".into() }),
        b'u' if is("unixepoch") && p.raw_s => index <= 1 && unix_epoch(p),
        b'w' if z.len() >= 8 && z[..8].eq_ignore_ascii_case(b"weekday ") => weekday(&z[8..], p),
        b's' if z.len() >= 9 && z[..9].eq_ignore_ascii_case(b"start of ") => start_of(&z[9..], p),
        b's' if is("subsec") || is("subsecond") => {
            p.use_subsec = true;
            true
        }
        b'+' | b'-' | b'0'..=b'9' => shift(z, p),
        _ => false,
    })
}

/// `autoAdjustDate`: a raw number in the Unix range is seconds, else a julian day.
fn auto_adjust(p: &mut DateTime) {
    if !p.raw_s || p.valid_jd {
        p.raw_s = false;
    } else if p.seconds >= -210_866_760_000.0 && p.seconds <= 253_402_300_799.0 {
        let r = p.seconds * 1000.0 + UNIX_EPOCH_JD_MS as f64;
        p.clear_ymd_hms_tz();
        p.jd_ms = (r + 0.5) as i64;
        p.valid_jd = true;
        p.raw_s = false;
    }
}

/// `unixepoch`: the raw number is seconds since 1970.
fn unix_epoch(p: &mut DateTime) -> bool {
    let r = p.seconds * 1000.0 + UNIX_EPOCH_JD_MS as f64;
    if !(0.0..464_269_060_800_000.0).contains(&r) {
        return false;
    }
    p.clear_ymd_hms_tz();
    p.jd_ms = (r + 0.5) as i64;
    p.valid_jd = true;
    p.raw_s = false;
    true
}

/// `weekday N`: forward to the next day that is weekday N (0 = Sunday), or stay.
fn weekday(z: &[u8], p: &mut DateTime) -> bool {
    let (r, whole) = atof(z);
    if !(whole && (0.0..7.0).contains(&r) && r.fract() == 0.0) {
        return false;
    }
    let n = r as i64;
    p.compute_ymd_hms();
    p.tz_minutes = 0;
    p.valid_jd = false;
    p.compute_jd();
    let mut day = ((p.jd_ms + 129_600_000) / 86_400_000) % 7;
    if day > n {
        day -= 7;
    }
    p.jd_ms += (n - day) * 86_400_000;
    p.clear_ymd_hms_tz();
    true
}

/// `start of day|month|year`.
fn start_of(unit: &[u8], p: &mut DateTime) -> bool {
    if !p.valid_jd && !p.valid_ymd && !p.valid_hms {
        return false;
    }
    p.compute_ymd();
    p.valid_hms = true;
    (p.hour, p.minute, p.seconds) = (0, 0, 0.0);
    p.raw_s = false;
    p.tz_minutes = 0;
    p.valid_jd = false;
    if unit.eq_ignore_ascii_case(b"month") {
        p.day = 1;
        true
    } else if unit.eq_ignore_ascii_case(b"year") {
        (p.month, p.day) = (1, 1);
        true
    } else {
        unit.eq_ignore_ascii_case(b"day")
    }
}

/// The numeric modifiers: `±YYYY-MM-DD[ HH:MM[:SS[.FFF]]]`, `±HH:MM[:SS[.FFF]]` and
/// `±NNN unit[s]`.
fn shift(z: &[u8], p: &mut DateTime) -> bool {
    let mut n = 1;
    while at(z, n) != 0 {
        let c = at(z, n);
        if c == b':' || is_space(c) {
            break;
        }
        if c == b'-' {
            let mut y = [0; 1];
            if n == 5 && digits(&z[1..], &[(4, 0, 14712, 0)], &mut y) == 1 {
                break;
            }
            if n == 6 && digits(&z[1..], &[(5, 0, 14712, 0)], &mut y) == 1 {
                break;
            }
        }
        n += 1;
    }
    let n = n.min(z.len());
    let (r, whole) = atof(&z[..n]);
    if !whole {
        return false;
    }
    if at(z, n) == b'-' {
        return shift_ymd(z, n, p);
    }
    if at(z, n) == b':' {
        return shift_hms(z, p);
    }
    let mut unit = &z[n..];
    while unit.first().is_some_and(|&c| is_space(c)) {
        unit = &unit[1..];
    }
    if unit.len() < 3 || unit.len() > 10 {
        return false;
    }
    let unit = if unit[unit.len() - 1].eq_ignore_ascii_case(&b's') { &unit[..unit.len() - 1] } else { unit };
    shift_units(r, unit, p)
}

/// `±NNN unit`: months and years move the calendar fields, their fractions and every
/// other unit move the julian day.
fn shift_units(mut r: f64, unit: &[u8], p: &mut DateTime) -> bool {
    p.compute_jd();
    let rounder = if r < 0.0 { -0.5 } else { 0.5 };
    p.n_floor = 0;
    let mut done = false;
    for (i, &(name, limit, seconds)) in UNITS.iter().enumerate() {
        let limit = f64::from(limit);
        if !(name.eq_ignore_ascii_case(unit) && r > -limit && r < limit) {
            continue;
        }
        if i == 4 || i == 5 {
            p.compute_ymd_hms();
            if i == 4 {
                p.month += r as i64;
                normalize_month(p);
            } else {
                p.year += r as i64;
            }
            p.compute_floor();
            p.valid_jd = false;
            r -= (r as i64) as f64;
        }
        p.compute_jd();
        p.jd_ms = p.jd_ms.wrapping_add((r * 1000.0 * seconds + rounder) as i64);
        done = true;
        break;
    }
    p.clear_ymd_hms_tz();
    done
}

/// Months outside 1..=12 carry into the year.
fn normalize_month(p: &mut DateTime) {
    let x = if p.month > 0 { (p.month - 1) / 12 } else { (p.month - 12) / 12 };
    p.year += x;
    p.month -= x * 12;
}

/// `±YYYY-MM-DD[ HH:MM[:SS[.FFF]]]`: years, months (0–11) and days (0–30), then the time.
fn shift_ymd(z: &[u8], n: usize, p: &mut DateTime) -> bool {
    let sign = z[0];
    if sign != b'+' && sign != b'-' {
        return false;
    }
    let mut ymd = [0; 3];
    let width = if n == 5 { 4 } else { 5 };
    if digits(&z[1..], &[(width, 0, 14712, b'-'), (2, 0, 12, b'-'), (2, 0, 31, 0)], &mut ymd) != 3 {
        return false;
    }
    // The rest is read as if the year had four digits.
    let z = if n == 5 { z } else { &z[1..] };
    let (y, m, mut d) = (ymd[0], ymd[1], ymd[2]);
    if m >= 12 || d >= 31 {
        return false;
    }
    p.compute_ymd_hms();
    p.valid_jd = false;
    if sign == b'-' {
        p.year -= y;
        p.month -= m;
        d = -d;
    } else {
        p.year += y;
        p.month += m;
    }
    normalize_month(p);
    p.compute_floor();
    p.compute_jd();
    p.valid_hms = false;
    p.valid_ymd = false;
    p.jd_ms = p.jd_ms.wrapping_add(d * 86_400_000);
    if at(z, 11) == 0 {
        return true;
    }
    let mut hm = [0; 2];
    if !(is_space(at(z, 11)) && z.len() > 12 && digits(&z[12..], &[(2, 0, 24, b':'), (2, 0, 59, 0)], &mut hm) == 2) {
        return false;
    }
    add_hms(&z[12..], sign, p)
}

/// `±HH:MM[:SS[.FFF]]`.
fn shift_hms(z: &[u8], p: &mut DateTime) -> bool {
    let time = if z[0].is_ascii_digit() { z } else { &z[1..] };
    add_hms(time, z[0], p)
}

/// Adds (or, for `sign == '-'`, subtracts) a time of day to the julian day.
fn add_hms(time: &[u8], sign: u8, p: &mut DateTime) -> bool {
    let mut tx = DateTime::default();
    if parse_hh_mm_ss(time, &mut tx) {
        return false;
    }
    tx.compute_jd();
    tx.jd_ms -= 43_200_000;
    let day = tx.jd_ms / 86_400_000;
    tx.jd_ms -= day * 86_400_000;
    if sign == b'-' {
        tx.jd_ms = -tx.jd_ms;
    }
    p.compute_jd();
    p.clear_ymd_hms_tz();
    p.jd_ms = p.jd_ms.wrapping_add(tx.jd_ms);
    true
}
