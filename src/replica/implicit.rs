//! Implicit documents: a row document whose whole history is one change, the insert of the
//! row into an empty document, is not stored at all.
//!
//! Its `doc_heads_v1` entry holds the change's head, actor and time
//! ([`storage::ImplicitDoc`]); the change's operations follow from the row's record and its
//! table's definition ([`doc::new_row_doc`]), so loading the document rebuilds the change
//! and checks that its hash is the stored head. A row written once — most telemetry — then
//! costs its record, its heads entry and its keys, not an automerge change of ~170 bytes.
//!
//! The invariant that makes this exact (docs/design.md § Implicit documents): an implicit
//! document's row is live, of its table's current incarnation, and its record and table
//! definition are those it was described with. Everything that would change one of them
//! first makes the document explicit again: a new change to the document stores the
//! original change as tail entry 0 ([`Replica::persist_doc`]); a new winning definition or
//! incarnation of the table makes every implicit row of the table explicit
//! ([`Replica::explicate_table`]) before its rows are rebuilt.

use automerge::AutoCommit;
use redb::ReadableTable;

use super::{Replica, WorkingDoc, WriteTables};
use crate::catalog::{Catalog, TableEntry};
use crate::change::DocKey;
use crate::contain::contain;
use crate::doc;
use crate::error::{Corruption, ImplicitFault, StorageError};
use crate::keys;
use crate::schema::TableSchema;
use crate::storage::{self, ImplicitDoc};
use crate::types::{NodeId, Value};

/// The implicit form of a document created in this transaction, if it holds one change
/// that [`doc::new_row_doc`] rebuilds byte for byte from `row` under `schema`. `None` keeps
/// the document stored: any other history, or a change made some other way (a foreign
/// writer, another automerge version).
pub(crate) fn implicit_form(document: &mut AutoCommit, schema: &TableSchema, row: &[Value]) -> Option<ImplicitDoc> {
    let changes = contain("get_changes", || document.get_changes(&[]).into_iter().cloned().collect::<Vec<_>>()).ok()?;
    let [change] = changes.as_slice() else { return None };
    let plain = change.deps().is_empty()
        && change.seq() == 1
        && change.start_op().get() == 1
        && change.message().is_none()
        && change.extra_bytes().is_empty()
        && change.other_actor_ids().is_empty();
    if !plain || !schema.record_len_fits(row.len()) {
        return None;
    }
    let actor = NodeId::from_slice(change.actor_id().to_bytes())?;
    let time_ms = change.timestamp();
    let head = change.hash().0;
    let mut rebuilt = doc::new_row_doc(actor, time_ms, &schema.columns[..row.len()], row);
    (doc::heads(&mut rebuilt) == [head]).then_some(ImplicitDoc { head, actor, time_ms })
}

/// The implicit form of a document created in this transaction by its one change, which
/// materialized to `row`: without a rebuild if a local insert staged exactly `row`
/// ([`staged_form`]), else if the rebuild matches ([`implicit_form`]).
pub(crate) fn form_of_new(
    document: &mut AutoCommit,
    schema: &TableSchema,
    row: &[Value],
    staged: Option<&[Value]>,
) -> Option<ImplicitDoc> {
    match staged {
        Some(staged) if staged == row => Some(staged_form(document, schema, row)),
        _ => implicit_form(document, schema, row),
    }
}

/// The implicit form of a document that a local insert staged as [`doc::new_row_doc`]'s
/// operations on an empty document, committed by this node, whose materialized row equals
/// the staged one: its change is the rebuilt one by construction, so it is not rebuilt
/// (debug builds check it).
fn staged_form(document: &mut AutoCommit, schema: &TableSchema, row: &[Value]) -> ImplicitDoc {
    let change = document.get_last_local_change().expect("a staged insert committed a change");
    let actor = NodeId::from_slice(change.actor_id().to_bytes()).expect("this node's actor is a node id");
    let implicit = ImplicitDoc { head: change.hash().0, actor, time_ms: change.timestamp() };
    debug_assert_eq!(
        implicit_form(document, schema, row),
        Some(implicit),
        "a staged insert's change is the one its row rebuilds"
    );
    implicit
}

/// Rebuilds an implicit document from its row's record under the catalog's live
/// definition, checking the rebuilt change against the stored head.
pub(crate) fn rebuild(
    key: &[u8],
    implicit: &ImplicitDoc,
    catalog: &Catalog,
    rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<AutoCommit, StorageError> {
    let corrupt = |fault: ImplicitFault| Corruption::Implicit { doc: super::describe_doc_key(key), fault };
    let Ok(DocKey::Row { table, epoch, pk }) = DocKey::decode(key) else {
        return Err(corrupt(ImplicitFault::NotARow).into());
    };
    let entry = catalog
        .table(&table)
        .filter(|t| t.causal_length == epoch)
        .ok_or_else(|| corrupt(ImplicitFault::TableNotLive))?;
    let record =
        storage::get_bytes(rows, &keys::row_key(&table, &pk))?.ok_or_else(|| corrupt(ImplicitFault::RowMissing))?;
    let values = crate::record::decode(&record).map_err(|e| corrupt(ImplicitFault::Record(e)))?;
    if !entry.schema.record_len_fits(values.len()) {
        return Err(corrupt(ImplicitFault::RecordArity).into());
    }
    // The record's values go into the first `len(record)` columns by id: a row inserted
    // before a column was added holds no value for it and its record leaves it out, so
    // neither an added column nor a rename changes what this rebuilds.
    let columns = &entry.schema.columns[..values.len()];
    let mut document = doc::new_row_doc(implicit.actor, implicit.time_ms, columns, &values);
    if doc::heads(&mut document) != [implicit.head] {
        return Err(corrupt(ImplicitFault::RebuildDiffers).into());
    }
    Ok(document)
}

/// The one change of a rebuilt implicit document, as stored in a tail or sent.
pub(crate) fn only_change(document: &mut AutoCommit) -> Vec<u8> {
    let changes = document.get_changes(&[]);
    assert_eq!(changes.len(), 1, "an implicit document holds one change");
    changes[0].raw_bytes().to_vec()
}

/// Before an implicit document's new changes are persisted: stores its first change as
/// tail entry 0 (its row is about to change), or notes that `explicate_table` already did
/// so in this transaction while the document was out of the cache (the stored form
/// decides). Without new changes an implicit document stays implicit.
pub(crate) fn store_if_changed(
    tables: &mut WriteTables<'_>,
    key: &[u8],
    working: &mut WorkingDoc,
    changed: bool,
) -> Result<(), StorageError> {
    let stored = storage::get_bytes(&tables.heads, key)?.expect("an implicit document has a heads entry");
    match storage::decode_implicit(&stored)? {
        Some(described) if changed => {
            let first = working.doc.get_change_by_hash(&automerge::ChangeHash(described.head));
            let first = first.expect("a document holds its first change").raw_bytes();
            tables.tail.insert(storage::tail_key(key, 0).as_slice(), first)?;
            working.tail_len = 1;
            working.implicit = false;
        }
        Some(_) => {}
        None => {
            working.tail_len = storage::decode_heads(&stored)?.0;
            working.implicit = false;
        }
    }
    Ok(())
}

impl Replica {
    /// Makes every implicit document of `entry`'s rows explicit (its change stored as tail
    /// entry 0), while `entry` is still the table's live definition: called before a new
    /// definition or incarnation replaces it and the rows are rebuilt or dropped. Returns
    /// how many documents it stored.
    pub(crate) fn explicate_table(
        &mut self,
        tables: &mut WriteTables<'_>,
        entry: &TableEntry,
    ) -> Result<u64, StorageError> {
        debug_assert!(
            self.catalog.table(&entry.schema.name).is_some_and(|live| live == entry),
            "explicated under the definition the rows were described with"
        );
        let prefix = DocKey::row_prefix(&entry.schema.name, entry.causal_length);
        let end = keys::prefix_end(&prefix).expect("row prefixes never end in 0xFF");
        let mut implicit_docs = Vec::new();
        for item in tables.heads.range(prefix.as_slice()..end.as_slice())? {
            let (key, value) = item?;
            if let Some(implicit) = storage::decode_implicit(value.value())? {
                implicit_docs.push((key.value().to_vec(), implicit));
            }
        }
        for (key, implicit) in &implicit_docs {
            let mut document = rebuild(key, implicit, &self.catalog, &tables.rows)?;
            let change = only_change(&mut document);
            tables.tail.insert(storage::tail_key(key, 0).as_slice(), change.as_slice())?;
            let heads = storage::encode_heads(1, &[implicit.head]);
            let old = tables.heads.insert(key.as_slice(), heads.as_slice())?;
            tables.digest_delta.heads(key, old.as_ref().map(|v| v.value()), Some(&heads))?;
            if let Some(cached) = self.cache.peek_mut(key) {
                cached.implicit = false;
                cached.tail_len = 1;
            }
        }
        Ok(implicit_docs.len() as u64)
    }
}
