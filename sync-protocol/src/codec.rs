//! The one module of `sync-protocol` that knows CBOR (serde_cbor), as `src/codec.rs` is
//! for the root crate.
//!
//! serde_cbor is archived upstream (RUSTSEC-2021-0127, "unmaintained"; the exception is in
//! `deny.toml`). Keeping every call behind [`encode`] and [`decode`] means a replacement
//! (e.g. `ciborium`) touches this file only, and the frame tests that pin encoded bytes
//! (`frame.rs`) say whether it is byte-identical. The decoder takes its size cap as an
//! argument, so no caller can decode bytes it has not bounded.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// CBOR that could not be decoded into the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// More bytes than the caller's cap; nothing was decoded.
    #[error("{bytes} bytes of CBOR exceed the {max}-byte limit")]
    TooLarge {
        /// The input's length.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// The input ends in the middle of a value.
    #[error("CBOR ends early ({detail})")]
    Truncated {
        /// serde_cbor's description, with the byte offset.
        detail: String,
    },
    /// Not well-formed CBOR: a reserved code, a bad length or UTF-8, trailing bytes, or
    /// nesting past the decoder's recursion limit.
    #[error("invalid CBOR ({detail})")]
    Syntax {
        /// serde_cbor's description, with the byte offset.
        detail: String,
    },
    /// Well-formed CBOR of another shape than the expected type (a missing field, a wrong
    /// type, an unknown variant).
    #[error("{detail}")]
    Shape {
        /// serde's description of the mismatch (what was found, what was expected), with
        /// the byte offset.
        detail: String,
    },
}

/// Encodes `value` as packed CBOR (struct fields and enum variants by index, not by name).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::ser::to_vec_packed(value).expect("serializing plain data into a Vec cannot fail")
}

/// Decodes packed CBOR of at most `bytes_max` bytes; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], bytes_max: usize) -> Result<T, CodecError> {
    if bytes.len() > bytes_max {
        return Err(CodecError::TooLarge { bytes: bytes.len(), max: bytes_max });
    }
    serde_cbor::from_slice(bytes).map_err(|error| {
        let detail = error.to_string();
        match error.classify() {
            serde_cbor::error::Category::Eof => CodecError::Truncated { detail },
            serde_cbor::error::Category::Data => CodecError::Shape { detail },
            // `Io` cannot come from a slice but for a scratch buffer too small: bad input too.
            serde_cbor::error::Category::Syntax | serde_cbor::error::Category::Io => CodecError::Syntax { detail },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each class of bad input is its own error; the cap is checked before decoding.
    #[test]
    fn bad_cbor_is_classified() {
        assert_eq!(decode::<u64>(&[0x18, 7], 1), Err(CodecError::TooLarge { bytes: 2, max: 1 }));
        assert!(matches!(decode::<u64>(&[0x19, 0x01], 8), Err(CodecError::Truncated { .. })));
        assert!(matches!(decode::<u64>(&[0x1c], 8), Err(CodecError::Syntax { .. })));
        assert!(matches!(decode::<u64>(&[0x01, 0x01], 8), Err(CodecError::Syntax { .. })), "trailing data");
        let Err(CodecError::Shape { detail }) = decode::<u64>(&[0x61, b'a'], 8) else { panic!("a string is no u64") };
        assert!(detail.contains("invalid type"), "{detail}");
        assert_eq!(decode::<u64>(&encode(&300u64), 8), Ok(300));
    }
}
