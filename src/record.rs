//! The compact record that materialized rows are stored in (`rows_v1` values).
//!
//! A record is a varint column count followed by one tagged value per column of the table's
//! winning definition, in definition order. It is what every read decodes, so it is small
//! and cheap: integers are zigzag varints, text and blobs are length-prefixed. Records come
//! from disk, so decoding checks every length and tag.

use crate::types::Value;

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_FALSE: u8 = 4;
const TAG_TRUE: u8 = 5;
const TAG_BLOB: u8 = 6;
const TAG_TIMESTAMP: u8 = 7;

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed row record: {0}")]
pub struct RecordError(pub &'static str);

/// Encodes a row's values.
pub fn encode(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + values.len() * 4);
    put_varint(values.len() as u64, &mut out);
    for value in values {
        match value {
            Value::Null => out.push(TAG_NULL),
            Value::Integer(v) => {
                out.push(TAG_INTEGER);
                put_varint(zigzag(*v), &mut out);
            }
            Value::Timestamp(v) => {
                out.push(TAG_TIMESTAMP);
                put_varint(zigzag(*v), &mut out);
            }
            Value::Real(v) => {
                out.push(TAG_REAL);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Boolean(v) => out.push(if *v { TAG_TRUE } else { TAG_FALSE }),
            Value::Text(v) => {
                out.push(TAG_TEXT);
                put_varint(v.len() as u64, &mut out);
                out.extend_from_slice(v.as_bytes());
            }
            Value::Blob(v) => {
                out.push(TAG_BLOB);
                put_varint(v.len() as u64, &mut out);
                out.extend_from_slice(v);
            }
        }
    }
    debug_assert!(
        decode(&out).is_ok_and(|back| same_values(&back, values)),
        "a record must decode to the values it was encoded from"
    );
    out
}

/// Whether two rows hold the same values, reals compared by bits (so NaN equals itself):
/// the shadow check of [`encode`].
fn same_values(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
            (x, y) => x == y,
        })
}

/// Decodes a record.
pub fn decode(mut input: &[u8]) -> Result<Vec<Value>, RecordError> {
    let values = decode_front(&mut input)?;
    if !input.is_empty() {
        return Err(RecordError("trailing bytes"));
    }
    Ok(values)
}

/// Decodes the record at the front of `input` and advances past it (records laid end to
/// end: an append batch, a block).
pub(crate) fn decode_front(input: &mut &[u8]) -> Result<Vec<Value>, RecordError> {
    let mut rest = *input;
    let values = decode_values(&mut rest)?;
    *input = rest;
    Ok(values)
}

fn decode_values(input: &mut &[u8]) -> Result<Vec<Value>, RecordError> {
    let count = take_varint(input)?;
    // Each value takes at least one byte: a count larger than the input is a lie.
    if count > input.len() as u64 {
        return Err(RecordError("column count exceeds record length"));
    }
    let mut values = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (&tag, rest) = input.split_first().ok_or(RecordError("truncated"))?;
        *input = rest;
        let value = match tag {
            TAG_NULL => Value::Null,
            TAG_INTEGER => Value::Integer(unzigzag(take_varint(input)?)),
            TAG_TIMESTAMP => Value::Timestamp(unzigzag(take_varint(input)?)),
            TAG_REAL => {
                let bytes = take(input, 8)?;
                Value::Real(f64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
            }
            TAG_FALSE => Value::Boolean(false),
            TAG_TRUE => Value::Boolean(true),
            TAG_TEXT => {
                let len = take_varint(input)?;
                let bytes = take(input, len)?;
                let text = std::str::from_utf8(bytes).map_err(|_| RecordError("bad utf-8"))?;
                Value::Text(text.to_string())
            }
            TAG_BLOB => {
                let len = take_varint(input)?;
                Value::Blob(take(input, len)?.to_vec())
            }
            _ => return Err(RecordError("unknown tag")),
        };
        values.push(value);
    }
    debug_assert_eq!(values.len() as u64, count, "a decoded record has the count it declares");
    Ok(values)
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    let start = out.len();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    debug_assert!(out.len() - start <= 10, "a u64 varint takes at most 10 bytes");
}

pub(crate) fn take_varint(input: &mut &[u8]) -> Result<u64, RecordError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(RecordError("truncated varint"))?;
        *input = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecordError("varint too long"))
}

fn take<'a>(input: &mut &'a [u8], len: u64) -> Result<&'a [u8], RecordError> {
    let len = usize::try_from(len).map_err(|_| RecordError("length overflow"))?;
    if input.len() < len {
        return Err(RecordError("truncated value"));
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<i64>().prop_map(Value::Timestamp),
            any::<f64>().prop_filter("NaN != NaN", |v| !v.is_nan()).prop_map(Value::Real),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(values in proptest::collection::vec(value_strategy(), 0..8)) {
            prop_assert_eq!(decode(&encode(&values)).unwrap(), values);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode(&bytes);
        }
    }
}
