//! Retention and the disk budget of append-only tables (docs/design.md § "Append-only
//! tables and retention", "Retention, the budget and the floor"): each node keeps, per
//! table, a **floor** — the start of the oldest bucket it keeps — raises it by the
//! table's `retention` and `max_bytes`, and removes the blocks below it in bounded
//! durable steps. Expiry is local (not replicated): every node applies the same policy to
//! its own clock, in whole buckets, and rows that arrive below its floor are dropped on
//! arrival and counted.
//!
//! The floor and the counts live in `meta_v1` under `append_floor.<table>` (packed CBOR
//! [`AppendFloor`]), tied to the table's incarnation: a re-created table starts with no
//! floor. The bytes and rows per bucket come from the bucket parts of the maintained
//! digest (`digest_parts.rs`), so planning a step reads a few entries per table, never
//! the blocks.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::append_keys::{self, DedupKey};
use super::{digest_parts, Replica, WriteTables};
use crate::append::{self, NO_TIME_BUCKET};
use crate::codec;
use crate::error::{Corruption, StorageError};
use crate::schema::TableSchema;
use crate::storage;
use crate::types::ColumnType;

/// No floor: every bucket is kept.
pub const NO_FLOOR: i64 = i64::MIN;

/// What a node keeps of one append-only table's expiry, in `meta_v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendFloor {
    /// The incarnation (causal length) the record belongs to.
    pub epoch: u64,
    /// Start of the oldest bucket kept; [`NO_FLOOR`] until retention or the budget first
    /// raises it. Only rises.
    pub floor: i64,
    /// Rows removed by retention or the budget (blocks below the floor).
    pub expired_rows: u64,
    /// Rows that arrived (from a peer, or written locally) in a bucket below the floor and
    /// were not stored.
    pub expired_on_arrival: u64,
}

impl AppendFloor {
    fn none(epoch: u64) -> AppendFloor {
        AppendFloor { epoch, floor: NO_FLOOR, expired_rows: 0, expired_on_arrival: 0 }
    }
}

fn floor_key(table: &str) -> String {
    format!("{}{table}", storage::META_APPEND_FLOOR_PREFIX)
}

/// The floor record of incarnation `epoch` of `table` (a record of another incarnation
/// counts as none).
pub(crate) fn read_floor(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &str,
    epoch: u64,
) -> Result<AppendFloor, StorageError> {
    let Some(bytes) = meta.get(floor_key(table).as_str())? else { return Ok(AppendFloor::none(epoch)) };
    let stored: AppendFloor =
        codec::decode(bytes.value()).map_err(|source| Corruption::Value { table: "meta_v1 append_floor", source })?;
    Ok(if stored.epoch == epoch { stored } else { AppendFloor::none(epoch) })
}

pub(crate) fn write_floor(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    table: &str,
    floor: &AppendFloor,
) -> Result<(), StorageError> {
    meta.insert(floor_key(table).as_str(), codec::encode(floor).as_slice())?;
    Ok(())
}

pub(crate) fn remove_floor(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    table: &str,
) -> Result<(), StorageError> {
    meta.remove(floor_key(table).as_str())?;
    Ok(())
}

/// One append-only table's rows, bytes and expiry, for `status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendTableStatus {
    /// The table's name.
    pub name: String,
    /// Rows held (above the floor).
    pub rows: u64,
    /// Bytes of the table's blocks, keys included.
    pub bytes: u64,
    /// Buckets that hold rows.
    pub buckets: u64,
    /// The time column is a `TIMESTAMP` (ms since the Unix epoch); otherwise an `INTEGER`
    /// in its own unit (or the table has no time column).
    pub timestamp: bool,
    /// The start of the oldest bucket kept, in the time column's unit; `None` until
    /// retention or the budget first raised it.
    pub floor: Option<i64>,
    /// The table's `retention`, in the time column's unit.
    pub retention: Option<i64>,
    /// The table's `max_bytes`.
    pub max_bytes: Option<u64>,
    /// Rows removed by retention or the budget so far.
    pub expired_rows: u64,
    /// Rows that arrived below the floor and were not stored.
    pub expired_on_arrival: u64,
}

/// What one [`Replica::expire_append_step`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// Tables whose floor rose.
    pub floors_raised: u64,
    /// Blocks removed.
    pub blocks_removed: u64,
    /// Rows removed.
    pub rows_removed: u64,
    /// Bytes of the removed blocks, keys included.
    pub bytes_removed: u64,
    /// Range tombstones removed because their range now lies below the floor.
    pub tombstones_collected: u64,
    /// Nothing is left below any floor: another step at the same time removes nothing.
    pub complete: bool,
}

/// Rows and bytes of each bucket of a table, by bucket start (the no-time bucket
/// included), from the digest's bucket parts.
type Buckets = BTreeMap<i64, digest_parts::Part>;

/// The floor a table's policy asks for at `now_ms`, given the buckets it holds and its
/// current floor: the retention floor (the start of the bucket holding `now − retention`;
/// for an `INTEGER` time column, whose unit is unknown, `now` is the newest bucket held)
/// and the budget floor (oldest buckets dropped while the table's bytes exceed
/// `max_bytes`, never the newest bucket), whichever is higher, never below `current`.
pub(crate) fn target_floor(schema: &TableSchema, buckets: &Buckets, current: i64, now_ms: i64) -> i64 {
    let Some(options) = &schema.append else { return current };
    let Some(time) = schema.time_column_index() else { return current };
    let timed = || buckets.range(NO_TIME_BUCKET + 1..);
    let mut target = current;
    if let Some(retention) = options.retention {
        let now = match schema.columns[time].ty {
            ColumnType::Timestamp => Some(now_ms),
            _ => timed().next_back().map(|(start, _)| *start),
        };
        if let Some(now) = now {
            target = target.max(append::bucket_of(now.saturating_sub(retention), options.bucket));
        }
    }
    if let Some(max_bytes) = options.max_bytes {
        let retained = target;
        let mut total: u64 = buckets
            .iter()
            .filter(|(start, _)| **start == NO_TIME_BUCKET || **start >= retained)
            .map(|(_, p)| p.bytes)
            .sum();
        let mut kept = timed().filter(|(start, _)| **start >= retained).peekable();
        while total > max_bytes {
            let Some((_, part)) = kept.next() else { break };
            // The newest bucket stays, whatever its size: it is where rows arrive.
            let Some((next, _)) = kept.peek() else { break };
            total -= part.bytes;
            target = target.max(**next);
        }
    }
    debug_assert!(target >= current, "a floor only rises");
    target
}

impl Replica {
    /// Raises the floor of every append-only table to what its `retention` and
    /// `max_bytes` ask for at `now_ms` (the node's wall clock, ms since the Unix epoch),
    /// and removes at most `blocks_max` blocks below the floors, in one durable
    /// transaction (none when there is nothing to do). Removal is local: nothing is
    /// logged or replicated. Refused while the store is faulted.
    pub fn expire_append_step(&mut self, now_ms: i64, blocks_max: usize) -> Result<ExpireReport, StorageError> {
        assert!(blocks_max >= 1, "a step removes at least one block");
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        let plans = match self.expiry_plans(now_ms) {
            Ok(plans) => plans,
            Err(error) => return Err(self.recover(error)),
        };
        if plans.is_empty() {
            return Ok(ExpireReport { complete: true, ..ExpireReport::default() });
        }
        match self.expire_txn(&plans, blocks_max) {
            Ok(report) => Ok(report),
            Err(error) => Err(self.recover(error)),
        }
    }

    /// The tables with a floor to raise or blocks below it: name, epoch, target floor and
    /// the buckets below the target (read in one read transaction: a step with nothing to
    /// do writes nothing).
    fn expiry_plans(&self, now_ms: i64) -> Result<Vec<ExpiryPlan>, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(storage::META)?;
        let digest = txn.open_table(storage::DIGEST)?;
        let mut plans = Vec::new();
        for entry in self.catalog.live_tables().filter(|t| t.schema.append.is_some()) {
            let name = &entry.schema.name;
            let stored = read_floor(&meta, name, entry.causal_length)?;
            let buckets: Buckets = digest_parts::append_buckets(&digest, name)?;
            let target = target_floor(&entry.schema, &buckets, stored.floor, now_ms);
            let below: Buckets =
                buckets.range(NO_TIME_BUCKET + 1..target.max(NO_TIME_BUCKET + 1)).map(|(b, p)| (*b, *p)).collect();
            if target > stored.floor || !below.is_empty() {
                let dedup = DedupKey::of(&entry.schema);
                plans.push(ExpiryPlan { name: name.clone(), epoch: entry.causal_length, dedup, target, below });
            }
        }
        Ok(plans)
    }

    fn expire_txn(&mut self, plans: &[ExpiryPlan], blocks_max: usize) -> Result<ExpireReport, StorageError> {
        let mut report = ExpireReport { complete: true, ..ExpireReport::default() };
        let txn = self.begin_durable_write()?;
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut budget = blocks_max;
            for plan in plans {
                let mut floor = read_floor(&tables.meta, &plan.name, plan.epoch)?;
                if plan.target > floor.floor {
                    floor.floor = plan.target;
                    report.floors_raised += 1;
                }
                if budget > 0 {
                    let removed = remove_below(&mut tables, plan, budget)?;
                    budget -= removed.blocks as usize;
                    floor.expired_rows += removed.rows;
                    report.blocks_removed += removed.blocks;
                    report.rows_removed += removed.rows;
                    report.bytes_removed += removed.bytes;
                    report.complete &= removed.all;
                } else {
                    report.complete = false;
                }
                write_floor(&mut tables.meta, &plan.name, &floor)?;
                report.tombstones_collected += self.collect_tombstones(&mut tables, &plan.name, floor.floor)?;
            }
            tables.digest_delta.flush(&mut tables.digest)?;
            #[cfg(debug_assertions)]
            super::integrity::shadow_check_digest(&tables)?;
            #[cfg(debug_assertions)]
            super::integrity::shadow_check_append_keys(&self.catalog, &tables)?;
        }
        txn.commit()?;
        Ok(report)
    }

    /// Every append-only table's rows, bytes and expiry (live tables, in name order).
    pub fn append_tables_status(&self) -> Result<Vec<AppendTableStatus>, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(storage::META)?;
        let digest = txn.open_table(storage::DIGEST)?;
        let mut out = Vec::new();
        for entry in self.catalog.live_tables().filter(|t| t.schema.append.is_some()) {
            let name = &entry.schema.name;
            let options = entry.schema.append.as_ref().expect("filtered on append-only tables");
            let floor = read_floor(&meta, name, entry.causal_length)?;
            let buckets = digest_parts::append_buckets(&digest, name)?;
            out.push(AppendTableStatus {
                name: name.clone(),
                rows: buckets.values().map(|p| p.entries).sum(),
                bytes: buckets.values().map(|p| p.bytes).sum(),
                buckets: buckets.len() as u64,
                timestamp: entry
                    .schema
                    .time_column_index()
                    .is_some_and(|i| entry.schema.columns[i].ty == ColumnType::Timestamp),
                floor: (floor.floor != NO_FLOOR).then_some(floor.floor),
                retention: options.retention,
                max_bytes: options.max_bytes,
                expired_rows: floor.expired_rows,
                expired_on_arrival: floor.expired_on_arrival,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Each live append-only table's floor (tables without one are absent): what
    /// [`Replica::state_digest_at`] of another node is compared at.
    pub fn append_floors(&self) -> Result<BTreeMap<String, i64>, StorageError> {
        let statuses = self.append_tables_status()?;
        Ok(statuses.into_iter().filter_map(|s| Some((s.name, s.floor?))).collect())
    }
}

/// One table's step: raise its floor to `target`, remove the buckets `below` it.
struct ExpiryPlan {
    name: String,
    epoch: u64,
    /// The table's deduplication key: removed rows' entries go with them.
    dedup: Option<DedupKey>,
    target: i64,
    below: Buckets,
}

/// What removing blocks below one table's floor did.
struct Removed {
    blocks: u64,
    rows: u64,
    bytes: u64,
    /// Every block below the floor is gone.
    all: bool,
}

/// Removes at most `budget` blocks of the buckets below the plan's floor, oldest first.
/// A bucket removed whole resets its digest part; the blocks of a bucket only partly
/// removed (the budget ran out in it) are taken out of the digest one by one.
fn remove_below(tables: &mut WriteTables<'_>, plan: &ExpiryPlan, budget: usize) -> Result<Removed, StorageError> {
    let mut removed = Removed { blocks: 0, rows: 0, bytes: 0, all: true };
    for (&bucket, part) in &plan.below {
        let start = append::bucket_prefix(&plan.name, plan.epoch, bucket);
        let end = crate::keys::prefix_end(&start).expect("a bucket prefix is not all 0xFF");
        let left = budget - removed.blocks as usize;
        let mut keys = Vec::new();
        let mut whole = true;
        for item in tables.append_blocks.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            if keys.len() == left {
                whole = false;
                break;
            }
            keys.push(item?.0.value().to_vec());
        }
        if whole {
            for key in &keys {
                let value = tables.append_blocks.remove(key.as_slice())?.expect("listed in this transaction");
                if let Some(dedup) = &plan.dedup {
                    append_keys::unindex_stored_block(&mut tables.append_keys, dedup, key, value.value())?;
                }
            }
            tables.digest_delta.clear_append_bucket(&plan.name, bucket);
            removed.rows += part.entries;
            removed.bytes += part.bytes;
        } else {
            for key in &keys {
                let value =
                    tables.append_blocks.remove(key.as_slice())?.expect("listed in this transaction").value().to_vec();
                if let Some(dedup) = &plan.dedup {
                    append_keys::unindex_stored_block(&mut tables.append_keys, dedup, key, &value)?;
                }
                let summary = super::append::summarize_block(key, &value)?;
                let bytes = key.len() + value.len();
                tables.digest_delta.append_block(&plan.name, bucket, summary.rows, &summary.xor, bytes, -1);
                removed.rows += summary.rows;
                removed.bytes += bytes as u64;
            }
        }
        removed.blocks += keys.len() as u64;
        if !whole {
            removed.all = false;
            break;
        }
    }
    Ok(removed)
}
