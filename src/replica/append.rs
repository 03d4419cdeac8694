//! The rows of append-only tables in `append_blocks_v1` (docs/design.md § Append-only
//! tables and retention): storing a batch as one block per bucket, re-splitting a table's
//! blocks when its winning definition changes, and reading rows back under the current
//! definition.
//!
//! Blocks are split by the table's *current* definition (its time column and bucket
//! width). Definitions of one incarnation can differ only while concurrent `CREATE
//! TABLE`s are still arriving; every change of the winner re-splits the incarnation's
//! blocks, so once the catalog converges the blocks do too. The digest does not wait for
//! that: a row's hash is of its identity and values only.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use redb::ReadableTable;

use super::append_keys::{self, BlockOrigin, DedupKey};
use super::{Replica, Row, WriteTables};
use crate::append::{self, AppendBatch, BlockTime, NO_TIME_BUCKET};
use crate::catalog::TableEntry;
use crate::error::{Corruption, ReadError, StorageError};
use crate::schema::TableSchema;
use crate::types::{ColumnType, NodeId, Value};

const BLOCKS: &str = "append_blocks_v1";

pub(super) fn corrupt_key(source: crate::keys::KeyError) -> StorageError {
    Corruption::Key { table: BLOCKS, source }.into()
}

pub(super) fn corrupt_record(source: crate::record::RecordError) -> StorageError {
    Corruption::Record { table: BLOCKS, source }.into()
}

/// What one stored block adds to the digest.
pub(crate) struct BlockSummary {
    pub table: String,
    pub bucket: i64,
    pub rows: u64,
    pub xor: [u8; 32],
}

/// Decodes a stored block far enough to give its digest contribution.
pub(crate) fn summarize_block(key: &[u8], value: &[u8]) -> Result<BlockSummary, StorageError> {
    let (table, at) = append::decode_block_key(key).map_err(corrupt_key)?;
    let block = append::decode_block(value, at.bucket).map_err(corrupt_record)?;
    let mut xor = [0u8; 32];
    for (pos, values) in &block.rows {
        let hash = append::row_hash(at.origin, at.seq, *pos, &block.columns, values);
        super::digest::xor_into(&mut xor, &hash);
    }
    Ok(BlockSummary { table: table.to_string(), bucket: at.bucket, rows: block.rows.len() as u64, xor })
}

/// Where rows find their bucket under a definition: the time column's id and type and the
/// bucket width; `None` for a definition without a time column (or not append-only).
#[derive(Clone, Debug)]
pub(super) struct Bucketing {
    pub time_id: String,
    pub timestamp: bool,
    pub width: i64,
}

impl Bucketing {
    pub(super) fn of(schema: &TableSchema) -> Option<Bucketing> {
        let options = schema.append.as_ref()?;
        let column = &schema.columns[schema.time_column_index()?];
        Some(Bucketing { time_id: column.id(), timestamp: column.ty == ColumnType::Timestamp, width: options.bucket })
    }
}

/// A row of a batch read back from its blocks: its position and its values, one per
/// column of the batch.
type PlacedRow = (u32, Vec<Value>);

/// The rows of one block to be: how it holds their time, and each row by position.
type BlockRows<'r> = (Option<BlockTime>, Vec<(u32, &'r [Value])>);

/// The rows of one batch grouped into blocks, by bucket start.
fn split_rows<'r>(
    bucketing: Option<&Bucketing>,
    columns: &[String],
    rows: impl Iterator<Item = (u32, &'r [Value])>,
) -> BTreeMap<i64, BlockRows<'r>> {
    let time = bucketing.and_then(|b| {
        let column = columns.iter().position(|id| *id == b.time_id)?;
        Some((BlockTime { column, timestamp: b.timestamp }, b.width))
    });
    let mut blocks: BTreeMap<i64, BlockRows<'r>> = BTreeMap::new();
    for (pos, values) in rows {
        let placed = time.and_then(|(t, width)| {
            let ts = append::time_of(&values[t.column], t.timestamp)?;
            Some((append::bucket_of(ts, width), t))
        });
        let (bucket, block_time) = match placed {
            Some((bucket, t)) => (bucket, Some(t)),
            None => (NO_TIME_BUCKET, None),
        };
        blocks.entry(bucket).or_insert_with(|| (block_time, Vec::new())).1.push((pos, values));
    }
    debug_assert!(
        blocks.iter().all(|(b, (t, _))| (*b == NO_TIME_BUCKET) == t.is_none()),
        "exactly the rows without a time go to the no-time bucket"
    );
    blocks
}

/// Writes one batch's rows, by position, as blocks (one per bucket) and records them in
/// the digest. Rows in a bucket below `floor` (retention's, `retention.rs`) are not
/// stored; returns how many. A block already stored under the same key (the same
/// envelope's rows of the bucket, from a state transfer or a re-split) is merged with
/// the new rows by position, so a row is never stored or counted twice.
fn write_rows<'r>(
    tables: &mut WriteTables<'_>,
    entry: &TableEntry,
    origin: NodeId,
    seq: u64,
    columns: &[String],
    rows: impl Iterator<Item = (u32, &'r [Value])>,
    floor: i64,
) -> Result<u64, StorageError> {
    let name = &entry.schema.name;
    let bucketing = Bucketing::of(&entry.schema);
    let dedup = DedupKey::of(&entry.schema);
    let keyed = BlockOrigin { table: name, epoch: entry.causal_length, origin, seq, columns };
    let mut expired = 0;
    for (bucket, (time, new_rows)) in split_rows(bucketing.as_ref(), columns, rows) {
        if bucket != NO_TIME_BUCKET && bucket < floor {
            expired += new_rows.len() as u64;
            continue;
        }
        if let Some(dedup) = &dedup {
            // Idempotent: rows of a block merged below keep their one entry.
            append_keys::index(&mut tables.append_keys, dedup, &keyed, bucket, new_rows.iter().copied())?;
        }
        let key = append::block_key(name, entry.causal_length, bucket, origin, seq, 0);
        let value = append::encode_block(columns, time, bucket, &new_rows);
        // The common case, a block written once, is one insert and no read.
        let Some(old) = tables.append_blocks.insert(key.as_slice(), value.as_slice())?.map(|v| v.value().to_vec())
        else {
            let xor = rows_xor(origin, seq, columns, &new_rows);
            tables.digest_delta.append_block(name, bucket, new_rows.len() as u64, &xor, key.len() + value.len(), 1);
            continue;
        };
        let summary = summarize_block(&key, &old)?;
        tables.digest_delta.append_block(name, bucket, summary.rows, &summary.xor, key.len() + old.len(), -1);
        let old_block = append::decode_block(&old, bucket).map_err(corrupt_record)?;
        let merged = merge_rows(&old_block, columns, new_rows)?;
        let value = append::encode_block(columns, time, bucket, &merged);
        tables.append_blocks.insert(key.as_slice(), value.as_slice())?;
        let xor = rows_xor(origin, seq, columns, &merged);
        tables.digest_delta.append_block(name, bucket, merged.len() as u64, &xor, key.len() + value.len(), 1);
    }
    Ok(expired)
}

/// The XOR of the rows' digest hashes.
pub(super) fn rows_xor(origin: NodeId, seq: u64, columns: &[String], rows: &[(u32, &[Value])]) -> [u8; 32] {
    let mut xor = [0u8; 32];
    for (pos, values) in rows {
        super::digest::xor_into(&mut xor, &append::row_hash(origin, seq, *pos, columns, values));
    }
    xor
}

/// The rows of a stored block and new rows of the same envelope and bucket, by position,
/// each position once.
fn merge_rows<'b>(
    old: &'b append::Block,
    columns: &[String],
    new_rows: Vec<(u32, &'b [Value])>,
) -> Result<Vec<(u32, &'b [Value])>, StorageError> {
    if old.columns.as_slice() != columns {
        // One envelope writes one batch per table, under one list of ids.
        let source = crate::record::RecordError("one envelope's blocks under two column lists");
        return Err(Corruption::Record { table: BLOCKS, source }.into());
    }
    let mut by_pos: BTreeMap<u32, &[Value]> = old.rows.iter().map(|(pos, values)| (*pos, values.as_slice())).collect();
    by_pos.extend(new_rows);
    Ok(by_pos.into_iter().collect())
}

/// Stores rows that arrive (an envelope's batch, a transferred block) and counts those
/// below the floor as `expired_on_arrival`.
fn write_arriving_rows<'r>(
    tables: &mut WriteTables<'_>,
    entry: &TableEntry,
    origin: NodeId,
    seq: u64,
    columns: &[String],
    rows: impl Iterator<Item = (u32, &'r [Value])>,
) -> Result<(), StorageError> {
    let name = &entry.schema.name;
    let mut floor = super::retention::read_floor(&tables.meta, name, entry.causal_length)?;
    let expired = write_rows(tables, entry, origin, seq, columns, rows, floor.floor)?;
    if expired > 0 {
        floor.expired_on_arrival += expired;
        super::retention::write_floor(&mut tables.meta, name, &floor)?;
    }
    Ok(())
}

impl Replica {
    /// Stores the rows of an envelope's append batch, under the table's current
    /// definition. Rows of an incarnation that has since been dropped are not stored (as
    /// a dropped table's rows are not materialized); a batch for an incarnation this
    /// replica does not know contradicts causal delivery and is refused by the caller.
    pub(crate) fn store_append_batch(
        &self,
        tables: &mut WriteTables<'_>,
        origin: NodeId,
        seq: u64,
        batch: &AppendBatch,
    ) -> Result<bool, StorageError> {
        let Some(entry) = self.catalog.tables.get(&batch.table) else { return Ok(false) };
        if entry.causal_length < batch.epoch {
            return Ok(false);
        }
        if entry.causal_length != batch.epoch {
            return Ok(true);
        }
        // Borrowed, not copied: this is every ingested row's path.
        let rows =
            batch.rows.iter().enumerate().map(|(pos, row)| {
                (u32::try_from(pos).expect("batches hold at most APPEND_ROWS_MAX rows"), row.as_slice())
            });
        write_arriving_rows(tables, entry, origin, seq, &batch.columns, rows)?;
        Ok(true)
    }

    /// Stores the rows of a block a state transfer brought (`transfer.rs`), re-split under
    /// this replica's current definition and merged by position with what it holds of
    /// the same envelope. A block of an incarnation this replica does not hold — dropped
    /// here, or created by a change the transfer did not bring — is not stored: in the
    /// second case its envelope is above the transfer's vector and arrives by delta sync.
    /// `tombstones`: the kept tombstones of each incarnation, read once per batch.
    pub(crate) fn store_transferred_block(
        &self,
        tables: &mut WriteTables<'_>,
        tombstones: &mut super::tombstones::KeptByIncarnation,
        table: &str,
        at: &append::BlockKey,
        block: &append::Block,
    ) -> Result<(), StorageError> {
        let Some(entry) = self.catalog.tables.get(table).filter(|t| t.causal_length == at.epoch) else {
            return Ok(());
        };
        // The donor may not have applied a tombstone this replica holds (a transfer is
        // not causal): rows it removes are not stored again.
        let incarnation = (table.to_string(), at.epoch);
        if !tombstones.contains_key(&incarnation) {
            let kept = super::tombstones::tombstones_of(&tables.append_tombstones, table, at.epoch)?;
            tombstones.insert(incarnation.clone(), kept);
        }
        let tombstones = &tombstones[&incarnation];
        let rows = block
            .rows
            .iter()
            .filter(|(_, values)| !super::tombstones::removed_by(tombstones, at.origin, at.seq, &block.columns, values))
            .map(|(pos, values)| (*pos, values.as_slice()));
        write_arriving_rows(tables, entry, at.origin, at.seq, &block.columns, rows)
    }

    /// After the catalog entry of `name` changed: removes the blocks of every other
    /// incarnation and re-splits the current incarnation's blocks under its definition.
    pub(crate) fn rebucket_append_table(&self, tables: &mut WriteTables<'_>, name: &str) -> Result<(), StorageError> {
        let prefix = append::table_prefix(name, None);
        let end = crate::keys::prefix_end(&prefix).expect("names are not all 0xFF");
        let current = self.catalog.table(name);
        super::tombstones::remove_other_incarnations(tables, name, current.map(|t| t.causal_length))?;
        // Rows of the current incarnation, by envelope and the ids they were written under.
        let mut kept: BTreeMap<(NodeId, u64, Vec<String>), Vec<PlacedRow>> = BTreeMap::new();
        let mut any = false;
        for item in tables.append_blocks.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
            let (key, value) = item?;
            any = true;
            let (_, at) = append::decode_block_key(key.value()).map_err(corrupt_key)?;
            if current.is_some_and(|t| t.causal_length == at.epoch) {
                let block = append::decode_block(value.value(), at.bucket).map_err(corrupt_record)?;
                kept.entry((at.origin, at.seq, block.columns)).or_default().extend(block.rows);
            }
        }
        if !any {
            return Ok(());
        }
        // The rows are written again below, under the current definition's key.
        append_keys::clear(&mut tables.append_keys, name)?;
        tables.append_blocks.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
        tables.digest_delta.clear_append_table(&tables.digest, name)?;
        let Some(entry) = current else {
            super::retention::remove_floor(&mut tables.meta, name)?;
            return Ok(());
        };
        let mut floor = super::retention::read_floor(&tables.meta, name, entry.causal_length)?;
        let mut expired = 0;
        for ((origin, seq, columns), mut rows) in kept {
            rows.sort_by_key(|(pos, _)| *pos);
            let rows = rows.iter().map(|(pos, v)| (*pos, v.as_slice()));
            expired += write_rows(tables, entry, origin, seq, &columns, rows, floor.floor)?;
        }
        if expired > 0 {
            // Re-split under a finer bucket, rows of a bucket that straddled the floor
            // now lie below it.
            floor.expired_rows += expired;
            super::retention::write_floor(&mut tables.meta, name, &floor)?;
        }
        bump_layout(tables)?;
        Ok(())
    }
}

/// The generation of the block layout, in `meta_v1` under `append_layout` (u64 BE; absent
/// = 0): raised in the transaction of every re-split, which moves rows between block
/// keys. A state transfer streams blocks in key order under one generation and starts
/// the blocks over when it changes (`transfer.rs`), so a row moved behind its cursor is
/// still sent.
pub(crate) fn layout_generation(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StorageError> {
    match meta.get(crate::storage::META_APPEND_LAYOUT)? {
        None => Ok(0),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .value()
                .try_into()
                .map_err(|_| StorageError::BadLength { table: "meta_v1 append_layout", len: bytes.value().len() })?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

fn bump_layout(tables: &mut WriteTables<'_>) -> Result<(), StorageError> {
    let next = layout_generation(&tables.meta)? + 1;
    tables.meta.insert(crate::storage::META_APPEND_LAYOUT, next.to_be_bytes().as_slice())?;
    Ok(())
}

/// The range of bucket starts a scan reads: all, or those that can hold a time in
/// `[lower, upper]` (bounds inclusive or exclusive, as given).
#[derive(Clone, Copy, Debug)]
pub struct TimeRange {
    /// The lowest time wanted.
    pub lower: Bound<i64>,
    /// The highest time wanted.
    pub upper: Bound<i64>,
}

/// The rows of an append-only table, block by block in key order, decoded under the
/// table's current definition: a value under an id the definition lacks is not shown, a
/// column the batch did not write reads as its default, a value that does not fit its
/// column's type reads as NULL. Of the rows sharing a deduplication key, only the one
/// with the least identity is shown (`append_keys.rs`).
pub struct AppendRows {
    range: redb::Range<'static, &'static [u8], &'static [u8]>,
    schema: TableSchema,
    ids: Vec<String>,
    /// The table's deduplication key and its entries, for a table that declares one.
    dedup: Option<(DedupKey, KeyEntries)>,
    buffered: VecDeque<Row>,
}

/// `append_keys_v1` in a read transaction.
pub(crate) type KeyEntries = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl std::fmt::Debug for AppendRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRows").field("table", &self.schema.name).finish()
    }
}

/// How a block's values map onto a definition: for each of the block's column ids, the
/// definition's column under that id, if any; and what each column reads as where the
/// block has no value for it.
pub(crate) struct RowMapping {
    targets: Vec<Option<usize>>,
    absent: Row,
}

impl RowMapping {
    /// The mapping of rows stored under the column ids `columns` onto `schema`, whose
    /// columns' ids are `ids`.
    pub(crate) fn new(schema: &TableSchema, ids: &[String], columns: &[String]) -> RowMapping {
        RowMapping {
            targets: columns.iter().map(|id| ids.iter().position(|own| own == id)).collect(),
            absent: schema.columns.iter().map(crate::schema::ColumnDef::absent_value).collect(),
        }
    }

    /// A stored row read under the definition, as [`AppendRows`] describes.
    pub(crate) fn read(&self, schema: &TableSchema, values: Vec<Value>) -> Row {
        let mut row = self.absent.clone();
        for (value, target) in values.into_iter().zip(&self.targets) {
            if let Some(i) = *target {
                row[i] = value.coerce(schema.columns[i].ty).unwrap_or(Value::Null);
            }
        }
        row
    }
}

impl AppendRows {
    /// Opens a scan of the current incarnation of `entry`, within `times` if given;
    /// `keys` is `append_keys_v1`, read for a table with a deduplication key.
    pub(crate) fn open(
        blocks: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        keys: impl FnOnce() -> Result<KeyEntries, StorageError>,
        entry: &TableEntry,
        times: Option<TimeRange>,
    ) -> Result<AppendRows, StorageError> {
        let name = &entry.schema.name;
        let epoch = entry.causal_length;
        let incarnation = append::table_prefix(name, Some(epoch));
        let past = |key: &[u8]| crate::keys::prefix_end(key).expect("names are not all 0xFF");
        let (start, end) = match (times, Bucketing::of(&entry.schema)) {
            (Some(times), Some(bucketing)) => {
                let width = bucketing.width;
                // Rows without a time never match a time range: skip their bucket.
                let first = match times.lower {
                    Bound::Unbounded => NO_TIME_BUCKET + 1,
                    Bound::Included(t) => append::bucket_of(t, width),
                    Bound::Excluded(t) => append::bucket_of(t.saturating_add(1), width),
                };
                let start = append::bucket_prefix(name, epoch, first.max(NO_TIME_BUCKET + 1));
                let end = match times.upper {
                    Bound::Unbounded => past(&incarnation),
                    Bound::Included(t) | Bound::Excluded(t) => {
                        past(&append::bucket_prefix(name, epoch, append::bucket_of(t, width)))
                    }
                };
                (start, end)
            }
            _ => (incarnation.clone(), past(&incarnation)),
        };
        let end = if end < start { start.clone() } else { end };
        let range = blocks.range::<&[u8]>(start.as_slice()..end.as_slice())?;
        let ids = entry.schema.columns.iter().map(crate::schema::ColumnDef::id).collect();
        let dedup = match DedupKey::of(&entry.schema) {
            Some(dedup) => Some((dedup, keys()?)),
            None => None,
        };
        Ok(AppendRows { range, schema: entry.schema.clone(), ids, dedup, buffered: VecDeque::new() })
    }

    fn load_block(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let (table, at) = append::decode_block_key(key).map_err(corrupt_key)?;
        let block = append::decode_block(value, at.bucket).map_err(corrupt_record)?;
        let mapping = RowMapping::new(&self.schema, &self.ids, &block.columns);
        for (pos, values) in block.rows {
            if let Some((dedup, entries)) = &self.dedup {
                let tuple = dedup.tuple(&block.columns, &values);
                let shown = append_keys::shown_holder(entries, table, at.epoch, &tuple)?;
                debug_assert!(shown.is_some(), "a stored row of {table} has an entry");
                let this = append_keys::RowIdentity { origin: at.origin, seq: at.seq, pos };
                if shown.is_some_and(|(row, _)| row != this) {
                    continue; // A duplicate of a row with a lesser identity.
                }
            }
            self.buffered.push_back(mapping.read(&self.schema, values));
        }
        Ok(())
    }
}

impl Iterator for AppendRows {
    type Item = Result<Row, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffered.pop_front() {
                return Some(Ok(row));
            }
            let loaded = match self.range.next()? {
                Ok((key, value)) => self.load_block(key.value(), value.value()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = loaded {
                return Some(Err(ReadError::Storage(e)));
            }
        }
    }
}
