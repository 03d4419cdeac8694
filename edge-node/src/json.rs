//! SQL values as JSON, for the HTTP API and its client (the shell, the CLI).
//!
//! `NULL`, integers, reals, text and booleans map to the JSON value of the same kind; a
//! real always carries a decimal point or exponent, so `1.0` stays a real on the way back.
//! The two kinds JSON lacks are objects with one key: `{"blob": "<hex>"}` and
//! `{"timestamp_ms": <integer>}`; so is a real JSON numbers cannot hold:
//! `{"real": "Infinity"}`, `{"real": "-Infinity"}`, `{"real": "NaN"}`. An integer outside
//! the 64-bit range is an error, never silently a real. The README's API section
//! documents this mapping.

use edgestore::Value;
use serde_json::{json, Value as Json};

/// Why JSON is not a SQL value (an API parameter, or a cell of an API answer).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// An integer literal outside the 64-bit range (the text of the literal).
    #[error(
        "integer {0} does not fit a 64-bit INTEGER (-9223372036854775808 ..= 9223372036854775807); \
         send a real ({0}.0) or text"
    )]
    IntegerRange(String),
    /// A number no `f64` holds.
    #[error("number {0} is out of range")]
    NumberRange(serde_json::Number),
    /// `{"blob": ...}` with an odd number of hex digits.
    #[error("blob {0:?} has an odd number of hex digits")]
    OddHex(String),
    /// `{"blob": ...}` that is not hex.
    #[error("blob {0:?} is not hex")]
    NotHex(String),
    /// `{"timestamp_ms": ...}` that is not an integer.
    #[error("timestamp_ms {0} is not an integer")]
    TimestampNotInteger(serde_json::Number),
    /// `{"real": ...}` with a name other than the three.
    #[error("{{\"real\": {0:?}}}: the name is \"Infinity\", \"-Infinity\" or \"NaN\"")]
    RealName(String),
    /// An object that is none of the three.
    #[error(
        "unsupported value {0}: objects are {{\"blob\": hex}}, {{\"timestamp_ms\": integer}} \
         or {{\"real\": \"Infinity\"|\"-Infinity\"|\"NaN\"}}"
    )]
    UnsupportedObject(Json),
    /// An array, or another kind no SQL value has.
    #[error(
        "unsupported value {0}: use null, a number, a string, a boolean, {{\"blob\": hex}} or {{\"timestamp_ms\": integer}}"
    )]
    Unsupported(Json),
}

/// A value as JSON.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(v) => json!(v),
        Value::Real(v) if v.is_finite() => json!(v),
        Value::Real(v) => json!({ "real": non_finite_name(*v) }),
        Value::Text(v) => json!(v),
        Value::Boolean(v) => json!(v),
        Value::Blob(bytes) => json!({ "blob": hex::encode(bytes) }),
        Value::Timestamp(ms) => json!({ "timestamp_ms": ms }),
    }
}

/// A JSON value as a SQL value (a parameter, or a cell of an API answer).
pub fn from_json(json: &Json) -> Result<Value, ValueError> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(v) => Value::Boolean(*v),
        Json::Number(n) => match n.as_i64() {
            Some(v) => Value::Integer(v),
            None if n.is_u64() => return Err(ValueError::IntegerRange(n.to_string())),
            None => Value::Real(n.as_f64().ok_or_else(|| ValueError::NumberRange(n.clone()))?),
        },
        Json::String(v) => Value::Text(v.clone()),
        Json::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((key, Json::String(text))) if key == "blob" => Value::Blob(unhex(text)?),
            Some((key, Json::Number(n))) if key == "timestamp_ms" => {
                Value::Timestamp(n.as_i64().ok_or_else(|| ValueError::TimestampNotInteger(n.clone()))?)
            }
            Some((key, Json::String(name))) if key == "real" => Value::Real(match name.as_str() {
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                _ => return Err(ValueError::RealName(name.clone())),
            }),
            _ => return Err(ValueError::UnsupportedObject(json.clone())),
        },
        _ => return Err(ValueError::Unsupported(json.clone())),
    })
}

/// The JSON name of a real that is not finite (`{"real": name}`).
pub fn non_finite_name(v: f64) -> &'static str {
    debug_assert!(!v.is_finite());
    match v {
        f64::INFINITY => "Infinity",
        f64::NEG_INFINITY => "-Infinity",
        _ => "NaN",
    }
}

/// Refuses JSON text (that parsed) holding an integer literal outside the 64-bit range. serde_json reads
/// an integer too large even for `u64` as an `f64`, so the difference between `1e19`
/// (a real) and `10000000000000000000` (an integer that does not fit) is only in the text.
pub fn check_integer_literals(text: &[u8]) -> Result<(), ValueError> {
    let mut i = 0;
    let mut in_string = false;
    while i < text.len() {
        let c = text[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let end = text[i..]
                .iter()
                .position(|b| !(b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')))
                .map_or(text.len(), |n| i + n);
            let literal = std::str::from_utf8(&text[i..end]).unwrap_or_default();
            // Run on text that parsed as JSON: an integral literal is digits after a sign.
            if !literal.contains(['.', 'e', 'E']) && literal.parse::<i64>().is_err() {
                return Err(ValueError::IntegerRange(literal.to_string()));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// A JSON value as text for display: strings without their quotes.
pub fn as_text(json: &Json) -> String {
    json.as_str().map_or_else(|| json.to_string(), str::to_string)
}

fn unhex(text: &str) -> Result<Vec<u8>, ValueError> {
    hex::decode(text).map_err(|e| match e {
        hex::FromHexError::OddLength => ValueError::OddHex(text.to_string()),
        _ => ValueError::NotHex(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let values = [
            Value::Null,
            Value::Integer(-7),
            Value::Real(1.0),
            Value::Real(-2.5e-3),
            Value::Text("a \"b\"".into()),
            Value::Boolean(true),
            Value::Blob(vec![0, 0xab, 0xff]),
            Value::Timestamp(1_700_000_000_000),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
        ];
        for value in values {
            let text = to_json(&value).to_string();
            let back: Json = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(from_json(&back).expect("decodes"), value, "{text}");
        }
        let nan = from_json(&to_json(&Value::Real(f64::NAN))).expect("decodes");
        assert!(matches!(nan, Value::Real(v) if v.is_nan()), "{nan:?}");
        assert_eq!(to_json(&Value::Real(f64::INFINITY)), json!({ "real": "Infinity" }));
    }

    #[test]
    fn integers_outside_64_bits_are_refused() {
        for text in ["9223372036854775808", "-9223372036854775809", "18446744073709551616", "1000000000000000000000000"]
        {
            let body = format!(r#"{{"sql": "SELECT ?", "params": [{text}]}}"#);
            let error = check_integer_literals(body.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(text) && error.contains("64-bit"), "{error}");
        }
        let fine = br#"{"sql": "SELECT 99999999999999999999 -- in a string", "params": [9223372036854775807, -9223372036854775808, 1e30, 1.5, {"timestamp_ms": 1}]}"#;
        check_integer_literals(fine).expect("in range, reals, or inside a string");
        let json: Json = serde_json::from_str("9223372036854775808").expect("valid JSON");
        assert!(from_json(&json).is_err(), "a u64 above i64::MAX is not a real");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            r#"[1]"#,
            r#"{"blob": "abc"}"#,
            r#"{"blob": "zz"}"#,
            r#"{"blob": "+1"}"#,
            r#"{"other": 1}"#,
            r#"{"timestamp_ms": 1.5}"#,
            r#"{"real": "inf"}"#,
        ] {
            let json: Json = serde_json::from_str(text).expect("valid JSON");
            assert!(from_json(&json).is_err(), "{text} should be refused");
        }
    }
}
