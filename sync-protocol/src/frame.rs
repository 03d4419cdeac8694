//! Wire frames between two peers, and the one codec module that knows their CBOR.
//!
//! A frame on the wire is `u32 BE length ‖ version byte ‖ packed CBOR of [`Frame`]`. The
//! length is read first and checked against [`FRAME_BYTES_MAX`] before anything is
//! allocated or decoded; the version byte is checked before the CBOR. Layouts are
//! documented in `docs/design.md` ("Sync frames").

use edgestore::{NodeId, VersionVector};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version byte of every frame this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// The protocol version announced in `Hello`; peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame accepted, in bytes (after the length prefix): one maximal change envelope
/// plus framing.
pub const FRAME_BYTES_MAX: usize = edgestore::change::CHANGE_BYTES_MAX + 64 * 1024;
/// Most entries in a version vector on the wire.
pub const VECTOR_ENTRIES_MAX: usize = 4096;
/// Most change envelopes in one `Changes` frame.
pub const BATCH_CHANGES_MAX: usize = 1024;
/// Longest close reason, in bytes.
pub const REASON_BYTES_MAX: usize = 512;

/// A 16-byte cluster id: peers of different clusters never exchange data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; 16]);

/// Why a session was closed, as sent in `Close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseCode {
    /// Orderly shutdown.
    Shutdown,
    /// The peer broke the protocol.
    ProtocolError,
    /// The peer sent a change this node refused.
    ChangeRejected,
    /// Nothing was received for too long.
    Timeout,
    /// A local failure (storage) ended the session.
    Internal,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame in each direction: who I am and what I hold.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u16,
        /// Cluster id, 16 bytes.
        cluster: ByteBuf,
        /// Sender's node id, 16 bytes; must match the authenticated peer.
        node: ByteBuf,
        /// Sender's version vector.
        vector: Vec<(ByteBuf, u64)>,
    },
    /// Change envelopes the receiver lacks, per origin in seq order.
    Changes {
        /// Batch number: 1, 2, 3, … per session and direction.
        batch: u64,
        /// Encoded change envelopes.
        changes: Vec<ByteBuf>,
    },
    /// The receiver applied batch `batch` and now holds `vector`.
    Ack {
        /// The acknowledged batch.
        batch: u64,
        /// The receiver's version vector after applying it.
        vector: Vec<(ByteBuf, u64)>,
    },
    /// Keepalive probe.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// The sender ends the session.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable detail.
        reason: String,
    },
}

/// Bytes that are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than [`FRAME_BYTES_MAX`].
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    /// Unknown version byte.
    #[error("frame version {0} is not supported (expected {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    /// Not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Frame {
    /// Encodes the frame without the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FRAME_VERSION];
        out.extend(serde_cbor::ser::to_vec_packed(self).expect("serializing plain data into a Vec cannot fail"));
        out
    }

    /// Decodes a frame (without the length prefix), checking size, version and limits.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or_else(|| FrameError::Malformed("empty frame".into()))?;
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let frame: Frame = serde_cbor::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        frame.check_limits()?;
        Ok(frame)
    }

    fn check_limits(&self) -> Result<(), FrameError> {
        let malformed = |what: &str| Err(FrameError::Malformed(what.to_string()));
        match self {
            Frame::Hello { cluster, node, vector, .. } => {
                if cluster.len() != 16 || node.len() != 16 {
                    return malformed("cluster and node ids are 16 bytes");
                }
                vector_from_wire(vector).map(|_| ())
            }
            Frame::Ack { vector, .. } => vector_from_wire(vector).map(|_| ()),
            Frame::Changes { changes, .. } if changes.is_empty() || changes.len() > BATCH_CHANGES_MAX => {
                malformed("a Changes frame holds 1 to BATCH_CHANGES_MAX changes")
            }
            Frame::Close { reason, .. } if reason.len() > REASON_BYTES_MAX => malformed("close reason too long"),
            _ => Ok(()),
        }
    }
}

/// Appends the length prefix: what goes on a stream.
pub fn length_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    out
}

/// Reads a length prefix and checks it before any allocation.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// A version vector in wire form.
pub fn vector_to_wire(vector: &VersionVector) -> Vec<(ByteBuf, u64)> {
    vector.iter().map(|(node, seq)| (ByteBuf::from(node.as_bytes().to_vec()), seq)).collect()
}

/// Parses a wire version vector: ids 16 bytes, sorted, unique, at most
/// [`VECTOR_ENTRIES_MAX`] entries.
pub fn vector_from_wire(wire: &[(ByteBuf, u64)]) -> Result<VersionVector, FrameError> {
    if wire.len() > VECTOR_ENTRIES_MAX {
        return Err(FrameError::Malformed("version vector too long".into()));
    }
    let mut vector = VersionVector::new();
    let mut last: Option<NodeId> = None;
    for (node, seq) in wire {
        let node = NodeId::from_slice(node).ok_or_else(|| FrameError::Malformed("bad node id in vector".into()))?;
        if last.is_some_and(|l| l >= node) || *seq == 0 {
            return Err(FrameError::Malformed("vector entries unsorted, repeated or zero".into()));
        }
        last = Some(node);
        vector.set(node, *seq);
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let vector: VersionVector = [(NodeId([1; 16]), 3), (NodeId([2; 16]), 9)].into_iter().collect();
        let frames = [
            Frame::Hello {
                protocol: PROTOCOL_VERSION,
                cluster: ByteBuf::from(vec![7; 16]),
                node: ByteBuf::from(vec![1; 16]),
                vector: vector_to_wire(&vector),
            },
            Frame::Changes { batch: 1, changes: vec![ByteBuf::from(vec![1, 2, 3])] },
            Frame::Ack { batch: 1, vector: vector_to_wire(&vector) },
            Frame::Ping { nonce: 5 },
            Frame::Close { code: CloseCode::Shutdown, reason: "bye".into() },
        ];
        for frame in frames {
            assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(Frame::decode(&[9, 0]), Err(FrameError::UnsupportedVersion(9)));
        assert!(matches!(Frame::decode(&[]), Err(FrameError::Malformed(_))));
        assert!(matches!(Frame::decode(&[FRAME_VERSION, 0xFF, 0x00]), Err(FrameError::Malformed(_))));
        let empty = Frame::Changes { batch: 1, changes: vec![] }.encode();
        assert!(matches!(Frame::decode(&empty), Err(FrameError::Malformed(_))));
        assert_eq!(frame_length(u32::MAX.to_be_bytes()), Err(FrameError::TooLarge(u32::MAX as usize)));
        let unsorted = vec![(ByteBuf::from(vec![2; 16]), 1), (ByteBuf::from(vec![1; 16]), 1)];
        assert!(vector_from_wire(&unsorted).is_err());
    }
}
