//! The catalog: tables and indexes, resolved from their replicated catalog documents.
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
use crate::schema::{CheckDef, ForeignKeyDef, IndexSchema, TableSchema};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DdlConflict {
    /// Every concurrent definition as SQL, with the node that wrote it; the last one won.
    pub definitions: Vec<(String, NodeId)>,
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

/// Every table and index, dropped ones included (they keep their causal length).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
    /// Indexes by name.
    pub indexes: BTreeMap<String, IndexEntry>,
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

    fn index_is_live(&self, entry: &IndexEntry) -> bool {
        let Some(table) = self.table(&entry.def.schema.table) else { return false };
        entry.causal_length % 2 == 1
            && table.causal_length == entry.def.table_epoch
            && entry.def.schema.columns.iter().all(|c| table.schema.column_index(c).is_some())
    }
}

/// Encodes a table definition for a catalog document.
pub fn encode_table(schema: &TableSchema) -> Vec<u8> {
    let mut out = vec![DEFINITION_VERSION];
    out.extend(codec::encode(schema));
    out
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
    let conflict = conflict_of(&definitions, table_sql);
    Ok(TableEntry { schema, causal_length: doc::causal_length(doc), conflict })
}

/// Resolves an index's catalog document; see [`resolve_table`].
pub fn resolve_index(name: &str, doc: &AutoCommit) -> Result<IndexEntry, CatalogError> {
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
    Ok(IndexEntry { def, causal_length: doc::causal_length(doc), conflict })
}

fn conflict_of<T: PartialEq>(definitions: &[(T, NodeId)], sql: impl Fn(&T) -> String) -> Option<DdlConflict> {
    let first = &definitions.first()?.0;
    if definitions.iter().all(|(d, _)| d == first) {
        return None;
    }
    Some(DdlConflict { definitions: definitions.iter().map(|(d, n)| (sql(d), *n)).collect() })
}

/// The `CREATE TABLE` statement of a definition. A table without a primary key is
/// written as it was declared: without its hidden identity columns and key, so the
/// statement reads back to the same definition.
pub fn table_sql(schema: &TableSchema) -> String {
    let mut parts: Vec<String> = schema
        .visible_columns()
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", c.name, c.ty);
            if c.not_null {
                s.push_str(" NOT NULL");
            }
            if let Some(default) = &c.default {
                s.push_str(&format!(" DEFAULT {}", sql_literal(default)));
            }
            s
        })
        .collect();
    if !schema.rowid {
        parts.push(format!("PRIMARY KEY ({})", schema.primary_key.join(", ")));
    }
    parts.extend(schema.checks.iter().map(check_sql));
    parts.extend(schema.foreign_keys.iter().map(foreign_key_sql));
    format!("CREATE TABLE {} ({})", schema.name, parts.join(", "))
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
