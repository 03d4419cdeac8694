//! Time in SQL: SQLite's date and time functions (`date`, `time`, `datetime`,
//! `julianday`, `unixepoch`, `strftime`, `timediff` and `current_date`/`current_time`/
//! `current_timestamp`) with SQLite's time values and modifiers, plus `time_bucket` for
//! downsampling, and the conversion of ISO-8601 text to TIMESTAMP values.
//!
//! The functions follow SQLite 3.50's `date.c` to the millisecond (checked against the
//! bundled SQLite by `tests/sql_datetime_sqlite.rs`): `parse` reads time values,
//! `modifiers` applies modifiers, `format` prints the results, `number` holds SQLite's
//! own number parsing and printing that those depend on. Where edgestore differs, it says
//! so with a typed error rather than a different answer:
//!
//! - `'now'` is the statement time, one value per statement (the `now_ms` the statement
//!   runs with), never the OS clock. A statement without one (a read-only `sql::query`)
//!   fails with [`SqlError::NoStatementTime`] when it asks for `'now'`.
//! - `'localtime'` and `'utc'` fail with [`SqlError::NoTimeZone`]: a node has no time
//!   zone database, and every time is UTC.
//! - A TIMESTAMP (milliseconds since the Unix epoch) is a time value too: the instant it
//!   holds.

mod format;
mod modifiers;
mod number;
mod parse;

pub(crate) use number::atof;
use parse::{parse_date_or_time, DateTime, Parsed, UNIX_EPOCH_JD_MS};

use super::SqlError;
use crate::types::Value;

/// A date function: what [`super::func::Func::Date`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateFunc {
    Date,
    Time,
    Datetime,
    Julianday,
    Unixepoch,
    Strftime,
    Timediff,
    TimeBucket,
}

impl DateFunc {
    /// The date function of a (lower-case) name, with its argument count range.
    pub fn lookup(name: &str) -> Option<(DateFunc, usize, usize)> {
        let any = usize::MAX;
        Some(match name {
            "date" => (DateFunc::Date, 0, any),
            "time" => (DateFunc::Time, 0, any),
            "datetime" => (DateFunc::Datetime, 0, any),
            "current_date" => (DateFunc::Date, 0, 0),
            "current_time" => (DateFunc::Time, 0, 0),
            "current_timestamp" => (DateFunc::Datetime, 0, 0),
            "julianday" => (DateFunc::Julianday, 0, any),
            "unixepoch" => (DateFunc::Unixepoch, 0, any),
            "strftime" => (DateFunc::Strftime, 0, any),
            "timediff" => (DateFunc::Timediff, 2, 2),
            "time_bucket" => (DateFunc::TimeBucket, 2, 2),
            _ => return None,
        })
    }

    /// The name errors use.
    fn name(self) -> &'static str {
        match self {
            DateFunc::Date => "date",
            DateFunc::Time => "time",
            DateFunc::Datetime => "datetime",
            DateFunc::Julianday => "julianday",
            DateFunc::Unixepoch => "unixepoch",
            DateFunc::Strftime => "strftime",
            DateFunc::Timediff => "timediff",
            DateFunc::TimeBucket => "time_bucket",
        }
    }
}

/// Whether a function of this name reads the statement time (`'now'` may be among its
/// arguments, or it has none): a plan that evaluates it once must not be kept.
pub(crate) fn reads_statement_time(name: &str) -> bool {
    DateFunc::lookup(name).is_some()
}

/// Calls a date function. `now` is the statement time (a TIMESTAMP, or NULL when the
/// statement has none), put first by the binder; `args` are the SQL arguments.
pub(crate) fn call(func: DateFunc, now: &Value, args: &[Value]) -> Result<Value, SqlError> {
    let now_jd = || match now {
        Value::Timestamp(ms) => {
            ms.checked_add(UNIX_EPOCH_JD_MS).ok_or(SqlError::NoStatementTime { function: func.name() })
        }
        _ => Err(SqlError::NoStatementTime { function: func.name() }),
    };
    let text =
        |x: Option<DateTime>, f: fn(&mut DateTime) -> String| x.map_or(Value::Null, |mut x| Value::Text(f(&mut x)));
    Ok(match func {
        DateFunc::Date => text(date_time(args, &now_jd)?, format::date_text),
        DateFunc::Time => text(date_time(args, &now_jd)?, format::time_text),
        DateFunc::Datetime => text(date_time(args, &now_jd)?, format::datetime_text),
        DateFunc::Julianday => date_time(args, &now_jd)?.map_or(Value::Null, |x| Value::Real(format::julian_day(&x))),
        DateFunc::Unixepoch => match date_time(args, &now_jd)? {
            Some(x) if x.use_subsec => Value::Real(format::unix_seconds_real(&x)),
            Some(x) => Value::Integer(format::unix_seconds(&x)),
            None => Value::Null,
        },
        DateFunc::Strftime => {
            let Some(fmt) = args.first().and_then(bytes) else { return Ok(Value::Null) };
            match date_time(&args[1..], &now_jd)? {
                Some(mut x) => format::strftime(&fmt, &mut x)?.map_or(Value::Null, Value::Text),
                None => Value::Null,
            }
        }
        DateFunc::Timediff => {
            let one = |v: &Value| date_time(std::slice::from_ref(v), &now_jd);
            match (one(&args[0])?, one(&args[1])?) {
                (Some(a), Some(b)) => Value::Text(format::timediff(a, b)),
                _ => Value::Null,
            }
        }
        DateFunc::TimeBucket => time_bucket(&args[0], &args[1], &now_jd)?,
    })
}

/// The text SQLite's C code sees for a value (`sqlite3_value_text`), up to its first NUL.
fn bytes(v: &Value) -> Option<Vec<u8>> {
    let mut b = match v {
        Value::Null => return None,
        Value::Text(t) => t.as_bytes().to_vec(),
        Value::Blob(b) => b.clone(),
        other => super::value::to_text(other).unwrap_or_default().into_bytes(),
    };
    if let Some(nul) = b.iter().position(|&c| c == 0) {
        b.truncate(nul);
    }
    Some(b)
}

/// `isDate`: the time value (`'now'` if there is none) with its modifiers applied;
/// `None` (NULL) when any of them is not valid.
fn date_time(args: &[Value], now_jd: &dyn Fn() -> Result<i64, SqlError>) -> Result<Option<DateTime>, SqlError> {
    let mut p = DateTime::default();
    match args.first() {
        None => p = DateTime::from_jd_ms(now_jd()?),
        Some(Value::Integer(i)) => p.set_raw_number(*i as f64),
        Some(Value::Real(r)) => p.set_raw_number(*r),
        Some(Value::Boolean(b)) => p.set_raw_number(f64::from(u8::from(*b))),
        Some(Value::Timestamp(ms)) => match ms.checked_add(UNIX_EPOCH_JD_MS) {
            Some(jd_ms) => p = DateTime::from_jd_ms(jd_ms),
            None => return Ok(None),
        },
        Some(v) => {
            let Some(z) = bytes(v) else { return Ok(None) };
            match parse_date_or_time(&z, &mut p) {
                Parsed::Value => {}
                Parsed::Now => {
                    p.jd_ms = now_jd()?;
                    p.valid_jd = true;
                    p.clear_ymd_hms_tz();
                }
                Parsed::Bad => return Ok(None),
            }
        }
    }
    for (index, modifier) in args.iter().enumerate().skip(1) {
        let Some(z) = bytes(modifier) else { return Ok(None) };
        if !modifiers::apply(&z, &mut p, index)? {
            return Ok(None);
        }
    }
    p.compute_jd();
    if p.is_error || !parse::valid_julian_day(p.jd_ms) {
        return Ok(None);
    }
    if args.len() == 1 && p.valid_ymd && p.day > 28 {
        // A lone YYYY-MM-DD is normalized: 2023-02-31 is 2023-03-03.
        p.valid_ymd = false;
    }
    Ok(Some(p))
}

/// The instant an ISO-8601 text names, in milliseconds since the Unix epoch: the narrow
/// rule by which text becomes a TIMESTAMP (stored into a TIMESTAMP column, or
/// `CAST(... AS TIMESTAMP)`). Only `YYYY-MM-DD`, optionally followed by a space or `T`
/// and `HH:MM[:SS[.SSS]]`, optionally followed by `Z` or `±HH:MM`, with a day that
/// exists in its month; no `'now'`, julian day numbers or modifiers (write
/// `unixepoch(...)` for those), so that a typo is a type error, not a wrong time.
pub(crate) fn iso_timestamp_ms(text: &str) -> Option<i64> {
    let z = text.as_bytes();
    let mut p = DateTime::default();
    // No sign (years before 0), no NUL (C would stop there), a real day of the month.
    if !z.first().is_some_and(u8::is_ascii_digit) || z.contains(&0) || parse::parse_yyyy_mm_dd(z, &mut p) {
        return None;
    }
    if p.n_floor != 0 {
        return None;
    }
    p.compute_jd();
    if p.is_error || !parse::valid_julian_day(p.jd_ms) {
        return None;
    }
    Some(p.jd_ms - UNIX_EPOCH_JD_MS)
}

/// `time_bucket(width, ts)`: the start of the `width`-wide bucket that holds `ts`, as a
/// TIMESTAMP; buckets are aligned to the Unix epoch (so a day bucket starts at midnight
/// UTC, a week bucket on a Thursday). `ts` is a TIMESTAMP or an integer in its unit
/// (milliseconds), or a text time value as the other date functions read it.
fn time_bucket(width: &Value, ts: &Value, now_jd: &dyn Fn() -> Result<i64, SqlError>) -> Result<Value, SqlError> {
    if width.is_null() || ts.is_null() {
        return Ok(Value::Null);
    }
    let width_ms = bucket_width_ms(width)?;
    let ms = match ts {
        Value::Timestamp(ms) | Value::Integer(ms) => *ms,
        Value::Text(_) | Value::Blob(_) => match date_time(std::slice::from_ref(ts), now_jd)? {
            Some(x) => x.jd_ms - UNIX_EPOCH_JD_MS,
            None => return Ok(Value::Null),
        },
        _ => return Ok(Value::Null),
    };
    let start = ms.checked_sub(ms.rem_euclid(width_ms)).ok_or(SqlError::IntegerOverflow)?;
    Ok(Value::Timestamp(start))
}

/// Bucket widths: a positive integer of milliseconds, or `'N unit[s]'` with a fixed-length
/// unit (milliseconds to weeks; months and years have no fixed length).
pub(crate) fn bucket_width_ms(width: &Value) -> Result<i64, SqlError> {
    let refuse = || SqlError::BucketWidth { width: super::value::to_text(width).unwrap_or_default() };
    let ms = match width {
        Value::Integer(n) => Some(*n),
        Value::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (count, unit) = (&t[..split], t[split..].trim_start().to_ascii_lowercase());
            let unit_ms = match unit.strip_suffix('s').unwrap_or(&unit) {
                _ if unit == "ms" => Some(1),
                "millisecond" => Some(1),
                "second" => Some(1000),
                "minute" => Some(60_000),
                "hour" => Some(3_600_000),
                "day" => Some(86_400_000),
                "week" => Some(604_800_000),
                _ => None,
            };
            match (count.parse::<i64>(), unit_ms) {
                (Ok(n), Some(u)) if !count.is_empty() => n.checked_mul(u),
                _ => None,
            }
        }
        _ => None,
    };
    ms.filter(|&ms| ms > 0).ok_or_else(refuse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_text_becomes_a_timestamp_by_the_narrow_rule() {
        let ms = |t: &str| iso_timestamp_ms(t);
        assert_eq!(ms("1970-01-01"), Some(0));
        assert_eq!(ms("1970-01-01 00:00:01.5"), Some(1500));
        assert_eq!(ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(ms("1969-12-31 23:59:59Z"), Some(-1000));
        assert_eq!(ms("2024-02-29 12:00"), Some(1_709_208_000_000));
        for refused in [
            "2023-02-29",
            "2023-02-29 12:00+01:00",
            "2024-04-31T00:00Z",
            "2024-13-01",
            "2024-01-01 25:00",
            "2024-01-01 junk",
            "now",
            "12:00",
            "2460000.5",
            "1700000000",
            "",
            "-0001-01-01",
            "x",
        ] {
            assert_eq!(ms(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn bucket_widths_are_fixed_durations() {
        let w = |t: &str| bucket_width_ms(&Value::from(t)).ok();
        assert_eq!(w("5 minutes"), Some(300_000));
        assert_eq!(w("1 hour"), Some(3_600_000));
        assert_eq!(w(" 2 Weeks "), Some(1_209_600_000));
        assert_eq!(w("250 ms"), Some(250));
        assert_eq!(w("15s"), None);
        assert_eq!(w("1 month"), None);
        assert_eq!(w("0 days"), None);
        assert_eq!(w("99999999999999999 days"), None, "overflow is refused, not wrapped");
        assert_eq!(bucket_width_ms(&Value::Integer(1000)).ok(), Some(1000));
        assert!(matches!(bucket_width_ms(&Value::Real(1.5)), Err(SqlError::BucketWidth { .. })));
    }

    #[test]
    fn buckets_align_to_the_epoch_below_it_too() {
        let bucket = |w: &str, ms: i64| time_bucket(&Value::from(w), &Value::Timestamp(ms), &|| Ok(0)).ok();
        assert_eq!(bucket("1 second", 1999), Some(Value::Timestamp(1000)));
        assert_eq!(bucket("1 second", -1), Some(Value::Timestamp(-1000)));
        assert_eq!(bucket("1 ms", i64::MIN), Some(Value::Timestamp(i64::MIN)));
        assert!(matches!(
            time_bucket(&Value::from("1 day"), &Value::Timestamp(i64::MIN), &|| Ok(0)),
            Err(SqlError::IntegerOverflow)
        ));
    }
}
