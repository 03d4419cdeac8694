//! Output of SQLite's date functions: `date`, `time` and `datetime` text, and `strftime`
//! with every conversion SQLite 3.50's `date.c` has (`%d %e %f %F %G %g %H %I %j %J %k
//! %l %m %M %p %P %R %s %S %T %u %U %V %w %W %Y %%`); an unknown conversion makes the
//! result NULL, as in SQLite. Numbers are printed by SQLite's printf rules
//! (`number::printf_fixed`, `number::printf_generic`).

use super::number::{printf_fixed, printf_generic};
use super::parse::{DateTime, UNIX_EPOCH_JD_MS};
use crate::sql::limits::check_result_bytes;
use crate::sql::SqlError;

/// A decimal digit of `v` (`v / div % 10`). Valid dates never have negative fields; the
/// Euclidean remainder keeps an impossible one from producing a non-digit.
fn digit(v: i64, div: i64) -> char {
    char::from(b'0' + (v / div).rem_euclid(10) as u8)
}

/// `YYYY-MM-DD`, with a leading `-` for years before 0.
pub(super) fn date_text(x: &mut DateTime) -> String {
    x.compute_ymd();
    let mut out = String::with_capacity(11);
    if x.year < 0 {
        out.push('-');
    }
    let y = x.year.abs();
    out.extend([digit(y, 1000), digit(y, 100), digit(y, 10), digit(y, 1), '-']);
    out.extend([digit(x.month, 10), digit(x.month, 1), '-', digit(x.day, 10), digit(x.day, 1)]);
    out
}

/// `HH:MM:SS`, or `HH:MM:SS.SSS` after `subsec`.
pub(super) fn time_text(x: &mut DateTime) -> String {
    x.compute_hms();
    let mut out = String::with_capacity(12);
    out.extend([digit(x.hour, 10), digit(x.hour, 1), ':', digit(x.minute, 10), digit(x.minute, 1), ':']);
    if x.use_subsec {
        let s = (1000.0 * x.seconds + 0.5) as i64;
        out.extend([digit(s, 10000), digit(s, 1000), '.', digit(s, 100), digit(s, 10), digit(s, 1)]);
    } else {
        let s = x.seconds as i64;
        out.extend([digit(s, 10), digit(s, 1)]);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS[.SSS]`.
pub(super) fn datetime_text(x: &mut DateTime) -> String {
    x.compute_ymd_hms();
    let mut out = date_text(x);
    out.push(' ');
    out.push_str(&time_text(x));
    out
}

/// `julianday()`: the julian day as a real.
pub(super) fn julian_day(x: &DateTime) -> f64 {
    x.jd_ms as f64 / 86_400_000.0
}

/// Seconds since 1970 with milliseconds (`unixepoch()` after `subsec`, `%s` likewise).
pub(super) fn unix_seconds_real(x: &DateTime) -> f64 {
    (x.jd_ms - UNIX_EPOCH_JD_MS) as f64 / 1000.0
}

/// Whole seconds since 1970, as date.c computes them (truncating the julian day first).
pub(super) fn unix_seconds(x: &DateTime) -> i64 {
    x.jd_ms / 1000 - UNIX_EPOCH_JD_MS / 1000
}

/// C's `%0Nd` (`zero`) or `%Nd`.
fn int(v: i64, width: usize, zero: bool) -> String {
    if zero {
        let digits = v.unsigned_abs().to_string();
        let sign = if v < 0 { "-" } else { "" };
        let pad = width.saturating_sub(digits.len() + sign.len());
        format!("{sign}{}{digits}", "0".repeat(pad))
    } else {
        format!("{v:>width$}")
    }
}

/// `daysAfterJan01`: the zero-based day of the year.
fn days_after_jan01(x: &DateTime) -> i64 {
    let mut jan01 = *x;
    jan01.valid_jd = false;
    (jan01.month, jan01.day) = (1, 1);
    jan01.compute_jd();
    (x.jd_ms - jan01.jd_ms + 43_200_000) / 86_400_000
}

/// `daysAfterMonday`: 0 = Monday ... 6 = Sunday.
fn days_after_monday(x: &DateTime) -> i64 {
    ((x.jd_ms + 43_200_000) / 86_400_000) % 7
}

/// `daysAfterSunday`: 0 = Sunday ... 6 = Saturday.
fn days_after_sunday(x: &DateTime) -> i64 {
    ((x.jd_ms + 129_600_000) / 86_400_000) % 7
}

/// The Thursday of x's ISO week, which decides its ISO year and week number.
fn iso_thursday(x: &DateTime) -> DateTime {
    let mut y = *x;
    y.jd_ms += (3 - days_after_monday(x)) * 86_400_000;
    y.valid_ymd = false;
    y.compute_ymd();
    y
}

/// `strftime(format, ...)` of a valid date/time; `None` (NULL) for an unknown conversion.
pub(super) fn strftime(fmt: &[u8], x: &mut DateTime) -> Result<Option<String>, SqlError> {
    check_result_bytes(fmt.len())?;
    x.compute_jd();
    x.compute_ymd_hms();
    let mut out: Vec<u8> = Vec::with_capacity(fmt.len() + 16);
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] != b'%' {
            out.push(fmt[i]);
            i += 1;
            continue;
        }
        let Some(piece) = conversion(fmt.get(i + 1).copied().unwrap_or(0), x) else { return Ok(None) };
        out.extend_from_slice(piece.as_bytes());
        i += 2;
    }
    check_result_bytes(out.len())?;
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// The text of one `%` conversion.
fn conversion(cf: u8, x: &DateTime) -> Option<String> {
    let hour12 = || match x.hour {
        h if h > 12 => h - 12,
        0 => 12,
        h => h,
    };
    Some(match cf {
        b'd' => int(x.day, 2, true),
        b'e' => int(x.day, 2, false),
        b'f' => {
            let s = x.seconds.min(59.999);
            let text = printf_fixed(s, 3);
            format!("{}{text}", "0".repeat(6usize.saturating_sub(text.len())))
        }
        b'F' => format!("{}-{}-{}", int(x.year, 4, true), int(x.month, 2, true), int(x.day, 2, true)),
        b'G' => int(iso_thursday(x).year, 4, true),
        b'g' => int(iso_thursday(x).year % 100, 2, true),
        b'H' => int(x.hour, 2, true),
        b'k' => int(x.hour, 2, false),
        b'I' => int(hour12(), 2, true),
        b'l' => int(hour12(), 2, false),
        b'j' => int(days_after_jan01(x) + 1, 3, true),
        b'J' => printf_generic(julian_day(x), 16),
        b'm' => int(x.month, 2, true),
        b'M' => int(x.minute, 2, true),
        b'p' => (if x.hour >= 12 { "PM" } else { "AM" }).to_string(),
        b'P' => (if x.hour >= 12 { "pm" } else { "am" }).to_string(),
        b'R' => format!("{}:{}", int(x.hour, 2, true), int(x.minute, 2, true)),
        b's' if x.use_subsec => printf_fixed(unix_seconds_real(x), 3),
        b's' => unix_seconds(x).to_string(),
        b'S' => int(x.seconds as i64, 2, true),
        b'T' => format!("{}:{}:{}", int(x.hour, 2, true), int(x.minute, 2, true), int(x.seconds as i64, 2, true)),
        b'u' => match days_after_sunday(x) {
            0 => "7".to_string(),
            d => d.to_string(),
        },
        b'w' => days_after_sunday(x).to_string(),
        b'U' => int((days_after_jan01(x) - days_after_sunday(x) + 7) / 7, 2, true),
        b'V' => int(days_after_jan01(&iso_thursday(x)) / 7 + 1, 2, true),
        b'W' => int((days_after_jan01(x) - days_after_monday(x) + 7) / 7, 2, true),
        b'Y' => int(x.year, 4, true),
        b'%' => "%".to_string(),
        _ => return None,
    })
}

/// `timediff(a, b)`: what to add to `b` to reach `a`, as `±YYYY-MM-DD HH:MM:SS.SSS`
/// (date.c's `timediffFunc`: whole years and months first, then the rest).
pub(super) fn timediff(mut d1: DateTime, mut d2: DateTime) -> String {
    // The month steps below end within two months of the start; the bound only keeps
    // an impossible state from looping.
    const MONTH_STEPS_MAX: usize = 24;
    d1.compute_ymd_hms();
    d2.compute_ymd_hms();
    let forward = d1.jd_ms >= d2.jd_ms;
    let (mut y, mut m) = if forward { (d1.year - d2.year, 0) } else { (d2.year - d1.year, 0) };
    if y != 0 {
        d2.year = d1.year;
        d2.valid_jd = false;
        d2.compute_jd();
    }
    m += if forward { d1.month - d2.month } else { d2.month - d1.month };
    if m < 0 {
        y -= 1;
        m += 12;
    }
    if m != 0 {
        d2.month = d1.month;
        d2.valid_jd = false;
        d2.compute_jd();
    }
    for _ in 0..MONTH_STEPS_MAX {
        if (forward && d1.jd_ms >= d2.jd_ms) || (!forward && d1.jd_ms <= d2.jd_ms) {
            break;
        }
        m -= 1;
        if m < 0 {
            m = 11;
            y -= 1;
        }
        if forward {
            d2.month -= 1;
            if d2.month < 1 {
                d2.month = 12;
                d2.year -= 1;
            }
        } else {
            d2.month += 1;
            if d2.month > 12 {
                d2.month = 1;
                d2.year += 1;
            }
        }
        d2.valid_jd = false;
        d2.compute_jd();
    }
    d1.jd_ms = if forward { d1.jd_ms - d2.jd_ms } else { d2.jd_ms - d1.jd_ms };
    d1.jd_ms += 148_699_540_800_000;
    d1.clear_ymd_hms_tz();
    d1.compute_ymd_hms();
    let seconds = printf_fixed(d1.seconds, 3);
    format!(
        "{}{}-{}-{} {}:{}:{}{seconds}",
        if forward { '+' } else { '-' },
        int(y, 4, true),
        int(m, 2, true),
        int(d1.day - 1, 2, true),
        int(d1.hour, 2, true),
        int(d1.minute, 2, true),
        "0".repeat(6usize.saturating_sub(seconds.len())),
    )
}
