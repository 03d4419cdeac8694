//! The replica: one node's copy of the store in one redb file.
//!
//! A [`Replica`] owns the write side of the database (redb is single-writer; see
//! `handle.rs` for the thread that owns it in a daemon). Writes and remote changes both end
//! in the same place: documents change, their new automerge changes are persisted, the
//! affected catalog entries and rows are re-materialized, and the change envelope is
//! logged — all in one redb transaction, acknowledged only after a durable commit.
//! Reads go through [`Snapshot`]s of materialized rows and never touch automerge.

mod alter;
mod append;
mod append_keys;
mod apply;
mod backup;
mod cache;
mod compact;
mod dead_letters;
mod digest;
mod digest_parts;
mod guard;
mod history;
mod holders;
mod implicit;
mod integrity;
mod materialize;
mod open;
mod read;
mod restore;
mod retention;
mod save;
mod stats;
mod tombstones;
mod transfer;
mod unique;
mod write;

use std::sync::Arc;

use automerge::AutoCommit;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::change::DocKey;
use crate::doc;
use crate::error::{Corruption, StorageError};
use crate::keys;
use crate::storage;
use crate::types::{NodeId, Value};
use crate::version_vector::VersionVector;

pub use append::{AppendRows, TimeRange};
pub use append_keys::RowIdentity;
pub use apply::{ApplyReport, ChangeBatch, PENDING_CHANGES_MAX};
pub use backup::{BackupError, BackupReport, BACKUP_TXN_ENTRIES_MAX};
pub use cache::{DOC_CACHE_CHANGE_BYTES, DOC_CACHE_ENTRY_BYTES};
pub use compact::CompactReport;
pub use dead_letters::{DeadLetter, DEAD_LETTERS_MAX, DEAD_LETTER_ERROR_BYTES_MAX, DEAD_LETTER_PAYLOAD_BYTES_MAX};
pub use digest::{
    blake3_of, bucket_in_range, heads_bucket, DocHeads, HeadsTree, RepairReport, HEADS_TREE_DEPTH, HEADS_TREE_FANOUT,
    REPAIR_DOCS_MAX,
};
pub use history::{HistoryEntry, RowEffect};
pub use holders::{
    changes_missing, HeldClaim, HeldPage, HoldersCounters, Horizon, MemberHold, HEARD_PERSIST_MS, MEMBERS_MAX,
};
pub use integrity::{IntegrityProblem, StateDigest};
pub use open::{OpenOptions, CACHE_BYTES_DEFAULT, CACHE_BYTES_MIN};
pub use read::{DuplicateConflict, RowConflicts, RowIter, Snapshot, UniqueConflict};
pub use retention::{AppendFloor, AppendTableStatus, ExpireReport, NO_FLOOR};
pub use save::{SaveReport, SAVE_SCAN_DOCS_MAX, SAVE_TAIL_CHANGES_MIN};
pub use stats::{CacheFigures, RedbTableStats, StorageStats, UserTableStats};
pub use transfer::{
    TransferBatch, TransferDoc, TransferProgress, TransferReport, TRANSFER_DOCS_MAX, TRANSFER_DOC_BYTES_MAX,
};
pub(crate) use unique::enforced as unique_enforced;
pub use write::{WriteBatch, WriteOp, WriteReceipt};

/// Changes kept in a document's tail before its snapshot is rewritten (amortizes `save`).
pub const DOC_TAIL_CHANGES_MAX: u32 = 64;

/// A materialized row: one value per column of the table's definition, in column order.
pub type Row = Vec<Value>;

/// Concurrent values of one column of one row. The winner is what reads return; every
/// concurrent value is kept with the node that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnConflict {
    /// The column.
    pub column: String,
    /// The value every replica materializes.
    pub winner: Value,
    /// Every concurrent value (the winner included, last) with its writer.
    pub values: Vec<(Value, NodeId)>,
}

/// A document being changed in the current transaction.
pub(crate) struct WorkingDoc {
    /// Boxed: an `AutoCommit` is several hundred bytes, and a working document moves
    /// between the cache, the batch being staged and the changed-document list.
    pub doc: Box<AutoCommit>,
    /// Changes stored after the document's snapshot.
    pub tail_len: u32,
    /// Started empty in this transaction by a writer that knows nothing is derived from
    /// it yet (see [`Replica::take_or_create_doc`]); cleared once it is persisted.
    pub created: bool,
    /// Automerge changes it holds, for the cache's estimate of its memory.
    pub changes: u64,
    /// Stored implicitly: its one change is described by its `doc_heads_v1` entry and
    /// rebuilt from its row (`implicit.rs`); `tail_len` is 0.
    pub implicit: bool,
}

/// One node's replica; see the module documentation.
pub struct Replica {
    db: Arc<Database>,
    node: NodeId,
    catalog: Catalog,
    versions: VersionVector,
    /// The version vector when this node last wrote; the next local change depends on
    /// whatever has grown since.
    announced: VersionVector,
    /// The log floor: per origin, the highest seq compacted out of `log_v1` (`compact.rs`).
    floor: VersionVector,
    /// The sync session receiving a state transfer, and when it last claimed it (a lease
    /// on the caller's clock): one transfer at a time fills the one progress record.
    transfer_claim: Option<(NodeId, u64)>,
    cache: DocCache,
    /// Faults, the low-disk floor and deferred durability (`guard.rs`).
    guard: guard::Guard,
    /// redb's page cache budget, as opened (for [`Replica::cache_figures`]).
    redb_cache_bytes: usize,
    /// The store had format 1 and `digest_v1` was built when it was opened.
    upgraded_on_open: bool,
    /// What every member is known to hold, and the last horizon (`holders.rs`).
    /// Boxed: it keeps the replica (held by value in enums) small.
    holders: Box<holders::Holders>,
    /// Where the background document save is (`save.rs`).
    sweep: save::Sweep,
    /// The store's format version as committed (`storage::FORMAT_VERSION` once an
    /// implicit document was stored).
    format: u32,
    /// The insert counter of key-less tables: the next row gets this `n` (`write.rs`).
    /// Read from `meta_v1` `next_row_n` on every reload, so a failed transaction's
    /// numbers are given again (nothing holding them was committed).
    next_row_n: u64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("node", &self.node).field("versions", &self.versions).finish()
    }
}

/// Every table handle of one write transaction, opened once.
pub(crate) struct WriteTables<'t> {
    pub meta: redb::Table<'t, &'static str, &'static [u8]>,
    pub catalog: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub docs: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub tail: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub heads: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub rows: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub indexes: redb::Table<'t, &'static [u8], ()>,
    pub conflicts: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub log: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub versions: redb::Table<'t, &'static [u8], u64>,
    pub pending: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub digest: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub append_blocks: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub append_tombstones: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub append_keys: redb::Table<'t, &'static [u8], &'static [u8]>,
    /// Rows the range tombstones applied in this transaction removed (a local `DELETE`
    /// reports them as its rows affected).
    pub range_deleted: u64,
    /// What this transaction changed in the digest's parts; flushed into `digest` by
    /// `record_changes`, the one path that changes the tables the digest summarises.
    pub digest_delta: digest_parts::DigestDelta,
}

impl<'t> WriteTables<'t> {
    pub fn open(txn: &'t redb::WriteTransaction) -> Result<WriteTables<'t>, StorageError> {
        Ok(WriteTables {
            meta: txn.open_table(storage::META)?,
            catalog: txn.open_table(storage::CATALOG)?,
            docs: txn.open_table(storage::DOCS)?,
            tail: txn.open_table(storage::DOC_TAIL)?,
            heads: txn.open_table(storage::DOC_HEADS)?,
            rows: txn.open_table(storage::ROWS)?,
            indexes: txn.open_table(storage::INDEXES)?,
            conflicts: txn.open_table(storage::CONFLICTS)?,
            log: txn.open_table(storage::LOG)?,
            versions: txn.open_table(storage::VERSIONS)?,
            pending: txn.open_table(storage::PENDING)?,
            digest: txn.open_table(storage::DIGEST)?,
            append_blocks: txn.open_table(storage::APPEND_BLOCKS)?,
            append_tombstones: txn.open_table(storage::APPEND_TOMBSTONES)?,
            append_keys: txn.open_table(storage::APPEND_KEYS)?,
            range_deleted: 0,
            digest_delta: digest_parts::DigestDelta::default(),
        })
    }
}

impl Replica {
    /// Re-reads the catalog and version vectors from the committed state and empties the
    /// document cache. Used after opening and after any failed transaction, so that no
    /// in-memory state of an aborted transaction survives.
    pub(super) fn reload_state(&mut self) -> Result<(), StorageError> {
        self.cache.clear();
        let txn = self.db.begin_read()?;
        self.catalog = read::load_catalog(&txn)?;
        let mut versions = VersionVector::new();
        for entry in txn.open_table(storage::VERSIONS)?.iter()? {
            let (origin, seq) = entry?;
            let origin = NodeId::from_slice(origin.value()).ok_or(Corruption::NodeIdKey { table: "versions_v1" })?;
            versions.set(origin, seq.value());
        }
        self.versions = versions;
        let meta = txn.open_table(storage::META)?;
        self.format = storage::stored_format(&meta)?.unwrap_or(0);
        self.announced = read::meta_vector(&meta, storage::META_ANNOUNCED)?;
        self.floor = read::meta_vector(&meta, storage::META_LOG_FLOOR)?;
        self.next_row_n = read::meta_u64(&meta, storage::META_NEXT_ROW_N)?.unwrap_or(1);
        let counters = self.holders_counters();
        *self.holders = holders::Holders::load(&txn)?;
        self.holders.restore_counters(counters);
        Ok(())
    }

    /// This replica's node id (the automerge actor of its changes).
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The version vector: which changes this replica holds.
    pub fn version_vector(&self) -> &VersionVector {
        &self.versions
    }

    /// The resolved catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// A consistent read snapshot of the committed state.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        Snapshot::begin(&self.db)
    }

    /// The database, for readers on other threads (redb allows concurrent readers).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Number of changes waiting for their dependencies.
    pub fn pending_changes(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(storage::PENDING)?.len()?)
    }

    /// Takes a document out of the cache or loads it from the transaction; `None` if it
    /// does not exist.
    pub(crate) fn take_doc(
        &mut self,
        tables: &WriteTables<'_>,
        key: &[u8],
    ) -> Result<Option<WorkingDoc>, StorageError> {
        take_cached_doc(&mut self.cache, self.node, tables, &self.catalog, key)
    }

    /// Takes a document, or starts an empty one.
    pub(crate) fn take_or_new_doc(&mut self, tables: &WriteTables<'_>, key: &[u8]) -> Result<WorkingDoc, StorageError> {
        let mut working = self.take_or_create_doc(tables, key)?;
        working.created = false;
        Ok(working)
    }

    /// Takes a document, or starts an empty one marked `created`: the local write and
    /// remote apply paths, which keep every invariant, then skip looking up rows, index
    /// entries and conflicts that cannot exist for a document that did not.
    pub(crate) fn take_or_create_doc(
        &mut self,
        tables: &WriteTables<'_>,
        key: &[u8],
    ) -> Result<WorkingDoc, StorageError> {
        take_or_create_cached_doc(&mut self.cache, self.node, tables, &self.catalog, key)
    }

    /// Persists a document's new changes (appended to its tail, or folded into a fresh
    /// snapshot when the tail is long), then its heads; the caller returns it to the cache.
    ///
    /// `implicit`: the document was created by its one new change, which its row rebuilds
    /// (`implicit::implicit_form`); its heads entry then describes it and nothing else is
    /// stored. An implicit document that receives changes stores its first change as tail
    /// entry 0 first, since its row is about to change.
    pub(crate) fn persist_doc(
        &mut self,
        tables: &mut WriteTables<'_>,
        key: &[u8],
        mut working: WorkingDoc,
        new_changes: &[&[u8]],
        implicit: Option<storage::ImplicitDoc>,
    ) -> Result<WorkingDoc, StorageError> {
        if let Some(implicit) = implicit {
            assert!(
                working.changes == 0 && working.tail_len == 0 && new_changes.len() == 1,
                "only a document created by its one new change is implicit"
            );
            self.record_format(tables)?;
            working.changes = 1;
            working.implicit = true;
            let heads = storage::encode_implicit_heads(&implicit);
            let old = tables.heads.insert(key, heads.as_slice())?;
            tables.digest_delta.heads(key, old.as_ref().map(|v| v.value()), Some(&heads))?;
            return Ok(working);
        }
        if working.implicit {
            implicit::store_if_changed(tables, key, &mut working, !new_changes.is_empty())?;
        }
        let tail_len_after = working.tail_len as usize + new_changes.len();
        if tail_len_after >= DOC_TAIL_CHANGES_MAX as usize {
            let snapshot = working.doc.save();
            tables.docs.insert(key, snapshot.as_slice())?;
            for position in 0..working.tail_len {
                tables.tail.remove(storage::tail_key(key, position).as_slice())?;
            }
            working.tail_len = 0;
        } else {
            for change in new_changes {
                tables.tail.insert(storage::tail_key(key, working.tail_len).as_slice(), *change)?;
                working.tail_len += 1;
            }
        }
        working.changes += new_changes.len() as u64;
        self.sweep.tail_persisted(working.tail_len);
        let heads = match working.implicit {
            // Unchanged: no new change (a merge that brought nothing new).
            true => storage::get_bytes(&tables.heads, key)?.expect("an implicit document has a heads entry"),
            false => storage::encode_heads(working.tail_len, &doc::heads(&mut working.doc)),
        };
        let old = tables.heads.insert(key, heads.as_slice())?;
        tables.digest_delta.heads(key, old.as_ref().map(|v| v.value()), Some(&heads))?;
        Ok(working)
    }

    /// Records [`storage::FORMAT_VERSION`] in the transaction that stores the first
    /// implicit document (a format-3 build would find no document for such a row).
    fn record_format(&mut self, tables: &mut WriteTables<'_>) -> Result<(), StorageError> {
        if self.format < storage::FORMAT_VERSION {
            tables.meta.insert(storage::META_FORMAT, storage::FORMAT_VERSION.to_be_bytes().as_slice())?;
            // An aborted transaction reloads the committed format (`reload_state`).
            self.format = storage::FORMAT_VERSION;
        }
        Ok(())
    }

    /// Begins a write transaction that commits durably (or non-durably while a group of
    /// write jobs defers durability, see `guard.rs`).
    pub(crate) fn begin_durable_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.commit_durability())?;
        Ok(txn)
    }

    /// Records the in-memory state changes of a committed transaction, or drops them.
    pub(crate) fn finish(&mut self, outcome: Result<(), StorageError>) -> Result<(), StorageError> {
        match outcome {
            Ok(()) => Ok(()),
            // An aborted transaction may have left cached documents and catalog entries
            // that were never committed: start again from the committed state (or, after
            // an I/O error, refuse everything until the store is reopened).
            Err(error) => Err(self.recover(error)),
        }
    }
}

pub(crate) use cache::DocCache;

/// [`Replica::take_doc`] on the cache alone, so callers can borrow other fields meanwhile.
pub(crate) fn take_cached_doc(
    cache: &mut DocCache,
    node: NodeId,
    tables: &WriteTables<'_>,
    catalog: &Catalog,
    key: &[u8],
) -> Result<Option<WorkingDoc>, StorageError> {
    if let Some(doc) = cache.pop(key) {
        return Ok(Some(doc));
    }
    load_working_doc(node, &tables.doc_tables(), catalog, key)
}

/// [`Replica::take_or_create_doc`] on the cache alone.
pub(crate) fn take_or_create_cached_doc(
    cache: &mut DocCache,
    node: NodeId,
    tables: &WriteTables<'_>,
    catalog: &Catalog,
    key: &[u8],
) -> Result<WorkingDoc, StorageError> {
    let created =
        || WorkingDoc { doc: Box::new(doc::new_doc(node)), tail_len: 0, created: true, changes: 0, implicit: false };
    Ok(take_cached_doc(cache, node, tables, catalog, key)?.unwrap_or_else(created))
}

/// The tables a stored document is read from: its heads entry, snapshot and tail, and
/// the rows that implicit documents are rebuilt from.
pub(crate) struct DocTables<'a, T> {
    pub heads: &'a T,
    pub docs: &'a T,
    pub tail: &'a T,
    pub rows: &'a T,
}

/// The document tables of a read transaction, opened.
pub(crate) struct ReadDocTables {
    heads: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    docs: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    tail: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    rows: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

type ReadOnly = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl ReadDocTables {
    pub fn open(txn: &redb::ReadTransaction) -> Result<ReadDocTables, StorageError> {
        Ok(ReadDocTables {
            heads: txn.open_table(storage::DOC_HEADS)?,
            docs: txn.open_table(storage::DOCS)?,
            tail: txn.open_table(storage::DOC_TAIL)?,
            rows: txn.open_table(storage::ROWS)?,
        })
    }

    pub fn tables(&self) -> DocTables<'_, ReadOnly> {
        DocTables { heads: &self.heads, docs: &self.docs, tail: &self.tail, rows: &self.rows }
    }
}

impl<'t> WriteTables<'t> {
    /// The document tables of this transaction.
    pub fn doc_tables(&self) -> DocTables<'_, redb::Table<'t, &'static [u8], &'static [u8]>> {
        DocTables { heads: &self.heads, docs: &self.docs, tail: &self.tail, rows: &self.rows }
    }
}

/// Loads a document from storage tables (used by writers and by the integrity check).
///
/// An implicit document is rebuilt from its row under `catalog`'s live definition, which
/// must be the catalog of the same transaction.
pub(crate) fn load_working_doc<T: ReadableTable<&'static [u8], &'static [u8]>>(
    node: NodeId,
    stored: &DocTables<'_, T>,
    catalog: &Catalog,
    key: &[u8],
) -> Result<Option<WorkingDoc>, StorageError> {
    let Some(heads_value) = storage::get_bytes(stored.heads, key)? else { return Ok(None) };
    if let Some(implicit) = storage::decode_implicit(&heads_value)? {
        let doc = doc::act_as(implicit::rebuild(key, &implicit, catalog, stored.rows)?, node);
        return Ok(Some(WorkingDoc { doc: Box::new(doc), tail_len: 0, created: false, changes: 1, implicit: true }));
    }
    let (tail_len, _) = storage::decode_heads(&heads_value)?;
    let snapshot = storage::get_bytes(stored.docs, key)?.unwrap_or_default();
    let mut changes = Vec::with_capacity(tail_len as usize);
    for position in 0..tail_len {
        let change = storage::get_bytes(stored.tail, &storage::tail_key(key, position))?
            .ok_or_else(|| Corruption::TailMissing { doc: describe_doc_key(key), position })?;
        changes.push(change);
    }
    let mut doc = doc::load_doc(node, &snapshot, changes)
        .map_err(|source| Corruption::Document { doc: describe_doc_key(key), source })?;
    let changes = doc::change_count(&mut doc);
    Ok(Some(WorkingDoc { doc: Box::new(doc), tail_len, created: false, changes, implicit: false }))
}

/// A readable description of an encoded document key, for messages.
pub(crate) fn describe_doc_key(key: &[u8]) -> String {
    match DocKey::decode(key) {
        Ok(DocKey::Table(name)) => format!("table {name}"),
        Ok(DocKey::Index(name)) => format!("index {name}"),
        Ok(DocKey::View(name)) => format!("view {name}"),
        Ok(DocKey::Row { table, epoch, pk }) => {
            let pk = keys::decode_tuple(&pk).unwrap_or_default();
            let pk: Vec<String> = pk.iter().map(ToString::to_string).collect();
            format!("row {table}({}) epoch {epoch}", pk.join(", "))
        }
        Err(_) => "with a malformed key".to_string(),
    }
}
