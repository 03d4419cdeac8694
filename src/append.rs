//! The formats of append-only tables (docs/design.md § Append-only tables and retention):
//! the batch of rows an envelope carries for one table (operation kind `0x03`), the
//! range tombstone a `DELETE` writes (kind `0x04`), the block `append_blocks_v1` stores
//! rows in, and the hash a row adds to the state digest.
//!
//! A row's identity is `(origin, seq, pos)`: the envelope that carried it and its position
//! in that envelope's batch. Rows are immutable, so two replicas merge by union; nothing
//! here depends on how rows are split into blocks, which each node decides under the
//! table's current definition.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{self, CodecError};
use crate::keys::{self, KeyError};
use crate::record::{self, RecordError};
use crate::schema::{is_column_id, COLUMNS_MAX, NAME_BYTES_MAX};
use crate::types::{NodeId, Value};
use crate::version_vector::VersionVector;

/// Document-key kind of an append batch: `0x03 ‖ table name ‖ epoch u64 BE`.
pub const APPEND_KEY_KIND: u8 = 3;
/// First byte of an append batch's payload: its format.
pub const APPEND_PAYLOAD_VERSION: u8 = 1;
/// Most rows one batch may carry.
pub const APPEND_ROWS_MAX: usize = crate::change::CHANGE_DOCS_MAX;
/// Bytes of a column id on the wire and in blocks (its 12 hex digits as bytes).
const COLUMN_ID_BYTES: usize = 6;
/// The bucket of rows that have no time under the table's definition: those of a table
/// without a time column, and rows written under a definition whose time column the
/// current one does not have.
pub const NO_TIME_BUCKET: i64 = i64::MIN;

/// The start of the `width`-wide bucket that holds time `ts`: the greatest multiple of
/// the width not above it. A start below `i64::MIN + 1` (times within one bucket of the
/// lowest `i64`) is clamped to `i64::MIN + 1`, so it never overflows and never lands in
/// [`NO_TIME_BUCKET`]; a row's time may then lie below its bucket's start, which the
/// block's zigzag delta holds.
pub fn bucket_of(ts: i64, width: i64) -> i64 {
    debug_assert!(width >= 1, "a bucket is at least one unit wide");
    ts.checked_sub(ts.rem_euclid(width)).filter(|start| *start > NO_TIME_BUCKET).unwrap_or(NO_TIME_BUCKET + 1)
}

/// Rows appended to one incarnation of a table by one envelope, verified: the column ids
/// are distinct ids and every row has one value per column.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendBatch {
    /// The table.
    pub table: String,
    /// The table's incarnation (its causal length when created; odd).
    pub epoch: u64,
    /// The ids of the columns the rows are written under, in record order.
    pub columns: Vec<String>,
    /// The rows, one value per column each; a row's position here is part of its identity.
    pub rows: Vec<Vec<Value>>,
}

/// Why an append batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendFault {
    /// The operation key is not `0x03 ‖ name ‖ epoch`.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The payload's first byte is not a format this build reads.
    #[error("append batch format {0} is not supported")]
    Version(u8),
    /// The payload is not the batch's CBOR.
    #[error(transparent)]
    Cbor(#[from] CodecError),
    /// No column, too many, or a malformed or repeated id.
    #[error("an append batch names 1 to {COLUMNS_MAX} distinct column ids")]
    Columns,
    /// No row, or more than [`APPEND_ROWS_MAX`].
    #[error("an append batch holds 1 to {APPEND_ROWS_MAX} rows")]
    RowCount,
    /// A row's record does not decode.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A row has another number of values than the batch has columns.
    #[error("a row of {values} values in a batch of {columns} columns")]
    RowWidth {
        /// Values in the row.
        values: usize,
        /// Columns of the batch.
        columns: usize,
    },
    /// A transferred block's rows repeat a position, or lie outside a batch's positions.
    #[error("a transferred block repeats a row position or has one past {APPEND_ROWS_MAX}")]
    Positions,
    /// A transferred block or tombstone names an envelope (or, a tombstone, a vector)
    /// the transfer batch's vector does not hold.
    #[error("a transferred block or tombstone of an envelope the batch's vector does not hold")]
    NotInVector,
    /// A range tombstone's range holds no time (`lo ≥ hi`).
    #[error("a range tombstone's range is empty")]
    EmptyRange,
    /// A range tombstone's vector is not sorted distinct origins with seqs ≥ 1, or too long.
    #[error("a range tombstone's vector is malformed")]
    Vector,
}

/// The payload's CBOR, fields by position.
#[derive(Serialize, Deserialize)]
struct AppendWire {
    /// Column ids, 6 bytes each.
    columns: Vec<ByteBuf>,
    /// The row count, so a receiver can bound the decode before reading records.
    count: u64,
    /// The rows as records laid end to end.
    rows: ByteBuf,
}

impl AppendBatch {
    /// The operation key: `0x03 ‖ table name ‖ epoch u64 BE`.
    pub fn key(&self) -> Vec<u8> {
        op_key(APPEND_KEY_KIND, &self.table, self.epoch)
    }

    /// The payload: `0x01 ‖ packed CBOR { columns, count, rows }`.
    pub fn payload(&self) -> Vec<u8> {
        debug_assert!(self.rows.iter().all(|r| r.len() == self.columns.len()), "one value per column");
        encode_payload(&self.columns, &self.rows)
    }

    /// Decodes and verifies an operation of kind `0x03`.
    pub fn decode(key: &[u8], payload: &[u8]) -> Result<AppendBatch, AppendFault> {
        let (table, epoch) = decode_key(key, APPEND_KEY_KIND)?;
        let (&version, body) = payload.split_first().ok_or(AppendFault::Version(0))?;
        if version != APPEND_PAYLOAD_VERSION {
            return Err(AppendFault::Version(version));
        }
        let wire: AppendWire = codec::decode(body)?;
        if wire.columns.is_empty() || wire.columns.len() > COLUMNS_MAX {
            return Err(AppendFault::Columns);
        }
        let columns = wire.columns.iter().map(|b| column_id_hex(b)).collect::<Option<Vec<_>>>();
        let columns = columns.ok_or(AppendFault::Columns)?;
        let mut sorted: Vec<&String> = columns.iter().collect();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(AppendFault::Columns);
        }
        // Each record takes at least two bytes: a count that the bytes cannot hold is a lie.
        let count = usize::try_from(wire.count).map_err(|_| AppendFault::RowCount)?;
        if count == 0 || count > APPEND_ROWS_MAX || count > wire.rows.len() / 2 {
            return Err(AppendFault::RowCount);
        }
        let mut input = wire.rows.as_slice();
        let mut rows = Vec::with_capacity(count);
        while !input.is_empty() {
            let row = record::decode_front(&mut input)?;
            if row.len() != columns.len() {
                return Err(AppendFault::RowWidth { values: row.len(), columns: columns.len() });
            }
            rows.push(row);
            if rows.len() > count {
                return Err(AppendFault::RowCount);
            }
        }
        if rows.len() != count {
            return Err(AppendFault::RowCount);
        }
        Ok(AppendBatch { table, epoch, columns, rows })
    }
}

/// Document-key kind of a range tombstone: `0x04 ‖ table name ‖ epoch u64 BE`.
pub const TOMBSTONE_KEY_KIND: u8 = 4;
/// First byte of a range tombstone's payload: its format.
pub const TOMBSTONE_PAYLOAD_VERSION: u8 = 1;
/// Most origins a tombstone's vector may name (as many as an envelope's dependencies).
const TOMBSTONE_ORIGINS_MAX: usize = crate::change::CHANGE_DEPS_MAX;

/// A range `DELETE` on one incarnation of an append-only table, verified: it removes the
/// rows whose value under column `column` lies in `[lo, hi)` and whose envelope the
/// deleting node held when it deleted (`seq ≤ vector[origin]`). Observed-remove: a row
/// written concurrently with the delete is never removed by it, and the set of rows that
/// remain is the same in every order of arrival (docs/design.md § Identity and merge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeTombstone {
    /// The table.
    pub table: String,
    /// The table's incarnation (odd).
    pub epoch: u64,
    /// The id of the time column the range is of, when the delete was written: a row is
    /// judged by its own value under that id, whatever the table's definition is now.
    /// `None` only for a delete of every row (no bounds), which needs no time.
    pub column: Option<String>,
    /// The lowest time removed; `None`: unbounded.
    pub lo: Option<i64>,
    /// The time just above the range (exclusive); `None`: unbounded.
    pub hi: Option<i64>,
    /// What the deleting node held: per origin, the highest seq whose rows are removed.
    pub vector: VersionVector,
}

/// The tombstone payload's CBOR, fields by position.
#[derive(Serialize, Deserialize)]
struct TombstoneWire {
    /// The time column's id, 6 bytes; absent only without bounds.
    column: Option<ByteBuf>,
    lo: Option<i64>,
    hi: Option<i64>,
    /// `(origin, seq)` sorted by origin, each seq ≥ 1.
    vector: Vec<(ByteBuf, u64)>,
}

impl RangeTombstone {
    /// The operation key: `0x04 ‖ table name ‖ epoch u64 BE`.
    pub fn key(&self) -> Vec<u8> {
        op_key(TOMBSTONE_KEY_KIND, &self.table, self.epoch)
    }

    /// The payload: `0x01 ‖ packed CBOR { column, lo, hi, vector }`.
    pub fn payload(&self) -> Vec<u8> {
        debug_assert!(self.lo.zip(self.hi).is_none_or(|(lo, hi)| lo < hi), "a tombstone's range is not empty");
        let wire = TombstoneWire {
            column: self.column.as_deref().map(|id| ByteBuf::from(column_id_bytes(id))),
            lo: self.lo,
            hi: self.hi,
            vector: self.vector.iter().map(|(n, s)| (ByteBuf::from(n.as_bytes().to_vec()), s)).collect(),
        };
        let mut out = vec![TOMBSTONE_PAYLOAD_VERSION];
        out.extend(codec::encode(&wire));
        out
    }

    /// Decodes and verifies an operation of kind `0x04`.
    pub fn decode(key: &[u8], payload: &[u8]) -> Result<RangeTombstone, AppendFault> {
        let (table, epoch) = decode_key(key, TOMBSTONE_KEY_KIND)?;
        let (&version, body) = payload.split_first().ok_or(AppendFault::Version(0))?;
        if version != TOMBSTONE_PAYLOAD_VERSION {
            return Err(AppendFault::Version(version));
        }
        let wire: TombstoneWire = codec::decode(body)?;
        let column = match &wire.column {
            Some(bytes) => Some(column_id_hex(bytes).ok_or(AppendFault::Columns)?),
            None if wire.lo.is_none() && wire.hi.is_none() => None,
            None => return Err(AppendFault::Columns),
        };
        if wire.lo.zip(wire.hi).is_some_and(|(lo, hi)| lo >= hi) {
            return Err(AppendFault::EmptyRange);
        }
        if wire.vector.len() > TOMBSTONE_ORIGINS_MAX {
            return Err(AppendFault::Vector);
        }
        let mut vector = VersionVector::new();
        let mut previous: Option<NodeId> = None;
        for (origin, seq) in &wire.vector {
            let origin = NodeId::from_slice(origin).ok_or(AppendFault::Vector)?;
            if *seq == 0 || previous.is_some_and(|p| p >= origin) {
                return Err(AppendFault::Vector);
            }
            previous = Some(origin);
            vector.set(origin, *seq);
        }
        Ok(RangeTombstone { table, epoch, column, lo: wire.lo, hi: wire.hi, vector })
    }

    /// Whether the tombstone removes the row `(origin, seq)` whose time under
    /// [`RangeTombstone::column`] is `time` (`None`: the row has no such value).
    pub fn removes(&self, origin: NodeId, seq: u64, time: Option<i64>) -> bool {
        self.covers(origin, seq) && (self.is_whole() || time.is_some_and(|t| self.holds(t)))
    }

    /// Whether the tombstone has no bounds: it removes every row it covers, with a time
    /// or without.
    pub fn is_whole(&self) -> bool {
        self.lo.is_none() && self.hi.is_none()
    }

    /// Whether the envelope `(origin, seq)` is one the deleting node held.
    pub fn covers(&self, origin: NodeId, seq: u64) -> bool {
        seq <= self.vector.seq(origin)
    }

    /// Whether time `t` lies in the range.
    pub fn holds(&self, t: i64) -> bool {
        self.lo.is_none_or(|lo| lo <= t) && self.hi.is_none_or(|hi| t < hi)
    }

    /// Whether every row this tombstone removes, `other` removes too (its range holds
    /// this one's and its vector dominates): this one is then redundant.
    pub fn subsumed_by(&self, other: &RangeTombstone) -> bool {
        let lo_within = match (other.lo, self.lo) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a <= b,
        };
        let hi_within = match (other.hi, self.hi) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a,
        };
        let range_within = other.is_whole() || (self.column == other.column && lo_within && hi_within);
        (self.table.as_str(), self.epoch) == (other.table.as_str(), other.epoch)
            && range_within
            && other.vector.dominates(&self.vector)
    }
}

/// Whether an operation key is of a range tombstone (kind `0x04`).
pub fn is_tombstone_key(key: &[u8]) -> bool {
    key.first() == Some(&TOMBSTONE_KEY_KIND)
}

/// The payload of rows under columns, unchecked (tests build malformed ones with it).
fn encode_payload(columns: &[String], rows: &[Vec<Value>]) -> Vec<u8> {
    let mut records = Vec::new();
    for row in rows {
        records.extend(record::encode(row));
    }
    let wire = AppendWire {
        columns: columns.iter().map(|id| ByteBuf::from(column_id_bytes(id))).collect(),
        count: rows.len() as u64,
        rows: ByteBuf::from(records),
    };
    let mut out = vec![APPEND_PAYLOAD_VERSION];
    out.extend(codec::encode(&wire));
    out
}

/// An operation key of an append-only table: `kind ‖ table name ‖ epoch u64 BE`.
pub fn op_key(kind: u8, table: &str, epoch: u64) -> Vec<u8> {
    let mut out = vec![kind];
    keys::encode_name(table, &mut out);
    out.extend_from_slice(&epoch.to_be_bytes());
    out
}

/// Whether an operation key is of an append batch (kind `0x03`).
pub fn is_append_key(key: &[u8]) -> bool {
    key.first() == Some(&APPEND_KEY_KIND)
}

fn decode_key(key: &[u8], kind: u8) -> Result<(String, u64), KeyError> {
    let rest = match key.split_first() {
        Some((&first, rest)) if first == kind => rest,
        _ => return Err(KeyError("not an append batch or tombstone key of this kind")),
    };
    let (name, rest) = keys::decode_name(rest)?;
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(KeyError("bad name length"));
    }
    let epoch = <[u8; 8]>::try_from(rest).map_err(|_| KeyError("an append key ends in an 8-byte epoch"))?;
    let epoch = u64::from_be_bytes(epoch);
    if epoch % 2 == 0 {
        return Err(KeyError("a table epoch is odd"));
    }
    Ok((name.to_string(), epoch))
}

fn column_id_bytes(id: &str) -> Vec<u8> {
    debug_assert!(is_column_id(id), "column ids are 12 hex digits");
    hex::decode(id).expect("a column id is hex")
}

fn column_id_hex(bytes: &[u8]) -> Option<String> {
    (bytes.len() == COLUMN_ID_BYTES).then(|| hex::encode(bytes))
}

/// The hash a row adds to its table's digest part: of its identity, the ids it was
/// written under and its values, so it does not depend on how rows are split into blocks.
pub(crate) fn row_hash(origin: NodeId, seq: u64, pos: u32, columns: &[String], values: &[Value]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"edgestore.state.append.v1\0");
    hasher.update(origin.as_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(&pos.to_le_bytes());
    hasher.update(&(columns.len() as u32).to_le_bytes());
    for id in columns {
        hasher.update(id.as_bytes());
    }
    hasher.update(&record::encode(values));
    *hasher.finalize().as_bytes()
}

/// The `append_blocks_v1` key of a block: name ‖ epoch u64 BE ‖ bucket start
/// (order-preserving) ‖ origin ‖ seq u64 BE ‖ part u16 BE.
pub(crate) fn block_key(table: &str, epoch: u64, bucket: i64, origin: NodeId, seq: u64, part: u16) -> Vec<u8> {
    let mut key = bucket_prefix(table, epoch, bucket);
    key.extend_from_slice(origin.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// The key prefix of a table's blocks: name (and with `epoch`, one incarnation's).
pub(crate) fn table_prefix(table: &str, epoch: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(table.len() + 12);
    keys::encode_name(table, &mut key);
    if let Some(epoch) = epoch {
        key.extend_from_slice(&epoch.to_be_bytes());
    }
    key
}

/// The key prefix of one bucket's blocks.
pub(crate) fn bucket_prefix(table: &str, epoch: u64, bucket: i64) -> Vec<u8> {
    let mut key = table_prefix(table, Some(epoch));
    key.extend_from_slice(&ordered(bucket));
    key
}

/// An `i64` as 8 bytes whose byte order is its numeric order.
pub(crate) fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`ordered`].
pub(crate) fn unordered(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// The parts of a block key after the table's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockKey {
    pub epoch: u64,
    pub bucket: i64,
    pub origin: NodeId,
    pub seq: u64,
}

/// Decodes a block key: the table's name and the rest.
pub(crate) fn decode_block_key(key: &[u8]) -> Result<(&str, BlockKey), KeyError> {
    let (name, rest) = keys::decode_name(key)?;
    if rest.len() != 8 + 8 + 16 + 8 + 2 {
        return Err(KeyError("an append block key has epoch, bucket, origin, seq and part"));
    }
    let u64_at = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().expect("length checked"));
    let bucket = unordered(rest[8..16].try_into().expect("length checked"));
    let origin = NodeId::from_slice(&rest[16..32]).expect("16 bytes");
    Ok((name, BlockKey { epoch: u64_at(0), bucket, origin, seq: u64_at(32) }))
}

/// How a block holds its rows' time: the position of the time column among the block's
/// columns and whether its values are `TIMESTAMP`s (else `INTEGER`s). Each row stores its
/// time as a delta from the bucket's start and its other values as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockTime {
    pub column: usize,
    pub timestamp: bool,
}

/// The rows of one block.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Block {
    /// The column ids the rows are written under.
    pub columns: Vec<String>,
    /// How the block holds its rows' time (`None`: the no-time bucket's block).
    pub time: Option<BlockTime>,
    /// Each row's position in its batch and its values, one per column.
    pub rows: Vec<(u32, Vec<Value>)>,
}

/// Encodes a block: varint column count ‖ ids ‖ varint time (0: none, else
/// `2 × (column + 1) + timestamp`) ‖ varint row count ‖ per row: varint pos, with a time
/// the zigzag varint of time − `bucket`, the record of the other values.
pub(crate) fn encode_block(
    columns: &[String],
    time: Option<BlockTime>,
    bucket: i64,
    rows: &[(u32, &[Value])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + rows.len() * 16);
    record::put_varint(columns.len() as u64, &mut out);
    for id in columns {
        out.extend(column_id_bytes(id));
    }
    record::put_varint(time.map_or(0, |t| 2 * (t.column as u64 + 1) + u64::from(t.timestamp)), &mut out);
    record::put_varint(rows.len() as u64, &mut out);
    let mut rest = Vec::with_capacity(columns.len());
    for (pos, values) in rows {
        debug_assert_eq!(values.len(), columns.len(), "one value per column");
        record::put_varint(u64::from(*pos), &mut out);
        rest.clear();
        match time {
            Some(t) => {
                let ts =
                    time_of(&values[t.column], t.timestamp).expect("bucketed rows have a time of the column's type");
                record::put_varint(record::zigzag(ts.wrapping_sub(bucket)), &mut out);
                rest.extend(values.iter().enumerate().filter(|(i, _)| *i != t.column).map(|(_, v)| v.clone()));
            }
            None => rest.extend_from_slice(values),
        }
        out.extend(record::encode(&rest));
    }
    out
}

/// The time of a row's value in a time column: a `TIMESTAMP` column's values are
/// timestamps, an `INTEGER` one's integers; anything else (NULL, another type) has none.
pub(crate) fn time_of(value: &Value, timestamp: bool) -> Option<i64> {
    match (value, timestamp) {
        (Value::Timestamp(ts), true) | (Value::Integer(ts), false) => Some(*ts),
        _ => None,
    }
}

/// Decodes a block whose bucket starts at `bucket`; bytes from disk are checked.
pub(crate) fn decode_block(bytes: &[u8], bucket: i64) -> Result<Block, RecordError> {
    let mut input = bytes;
    let ncols = usize::try_from(record::take_varint(&mut input)?).map_err(|_| RecordError("column count"))?;
    if ncols == 0 || ncols > COLUMNS_MAX || input.len() < ncols * COLUMN_ID_BYTES {
        return Err(RecordError("a block's column count"));
    }
    let (ids, rest) = input.split_at(ncols * COLUMN_ID_BYTES);
    input = rest;
    let columns: Vec<String> = ids.chunks(COLUMN_ID_BYTES).map(hex::encode).collect();
    let time = match record::take_varint(&mut input)? {
        0 => None,
        t => {
            let column = (t / 2).checked_sub(1).and_then(|c| usize::try_from(c).ok());
            let column = column.ok_or(RecordError("a block's time column"))?;
            if column >= ncols {
                return Err(RecordError("a block's time column is not one of its columns"));
            }
            Some(BlockTime { column, timestamp: t % 2 == 1 })
        }
    };
    let count = record::take_varint(&mut input)?;
    if count > input.len() as u64 {
        return Err(RecordError("a block's row count exceeds its length"));
    }
    let mut rows = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let pos = u32::try_from(record::take_varint(&mut input)?).map_err(|_| RecordError("row position"))?;
        let values = match time {
            Some(t) => {
                let ts = bucket.wrapping_add(record::unzigzag(record::take_varint(&mut input)?));
                let mut values = record::decode_front(&mut input)?;
                if values.len() + 1 != ncols {
                    return Err(RecordError("a block row's width"));
                }
                values.insert(t.column, if t.timestamp { Value::Timestamp(ts) } else { Value::Integer(ts) });
                values
            }
            None => record::decode_front(&mut input)?,
        };
        if values.len() != ncols {
            return Err(RecordError("a block row's width"));
        }
        rows.push((pos, values));
    }
    if !input.is_empty() {
        return Err(RecordError("trailing bytes after a block's rows"));
    }
    Ok(Block { columns, time, rows })
}

/// The row count a block's header gives, read without decoding its rows (bytes from
/// disk are checked as far as they are read).
pub(crate) fn block_row_count(bytes: &[u8]) -> Result<u64, RecordError> {
    let mut input = bytes;
    let ncols = usize::try_from(record::take_varint(&mut input)?).map_err(|_| RecordError("column count"))?;
    if ncols == 0 || ncols > COLUMNS_MAX || input.len() < ncols * COLUMN_ID_BYTES {
        return Err(RecordError("a block's column count"));
    }
    input = &input[ncols * COLUMN_ID_BYTES..];
    record::take_varint(&mut input)?;
    record::take_varint(&mut input)
}

/// The `append_tombstones_v1` key of a tombstone: name ‖ epoch u64 BE ‖ origin ‖ seq u64
/// BE (one tombstone per table incarnation per envelope).
pub(crate) fn tombstone_key(table: &str, epoch: u64, origin: NodeId, seq: u64) -> Vec<u8> {
    let mut key = table_prefix(table, Some(epoch));
    key.extend_from_slice(origin.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Decodes a stored tombstone from its `append_tombstones_v1` key and value (its
/// payload): the tombstone and the envelope that wrote it.
pub(crate) fn decode_stored_tombstone(key: &[u8], value: &[u8]) -> Result<(RangeTombstone, NodeId, u64), AppendFault> {
    let (name, rest) = keys::decode_name(key)?;
    if rest.len() != 8 + 16 + 8 {
        return Err(KeyError("a tombstone key has epoch, origin and seq").into());
    }
    let epoch = u64::from_be_bytes(rest[..8].try_into().expect("length checked"));
    let origin = NodeId::from_slice(&rest[8..24]).expect("16 bytes");
    let seq = u64::from_be_bytes(rest[24..].try_into().expect("length checked"));
    Ok((RangeTombstone::decode(&op_key(TOMBSTONE_KEY_KIND, name, epoch), value)?, origin, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::column_id;
    use crate::types::ColumnType;

    fn batch() -> AppendBatch {
        let columns = vec![column_id("sensor", ColumnType::Integer), column_id("ts", ColumnType::Timestamp)];
        let rows = (0..5).map(|i| vec![Value::Integer(i), Value::Timestamp(1_700_000_000_000 + i)]).collect();
        AppendBatch { table: "readings".into(), epoch: 1, columns, rows }
    }

    #[test]
    fn batches_round_trip_and_refuse_what_is_malformed() {
        let b = batch();
        assert_eq!(AppendBatch::decode(&b.key(), &b.payload()), Ok(b.clone()));
        let payload = b.payload();
        for len in 0..payload.len() {
            assert!(AppendBatch::decode(&b.key(), &payload[..len]).is_err(), "cut at {len}");
        }
        let mut even = b.key();
        *even.last_mut().unwrap() = 2;
        assert!(matches!(AppendBatch::decode(&even, &payload), Err(AppendFault::Key(_))));
        let mut twice = b.clone();
        twice.columns[1] = twice.columns[0].clone();
        assert_eq!(AppendBatch::decode(&b.key(), &twice.payload()), Err(AppendFault::Columns));
        let mut columns = b.columns.clone();
        columns.push(column_id("x", ColumnType::Real));
        let wide_payload = encode_payload(&columns, &b.rows);
        assert!(matches!(AppendBatch::decode(&b.key(), &wide_payload), Err(AppendFault::RowWidth { .. })));
        let mut wrong_version = payload.clone();
        wrong_version[0] = 9;
        assert_eq!(AppendBatch::decode(&b.key(), &wrong_version), Err(AppendFault::Version(9)));
    }

    #[test]
    fn blocks_round_trip_with_and_without_a_time_column() {
        let b = batch();
        let rows: Vec<(u32, &[Value])> = b.rows.iter().enumerate().map(|(i, r)| (i as u32 * 2, r.as_slice())).collect();
        let bucket = 1_699_999_200_000;
        for time in [None, Some(BlockTime { column: 1, timestamp: true })] {
            let bytes = encode_block(&b.columns, time, bucket, &rows);
            let block = decode_block(&bytes, bucket).unwrap();
            assert_eq!(block.columns, b.columns);
            let back: Vec<(u32, &[Value])> = block.rows.iter().map(|(p, v)| (*p, v.as_slice())).collect();
            assert_eq!(back, rows);
            for len in 0..bytes.len() {
                assert!(decode_block(&bytes[..len], bucket).is_err(), "cut at {len}");
            }
        }
    }

    #[test]
    fn buckets_never_overflow_nor_reach_the_no_time_bucket() {
        assert_eq!(bucket_of(7_200_001, 3_600_000), 7_200_000);
        assert_eq!(bucket_of(-1, 3_600_000), -3_600_000);
        assert_eq!(bucket_of(i64::MAX, 3_600_000), i64::MAX - i64::MAX % 3_600_000);
        // Buckets are aligned to 0: the lowest whole one starts at -9223372036854000000.
        let lowest = -9_223_372_036_854_000_000;
        assert_eq!(bucket_of(lowest, 3_600_000), lowest);
        for ts in [i64::MIN, i64::MIN + 1, lowest - 1] {
            assert_eq!(bucket_of(ts, 3_600_000), NO_TIME_BUCKET + 1, "{ts}");
        }
        assert_eq!(bucket_of(i64::MIN, 1), NO_TIME_BUCKET + 1);
    }

    #[test]
    fn block_keys_order_by_bucket_and_decode() {
        let origin = NodeId([7; 16]);
        let a = block_key("t", 1, -5, origin, 9, 0);
        let b = block_key("t", 1, 3, origin, 1, 0);
        assert!(a < b, "buckets order numerically, negative first");
        let (name, key) = decode_block_key(&b).unwrap();
        assert_eq!((name, key), ("t", BlockKey { epoch: 1, bucket: 3, origin, seq: 1 }));
        assert!(decode_block_key(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn row_hashes_depend_on_identity_and_values() {
        let b = batch();
        let origin = NodeId([1; 16]);
        let h = row_hash(origin, 1, 0, &b.columns, &b.rows[0]);
        assert_ne!(h, row_hash(origin, 1, 1, &b.columns, &b.rows[0]));
        assert_ne!(h, row_hash(origin, 2, 0, &b.columns, &b.rows[0]));
        assert_ne!(h, row_hash(origin, 1, 0, &b.columns, &b.rows[1]));
        assert_eq!(h, row_hash(origin, 1, 0, &b.columns, &b.rows[0].clone()));
    }
}
