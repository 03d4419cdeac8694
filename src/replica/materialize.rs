//! Re-derivation of catalog entries, materialized rows, index entries and conflicts from
//! changed documents, inside the transaction that changed them.
//!
//! This is the one path shared by local writes and remote changes: documents changed →
//! [`Replica::record_changes`] persists them, refreshes what depends on them, and logs the
//! change envelopes. `check_integrity` re-runs the same derivation from scratch and compares.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata};

use super::{ColumnConflict, Replica, Row, WorkingDoc, WriteTables};
use crate::catalog::{self, Catalog, IndexEntry, TableEntry};
use crate::change::{DocKey, VerifiedChange};
use crate::codec;
use crate::doc;
use crate::error::{ApplyError, Corruption, Inconsistency, StorageError};
use crate::keys;
use crate::schema::TableSchema;
use crate::types::NodeId;

/// A document changed by the current transaction, with the changes to persist.
pub(crate) struct ChangedDoc<'a> {
    pub key_bytes: Vec<u8>,
    pub key: DocKey,
    pub working: WorkingDoc,
    pub new_changes: Vec<&'a [u8]>,
    /// What first touched this document, for error reports.
    pub cause: Cause,
    /// A local insert into this empty document staged this row and nothing else touched
    /// it: if it materializes to the same row, its one change is `new_row_doc`'s and it is
    /// stored implicitly without being rebuilt (`implicit::staged_form`).
    pub inserted: Option<Row>,
}

/// Debug builds check at most this many changed row documents per transaction against
/// their records, so that large batches in tests stay fast (`check_integrity` covers all).
#[cfg(debug_assertions)]
const ROW_SHADOW_CHECK_DOCS_MAX: usize = 16;

/// What brought changes to a document: named when they contradict the replica's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A change envelope, local or remote.
    Change { origin: NodeId, seq: u64 },
    /// Whole documents, no envelope: a state transfer from this donor, or a repair whose
    /// first change this node wrote.
    Document(NodeId),
}

impl Cause {
    /// The error refusing what this cause brought because of `reason`.
    pub fn refusal(self, reason: Inconsistency) -> ApplyError {
        match self {
            Cause::Change { origin, seq } => ApplyError::Inconsistent { origin, seq, reason },
            Cause::Document(node) => ApplyError::InconsistentDocument { node, reason },
        }
    }
}

/// Why recording changes failed.
#[derive(Debug)]
pub(crate) enum RecordError {
    Storage(StorageError),
    /// The changed documents contradict the catalog; the change must be refused.
    Inconsistent {
        cause: Cause,
        reason: Inconsistency,
    },
}

impl RecordError {
    /// For local writes, where inconsistency is an internal invariant violation.
    pub fn into_storage(self) -> StorageError {
        match self {
            RecordError::Storage(e) => e,
            RecordError::Inconsistent { reason, .. } => StorageError::Corrupt(Corruption::Inconsistent(reason)),
        }
    }

    /// For remote changes and repairs, where inconsistency is the sender's fault.
    pub fn into_apply(self) -> ApplyError {
        match self {
            RecordError::Storage(e) => ApplyError::Storage(e),
            RecordError::Inconsistent { cause, reason } => cause.refusal(reason),
        }
    }
}

impl<E: Into<StorageError>> From<E> for RecordError {
    fn from(e: E) -> RecordError {
        RecordError::Storage(e.into())
    }
}

/// A row document materialized under its table's definition.
pub(crate) struct Materialized {
    /// The winner of every column, in definition order.
    pub row: Row,
    /// The columns with concurrent different values.
    pub conflicts: Vec<ColumnConflict>,
    /// How many of `row`'s values its record holds: all but the added columns at the end
    /// that the document holds no value for (they read as their default, `TableSchema::pad`).
    /// So the record is a function of the document and the definition alone, whether the
    /// row was materialized before or after a column was added.
    pub record_len: usize,
    /// The document holds values under ids that are none of the definition's columns
    /// (written under a losing concurrent definition, or merged ahead of the catalog):
    /// an `ADD` of such an id must rebuild the table (`Replica::alters_in_place`).
    pub foreign_values: bool,
}

impl Materialized {
    /// The `rows_v1` record.
    pub fn record(&self) -> Vec<u8> {
        crate::record::encode(&self.row[..self.record_len])
    }
}

/// Materializes a row document under a table definition. `None` when the row is deleted
/// or its key does not match the definition's primary key (a row written under a losing
/// definition).
pub(crate) fn materialize_row(
    document: &automerge::AutoCommit,
    schema: &TableSchema,
    pk: &[u8],
) -> Option<Materialized> {
    if !doc::is_alive(document) {
        return None;
    }
    let mut row = Vec::with_capacity(schema.columns.len());
    let mut conflicts = Vec::new();
    let mut record_len = schema.base_columns();
    let mut held = 0;
    for (i, column) in schema.columns.iter().enumerate() {
        let (winner, values) = doc::read_column(document, column);
        held += usize::from(!values.is_empty());
        if column.added && !values.is_empty() {
            record_len = i + 1;
        }
        // A dropped column's values are kept, but it is no longer in conflict.
        if !column.dropped && values.iter().any(|(v, _)| *v != values[0].0) {
            conflicts.push(ColumnConflict { column: column.name.clone(), winner: winner.clone(), values });
        }
        row.push(winner);
    }
    debug_assert!(conflicts.iter().all(|c| c.values.len() >= 2), "a conflict has two or more values");
    debug_assert!(schema.record_len_fits(record_len));
    let key: Vec<_> = schema.primary_key_indexes().into_iter().map(|i| row[i].clone()).collect();
    let key_matches = key.iter().all(|v| !v.is_null()) && keys::encode_tuple(&key) == pk;
    // Root keys beyond the causal length and the columns held are values under other ids.
    let foreign_values = automerge::ReadDoc::length(document, automerge::ROOT) > held + 1;
    key_matches.then_some(Materialized { row, conflicts, record_len, foreign_values })
}

/// The index entry key of a row.
pub(crate) fn index_entry_key(index: &IndexEntry, schema: &TableSchema, row: &Row, pk: &[u8]) -> Vec<u8> {
    let values: Vec<_> = index
        .def
        .schema
        .columns
        .iter()
        .map(|c| row[schema.column_index(c).expect("live indexes name existing columns")].clone())
        .collect();
    keys::index_key(&index.def.schema.name, &keys::encode_tuple(&values), pk)
}

impl Replica {
    /// Persists changed documents, refreshes the catalog and rows that depend on them, and
    /// logs the change envelopes (advancing the version vector).
    pub(crate) fn record_changes(
        &mut self,
        tables: &mut WriteTables<'_>,
        docs: Vec<ChangedDoc<'_>>,
        changes: &[VerifiedChange],
    ) -> Result<(), RecordError> {
        let mut catalog_docs = Vec::new();
        let mut row_docs = Vec::with_capacity(docs.len());
        for mut changed in docs {
            if let DocKey::Row { .. } = changed.key {
                // Row documents are persisted once materialized below, which decides
                // whether a new one is stored implicitly, and stay out of the cache until
                // then: one cache round trip per document instead of two.
                row_docs.push(changed);
            } else {
                changed.working.created = false;
                let working =
                    self.persist_doc(tables, &changed.key_bytes, changed.working, &changed.new_changes, None)?;
                self.cache.put(changed.key_bytes.clone(), working);
                catalog_docs.push((changed.key_bytes, changed.key, changed.cause));
            }
        }
        // Catalog documents first, so rows are checked against the updated catalog.
        catalog_docs.sort_by(|a, b| a.1.cmp(&b.1));
        for (key_bytes, key, cause) in catalog_docs {
            self.refresh_catalog_object(tables, &key_bytes, &key, cause)?;
        }
        row_docs.sort_by(|a, b| a.key.cmp(&b.key));
        #[cfg(debug_assertions)]
        let shadow_keys: Vec<Vec<u8>> =
            row_docs.iter().take(ROW_SHADOW_CHECK_DOCS_MAX).map(|changed| changed.key_bytes.clone()).collect();
        for ChangedDoc { key_bytes, key, mut working, new_changes, cause, inserted } in row_docs {
            let DocKey::Row { table, epoch, pk } = &key else { unreachable!("only row documents are listed here") };
            let known = self.catalog.tables.get(table).is_some_and(|t| t.causal_length >= *epoch);
            if !known {
                let reason = Inconsistency::RowOfUnknownTable { table: table.clone(), epoch: *epoch };
                return Err(RecordError::Inconsistent { cause, reason });
            }
            let created = std::mem::replace(&mut working.created, false);
            let written = self.materialize_into(tables, table, *epoch, pk, &working.doc, created)?;
            let implicit = match (created, written, new_changes.len()) {
                (true, Some(row), 1) if working.changes == 0 && working.tail_len == 0 => {
                    let schema = &self.catalog.table(table).expect("a row was written: its table is live").schema;
                    super::implicit::form_of_new(&mut working.doc, schema, &row, inserted.as_deref())
                }
                _ => None,
            };
            let working = self.persist_doc(tables, &key_bytes, working, &new_changes, implicit)?;
            self.cache.put(key_bytes, working);
        }
        self.store_appends(tables, changes)?;
        self.log_changes(tables, changes)?;
        tables.digest_delta.flush(&mut tables.digest)?;
        #[cfg(debug_assertions)]
        super::integrity::shadow_check_digest(tables)?;
        #[cfg(debug_assertions)]
        super::integrity::shadow_check_append_keys(&self.catalog, tables)?;
        #[cfg(debug_assertions)]
        self.shadow_check_rows(tables, &shadow_keys)?;
        Ok(())
    }

    /// Debug builds: each row document in `doc_keys`, loaded again from the stored tables
    /// (not the cache), materializes to the record `rows_v1` holds: the fast path (the
    /// working document materialized before it was persisted) against the slow one.
    #[cfg(debug_assertions)]
    fn shadow_check_rows(&self, tables: &WriteTables<'_>, doc_keys: &[Vec<u8>]) -> Result<(), StorageError> {
        for key_bytes in doc_keys {
            let Ok(DocKey::Row { table, epoch, pk }) = DocKey::decode(key_bytes) else {
                unreachable!("only row documents are listed")
            };
            // A row of a dropped table or older incarnation materializes nothing.
            let Some(entry) =
                self.catalog.table(&table).filter(|t| t.causal_length == epoch && t.schema.append.is_none())
            else {
                continue;
            };
            let working = super::load_working_doc(self.node, &tables.doc_tables(), &self.catalog, key_bytes)?
                .expect("a changed row document was persisted");
            // Records are compared encoded: a REAL NaN is not equal to itself as a value.
            let materialized = materialize_row(&working.doc, &entry.schema, &pk).map(|m| m.record());
            let stored = crate::storage::get_bytes(&tables.rows, &keys::row_key(&table, &pk))?;
            assert_eq!(
                stored,
                materialized,
                "the rows_v1 record of {} differs from its stored document",
                super::describe_doc_key(key_bytes)
            );
        }
        Ok(())
    }

    /// Stores the rows the changes append to append-only tables (`append.rs`) and applies
    /// their range tombstones (`tombstones.rs`), after the catalog documents of the same
    /// changes are resolved.
    fn store_appends(&mut self, tables: &mut WriteTables<'_>, changes: &[VerifiedChange]) -> Result<(), RecordError> {
        for change in changes {
            let unknown = |table: &str, epoch: u64| {
                let cause = Cause::Change { origin: change.origin, seq: change.seq };
                let reason = Inconsistency::RowOfUnknownTable { table: table.to_string(), epoch };
                RecordError::Inconsistent { cause, reason }
            };
            for batch in &change.appends {
                if !self.store_append_batch(tables, change.origin, change.seq, batch)? {
                    return Err(unknown(&batch.table, batch.epoch));
                }
            }
            // After the envelope's own rows, which its tombstones do not cover.
            for tombstone in &change.tombstones {
                if !self.store_tombstone(tables, change.origin, change.seq, tombstone)? {
                    return Err(unknown(&tombstone.table, tombstone.epoch));
                }
            }
        }
        Ok(())
    }

    /// Logs change envelopes and advances the version vector: `versions_v1` is written
    /// once per origin, and `pending_v1` is only searched when something is parked.
    fn log_changes(&mut self, tables: &mut WriteTables<'_>, changes: &[VerifiedChange]) -> Result<(), StorageError> {
        let pending_empty = tables.pending.is_empty()?;
        let mut advanced: Vec<(NodeId, u64)> = Vec::new();
        for change in changes {
            let log_key = keys::log_key(change.origin, change.seq);
            tables.log.insert(log_key.as_slice(), change.bytes.as_slice())?;
            if !pending_empty {
                tables.pending.remove(log_key.as_slice())?;
            }
            debug_assert_eq!(
                change.seq,
                self.versions.seq(change.origin) + 1,
                "each origin's changes are logged in seq order without a gap (the log agrees with the vector)"
            );
            self.versions.set(change.origin, change.seq);
            match advanced.iter_mut().find(|(origin, _)| *origin == change.origin) {
                Some(entry) => entry.1 = change.seq,
                None => advanced.push((change.origin, change.seq)),
            }
        }
        for (origin, seq) in advanced {
            tables.versions.insert(origin.as_bytes().as_slice(), seq)?;
        }
        Ok(())
    }

    /// Re-resolves a catalog document; rebuilds the rows or index entries it governs when
    /// its causal length or winning definition changed.
    fn refresh_catalog_object(
        &mut self,
        tables: &mut WriteTables<'_>,
        key_bytes: &[u8],
        key: &DocKey,
        cause: Cause,
    ) -> Result<(), RecordError> {
        let inconsistent = |reason: Inconsistency| RecordError::Inconsistent { cause, reason };
        let working = self.take_doc(tables, key_bytes)?.expect("persisted just before");
        if let DocKey::View(name) = key {
            // A view governs no stored rows: its entry is all there is to refresh.
            let resolved = catalog::resolve_view(name, &working.doc);
            self.cache.put(key_bytes.to_vec(), working);
            let entry = resolved.map_err(|e| inconsistent(e.into()))?;
            store_catalog_entry(tables, key_bytes, &codec::encode(&entry))?;
            self.catalog.views.insert(name.clone(), entry);
            return Ok(());
        }
        let resolved = match key {
            DocKey::Table(name) => catalog::resolve_table(name, &working.doc).map(Ok),
            DocKey::Index(name) => catalog::resolve_index(name, &working.doc, &self.catalog.tables).map(Err),
            DocKey::Row { .. } | DocKey::View(_) => unreachable!("tables and indexes are refreshed here"),
        };
        self.cache.put(key_bytes.to_vec(), working);
        match resolved.map_err(|e| inconsistent(e.into()))? {
            Ok(entry) => {
                let name = entry.schema.name.clone();
                let old = self.catalog.tables.get(&name).cloned();
                let changed =
                    old.as_ref().is_none_or(|o| o.causal_length != entry.causal_length || o.schema != entry.schema);
                let in_place = changed && self.alters_in_place(tables, old.as_ref(), &entry, cause)?;
                if let Some(live) = self.catalog.table(&name).filter(|_| changed && !in_place).cloned() {
                    // Its implicit rows are rebuilt from records and a definition that
                    // are about to change (`implicit.rs`).
                    self.explicate_table(tables, &live)?;
                }
                let bound_before = self.bound_indexes(&name);
                self.catalog.tables.insert(name.clone(), entry.clone());
                store_catalog_entry(tables, key_bytes, &codec::encode(&entry))?;
                if changed {
                    // A rebuild rebuilds every index entry of the table below.
                    let entries = if in_place { Some(bound_before) } else { None };
                    self.rebind_indexes(tables, &name, cause, entries)?;
                }
                match (changed, in_place) {
                    (false, _) => {}
                    (true, false) => {
                        // Set again by the rows rebuilt if some still hold foreign values.
                        tables.meta.remove(foreign_values_key(&name).as_str())?;
                        self.rebuild_table(tables, &name)?;
                    }
                    (true, true) => {
                        let old = old.expect("in place: the table was known");
                        // Conflict records name columns and leave dropped ones out.
                        let renamed = old
                            .schema
                            .columns
                            .iter()
                            .zip(&entry.schema.columns)
                            .any(|(a, b)| a.name != b.name || a.dropped != b.dropped);
                        if renamed {
                            self.rederive_conflicts(tables, &name)?;
                        }
                    }
                }
            }
            Err(entry) => {
                let name = entry.def.schema.name.clone();
                let table_known = self
                    .catalog
                    .tables
                    .get(&entry.def.schema.table)
                    .is_some_and(|t| t.causal_length >= entry.def.table_epoch);
                if !table_known {
                    let table = entry.def.schema.table.clone();
                    return Err(inconsistent(Inconsistency::IndexOnUnknownTable { index: name, table }));
                }
                let old = self.catalog.indexes.insert(name.clone(), entry.clone());
                store_catalog_entry(tables, key_bytes, &codec::encode(&entry))?;
                if old.is_none_or(|o| o.causal_length != entry.causal_length || o.def != entry.def) {
                    self.rebuild_index(tables, &name)?;
                }
            }
        }
        Ok(())
    }

    /// Re-materializes one row document (or removes its row) with its index entries and
    /// conflicts.
    pub(crate) fn refresh_row(
        &mut self,
        tables: &mut WriteTables<'_>,
        key_bytes: &[u8],
        table: &str,
        epoch: u64,
        pk: &[u8],
    ) -> Result<(), StorageError> {
        if self.catalog.table(table).is_none_or(|t| t.causal_length != epoch) {
            // A row of a dropped table or of an older incarnation: its document is kept
            // (it is part of the replicated state), but nothing is materialized.
            return Ok(());
        }
        let working = self.take_doc(tables, key_bytes)?.expect("persisted just before");
        let outcome = self.materialize_into(tables, table, epoch, pk, &working.doc, false);
        self.cache.put(key_bytes.to_vec(), working);
        outcome.map(drop)
    }

    /// Writes a row document's materialization: its `rows_v1` record, index entries and
    /// conflicts, replacing the previous ones. `created` says the document did not exist
    /// before this transaction, so (invariant 3: every `rows_v1` entry has a row document)
    /// there is no previous record, index entry or conflict to look up or remove.
    /// Returns the row written as its record holds it, if the document is a live row
    /// without conflicts.
    fn materialize_into(
        &self,
        tables: &mut WriteTables<'_>,
        table: &str,
        epoch: u64,
        pk: &[u8],
        document: &automerge::AutoCommit,
        created: bool,
    ) -> Result<Option<Row>, StorageError> {
        let Some(entry) = self.catalog.table(table).filter(|t| t.causal_length == epoch) else {
            // A row of a dropped table or of an older incarnation: its document is kept
            // (it is part of the replicated state), but nothing is materialized.
            return Ok(None);
        };
        if entry.schema.append.is_some() {
            // A row document written under a concurrent ordinary definition of a table
            // whose winning definition is append-only: kept, not shown (as a losing
            // definition's columns are not), and shown again should its definition win.
            return Ok(None);
        }
        let schema = &entry.schema;
        let row_key = keys::row_key(table, pk);
        let materialized = materialize_row(document, schema, pk);
        let old = match created {
            true => None,
            false => match tables.rows.get(row_key.as_slice())? {
                Some(record) => {
                    let mut row = crate::record::decode(record.value()).map_err(corrupt_record)?;
                    schema.pad(&mut row);
                    Some(row)
                }
                None => None,
            },
        };
        let indexes: Vec<&IndexEntry> = self.catalog.indexes_of(table).collect();
        for index in &indexes {
            if let Some(old) = &old {
                tables.indexes.remove(index_entry_key(index, schema, old, pk).as_slice())?;
            }
        }
        match materialized {
            Some(Materialized { row, conflicts, record_len, foreign_values }) => {
                if foreign_values {
                    tables.meta.insert(foreign_values_key(table).as_str(), [1u8].as_slice())?;
                }
                let record = crate::record::encode(&row[..record_len]);
                let old = tables.rows.insert(row_key.as_slice(), record.as_slice())?;
                tables.digest_delta.row(&row_key, old.as_ref().map(|v| v.value()), Some(&record))?;
                drop(old);
                for index in &indexes {
                    tables.indexes.insert(index_entry_key(index, schema, &row, pk).as_slice(), ())?;
                }
                if !conflicts.is_empty() {
                    let encoded = codec::encode(&conflicts);
                    let old = tables.conflicts.insert(row_key.as_slice(), encoded.as_slice())?;
                    tables.digest_delta.conflicts(&row_key, old.as_ref().map(|v| v.value()), Some(&encoded))?;
                    return Ok(None);
                } else if !created {
                    let old = tables.conflicts.remove(row_key.as_slice())?;
                    tables.digest_delta.conflicts(&row_key, old.as_ref().map(|v| v.value()), None)?;
                }
                // As its record holds it: what an implicit document is rebuilt from.
                let mut row = row;
                row.truncate(record_len);
                Ok(Some(row))
            }
            None if created => Ok(None),
            None => {
                let old = tables.rows.remove(row_key.as_slice())?;
                tables.digest_delta.row(&row_key, old.as_ref().map(|v| v.value()), None)?;
                drop(old);
                let old = tables.conflicts.remove(row_key.as_slice())?;
                tables.digest_delta.conflicts(&row_key, old.as_ref().map(|v| v.value()), None)?;
                Ok(None)
            }
        }
    }

    /// Clears a table's rows, conflicts and index entries and re-materializes every row
    /// document of its current incarnation.
    fn rebuild_table(&mut self, tables: &mut WriteTables<'_>, name: &str) -> Result<(), StorageError> {
        let prefix = keys::row_key(name, &[]);
        clear_prefix(&mut tables.rows, &prefix)?;
        clear_prefix(&mut tables.conflicts, &prefix)?;
        tables.digest_delta.clear_table(&prefix);
        for index in self.catalog.index_names_on(name) {
            clear_index(tables, &index)?;
        }
        self.rebucket_append_table(tables, name)?;
        let Some(entry) = self.catalog.table(name) else { return Ok(()) };
        let epoch = entry.causal_length;
        let doc_prefix = DocKey::row_prefix(name, epoch);
        let end = keys::prefix_end(&doc_prefix).expect("row prefixes never end in 0xFF");
        let mut doc_keys = Vec::new();
        for item in tables.heads.range(doc_prefix.as_slice()..end.as_slice())? {
            doc_keys.push(item?.0.value().to_vec());
        }
        for key_bytes in doc_keys {
            let pk = &key_bytes[doc_prefix.len()..];
            self.refresh_row(tables, &key_bytes, name, epoch, pk)?;
        }
        Ok(())
    }

    /// Whether a change of `old` into `new` keeps every record, index entry and implicit
    /// document of the table valid as it is, so nothing is rewritten (docs/design.md
    /// § ALTER TABLE): the new definition extends the old (`TableSchema::extends`: a
    /// rename, drop or appended column), and no row document of the table can hold a
    /// value for an appended column's id already: no row materialized since the table's
    /// last rebuild held values under ids outside its definition (`meta_v1`
    /// `foreign_values.<table>`, set by `materialize_into`: rows written under a losing
    /// concurrent definition, rows merged ahead of their catalog by a transfer, a repair or
    /// a change whose writer held a catalog change this node lacks), and the table has
    /// one definition.
    fn alters_in_place(
        &self,
        tables: &WriteTables<'_>,
        old: Option<&TableEntry>,
        new: &TableEntry,
        cause: Cause,
    ) -> Result<bool, StorageError> {
        let Some(old) = old.filter(|o| o.alive() && o.causal_length == new.causal_length) else { return Ok(false) };
        let one_definition = |e: &TableEntry| e.conflict.as_ref().is_none_or(|c| c.definitions.is_empty());
        Ok(matches!(cause, Cause::Change { .. })
            && one_definition(old)
            && one_definition(new)
            && new.schema.extends(&old.schema)
            && tables.meta.get(foreign_values_key(&new.schema.name).as_str())?.is_none())
    }

    /// The column ids each usable index of `table` is bound to, by index name.
    fn bound_indexes(&self, table: &str) -> BTreeMap<String, Vec<Option<String>>> {
        let Some(entry) = self.catalog.table(table) else { return BTreeMap::new() };
        self.catalog
            .indexes_of(table)
            .map(|i| (i.def.schema.name.clone(), i.def.schema.bound_ids(&entry.schema)))
            .collect()
    }

    /// Re-resolves the indexes of a table whose definition changed, so that they name its
    /// columns as they are named now (`catalog::resolve_index` binds them by id). With
    /// `bound_before` (the definition changed in place), an index whose usability or bound
    /// columns changed has its entries rebuilt; a rename changes neither. Without it, the
    /// table is about to be rebuilt, entries and all.
    fn rebind_indexes(
        &mut self,
        tables: &mut WriteTables<'_>,
        table: &str,
        cause: Cause,
        bound_before: Option<BTreeMap<String, Vec<Option<String>>>>,
    ) -> Result<(), RecordError> {
        let names = self.catalog.index_names_on(table);
        for name in &names {
            let key_bytes = DocKey::Index(name.clone()).encode();
            let Some(working) = self.take_doc(tables, &key_bytes)? else { continue };
            let resolved = catalog::resolve_index(name, &working.doc, &self.catalog.tables);
            self.cache.put(key_bytes.clone(), working);
            let entry = resolved.map_err(|e| RecordError::Inconsistent { cause, reason: e.into() })?;
            if self.catalog.indexes.get(name) != Some(&entry) {
                store_catalog_entry(tables, &key_bytes, &codec::encode(&entry))?;
                self.catalog.indexes.insert(name.clone(), entry);
            }
        }
        let Some(before) = bound_before else { return Ok(()) };
        let after = self.bound_indexes(table);
        for name in &names {
            if before.get(name) != after.get(name) {
                self.rebuild_index(tables, name)?;
            }
        }
        Ok(())
    }

    /// Re-materializes the rows of a table that have conflict records, which name their
    /// columns: after a `RENAME COLUMN`, bounded by the conflicting rows, not the rows.
    fn rederive_conflicts(&mut self, tables: &mut WriteTables<'_>, name: &str) -> Result<(), StorageError> {
        let Some(entry) = self.catalog.table(name) else { return Ok(()) };
        let epoch = entry.causal_length;
        let prefix = keys::row_key(name, &[]);
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        let mut pks = Vec::new();
        for item in tables.conflicts.range(prefix.as_slice()..end.as_slice())? {
            pks.push(item?.0.value()[prefix.len()..].to_vec());
        }
        let doc_prefix = DocKey::row_prefix(name, epoch);
        for pk in pks {
            let mut key_bytes = doc_prefix.clone();
            key_bytes.extend_from_slice(&pk);
            self.refresh_row(tables, &key_bytes, name, epoch, &pk)?;
        }
        Ok(())
    }

    /// Clears an index's entries and rebuilds them from the materialized rows.
    fn rebuild_index(&mut self, tables: &mut WriteTables<'_>, name: &str) -> Result<(), StorageError> {
        clear_index(tables, name)?;
        let Some(index) = self.catalog.index(name).cloned() else { return Ok(()) };
        let table = self.catalog.table(&index.def.schema.table).expect("live index has a live table");
        let prefix = keys::row_key(&table.schema.name, &[]);
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        let mut entries = Vec::new();
        for item in tables.rows.range(prefix.as_slice()..end.as_slice())? {
            let (key, record) = item?;
            let mut row = crate::record::decode(record.value()).map_err(corrupt_record)?;
            table.schema.pad(&mut row);
            entries.push(index_entry_key(&index, &table.schema, &row, &key.value()[prefix.len()..]));
        }
        for entry in entries {
            tables.indexes.insert(entry.as_slice(), ())?;
        }
        Ok(())
    }
}

/// `meta_v1` key of the mark that a row of the table materialized since its last rebuild
/// held values under ids outside its definition (`Replica::alters_in_place`). Local
/// state: neither replicated nor in the digest.
fn foreign_values_key(table: &str) -> String {
    format!("{}{table}", crate::storage::META_FOREIGN_VALUES_PREFIX)
}

/// Writes a resolved catalog entry and records it in the digest.
fn store_catalog_entry(tables: &mut WriteTables<'_>, key: &[u8], entry: &[u8]) -> Result<(), StorageError> {
    let old = tables.catalog.insert(key, entry)?;
    tables.digest_delta.catalog(key, old.as_ref().map(|v| v.value()), Some(entry))
}

fn clear_index(tables: &mut WriteTables<'_>, index: &str) -> Result<(), StorageError> {
    let mut prefix = Vec::new();
    keys::encode_name(index, &mut prefix);
    let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
    tables.indexes.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
    Ok(())
}

fn clear_prefix(table: &mut redb::Table<'_, &'static [u8], &'static [u8]>, prefix: &[u8]) -> Result<(), StorageError> {
    let end = keys::prefix_end(prefix).expect("names are not all 0xFF");
    table.retain_in(prefix..end.as_slice(), |_, _| false)?;
    Ok(())
}

/// A `rows_v1` record that does not decode.
pub(super) fn corrupt_record(source: crate::record::RecordError) -> StorageError {
    Corruption::Record { table: "rows_v1", source }.into()
}

/// Catalog as stored in `catalog_v1`, for readers.
pub(crate) fn decode_catalog_entry(key: &[u8], value: &[u8], catalog: &mut Catalog) -> Result<(), StorageError> {
    let corrupt = |source| StorageError::from(Corruption::Value { table: "catalog_v1", source });
    match DocKey::decode(key).map_err(|source| Corruption::Key { table: "catalog_v1", source })? {
        DocKey::Table(name) => {
            catalog.tables.insert(name, codec::decode(value).map_err(corrupt)?);
        }
        DocKey::Index(name) => {
            catalog.indexes.insert(name, codec::decode(value).map_err(corrupt)?);
        }
        DocKey::View(name) => {
            catalog.views.insert(name, codec::decode(value).map_err(corrupt)?);
        }
        DocKey::Row { .. } => return Err(Corruption::RowKeyInCatalog.into()),
    }
    Ok(())
}
