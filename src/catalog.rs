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
use crate::schema::{IndexSchema, TableSchema};
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

/// The `CREATE TABLE` statement of a definition.
pub fn table_sql(schema: &TableSchema) -> String {
    let mut parts: Vec<String> = schema
        .columns
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
    parts.push(format!("PRIMARY KEY ({})", schema.primary_key.join(", ")));
    format!("CREATE TABLE {} ({})", schema.name, parts.join(", "))
}

/// The `CREATE INDEX` statement of a definition.
pub fn index_sql(schema: &IndexSchema) -> String {
    format!("CREATE INDEX {} ON {} ({})", schema.name, schema.table, schema.columns.join(", "))
}

fn sql_literal(value: &crate::Value) -> String {
    match value {
        crate::Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        crate::Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        other => other.to_string(),
    }
}
