//! Range tombstones of append-only tables (docs/design.md § Identity and merge): applying
//! one to the blocks, keeping it in `append_tombstones_v1` for the paths that are not
//! causal, filtering what those paths bring, and collecting tombstones once their range
//! lies below the table's floor.
//!
//! A tombstone removes the rows of envelopes its deleting node held whose time lies in
//! its range. Causal delivery brings every such row before the tombstone, so applying it
//! removes rows already held. A state transfer is not causal: a donor that has not yet
//! applied a tombstone sends rows it removes. So tombstones are kept (and sent in the
//! transfer stream), and a transferred row a kept tombstone removes is not stored. Two
//! tombstones commute, and a tombstone commutes with every row it does not cover: the set
//! of rows left is the same in every order.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::append::{rows_xor, Bucketing};
use super::append_keys::{self, DedupKey};
use super::{Replica, WriteTables};
use crate::append::{self, RangeTombstone, NO_TIME_BUCKET};
use crate::catalog::TableEntry;
use crate::error::{Corruption, StorageError};
use crate::types::{NodeId, Value};

fn corrupt(source: crate::append::AppendFault) -> StorageError {
    Corruption::Tombstone(source).into()
}

/// The time a row's value gives a tombstone's range: an `INTEGER` or a `TIMESTAMP`.
fn time_value(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(t) | Value::Timestamp(t) => Some(*t),
        _ => None,
    }
}

/// A block's row by position, borrowed.
type PosRow<'b> = (u32, &'b [Value]);

/// Kept tombstones with their keys, as `tombstones_of` reads them.
pub(crate) type Kept = Vec<(Vec<u8>, RangeTombstone)>;

/// The kept tombstones of each table incarnation a transfer batch's blocks name.
pub(crate) type KeptByIncarnation = BTreeMap<(String, u64), Kept>;

/// The tombstones kept for one incarnation of a table, with their keys.
pub(crate) fn tombstones_of(
    stored: &impl ReadableTable<&'static [u8], &'static [u8]>,
    table: &str,
    epoch: u64,
) -> Result<Kept, StorageError> {
    let prefix = append::table_prefix(table, Some(epoch));
    let end = crate::keys::prefix_end(&prefix).expect("names are not all 0xFF");
    let mut out = Vec::new();
    for item in stored.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
        let (key, value) = item?;
        let (tombstone, _, _) = append::decode_stored_tombstone(key.value(), value.value()).map_err(corrupt)?;
        out.push((key.value().to_vec(), tombstone));
    }
    Ok(out)
}

/// Whether any of `tombstones` removes the row `(origin, seq)` whose values are
/// `values` under the column ids `columns`.
pub(crate) fn removed_by(
    tombstones: &[(Vec<u8>, RangeTombstone)],
    origin: NodeId,
    seq: u64,
    columns: &[String],
    values: &[Value],
) -> bool {
    tombstones.iter().any(|(_, t)| removes_row(t, origin, seq, columns, values))
}

/// Whether the tombstone removes the row `(origin, seq)` whose values are `values` under
/// the column ids `columns` (its time is its value under the tombstone's column).
fn removes_row(t: &RangeTombstone, origin: NodeId, seq: u64, columns: &[String], values: &[Value]) -> bool {
    let at = t.column.as_ref().and_then(|id| columns.iter().position(|c| c == id));
    t.removes(origin, seq, at.and_then(|i| time_value(&values[i])))
}

/// Whether every row a tombstone could remove lies below `floor` under the table's
/// current definition, so the tombstone has nothing left to do: rows below the floor
/// are removed by retention and dropped on arrival.
fn below_floor(entry: &TableEntry, tombstone: &RangeTombstone, floor: i64) -> bool {
    let time_id = Bucketing::of(&entry.schema).map(|b| b.time_id);
    floor != super::retention::NO_FLOOR
        && time_id.is_some()
        && tombstone.column == time_id
        && tombstone.hi.is_some_and(|hi| hi <= floor)
}

impl Replica {
    /// Applies an envelope's range tombstone: removes the rows it covers from the
    /// blocks (counted in `tables.range_deleted`) and keeps it. A tombstone of an
    /// incarnation that has since been dropped does nothing; `false` for one this
    /// replica does not know (contradicts causal delivery: the caller refuses it).
    pub(crate) fn store_tombstone(
        &self,
        tables: &mut WriteTables<'_>,
        origin: NodeId,
        seq: u64,
        tombstone: &RangeTombstone,
    ) -> Result<bool, StorageError> {
        let Some(entry) = self.catalog.tables.get(&tombstone.table) else { return Ok(false) };
        if entry.causal_length < tombstone.epoch {
            return Ok(false);
        }
        if entry.causal_length == tombstone.epoch {
            apply_and_keep(tables, entry, origin, seq, tombstone)?;
        }
        Ok(true)
    }

    /// Applies and keeps a tombstone a state transfer brought (`transfer.rs`): its
    /// donor's `append_tombstones_v1` key and value, checked by the caller. One of an
    /// incarnation this replica does not hold is not kept (dropped here, or of a table
    /// the transfer did not bring: then its envelope arrives by delta sync).
    pub(crate) fn store_transferred_tombstone(
        &self,
        tables: &mut WriteTables<'_>,
        origin: NodeId,
        seq: u64,
        tombstone: &RangeTombstone,
    ) -> Result<(), StorageError> {
        let Some(entry) = self.catalog.tables.get(&tombstone.table) else { return Ok(()) };
        if entry.causal_length == tombstone.epoch {
            apply_and_keep(tables, entry, origin, seq, tombstone)?;
        }
        Ok(())
    }

    /// Removes the tombstones of `table` whose range lies below its floor `floor`
    /// (retention has removed every row they could remove); returns how many.
    pub(crate) fn collect_tombstones(
        &self,
        tables: &mut WriteTables<'_>,
        table: &str,
        floor: i64,
    ) -> Result<u64, StorageError> {
        let Some(entry) = self.catalog.table(table) else { return Ok(0) };
        let mut collected = 0;
        for (key, tombstone) in tombstones_of(&tables.append_tombstones, table, entry.causal_length)? {
            if below_floor(entry, &tombstone, floor) {
                tables.append_tombstones.remove(key.as_slice())?;
                collected += 1;
            }
        }
        Ok(collected)
    }
}

/// Removes the tombstones of every incarnation of `table` but `keep` (the live one, if
/// any): a dropped incarnation's rows are gone, and so is the need for its tombstones.
pub(crate) fn remove_other_incarnations(
    tables: &mut WriteTables<'_>,
    table: &str,
    keep: Option<u64>,
) -> Result<(), StorageError> {
    let prefix = append::table_prefix(table, None);
    let end = crate::keys::prefix_end(&prefix).expect("names are not all 0xFF");
    let keep = keep.map(|epoch| append::table_prefix(table, Some(epoch)));
    tables.append_tombstones.retain_in(prefix.as_slice()..end.as_slice(), |key, _| {
        keep.as_ref().is_some_and(|live| key.starts_with(live))
    })?;
    Ok(())
}

fn apply_and_keep(
    tables: &mut WriteTables<'_>,
    entry: &TableEntry,
    origin: NodeId,
    seq: u64,
    tombstone: &RangeTombstone,
) -> Result<(), StorageError> {
    debug_assert_eq!(entry.causal_length, tombstone.epoch, "applied to its own incarnation");
    let removed = remove_rows(tables, entry, tombstone)?;
    tables.range_deleted += removed;
    keep(tables, entry, origin, seq, tombstone)
}

/// Keeps a tombstone unless a kept one already removes all it removes, or its range lies
/// below the floor; drops the kept ones it makes redundant. Which redundant tombstones a
/// node keeps depends on the order they arrived in; what they remove does not.
fn keep(
    tables: &mut WriteTables<'_>,
    entry: &TableEntry,
    origin: NodeId,
    seq: u64,
    tombstone: &RangeTombstone,
) -> Result<(), StorageError> {
    let name = &entry.schema.name;
    let floor = super::retention::read_floor(&tables.meta, name, entry.causal_length)?.floor;
    if below_floor(entry, tombstone, floor) {
        return Ok(());
    }
    let kept = tombstones_of(&tables.append_tombstones, name, entry.causal_length)?;
    if kept.iter().any(|(_, t)| tombstone.subsumed_by(t)) {
        return Ok(());
    }
    for (key, t) in &kept {
        if t.subsumed_by(tombstone) {
            tables.append_tombstones.remove(key.as_slice())?;
        }
    }
    let key = append::tombstone_key(name, entry.causal_length, origin, seq);
    tables.append_tombstones.insert(key.as_slice(), tombstone.payload().as_slice())?;
    Ok(())
}

/// The `append_blocks_v1` key range that can hold rows the tombstone removes: the
/// buckets its range spans when it is of the current time column, else the incarnation.
fn block_range(entry: &TableEntry, bucketing: Option<&Bucketing>, tombstone: &RangeTombstone) -> (Vec<u8>, Vec<u8>) {
    let name = &entry.schema.name;
    let epoch = entry.causal_length;
    let incarnation = append::table_prefix(name, Some(epoch));
    let past = |key: &[u8]| crate::keys::prefix_end(key).expect("names are not all 0xFF");
    match bucketing {
        Some(b) if !tombstone.is_whole() => {
            let first = tombstone.lo.map_or(NO_TIME_BUCKET + 1, |lo| append::bucket_of(lo, b.width));
            let start = append::bucket_prefix(name, epoch, first.max(NO_TIME_BUCKET + 1));
            let end = match tombstone.hi {
                None => past(&incarnation),
                Some(hi) => past(&append::bucket_prefix(name, epoch, append::bucket_of(hi.saturating_sub(1), b.width))),
            };
            (start, end)
        }
        _ => (incarnation.clone(), past(&incarnation)),
    }
}

/// Whether every time of bucket `bucket` lies in the tombstone's range.
fn bucket_inside(bucketing: Option<&Bucketing>, tombstone: &RangeTombstone, bucket: i64) -> bool {
    if tombstone.is_whole() {
        return true;
    }
    // The lowest bucket holds times below its (clamped) start; the no-time bucket none.
    let Some(b) = bucketing.filter(|_| bucket > NO_TIME_BUCKET + 1) else { return false };
    tombstone.lo.is_none_or(|lo| lo <= bucket)
        && tombstone.hi.is_none_or(|hi| bucket.checked_add(b.width).is_some_and(|end| end <= hi))
}

/// Removes from the blocks the rows the tombstone removes; returns how many. A bucket
/// that lies inside the range, with every block of an envelope the tombstone covers, is
/// removed whole without decoding a row; in every other bucket each covered block is
/// decoded and written again without its removed rows.
fn remove_rows(
    tables: &mut WriteTables<'_>,
    entry: &TableEntry,
    tombstone: &RangeTombstone,
) -> Result<u64, StorageError> {
    let name = &entry.schema.name;
    let bucketing = Bucketing::of(&entry.schema).filter(|b| Some(&b.time_id) == tombstone.column.as_ref());
    let (start, end) = block_range(entry, bucketing.as_ref(), tombstone);
    if end <= start {
        return Ok(0);
    }
    let mut by_bucket: BTreeMap<i64, Vec<(Vec<u8>, append::BlockKey)>> = BTreeMap::new();
    for item in tables.append_blocks.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        let key = item?.0.value().to_vec();
        let (_, at) = append::decode_block_key(&key).map_err(super::append::corrupt_key)?;
        by_bucket.entry(at.bucket).or_default().push((key, at));
    }
    let dedup = DedupKey::of(&entry.schema);
    let mut removed = 0;
    for (bucket, blocks) in by_bucket {
        let all_covered = blocks.iter().all(|(_, at)| tombstone.covers(at.origin, at.seq));
        if all_covered && bucket_inside(bucketing.as_ref(), tombstone, bucket) {
            for (key, _) in &blocks {
                let value = tables.append_blocks.remove(key.as_slice())?.expect("listed in this transaction");
                removed += append::block_row_count(value.value()).map_err(super::append::corrupt_record)?;
                if let Some(dedup) = &dedup {
                    append_keys::unindex_stored_block(&mut tables.append_keys, dedup, key, value.value())?;
                }
            }
            tables.digest_delta.clear_append_bucket(name, bucket);
            continue;
        }
        for (key, at) in blocks.iter().filter(|(_, at)| tombstone.covers(at.origin, at.seq)) {
            removed += remove_block_rows(tables, dedup.as_ref(), name, key, at, tombstone)?;
        }
    }
    Ok(removed)
}

/// Writes one covered block again without the rows the tombstone removes (or removes it
/// when none is left), keeping the digest exact; returns how many rows went.
fn remove_block_rows(
    tables: &mut WriteTables<'_>,
    dedup: Option<&DedupKey>,
    name: &str,
    key: &[u8],
    at: &append::BlockKey,
    tombstone: &RangeTombstone,
) -> Result<u64, StorageError> {
    let value = tables.append_blocks.get(key)?.expect("listed in this transaction").value().to_vec();
    let block = append::decode_block(&value, at.bucket).map_err(super::append::corrupt_record)?;
    let (removed, kept): (Vec<PosRow<'_>>, Vec<PosRow<'_>>) = block
        .rows
        .iter()
        .map(|(pos, values)| (*pos, values.as_slice()))
        .partition(|(_, values)| removes_row(tombstone, at.origin, at.seq, &block.columns, values));
    let gone = removed.len() as u64;
    if gone == 0 {
        return Ok(0);
    }
    if let Some(dedup) = dedup {
        let origin = append_keys::BlockOrigin {
            table: name,
            epoch: at.epoch,
            origin: at.origin,
            seq: at.seq,
            columns: &block.columns,
        };
        append_keys::unindex(&mut tables.append_keys, dedup, &origin, removed)?;
    }
    let all: Vec<(u32, &[Value])> = block.rows.iter().map(|(pos, values)| (*pos, values.as_slice())).collect();
    let old_xor = rows_xor(at.origin, at.seq, &block.columns, &all);
    tables.digest_delta.append_block(name, at.bucket, all.len() as u64, &old_xor, key.len() + value.len(), -1);
    if kept.is_empty() {
        tables.append_blocks.remove(key)?;
    } else {
        let bytes = append::encode_block(&block.columns, block.time, at.bucket, &kept);
        tables.append_blocks.insert(key, bytes.as_slice())?;
        let xor = rows_xor(at.origin, at.seq, &block.columns, &kept);
        tables.digest_delta.append_block(name, at.bucket, kept.len() as u64, &xor, key.len() + bytes.len(), 1);
    }
    Ok(gone)
}
