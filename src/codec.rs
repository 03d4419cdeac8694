//! The one place that knows CBOR (serde_cbor).
//!
//! serde_cbor is archived upstream (RUSTSEC-2021-0127, "unmaintained"); it is the product
//! card's CBOR crate and it rejects deep nesting and forged lengths safely. Keeping it
//! behind these two functions makes `ciborium` a drop-in if the advisory ever bites.
//! Sizes are capped by the callers *before* decoding.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// CBOR that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CBOR: {0}")]
pub struct CodecError(pub String);

/// Encodes `value` as packed CBOR (struct fields by index, not by name).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::ser::to_vec_packed(value).expect("serializing plain data into a Vec cannot fail")
}

/// Decodes packed CBOR; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_cbor::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}
