//! The catalog: tables, indexes and views, resolved from their replicated catalog documents.
//!
//! Each table and each index has a catalog document (see `doc.rs`) with a causal length and
//! a definition. Resolution is deterministic, so every replica with the same documents has
//! the same catalog: alive iff the causal length is odd; the table's *epoch* (its
//! incarnation) is that causal length, and row documents carry it in their key, so a
//! dropped-and-recreated table starts empty. Concurrent definitions that are identical
//! merge silently; different ones are a conflict that automerge resolves the same way
//! everywhere, and the losing definitions stay readable in [`DdlConflict`].

use std::collections::BTreeMap;

use automerge::AutoCommit;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::doc;
use crate::doc::{AlterField, AlterValue};
use crate::schema::{self, CheckDef, ColumnDef, ForeignKeyDef, IndexSchema, TableSchema};
use crate::types::NodeId;

/// Version byte in front of every encoded definition.
const DEFINITION_VERSION: u8 = 1;
/// Largest encoded definition, in bytes.
pub const DEFINITION_BYTES_MAX: usize = 64 * 1024;

/// A definition that could not be read from a catalog document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid catalog definition of {object}: {reason}")]
pub struct CatalogError {
    /// The table or index.
    pub object: String,
    /// What is wrong.
    pub reason: String,
}

/// Concurrent, different definitions of one catalog object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DdlConflict {
    /// Every concurrent definition as SQL, with the node that wrote it; the last one won.
    /// Empty when the definitions agree and only `ALTER`s conflict.
    pub definitions: Vec<(String, NodeId)>,
    /// `ALTER TABLE`s that lost, as SQL, with the node that wrote each: a concurrent
    /// `RENAME COLUMN` or `ADD COLUMN` of the same column that another one beat, or a
    /// column whose name another column holds (shown under the name it got instead).
    /// Left out when empty, so a conflict of definitions encodes as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alters: Vec<(String, NodeId)>,
}

/// A table as the catalog currently resolves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The winning definition.
    pub schema: TableSchema,
    /// The causal length: odd while the table exists, and then also its epoch.
    pub causal_length: u64,
    /// Present when concurrent definitions differ.
    pub conflict: Option<DdlConflict>,
}

impl TableEntry {
    /// Whether the table exists.
    pub fn alive(&self) -> bool {
        self.causal_length % 2 == 1
    }
}

/// The stored definition of an index: what `CREATE INDEX` said, and which incarnation of
/// the table it was made for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    /// The index.
    pub schema: IndexSchema,
    /// Epoch of the table the index was created on.
    pub table_epoch: u64,
}

/// An index as the catalog currently resolves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The winning definition.
    pub def: IndexDef,
    /// The causal length: odd while the index exists.
    pub causal_length: u64,
    /// Present when concurrent definitions differ.
    pub conflict: Option<DdlConflict>,
}

/// The stored definition of a view (docs/design.md § Views): its query as SQL and the
/// column names it was declared with (empty: the query's own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    /// The view's name, lower case.
    pub name: String,
    /// The `SELECT` as sqlparser prints it.
    pub query: String,
    /// `CREATE VIEW v (a, b)`'s names, lower case; empty without a list.
    pub columns: Vec<String>,
}

/// Longest query text a view stores, in bytes.
pub const VIEW_SQL_BYTES_MAX: usize = 16 * 1024;

/// A view as the catalog currently resolves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewEntry {
    /// The winning definition.
    pub def: ViewDef,
    /// The causal length: odd while the view exists.
    pub causal_length: u64,
    /// Present when concurrent definitions differ.
    pub conflict: Option<DdlConflict>,
}

impl ViewEntry {
    /// Whether the view exists.
    pub fn alive(&self) -> bool {
        self.causal_length % 2 == 1
    }
}

/// Every table, index and view, dropped ones included (they keep their causal length).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
    /// Indexes by name.
    pub indexes: BTreeMap<String, IndexEntry>,
    /// Views by name.
    #[serde(default)]
    pub views: BTreeMap<String, ViewEntry>,
}

impl Catalog {
    /// A table that currently exists.
    pub fn table(&self, name: &str) -> Option<&TableEntry> {
        self.tables.get(&name.to_ascii_lowercase()).filter(|t| t.alive())
    }

    /// Tables that currently exist, by name.
    pub fn live_tables(&self) -> impl Iterator<Item = &TableEntry> {
        self.tables.values().filter(|t| t.alive())
    }

    /// A view that currently exists.
    pub fn view(&self, name: &str) -> Option<&ViewEntry> {
        self.views.get(&name.to_ascii_lowercase()).filter(|v| v.alive())
    }

    /// Views that currently exist, by name.
    pub fn live_views(&self) -> impl Iterator<Item = &ViewEntry> {
        self.views.values().filter(|v| v.alive())
    }

    /// An index that exists and is usable: its table exists in the incarnation the index
    /// was made for, and the table's winning definition has every indexed column.
    pub fn index(&self, name: &str) -> Option<&IndexEntry> {
        let entry = self.indexes.get(&name.to_ascii_lowercase())?;
        self.index_is_live(entry).then_some(entry)
    }

    /// Usable indexes of a table.
    pub fn indexes_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a IndexEntry> + 'a {
        self.indexes.values().filter(move |i| i.def.schema.table == table && self.index_is_live(i))
    }

    /// Every index ever made on `table`, usable or not (dropped, of an older incarnation).
    pub fn index_names_on(&self, table: &str) -> Vec<String> {
        self.indexes.values().filter(|i| i.def.schema.table == table).map(|i| i.def.schema.name.clone()).collect()
    }

    /// Names the indexes of `table` as its columns are named now, after an `ALTER` staged
    /// in a batch (the stored catalog binds them in `resolve_index`).
    pub fn rebind_indexes(&mut self, table: &str) {
        let Some(entry) = self.tables.get(table).filter(|t| t.alive()) else { return };
        let schema = entry.schema.clone();
        let epoch = entry.causal_length;
        for index in self.indexes.values_mut().filter(|i| i.def.schema.table == table && i.def.table_epoch == epoch) {
            bind_index_columns(&mut index.def.schema, &schema);
        }
    }

    fn index_is_live(&self, entry: &IndexEntry) -> bool {
        let Some(table) = self.table(&entry.def.schema.table) else { return false };
        let schema = &entry.def.schema;
        // On every row written, so without hashing in the common case: an index without
        // stored ids names columns whose ids derive from their names.
        let bound = |(i, name): (usize, &String)| {
            let Some(p) = table.schema.column_index(name) else { return false };
            let column = &table.schema.columns[p];
            match (schema.column_ids.get(i), &column.stored_id) {
                // Without ids, the index was made on a table no ALTER had touched: its
                // names are `CREATE TABLE` columns never renamed.
                (None, stored) => stored.is_none() && !column.added,
                (Some(id), Some(stored)) => id == stored,
                (Some(id), None) => *id == schema::column_id(&column.name, column.ty),
            }
        };
        entry.causal_length % 2 == 1
            && table.causal_length == entry.def.table_epoch
            && schema.columns.iter().enumerate().all(bound)
    }
}

/// Encodes a table definition for a catalog document.
pub fn encode_table(schema: &TableSchema) -> Vec<u8> {
    let mut out = vec![DEFINITION_VERSION];
    out.extend(codec::encode(schema));
    out
}

/// Encodes a column for the `add` field of `ALTER TABLE ... ADD COLUMN`: its name, type,
/// `NOT NULL` and default (not its id, which is the field's key).
pub fn encode_added_column(column: &ColumnDef) -> Vec<u8> {
    let plain = ColumnDef { stored_id: None, added: false, dropped: false, ..column.clone() };
    let mut out = vec![DEFINITION_VERSION];
    out.extend(codec::encode(&plain));
    out
}

/// Encodes a view definition for a catalog document.
pub fn encode_view(def: &ViewDef) -> Vec<u8> {
    let mut out = vec![DEFINITION_VERSION];
    out.extend(codec::encode(def));
    out
}

/// Resolves a view's catalog document; see [`resolve_table`]. A definition from a peer
/// must name the view, stay within [`VIEW_SQL_BYTES_MAX`] and have valid column names;
/// whether its query binds is found out when it is read.
pub fn resolve_view(name: &str, doc: &AutoCommit) -> Result<ViewEntry, CatalogError> {
    let bad = |reason: &str| CatalogError { object: name.to_string(), reason: reason.to_string() };
    let mut definitions = Vec::new();
    for (bytes, node) in doc::read_definitions(doc) {
        let def: ViewDef = decode_definition(name, &bytes)?;
        if def.name != name || def.query.is_empty() || def.query.len() > VIEW_SQL_BYTES_MAX {
            return Err(bad("bad view definition"));
        }
        if def.columns.len() > schema::COLUMNS_MAX
            || def.columns.iter().any(|c| schema::normalize_name(c).ok().as_ref() != Some(c))
        {
            return Err(bad("bad view column names"));
        }
        definitions.push((def, node));
    }
    let (def, _) = definitions.last().cloned().ok_or_else(|| bad("no definition"))?;
    let conflict = conflict_of(&definitions, view_sql);
    Ok(ViewEntry { def, causal_length: doc::causal_length(doc), conflict })
}

/// The `CREATE VIEW` statement of a definition.
pub fn view_sql(def: &ViewDef) -> String {
    match def.columns.is_empty() {
        true => format!("CREATE VIEW {} AS {}", def.name, def.query),
        false => format!("CREATE VIEW {} ({}) AS {}", def.name, def.columns.join(", "), def.query),
    }
}

/// Encodes an index definition for a catalog document.
pub fn encode_index(def: &IndexDef) -> Vec<u8> {
    let mut out = vec![DEFINITION_VERSION];
    out.extend(codec::encode(def));
    out
}

fn decode_definition<T: serde::de::DeserializeOwned>(object: &str, bytes: &[u8]) -> Result<T, CatalogError> {
    let err = |reason: String| CatalogError { object: object.to_string(), reason };
    if bytes.len() > DEFINITION_BYTES_MAX {
        return Err(err("definition too large".into()));
    }
    match bytes.split_first() {
        Some((&DEFINITION_VERSION, body)) => codec::decode(body).map_err(|e| err(e.to_string())),
        Some((version, _)) => Err(err(format!("definition version {version}, expected {DEFINITION_VERSION}"))),
        None => Err(err("empty definition".into())),
    }
}

/// Resolves a table's catalog document. Every concurrent definition must be valid and
/// named `name`: a document that fails this came from a faulty or hostile peer.
pub fn resolve_table(name: &str, doc: &AutoCommit) -> Result<TableEntry, CatalogError> {
    let mut definitions = Vec::new();
    for (bytes, node) in doc::read_definitions(doc) {
        let schema: TableSchema = decode_definition(name, &bytes)?;
        let schema = schema.validate().map_err(|e| CatalogError { object: name.to_string(), reason: e.to_string() })?;
        if schema.name != name {
            return Err(CatalogError { object: name.to_string(), reason: "name mismatch".into() });
        }
        definitions.push((schema, node));
    }
    let (schema, _) = definitions
        .last()
        .cloned()
        .ok_or_else(|| CatalogError { object: name.to_string(), reason: "no definition".into() })?;
    let mut conflict = conflict_of(&definitions, table_sql);
    let causal_length = doc::causal_length(doc);
    let schema = if causal_length % 2 == 1 {
        let alters = doc::read_alters(doc, causal_length);
        let (schema, lost) = apply_alters(schema, &alters)?;
        if !lost.is_empty() {
            conflict.get_or_insert_with(DdlConflict::default).alters = lost;
        }
        schema
    } else {
        schema
    };
    Ok(TableEntry { schema, causal_length, conflict })
}

/// The resolved definition of a table: the winning `CREATE TABLE` definition, then the
/// columns added by `ALTER TABLE` in the order of their `add` ops (Lamport counter, then
/// writer), renames applied by column id, and a name two columns end up with kept by the
/// earlier column (the other is shown as `<name>_<id>`). Returns the losing `ALTER`s
/// beside it. Every node with the same document resolves the same definition.
fn apply_alters(
    mut schema: TableSchema,
    alters: &BTreeMap<(String, AlterField), Vec<AlterValue>>,
) -> Result<(TableSchema, Vec<(String, NodeId)>), CatalogError> {
    let table = schema.name.clone();
    let err = |reason: String| CatalogError { object: table.clone(), reason };
    let mut lost = Vec::new();
    let mut added = Vec::new();
    for ((id, _), values) in alters.iter().filter(|((_, field), _)| *field == AlterField::Add) {
        if !schema::is_column_id(id) {
            return Err(err(format!("malformed column id {id:?}")));
        }
        let mut columns = Vec::with_capacity(values.len());
        for value in values {
            let mut column: ColumnDef = decode_definition(&table, &value.bytes)?;
            // Checked before anything compares or cuts it (a peer's bytes).
            column.name = schema::normalize_name(&column.name).map_err(|e| err(e.to_string()))?;
            columns.push((column, value.writer));
        }
        let (winner, _) = columns.last().cloned().expect("read_alters lists fields with values");
        if winner.ty == crate::types::ColumnType::Counter {
            return Err(err(format!("column {} added as a COUNTER", winner.name)));
        }
        for (column, writer) in &columns[..columns.len() - 1] {
            if *column != winner {
                lost.push((format!("ALTER TABLE {table} ADD COLUMN {}", column_sql(column)), *writer));
            }
        }
        let order = values.iter().map(|v| (v.counter, v.writer)).min().expect("values are not empty");
        added.push((order, id.clone(), winner));
    }
    added.sort_by_key(|a| a.0);
    for (_, id, mut column) in added {
        if schema.columns.iter().any(|c| c.id() == id) {
            continue; // a concurrent definition that won already has it
        }
        if schema.columns.len() == schema::COLUMNS_MAX {
            lost.push((
                format!(
                    "ALTER TABLE {table} ADD COLUMN {} (over {} columns)",
                    column_sql(&column),
                    schema::COLUMNS_MAX
                ),
                NodeId([0; 16]),
            ));
            continue;
        }
        column.stored_id = Some(id);
        column.added = true;
        schema.columns.push(column);
    }
    let key = schema.primary_key_indexes();
    for column in &mut schema.columns {
        let id = column.id();
        column.stored_id = Some(id.clone());
        let Some(values) = alters.get(&(id, AlterField::Name)) else { continue };
        let names: Vec<(String, NodeId)> = values
            .iter()
            .map(|v| {
                Ok((
                    schema::normalize_name(&String::from_utf8_lossy(&v.bytes)).map_err(|e| err(e.to_string()))?,
                    v.writer,
                ))
            })
            .collect::<Result<_, CatalogError>>()?;
        let (winner, _) = names.last().cloned().expect("read_alters lists fields with values");
        for (name, writer) in &names[..names.len() - 1] {
            if *name != winner {
                lost.push((format!("ALTER TABLE {table} RENAME COLUMN {} TO {name}", column.name), *writer));
            }
        }
        column.name = winner;
    }
    // A drop of a key column or of a key-less table's identity is refused where it is
    // written; one from a faulty peer is ignored, alike everywhere.
    let hidden = schema.hidden_columns();
    for (i, column) in schema.columns.iter_mut().enumerate() {
        if alters.contains_key(&(column.id(), AlterField::Drop)) && i >= hidden && !key.contains(&i) {
            column.dropped = true;
        }
    }
    // Concurrent drops of a key-less table's last columns (each node kept one): the column
    // dropped last (greatest drop op) stays, so the table keeps a column and no column
    // dropped long before comes back.
    if schema.visible_columns().next().is_none() {
        let drop_order = |c: &ColumnDef| {
            let values = alters.get(&(c.id(), AlterField::Drop));
            values.and_then(|v| v.iter().map(|v| (v.counter, v.writer)).max())
        };
        let last = (hidden..schema.columns.len()).max_by_key(|&i| drop_order(&schema.columns[i]));
        if let Some(column) = last.map(|i| &mut schema.columns[i]) {
            column.dropped = false;
            let reason = format!("ALTER TABLE {table} DROP COLUMN {} (its last column)", column.name);
            lost.push((reason, NodeId([0; 16])));
        }
    }
    for i in 0..schema.columns.len() {
        let column = &schema.columns[i];
        if !column.dropped && schema.columns[..i].iter().any(|c| !c.dropped && c.name == column.name) {
            let shown = shadow_name(&schema.columns, i);
            let column = &mut schema.columns[i];
            let reason =
                format!("column {} of {table} is shown as {shown}: an earlier column has its name", column.name);
            lost.push((reason, NodeId([0; 16])));
            column.name = shown;
        }
    }
    for column in &mut schema.columns {
        if column.stored_id.as_deref() == Some(schema::column_id(&column.name, column.ty).as_str()) {
            column.stored_id = None;
        }
    }
    schema.primary_key = key.into_iter().map(|i| schema.columns[i].name.clone()).collect();
    let schema = schema.validate().map_err(|e| err(e.to_string()))?;
    Ok((schema, lost))
}

/// The name a column gets whose name an earlier column holds: its name (cut to leave
/// room), `_` and its id, and a number after that in the unlikely case that is taken too.
fn shadow_name(columns: &[ColumnDef], i: usize) -> String {
    let name = &columns[i].name;
    let base = format!("{}_{}", &name[..name.len().min(schema::NAME_BYTES_MAX - 20)], columns[i].id());
    let taken = |candidate: &str| columns.iter().any(|c| c.name == candidate);
    let mut shown = base.clone();
    let mut n = 2;
    while taken(&shown) {
        shown = format!("{base}_{n}");
        n += 1;
    }
    shown
}

/// A column as `ALTER TABLE ... ADD COLUMN` writes it.
fn column_sql(column: &ColumnDef) -> String {
    let mut s = format!("{} {}", column.name, column.ty);
    if column.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default {
        s.push_str(&format!(" DEFAULT {}", sql_literal(default)));
    }
    s
}

/// Resolves an index's catalog document; see [`resolve_table`]. `tables` are the tables as
/// resolved: the index's columns are found in its table by id, so the resolved index
/// names them as they are named now, after any `RENAME COLUMN`.
pub fn resolve_index(
    name: &str,
    doc: &AutoCommit,
    tables: &BTreeMap<String, TableEntry>,
) -> Result<IndexEntry, CatalogError> {
    let mut definitions = Vec::new();
    for (bytes, node) in doc::read_definitions(doc) {
        let def: IndexDef = decode_definition(name, &bytes)?;
        if def.schema.name != name || def.table_epoch.is_multiple_of(2) {
            return Err(CatalogError { object: name.to_string(), reason: "bad index definition".into() });
        }
        definitions.push((def, node));
    }
    let (def, _) = definitions
        .last()
        .cloned()
        .ok_or_else(|| CatalogError { object: name.to_string(), reason: "no definition".into() })?;
    let conflict = conflict_of(&definitions, |d| index_sql(&d.schema));
    let mut def = def;
    let table = tables.get(&def.schema.table).filter(|t| t.alive() && t.causal_length == def.table_epoch);
    if let Some(table) = table {
        bind_index_columns(&mut def.schema, &table.schema);
    }
    Ok(IndexEntry { def, causal_length: doc::causal_length(doc), conflict })
}

/// Names an index's columns as its table names them now, found by id; an index whose
/// columns are not all found keeps its names (and is not usable, `Catalog::index`).
fn bind_index_columns(index: &mut IndexSchema, table: &TableSchema) {
    let ids: Option<Vec<String>> = (0..index.columns.len()).map(|i| index.column_id_at(i, table)).collect();
    let Some(ids) = ids else { return };
    let columns: Option<Vec<&ColumnDef>> = ids.iter().map(|id| table.columns.iter().find(|c| c.id() == *id)).collect();
    let Some(columns) = columns else { return };
    index.columns = columns.iter().map(|c| c.name.clone()).collect();
    // As `IndexSchema::validate` stores them: on an altered table, names do not say
    // which column is meant.
    index.column_ids = if table.altered() { ids } else { Vec::new() };
}

fn conflict_of<T: PartialEq>(definitions: &[(T, NodeId)], sql: impl Fn(&T) -> String) -> Option<DdlConflict> {
    let first = &definitions.first()?.0;
    if definitions.iter().all(|(d, _)| d == first) {
        return None;
    }
    Some(DdlConflict { definitions: definitions.iter().map(|(d, n)| (sql(d), *n)).collect(), alters: Vec::new() })
}

/// The `CREATE TABLE` statement of a definition. A table without a primary key is
/// written as it was declared: without its hidden identity columns and key, so the
/// statement reads back to the same definition.
pub fn table_sql(schema: &TableSchema) -> String {
    let mut parts: Vec<String> = schema.visible_columns().map(column_sql).collect();
    if !schema.rowid && !schema.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", schema.primary_key.join(", ")));
    }
    parts.extend(schema.checks.iter().map(check_sql));
    parts.extend(schema.foreign_keys.iter().map(foreign_key_sql));
    let mut sql = format!("CREATE TABLE {} ({})", schema.name, parts.join(", "));
    if let Some(options) = &schema.append {
        sql.push_str(&format!(" WITH ({})", append_options_sql(options)));
    }
    sql
}

/// The `WITH (...)` options of an append-only table, as `CREATE TABLE` reads them back
/// (durations in the time column's unit: milliseconds for a TIMESTAMP).
fn append_options_sql(options: &schema::AppendOptions) -> String {
    let mut parts = vec!["append_only = true".to_string()];
    if let Some(column) = &options.time_column {
        parts.push(format!("time_column = '{column}'"));
    }
    parts.push(format!("bucket = {}", options.bucket));
    if let Some(retention) = options.retention {
        parts.push(format!("retention = {retention}"));
    }
    if let Some(max_bytes) = options.max_bytes {
        parts.push(format!("max_bytes = {max_bytes}"));
    }
    parts.join(", ")
}

fn constraint_name(name: &Option<String>) -> String {
    name.as_ref().map_or_else(String::new, |n| format!("CONSTRAINT {n} "))
}

/// A `CHECK` as a table constraint (column-level ones are shown this way too).
fn check_sql(check: &CheckDef) -> String {
    format!("{}CHECK ({})", constraint_name(&check.name), check.expr_sql)
}

/// A foreign key as a table constraint (column-level `REFERENCES` is shown this way too).
fn foreign_key_sql(fk: &ForeignKeyDef) -> String {
    let mut s =
        format!("{}FOREIGN KEY ({}) REFERENCES {}", constraint_name(&fk.name), fk.columns.join(", "), fk.foreign_table);
    if !fk.referred_columns.is_empty() {
        s.push_str(&format!(" ({})", fk.referred_columns.join(", ")));
    }
    if let Some(action) = &fk.on_delete {
        s.push_str(&format!(" ON DELETE {action}"));
    }
    if let Some(action) = &fk.on_update {
        s.push_str(&format!(" ON UPDATE {action}"));
    }
    s
}

/// The `CREATE INDEX` statement of a definition.
pub fn index_sql(schema: &IndexSchema) -> String {
    let unique = if schema.unique { "UNIQUE " } else { "" };
    format!("CREATE {unique}INDEX {} ON {} ({})", schema.name, schema.table, schema.columns.join(", "))
}

/// A value as a SQL literal, for statements and messages.
pub(crate) fn sql_literal(value: &crate::Value) -> String {
    match value {
        crate::Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        crate::Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::schema::ColumnDef;
    use crate::types::ColumnType;

    /// `TableSchema` as format version 1 first shipped, before CHECK and foreign keys.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct TableSchemaBefore {
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<String>,
    }

    fn plain() -> TableSchema {
        TableSchema::new("t")
            .column(ColumnDef::new("id", ColumnType::Integer).not_null())
            .column(ColumnDef::new("v", ColumnType::Real))
            .primary_key(&["id"])
    }

    fn before(schema: &TableSchema) -> TableSchemaBefore {
        TableSchemaBefore {
            name: schema.name.clone(),
            columns: schema.columns.clone(),
            primary_key: schema.primary_key.clone(),
        }
    }

    fn with_constraints() -> TableSchema {
        let mut schema = plain();
        schema.checks.push(CheckDef { name: Some("positive".into()), expr_sql: "v > 0".into() });
        schema.foreign_keys.push(ForeignKeyDef {
            name: None,
            columns: vec!["v".into()],
            foreign_table: "u".into(),
            referred_columns: vec!["id".into()],
            on_delete: Some("CASCADE".into()),
            on_update: None,
        });
        schema
    }

    #[test]
    fn definitions_written_before_constraints_existed_still_decode() {
        let mut old = vec![DEFINITION_VERSION];
        old.extend(codec::encode(&before(&plain())));
        let decoded: TableSchema = decode_definition("t", &old).unwrap();
        assert_eq!(decoded, plain());
    }

    #[test]
    fn a_definition_without_constraints_encodes_as_before() {
        let mut old = vec![DEFINITION_VERSION];
        old.extend(codec::encode(&before(&plain())));
        assert_eq!(encode_table(&plain()), old, "digests and identical-DDL merges must not change");
    }

    #[test]
    fn constraints_round_trip_and_older_readers_skip_them() {
        let bytes = encode_table(&with_constraints());
        let decoded: TableSchema = decode_definition("t", &bytes).unwrap();
        assert_eq!(decoded, with_constraints());
        let older: TableSchemaBefore = decode_definition("t", &bytes).unwrap();
        assert_eq!(older, before(&plain()));
    }

    /// `IndexSchema` before `unique`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct IndexSchemaBefore {
        name: String,
        table: String,
        columns: Vec<String>,
    }

    #[test]
    fn a_plain_index_encodes_as_before_and_a_unique_one_round_trips() {
        let plain = IndexSchema::new("t_v", "t", &["v"]);
        let before = IndexSchemaBefore { name: "t_v".into(), table: "t".into(), columns: vec!["v".into()] };
        assert_eq!(codec::encode(&plain), codec::encode(&before), "digests and identical-DDL merges must not change");
        let unique = plain.clone().unique();
        let def = IndexDef { schema: unique.clone(), table_epoch: 1 };
        let decoded: IndexDef = decode_definition("t_v", &encode_index(&def)).unwrap();
        assert_eq!(decoded, def);
        // An older reader sees a plain index.
        let older: IndexSchemaBefore = codec::decode(&codec::encode(&unique)).unwrap();
        assert_eq!(older, before);
        assert_eq!(index_sql(&unique), "CREATE UNIQUE INDEX t_v ON t (v)");
    }

    #[test]
    fn table_sql_shows_checks_and_foreign_keys() {
        assert_eq!(
            table_sql(&with_constraints().validate().unwrap()),
            "CREATE TABLE t (id INTEGER NOT NULL, v REAL, PRIMARY KEY (id), CONSTRAINT positive CHECK (v > 0), \
             FOREIGN KEY (v) REFERENCES u (id) ON DELETE CASCADE)"
        );
    }
}
