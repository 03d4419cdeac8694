//! The local check of unique indexes: a write batch may not give two rows one value
//! under a unique index (docs/design.md § Unique indexes).
//!
//! It runs once per batch, after every operation is staged and before anything is
//! committed, on the staged documents as materialized with their uncommitted operations,
//! so it sees the batch's final state whatever order its operations came in: a row deleted
//! or changed in the batch frees its value for another row of the same batch. Merged
//! changes are never checked; what they bring together is listed as a unique conflict
//! (`Snapshot::unique_conflicts`).

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::AutoCommit;
use redb::ReadableTable;

use super::materialize::{corrupt_record, materialize_row};
use super::write::show_key;
use super::WriteTables;
use crate::catalog::{Catalog, IndexEntry, TableEntry};
use crate::error::{Corruption, StorageError, WriteError};
use crate::keys;
use crate::types::{ColumnType, Value};

/// A row document the batch staged.
pub(super) struct StagedRow<'a> {
    pub table: &'a str,
    pub epoch: u64,
    pub pk: &'a [u8],
    pub doc: &'a AutoCommit,
}

/// Whether the check holds `index` to its promise. A unique index that covers a
/// `COUNTER` column (refused locally, but a peer's definition is not validated against a
/// table that may change) promises nothing: merged increments add up.
pub(crate) fn enforced(index: &IndexEntry, table: &TableEntry) -> bool {
    let schema = &table.schema;
    index.def.schema.unique
        && index
            .def
            .schema
            .columns
            .iter()
            .all(|c| schema.column_index(c).is_some_and(|i| schema.columns[i].ty != ColumnType::Counter))
}

/// Refuses the batch if a new claim of a value under a unique index meets another claim
/// of the batch, or a stored row that the batch did not stage.
///
/// `catalog` is the batch's view (DDL earlier in the batch included), `stored` the
/// catalog that `rows_v1` and `indexes_v1` were materialized under.
pub(super) fn check_batch(
    catalog: &Catalog,
    stored: &Catalog,
    tables: &WriteTables<'_>,
    staged: &[StagedRow<'_>],
) -> Result<(), WriteError> {
    let mut by_table: BTreeMap<&str, Vec<&StagedRow<'_>>> = BTreeMap::new();
    for row in staged {
        by_table.entry(row.table).or_default().push(row);
    }
    for index in catalog.indexes.values().filter(|i| i.def.schema.unique) {
        let Some(index) = catalog.index(&index.def.schema.name) else { continue };
        let table = catalog.table(&index.def.schema.table).expect("a usable index has a live table");
        if !enforced(index, table) {
            continue;
        }
        let rows: Vec<&StagedRow<'_>> = by_table
            .get(table.schema.name.as_str())
            .map(|rows| rows.iter().copied().filter(|r| r.epoch == table.causal_length).collect())
            .unwrap_or_default();
        let check = IndexCheck::new(stored, tables, table, index);
        if check.index_stored && rows.is_empty() {
            continue;
        }
        check.run(&rows)?;
    }
    Ok(())
}

/// One unique index checked against one batch.
struct IndexCheck<'a> {
    tables: &'a WriteTables<'a>,
    table: &'a TableEntry,
    index: &'a IndexEntry,
    /// `rows_v1` holds the rows of the table's current incarnation.
    rows_stored: bool,
    /// `indexes_v1` holds this index's entries: it is not new in this batch.
    index_stored: bool,
    positions: Vec<usize>,
}

/// A row's claim of a value: its primary key, and whether the claim is new.
type Claim = (Vec<u8>, bool);

impl<'a> IndexCheck<'a> {
    fn new(stored: &Catalog, tables: &'a WriteTables<'a>, table: &'a TableEntry, index: &'a IndexEntry) -> Self {
        let rows_stored = stored.table(&table.schema.name).is_some_and(|t| t.causal_length == table.causal_length);
        // The same index as stored: the same incarnation over the same columns by id. Not
        // the whole definition, which an ALTER of its table re-binds (names, stored ids)
        // without touching its entries.
        let index_stored = rows_stored
            && stored.index(&index.def.schema.name).is_some_and(|s| {
                let stored_table = stored.table(&table.schema.name).expect("rows_stored: the table is live");
                s.causal_length == index.causal_length
                    && s.def.table_epoch == index.def.table_epoch
                    && s.def.schema.unique == index.def.schema.unique
                    && s.def.schema.bound_ids(&stored_table.schema) == index.def.schema.bound_ids(&table.schema)
            });
        let schema = &table.schema;
        let positions = index
            .def
            .schema
            .columns
            .iter()
            .map(|c| schema.column_index(c).expect("a usable index names existing columns"))
            .collect();
        IndexCheck { tables, table, index, rows_stored, index_stored, positions }
    }

    fn run(&self, rows: &[&StagedRow<'_>]) -> Result<(), WriteError> {
        let staged: HashSet<&[u8]> = rows.iter().map(|r| r.pk).collect();
        let mut claims: HashMap<Vec<u8>, Vec<Claim>> = HashMap::new();
        for row in rows {
            let Some(materialized) = materialize_row(row.doc, &self.table.schema, row.pk) else { continue };
            let values = materialized.row;
            let Some(tuple) = self.tuple_of(&values) else { continue };
            let new = !self.index_stored || self.stored_tuple(row.pk)?.as_ref() != Some(&tuple);
            if new && self.index_stored {
                self.refuse_stored_holder(&tuple, &staged)?;
            }
            self.claim(&mut claims, tuple, (row.pk.to_vec(), new))?;
        }
        if !self.index_stored && self.rows_stored {
            // A new index over stored rows: each of them claims its value anew.
            self.claim_stored_rows(&mut claims, &staged)?;
        }
        Ok(())
    }

    /// The encoded value tuple a row claims; `None` if it has a NULL (NULLs are distinct).
    fn tuple_of(&self, row: &[Value]) -> Option<Vec<u8>> {
        let values: Vec<Value> = self.positions.iter().map(|&i| row[i].clone()).collect();
        (!values.iter().any(Value::is_null)).then(|| keys::encode_tuple(&values))
    }

    /// The tuple of the row's stored record, if it has one.
    fn stored_tuple(&self, pk: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.rows_stored {
            return Ok(None);
        }
        let key = keys::row_key(&self.table.schema.name, pk);
        let Some(record) = self.tables.rows.get(key.as_slice())? else { return Ok(None) };
        let mut row = crate::record::decode(record.value()).map_err(corrupt_record)?;
        self.table.schema.pad(&mut row);
        Ok(self.tuple_of(&row))
    }

    /// Refuses if a stored row outside the batch holds `tuple`.
    fn refuse_stored_holder(&self, tuple: &[u8], staged: &HashSet<&[u8]>) -> Result<(), WriteError> {
        let name = &self.index.def.schema.name;
        let prefix = keys::index_key(name, tuple, &[]);
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        for entry in self.tables.indexes.range(prefix.as_slice()..end.as_slice()).map_err(StorageError::from)? {
            let (key, _) = entry.map_err(StorageError::from)?;
            let holder = &key.value()[prefix.len()..];
            if !staged.contains(holder) {
                return Err(self.violation(tuple, holder));
            }
        }
        Ok(())
    }

    /// Adds a claim; refuses it if another claim of the same value exists and either is new.
    fn claim(&self, claims: &mut HashMap<Vec<u8>, Vec<Claim>>, tuple: Vec<u8>, claim: Claim) -> Result<(), WriteError> {
        let mut existing = claims.get(&tuple).into_iter().flatten();
        if let Some((holder, _)) = existing.find(|(_, new)| *new || claim.1) {
            return Err(self.violation(&tuple, holder));
        }
        claims.entry(tuple).or_default().push(claim);
        Ok(())
    }

    /// Every stored row of the table that the batch did not stage claims its value.
    fn claim_stored_rows(
        &self,
        claims: &mut HashMap<Vec<u8>, Vec<Claim>>,
        staged: &HashSet<&[u8]>,
    ) -> Result<(), WriteError> {
        let prefix = keys::row_key(&self.table.schema.name, &[]);
        let end = keys::prefix_end(&prefix).expect("names are not all 0xFF");
        for item in self.tables.rows.range(prefix.as_slice()..end.as_slice()).map_err(StorageError::from)? {
            let (key, record) = item.map_err(StorageError::from)?;
            let pk = &key.value()[prefix.len()..];
            if staged.contains(pk) {
                continue;
            }
            let mut row = crate::record::decode(record.value()).map_err(corrupt_record)?;
            self.table.schema.pad(&mut row);
            if let Some(tuple) = self.tuple_of(&row) {
                self.claim(claims, tuple, (pk.to_vec(), true))?;
            }
        }
        Ok(())
    }

    /// The refusal of a claim of `tuple` that the row `holder` holds.
    fn violation(&self, tuple: &[u8], holder: &[u8]) -> WriteError {
        let schema = &self.index.def.schema;
        let shown = |bytes: &[u8]| match keys::decode_tuple(bytes) {
            Ok(values) => show_key(&values),
            Err(source) => Corruption::Key { table: "indexes_v1", source }.to_string(),
        };
        WriteError::UniqueViolation {
            table: schema.table.clone(),
            index: schema.name.clone(),
            columns: schema.columns.iter().map(|c| format!("{}.{c}", schema.table)).collect::<Vec<_>>().join(", "),
            value: shown(tuple),
            holder: shown(holder),
        }
    }
}
