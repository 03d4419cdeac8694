//! SQL values as JSON, for the HTTP API and its client (the shell, the CLI).
//!
//! `NULL`, integers, reals, text and booleans map to the JSON value of the same kind; a
//! real always carries a decimal point or exponent, so `1.0` stays a real on the way back.
//! The two kinds JSON lacks are objects with one key: `{"blob": "<hex>"}` and
//! `{"timestamp_ms": <integer>}`. The README's API section documents this mapping.

use anyhow::{anyhow, bail, Result};
use edgestore::Value;
use serde_json::{json, Value as Json};

/// A value as JSON.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(v) => json!(v),
        Value::Real(v) if v.is_finite() => json!(v),
        // JSON has no NaN or infinity; SQL results seldom hold them, and text keeps them.
        Value::Real(v) => json!(v.to_string()),
        Value::Text(v) => json!(v),
        Value::Boolean(v) => json!(v),
        Value::Blob(bytes) => json!({ "blob": hex(bytes) }),
        Value::Timestamp(ms) => json!({ "timestamp_ms": ms }),
    }
}

/// A JSON value as a SQL value (a parameter, or a cell of an API answer).
pub fn from_json(json: &Json) -> Result<Value> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(v) => Value::Boolean(*v),
        Json::Number(n) => match n.as_i64() {
            Some(v) => Value::Integer(v),
            None => Value::Real(n.as_f64().ok_or_else(|| anyhow!("number {n} is out of range"))?),
        },
        Json::String(v) => Value::Text(v.clone()),
        Json::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((key, Json::String(text))) if key == "blob" => Value::Blob(unhex(text)?),
            Some((key, Json::Number(n))) if key == "timestamp_ms" => {
                Value::Timestamp(n.as_i64().ok_or_else(|| anyhow!("timestamp_ms {n} is not an integer"))?)
            }
            _ => bail!("unsupported value {json}: objects are {{\"blob\": hex}} or {{\"timestamp_ms\": integer}}"),
        },
        _ => bail!("unsupported value {json}: use null, a number, a string, a boolean, {{\"blob\": hex}} or {{\"timestamp_ms\": integer}}"),
    })
}

/// A JSON value as text for display: strings without their quotes.
pub fn as_text(json: &Json) -> String {
    json.as_str().map_or_else(|| json.to_string(), str::to_string)
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("blob {text:?} has an odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| anyhow!("blob {text:?} is not hex"))
        })
        .collect()
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
        ];
        for value in values {
            let text = to_json(&value).to_string();
            let back: Json = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(from_json(&back).expect("decodes"), value, "{text}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [r#"[1]"#, r#"{"blob": "abc"}"#, r#"{"blob": "zz"}"#, r#"{"other": 1}"#, r#"{"timestamp_ms": 1.5}"#]
        {
            let json: Json = serde_json::from_str(text).expect("valid JSON");
            assert!(from_json(&json).is_err(), "{text} should be refused");
        }
    }
}
