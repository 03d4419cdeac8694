//! Parsing a decoded [`Frame`] into a [`ParsedFrame`]: the one place that checks a frame's
//! fields against their limits, and turns them into the types the session works with
//! (node and cluster ids, version vectors, heads-tree ranges, held claims, transfer
//! batches). A session acts only on a `ParsedFrame`, so it never re-checks a field or
//! `expect`s what this module checked; [`Malformed`] says which field or limit failed.

use edgestore::change::DOC_KEY_BYTES_MAX;
use edgestore::{DocHeads, HeadsTree, HeldClaim, NodeId, TransferBatch, TransferDoc, VersionVector, HEADS_TREE_DEPTH};
use serde_bytes::ByteBuf;

use super::{
    CloseCode, ClusterId, Frame, HeldEntry, RangeDigest, WireDoc, BATCH_CHANGES_MAX, DIGEST_RANGES_MAX, DOC_HEADS_MAX,
    HEADS_DOCS_MAX, HOLDERS_ENTRIES_MAX, REASON_BYTES_MAX, REPAIR_DOCS_MAX, TRANSFER_DOCS_MAX, TRANSFER_TAIL_MAX,
    VECTOR_ENTRIES_MAX,
};
use crate::codec::CodecError;

/// Which part of a frame is not valid. Messages name the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// No version byte.
    #[error("empty frame")]
    Empty,
    /// The CBOR does not decode into a `Frame`.
    #[error(transparent)]
    Cbor(#[from] CodecError),
    /// A node or cluster id that is not 16 bytes.
    #[error("the {field} id is {len} bytes, not 16")]
    IdLength {
        /// The field: `cluster`, `node`, `Holders member` or `version vector`.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A version vector with more than [`VECTOR_ENTRIES_MAX`] entries.
    #[error("a version vector of {0} entries (at most {VECTOR_ENTRIES_MAX})")]
    VectorTooLong(usize),
    /// Version vector entries out of order or repeated, at this node.
    #[error("version vector entries unsorted or repeated at node {0}")]
    VectorUnsorted(NodeId),
    /// A version vector entry with seq 0 (absent origins are left out).
    #[error("version vector entry of node {0} has seq 0")]
    VectorZeroSeq(NodeId),
    /// A `Changes` frame with no change or more than [`BATCH_CHANGES_MAX`].
    #[error("a Changes frame of {0} changes (1 to {BATCH_CHANGES_MAX})")]
    ChangeCount(usize),
    /// A `Close` reason longer than [`REASON_BYTES_MAX`] bytes.
    #[error("a close reason of {0} bytes (at most {REASON_BYTES_MAX})")]
    ReasonTooLong(usize),
    /// An anti-entropy frame's version-vector hash that is not 32 bytes.
    #[error("a {frame} frame's vector hash is {len} bytes, not 32")]
    VectorHashLength {
        /// `Digests` or `Heads`.
        frame: &'static str,
        /// Its length.
        len: usize,
    },
    /// A `Digests` frame with no range or more than [`DIGEST_RANGES_MAX`].
    #[error("a Digests frame of {0} ranges (1 to {DIGEST_RANGES_MAX})")]
    RangeCount(usize),
    /// A range that is not in the heads tree (`depth <= HEADS_TREE_DEPTH`, `prefix < 16^depth`).
    #[error("range (depth {depth}, prefix {prefix}) is outside the heads tree")]
    RangeOutOfTree {
        /// The depth sent.
        depth: u8,
        /// The prefix sent.
        prefix: u32,
    },
    /// A range digest that is not 32 bytes.
    #[error("a range digest of {0} bytes, not 32")]
    DigestLength(usize),
    /// A `Heads` frame with more than [`HEADS_DOCS_MAX`] documents.
    #[error("a Heads frame of {0} documents (at most {HEADS_DOCS_MAX})")]
    HeadsDocCount(usize),
    /// A document key of a bad length (`Heads` and `TransferBatch`: 1 to
    /// `DOC_KEY_BYTES_MAX` bytes; `Repair`: at most that).
    #[error("a {frame} document key of {len} bytes (at most {DOC_KEY_BYTES_MAX}, not empty)")]
    DocKeyLength {
        /// The frame the key is in.
        frame: &'static str,
        /// Its length.
        len: usize,
    },
    /// A document's heads whose length is not a non-zero multiple of 32 up to
    /// [`DOC_HEADS_MAX`] heads.
    #[error("a Heads entry's heads are {0} bytes (32 to 32 x {DOC_HEADS_MAX}, a multiple of 32)")]
    HeadsLength(usize),
    /// A `Repair` frame with no document or more than [`REPAIR_DOCS_MAX`].
    #[error("a Repair frame of {0} documents (1 to {REPAIR_DOCS_MAX})")]
    RepairDocCount(usize),
    /// A `Repair` entry without changes.
    #[error("a Repair entry without changes")]
    RepairNoChanges,
    /// A `Holders` frame with no member or more than [`HOLDERS_ENTRIES_MAX`].
    #[error("a Holders frame of {0} members (1 to {HOLDERS_ENTRIES_MAX})")]
    HoldersCount(usize),
    /// `Holders` members out of order or repeated, at this member.
    #[error("Holders members unsorted or repeated at node {0}")]
    HoldersUnsorted(NodeId),
    /// A state-transfer cursor longer than a document key.
    #[error("a transfer cursor of {0} bytes, longer than a document key ({DOC_KEY_BYTES_MAX})")]
    CursorTooLong(usize),
    /// A `TransferBatch` with more than [`TRANSFER_DOCS_MAX`] documents, or none but not `done`.
    #[error("a TransferBatch of {0} documents (1 to {TRANSFER_DOCS_MAX}, or none when done)")]
    TransferDocCount(usize),
    /// A transferred document with neither a snapshot nor tail changes.
    #[error("a transferred document with neither snapshot nor tail")]
    TransferDocEmpty,
    /// A transferred document whose tail is not shorter than [`TRANSFER_TAIL_MAX`].
    #[error("a transferred document's tail of {0} changes (fewer than {TRANSFER_TAIL_MAX})")]
    TransferTailTooLong(usize),
}

/// A range of the heads tree (`edgestore::HeadsTree`): `depth <= HEADS_TREE_DEPTH` and
/// `prefix < 16^depth`, checked when it is made, so reading it from any tree cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeRange {
    depth: u8,
    prefix: u32,
}

impl TreeRange {
    /// The whole tree.
    pub const ROOT: TreeRange = TreeRange { depth: 0, prefix: 0 };

    /// The range `(depth, prefix)`, if it is in the tree.
    pub fn new(depth: u8, prefix: u32) -> Result<TreeRange, Malformed> {
        if depth <= HEADS_TREE_DEPTH && u64::from(prefix) < 1u64 << (4 * u32::from(depth)) {
            Ok(TreeRange { depth, prefix })
        } else {
            Err(Malformed::RangeOutOfTree { depth, prefix })
        }
    }

    /// Depth, 0 (root) to `HEADS_TREE_DEPTH` (a leaf bucket).
    pub fn depth(self) -> u8 {
        self.depth
    }

    /// The bucket prefix at that depth.
    pub fn prefix(self) -> u32 {
        self.prefix
    }

    /// Whether the range is a leaf bucket (it has no children).
    pub fn is_leaf(self) -> bool {
        self.depth == HEADS_TREE_DEPTH
    }

    /// The 16 children of the range; none for a leaf.
    pub fn children(self) -> impl Iterator<Item = TreeRange> {
        let count = if self.is_leaf() { 0 } else { 16 };
        (0..count).map(move |child| TreeRange { depth: self.depth + 1, prefix: self.prefix * 16 + child })
    }

    /// The document count and digest `tree` holds for the range.
    pub fn read(self, tree: &HeadsTree) -> (u64, [u8; 32]) {
        // Every heads tree has the same fixed shape, and `new` checked the range is in it.
        tree.range(self.depth, self.prefix).expect("a TreeRange is inside every heads tree")
    }

    /// The range with `tree`'s count and digest, in wire form.
    pub fn digest_in(self, tree: &HeadsTree) -> RangeDigest {
        let (docs, digest) = self.read(tree);
        RangeDigest { depth: self.depth, prefix: self.prefix, docs, digest: ByteBuf::from(digest.to_vec()) }
    }
}

/// One document of a received `Repair` frame: its key and the automerge changes to merge.
pub type RepairDoc = (Vec<u8>, Vec<Vec<u8>>);

/// One range of a received `Digests` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRange {
    /// The range.
    pub range: TreeRange,
    /// Documents the sender holds in it.
    pub docs: u64,
    /// The sender's digest of it.
    pub digest: [u8; 32],
}

/// A received frame with every field checked and typed; see [`Frame`] for what each
/// frame means.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are those of `Frame`, typed
pub enum ParsedFrame {
    Hello { protocol: u16, cluster: ClusterId, node: NodeId, vector: VersionVector },
    Changes { batch: u64, changes: Vec<Vec<u8>> },
    Ack { batch: u64, vector: VersionVector },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Digests { vector: [u8; 32], ranges: Vec<ParsedRange> },
    Heads { vector: [u8; 32], reply: bool, range: TreeRange, docs: Vec<DocHeads>, complete: bool },
    Repair { docs: Vec<RepairDoc> },
    Close { code: CloseCode, reason: String },
    Holders { claims: Vec<HeldClaim> },
    TransferOffer { floor: VersionVector },
    TransferRequest { after: Vec<u8> },
    TransferBatch { batch: u64, documents: TransferBatch },
    TransferAck { batch: u64, vector: Option<VersionVector> },
}

impl ParsedFrame {
    /// Checks every field of `frame` and gives it its type.
    pub fn parse(frame: Frame) -> Result<ParsedFrame, Malformed> {
        Ok(match frame {
            Frame::Hello { protocol, cluster, node, vector } => ParsedFrame::Hello {
                protocol,
                cluster: ClusterId(id_bytes("cluster", &cluster)?),
                node: NodeId(id_bytes("node", &node)?),
                vector: vector_from_wire(&vector)?,
            },
            Frame::Changes { batch, changes } => {
                if changes.is_empty() || changes.len() > BATCH_CHANGES_MAX {
                    return Err(Malformed::ChangeCount(changes.len()));
                }
                ParsedFrame::Changes { batch, changes: changes.into_iter().map(ByteBuf::into_vec).collect() }
            }
            Frame::Ack { batch, vector } => ParsedFrame::Ack { batch, vector: vector_from_wire(&vector)? },
            Frame::Ping { nonce } => ParsedFrame::Ping { nonce },
            Frame::Pong { nonce } => ParsedFrame::Pong { nonce },
            Frame::Digests { vector, ranges } => {
                let vector = hash_bytes("Digests", &vector)?;
                if ranges.is_empty() || ranges.len() > DIGEST_RANGES_MAX {
                    return Err(Malformed::RangeCount(ranges.len()));
                }
                ParsedFrame::Digests { vector, ranges: ranges.iter().map(parse_range).collect::<Result<_, _>>()? }
            }
            Frame::Heads { vector, reply, depth, prefix, docs, complete } => {
                let vector = hash_bytes("Heads", &vector)?;
                let range = TreeRange::new(depth, prefix)?;
                if docs.len() > HEADS_DOCS_MAX {
                    return Err(Malformed::HeadsDocCount(docs.len()));
                }
                let docs = docs.into_iter().map(parse_doc_heads).collect::<Result<_, _>>()?;
                ParsedFrame::Heads { vector, reply, range, docs, complete }
            }
            Frame::Repair { docs } => ParsedFrame::Repair { docs: parse_repair(docs)? },
            Frame::Close { code, reason } => {
                if reason.len() > REASON_BYTES_MAX {
                    return Err(Malformed::ReasonTooLong(reason.len()));
                }
                ParsedFrame::Close { code, reason }
            }
            Frame::Holders { entries } => ParsedFrame::Holders { claims: holders_from_wire(&entries)? },
            Frame::TransferOffer { floor } => ParsedFrame::TransferOffer { floor: vector_from_wire(&floor)? },
            Frame::TransferRequest { after } => ParsedFrame::TransferRequest { after: cursor(after)? },
            Frame::TransferBatch { batch, vector, after, last, docs, done } => {
                let vector = vector_from_wire(&vector)?;
                let (after, last) = (cursor(after)?, cursor(last)?);
                if docs.len() > TRANSFER_DOCS_MAX || (docs.is_empty() && !done) {
                    return Err(Malformed::TransferDocCount(docs.len()));
                }
                let docs = docs.into_iter().map(parse_transfer_doc).collect::<Result<_, _>>()?;
                ParsedFrame::TransferBatch { batch, documents: TransferBatch { vector, after, last, docs, done } }
            }
            Frame::TransferAck { batch, vector } => {
                ParsedFrame::TransferAck { batch, vector: vector.as_deref().map(vector_from_wire).transpose()? }
            }
        })
    }
}

fn id_bytes(field: &'static str, bytes: &[u8]) -> Result<[u8; 16], Malformed> {
    bytes.try_into().map_err(|_| Malformed::IdLength { field, len: bytes.len() })
}

fn hash_bytes(frame: &'static str, bytes: &[u8]) -> Result<[u8; 32], Malformed> {
    bytes.try_into().map_err(|_| Malformed::VectorHashLength { frame, len: bytes.len() })
}

fn parse_range(range: &RangeDigest) -> Result<ParsedRange, Malformed> {
    let parsed = TreeRange::new(range.depth, range.prefix)?;
    let digest = range.digest[..].try_into().map_err(|_| Malformed::DigestLength(range.digest.len()))?;
    Ok(ParsedRange { range: parsed, docs: range.docs, digest })
}

fn doc_key(frame: &'static str, key: ByteBuf) -> Result<Vec<u8>, Malformed> {
    if key.is_empty() || key.len() > DOC_KEY_BYTES_MAX {
        return Err(Malformed::DocKeyLength { frame, len: key.len() });
    }
    Ok(key.into_vec())
}

fn parse_doc_heads((key, heads): (ByteBuf, ByteBuf)) -> Result<DocHeads, Malformed> {
    let key = doc_key("Heads", key)?;
    if heads.is_empty() || !heads.len().is_multiple_of(32) || heads.len() > 32 * DOC_HEADS_MAX {
        return Err(Malformed::HeadsLength(heads.len()));
    }
    let heads = heads.chunks_exact(32).map(|c| c.try_into().expect("chunks_exact(32) yields 32 bytes")).collect();
    Ok(DocHeads { key, heads })
}

/// A `Repair` frame's documents. Their keys are not checked for emptiness here: the
/// store refuses a key that does not decode, and with it the frame.
fn parse_repair(docs: Vec<(ByteBuf, Vec<ByteBuf>)>) -> Result<Vec<RepairDoc>, Malformed> {
    if docs.is_empty() || docs.len() > REPAIR_DOCS_MAX {
        return Err(Malformed::RepairDocCount(docs.len()));
    }
    docs.into_iter()
        .map(|(key, changes)| {
            if key.len() > DOC_KEY_BYTES_MAX {
                return Err(Malformed::DocKeyLength { frame: "Repair", len: key.len() });
            }
            if changes.is_empty() {
                return Err(Malformed::RepairNoChanges);
            }
            Ok((key.into_vec(), changes.into_iter().map(ByteBuf::into_vec).collect()))
        })
        .collect()
}

fn cursor(bytes: ByteBuf) -> Result<Vec<u8>, Malformed> {
    if bytes.len() > DOC_KEY_BYTES_MAX {
        return Err(Malformed::CursorTooLong(bytes.len()));
    }
    Ok(bytes.into_vec())
}

fn parse_transfer_doc((key, snapshot, tail): WireDoc) -> Result<TransferDoc, Malformed> {
    let key = doc_key("TransferBatch", key)?;
    if tail.len() >= TRANSFER_TAIL_MAX {
        return Err(Malformed::TransferTailTooLong(tail.len()));
    }
    if snapshot.is_empty() && tail.is_empty() {
        return Err(Malformed::TransferDocEmpty);
    }
    Ok(TransferDoc { key, snapshot: snapshot.into_vec(), tail: tail.into_iter().map(ByteBuf::into_vec).collect() })
}

/// Parses a `Holders` frame's entries: 1 to [`HOLDERS_ENTRIES_MAX`], members 16 bytes,
/// sorted and unique, each vector as [`vector_from_wire`] requires.
pub fn holders_from_wire(entries: &[HeldEntry]) -> Result<Vec<HeldClaim>, Malformed> {
    if entries.is_empty() || entries.len() > HOLDERS_ENTRIES_MAX {
        return Err(Malformed::HoldersCount(entries.len()));
    }
    let mut claims: Vec<HeldClaim> = Vec::with_capacity(entries.len());
    for (member, heard_ago_ms, vector) in entries {
        let member = NodeId(id_bytes("Holders member", member)?);
        if claims.last().is_some_and(|last| last.member >= member) {
            return Err(Malformed::HoldersUnsorted(member));
        }
        let vector = vector_from_wire(vector)?;
        claims.push(HeldClaim { member, vector, heard_ago_ms: *heard_ago_ms });
    }
    Ok(claims)
}

/// Parses a wire version vector: ids 16 bytes, sorted, unique, seqs non-zero, at most
/// [`VECTOR_ENTRIES_MAX`] entries.
pub fn vector_from_wire(wire: &[(ByteBuf, u64)]) -> Result<VersionVector, Malformed> {
    if wire.len() > VECTOR_ENTRIES_MAX {
        return Err(Malformed::VectorTooLong(wire.len()));
    }
    let mut vector = VersionVector::new();
    let mut last: Option<NodeId> = None;
    for (node, seq) in wire {
        let node = NodeId(id_bytes("version vector", node)?);
        if last.is_some_and(|l| l >= node) {
            return Err(Malformed::VectorUnsorted(node));
        }
        if *seq == 0 {
            return Err(Malformed::VectorZeroSeq(node));
        }
        last = Some(node);
        vector.set(node, *seq);
    }
    Ok(vector)
}
