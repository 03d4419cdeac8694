//! The redb tables and the few helpers that read and write them.
//!
//! Only this module and the replica modules name redb. Table names carry a version suffix;
//! the key/value layout of each is in `docs/design.md`, which changes in the same commit as
//! any layout here.

use redb::{ReadableTable, TableDefinition};

use crate::error::StorageError;
use crate::types::NodeId;

/// The newest layout of the whole file, stored in `meta_v1` under [`META_FORMAT`]: format
/// 3 whose `doc_heads_v1` may describe a row document implicitly (a row only ever
/// inserted, rebuilt from its record: [`encode_implicit_heads`]). A store moves to it in
/// the transaction that stores its first implicit document; a format-3 build refuses it
/// (it would find no document for such a row).
pub const FORMAT_VERSION: u32 = 4;
/// Format 2 whose change log may start above seq 1 (`meta_v1` [`META_LOG_FLOOR`]). A
/// store moves to it in the transaction of its first log compaction; a format-2 build
/// refuses it (it would serve a log with a hole as if it were complete).
pub const FORMAT_VERSION_COMPACTED: u32 = 3;
/// A store whose log was never compacted and that holds no implicit document: new stores
/// start here, so that a build of format 2 still opens every store that does not need more.
pub const FORMAT_VERSION_UNCOMPACTED: u32 = 2;
/// The oldest layout: format 2 without `digest_v1`. Opening such a store builds
/// `digest_v1` and moves it to [`FORMAT_VERSION_UNCOMPACTED`] in one transaction.
pub const FORMAT_VERSION_WITHOUT_DIGEST: u32 = 1;

/// Small named values: format version, node id, the last announced version vector.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
/// Resolved catalog entries: encoded catalog document key → CBOR entry.
pub const CATALOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("catalog_v1");
/// Document snapshots (automerge `save`): document key → bytes. Absent until compacted.
pub const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_v1");
/// Changes applied after the snapshot: document key ‖ u32 BE position → change bytes.
pub const DOC_TAIL: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc_tail_v1");
/// Per document: u32 BE tail length ‖ sorted 32-byte heads. Present iff the doc exists.
pub const DOC_HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("doc_heads_v1");
/// Materialized live rows: name ‖ primary key → record.
pub const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows_v1");
/// Secondary-index entries: index name ‖ indexed values ‖ primary key → ().
pub const INDEXES: TableDefinition<&[u8], ()> = TableDefinition::new("index_v1");
/// Column conflicts of live rows: name ‖ primary key → CBOR `Vec<ColumnConflict>`.
pub const CONFLICTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("conflicts_v1");
/// The change log: origin ‖ seq BE → encoded envelope.
pub const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log_v1");
/// The version vector: origin → highest contiguous seq.
pub const VERSIONS: TableDefinition<&[u8], u64> = TableDefinition::new("versions_v1");
/// Changes waiting for dependencies: origin ‖ seq BE → encoded envelope.
pub const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending_v1");
/// The maintained state digest: part key → entries, bytes, XOR of entry hashes (see
/// `replica/digest_parts.rs`).
pub const DIGEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("digest_v1");
/// What each member of the cluster is known to hold: member → u64 BE last-heard ms ‖ CBOR
/// version vector (see `replica/holders.rs`).
pub const HOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("holders_v1");
/// The rows of append-only tables: name ‖ epoch u64 BE ‖ bucket start ‖ origin ‖ seq u64
/// BE ‖ part u16 BE → block (see `replica/append.rs`).
pub const APPEND_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("append_blocks_v1");
/// The range tombstones of append-only tables: name ‖ epoch u64 BE ‖ origin ‖ seq u64 BE
/// → tombstone payload, kept until its range lies below the table's floor (see
/// `replica/tombstones.rs`).
pub const APPEND_TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("append_tombstones_v1");
/// The deduplication keys of append-only tables that declare a `PRIMARY KEY`: name ‖
/// epoch u64 BE ‖ key tuple ‖ origin ‖ seq u64 BE ‖ pos u32 BE → bucket start of the
/// block holding the row (see `replica/append_keys.rs`).
pub const APPEND_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("append_keys_v1");

/// Node-local dead letters: u64 sequence → packed CBOR `DeadLetter` (not replicated,
/// not backed up; `replica/dead_letters.rs`).
pub const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters_v1");

/// `meta_v1` key of the format version (u32 BE).
pub const META_FORMAT: &str = "format_version";
/// `meta_v1` key of the node id (16 bytes).
pub const META_NODE_ID: &str = "node_id";
/// `meta_v1` key of the version vector at the last local change (CBOR).
pub const META_ANNOUNCED: &str = "announced_vector";
/// `meta_v1` key of the log floor (CBOR `VersionVector`): per origin, the highest seq
/// removed from `log_v1` by compaction. Absent until the first compaction.
pub const META_LOG_FLOOR: &str = "log_floor";
/// `meta_v1` key of the last causal-stability horizon (CBOR version vector).
pub const META_HORIZON: &str = "horizon";
/// `meta_v1` key of an unfinished state transfer's progress (CBOR `TransferProgress`).
pub const META_TRANSFER: &str = "transfer";
/// `meta_v1` key of the next insert counter of key-less tables (u64 BE; absent = 1).
pub const META_NEXT_ROW_N: &str = "next_row_n";
/// Prefix of `meta_v1` keys `foreign_values.<table>`: a row of the table materialized
/// since its last rebuild held values under ids outside its definition, so its next
/// `ALTER` rebuilds it (value: one byte).
pub const META_FOREIGN_VALUES_PREFIX: &str = "foreign_values.";

/// Prefix of `meta_v1` keys `append_floor.<table>`: an append-only table's floor and
/// expiry counts (packed CBOR `AppendFloor`, `replica/retention.rs`).
pub const META_APPEND_FLOOR_PREFIX: &str = "append_floor.";

/// `meta_v1` key of the generation of the append-only block layout (u64 BE; absent = 0),
/// raised by every re-split of a table's blocks (`replica/append.rs`).
pub const META_APPEND_LAYOUT: &str = "append_layout";

/// Creates every table, so later read transactions can open them unconditionally.
pub fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(META)?;
    txn.open_table(CATALOG)?;
    txn.open_table(DOCS)?;
    txn.open_table(DOC_TAIL)?;
    txn.open_table(DOC_HEADS)?;
    txn.open_table(ROWS)?;
    txn.open_table(INDEXES)?;
    txn.open_table(CONFLICTS)?;
    txn.open_table(LOG)?;
    txn.open_table(VERSIONS)?;
    txn.open_table(PENDING)?;
    txn.open_table(DIGEST)?;
    txn.open_table(HOLDERS)?;
    txn.open_table(APPEND_BLOCKS)?;
    txn.open_table(APPEND_TOMBSTONES)?;
    txn.open_table(APPEND_KEYS)?;
    txn.open_table(DEAD_LETTERS)?;
    Ok(())
}

/// Reads a value as an owned byte vector.
pub fn get_bytes(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

/// The key of a tail entry.
pub fn tail_key(doc_key: &[u8], position: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(doc_key.len() + 4);
    key.extend_from_slice(doc_key);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The format version recorded in `meta_v1`, `None` if absent or not 4 bytes.
pub fn stored_format(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<u32>, StorageError> {
    let format = meta.get(META_FORMAT)?.map(|v| v.value().to_vec());
    Ok(format.and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok()).map(u32::from_be_bytes))
}

/// Marks an implicit `doc_heads_v1` value in place of the tail length.
const IMPLICIT_FORM: u32 = 0x8000_0000;

/// Encodes a `doc_heads_v1` value of a document stored as snapshot and tail.
pub fn encode_heads(tail_len: u32, heads: &[[u8; 32]]) -> Vec<u8> {
    assert!(tail_len < IMPLICIT_FORM, "a tail length never reaches the implicit marker");
    let mut out = Vec::with_capacity(4 + heads.len() * 32);
    out.extend_from_slice(&tail_len.to_be_bytes());
    for head in heads {
        out.extend_from_slice(head);
    }
    out
}

/// How a row document that holds one insert change is described instead of stored: the
/// change's actor and time; its operations follow from the row's record and table
/// definition (`replica/implicit.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImplicitDoc {
    /// The change's one head (its hash).
    pub head: [u8; 32],
    /// The change's actor: the node that inserted the row.
    pub actor: NodeId,
    /// The change's time, ms since the Unix epoch.
    pub time_ms: i64,
}

/// Encodes the `doc_heads_v1` value of an implicit document: the marker, the head, the
/// actor and the time as a zigzag varint.
pub fn encode_implicit_heads(implicit: &ImplicitDoc) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 32 + 16 + 10);
    out.extend_from_slice(&IMPLICIT_FORM.to_be_bytes());
    out.extend_from_slice(&implicit.head);
    out.extend_from_slice(implicit.actor.as_bytes());
    crate::record::put_varint(crate::record::zigzag(implicit.time_ms), &mut out);
    debug_assert_eq!(decode_implicit(&out).ok().flatten(), Some(*implicit));
    out
}

/// The implicit description in a `doc_heads_v1` value, `None` if the document is stored.
pub fn decode_implicit(value: &[u8]) -> Result<Option<ImplicitDoc>, StorageError> {
    let bad = || StorageError::BadLength { table: "doc_heads_v1", len: value.len() };
    let marker = value.get(..4).ok_or_else(bad)?;
    if u32::from_be_bytes(marker.try_into().expect("4 bytes")) != IMPLICIT_FORM {
        return Ok(None);
    }
    let head: [u8; 32] = value.get(4..36).ok_or_else(bad)?.try_into().expect("32 bytes");
    let actor = value.get(36..52).and_then(NodeId::from_slice).ok_or_else(bad)?;
    let mut rest = &value[52..];
    let time = crate::record::take_varint(&mut rest).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(Some(ImplicitDoc { head, actor, time_ms: crate::record::unzigzag(time) }))
}

/// Decodes a `doc_heads_v1` value into the tail length and the heads bytes (an implicit
/// document has no tail and its one head).
pub fn decode_heads(value: &[u8]) -> Result<(u32, &[u8]), StorageError> {
    if let Some(_implicit) = decode_implicit(value)? {
        return Ok((0, &value[4..36]));
    }
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(32) {
        return Err(StorageError::BadLength { table: "doc_heads_v1", len: value.len() });
    }
    let tail_len = u32::from_be_bytes(value[..4].try_into().expect("length checked"));
    Ok((tail_len, &value[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn implicit(time_ms: i64) -> ImplicitDoc {
        ImplicitDoc { head: [7; 32], actor: NodeId([3; 16]), time_ms }
    }

    #[test]
    fn implicit_heads_round_trip_and_read_as_one_head_without_a_tail() {
        for time_ms in [0, 1, -1, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let value = encode_implicit_heads(&implicit(time_ms));
            assert_eq!(decode_implicit(&value).unwrap(), Some(implicit(time_ms)));
            assert_eq!(decode_heads(&value).unwrap(), (0, [7u8; 32].as_slice()));
        }
        let stored = encode_heads(3, &[[1; 32], [2; 32]]);
        assert_eq!(decode_implicit(&stored).unwrap(), None, "a stored document's entry is not implicit");
        assert_eq!(decode_heads(&stored).unwrap().0, 3);
    }

    #[test]
    fn a_damaged_implicit_entry_is_a_clear_error() {
        let value = encode_implicit_heads(&implicit(1_700_000_000_000));
        for len in 0..value.len() {
            let cut = &value[..len];
            if len >= 4 {
                assert!(decode_implicit(cut).is_err(), "{len} bytes");
            }
            assert!(decode_heads(cut).is_err(), "{len} bytes");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode_implicit(&longer).is_err(), "trailing bytes");
        let mut overlong = value[..52].to_vec();
        overlong.extend_from_slice(&[0x80; 11]);
        assert!(decode_implicit(&overlong).is_err(), "a varint of more than 10 bytes");
    }
}
