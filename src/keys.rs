//! Order-preserving byte encodings of keys: primary keys, index keys, document keys.
//!
//! redb compares `&[u8]` keys bytewise, so every key is encoded so that byte order equals
//! value order ("memcomparable"): a tag byte per value, big-endian integers with the sign
//! bit flipped, floats in their total order, and text/blobs with `0x00` escaped as
//! `0x00 0xFF` and terminated by `0x00 0x00`. Keys read back from disk are decoded with
//! checks: a malformed key is an error, never a panic.

use crate::types::{NodeId, Value, NODE_ID_BYTES};

const TAG_NULL: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_REAL: u8 = 0x03;
const TAG_BOOLEAN: u8 = 0x04;
const TAG_TEXT: u8 = 0x05;
const TAG_BLOB: u8 = 0x06;

/// A key that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key: {0}")]
pub struct KeyError(pub &'static str);

/// Appends the order-preserving encoding of `value` to `out`.
///
/// `INTEGER` and `TIMESTAMP` share a tag, so a key does not depend on which of the two
/// interchangeable forms a caller used.
pub fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Integer(v) | Value::Timestamp(v) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&((*v as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Real(v) => {
            out.push(TAG_REAL);
            let bits = v.to_bits();
            let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Boolean(v) => {
            out.push(TAG_BOOLEAN);
            out.push(u8::from(*v));
        }
        Value::Text(v) => {
            out.push(TAG_TEXT);
            encode_escaped(v.as_bytes(), out);
        }
        Value::Blob(v) => {
            out.push(TAG_BLOB);
            encode_escaped(v, out);
        }
    }
}

fn encode_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Encodes a tuple of values (a primary key or an index key).
pub fn encode_tuple(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for value in values {
        encode_value(value, &mut out);
    }
    debug_assert!(
        decode_tuple(&out).is_ok_and(|back| back.len() == values.len()),
        "an encoded tuple must decode to as many values as it was encoded from"
    );
    out
}

/// Decodes one value from the front of `input`, returning it and the rest.
pub fn decode_value(input: &[u8]) -> Result<(Value, &[u8]), KeyError> {
    let (&tag, rest) = input.split_first().ok_or(KeyError("empty value"))?;
    match tag {
        TAG_NULL => Ok((Value::Null, rest)),
        TAG_INTEGER => {
            let (bytes, rest) = split_8(rest)?;
            Ok((Value::Integer((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64), rest))
        }
        TAG_REAL => {
            let (bytes, rest) = split_8(rest)?;
            let ordered = u64::from_be_bytes(bytes);
            let bits = if ordered >> 63 == 1 { ordered & !(1 << 63) } else { !ordered };
            Ok((Value::Real(f64::from_bits(bits)), rest))
        }
        TAG_BOOLEAN => match rest.split_first() {
            Some((0, rest)) => Ok((Value::Boolean(false), rest)),
            Some((1, rest)) => Ok((Value::Boolean(true), rest)),
            _ => Err(KeyError("bad boolean")),
        },
        TAG_TEXT => {
            let (bytes, rest) = decode_escaped(rest)?;
            let text = String::from_utf8(bytes).map_err(|_| KeyError("text is not utf-8"))?;
            Ok((Value::Text(text), rest))
        }
        TAG_BLOB => {
            let (bytes, rest) = decode_escaped(rest)?;
            Ok((Value::Blob(bytes), rest))
        }
        _ => Err(KeyError("unknown value tag")),
    }
}

fn split_8(input: &[u8]) -> Result<([u8; 8], &[u8]), KeyError> {
    if input.len() < 8 {
        return Err(KeyError("truncated number"));
    }
    let (head, rest) = input.split_at(8);
    Ok((head.try_into().expect("split_at(8) gives 8 bytes"), rest))
}

fn decode_escaped(mut input: &[u8]) -> Result<(Vec<u8>, &[u8]), KeyError> {
    let mut out = Vec::new();
    loop {
        match input {
            [0, 0, rest @ ..] => return Ok((out, rest)),
            [0, 0xFF, rest @ ..] => {
                out.push(0);
                input = rest;
            }
            [0, ..] | [] => return Err(KeyError("bad escape or missing terminator")),
            [byte, rest @ ..] => {
                out.push(*byte);
                input = rest;
            }
        }
    }
}

/// Decodes a whole tuple; trailing bytes are an error.
pub fn decode_tuple(mut input: &[u8]) -> Result<Vec<Value>, KeyError> {
    let mut values = Vec::new();
    while !input.is_empty() {
        let (value, rest) = decode_value(input)?;
        values.push(value);
        input = rest;
    }
    Ok(values)
}

/// Splits the first `count` values off a tuple, returning the encoded prefix length.
pub fn tuple_prefix_len(input: &[u8], count: usize) -> Result<usize, KeyError> {
    let mut rest = input;
    for _ in 0..count {
        rest = decode_value(rest)?.1;
    }
    Ok(input.len() - rest.len())
}

/// Prefix of a name: `u16` big-endian length, then the UTF-8 bytes.
pub fn encode_name(name: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(name.len()).expect("names are capped at NAME_BYTES_MAX");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Decodes a length-prefixed name from the front of `input`.
pub fn decode_name(input: &[u8]) -> Result<(&str, &[u8]), KeyError> {
    if input.len() < 2 {
        return Err(KeyError("truncated name length"));
    }
    let len = usize::from(u16::from_be_bytes([input[0], input[1]]));
    let rest = &input[2..];
    if rest.len() < len {
        return Err(KeyError("truncated name"));
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| KeyError("name is not utf-8"))?;
    Ok((name, &rest[len..]))
}

/// Key of a materialized row (`rows_v1`) or the prefix of all rows of a table.
pub fn row_key(table: &str, pk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + table.len() + pk.len());
    encode_name(table, &mut out);
    out.extend_from_slice(pk);
    debug_assert!(decode_name(&out).is_ok_and(|(name, rest)| name == table && rest == pk));
    out
}

/// Key of an index entry (`index_v1`): index name, indexed values, then the primary key,
/// so that equal indexed values stay distinct and sort by primary key.
pub fn index_key(index: &str, values: &[u8], pk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + index.len() + values.len() + pk.len());
    encode_name(index, &mut out);
    out.extend_from_slice(values);
    out.extend_from_slice(pk);
    debug_assert!(decode_name(&out).is_ok_and(|(name, rest)| name == index && rest.len() == values.len() + pk.len()));
    out
}

/// Key of a change-log entry or pending change: origin node id, then sequence number.
pub fn log_key(origin: NodeId, seq: u64) -> [u8; NODE_ID_BYTES + 8] {
    let mut out = [0u8; NODE_ID_BYTES + 8];
    out[..NODE_ID_BYTES].copy_from_slice(origin.as_bytes());
    out[NODE_ID_BYTES..].copy_from_slice(&seq.to_be_bytes());
    debug_assert_eq!(decode_log_key(&out), Ok((origin, seq)));
    out
}

/// Decodes a change-log key.
pub fn decode_log_key(key: &[u8]) -> Result<(NodeId, u64), KeyError> {
    if key.len() != NODE_ID_BYTES + 8 {
        return Err(KeyError("log key has the wrong length"));
    }
    let origin = NodeId::from_slice(&key[..NODE_ID_BYTES]).expect("length checked");
    let seq = u64::from_be_bytes(key[NODE_ID_BYTES..].try_into().expect("length checked"));
    Ok((origin, seq))
}

/// Returns the smallest byte string greater than every string starting with `prefix`,
/// or `None` when no such string exists (a prefix of all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_filter("NaN has no order", |v| !v.is_nan()).prop_map(Value::Real),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,8}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
        ]
    }

    fn same_kind_cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
        match (a, b) {
            (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
            (Value::Real(a), Value::Real(b)) => Some(a.total_cmp(b)),
            (Value::Boolean(a), Value::Boolean(b)) => Some(a.cmp(b)),
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Blob(a), Value::Blob(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn tuples_round_trip(values in proptest::collection::vec(value_strategy(), 0..5)) {
            let encoded = encode_tuple(&values);
            prop_assert_eq!(decode_tuple(&encoded).unwrap(), values);
        }

        #[test]
        fn byte_order_is_value_order(a in value_strategy(), b in value_strategy()) {
            if let Some(expected) = same_kind_cmp(&a, &b) {
                prop_assert_eq!(encode_tuple(&[a]).cmp(&encode_tuple(&[b])), expected);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = decode_tuple(&bytes);
            let _ = decode_name(&bytes);
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
