//! Wire frames between two peers; their CBOR is `codec.rs`'s.
//!
//! A frame on the wire is `u32 BE length ‖ version byte ‖ packed CBOR of [`Frame`]`. The
//! length is read first and checked against [`FRAME_BYTES_MAX`] before anything is
//! allocated or decoded; the version byte is checked before the CBOR (`codec.rs`). Every
//! field is then checked once, by `parse.rs`, into a [`ParsedFrame`] that carries it typed.
//! Layouts are documented in `docs/design.md` § "Sync protocol".

use edgestore::VersionVector;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec;

mod parse;

pub use parse::{holders_from_wire, vector_from_wire, Malformed, ParsedFrame, ParsedRange, RepairDoc, TreeRange};

/// Version byte of every frame this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// The protocol version announced in `Hello`; peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest frame accepted, in bytes (after the length prefix): one maximal change envelope
/// plus framing.
pub const FRAME_BYTES_MAX: usize = edgestore::change::CHANGE_BYTES_MAX + 64 * 1024;
/// Most entries in a version vector on the wire.
pub const VECTOR_ENTRIES_MAX: usize = 4096;
/// Most change envelopes in one `Changes` frame.
pub const BATCH_CHANGES_MAX: usize = 1024;
/// Longest close reason, in bytes.
pub const REASON_BYTES_MAX: usize = 512;
/// Most ranges in one `Digests` frame.
pub const DIGEST_RANGES_MAX: usize = 256;
/// Most documents in one `Heads` frame.
pub const HEADS_DOCS_MAX: usize = 4096;
/// Most heads of one document on the wire (automerge heads = concurrent branches).
pub const DOC_HEADS_MAX: usize = 1024;
/// Most documents in one `Repair` frame.
pub const REPAIR_DOCS_MAX: usize = edgestore::REPAIR_DOCS_MAX;
/// Most members in one `Holders` frame: 64 maximal vectors (4096 entries of ≤ 27 bytes
/// each) stay within [`FRAME_BYTES_MAX`].
pub const HOLDERS_ENTRIES_MAX: usize = 64;

/// One member's entry in a `Holders` frame: member id (16 bytes), milliseconds since the
/// sender last heard of it, and the vector it is known to hold.
pub type HeldEntry = (ByteBuf, u64, Vec<(ByteBuf, u64)>);
/// Most documents in one `TransferBatch` frame.
pub const TRANSFER_DOCS_MAX: usize = edgestore::TRANSFER_DOCS_MAX;
/// Most tail changes of one transferred document (a stored tail is shorter than this).
pub const TRANSFER_TAIL_MAX: usize = edgestore::replica::DOC_TAIL_CHANGES_MAX as usize;

/// One transferred document on the wire: key, automerge snapshot (may be empty), tail changes.
pub type WireDoc = (ByteBuf, ByteBuf, Vec<ByteBuf>);

/// A 16-byte cluster id: peers of different clusters never exchange data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; 16]);

impl std::fmt::Display for ClusterId {
    /// Lower-case hex, as node ids are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

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

/// One range of the heads digest tree (see `edgestore::HeadsTree`) with the sender's
/// document count and digest for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    /// Depth of the range, 0 (root) to `edgestore::HEADS_TREE_DEPTH` (a leaf bucket).
    pub depth: u8,
    /// The range's bucket prefix at that depth, `< 16^depth`.
    pub prefix: u32,
    /// Documents the sender holds in the range.
    pub docs: u64,
    /// The sender's digest of the range, 32 bytes.
    pub digest: ByteBuf,
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
    /// Anti-entropy: the sender's digests of some heads-tree ranges. The receiver answers
    /// each range that differs with its digests of the children, or with `Heads` once the
    /// range is small or a leaf. Ignored unless both sides hold the same version vector.
    Digests {
        /// blake3 of the sender's wire version vector, 32 bytes.
        vector: ByteBuf,
        /// The ranges, at most [`DIGEST_RANGES_MAX`].
        ranges: Vec<RangeDigest>,
    },
    /// Anti-entropy: the sender's documents (key, heads) in one range. The receiver sends
    /// `Repair` with what the sender lacks and, unless `reply`, its own `Heads` back.
    Heads {
        /// blake3 of the sender's wire version vector, 32 bytes.
        vector: ByteBuf,
        /// Whether this answers a `Heads` (and must not be answered with one).
        reply: bool,
        /// Depth of the range.
        depth: u8,
        /// Prefix of the range.
        prefix: u32,
        /// Document key and concatenated 32-byte heads, key order, at most [`HEADS_DOCS_MAX`].
        docs: Vec<(ByteBuf, ByteBuf)>,
        /// Whether `docs` is every document of the range; if not, it covers the keys up to
        /// its last one.
        complete: bool,
    },
    /// Anti-entropy: automerge changes of documents the receiver lacks, merged into its
    /// documents (never its log).
    Repair {
        /// Document key and its missing automerge changes, at most [`REPAIR_DOCS_MAX`].
        docs: Vec<(ByteBuf, Vec<ByteBuf>)>,
    },
    /// The sender ends the session.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable detail.
        reason: String,
    },
    /// Causal-stability horizon: what members other than the receiver are known to hold
    /// (the sender's own vector included), sent after the handshake and when an entry
    /// grows. Added in protocol version 2.
    Holders {
        /// Sorted by member, unique, 1 to [`HOLDERS_ENTRIES_MAX`].
        entries: Vec<HeldEntry>,
    },
    /// State transfer, donor → receiver: the receiver's vector is below the donor's log
    /// floor, so the donor cannot send it changes by log replay and offers its documents.
    TransferOffer {
        /// The donor's log floor.
        floor: Vec<(ByteBuf, u64)>,
    },
    /// State transfer, receiver → donor: send the documents after `after`.
    TransferRequest {
        /// The receiver's persisted cursor (exclusive; empty = from the first document).
        after: ByteBuf,
    },
    /// State transfer, donor → receiver: documents in key order from one snapshot.
    TransferBatch {
        /// Batch number: 1, 2, 3, … per transfer.
        batch: u64,
        /// The donor's version vector at the snapshot the documents were read from.
        vector: Vec<(ByteBuf, u64)>,
        /// The cursor the batch continues from.
        after: ByteBuf,
        /// The cursor after the batch (its last key).
        last: ByteBuf,
        /// The documents, at most [`TRANSFER_DOCS_MAX`].
        docs: Vec<WireDoc>,
        /// No document follows `last`.
        done: bool,
    },
    /// State transfer, receiver → donor: batch `batch` is imported durably; for the last
    /// batch, `vector` is the receiver's version vector after installing it.
    TransferAck {
        /// The acknowledged batch.
        batch: u64,
        /// Present iff the transfer ended with this batch.
        vector: Option<Vec<(ByteBuf, u64)>>,
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
    /// Not a frame, or a field out of its limits.
    #[error("malformed frame: {0}")]
    Malformed(#[from] Malformed),
}

impl Frame {
    /// Encodes the frame without the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FRAME_VERSION];
        out.extend(codec::encode(self));
        out
    }

    /// Decodes a frame (without the length prefix), checking size, version and every
    /// field as [`Frame::parse`] does, and returns it in wire form (for tests, fuzzing and
    /// tools that look at frames; a session parses).
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let frame = Frame::decode_wire(bytes)?;
        ParsedFrame::parse(frame.clone())?;
        Ok(frame)
    }

    /// Decodes and parses a frame (without the length prefix): size, version, CBOR, then
    /// every field, into the types a session acts on.
    pub fn parse(bytes: &[u8]) -> Result<ParsedFrame, FrameError> {
        Ok(ParsedFrame::parse(Frame::decode_wire(bytes)?)?)
    }

    /// Size, version and CBOR; the fields are not checked yet.
    fn decode_wire(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(Malformed::Empty)?;
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        Ok(codec::decode(body, FRAME_BYTES_MAX).map_err(Malformed::Cbor)?)
    }
}

/// A `Holders` entry in wire form.
pub fn held_to_wire(claim: &edgestore::HeldClaim) -> HeldEntry {
    (ByteBuf::from(claim.member.as_bytes().to_vec()), claim.heard_ago_ms, vector_to_wire(&claim.vector))
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

/// blake3 of a version vector's wire form: anti-entropy frames carry it so that digests
/// are compared only between nodes holding the same changes.
pub fn vector_hash(vector: &VersionVector) -> [u8; 32] {
    edgestore::replica::blake3_of(&codec::encode(&vector_to_wire(vector)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgestore::NodeId;

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
            Frame::Digests {
                vector: ByteBuf::from(vec![3; 32]),
                ranges: vec![RangeDigest { depth: 2, prefix: 255, docs: 9, digest: ByteBuf::from(vec![4; 32]) }],
            },
            Frame::Heads {
                vector: ByteBuf::from(vec![3; 32]),
                reply: true,
                depth: 3,
                prefix: 4095,
                docs: vec![(ByteBuf::from(vec![2, 1]), ByteBuf::from(vec![6; 64]))],
                complete: false,
            },
            Frame::Repair { docs: vec![(ByteBuf::from(vec![2, 1]), vec![ByteBuf::from(vec![1, 2])])] },
            Frame::Close { code: CloseCode::Shutdown, reason: "bye".into() },
            Frame::Holders {
                entries: vec![
                    (ByteBuf::from(vec![1; 16]), 0, vector_to_wire(&vector)),
                    (ByteBuf::from(vec![3; 16]), 70, vec![]),
                ],
            },
            Frame::TransferOffer { floor: vector_to_wire(&vector) },
            Frame::TransferRequest { after: ByteBuf::from(vec![2, 1]) },
            Frame::TransferBatch {
                batch: 1,
                vector: vector_to_wire(&vector),
                after: ByteBuf::new(),
                last: ByteBuf::from(vec![2, 1]),
                docs: vec![(ByteBuf::from(vec![2, 1]), ByteBuf::from(vec![9; 9]), vec![ByteBuf::from(vec![1])])],
                done: false,
            },
            Frame::TransferAck { batch: 1, vector: None },
            Frame::TransferAck { batch: 2, vector: Some(vector_to_wire(&vector)) },
        ];
        for frame in frames {
            assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
        }
    }

    /// Why `frame` is refused, as `Frame::decode` and `Frame::parse` both say.
    fn refusal(frame: &Frame) -> Malformed {
        let bytes = frame.encode();
        let Err(FrameError::Malformed(why)) = Frame::parse(&bytes) else { panic!("{frame:?} was accepted") };
        assert_eq!(Frame::decode(&bytes), Err(FrameError::Malformed(why.clone())), "{frame:?}");
        why
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        use Malformed as M;
        assert_eq!(Frame::decode(&[9, 0]), Err(FrameError::UnsupportedVersion(9)));
        assert_eq!(Frame::decode(&[]), Err(FrameError::Malformed(M::Empty)));
        assert!(matches!(Frame::decode(&[FRAME_VERSION, 0xFF, 0x00]), Err(FrameError::Malformed(M::Cbor(_)))));
        assert_eq!(frame_length(u32::MAX.to_be_bytes()), Err(FrameError::TooLarge(u32::MAX as usize)));
        let unsorted = vec![(ByteBuf::from(vec![2; 16]), 1), (ByteBuf::from(vec![1; 16]), 1)];
        assert_eq!(vector_from_wire(&unsorted), Err(M::VectorUnsorted(NodeId([1; 16]))));
        let hello = |cluster: usize, node: usize| Frame::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: ByteBuf::from(vec![7; cluster]),
            node: ByteBuf::from(vec![1; node]),
            vector: vec![],
        };
        let range = |depth, prefix| RangeDigest { depth, prefix, docs: 0, digest: ByteBuf::from(vec![0; 32]) };
        let digests = |vector: usize, ranges| Frame::Digests { vector: ByteBuf::from(vec![0; vector]), ranges };
        let short_digest = RangeDigest { digest: ByteBuf::from(vec![0; 31]), ..range(0, 0) };
        let heads = |key: usize, heads: usize| Frame::Heads {
            vector: ByteBuf::from(vec![0; 32]),
            reply: false,
            depth: 0,
            prefix: 0,
            docs: vec![(ByteBuf::from(vec![1; key]), ByteBuf::from(vec![0; heads]))],
            complete: true,
        };
        let batch = |docs: Vec<WireDoc>, done| Frame::TransferBatch {
            batch: 1,
            vector: vec![],
            after: ByteBuf::new(),
            last: ByteBuf::new(),
            docs,
            done,
        };
        let doc = |key: usize, snapshot: usize, tail: usize| {
            (ByteBuf::from(vec![2; key]), ByteBuf::from(vec![1; snapshot]), vec![ByteBuf::from(vec![1]); tail])
        };
        let key_max = edgestore::change::DOC_KEY_BYTES_MAX;
        let cases = [
            (hello(15, 16), M::IdLength { field: "cluster", len: 15 }),
            (hello(16, 17), M::IdLength { field: "node", len: 17 }),
            (Frame::Changes { batch: 1, changes: vec![] }, M::ChangeCount(0)),
            (
                Frame::Close { code: CloseCode::Shutdown, reason: "x".repeat(REASON_BYTES_MAX + 1) },
                M::ReasonTooLong(513),
            ),
            (digests(32, vec![]), M::RangeCount(0)),
            (digests(32, vec![range(0, 0); DIGEST_RANGES_MAX + 1]), M::RangeCount(DIGEST_RANGES_MAX + 1)),
            (digests(31, vec![range(0, 0)]), M::VectorHashLength { frame: "Digests", len: 31 }),
            (digests(32, vec![range(4, 0)]), M::RangeOutOfTree { depth: 4, prefix: 0 }),
            (digests(32, vec![range(1, 16)]), M::RangeOutOfTree { depth: 1, prefix: 16 }),
            (digests(32, vec![short_digest]), M::DigestLength(31)),
            (heads(1, 31), M::HeadsLength(31)),
            (heads(1, 0), M::HeadsLength(0)),
            (heads(0, 32), M::DocKeyLength { frame: "Heads", len: 0 }),
            (Frame::Repair { docs: vec![] }, M::RepairDocCount(0)),
            (Frame::Repair { docs: vec![(ByteBuf::from(vec![1]), vec![])] }, M::RepairNoChanges),
            (batch(vec![], false), M::TransferDocCount(0)),
            (batch(vec![doc(0, 1, 0)], false), M::DocKeyLength { frame: "TransferBatch", len: 0 }),
            (batch(vec![doc(1, 0, 0)], false), M::TransferDocEmpty),
            (batch(vec![doc(1, 1, TRANSFER_TAIL_MAX)], false), M::TransferTailTooLong(TRANSFER_TAIL_MAX)),
            (batch(vec![doc(key_max + 1, 1, 0)], false), M::DocKeyLength { frame: "TransferBatch", len: key_max + 1 }),
            (batch(vec![doc(1, 1, 0); TRANSFER_DOCS_MAX + 1], false), M::TransferDocCount(TRANSFER_DOCS_MAX + 1)),
            (Frame::TransferRequest { after: ByteBuf::from(vec![0; key_max + 1]) }, M::CursorTooLong(key_max + 1)),
            (Frame::TransferOffer { floor: unsorted.clone() }, M::VectorUnsorted(NodeId([1; 16]))),
            (Frame::TransferAck { batch: 1, vector: Some(unsorted.clone()) }, M::VectorUnsorted(NodeId([1; 16]))),
        ];
        for (frame, why) in cases {
            assert_eq!(refusal(&frame), why, "{frame:?}");
        }
        for good in [heads(1, 32), batch(vec![], true), batch(vec![doc(1, 1, 63)], false), hello(16, 16)] {
            assert_eq!(Frame::decode(&good.encode()), Ok(good));
        }
    }

    /// `Holders`: members sorted, unique and 16 bytes, 1 to HOLDERS_ENTRIES_MAX of them,
    /// each vector valid.
    #[test]
    fn bad_holders_frames_are_refused() {
        use Malformed as M;
        let entry = |id: u8, vector: Vec<(ByteBuf, u64)>| (ByteBuf::from(vec![id; 16]), 0, vector);
        let good = vec![(ByteBuf::from(vec![1; 16]), 1)];
        let too_many = (0..=HOLDERS_ENTRIES_MAX).map(|i| entry(i as u8, vec![])).collect();
        let bad = [
            (vec![], M::HoldersCount(0)),
            (too_many, M::HoldersCount(HOLDERS_ENTRIES_MAX + 1)),
            (vec![entry(2, vec![]), entry(1, vec![])], M::HoldersUnsorted(NodeId([1; 16]))),
            (vec![entry(1, vec![]), entry(1, vec![])], M::HoldersUnsorted(NodeId([1; 16]))),
            (vec![(ByteBuf::from(vec![1; 15]), 0, vec![])], M::IdLength { field: "Holders member", len: 15 }),
            (vec![entry(1, vec![(ByteBuf::from(vec![1; 16]), 0)])], M::VectorZeroSeq(NodeId([1; 16]))),
            (
                vec![entry(1, vec![(ByteBuf::from(vec![2; 16]), 1), (ByteBuf::from(vec![1; 16]), 1)])],
                M::VectorUnsorted(NodeId([1; 16])),
            ),
        ];
        for (entries, why) in bad {
            assert_eq!(refusal(&Frame::Holders { entries }), why);
        }
        let frame = Frame::Holders { entries: vec![entry(1, good.clone()), entry(2, good)] };
        assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
    }

    /// A parsed frame carries its fields typed: ids, vectors, ranges and heads.
    #[test]
    fn parsed_frames_carry_typed_fields() {
        let vector: VersionVector = [(NodeId([1; 16]), 3)].into_iter().collect();
        let hello = Frame::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: ByteBuf::from(vec![7; 16]),
            node: ByteBuf::from(vec![1; 16]),
            vector: vector_to_wire(&vector),
        };
        let expected = ParsedFrame::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: ClusterId([7; 16]),
            node: NodeId([1; 16]),
            vector,
        };
        assert_eq!(Frame::parse(&hello.encode()), Ok(expected));
        let heads = Frame::Heads {
            vector: ByteBuf::from(vec![3; 32]),
            reply: true,
            depth: 3,
            prefix: 4095,
            docs: vec![(ByteBuf::from(vec![2, 1]), ByteBuf::from([[6; 32], [7; 32]].concat()))],
            complete: false,
        };
        let Ok(ParsedFrame::Heads { vector, reply: true, range, docs, complete: false }) =
            Frame::parse(&heads.encode())
        else {
            panic!("a valid Heads frame")
        };
        assert_eq!((vector, range, range.is_leaf()), ([3; 32], TreeRange::new(3, 4095).unwrap(), true));
        assert_eq!(docs, vec![edgestore::DocHeads { key: vec![2, 1], heads: vec![[6; 32], [7; 32]] }]);
        let children: Vec<_> = TreeRange::ROOT.children().map(|r| (r.depth(), r.prefix())).collect();
        assert_eq!(children, (0..16).map(|p| (1, p)).collect::<Vec<_>>());
        assert_eq!(range.children().count(), 0, "a leaf has no children");
    }

    /// The encoded bytes of a few frames, pinned: the CBOR codec is behind
    /// `codec.rs`, and a change of codec (or of its use) must leave every byte on the wire
    /// as it was, which these catch. Hex from the build before the codec moved to
    /// `codec.rs`.
    #[test]
    fn encoded_bytes_are_pinned() {
        let vector: VersionVector = [(NodeId([1; 16]), 3), (NodeId([2; 16]), 300)].into_iter().collect();
        let cases = [
            (
                Frame::Hello {
                    protocol: PROTOCOL_VERSION,
                    cluster: ByteBuf::from(vec![7; 16]),
                    node: ByteBuf::from(vec![1; 16]),
                    vector: vector_to_wire(&vector),
                },
                "01a100a4000201500707070707070707070707070707070702500101010101010101010101010101010103828250010101010101010101010101010101010382500202020202020202020202020202020219012c",
            ),
            (Frame::Changes { batch: 1, changes: vec![ByteBuf::from(vec![1, 2, 3])] }, "01a101a20001018143010203"),
            (Frame::Ping { nonce: 5 }, "01a103a10005"),
            (
                Frame::Digests {
                    vector: ByteBuf::from(vec![3; 32]),
                    ranges: vec![RangeDigest { depth: 2, prefix: 255, docs: 9, digest: ByteBuf::from(vec![4; 32]) }],
                },
                "01a105a200582003030303030303030303030303030303030303030303030303030303030303030181a400020118ff02090358200404040404040404040404040404040404040404040404040404040404040404",
            ),
            (Frame::Close { code: CloseCode::ChangeRejected, reason: "bad".into() }, "01a108a200020163626164"),
            (Frame::TransferAck { batch: 2, vector: None }, "01a10da2000201f6"),
        ];
        let (frames, expected): (Vec<Frame>, Vec<&str>) = cases.into_iter().unzip();
        let encoded: Vec<String> = frames.iter().map(|frame| hex::encode(frame.encode())).collect();
        assert_eq!(encoded, expected);
        assert_eq!(
            hex::encode(vector_hash(&vector)),
            "dbc69bd1abdd6959062335026657962758dcad385110ea0f915ba38b3b4aeff0"
        );
    }

    /// blake3 of a wire version vector, as carried by the anti-entropy frames.
    #[test]
    fn vector_hash_depends_on_every_entry() {
        let a: VersionVector = [(NodeId([1; 16]), 3)].into_iter().collect();
        let b: VersionVector = [(NodeId([1; 16]), 4)].into_iter().collect();
        assert_ne!(vector_hash(&a), vector_hash(&b));
        assert_eq!(vector_hash(&a), vector_hash(&a.clone()));
    }
}
