//! The state digest and the integrity check.
//!
//! `state_digest` hashes the canonical converged state: the resolved catalog, every
//! document's heads, every materialized row and every recorded conflict, summarised per
//! part in the maintained `digest_v1` (see `digest_parts.rs`). Two replicas have equal
//! digests exactly when they hold the same changes and derive the same data from them.
//! `check_integrity` re-derives everything derived — catalog, rows, indexes, conflicts,
//! version vector, the digest's parts — from the documents and the log, and reports every
//! mismatch (the slow path checking the fast path).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;

use automerge::AutoCommit;
use lru::LruCache;
use redb::{ReadableDatabase, ReadableTable};

use super::materialize::{index_entry_key, materialize_row};
use super::{compact, digest_parts, load_working_doc, read, Replica, Snapshot};
use crate::catalog::{self, Catalog};
use crate::change::{DocKey, VerifiedChange};
use crate::codec;
use crate::doc;
use crate::error::StorageError;
use crate::keys;
use crate::storage;
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// A blake3 digest of a replica's converged state.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateDigest(pub [u8; 32]);

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateDigest({self})")
    }
}

/// One thing `check_integrity` found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityProblem {
    /// A document cannot be loaded or its stored heads are wrong.
    Document {
        /// The document.
        doc: String,
        /// What is wrong.
        problem: String,
    },
    /// A stored catalog entry differs from its document.
    Catalog {
        /// The table or index.
        object: String,
        /// What is wrong.
        problem: String,
    },
    /// A materialized row or its conflicts differ from its document.
    Row {
        /// The table.
        table: String,
        /// The primary key, displayed.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// An index entry is missing or has no row.
    Index {
        /// The index.
        index: String,
        /// What is wrong.
        problem: String,
    },
    /// The change log, version vector or pending table is inconsistent.
    Log {
        /// What is wrong.
        problem: String,
    },
    /// A part of the maintained digest (`digest_v1`) differs from a recomputation.
    Digest {
        /// The part: the catalog, a heads bucket, or a table's rows or conflicts.
        part: String,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for IntegrityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntegrityProblem::Document { doc, problem } => write!(f, "document {doc}: {problem}"),
            IntegrityProblem::Catalog { object, problem } => write!(f, "catalog {object}: {problem}"),
            IntegrityProblem::Row { table, key, problem } => write!(f, "row {table}{key}: {problem}"),
            IntegrityProblem::Index { index, problem } => write!(f, "index {index}: {problem}"),
            IntegrityProblem::Log { problem } => write!(f, "log: {problem}"),
            IntegrityProblem::Digest { part, problem } => write!(f, "digest {part}: {problem}"),
        }
    }
}

impl Replica {
    /// The digest of the converged state; see the module documentation.
    pub fn state_digest(&self) -> Result<StateDigest, StorageError> {
        self.snapshot()?.state_digest()
    }

    /// The digest of the converged state with each append-only table's buckets below
    /// `floors[table]` left out: what two nodes that expired rows at different moments
    /// compare at (docs/design.md § "Digest and anti-entropy across floors"), usually the
    /// higher of their [`Replica::append_floors`].
    pub fn state_digest_at(&self, floors: &BTreeMap<String, i64>) -> Result<StateDigest, StorageError> {
        let txn = self.db.begin_read()?;
        let mut parts = digest_parts::stored_parts(&txn.open_table(storage::DIGEST)?)?;
        parts.retain(|key, _| !digest_parts::append_part_below(key, floors));
        Ok(digest_parts::state_digest_of(&parts))
    }

    /// Re-derives everything derived and reports every mismatch; empty means healthy.
    pub fn check_integrity(&self) -> Result<Vec<IntegrityProblem>, StorageError> {
        let txn = self.db.begin_read()?;
        let mut checker = Checker {
            node: self.node,
            catalog: super::read::load_catalog(&txn)?,
            txn,
            problems: Vec::new(),
            docs: LruCache::new(NonZeroUsize::new(256).expect("nonzero")),
        };
        let catalog = checker.check_catalog()?;
        checker.check_rows(&catalog)?;
        checker.check_stored_rows(&catalog)?;
        checker.check_indexes(&catalog)?;
        checker.check_append_keys(&catalog)?;
        checker.check_log(&self.versions, &self.floor)?;
        checker.check_digest()?;
        Ok(checker.problems)
    }
}

struct Checker {
    node: NodeId,
    /// The stored catalog, which implicit documents are rebuilt under (the catalog
    /// re-derived from documents is checked against it).
    catalog: Catalog,
    txn: redb::ReadTransaction,
    problems: Vec<IntegrityProblem>,
    docs: LruCache<Vec<u8>, AutoCommit>,
}

impl Checker {
    /// Loads a document and checks its stored heads; `None` (with a problem) if unreadable.
    fn load(&mut self, key: &[u8]) -> Result<Option<AutoCommit>, StorageError> {
        if let Some(doc) = self.docs.get(key) {
            return Ok(Some(doc.clone()));
        }
        let stored = super::ReadDocTables::open(&self.txn)?;
        let describe = super::describe_doc_key(key);
        let mut working = match load_working_doc(self.node, &stored.tables(), &self.catalog, key) {
            Ok(Some(working)) => working,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.problems.push(IntegrityProblem::Document { doc: describe, problem: e.to_string() });
                return Ok(None);
            }
        };
        let stored = storage::get_bytes(stored.tables().heads, key)?.expect("loaded above");
        let expected = match working.implicit {
            // Rebuilding checked the one head against the description.
            true => stored.clone(),
            false => storage::encode_heads(working.tail_len, &doc::heads(&mut working.doc)),
        };
        if stored != expected {
            self.problems.push(IntegrityProblem::Document { doc: describe, problem: "stored heads differ".into() });
        }
        self.docs.put(key.to_vec(), (*working.doc).clone());
        Ok(Some(*working.doc))
    }

    fn doc_keys(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Vec<u8>>, StorageError> {
        let heads = self.txn.open_table(storage::DOC_HEADS)?;
        let range = match end {
            Some(end) => heads.range::<&[u8]>(start..end)?,
            None => heads.range::<&[u8]>(start..)?,
        };
        range.map(|item| Ok(item?.0.value().to_vec())).collect()
    }

    /// Resolves every catalog document and compares with `catalog_v1`.
    fn check_catalog(&mut self) -> Result<Catalog, StorageError> {
        let mut derived = Catalog::default();
        let row_docs_start = DocKey::row_prefix("", 1)[..1].to_vec();
        for key in self.doc_keys(&[], Some(&row_docs_start))? {
            let Some(document) = self.load(&key)? else { continue };
            let object = super::describe_doc_key(&key);
            let resolved = match DocKey::decode(&key) {
                Ok(DocKey::Table(name)) => catalog::resolve_table(&name, &document).map(|e| {
                    let bytes = codec::encode(&e);
                    derived.tables.insert(name, e);
                    bytes
                }),
                Ok(DocKey::Index(name)) => catalog::resolve_index(&name, &document, &derived.tables).map(|e| {
                    let bytes = codec::encode(&e);
                    derived.indexes.insert(name, e);
                    bytes
                }),
                Ok(DocKey::View(name)) => catalog::resolve_view(&name, &document).map(|e| {
                    let bytes = codec::encode(&e);
                    derived.views.insert(name, e);
                    bytes
                }),
                _ => {
                    self.problems.push(IntegrityProblem::Catalog { object, problem: "malformed catalog key".into() });
                    continue;
                }
            };
            let stored = storage::get_bytes(&self.txn.open_table(storage::CATALOG)?, &key)?;
            match resolved {
                Err(e) => self.problems.push(IntegrityProblem::Catalog { object, problem: e.to_string() }),
                Ok(bytes) if stored.as_ref() != Some(&bytes) => self
                    .problems
                    .push(IntegrityProblem::Catalog { object, problem: "stored entry differs from document".into() }),
                Ok(_) => {}
            }
        }
        let stored_catalog = read::load_catalog(&self.txn)?;
        if stored_catalog.tables.len() != derived.tables.len()
            || stored_catalog.indexes.len() != derived.indexes.len()
            || stored_catalog.views.len() != derived.views.len()
        {
            self.problems.push(IntegrityProblem::Catalog {
                object: "catalog_v1".into(),
                problem: "entries without a catalog document".into(),
            });
        }
        Ok(derived)
    }

    /// Materializes every row document of every live table and compares with the stored
    /// row, conflicts and index entries.
    fn check_rows(&mut self, catalog: &Catalog) -> Result<(), StorageError> {
        for table in catalog.live_tables() {
            let name = table.schema.name.clone();
            let prefix = DocKey::row_prefix(&name, table.causal_length);
            let end = keys::prefix_end(&prefix).expect("row prefixes never end in 0xFF");
            for key in self.doc_keys(&prefix, Some(&end))? {
                let Some(document) = self.load(&key)? else { continue };
                let pk = &key[prefix.len()..];
                let expected = materialize_row(&document, &table.schema, pk);
                self.compare_row(catalog, table, pk, expected)?;
            }
        }
        Ok(())
    }

    fn compare_row(
        &mut self,
        catalog: &Catalog,
        table: &catalog::TableEntry,
        pk: &[u8],
        expected: Option<super::materialize::Materialized>,
    ) -> Result<(), StorageError> {
        let name = &table.schema.name;
        let row_key = keys::row_key(name, pk);
        let shown = super::write::show_key(&keys::decode_tuple(pk).unwrap_or_default());
        let problem = |p: &str| IntegrityProblem::Row { table: name.clone(), key: shown.clone(), problem: p.into() };
        let stored_row = storage::get_bytes(&self.txn.open_table(storage::ROWS)?, &row_key)?;
        let stored_conflicts = storage::get_bytes(&self.txn.open_table(storage::CONFLICTS)?, &row_key)?;
        let Some(materialized) = expected else {
            if stored_row.is_some() {
                self.problems.push(problem("materialized but deleted in its document"));
            }
            return Ok(());
        };
        if stored_row.as_deref() != Some(materialized.record().as_slice()) {
            self.problems.push(problem("materialized row differs from its document"));
        }
        let super::materialize::Materialized { row, conflicts, .. } = materialized;
        let expected_conflicts = (!conflicts.is_empty()).then(|| codec::encode(&conflicts));
        if stored_conflicts != expected_conflicts {
            self.problems.push(problem("recorded conflicts differ from its document"));
        }
        let indexes = self.txn.open_table(storage::INDEXES)?;
        for index in catalog.indexes_of(name) {
            let entry = index_entry_key(index, &table.schema, &row, pk);
            if indexes.get(entry.as_slice())?.is_none() {
                self.problems.push(problem(&format!("index {} has no entry for it", index.def.schema.name)));
            }
        }
        Ok(())
    }

    /// Every stored row must belong to a live table and have a live row document.
    fn check_stored_rows(&mut self, catalog: &Catalog) -> Result<(), StorageError> {
        let rows = self.txn.open_table(storage::ROWS)?;
        let heads = self.txn.open_table(storage::DOC_HEADS)?;
        for item in rows.iter()? {
            let (key, _) = item?;
            let Ok((name, pk)) = keys::decode_name(key.value()) else {
                self.problems.push(IntegrityProblem::Row {
                    table: "?".into(),
                    key: "?".into(),
                    problem: "bad key".into(),
                });
                continue;
            };
            let shown = super::write::show_key(&keys::decode_tuple(pk).unwrap_or_default());
            let Some(table) = catalog.table(name) else {
                let problem = "row of a table that does not exist".into();
                self.problems.push(IntegrityProblem::Row { table: name.into(), key: shown, problem });
                continue;
            };
            let mut doc_key = DocKey::row_prefix(name, table.causal_length);
            doc_key.extend_from_slice(pk);
            if heads.get(doc_key.as_slice())?.is_none() {
                let problem = "materialized row without a document".into();
                self.problems.push(IntegrityProblem::Row { table: name.into(), key: shown, problem });
            }
        }
        Ok(())
    }

    /// The number of index entries must equal the number of rows of each live index's table
    /// (each row was checked to have its entries), and no entry may belong to a dead index.
    fn check_indexes(&mut self, catalog: &Catalog) -> Result<(), StorageError> {
        let indexes = self.txn.open_table(storage::INDEXES)?;
        let rows = self.txn.open_table(storage::ROWS)?;
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for item in indexes.iter()? {
            let (key, _) = item?;
            let name = keys::decode_name(key.value()).map(|(n, _)| n.to_string()).unwrap_or_default();
            *counts.entry(name).or_default() += 1;
        }
        for (name, count) in counts {
            let Some(index) = catalog.index(&name) else {
                self.problems
                    .push(IntegrityProblem::Index { index: name, problem: "entries of a dropped index".into() });
                continue;
            };
            let prefix = keys::row_key(&index.def.schema.table, &[]);
            let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
            let row_count = rows.range::<&[u8]>(prefix.as_slice()..end.as_slice())?.count() as u64;
            if row_count != count {
                let problem = format!("{count} entries for {row_count} rows");
                self.problems.push(IntegrityProblem::Index { index: name, problem });
            }
        }
        Ok(())
    }

    /// The deduplication keys of append-only tables must be exactly their stored rows'.
    fn check_append_keys(&mut self, catalog: &Catalog) -> Result<(), StorageError> {
        let blocks = self.txn.open_table(storage::APPEND_BLOCKS)?;
        let entries = self.txn.open_table(storage::APPEND_KEYS)?;
        for problem in super::append_keys::differences(catalog, &blocks, &entries, APPEND_KEY_PROBLEMS_MAX)? {
            self.problems.push(IntegrityProblem::Index { index: "append_keys_v1".into(), problem });
        }
        Ok(())
    }

    /// The log must hold, per origin, every seq above the log floor up to the version
    /// vector (and may hold some at or below the floor); every logged automerge change
    /// must be in its document; no pending change may already be held.
    fn check_log(&mut self, in_memory: &VersionVector, in_memory_floor: &VersionVector) -> Result<(), StorageError> {
        let floor = self.check_floor(in_memory_floor)?;
        let log = self.txn.open_table(storage::LOG)?;
        // An origin compacted up to its vector has no entries left: its seq is its floor.
        let mut derived = floor.clone();
        let mut entries = Vec::new();
        for item in log.iter()? {
            let (key, value) = item?;
            entries.push((key.value().to_vec(), value.value().to_vec()));
        }
        for (key, value) in entries {
            let Ok((origin, seq)) = keys::decode_log_key(&key) else {
                self.problems.push(IntegrityProblem::Log { problem: "malformed log key".into() });
                continue;
            };
            // At or below the floor an entry may be left over a gap (a state transfer
            // raised the floor); above it the log is contiguous.
            if seq > floor.seq(origin) {
                if seq != derived.seq(origin) + 1 {
                    let problem = format!("gap before {origin} seq {seq}");
                    self.problems.push(IntegrityProblem::Log { problem });
                }
                derived.set(origin, seq);
            }
            self.check_logged_change(origin, seq, value)?;
        }
        let stored = read::Snapshot::version_vector_of(&self.txn)?;
        if stored != derived || *in_memory != derived {
            let problem = format!("version vector {stored:?} (in memory {in_memory:?}) but the log holds {derived:?}");
            self.problems.push(IntegrityProblem::Log { problem });
        }
        let pending = self.txn.open_table(storage::PENDING)?;
        for item in pending.iter()? {
            let (key, _) = item?;
            if let Ok((origin, seq)) = keys::decode_log_key(key.value()) {
                if seq <= derived.seq(origin) {
                    let problem = format!("pending change {origin} seq {seq} is already applied");
                    self.problems.push(IntegrityProblem::Log { problem });
                }
            }
        }
        Ok(())
    }

    /// The stored log floor must decode, equal the replica's, and be recorded under the
    /// format that allows a compacted log; returns it.
    fn check_floor(&mut self, in_memory: &VersionVector) -> Result<VersionVector, StorageError> {
        let floor = match compact::stored_log_floor(&self.txn) {
            Ok(floor) => floor,
            Err(StorageError::Corrupt(corruption)) => {
                self.problems.push(IntegrityProblem::Log { problem: corruption.to_string() });
                return Ok(in_memory.clone());
            }
            Err(e) => return Err(e),
        };
        if floor != *in_memory {
            let problem = format!("log floor {floor:?} (in memory {in_memory:?})");
            self.problems.push(IntegrityProblem::Log { problem });
        }
        let meta = self.txn.open_table(storage::META)?;
        let format = storage::stored_format(&meta)?;
        if !floor.is_empty() && format.is_none_or(|f| f < storage::FORMAT_VERSION_COMPACTED) {
            let problem = format!("a compacted log in a store of format {format:?}");
            self.problems.push(IntegrityProblem::Log { problem });
        }
        Ok(floor)
    }

    /// The maintained digest parts must equal the parts recomputed from every entry.
    fn check_digest(&mut self) -> Result<(), StorageError> {
        let stored = digest_parts::stored_parts(&self.txn.open_table(storage::DIGEST)?)?;
        let computed = digest_parts::compute_parts(
            &self.txn.open_table(storage::CATALOG)?,
            &self.txn.open_table(storage::DOC_HEADS)?,
            &self.txn.open_table(storage::ROWS)?,
            &self.txn.open_table(storage::CONFLICTS)?,
            &self.txn.open_table(storage::APPEND_BLOCKS)?,
        )?;
        for problem in digest_differences(&stored, &computed) {
            self.problems.push(problem);
        }
        Ok(())
    }

    fn check_logged_change(&mut self, origin: NodeId, seq: u64, bytes: Vec<u8>) -> Result<(), StorageError> {
        let change = match VerifiedChange::decode(bytes) {
            Ok(change) if change.origin == origin && change.seq == seq => change,
            Ok(_) => {
                let problem = format!("entry {origin} seq {seq} holds another change");
                self.problems.push(IntegrityProblem::Log { problem });
                return Ok(());
            }
            Err(e) => {
                self.problems.push(IntegrityProblem::Log { problem: format!("entry {origin} seq {seq}: {e}") });
                return Ok(());
            }
        };
        for op in &change.ops {
            let key = op.key.encode();
            let present = match self.load(&key)? {
                Some(mut document) => document.get_change_by_hash(&op.change.hash()).is_some(),
                None => false,
            };
            if !present {
                let doc = super::describe_doc_key(&key);
                let problem = format!("change {origin} seq {seq} is missing from the document");
                self.problems.push(IntegrityProblem::Document { doc, problem });
            }
        }
        Ok(())
    }
}

impl Snapshot {
    /// The digest of the converged state as of this snapshot (see the module
    /// documentation); a read of `digest_v1` (a few thousand small entries, however many
    /// rows the store holds), so it runs on any thread without holding up writers.
    pub fn state_digest(&self) -> Result<StateDigest, StorageError> {
        let parts = digest_parts::stored_parts(&self.txn().open_table(storage::DIGEST)?)?;
        Ok(digest_parts::state_digest_of(&parts))
    }
}

/// Every part where `stored` and `computed` differ.
fn digest_differences(
    stored: &BTreeMap<Vec<u8>, digest_parts::Part>,
    computed: &BTreeMap<Vec<u8>, digest_parts::Part>,
) -> Vec<IntegrityProblem> {
    let keys: std::collections::BTreeSet<&Vec<u8>> = stored.keys().chain(computed.keys()).collect();
    let mut problems = Vec::new();
    for key in keys {
        let (stored, computed) = (stored.get(key), computed.get(key));
        let entries = |p: Option<&digest_parts::Part>| p.map_or(0, |p| p.entries);
        let problem = match (entries(stored), entries(computed)) {
            _ if stored == computed => continue,
            (s, c) if s == c => format!("the hash of its {s} entries differs from a recomputation"),
            (s, c) => format!("{s} entries recorded, {c} found"),
        };
        problems.push(IntegrityProblem::Digest { part: digest_parts::describe_part(key), problem });
    }
    problems
}

/// Documents up to which debug builds recompute the digest after every transaction.
#[cfg(debug_assertions)]
const DIGEST_SHADOW_CHECK_DOCS_MAX: u64 = 512;

/// Differences between `append_keys_v1` and the blocks reported, at most.
const APPEND_KEY_PROBLEMS_MAX: usize = 100;

/// Debug builds: the deduplication keys must be exactly the stored rows' after every
/// transaction that stores or removes rows, checked while the store holds few blocks.
#[cfg(debug_assertions)]
pub(crate) fn shadow_check_append_keys(catalog: &Catalog, tables: &super::WriteTables<'_>) -> Result<(), StorageError> {
    use redb::ReadableTableMetadata;
    if tables.append_blocks.len()? > DIGEST_SHADOW_CHECK_DOCS_MAX {
        return Ok(());
    }
    let problems = super::append_keys::differences(catalog, &tables.append_blocks, &tables.append_keys, 10)?;
    assert!(problems.is_empty(), "append_keys_v1 differs from the blocks: {problems:?}");
    Ok(())
}

/// Debug builds: the parts just flushed must equal a recomputation from scratch, checked
/// while the store is small enough for that to be cheap per transaction (larger stores
/// are covered by `check_integrity`).
#[cfg(debug_assertions)]
pub(crate) fn shadow_check_digest(tables: &super::WriteTables<'_>) -> Result<(), StorageError> {
    use redb::ReadableTableMetadata;
    if tables.heads.len()? > DIGEST_SHADOW_CHECK_DOCS_MAX || tables.append_blocks.len()? > DIGEST_SHADOW_CHECK_DOCS_MAX
    {
        return Ok(());
    }
    let stored = digest_parts::stored_parts(&tables.digest)?;
    let computed = digest_parts::compute_parts(
        &tables.catalog,
        &tables.heads,
        &tables.rows,
        &tables.conflicts,
        &tables.append_blocks,
    )?;
    let problems = digest_differences(&stored, &computed);
    assert!(problems.is_empty(), "digest_v1 differs from a recomputation: {problems:?}");
    Ok(())
}
