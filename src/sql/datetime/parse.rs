//! The date/time value of SQLite's date functions and the parsing of time values: a port
//! of SQLite 3.50's `date.c` (`DateTime`, `getDigits`, `parseTimezone`, `parseHhMmSs`,
//! `parseYyyyMmDd`, `computeJD`/`computeYMD`/`computeHMS`, `parseDateOrTime`).
//!
//! The port keeps date.c's structure and arithmetic step by step (integer division that
//! truncates, the same double expressions in the same order), because results must be
//! SQLite's to the millisecond, including for odd inputs. Fields are i64 where date.c has
//! `int`: every value date.c can reach fits, and a wider type cannot overflow where C's
//! `int` would have been undefined.

use super::number::{atof, is_space};

/// Julian day of the Unix epoch, in milliseconds (1970-01-01 00:00:00 is JD 2440587.5).
pub(crate) const UNIX_EPOCH_JD_MS: i64 = 210_866_760_000_000;

/// The largest valid julian day in milliseconds: 9999-12-31 23:59:59.999.
const JD_MS_MAX: i64 = 464_269_060_799_999;

/// SQLite's `DateTime`: a julian day in milliseconds and/or its calendar fields.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DateTime {
    /// The julian day number times 86 400 000.
    pub jd_ms: i64,
    /// The calendar fields (year 0 is 1 BC; negative years go back to -4713).
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    /// Time zone offset in minutes, of a parsed `±HH:MM` suffix.
    pub tz_minutes: i64,
    /// Seconds with their fraction; or, while `raw_s`, the raw number itself.
    pub seconds: f64,
    /// Which of the representations are current: date.c converts between them lazily.
    pub valid_jd: bool,
    pub valid_ymd: bool,
    pub valid_hms: bool,
    /// Days to subtract for `floor` (day-of-month overflow).
    pub n_floor: i64,
    /// `seconds` holds a raw number not yet read as a julian day or Unix time.
    pub raw_s: bool,
    pub is_error: bool,
    /// `subsec`: show milliseconds.
    pub use_subsec: bool,
}

impl DateTime {
    /// A julian day in milliseconds as a date/time (SQLite's 'now', and our TIMESTAMPs).
    pub fn from_jd_ms(jd_ms: i64) -> DateTime {
        DateTime { jd_ms, valid_jd: true, ..DateTime::default() }
    }

    /// `datetimeError`: every later step sees an invalid value.
    pub fn set_error(&mut self) {
        *self = DateTime { is_error: true, ..DateTime::default() };
    }

    /// `computeJD`: the julian day from the calendar fields (2000-01-01 if there is no
    /// date), folding a time zone offset into UTC.
    pub fn compute_jd(&mut self) {
        if self.valid_jd {
            return;
        }
        let (mut y, mut m, d) = if self.valid_ymd { (self.year, self.month, self.day) } else { (2000, 1, 1) };
        if !(-4713..=9999).contains(&y) || self.raw_s {
            self.set_error();
            return;
        }
        if m <= 2 {
            y -= 1;
            m += 12;
        }
        let a = (y + 4800) / 100;
        let b = 38 - a + (a / 4);
        let x1 = 36525 * (y + 4716) / 100;
        let x2 = 306_001 * (m + 1) / 10000;
        self.jd_ms = (((x1 + x2 + d + b) as f64 - 1524.5) * 86_400_000.0) as i64;
        self.valid_jd = true;
        if self.valid_hms {
            self.jd_ms += self.hour * 3_600_000 + self.minute * 60_000 + (self.seconds * 1000.0 + 0.5) as i64;
            if self.tz_minutes != 0 {
                self.jd_ms -= self.tz_minutes * 60_000;
                self.valid_ymd = false;
                self.valid_hms = false;
                self.tz_minutes = 0;
            }
        }
    }

    /// `computeFloor`: how many days past the end of its month the date is.
    pub fn compute_floor(&mut self) {
        let (d, m, y) = (self.day, self.month, self.year);
        // 0x15aa has the bits of the 31-day months.
        self.n_floor = if d <= 28 || ((0..31).contains(&m) && (1i64 << m) & 0x15aa != 0) {
            0
        } else if m != 2 {
            i64::from(d == 31)
        } else if y % 4 != 0 || (y % 100 == 0 && y % 400 != 0) {
            d - 28
        } else {
            d - 29
        };
    }

    /// `computeYMD`: the calendar date from the julian day (Meeus, p. 63).
    pub fn compute_ymd(&mut self) {
        if self.valid_ymd {
            return;
        }
        if !self.valid_jd {
            (self.year, self.month, self.day) = (2000, 1, 1);
        } else if !valid_julian_day(self.jd_ms) {
            self.set_error();
            return;
        } else {
            let z = (self.jd_ms + 43_200_000) / 86_400_000;
            let alpha = ((z as f64 + 32044.75) / 36524.25) as i64 - 52;
            let a = z + 1 + alpha - ((alpha + 100) / 4) + 25;
            let b = a + 1524;
            let c = ((b as f64 - 122.1) / 365.25) as i64;
            let d = (36525 * (c & 32767)) / 100;
            let e = ((b - d) as f64 / 30.6001) as i64;
            let x1 = (30.6001 * e as f64) as i64;
            self.day = b - d - x1;
            self.month = if e < 14 { e - 1 } else { e - 13 };
            self.year = if self.month > 2 { c - 4716 } else { c - 4715 };
        }
        self.valid_ymd = true;
    }

    /// `computeHMS`: the time of day from the julian day.
    pub fn compute_hms(&mut self) {
        if self.valid_hms {
            return;
        }
        self.compute_jd();
        // A julian day pushed past any valid one by modifiers wraps, as in date.c's C.
        let day_ms = self.jd_ms.wrapping_add(43_200_000) % 86_400_000;
        self.seconds = (day_ms % 60000) as f64 / 1000.0;
        let day_min = day_ms / 60000;
        self.minute = day_min % 60;
        self.hour = day_min / 60;
        self.raw_s = false;
        self.valid_hms = true;
    }

    pub fn compute_ymd_hms(&mut self) {
        self.compute_ymd();
        self.compute_hms();
    }

    /// `clearYMD_HMS_TZ`: only the julian day is left valid.
    pub fn clear_ymd_hms_tz(&mut self) {
        self.valid_ymd = false;
        self.valid_hms = false;
        self.tz_minutes = 0;
    }

    /// `setRawDateNumber`: a number is a julian day if it is in range; `unixepoch` or
    /// `auto` may still read it as seconds.
    pub fn set_raw_number(&mut self, r: f64) {
        self.seconds = r;
        self.raw_s = true;
        if (0.0..5_373_484.5).contains(&r) {
            self.jd_ms = (r * 86_400_000.0 + 0.5) as i64;
            self.valid_jd = true;
        }
    }
}

/// `validJulianDay`: from -4713-11-24 12:00:00 to 9999-12-31 23:59:59.999.
pub(super) fn valid_julian_day(jd_ms: i64) -> bool {
    (0..=JD_MS_MAX).contains(&jd_ms)
}

/// `getDigits`: fixed-width numbers, each `(digits, min, max)` followed by its separator
/// (`0` for the last). Returns how many were read.
pub(super) fn digits(z: &[u8], specs: &[(usize, i64, i64, u8)], out: &mut [i64]) -> usize {
    let mut at = 0;
    for (count, &(n, min, max, next)) in specs.iter().enumerate() {
        let mut val = 0;
        for _ in 0..n {
            match z.get(at) {
                Some(c) if c.is_ascii_digit() => val = val * 10 + i64::from(c - b'0'),
                _ => return count,
            }
            at += 1;
        }
        let following = z.get(at).copied().unwrap_or(0);
        if val < min || val > max || (next != 0 && next != following) {
            return count;
        }
        out[count] = val;
        at += 1;
    }
    specs.len()
}

/// The byte at `i`, or 0 past the end (C strings end in NUL).
pub(super) fn at(z: &[u8], i: usize) -> u8 {
    z.get(i).copied().unwrap_or(0)
}

/// `parseTimezone`: an optional `±HH:MM` or `Z` and nothing after it but spaces.
/// Returns whether the text is bad.
fn parse_timezone(z: &[u8], p: &mut DateTime) -> bool {
    let mut i = 0;
    while is_space(at(z, i)) {
        i += 1;
    }
    p.tz_minutes = 0;
    let sign = match at(z, i) {
        b'-' => -1,
        b'+' => 1,
        b'Z' | b'z' => 0,
        c => return c != 0,
    };
    i += 1;
    if sign != 0 {
        let mut hm = [0; 2];
        if digits(&z[i.min(z.len())..], &[(2, 0, 14, b':'), (2, 0, 59, 0)], &mut hm) != 2 {
            return true;
        }
        i += 5;
        p.tz_minutes = sign * (hm[1] + hm[0] * 60);
    }
    while is_space(at(z, i)) {
        i += 1;
    }
    at(z, i) != 0
}

/// `parseHhMmSs`: `HH:MM`, `HH:MM:SS` or `HH:MM:SS.FFF`, then an optional time zone.
/// Returns whether the text is bad.
pub(super) fn parse_hh_mm_ss(z: &[u8], p: &mut DateTime) -> bool {
    let mut hm = [0; 2];
    if digits(z, &[(2, 0, 24, b':'), (2, 0, 59, 0)], &mut hm) != 2 {
        return true;
    }
    let mut i = 5;
    let (mut s, mut ms) = (0, 0.0);
    if at(z, i) == b':' {
        i += 1;
        let mut sec = [0; 1];
        if digits(&z[i.min(z.len())..], &[(2, 0, 59, 0)], &mut sec) != 1 {
            return true;
        }
        s = sec[0];
        i += 2;
        if at(z, i) == b'.' && at(z, i + 1).is_ascii_digit() {
            let mut scale = 1.0;
            i += 1;
            while at(z, i).is_ascii_digit() {
                ms = ms * 10.0 + f64::from(at(z, i) - b'0');
                scale *= 10.0;
                i += 1;
            }
            ms /= scale;
            // date.c truncates to avoid sub-millisecond rounding up into the next second.
            if ms > 0.999 {
                ms = 0.999;
            }
        }
    }
    p.valid_jd = false;
    p.raw_s = false;
    p.valid_hms = true;
    p.hour = hm[0];
    p.minute = hm[1];
    p.seconds = s as f64 + ms;
    parse_timezone(&z[i.min(z.len())..], p)
}

/// `parseYyyyMmDd`: `[-]YYYY-MM-DD`, then optionally spaces or `T` and a time.
/// Returns whether the text is bad.
pub(super) fn parse_yyyy_mm_dd(z: &[u8], p: &mut DateTime) -> bool {
    let (z, negative) = match z.first() {
        Some(b'-') => (&z[1..], true),
        _ => (z, false),
    };
    let mut ymd = [0; 3];
    if digits(z, &[(4, 0, 9999, b'-'), (2, 1, 12, b'-'), (2, 1, 31, 0)], &mut ymd) != 3 {
        return true;
    }
    let mut i = 10;
    while is_space(at(z, i)) || at(z, i) == b'T' {
        i += 1;
    }
    let rest = &z[i.min(z.len())..];
    if !parse_hh_mm_ss(rest, p) {
        // The time was read.
    } else if at(rest, 0) == 0 {
        p.valid_hms = false;
    } else {
        return true;
    }
    p.valid_jd = false;
    p.valid_ymd = true;
    p.year = if negative { -ymd[0] } else { ymd[0] };
    p.month = ymd[1];
    p.day = ymd[2];
    p.compute_floor();
    if p.tz_minutes != 0 {
        p.compute_jd();
    }
    false
}

/// What a time value's text turned out to be.
pub(super) enum Parsed {
    /// A date/time, now in `p`.
    Value,
    /// `'now'` (or `'subsec'`, which also asks for milliseconds): the statement time.
    Now,
    /// Not a time value: the function returns NULL.
    Bad,
}

/// `parseDateOrTime`: a date and/or time, `now`, or a number (julian day or, with a
/// modifier, Unix time).
pub(super) fn parse_date_or_time(z: &[u8], p: &mut DateTime) -> Parsed {
    if !parse_yyyy_mm_dd(z, p) || !parse_hh_mm_ss(z, p) {
        return Parsed::Value;
    }
    if z.eq_ignore_ascii_case(b"now") {
        return Parsed::Now;
    }
    let (r, whole) = atof(z);
    if whole {
        p.set_raw_number(r);
        return Parsed::Value;
    }
    if z.eq_ignore_ascii_case(b"subsec") || z.eq_ignore_ascii_case(b"subsecond") {
        p.use_subsec = true;
        return Parsed::Now;
    }
    Parsed::Bad
}
