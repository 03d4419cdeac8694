//! SQLite value semantics over [`Value`]: ordering, truth, arithmetic, text and numeric
//! conversion, and hashable keys for joins, grouping and `DISTINCT`.
//!
//! edgestore columns are strictly typed, so there is no type affinity: values compare by
//! SQLite's storage-class order (NULL < numbers < text < blob), integers and reals compare
//! numerically, and `BOOLEAN` / `TIMESTAMP` behave as the integers SQLite would store.

use std::cmp::Ordering;

use super::SqlError;
use crate::types::Value;

/// A number as SQLite computes with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Real(f64),
}

/// Storage-class rank for ordering values of different kinds.
fn class(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Integer(_) | Value::Real(_) | Value::Boolean(_) | Value::Timestamp(_) => 1,
        Value::Text(_) => 2,
        Value::Blob(_) => 3,
    }
}

/// The numeric value of a number-class value.
pub(crate) fn as_num(v: &Value) -> Option<Num> {
    match v {
        Value::Integer(i) | Value::Timestamp(i) => Some(Num::Int(*i)),
        Value::Boolean(b) => Some(Num::Int(i64::from(*b))),
        Value::Real(r) => Some(Num::Real(*r)),
        _ => None,
    }
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        // -0.0 equals 0.0 (total_cmp would order them); NaN never gets here (it becomes NULL).
        (Num::Real(x), Num::Real(y)) => x.partial_cmp(&y).unwrap_or_else(|| x.total_cmp(&y)),
        (Num::Int(x), Num::Real(y)) => cmp_int_real(x, y),
        (Num::Real(x), Num::Int(y)) => cmp_int_real(y, x).reverse(),
    }
}

/// Compares an integer with a real exactly (a cast to f64 would round large integers).
fn cmp_int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 is exactly representable: every real at or above it exceeds every i64.
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = r.trunc() as i64;
    match i.cmp(&t) {
        Ordering::Equal => {
            let fraction = r - r.trunc();
            if fraction > 0.0 {
                Ordering::Less
            } else if fraction < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        other => other,
    }
}

/// SQLite's total order of values (used by `ORDER BY`, `MIN`/`MAX` and comparisons
/// once NULL has been handled): NULL first, then numbers, text (bytewise), blobs.
pub(crate) fn compare(a: &Value, b: &Value) -> Ordering {
    let (ca, cb) = (class(a), class(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => match (as_num(a), as_num(b)) {
            (Some(x), Some(y)) => cmp_num(x, y),
            _ => Ordering::Equal,
        },
    }
}

/// A comparison operator's result: NULL if either side is NULL, else 1 or 0.
pub(crate) fn compare_sql(a: &Value, b: &Value) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        None
    } else {
        Some(compare(a, b))
    }
}

/// SQL truth: `None` for NULL (unknown), else whether the value is non-zero.
pub(crate) fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Null => None,
        Value::Text(t) => Some(text_to_num(t).is_some_and(num_nonzero)),
        Value::Blob(b) => Some(text_to_num(&String::from_utf8_lossy(b)).is_some_and(num_nonzero)),
        other => Some(as_num(other).is_some_and(num_nonzero)),
    }
}

fn num_nonzero(n: Num) -> bool {
    match n {
        Num::Int(i) => i != 0,
        Num::Real(r) => r != 0.0,
    }
}

/// A boolean as SQLite returns it: integer 1 or 0, NULL for unknown.
pub(crate) fn from_truth(b: Option<bool>) -> Value {
    b.map_or(Value::Null, |b| Value::Integer(i64::from(b)))
}

/// The longest numeric prefix of a text, as SQLite converts text in arithmetic:
/// `'12abc'` is 12, `'abc'` is 0 (returned as `None` so callers can tell).
pub(crate) fn text_to_num(text: &str) -> Option<Num> {
    let t = text.trim_start();
    let bytes = t.as_bytes();
    let mut end = 0;
    if end < bytes.len() && (bytes[end] == b'+' || bytes[end] == b'-') {
        end += 1;
    }
    let digits_start = end;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    let mut is_real = false;
    if end < bytes.len() && bytes[end] == b'.' {
        is_real = true;
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    if end == digits_start || (is_real && end == digits_start + 1) {
        return None;
    }
    if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
        let mut e = end + 1;
        if e < bytes.len() && (bytes[e] == b'+' || bytes[e] == b'-') {
            e += 1;
        }
        if e < bytes.len() && bytes[e].is_ascii_digit() {
            while e < bytes.len() && bytes[e].is_ascii_digit() {
                e += 1;
            }
            is_real = true;
            end = e;
        }
    }
    let number = &t[..end];
    if !is_real {
        if let Ok(i) = number.parse::<i64>() {
            return Some(Num::Int(i));
        }
    }
    number.parse::<f64>().ok().map(Num::Real)
}

/// A value as a number for arithmetic (text and blobs convert; NULL is `None`).
pub(crate) fn to_num(v: &Value) -> Option<Num> {
    match v {
        Value::Null => None,
        Value::Text(t) => Some(text_to_num(t).unwrap_or(Num::Int(0))),
        Value::Blob(b) => Some(text_to_num(&String::from_utf8_lossy(b)).unwrap_or(Num::Int(0))),
        other => as_num(other),
    }
}

pub(crate) fn num_value(n: Num) -> Value {
    match n {
        Num::Int(i) => Value::Integer(i),
        Num::Real(r) if r.is_nan() => Value::Null,
        Num::Real(r) => Value::Real(r),
    }
}

pub(crate) fn num_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Real(r) => r,
    }
}

/// A real rendered as SQLite renders it in text (`1.0`, `0.1`, `1.0e+20`).
pub(crate) fn real_text(r: f64) -> String {
    super::realfmt::real_text(r)
}

/// A value as text, as SQLite converts it (`||`, `length`, `lower`...). NULL is `None`.
pub(crate) fn to_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(t) => Some(t.clone()),
        Value::Integer(i) | Value::Timestamp(i) => Some(i.to_string()),
        Value::Boolean(b) => Some(i64::from(*b).to_string()),
        Value::Real(r) => Some(real_text(*r)),
        Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// A hashable form of a value where values that compare equal are equal (1 = 1.0 = TRUE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyValue {
    Null,
    Int(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

pub(crate) fn key_of(v: &Value) -> KeyValue {
    match v {
        Value::Null => KeyValue::Null,
        Value::Integer(i) | Value::Timestamp(i) => KeyValue::Int(*i),
        Value::Boolean(b) => KeyValue::Int(i64::from(*b)),
        Value::Real(r) => {
            if r.trunc() == *r && (-9.2e18..9.2e18).contains(r) {
                KeyValue::Int(*r as i64)
            } else {
                KeyValue::Real(r.to_bits())
            }
        }
        Value::Text(t) => KeyValue::Text(t.clone()),
        Value::Blob(b) => KeyValue::Blob(b.clone()),
    }
}

/// Bytes a key value holds, as accounted against a statement's budget.
pub(crate) fn key_value_bytes(k: &KeyValue) -> usize {
    std::mem::size_of::<KeyValue>()
        + match k {
            KeyValue::Text(t) => t.len(),
            KeyValue::Blob(b) => b.len(),
            _ => 0,
        }
}

/// A hash map keyed by [`KeyValue`]s: the in-memory tables of hash joins, grouping and
/// `DISTINCT`. foldhash is fast (SipHash costs more per row than the rest of a hash join's
/// probe) and every table gets its own seed, derived from one chosen at random per process:
/// keys come from rows a peer may have written, and with a fixed hash function crafted rows
/// could all collide and slow every query over them down. The seed changes speed only:
/// no operator's output follows a table's iteration order.
pub(crate) type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// [`key_of`] without cloning text or blobs.
pub(crate) fn key_of_owned(v: Value) -> KeyValue {
    match v {
        Value::Text(t) => KeyValue::Text(t),
        Value::Blob(b) => KeyValue::Blob(b),
        other => key_of(&other),
    }
}

/// Integer arithmetic that overflows falls back to real, as in SQLite.
pub(crate) fn arith(op: ArithOp, a: &Value, b: &Value) -> Result<Value, SqlError> {
    let (Some(x), Some(y)) = (to_num(a), to_num(b)) else { return Ok(Value::Null) };
    let value = match (x, y) {
        (Num::Int(x), Num::Int(y)) => int_arith(op, x, y),
        // SQLite's `%` on anything but two integers takes each operand's integer value as
        // `sqlite3VdbeIntValue` reads it (`'1e3' % 40` is 1.0), and answers a real.
        _ if op == ArithOp::Rem => match int_value(b) {
            0 => Value::Null,
            y => Value::Real(int_value(a).checked_rem(y).unwrap_or(0) as f64),
        },
        _ => real_arith(op, num_f64(x), num_f64(y)),
    };
    Ok(value)
}

/// A value as an integer as SQLite's `sqlite3_value_int64` reads it: text by its integer
/// prefix (`'1e3'` is 1), reals truncated (saturating), NULL 0. `printf`'s integer
/// arguments, `char`, `zeroblob` and `%` on non-integers use it.
pub(crate) fn int_value(v: &Value) -> i64 {
    match v {
        Value::Text(t) => integer_prefix(t.as_bytes()),
        Value::Blob(b) => integer_prefix(b),
        other => match to_num(other) {
            Some(Num::Int(i)) => i,
            Some(Num::Real(r)) if r.is_nan() => 0,
            Some(Num::Real(r)) => r as i64,
            None => 0,
        },
    }
}

/// `sqlite3Atoi64` as `sqlite3_value_int64` uses it: leading space, a sign, then digits up
/// to the first other byte (`'1e3'` is 1, `'12abc'` 12); out of range saturates.
fn integer_prefix(bytes: &[u8]) -> i64 {
    let mut rest = bytes.trim_ascii_start();
    let negative = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'-' | b'+')) {
        rest = &rest[1..];
    }
    let mut magnitude: u64 = 0;
    for d in rest.iter().take_while(|b| b.is_ascii_digit()) {
        magnitude = magnitude.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    if negative {
        0i64.saturating_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

fn int_arith(op: ArithOp, x: i64, y: i64) -> Value {
    let checked = match op {
        ArithOp::Add => x.checked_add(y),
        ArithOp::Sub => x.checked_sub(y),
        ArithOp::Mul => x.checked_mul(y),
        ArithOp::Div if y == 0 => return Value::Null,
        // i64::MIN / -1 overflows: it becomes a real like any other overflow.
        ArithOp::Div => x.checked_div(y),
        ArithOp::Rem if y == 0 => return Value::Null,
        ArithOp::Rem => Some(x.checked_rem(y).unwrap_or(0)),
    };
    checked.map_or_else(|| real_arith(op, x as f64, y as f64), Value::Integer)
}

fn real_arith(op: ArithOp, x: f64, y: f64) -> Value {
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return Value::Null,
        ArithOp::Div => x / y,
        // `arith` takes % on the operands' integer values; `int_arith`'s % never overflows.
        ArithOp::Rem => unreachable!("% is never computed on reals"),
    };
    num_value(Num::Real(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_integer_and_real() {
        assert_eq!(compare(&Value::Integer(1), &Value::Real(1.0)), Ordering::Equal);
        assert_eq!(compare(&Value::Integer(1), &Value::Real(1.5)), Ordering::Less);
        assert_eq!(compare(&Value::Integer(2), &Value::Real(1.5)), Ordering::Greater);
        assert_eq!(compare(&Value::Integer(-1), &Value::Real(-1.5)), Ordering::Greater);
        assert_eq!(compare(&Value::Integer(i64::MAX), &Value::Real(9.3e18)), Ordering::Less);
        assert_eq!(compare(&Value::Integer(5), &Value::Text("a".into())), Ordering::Less);
        assert_eq!(compare(&Value::Null, &Value::Integer(0)), Ordering::Less);
    }

    #[test]
    fn text_converts_by_numeric_prefix() {
        assert_eq!(text_to_num("12abc"), Some(Num::Int(12)));
        assert_eq!(text_to_num(" 1.5e2x"), Some(Num::Real(150.0)));
        assert_eq!(text_to_num("abc"), None);
        assert_eq!(text_to_num("."), None);
    }

    #[test]
    fn integer_arithmetic_follows_sqlite() {
        let i = Value::Integer;
        assert_eq!(arith(ArithOp::Div, &i(7), &i(2)).unwrap(), i(3));
        assert_eq!(arith(ArithOp::Div, &i(-7), &i(2)).unwrap(), i(-3));
        assert_eq!(arith(ArithOp::Div, &i(7), &i(0)).unwrap(), Value::Null);
        assert_eq!(arith(ArithOp::Div, &i(i64::MIN), &i(-1)).unwrap(), Value::Real(-(i64::MIN as f64)));
        assert_eq!(arith(ArithOp::Add, &i(i64::MAX), &i(1)).unwrap(), Value::Real(i64::MAX as f64 + 1.0));
        assert_eq!(real_text(1.0), "1.0");
        assert_eq!(real_text(0.1), "0.1");
    }
}
