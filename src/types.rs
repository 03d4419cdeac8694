//! Core value types shared by every layer: node ids, column types and values.
//!
//! These are the types that cross every boundary (storage, CRDT documents, the change
//! envelope, SQL), so they are plain data with no behaviour beyond conversion and display.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of a node id in bytes: a 128-bit blake3 fingerprint of the node's public key.
pub const NODE_ID_BYTES: usize = 16;

/// The identity of a node. It is also the automerge actor id of every change the node makes,
/// so every change is attributable to the node that made it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; NODE_ID_BYTES]);

impl NodeId {
    /// Derives a node id from arbitrary key material (a public key) with blake3.
    pub fn from_public_key(public_key: &[u8]) -> NodeId {
        let hash = blake3::hash(public_key);
        let mut id = [0u8; NODE_ID_BYTES];
        id.copy_from_slice(&hash.as_bytes()[..NODE_ID_BYTES]);
        NodeId(id)
    }

    /// Returns the id as a byte slice.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_BYTES] {
        &self.0
    }

    /// Parses a node id from exactly [`NODE_ID_BYTES`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<NodeId> {
        <[u8; NODE_ID_BYTES]>::try_from(bytes).ok().map(NodeId)
    }

    /// The first eight hex digits, for logs and tables where the full id is noise.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Error parsing a [`NodeId`] from its hex form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is {expected} hex digits, got {got:?}", expected = NODE_ID_BYTES * 2)]
pub struct ParseNodeIdError {
    got: String,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<NodeId, ParseNodeIdError> {
        let err = || ParseNodeIdError { got: s.to_string() };
        let mut id = [0u8; NODE_ID_BYTES];
        hex::decode_to_slice(s, &mut id).map_err(|_| err())?;
        Ok(NodeId(id))
    }
}

/// The type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    /// A signed 64-bit integer.
    Integer,
    /// A 64-bit float.
    Real,
    /// UTF-8 text.
    Text,
    /// True or false.
    Boolean,
    /// Arbitrary bytes.
    Blob,
    /// Milliseconds since the Unix epoch, as i64.
    Timestamp,
    /// An i64 whose concurrent increments add up (an automerge counter).
    Counter,
}

impl ColumnType {
    /// The SQL name of the type.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Text => "TEXT",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Blob => "BLOB",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Counter => "COUNTER",
        }
    }
}

impl ColumnType {
    /// The column type of a declared SQL type name, by SQLite's column affinity rule
    /// (<https://www.sqlite.org/datatype3.html> §3.1), so ordinary SQLite DDL loads.
    ///
    /// Our own names come first (`BOOLEAN`/`BOOL`, `TIMESTAMP`, `COUNTER`, and the
    /// long-accepted `STRING` → TEXT and `BYTEA` → BLOB). Then, on the name before any
    /// size argument (`VARCHAR(20)`, `DECIMAL(10,2)`: accepted and ignored, as SQLite
    /// does), the first rule that matches: contains `INT` → INTEGER; `CHAR`, `CLOB` or
    /// `TEXT` → TEXT; `BLOB` or no type at all → BLOB (SQLite's BLOB affinity stores
    /// values as given; our columns are typed, so such a column holds blobs); `REAL`,
    /// `FLOA` or `DOUB` → REAL; anything else has NUMERIC affinity → REAL, the one type
    /// that takes both integers and reals. Every name maps to something, as in SQLite.
    pub fn from_declared(declared: &str) -> ColumnType {
        let upper = declared.to_ascii_uppercase();
        let name = upper.split('(').next().unwrap_or("").trim();
        match name {
            "BOOLEAN" | "BOOL" => return ColumnType::Boolean,
            "TIMESTAMP" => return ColumnType::Timestamp,
            "COUNTER" => return ColumnType::Counter,
            "STRING" => return ColumnType::Text,
            "BYTEA" => return ColumnType::Blob,
            _ => {}
        }
        let has = |part: &str| name.contains(part);
        if has("INT") {
            ColumnType::Integer
        } else if has("CHAR") || has("CLOB") || has("TEXT") {
            ColumnType::Text
        } else if has("BLOB") || name.is_empty() {
            ColumnType::Blob
        } else {
            // REAL affinity ("REAL", "FLOA", "DOUB") and NUMERIC affinity both land here.
            ColumnType::Real
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// A value stored in a column. `COUNTER` columns hold [`Value::Integer`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A signed 64-bit integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// A boolean.
    Boolean(bool),
    /// Arbitrary bytes.
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl Value {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Boolean(_) => "BOOLEAN",
            Value::Blob(_) => "BLOB",
            Value::Timestamp(_) => "TIMESTAMP",
        }
    }

    /// Converts the value to the column type, if the conversion loses nothing.
    ///
    /// Integers widen to `REAL`; integers and timestamps are interchangeable; `NULL` fits
    /// every type (`NOT NULL` is checked separately). Anything else is a type error.
    pub fn coerce(self, ty: ColumnType) -> Option<Value> {
        use ColumnType as T;
        match (self, ty) {
            (Value::Null, _) => Some(Value::Null),
            (Value::Integer(v), T::Integer | T::Counter) => Some(Value::Integer(v)),
            (Value::Timestamp(v), T::Integer | T::Counter) => Some(Value::Integer(v)),
            (Value::Integer(v) | Value::Timestamp(v), T::Timestamp) => Some(Value::Timestamp(v)),
            (Value::Integer(v), T::Real) => Some(Value::Real(v as f64)),
            (Value::Real(v), T::Real) => Some(Value::Real(v)),
            (Value::Text(v), T::Text) => Some(Value::Text(v)),
            (Value::Boolean(v), T::Boolean) => Some(Value::Boolean(v)),
            (Value::Integer(v @ (0 | 1)), T::Boolean) => Some(Value::Boolean(v == 1)),
            (Value::Blob(v), T::Blob) => Some(Value::Blob(v)),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(v) | Value::Timestamp(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v:?}"),
            Value::Text(v) => write!(f, "{v}"),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::Blob(v) => write!(f, "x'{}'", hex::encode(v)),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Integer(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Boolean(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_hex() {
        let id = NodeId::from_public_key(b"key");
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        assert!("zz".parse::<NodeId>().is_err());
        assert!("é".repeat(16).parse::<NodeId>().is_err());
        let signed = format!("+{}", &id.to_string()[1..]);
        assert!(signed.parse::<NodeId>().is_err(), "a sign is not a hex digit: {signed}");
    }

    #[test]
    fn declared_types_follow_sqlite_affinity_with_our_names_first() {
        use ColumnType as T;
        let cases = [
            ("INT", T::Integer),
            ("integer", T::Integer),
            ("BIGINT", T::Integer),
            ("TINYINT", T::Integer),
            ("MEDIUMINT(8)", T::Integer),
            ("INT8", T::Integer),
            ("VARCHAR(20)", T::Text),
            ("CHARACTER VARYING(3)", T::Text),
            ("NVARCHAR(100)", T::Text),
            ("NCHAR(55)", T::Text),
            ("TEXT", T::Text),
            ("CLOB", T::Text),
            ("STRING", T::Text),
            ("BLOB", T::Blob),
            ("BYTEA", T::Blob),
            ("", T::Blob),
            ("REAL", T::Real),
            ("DOUBLE", T::Real),
            ("DOUBLE PRECISION", T::Real),
            ("FLOAT", T::Real),
            ("DECIMAL(10,2)", T::Real),
            ("NUMERIC", T::Real),
            ("DATETIME", T::Real),
            ("\"my type\"", T::Real),
            ("BOOLEAN", T::Boolean),
            ("BOOL", T::Boolean),
            ("TIMESTAMP", T::Timestamp),
            ("COUNTER", T::Counter),
        ];
        for (declared, expected) in cases {
            assert_eq!(ColumnType::from_declared(declared), expected, "{declared:?}");
        }
        // Our names keep round-tripping: `.schema` shows them and they read back the same.
        for ty in [T::Integer, T::Real, T::Text, T::Boolean, T::Blob, T::Timestamp, T::Counter] {
            assert_eq!(ColumnType::from_declared(ty.sql_name()), ty);
        }
    }

    #[test]
    fn coercion_widens_but_never_loses() {
        assert_eq!(Value::Integer(3).coerce(ColumnType::Real), Some(Value::Real(3.0)));
        assert_eq!(Value::Real(3.5).coerce(ColumnType::Integer), None);
        assert_eq!(Value::from("x").coerce(ColumnType::Blob), None);
        assert_eq!(Value::Null.coerce(ColumnType::Text), Some(Value::Null));
    }
}
