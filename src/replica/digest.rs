//! Anti-entropy support: a fixed-shape blake3 digest tree over `doc_heads_v1`, the heads
//! of the documents in one range of it, the automerge changes a peer lacks for one
//! document, and repairing documents from such changes.
//!
//! The tree has the same shape on every node: a document belongs to leaf bucket
//! `blake3("edgestore.heads.bucket.v1" ‖ doc key)[..]`'s first [`HEADS_TREE_DEPTH`] × 4
//! bits, and a range is a prefix of those bits (`depth` nibbles, `prefix` their value).
//! The digest of a range is the XOR of `blake3("edgestore.heads.leaf.v1" ‖ len(key) ‖
//! key ‖ heads)` over its documents, with the count of documents beside it, so equal
//! ranges hash equal regardless of order. The leaves are maintained in `digest_v1` by
//! every write transaction (`digest_parts.rs`), so the tree is read, not recomputed.
//!
//! Repair merges documents; it never touches the change log or the version vector. It is a
//! backstop for documents that lost (or never got) changes their log says they hold — a
//! storage bug, or a partial restore of document tables — and is layout-described in
//! `docs/design.md` § "Anti-entropy".

use redb::{ReadableDatabase, ReadableTable};

use super::materialize::{Cause, ChangedDoc, RecordError};
use super::{digest_parts, load_working_doc, Replica, WriteTables};
use crate::change::{ChangeError, DocChangeFault, DocKey, Malformation, DOC_KEY_BYTES_MAX};
use crate::contain::contain;
use crate::doc;
use crate::error::{ApplyError, Corruption, StorageError};
use crate::storage;
use crate::types::NodeId;

/// Children per tree node (one hex digit of the bucket hash per level).
pub const HEADS_TREE_FANOUT: u32 = 16;
/// Levels below the root; leaves are ranges of this depth (16³ = 4096 leaf buckets).
pub const HEADS_TREE_DEPTH: u8 = 3;
/// Most documents one `repair_docs` call takes.
pub const REPAIR_DOCS_MAX: usize = 1024;

const LEAVES: usize = 1 << (4 * HEADS_TREE_DEPTH as usize);

/// Digest and document count of every leaf bucket of this replica's heads tree.
#[derive(Clone, PartialEq, Eq)]
pub struct HeadsTree {
    leaves: Vec<(u64, [u8; 32])>,
}

impl std::fmt::Debug for HeadsTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (docs, root) = self.root();
        write!(f, "HeadsTree {{ docs: {docs}, root: {}… }}", hex::encode(&root[..4]))
    }
}

impl HeadsTree {
    /// Document count and digest of the range `prefix` at `depth`; `None` if the range
    /// does not exist (`depth > HEADS_TREE_DEPTH` or `prefix ≥ 16^depth`).
    pub fn range(&self, depth: u8, prefix: u32) -> Option<(u64, [u8; 32])> {
        if depth > HEADS_TREE_DEPTH || u64::from(prefix) >= 1u64 << (4 * u32::from(depth)) {
            return None;
        }
        let width = 1usize << (4 * usize::from(HEADS_TREE_DEPTH - depth));
        let start = prefix as usize * width;
        let mut count = 0;
        let mut digest = [0u8; 32];
        for (docs, leaf) in &self.leaves[start..start + width] {
            count += docs;
            xor_into(&mut digest, leaf);
        }
        Some((count, digest))
    }

    /// Document count and digest of the whole tree.
    pub fn root(&self) -> (u64, [u8; 32]) {
        self.range(0, 0).expect("the root range exists")
    }
}

/// The leaf bucket (a range at depth [`HEADS_TREE_DEPTH`]) of a document key.
pub fn heads_bucket(doc_key: &[u8]) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"edgestore.heads.bucket.v1\0");
    hasher.update(doc_key);
    let hash = hasher.finalize();
    let top = u32::from_be_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
    top >> (32 - 4 * u32::from(HEADS_TREE_DEPTH))
}

/// Whether the leaf bucket `bucket` lies in the range `prefix` at `depth`.
pub fn bucket_in_range(bucket: u32, depth: u8, prefix: u32) -> bool {
    depth <= HEADS_TREE_DEPTH && bucket >> (4 * u32::from(HEADS_TREE_DEPTH - depth)) == prefix
}

/// blake3 of `bytes` (for the sync crate, which has no hash dependency of its own).
pub fn blake3_of(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

pub(super) fn leaf_hash(key: &[u8], heads: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"edgestore.heads.leaf.v1\0");
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(heads);
    *hasher.finalize().as_bytes()
}

pub(super) fn xor_into(acc: &mut [u8; 32], other: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// A document to repair: encoded key, key, and its parsed changes with their authors.
type VerifiedRepair = (Vec<u8>, DocKey, Vec<(NodeId, automerge::Change)>);

/// One document's key and heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocHeads {
    /// Encoded document key.
    pub key: Vec<u8>,
    /// Sorted heads (automerge change hashes).
    pub heads: Vec<[u8; 32]>,
}

/// What `repair_docs` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Documents that gained changes.
    pub docs_repaired: usize,
    /// Automerge changes that were new to their document.
    pub changes_applied: usize,
}

impl Replica {
    /// The heads tree over every document, read from its maintained leaves in
    /// `digest_v1` (at most 4096 entries, however many documents there are).
    pub fn heads_tree(&self) -> Result<HeadsTree, StorageError> {
        let txn = self.db.begin_read()?;
        let mut leaves = vec![(0u64, [0u8; 32]); LEAVES];
        digest_parts::stored_heads_leaves(&txn.open_table(storage::DIGEST)?, &mut leaves)?;
        Ok(HeadsTree { leaves })
    }

    /// The documents of range `prefix` at `depth`, in key order, at most `docs_max`; the
    /// flag says whether that is all of them.
    pub fn heads_in_range(
        &self,
        depth: u8,
        prefix: u32,
        docs_max: usize,
    ) -> Result<(Vec<DocHeads>, bool), StorageError> {
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(storage::DOC_HEADS)?;
        let mut docs = Vec::new();
        for item in heads.iter()? {
            let (key, value) = item?;
            if !bucket_in_range(heads_bucket(key.value()), depth, prefix) {
                continue;
            }
            if docs.len() >= docs_max {
                return Ok((docs, false));
            }
            let (_, head_bytes) = storage::decode_heads(value.value())?;
            let heads = head_bytes.chunks_exact(32).map(|h| h.try_into().expect("32-byte chunks")).collect();
            docs.push(DocHeads { key: key.value().to_vec(), heads });
        }
        Ok((docs, true))
    }

    /// The automerge changes of document `key` that a holder of `heads` lacks: every change
    /// not an ancestor of the heads this replica knows (unknown heads are the holder's
    /// own additions and are ignored). Empty if the document does not exist here.
    pub fn doc_changes_missing(&self, key: &[u8], heads: &[[u8; 32]]) -> Result<Vec<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let stored = super::ReadDocTables::open(&txn)?;
        let Some(mut working) = load_working_doc(self.node, &stored.tables(), &self.catalog, key)? else {
            return Ok(Vec::new());
        };
        contain("get_changes", || {
            let known: Vec<automerge::ChangeHash> = heads
                .iter()
                .map(|h| automerge::ChangeHash(*h))
                .filter(|h| working.doc.get_change_by_hash(h).is_some())
                .collect();
            working.doc.get_changes(&known).into_iter().map(|c| c.raw_bytes().to_vec()).collect()
        })
        .map_err(|e| Corruption::Document { doc: super::describe_doc_key(key), source: e.into() }.into())
    }

    /// Merges automerge changes from a peer into documents, re-materializing what depends
    /// on them, in one durable transaction (all or nothing). Each key must be a valid
    /// document key, each change must parse and be authored by a node in this replica's
    /// version vector, and every document must end with all its dependencies. The change
    /// log and the version vector are not touched.
    pub fn repair_docs(&mut self, docs: Vec<(Vec<u8>, Vec<Vec<u8>>)>) -> Result<RepairReport, ApplyError> {
        if docs.len() > REPAIR_DOCS_MAX {
            return Err(ApplyError::MalformedBatch(Malformation::TooManyRepairDocs));
        }
        let mut verified = Vec::with_capacity(docs.len());
        for (index, (key_bytes, changes)) in docs.into_iter().enumerate() {
            let bad = |reason: DocChangeFault| ApplyError::Invalid {
                index,
                source: ChangeError::BadDocChange { doc: index, reason },
            };
            if key_bytes.len() > DOC_KEY_BYTES_MAX {
                return Err(bad(DocChangeFault::KeyTooLong));
            }
            let key = DocKey::decode(&key_bytes).map_err(|e| bad(e.into()))?;
            let mut parsed = Vec::with_capacity(changes.len());
            for bytes in changes {
                let change = doc::parse_change(bytes).map_err(|e| bad(e.into()))?;
                let actor = NodeId::from_slice(change.actor_id().to_bytes())
                    .filter(|node| self.versions.seq(*node) > 0)
                    .ok_or_else(|| bad(DocChangeFault::UnknownRepairAuthor))?;
                parsed.push((actor, change));
            }
            verified.push((key_bytes, key, parsed));
        }
        let outcome = self.repair_txn(verified);
        if outcome.is_err() {
            self.reload_state()?;
        }
        outcome
    }

    fn repair_txn(&mut self, docs: Vec<VerifiedRepair>) -> Result<RepairReport, ApplyError> {
        let mut report = RepairReport::default();
        let txn = self.begin_durable_write()?;
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut changed = Vec::new();
            for (key_bytes, key, changes) in &docs {
                let mut working = self.take_or_new_doc(&tables, key_bytes)?;
                let mut fresh: Vec<&automerge::Change> = Vec::new();
                for (_, change) in changes {
                    let held =
                        contain("get_change_by_hash", || working.doc.get_change_by_hash(&change.hash()).is_some())
                            .map_err(|e| {
                                let doc = super::describe_doc_key(key_bytes);
                                ApplyError::Storage(Corruption::Document { doc, source: e.into() }.into())
                            })?;
                    if !held && !fresh.iter().any(|c| c.hash() == change.hash()) {
                        fresh.push(change);
                    }
                }
                if fresh.is_empty() {
                    self.cache.put(key_bytes.clone(), working);
                    continue;
                }
                let cause = Cause::Document(changes[0].0);
                let owned = fresh.iter().map(|c| (*c).clone()).collect();
                doc::apply_changes(&mut working.doc, owned).map_err(|e| cause.refusal(e.into()))?;
                report.docs_repaired += 1;
                report.changes_applied += fresh.len();
                let new_changes = fresh.iter().map(|c| c.raw_bytes()).collect();
                changed.push(ChangedDoc {
                    key_bytes: key_bytes.clone(),
                    key: key.clone(),
                    working,
                    new_changes,
                    cause,
                    inserted: None,
                });
            }
            self.record_changes(&mut tables, changed, &[]).map_err(RecordError::into_apply)?;
        }
        txn.commit().map_err(StorageError::from)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(keys: &[&[u8]]) -> HeadsTree {
        let mut leaves = vec![(0u64, [0u8; 32]); LEAVES];
        for key in keys {
            let leaf = &mut leaves[heads_bucket(key) as usize];
            leaf.0 += 1;
            xor_into(&mut leaf.1, &leaf_hash(key, &[7; 32]));
        }
        HeadsTree { leaves }
    }

    #[test]
    fn a_range_is_the_sum_of_its_children() {
        let keys: Vec<Vec<u8>> = (0u32..500).map(|i| i.to_be_bytes().to_vec()).collect();
        let tree = tree(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(tree.root().0, 500);
        for (depth, prefix) in [(0u8, 0u32), (1, 5), (2, 200)] {
            let (docs, digest) = tree.range(depth, prefix).unwrap();
            let mut sum = (0, [0u8; 32]);
            for child in 0..HEADS_TREE_FANOUT {
                let (d, g) = tree.range(depth + 1, prefix * HEADS_TREE_FANOUT + child).unwrap();
                sum.0 += d;
                xor_into(&mut sum.1, &g);
            }
            assert_eq!((docs, digest), sum);
        }
        assert_eq!(tree.range(HEADS_TREE_DEPTH + 1, 0), None);
        assert_eq!(tree.range(1, 16), None);
    }

    #[test]
    fn a_key_lies_in_every_range_above_its_bucket() {
        for key in [&b"a"[..], b"row", &[0xFF; 40]] {
            let bucket = heads_bucket(key);
            assert!(bucket < LEAVES as u32);
            assert!(bucket_in_range(bucket, 0, 0));
            assert!(bucket_in_range(bucket, HEADS_TREE_DEPTH, bucket));
            assert!(bucket_in_range(bucket, 1, bucket >> 8));
            assert!(!bucket_in_range(bucket, 1, ((bucket >> 8) + 1) % 16));
        }
    }
}
