//! Reads: consistent snapshots of materialized rows, index entries and conflicts.
//!
//! A [`Snapshot`] is a redb read transaction plus the catalog as of that transaction, so a
//! reader never sees half of a write or merge. Nothing here touches automerge.

use std::ops::Bound;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::materialize::decode_catalog_entry;
use super::{ColumnConflict, Row};
use crate::catalog::{Catalog, TableEntry};
use crate::codec;
use crate::error::{Corruption, ReadError, StorageError};
use crate::keys;
use crate::record;
use crate::storage;
use crate::types::{NodeId, Value};
use crate::version_vector::VersionVector;

/// Loads the catalog as stored in `catalog_v1`.
pub(crate) fn load_catalog(txn: &redb::ReadTransaction) -> Result<Catalog, StorageError> {
    let mut catalog = Catalog::default();
    for item in txn.open_table(storage::CATALOG)?.iter()? {
        let (key, value) = item?;
        decode_catalog_entry(key.value(), value.value(), &mut catalog)?;
    }
    Ok(catalog)
}

/// A version vector stored in `meta_v1` under `key` (CBOR); empty when absent.
pub(crate) fn meta_vector(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<VersionVector, StorageError> {
    match meta.get(key)? {
        Some(bytes) => {
            let table = match key {
                storage::META_ANNOUNCED => "meta_v1 announced_vector",
                storage::META_LOG_FLOOR => "meta_v1 log_floor",
                storage::META_HORIZON => "meta_v1 horizon",
                _ => "meta_v1",
            };
            codec::decode(bytes.value()).map_err(|source| Corruption::Value { table, source }.into())
        }
        None => Ok(VersionVector::new()),
    }
}

/// A u64 BE value of `meta_v1`, if present.
pub(crate) fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<u64>, StorageError> {
    let Some(bytes) = meta.get(key)? else { return Ok(None) };
    let bytes: [u8; 8] = bytes.value().try_into().map_err(|_| Corruption::ShortValue { table: "meta_v1" })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// The conflicting columns of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowConflicts {
    /// The table.
    pub table: String,
    /// The row's primary key.
    pub key: Vec<Value>,
    /// Columns with concurrent different values.
    pub columns: Vec<ColumnConflict>,
}

/// Rows that hold one value under a unique index: concurrent writes, each checked on its
/// own node, merged (docs/design.md § Unique indexes).
#[derive(Clone, Debug, PartialEq)]
pub struct UniqueConflict {
    /// The table.
    pub table: String,
    /// The unique index.
    pub index: String,
    /// Its columns.
    pub columns: Vec<String>,
    /// The value tuple the rows share (never with a NULL).
    pub value: Vec<Value>,
    /// The rows' primary keys, least first: the first is the conflict's winner.
    pub keys: Vec<Vec<Value>>,
}

/// Rows of an append-only table that share a value of its deduplication key: written
/// concurrently, each checked on its own node (docs/design.md § Identity and merge).
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateConflict {
    /// The table.
    pub table: String,
    /// The key's columns.
    pub columns: Vec<String>,
    /// The key value the rows share.
    pub value: Vec<Value>,
    /// The rows' identities, least first: the first is the one reads show.
    pub rows: Vec<super::RowIdentity>,
}

/// A consistent, read-only view of one committed state.
pub struct Snapshot {
    /// Shared while a group commit pins the last durable state for readers (`handle.rs`).
    txn: Arc<redb::ReadTransaction>,
    rows: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    catalog: Catalog,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("tables", &self.catalog.tables.len()).finish()
    }
}

/// Rows in primary-key order, decoded lazily; an append-only table's in block order.
pub struct RowIter {
    source: RowSource,
}

// One per scan, never in a collection: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum RowSource {
    Rows {
        range: redb::Range<'static, &'static [u8], &'static [u8]>,
        /// What each column reads as when a record leaves it out; empty for a table
        /// without added columns, whose records hold every column.
        absent: Vec<Value>,
    },
    Append(super::AppendRows),
}

impl std::fmt::Debug for RowIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowIter")
    }
}

impl Iterator for RowIter {
    type Item = Result<Row, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (range, absent) = match &mut self.source {
            RowSource::Append(rows) => return rows.next(),
            RowSource::Rows { range, absent } => (range, absent),
        };
        let item = range.next()?;
        let row = item.map_err(|e| ReadError::Storage(e.into())).and_then(|(_, value)| decode_record(value.value()));
        Some(row.map(|mut row| {
            if row.len() < absent.len() {
                row.extend_from_slice(&absent[row.len()..]);
            }
            row
        }))
    }
}

fn decode_record(bytes: &[u8]) -> Result<Row, ReadError> {
    record::decode(bytes).map_err(|source| ReadError::Storage(Corruption::Record { table: "rows_v1", source }.into()))
}

/// The refusal of a key lookup in an append-only table, which has no key.
fn no_key(entry: &TableEntry) -> ReadError {
    ReadError::BadKey { table: entry.schema.name.clone(), reason: "an append-only table has no primary key".into() }
}

/// A row of `schema` from its record, padded with what added columns it leaves out read as.
fn decode_row(schema: &crate::schema::TableSchema, bytes: &[u8]) -> Result<Row, ReadError> {
    let mut row = decode_record(bytes)?;
    if !schema.record_len_fits(row.len()) {
        let source = crate::record::RecordError("a record's length does not fit its table");
        return Err(ReadError::Storage(Corruption::Record { table: "rows_v1", source }.into()));
    }
    schema.pad(&mut row);
    Ok(row)
}

impl Snapshot {
    pub(crate) fn begin(db: &Database) -> Result<Snapshot, StorageError> {
        Snapshot::of(Arc::new(db.begin_read()?))
    }

    /// A snapshot of a read transaction that other snapshots may share.
    pub(crate) fn of(txn: Arc<redb::ReadTransaction>) -> Result<Snapshot, StorageError> {
        let catalog = load_catalog(&txn)?;
        let rows = txn.open_table(storage::ROWS)?;
        Ok(Snapshot { txn, rows, catalog })
    }

    /// The catalog as of this snapshot.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// A live table, or [`ReadError::UnknownTable`].
    pub fn table(&self, name: &str) -> Result<&TableEntry, ReadError> {
        self.catalog.table(name).ok_or_else(|| ReadError::UnknownTable(name.to_ascii_lowercase()))
    }

    pub(super) fn encoded_key(&self, table: &TableEntry, key: &[Value]) -> Result<Vec<u8>, ReadError> {
        Ok(keys::encode_tuple(&self.coerced_key(table, key)?))
    }

    /// A key (or a prefix of one) as its columns' types hold it, none NULL.
    fn coerced_key(&self, table: &TableEntry, key: &[Value]) -> Result<Vec<Value>, ReadError> {
        let schema = &table.schema;
        let positions = schema.primary_key_indexes();
        let bad = |reason: String| ReadError::BadKey { table: schema.name.clone(), reason };
        if key.len() > positions.len() {
            return Err(bad(format!("the key has {} columns, got {} values", positions.len(), key.len())));
        }
        let mut coerced = Vec::with_capacity(key.len());
        for (value, i) in key.iter().zip(positions) {
            let column = &schema.columns[i];
            let value = value.clone().coerce(column.ty).filter(|v| !v.is_null());
            coerced.push(value.ok_or_else(|| bad(format!("{} needs a non-NULL {}", column.name, column.ty)))?);
        }
        Ok(coerced)
    }

    /// The row with this primary key, if it exists.
    pub fn get(&self, table: &str, key: &[Value]) -> Result<Option<Row>, ReadError> {
        let entry = self.table(table)?;
        if entry.schema.append.is_some() {
            return self.append_get(entry, key);
        }
        let pk = self.encoded_key(entry, key)?;
        if key.len() != entry.schema.primary_key.len() {
            return Err(ReadError::BadKey {
                table: entry.schema.name.clone(),
                reason: "incomplete primary key".into(),
            });
        }
        let row_key = keys::row_key(&entry.schema.name, &pk);
        match self.rows.get(row_key.as_slice()).map_err(StorageError::from)? {
            Some(value) => Ok(Some(decode_row(&entry.schema, value.value())?)),
            None => Ok(None),
        }
    }

    /// The row an append-only table's scan shows for a deduplication key value.
    fn append_get(&self, entry: &TableEntry, key: &[Value]) -> Result<Option<Row>, ReadError> {
        let schema = &entry.schema;
        let Some(dedup) = super::append_keys::DedupKey::of(schema) else { return Err(no_key(entry)) };
        let tuple = self.coerced_key(entry, key)?;
        if tuple.len() != schema.primary_key.len() {
            return Err(ReadError::BadKey { table: schema.name.clone(), reason: "incomplete primary key".into() });
        }
        debug_assert_eq!(tuple.len(), dedup.column_count(), "a whole key");
        let entries = self.txn.open_table(storage::APPEND_KEYS).map_err(StorageError::from)?;
        let epoch = entry.causal_length;
        let Some((row, bucket)) = super::append_keys::shown_holder(&entries, &schema.name, epoch, &tuple)? else {
            return Ok(None);
        };
        let blocks = self.txn.open_table(storage::APPEND_BLOCKS).map_err(StorageError::from)?;
        let block_key = crate::append::block_key(&schema.name, epoch, bucket, row.origin, row.seq, 0);
        let missing = || {
            let source = crate::record::RecordError("a deduplication key names a row no block holds");
            ReadError::Storage(Corruption::Record { table: "append_keys_v1", source }.into())
        };
        let value = blocks.get(block_key.as_slice()).map_err(StorageError::from)?.ok_or_else(missing)?;
        let block = crate::append::decode_block(value.value(), bucket).map_err(super::append::corrupt_record)?;
        let (_, values) = block.rows.into_iter().find(|(pos, _)| *pos == row.pos).ok_or_else(missing)?;
        let ids: Vec<String> = schema.columns.iter().map(crate::schema::ColumnDef::id).collect();
        Ok(Some(super::append::RowMapping::new(schema, &ids, &block.columns).read(schema, values)))
    }

    /// How many rows a table has, without reading them: the entry count the maintained
    /// digest keeps for the table's rows (`digest_parts.rs`), exact in every snapshot. An
    /// append-only table with a deduplication key counts the key values its rows hold
    /// (the rows a scan shows), from `append_keys_v1`.
    pub fn row_count(&self, table: &str) -> Result<u64, ReadError> {
        let entry = self.table(table)?;
        let digest = self.txn.open_table(storage::DIGEST).map_err(StorageError::from)?;
        if let Some(dedup) = super::append_keys::DedupKey::of(&entry.schema) {
            let entries = self.txn.open_table(storage::APPEND_KEYS).map_err(StorageError::from)?;
            let epoch = entry.causal_length;
            return Ok(super::append_keys::duplicates(&entries, &entry.schema.name, epoch, dedup.column_count())?.1);
        }
        if entry.schema.append.is_some() {
            return Ok(super::digest_parts::stored_append_row_count(&digest, &entry.schema.name)?);
        }
        Ok(super::digest_parts::stored_row_count(&digest, &entry.schema.name)?)
    }

    /// Every row of a table in primary-key order (an append-only table's in block order:
    /// by bucket, then by the envelope that wrote them).
    pub fn scan(&self, table: &str) -> Result<RowIter, ReadError> {
        if self.table(table)?.schema.append.is_some() {
            return self.append_scan(table, None);
        }
        self.range(table, Bound::Unbounded, Bound::Unbounded)
    }

    /// The rows of an append-only table, all or those in the buckets that can hold a
    /// time in `times` (a superset: the caller filters by the time itself).
    pub fn append_scan(&self, table: &str, times: Option<super::TimeRange>) -> Result<RowIter, ReadError> {
        let entry = self.table(table)?;
        if entry.schema.append.is_none() {
            return Err(ReadError::BadKey {
                table: entry.schema.name.clone(),
                reason: "not an append-only table".into(),
            });
        }
        let blocks = self.txn.open_table(storage::APPEND_BLOCKS).map_err(StorageError::from)?;
        let keys = || self.txn.open_table(storage::APPEND_KEYS).map_err(StorageError::from);
        let rows = super::AppendRows::open(&blocks, keys, entry, times)?;
        Ok(RowIter { source: RowSource::Append(rows) })
    }

    /// Rows whose primary key lies between the bounds, in key order. A bound may be a
    /// prefix of the key: `Included([5])` on a key `(a, b)` means `a >= 5` for the lower
    /// bound and `a <= 5` for the upper one.
    pub fn range(&self, table: &str, lower: Bound<&[Value]>, upper: Bound<&[Value]>) -> Result<RowIter, ReadError> {
        let entry = self.table(table)?;
        if entry.schema.append.is_some() {
            return match (lower, upper) {
                (Bound::Unbounded, Bound::Unbounded) => self.append_scan(table, None),
                _ => Err(no_key(entry)),
            };
        }
        let prefix = keys::row_key(&entry.schema.name, &[]);
        let bound = |values: &[Value]| -> Result<Vec<u8>, ReadError> {
            let mut key = prefix.clone();
            key.extend(self.encoded_key(entry, values)?);
            Ok(key)
        };
        let past = |key: Vec<u8>| keys::prefix_end(&key).expect("names are not all 0xFF");
        let start = match lower {
            Bound::Unbounded => prefix.clone(),
            Bound::Included(values) => bound(values)?,
            Bound::Excluded(values) => past(bound(values)?),
        };
        let end = match upper {
            Bound::Unbounded => past(prefix.clone()),
            Bound::Included(values) => past(bound(values)?),
            Bound::Excluded(values) => bound(values)?,
        };
        let range = if start < end {
            self.rows.range::<&[u8]>(start.as_slice()..end.as_slice())
        } else {
            self.rows.range::<&[u8]>(start.as_slice()..start.as_slice())
        };
        let absent = match entry.schema.base_columns() < entry.schema.columns.len() {
            true => entry.schema.columns.iter().map(crate::schema::ColumnDef::absent_value).collect(),
            false => Vec::new(),
        };
        Ok(RowIter { source: RowSource::Rows { range: range.map_err(StorageError::from)?, absent } })
    }

    /// Rows whose indexed columns equal `values` (a prefix of the index's columns may be
    /// given), in index order.
    pub fn index_lookup(&self, index: &str, values: &[Value]) -> Result<Vec<Row>, ReadError> {
        let entry = self.catalog.index(index).ok_or_else(|| ReadError::UnknownIndex(index.to_ascii_lowercase()))?;
        let table = self.table(&entry.def.schema.table)?;
        let schema = &table.schema;
        let columns = &entry.def.schema.columns;
        if values.len() > columns.len() {
            return Err(ReadError::BadKey {
                table: schema.name.clone(),
                reason: "more values than indexed columns".into(),
            });
        }
        let mut coerced = Vec::with_capacity(values.len());
        for (value, column) in values.iter().zip(columns) {
            let ty = schema.columns[schema.column_index(column).expect("live index")].ty;
            // A value that cannot be of the column's type matches nothing.
            let Some(value) = value.clone().coerce(ty) else { return Ok(Vec::new()) };
            coerced.push(value);
        }
        let prefix = keys::index_key(&entry.def.schema.name, &keys::encode_tuple(&coerced), &[]);
        let name_len = keys::index_key(&entry.def.schema.name, &[], &[]).len();
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        let indexes = self.txn.open_table(storage::INDEXES).map_err(StorageError::from)?;
        let mut rows = Vec::new();
        for item in indexes.range::<&[u8]>(prefix.as_slice()..end.as_slice()).map_err(StorageError::from)? {
            let (key, _) = item.map_err(StorageError::from)?;
            let key = &key.value()[name_len..];
            let values_len = keys::tuple_prefix_len(key, columns.len())
                .map_err(|source| StorageError::from(Corruption::Key { table: "indexes_v1", source }))?;
            let row_key = keys::row_key(&schema.name, &key[values_len..]);
            let row = self.rows.get(row_key.as_slice()).map_err(StorageError::from)?;
            let index = || Corruption::IndexEntryWithoutRow { index: entry.def.schema.name.clone() };
            let row = row.ok_or_else(|| StorageError::from(index()))?;
            rows.push(decode_row(schema, row.value())?);
        }
        Ok(rows)
    }

    /// Conflicting concurrent values of a row's columns (empty when there are none).
    pub fn conflicts(&self, table: &str, key: &[Value]) -> Result<Vec<ColumnConflict>, ReadError> {
        let entry = self.table(table)?;
        let pk = self.encoded_key(entry, key)?;
        let conflicts = self.txn.open_table(storage::CONFLICTS).map_err(StorageError::from)?;
        let row_key = keys::row_key(&entry.schema.name, &pk);
        match conflicts.get(row_key.as_slice()).map_err(StorageError::from)? {
            Some(bytes) => decode_conflicts(bytes.value()),
            None => Ok(Vec::new()),
        }
    }

    /// Every row with conflicts, in table and primary-key order.
    pub fn all_conflicts(&self) -> Result<Vec<RowConflicts>, ReadError> {
        let table = self.txn.open_table(storage::CONFLICTS).map_err(StorageError::from)?;
        let corrupt = |source| StorageError::from(Corruption::Key { table: "conflicts_v1", source });
        let mut out = Vec::new();
        for item in table.iter().map_err(StorageError::from)? {
            let (key, value) = item.map_err(StorageError::from)?;
            let (name, pk) = keys::decode_name(key.value()).map_err(corrupt)?;
            let pk = keys::decode_tuple(pk).map_err(corrupt)?;
            out.push(RowConflicts { table: name.to_string(), key: pk, columns: decode_conflicts(value.value())? });
        }
        Ok(out)
    }

    /// Every duplicate of a deduplication key, by table and then key value.
    pub fn duplicate_conflicts(&self) -> Result<Vec<DuplicateConflict>, ReadError> {
        let entries = self.txn.open_table(storage::APPEND_KEYS).map_err(StorageError::from)?;
        let mut out = Vec::new();
        let mut tables: Vec<&TableEntry> = self.catalog.live_tables().collect();
        tables.sort_by(|a, b| a.schema.name.cmp(&b.schema.name));
        for entry in tables {
            let Some(dedup) = super::append_keys::DedupKey::of(&entry.schema) else { continue };
            let name = &entry.schema.name;
            let (groups, _) =
                super::append_keys::duplicates(&entries, name, entry.causal_length, dedup.column_count())?;
            out.extend(groups.into_iter().map(|(value, rows)| DuplicateConflict {
                table: name.clone(),
                columns: entry.schema.primary_key.clone(),
                value,
                rows,
            }));
        }
        Ok(out)
    }

    /// Every unique conflict, by index and then value, in index order. Found by a scan of
    /// each enforced unique index (its entries are ordered by value, then primary key).
    pub fn unique_conflicts(&self) -> Result<Vec<UniqueConflict>, ReadError> {
        let indexes = self.txn.open_table(storage::INDEXES).map_err(StorageError::from)?;
        let corrupt = |source| StorageError::from(Corruption::Key { table: "indexes_v1", source });
        let mut out = Vec::new();
        for index in self.catalog.indexes.values().filter(|i| i.def.schema.unique) {
            let Some(index) = self.catalog.index(&index.def.schema.name) else { continue };
            let table = self.table(&index.def.schema.table)?;
            if !super::unique::enforced(index, table) {
                continue;
            }
            let schema = &index.def.schema;
            let prefix = keys::index_key(&schema.name, &[], &[]);
            let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
            // The group of entries sharing one value tuple, while it is being read.
            let mut group: Option<(Vec<u8>, Vec<Vec<Value>>)> = None;
            let mut finish = |group: Option<(Vec<u8>, Vec<Vec<Value>>)>| -> Result<(), StorageError> {
                if let Some((tuple, keys)) = group.filter(|(_, keys)| keys.len() >= 2) {
                    let value = keys::decode_tuple(&tuple).map_err(corrupt)?;
                    debug_assert!(!value.iter().any(Value::is_null), "NULLs are distinct: never grouped");
                    out.push(UniqueConflict {
                        table: schema.table.clone(),
                        index: schema.name.clone(),
                        columns: schema.columns.clone(),
                        value,
                        keys,
                    });
                }
                Ok(())
            };
            for item in indexes.range::<&[u8]>(prefix.as_slice()..end.as_slice()).map_err(StorageError::from)? {
                let (key, _) = item.map_err(StorageError::from)?;
                let rest = &key.value()[prefix.len()..];
                let values_len = keys::tuple_prefix_len(rest, schema.columns.len()).map_err(corrupt)?;
                let (tuple, pk) = rest.split_at(values_len);
                let pk = keys::decode_tuple(pk).map_err(corrupt)?;
                match &mut group {
                    Some((current, keys)) if current.as_slice() == tuple => keys.push(pk),
                    _ => {
                        let has_null = keys::decode_tuple(tuple).map_err(corrupt)?.iter().any(Value::is_null);
                        let next = (!has_null).then(|| (tuple.to_vec(), vec![pk]));
                        finish(std::mem::replace(&mut group, next))?;
                    }
                }
            }
            finish(group)?;
        }
        Ok(out)
    }

    /// The version vector as of this snapshot.
    pub fn version_vector(&self) -> Result<VersionVector, StorageError> {
        Self::version_vector_of(&self.txn)
    }

    pub(crate) fn version_vector_of(txn: &redb::ReadTransaction) -> Result<VersionVector, StorageError> {
        let mut vector = VersionVector::new();
        for item in txn.open_table(storage::VERSIONS)?.iter()? {
            let (origin, seq) = item?;
            let origin = NodeId::from_slice(origin.value()).ok_or(Corruption::NodeIdKey { table: "versions_v1" })?;
            vector.set(origin, seq.value());
        }
        Ok(vector)
    }

    pub(crate) fn txn(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

fn decode_conflicts(bytes: &[u8]) -> Result<Vec<ColumnConflict>, ReadError> {
    codec::decode(bytes)
        .map_err(|source| ReadError::Storage(Corruption::Value { table: "conflicts_v1", source }.into()))
}
