//! The maintained digest (`digest_v1`): for each *part* of the converged state — the
//! catalog, each of the 4096 anti-entropy heads buckets, each table's rows and each
//! table's conflicts — its entry count, stored bytes and the XOR of one blake3 hash per
//! entry, kept up to date in the write transaction that changes the entries.
//!
//! XOR makes a part's hash independent of order and lets a transaction add and remove
//! entries without reading any other entry: replacing an entry is "XOR out the old hash,
//! XOR in the new". So `state_digest` reads the parts (a few thousand small entries)
//! instead of hashing every row, and the heads tree is read instead of recomputed from
//! `doc_heads_v1`. The layout and the digest's definition are in `docs/design.md`
//! § "State digest"; `check_integrity` compares the stored parts with a recomputation.
//!
//! Writers record what they replace in a [`DigestDelta`] (no reads: redb's `insert` and
//! `remove` return the old value) and flush it once per transaction, so a batch touching
//! many rows of a table reads and writes that table's part once.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::digest::{heads_bucket, leaf_hash, xor_into};
use super::integrity::StateDigest;
use crate::error::{Corruption, StorageError};
use crate::keys;
use crate::storage;

/// Part kind: the resolved catalog (`catalog_v1`), one part.
const PART_CATALOG: u8 = 0;
/// Part kind: one heads-tree leaf bucket of `doc_heads_v1` (key ‖ u16 BE bucket).
const PART_HEADS: u8 = 1;
/// Part kind: one table's materialized rows (key ‖ encoded table name).
const PART_ROWS: u8 = 2;
/// Part kind: one table's recorded conflicts (key ‖ encoded table name).
const PART_CONFLICTS: u8 = 3;
/// Part kind: the rows of one bucket of an append-only table (key ‖ encoded table name ‖
/// order-preserving bucket start); entries are rows, the hash the XOR of their
/// `append::row_hash`es.
const PART_APPEND: u8 = 4;

/// Bytes of an encoded part: entries u64 LE ‖ bytes u64 LE ‖ 32-byte XOR.
const PART_VALUE_BYTES: usize = 48;

/// Label of the state digest; bumped whenever its definition changes.
pub(crate) const STATE_DIGEST_LABEL: &[u8] = b"edgestore.state.v2\0";

/// One part: how many entries it has, their key and value bytes, and the XOR of their
/// entry hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Part {
    pub entries: u64,
    pub bytes: u64,
    pub xor: [u8; 32],
}

impl Part {
    fn encode(&self) -> [u8; PART_VALUE_BYTES] {
        let mut out = [0u8; PART_VALUE_BYTES];
        out[..8].copy_from_slice(&self.entries.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        out[16..].copy_from_slice(&self.xor);
        debug_assert_eq!(self.entries == 0, self.bytes == 0 && self.xor == [0; 32], "an empty part counts nothing");
        out
    }

    fn decode(value: &[u8]) -> Result<Part, StorageError> {
        if value.len() != PART_VALUE_BYTES {
            return Err(StorageError::BadLength { table: "digest_v1", len: value.len() });
        }
        Ok(Part {
            entries: u64::from_le_bytes(value[..8].try_into().expect("length checked")),
            bytes: u64::from_le_bytes(value[8..16].try_into().expect("length checked")),
            xor: value[16..].try_into().expect("length checked"),
        })
    }

    fn add(&mut self, hash: &[u8; 32], bytes: usize) {
        self.entries += 1;
        self.bytes += bytes as u64;
        xor_into(&mut self.xor, hash);
    }
}

/// An entry's hash within its part: the domain names the table, so that equal keys and
/// values in two tables never cancel out.
fn entry_hash(domain: &[u8], key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

fn catalog_entry(key: &[u8], value: &[u8]) -> (Vec<u8>, [u8; 32]) {
    (vec![PART_CATALOG], entry_hash(b"edgestore.state.catalog.v2\0", key, value))
}

fn heads_entry(key: &[u8], value: &[u8]) -> Result<(Vec<u8>, [u8; 32]), StorageError> {
    // Only the heads: the tail length is how this replica happens to store the document.
    let (_, heads) = storage::decode_heads(value)?;
    let bucket = u16::try_from(heads_bucket(key)).expect("buckets fit 12 bits");
    let mut part = vec![PART_HEADS];
    part.extend_from_slice(&bucket.to_be_bytes());
    Ok((part, leaf_hash(key, heads)))
}

/// The part of a `rows_v1` or `conflicts_v1` entry: its kind and the table's encoded name.
fn table_part(kind: u8, row_key: &[u8]) -> Result<Vec<u8>, StorageError> {
    let (_, pk) = keys::decode_name(row_key).map_err(|source| Corruption::Key { table: "rows_v1", source })?;
    let mut part = vec![kind];
    part.extend_from_slice(&row_key[..row_key.len() - pk.len()]);
    Ok(part)
}

fn row_entry(key: &[u8], value: &[u8]) -> Result<(Vec<u8>, [u8; 32]), StorageError> {
    Ok((table_part(PART_ROWS, key)?, entry_hash(b"edgestore.state.row.v2\0", key, value)))
}

fn conflicts_entry(key: &[u8], value: &[u8]) -> Result<(Vec<u8>, [u8; 32]), StorageError> {
    Ok((table_part(PART_CONFLICTS, key)?, entry_hash(b"edgestore.state.conflicts.v2\0", key, value)))
}

/// The change to one part in the current transaction.
#[derive(Debug, Default)]
struct Delta {
    /// The part was emptied (its table cleared) before the changes below.
    reset: bool,
    entries: i64,
    bytes: i64,
    xor: [u8; 32],
}

/// The changes a write transaction made to the digest's parts, flushed to `digest_v1` by
/// [`DigestDelta::flush`] before the transaction commits.
#[derive(Debug, Default)]
pub(crate) struct DigestDelta {
    parts: BTreeMap<Vec<u8>, Delta>,
}

impl DigestDelta {
    fn record(&mut self, part: Vec<u8>, hash: &[u8; 32], bytes: usize, sign: i64) {
        debug_assert!(sign == 1 || sign == -1, "an entry is added or removed once");
        debug_assert!(matches!(part.first(), Some(&(PART_CATALOG..=PART_APPEND))), "a known part kind");
        let delta = self.parts.entry(part).or_default();
        delta.entries += sign;
        delta.bytes += sign * bytes as i64;
        xor_into(&mut delta.xor, hash);
    }

    fn replace(
        &mut self,
        entry: impl Fn(&[u8], &[u8]) -> Result<(Vec<u8>, [u8; 32]), StorageError>,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        if let Some(old) = old {
            let (part, hash) = entry(key, old)?;
            self.record(part, &hash, key.len() + old.len(), -1);
        }
        if let Some(new) = new {
            let (part, hash) = entry(key, new)?;
            self.record(part, &hash, key.len() + new.len(), 1);
        }
        Ok(())
    }

    /// A `catalog_v1` entry changed from `old` to `new` (`None`: absent).
    pub fn catalog(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<(), StorageError> {
        self.replace(|k, v| Ok(catalog_entry(k, v)), key, old, new)
    }

    /// A `doc_heads_v1` entry changed.
    pub fn heads(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<(), StorageError> {
        self.replace(heads_entry, key, old, new)
    }

    /// A `rows_v1` entry changed.
    pub fn row(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<(), StorageError> {
        self.replace(row_entry, key, old, new)
    }

    /// A `conflicts_v1` entry changed.
    pub fn conflicts(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<(), StorageError> {
        self.replace(conflicts_entry, key, old, new)
    }

    /// A block of `rows` rows whose hashes XOR to `xor` and whose key and value take
    /// `bytes` was added (`sign` 1) to or removed (-1) from bucket `bucket` of `table`.
    pub fn append_block(&mut self, table: &str, bucket: i64, rows: u64, xor: &[u8; 32], bytes: usize, sign: i64) {
        debug_assert!(sign == 1 || sign == -1, "a block is added or removed once");
        let delta = self.parts.entry(append_part(table, Some(bucket))).or_default();
        delta.entries += sign * rows as i64;
        delta.bytes += sign * bytes as i64;
        xor_into(&mut delta.xor, xor);
    }

    /// Every block of append-only table `table` was removed: its bucket parts in
    /// `digest` and those this transaction made are reset.
    pub fn clear_append_table(
        &mut self,
        digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
        table: &str,
    ) -> Result<(), StorageError> {
        let prefix = append_part(table, None);
        let end = keys::prefix_end(&prefix).expect("a part kind is not 0xFF");
        let mut parts: Vec<Vec<u8>> = self.parts.range(prefix.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
        for item in digest.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
            parts.push(item?.0.value().to_vec());
        }
        for part in parts {
            self.parts.insert(part, Delta { reset: true, ..Delta::default() });
        }
        Ok(())
    }

    /// Every block of bucket `bucket` of append-only table `table` was removed (by
    /// retention): its part is reset.
    pub fn clear_append_bucket(&mut self, table: &str, bucket: i64) {
        self.parts.insert(append_part(table, Some(bucket)), Delta { reset: true, ..Delta::default() });
    }

    /// Every row and conflict of the table whose `rows_v1` key prefix is `prefix` (its
    /// encoded name) was removed.
    pub fn clear_table(&mut self, prefix: &[u8]) {
        for kind in [PART_ROWS, PART_CONFLICTS] {
            let mut part = vec![kind];
            part.extend_from_slice(prefix);
            self.parts.insert(part, Delta { reset: true, ..Delta::default() });
        }
    }

    /// Applies the recorded changes to `digest_v1`; a part left without entries is removed.
    pub fn flush(&mut self, table: &mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StorageError> {
        for (key, delta) in std::mem::take(&mut self.parts) {
            let mut part = match (delta.reset, table.get(key.as_slice())?) {
                (false, Some(stored)) => Part::decode(stored.value())?,
                _ => Part::default(),
            };
            let entries = part.entries as i64 + delta.entries;
            let bytes = part.bytes as i64 + delta.bytes;
            if entries < 0 || bytes < 0 {
                return Err(Corruption::DigestNegative { key: key.clone() }.into());
            }
            part.entries = entries as u64;
            part.bytes = bytes as u64;
            xor_into(&mut part.xor, &delta.xor);
            if part.entries == 0 {
                if part != Part::default() {
                    return Err(Corruption::DigestNotZero { key: key.clone() }.into());
                }
                table.remove(key.as_slice())?;
            } else {
                table.insert(key.as_slice(), part.encode().as_slice())?;
            }
        }
        Ok(())
    }
}

/// How many rows table `name` has: its rows part's entry count, one read however many
/// rows there are (`SELECT count(*)` without a filter reads this).
pub(crate) fn stored_row_count(
    digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &str,
) -> Result<u64, StorageError> {
    let mut part = vec![PART_ROWS];
    part.extend_from_slice(&keys::row_key(name, &[]));
    Ok(match digest.get(part.as_slice())? {
        Some(value) => Part::decode(value.value())?.entries,
        None => 0,
    })
}

/// The part key of one bucket of an append-only table, or (`None`) the prefix of all.
fn append_part(table: &str, bucket: Option<i64>) -> Vec<u8> {
    let mut part = vec![PART_APPEND];
    keys::encode_name(table, &mut part);
    if let Some(bucket) = bucket {
        part.extend_from_slice(&crate::append::ordered(bucket));
    }
    part
}

/// How many rows append-only table `name` has: the sum over its bucket parts.
pub(crate) fn stored_append_row_count(
    digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &str,
) -> Result<u64, StorageError> {
    let prefix = append_part(name, None);
    let end = keys::prefix_end(&prefix).expect("a part kind is not 0xFF");
    let mut rows = 0;
    for item in digest.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
        rows += Part::decode(item?.1.value())?.entries;
    }
    Ok(rows)
}

/// The rows and bytes of each bucket of append-only table `name`, by bucket start: its
/// bucket parts, as stored.
pub(crate) fn append_buckets(
    digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &str,
) -> Result<BTreeMap<i64, Part>, StorageError> {
    let prefix = append_part(name, None);
    let end = keys::prefix_end(&prefix).expect("a part kind is not 0xFF");
    let mut buckets = BTreeMap::new();
    for item in digest.range::<&[u8]>(prefix.as_slice()..end.as_slice())? {
        let (key, value) = item?;
        let start: [u8; 8] =
            key.value()[prefix.len()..].try_into().map_err(|_| Corruption::KeyLength { table: "digest_v1 append" })?;
        buckets.insert(crate::append::unordered(start), Part::decode(value.value())?);
    }
    Ok(buckets)
}

/// Whether `part` is an append-only table's bucket below that table's entry in `floors`
/// (the no-time bucket never is).
pub(crate) fn append_part_below(part: &[u8], floors: &BTreeMap<String, i64>) -> bool {
    if part.first() != Some(&PART_APPEND) {
        return false;
    }
    let Ok((name, bucket)) = keys::decode_name(&part[1..]) else { return false };
    let Ok(bucket) = <[u8; 8]>::try_from(bucket) else { return false };
    let start = crate::append::unordered(bucket);
    start != crate::append::NO_TIME_BUCKET && floors.get(name).is_some_and(|floor| start < *floor)
}

/// The parts as stored in `digest_v1`, in key order.
pub(crate) fn stored_parts(
    digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<BTreeMap<Vec<u8>, Part>, StorageError> {
    let mut parts = BTreeMap::new();
    for item in digest.iter()? {
        let (key, value) = item?;
        parts.insert(key.value().to_vec(), Part::decode(value.value())?);
    }
    Ok(parts)
}

/// The parts recomputed from every entry of the four tables (for opening a store made
/// before `digest_v1` existed, and for checking the stored parts).
pub(crate) fn compute_parts(
    catalog: &impl ReadableTable<&'static [u8], &'static [u8]>,
    heads: &impl ReadableTable<&'static [u8], &'static [u8]>,
    rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
    conflicts: &impl ReadableTable<&'static [u8], &'static [u8]>,
    append_blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<BTreeMap<Vec<u8>, Part>, StorageError> {
    let mut parts = BTreeMap::<Vec<u8>, Part>::new();
    add_entries(&mut parts, catalog, |k, v| Ok(catalog_entry(k, v)))?;
    add_entries(&mut parts, heads, heads_entry)?;
    add_entries(&mut parts, rows, row_entry)?;
    add_entries(&mut parts, conflicts, conflicts_entry)?;
    for item in append_blocks.iter()? {
        let (key, value) = item?;
        let block = super::append::summarize_block(key.value(), value.value())?;
        let part = parts.entry(append_part(&block.table, Some(block.bucket))).or_default();
        part.entries += block.rows;
        part.bytes += (key.value().len() + value.value().len()) as u64;
        xor_into(&mut part.xor, &block.xor);
    }
    Ok(parts)
}

fn add_entries(
    parts: &mut BTreeMap<Vec<u8>, Part>,
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    entry: impl Fn(&[u8], &[u8]) -> Result<(Vec<u8>, [u8; 32]), StorageError>,
) -> Result<(), StorageError> {
    for item in table.iter()? {
        let (key, value) = item?;
        let (key, value) = (key.value(), value.value());
        let (part, hash) = entry(key, value)?;
        parts.entry(part).or_default().add(&hash, key.len() + value.len());
    }
    Ok(())
}

/// Writes freshly computed parts into an empty `digest_v1`.
pub(crate) fn store_parts(
    digest: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    parts: &BTreeMap<Vec<u8>, Part>,
) -> Result<(), StorageError> {
    for (key, part) in parts {
        digest.insert(key.as_slice(), part.encode().as_slice())?;
    }
    Ok(())
}

/// The state digest of a set of parts (see `docs/design.md` § "State digest").
pub(crate) fn state_digest_of(parts: &BTreeMap<Vec<u8>, Part>) -> StateDigest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(STATE_DIGEST_LABEL);
    for (key, part) in parts {
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key);
        hasher.update(&part.entries.to_le_bytes());
        hasher.update(&part.xor);
    }
    StateDigest(*hasher.finalize().as_bytes())
}

/// Reads the heads-tree leaves from `digest_v1` alone (4096 entries at most).
pub(crate) fn stored_heads_leaves(
    digest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    leaves: &mut [(u64, [u8; 32])],
) -> Result<(), StorageError> {
    for item in digest.range::<&[u8]>([PART_HEADS].as_slice()..[PART_HEADS + 1].as_slice())? {
        let (key, value) = item?;
        let key = key.value();
        let bucket = match key {
            [PART_HEADS, high, low] => usize::from(u16::from_be_bytes([*high, *low])),
            _ => return Err(Corruption::KeyLength { table: "digest_v1 heads" }.into()),
        };
        let slot = leaves.get_mut(bucket).ok_or(Corruption::DigestBucket { bucket })?;
        let part = Part::decode(value.value())?;
        *slot = (part.entries, part.xor);
    }
    Ok(())
}

/// A readable name of a part, for integrity reports.
pub(crate) fn describe_part(key: &[u8]) -> String {
    let name = || keys::decode_name(&key[1..]).map(|(n, _)| n.to_string()).unwrap_or_else(|_| "?".into());
    match key.first() {
        Some(&PART_CATALOG) => "catalog".into(),
        Some(&PART_HEADS) if key.len() == 3 => format!("heads bucket {:03x}", u16::from_be_bytes([key[1], key[2]])),
        Some(&PART_ROWS) => format!("rows of {}", name()),
        Some(&PART_CONFLICTS) => format!("conflicts of {}", name()),
        Some(&PART_APPEND) => match keys::decode_name(&key[1..]) {
            Ok((name, bucket)) if bucket.len() == 8 => {
                let start = crate::append::unordered(bucket.try_into().expect("8 bytes"));
                format!("rows of {name} in the bucket at {start}")
            }
            _ => format!("unknown append part {key:02x?}"),
        },
        _ => format!("unknown part {key:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let part = Part { entries: 3, bytes: 99, xor: [7; 32] };
        assert_eq!(Part::decode(&part.encode()).unwrap(), part);
        assert!(Part::decode(&[0; 47]).is_err());
    }

    #[test]
    fn replacing_an_entry_and_back_cancels_out() {
        let key = keys::row_key("t", &[1, 2]);
        let mut delta = DigestDelta::default();
        delta.row(&key, None, Some(b"a")).unwrap();
        delta.row(&key, Some(b"a"), Some(b"b")).unwrap();
        delta.row(&key, Some(b"b"), None).unwrap();
        let only = delta.parts.values().next().unwrap();
        assert_eq!((only.entries, only.bytes, only.xor), (0, 0, [0; 32]));
    }

    #[test]
    fn tables_have_separate_parts_and_describe_themselves() {
        let a = table_part(PART_ROWS, &keys::row_key("a", &[1])).unwrap();
        let b = table_part(PART_ROWS, &keys::row_key("b", &[1])).unwrap();
        assert_ne!(a, b);
        assert_eq!(describe_part(&a), "rows of a");
        assert_eq!(describe_part(&[PART_HEADS, 0x0f, 0xff]), "heads bucket fff");
        assert!(table_part(PART_ROWS, &[0, 9]).is_err(), "a truncated name is corrupt");
    }
}
