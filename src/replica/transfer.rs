//! State transfer: a peer whose vector is below a donor's log floor receives the donor's
//! documents instead of its log (`docs/design.md` § "State transfer").
//!
//! The donor side ([`Replica::export_transfer`]) reads a bounded batch of documents in key
//! order after a cursor, from one read snapshot, raw as stored (snapshot and tail), with
//! that snapshot's version vector. The receiver side ([`Replica::import_transfer`]) checks
//! every document against hostile bytes (contained automerge calls), merges them, re-derives
//! rows, indexes, catalog, conflicts and digest through the same path as remote changes, and
//! records its progress in the same durable transaction; the batch marked `done` installs
//! the vector. A batch is all or nothing.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::materialize::{Cause, ChangedDoc, RecordError};
use super::{read, Replica, WorkingDoc, WriteTables, DOC_TAIL_CHANGES_MAX};
use crate::change::{ChangeError, DocChangeFault, DocKey, Malformation, CHANGE_BYTES_MAX, DOC_KEY_BYTES_MAX};
use crate::codec;
use crate::contain::contain;
use crate::doc;
use crate::error::{ApplyError, Corruption, Inconsistency, StorageError};
use crate::keys;
use crate::storage;
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// Most documents in one transfer batch. Each batch is one durable commit on the receiver,
/// so the count bound matters for small rows (≈ 170 B each: 1 MiB holds ~6 000); with 1024
/// the commits, not the documents, set the pace (6.3k vs 13.6k rows/s at 100k rows,
/// `benches/catch_up.rs`).
pub const TRANSFER_DOCS_MAX: usize = 8192;
/// Largest document (snapshot and tail bytes) a transfer can carry: one frame's payload.
pub const TRANSFER_DOC_BYTES_MAX: usize = CHANGE_BYTES_MAX;

/// One document as stored: its automerge snapshot (empty if it has none) and tail changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferDoc {
    /// Encoded document key.
    pub key: Vec<u8>,
    /// `docs_v1` value: an automerge `save`, or empty.
    pub snapshot: Vec<u8>,
    /// `doc_tail_v1` values in position order, fewer than `DOC_TAIL_CHANGES_MAX`.
    pub tail: Vec<Vec<u8>>,
}

/// A bounded run of documents in key order, read from one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferBatch {
    /// The donor's version vector at the snapshot: every document holds every change at
    /// or below it that touches it.
    pub vector: VersionVector,
    /// The cursor the batch continues from (exclusive; empty = from the first key).
    pub after: Vec<u8>,
    /// The cursor after this batch: its last key (`after` if it has no documents).
    pub last: Vec<u8>,
    /// The documents, keys strictly increasing and above `after`.
    pub docs: Vec<TransferDoc>,
    /// No document follows `last`: the transfer is complete.
    pub done: bool,
}

impl TransferBatch {
    /// Stored bytes of the batch's documents (keys, snapshots, tails).
    pub fn doc_bytes(&self) -> usize {
        self.docs.iter().map(doc_bytes).sum()
    }
}

/// An unfinished transfer, persisted in `meta_v1` under `transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// The donor of the last batch imported.
    pub donor: NodeId,
    /// Component-wise minimum of the vectors of every batch imported: the vector the
    /// receiver installs when the transfer ends.
    pub vector: VersionVector,
    /// Last document key imported.
    pub cursor: Vec<u8>,
    /// Documents imported so far.
    pub docs: u64,
    /// Batches imported so far.
    pub batches: u64,
}

impl TransferProgress {
    /// The cursor a transfer resumes from with `donor`: the persisted one, except that
    /// blocks start over with another donor than the last (block keys and layout
    /// generations are each donor's own; documents' keys are the same everywhere).
    pub fn cursor_for(&self, donor: NodeId) -> Vec<u8> {
        match self.cursor.first() {
            Some(&(TRANSFER_BLOCK_KIND | TRANSFER_TOMBSTONE_KIND)) if donor != self.donor => vec![TRANSFER_BLOCK_KIND],
            _ => self.cursor.clone(),
        }
    }
}

/// What `import_transfer` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferReport {
    /// Documents in the batch.
    pub docs: usize,
    /// Documents that were new here or gained changes.
    pub docs_changed: usize,
    /// Progress after the batch (for the last batch: the totals of the whole transfer).
    pub progress: TransferProgress,
    /// The version vector after install, if this batch ended the transfer.
    pub installed: Option<VersionVector>,
}

/// A transferred document, checked: its key and its loaded automerge document.
struct CheckedDoc {
    key_bytes: Vec<u8>,
    key: DocKey,
    stored: TransferDoc,
    loaded: WorkingDoc,
}

/// First byte of a transferred block's key (document keys use 0–2).
pub const TRANSFER_BLOCK_KIND: u8 = 3;
/// First byte of a transferred range tombstone's key, after every block: kind ‖ its
/// `append_tombstones_v1` key.
pub const TRANSFER_TOMBSTONE_KIND: u8 = 4;

/// The transfer key of a block: kind ‖ layout generation u64 BE ‖ `append_blocks_v1` key.
fn block_transfer_key(generation: u64, block_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + block_key.len());
    key.push(TRANSFER_BLOCK_KIND);
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(block_key);
    key
}

/// The generation and block key of a transferred block's key.
fn parse_block_cursor(key: &[u8]) -> Result<(u64, &[u8]), crate::keys::KeyError> {
    match key {
        [TRANSFER_BLOCK_KIND, rest @ ..] if rest.len() > 8 => {
            Ok((u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")), &rest[8..]))
        }
        _ => Err(crate::keys::KeyError("a transferred block's key is kind, generation and block key")),
    }
}

/// A transfer batch being filled up to its bounds.
struct BatchBuilder {
    docs: Vec<TransferDoc>,
    bytes: usize,
    docs_max: usize,
    bytes_max: usize,
}

impl BatchBuilder {
    /// Adds `doc` if it fits (the first always does); `false` if the batch is full.
    fn offer(&mut self, doc: TransferDoc) -> Result<bool, StorageError> {
        let size = doc_bytes(&doc);
        if size > TRANSFER_DOC_BYTES_MAX {
            return Err(StorageError::DocTooLargeToTransfer { doc: super::describe_doc_key(&doc.key), bytes: size });
        }
        if !self.docs.is_empty() && (self.docs.len() >= self.docs_max || self.bytes + size > self.bytes_max) {
            return Ok(false);
        }
        self.bytes += size;
        self.docs.push(doc);
        Ok(true)
    }

    fn finish(self, vector: VersionVector, after: &[u8], done: bool) -> TransferBatch {
        let last = self.docs.last().map_or_else(|| after.to_vec(), |d| d.key.clone());
        TransferBatch { vector, after: after.to_vec(), last, docs: self.docs, done }
    }
}

fn doc_bytes(doc: &TransferDoc) -> usize {
    doc.key.len() + doc.snapshot.len() + doc.tail.iter().map(Vec::len).sum::<usize>()
}

/// Component-wise minimum (an origin absent from either is 0, i.e. absent).
fn vector_min(a: &VersionVector, b: &VersionVector) -> VersionVector {
    a.iter().filter_map(|(origin, seq)| Some((origin, seq.min(b.seq(origin)))).filter(|(_, s)| *s > 0)).collect()
}

impl Replica {
    /// An unfinished transfer's progress, if any.
    pub fn transfer_progress(&self) -> Result<Option<TransferProgress>, StorageError> {
        let txn = self.db.begin_read()?;
        read_progress(&txn.open_table(storage::META)?)
    }

    /// Claims the receiving side of a state transfer for `donor` until `now_ms + lease_ms`
    /// (renewed by every claim of the holder): several sessions may be offered a transfer
    /// at once, and one progress record can follow one donor at a time. `false` while
    /// another donor's lease runs. In memory only: after a restart nobody holds it, and
    /// the persisted progress resumes with whichever donor claims it first.
    pub fn claim_transfer(&mut self, donor: NodeId, now_ms: u64, lease_ms: u64) -> bool {
        match self.transfer_claim {
            Some((holder, at)) if holder != donor && now_ms < at.saturating_add(lease_ms) => false,
            _ => {
                self.transfer_claim = Some((donor, now_ms));
                true
            }
        }
    }

    /// Donor side: the documents after `after` in key order, then the append-only
    /// tables' blocks, then their range tombstones, at most `docs_max` entries and about `bytes_max` bytes (at least one
    /// if any follows), with the snapshot's version vector. A document above
    /// [`TRANSFER_DOC_BYTES_MAX`] cannot be sent.
    ///
    /// A block travels as a [`TransferDoc`] whose key is [`TRANSFER_BLOCK_KIND`] ‖ the
    /// donor's block-layout generation ‖ its `append_blocks_v1` key and whose snapshot
    /// is the block: after every document key (kinds 0–2), so the cursor stays one key.
    /// A cursor from an older generation (the donor re-split blocks since, moving rows
    /// between keys) starts the blocks over under the new one. Tombstones follow as
    /// [`TRANSFER_TOMBSTONE_KIND`] ‖ their `append_tombstones_v1` key: the receiver
    /// applies each to what it holds and keeps it, which removes in any order what the
    /// tombstone removes at the donor.
    pub fn export_transfer(
        &self,
        after: &[u8],
        docs_max: usize,
        bytes_max: usize,
    ) -> Result<TransferBatch, StorageError> {
        assert!(docs_max >= 1, "a transfer batch holds at least one document");
        let txn = self.db.begin_read()?;
        let vector = read::Snapshot::version_vector_of(&txn)?;
        let generation = super::append::layout_generation(&txn.open_table(storage::META)?)?;
        let mut out = BatchBuilder { docs: Vec::new(), bytes: 0, docs_max, bytes_max };
        let tombstone_cursor = match after.first() {
            Some(&TRANSFER_TOMBSTONE_KIND) => Bound::Excluded(&after[1..]),
            Some(&TRANSFER_BLOCK_KIND) => {
                // A cursor that does not parse (only a peer makes one) starts the blocks
                // over; the receiver's own order check refuses what does not follow it.
                let start = match parse_block_cursor(after).ok() {
                    Some((cursor_generation, key)) if cursor_generation == generation => Bound::Excluded(key),
                    _ => Bound::Unbounded,
                };
                if !export_blocks(&txn, generation, start, &mut out)? {
                    return Ok(out.finish(vector, after, false));
                }
                Bound::Unbounded
            }
            _ => {
                if !self.export_docs(&txn, after, &mut out)?
                    || !export_blocks(&txn, generation, Bound::Unbounded, &mut out)?
                {
                    return Ok(out.finish(vector, after, false));
                }
                Bound::Unbounded
            }
        };
        let tombstones = txn.open_table(storage::APPEND_TOMBSTONES)?;
        for item in tombstones.range::<&[u8]>((tombstone_cursor, Bound::Unbounded))? {
            let (key, value) = item?;
            let mut transfer_key = vec![TRANSFER_TOMBSTONE_KIND];
            transfer_key.extend_from_slice(key.value());
            let doc = TransferDoc { key: transfer_key, snapshot: value.value().to_vec(), tail: Vec::new() };
            if !out.offer(doc)? {
                return Ok(out.finish(vector, after, false));
            }
        }
        Ok(out.finish(vector, after, true))
    }

    /// The documents after `after` (a document key or empty) into `out`; `false` once
    /// the batch is full.
    fn export_docs(
        &self,
        txn: &redb::ReadTransaction,
        after: &[u8],
        out: &mut BatchBuilder,
    ) -> Result<bool, StorageError> {
        let heads = txn.open_table(storage::DOC_HEADS)?;
        let snapshots = txn.open_table(storage::DOCS)?;
        let tails = txn.open_table(storage::DOC_TAIL)?;
        let rows = txn.open_table(storage::ROWS)?;
        let start = if after.is_empty() { Bound::Unbounded } else { Bound::Excluded(after) };
        for item in heads.range::<&[u8]>((start, Bound::Unbounded))? {
            let (key, value) = item?;
            let key = key.value().to_vec();
            let doc = match storage::decode_implicit(value.value())? {
                // Sent as what it stands for, its one change: the receiver stores its
                // documents its own way. This replica's catalog is the snapshot's: the
                // export runs on the owner thread, which alone writes.
                Some(implicit) => {
                    let mut rebuilt = super::implicit::rebuild(&key, &implicit, &self.catalog, &rows)?;
                    TransferDoc { tail: vec![super::implicit::only_change(&mut rebuilt)], key, snapshot: Vec::new() }
                }
                None => {
                    let (tail_len, _) = storage::decode_heads(value.value())?;
                    let snapshot = storage::get_bytes(&snapshots, &key)?.unwrap_or_default();
                    let mut tail = Vec::with_capacity(tail_len as usize);
                    for position in 0..tail_len {
                        let change = storage::get_bytes(&tails, &storage::tail_key(&key, position))?
                            .ok_or_else(|| Corruption::TailMissing { doc: super::describe_doc_key(&key), position })?;
                        tail.push(change);
                    }
                    TransferDoc { key, snapshot, tail }
                }
            };
            if !out.offer(doc)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A whole state transfer from another replica of this process, batch by batch with
    /// the session's bounds: seeds a node from a store file (a backup, say) by documents,
    /// without its log. Returns the last batch's report (the install).
    pub fn transfer_from(&mut self, donor: &Replica) -> Result<TransferReport, ApplyError> {
        loop {
            let cursor = self.transfer_progress()?.map(|p| p.cursor_for(donor.node_id())).unwrap_or_default();
            let batch = donor.export_transfer(&cursor, TRANSFER_DOCS_MAX, 1 << 20)?;
            let report = self.import_transfer(donor.node_id(), batch)?;
            if report.installed.is_some() {
                return Ok(report);
            }
        }
    }

    /// Receiver side: checks and merges a batch from `donor`, re-deriving everything that
    /// depends on its documents, and records the progress, in one durable transaction (all
    /// or nothing). The batch must continue from the persisted cursor (or from the start if
    /// no transfer is in progress). The batch marked `done` also installs the vector:
    /// `V := max(V, W_min)`, the log floor raised where the log now has a gap, pending
    /// changes at or below `V` dropped, the progress removed.
    pub fn import_transfer(&mut self, donor: NodeId, batch: TransferBatch) -> Result<TransferReport, ApplyError> {
        if let Some(refusal) = self.fault_refusal() {
            return Err(ApplyError::Storage(refusal));
        }
        let previous = self.transfer_progress()?;
        let cursor = previous.as_ref().map(|p| p.cursor_for(donor)).unwrap_or_default();
        check_shape(&batch, &cursor)?;
        let progress = TransferProgress {
            donor,
            vector: previous.as_ref().map_or_else(|| batch.vector.clone(), |p| vector_min(&p.vector, &batch.vector)),
            cursor: batch.last.clone(),
            docs: previous.as_ref().map_or(0, |p| p.docs) + batch.docs.len() as u64,
            batches: previous.as_ref().map_or(0, |p| p.batches) + 1,
        };
        let checked = self.check_docs(&batch)?;
        let blocks = check_blocks(&batch)?;
        let tombstones = check_tombstones(&batch)?;
        let docs = checked.len() + blocks.len() + tombstones.len();
        let outcome = self.import_txn(checked, (&blocks, &tombstones), &progress, batch.done);
        let docs_changed = match outcome {
            Ok(changed) => changed,
            Err(error) => {
                return Err(match error {
                    ApplyError::Storage(e) => ApplyError::Storage(self.recover(e)),
                    refused => match self.reload_state() {
                        Ok(()) => refused,
                        Err(e) => ApplyError::Storage(self.recover(e)),
                    },
                })
            }
        };
        let installed = batch.done.then(|| self.versions.clone());
        if installed.is_some() {
            self.transfer_claim = None;
            let mut report = super::ApplyReport::default();
            self.drain_pending(&mut report)?;
        }
        tracing::debug!(%donor, docs, docs_changed, done = batch.done, "state transfer batch imported");
        Ok(TransferReport { docs, docs_changed, progress, installed })
    }

    /// Loads every document of the batch (contained) and checks its changes' authors:
    /// each must be a node of the batch's vector or of this replica's.
    fn check_docs(&self, batch: &TransferBatch) -> Result<Vec<CheckedDoc>, ApplyError> {
        let mut checked = Vec::with_capacity(batch.docs.len());
        let documents = batch.docs.iter().take_while(|d| d.key.first() < Some(&TRANSFER_BLOCK_KIND));
        for (index, stored) in documents.enumerate() {
            let bad = |reason: DocChangeFault| ApplyError::Invalid {
                index,
                source: ChangeError::BadDocChange { doc: index, reason },
            };
            let key = DocKey::decode(&stored.key).map_err(|e| bad(e.into()))?;
            let mut loaded = doc::load_doc(self.node, &stored.snapshot, Vec::new()).map_err(|e| bad(e.into()))?;
            // The snapshot's authors from its history; the tail's from the parsed changes
            // (most rows have no snapshot: one change in the tail).
            let mut actors = match stored.snapshot.is_empty() {
                true => Vec::new(),
                false => contain("get_changes", || {
                    loaded.get_changes(&[]).iter().map(|c| c.actor_id().to_bytes().to_vec()).collect::<Vec<_>>()
                })
                .map_err(|e| bad(e.into()))?,
            };
            let mut tail = Vec::with_capacity(stored.tail.len());
            for bytes in &stored.tail {
                let change = doc::parse_change(bytes.clone()).map_err(|e| bad(e.into()))?;
                actors.push(change.actor_id().to_bytes().to_vec());
                tail.push(change);
            }
            doc::apply_changes(&mut loaded, tail).map_err(|e| bad(e.into()))?;
            if actors.is_empty() {
                return Err(bad(DocChangeFault::NoChanges));
            }
            let known = |actor: &Vec<u8>| {
                NodeId::from_slice(actor).is_some_and(|n| batch.vector.seq(n) > 0 || self.versions.seq(n) > 0)
            };
            if !actors.iter().all(known) {
                return Err(bad(DocChangeFault::UnknownTransferAuthor));
            }
            let changes = actors.len() as u64;
            let loaded = WorkingDoc {
                doc: Box::new(loaded),
                tail_len: stored.tail.len() as u32,
                created: true,
                changes,
                implicit: false,
            };
            checked.push(CheckedDoc { key_bytes: stored.key.clone(), key, stored: stored.clone(), loaded });
        }
        Ok(checked)
    }

    fn import_txn(
        &mut self,
        mut docs: Vec<CheckedDoc>,
        (blocks, tombstones): (&[CheckedBlock], &[CheckedTombstone]),
        progress: &TransferProgress,
        done: bool,
    ) -> Result<usize, ApplyError> {
        // A document sent as its one change (what an implicit document is sent as) is
        // recorded as that new change, so that it can be stored implicitly here too.
        let singles: Vec<Option<Vec<u8>>> = docs
            .iter_mut()
            .map(|doc| {
                let single = doc.stored.snapshot.is_empty() && doc.stored.tail.len() == 1;
                single.then(|| doc.stored.tail.pop().expect("one change"))
            })
            .collect();
        let txn = self.begin_durable_write()?;
        let changed_count;
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut changed = Vec::with_capacity(docs.len());
            for (doc, single) in docs.into_iter().zip(&singles) {
                let single = single.as_deref();
                if let Some(changed_doc) = self.stage_transferred(&mut tables, doc, single, progress.donor)? {
                    changed.push(changed_doc);
                }
            }
            changed_count = changed.len() + blocks.len() + tombstones.len();
            self.record_changes(&mut tables, changed, &[]).map_err(RecordError::into_apply)?;
            // After the documents: the catalog they carry is resolved, so each block
            // finds its table's incarnation if this transfer has brought it.
            if !blocks.is_empty() || !tombstones.is_empty() {
                // The blocks change no tombstone: each incarnation's are read once.
                let mut kept = std::collections::BTreeMap::new();
                for block in blocks {
                    self.store_transferred_block(&mut tables, &mut kept, &block.table, &block.key, &block.block)?;
                }
                for t in tombstones {
                    self.store_transferred_tombstone(&mut tables, t.origin, t.seq, &t.tombstone)?;
                }
                tables.digest_delta.flush(&mut tables.digest)?;
                #[cfg(debug_assertions)]
                super::integrity::shadow_check_digest(&tables)?;
                #[cfg(debug_assertions)]
                super::integrity::shadow_check_append_keys(&self.catalog, &tables)?;
            }
            if done {
                self.install(&mut tables, &progress.vector)?;
                tables.meta.remove(storage::META_TRANSFER)?;
            } else {
                tables.meta.insert(storage::META_TRANSFER, codec::encode(progress).as_slice())?;
            }
        }
        txn.commit().map_err(StorageError::from)?;
        Ok(changed_count)
    }

    /// Stores one transferred document: verbatim if this replica lacks it, else merged
    /// into ours and saved whole. `None` if ours already held every change. `single`:
    /// the document was sent as this one change (taken out of its stored tail), which a
    /// new document records as its new change instead.
    fn stage_transferred<'d>(
        &mut self,
        tables: &mut WriteTables<'_>,
        doc: CheckedDoc,
        single: Option<&'d [u8]>,
        donor: NodeId,
    ) -> Result<Option<ChangedDoc<'d>>, ApplyError> {
        let CheckedDoc { key_bytes, key, stored, mut loaded } = doc;
        let inconsistent = |reason: Inconsistency| Cause::Document(donor).refusal(reason);
        let working = match self.take_doc(tables, &key_bytes)? {
            None if single.is_some() => {
                // As if the change arrived alone: `record_changes` stores it (as tail
                // entry 0, or implicitly).
                loaded.tail_len = 0;
                loaded.changes = 0;
                let new_changes = single.into_iter().collect();
                return Ok(Some(ChangedDoc {
                    key_bytes,
                    key,
                    working: loaded,
                    new_changes,
                    cause: Cause::Document(donor),
                    inserted: None,
                }));
            }
            None => {
                if !stored.snapshot.is_empty() {
                    tables.docs.insert(key_bytes.as_slice(), stored.snapshot.as_slice())?;
                }
                for (position, change) in stored.tail.iter().enumerate() {
                    tables.tail.insert(storage::tail_key(&key_bytes, position as u32).as_slice(), change.as_slice())?;
                }
                loaded
            }
            Some(mut ours) => {
                let before = doc::heads(&mut ours.doc);
                let theirs = contain("get_changes", || {
                    loaded.doc.get_changes(&[]).into_iter().cloned().collect::<Vec<automerge::Change>>()
                })
                .map_err(|e| inconsistent(e.into()))?;
                doc::apply_changes(&mut ours.doc, theirs).map_err(|e| inconsistent(e.into()))?;
                if doc::heads(&mut ours.doc) == before {
                    self.cache.put(key_bytes, ours);
                    return Ok(None);
                }
                let snapshot = ours.doc.save();
                tables.docs.insert(key_bytes.as_slice(), snapshot.as_slice())?;
                for position in 0..ours.tail_len {
                    tables.tail.remove(storage::tail_key(&key_bytes, position).as_slice())?;
                }
                ours.tail_len = 0;
                // Saved whole: no longer described by its heads entry.
                ours.implicit = false;
                ours.changes = doc::change_count(&mut ours.doc);
                ours.created = false;
                ours
            }
        };
        Ok(Some(ChangedDoc {
            key_bytes,
            key,
            working,
            new_changes: Vec::new(),
            cause: Cause::Document(donor),
            inserted: None,
        }))
    }

    /// Installs `vector` at the end of a transfer: `V := max(V, vector)`, the floor raised
    /// to `vector[o]` wherever `V[o]` was below it (the log has a gap there), pending
    /// changes at or below the new `V` dropped.
    fn install(&mut self, tables: &mut WriteTables<'_>, vector: &VersionVector) -> Result<(), StorageError> {
        let mut floor_raised = false;
        for (origin, seq) in vector.iter() {
            if self.versions.seq(origin) < seq {
                assert!(origin != self.node, "a donor cannot hold more of this node's changes than it made");
                self.versions.set(origin, seq);
                tables.versions.insert(origin.as_bytes().as_slice(), seq)?;
                if self.floor.seq(origin) < seq {
                    self.floor.set(origin, seq);
                    floor_raised = true;
                }
            }
        }
        if floor_raised {
            super::compact::record_log_floor(&mut tables.meta, &self.floor)?;
        }
        let mut held = Vec::new();
        for item in tables.pending.iter()? {
            let key = item?.0.value().to_vec();
            let (origin, seq) =
                keys::decode_log_key(&key).map_err(|source| Corruption::Key { table: "pending_v1", source })?;
            if seq <= self.versions.seq(origin) {
                held.push(key);
            }
        }
        for key in held {
            tables.pending.remove(key.as_slice())?;
        }
        debug_assert!(self.floor.iter().all(|(o, f)| f <= self.versions.seq(o)), "floor ≤ V");
        Ok(())
    }
}

/// A transferred block, checked: its `append_blocks_v1` key at the donor, decoded, and
/// its rows.
struct CheckedBlock {
    table: String,
    key: crate::append::BlockKey,
    block: crate::append::Block,
}

/// Decodes every block of the batch (the entries after its documents) and checks it
/// against hostile bytes: key, rows, distinct column ids and positions, and an envelope
/// the batch's vector holds (a snapshot's blocks hold only envelopes it logged).
fn check_blocks(batch: &TransferBatch) -> Result<Vec<CheckedBlock>, ApplyError> {
    use crate::append::{self, AppendFault, APPEND_ROWS_MAX};
    let mut checked = Vec::new();
    let blocks = batch.docs.iter().enumerate().filter(|(_, d)| d.key.first() == Some(&TRANSFER_BLOCK_KIND));
    for (index, stored) in blocks {
        let bad =
            |reason: AppendFault| ApplyError::Invalid { index, source: ChangeError::BadAppend { op: index, reason } };
        let (_, block_key) = parse_block_cursor(&stored.key).map_err(|e| bad(e.into()))?;
        let (table, key) = append::decode_block_key(block_key).map_err(|e| bad(e.into()))?;
        if !stored.tail.is_empty() {
            return Err(ApplyError::MalformedBatch(Malformation::TransferDocShape));
        }
        let block = append::decode_block(&stored.snapshot, key.bucket).map_err(|e| bad(e.into()))?;
        let ids: std::collections::BTreeSet<&String> = block.columns.iter().collect();
        if ids.len() != block.columns.len() {
            return Err(bad(AppendFault::Columns));
        }
        let positions: std::collections::BTreeSet<u32> = block.rows.iter().map(|(pos, _)| *pos).collect();
        if positions.len() != block.rows.len() || positions.last().is_some_and(|p| *p as usize >= APPEND_ROWS_MAX) {
            return Err(bad(AppendFault::Positions));
        }
        if key.seq == 0 || key.seq > batch.vector.seq(key.origin) {
            return Err(bad(AppendFault::NotInVector));
        }
        checked.push(CheckedBlock { table: table.to_string(), key, block });
    }
    Ok(checked)
}

/// A transferred range tombstone, checked: decoded from its donor's key and value, and
/// of an envelope the batch's vector holds.
struct CheckedTombstone {
    origin: NodeId,
    seq: u64,
    tombstone: crate::append::RangeTombstone,
}

/// Decodes every tombstone of the batch (its entries of kind
/// [`TRANSFER_TOMBSTONE_KIND`]): key, payload, no tail, an envelope the batch's vector
/// holds, and a vector it dominates (what the deleting node held came before it).
fn check_tombstones(batch: &TransferBatch) -> Result<Vec<CheckedTombstone>, ApplyError> {
    use crate::append::{self, AppendFault};
    let mut checked = Vec::new();
    let tombstones = batch.docs.iter().enumerate().filter(|(_, d)| d.key.first() == Some(&TRANSFER_TOMBSTONE_KIND));
    for (index, stored) in tombstones {
        let bad =
            |reason: AppendFault| ApplyError::Invalid { index, source: ChangeError::BadAppend { op: index, reason } };
        if !stored.tail.is_empty() {
            return Err(ApplyError::MalformedBatch(Malformation::TransferDocShape));
        }
        let (tombstone, origin, seq) =
            append::decode_stored_tombstone(&stored.key[1..], &stored.snapshot).map_err(bad)?;
        if seq == 0 || seq > batch.vector.seq(origin) || !batch.vector.dominates(&tombstone.vector) {
            return Err(bad(AppendFault::NotInVector));
        }
        checked.push(CheckedTombstone { origin, seq, tombstone });
    }
    Ok(checked)
}

/// The blocks after the block cursor `start` into `out`; `false` once the batch is full.
fn export_blocks(
    txn: &redb::ReadTransaction,
    generation: u64,
    start: Bound<&[u8]>,
    out: &mut BatchBuilder,
) -> Result<bool, StorageError> {
    let blocks = txn.open_table(storage::APPEND_BLOCKS)?;
    for item in blocks.range::<&[u8]>((start, Bound::Unbounded))? {
        let (key, value) = item?;
        let doc = TransferDoc {
            key: block_transfer_key(generation, key.value()),
            snapshot: value.value().to_vec(),
            tail: Vec::new(),
        };
        if !out.offer(doc)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The batch's own consistency: document count, keys increasing after the cursor, tails
/// shorter than a document keeps, and `last` the last key.
fn check_shape(batch: &TransferBatch, cursor: &[u8]) -> Result<(), ApplyError> {
    let malformed = ApplyError::MalformedBatch;
    if batch.after != cursor {
        return Err(malformed(Malformation::TransferNotAtCursor));
    }
    if batch.docs.len() > TRANSFER_DOCS_MAX || (batch.docs.is_empty() && !batch.done) {
        return Err(malformed(Malformation::TransferDocCount));
    }
    let mut previous = batch.after.as_slice();
    for doc in &batch.docs {
        let in_order = previous.is_empty() || doc.key.as_slice() > previous;
        if doc.key.is_empty() || doc.key.len() > DOC_KEY_BYTES_MAX || !in_order {
            return Err(malformed(Malformation::TransferKeys));
        }
        if doc.tail.len() >= DOC_TAIL_CHANGES_MAX as usize || (doc.snapshot.is_empty() && doc.tail.is_empty()) {
            return Err(malformed(Malformation::TransferDocShape));
        }
        previous = &doc.key;
    }
    if batch.last.as_slice() != previous {
        return Err(malformed(Malformation::TransferCursor));
    }
    Ok(())
}

fn read_progress(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<TransferProgress>, StorageError> {
    match meta.get(storage::META_TRANSFER)? {
        Some(bytes) => codec::decode(bytes.value())
            .map(Some)
            .map_err(|source| Corruption::Value { table: "meta_v1 transfer", source }.into()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_min_drops_origins_either_side_lacks() {
        let (a, b, c) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let x: VersionVector = [(a, 5), (b, 2)].into_iter().collect();
        let y: VersionVector = [(a, 3), (c, 9)].into_iter().collect();
        assert_eq!(vector_min(&x, &y), [(a, 3)].into_iter().collect());
    }
}
