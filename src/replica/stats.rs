//! Where the bytes go: a read-only pass over one snapshot that reports, per redb table,
//! its entries and redb's own page accounting, and per user table, what its rows cost in
//! every table that holds something of them (records, documents, tails, heads, index
//! entries, conflicts). The change log cannot be split by table (one envelope may touch
//! several), so it is only in the redb figures.
//!
//! The pass reads every page of every table (redb's `stats` walks each B-tree) and every
//! key of the per-table ranges: it is a diagnostic, proportional to the store, run on a
//! snapshot so writers are never held up.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::read::Snapshot;
use super::Replica;
use crate::change::DocKey;
use crate::error::StorageError;
use crate::keys;
use crate::storage;

/// One redb table: its entries and how redb lays them out in pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbTableStats {
    /// The table's name (with its version suffix).
    pub name: String,
    /// Key/value entries.
    pub entries: u64,
    /// Bytes of keys and values in leaf pages (redb's `stored_bytes`).
    pub stored_bytes: u64,
    /// Bytes of branch keys and page headers (redb's `metadata_bytes`).
    pub metadata_bytes: u64,
    /// Bytes of its pages left unused (redb's `fragmented_bytes`): partly filled pages,
    /// and the rest of the power-of-two page runs that hold large values.
    pub fragmented_bytes: u64,
    /// Leaf pages (a large value's page run counts once).
    pub leaf_pages: u64,
    /// Branch pages.
    pub branch_pages: u64,
    /// Levels of its B-tree.
    pub tree_height: u32,
}

impl RedbTableStats {
    /// Bytes of the pages the table occupies: stored, metadata and fragmented bytes.
    pub fn allocated_bytes(&self) -> u64 {
        self.stored_bytes + self.metadata_bytes + self.fragmented_bytes
    }
}

/// One user table (every incarnation of its name): what its rows cost, table by table.
/// Byte figures count keys and values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserTableStats {
    /// The table's name.
    pub name: String,
    /// Whether the table is alive (a dropped table keeps its documents).
    pub live: bool,
    /// Materialized rows (`rows_v1`); of an append-only table, its rows in blocks.
    pub rows: u64,
    /// Bytes of the row records; of an append-only table, of its blocks (keys included).
    pub row_bytes: u64,
    /// Row documents, of every incarnation (`doc_heads_v1`).
    pub documents: u64,
    /// Bytes of the documents' heads entries.
    pub heads_bytes: u64,
    /// Documents stored implicitly: rows only ever inserted, described by their heads
    /// entry and rebuilt from their record (docs/design.md § Implicit documents).
    pub implicit_docs: u64,
    /// Documents saved whole (`docs_v1`).
    pub snapshots: u64,
    /// Bytes of the saved documents.
    pub snapshot_bytes: u64,
    /// Automerge changes kept after the snapshots (`doc_tail_v1`).
    pub tail_changes: u64,
    /// Bytes of those changes.
    pub tail_bytes: u64,
    /// Entries of the table's live indexes (`index_v1`).
    pub index_entries: u64,
    /// Bytes of those entries.
    pub index_bytes: u64,
    /// Rows with recorded conflicts (`conflicts_v1`).
    pub conflicts: u64,
    /// Bytes of the conflict records.
    pub conflict_bytes: u64,
}

impl UserTableStats {
    /// Every byte attributed to the table (the change log excluded).
    pub fn bytes(&self) -> u64 {
        self.row_bytes
            + self.heads_bytes
            + self.snapshot_bytes
            + self.tail_bytes
            + self.index_bytes
            + self.conflict_bytes
    }

    /// [`UserTableStats::bytes`] per live row; `None` without rows.
    pub fn bytes_per_row(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.bytes() as f64 / self.rows as f64)
    }
}

/// The whole breakdown of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageStats {
    /// Every redb table, in the order of `docs/design.md`'s layout table.
    pub redb_tables: Vec<RedbTableStats>,
    /// Every user table of the catalog (dropped ones included), by name.
    pub user_tables: Vec<UserTableStats>,
}

impl StorageStats {
    /// Bytes of all tables' pages (the file also holds redb's allocator state and free
    /// pages, so its length is larger).
    pub fn allocated_bytes(&self) -> u64 {
        self.redb_tables.iter().map(RedbTableStats::allocated_bytes).sum()
    }
}

/// The caches of a replica: the document cache now, and the budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheFigures {
    /// Documents in the document cache.
    pub doc_cache_docs: usize,
    /// Their estimated memory.
    pub doc_cache_bytes: usize,
    /// The document cache's budget.
    pub doc_cache_bytes_max: usize,
    /// redb's page cache budget (redb does not report its use without a build feature).
    pub redb_cache_bytes_max: usize,
}

/// `vec![$f(txn, table)?, ...]` over every redb table of the store, in one list for both
/// passes (the tables have different key and value types, so no array of them exists).
macro_rules! every_table {
    ($f:ident, $txn:expr) => {{
        let txn = $txn;
        vec![
            $f(txn, storage::META)?,
            $f(txn, storage::CATALOG)?,
            $f(txn, storage::DOCS)?,
            $f(txn, storage::DOC_TAIL)?,
            $f(txn, storage::DOC_HEADS)?,
            $f(txn, storage::ROWS)?,
            $f(txn, storage::INDEXES)?,
            $f(txn, storage::CONFLICTS)?,
            $f(txn, storage::LOG)?,
            $f(txn, storage::VERSIONS)?,
            $f(txn, storage::PENDING)?,
            $f(txn, storage::DIGEST)?,
            $f(txn, storage::HOLDERS)?,
            $f(txn, storage::APPEND_BLOCKS)?,
            $f(txn, storage::APPEND_TOMBSTONES)?,
            $f(txn, storage::APPEND_KEYS)?,
            $f(txn, storage::DEAD_LETTERS)?,
        ]
    }};
}

impl Replica {
    /// The document cache's use and both caches' budgets.
    pub fn cache_figures(&self) -> CacheFigures {
        CacheFigures {
            doc_cache_docs: self.cache.len(),
            doc_cache_bytes: self.cache.bytes(),
            doc_cache_bytes_max: self.cache.bytes_max(),
            redb_cache_bytes_max: self.redb_cache_bytes,
        }
    }
}

impl Snapshot {
    /// Entries of every redb table (redb keeps each table's length: no scan), for metrics
    /// read at every scrape; [`Snapshot::storage_stats`] is the full pass.
    pub fn table_entries(&self) -> Result<Vec<(String, u64)>, StorageError> {
        Ok(every_table!(table_len, self.txn()))
    }

    /// Where the bytes go, as of this snapshot; see the module documentation.
    pub fn storage_stats(&self) -> Result<StorageStats, StorageError> {
        let txn = self.txn();
        let redb_tables = every_table!(redb_table, txn);
        let mut user_tables = Vec::new();
        for (name, entry) in &self.catalog().tables {
            let mut stats = UserTableStats { name: name.clone(), live: entry.alive(), ..UserTableStats::default() };
            let row_prefix = keys::row_key(name, &[]);
            (stats.rows, stats.row_bytes) = prefix_totals(&txn.open_table(storage::ROWS)?, &row_prefix)?;
            if entry.schema.append.is_some() {
                let blocks = txn.open_table(storage::APPEND_BLOCKS)?;
                stats.row_bytes = prefix_totals(&blocks, &crate::append::table_prefix(name, None))?.1;
                stats.rows = super::digest_parts::stored_append_row_count(&txn.open_table(storage::DIGEST)?, name)?;
            }
            (stats.conflicts, stats.conflict_bytes) = prefix_totals(&txn.open_table(storage::CONFLICTS)?, &row_prefix)?;
            // Row documents of every epoch: the row-document key without its epoch.
            let doc_prefix = &DocKey::row_prefix(name, 1)[..1 + row_prefix.len()];
            (stats.documents, stats.heads_bytes) = prefix_totals(&txn.open_table(storage::DOC_HEADS)?, doc_prefix)?;
            stats.implicit_docs = implicit_count(&txn.open_table(storage::DOC_HEADS)?, doc_prefix)?;
            (stats.snapshots, stats.snapshot_bytes) = prefix_totals(&txn.open_table(storage::DOCS)?, doc_prefix)?;
            (stats.tail_changes, stats.tail_bytes) = prefix_totals(&txn.open_table(storage::DOC_TAIL)?, doc_prefix)?;
            for index in self.catalog().indexes_of(name) {
                let prefix = keys::index_key(&index.def.schema.name, &[], &[]);
                let (entries, bytes) = prefix_totals(&txn.open_table(storage::INDEXES)?, &prefix)?;
                stats.index_entries += entries;
                stats.index_bytes += bytes;
            }
            user_tables.push(stats);
        }
        Ok(StorageStats { redb_tables, user_tables })
    }
}

/// A table's name and entry count (redb keeps the length: no scan).
fn table_len<V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    definition: TableDefinition<'static, impl redb::Key + 'static, V>,
) -> Result<(String, u64), StorageError> {
    Ok((redb::TableHandle::name(&definition).to_string(), txn.open_table(definition)?.len()?))
}

fn redb_table<V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    definition: TableDefinition<'static, impl redb::Key + 'static, V>,
) -> Result<RedbTableStats, StorageError> {
    let table = txn.open_table(definition)?;
    let stats = table.stats()?;
    Ok(RedbTableStats {
        name: redb::TableHandle::name(&definition).to_string(),
        entries: table.len()?,
        stored_bytes: stats.stored_bytes(),
        metadata_bytes: stats.metadata_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
        leaf_pages: stats.leaf_pages(),
        branch_pages: stats.branch_pages(),
        tree_height: stats.tree_height(),
    })
}

/// Heads entries under `prefix` that describe implicit documents.
fn implicit_count(
    heads: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
) -> Result<u64, StorageError> {
    let end = keys::prefix_end(prefix).expect("names are not all 0xFF");
    let mut count = 0;
    for item in heads.range::<&[u8]>(prefix..end.as_slice())? {
        count += u64::from(storage::decode_implicit(item?.1.value())?.is_some());
    }
    Ok(count)
}

/// Entries whose key starts with `prefix`, and their key and value bytes.
fn prefix_totals<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
) -> Result<(u64, u64), StorageError> {
    let end = keys::prefix_end(prefix).expect("names are not all 0xFF");
    let (mut entries, mut bytes) = (0u64, 0u64);
    for item in table.range::<&[u8]>(prefix..end.as_slice())? {
        let (key, value) = item?;
        entries += 1;
        bytes += (key.value().len() + V::as_bytes(&value.value()).as_ref().len()) as u64;
    }
    Ok((entries, bytes))
}
