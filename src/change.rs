//! The change envelope: the unit of replication, keyed by `(origin node, origin seq)`.
//!
//! One local write batch becomes one envelope holding one automerge change per document it
//! touched, so a batch stays atomic on every replica. An envelope names its causal
//! dependencies compactly: implicitly `(origin, seq - 1)`, and explicitly the entries of the
//! origin's version vector that grew since its previous envelope. Applying envelopes only
//! when their dependencies are held gives causal delivery, so every automerge change finds
//! its automerge dependencies in place.
//!
//! Wire/disk form: one version byte ([`ENVELOPE_VERSION`]) then packed CBOR of
//! [`EnvelopeWire`]. Layout in `docs/design.md`. [`VerifiedChange`] can only be built by
//! decoding and checking bytes ("parse, don't validate").

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::append::{self, AppendBatch, AppendFault, RangeTombstone};
use crate::codec::{self, CodecError};
use crate::doc::DocError;
use crate::keys::{self, KeyError};
use crate::schema::NAME_BYTES_MAX;
use crate::types::NodeId;

/// Version byte that starts every encoded envelope without append batches.
pub const ENVELOPE_VERSION: u8 = 1;
/// Version byte of an envelope that carries append batches or range tombstones
/// (operation kinds `0x03` and `0x04`): older builds refuse it by its version instead of misreading it.
pub const ENVELOPE_VERSION_APPEND: u8 = 2;
/// Largest encoded envelope accepted, in bytes. Checked before anything is decoded.
pub const CHANGE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most documents one envelope may touch.
pub const CHANGE_DOCS_MAX: usize = 100_000;
/// Most explicit dependencies one envelope may name.
pub const CHANGE_DEPS_MAX: usize = 4096;
/// Longest encoded document key, in bytes.
pub const DOC_KEY_BYTES_MAX: usize = 4096;

/// Which document a change applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocKey {
    /// The catalog document of a table.
    Table(String),
    /// The catalog document of an index.
    Index(String),
    /// The catalog document of a view: `0x00 ‖ name ‖ 0x01`, right after the table of the
    /// same name, so catalog documents still sort before every row (state transfer's
    /// cursor and the integrity check rely on it) and a node built before views refuses
    /// the key ("trailing bytes").
    View(String),
    /// A row document: table, table epoch (its incarnation), encoded primary key.
    Row {
        /// Table name.
        table: String,
        /// The table's causal length when it was created; odd.
        epoch: u64,
        /// The order-preserving encoding of the primary key.
        pk: Vec<u8>,
    },
}

const DOC_TABLE: u8 = 0;
const DOC_INDEX: u8 = 1;
const DOC_ROW: u8 = 2;
/// The byte after a view's name in its `DOC_TABLE`-kind key.
const VIEW_MARK: u8 = 1;

impl DocKey {
    /// Encodes the key; catalog keys sort before row keys, rows of a table together.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            DocKey::Table(name) => {
                out.push(DOC_TABLE);
                keys::encode_name(name, &mut out);
            }
            DocKey::Index(name) => {
                out.push(DOC_INDEX);
                keys::encode_name(name, &mut out);
            }
            DocKey::View(name) => {
                out.push(DOC_TABLE);
                keys::encode_name(name, &mut out);
                out.push(VIEW_MARK);
            }
            DocKey::Row { table, epoch, pk } => {
                out.extend(Self::row_prefix(table, *epoch));
                out.extend_from_slice(pk);
            }
        }
        out
    }

    /// The encoded prefix shared by every row document of one table incarnation.
    pub fn row_prefix(table: &str, epoch: u64) -> Vec<u8> {
        let mut out = vec![DOC_ROW];
        keys::encode_name(table, &mut out);
        out.extend_from_slice(&epoch.to_be_bytes());
        out
    }

    /// Decodes and checks a key: names valid, epoch odd, primary key a valid tuple.
    pub fn decode(bytes: &[u8]) -> Result<DocKey, KeyError> {
        if bytes.len() > DOC_KEY_BYTES_MAX {
            return Err(KeyError("document key too long"));
        }
        let (&kind, rest) = bytes.split_first().ok_or(KeyError("empty document key"))?;
        let (name, rest) = keys::decode_name(rest)?;
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(KeyError("bad name length"));
        }
        let name = name.to_string();
        match kind {
            DOC_TABLE if rest == [VIEW_MARK] => Ok(DocKey::View(name)),
            DOC_TABLE | DOC_INDEX if !rest.is_empty() => Err(KeyError("trailing bytes")),
            DOC_TABLE => Ok(DocKey::Table(name)),
            DOC_INDEX => Ok(DocKey::Index(name)),
            DOC_ROW => {
                if rest.len() < 8 {
                    return Err(KeyError("truncated epoch"));
                }
                let (epoch, pk) = rest.split_at(8);
                let epoch = u64::from_be_bytes(epoch.try_into().expect("split at 8"));
                if epoch % 2 == 0 {
                    return Err(KeyError("row epoch must be odd"));
                }
                if pk.is_empty() || keys::decode_tuple(pk)?.iter().any(|v| v.is_null()) {
                    return Err(KeyError("primary key is empty or has NULL"));
                }
                Ok(DocKey::Row { table: name, epoch, pk: pk.to_vec() })
            }
            _ => Err(KeyError("unknown document kind")),
        }
    }
}

/// The CBOR body of an envelope. Field order is the wire layout (packed CBOR: by index).
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvelopeWire {
    /// Origin node id, 16 bytes.
    pub origin: ByteBuf,
    /// Origin sequence number, from 1, contiguous per origin.
    pub seq: u64,
    /// Origin's clock when the batch was written (ms since the epoch), for history display.
    pub time_ms: i64,
    /// Explicit dependencies: `(node id, seq)` sorted by node id, never the origin itself.
    pub deps: Vec<(ByteBuf, u64)>,
    /// `(encoded document key, automerge change bytes)`, one per document, and
    /// `(append key, append payload)`, one per table incarnation; keys unique.
    pub ops: Vec<(ByteBuf, ByteBuf)>,
}

/// Why an envelope was rejected before touching any state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The envelope is larger than [`CHANGE_BYTES_MAX`].
    #[error("change is {0} bytes, more than the {CHANGE_BYTES_MAX} allowed")]
    TooLarge(usize),
    /// The version byte is not one this build reads.
    #[error("change format version {0} is not supported (expected {ENVELOPE_VERSION} or {ENVELOPE_VERSION_APPEND})")]
    UnsupportedVersion(u8),
    /// The bytes are not a valid envelope (or batch).
    #[error("malformed change: {0}")]
    Malformed(Malformation),
    /// An automerge change inside is malformed (or made automerge panic).
    #[error("malformed automerge change for document {doc}: {reason}")]
    BadDocChange {
        /// Index of the document change in the envelope (or of the document in a batch).
        doc: usize,
        /// What went wrong.
        reason: DocChangeFault,
    },
    /// An append batch inside is malformed.
    #[error("malformed append batch {op}: {reason}")]
    BadAppend {
        /// Index of the operation in the envelope.
        op: usize,
        /// What went wrong.
        reason: AppendFault,
    },
    /// An automerge change claims an author other than the envelope's origin.
    #[error("forged change: envelope origin {origin} but automerge actor {actor}")]
    ForgedActor {
        /// The envelope's origin.
        origin: NodeId,
        /// The automerge change's actor, hex.
        actor: String,
    },
}

/// What is wrong with an envelope, a repair or a transfer batch as a whole (see
/// [`ChangeError::Malformed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformation {
    /// No bytes at all.
    #[error("empty change")]
    Empty,
    /// The body is not the envelope's CBOR.
    #[error(transparent)]
    Cbor(#[from] CodecError),
    /// The origin is not a node id.
    #[error("bad origin")]
    BadOrigin,
    /// The seq is 0.
    #[error("seq must be at least 1")]
    SeqZero,
    /// No document change, or more than [`CHANGE_DOCS_MAX`].
    #[error("a change touches 1 to CHANGE_DOCS_MAX documents")]
    DocCount,
    /// Two document changes of the envelope name one document, or two append batches (or
    /// two range tombstones) one table incarnation.
    #[error("a document appears twice")]
    DocTwice,
    /// The version byte does not match the content: version 2 exactly when the envelope
    /// carries an append batch or a range tombstone.
    #[error("an envelope carries append batches or range tombstones exactly when its version is 2")]
    VersionMismatch,
    /// More than [`CHANGE_DEPS_MAX`] dependencies.
    #[error("too many dependencies")]
    TooManyDeps,
    /// A dependency's node is not a node id.
    #[error("bad dependency node id")]
    BadDepNode,
    /// A dependency on the origin itself or on seq 0.
    #[error("dependency on the origin itself or on seq 0")]
    BadDep,
    /// The dependencies are not sorted by node, or a node appears twice.
    #[error("dependencies not sorted or not unique")]
    DepsUnsorted,
    /// A repair names more than [`crate::REPAIR_DOCS_MAX`] documents.
    #[error("more than {} documents to repair", crate::REPAIR_DOCS_MAX)]
    TooManyRepairDocs,
    /// A transfer batch does not continue from the receiver's cursor.
    #[error("a transfer batch that does not continue from the receiver's cursor")]
    TransferNotAtCursor,
    /// A transfer batch holds no document (and is not the last), or too many.
    #[error("a transfer batch holds 1 to TRANSFER_DOCS_MAX documents (or none when done)")]
    TransferDocCount,
    /// A transfer batch's document keys are empty, too long, or not increasing.
    #[error("transfer document keys must be valid and strictly increase after the cursor")]
    TransferKeys,
    /// A transferred document has neither a snapshot nor a tail, or too long a tail.
    #[error("a transferred document needs a snapshot or a tail shorter than a document keeps")]
    TransferDocShape,
    /// A transfer batch's cursor is not its last key.
    #[error("a transfer batch's cursor is not its last key")]
    TransferCursor,
}

/// What is wrong with one document's change (see [`ChangeError::BadDocChange`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocChangeFault {
    /// The document key does not decode.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The document key is longer than a document key may be.
    #[error("document key too long")]
    KeyTooLong,
    /// automerge cannot load, parse or apply it.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// A transferred document holds no change.
    #[error("a document without changes")]
    NoChanges,
    /// A repair change by a node this replica holds nothing from.
    #[error("a change by a node this replica holds nothing from")]
    UnknownRepairAuthor,
    /// A transferred change by a node neither side's vector holds anything from.
    #[error("a change by a node neither side's vector holds anything from")]
    UnknownTransferAuthor,
}

impl From<crate::contain::Panicked> for DocChangeFault {
    fn from(e: crate::contain::Panicked) -> DocChangeFault {
        DocChangeFault::Doc(e.into())
    }
}

/// One automerge change for one document, verified.
#[derive(Debug, Clone)]
pub struct DocChange {
    /// The document.
    pub key: DocKey,
    /// The change, parsed; its actor is the envelope's origin.
    pub change: automerge::Change,
}

/// A decoded envelope whose structure, limits and authorship have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedChange {
    /// Origin node.
    pub origin: NodeId,
    /// Origin sequence number.
    pub seq: u64,
    /// Origin clock at write time, ms.
    pub time_ms: i64,
    /// Explicit dependencies.
    pub deps: Vec<(NodeId, u64)>,
    /// Document changes.
    pub ops: Vec<DocChange>,
    /// Rows appended to append-only tables, one batch per table incarnation.
    pub appends: Vec<AppendBatch>,
    /// Range deletes on append-only tables, at most one per table incarnation.
    pub tombstones: Vec<RangeTombstone>,
    /// blake3 of `bytes`: two envelopes with the same key and hash are the same change.
    pub hash: [u8; 32],
    /// The encoded envelope, exactly as received.
    pub bytes: Vec<u8>,
}

impl VerifiedChange {
    /// Decodes and verifies an encoded envelope.
    pub fn decode(bytes: Vec<u8>) -> Result<VerifiedChange, ChangeError> {
        if bytes.len() > CHANGE_BYTES_MAX {
            return Err(ChangeError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(ChangeError::Malformed(Malformation::Empty))?;
        if version != ENVELOPE_VERSION && version != ENVELOPE_VERSION_APPEND {
            return Err(ChangeError::UnsupportedVersion(version));
        }
        let wire: EnvelopeWire = codec::decode(body).map_err(|e| ChangeError::Malformed(e.into()))?;
        let origin = NodeId::from_slice(&wire.origin).ok_or(ChangeError::Malformed(Malformation::BadOrigin))?;
        if wire.seq == 0 {
            return Err(ChangeError::Malformed(Malformation::SeqZero));
        }
        let deps = verify_deps(origin, &wire.deps)?;
        if wire.ops.is_empty() || wire.ops.len() > CHANGE_DOCS_MAX {
            return Err(ChangeError::Malformed(Malformation::DocCount));
        }
        let mut ops = Vec::with_capacity(wire.ops.len());
        let mut appends = Vec::new();
        let mut tombstones = Vec::new();
        for (doc, (key, change)) in wire.ops.into_iter().enumerate() {
            let bad_append = |reason| ChangeError::BadAppend { op: doc, reason };
            if append::is_append_key(&key) {
                appends.push(AppendBatch::decode(&key, &change).map_err(bad_append)?);
            } else if append::is_tombstone_key(&key) {
                tombstones.push(RangeTombstone::decode(&key, &change).map_err(bad_append)?);
            } else {
                ops.push(verify_doc_change(origin, doc, &key, change.into_vec())?);
            }
        }
        if (appends.is_empty() && tombstones.is_empty()) != (version == ENVELOPE_VERSION) {
            return Err(ChangeError::Malformed(Malformation::VersionMismatch));
        }
        let mut keys: Vec<&DocKey> = ops.iter().map(|op| &op.key).collect();
        keys.sort();
        let mut tables: Vec<(&str, u64)> = appends.iter().map(|a| (a.table.as_str(), a.epoch)).collect();
        tables.sort();
        let mut deleted: Vec<(&str, u64)> = tombstones.iter().map(|t| (t.table.as_str(), t.epoch)).collect();
        deleted.sort();
        let twice = |names: &[(&str, u64)]| names.windows(2).any(|w| w[0] == w[1]);
        if keys.windows(2).any(|w| w[0] == w[1]) || twice(&tables) || twice(&deleted) {
            return Err(ChangeError::Malformed(Malformation::DocTwice));
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok(VerifiedChange { origin, seq: wire.seq, time_ms: wire.time_ms, deps, ops, appends, tombstones, hash, bytes })
    }

    /// Encodes a locally made change and verifies it, so local and remote changes share
    /// one representation.
    pub fn encode_local(
        origin: NodeId,
        seq: u64,
        time_ms: i64,
        deps: &[(NodeId, u64)],
        ops: Vec<DocChange>,
        appends: Vec<AppendBatch>,
        tombstones: Vec<RangeTombstone>,
    ) -> VerifiedChange {
        assert!(seq > 0, "a node's changes are numbered from 1");
        let count = ops.len() + appends.len() + tombstones.len();
        assert!(count > 0 && count <= CHANGE_DOCS_MAX, "a local change has 1..=CHANGE_DOCS_MAX operations");
        debug_assert!(
            deps.windows(2).all(|w| w[0].0 < w[1].0) && deps.iter().all(|(n, s)| *n != origin && *s > 0),
            "dependencies are sorted, of other nodes, and at seq >= 1 (what decode requires)"
        );
        let wire = EnvelopeWire {
            origin: ByteBuf::from(origin.as_bytes().to_vec()),
            seq,
            time_ms,
            deps: deps.iter().map(|(n, s)| (ByteBuf::from(n.as_bytes().to_vec()), *s)).collect(),
            ops: ops
                .iter()
                .map(|op| (ByteBuf::from(op.key.encode()), ByteBuf::from(op.change.raw_bytes().to_vec())))
                .chain(appends.iter().map(|a| (ByteBuf::from(a.key()), ByteBuf::from(a.payload()))))
                .chain(tombstones.iter().map(|t| (ByteBuf::from(t.key()), ByteBuf::from(t.payload()))))
                .collect(),
        };
        let plain = appends.is_empty() && tombstones.is_empty();
        let version = if plain { ENVELOPE_VERSION } else { ENVELOPE_VERSION_APPEND };
        let mut bytes = vec![version];
        bytes.extend(codec::encode(&wire));
        let hash = *blake3::hash(&bytes).as_bytes();
        let change =
            VerifiedChange { origin, seq, time_ms, deps: deps.to_vec(), ops, appends, tombstones, hash, bytes };
        #[cfg(debug_assertions)]
        change.shadow_check_decodes();
        change
    }

    /// Debug builds: a local envelope decodes, as a peer will decode it, to itself. A local
    /// change a peer would refuse would stall replication of everything after it.
    #[cfg(debug_assertions)]
    fn shadow_check_decodes(&self) {
        if self.bytes.len() > CHANGE_BYTES_MAX {
            return; // The writer refuses it (WriteError::ChangeTooLarge) before it is logged.
        }
        let decoded = VerifiedChange::decode(self.bytes.clone()).expect("a local change decodes");
        assert_eq!(
            (decoded.origin, decoded.seq, decoded.time_ms, &decoded.deps, decoded.hash),
            (self.origin, self.seq, self.time_ms, &self.deps, self.hash),
            "a local change decodes to itself"
        );
        assert!(decoded.ops.iter().map(|op| &op.key).eq(self.ops.iter().map(|op| &op.key)), "same documents");
        assert_eq!(decoded.appends, self.appends, "same appended rows");
        assert_eq!(decoded.tombstones, self.tombstones, "same range deletes");
    }
}

fn verify_deps(origin: NodeId, deps: &[(ByteBuf, u64)]) -> Result<Vec<(NodeId, u64)>, ChangeError> {
    let malformed = ChangeError::Malformed;
    if deps.len() > CHANGE_DEPS_MAX {
        return Err(malformed(Malformation::TooManyDeps));
    }
    let mut out: Vec<(NodeId, u64)> = Vec::with_capacity(deps.len());
    for (node, seq) in deps {
        let node = NodeId::from_slice(node).ok_or(malformed(Malformation::BadDepNode))?;
        if node == origin || *seq == 0 {
            return Err(malformed(Malformation::BadDep));
        }
        if out.last().is_some_and(|(last, _)| *last >= node) {
            return Err(malformed(Malformation::DepsUnsorted));
        }
        out.push((node, *seq));
    }
    Ok(out)
}

fn verify_doc_change(origin: NodeId, doc: usize, key: &[u8], change: Vec<u8>) -> Result<DocChange, ChangeError> {
    let bad = |reason: DocChangeFault| ChangeError::BadDocChange { doc, reason };
    let key = DocKey::decode(key).map_err(|e| bad(e.into()))?;
    let change = crate::doc::parse_change(change).map_err(|e| bad(e.into()))?;
    let actor = change.actor_id().to_bytes();
    if actor != origin.as_bytes() {
        return Err(ChangeError::ForgedActor { origin, actor: hex::encode(actor) });
    }
    Ok(DocChange { key, change })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_keys_round_trip_and_reject_garbage() {
        let row = DocKey::Row { table: "t".into(), epoch: 3, pk: keys::encode_tuple(&[crate::Value::Integer(5)]) };
        for key in [DocKey::Table("t".into()), DocKey::Index("i".into()), DocKey::View("v".into()), row] {
            assert_eq!(DocKey::decode(&key.encode()), Ok(key));
        }
        assert!(DocKey::decode(&[]).is_err());
        assert!(DocKey::decode(&[9, 0, 1, b'x']).is_err());
        let even_epoch = DocKey::Row { table: "t".into(), epoch: 2, pk: vec![1] };
        assert!(DocKey::decode(&even_epoch.encode()).is_err());
    }

    #[test]
    fn envelope_errors_are_typed() {
        assert!(matches!(VerifiedChange::decode(vec![]), Err(ChangeError::Malformed(_))));
        assert_eq!(VerifiedChange::decode(vec![7, 1, 2]).unwrap_err(), ChangeError::UnsupportedVersion(7));
        let huge = vec![ENVELOPE_VERSION; CHANGE_BYTES_MAX + 1];
        assert!(matches!(VerifiedChange::decode(huge), Err(ChangeError::TooLarge(_))));
    }
}
