//! Scalar functions, `LIKE` and `CAST`, each following SQLite's documented behaviour
//! (1-based `substr` with negative starts, `round` returning a real, case-insensitive ASCII
//! `LIKE`, NULL in → NULL out unless the function exists to handle NULL).

use super::datetime::{self, DateFunc};
use super::expr::CastType;
use super::json;
use super::limits::check_result_bytes;
use super::math::{self, MathFunc};
use super::printf;
use super::realfmt::{real_string, Spec};
use super::value::{self, Num};
use super::SqlError;
use crate::types::Value;

/// A scalar function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Abs,
    Length,
    Lower,
    Upper,
    Substr,
    Round,
    Coalesce,
    Nullif,
    Min,
    Max,
    Typeof,
    Trim,
    Ltrim,
    Rtrim,
    Replace,
    Instr,
    Iif,
    Hex,
    Sign,
    Printf,
    Char,
    Unicode,
    Quote,
    Zeroblob,
    Random,
    Randomblob,
    Concat,
    ConcatWs,
    /// `glob(pattern, x)`, also `x GLOB pattern`.
    Glob,
    Unhex,
    OctetLength,
    /// The operators `&`, `|`, `<<`, `>>` and `~`: on integers as SQLite's
    /// `sqlite3_value_int64` reads the operands; NULL if one is NULL.
    BitAnd,
    BitOr,
    ShiftLeft,
    ShiftRight,
    BitNot,
    /// The JSON functions (`json.rs`). `mask`: which arguments are JSON returned by a
    /// JSON function (bit i for argument i), embedded as JSON rather than as text.
    Json,
    JsonValid,
    JsonQuote {
        mask: u64,
    },
    JsonArray {
        mask: u64,
    },
    JsonObject {
        mask: u64,
    },
    JsonExtract,
    /// `json_extract` given directly to `json_array`, `json_object` or `json_quote`: the
    /// element as JSON text, embedded as JSON (SQLite's subtype of its result).
    JsonExtractJson,
    JsonType,
    JsonArrayLength,
    /// `x -> p` and `x ->> p`.
    JsonArrow,
    JsonLongArrow,
    /// `likely(x)`, `unlikely(x)`: hints for SQLite's planner; the value is `x`.
    Likely,
    /// `likelihood(x, p)`: `x`, once `p` is checked to be a probability.
    Likelihood,
    /// A date function (`datetime/`). Its first argument is the statement time, put there
    /// by the binder (`Expr::StatementTime`); the SQL arguments follow.
    Date(DateFunc),
    /// A math function (`math.rs`).
    Math(MathFunc),
    /// Not callable by name: a parameter compared with a `TIMESTAMP` column
    /// (`Binder::time_operand`). ISO-8601 text becomes the TIMESTAMP it names; any other
    /// value is returned as it is.
    Instant,
}

impl Func {
    /// Whether the function returns JSON (SQLite's JSON subtype): given directly to
    /// `json_array`, `json_object` or `json_quote`, its value is embedded as JSON.
    fn returns_json(self) -> bool {
        matches!(
            self,
            Func::Json
                | Func::JsonQuote { .. }
                | Func::JsonArray { .. }
                | Func::JsonObject { .. }
                | Func::JsonArrow
                | Func::JsonExtractJson
        )
    }

    /// For `json_array`, `json_object` and `json_quote`: the function with its mask marking
    /// the bound arguments that are JSON from a JSON function (a `json_extract` among them
    /// becomes [`Func::JsonExtractJson`], whose result is JSON). Other functions as they are.
    pub fn mark_json_args(self, args: &mut [super::expr::Expr]) -> Func {
        use super::expr::Expr;
        if !matches!(self, Func::JsonQuote { .. } | Func::JsonArray { .. } | Func::JsonObject { .. }) {
            return self;
        }
        let mut mask = 0u64;
        for (i, arg) in args.iter_mut().enumerate().take(64) {
            if let Expr::Func(f @ Func::JsonExtract, _) = arg {
                *f = Func::JsonExtractJson;
            }
            if matches!(arg, Expr::Func(f, _) if f.returns_json()) {
                mask |= 1 << i;
            }
        }
        match self {
            Func::JsonQuote { .. } => Func::JsonQuote { mask },
            Func::JsonArray { .. } => Func::JsonArray { mask },
            _ => Func::JsonObject { mask },
        }
    }

    /// Looks a function up by (lower-case) name and checks its argument count.
    pub fn lookup(name: &str, args: usize) -> Result<Func, SqlError> {
        let date = || DateFunc::lookup(name).map(|(f, min, max)| (Func::Date(f), min, max));
        let math = || math::lookup(name).map(|(f, min, max)| (Func::Math(f), min, max));
        let (func, min, max) = Func::scalar(name)
            .or_else(date)
            .or_else(math)
            .ok_or_else(|| SqlError::UnknownFunction(name.to_string()))?;
        if args < min || args > max {
            return Err(SqlError::ArgumentCount { function: name.to_string() });
        }
        Ok(func)
    }

    /// The scalar functions of this file, with their argument count range.
    fn scalar(name: &str) -> Option<(Func, usize, usize)> {
        Some(match name {
            "abs" => (Func::Abs, 1, 1),
            "length" => (Func::Length, 1, 1),
            "lower" => (Func::Lower, 1, 1),
            "upper" => (Func::Upper, 1, 1),
            "substr" | "substring" => (Func::Substr, 2, 3),
            "round" => (Func::Round, 1, 2),
            "coalesce" => (Func::Coalesce, 2, usize::MAX),
            "ifnull" => (Func::Coalesce, 2, 2),
            "nullif" => (Func::Nullif, 2, 2),
            "min" => (Func::Min, 2, usize::MAX),
            "max" => (Func::Max, 2, usize::MAX),
            "typeof" => (Func::Typeof, 1, 1),
            "trim" => (Func::Trim, 1, 2),
            "ltrim" => (Func::Ltrim, 1, 2),
            "rtrim" => (Func::Rtrim, 1, 2),
            "replace" => (Func::Replace, 3, 3),
            "instr" => (Func::Instr, 2, 2),
            "iif" => (Func::Iif, 3, 3),
            "hex" => (Func::Hex, 1, 1),
            "sign" => (Func::Sign, 1, 1),
            "printf" | "format" => (Func::Printf, 0, usize::MAX),
            "char" => (Func::Char, 0, usize::MAX),
            "unicode" => (Func::Unicode, 1, 1),
            "quote" => (Func::Quote, 1, 1),
            "zeroblob" => (Func::Zeroblob, 1, 1),
            "random" => (Func::Random, 0, 0),
            "randomblob" => (Func::Randomblob, 1, 1),
            "concat" => (Func::Concat, 1, usize::MAX),
            "concat_ws" => (Func::ConcatWs, 2, usize::MAX),
            "glob" => (Func::Glob, 2, 2),
            "unhex" => (Func::Unhex, 1, 2),
            "octet_length" => (Func::OctetLength, 1, 1),
            "likely" | "unlikely" => (Func::Likely, 1, 1),
            "likelihood" => (Func::Likelihood, 2, 2),
            "json" => (Func::Json, 1, 1),
            "json_valid" => (Func::JsonValid, 1, 1),
            "json_quote" => (Func::JsonQuote { mask: 0 }, 1, 1),
            "json_array" => (Func::JsonArray { mask: 0 }, 0, usize::MAX),
            "json_object" => (Func::JsonObject { mask: 0 }, 0, usize::MAX),
            "json_extract" => (Func::JsonExtract, 2, usize::MAX),
            "json_type" => (Func::JsonType, 1, 2),
            "json_array_length" => (Func::JsonArrayLength, 1, 2),
            _ => return None,
        })
    }
}

/// Calls a scalar function on evaluated arguments (arity was checked by `lookup`).
/// [`Func::Instant`]: ISO-8601 text as the TIMESTAMP it names, anything else unchanged.
pub(crate) fn instant(v: Value) -> Value {
    match v {
        Value::Text(text) => match datetime::iso_timestamp_ms(&text) {
            Some(ms) => Value::Timestamp(ms),
            None => Value::Text(text),
        },
        other => other,
    }
}

pub(crate) fn call(func: Func, mut args: Vec<Value>) -> Result<Value, SqlError> {
    let text = |v: &Value| value::to_text(v);
    Ok(match func {
        Func::Coalesce => args.into_iter().find(|v| !v.is_null()).unwrap_or(Value::Null),
        Func::Nullif => {
            let b = args.pop().unwrap_or(Value::Null);
            let a = args.pop().unwrap_or(Value::Null);
            if !b.is_null() && value::compare_sql(&a, &b).is_some_and(|o| o.is_eq()) {
                Value::Null
            } else {
                a
            }
        }
        Func::Iif => {
            let pick = if value::truth(&args[0]) == Some(true) { 1 } else { 2 };
            args.swap_remove(pick)
        }
        Func::Min | Func::Max => min_max(func, args),
        Func::Typeof => Value::Text(type_name(&args[0]).into()),
        Func::Date(f) => match args.split_first() {
            Some((now, rest)) => datetime::call(f, now, rest)?,
            None => return Err(SqlError::invalid("internal error: a date function without the statement time")),
        },
        Func::Math(f) => math::call(f, &args),
        Func::Printf => printf::printf(&args)?,
        Func::Char => char_of(&args)?,
        Func::Quote => quote(&args[0])?,
        Func::Zeroblob => zeroblob(&args[0])?,
        Func::Random => Value::Integer(random_u64() as i64),
        Func::Randomblob => randomblob(&args[0])?,
        Func::Concat => concat(&args, None)?,
        Func::ConcatWs => match value::to_text(&args[0]) {
            Some(separator) => concat(&args[1..], Some(&separator))?,
            None => Value::Null,
        },
        Func::Glob => glob(&args[1], &args[0])?,
        Func::Likely => args.swap_remove(0),
        Func::Instant => instant(args.swap_remove(0)),
        Func::Likelihood => match value::to_num(&args[1]) {
            Some(p) if (0.0..=1.0).contains(&value::num_f64(p)) => args.swap_remove(0),
            _ => {
                return Err(SqlError::invalid("second argument to likelihood() must be a constant between 0.0 and 1.0"))
            }
        },
        Func::Unhex => unhex(&args)?,
        Func::Json => json::json(&args)?,
        Func::JsonValid => json::json_valid(&args),
        Func::JsonQuote { mask } => json::json_quote(&args, mask)?,
        Func::JsonArray { mask } => json::json_array(&args, mask)?,
        Func::JsonObject { mask } => json::json_object(&args, mask)?,
        Func::JsonExtract => json::json_extract(&args, false)?,
        Func::JsonExtractJson => json::json_extract(&args, true)?,
        Func::JsonType => json::json_type(&args)?,
        Func::JsonArrayLength => json::json_array_length(&args)?,
        Func::JsonArrow => json::arrow(&args, false)?,
        Func::JsonLongArrow => json::arrow(&args, true)?,
        Func::BitAnd | Func::BitOr | Func::ShiftLeft | Func::ShiftRight => match (&args[0], &args[1]) {
            (a, b) if a.is_null() || b.is_null() => Value::Null,
            (a, b) => Value::Integer(bitwise(func, value::int_value(a), value::int_value(b))),
        },
        _ if args.first().is_some_and(Value::is_null) => Value::Null,
        Func::BitNot => Value::Integer(!value::int_value(&args[0])),
        // C reads the text up to its first NUL: an empty or NUL-led text has no first character.
        Func::Unicode => match value::to_text(&args[0]).and_then(|t| t.chars().next()).filter(|c| *c != '\0') {
            Some(c) => Value::Integer(i64::from(u32::from(c))),
            None => Value::Null,
        },
        Func::Abs => abs(&args[0])?,
        Func::Sign => match value::to_num(&args[0]) {
            Some(Num::Int(i)) => Value::Integer(i.signum()),
            Some(Num::Real(r)) => Value::Integer(if r > 0.0 {
                1
            } else if r < 0.0 {
                -1
            } else {
                0
            }),
            None => Value::Null,
        },
        Func::Length => match &args[0] {
            Value::Blob(b) => Value::Integer(b.len() as i64),
            v => Value::Integer(text(v).map_or(0, |t| t.chars().count()) as i64),
        },
        Func::Lower | Func::Upper => {
            check_result_bytes(text_len(&args[0]))?;
            let t = text(&args[0]).unwrap_or_default();
            Value::Text(if func == Func::Lower { t.to_ascii_lowercase() } else { t.to_ascii_uppercase() })
        }
        Func::Hex => Value::Text(hex(&args[0])?),
        // Bytes of the text form; a blob's own bytes.
        Func::OctetLength => Value::Integer(match &args[0] {
            Value::Blob(b) => b.len(),
            v => value::to_text(v).map_or(0, |t| t.len()),
        } as i64),
        Func::Substr => substr(&args)?,
        Func::Round => round(&args),
        Func::Trim | Func::Ltrim | Func::Rtrim => {
            check_result_bytes(text_len(&args[0]))?;
            trim(func, &args)
        }
        Func::Replace => replace(&args)?,
        Func::Instr => match (text(&args[0]), text(&args[1])) {
            (Some(h), Some(n)) => Value::Integer(h.find(&n).map_or(0, |i| h[..i].chars().count() + 1) as i64),
            _ => Value::Null,
        },
    })
}

/// `a & b`, `a | b`, `a << b`, `a >> b` as SQLite's `OP_BitAnd` ... `OP_ShiftRight`: a
/// negative shift goes the other way, a shift of 64 or more gives 0 (-1 for a negative
/// value shifted right), and a right shift keeps the sign.
fn bitwise(func: Func, a: i64, b: i64) -> i64 {
    let left = match func {
        Func::BitAnd => return a & b,
        Func::BitOr => return a | b,
        Func::ShiftLeft => true,
        _ => false,
    };
    let (left, by) = if b < 0 { (!left, if b > -64 { -b } else { 64 }) } else { (left, b) };
    match by {
        0 => a,
        64.. if a >= 0 || left => 0,
        64.. => -1,
        _ if left => ((a as u64) << by) as i64,
        _ => a >> by,
    }
}

/// `char(x, ...)`: each argument a code point (as an integer; out of range is U+FFFD),
/// encoded as SQLite encodes it (surrogates too, which makes invalid UTF-8 that reads
/// back as U+FFFD).
fn char_of(args: &[Value]) -> Result<Value, SqlError> {
    check_result_bytes(args.len().saturating_mul(9))?;
    let mut out = String::with_capacity(args.len() * 4);
    for arg in args {
        let x = value::int_value(arg);
        let c = u32::try_from(x).ok().filter(|c| *c <= 0x10ffff).unwrap_or(0xfffd);
        match char::from_u32(c) {
            Some(c) => out.push(c),
            // A surrogate: SQLite's three bytes (ED A0..BF xx) are three invalid bytes.
            None => out.push_str("\u{fffd}\u{fffd}\u{fffd}"),
        }
    }
    Ok(Value::Text(out))
}

/// `quote(x)`: the SQL literal of `x`. A real is written with 15 significant digits, or
/// 20 when 15 do not read back as the same value (SQLite's `sqlite3QuoteValue`).
fn quote(v: &Value) -> Result<Value, SqlError> {
    let text = match v {
        Value::Null => "NULL".to_string(),
        Value::Integer(i) | Value::Timestamp(i) => i.to_string(),
        Value::Boolean(b) => i64::from(*b).to_string(),
        Value::Real(r) => {
            // `%!0.15g`, read back as SQLite reads it (`sqlite3AtoF`, off by an ulp near
            // the ends of the range), else `%!0.20e`.
            let spec = |precision| Spec { alt2: true, zero: true, precision: Some(precision), ..Spec::default() };
            let short = real_string(&spec(15), *r, b'g');
            if datetime::atof(short.as_bytes()).0 == *r {
                short
            } else {
                real_string(&spec(20), *r, b'e')
            }
        }
        Value::Text(_) => return printf::printf(&[Value::from("%Q"), v.clone()]),
        Value::Blob(b) => {
            check_result_bytes(b.len().saturating_mul(2).saturating_add(3))?;
            format!("X'{}'", hex::encode_upper(b))
        }
    };
    Ok(Value::Text(text))
}

/// `unhex(x[, ignored])`: the bytes of pairs of hex digits; characters of `ignored` may
/// stand between pairs, anything else (or an odd digit) gives NULL (SQLite's `unhexFunc`).
fn unhex(args: &[Value]) -> Result<Value, SqlError> {
    let Some(text) = value::to_text(&args[0]) else { return Ok(Value::Null) };
    let ignored = match args.get(1) {
        Some(v) => match value::to_text(v) {
            Some(t) => t,
            None => return Ok(Value::Null),
        },
        None => String::new(),
    };
    check_result_bytes(text.len() / 2)?;
    // C reads the text up to its first NUL.
    let mut chars = text.chars().take_while(|c| *c != '\0');
    let mut out = Vec::with_capacity(text.len() / 2);
    while let Some(c) = chars.next() {
        let Some(high) = c.to_digit(16).filter(|_| c.is_ascii()) else {
            if !ignored.contains(c) {
                return Ok(Value::Null);
            }
            continue;
        };
        let Some(low) = chars.next().and_then(|d| d.to_digit(16).filter(|_| d.is_ascii())) else {
            return Ok(Value::Null);
        };
        out.push((high << 4 | low) as u8);
    }
    Ok(Value::Blob(out))
}

/// `zeroblob(n)`: `n` zero bytes (none if `n` is negative or NULL).
fn zeroblob(n: &Value) -> Result<Value, SqlError> {
    let n = usize::try_from(value::int_value(n).max(0)).unwrap_or(usize::MAX);
    check_result_bytes(n)?;
    Ok(Value::Blob(vec![0; n]))
}

/// Whether a function of this name gives another value at each call (`random()`,
/// `randomblob()`): a plan that evaluates it once (a `VALUES` row, a `LIMIT`) must not
/// be kept for the next execution.
pub(crate) fn is_random(name: &str) -> bool {
    matches!(name, "random" | "randomblob")
}

/// The values of `random()` and `randomblob()`: a process-wide counter hashed under a key
/// the standard library draws from the operating system (`RandomState`, SipHash), so
/// values differ between calls and between processes. Not for cryptography (SQLite's
/// are not either). Values are made where the statement runs and replicate as values.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    KEY.get_or_init(std::hash::RandomState::new).hash_one(n)
}

/// `randomblob(N)`: N random bytes; as SQLite, one byte for N below 1.
fn randomblob(n: &Value) -> Result<Value, SqlError> {
    let n = usize::try_from(value::int_value(n).max(1)).unwrap_or(usize::MAX);
    check_result_bytes(n)?;
    let mut bytes = Vec::with_capacity(n);
    while bytes.len() < n {
        let word = random_u64().to_le_bytes();
        bytes.extend_from_slice(&word[..(n - bytes.len()).min(8)]);
    }
    Ok(Value::Blob(bytes))
}

/// `concat(x, ...)` and `concat_ws(separator, x, ...)`: the text of the arguments that are
/// not NULL; as in SQLite, the separator goes only after some text was written.
fn concat(args: &[Value], separator: Option<&str>) -> Result<Value, SqlError> {
    let separator = separator.unwrap_or("");
    let bytes = args.iter().map(text_len).fold(0usize, usize::saturating_add);
    check_result_bytes(bytes.saturating_add(separator.len().saturating_mul(args.len())))?;
    let mut out = String::new();
    for text in args.iter().filter_map(value::to_text) {
        if !out.is_empty() {
            out.push_str(separator);
        }
        out.push_str(&text);
    }
    Ok(Value::Text(out))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Integer(_) | Value::Boolean(_) | Value::Timestamp(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}

fn min_max(func: Func, args: Vec<Value>) -> Value {
    if args.iter().any(Value::is_null) {
        return Value::Null;
    }
    let pick = |a: Value, b: Value| {
        let order = value::compare(&b, &a);
        let take_b = if func == Func::Min { order.is_lt() } else { order.is_gt() };
        if take_b {
            b
        } else {
            a
        }
    };
    args.into_iter().reduce(pick).unwrap_or(Value::Null)
}

fn abs(v: &Value) -> Result<Value, SqlError> {
    Ok(match value::to_num(v) {
        Some(Num::Int(i)) => Value::Integer(i.checked_abs().ok_or(SqlError::IntegerOverflow)?),
        Some(Num::Real(r)) => Value::Real(r.abs()),
        None => Value::Null,
    })
}

/// Bytes of a value's text form ([`value::to_text`]) without building it.
pub(crate) fn text_len(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::Text(t) => t.len(),
        // Invalid UTF-8 becomes U+FFFD (3 bytes) per bad byte at most.
        Value::Blob(b) => std::str::from_utf8(b).map_or(b.len().saturating_mul(3), str::len),
        // Numbers render in at most 32 bytes.
        _ => 32,
    }
}

fn hex(v: &Value) -> Result<String, SqlError> {
    let len = match v {
        Value::Blob(b) => b.len(),
        other => text_len(other),
    };
    check_result_bytes(len.saturating_mul(2))?;
    Ok(match v {
        Value::Blob(b) => hex::encode_upper(b),
        other => hex::encode_upper(value::to_text(other).unwrap_or_default()),
    })
}

/// `replace(s, from, to)`; the result's length is computed before it is built, so a
/// nesting that grows a text exponentially fails before allocating.
fn replace(args: &[Value]) -> Result<Value, SqlError> {
    let text = |v: &Value| value::to_text(v);
    Ok(match (text(&args[0]), text(&args[1]), text(&args[2])) {
        (Some(s), Some(from), Some(to)) if !from.is_empty() => {
            let hits = s.matches(from.as_str()).count();
            let len = (s.len() - hits * from.len()).saturating_add(hits.saturating_mul(to.len()));
            check_result_bytes(len)?;
            Value::Text(s.replace(&from, &to))
        }
        (Some(s), Some(_), Some(_)) => Value::Text(s),
        _ => Value::Null,
    })
}

/// `substr(s, start[, len])`: 1-based; a start ≤ 0 counts the characters before the
/// string; a negative start counts from the end; a negative length takes characters
/// before `start`.
fn substr(args: &[Value]) -> Result<Value, SqlError> {
    let int = |v: &Value| value::to_num(v).map(|n| value::num_f64(n) as i64);
    let Some(start) = int(&args[1]) else { return Ok(Value::Null) };
    let len = match args.get(2) {
        Some(v) => match int(v) {
            Some(l) => Some(l),
            None => return Ok(Value::Null),
        },
        None => None,
    };
    let text = match &args[0] {
        Value::Blob(_) => None,
        v => Some(value::to_text(v).unwrap_or_default()),
    };
    let n = match (&args[0], &text) {
        (Value::Blob(b), _) => b.len(),
        (_, Some(t)) => t.chars().count(),
        _ => 0,
    } as i64;
    // SQLite's own arithmetic (func.c substrFunc), step by step.
    let mut p1 = start;
    let mut p2 = len.unwrap_or(i64::MAX / 4);
    let negative = p2 < 0;
    if negative {
        p2 = p2.saturating_neg();
    }
    if p1 < 0 {
        p1 += n;
        if p1 < 0 {
            p2 = (p2 + p1).max(0);
            p1 = 0;
        }
    } else if p1 > 0 {
        p1 -= 1;
    } else if p2 > 0 {
        p2 -= 1;
    }
    if negative {
        p1 -= p2;
        if p1 < 0 {
            p2 += p1;
            p1 = 0;
        }
    }
    let (first, end) = (p1, p1.saturating_add(p2).min(n));
    let (first, end) = if first < end { (first as usize, end as usize) } else { (0, 0) };
    Ok(match (&args[0], text) {
        (Value::Blob(b), _) => Value::Blob(b[first..end].to_vec()),
        (_, Some(t)) => {
            // Characters `first..end` as a byte range of the text.
            let mut offsets = t.char_indices().map(|(i, _)| i).chain(std::iter::once(t.len()));
            let start = offsets.nth(first).unwrap_or(t.len());
            let stop = if end > first { offsets.nth(end - first - 1).unwrap_or(t.len()) } else { start };
            Value::Text(t[start..stop].to_string())
        }
        _ => Value::Null,
    })
}

fn round(args: &[Value]) -> Value {
    let Some(x) = value::to_num(&args[0]).map(value::num_f64) else { return Value::Null };
    let digits = match args.get(1) {
        Some(v) if v.is_null() => return Value::Null,
        Some(v) => value::to_num(v).map_or(0, |n| value::num_f64(n) as i64).clamp(0, 30),
        None => 0,
    };
    if digits == 0 {
        return Value::Real(x.round());
    }
    // Rounding through the decimal text, as SQLite's printf-based round does.
    let text = format!("{:.*}", digits as usize, x);
    Value::Real(text.parse().unwrap_or(x))
}

fn trim(func: Func, args: &[Value]) -> Value {
    let Some(s) = value::to_text(&args[0]) else { return Value::Null };
    let chars: Vec<char> = match args.get(1) {
        Some(v) => match value::to_text(v) {
            Some(t) => t.chars().collect(),
            None => return Value::Null,
        },
        None => vec![' '],
    };
    let set = |c: char| chars.contains(&c);
    Value::Text(match func {
        Func::Ltrim => s.trim_start_matches(set).to_string(),
        Func::Rtrim => s.trim_end_matches(set).to_string(),
        _ => s.trim_matches(set).to_string(),
    })
}

/// `expr [NOT] LIKE pattern [ESCAPE e]`: `%` any run, `_` one character, ASCII
/// case-insensitive.
pub(crate) fn like(v: &Value, pattern: &Value, escape: Option<&Value>, negated: bool) -> Result<Value, SqlError> {
    if v.is_null() || pattern.is_null() {
        return Ok(Value::Null);
    }
    // Both are matched as characters, four bytes each.
    check_result_bytes(text_len(v).saturating_add(text_len(pattern)).saturating_mul(4))?;
    let (Some(text), Some(pattern)) = (value::to_text(v), value::to_text(pattern)) else { return Ok(Value::Null) };
    let escape = match escape {
        None => None,
        Some(e) => {
            let Some(e) = value::to_text(e) else { return Ok(Value::Null) };
            let mut chars = e.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => return Err(SqlError::invalid("ESCAPE expression must be a single character")),
            }
        }
    };
    let text: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    let pattern: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    Ok(value::from_truth(Some(like_match(&text, &pattern, escape) != negated)))
}

/// A LIKE pattern as wildcards: `%` any characters, `_` one, the escape character makes
/// the next one literal.
fn like_match(text: &[char], pattern: &[char], escape: Option<char>) -> bool {
    let mut elements = Vec::with_capacity(pattern.len());
    let mut p = 0;
    while p < pattern.len() {
        let c = pattern[p];
        p += 1;
        elements.push(match c {
            c if Some(c) == escape && p < pattern.len() => {
                p += 1;
                Wildcard::Char(pattern[p - 1])
            }
            '%' => Wildcard::Star,
            '_' => Wildcard::One,
            c => Wildcard::Char(c),
        });
    }
    wildcard_match(text, &elements)
}

/// SQLite's `SQLITE_MAX_LIKE_PATTERN_LENGTH`: a longer LIKE or GLOB pattern is refused.
const PATTERN_BYTES_MAX: usize = 50_000;

/// `x GLOB pattern`, as SQLite's `patternCompare` matches it: `*` any characters, `?` one,
/// `[...]` one of a set (`^` first negates, `a-z` ranges, a `]` first is literal; an
/// unclosed set matches nothing); everything else itself, case-sensitively. NULL in, NULL
/// out.
fn glob(v: &Value, pattern: &Value) -> Result<Value, SqlError> {
    if v.is_null() || pattern.is_null() {
        return Ok(Value::Null);
    }
    if text_len(pattern) > PATTERN_BYTES_MAX {
        return Err(SqlError::invalid("LIKE or GLOB pattern too complex"));
    }
    check_result_bytes(text_len(v).saturating_add(text_len(pattern)).saturating_mul(4))?;
    let (Some(text), Some(pattern)) = (value::to_text(v), value::to_text(pattern)) else { return Ok(Value::Null) };
    // C reads both up to their first NUL.
    let upto_nul = |s: &str| s.chars().take_while(|c| *c != '\0').collect::<Vec<char>>();
    let elements = glob_elements(&upto_nul(&pattern));
    Ok(value::from_truth(Some(wildcard_match(&upto_nul(&text), &elements))))
}

/// One element of a LIKE or GLOB pattern: each but `Star` matches exactly one character.
enum Wildcard {
    Star,
    One,
    Char(char),
    Set {
        singles: Vec<char>,
        ranges: Vec<(char, char)>,
        invert: bool,
    },
    /// A `[` without its `]`.
    Unclosed,
}

fn glob_elements(pattern: &[char]) -> Vec<Wildcard> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        let c = pattern[i];
        i += 1;
        out.push(match c {
            '*' => Wildcard::Star,
            '?' => Wildcard::One,
            '[' => {
                let (element, next) = glob_set(pattern, i);
                i = next;
                element
            }
            c => Wildcard::Char(c),
        });
    }
    out
}

/// The set starting after a `[` at `i`, as `patternCompare` reads it; and where the
/// pattern goes on.
fn glob_set(pattern: &[char], mut i: usize) -> (Wildcard, usize) {
    let at = |i: usize| pattern.get(i).copied();
    let (mut singles, mut ranges) = (Vec::new(), Vec::new());
    let mut invert = false;
    if at(i) == Some('^') {
        invert = true;
        i += 1;
    }
    if at(i) == Some(']') {
        singles.push(']');
        i += 1;
    }
    let mut prior: Option<char> = None;
    loop {
        match at(i) {
            None => return (Wildcard::Unclosed, pattern.len()),
            Some(']') => return (Wildcard::Set { singles, ranges, invert }, i + 1),
            Some('-') if prior.is_some() && !matches!(at(i + 1), None | Some(']')) => {
                ranges.push((prior.take().expect("checked"), pattern[i + 1]));
                i += 2;
            }
            Some(c) => {
                singles.push(c);
                prior = Some(c);
                i += 1;
            }
        }
    }
}

fn matches_one(element: &Wildcard, c: char) -> bool {
    match element {
        Wildcard::Star => unreachable!("a star is handled by the matcher"),
        Wildcard::One => true,
        Wildcard::Char(p) => *p == c,
        Wildcard::Set { singles, ranges, invert } => {
            let seen = singles.contains(&c) || ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
            seen != *invert
        }
        Wildcard::Unclosed => false,
    }
}

/// Matching with backtracking to the last star: every other element takes one character,
/// so the last star's extent is the only choice to revisit (linear in practice).
fn wildcard_match(text: &[char], pattern: &[Wildcard]) -> bool {
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Wildcard::Star) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(element) if matches_one(element, text[t]) => {
                t += 1;
                p += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|e| matches!(e, Wildcard::Star))
}

/// `CAST(v AS type)` with SQLite's conversions (text to number by numeric prefix, real
/// to integer by truncation).
pub(crate) fn cast(v: Value, ty: CastType) -> Result<Value, SqlError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if matches!(ty, CastType::Text | CastType::Blob) && !matches!(v, Value::Text(_) | Value::Blob(_)) {
        check_result_bytes(text_len(&v))?;
    }
    // ISO-8601 text names an instant (the rule of TIMESTAMP columns); other text converts
    // by its numeric prefix, as to INTEGER.
    if let (CastType::Timestamp, Some(ms)) = (ty, iso_text_ms(&v)) {
        return Ok(Value::Timestamp(ms));
    }
    Ok(match ty {
        CastType::Integer | CastType::Timestamp => {
            let i = match value::to_num(&v) {
                Some(Num::Int(i)) => i,
                Some(Num::Real(r)) => real_to_int(r),
                None => 0,
            };
            if ty == CastType::Timestamp {
                Value::Timestamp(i)
            } else {
                Value::Integer(i)
            }
        }
        CastType::Real => Value::Real(value::to_num(&v).map_or(0.0, value::num_f64)),
        CastType::Text => Value::Text(value::to_text(&v).unwrap_or_default()),
        CastType::Blob => match v {
            Value::Blob(b) => Value::Blob(b),
            other => Value::Blob(value::to_text(&other).unwrap_or_default().into_bytes()),
        },
        CastType::Numeric => match value::to_num(&v) {
            Some(Num::Real(r)) if r == r.trunc() && r.abs() < 9.2e18 => Value::Integer(r as i64),
            Some(n) => value::num_value(n),
            None => Value::Integer(0),
        },
        CastType::Boolean => Value::Boolean(value::truth(&v) == Some(true)),
    })
}

fn iso_text_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Text(t) => datetime::iso_timestamp_ms(t),
        _ => None,
    }
}

pub(crate) fn real_to_int(r: f64) -> i64 {
    if r.is_nan() {
        0
    } else {
        // `as` saturates at the i64 range, as SQLite does.
        r as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Text(v.into())
    }

    #[test]
    fn substr_follows_sqlite() {
        let sub = |a: i64, b: Option<i64>| {
            let mut args = vec![s("hello"), Value::Integer(a)];
            args.extend(b.map(Value::Integer));
            substr(&args).unwrap()
        };
        assert_eq!(sub(2, Some(3)), s("ell"));
        assert_eq!(sub(-3, None), s("llo"));
        assert_eq!(sub(0, Some(2)), s("h"));
        assert_eq!(sub(3, Some(-2)), s("he"));
        assert_eq!(sub(10, None), s(""));
    }

    #[test]
    fn like_matches_wildcards_and_escapes() {
        let m = |t: &str, p: &str| like(&s(t), &s(p), None, false).unwrap() == Value::Integer(1);
        assert!(m("Hello", "h%o"));
        assert!(m("Hello", "_ELLO"));
        assert!(!m("Hello", "h%x"));
        assert!(m("", "%"));
        let escaped = like(&s("10%"), &s("10!%"), Some(&s("!")), false).unwrap();
        assert_eq!(escaped, Value::Integer(1));
    }
}
