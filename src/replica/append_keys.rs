//! Deduplication keys of append-only tables (docs/design.md § Identity and merge): an
//! append-only table that declares a `PRIMARY KEY` keeps, in `append_keys_v1`, one entry
//! per stored row, `name ‖ epoch u64 BE ‖ key tuple ‖ origin ‖ seq u64 BE ‖ pos u32 BE →
//! bucket start` (order-preserving, the bucket of the block that holds the row).
//!
//! The key is not the row's identity: rows with one key inserted concurrently on two
//! nodes are both stored (the merge stays a set union) and both indexed. Of the rows
//! sharing a key, reads show the one with the least identity — the first entry under the
//! key's prefix, the same on every node that holds the same rows — and
//! `edgestore_conflicts` lists the others (kind `duplicate`). A local insert of a key
//! some stored row has is a duplicate-key error, as on ordinary tables.
//!
//! Invariant: the entries of a table are exactly its stored rows (every block's rows of
//! the current incarnation, under the current definition's key). Every path that stores
//! rows indexes them (`append.rs::write_rows`), every path that removes rows unindexes
//! them (retention, tombstones), and a re-split under a changed definition rebuilds the
//! table's entries; `integrity.rs` checks the invariant.

use redb::ReadableTable;

use crate::append;
use crate::error::{Corruption, StorageError};
use crate::keys::{self, KeyError};
use crate::schema::TableSchema;
use crate::types::{ColumnType, NodeId, Value, NODE_ID_BYTES};

const KEYS: &str = "append_keys_v1";

/// Bytes of a row identity at the end of an entry key: origin, seq, pos.
const IDENTITY_BYTES: usize = NODE_ID_BYTES + 8 + 4;

fn corrupt(reason: &'static str) -> StorageError {
    Corruption::Key { table: KEYS, source: KeyError(reason) }.into()
}

/// A row of an append-only table, as unique without coordination: the envelope that
/// carried it and its position in the envelope's batch. Ordered by origin, then seq,
/// then position: the order that picks which of the rows sharing a key reads show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowIdentity {
    /// The node that wrote the row.
    pub origin: NodeId,
    /// The sequence number of the envelope that carried it.
    pub seq: u64,
    /// Its position in the envelope's batch for the table.
    pub pos: u32,
}

impl std::fmt::Display for RowIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.seq, self.pos)
    }
}

/// How a table's rows give their deduplication key: the key columns' ids, and what each
/// reads as, under the table's current definition.
#[derive(Clone, Debug)]
pub(crate) struct DedupKey {
    /// Each key column's id, type and the value it reads as where a batch lacks it.
    columns: Vec<(String, ColumnType, Value)>,
    /// Each key column's position in the definition.
    positions: Vec<usize>,
}

impl DedupKey {
    /// The key of an append-only table that declares one.
    pub(crate) fn of(schema: &TableSchema) -> Option<DedupKey> {
        if schema.append.is_none() || schema.primary_key.is_empty() {
            return None;
        }
        let positions = schema.primary_key_indexes();
        let columns = positions
            .iter()
            .map(|&i| {
                let column = &schema.columns[i];
                (column.id(), column.ty, column.absent_value())
            })
            .collect();
        Some(DedupKey { columns, positions })
    }

    /// The key of a row stored under the column ids `ids`, as a scan under the current
    /// definition reads it (a value that does not fit its column reads as NULL).
    pub(crate) fn tuple(&self, ids: &[String], values: &[Value]) -> Vec<Value> {
        debug_assert_eq!(ids.len(), values.len(), "one value per column id");
        self.columns
            .iter()
            .map(|(id, ty, absent)| match ids.iter().position(|i| i == id) {
                Some(at) => values[at].clone().coerce(*ty).unwrap_or(Value::Null),
                None => absent.clone(),
            })
            .collect()
    }

    /// How many columns the key has.
    pub(crate) fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// The key of a row of the current definition, one value per column.
    pub(crate) fn of_row(&self, row: &[Value]) -> Vec<Value> {
        self.positions.iter().map(|&i| row[i].clone()).collect()
    }
}

/// The key prefix of the entries of one key value of one incarnation.
pub(crate) fn key_prefix(table: &str, epoch: u64, tuple: &[Value]) -> Vec<u8> {
    let mut key = append::table_prefix(table, Some(epoch));
    for value in tuple {
        keys::encode_value(value, &mut key);
    }
    key
}

fn entry_key(prefix: &[u8], row: RowIdentity) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + IDENTITY_BYTES);
    key.extend_from_slice(prefix);
    key.extend_from_slice(row.origin.as_bytes());
    key.extend_from_slice(&row.seq.to_be_bytes());
    key.extend_from_slice(&row.pos.to_be_bytes());
    key
}

/// The identity at the end of an entry key.
fn identity_of(key: &[u8]) -> Result<RowIdentity, StorageError> {
    let at = key.len().checked_sub(IDENTITY_BYTES).ok_or_else(|| corrupt("an entry key ends in an identity"))?;
    let rest = &key[at..];
    let origin = NodeId::from_slice(&rest[..NODE_ID_BYTES]).expect("16 bytes");
    let seq = u64::from_be_bytes(rest[NODE_ID_BYTES..NODE_ID_BYTES + 8].try_into().expect("8 bytes"));
    let pos = u32::from_be_bytes(rest[NODE_ID_BYTES + 8..].try_into().expect("4 bytes"));
    Ok(RowIdentity { origin, seq, pos })
}

fn bucket_of_entry(value: &[u8]) -> Result<i64, StorageError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| corrupt("an entry's value is a bucket start"))?;
    Ok(append::unordered(bytes))
}

/// The rows of one block, for [`index`] and [`unindex`]: the table, its incarnation, the
/// envelope and the column ids the rows are under.
pub(crate) struct BlockOrigin<'a> {
    pub table: &'a str,
    pub epoch: u64,
    pub origin: NodeId,
    pub seq: u64,
    pub columns: &'a [String],
}

/// The entry key of the row at `pos` of a block, whose values are `values`.
fn row_entry(key: &DedupKey, block: &BlockOrigin<'_>, pos: u32, values: &[Value]) -> Vec<u8> {
    let prefix = key_prefix(block.table, block.epoch, &key.tuple(block.columns, values));
    entry_key(&prefix, RowIdentity { origin: block.origin, seq: block.seq, pos })
}

/// Records the rows of a block stored in `bucket`. Idempotent: a row indexed before (a
/// block merged with rows it already held) keeps its one entry.
pub(crate) fn index<'v>(
    entries: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &DedupKey,
    block: &BlockOrigin<'_>,
    bucket: i64,
    rows: impl IntoIterator<Item = (u32, &'v [Value])>,
) -> Result<(), StorageError> {
    for (pos, values) in rows {
        entries.insert(row_entry(key, block, pos, values).as_slice(), append::ordered(bucket).as_slice())?;
    }
    Ok(())
}

/// Removes the entries of rows removed from a block.
pub(crate) fn unindex<'v>(
    entries: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &DedupKey,
    block: &BlockOrigin<'_>,
    rows: impl IntoIterator<Item = (u32, &'v [Value])>,
) -> Result<(), StorageError> {
    for (pos, values) in rows {
        let removed = entries.remove(row_entry(key, block, pos, values).as_slice())?;
        debug_assert!(removed.is_some(), "a stored row of {} has an entry", block.table);
    }
    Ok(())
}

/// Removes the entries of every row of a stored block (its `append_blocks_v1` key and
/// value) that is being removed whole.
pub(crate) fn unindex_stored_block(
    entries: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &DedupKey,
    block_key: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    let (table, at) = append::decode_block_key(block_key).map_err(super::append::corrupt_key)?;
    let block = append::decode_block(value, at.bucket).map_err(super::append::corrupt_record)?;
    let rows = BlockOrigin { table, epoch: at.epoch, origin: at.origin, seq: at.seq, columns: &block.columns };
    unindex(entries, key, &rows, block.rows.iter().map(|(pos, values)| (*pos, values.as_slice())))
}

/// Removes every entry of every incarnation of `table`.
pub(crate) fn clear(
    entries: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    table: &str,
) -> Result<(), StorageError> {
    let prefix = append::table_prefix(table, None);
    let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
    entries.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
    Ok(())
}

/// The row that reads show for a key value, with its block's bucket: the least identity
/// holding it, the first entry under the value's prefix.
pub(crate) fn shown_holder(
    entries: &impl ReadableTable<&'static [u8], &'static [u8]>,
    table: &str,
    epoch: u64,
    tuple: &[Value],
) -> Result<Option<(RowIdentity, i64)>, StorageError> {
    let prefix = key_prefix(table, epoch, tuple);
    let end = keys::prefix_end(&prefix).expect("a key prefix is not all 0xFF");
    let Some(item) = entries.range::<&[u8]>(prefix.as_slice()..end.as_slice())?.next() else { return Ok(None) };
    let (key, value) = item?;
    if key.value().len() != prefix.len() + IDENTITY_BYTES {
        return Err(corrupt("an entry key is a key tuple and an identity"));
    }
    Ok(Some((identity_of(key.value())?, bucket_of_entry(value.value())?)))
}

/// Every key value of one incarnation held by more than one row: the value and its
/// holders, least identity (the one reads show) first. Keys in key order.
pub(crate) type Duplicates = Vec<(Vec<Value>, Vec<RowIdentity>)>;

/// The key values of one incarnation held by more than one row, and how many distinct
/// key values it holds (the rows reads show).
pub(crate) fn duplicates(
    entries: &impl ReadableTable<&'static [u8], &'static [u8]>,
    table: &str,
    epoch: u64,
    key_len: usize,
) -> Result<(Duplicates, u64), StorageError> {
    let prefix = append::table_prefix(table, Some(epoch));
    let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
    let mut out: Duplicates = Vec::new();
    let mut distinct = 0;
    let mut group: Option<(Vec<u8>, Vec<RowIdentity>)> = None;
    let finish = |group: Option<(Vec<u8>, Vec<RowIdentity>)>, out: &mut Duplicates| -> Result<(), StorageError> {
        if let Some((tuple, rows)) = group.filter(|(_, rows)| rows.len() >= 2) {
            let value = keys::decode_tuple(&tuple).map_err(|source| Corruption::Key { table: KEYS, source })?;
            out.push((value, rows));
        }
        Ok(())
    };
    for item in entries.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
        let (key, _) = item?;
        let rest = &key.value()[prefix.len()..];
        let tuple_len =
            keys::tuple_prefix_len(rest, key_len).map_err(|source| Corruption::Key { table: KEYS, source })?;
        if rest.len() != tuple_len + IDENTITY_BYTES {
            return Err(corrupt("an entry key is a key tuple and an identity"));
        }
        let row = identity_of(key.value())?;
        match &mut group {
            Some((current, rows)) if current.as_slice() == &rest[..tuple_len] => rows.push(row),
            _ => {
                finish(group.take(), &mut out)?;
                distinct += 1;
                group = Some((rest[..tuple_len].to_vec(), vec![row]));
            }
        }
    }
    finish(group, &mut out)?;
    Ok((out, distinct))
}

/// How the stored entries differ from what the blocks call for (every row of every
/// block of a live keyed table's current incarnation, one entry naming its bucket, and
/// nothing else): one line per difference, at most `limit`.
pub(crate) fn differences(
    catalog: &crate::catalog::Catalog,
    blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    entries: &impl ReadableTable<&'static [u8], &'static [u8]>,
    limit: usize,
) -> Result<Vec<String>, StorageError> {
    let mut expected: std::collections::BTreeMap<Vec<u8>, i64> = std::collections::BTreeMap::new();
    for table in catalog.live_tables() {
        let Some(key) = DedupKey::of(&table.schema) else { continue };
        let prefix = append::table_prefix(&table.schema.name, Some(table.causal_length));
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        for item in blocks.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
            let (block_key, value) = item?;
            let (name, at) = append::decode_block_key(block_key.value()).map_err(super::append::corrupt_key)?;
            let block = append::decode_block(value.value(), at.bucket).map_err(super::append::corrupt_record)?;
            let origin =
                BlockOrigin { table: name, epoch: at.epoch, origin: at.origin, seq: at.seq, columns: &block.columns };
            for (pos, values) in &block.rows {
                expected.insert(row_entry(&key, &origin, *pos, values), at.bucket);
            }
        }
    }
    let mut out = Vec::new();
    for item in entries.iter()? {
        let (key, value) = item?;
        let bucket = bucket_of_entry(value.value())?;
        match expected.remove(key.value()) {
            Some(wanted) if wanted == bucket => {}
            Some(wanted) => out.push(format!("an entry names bucket {bucket}, its row is in bucket {wanted}")),
            None => out.push(format!("an entry of no stored row: {}", describe(key.value()))),
        }
    }
    out.extend(expected.keys().map(|key| format!("a stored row has no entry: {}", describe(key))));
    out.truncate(limit);
    Ok(out)
}

/// An entry key as its table name and identity, for a problem report.
fn describe(key: &[u8]) -> String {
    let table = keys::decode_name(key).map_or("?", |(name, _)| name);
    match identity_of(key) {
        Ok(row) => format!("{table} row {row}"),
        Err(_) => format!("{table} (malformed key)"),
    }
}
